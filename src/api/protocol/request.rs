//! Request bodies as clients send them, and their validation into checked
//! generation parameters.

use std::collections::HashMap;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::*;
use crate::api::error::ApiError;
use crate::tokenizer::ChatEnding;
use crate::types::TokenId;

/// The JSON type of `value`, for error messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Deserializes `value` as `T` only if it is a JSON object. Serde's derived
/// structs also accept an array of their fields in order, so without this
/// `"stream_options": []` or a message sent as `["user", "hi"]` would pass.
fn from_object<T: DeserializeOwned, E: serde::de::Error>(value: Value) -> Result<T, E> {
    match value {
        Value::Object(_) => T::deserialize(value).map_err(E::custom),
        other => Err(E::custom(format!(
            "expected an object, got {}",
            json_type(&other)
        ))),
    }
}

/// `deserialize_with` for an optional object field (`null` reads as
/// absent).
fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(value) => from_object(value).map(Some),
    }
}

/// `deserialize_with` for `stream_options`. Its errors name the field
/// themselves: it sits in a flattened struct, where serde loses the path.
fn stream_options<'de, D>(deserializer: D) -> Result<Option<StreamOptions>, D::Error>
where
    D: Deserializer<'de>,
{
    optional_object(deserializer)
        .map_err(|e: D::Error| D::Error::custom(format!("'stream_options': {e}")))
}

/// `deserialize_with` for a list of objects; errors name the item.
fn list_of_objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Vec::<Value>::deserialize(deserializer)?
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            from_object(item).map_err(|e: D::Error| D::Error::custom(format!("[{i}]: {e}")))
        })
        .collect()
}

/// Author of a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System prompt.
    System,
    /// OpenAI's newer name for a system prompt.
    Developer,
    /// End user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
}

/// One part of an array-form message content. Only `{"type": "text"}` is
/// supported; other types are kept so validation can name them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    /// The part type, e.g. `"text"` or `"image_url"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Message content: a plain string or a list of parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// `"content": "…"`.
    Text(String),
    /// `"content": [{"type": "text", "text": "…"}, …]`.
    Parts(Vec<ContentPart>),
}

/// A chat message as sent by the client.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ChatMessage {
    /// Who wrote the message.
    pub role: Role,
    /// The text; `null` is allowed (e.g. for assistant tool-call turns).
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// Reasoning of an earlier assistant turn, as returned by this server.
    #[serde(default)]
    pub reasoning_content: Option<String>,
    /// The same under vLLM's and OpenRouter's name; see [`ReasoningField`].
    #[serde(default)]
    pub reasoning: Option<String>,
    /// Optional participant name; accepted and ignored.
    #[serde(default)]
    pub name: Option<String>,
    /// Tool calls of an assistant turn, checked by validation.
    #[serde(default)]
    pub tool_calls: Option<Value>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// A chat message reduced to plain text, ready for the chat template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TextMessage {
    /// Who wrote the message.
    pub role: Role,
    /// The text, with array parts joined by `\n` as vLLM does; `null` only
    /// for an assistant turn that made tool calls and said nothing, which
    /// is how templates (R1's) tell such a turn apart.
    pub content: Option<String>,
    /// Reasoning of an earlier assistant turn, if the client sent it back
    /// under either name: templates read `reasoning_content`, and only the
    /// fields the tokenizer knows come from the client are encoded as plain
    /// text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Tool calls of an assistant turn, see [`message_tool_calls`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    /// The call a `tool` message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// `stop`: one string or a list.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StopSequences {
    /// `"stop": "…"`.
    One(String),
    /// `"stop": ["…", …]`.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with usage and empty `choices`.
    #[serde(default)]
    pub include_usage: Option<bool>,
    /// vLLM's: with `include_usage`, every chunk carries the usage so far.
    #[serde(default)]
    pub continuous_usage_stats: Option<bool>,
}

