//! Serde types for the OpenAI API as it appears on the wire, plus the
//! validation that turns a request into checked generation parameters.
//!
//! Request types accept everything OpenAI clients send: unknown fields are
//! ignored, and OpenAI features this server does not implement (tools,
//! structured output, audio, …) are captured so that validation can reject
//! them with a 400 naming the parameter instead of silently ignoring them.
//! Response types serialize exactly as OpenAI does, including which fields
//! are `null` and which are absent, since some clients depend on both.

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::types::TokenId;

/// Most `n` a request may ask for; each choice occupies its own sequence.
pub const MAX_N: i64 = 128;
/// Most alternatives per position for `top_logprobs` / legacy `logprobs`.
/// OpenAI's limit is 20 for chat and 5 for completions; 20 is used for both.
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// Most stop strings per request. OpenAI allows 4; vLLM has no limit. 16
/// keeps clients written for either working while bounding the per-token
/// matching cost.
pub const MAX_STOP_SEQUENCES: usize = 16;
/// What OpenAI reports for a logprob of −∞; JSON cannot encode infinities and
/// serde_json would otherwise write `null`.
pub const MIN_LOGPROB: f32 = -9999.0;

/// `object` of a non-streaming chat completion.
pub const OBJECT_CHAT_COMPLETION: &str = "chat.completion";
/// `object` of a streamed chat completion chunk.
pub const OBJECT_CHAT_COMPLETION_CHUNK: &str = "chat.completion.chunk";
/// `object` of legacy completions, streamed or not.
pub const OBJECT_TEXT_COMPLETION: &str = "text_completion";

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

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
    /// Optional participant name; accepted and ignored.
    #[serde(default)]
    pub name: Option<String>,
    /// Tool calls of an assistant turn; rejected when non-empty.
    #[serde(default)]
    pub tool_calls: Option<Value>,
}

/// A chat message reduced to plain text, ready for the chat template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TextMessage {
    /// Who wrote the message.
    pub role: Role,
    /// The text, with array parts joined by `\n` as vLLM does.
    pub content: String,
    /// Reasoning of an earlier assistant turn, if the client sent it back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
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
    /// Multiplicative repetition penalty (vLLM extension), > 0.
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Token id (as a string) → bias added to its logit, [-100, 100].
    #[serde(default)]
    pub logit_bias: Option<HashMap<String, f32>>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
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
}

/// OpenAI chat parameters this server does not implement. Each is kept as
/// raw JSON so validation can tell a harmless value (`"tool_choice":
/// "none"`, `"response_format": {"type": "text"}`) from a real request.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct UnsupportedChatFields {
    /// Tool definitions.
    #[serde(default)]
    pub tools: Option<Value>,
    /// Tool selection.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Legacy function definitions.
    #[serde(default)]
    pub functions: Option<Value>,
    /// Legacy function selection.
    #[serde(default)]
    pub function_call: Option<Value>,
    /// Structured output format.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Audio output options.
    #[serde(default)]
    pub audio: Option<Value>,
    /// Output modalities.
    #[serde(default)]
    pub modalities: Option<Value>,
    /// Predicted output.
    #[serde(default)]
    pub prediction: Option<Value>,
    /// Parallel tool calls; meaningless without tools.
    #[serde(default)]
    pub parallel_tool_calls: Option<Value>,
}

impl UnsupportedChatFields {
    /// The first parameter whose value asks for an unimplemented feature.
    ///
    /// Values that request nothing are accepted, because common clients send
    /// them by default: empty `tools`/`functions`, `tool_choice` or
    /// `function_call` of `"none"`, `response_format` `{"type": "text"}`,
    /// `modalities` `["text"]`, and any `parallel_tool_calls` (it only
    /// qualifies `tools`, which are rejected on their own).
    pub fn first_used(&self) -> Option<&'static str> {
        let non_empty_list = |v: &Option<Value>| match v {
            None | Some(Value::Null) => false,
            Some(Value::Array(items)) => !items.is_empty(),
            Some(_) => true,
        };
        let not_none = |v: &Option<Value>| match v {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => s != "none",
            Some(_) => true,
        };
        let present = |v: &Option<Value>| !matches!(v, None | Some(Value::Null));
        let text_format = |v: &Option<Value>| match v {
            None | Some(Value::Null) => true,
            Some(Value::Object(o)) => o.get("type").and_then(Value::as_str) == Some("text"),
            Some(_) => false,
        };
        let text_modalities = |v: &Option<Value>| match v {
            None | Some(Value::Null) => true,
            Some(Value::Array(items)) => items.iter().all(|m| m.as_str() == Some("text")),
            Some(_) => false,
        };
        [
            ("tools", non_empty_list(&self.tools)),
            ("tool_choice", not_none(&self.tool_choice)),
            ("functions", non_empty_list(&self.functions)),
            ("function_call", not_none(&self.function_call)),
            ("response_format", !text_format(&self.response_format)),
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
    /// Whether to return `reasoning_content` (default true).
    #[serde(default)]
    pub include_reasoning: Option<bool>,
    /// Unimplemented OpenAI parameters.
    #[serde(flatten)]
    pub unsupported: UnsupportedChatFields,
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
    /// Temperature in [0, 2].
    pub temperature: Option<f32>,
    /// Nucleus mass in (0, 1].
    pub top_p: Option<f32>,
    /// Top-k cutoff; `None` when disabled.
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
    /// Repetition penalty, > 0 (1 disables it).
    pub repetition_penalty: f32,
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
}

/// A checked chat request.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedChat {
    /// The conversation as plain text.
    pub messages: Vec<TextMessage>,
    /// Generation parameters.
    pub params: GenerationParams,
    /// Whether to return `reasoning_content`.
    pub include_reasoning: bool,
}

