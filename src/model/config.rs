//! Architecture hyper-parameters, read from a GGUF header or an HF
//! `config.json`, in one explicit struct both model files consume.

pub use crate::kernels::backend::RopeStyle;

pub use super::deepseek_config::DeepseekConfig;

use super::deepseek_config::Scoring;

use super::weights::GgufFile;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The architectures r1serve can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3 (R1-Distill-Llama-8B/70B, SmolLM2).
    Llama,
    /// Qwen2 (R1-Distill-Qwen-1.5B/7B/14B/32B, Qwen2.5).
    Qwen2,
    /// DeepSeek-V2 (MLA, softmax-routed MoE): V2, V2-Lite.
    DeepseekV2,
    /// DeepSeek-V3 (MLA, sigmoid-routed MoE with a correction bias): V3, R1.
    DeepseekV3,
}

/// Block-scaled FP8 weights (`quantization_config.quant_method = "fp8"` with
/// `weight_block_size`, as DeepSeek publishes V3 and R1): each E4M3 weight
/// `W` comes with `W_scale_inv`, one f32 per `rows × cols` block, and the
/// real weight is their product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fp8Blocks {
    /// Block height (output rows).
    pub rows: usize,
    /// Block width (input columns).
    pub cols: usize,
}

/// Llama 3's frequency-dependent RoPE scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    /// Overall scaling factor.
    pub factor: f32,
    /// Wavelengths longer than `original / low_freq_factor` are scaled fully.
    pub low_freq_factor: f32,
    /// Wavelengths shorter than `original / high_freq_factor` are kept.
    pub high_freq_factor: f32,
    /// The context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

/// Hyper-parameters of a decoder-only transformer.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Which model file runs it.
    pub arch: Arch,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when smaller than `num_heads`).
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RoPE pairing.
    pub rope_style: RopeStyle,
    /// Llama 3 frequency scaling, if any.
    pub rope_scaling: Option<Llama3Scaling>,
    /// Context length the model supports.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// How the checkpoint's weights are quantized, when they are.
    pub weight_quant: Option<Fp8Blocks>,
    /// MLA and MoE hyper-parameters of the DeepSeek architectures.
    pub deepseek: Option<Box<DeepseekConfig>>,
}

fn arch_from_name(name: &str, origin: &Path) -> Result<Arch> {
    match name {
        "llama" | "LlamaForCausalLM" => Ok(Arch::Llama),
        "qwen2" | "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
        "deepseek_v2" | "DeepseekV2ForCausalLM" => Ok(Arch::DeepseekV2),
        "deepseek_v3" | "DeepseekV3ForCausalLM" => Ok(Arch::DeepseekV3),
        other => bail!(
            "{}: unsupported architecture `{other}` (supported: LlamaForCausalLM/llama, \
             Qwen2ForCausalLM/qwen2, DeepseekV2ForCausalLM/deepseek_v2, \
             DeepseekV3ForCausalLM/deepseek_v3, deepseek2 in GGUF)",
            origin.display()
        ),
    }
}

/// The one checkpoint quantization r1serve implements is block-scaled FP8
/// ([`Fp8Blocks`]); the raw tensors of any other quantized checkpoint loaded
/// without their method's scales and packing would serve garbage, so every
/// other config is refused, by name. (`compression_config` is what older
/// compressed-tensors exports call it.)
fn weight_quantization(j: &serde_json::Value, path: &Path) -> Result<Option<Fp8Blocks>> {
    for key in ["quantization_config", "compression_config"] {
        let Some(q) = j.get(key).filter(|q| !q.is_null()) else {
            continue;
        };
        match q.get("quant_method").and_then(|m| m.as_str()) {
            Some("fp8") if key == "quantization_config" => {
                let block = q
                    .get("weight_block_size")
                    .and_then(|b| b.as_array())
                    .map(|b| b.iter().filter_map(|v| v.as_u64()).collect::<Vec<_>>());
                return match block.as_deref() {
                    Some(&[rows, cols]) if rows > 0 && cols > 0 => Ok(Some(Fp8Blocks {
                        rows: rows as usize,
                        cols: cols as usize,
                    })),
                    _ => bail!(
                        "{}: `{key}` names quantization method `fp8` without a two-element \
                         `weight_block_size`; r1serve does not implement per-tensor FP8 \
                         (it implements block-scaled FP8, as DeepSeek ships V3 and R1)",
                        path.display()
                    ),
                };
            }
            Some(method) => bail!(
                "{}: `{key}` names quantization method `{method}`, which r1serve does not \
                 implement (it loads bf16, f16 and f32 safetensors, and GGUF files)",
                path.display()
            ),
            None => bail!(
                "{}: `{key}` has no `quant_method`, so how the weights are quantized is unknown",
                path.display()
            ),
        }
    }
    Ok(None)
}