/// Sampling and streaming fields shared by chat and legacy completions.
///
/// Integers that have a valid range are read as `i64` so that out-of-range
/// values produce this module's precise errors rather than serde's.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SamplingFields {
    /// Most tokens to generate (deprecated in chat for
    /// `max_completion_tokens`).
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// Sampling temperature, 0–2; 0 means greedy.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass, (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Top-k cutoff; -1 or 0 disables it.
    #[serde(default)]
    pub top_k: Option<i64>,
    /// Min-p cutoff, [0, 1].
    #[serde(default)]
    pub min_p: Option<f32>,
    /// Number of choices.
    #[serde(default)]
    pub n: Option<i64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<StopSequences>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// OpenAI presence penalty, [-2, 2].
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// OpenAI frequency penalty, [-2, 2].
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Multiplicative repetition penalty (vLLM extension), [0.01, 100].
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Token id (as a string) → bias added to its logit, [-100, 100].
    #[serde(default)]
    pub logit_bias: Option<HashMap<String, f32>>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default, deserialize_with = "stream_options")]
    pub stream_options: Option<StreamOptions>,
    /// End-user id; accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// Keep generating past EOS (vLLM extension, for benchmarking).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    /// Suppress EOS and stop strings until this many tokens (vLLM extension).
    #[serde(default)]
    pub min_tokens: Option<i64>,
    /// Token ids that end generation (vLLM extension).
    #[serde(default)]
    pub stop_token_ids: Option<Vec<i64>>,
    /// Drop special tokens from the text (vLLM extension, default true).
    #[serde(default)]
    pub skip_special_tokens: Option<bool>,
    /// vLLM's slow-tokenizer option to put spaces around special tokens in
    /// the text; only `false`, what this server's detokenizer does, is
    /// accepted together with `skip_special_tokens: false`.
    #[serde(default)]
    pub spaces_between_special_tokens: Option<bool>,
    /// Keep the matched stop string at the end of the text (vLLM
    /// extension, default false).
    #[serde(default)]
    pub include_stop_str_in_output: Option<bool>,
    /// Alternatives per prompt position to report with the logprobs of the
    /// prompt's tokens (vLLM extension).
    #[serde(default)]
    pub prompt_logprobs: Option<i64>,
    /// OpenAI's processing tier; only the default tiers exist here.
    #[serde(default)]
    pub service_tier: Option<Value>,
    /// Whether OpenAI should store the completion; this server stores
    /// nothing.
    #[serde(default)]
    pub store: Option<Value>,
    /// Tags of a stored completion; accepted like `user` and not used.
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// Most `stop_token_ids` per request: each generated token is compared
/// with every one of them.
pub const MAX_STOP_TOKEN_IDS: usize = 256;

/// Most top-level field names one warning about unrecognized fields lists,
/// and the most characters of each, so a client cannot fill the log.
const MAX_LOGGED_FIELDS: usize = 16;
const MAX_LOGGED_FIELD_CHARS: usize = 64;

/// Top-level fields no request struct recognizes, captured by a
/// `#[serde(flatten)]` map declared after every other flattened struct (serde
/// gives a flattened struct only its own fields and the map what is left).
/// They are ignored with a log line, as vLLM does.
pub type UnknownFields = std::collections::BTreeMap<String, serde::de::IgnoredAny>;

/// Logs the fields of `unknown`, if any, at warn level.
pub fn warn_unknown_fields(route: &str, unknown: &UnknownFields) {
    if unknown.is_empty() {
        return;
    }
    let mut names: Vec<String> = unknown
        .keys()
        .take(MAX_LOGGED_FIELDS)
        .map(|name| {
            // Quoted and escaped: the names come from the client.
            let name: String = name.chars().take(MAX_LOGGED_FIELD_CHARS).collect();
            format!("{name:?}")
        })
        .collect();
    if unknown.len() > MAX_LOGGED_FIELDS {
        names.push(format!("and {} more", unknown.len() - MAX_LOGGED_FIELDS));
    }
    tracing::warn!(
        "{route}: ignoring unrecognized request fields: {}",
        names.join(", ")
    );
}

/// OpenAI chat parameters this server does not implement. Each is kept as
/// raw JSON so validation can tell a harmless value (`"function_call":
/// "none"`, `"response_format": {"type": "text"}`) from a real request.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct UnsupportedChatFields {
    /// Legacy function definitions.
    #[serde(default)]
    pub functions: Option<Value>,
    /// Legacy function selection.
    #[serde(default)]
    pub function_call: Option<Value>,
    /// Audio output options.
    #[serde(default)]
    pub audio: Option<Value>,
    /// Output modalities.
    #[serde(default)]
    pub modalities: Option<Value>,
    /// Predicted output.
    #[serde(default)]
    pub prediction: Option<Value>,
}

/// vLLM request parameters this server does not implement, on both
/// generation routes. Recognized so that a client relying on one gets a 400
/// naming it rather than an answer that silently lacks it; kept as raw JSON
/// so values that ask for nothing (`false`, `null`, `[]`) pass.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct UnsupportedVllmFields {
    /// Beam search instead of sampling.
    #[serde(default)]
    pub use_beam_search: Option<Value>,
    /// Word sequences never to generate.
    #[serde(default)]
    pub bad_words: Option<Value>,
    /// The only tokens that may be generated.
    #[serde(default)]
    pub allowed_token_ids: Option<Value>,
    /// Keep only the last this many prompt tokens.
    #[serde(default)]
    pub truncate_prompt_tokens: Option<Value>,
    /// Write logprob tokens as `token_id:N`.
    #[serde(default)]
    pub return_tokens_as_token_ids: Option<Value>,
    /// A chat template for this request only.
    #[serde(default)]
    pub chat_template: Option<Value>,
    /// Named server-side logits processors.
    #[serde(default)]
    pub logits_processors: Option<Value>,
    /// Documents for retrieval-augmented templates.
    #[serde(default)]
    pub documents: Option<Value>,
}

