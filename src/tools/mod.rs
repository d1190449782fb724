//! Tool calls in generated text: which markup a model uses for them, and an
//! incremental parser that turns streamed answer text into OpenAI tool-call
//! deltas.
//!
//! Modelled on vLLM's tool parsers (`--tool-call-parser`): `hermes`
//! (`<tool_call>{"name": …, "arguments": …}</tool_call>`, Qwen2.5),
//! `deepseek_r1` (DeepSeek-R1, V3 and R1-0528) and `deepseek_v31`. Unlike
//! vLLM's, the parser here works on text deltas and never rescans text it has
//! already seen, so its cost per delta is proportional to the delta.
//!
//! The HTTP layer feeds it only the answer, after the reasoning splitter: a
//! call written inside `<think>` is not executed (it is counted instead, see
//! [`ToolCallStream::calls`]), since the model had not committed to it.
//!
//! A `tool_choice` that forces a call is enforced by a grammar of the same
//! markup ([`call_grammar`]), applied to the answer after the reasoning.

mod grammar;
mod markup;
mod parser;
#[cfg(test)]
mod tests;

pub use grammar::{call_grammar, ToolFunction};
pub use markup::ToolCallParser;
pub use parser::{ParsedText, ToolCallDelta, ToolCallStream};

/// Prefix of the ids given to parsed calls, as OpenAI's `call_…`.
pub const CALL_ID_PREFIX: &str = "call_";

/// A fresh tool-call id: [`CALL_ID_PREFIX`] and 24 random hex digits.
pub fn call_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{CALL_ID_PREFIX}{}", &hex[..24])
}
