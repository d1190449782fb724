//! DeepSeek-V3 (R1, R1-Zero) and DeepSeek-V2 from Hugging Face safetensors:
//! multi-head latent attention (MLA) over a paged latent cache, and
//! mixture-of-experts layers after the first `first_k_dense_replace` dense
//! ones. Written after transformers' `modeling_deepseek_v3.py` /
//! `modeling_deepseek_v2.py`, the reference the tests compare against.
//!
//! MLA caches, per token and layer, one row: the normalised KV latent
//! (`kv_lora_rank`) followed by the roped shared key (`qk_rope_head_dim`).
//! Decode uses the absorbed form: the non-rotated query of each head is
//! multiplied by that head's `W_UK` into latent space, attention runs over
//! the cached rows directly ([`latent_attention`]), and `W_UV` maps each
//! head's latent output to its value. A prefill chunk instead materialises
//! per-head keys and values from the latent rows of its context (cheaper
//! when many queries share them); both read the same cached rows.
//!
//! MoE routing is computed per token on the host; execution then groups the
//! step's tokens by expert, so each chosen expert runs once over all of its
//! tokens. This forward pass runs on the CPU; the device seam's op set does
//! not yet include its column splits, per-head products and expert gathers.

use super::config::{Arch, ModelConfig, RopeStyle};
use super::deepseek_config::{DeepseekConfig, TopK};
use super::interface::{BatchLayout, ForwardBatch, LogitsRow, Model, ModelInfo};
use super::moe::{Mlp, Moe};
use super::weights::{RawTensor, WeightSource};
use crate::kernels::attention::{write_kv, AttnSeq};
use crate::kernels::bytes::{HalfKind, WeightBytes};
use crate::kernels::cpu::cpu_step_tokens;
use crate::kernels::latent_attention::{latent_attention, read_rows};
use crate::kernels::linear::{Embedding, Linear};
use crate::kernels::logits::reduce_rows;
use crate::kernels::ops::{self, RopeTables};
use crate::kv_cache::spec::{KvSpec, LayerKvSpec};
use crate::kv_cache::storage::{KvCache, KvDtype, KvGeometry, LayerKv};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Which attention form a sequence's step takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionPath {
    /// Absorbed for single-token steps, materialised for longer chunks.
    #[default]
    Auto,
    /// Always the absorbed form over latent rows.
    Absorbed,
    /// Always per-head keys and values materialised from the latent rows.
    Materialized,
}

enum QProj {
    /// `q_a_proj` → `q_a_layernorm` → `q_b_proj` (V3, V2).
    Lora {
        a: Linear,
        norm: Vec<f32>,
        b: Linear,
    },
    /// `q_proj` (V2-Lite).
    Plain(Linear),
}

struct Mla {
    q: QProj,
    /// hidden → latent + shared RoPE key.
    kv_a: Linear,
    kv_norm: Vec<f32>,
    /// latent → per head non-rotated key and value (materialised path).
    kv_b: Linear,
    /// Per head `W_UKᵀ`: non-rotated query → latent (absorbed path).
    uk_t: Vec<Linear>,
    /// Per head `W_UV`: latent → value (absorbed path).
    uv: Vec<Linear>,
    o: Linear,
}

enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

struct Layer {
    attn_norm: Vec<f32>,
    attn: Mla,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
}

/// A DeepSeek-V2/V3 model on the CPU.
pub struct DeepseekV3 {
    cfg: ModelConfig,
    ds: DeepseekConfig,
    info: ModelInfo,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    /// YaRN's factor on cos and sin.
    rope_factor: f32,
    rope_style: RopeStyle,
    softmax_scale: f32,
    cache: Option<KvCache>,
    path: AttentionPath,
}

impl DeepseekV3 {
    /// Forces one attention form (tests compare the two on the same
    /// positions).
    pub fn set_attention_path(&mut self, path: AttentionPath) {
        self.path = path;
    }

    /// The DeepSeek hyper-parameters.
    pub fn deepseek_config(&self) -> &DeepseekConfig {
        &self.ds
    }
}

/// Column block `start..start + width` of each `row_len`-wide row.
fn columns(x: &[f32], row_len: usize, start: usize, width: usize) -> Vec<f32> {
    x.chunks_exact(row_len)
        .flat_map(|r| &r[start..start + width])
        .copied()
        .collect()
}

