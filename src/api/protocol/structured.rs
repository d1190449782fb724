//! Structured-output fields in their dialects: OpenAI's `response_format`
//! and vLLM's `guided_json` / `guided_regex` / `guided_choice` /
//! `guided_grammar` and `structured_outputs`, checked into one
//! [`Constraint`]. Whether the grammar engine accepts the schema or grammar
//! is decided later, when it is compiled.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::structured::GrammarSpec;

/// The structured-output fields of a generation request, as sent.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct StructuredFields {
    /// OpenAI: `{"type": "text" | "json_object" | "json_schema", ...}`.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// vLLM: a JSON schema (object or JSON text).
    #[serde(default)]
    pub guided_json: Option<Value>,
    /// vLLM: a regular expression.
    #[serde(default)]
    pub guided_regex: Option<Value>,
    /// vLLM: a list of strings.
    #[serde(default)]
    pub guided_choice: Option<Value>,
    /// vLLM: a grammar (llguidance's Lark dialect here).
    #[serde(default)]
    pub guided_grammar: Option<Value>,
    /// vLLM's newer spelling: `{"json" | "regex" | "choice" | "grammar" |
    /// "json_object": ...}`.
    #[serde(default)]
    pub structured_outputs: Option<Value>,
}

/// A checked constraint and the parameter it came from (named in errors).
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    /// What the answer must match.
    pub spec: GrammarSpec,
    /// The request parameter that asked for it.
    pub param: String,
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(param, message)
}

fn is_set(v: &Option<Value>) -> bool {
    !matches!(v, None | Some(Value::Null))
}

/// A schema given as an object or as JSON text.
fn schema(param: &str, value: &Value) -> Result<GrammarSpec, ApiError> {
    let schema = match value {
        Value::Object(_) => value.clone(),
        Value::String(text) => serde_json::from_str(text)
            .map_err(|e| bad(param, format!("'{param}' is not valid JSON: {e}")))?,
        _ => {
            return Err(bad(
                param,
                format!("'{param}' must be a JSON schema object"),
            ))
        }
    };
    if !schema.is_object() {
        return Err(bad(
            param,
            format!("'{param}' must be a JSON schema object"),
        ));
    }
    Ok(GrammarSpec::JsonSchema(schema))
}

fn text(param: &str, value: &Value, what: &str) -> Result<String, ApiError> {
    match value {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(bad(param, format!("'{param}' must be a non-empty {what}"))),
    }
}

fn choices(param: &str, value: &Value) -> Result<GrammarSpec, ApiError> {
    let list = value
        .as_array()
        .ok_or_else(|| bad(param, format!("'{param}' must be a list of strings")))?;
    let strings = list
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad(param, format!("'{param}' must be a list of strings")))?;
    Ok(GrammarSpec::Choice(strings))
}

/// OpenAI's `response_format`; `None` for `text`.
fn response_format(value: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    const P: &str = "response_format";
    let object = value
        .as_object()
        .ok_or_else(|| bad(P, "'response_format' must be an object with a 'type'"))?;
    match object.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonObject)),
        Some("json_schema") => {
            let inner = object
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    bad(
                        "response_format.json_schema",
                        "'response_format.json_schema' must be an object with a 'schema'",
                    )
                })?;
            if inner.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
                return Err(bad(
                    "response_format.json_schema.strict",
                    "'response_format.json_schema.strict' must be a boolean",
                ));
            }
            // Without `schema` OpenAI constrains to any JSON object.
            match inner.get("schema") {
                None | Some(Value::Null) => Ok(Some(GrammarSpec::JsonObject)),
                Some(s) => schema("response_format.json_schema.schema", s).map(Some),
            }
        }
        Some(other) => Err(bad(
            "response_format.type",
            format!(
                "response_format type '{other}' is not supported; use \"text\", \"json_object\" or \"json_schema\""
            ),
        )),
        None => Err(bad(
            "response_format.type",
            "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

/// vLLM's `structured_outputs` object.
fn structured_outputs(object: &Map<String, Value>) -> Result<Vec<Constraint>, ApiError> {
    let mut found = Vec::new();
    for (key, value) in object {
        let param = format!("structured_outputs.{key}");
        if value.is_null() || value == &Value::Bool(false) {
            continue;
        }
        let spec = match key.as_str() {
            "json" => schema(&param, value)?,
            "regex" => GrammarSpec::Regex(text(&param, value, "regular expression")?),
            "choice" => choices(&param, value)?,
            "grammar" => GrammarSpec::Lark(text(&param, value, "grammar")?),
            "json_object" if value == &Value::Bool(true) => GrammarSpec::JsonObject,
            // Switches about how, not what: whitespace is fixed here (see
            // `structured::compact_layout`), and there is one backend.
            "disable_any_whitespace"
            | "disable_fallback"
            | "disable_additional_properties"
            | "backend"
            | "whitespace_pattern" => continue,
            _ => {
                return Err(bad(
                    &param,
                    format!(
                    "'{param}' is not supported; use json, regex, choice, grammar or json_object"
                ),
                ))
            }
        };
        found.push(Constraint { spec, param });
    }
    Ok(found)
}

impl StructuredFields {
    /// The one constraint the request asks for, if any. Two at once is a
    /// contradiction the client must resolve.
    pub fn constraint(&self) -> Result<Option<Constraint>, ApiError> {
        let mut found = Vec::new();
        let mut add = |param: &str, spec: GrammarSpec| {
            found.push(Constraint {
                spec,
                param: param.to_string(),
            })
        };
        if let Some(v) = self.response_format.as_ref().filter(|v| !v.is_null()) {
            if let Some(spec) = response_format(v)? {
                add("response_format", spec);
            }
        }
        if let Some(v) = self
            .guided_json
            .as_ref()
            .filter(|_| is_set(&self.guided_json))
        {
            add("guided_json", schema("guided_json", v)?);
        }
        if let Some(v) = self
            .guided_regex
            .as_ref()
            .filter(|_| is_set(&self.guided_regex))
        {
            add(
                "guided_regex",
                GrammarSpec::Regex(text("guided_regex", v, "regular expression")?),
            );
        }
        if let Some(v) = self
            .guided_choice
            .as_ref()
            .filter(|_| is_set(&self.guided_choice))
        {
            add("guided_choice", choices("guided_choice", v)?);
        }
        if let Some(v) = self
            .guided_grammar
            .as_ref()
            .filter(|_| is_set(&self.guided_grammar))
        {
            add(
                "guided_grammar",
                GrammarSpec::Lark(text("guided_grammar", v, "grammar")?),
            );
        }
        match &self.structured_outputs {
            None | Some(Value::Null) => {}
            Some(Value::Object(object)) => found.extend(structured_outputs(object)?),
            Some(_) => {
                return Err(bad(
                    "structured_outputs",
                    "'structured_outputs' must be an object",
                ))
            }
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => Err(bad(
                &found[1].param,
                format!(
                    "'{}' and '{}' both constrain the output; send one",
                    found[0].param, found[1].param
                ),
            )),
        }
    }
}
