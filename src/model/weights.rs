//! Where tensors come from: one or more GGUF files (split checkpoints) or a
//! directory of safetensors shards ([`super::shards`]). Every lookup error
//! names the file and the tensor, so a broken checkpoint is diagnosed without
//! a debugger.
//!
//! Tensor names are GGUF's (`blk.3.attn_q.weight`); the safetensors source
//! translates them to Hugging Face names (`model.layers.3.self_attn.q_proj.weight`).

use super::config::Fp8Blocks;
use super::shards::Shards;
use crate::kernels::bytes::{HalfKind, WeightBytes};
use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::Device;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::kernels::tensor::{widen, RawTensor};

/// One GGUF file of a (possibly split) checkpoint.
pub struct GgufFile {
    /// Path on disk, for error messages.
    pub path: PathBuf,
    /// Parsed header.
    pub content: gguf_file::Content,
    len: u64,
}

impl GgufFile {
    /// Parses the header of `path`, refusing files too short for the tensors
    /// they declare (a truncated download is the common case).
    pub fn open(path: &Path) -> Result<Self> {
        let mut f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let len = f.metadata()?.len();
        let content = gguf_file::Content::read(&mut f)
            .map_err(|e| anyhow::anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            len,
        })
    }

    /// Checks that every declared tensor lies inside the file.
    pub fn check_complete(&self) -> Result<()> {
        for (name, info) in &self.content.tensor_infos {
            let elems = info.shape.elem_count();
            let bs = info.ggml_dtype.block_size();
            let bytes = (elems / bs * info.ggml_dtype.type_size()) as u64;
            let end = self.content.tensor_data_offset + info.offset + bytes;
            if end > self.len {
                bail!(
                    "{}: file is truncated: tensor `{name}` ends at byte {end} but the file has {} bytes",
                    self.path.display(),
                    self.len
                );
            }
        }
        Ok(())
    }

    /// Reads tensor `name`: F16/BF16 tensors into [`RawTensor::Half`] (their
    /// bytes read once, as stored), every other type through candle.
    pub fn tensor(&self, name: &str) -> Result<RawTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .with_context(|| format!("{}: tensor `{name}` is missing", self.path.display()))?;
        let mut reader = File::open(&self.path)
            .with_context(|| format!("{}: cannot open", self.path.display()))?;
        let kind = match info.ggml_dtype {
            GgmlDType::F16 => HalfKind::F16,
            GgmlDType::BF16 => HalfKind::Bf16,
            _ => {
                let q = self
                    .content
                    .tensor(&mut reader, name, &Device::Cpu)
                    .map_err(|e| {
                        anyhow::anyhow!("{}: cannot read tensor `{name}`: {e}", self.path.display())
                    })?;
                return Ok(RawTensor::Quantized(q));
            }
        };
        let dims = info.shape.dims().to_vec();
        let mut bytes = vec![0u8; info.shape.elem_count() * 2];
        reader
            .seek(SeekFrom::Start(
                self.content.tensor_data_offset + info.offset,
            ))
            .and_then(|_| reader.read_exact(&mut bytes))
            .with_context(|| format!("{}: cannot read tensor `{name}`", self.path.display()))?;
        Ok(RawTensor::Half {
            kind,
            dims,
            bytes: WeightBytes::Owned(Arc::new(bytes)),
        })
    }

    /// String metadata value, if present.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }
}

/// The tensors of one checkpoint.
pub enum WeightSource {
    /// One or more GGUF files; later files of a split checkpoint hold the rest.
    Gguf(Vec<GgufFile>),
    /// Memory-mapped safetensors shards.
    Safetensors(Shards),
}

/// Translates a GGUF tensor name into the Hugging Face name.
pub fn hf_name(gguf: &str) -> String {
    const FIXED: &[(&str, &str)] = &[
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ];
    if let Some((_, hf)) = FIXED.iter().find(|(g, _)| *g == gguf) {
        return hf.to_string();
    }
    const PARTS: &[(&str, &str)] = &[
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("attn_norm", "input_layernorm"),
        ("ffn_norm", "post_attention_layernorm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
        // DeepSeek-V2/V3 (llama.cpp's `deepseek2`).
        ("attn_q_a", "self_attn.q_a_proj"),
        ("attn_q_a_norm", "self_attn.q_a_layernorm"),
        ("attn_q_b", "self_attn.q_b_proj"),
        ("attn_kv_a_mqa", "self_attn.kv_a_proj_with_mqa"),
        ("attn_kv_a_norm", "self_attn.kv_a_layernorm"),
        ("attn_kv_b", "self_attn.kv_b_proj"),
        ("ffn_gate_inp", "mlp.gate"),
        ("ffn_gate_shexp", "mlp.shared_experts.gate_proj"),
        ("ffn_up_shexp", "mlp.shared_experts.up_proj"),
        ("ffn_down_shexp", "mlp.shared_experts.down_proj"),
    ];
    let mut it = gguf.splitn(3, '.');
    if let (Some("blk"), Some(layer), Some(rest)) = (it.next(), it.next(), it.next()) {
        if rest == "exp_probs_b.bias" {
            return format!("model.layers.{layer}.mlp.gate.e_score_correction_bias");
        }
        if let Some((part, suffix)) = rest.split_once('.') {
            if let Some((_, hf)) = PARTS.iter().find(|(g, _)| *g == part) {
                return format!("model.layers.{layer}.{hf}.{suffix}");
            }
        }
    }
    gguf.to_string()
}

impl WeightSource {
    /// Opens the safetensors shards of an HF directory: either the files named
    /// by `model.safetensors.index.json` or a single `model.safetensors`;
    /// `fp8` (from its config) admits block-scaled E4M3 weights.
    pub fn open_safetensors(dir: &Path, fp8: Option<Fp8Blocks>) -> Result<Self> {
        Ok(WeightSource::Safetensors(Shards::open(dir, fp8)?))
    }

    /// Whether a tensor (GGUF name) exists.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            WeightSource::Gguf(files) => files
                .iter()
                .any(|f| f.content.tensor_infos.contains_key(name)),
            WeightSource::Safetensors(shards) => shards.contains(&hf_name(name)),
        }
    }

    /// Loads a tensor by GGUF name and checks its shape (outermost first).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<RawTensor> {
        let (t, origin) = match self {
            WeightSource::Gguf(files) => {
                let file = files
                    .iter()
                    .find(|f| f.content.tensor_infos.contains_key(name))
                    .with_context(|| {
                        format!("{}: tensor `{name}` is missing", files[0].path.display())
                    })?;
                (file.tensor(name)?, file.path.clone())
            }
            WeightSource::Safetensors(shards) => {
                let (t, path) = shards.get(&hf_name(name))?;
                (t, path.to_path_buf())
            }
        };
        let dims = t.dims();
        if dims != shape {
            bail!(
                "{}: tensor `{name}` has shape {dims:?}, expected {shape:?}",
                origin.display()
            );
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::hf_name;

    #[test]
    fn gguf_names_map_to_hf_names() {
        assert_eq!(
            hf_name("blk.12.attn_q.bias"),
            "model.layers.12.self_attn.q_proj.bias"
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight"),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(hf_name("output.weight"), "lm_head.weight");
        assert_eq!(
            hf_name("blk.3.attn_kv_a_mqa.weight"),
            "model.layers.3.self_attn.kv_a_proj_with_mqa.weight"
        );
        assert_eq!(
            hf_name("blk.3.exp_probs_b.bias"),
            "model.layers.3.mlp.gate.e_score_correction_bias"
        );
    }
}
