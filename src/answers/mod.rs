//! Final answers in a model's output, judged by rules rather than by a
//! model: extraction ([`extract`]), canonical form and equivalence
//! ([`answer`]), majority voting ([`vote`]) and the script a text is written
//! in ([`language`]). `r1serve eval` scores with them, the API's
//! `consensus` votes with them, and the language metric counts with them.

pub mod answer;
pub mod extract;
pub mod language;
pub mod vote;
