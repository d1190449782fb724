//! Qwen2: DeepSeek-R1-Distill-Qwen-1.5B/7B/14B/32B and Qwen2.5. Differs from
//! Llama by biases on the q/k/v projections and by pairing RoPE dimensions
//! `(i, i + d/2)` in every format (llama.cpp does not permute Qwen2's q/k).

use super::config::ModelConfig;
use super::decoder::{load_stack, Decoder};
use super::layers::Rope;
use super::weights::WeightSource;
use crate::kernels::backend::Backend;
use anyhow::Result;

/// Builds a Qwen2 model from its weights.
pub fn load<B: Backend>(
    backend: B,
    weights: &WeightSource,
    config: ModelConfig,
) -> Result<Decoder<B>> {
    let rope = Rope::new(
        config.head_dim,
        config.rope_theta,
        config.rope_style,
        config.rope_scaling,
        None,
    );
    load_stack(backend, weights, config, rope, true)
}