impl Mla {
    /// Queries with their rotated parts roped: `rows × heads × qk_head_dim`.
    fn queries(&self, h: &[f32], rows: usize, eps: f32) -> Result<Vec<f32>> {
        match &self.q {
            QProj::Lora { a, norm, b } => {
                let qa = ops::rms_norm(&a.forward(h, rows)?, norm, eps);
                b.forward(&qa, rows)
            }
            QProj::Plain(q) => q.forward(h, rows),
        }
    }
}

impl DeepseekV3 {
    /// One layer's attention over the step's tokens `h`; writes their latent
    /// rows to the cache first.
    fn attention(
        &self,
        layer: usize,
        h: &[f32],
        seqs: &[AttnSeq],
        tables: &RopeTables,
        cache: &mut KvCache,
    ) -> Result<Vec<f32>> {
        let (ds, eps) = (&self.ds, self.cfg.rms_norm_eps);
        let attn = &self.layers[layer].attn;
        let rows = h.len() / self.cfg.hidden_size;
        let (heads, nope, rope, lora) = (
            self.cfg.num_heads,
            ds.qk_nope_head_dim,
            ds.qk_rope_head_dim,
            ds.kv_lora_rank,
        );
        let (qk, vd, width) = (ds.qk_head_dim(), ds.v_head_dim, lora + rope);
        let mut q = attn.queries(h, rows, eps)?;
        ops::rope_at(&mut q, qk, nope, self.rope_style, tables);
        let mut latent = attn.kv_a.forward(h, rows)?;
        for row in latent.chunks_exact_mut(width) {
            let normed = ops::rms_norm(&row[..lora], &attn.kv_norm, eps);
            row[..lora].copy_from_slice(&normed);
        }
        ops::rope_at(&mut latent, width, lora, self.rope_style, tables);

        let (Some(kv), Some(geom)) = (cache.layers.get_mut(layer), cache.geometries.get(layer))
        else {
            bail!("the cache has no layer {layer}");
        };
        for s in seqs {
            let new = &latent[s.q_start * width..(s.q_start + s.q_len) * width];
            write_kv(kv, geom, s.block_table, s.ctx_len - s.q_len, new, &[])?;
        }
        let kv = &cache.layers[layer];
        let mut out = vec![0f32; rows * heads * vd];
        // The absorbed sequences run together, their query rows packed in
        // order: each per-head `W_UK`/`W_UV` is read once for all of them,
        // and the latent attention spreads their rows over the threads.
        let absorbed = |s: &AttnSeq| match self.path {
            AttentionPath::Auto => s.q_len == 1,
            AttentionPath::Absorbed => true,
            AttentionPath::Materialized => false,
        };
        let mut packed: Vec<AttnSeq> = Vec::new();
        let mut q_packed = Vec::new();
        for s in seqs {
            let q_seq = &q[s.q_start * heads * qk..(s.q_start + s.q_len) * heads * qk];
            if absorbed(s) {
                packed.push(AttnSeq {
                    q_start: q_packed.len() / (heads * qk),
                    ..*s
                });
                q_packed.extend_from_slice(q_seq);
            } else {
                let o_seq = &mut out[s.q_start * heads * vd..(s.q_start + s.q_len) * heads * vd];
                let ctx = read_rows(kv, geom, s.block_table, s.ctx_len)?;
                let local = AttnSeq { q_start: 0, ..*s };
                self.materialized(attn, q_seq, o_seq, &ctx, &local)?;
            }
        }
        if !packed.is_empty() {
            let mut o_packed = vec![0f32; q_packed.len() / qk * vd];
            self.absorbed(attn, &q_packed, &mut o_packed, kv, geom, &packed)?;
            for (s, p) in seqs.iter().filter(|s| absorbed(s)).zip(&packed) {
                let n = s.q_len * heads * vd;
                out[s.q_start * heads * vd..][..n]
                    .copy_from_slice(&o_packed[p.q_start * heads * vd..][..n]);
            }
        }
        attn.o.forward(&out, rows)
    }

