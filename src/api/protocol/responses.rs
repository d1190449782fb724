//! OpenAI's Responses API (`POST /v1/responses`) on the wire: the request,
//! its translation into the chat request that `/v1/chat/completions` checks
//! and runs (so both routes share one validation, template, reasoning split
//! and tool-call parser), and the response object with its output items.
//!
//! What a stateless server can do is served: `input` as text or as message,
//! `function_call` and `function_call_output` items, `instructions`,
//! function tools, `text.format`, `reasoning.effort`, and the sampling
//! fields. What needs stored state (`previous_response_id`, `conversation`,
//! `background`, stored prompts) or hosted tools (web search, file search,
//! …) is refused with a 400 naming the field, as vLLM refuses it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{ChatCompletionRequest, ToolCall, UnknownFields, Usage};
use crate::api::error::ApiError;

/// A `POST /v1/responses` body.
#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    /// Must name the served model when present.
    pub model: Option<String>,
    /// The conversation: a user message's text, or a list of items.
    pub input: ResponseInput,
    /// A system message put before the input.
    pub instructions: Option<String>,
    /// Most tokens to generate, reasoning included.
    pub max_output_tokens: Option<i64>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Stream the response as events.
    pub stream: Option<bool>,
    /// `{"effort": "low" | "medium" | "high"}`; `summary` is accepted and
    /// has no effect (the reasoning itself is returned).
    pub reasoning: Option<ReasoningConfig>,
    /// Function tools, in the Responses API's flat form.
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{"type": "function", "name": …}`.
    pub tool_choice: Option<Value>,
    /// Whether the model may call several tools at once.
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", …}}`.
    pub text: Option<TextConfig>,
    /// Nothing is stored; accepted for clients that send it.
    pub store: Option<bool>,
    /// Returned as sent.
    pub metadata: Option<Value>,
    /// Returned as sent.
    pub user: Option<String>,
    /// Needs stored responses: refused when set.
    pub previous_response_id: Option<String>,
    /// Needs stored conversations: refused when set.
    pub conversation: Option<Value>,
    /// Needs stored responses: refused when true.
    pub background: Option<bool>,
    /// Needs stored prompts: refused when set.
    pub prompt: Option<Value>,
    /// Extra output to include; nothing extra is available.
    pub include: Option<Vec<String>>,
    /// `disabled` (the default) only: a prompt beyond the context is a 400.
    pub truncation: Option<String>,
    /// Logprobs of the output text: not available on this route.
    pub top_logprobs: Option<i64>,
    /// Bounds the calls of hosted tools, of which there are none.
    pub max_tool_calls: Option<i64>,
    /// `auto` or `default` only, as on the chat route.
    pub service_tier: Option<String>,
    /// vLLM's and the chat route's extra sampling and template fields,
    /// passed to the chat request as they are.
    #[serde(flatten)]
    pub extras: ChatExtras,
    /// Fields no one recognizes: ignored with a warning.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// The chat route's fields a Responses request may carry too (vLLM takes
/// its sampling extras on both routes).
#[derive(Debug, Default, Deserialize)]
pub struct ChatExtras {
    top_k: Option<Value>,
    min_p: Option<Value>,
    repetition_penalty: Option<Value>,
    presence_penalty: Option<Value>,
    frequency_penalty: Option<Value>,
    seed: Option<Value>,
    stop: Option<Value>,
    stop_token_ids: Option<Value>,
    ignore_eos: Option<Value>,
    min_tokens: Option<Value>,
    logit_bias: Option<Value>,
    chat_template_kwargs: Option<Value>,
    thinking_token_budget: Option<Value>,
    include_reasoning: Option<Value>,
}

/// `input`: text, or a list of items.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ResponseInput {
    /// One user message.
    Text(String),
    /// Messages and tool-call items, in order.
    Items(Vec<Value>),
}

/// `reasoning`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct ReasoningConfig {
    /// `low`, `medium` or `high` (`minimal` reads as `low`).
    pub effort: Option<String>,
    /// Accepted; r1serve returns the reasoning itself, not a summary.
    pub summary: Option<Value>,
}

/// `text`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct TextConfig {
    /// The answer's format.
    pub format: Option<Value>,
    /// Accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbosity: Option<String>,
}