impl UnsupportedVllmFields {
    /// The first parameter whose value asks for something.
    pub fn first_used(&self) -> Option<&'static str> {
        let present = |v: &Option<Value>| !matches!(v, None | Some(Value::Null));
        let on = |v: &Option<Value>| !matches!(v, None | Some(Value::Null | Value::Bool(false)));
        [
            ("use_beam_search", on(&self.use_beam_search)),
            ("bad_words", non_empty_list(&self.bad_words)),
            ("allowed_token_ids", non_empty_list(&self.allowed_token_ids)),
            (
                "truncate_prompt_tokens",
                present(&self.truncate_prompt_tokens),
            ),
            (
                "return_tokens_as_token_ids",
                on(&self.return_tokens_as_token_ids),
            ),
            ("chat_template", present(&self.chat_template)),
            ("logits_processors", non_empty_list(&self.logits_processors)),
            ("documents", non_empty_list(&self.documents)),
        ]
        .into_iter()
        .find_map(|(name, used)| used.then_some(name))
    }
}

/// Whether a list-valued feature parameter asks for something: absent,
/// `null` and `[]` do not.
fn non_empty_list(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(_) => true,
    }
}

/// Whether a selection parameter asks for something: absent, `null` and
/// `"none"` do not.
fn not_none(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => s != "none",
        Some(_) => true,
    }
}

/// Template variables the server sets itself; a kwarg of the same name
/// would override the validated conversation or its framing.
const SERVER_TEMPLATE_VARIABLES: [&str; 4] = [
    "messages",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
];

/// Checks `chat_template_kwargs`. Templates read `tools`, `functions` and
/// `documents` from their variables, so those names (and the tool
/// selections) get the same 400 as the parameters they would smuggle in,
/// with the same allowance for values that ask for nothing; names the
/// server sets itself are refused outright.
pub fn validate_template_kwargs(kwargs: Option<&Map<String, Value>>) -> Result<(), ApiError> {
    let Some(kwargs) = kwargs else {
        return Ok(());
    };
    let param = |name: &str| format!("chat_template_kwargs.{name}");
    for name in SERVER_TEMPLATE_VARIABLES {
        if kwargs.contains_key(name) {
            return Err(ApiError::bad_request(
                param(name),
                format!(
                    "'{name}' is set by the server and cannot be passed in 'chat_template_kwargs'"
                ),
            ));
        }
    }
    let get = |name: &str| kwargs.get(name).cloned();
    let used = [
        ("tools", non_empty_list(&get("tools"))),
        ("functions", non_empty_list(&get("functions"))),
        ("documents", non_empty_list(&get("documents"))),
        ("tool_choice", not_none(&get("tool_choice"))),
        ("function_call", not_none(&get("function_call"))),
    ]
    .into_iter()
    .find_map(|(name, used)| used.then_some(name));
    let message = |name: &str| {
        match name {
        // These have parameters of their own, which validate them.
        "tools" | "tool_choice" => format!(
            "'{name}' cannot be passed in 'chat_template_kwargs'; use the request's '{name}' parameter"
        ),
        _ => format!(
            "'{name}' is not supported by this server, in 'chat_template_kwargs' or elsewhere"
        ),
    }
    };
    match used {
        Some(name) => {
            Err(ApiError::bad_request(param(name), message(name))
                .with_code("unsupported_parameter"))
        }
        None => Ok(()),
    }
}

impl UnsupportedChatFields {
    /// The first parameter whose value asks for an unimplemented feature.
    ///
    /// Values that request nothing are accepted, because common clients send
    /// them by default: empty `functions`, `function_call` of `"none"` and
    /// `modalities` `["text"]`.
    pub fn first_used(&self) -> Option<&'static str> {
        let present = |v: &Option<Value>| !matches!(v, None | Some(Value::Null));
        let text_modalities = |v: &Option<Value>| match v {
            None | Some(Value::Null) => true,
            Some(Value::Array(items)) => items.iter().all(|m| m.as_str() == Some("text")),
            Some(_) => false,
        };
        [
            ("functions", non_empty_list(&self.functions)),
            ("function_call", not_none(&self.function_call)),
            ("audio", present(&self.audio)),
            ("modalities", !text_modalities(&self.modalities)),
            ("prediction", present(&self.prediction)),
        ]
        .into_iter()
        .find_map(|(name, used)| used.then_some(name))
    }
}

