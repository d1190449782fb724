//! The tool-call formats: their markers, how a call's name is read, and
//! which format a chat template speaks.

use std::fmt;
use std::str::FromStr;

/// Opens DeepSeek's block of calls.
pub const DEEPSEEK_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
/// Closes DeepSeek's block of calls.
pub const DEEPSEEK_CALLS_END: &str = "<｜tool▁calls▁end｜>";
/// Opens one DeepSeek call.
pub const DEEPSEEK_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
/// Separates a DeepSeek call's type (R1) or name (V3.1) from what follows.
pub const DEEPSEEK_TOOL_SEP: &str = "<｜tool▁sep｜>";
/// Closes one DeepSeek call.
pub const DEEPSEEK_CALL_END: &str = "<｜tool▁call▁end｜>";
/// Opens a Hermes call.
pub const HERMES_CALL_OPEN: &str = "<tool_call>";
/// Closes a Hermes call.
pub const HERMES_CALL_CLOSE: &str = "</tool_call>";

/// Longest accepted function name in model output: longer is taken for
/// garbage rather than a call (OpenAI's limit is 64).
const MAX_NAME_BYTES: usize = 256;

/// Which tool-call format the served model writes (vLLM's
/// `--tool-call-parser` names). `auto` is not a variant: it is resolved from
/// the chat template with [`ToolCallParser::detect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ToolCallParser {
    /// `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (Qwen2.5,
    /// Hermes).
    Hermes,
    /// `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{…}\n```<｜tool▁call▁end｜>`
    /// (DeepSeek-R1, V3, R1-0528).
    DeepSeekR1,
    /// `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{…}<｜tool▁call▁end｜>`
    /// (DeepSeek-V3.1).
    DeepSeekV31,
    /// No tool-call parsing: all output is content.
    None,
}

impl ToolCallParser {
    /// The name accepted by [`FromStr`] and shown in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolCallParser::Hermes => "hermes",
            ToolCallParser::DeepSeekR1 => "deepseek_r1",
            ToolCallParser::DeepSeekV31 => "deepseek_v31",
            ToolCallParser::None => "none",
        }
    }

    /// The format a chat template writes tool calls in, judged from the
    /// markup it renders assistant tool calls with: `<tool_call>` is Hermes;
    /// DeepSeek's `<｜tool▁call▁begin｜>` is R1's when the arguments sit in a
    /// ```` ```json ```` fence and V3.1's otherwise.
    pub fn detect(template: &str) -> Self {
        if template.contains(DEEPSEEK_CALL_BEGIN) {
            if template.contains("```json") {
                ToolCallParser::DeepSeekR1
            } else {
                ToolCallParser::DeepSeekV31
            }
        } else if template.contains(HERMES_CALL_OPEN) {
            ToolCallParser::Hermes
        } else {
            ToolCallParser::None
        }
    }

    /// The markers of this format, `None` for [`ToolCallParser::None`].
    pub(super) fn markup(self) -> Option<&'static Markup> {
        match self {
            ToolCallParser::Hermes => Some(&HERMES),
            ToolCallParser::DeepSeekR1 => Some(&DEEPSEEK_R1),
            ToolCallParser::DeepSeekV31 => Some(&DEEPSEEK_V31),
            ToolCallParser::None => None,
        }
    }
}

impl fmt::Display for ToolCallParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a tool-call parser name that is not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown tool-call parser '{0}' (expected 'hermes', 'deepseek_r1', 'deepseek_v31' or 'none')"
)]
pub struct UnknownToolCallParser(pub String);

impl FromStr for ToolCallParser {
    type Err = UnknownToolCallParser;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ToolCallParser::Hermes,
            ToolCallParser::DeepSeekR1,
            ToolCallParser::DeepSeekV31,
            ToolCallParser::None,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| UnknownToolCallParser(s.to_string()))
    }
}

/// How a call's arguments are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Body {
    /// The name is in a header before the arguments, which are streamed as
    /// they come (DeepSeek).
    Streamed,
    /// Name and arguments share one JSON object, read once it is complete
    /// (Hermes).
    Json,
}