/// A checked legacy completion request.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedCompletion {
    /// The prompt.
    pub prompt: Prompt,
    /// Prepend the prompt to the output text.
    pub echo: bool,
    /// Generation parameters.
    pub params: GenerationParams,
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
        let temperature = self
            .temperature
            .map(|t| in_range("temperature", t, 0.0, 2.0))
            .transpose()?;
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
            None | Some(-1) | Some(0) => None,
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
        let repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            return Err(ApiError::bad_request(
                "repetition_penalty",
                format!("'repetition_penalty' must be greater than 0, got {repetition_penalty}"),
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
        })
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
        Ok(stop)
    }
}

/// Reduces client messages to plain text, rejecting what the chat template
/// cannot represent: non-text content parts and tool calls.
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
            let has_tool_calls = match &message.tool_calls {
                None | Some(Value::Null) => false,
                Some(Value::Array(calls)) => !calls.is_empty(),
                Some(_) => true,
            };
            if has_tool_calls {
                return Err(ApiError::bad_request(
                    format!("messages[{i}].tool_calls"),
                    "tool calls are not supported by this server",
                ));
            }
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
                content,
                reasoning_content: message.reasoning_content.clone(),
            })
        })
        .collect()
}

impl ChatCompletionRequest {
    /// Checks the whole request: unsupported parameters, messages and
    /// generation parameters.
    pub fn validate(&self) -> Result<ValidatedChat, ApiError> {
        if let Some(param) = self.unsupported.first_used() {
            return Err(ApiError::unsupported_param(param));
        }
        let messages = text_messages(&self.messages)?;
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
        let params = self
            .sampling
            .validate(max_tokens, logprobs.then(|| top_logprobs.unwrap_or(0)))?;
        Ok(ValidatedChat {
            messages,
            params,
            include_reasoning: self.include_reasoning.unwrap_or(true),
        })
    }
}

impl CompletionRequest {
    /// Checks the whole request: prompt shape, unsupported options and
    /// generation parameters.
    pub fn validate(&self) -> Result<ValidatedCompletion, ApiError> {
        let batch_error = |len: usize| {
            ApiError::bad_request(
                "prompt",
                format!(
                    "batched prompts are not supported: send one prompt per request (got {len})"
                ),
            )
        };
        let prompt = match &self.prompt {
            CompletionPrompt::Text(text) => Prompt::Text(text.clone()),
            CompletionPrompt::Tokens(tokens) => Prompt::Tokens(tokens.clone()),
            CompletionPrompt::Texts(texts) => match texts.as_slice() {
                [text] => Prompt::Text(text.clone()),
                _ => return Err(batch_error(texts.len())),
            },
            CompletionPrompt::TokenLists(lists) => match lists.as_slice() {
                [tokens] => Prompt::Tokens(tokens.clone()),
                _ => return Err(batch_error(lists.len())),
            },
        };
        if matches!(&prompt, Prompt::Tokens(tokens) if tokens.is_empty()) {
            return Err(ApiError::bad_request(
                "prompt",
                "'prompt' must not be empty",
            ));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::unsupported_param("suffix"));
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
        Ok(ValidatedCompletion {
            prompt,
            echo: self.echo.unwrap_or(false),
            params,
        })
    }
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// Why a choice stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
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

/// `choices[].logprobs` of a chat completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    /// Per-token entries.
    pub content: Option<Vec<ChatTokenLogprob>>,
}

/// The assistant message of a non-streaming chat choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    /// Always [`Role::Assistant`].
    pub role: Role,
    /// The answer; `null` when the output ended inside the reasoning.
    pub content: Option<String>,
    /// The reasoning, omitted when there is none or it was not requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
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
}