/// `POST /v1/chat/completions` body.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ChatCompletionRequest {
    /// Model name; optional because the server serves one model.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    #[serde(deserialize_with = "list_of_objects")]
    pub messages: Vec<ChatMessage>,
    /// Sampling and streaming fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Most tokens to generate; takes precedence over `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    /// Return per-token logprobs.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per position, 0–20; requires `logprobs`.
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    /// Extra variables for the chat template.
    #[serde(default)]
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// Whether to return the reasoning (default true).
    #[serde(default)]
    pub include_reasoning: Option<bool>,
    /// The name(s) to return the reasoning under, overriding
    /// `--reasoning-field`; checked by validation.
    #[serde(default)]
    pub reasoning_field: Option<String>,
    /// Tool definitions, checked by [`validate_tools`].
    #[serde(default)]
    pub tools: Option<Value>,
    /// `"none"`, `"auto"`, `"required"` or a named function.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Whether the model may make several calls in one answer.
    #[serde(default)]
    pub parallel_tool_calls: Option<Value>,
    /// Thinking budgets and the answer reserve.
    #[serde(flatten)]
    pub thinking: ThinkingFields,
    /// Open the assistant's turn after the conversation (vLLM extension,
    /// default true).
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
    /// Leave the final (assistant) message open and continue it (vLLM
    /// extension, default false).
    #[serde(default)]
    pub continue_final_message: Option<bool>,
    /// Start the answer with the final message's content when that message
    /// is the assistant's (vLLM extension, default false).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Structured outputs in every dialect.
    #[serde(flatten)]
    pub structured: StructuredFields,
    /// k samples and a majority vote over their answers (r1serve
    /// extension), checked by [`Consensus::parse`].
    #[serde(default)]
    pub consensus: Option<Value>,
    /// Unimplemented OpenAI parameters.
    #[serde(flatten)]
    pub unsupported: UnsupportedChatFields,
    /// Unimplemented vLLM parameters.
    #[serde(flatten)]
    pub unsupported_vllm: UnsupportedVllmFields,
    /// Fields nothing above recognizes; must stay the last flattened field.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// `POST /v1/completions` prompt as sent.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CompletionPrompt {
    /// One string.
    Text(String),
    /// One pre-tokenized prompt.
    Tokens(Vec<TokenId>),
    /// A batch of strings; only a batch of one is accepted.
    Texts(Vec<String>),
    /// A batch of token lists; only a batch of one is accepted.
    TokenLists(Vec<Vec<TokenId>>),
}

/// `POST /v1/completions` body.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CompletionRequest {
    /// Model name; optional because the server serves one model.
    #[serde(default)]
    pub model: Option<String>,
    /// The prompt.
    pub prompt: CompletionPrompt,
    /// Sampling and streaming fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Legacy logprobs: number of alternatives per position, 0–20.
    #[serde(default)]
    pub logprobs: Option<i64>,
    /// Prepend the prompt to the returned text.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Insertion suffix; not supported.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Server-side best-of; only `best_of == n` is supported.
    #[serde(default)]
    pub best_of: Option<i64>,
    /// Structured outputs in every dialect.
    #[serde(flatten)]
    pub structured: StructuredFields,
    /// The chat route's `consensus` extension, captured so that it is
    /// refused here rather than silently ignored.
    #[serde(default)]
    pub consensus: Option<Value>,
    /// Unimplemented vLLM parameters.
    #[serde(flatten)]
    pub unsupported_vllm: UnsupportedVllmFields,
    /// Fields nothing above recognizes; must stay the last flattened field.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// A validated prompt for a legacy completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Text to tokenize.
    Text(String),
    /// Token ids to use as-is.
    Tokens(Vec<TokenId>),
}

/// Checked generation parameters shared by both endpoints.
///
/// `None` in the sampling knobs means "not set by the client", so the server
/// can apply the model's `generation_config.json` defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationParams {
    /// Most tokens to generate; `None` means up to the context length.
    pub max_tokens: Option<u32>,
    /// Tokens to generate before EOS or a stop string may end the output.
    pub min_tokens: u32,
    /// Temperature: 0 (greedy) or in [1e-5, 2].
    pub temperature: Option<f32>,
    /// Nucleus mass in (0, 1].
    pub top_p: Option<f32>,
    /// Top-k cutoff; `Some(0)` when the client disabled it (-1 or 0).
    pub top_k: Option<u32>,
    /// Min-p in [0, 1].
    pub min_p: Option<f32>,
    /// Number of choices, 1..=128.
    pub n: u32,
    /// Sampling seed; negative client seeds are reinterpreted bitwise so
    /// each stays distinct and reproducible.
    pub seed: Option<u64>,
    /// Presence penalty in [-2, 2].
    pub presence_penalty: f32,
    /// Frequency penalty in [-2, 2].
    pub frequency_penalty: f32,
    /// Repetition penalty in [0.01, 100] (1 disables it).
    pub repetition_penalty: Option<f32>,
    /// Logit biases sorted by token id; ids are not yet checked against the
    /// vocabulary size, which this module does not know.
    pub logit_bias: Vec<(TokenId, f32)>,
    /// Non-empty stop strings, at most [`MAX_STOP_SEQUENCES`].
    pub stop: Vec<String>,
    /// `Some(k)`: return logprobs with `k` alternatives per position.
    pub logprobs: Option<u32>,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
    /// Stream the answer.
    pub stream: bool,
    /// Send a usage chunk at the end of the stream.
    pub include_usage: bool,
    /// Every chunk carries the usage so far (vLLM's
    /// `continuous_usage_stats`, which needs `include_usage`, as in vLLM).
    pub continuous_usage: bool,
    /// Token ids that end generation, sorted and distinct; not yet checked
    /// against the vocabulary size.
    pub stop_token_ids: Vec<TokenId>,
    /// Drop special tokens from the text.
    pub skip_special_tokens: bool,
    /// Keep a matched stop string in the text.
    pub include_stop_str_in_output: bool,
    /// `Some(k)`: return the prompt's logprobs with `k` alternatives per
    /// position.
    pub prompt_logprobs: Option<u32>,
}

