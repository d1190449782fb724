//! The OpenAI-compatible HTTP surface: wire types, error envelope and SSE
//! framing.

pub mod error;
pub mod protocol;
pub mod sse;
