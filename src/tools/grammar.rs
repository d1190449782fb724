//! The grammar of a forced tool call (`tool_choice` `required` or a named
//! function): the served format's markup around arguments that follow the
//! function's parameters schema, written in llguidance's Lark dialect.
//!
//! Markers the vocabulary has as single tokens are written as those tokens
//! (`<[id]>`), so the model sees the token sequence its template renders,
//! not the marker spelled out in pieces.

use serde_json::Value;

use super::markup::{
    ToolCallParser, DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END, DEEPSEEK_CALL_BEGIN,
    DEEPSEEK_CALL_END, DEEPSEEK_TOOL_SEP, HERMES_CALL_CLOSE, HERMES_CALL_OPEN,
};
use crate::structured::{compact_layout, lark_literal};
use crate::types::TokenId;

/// A function the grammar may call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolFunction {
    /// Its name.
    pub name: String,
    /// The JSON schema of its arguments.
    pub parameters: Value,
}

impl ToolFunction {
    /// The function of an OpenAI tool definition (`{"type": "function",
    /// "function": {"name", "parameters"}}`), already checked by the API.
    pub fn from_definition(tool: &Value) -> Option<Self> {
        let function = tool.get("function")?;
        Some(Self {
            name: function.get("name")?.as_str()?.to_string(),
            parameters: function
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        })
    }
}

/// Writes markers as tokens where the vocabulary has them.
struct Markers<'a> {
    token: &'a dyn Fn(&str) -> Option<TokenId>,
}

impl Markers<'_> {
    fn get(&self, marker: &str) -> String {
        match (self.token)(marker) {
            Some(id) => format!("<[{id}]>"),
            None => lark_literal(marker),
        }
    }
}

/// A Lark grammar whose sentences are calls of `functions` in `parser`'s
/// format: one call, or with `parallel` one or more. `token` gives the id of
/// a marker the vocabulary holds as one token. `None` for a format without
/// calls ([`ToolCallParser::None`]) or no functions.
pub fn call_grammar(
    parser: ToolCallParser,
    functions: &[ToolFunction],
    parallel: bool,
    token: &dyn Fn(&str) -> Option<TokenId>,
) -> Option<String> {
    if functions.is_empty() {
        return None;
    }
    let m = Markers { token };
    let mut rules = Vec::new();
    let mut alternatives = Vec::new();
    for (i, f) in functions.iter().enumerate() {
        let mut schema = f.parameters.clone();
        compact_layout(&mut schema);
        rules.push(format!("args_{i}: %json {schema}"));
        let name = lark_literal(&f.name);
        let call = match parser {
            ToolCallParser::Hermes => format!(
                "{} {} {} {} args_{i} {} {}",
                m.get(HERMES_CALL_OPEN),
                lark_literal("\n{\"name\": "),
                lark_literal(&Value::String(f.name.clone()).to_string()),
                lark_literal(", \"arguments\": "),
                lark_literal("}\n"),
                m.get(HERMES_CALL_CLOSE),
            ),
            ToolCallParser::DeepSeekR1 => format!(
                "{} \"function\" {} {name} {} args_{i} {} {}",
                m.get(DEEPSEEK_CALL_BEGIN),
                m.get(DEEPSEEK_TOOL_SEP),
                lark_literal("\n```json\n"),
                lark_literal("\n```"),
                m.get(DEEPSEEK_CALL_END),
            ),
            ToolCallParser::DeepSeekV31 => format!(
                "{} {name} {} args_{i} {}",
                m.get(DEEPSEEK_CALL_BEGIN),
                m.get(DEEPSEEK_TOOL_SEP),
                m.get(DEEPSEEK_CALL_END),
            ),
            ToolCallParser::None => return None,
        };
        rules.push(format!("call_{i}: {call}"));
        alternatives.push(format!("call_{i}"));
    }
    rules.push(format!("call: {}", alternatives.join(" | ")));
    let separator = match parser {
        ToolCallParser::Hermes | ToolCallParser::DeepSeekR1 => lark_literal("\n"),
        ToolCallParser::DeepSeekV31 | ToolCallParser::None => String::new(),
    };
    let calls = if parallel {
        format!("call ({separator} call)*")
    } else {
        "call".to_string()
    };
    let start = match parser {
        ToolCallParser::Hermes => calls,
        _ => format!(
            "{} {calls} {}",
            m.get(DEEPSEEK_CALLS_BEGIN),
            m.get(DEEPSEEK_CALLS_END)
        ),
    };
    rules.insert(0, format!("start: {start}"));
    Some(rules.join("\n"))
}
