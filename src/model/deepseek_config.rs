//! The hyper-parameters DeepSeek-V2/V3 add to a decoder (multi-head latent
//! attention, routed experts, YaRN), read from an HF `config.json` with an
//! error naming the file and the field for anything missing or unsupported.

use super::config::Arch;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// How router logits become expert scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// Per-expert sigmoid (V3, R1).
    Sigmoid,
    /// Softmax over the experts (V2).
    Softmax,
}

/// How the experts of a token are chosen from their scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopK {
    /// The `top_k` best scores (V2-Lite).
    Greedy,
    /// Keep the `topk_group` groups with the best single score, then the
    /// `top_k` best experts in them (V2).
    GroupLimitedGreedy,
    /// Scores plus the correction bias choose: keep the `topk_group` groups
    /// with the best sum of their two best, then the `top_k` best experts in
    /// them (V3, R1: "noaux_tc").
    NoauxTc,
}

/// YaRN rotary scaling (`rope_scaling.type = "yarn"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    /// Context extension factor.
    pub factor: f64,
    /// The context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
    /// Rotations above which frequencies are kept (extrapolated).
    pub beta_fast: f64,
    /// Rotations below which frequencies are divided by `factor`.
    pub beta_slow: f64,
    /// Numerator coefficient of the cos/sin scale.
    pub mscale: f64,
    /// Denominator coefficient of the cos/sin scale, and the softmax scale's.
    pub mscale_all_dim: f64,
    /// An explicit cos/sin scale, overriding the mscale ratio.
    pub attention_factor: Option<f64>,
}

/// MLA and MoE hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct DeepseekConfig {
    /// Query LoRA rank (`q_a_proj` → `q_a_layernorm` → `q_b_proj`); `None`
    /// for a plain `q_proj` (V2-Lite).
    pub q_lora_rank: Option<usize>,
    /// Width of the compressed KV latent.
    pub kv_lora_rank: usize,
    /// Per-head query/key width without RoPE.
    pub qk_nope_head_dim: usize,
    /// Per-head query width with RoPE, and the shared RoPE key's width.
    pub qk_rope_head_dim: usize,
    /// Per-head value width.
    pub v_head_dim: usize,
    /// Routed experts per MoE layer.
    pub n_routed_experts: usize,
    /// Shared experts per MoE layer (run as one MLP of this many times
    /// `moe_intermediate_size`).
    pub n_shared_experts: usize,
    /// Experts each token is routed to.
    pub num_experts_per_tok: usize,
    /// Inner width of one expert.
    pub moe_intermediate_size: usize,
    /// Leading layers with a dense MLP instead of experts.
    pub first_k_dense_replace: usize,
    /// Expert groups.
    pub n_group: usize,
    /// Groups kept per token.
    pub topk_group: usize,
    /// Score function.
    pub scoring: Scoring,
    /// Selection method.
    pub topk: TopK,
    /// Whether the chosen experts' weights are normalised to sum to 1.
    pub norm_topk_prob: bool,
    /// Factor on the routed experts' weights.
    pub routed_scaling_factor: f32,
    /// Multi-token-prediction layers stored after the decoder layers.
    pub num_nextn_predict_layers: usize,
    /// YaRN scaling, if any.
    pub yarn: Option<Yarn>,
    /// Whether RoPE pairs dimensions `(2i, 2i + 1)` (transformers'
    /// `rope_interleave`, the layout DeepSeek's weights are trained in) rather
    /// than `(i, i + d/2)`.
    pub rope_interleave: bool,
}