/// `POST /v1/chat/completions` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    /// `chatcmpl-…`.
    pub id: String,
    /// Always [`OBJECT_CHAT_COMPLETION`].
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// Build fingerprint; omitted when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// The choices.
    pub choices: Vec<ChatChoice>,
    /// Token accounting.
    pub usage: Usage,
}

impl ChatCompletionResponse {
    /// A response with `object` set.
    pub fn new(
        id: String,
        created: u64,
        model: String,
        choices: Vec<ChatChoice>,
        usage: Usage,
    ) -> Self {
        Self {
            id,
            object: OBJECT_CHAT_COMPLETION.to_string(),
            created,
            model,
            system_fingerprint: None,
            choices,
            usage,
        }
    }
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
    /// New reasoning text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
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
}

/// One `data:` event of a streamed chat completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// Same `chatcmpl-…` id in every chunk of a stream.
    pub id: String,
    /// Always [`OBJECT_CHAT_COMPLETION_CHUNK`].
    pub object: String,
    /// Unix seconds, the same in every chunk.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// Build fingerprint; omitted when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Choices that changed; empty in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// As OpenAI: absent (`None`) unless `include_usage` was set; then
    /// `null` (`Some(None)`) in every chunk but the final usage chunk.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "double_option"
    )]
    pub usage: Option<Option<Usage>>,
}

impl ChatCompletionChunk {
    /// A chunk with `object` set; `include_usage` decides between an absent
    /// and a `null` usage field.
    pub fn new(
        id: String,
        created: u64,
        model: String,
        choices: Vec<ChunkChoice>,
        include_usage: bool,
    ) -> Self {
        Self {
            id,
            object: OBJECT_CHAT_COMPLETION_CHUNK.to_string(),
            created,
            model,
            system_fingerprint: None,
            choices,
            usage: include_usage.then_some(None),
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
    /// `null` until the choice's last chunk.
    pub finish_reason: Option<FinishReason>,
}

/// `POST /v1/completions` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// `cmpl-…`.
    pub id: String,
    /// Always [`OBJECT_TEXT_COMPLETION`].
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// Build fingerprint; omitted when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// The choices.
    pub choices: Vec<CompletionChoice>,
    /// Token accounting.
    pub usage: Usage,
}

impl CompletionResponse {
    /// A response with `object` set.
    pub fn new(
        id: String,
        created: u64,
        model: String,
        choices: Vec<CompletionChoice>,
        usage: Usage,
    ) -> Self {
        Self {
            id,
            object: OBJECT_TEXT_COMPLETION.to_string(),
            created,
            model,
            system_fingerprint: None,
            choices,
            usage,
        }
    }
}

/// One `data:` event of a streamed legacy completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionChunk {
    /// Same `cmpl-…` id in every chunk.
    pub id: String,
    /// Always [`OBJECT_TEXT_COMPLETION`], as OpenAI streams it.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// Build fingerprint; omitted when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Choices that changed; empty in the usage chunk.
    pub choices: Vec<CompletionChoice>,
    /// Same three states as [`ChatCompletionChunk::usage`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "double_option"
    )]
    pub usage: Option<Option<Usage>>,
}

impl CompletionChunk {
    /// A chunk with `object` set; see [`ChatCompletionChunk::new`].
    pub fn new(
        id: String,
        created: u64,
        model: String,
        choices: Vec<CompletionChoice>,
        include_usage: bool,
    ) -> Self {
        Self {
            id,
            object: OBJECT_TEXT_COMPLETION.to_string(),
            created,
            model,
            system_fingerprint: None,
            choices,
            usage: include_usage.then_some(None),
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

/// An entry of `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// Model name clients pass as `model`.
    pub id: String,
    /// Always `"model"`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Owner shown to clients.
    pub owned_by: String,
    /// Context length (vLLM extension); omitted when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
}

impl Model {
    /// A model entry with `object` set.
    pub fn new(id: String, created: u64, owned_by: String, max_model_len: Option<u32>) -> Self {
        Self {
            id,
            object: "model".to_string(),
            created,
            owned_by,
            max_model_len,
        }
    }
}

/// `GET /v1/models` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `"list"`.
    pub object: String,
    /// The served models.
    pub data: Vec<Model>,
}

impl ModelList {
    /// A list with `object` set.
    pub fn new(data: Vec<Model>) -> Self {
        Self {
            object: "list".to_string(),
            data,
        }
    }
}

fn default_true() -> bool {
    true
}

/// `POST /tokenize` with a chat conversation (vLLM's shape).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TokenizeChatRequest {
    /// Model name.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation to render with the chat template.
    pub messages: Vec<ChatMessage>,
    /// Append the assistant generation prompt (default true).
    #[serde(default = "default_true")]
    pub add_generation_prompt: bool,
    /// Let the tokenizer add BOS; default false because the chat template
    /// already renders it.
    #[serde(default)]
    pub add_special_tokens: bool,
    /// Extra chat template variables.
    #[serde(default)]
    pub chat_template_kwargs: Option<Map<String, Value>>,
}