/// A checked chat request.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedChat {
    /// The conversation as plain text.
    pub messages: Vec<TextMessage>,
    /// Generation parameters.
    pub params: GenerationParams,
    /// Whether to return the reasoning.
    pub include_reasoning: bool,
    /// The request's choice of reasoning field; `None` leaves it to the
    /// server's `--reasoning-field`.
    pub reasoning_field: Option<ReasoningField>,
    /// The request's tools, `None` when it has none.
    pub tools: Option<ChatTools>,
    /// What the request asks of its reasoning.
    pub thinking: ThinkingRequest,
    /// How the conversation ends in the prompt.
    pub ending: ChatEnding,
    /// Text the answer starts with: the final assistant message's content,
    /// when `echo` asks for it.
    pub echo: Option<String>,
    /// What the answer must match.
    pub constraint: Option<Constraint>,
    /// The vote over the choices' answers, when asked for; `params.n` is
    /// then its sample count.
    pub consensus: Option<Consensus>,
}

/// A checked legacy completion request.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedCompletion {
    /// The prompts: one, or a batch, each answered with `n` choices.
    pub prompts: Vec<Prompt>,
    /// Prepend the prompt to the output text.
    pub echo: bool,
    /// Generation parameters.
    pub params: GenerationParams,
    /// What the output must match.
    pub constraint: Option<Constraint>,
}

fn in_range(param: &str, value: f32, lo: f32, hi: f32) -> Result<f32, ApiError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            param,
            format!("'{param}' must be between {lo} and {hi}, got {value}"),
        ))
    }
}

fn int_in_range(param: &str, value: i64, lo: i64, hi: i64) -> Result<u32, ApiError> {
    if (lo..=hi).contains(&value) {
        u32::try_from(value).map_err(|_| ApiError::bad_request(param, "value out of range"))
    } else {
        Err(ApiError::bad_request(
            param,
            format!("'{param}' must be between {lo} and {hi}, got {value}"),
        ))
    }
}

fn validate_top_logprobs(param: &str, value: i64) -> Result<u32, ApiError> {
    int_in_range(param, value, 0, MAX_TOP_LOGPROBS)
}