/// YaRN's magnitude correction `0.1 · mscale · ln(scale) + 1` (1 when the
/// context is not extended).
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl DeepseekConfig {
    /// Reads the DeepSeek fields of `j` (the `config.json` at `path`).
    pub fn from_hf_json(j: &Value, arch: Arch, path: &Path) -> Result<Self> {
        let file = path.display();
        let int = |key: &str| -> Result<usize> {
            j.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .with_context(|| format!("{file}: missing integer `{key}`"))
        };
        let int_or = |key: &str, default: usize| -> Result<usize> {
            match j.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_u64()
                    .map(|v| v as usize)
                    .with_context(|| format!("{file}: `{key}` is not an integer")),
            }
        };
        let v3 = arch == Arch::DeepseekV3;
        let scoring = match j.get("scoring_func").and_then(Value::as_str) {
            Some("sigmoid") => Scoring::Sigmoid,
            Some("softmax") => Scoring::Softmax,
            None if v3 => Scoring::Sigmoid,
            None => Scoring::Softmax,
            Some(other) => bail!("{file}: unsupported `scoring_func` `{other}`"),
        };
        let topk = match j.get("topk_method").and_then(Value::as_str) {
            Some("greedy") => TopK::Greedy,
            Some("group_limited_greedy") => TopK::GroupLimitedGreedy,
            Some("noaux_tc") => TopK::NoauxTc,
            None if v3 => TopK::NoauxTc,
            None => TopK::Greedy,
            Some(other) => bail!("{file}: unsupported `topk_method` `{other}`"),
        };
        let moe_layer_freq = int_or("moe_layer_freq", 1)?;
        if moe_layer_freq != 1 {
            bail!("{file}: `moe_layer_freq` {moe_layer_freq} is not supported (only 1)");
        }
        let yarn = match j.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if kind != "yarn" {
                    bail!("{file}: unsupported rope_scaling type `{kind}` (DeepSeek uses yarn)");
                }
                let num = |k: &str| s.get(k).and_then(Value::as_f64);
                Some(Yarn {
                    factor: num("factor")
                        .with_context(|| format!("{file}: missing `rope_scaling.factor`"))?,
                    original_max_position_embeddings: match num("original_max_position_embeddings")
                    {
                        Some(v) => v as usize,
                        None => int("max_position_embeddings")?,
                    },
                    beta_fast: num("beta_fast").unwrap_or(32.0),
                    beta_slow: num("beta_slow").unwrap_or(1.0),
                    mscale: num("mscale").unwrap_or(0.0),
                    mscale_all_dim: num("mscale_all_dim").unwrap_or(0.0),
                    attention_factor: num("attention_factor"),
                })
            }
        };
        let c = Self {
            q_lora_rank: match j.get("q_lora_rank") {
                None | Some(Value::Null) => None,
                Some(_) => Some(int("q_lora_rank")?),
            },
            kv_lora_rank: int("kv_lora_rank")?,
            qk_nope_head_dim: int("qk_nope_head_dim")?,
            qk_rope_head_dim: int("qk_rope_head_dim")?,
            v_head_dim: int("v_head_dim")?,
            n_routed_experts: int("n_routed_experts")?,
            n_shared_experts: int_or("n_shared_experts", 0)?,
            num_experts_per_tok: int("num_experts_per_tok")?,
            moe_intermediate_size: int("moe_intermediate_size")?,
            first_k_dense_replace: int_or("first_k_dense_replace", 0)?,
            n_group: int_or("n_group", 1)?,
            topk_group: int_or("topk_group", 1)?,
            scoring,
            topk,
            norm_topk_prob: j
                .get("norm_topk_prob")
                .and_then(Value::as_bool)
                .unwrap_or(v3),
            routed_scaling_factor: j
                .get("routed_scaling_factor")
                .and_then(Value::as_f64)
                .unwrap_or(1.0) as f32,
            num_nextn_predict_layers: int_or("num_nextn_predict_layers", 0)?,
            yarn,
            rope_interleave: j
                .get("rope_interleave")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        };
        c.checked(path)
    }

    /// Reads the `deepseek2.*` keys llama.cpp's converter writes (the GGUF
    /// file at `path`). A GGUF stores YaRN's `mscale_all_dim` only (as
    /// `rope.scaling.yarn_log_multiplier`, 0.1 times it), so `mscale` is taken
    /// equal to it, as in every published DeepSeek-V2/V3/R1 config; llama.cpp
    /// assumes the same.
    pub fn from_gguf(md: &HashMap<String, GgufValue>, path: &Path) -> Result<Self> {
        let file = path.display();
        let key = |k: &str| format!("deepseek2.{k}");
        let int_opt = |k: &str| -> Result<Option<usize>> {
            md.get(&key(k))
                .map(|v| {
                    v.to_u32()
                        .map(|x| x as usize)
                        .or_else(|_| v.to_u64().map(|x| x as usize))
                        .or_else(|_| v.to_i32().map(|x| x.max(0) as usize))
                        .map_err(|e| anyhow::anyhow!("{file}: `{}`: {e}", key(k)))
                })
                .transpose()
        };
        let int = |k: &str| -> Result<usize> {
            int_opt(k)?.with_context(|| format!("{file}: missing `{}`", key(k)))
        };
        let float_opt = |k: &str| -> Result<Option<f64>> {
            md.get(&key(k))
                .map(|v| {
                    v.to_f32()
                        .map(f64::from)
                        .or_else(|_| v.to_f64())
                        .map_err(|e| anyhow::anyhow!("{file}: `{}`: {e}", key(k)))
                })
                .transpose()
        };
        let rope = int("rope.dimension_count")?;
        // Since llama.cpp stores MLA as MQA over the latent, `key_length` is
        // the latent row and the per-head widths are the `_mla` keys; older
        // conversions have only the per-head widths, as `key_length`.
        let (qk_head, v_head_dim) = match int_opt("attention.key_length_mla")? {
            Some(k) => (k, int("attention.value_length_mla")?),
            None => (int("attention.key_length")?, int("attention.value_length")?),
        };
        let qk_nope_head_dim = qk_head.checked_sub(rope).with_context(|| {
            format!("{file}: key length {qk_head} is shorter than the RoPE width {rope}")
        })?;
        // llama.cpp's `llama_expert_gating_func_type`: 1 softmax, 2 sigmoid.
        let scoring = match int_opt("expert_gating_func")? {
            None | Some(1) => Scoring::Softmax,
            Some(2) => Scoring::Sigmoid,
            Some(other) => bail!(
                "{file}: unsupported `{}` {other}",
                key("expert_gating_func")
            ),
        };
        let n_group = int_opt("expert_group_count")?.unwrap_or(1);
        let topk = match (scoring, n_group) {
            (Scoring::Sigmoid, _) => TopK::NoauxTc,
            (Scoring::Softmax, 1) => TopK::Greedy,
            (Scoring::Softmax, _) => TopK::GroupLimitedGreedy,
        };
        let yarn = match md.get(&key("rope.scaling.type")) {
            None => None,
            Some(v) => {
                let kind = v.to_string().map(String::as_str).unwrap_or("");
                match kind {
                    "none" => None,
                    "yarn" => {
                        let mscale =
                            float_opt("rope.scaling.yarn_log_multiplier")?.unwrap_or(0.0) / 0.1;
                        Some(Yarn {
                            factor: float_opt("rope.scaling.factor")?.with_context(|| {
                                format!("{file}: missing `{}`", key("rope.scaling.factor"))
                            })?,
                            original_max_position_embeddings: int(
                                "rope.scaling.original_context_length",
                            )?,
                            beta_fast: float_opt("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                            beta_slow: float_opt("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                            mscale,
                            mscale_all_dim: mscale,
                            attention_factor: None,
                        })
                    }
                    other => bail!(
                        "{file}: unsupported `{}` `{other}` (DeepSeek uses yarn)",
                        key("rope.scaling.type")
                    ),
                }
            }
        };
        let c = Self {
            q_lora_rank: int_opt("attention.q_lora_rank")?,
            kv_lora_rank: int("attention.kv_lora_rank")?,
            qk_nope_head_dim,
            qk_rope_head_dim: rope,
            v_head_dim,
            n_routed_experts: int("expert_count")?,
            n_shared_experts: int_opt("expert_shared_count")?.unwrap_or(0),
            num_experts_per_tok: int("expert_used_count")?,
            moe_intermediate_size: int("expert_feed_forward_length")?,
            first_k_dense_replace: int_opt("leading_dense_block_count")?.unwrap_or(0),
            n_group,
            topk_group: int_opt("expert_group_used_count")?.unwrap_or(1),
            scoring,
            topk,
            norm_topk_prob: md
                .get(&key("expert_weights_norm"))
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(false),
            routed_scaling_factor: float_opt("expert_weights_scale")?.unwrap_or(1.0) as f32,
            num_nextn_predict_layers: int_opt("nextn_predict_layers")?.unwrap_or(0),
            yarn,
            // The converter keeps DeepSeek's q/k layout, whose RoPE pairs
            // adjacent dimensions (llama.cpp's "norm" rope for deepseek2).
            rope_interleave: true,
        };
        c.checked(path)
    }

    fn checked(self, path: &Path) -> Result<Self> {
        let file = path.display();
        let sizes = [
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("v_head_dim", self.v_head_dim),
            ("n_routed_experts", self.n_routed_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("moe_intermediate_size", self.moe_intermediate_size),
            ("n_group", self.n_group),
            ("topk_group", self.topk_group),
        ];
        if let Some((what, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            bail!("{file}: `{what}` is 0");
        }
        if self.q_lora_rank == Some(0) {
            bail!("{file}: `q_lora_rank` is 0");
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            bail!(
                "{file}: `qk_rope_head_dim` {} is odd; rotary embeddings pair dimensions",
                self.qk_rope_head_dim
            );
        }
        if !self.n_routed_experts.is_multiple_of(self.n_group) || self.topk_group > self.n_group {
            bail!(
                "{file}: {} experts cannot form {} groups with {} kept",
                self.n_routed_experts,
                self.n_group,
                self.topk_group
            );
        }
        let candidates = self.n_routed_experts / self.n_group * self.topk_group;
        if self.num_experts_per_tok > candidates {
            bail!(
                "{file}: `num_experts_per_tok` {} exceeds the {candidates} experts of the kept groups",
                self.num_experts_per_tok
            );
        }
        if self.topk == TopK::NoauxTc && self.n_routed_experts / self.n_group < 2 {
            bail!("{file}: noaux_tc routing scores groups by their two best experts, but groups have one");
        }
        Ok(self)
    }

    /// Per-head query/key width (`qk_nope_head_dim + qk_rope_head_dim`).
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// The attention softmax scale: `1/sqrt(qk_head_dim)`, times YaRN's
    /// `mscale(factor, mscale_all_dim)²` when the context is extended.
    pub fn softmax_scale(&self) -> f32 {
        let base = (self.qk_head_dim() as f64).powf(-0.5);
        match self.yarn {
            Some(y) if y.mscale_all_dim != 0.0 => {
                let m = yarn_mscale(y.factor, y.mscale_all_dim);
                (base * m * m) as f32
            }
            _ => base as f32,
        }
    }

    /// RoPE inverse frequencies of the `qk_rope_head_dim` rotated dimensions
    /// and the factor on cos/sin, as transformers' YaRN computes them
    /// (frequencies ramp between extrapolated and interpolated over the
    /// correction range, bounds truncated to whole dimensions).
    pub fn rope(&self, theta: f64) -> (Vec<f32>, f32) {
        let dim = self.qk_rope_head_dim;
        let base_freq: Vec<f64> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f64 / dim as f64))
            .collect();
        let Some(y) = self.yarn else {
            return (base_freq.iter().map(|&f| f as f32).collect(), 1.0);
        };
        let attention_factor = y.attention_factor.unwrap_or_else(|| {
            if y.mscale != 0.0 && y.mscale_all_dim != 0.0 {
                yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim)
            } else {
                yarn_mscale(y.factor, 1.0)
            }
        });
        let orig = y.original_max_position_embeddings as f64;
        let correction_dim = |rotations: f64| {
            dim as f64 * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
        };
        let low = correction_dim(y.beta_fast).floor().max(0.0);
        let high = correction_dim(y.beta_slow).ceil().min(dim as f64 - 1.0);
        let high = if low == high { high + 0.001 } else { high };
        let inv_freq = base_freq
            .iter()
            .enumerate()
            .map(|(i, &extrapolated)| {
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                let keep = 1.0 - ramp;
                let interpolated = extrapolated / y.factor;
                (interpolated * (1.0 - keep) + extrapolated * keep) as f32
            })
            .collect();
        (inv_freq, attention_factor as f32)
    }
}
