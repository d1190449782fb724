//! Model loading and the forward pass. [`interface`] is what the engine
//! sees ([`Model`]); [`weights`], [`shards`] and [`source`] find the
//! tensors, [`config`] reads the hyper-parameters, and one file per
//! architecture ([`llama`], [`qwen2`]) assembles the shared [`decoder`]
//! stack from them, whatever the weight format, on a device of the
//! kernels' [`Backend`] seam. [`deepseek_v3`] (DeepSeek-V2/V3: MLA and MoE)
//! has a forward pass of its own, on the CPU, with its MoE layer in [`moe`].

pub mod config;
pub mod decoder;
pub mod deepseek_config;
pub mod deepseek_v3;
pub mod fp8;
pub mod generation_config;
pub mod interface;
pub mod layers;
pub mod llama;
pub mod load;
pub mod moe;
pub mod qwen2;
pub mod shards;
pub mod source;
pub mod weights;

pub use interface::{BatchSeq, ForwardBatch, LogitsRow, Model, ModelInfo, RowNeed};

use crate::kernels::backend::Backend;
use crate::kernels::cpu::Cpu;
use crate::kernels::device::{DeviceOptions, DeviceSpec};
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
            let weights = WeightSource::open_safetensors(dir, config.weight_quant)?;
            Ok((weights, config))
        }
    }
}

/// Builds the model on the device `device` resolves to.
pub fn build_for(
    weights: &WeightSource,
    config: ModelConfig,
    device: &DeviceOptions,
) -> Result<Box<dyn Model>> {
    let deepseek = matches!(config.arch, Arch::DeepseekV2 | Arch::DeepseekV3);
    match device.resolve()? {
        // `auto` keeps architectures the GPU cannot run yet on the CPU;
        // an explicit `cuda` refuses them (in `build_on`).
        DeviceSpec::Cuda(_) if deepseek && device.device == DeviceSpec::Auto => {
            tracing::warn!(
                "{:?} runs on the CPU only: --device auto chose the CPU",
                config.arch
            );
            build(weights, config)
        }
        DeviceSpec::Cpu | DeviceSpec::Auto => build(weights, config),
        DeviceSpec::Cuda(ordinal) => on_cuda(ordinal, device, weights, config),
    }
}

#[cfg(feature = "cuda")]
fn on_cuda(
    ordinal: usize,
    device: &DeviceOptions,
    weights: &WeightSource,
    config: ModelConfig,
) -> Result<Box<dyn Model>> {
    let backend = crate::kernels::cuda::Cuda::new(ordinal, device.gpu_memory_utilization)?;
    build_on(backend, weights, config)
}

#[cfg(not(feature = "cuda"))]
fn on_cuda(
    _: usize,
    _: &DeviceOptions,
    _: &WeightSource,
    _: ModelConfig,
) -> Result<Box<dyn Model>> {
    anyhow::bail!("this r1serve was built without CUDA; rebuild with `--features cuda`")
}

/// Builds the model that `config.arch` names on the CPU: the one table
/// from architecture to model file.
pub fn build(weights: &WeightSource, config: ModelConfig) -> Result<Box<dyn Model>> {
    Ok(match config.arch {
        Arch::Llama | Arch::Qwen2 => build_on(Cpu, weights, config)?,
        Arch::DeepseekV2 | Arch::DeepseekV3 => Box::new(deepseek_v3::load(weights, config)?),
    })
}

/// Builds a model of the shared decoder stack (Llama, Qwen2) on `backend`.
pub fn build_on<B: Backend>(
    backend: B,
    weights: &WeightSource,
    config: ModelConfig,
) -> Result<Box<dyn Model>> {
    Ok(match config.arch {
        Arch::Llama => Box::new(llama::load(backend, weights, config)?),
        Arch::Qwen2 => Box::new(qwen2::load(backend, weights, config)?),
        Arch::DeepseekV2 | Arch::DeepseekV3 => anyhow::bail!(
            "{:?} runs on the CPU forward pass of `deepseek_v3` only",
            config.arch
        ),
    })
}
