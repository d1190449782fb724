//! Responses and stream chunks, serialized exactly as OpenAI does.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::*;
use crate::reasoning::ReasoningEnd;
use crate::types::TokenId;

/// Why a choice stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The model called tools and stopped for their results.
    ToolCalls,
}

/// Token accounting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated, over all choices.
    pub completion_tokens: u32,
    /// Sum of the two.
    pub total_tokens: u32,
    /// Prompt breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Completion breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

/// The usage of several requests answered together (a batch of prompts):
/// every count adds up, and a breakdown is present where any part has it.
impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), |a, b| Usage {
            prompt_tokens: a.prompt_tokens.saturating_add(b.prompt_tokens),
            completion_tokens: a.completion_tokens.saturating_add(b.completion_tokens),
            total_tokens: a.total_tokens.saturating_add(b.total_tokens),
            prompt_tokens_details: match (a.prompt_tokens_details, b.prompt_tokens_details) {
                (None, None) => None,
                (x, y) => Some(PromptTokensDetails {
                    cached_tokens: x.map_or(0, |d| d.cached_tokens)
                        + y.map_or(0, |d| d.cached_tokens),
                }),
            },
            completion_tokens_details: match (
                a.completion_tokens_details,
                b.completion_tokens_details,
            ) {
                (None, None) => None,
                (x, y) => Some(CompletionTokensDetails {
                    reasoning_tokens: x.map_or(0, |d| d.reasoning_tokens)
                        + y.map_or(0, |d| d.reasoning_tokens),
                }),
            },
        })
    }
}

/// `usage.prompt_tokens_details`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: u32,
}

/// `usage.completion_tokens_details`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    /// Generated tokens that belong to the reasoning.
    pub reasoning_tokens: u32,
}

fn serialize_logprob<S: Serializer>(value: &f32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f32(finite_logprob(*value))
}

fn finite_logprob(value: f32) -> f32 {
    if value.is_finite() {
        value
    } else {
        MIN_LOGPROB
    }
}

fn serialize_optional_logprobs<S: Serializer>(
    values: &[Option<f32>],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(values.iter().map(|v| v.map(finite_logprob)))
}

/// Distinguishes an absent field (`None`) from an explicit `null`
/// (`Some(None)`), which serde's default handling collapses.
fn double_option<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// One alternative in chat logprobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token text.
    pub token: String,
    /// Its log probability; −∞ is sent as [`MIN_LOGPROB`].
    #[serde(serialize_with = "serialize_logprob")]
    pub logprob: f32,
    /// UTF-8 bytes of the token (tokens may hold partial characters).
    pub bytes: Option<Vec<u8>>,
}

/// One sampled token in chat logprobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatTokenLogprob {
    /// The token text.
    pub token: String,
    /// Its log probability; −∞ is sent as [`MIN_LOGPROB`].
    #[serde(serialize_with = "serialize_logprob")]
    pub logprob: f32,
    /// UTF-8 bytes of the token.
    pub bytes: Option<Vec<u8>>,
    /// The most likely alternatives at this position.
    pub top_logprobs: Vec<TopLogprob>,
}

/// One token of a prompt position in vLLM's `prompt_logprobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptTokenLogprob {
    /// Its log probability given the prompt before it; −∞ is sent as
    /// [`MIN_LOGPROB`].
    #[serde(serialize_with = "serialize_logprob")]
    pub logprob: f32,
    /// 1 plus the number of tokens that were more likely.
    pub rank: usize,
    /// The token's text.
    pub decoded_token: String,
}

/// vLLM's `prompt_logprobs`: per prompt token, `null` for the first, then
/// an object from token id (as a string) to its entry, holding the prompt's
/// own token and the requested number of most likely ones.
pub type PromptLogprobs = Vec<Option<BTreeMap<String, PromptTokenLogprob>>>;

/// `choices[].logprobs` of a chat completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    /// Per-token entries.
    pub content: Option<Vec<ChatTokenLogprob>>,
}

/// The function part of a tool call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as a JSON string, as the model wrote them.
    pub arguments: String,
}

/// One tool call of a non-streaming chat choice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// `call_…`, for the client to quote as `tool_call_id`.
    pub id: String,
    /// Always `"function"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What to call.
    pub function: FunctionCall,
}

