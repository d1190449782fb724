//! The OpenAI-compatible HTTP surface: routes, wire types, error envelope,
//! SSE framing, and the seam ([`backend`]) through which it reaches the
//! engine and tokenizer.

pub mod backend;
pub mod chat;
pub mod completions;
pub mod connections;
pub mod error;
pub mod generation;
pub mod models;
pub mod ops;
pub mod prompt_logprobs;
pub mod protocol;
pub mod render;
pub mod responses;
pub mod router;
pub mod server;
pub mod sse;
pub mod state;
pub mod tokenize;

#[cfg(test)]
mod tests;