    /// `W_UK` folded into the queries, attention over the latent rows, then
    /// `W_UV`, for the sequences `seqs` whose query rows `q` holds.
    fn absorbed(
        &self,
        attn: &Mla,
        q: &[f32],
        out: &mut [f32],
        kv: &LayerKv,
        geom: &KvGeometry,
        seqs: &[AttnSeq],
    ) -> Result<()> {
        let ds = &self.ds;
        let (heads, nope, rope, lora, vd) = (
            self.cfg.num_heads,
            ds.qk_nope_head_dim,
            ds.qk_rope_head_dim,
            ds.kv_lora_rank,
            ds.v_head_dim,
        );
        let (qk, width) = (ds.qk_head_dim(), lora + rope);
        let n = q.len() / (heads * qk);
        let mut q_abs = vec![0f32; n * heads * width];
        for head in 0..heads {
            let q_nope = columns(q, heads * qk, head * qk, nope);
            let q_lat = attn.uk_t[head].forward(&q_nope, n)?;
            for t in 0..n {
                let dst = &mut q_abs[(t * heads + head) * width..][..width];
                dst[..lora].copy_from_slice(&q_lat[t * lora..][..lora]);
                dst[lora..].copy_from_slice(&q[(t * heads + head) * qk + nope..][..rope]);
            }
        }
        let mut o_lat = vec![0f32; n * heads * lora];
        let shape = (heads, lora, self.softmax_scale);
        latent_attention(&q_abs, &mut o_lat, kv, geom, seqs, shape)?;
        for head in 0..heads {
            let v = attn.uv[head].forward(&columns(&o_lat, heads * lora, head * lora, lora), n)?;
            for t in 0..n {
                out[(t * heads + head) * vd..][..vd].copy_from_slice(&v[t * vd..][..vd]);
            }
        }
        Ok(())
    }