impl ResponsesRequest {
    /// The chat request this request asks for, or a 400 naming what
    /// cannot be served.
    pub fn to_chat(&self) -> Result<ChatCompletionRequest, ApiError> {
        self.refuse_stateful()?;
        let mut chat = Map::new();
        let mut messages = Vec::new();
        if let Some(instructions) = &self.instructions {
            messages.push(json!({"role": "system", "content": instructions}));
        }
        match &self.input {
            ResponseInput::Text(text) => messages.push(json!({"role": "user", "content": text})),
            ResponseInput::Items(items) => input_messages(items, &mut messages)?,
        }
        chat.insert("messages".into(), Value::Array(messages));
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                chat.insert(key.into(), value);
            }
        };
        set(
            "max_completion_tokens",
            self.max_output_tokens.map(Value::from),
        );
        set("temperature", self.temperature.map(Value::from));
        set("top_p", self.top_p.map(Value::from));
        set("stream", self.stream.map(Value::from));
        set("user", self.user.clone().map(Value::from));
        set("metadata", self.metadata.clone());
        set("service_tier", self.service_tier.clone().map(Value::from));
        set(
            "parallel_tool_calls",
            self.parallel_tool_calls.map(Value::from),
        );
        set("tools", self.tools.as_deref().map(chat_tools).transpose()?);
        set(
            "tool_choice",
            self.tool_choice
                .as_ref()
                .map(chat_tool_choice)
                .transpose()?,
        );
        set(
            "response_format",
            self.text
                .as_ref()
                .and_then(|t| t.format.as_ref())
                .map(response_format)
                .transpose()?,
        );
        let effort = self.reasoning.as_ref().and_then(|r| r.effort.as_deref());
        set(
            "reasoning_effort",
            effort.map(|e| Value::from(if e == "minimal" { "low" } else { e })),
        );
        let extras = &self.extras;
        for (key, value) in [
            ("top_k", &extras.top_k),
            ("min_p", &extras.min_p),
            ("repetition_penalty", &extras.repetition_penalty),
            ("presence_penalty", &extras.presence_penalty),
            ("frequency_penalty", &extras.frequency_penalty),
            ("seed", &extras.seed),
            ("stop", &extras.stop),
            ("stop_token_ids", &extras.stop_token_ids),
            ("ignore_eos", &extras.ignore_eos),
            ("min_tokens", &extras.min_tokens),
            ("logit_bias", &extras.logit_bias),
            ("chat_template_kwargs", &extras.chat_template_kwargs),
            ("thinking_token_budget", &extras.thinking_token_budget),
            ("include_reasoning", &extras.include_reasoning),
        ] {
            set(key, value.clone());
        }
        serde_json::from_value(Value::Object(chat)).map_err(|e| {
            ApiError::bad_request("input", format!("the request does not form a chat: {e}"))
        })
    }

    fn refuse_stateful(&self) -> Result<(), ApiError> {
        let stateless = "this server keeps no state between requests: send the whole \
                         conversation as 'input'";
        if self.previous_response_id.is_some() {
            return Err(ApiError::bad_request("previous_response_id", stateless));
        }
        if self.conversation.as_ref().is_some_and(|c| !c.is_null()) {
            return Err(ApiError::bad_request("conversation", stateless));
        }
        if self.prompt.as_ref().is_some_and(|p| !p.is_null()) {
            return Err(ApiError::unsupported_param("prompt"));
        }
        if self.background == Some(true) {
            return Err(ApiError::unsupported_param("background"));
        }
        if self.top_logprobs.is_some_and(|k| k != 0) {
            return Err(ApiError::unsupported_param("top_logprobs"));
        }
        if self.truncation.as_deref().is_some_and(|t| t != "disabled") {
            return Err(ApiError::bad_request(
                "truncation",
                "only 'disabled' truncation is supported: a prompt beyond the context is a 400",
            ));
        }
        Ok(())
    }
}

