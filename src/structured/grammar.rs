//! What a request constrains its answer to, compiled by the grammar engine
//! (llguidance) over the served vocabulary.

use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::Matcher;
use serde_json::{json, Value};

use super::vocab::GrammarVocab;

/// Most alternatives a `choice` constraint may list: each becomes a branch
/// of the grammar.
pub const MAX_CHOICES: usize = 1024;

/// A constraint on the answer, as the request states it.
#[derive(Clone, Debug, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid under a JSON schema.
    JsonSchema(Value),
    /// Text matching a regular expression (Rust `regex` syntax), whole.
    Regex(String),
    /// Exactly one of the strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect (which may embed JSON
    /// schemas with `%json`).
    Lark(String),
}

/// How JSON is laid out in a constrained answer: one space after `,` and
/// `:` and no other whitespace. Free whitespace lets a sampled model pad
/// an answer with newlines until `max_tokens` runs out; this keeps the
/// answer as short as its content. A schema with its own `x-guidance`
/// settings keeps them.
pub fn compact_layout(schema: &mut Value) {
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| {
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
}

/// A Lark string literal for `text`: JSON's escaping, which the dialect
/// reads.
pub fn lark_literal(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

impl GrammarSpec {
    fn to_grammar(&self) -> Result<TopLevelGrammar, String> {
        Ok(match self {
            GrammarSpec::JsonObject => {
                let mut schema = json!({"type": "object"});
                compact_layout(&mut schema);
                TopLevelGrammar::from_json_schema(schema)
            }
            GrammarSpec::JsonSchema(schema) => {
                if !schema.is_object() {
                    return Err("a JSON schema must be a JSON object".into());
                }
                let mut schema = schema.clone();
                compact_layout(&mut schema);
                TopLevelGrammar::from_json_schema(schema)
            }
            GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            GrammarSpec::Choice(choices) => {
                if choices.is_empty() {
                    return Err("the list of choices is empty".into());
                }
                if choices.len() > MAX_CHOICES {
                    return Err(format!(
                        "at most {MAX_CHOICES} choices are allowed, got {}",
                        choices.len()
                    ));
                }
                if choices.iter().any(String::is_empty) {
                    return Err("a choice is the empty string".into());
                }
                let alternatives: Vec<String> = choices.iter().map(|c| lark_literal(c)).collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
            GrammarSpec::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
        })
    }
}

/// A constraint compiled for the served vocabulary, in its start state;
/// each sample of a request gets its own copy.
pub struct CompiledGrammar {
    start: Mutex<Matcher>,
    vocab: Arc<GrammarVocab>,
}

impl CompiledGrammar {
    /// Compiles `spec`; the error is the grammar engine's message, fit for
    /// the client. Takes from microseconds to tens of milliseconds for
    /// large schemas, so callers on an async runtime run it on a blocking
    /// thread.
    pub fn compile(spec: &GrammarSpec, vocab: &Arc<GrammarVocab>) -> Result<Self, String> {
        let grammar = spec.to_grammar()?;
        let parser = vocab
            .factory()
            .create_parser(grammar)
            .map_err(|e| e.to_string())?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        // A grammar that allows nothing at all would end every answer
        // empty: say so now rather than return empty answers.
        match matcher.compute_mask() {
            Ok(mask) if mask.is_zero() => return Err("the grammar matches nothing".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        Ok(Self {
            start: Mutex::new(matcher),
            vocab: Arc::clone(vocab),
        })
    }

    /// A fresh matcher in the start state.
    pub fn matcher(&self) -> Matcher {
        self.start
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .deep_clone()
    }

    /// The vocabulary it was compiled for.
    pub fn vocab(&self) -> &Arc<GrammarVocab> {
        &self.vocab
    }
}

impl std::fmt::Debug for CompiledGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledGrammar").finish_non_exhaustive()
    }
}
