//! Model loading and the forward pass. [`interface`] is what the engine
//! sees ([`Model`]); [`weights`], [`shards`] and [`source`] find the
//! tensors, [`config`] reads the hyper-parameters, and one file per
//! architecture ([`llama`], [`qwen2`]) assembles the shared [`decoder`]
//! stack from them, whatever the weight format, on a device of the
//! kernels' [`Backend`] seam.

pub mod config;
pub mod decoder;
pub mod generation_config;
pub mod interface;
pub mod layers;
pub mod llama;
pub mod load;
pub mod qwen2;
pub mod shards;
pub mod source;
pub mod weights;

pub use interface::{BatchSeq, ForwardBatch, Model, ModelInfo};

use crate::kernels::backend::Backend;
use crate::kernels::cpu::Cpu;
use anyhow::Result;
use config::{Arch, ModelConfig};
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

/// Builds the model that `config.arch` names on the CPU.
pub fn build(weights: &WeightSource, config: ModelConfig) -> Result<Box<dyn Model>> {
    build_on(Cpu, weights, config)
}

/// Builds the model that `config.arch` names on `backend`.
pub fn build_on<B: Backend>(
    backend: B,
    weights: &WeightSource,
    config: ModelConfig,
) -> Result<Box<dyn Model>> {
    Ok(match config.arch {
        Arch::Llama => Box::new(llama::load(backend, weights, config)?),
        Arch::Qwen2 => Box::new(qwen2::load(backend, weights, config)?),
    })
}