/// The assistant message of a non-streaming chat choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    /// Always [`Role::Assistant`].
    pub role: Role,
    /// The answer; `null` when the output ended inside the reasoning, or
    /// when it is only tool calls.
    pub content: Option<String>,
    /// The reasoning, omitted when there is none, it was not requested, or
    /// [`ReasoningField`] names only `reasoning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The reasoning under vLLM's and OpenRouter's name, present when
    /// [`ReasoningField`] names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// The tool calls, omitted when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// vLLM's `stop_reason`: which of the request's `stop_token_ids` (a
/// number) or `stop` strings (a string) ended a choice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopReason {
    /// A stop token id.
    Token(TokenId),
    /// A stop string.
    Text(String),
}

/// One choice of a non-streaming chat completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Choice index, 0..n.
    pub index: u32,
    /// The generated message.
    pub message: AssistantMessage,
    /// Logprobs, `null` unless requested.
    pub logprobs: Option<ChatLogprobs>,
    /// Why generation stopped.
    pub finish_reason: Option<FinishReason>,
    /// How the reasoning ended (r1serve extension); absent when the
    /// server parses no reasoning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_end: Option<ReasoningEnd>,
    /// The stop token or string that ended the choice (vLLM's field);
    /// absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
}

/// The delta of a streamed chat choice; absent fields mean "no change".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// Sent in the first chunk of each choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// New answer text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New reasoning text, when [`ReasoningField`] names `reasoning_content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// New reasoning text, when [`ReasoningField`] names `reasoning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// New pieces of tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<DeltaToolCall>>,
}

/// The function part of a streamed tool-call piece.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaFunction {
    /// The name, in the call's first piece only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More argument text; the pieces concatenate to the arguments.
    pub arguments: String,
}

/// A piece of a streamed tool call: the first of each call carries `id`,
/// `type` and the name, later ones argument text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaToolCall {
    /// Which call of the choice this piece belongs to.
    pub index: u32,
    /// The call's id, in its first piece only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `"function"`, in the call's first piece only.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name and argument text.
    pub function: DeltaFunction,
}

/// One choice of a streamed chat chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Choice index, 0..n.
    pub index: u32,
    /// What changed.
    pub delta: Delta,
    /// Logprobs of the tokens in this delta, `null` unless requested.
    pub logprobs: Option<ChatLogprobs>,
    /// `null` until the choice's last chunk.
    pub finish_reason: Option<FinishReason>,
    /// How the reasoning ended, on the choice's last chunk only (r1serve
    /// extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_end: Option<ReasoningEnd>,
    /// The stop token or string that ended the choice (vLLM's field);
    /// absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
}

/// Top alternatives at one position of legacy logprobs: a JSON object from
/// token text to logprob, kept in the order given (most likely first)
/// rather than sorted by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopLogprobMap(pub Vec<(String, f32)>);

impl Serialize for TopLogprobMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            map.serialize_entry(token, &finite_logprob(*logprob))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TopLogprobMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = TopLogprobMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from token to logprob")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0));
                while let Some(entry) = access.next_entry::<String, f32>()? {
                    entries.push(entry);
                }
                Ok(TopLogprobMap(entries))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

/// Legacy completion logprobs: parallel arrays, one entry per token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Logprob of each token; `null` for the first echoed prompt token.
    #[serde(serialize_with = "serialize_optional_logprobs")]
    pub token_logprobs: Vec<Option<f32>>,
    /// Alternatives per position; `null` where not available.
    pub top_logprobs: Vec<Option<TopLogprobMap>>,
    /// Character offset of each token in the returned text.
    pub text_offset: Vec<u32>,
}

/// One choice of a legacy completion, streamed or not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// Choice index, 0..n.
    pub index: u32,
    /// Generated text (the whole text, or this chunk's part of it).
    pub text: String,
    /// Logprobs, `null` unless requested.
    pub logprobs: Option<CompletionLogprobs>,
    /// The prompt's logprobs when requested (vLLM's field); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobs>,
    /// `null` until the choice's last chunk.
    pub finish_reason: Option<FinishReason>,
    /// The stop token or string that ended the choice (vLLM's field);
    /// absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
}