/// `POST /tokenize` with plain text (vLLM's shape).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TokenizeTextRequest {
    /// Model name.
    #[serde(default)]
    pub model: Option<String>,
    /// Text to tokenize.
    pub prompt: String,
    /// Let the tokenizer add BOS (default true).
    #[serde(default = "default_true")]
    pub add_special_tokens: bool,
}

/// `POST /tokenize` body: messages or a prompt.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TokenizeRequest {
    /// `{"messages": [...]}`; tried first so a body with both uses messages.
    Chat(TokenizeChatRequest),
    /// `{"prompt": "..."}`.
    Text(TokenizeTextRequest),
}

/// `POST /tokenize` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeResponse {
    /// Number of tokens.
    pub count: usize,
    /// Context length of the served model.
    pub max_model_len: usize,
    /// The token ids.
    pub tokens: Vec<TokenId>,
}

/// `POST /detokenize` body.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DetokenizeRequest {
    /// Model name.
    #[serde(default)]
    pub model: Option<String>,
    /// Token ids to decode.
    pub tokens: Vec<TokenId>,
}

/// `POST /detokenize` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetokenizeResponse {
    /// The decoded text.
    pub prompt: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base_chat() -> Value {
        json!({"model": "r1", "messages": [{"role": "user", "content": "hi"}]})
    }

    /// Base chat request with `extra` fields merged in.
    fn chat_with(extra: Value) -> ChatCompletionRequest {
        let mut body = base_chat();
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        serde_json::from_value(body).unwrap()
    }

    fn chat_error(extra: Value) -> ApiError {
        chat_with(extra).validate().unwrap_err()
    }

    /// Asserts that `extra` fails validation naming `param`.
    fn assert_rejected(extra: Value, param: &str) {
        let error = chat_error(extra.clone());
        assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST, "{extra}");
        assert_eq!(
            error.param.as_deref(),
            Some(param),
            "{extra}: {}",
            error.message
        );
    }

    fn completion_with(extra: Value) -> CompletionRequest {
        let mut body = json!({"model": "r1", "prompt": "hi"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        serde_json::from_value(body).unwrap()
    }

    /// Serializes `value` and compares it with the literal JSON.
    fn assert_wire<T: Serialize>(value: &T, literal: &str) {
        let expected: Value = serde_json::from_str(literal).unwrap();
        // Through text, because `to_value` widens f32 to f64 digits that the
        // wire never carries.
        let wire: Value = serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap();
        assert_eq!(wire, expected);
    }

    /// Parses an OpenAI literal and checks it serializes back identically.
    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(literal: &str) -> T {
        let parsed: T = serde_json::from_str(literal).unwrap();
        assert_wire(&parsed, literal);
        parsed
    }

    #[test]
    fn full_chat_request_parses_and_validates() {
        let request: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "r1",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": null},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "x", "reasoning_content": "why", "tool_calls": []},
                {"role": "tool", "content": "result", "tool_call_id": "t1"}
            ],
            "max_tokens": 10, "max_completion_tokens": 20, "temperature": 0.6,
            "top_p": 0.95, "top_k": 40, "min_p": 0.05, "n": 2, "stop": "END",
            "seed": -1, "presence_penalty": 0.5, "frequency_penalty": -0.5,
            "repetition_penalty": 1.1, "logit_bias": {"42": -100, "7": 5.5},
            "logprobs": true, "top_logprobs": 3, "stream": true,
            "stream_options": {"include_usage": true}, "user": "u",
            "chat_template_kwargs": {"enable_thinking": true},
            "include_reasoning": false, "ignore_eos": true, "min_tokens": 5,
            "some_future_field": {"x": 1},
            "response_format": {"type": "text"}, "tool_choice": "none", "tools": [],
            "modalities": ["text"], "parallel_tool_calls": true
        }))
        .unwrap();
        let checked = request.validate().unwrap();
        assert!(!checked.include_reasoning);
        let contents: Vec<&str> = checked
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(contents, ["be brief", "", "a\nb", "x", "result"]);
        assert_eq!(
            checked.messages[3].reasoning_content.as_deref(),
            Some("why")
        );
        assert_eq!(checked.messages[4].role, Role::Tool);
        let p = checked.params;
        assert_eq!(p.max_tokens, Some(20));
        assert_eq!(p.min_tokens, 5);
        assert_eq!(p.temperature, Some(0.6));
        assert_eq!(p.top_p, Some(0.95));
        assert_eq!(p.top_k, Some(40));
        assert_eq!(p.min_p, Some(0.05));
        assert_eq!(p.n, 2);
        assert_eq!(p.stop, ["END"]);
        assert_eq!(p.seed, Some(u64::MAX));
        assert_eq!((p.presence_penalty, p.frequency_penalty), (0.5, -0.5));
        assert_eq!(p.repetition_penalty, 1.1);
        assert_eq!(p.logit_bias, [(7, 5.5), (42, -100.0)]);
        assert_eq!(p.logprobs, Some(3));
        assert!(p.stream && p.include_usage && p.ignore_eos);
        assert_eq!(
            request.chat_template_kwargs.unwrap()["enable_thinking"],
            Value::Bool(true)
        );
    }

    #[test]
    fn minimal_chat_request_defaults() {
        let checked = chat_with(json!({})).validate().unwrap();
        let p = checked.params;
        assert!(checked.include_reasoning);
        assert_eq!(
            (p.max_tokens, p.temperature, p.top_p, p.top_k),
            (None, None, None, None)
        );
        assert_eq!((p.n, p.min_tokens, p.repetition_penalty), (1, 0, 1.0));
        assert_eq!(p.logprobs, None);
        assert!(!p.stream && !p.include_usage && !p.ignore_eos);
        assert!(p.stop.is_empty() && p.logit_bias.is_empty());
    }

    #[test]
    fn model_is_optional_and_stop_list_accepted() {
        let request: ChatCompletionRequest =
            serde_json::from_value(json!({"messages": [{"role": "user", "content": "x"}],
                                          "stop": ["a", "b"], "max_tokens": 3}))
            .unwrap();
        assert_eq!(request.model, None);
        let p = request.validate().unwrap().params;
        assert_eq!(p.stop, ["a", "b"]);
        assert_eq!(p.max_tokens, Some(3));
    }

    #[test]
    fn unknown_role_fails_to_parse() {
        let body = json!({"messages": [{"role": "robot", "content": "x"}]});
        assert!(serde_json::from_value::<ChatCompletionRequest>(body).is_err());
    }

    #[test]
    fn unsupported_parameters_are_named() {
        for (extra, param) in [
            (json!({"tools": [{"type": "function"}]}), "tools"),
            (json!({"tool_choice": "auto"}), "tool_choice"),
            (json!({"tool_choice": {"type": "function"}}), "tool_choice"),
            (json!({"functions": [{"name": "f"}]}), "functions"),
            (json!({"function_call": "auto"}), "function_call"),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (json!({"response_format": "text"}), "response_format"),
            (json!({"audio": {"voice": "alloy"}}), "audio"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (json!({"prediction": {"type": "content"}}), "prediction"),
        ] {
            let error = chat_error(extra);
            assert_eq!(error.param.as_deref(), Some(param));
            assert_eq!(error.code.as_deref(), Some("unsupported_parameter"));
        }
    }

    #[test]
    fn harmless_unsupported_values_are_accepted() {
        let extra = json!({"tools": null, "tool_choice": null, "functions": [],
                           "function_call": "none", "response_format": null,
                           "audio": null, "modalities": null, "prediction": null,
                           "parallel_tool_calls": false});
        assert!(chat_with(extra).validate().is_ok());
    }

    #[test]
    fn message_rules() {
        assert_rejected(json!({"messages": []}), "messages");
        assert_rejected(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "messages[0].content[0].type",
        );
        assert_rejected(
            json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text"}]}]}),
            "messages[1].content[0].text",
        );
        assert_rejected(
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c"}]}]}),
            "messages[0].tool_calls",
        );
    }

    #[test]
    fn sampling_range_rules() {
        for (extra, param) in [
            (json!({"temperature": -0.1}), "temperature"),
            (json!({"temperature": 2.01}), "temperature"),
            (json!({"top_p": 0.0}), "top_p"),
            (json!({"top_p": 1.01}), "top_p"),
            (json!({"top_k": -2}), "top_k"),
            (json!({"min_p": -0.01}), "min_p"),
            (json!({"min_p": 1.01}), "min_p"),
            (json!({"n": 0}), "n"),
            (json!({"n": 129}), "n"),
            (json!({"presence_penalty": 2.5}), "presence_penalty"),
            (json!({"presence_penalty": -2.5}), "presence_penalty"),
            (json!({"frequency_penalty": 2.5}), "frequency_penalty"),
            (json!({"frequency_penalty": -2.5}), "frequency_penalty"),
            (json!({"repetition_penalty": 0.0}), "repetition_penalty"),
            (json!({"repetition_penalty": -1.0}), "repetition_penalty"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": -5}), "max_tokens"),
            (json!({"max_tokens": 5_000_000_000_i64}), "max_tokens"),
            (
                json!({"max_completion_tokens": 0, "max_tokens": 5}),
                "max_completion_tokens",
            ),
            (json!({"min_tokens": -1}), "min_tokens"),
            (json!({"min_tokens": 10, "max_tokens": 5}), "min_tokens"),
        ] {
            assert_rejected(extra, param);
        }
    }

    #[test]
    fn sampling_boundaries_are_accepted() {
        for extra in [
            json!({"temperature": 0, "top_p": 1, "min_p": 0, "n": 1}),
            json!({"temperature": 2, "top_p": 0.001, "min_p": 1, "n": 128}),
            json!({"presence_penalty": -2, "frequency_penalty": 2, "repetition_penalty": 0.01}),
            json!({"min_tokens": 5, "max_tokens": 5}),
        ] {
            assert!(chat_with(extra.clone()).validate().is_ok(), "{extra}");
        }
        for (top_k, expected) in [(-1, None), (0, None), (1, Some(1)), (50, Some(50))] {
            let p = chat_with(json!({"top_k": top_k}))
                .validate()
                .unwrap()
                .params;
            assert_eq!(p.top_k, expected);
        }
    }

    #[test]
    fn logprobs_rules() {
        assert_rejected(
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        );
        assert_rejected(
            json!({"logprobs": true, "top_logprobs": -1}),
            "top_logprobs",
        );
        assert_rejected(json!({"top_logprobs": 2}), "top_logprobs");
        assert_rejected(
            json!({"logprobs": false, "top_logprobs": 2}),
            "top_logprobs",
        );
        let p = chat_with(json!({"logprobs": true}))
            .validate()
            .unwrap()
            .params;
        assert_eq!(p.logprobs, Some(0));
        let p = chat_with(json!({"top_logprobs": 0}))
            .validate()
            .unwrap()
            .params;
        assert_eq!(p.logprobs, None);
    }

    #[test]
    fn logit_bias_rules() {
        assert_rejected(json!({"logit_bias": {"abc": 1}}), "logit_bias");
        assert_rejected(json!({"logit_bias": {"-3": 1}}), "logit_bias");
        assert_rejected(json!({"logit_bias": {"5": 100.5}}), "logit_bias");
        assert_rejected(json!({"logit_bias": {"5": -101}}), "logit_bias");
        let p = chat_with(json!({"logit_bias": {"5": 100, "3": -100}}))
            .validate()
            .unwrap()
            .params;
        assert_eq!(p.logit_bias, [(3, -100.0), (5, 100.0)]);
    }

    #[test]
    fn stop_rules() {
        let many: Vec<String> = (0..=MAX_STOP_SEQUENCES).map(|i| i.to_string()).collect();
        assert_rejected(json!({"stop": many}), "stop");
        assert_rejected(json!({"stop": ""}), "stop");
        assert_rejected(json!({"stop": ["a", ""]}), "stop");
        let sixteen: Vec<String> = (0..MAX_STOP_SEQUENCES).map(|i| i.to_string()).collect();
        assert!(chat_with(json!({ "stop": sixteen })).validate().is_ok());
    }

    #[test]
    fn completion_prompt_shapes() {
        let cases = [
            (json!("text"), Prompt::Text("text".into())),
            (json!([1, 2, 3]), Prompt::Tokens(vec![1, 2, 3])),
            (json!(["only"]), Prompt::Text("only".into())),
            (json!([[4, 5]]), Prompt::Tokens(vec![4, 5])),
            (json!(""), Prompt::Text(String::new())),
        ];
        for (prompt, expected) in cases {
            let checked = completion_with(json!({ "prompt": prompt }))
                .validate()
                .unwrap();
            assert_eq!(checked.prompt, expected);
        }
    }

    #[test]
    fn completion_rules() {
        let error = |extra: Value| completion_with(extra).validate().unwrap_err();
        assert_eq!(
            error(json!({"prompt": ["a", "b"]})).param.as_deref(),
            Some("prompt")
        );
        assert!(error(json!({"prompt": ["a", "b"]}))
            .message
            .contains("one prompt per request"));
        assert_eq!(
            error(json!({"prompt": [[1], [2]]})).param.as_deref(),
            Some("prompt")
        );
        assert_eq!(
            error(json!({"prompt": []})).param.as_deref(),
            Some("prompt")
        );
        assert_eq!(
            error(json!({"suffix": "end"})).param.as_deref(),
            Some("suffix")
        );
        assert_eq!(
            error(json!({"best_of": 3, "n": 2})).param.as_deref(),
            Some("best_of")
        );
        assert_eq!(
            error(json!({"logprobs": 21})).param.as_deref(),
            Some("logprobs")
        );
        assert_eq!(
            error(json!({"logprobs": -1})).param.as_deref(),
            Some("logprobs")
        );
        assert_eq!(
            error(json!({"temperature": 3})).param.as_deref(),
            Some("temperature")
        );

        let ok = completion_with(json!({"best_of": 2, "n": 2, "echo": true, "logprobs": 5,
                                        "suffix": "", "max_tokens": 7}))
        .validate()
        .unwrap();
        assert!(ok.echo);
        assert_eq!(ok.params.logprobs, Some(5));
        assert_eq!(ok.params.max_tokens, Some(7));
        assert!(serde_json::from_value::<CompletionRequest>(json!({"prompt": [-1]})).is_err());
        assert!(serde_json::from_value::<CompletionRequest>(json!({"model": "x"})).is_err());
    }

    #[test]
    fn chat_completion_matches_openai_docs() {
        let literal = r#"{
          "id": "chatcmpl-123",
          "object": "chat.completion",
          "created": 1677652288,
          "model": "gpt-4o-mini",
          "system_fingerprint": "fp_44709d6fcb",
          "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "\n\nHello there, how may I assist you today?"},
            "logprobs": null,
            "finish_reason": "stop"
          }],
          "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
                    "completion_tokens_details": {"reasoning_tokens": 0}}
        }"#;
        let parsed: ChatCompletionResponse = round_trip(literal);
        assert_eq!(parsed.choices[0].finish_reason, Some(FinishReason::Stop));
    }

    #[test]
    fn chat_completion_built_by_constructor() {
        let response = ChatCompletionResponse::new(
            "chatcmpl-1".into(),
            7,
            "r1".into(),
            vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: Role::Assistant,
                    content: None,
                    reasoning_content: Some("thinking".into()),
                },
                logprobs: None,
                finish_reason: Some(FinishReason::Length),
            }],
            Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                total_tokens: 7,
                prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 2 }),
                completion_tokens_details: Some(CompletionTokensDetails {
                    reasoning_tokens: 4,
                }),
            },
        );
        assert_wire(
            &response,
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":7,"model":"r1",
                "choices":[{"index":0,"message":{"role":"assistant","content":null,
                "reasoning_content":"thinking"},"logprobs":null,"finish_reason":"length"}],
                "usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,
                "prompt_tokens_details":{"cached_tokens":2},
                "completion_tokens_details":{"reasoning_tokens":4}}}"#,
        );
    }

    #[test]
    fn chat_chunks_match_openai_docs() {
        round_trip::<ChatCompletionChunk>(
            r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
        );
        round_trip::<ChatCompletionChunk>(
            r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#,
        );
        let with_null: ChatCompletionChunk = round_trip(
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        );
        assert_eq!(with_null.usage, Some(None));
        let usage: ChatCompletionChunk = round_trip(
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#,
        );
        assert_eq!(usage.usage.flatten().map(|u| u.total_tokens), Some(21));
    }

    #[test]
    fn chunk_usage_field_three_states() {
        let choice = ChunkChoice {
            index: 0,
            delta: Delta {
                reasoning_content: Some("r".into()),
                ..Delta::default()
            },
            logprobs: None,
            finish_reason: None,
        };
        let plain =
            ChatCompletionChunk::new("c".into(), 1, "m".into(), vec![choice.clone()], false);
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"reasoning_content":"r"},"logprobs":null,"finish_reason":null}]}"#
        );
        let nulled = ChatCompletionChunk::new("c".into(), 1, "m".into(), vec![choice], true);
        assert!(serde_json::to_string(&nulled)
            .unwrap()
            .ends_with(r#""usage":null}"#));
        let last = ChatCompletionChunk::usage_only("c".into(), 1, "m".into(), Usage::default());
        assert_eq!(
            serde_json::to_string(&last).unwrap(),
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}"#
        );
    }

    #[test]
    fn chat_logprobs_shape_and_infinity() {
        let literal = r#"{"content":[{"token":"Hello","logprob":-0.31725305,"bytes":[72,101,108,108,111],
            "top_logprobs":[{"token":"Hello","logprob":-0.31725305,"bytes":[72,101,108,108,111]},
                            {"token":"Hi","logprob":-1.3190403,"bytes":[72,105]}]}]}"#;
        round_trip::<ChatLogprobs>(literal);
        let entry = ChatTokenLogprob {
            token: "x".into(),
            logprob: f32::NEG_INFINITY,
            bytes: None,
            top_logprobs: vec![TopLogprob {
                token: "y".into(),
                logprob: f32::NAN,
                bytes: Some(vec![121]),
            }],
        };
        assert_wire(
            &entry,
            r#"{"token":"x","logprob":-9999.0,"bytes":null,
                "top_logprobs":[{"token":"y","logprob":-9999.0,"bytes":[121]}]}"#,
        );
    }

    #[test]
    fn completion_matches_openai_docs() {
        round_trip::<CompletionResponse>(
            r#"{
              "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
              "object": "text_completion",
              "created": 1589478378,
              "model": "gpt-3.5-turbo-instruct",
              "system_fingerprint": "fp_44709d6fcb",
              "choices": [{"text": "\n\nThis is indeed a test", "index": 0, "logprobs": null, "finish_reason": "length"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
            }"#,
        );
        round_trip::<CompletionChunk>(
            r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"text":"Hi","index":0,"logprobs":null,"finish_reason":null}]}"#,
        );
    }

    #[test]
    fn legacy_logprobs_keep_order_and_nulls() {
        let literal = r#"{"tokens":["\n","This"],"token_logprobs":[null,-0.5],
            "top_logprobs":[null,{"This":-0.5,"A":-1.25}],"text_offset":[0,1]}"#;
        let parsed: CompletionLogprobs = round_trip(literal);
        let order: Vec<&str> = parsed.top_logprobs[1]
            .as_ref()
            .unwrap()
            .0
            .iter()
            .map(|(t, _)| t.as_str())
            .collect();
        assert_eq!(order, ["This", "A"]);
        let logprobs = CompletionLogprobs {
            tokens: vec!["a".into()],
            token_logprobs: vec![Some(f32::NEG_INFINITY)],
            top_logprobs: vec![Some(TopLogprobMap(vec![
                ("z".into(), -1.0),
                ("a".into(), f32::NEG_INFINITY),
            ]))],
            text_offset: vec![0],
        };
        assert_eq!(
            serde_json::to_string(&logprobs).unwrap(),
            r#"{"tokens":["a"],"token_logprobs":[-9999.0],"top_logprobs":[{"z":-1.0,"a":-9999.0}],"text_offset":[0]}"#
        );
    }

    #[test]
    fn completion_chunk_constructors() {
        let usage = CompletionChunk::usage_only("cmpl-1".into(), 1, "m".into(), Usage::default());
        assert_eq!(usage.object, OBJECT_TEXT_COMPLETION);
        assert!(usage.choices.is_empty());
        let plain = CompletionChunk::new("cmpl-1".into(), 1, "m".into(), Vec::new(), false);
        assert!(!serde_json::to_string(&plain).unwrap().contains("usage"));
        let response =
            CompletionResponse::new("cmpl-1".into(), 1, "m".into(), Vec::new(), Usage::default());
        assert_eq!(response.object, "text_completion");
    }

    #[test]
    fn model_list_matches_openai_docs() {
        let list: ModelList = round_trip(
            r#"{"object":"list","data":[{"id":"model-id-0","object":"model","created":1686935002,"owned_by":"organization-owner"}]}"#,
        );
        assert_eq!(
            list,
            ModelList::new(vec![Model::new(
                "model-id-0".into(),
                1686935002,
                "organization-owner".into(),
                None
            )])
        );
        assert_wire(
            &ModelList::new(vec![Model::new(
                "r1".into(),
                1,
                "r1serve".into(),
                Some(4096),
            )]),
            r#"{"object":"list","data":[{"id":"r1","object":"model","created":1,"owned_by":"r1serve","max_model_len":4096}]}"#,
        );
    }

    #[test]
    fn tokenize_shapes() {
        let text: TokenizeRequest = serde_json::from_str(r#"{"prompt":"hi"}"#).unwrap();
        assert_eq!(
            text,
            TokenizeRequest::Text(TokenizeTextRequest {
                model: None,
                prompt: "hi".into(),
                add_special_tokens: true
            })
        );
        let chat: TokenizeRequest = serde_json::from_str(
            r#"{"model":"r1","messages":[{"role":"user","content":"hi"}],"add_generation_prompt":false}"#,
        )
        .unwrap();
        let TokenizeRequest::Chat(chat) = chat else {
            panic!("expected the chat shape");
        };
        assert!(!chat.add_generation_prompt && !chat.add_special_tokens);
        assert!(serde_json::from_str::<TokenizeRequest>(r#"{"tokens":[1]}"#).is_err());
        assert_wire(
            &TokenizeResponse {
                count: 2,
                max_model_len: 4096,
                tokens: vec![1, 2],
            },
            r#"{"count":2,"max_model_len":4096,"tokens":[1,2]}"#,
        );
        let detok: DetokenizeRequest = serde_json::from_str(r#"{"tokens":[1,2]}"#).unwrap();
        assert_eq!(detok.tokens, [1, 2]);
        assert_wire(
            &DetokenizeResponse {
                prompt: "hi".into(),
            },
            r#"{"prompt":"hi"}"#,
        );
    }

    #[test]
    fn ids_and_timestamp() {
        assert!(chat_completion_id().starts_with("chatcmpl-"));
        assert!(completion_id().starts_with("cmpl-"));
        assert_ne!(chat_completion_id(), chat_completion_id());
        assert!(unix_timestamp() > 1_600_000_000);
    }
}