/// The text of a message's `content`: a string, or a list of text parts
/// joined by `\n`, as the chat route (and vLLM) joins a message's parts.
fn content_text(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                let text = |key: &str| part.get(key).and_then(Value::as_str).unwrap_or("");
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => texts.push(text("text")),
                    Some("refusal") => texts.push(text("refusal")),
                    other => {
                        return Err(ApiError::bad_request(
                            "input",
                            format!(
                            "content parts of type {} are not supported: this server reads text",
                            other.unwrap_or("(none)")
                        ),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(ApiError::bad_request(
            "input",
            "a message's 'content' must be a string or a list of parts",
        )),
    }
}

/// Chat messages from input items: messages as they are, consecutive
/// `function_call` items as one assistant message's `tool_calls`,
/// `function_call_output` items as tool messages, and earlier reasoning
/// items left out (chat templates drop past reasoning too).
fn input_messages(items: &[Value], messages: &mut Vec<Value>) -> Result<(), ApiError> {
    let mut calls: Vec<Value> = Vec::new();
    let flush = |calls: &mut Vec<Value>, messages: &mut Vec<Value>| {
        if !calls.is_empty() {
            messages.push(json!({"role": "assistant", "content": null,
                                 "tool_calls": std::mem::take(calls)}));
        }
    };
    for item in items {
        let field = |name: &str| item.get(name).and_then(Value::as_str);
        match field("type") {
            Some("message") | None => {
                flush(&mut calls, messages);
                let role = match field("role") {
                    Some(role @ ("user" | "assistant" | "system" | "developer")) => role,
                    other => {
                        return Err(ApiError::bad_request(
                            "input",
                            format!("unknown message role {}", other.unwrap_or("(none)")),
                        ))
                    }
                };
                let content = content_text(item.get("content").unwrap_or(&Value::Null))?;
                messages.push(json!({"role": role, "content": content}));
            }
            Some("function_call") => {
                let (Some(call_id), Some(name)) = (field("call_id"), field("name")) else {
                    return Err(ApiError::bad_request(
                        "input",
                        "a 'function_call' item needs 'call_id' and 'name'",
                    ));
                };
                calls.push(json!({"id": call_id, "type": "function", "function": {
                    "name": name, "arguments": field("arguments").unwrap_or("{}")}}));
            }
            Some("function_call_output") => {
                flush(&mut calls, messages);
                let Some(call_id) = field("call_id") else {
                    return Err(ApiError::bad_request(
                        "input",
                        "a 'function_call_output' item needs 'call_id'",
                    ));
                };
                let output = match item.get("output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(parts @ Value::Array(_)) => content_text(parts)?,
                    _ => String::new(),
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id,
                                     "content": output}));
            }
            Some("reasoning") => {}
            other => {
                return Err(ApiError::bad_request(
                    "input",
                    format!(
                        "input items of type {} are not supported",
                        other.unwrap_or("(none)")
                    ),
                ))
            }
        }
    }
    flush(&mut calls, messages);
    Ok(())
}

/// Function tools in the chat route's nested form; hosted tools are
/// refused.
fn chat_tools(tools: &[Value]) -> Result<Value, ApiError> {
    tools
        .iter()
        .map(|tool| match tool.get("type").and_then(Value::as_str) {
            Some("function") => {
                let mut function = Map::new();
                for key in ["name", "description", "parameters", "strict"] {
                    if let Some(value) = tool.get(key).filter(|v| !v.is_null()) {
                        function.insert(key.into(), value.clone());
                    }
                }
                Ok(json!({"type": "function", "function": function}))
            }
            other => Err(ApiError::bad_request(
                "tools",
                format!(
                    "tools of type {} are not supported: this server runs function tools only",
                    other.unwrap_or("(none)")
                ),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").cloned().unwrap_or(Value::Null);
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(ApiError::bad_request(
            "tool_choice",
            "'tool_choice' must be auto, none, required or a function",
        )),
    }
}

/// `text.format` as the chat route's `response_format`.
fn response_format(format: &Value) -> Result<Value, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"type": "text"})),
        Some("json_object") => Ok(json!({"type": "json_object"})),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(value) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), value.clone());
                }
            }
            Ok(json!({"type": "json_schema", "json_schema": schema}))
        }
        other => Err(ApiError::bad_request(
            "text",
            format!(
                "'text.format' of type {} is not supported",
                other.unwrap_or("(none)")
            ),
        )),
    }
}