    /// Per-head keys and values of the whole context from its latent rows
    /// `ctx`, then causal attention of the sequence's queries.
    fn materialized(
        &self,
        attn: &Mla,
        q: &[f32],
        out: &mut [f32],
        ctx: &[f32],
        s: &AttnSeq,
    ) -> Result<()> {
        let ds = &self.ds;
        let (heads, nope, rope, lora, vd) = (
            self.cfg.num_heads,
            ds.qk_nope_head_dim,
            ds.qk_rope_head_dim,
            ds.kv_lora_rank,
            ds.v_head_dim,
        );
        let (qk, width, len) = (ds.qk_head_dim(), lora + rope, s.ctx_len);
        let kvb = attn.kv_b.forward(&columns(ctx, width, 0, lora), len)?;
        let per_head = nope + vd;
        let scale = self.softmax_scale;
        out.par_chunks_exact_mut(vd).enumerate().for_each(|(i, o)| {
            let (t, head) = (i / heads, i % heads);
            let pos = len - s.q_len + t;
            let qh = &q[(t * heads + head) * qk..][..qk];
            let scores: Vec<f32> = (0..=pos)
                .map(|p| {
                    let k_nope = &kvb[p * heads * per_head + head * per_head..][..nope];
                    let k_rope = &ctx[p * width + lora..][..rope];
                    let dot: f32 = qh[..nope]
                        .iter()
                        .zip(k_nope)
                        .map(|(a, b)| a * b)
                        .sum::<f32>()
                        + qh[nope..]
                            .iter()
                            .zip(k_rope)
                            .map(|(a, b)| a * b)
                            .sum::<f32>();
                    dot * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0f32;
            o.fill(0.0);
            for (p, sc) in scores.iter().enumerate() {
                let w = (sc - max).exp();
                total += w;
                let v = &kvb[p * heads * per_head + head * per_head + nope..][..vd];
                for (a, x) in o.iter_mut().zip(v) {
                    *a += w * x;
                }
            }
            for a in o.iter_mut() {
                *a /= total;
            }
        });
        Ok(())
    }
}

impl Model for DeepseekV3 {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn allocate_cache(
        &mut self,
        block_size: usize,
        num_blocks: usize,
        dtype: KvDtype,
    ) -> Result<()> {
        self.cache = None;
        let mut cache = KvCache::new(&self.info.kv, block_size, num_blocks, dtype)?;
        cache.commit();
        self.cache = Some(cache);
        Ok(())
    }

    fn forward(&mut self, batch: &ForwardBatch) -> Result<Vec<LogitsRow>> {
        let mut cache = self
            .cache
            .take()
            .context("forward before the KV cache was allocated")?;
        let result = self.forward_with(batch, &mut cache);
        self.cache = Some(cache);
        result
    }
}

impl DeepseekV3 {
    fn forward_with(&self, batch: &ForwardBatch, cache: &mut KvCache) -> Result<Vec<LogitsRow>> {
        let t = batch.tokens.len();
        let BatchLayout {
            positions,
            seqs,
            logit_rows: last_rows,
            logit_needs,
        } = batch.layout()?;
        let mut tables = ops::rope_tables(&self.inv_freq, &positions);
        for v in tables.cos.iter_mut().chain(tables.sin.iter_mut()) {
            *v *= self.rope_factor;
        }
        let (hidden, eps) = (self.cfg.hidden_size, self.cfg.rms_norm_eps);
        let mut x = self.embed.forward(&batch.tokens)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = ops::rms_norm(&x, &layer.attn_norm, eps);
            ops::add(&mut x, &self.attention(i, &h, &seqs, &tables, cache)?);
            let h = ops::rms_norm(&x, &layer.ffn_norm, eps);
            let f = match &layer.ffn {
                Ffn::Dense(mlp) => mlp.forward(&h, t)?,
                Ffn::Moe(moe) => moe.forward(&self.ds, &h, t)?,
            };
            ops::add(&mut x, &f);
        }
        if last_rows.is_empty() {
            return Ok(Vec::new());
        }
        let last: Vec<f32> = last_rows
            .iter()
            .flat_map(|&r| &x[r * hidden..(r + 1) * hidden])
            .copied()
            .collect();
        let logits = self
            .lm_head
            .forward(&ops::rms_norm(&last, &self.norm, eps), last_rows.len())?;
        Ok(reduce_rows(logits, &logit_needs))
    }
}

/// A matrix cut from `kv_b_proj` as a linear layer's weight: bf16 when
/// `kv_b_proj` is (every value then fits exactly, and bf16 halves the
/// memory and traffic of R1's 61 × 2 × 128 per-head matrices), else f32.
fn per_head(values: Vec<f32>, out: usize, inp: usize, bf16: bool) -> Result<Linear> {
    if bf16 {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        return Linear::new(
            RawTensor::Half {
                kind: HalfKind::Bf16,
                dims: vec![out, inp],
                bytes: WeightBytes::Owned(Arc::new(bytes)),
            },
            None,
        );
    }
    let t = Tensor::from_vec(values, (out, inp), &Device::Cpu)?;
    Linear::new(RawTensor::Dense(t), None)
}

/// The MLA up-projection of one layer in its two uses: the whole `kv_b`
/// (latent → per-head non-rotated key and value) for the materialised path,
/// and per head `W_UKᵀ` and `W_UV` for the absorbed one.
struct KvB {
    kv_b: Linear,
    uk_t: Vec<Linear>,
    uv: Vec<Linear>,
}

/// `kv_b_proj` as HF and older GGUF conversions store it,
/// `heads × (nope + v) × lora`.
fn kv_b_whole(raw: RawTensor, heads: usize, nope: usize, vd: usize, lora: usize) -> Result<KvB> {
    let values = raw.to_f32_vec()?;
    let bf16 = matches!(
        raw,
        RawTensor::Half {
            kind: HalfKind::Bf16,
            ..
        }
    );
    let (mut uk_t, mut uv) = (Vec::with_capacity(heads), Vec::with_capacity(heads));
    for h in 0..heads {
        let rows = &values[h * (nope + vd) * lora..(h + 1) * (nope + vd) * lora];
        let mut t = vec![0f32; lora * nope];
        for (r, row) in rows[..nope * lora].chunks_exact(lora).enumerate() {
            for (col, &v) in row.iter().enumerate() {
                t[col * nope + r] = v;
            }
        }
        uk_t.push(per_head(t, lora, nope, bf16)?);
        uv.push(per_head(rows[nope * lora..].to_vec(), vd, lora, bf16)?);
    }
    Ok(KvB {
        kv_b: Linear::new(raw, None)?,
        uk_t,
        uv,
    })
}

/// llama.cpp's split form: `attn_k_b` (`heads × lora × nope`, each head's
/// `W_UKᵀ`) and `attn_v_b` (`heads × v × lora`); the whole `kv_b` is
/// reassembled from them for the materialised path. Held in f32 (exact for
/// every GGUF type).
fn kv_b_split(k_b: RawTensor, v_b: RawTensor, heads: usize, vd: usize) -> Result<KvB> {
    let (k, v) = (k_b.to_f32_vec()?, v_b.to_f32_vec()?);
    let dims = k_b.dims();
    let (lora, nope) = (dims[1], dims[2]);
    let mut whole = Vec::with_capacity(heads * (nope + vd) * lora);
    let (mut uk_t, mut uv) = (Vec::with_capacity(heads), Vec::with_capacity(heads));
    for h in 0..heads {
        let kh = &k[h * lora * nope..(h + 1) * lora * nope];
        let vh = &v[h * vd * lora..(h + 1) * vd * lora];
        for r in 0..nope {
            whole.extend(kh.iter().skip(r).step_by(nope));
        }
        whole.extend_from_slice(vh);
        uk_t.push(per_head(kh.to_vec(), lora, nope, false)?);
        uv.push(per_head(vh.to_vec(), vd, lora, false)?);
    }
    Ok(KvB {
        kv_b: per_head(whole, heads * (nope + vd), lora, false)?,
        uk_t,
        uv,
    })
}

/// Loads a DeepSeek-V2/V3 model from HF safetensors or from a GGUF
/// `deepseek2` file. Tensors are named as GGUF names them; the safetensors
/// source translates ([`super::weights::hf_name`]). The two differ only in
/// the experts (one tensor per expert and projection in HF, one 3-D tensor
/// per projection in GGUF) and in how `kv_b_proj` may be split.
pub fn load(weights: &WeightSource, config: ModelConfig) -> Result<DeepseekV3> {
    let ds = *config
        .deepseek
        .clone()
        .context("a DeepSeek model needs its MLA/MoE configuration")?;
    let gguf = matches!(weights, WeightSource::Gguf(_));
    let c = &config;
    let (hidden, heads) = (c.hidden_size, c.num_heads);
    let (nope, rope, lora, vd) = (
        ds.qk_nope_head_dim,
        ds.qk_rope_head_dim,
        ds.kv_lora_rank,
        ds.v_head_dim,
    );
    let qk = ds.qk_head_dim();
    let linear = |name: &str, out: usize, inp: usize| -> Result<Linear> {
        Linear::new(weights.get(&format!("{name}.weight"), &[out, inp])?, None)
    };
    let vector =
        |name: &str, n: usize| -> Result<Vec<f32>> { weights.get(name, &[n])?.to_f32_vec() };
    let mlp = |p: &str, suffix: &str, inner: usize| -> Result<Mlp> {
        Ok(Mlp::new(
            linear(&format!("{p}.ffn_gate{suffix}"), inner, hidden)?,
            linear(&format!("{p}.ffn_up{suffix}"), inner, hidden)?,
            linear(&format!("{p}.ffn_down{suffix}"), hidden, inner)?,
        ))
    };
    let (n_exp, inner) = (ds.n_routed_experts, ds.moe_intermediate_size);
    let experts = |i: usize| -> Result<Vec<Mlp>> {
        if !gguf {
            let hf = |e: usize, proj: &str, out: usize, inp: usize| {
                linear(
                    &format!("model.layers.{i}.mlp.experts.{e}.{proj}"),
                    out,
                    inp,
                )
            };
            return (0..n_exp)
                .map(|e| {
                    Ok(Mlp::new(
                        hf(e, "gate_proj", inner, hidden)?,
                        hf(e, "up_proj", inner, hidden)?,
                        hf(e, "down_proj", hidden, inner)?,
                    ))
                })
                .collect();
        }
        let stacked = |part: &str, out: usize, inp: usize| -> Result<Vec<Linear>> {
            weights
                .get(&format!("blk.{i}.{part}.weight"), &[n_exp, out, inp])?
                .split_outer()?
                .into_iter()
                .map(|w| Linear::new(w, None))
                .collect()
        };
        let gate = stacked("ffn_gate_exps", inner, hidden)?;
        let up = stacked("ffn_up_exps", inner, hidden)?;
        let down = stacked("ffn_down_exps", hidden, inner)?;
        Ok(gate
            .into_iter()
            .zip(up)
            .zip(down)
            .map(|((gate, up), down)| Mlp::new(gate, up, down))
            .collect())
    };
    if ds.num_nextn_predict_layers > 0 {
        tracing::info!(
            "skipping {} multi-token-prediction layer(s) (layer {} on): r1serve decodes \
             one token per step",
            ds.num_nextn_predict_layers,
            c.num_layers
        );
    }
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("blk.{i}");
        let q = match ds.q_lora_rank {
            Some(r) => QProj::Lora {
                a: linear(&format!("{p}.attn_q_a"), r, hidden)?,
                norm: vector(&format!("{p}.attn_q_a_norm.weight"), r)?,
                b: linear(&format!("{p}.attn_q_b"), heads * qk, r)?,
            },
            None => QProj::Plain(linear(&format!("{p}.attn_q"), heads * qk, hidden)?),
        };
        let whole = format!("{p}.attn_kv_b.weight");
        let kvb = if !gguf || weights.contains(&whole) {
            let raw = weights.get(&whole, &[heads * (nope + vd), lora])?;
            kv_b_whole(raw, heads, nope, vd, lora)?
        } else {
            let k_b = weights.get(&format!("{p}.attn_k_b.weight"), &[heads, lora, nope])?;
            let v_b = weights.get(&format!("{p}.attn_v_b.weight"), &[heads, vd, lora])?;
            kv_b_split(k_b, v_b, heads, vd)?
        };
        let attn = Mla {
            q,
            kv_a: linear(&format!("{p}.attn_kv_a_mqa"), lora + rope, hidden)?,
            kv_norm: vector(&format!("{p}.attn_kv_a_norm.weight"), lora)?,
            kv_b: kvb.kv_b,
            uk_t: kvb.uk_t,
            uv: kvb.uv,
            o: linear(&format!("{p}.attn_output"), hidden, heads * vd)?,
        };
        let ffn = if i < ds.first_k_dense_replace {
            Ffn::Dense(mlp(&p, "", c.intermediate_size)?)
        } else {
            let router = weights
                .get(&format!("{p}.ffn_gate_inp.weight"), &[n_exp, hidden])?
                .to_f32_vec()?;
            let bias = match ds.topk {
                TopK::NoauxTc => Some(vector(&format!("{p}.exp_probs_b.bias"), n_exp)?),
                TopK::Greedy | TopK::GroupLimitedGreedy => None,
            };
            let shared = match ds.n_shared_experts {
                0 => None,
                n => Some(mlp(&p, "_shexp", n * inner)?),
            };
            Ffn::Moe(Moe::new(router, bias, experts(i)?, shared)?)
        };
        layers.push(Layer {
            attn_norm: vector(&format!("{p}.attn_norm.weight"), hidden)?,
            attn,
            ffn_norm: vector(&format!("{p}.ffn_norm.weight"), hidden)?,
            ffn,
        });
    }
    let embed = Embedding::new(&weights.get("token_embd.weight", &[c.vocab_size, hidden])?)?;
    let lm_head = if c.tie_word_embeddings {
        Linear::new(
            weights.get("token_embd.weight", &[c.vocab_size, hidden])?,
            None,
        )?
    } else {
        linear("output", c.vocab_size, hidden)?
    };
    let (inv_freq, rope_factor) = ds.rope(c.rope_theta as f64);
    let info = ModelInfo {
        arch: match c.arch {
            Arch::DeepseekV2 => "deepseek_v2".into(),
            _ => "deepseek_v3".into(),
        },
        device: "cpu".into(),
        vocab_size: c.vocab_size,
        max_position_embeddings: c.max_position_embeddings,
        kv: KvSpec::uniform(
            LayerKvSpec::Latent {
                width: lora + rope,
                v_dim: lora,
            },
            c.num_layers,
        ),
        kv_memory: None,
        step_tokens: cpu_step_tokens(),
    };
    Ok(DeepseekV3 {
        norm: vector("output_norm.weight", hidden)?,
        embed,
        layers,
        lm_head,
        inv_freq,
        rope_factor,
        rope_style: if ds.rope_interleave {
            RopeStyle::Interleaved
        } else {
            RopeStyle::Half
        },
        softmax_scale: ds.softmax_scale(),
        info,
        cache: None,
        path: AttentionPath::Auto,
        cfg: config,
        ds,
    })
}
