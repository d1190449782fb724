//! Tool definitions, `tool_choice` and the tool calls of earlier assistant
//! turns, as clients send them, checked into what the chat template and the
//! tool-call parser need.

use serde_json::{Map, Value};

use crate::api::error::ApiError;

/// Most tools one request may define (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;
/// Most bytes the tool definitions may take as JSON: they are rendered into
/// every prompt of the request, so they are bounded like the prompt is.
pub const MAX_TOOLS_BYTES: usize = 1 << 20;
/// Longest function name (OpenAI's limit).
pub const MAX_TOOL_NAME_BYTES: usize = 64;

/// Whether the model may, or must, call the tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// The tools are not shown to the model and output is never parsed for
    /// calls.
    None,
    /// The model decides; calls in its answer are parsed.
    Auto,
    /// The answer is one or more calls (a grammar enforces it after the
    /// reasoning).
    Required,
    /// The answer is one call of this function.
    Named(String),
}

impl ToolChoice {
    /// Whether the answer must be a call.
    pub fn forces_call(&self) -> bool {
        matches!(self, ToolChoice::Required | ToolChoice::Named(_))
    }
}

/// Checked `tools`, `tool_choice` and `parallel_tool_calls`.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatTools {
    /// The tool definitions as sent, passed to the chat template as
    /// `apply_chat_template(tools=...)` would.
    pub definitions: Vec<Value>,
    /// What the model may do with them.
    pub choice: ToolChoice,
    /// Whether more than one call per answer is kept.
    pub parallel: bool,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(param, message)
}

/// A function name as OpenAI accepts it: letters, digits, `_`, `-` (and
/// `.`, which MCP tool names use), at most [`MAX_TOOL_NAME_BYTES`].
fn valid_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Checks one tool definition and returns its function name.
fn check_tool(i: usize, tool: &Value) -> Result<&str, ApiError> {
    let param = format!("tools[{i}]");
    let tool = tool
        .as_object()
        .ok_or_else(|| bad(&param, format!("'{param}' must be an object")))?;
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            return Err(bad(
                format!("{param}.type"),
                format!("tool type '{other}' is not supported; only 'function' is"),
            ))
        }
        None => {
            return Err(bad(
                format!("{param}.type"),
                format!("'{param}.type' must be \"function\""),
            ))
        }
    }
    let function = tool
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad(
                format!("{param}.function"),
                format!("'{param}.function' must be an object"),
            )
        })?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad(
                format!("{param}.function.name"),
                format!("'{param}.function.name' must be a string"),
            )
        })?;
    if !valid_function_name(name) {
        return Err(bad(
            format!("{param}.function.name"),
            format!(
                "function name '{name}' must be 1 to {MAX_TOOL_NAME_BYTES} letters, digits, '_', '-' or '.'"
            ),
        ));
    }
    match function.get("parameters") {
        // A call's arguments are checked against this schema; a function
        // without arguments says so with an empty object schema.
        None | Some(Value::Null) => {
            return Err(bad(
                format!("{param}.function.parameters"),
                format!(
                    "function '{name}' has no parameters schema; give one (for no arguments: {{\"type\": \"object\", \"properties\": {{}}}})"
                ),
            ))
        }
        Some(Value::Object(schema)) => match schema.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == "object" => {}
            Some(other) => {
                return Err(bad(
                    format!("{param}.function.parameters"),
                    format!(
                        "the parameters schema of function '{name}' must describe an object (\"type\": \"object\"), got type {other}"
                    ),
                ))
            }
        },
        Some(_) => {
            return Err(bad(
                format!("{param}.function.parameters"),
                format!("the parameters schema of function '{name}' must be a JSON object"),
            ))
        }
    }
    if function
        .get("description")
        .is_some_and(|d| !(d.is_string() || d.is_null()))
    {
        return Err(bad(
            format!("{param}.function.description"),
            format!("the description of function '{name}' must be a string"),
        ));
    }
    Ok(name)
}

/// The function named by an object-form `tool_choice`.
fn named_choice(choice: &Map<String, Value>) -> Option<&str> {
    if choice.get("type").and_then(Value::as_str) != Some("function") {
        return None;
    }
    choice
        .get("function")
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
}