impl ModelConfig {
    /// Reads the `<arch>.*` keys of a GGUF header.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = &file.path;
        let arch_name = file
            .meta_str("general.architecture")
            .with_context(|| format!("{}: no `general.architecture` key", path.display()))?;
        let md = &file.content.metadata;
        // llama.cpp's one DeepSeek architecture covers V2, V3 and R1; V3's
        // sigmoid gate tells them apart.
        let deepseek = match arch_name {
            "deepseek2" => Some(Box::new(DeepseekConfig::from_gguf(md, path)?)),
            _ => None,
        };
        let arch = match &deepseek {
            Some(d) if d.scoring == Scoring::Sigmoid => Arch::DeepseekV3,
            Some(_) => Arch::DeepseekV2,
            None => arch_from_name(arch_name, path)?,
        };
        let get = |key: &str| {
            md.get(&format!("{arch_name}.{key}"))
                .with_context(|| format!("{}: missing `{arch_name}.{key}`", path.display()))
        };
        let get_usize = |key: &str| -> Result<usize> {
            let v = get(key)?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|e| anyhow::anyhow!("{}: `{arch_name}.{key}`: {e}", path.display()))
        };
        let hidden_size = get_usize("embedding_length")?;
        let num_heads = get_usize("attention.head_count")?;
        let num_kv_heads = get_usize("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = get_usize("rope.dimension_count")
            .unwrap_or(hidden_size.checked_div(num_heads).unwrap_or(0));
        let vocab_size = match md.get("tokenizer.ggml.tokens") {
            Some(v) => v.to_vec().map(Vec::len).unwrap_or(0),
            None => 0,
        };
        let vocab_size = get_usize("vocab_size").unwrap_or(vocab_size);
        let rms_norm_eps = get("attention.layer_norm_rms_epsilon")?
            .to_f32()
            .map_err(|e| anyhow::anyhow!("{}: rms epsilon: {e}", path.display()))?;
        let rope_theta = get("rope.freq_base")
            .ok()
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(10_000.0);
        let has_output = file.content.tensor_infos.contains_key("output.weight");
        Self {
            arch,
            hidden_size,
            intermediate_size: get_usize("feed_forward_length")?,
            num_layers: get_usize("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps,
            rope_theta,
            rope_style: match arch {
                Arch::Llama | Arch::DeepseekV2 | Arch::DeepseekV3 => RopeStyle::Interleaved,
                Arch::Qwen2 => RopeStyle::Half,
            },
            // llama.cpp stores Llama 3 scaling as the `rope_freqs.weight` tensor,
            // which the model file reads; the header carries no scaling keys.
            rope_scaling: None,
            max_position_embeddings: get_usize("context_length")?,
            tie_word_embeddings: !has_output,
            weight_quant: None,
            deepseek,
        }
        .checked(path)
    }

    /// Reads an HF `config.json`.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let j: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", path.display()))?;
        let weight_quant = weight_quantization(&j, path)?;
        let arch_name = j
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .with_context(|| format!("{}: no `architectures` entry", path.display()))?;
        let arch = arch_from_name(arch_name, path)?;
        let get_usize = |key: &str| -> Result<usize> {
            j.get(key)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .with_context(|| format!("{}: missing integer `{key}`", path.display()))
        };
        let get_f32 = |key: &str| j.get(key).and_then(|v| v.as_f64()).map(|v| v as f32);
        let hidden_size = get_usize("hidden_size")?;
        let num_heads = get_usize("num_attention_heads")?;
        let deepseek = match arch {
            Arch::DeepseekV2 | Arch::DeepseekV3 => {
                Some(Box::new(DeepseekConfig::from_hf_json(&j, arch, path)?))
            }
            Arch::Llama | Arch::Qwen2 => None,
        };
        let rope_scaling = match j.get("rope_scaling") {
            // DeepSeek's YaRN scaling is read into `deepseek`.
            _ if deepseek.is_some() => None,
            Some(s) if !s.is_null() => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                if kind != "llama3" {
                    bail!("{}: unsupported rope_scaling type `{kind}`", path.display());
                }
                let f = |k: &str| {
                    s.get(k)
                        .and_then(|v| v.as_f64())
                        .with_context(|| format!("{}: rope_scaling.{k} missing", path.display()))
                };
                Some(Llama3Scaling {
                    factor: f("factor")? as f32,
                    low_freq_factor: f("low_freq_factor")? as f32,
                    high_freq_factor: f("high_freq_factor")? as f32,
                    original_max_position_embeddings: f("original_max_position_embeddings")?
                        as usize,
                })
            }
            _ => None,
        };
        Self {
            arch,
            hidden_size,
            intermediate_size: get_usize("intermediate_size")?,
            num_layers: get_usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads: get_usize("num_key_value_heads").unwrap_or(num_heads),
            // MLA heads have no single width; the rotated part is what RoPE
            // and the checks below concern.
            head_dim: match &deepseek {
                Some(d) => d.qk_rope_head_dim,
                None => {
                    get_usize("head_dim").unwrap_or(hidden_size.checked_div(num_heads).unwrap_or(0))
                }
            },
            vocab_size: get_usize("vocab_size")?,
            rms_norm_eps: get_f32("rms_norm_eps").unwrap_or(1e-6),
            rope_theta: get_f32("rope_theta").unwrap_or(10_000.0),
            rope_style: RopeStyle::Half,
            rope_scaling,
            max_position_embeddings: get_usize("max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: j
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            weight_quant,
            deepseek,
        }
        .checked(path)
    }

    /// Refuses sizes the forward pass cannot run with (zero widths, query
    /// heads not a multiple of KV heads, an odd head width RoPE cannot pair),
    /// so a broken config is an error naming its file rather than a panic.
    fn checked(self, path: &Path) -> Result<Self> {
        let sizes = [
            ("hidden size", self.hidden_size),
            ("intermediate size", self.intermediate_size),
            ("layer count", self.num_layers),
            ("attention head count", self.num_heads),
            ("KV head count", self.num_kv_heads),
            ("head width", self.head_dim),
            ("vocabulary size", self.vocab_size),
        ];
        if let Some((what, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            bail!("{}: the {what} is 0", path.display());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            bail!(
                "{}: {} attention heads are not a multiple of {} KV heads",
                path.display(),
                self.num_heads,
                self.num_kv_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!(
                "{}: head width {} is odd; rotary embeddings pair dimensions",
                path.display(),
                self.head_dim
            );
        }
        Ok(self)
    }
}
