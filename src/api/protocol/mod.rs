//! Serde types for the OpenAI API as it appears on the wire, plus the
//! validation that turns a request into checked generation parameters.
//!
//! Request types accept everything OpenAI clients send: unknown fields are
//! ignored, and OpenAI features this server does not implement (audio,
//! predicted outputs, …) are captured so that validation can reject
//! them with a 400 naming the parameter instead of silently ignoring them.
//! Response types serialize exactly as OpenAI does, including which fields
//! are `null` and which are absent, since some clients depend on both.
//!
//! Split by direction: [`request`] (request bodies and their validation),
//! [`response`] (responses, stream chunks, logprob serialization),
//! [`responses`] (OpenAI's Responses API and its translation to a chat),
//! [`consensus`] (the self-consistency extension and its vote),
//! [`structured`] (structured-output fields in OpenAI's and vLLM's dialects),
//! [`thinking`] (reasoning budgets in their dialects), [`reasoning_field`]
//! (the name the reasoning text goes under), [`tools`] (tool definitions and
//! calls in requests) and [`utility`]
//! (models list, tokenize and detokenize).

mod consensus;
mod reasoning_field;
mod request;
mod response;
mod responses;
mod structured;
#[cfg(test)]
mod tests;
mod thinking;
mod tools;
mod utility;

pub use consensus::*;
pub use reasoning_field::*;
pub use request::*;
pub use response::*;
pub use responses::*;
pub use structured::*;
pub use thinking::*;
pub use tools::*;
pub use utility::*;

/// Most `n` a request may ask for; each choice occupies its own sequence.
pub const MAX_N: i64 = 128;
/// Most alternatives per position for `top_logprobs` / legacy `logprobs`.
/// OpenAI's limit is 20 for chat and 5 for completions; 20 is used for both.
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// Most stop strings per request. OpenAI allows 4; vLLM has no limit. 16
/// keeps clients written for either working while bounding the per-token
/// matching cost.
pub const MAX_STOP_SEQUENCES: usize = 16;
/// Most bytes (UTF-8) of all stop strings of a request together. Neither
/// OpenAI nor vLLM documents one; real stop lists are a few dozen bytes, and
/// 4 KiB bounds what a request's compiled stop strings and each sample's
/// held-back text can cost.
pub const MAX_STOP_BYTES: usize = 4096;
/// Temperatures below this sample greedily (vLLM's `_SAMPLING_EPS`): the
/// sampler divides logits by the temperature, and for the smallest positive
/// floats the quotient overflows.
pub const GREEDY_TEMPERATURE: f32 = 1e-5;
/// Bounds of `repetition_penalty`. The sampler divides positive logits by
/// it and multiplies negative ones, so a logit grows at most 100-fold, then
/// at most 1e5-fold more by 1/temperature: finite for any logit under 1e31,
/// where an unbounded penalty (1e-38 was accepted) overflowed to infinity.
pub const MIN_REPETITION_PENALTY: f32 = 0.01;
/// See [`MIN_REPETITION_PENALTY`].
pub const MAX_REPETITION_PENALTY: f32 = 100.0;
/// What OpenAI reports for a logprob of −∞; JSON cannot encode infinities and
/// serde_json would otherwise write `null`.
pub const MIN_LOGPROB: f32 = -9999.0;

/// `object` of a non-streaming chat completion.
pub const OBJECT_CHAT_COMPLETION: &str = "chat.completion";
/// `object` of a streamed chat completion chunk.
pub const OBJECT_CHAT_COMPLETION_CHUNK: &str = "chat.completion.chunk";
/// `object` of legacy completions, streamed or not.
pub const OBJECT_TEXT_COMPLETION: &str = "text_completion";
