//! Chat templates: the model's Jinja template, compiled once and rendered the
//! way Hugging Face's `apply_chat_template` renders it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{anyhow, Context, Result};
use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};

use super::Tokenizer;

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template plus the BOS/EOS strings templates refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compiles `source` with the settings and helpers Hugging Face gives
    /// chat templates: `trim_blocks` and `lstrip_blocks`, Python string
    /// methods (`.strip()`, `.split()`, `.startswith()`...),
    /// `raise_exception`, `tojson` (non-ASCII kept, `indent` supported) and
    /// `strftime_now`.
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.into())
            .map_err(|e| anyhow!("chat template does not compile: {e:#}"))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// Compiles the tokenizer's own template with its BOS/EOS strings.
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<Self> {
        let source = tok
            .chat_template()
            .context("the model has no chat template")?;
        Self::new(
            source,
            tok.bos_token().map(str::to_owned),
            tok.eos_token().map(str::to_owned),
        )
    }

    /// Renders `messages` (a JSON array of message objects, passed through as
    /// given: `content` may be a string or null, `reasoning_content`,
    /// `tool_calls`... are visible to the template). `tools` is the list of
    /// tool definitions, as `apply_chat_template(tools=...)` passes it, and
    /// is the only source of the `tools` variable. `extra` adds other
    /// variables; `messages`, `tools`, `add_generation_prompt`, `bos_token`
    /// and `eos_token` take precedence over entries of the same name.
    pub fn render(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        if !messages.is_array() {
            anyhow::bail!("chat template messages must be a JSON array");
        }
        let mut ctx: BTreeMap<&str, Value> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), Value::from_serialize(v)))
            .collect();
        ctx.insert("messages", Value::from_serialize(messages));
        match tools {
            Some(tools) => ctx.insert("tools", Value::from_serialize(tools)),
            None => ctx.remove("tools"),
        };
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token", Value::from(eos.as_str()));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| anyhow!("chat template: {e:#}"))?;
        template
            .render(ctx)
            .map_err(|e| anyhow!("rendering the chat template failed: {e:#}"))
    }
}

/// Templates call `raise_exception("...")` to reject a conversation they
/// cannot format (e.g. roles out of order); the message goes to the client.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("chat template raised an exception: {message}"),
    ))
}

/// The current local time formatted with a `strftime` format, for templates
/// that print today's date.
fn strftime_now(format: String) -> Result<Value, Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(Value::from(out))
}

/// `json.dumps` spacing without `indent`: `", "` between items and `": "`
/// after keys.
struct PythonCompact;

impl Formatter for PythonCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Hugging Face's `tojson`: `json.dumps(value, ensure_ascii=False, indent=indent)`,
/// so the spacing matches what the template author saw in Python (minijinja's
/// own `tojson` is compact and HTML-escaped).
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        Some(v) => Some(v),
        None => indent,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v.clone()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: indent must be a non-negative integer, got {v}"),
            )
        })?),
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    kwargs.assert_all_used()?;

    let mut buf = Vec::new();
    let result = match indent {
        Some(n) => {
            let spaces = " ".repeat(n);
            let mut ser = serde_json::Serializer::with_formatter(
                &mut buf,
                PrettyFormatter::with_indent(spaces.as_bytes()),
            );
            value.serialize(&mut ser)
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, PythonCompact);
            value.serialize(&mut ser)
        }
    };
    result.map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: cannot serialize value: {e}"),
        )
    })?;
    let json = String::from_utf8(buf).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            "tojson: produced invalid UTF-8",
        )
    })?;
    Ok(Value::from_safe_string(if ensure_ascii {
        escape_non_ascii(&json)
    } else {
        json
    }))
}

/// `ensure_ascii=True`: non-ASCII characters (only ever inside JSON strings)
/// become `\uXXXX` escapes, with surrogate pairs beyond the BMP.
fn escape_non_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, extra: serde_json::Value) -> String {
        let template = ChatTemplate::new(source, None, None).unwrap();
        let extra = extra.as_object().cloned().unwrap_or_default();
        template
            .render(&serde_json::json!([]), false, None, &extra)
            .unwrap()
    }

    #[test]
    fn tojson_spacing_matches_python() {
        let v = serde_json::json!({"v": [1, {"a": [true, null, "x\ny"]}, [], {}]});
        assert_eq!(
            render("{{ v | tojson }}", v.clone()),
            r#"[1, {"a": [true, null, "x\ny"]}, [], {}]"#
        );
        assert_eq!(
            render("{{ v | tojson(1) }}", v),
            "[\n 1,\n {\n  \"a\": [\n   true,\n   null,\n   \"x\\ny\"\n  ]\n },\n [],\n {}\n]"
        );
    }

    #[test]
    fn tojson_ensure_ascii_escapes_like_python() {
        assert_eq!(escape_non_ascii("\"é😀\""), r#""\u00e9\ud83d\ude00""#);
        assert_eq!(
            render(
                "{{ v | tojson(ensure_ascii=true) }}",
                serde_json::json!({"v": "é"})
            ),
            r#""\u00e9""#
        );
    }

    #[test]
    fn whitespace_control_matches_hf() {
        // trim_blocks drops the newline after a block tag, lstrip_blocks the
        // indentation before it, and the final newline is not kept.
        let source =
            "{% for i in [1, 2] %}\n    {% if i %}\n{{ i }}\n    {% endif %}\n{% endfor %}\n";
        assert_eq!(render(source, serde_json::json!({})), "1\n2\n");
    }

    #[test]
    fn unknown_tojson_argument_is_an_error() {
        let template = ChatTemplate::new("{{ 1 | tojson(bogus=1) }}", None, None).unwrap();
        assert!(template
            .render(&serde_json::json!([]), false, None, &serde_json::Map::new())
            .is_err());
    }

    #[test]
    fn tools_come_only_from_the_parameter() {
        let template = ChatTemplate::new("{{ tools | tojson }}", None, None).unwrap();
        let smuggled = serde_json::json!({"tools": ["smuggled"]});
        let smuggled = smuggled.as_object().unwrap();
        let messages = serde_json::json!([]);
        let given = serde_json::json!(["given"]);
        assert_eq!(
            template
                .render(&messages, false, Some(&given), smuggled)
                .unwrap(),
            r#"["given"]"#
        );
        assert_eq!(
            template.render(&messages, false, None, smuggled).unwrap(),
            "null"
        );
    }
}
