//! `r1serve eval`: the DeepSeek-R1 paper's evaluation protocol over a user's
//! own problems: k samples per problem, final answers checked by rules
//! ([`crate::answers`]), pass@1, pass@k, cons@k, format and language
//! consistency ([`score`]).

pub mod problems;
pub mod run;
pub mod score;
