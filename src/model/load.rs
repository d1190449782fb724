//! From `--model` to a runnable model: resolve the source, read weights and
//! configuration, build the tokenizer, and pick up generation defaults
//! (`generation_config.json`: EOS ids and sampling defaults).

use super::generation_config::GenerationDefaults;
use super::interface::Model;
use super::source::{resolve, ResolvedSource};
use super::weights::WeightSource;
use super::{build_for, open_weights};
use crate::kernels::device::DeviceOptions;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Hub revision (branch, tag or commit); default `main`.
    pub revision: Option<String>,
    /// The device the model runs on.
    pub device: DeviceOptions,
}

/// A model ready to serve.
pub struct LoadedModel {
    /// The network.
    pub model: Box<dyn Model>,
    /// Its tokenizer (with the chat template).
    pub tokenizer: Arc<Tokenizer>,
    /// A name for `/v1/models`: the repo id, directory or file name.
    pub name: String,
    /// The model's context length.
    pub max_model_len: usize,
    /// Sampling defaults the checkpoint recommends
    /// (`generation_config.json`).
    pub generation_config: GenerationDefaults,
}

fn name_of(spec: &str) -> String {
    let p = Path::new(spec);
    if p.exists() {
        p.file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
            .unwrap_or_else(|| spec.to_string())
    } else {
        spec.to_string()
    }
}

/// Loads everything `spec` names.
pub fn load(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    crate::kernels::dense::with_precision(opts.device.precision, || load_with(spec, opts))
}

fn load_with(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let source = resolve(spec, opts.revision.as_deref())?;
    let (weights, config) = open_weights(&source)?;
    let mut tokenizer = match (&source, &weights) {
        (ResolvedSource::Gguf(parts), WeightSource::Gguf(files)) => {
            Tokenizer::from_gguf(&files[0].content, &parts[0])?
        }
        (ResolvedSource::HfDir(dir), _) => Tokenizer::from_hf_dir(dir)?,
        _ => anyhow::bail!("{spec}: weights and tokenizer source kinds disagree"),
    };
    let mut generation_config = GenerationDefaults::default();
    if let ResolvedSource::HfDir(dir) = &source {
        let gen = dir.join("generation_config.json");
        if gen.exists() {
            let text = std::fs::read_to_string(&gen)
                .with_context(|| format!("{}: cannot read", gen.display()))?;
            let j: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", gen.display()))?;
            let eos: Vec<u32> = match j.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().into_iter().map(|v| v as u32).collect()
                }
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as u32)
                    .collect(),
                _ => Vec::new(),
            };
            tokenizer.add_eos_ids(eos);
            if let Some(config) = j.as_object() {
                generation_config = GenerationDefaults::from_generation_config(config)
                    .with_context(|| format!("{}", gen.display()))?;
            }
        }
    }
    let max_model_len = config.max_position_embeddings;
    let model = build_for(&weights, config, &opts.device)?;
    Ok(LoadedModel {
        model,
        tokenizer: Arc::new(tokenizer),
        name: name_of(spec),
        max_model_len,
        generation_config,
    })
}