/// The markers of one format. A call is `call_open`, a header ending in
/// `header_end` (absent for [`Body::Json`]), the arguments ending in
/// `args_end`, then anything up to `call_close` when that is not empty.
#[derive(Debug)]
pub(super) struct Markup {
    /// Markers that end the content: the block opener and `call_open`.
    pub openers: &'static [&'static str],
    pub call_open: &'static str,
    pub header_end: &'static str,
    pub args_end: &'static str,
    pub call_close: &'static str,
    pub body: Body,
    /// Reads the function name from a header.
    pub name: fn(&str) -> Option<&str>,
}

impl Markup {
    /// The marker after which a call is over.
    pub fn close(&self) -> &'static str {
        if self.call_close.is_empty() {
            self.args_end
        } else {
            self.call_close
        }
    }

    /// The longest marker, which bounds how much text can be held back.
    pub fn longest_marker(&self) -> usize {
        self.openers
            .iter()
            .chain([&self.header_end, &self.args_end, &self.call_close])
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    }
}

/// A plausible function name: not empty, not too long, one word.
pub(super) fn valid_name(name: &str) -> Option<&str> {
    (!name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.chars().any(|c| c.is_whitespace() || c.is_control()))
    .then_some(name)
}

/// R1's header is `TYPE<｜tool▁sep｜>NAME\n`.
fn deepseek_r1_name(header: &str) -> Option<&str> {
    let (_, name) = header.split_once(DEEPSEEK_TOOL_SEP)?;
    valid_name(name.trim())
}

/// V3.1's header is the name itself.
fn bare_name(header: &str) -> Option<&str> {
    valid_name(header.trim())
}

static HERMES: Markup = Markup {
    openers: &[HERMES_CALL_OPEN],
    call_open: HERMES_CALL_OPEN,
    header_end: "",
    args_end: HERMES_CALL_CLOSE,
    call_close: "",
    body: Body::Json,
    name: bare_name,
};

static DEEPSEEK_R1: Markup = Markup {
    openers: &[DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALL_BEGIN],
    call_open: DEEPSEEK_CALL_BEGIN,
    header_end: "```json",
    args_end: "```",
    call_close: DEEPSEEK_CALL_END,
    body: Body::Streamed,
    name: deepseek_r1_name,
};

static DEEPSEEK_V31: Markup = Markup {
    openers: &[DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALL_BEGIN],
    call_open: DEEPSEEK_CALL_BEGIN,
    header_end: DEEPSEEK_TOOL_SEP,
    args_end: DEEPSEEK_CALL_END,
    call_close: "",
    body: Body::Streamed,
    name: bare_name,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for parser in [
            ToolCallParser::Hermes,
            ToolCallParser::DeepSeekR1,
            ToolCallParser::DeepSeekV31,
            ToolCallParser::None,
        ] {
            assert_eq!(parser.as_str().parse::<ToolCallParser>(), Ok(parser));
        }
        assert!("auto".parse::<ToolCallParser>().is_err());
    }

    #[test]
    fn detects_format_from_template_markup() {
        assert_eq!(
            ToolCallParser::detect("{{ '<tool_call>\\n' }}"),
            ToolCallParser::Hermes
        );
        assert_eq!(
            ToolCallParser::detect(
                "'<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + name + '```json'"
            ),
            ToolCallParser::DeepSeekR1
        );
        assert_eq!(
            ToolCallParser::detect("'<｜tool▁call▁begin｜>' + name + '<｜tool▁sep｜>' + args"),
            ToolCallParser::DeepSeekV31
        );
        assert_eq!(
            ToolCallParser::detect("{{ message.content }}"),
            ToolCallParser::None
        );
    }

    #[test]
    fn headers_yield_names() {
        assert_eq!(
            deepseek_r1_name("function<｜tool▁sep｜>get_weather\n"),
            Some("get_weather")
        );
        assert_eq!(deepseek_r1_name("get_weather\n"), None);
        assert_eq!(bare_name(" get_weather "), Some("get_weather"));
        assert_eq!(bare_name("two words"), None);
        assert_eq!(bare_name(""), None);
    }
}