/// A fresh id with `prefix` (`resp`, `msg`, `rs`, `fc`).
pub fn response_item_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// One output item of a response.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// The model's reasoning, as text (not a summary).
    Reasoning {
        /// `rs_…`.
        id: String,
        /// Always empty: no summary is written.
        summary: Vec<Value>,
        /// The reasoning text, in one `reasoning_text` part.
        content: Vec<ReasoningText>,
        /// `in_progress` while streamed, then `completed`.
        status: ItemStatus,
    },
    /// The answer.
    Message {
        /// `msg_…`.
        id: String,
        /// Always `assistant`.
        role: &'static str,
        /// The answer text, in one `output_text` part.
        content: Vec<OutputText>,
        /// `incomplete` when the answer was cut at `max_output_tokens`.
        status: ItemStatus,
    },
    /// A call of a function tool.
    FunctionCall {
        /// `fc_…`.
        id: String,
        /// What the client quotes in its `function_call_output`.
        call_id: String,
        /// The function.
        name: String,
        /// Its arguments, as JSON text.
        arguments: String,
        /// `in_progress` while streamed, then `completed`.
        status: ItemStatus,
    },
}

impl OutputItem {
    /// A function call item for a parsed tool call.
    pub fn call(call: &ToolCall) -> Self {
        OutputItem::FunctionCall {
            id: response_item_id("fc"),
            call_id: call.id.clone(),
            name: call.function.name.clone(),
            arguments: call.function.arguments.clone(),
            status: ItemStatus::Completed,
        }
    }
}

/// An output item's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Being streamed.
    InProgress,
    /// Finished.
    Completed,
    /// Cut at `max_output_tokens`.
    Incomplete,
}

/// A `reasoning_text` part.
#[derive(Clone, Debug, Serialize)]
pub struct ReasoningText {
    /// Always `reasoning_text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The text.
    pub text: String,
}

impl ReasoningText {
    /// A part holding `text`.
    pub fn new(text: String) -> Self {
        Self {
            kind: "reasoning_text",
            text,
        }
    }
}

/// An `output_text` part.
#[derive(Clone, Debug, Serialize)]
pub struct OutputText {
    /// Always `output_text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The text.
    pub text: String,
    /// Always empty.
    pub annotations: Vec<Value>,
    /// Always empty: this route returns no logprobs.
    pub logprobs: Vec<Value>,
}

impl OutputText {
    /// A part holding `text`.
    pub fn new(text: String) -> Self {
        Self {
            kind: "output_text",
            text,
            annotations: Vec::new(),
            logprobs: Vec::new(),
        }
    }
}

/// The response object, whole or as streamed so far.
#[derive(Clone, Debug, Serialize)]
pub struct ResponseObject {
    /// `resp_…`.
    pub id: String,
    /// Always `response`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: u64,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: &'static str,
    /// `{"reason": "max_output_tokens"}` when incomplete.
    pub incomplete_details: Option<Value>,
    /// Always `null`: failures are HTTP errors or `error` events.
    pub error: Option<Value>,
    /// The served model.
    pub model: String,
    /// The output items, in order.
    pub output: Vec<OutputItem>,
    /// Token counts, once finished.
    pub usage: Option<ResponseUsage>,
    /// The request's settings, returned as OpenAI returns them.
    #[serde(flatten)]
    pub settings: ResponseSettings,
}

/// The request's settings a response repeats.
#[derive(Clone, Debug, Serialize)]
pub struct ResponseSettings {
    /// As sent.
    pub instructions: Option<String>,
    /// As sent.
    pub max_output_tokens: Option<i64>,
    /// As sent (`{}` when absent).
    pub metadata: Value,
    /// As sent (true when absent).
    pub parallel_tool_calls: bool,
    /// Always `null`: nothing is stored.
    pub previous_response_id: Option<String>,
    /// As sent.
    pub reasoning: ReasoningConfig,
    /// Always false: nothing is stored.
    pub store: bool,
    /// As sent.
    pub temperature: Option<f32>,
    /// As sent (`{"format": {"type": "text"}}` when absent).
    pub text: TextConfig,
    /// As sent (`auto` when absent).
    pub tool_choice: Value,
    /// As sent.
    pub tools: Vec<Value>,
    /// As sent.
    pub top_p: Option<f32>,
    /// Always `disabled`.
    pub truncation: &'static str,
    /// As sent.
    pub user: Option<String>,
}

