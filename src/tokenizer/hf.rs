//! Building a [`Tokenizer`] from a Hugging Face model directory
//! (`tokenizer.json` + `tokenizer_config.json`).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::{SpecialToken, Tokenizer};

/// A special token in `tokenizer_config.json`: a plain string or an
/// `AddedToken` object with a `content` field.
fn token_text(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Object(map) => map.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// `chat_template` is either the template itself or a list of named ones, of
/// which the server uses `default`.
fn chat_template(value: &Value, file: &Path) -> Result<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(list) => {
            for entry in list {
                if entry.get("name").and_then(Value::as_str) == Some("default") {
                    let template =
                        entry
                            .get("template")
                            .and_then(Value::as_str)
                            .with_context(|| {
                                format!(
                                    "{}: the default chat_template has no template string",
                                    file.display()
                                )
                            })?;
                    return Ok(Some(template.to_owned()));
                }
            }
            bail!(
                "{}: chat_template is a list without a template named \"default\"",
                file.display()
            )
        }
        _ => bail!(
            "{}: chat_template should be a string or a list of {{name, template}}",
            file.display()
        ),
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from `dir`, with BOS/EOS, `add_bos_token` and
    /// the chat template from `tokenizer_config.json` when present (a
    /// separate `chat_template.jinja`, as newer checkpoints ship, is used when
    /// the config has none).
    ///
    /// Without `add_bos_token` in the config, BOS is prepended exactly when
    /// `tokenizer.json`'s own post-processor would add it.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            bail!("{}: not found", tokenizer_path.display());
        }
        let inner = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow!("{}: {e}", tokenizer_path.display()))?;

        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("{}: reading", config_path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", config_path.display()))?
        } else {
            Value::Object(Default::default())
        };
        if !config.is_object() {
            bail!("{}: expected a JSON object", config_path.display());
        }

        let lookup = |field: &str| -> Result<Option<SpecialToken>> {
            let Some(text) = config.get(field).and_then(token_text) else {
                return Ok(None);
            };
            let id = inner.token_to_id(text).with_context(|| {
                format!(
                    "{}: {field} {text:?} is not in {}",
                    config_path.display(),
                    tokenizer_path.display()
                )
            })?;
            Ok(Some(SpecialToken {
                text: text.to_owned(),
                id,
            }))
        };
        let bos = lookup("bos_token")?;
        let eos = lookup("eos_token")?;
        let pad_id = lookup("pad_token")?.map(|t| t.id);

        let add_bos_token = match config.get("add_bos_token") {
            Some(Value::Bool(b)) => *b,
            Some(Value::Null) | None => match &bos {
                Some(bos) => {
                    let probe = inner
                        .encode_fast("", true)
                        .map_err(|e| anyhow!("{}: {e}", tokenizer_path.display()))?;
                    probe.get_ids().contains(&bos.id)
                }
                None => false,
            },
            Some(_) => bail!("{}: add_bos_token should be a bool", config_path.display()),
        };
        if add_bos_token && bos.is_none() {
            bail!(
                "{}: add_bos_token is set but there is no bos_token",
                config_path.display()
            );
        }

        let mut template = match config.get("chat_template") {
            Some(value) => chat_template(value, &config_path)?,
            None => None,
        };
        let jinja_path = dir.join("chat_template.jinja");
        if template.is_none() && jinja_path.is_file() {
            template = Some(
                std::fs::read_to_string(&jinja_path)
                    .with_context(|| format!("{}: reading", jinja_path.display()))?,
            );
        }

        Tokenizer::from_parts(inner, bos, eos, pad_id, add_bos_token, template)
    }
}