/// Checks the tool fields of a chat request. `None` when the request has no
/// tools (absent or empty), in which case only `tool_choice` `"none"` is
/// accepted.
pub fn validate_tools(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel_tool_calls: Option<&Value>,
) -> Result<Option<ChatTools>, ApiError> {
    let parallel = match parallel_tool_calls {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                "parallel_tool_calls",
                "'parallel_tool_calls' must be a boolean",
            ))
        }
    };
    let definitions = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.clone(),
        Some(_) => return Err(bad("tools", "'tools' must be an array of tools")),
    };
    if definitions.len() > MAX_TOOLS {
        return Err(bad(
            "tools",
            format!(
                "'tools' may hold at most {MAX_TOOLS} tools, got {}",
                definitions.len()
            ),
        ));
    }
    let bytes = serde_json::to_vec(&definitions)
        .map_err(ApiError::internal)?
        .len();
    if bytes > MAX_TOOLS_BYTES {
        return Err(bad(
            "tools",
            format!("'tools' may take at most {MAX_TOOLS_BYTES} bytes of JSON, got {bytes}"),
        ));
    }
    let mut names: Vec<&str> = Vec::with_capacity(definitions.len());
    for (i, tool) in definitions.iter().enumerate() {
        let name = check_tool(i, tool)?;
        if names.contains(&name) {
            return Err(bad(
                format!("tools[{i}].function.name"),
                format!("function name '{name}' is defined more than once in 'tools'"),
            ));
        }
        names.push(name);
    }
    let choice = match tool_choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(Value::Object(object)) => {
            let name = named_choice(object).ok_or_else(|| {
                bad(
                    "tool_choice",
                    "'tool_choice' object must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                )
            })?;
            if definitions.is_empty() {
                return Err(bad("tool_choice", "'tool_choice' requires 'tools'"));
            }
            if !names.contains(&name) {
                return Err(bad(
                    "tool_choice",
                    format!("'tool_choice' names function '{name}', which is not in 'tools'"),
                ));
            }
            return Ok(Some(ChatTools {
                choice: ToolChoice::Named(name.to_string()),
                definitions,
                parallel,
            }));
        }
        Some(_) => {
            return Err(bad(
                "tool_choice",
                "'tool_choice' must be \"none\", \"auto\", \"required\" or a named function",
            ))
        }
    };
    let choice = match choice {
        None if definitions.is_empty() => return Ok(None),
        None | Some("auto") => ToolChoice::Auto,
        Some("none") => ToolChoice::None,
        Some("required") => ToolChoice::Required,
        Some(other) => {
            return Err(bad(
                "tool_choice",
                format!(
                    "tool_choice '{other}' is not one of \"none\", \"auto\", \"required\" or a named function"
                ),
            ))
        }
    };
    if definitions.is_empty() {
        return match choice {
            ToolChoice::None => Ok(None),
            _ => Err(bad("tool_choice", "'tool_choice' requires 'tools'")),
        };
    }
    Ok(Some(ChatTools {
        definitions,
        choice,
        parallel,
    }))
}

/// Checks the `tool_calls` of message `i` and returns them in the shape
/// chat templates read: `{"id", "type": "function", "function": {"name",
/// "arguments"}}` with `arguments` a JSON string, as clients send it back.
pub fn message_tool_calls(i: usize, calls: &Value) -> Result<Vec<Value>, ApiError> {
    let param = format!("messages[{i}].tool_calls");
    let calls = calls
        .as_array()
        .ok_or_else(|| bad(&param, format!("'{param}' must be an array")))?;
    calls
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let at = format!("{param}[{j}]");
            let function = call.get("function").and_then(Value::as_object);
            let name = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad(
                        format!("{at}.function.name"),
                        format!("'{at}.function.name' must be a string"),
                    )
                })?;
            let arguments = match function.and_then(|f| f.get("arguments")) {
                None | Some(Value::Null) => "{}".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => Value::Object(o.clone()).to_string(),
                Some(_) => {
                    return Err(bad(
                        format!("{at}.function.arguments"),
                        format!("'{at}.function.arguments' must be a JSON string"),
                    ))
                }
            };
            let mut normalized = serde_json::json!({
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            });
            match call.get("id") {
                None | Some(Value::Null) => {}
                Some(Value::String(id)) => {
                    normalized["id"] = Value::String(id.clone());
                }
                Some(_) => {
                    return Err(bad(
                        format!("{at}.id"),
                        format!("'{at}.id' must be a string"),
                    ))
                }
            }
            Ok(normalized)
        })
        .collect()
}
