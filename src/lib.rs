//! r1serve: an OpenAI-compatible inference server for DeepSeek-R1 and its
//! distilled reasoning models.
//!
//! Data flows one way: HTTP ([`api`]) → validation → engine queue →
//! scheduler ([`engine`]) → model step ([`model`], [`kernels`], [`kv_cache`])
//! → sampler → detokenizer ([`tokenizer`]) → reasoning splitter
//! ([`reasoning`]) → SSE.

pub mod answers;
pub mod api;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod kernels;
pub mod kv_cache;
pub mod kv_events;
pub mod metrics;
pub mod model;
pub mod reasoning;
pub mod structured;
pub mod tokenizer;
pub mod tools;
pub mod types;