/// A non-streaming completion, chat or legacy; `C` is the choice type,
/// which fixes `object`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response<C> {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// [`ResponseChoice::OBJECT`] of `C`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// Build fingerprint; omitted when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// The choices.
    pub choices: Vec<C>,
    /// Token accounting.
    pub usage: Usage,
    /// The prompt's logprobs when a chat request asked for them (vLLM's
    /// field; legacy completions carry it in each choice, as vLLM's do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobs>,
    /// The vote over the choices' answers, when the request asked for
    /// `consensus` (r1serve extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<ConsensusResult>,
}

/// Choice types of non-streaming responses.
pub trait ResponseChoice {
    /// The response's `object`.
    const OBJECT: &'static str;
}

impl ResponseChoice for ChatChoice {
    const OBJECT: &'static str = OBJECT_CHAT_COMPLETION;
}

impl ResponseChoice for CompletionChoice {
    const OBJECT: &'static str = OBJECT_TEXT_COMPLETION;
}

impl<C: ResponseChoice> Response<C> {
    /// A response with `object` set.
    pub fn new(id: String, created: u64, model: String, choices: Vec<C>, usage: Usage) -> Self {
        Self {
            id,
            object: C::OBJECT.to_string(),
            created,
            model,
            system_fingerprint: None,
            choices,
            usage,
            prompt_logprobs: None,
            consensus: None,
        }
    }
}

/// `POST /v1/chat/completions` response.
pub type ChatCompletionResponse = Response<ChatChoice>;
/// `POST /v1/completions` response.
pub type CompletionResponse = Response<CompletionChoice>;

/// One `data:` event of a stream, chat or legacy; `C` is the choice type,
/// which fixes `object`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chunk<C> {
    /// Same id in every chunk of a stream.
    pub id: String,
    /// [`StreamChoice::OBJECT`] of `C`.
    pub object: String,
    /// Unix seconds, the same in every chunk.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// Build fingerprint; omitted when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Choices that changed; empty in the usage chunk.
    pub choices: Vec<C>,
    /// As OpenAI: absent (`None`) unless `include_usage` was set; then
    /// `null` (`Some(None)`) in every chunk but the final usage chunk.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "double_option"
    )]
    pub usage: Option<Option<Usage>>,
    /// The vote, in the stream's final chunk of a `consensus` request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<ConsensusResult>,
}

/// Choice types of stream chunks.
pub trait StreamChoice {
    /// The chunk's `object` (legacy completions stream with the same
    /// `object` as their responses, as OpenAI does).
    const OBJECT: &'static str;
}

impl StreamChoice for ChunkChoice {
    const OBJECT: &'static str = OBJECT_CHAT_COMPLETION_CHUNK;
}

impl StreamChoice for CompletionChoice {
    const OBJECT: &'static str = OBJECT_TEXT_COMPLETION;
}

impl<C: StreamChoice> Chunk<C> {
    /// A chunk with `object` set; `include_usage` decides between an absent
    /// and a `null` usage field.
    pub fn new(
        id: String,
        created: u64,
        model: String,
        choices: Vec<C>,
        include_usage: bool,
    ) -> Self {
        Self {
            id,
            object: C::OBJECT.to_string(),
            created,
            model,
            system_fingerprint: None,
            choices,
            usage: include_usage.then_some(None),
            consensus: None,
        }
    }

    /// The final usage chunk: no choices, usage filled in.
    pub fn usage_only(id: String, created: u64, model: String, usage: Usage) -> Self {
        Self {
            usage: Some(Some(usage)),
            ..Self::new(id, created, model, Vec::new(), true)
        }
    }
}

/// A streamed chat completion's event.
pub type ChatCompletionChunk = Chunk<ChunkChoice>;
/// A streamed legacy completion's event.
pub type CompletionChunk = Chunk<CompletionChoice>;

/// A fresh `chatcmpl-…` id.
pub fn chat_completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// A fresh `cmpl-…` id.
pub fn completion_id() -> String {
    format!("cmpl-{}", uuid::Uuid::new_v4().simple())
}

/// Current Unix time in seconds for `created`; 0 if the clock is before
/// 1970, rather than failing a request over it.
pub fn unix_timestamp() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
