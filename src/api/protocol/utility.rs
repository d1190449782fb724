//! `GET /v1/models`, `POST /tokenize` and `POST /detokenize` bodies.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::*;
use crate::types::TokenId;

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
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
    /// Leave the final assistant message open (default false), as the chat
    /// route's field of the same name.
    #[serde(default)]
    pub continue_final_message: Option<bool>,
    /// Let the tokenizer add BOS; default false because the chat template
    /// already renders it.
    #[serde(default)]
    pub add_special_tokens: bool,
    /// Extra chat template variables.
    #[serde(default)]
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// Tool definitions, rendered as a chat request with `tool_choice`
    /// `"auto"` renders them.
    #[serde(default)]
    pub tools: Option<Value>,
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
