//! Model loading and the forward pass. [`weights`], [`shards`] and [`source`]
//! find the tensors, [`config`] reads the hyper-parameters, and one file per
//! architecture ([`llama`], [`qwen2`]) assembles the shared [`decoder`] stack
//! from them, whatever the weight format.

pub mod config;
pub mod decoder;
pub mod layers;
pub mod linear;
pub mod llama;
pub mod load;
pub mod qwen2;
pub mod shards;
pub mod source;
pub mod weights;

use anyhow::Result;
use config::{Arch, ModelConfig};
use decoder::Decoder;
use source::ResolvedSource;
use weights::{GgufFile, WeightSource};

/// Opens the weights of a resolved source and reads its configuration.
pub fn open_weights(source: &ResolvedSource) -> Result<(WeightSource, ModelConfig)> {
    match source {
        ResolvedSource::Gguf(parts) => {
            let files = parts
                .iter()
                .map(|p| GgufFile::open(p))
                .collect::<Result<Vec<_>>>()?;
            for f in &files {
                f.check_complete()?;
            }
            let config = ModelConfig::from_gguf(&files[0])?;
            Ok((WeightSource::Gguf(files), config))
        }
        ResolvedSource::HfDir(dir) => {
            let config = ModelConfig::from_hf_config(&dir.join("config.json"))?;
            Ok((WeightSource::open_safetensors(dir)?, config))
        }
    }
}

/// Builds the model that `config.arch` names.
pub fn build(weights: &WeightSource, config: ModelConfig) -> Result<Decoder> {
    match config.arch {
        Arch::Llama => llama::load(weights, config),
        Arch::Qwen2 => qwen2::load(weights, config),
    }
}