impl SamplingFields {
    /// Checks every field. `max_tokens` is passed separately with the name
    /// the client used, since chat prefers `max_completion_tokens`.
    pub fn validate(
        &self,
        max_tokens: Option<(&str, i64)>,
        logprobs: Option<u32>,
    ) -> Result<GenerationParams, ApiError> {
        let max_tokens = max_tokens
            .map(|(param, v)| int_in_range(param, v, 1, i64::from(u32::MAX)))
            .transpose()?;
        let min_tokens = self
            .min_tokens
            .map(|v| int_in_range("min_tokens", v, 0, i64::from(u32::MAX)))
            .transpose()?
            .unwrap_or(0);
        if let Some(max) = max_tokens {
            if min_tokens > max {
                return Err(ApiError::bad_request(
                    "min_tokens",
                    format!("'min_tokens' ({min_tokens}) must not exceed 'max_tokens' ({max})"),
                ));
            }
        }
        // Below the threshold, dividing logits by the temperature could
        // overflow (1/t is infinite for the smallest floats): sample greedily,
        // which is what such a temperature asks for, as vLLM does.
        let temperature = self
            .temperature
            .map(|t| in_range("temperature", t, 0.0, 2.0))
            .transpose()?
            .map(|t| if t < GREEDY_TEMPERATURE { 0.0 } else { t });
        let top_p = self
            .top_p
            .map(|p| {
                if p > 0.0 && p <= 1.0 {
                    Ok(p)
                } else {
                    Err(ApiError::bad_request(
                        "top_p",
                        format!("'top_p' must be in (0, 1], got {p}"),
                    ))
                }
            })
            .transpose()?;
        let top_k = match self.top_k {
            None => None,
            Some(-1) | Some(0) => Some(0),
            Some(k) if k >= 1 => Some(u32::try_from(k).unwrap_or(u32::MAX)),
            Some(k) => {
                return Err(ApiError::bad_request(
                    "top_k",
                    format!("'top_k' must be -1 (disabled) or at least 1, got {k}"),
                ))
            }
        };
        let min_p = self
            .min_p
            .map(|p| in_range("min_p", p, 0.0, 1.0))
            .transpose()?;
        let n = int_in_range("n", self.n.unwrap_or(1), 1, MAX_N)?;
        let presence_penalty = in_range(
            "presence_penalty",
            self.presence_penalty.unwrap_or(0.0),
            -2.0,
            2.0,
        )?;
        let frequency_penalty = in_range(
            "frequency_penalty",
            self.frequency_penalty.unwrap_or(0.0),
            -2.0,
            2.0,
        )?;
        let repetition_penalty = self
            .repetition_penalty
            .map(|p| {
                in_range(
                    "repetition_penalty",
                    p,
                    MIN_REPETITION_PENALTY,
                    MAX_REPETITION_PENALTY,
                )
            })
            .transpose()?;
        self.check_unsupported()?;
        let skip_special_tokens = self.skip_special_tokens.unwrap_or(true);
        let prompt_logprobs = self
            .prompt_logprobs
            .map(|k| validate_top_logprobs("prompt_logprobs", k))
            .transpose()?;
        if prompt_logprobs.is_some() && self.stream == Some(true) {
            // As vLLM: they come once, with the whole answer.
            return Err(ApiError::bad_request(
                "prompt_logprobs",
                "'prompt_logprobs' is not available with 'stream': true",
            ));
        }
        Ok(GenerationParams {
            max_tokens,
            min_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            n,
            // Bitwise reinterpretation: a negative seed is as valid as any.
            seed: self.seed.map(|s| s as u64),
            presence_penalty,
            frequency_penalty,
            repetition_penalty,
            logit_bias: self.validate_logit_bias()?,
            stop: self.validate_stop()?,
            logprobs,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            stream: self.stream.unwrap_or(false),
            // `stream_options` without `stream` is ignored rather than
            // rejected: it asks for nothing a non-streaming reply lacks.
            include_usage: self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            continuous_usage: self.stream_options.as_ref().is_some_and(|o| {
                o.include_usage == Some(true) && o.continuous_usage_stats == Some(true)
            }),
            stop_token_ids: self.validate_stop_token_ids()?,
            skip_special_tokens,
            include_stop_str_in_output: self.include_stop_str_in_output.unwrap_or(false),
            prompt_logprobs,
        })
    }

    /// Refuses values of recognized fields that ask for what this server
    /// does not do.
    fn check_unsupported(&self) -> Result<(), ApiError> {
        if self.spaces_between_special_tokens == Some(true)
            && self.skip_special_tokens == Some(false)
        {
            return Err(ApiError::bad_request(
                "spaces_between_special_tokens",
                "'spaces_between_special_tokens' is not supported: special tokens are written \
                 without added spaces, as vLLM's fast detokenizer writes them; send false or omit it",
            )
            .with_code("unsupported_parameter"));
        }
        let default_tier = match &self.service_tier {
            None | Some(Value::Null) => true,
            Some(Value::String(tier)) => tier == "auto" || tier == "default",
            Some(_) => false,
        };
        if !default_tier {
            return Err(ApiError::bad_request(
                "service_tier",
                "'service_tier' must be \"auto\" or \"default\": this server has one tier",
            )
            .with_code("unsupported_parameter"));
        }
        if !matches!(
            self.store,
            None | Some(Value::Null) | Some(Value::Bool(false))
        ) {
            return Err(ApiError::bad_request(
                "store",
                "'store' is not supported: this server stores no completions",
            )
            .with_code("unsupported_parameter"));
        }
        Ok(())
    }

