//! Structured outputs: answers constrained to a JSON schema, a regular
//! expression, a list of choices or a grammar, and tool calls forced by
//! `tool_choice`, decoded with llguidance.
//!
//! The grammar engine sees the vocabulary once ([`GrammarVocab`]); each
//! request's constraint is compiled off the engine thread
//! ([`CompiledGrammar::compile`]); each sample walks it with a
//! [`GrammarState`] whose next mask is computed while the model runs. The
//! engine applies the mask only to the answer: reasoning stays free text
//! (see `engine::grammar`).

mod grammar;
mod state;
mod vocab;

pub use grammar::{compact_layout, lark_literal, CompiledGrammar, GrammarSpec, MAX_CHOICES};
pub use state::GrammarState;
pub use vocab::GrammarVocab;
