//! Llama (2 and 3): SmolLM2, DeepSeek-R1-Distill-Llama-8B/70B. No attention
//! biases; Llama 3 checkpoints scale RoPE frequencies, given either as
//! `rope_scaling` in config.json or, in GGUF, as the `rope_freqs.weight`
//! tensor of per-frequency divisors that llama.cpp writes.

use super::config::ModelConfig;
use super::decoder::{load_stack, Decoder};
use super::layers::Rope;
use super::weights::WeightSource;
use crate::kernels::backend::Backend;
use anyhow::Result;

/// Builds a Llama model from its weights.
pub fn load<B: Backend>(
    backend: B,
    weights: &WeightSource,
    config: ModelConfig,
) -> Result<Decoder<B>> {
    let factors = if weights.contains("rope_freqs.weight") {
        Some(
            weights
                .get("rope_freqs.weight", &[config.head_dim / 2])?
                .to_f32_vec()?,
        )
    } else {
        None
    };
    let rope = Rope::new(
        config.head_dim,
        config.rope_theta,
        config.rope_style,
        config.rope_scaling,
        factors.as_deref(),
    );
    load_stack(backend, weights, config, rope, false)
}