impl ResponseSettings {
    /// The settings of `request`.
    pub fn of(request: &ResponsesRequest) -> Self {
        Self {
            instructions: request.instructions.clone(),
            max_output_tokens: request.max_output_tokens,
            metadata: request.metadata.clone().unwrap_or_else(|| json!({})),
            parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
            previous_response_id: None,
            reasoning: request.reasoning.clone().unwrap_or_default(),
            store: false,
            temperature: request.temperature,
            text: request.text.clone().unwrap_or(TextConfig {
                format: Some(json!({"type": "text"})),
                verbosity: None,
            }),
            tool_choice: request.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            tools: request.tools.clone().unwrap_or_default(),
            top_p: request.top_p,
            truncation: "disabled",
            user: request.user.clone(),
        }
    }
}

/// `usage` in the Responses API's names.
#[derive(Clone, Debug, Serialize)]
pub struct ResponseUsage {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// `{"cached_tokens": …}`.
    pub input_tokens_details: Value,
    /// Generated tokens, reasoning included.
    pub output_tokens: u32,
    /// `{"reasoning_tokens": …}`.
    pub output_tokens_details: Value,
    /// The sum.
    pub total_tokens: u32,
}

impl From<Usage> for ResponseUsage {
    fn from(usage: Usage) -> Self {
        let cached = usage.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
        let reasoning = usage
            .completion_tokens_details
            .map_or(0, |d| d.reasoning_tokens);
        Self {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: json!({"cached_tokens": cached}),
            output_tokens: usage.completion_tokens,
            output_tokens_details: json!({"reasoning_tokens": reasoning}),
            total_tokens: usage.total_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ResponsesRequest {
        serde_json::from_value(body).expect("a request")
    }

    fn chat(body: Value) -> Value {
        let chat = request(body).to_chat().expect("a chat");
        let checked = chat.validate().expect("a valid chat");
        serde_json::to_value(checked.messages).expect("messages")
    }

    #[test]
    fn input_items_become_chat_messages() {
        let messages = chat(json!({
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather "},
                                             {"type": "input_text", "text": "in Paris?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "message", "role": "assistant",
                 "content": [{"type": "output_text", "text": "It is sunny."}]},
            ]
        }));
        let roles: Vec<&str> = messages
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant"]);
        assert_eq!(messages[1]["content"], "Weather \nin Paris?");
        let calls = messages[2]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2, "consecutive calls make one message");
        assert_eq!(calls[1]["id"], "c2");
        assert_eq!(calls[1]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(messages[3]["tool_call_id"], "c1");
        assert_eq!(messages[4]["content"], "It is sunny.");
    }

    #[test]
    fn tools_format_and_effort_take_the_chat_spelling() {
        let chat = request(json!({
            "input": "hi",
            "max_output_tokens": 7,
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "w"},
            "text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"},
                                "strict": true}},
            "reasoning": {"effort": "minimal", "summary": "auto"},
            "top_k": 5,
        }))
        .to_chat()
        .expect("a chat");
        assert_eq!(chat.max_completion_tokens, Some(7));
        assert_eq!(
            chat.tools,
            Some(json!([{"type": "function",
                         "function": {"name": "w", "parameters": {"type": "object"}}}]))
        );
        assert_eq!(
            chat.tool_choice,
            Some(json!({"type": "function", "function": {"name": "w"}}))
        );
        assert_eq!(chat.thinking.reasoning_effort, Some(json!("low")));
        assert_eq!(chat.sampling.top_k, Some(5));
        assert!(chat.structured.constraint().unwrap().is_some());
    }

    #[test]
    fn what_needs_state_or_hosted_tools_is_refused() {
        for (body, param) in [
            (
                json!({"input": "hi", "previous_response_id": "r"}),
                "previous_response_id",
            ),
            (json!({"input": "hi", "conversation": "c"}), "conversation"),
            (json!({"input": "hi", "background": true}), "background"),
            (
                json!({"input": "hi", "tools": [{"type": "file_search"}]}),
                "tools",
            ),
            (
                json!({"input": "hi", "text": {"format": {"type": "xml"}}}),
                "text",
            ),
            (json!({"input": "hi", "truncation": "auto"}), "truncation"),
            (json!({"input": [{"type": "input_image"}]}), "input"),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}),
                "input",
            ),
            (
                json!({"input": [{"role": "tool", "content": "x"}]}),
                "input",
            ),
            (
                json!({"input": [{"type": "function_call", "name": "w"}]}),
                "input",
            ),
        ] {
            let error = request(body.clone()).to_chat().unwrap_err();
            assert_eq!(error.param.as_deref(), Some(param), "{body}");
        }
    }
}
