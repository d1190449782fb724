//! `r1serve generate`: one prompt through the real engine (paged KV cache,
//! sampler, detokenizer), text streamed to stdout, speed reported on stderr.

use crate::engine::types::{EngineRequest, SamplingParams};
use crate::engine::{Engine, EngineConfig};
use crate::kernels::device::DeviceOptions;
use crate::model::load::{load, LoadOptions};
use anyhow::{Context, Result};
use futures::StreamExt;
use std::io::Write;
use std::time::Instant;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Model source (GGUF file, HF directory or Hub repo id).
    pub model: String,
    /// Hub revision.
    pub revision: Option<String>,
    /// Where the forward pass runs.
    pub device: DeviceOptions,
    /// The prompt text.
    pub prompt: String,
    /// Wrap the prompt as a user message with the model's chat template.
    pub chat: bool,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Keep generating past the end-of-sequence token.
    pub ignore_eos: bool,
    /// Sampling temperature; default: the model's recommendation, else 0.
    pub temperature: Option<f32>,
    /// Nucleus mass; default: the model's recommendation, else 1.
    pub top_p: Option<f32>,
    /// Random seed.
    pub seed: Option<u64>,
}

/// Runs the generation; returns after the last token is printed.
pub async fn run(opts: GenerateOptions) -> Result<()> {
    let model = load(
        &opts.model,
        &LoadOptions {
            revision: opts.revision.clone(),
            device: opts.device,
        },
    )?;
    let tokenizer = model.tokenizer.clone();
    let prompt = if opts.chat {
        let template = crate::tokenizer::ChatTemplate::from_tokenizer(&tokenizer)
            .context("--chat needs the model's chat template")?;
        let messages = serde_json::json!([{"role": "user", "content": opts.prompt}]);
        let input = crate::tokenizer::ChatInput {
            messages: &messages,
            ending: crate::tokenizer::ChatEnding::GenerationPrompt,
            tools: None,
            extra: &serde_json::Map::new(),
        };
        template.encode(&tokenizer, &input, false, None)?.ids
    } else {
        tokenizer.encode(&opts.prompt, true)?
    };
    let params = SamplingParams {
        temperature: opts
            .temperature
            .or(model.generation_config.temperature)
            .unwrap_or(0.0),
        top_p: opts.top_p.or(model.generation_config.top_p).unwrap_or(1.0),
        seed: opts.seed,
        max_tokens: opts.max_tokens,
        ignore_eos: opts.ignore_eos,
        ..Default::default()
    };
    let max_model_len = model.max_model_len.min(prompt.len() + opts.max_tokens + 16);
    let engine = Engine::start(
        model.model,
        tokenizer,
        EngineConfig {
            max_num_seqs: 1,
            max_model_len: Some(max_model_len),
            ..Default::default()
        },
    )?;
    let prompt_tokens = prompt.len();
    let start = Instant::now();
    let mut stream = engine.add_request(EngineRequest { prompt, params })?;
    let mut first = None;
    let mut generated = 0usize;
    let mut stdout = std::io::stdout();
    while let Some(out) = stream.next().await {
        for s in &out.samples {
            generated += s.token_ids.len();
            write!(stdout, "{}", s.text)?;
        }
        stdout.flush()?;
        if first.is_none() && generated > 0 {
            first = Some(Instant::now());
        }
        if out.finished {
            break;
        }
    }
    writeln!(stdout)?;
    let first = first.unwrap_or_else(Instant::now);
    let prefill = first.duration_since(start).as_secs_f64();
    let decode = first.elapsed().as_secs_f64();
    eprintln!(
        "prompt: {prompt_tokens} tokens, {:.1} tokens/s | decode: {} tokens, {:.1} tokens/s",
        prompt_tokens as f64 / prefill.max(1e-9),
        generated.saturating_sub(1),
        generated.saturating_sub(1) as f64 / decode.max(1e-9)
    );
    engine.shutdown();
    Ok(())
}