    fn validate_stop_token_ids(&self) -> Result<Vec<TokenId>, ApiError> {
        let Some(list) = &self.stop_token_ids else {
            return Ok(Vec::new());
        };
        if list.len() > MAX_STOP_TOKEN_IDS {
            return Err(ApiError::bad_request(
                "stop_token_ids",
                format!(
                    "'stop_token_ids' may hold at most {MAX_STOP_TOKEN_IDS} ids, got {}",
                    list.len()
                ),
            ));
        }
        let mut ids = list
            .iter()
            .map(|&id| {
                TokenId::try_from(id).map_err(|_| {
                    ApiError::bad_request(
                        "stop_token_ids",
                        format!("'stop_token_ids' entry {id} is not a token id"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn validate_logit_bias(&self) -> Result<Vec<(TokenId, f32)>, ApiError> {
        let Some(map) = &self.logit_bias else {
            return Ok(Vec::new());
        };
        let mut biases = map
            .iter()
            .map(|(key, &bias)| {
                let id = key.trim().parse::<TokenId>().map_err(|_| {
                    ApiError::bad_request(
                        "logit_bias",
                        format!("'logit_bias' key '{key}' is not a token id"),
                    )
                })?;
                if !(-100.0..=100.0).contains(&bias) {
                    return Err(ApiError::bad_request(
                        "logit_bias",
                        format!(
                            "'logit_bias' value for token {id} must be between -100 and 100, got {bias}"
                        ),
                    ));
                }
                Ok((id, bias))
            })
            .collect::<Result<Vec<_>, _>>()?;
        biases.sort_by_key(|&(id, _)| id);
        Ok(biases)
    }

    fn validate_stop(&self) -> Result<Vec<String>, ApiError> {
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopSequences::One(s)) => vec![s.clone()],
            Some(StopSequences::Many(list)) => list.clone(),
        };
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(ApiError::bad_request(
                "stop",
                format!(
                    "'stop' may hold at most {MAX_STOP_SEQUENCES} strings, got {}",
                    stop.len()
                ),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::bad_request(
                "stop",
                "'stop' strings must not be empty",
            ));
        }
        let bytes: usize = stop.iter().map(String::len).sum();
        if bytes > MAX_STOP_BYTES {
            return Err(ApiError::bad_request(
                "stop",
                format!("'stop' strings may total at most {MAX_STOP_BYTES} bytes, got {bytes}"),
            ));
        }
        Ok(stop)
    }
}

/// Reduces client messages to plain text, rejecting what the chat template
/// cannot represent (non-text content parts) and checking tool calls.
pub fn text_messages(messages: &[ChatMessage]) -> Result<Vec<TextMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages",
            "'messages' must not be empty",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let tool_calls = match &message.tool_calls {
                None | Some(Value::Null) => None,
                Some(Value::Array(calls)) if calls.is_empty() => None,
                Some(calls) if message.role == Role::Assistant => {
                    Some(message_tool_calls(i, calls)?)
                }
                Some(_) => {
                    return Err(ApiError::bad_request(
                        format!("messages[{i}].tool_calls"),
                        "only assistant messages may have 'tool_calls'",
                    ))
                }
            };
            let content = match &message.content {
                None => String::new(),
                Some(MessageContent::Text(text)) => text.clone(),
                Some(MessageContent::Parts(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, part)| match (part.kind.as_str(), &part.text) {
                        ("text", Some(text)) => Ok(text.as_str()),
                        ("text", None) => Err(ApiError::bad_request(
                            format!("messages[{i}].content[{j}].text"),
                            "text content part is missing 'text'",
                        )),
                        (other, _) => Err(ApiError::bad_request(
                            format!("messages[{i}].content[{j}].type"),
                            format!("content part type '{other}' is not supported; only 'text' is"),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join("\n"),
            };
            Ok(TextMessage {
                role: message.role,
                content: (tool_calls.is_none() || !content.is_empty()).then_some(content),
                reasoning_content: message_reasoning(i, message)?,
                tool_calls,
                tool_call_id: message.tool_call_id.clone(),
            })
        })
        .collect()
}

/// A message's reasoning under either of its names; two different texts
/// are refused rather than one silently dropped.
fn message_reasoning(i: usize, message: &ChatMessage) -> Result<Option<String>, ApiError> {
    match (&message.reasoning_content, &message.reasoning) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad_request(
            format!("messages[{i}].reasoning"),
            "'reasoning' and 'reasoning_content' name the same text and must not differ; send one",
        )),
        (a, b) => Ok(a.as_ref().or(b.as_ref()).cloned()),
    }
}

impl ChatCompletionRequest {
    /// Checks the whole request: unsupported parameters, messages and
    /// generation parameters.
    pub fn validate(&self) -> Result<ValidatedChat, ApiError> {
        if let Some(param) = self
            .unsupported
            .first_used()
            .or_else(|| self.unsupported_vllm.first_used())
        {
            return Err(ApiError::unsupported_param(param));
        }
        validate_template_kwargs(self.chat_template_kwargs.as_ref())?;
        let messages = text_messages(&self.messages)?;
        let tools = validate_tools(
            self.tools.as_ref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls.as_ref(),
        )?;
        let constraint = self.structured.constraint()?;
        if let (Some(c), Some(tools)) = (&constraint, &tools) {
            if tools.choice.forces_call() {
                return Err(ApiError::bad_request(
                    &c.param,
                    format!(
                        "'{}' and a 'tool_choice' that forces a call both constrain the answer; send one",
                        c.param
                    ),
                ));
            }
        }
        let logprobs = self.logprobs.unwrap_or(false);
        let top_logprobs = self
            .top_logprobs
            .map(|k| validate_top_logprobs("top_logprobs", k))
            .transpose()?;
        if !logprobs && top_logprobs.is_some_and(|k| k > 0) {
            return Err(ApiError::bad_request(
                "top_logprobs",
                "'top_logprobs' requires 'logprobs' to be true",
            ));
        }
        let max_tokens = match (self.max_completion_tokens, self.sampling.max_tokens) {
            (Some(v), _) => Some(("max_completion_tokens", v)),
            (None, Some(v)) => Some(("max_tokens", v)),
            (None, None) => None,
        };
        let mut params = self
            .sampling
            .validate(max_tokens, logprobs.then(|| top_logprobs.unwrap_or(0)))?;
        let consensus = self.consensus.as_ref().map(Consensus::parse).transpose()?;
        if let Some(c) = &consensus {
            if self.sampling.n.is_some_and(|n| n != i64::from(c.samples)) {
                return Err(ApiError::bad_request(
                    "n",
                    format!(
                        "'n' ({}) differs from 'consensus.samples' ({}); the samples are the \
                         choices, so send one of them",
                        params.n, c.samples
                    ),
                ));
            }
            params.n = c.samples;
        }
        let thinking = self.thinking.validate()?;
        let reasoning_field = self
            .reasoning_field
            .as_deref()
            .map(|name| {
                name.parse::<ReasoningField>()
                    .map_err(|e| ApiError::bad_request("reasoning_field", e.to_string()))
            })
            .transpose()?;
        let ending = chat_ending(
            self.add_generation_prompt,
            self.continue_final_message,
            &messages,
        )?;
        let echo = match messages.last() {
            Some(last) if self.echo == Some(true) && last.role == Role::Assistant => {
                Some(last.content.clone().unwrap_or_default())
            }
            _ => None,
        };
        Ok(ValidatedChat {
            messages,
            params,
            include_reasoning: self.include_reasoning.unwrap_or(true) && !thinking.exclude,
            reasoning_field,
            tools,
            thinking,
            ending,
            echo,
            constraint,
            consensus,
        })
    }
}

/// Checks `add_generation_prompt` (default true) and
/// `continue_final_message` (default false) together, as vLLM does: both
/// set true is a contradiction, and only an assistant message can be
/// continued.
pub fn chat_ending(
    add_generation_prompt: Option<bool>,
    continue_final_message: Option<bool>,
    messages: &[TextMessage],
) -> Result<ChatEnding, ApiError> {
    match (add_generation_prompt, continue_final_message) {
        (Some(true), Some(true)) => Err(ApiError::bad_request(
            "continue_final_message",
            "'continue_final_message' and 'add_generation_prompt' cannot both be true",
        )),
        (_, Some(true)) => {
            if messages.last().map(|m| m.role) != Some(Role::Assistant) {
                return Err(ApiError::bad_request(
                    "continue_final_message",
                    "'continue_final_message' needs the final message to be the assistant's",
                ));
            }
            Ok(ChatEnding::ContinueFinal)
        }
        (Some(false), _) => Ok(ChatEnding::Closed),
        _ => Ok(ChatEnding::GenerationPrompt),
    }
}

impl CompletionRequest {
    /// Checks the whole request: prompt shape, unsupported options and
    /// generation parameters.
    pub fn validate(&self) -> Result<ValidatedCompletion, ApiError> {
        let prompts = match &self.prompt {
            CompletionPrompt::Text(text) => vec![Prompt::Text(text.clone())],
            CompletionPrompt::Tokens(tokens) => vec![Prompt::Tokens(tokens.clone())],
            CompletionPrompt::Texts(texts) => texts.iter().cloned().map(Prompt::Text).collect(),
            CompletionPrompt::TokenLists(lists) => {
                lists.iter().cloned().map(Prompt::Tokens).collect()
            }
        };
        let empty = |p: &Prompt| matches!(p, Prompt::Tokens(tokens) if tokens.is_empty());
        if prompts.is_empty() || prompts.iter().any(empty) {
            return Err(ApiError::bad_request(
                "prompt",
                "'prompt' must not be empty",
            ));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::unsupported_param("suffix"));
        }
        if self.consensus.is_some() {
            return Err(ApiError::bad_request(
                "consensus",
                "'consensus' votes over chat answers: send it to /v1/chat/completions",
            ));
        }
        if let Some(param) = self.unsupported_vllm.first_used() {
            return Err(ApiError::unsupported_param(param));
        }
        let logprobs = self
            .logprobs
            .map(|k| validate_top_logprobs("logprobs", k))
            .transpose()?;
        let max_tokens = self.sampling.max_tokens.map(|v| ("max_tokens", v));
        let params = self.sampling.validate(max_tokens, logprobs)?;
        if let Some(best_of) = self.best_of {
            if best_of != i64::from(params.n) {
                return Err(ApiError::bad_request(
                    "best_of",
                    format!(
                        "'best_of' must equal 'n' ({}); server-side best-of is not supported",
                        params.n
                    ),
                ));
            }
        }
        // Every prompt of a batch gets `n` choices: the response's size is
        // their product, bounded as `n` alone is.
        let choices = prompts.len() as i64 * i64::from(params.n);
        if choices > MAX_N {
            return Err(ApiError::bad_request(
                "prompt",
                format!(
                    "{} prompts of {} choices each make {choices} choices, more than {MAX_N}",
                    prompts.len(),
                    params.n
                ),
            ));
        }
        Ok(ValidatedCompletion {
            prompts,
            echo: self.echo.unwrap_or(false),
            params,
            constraint: self.structured.constraint()?,
        })
    }
}
