//! The pre-norm decoder stack that Llama and Qwen2 share. The architecture
//! files decide which tensors fill it (biases, RoPE pairing and scaling);
//! this file only runs it.
//!
//! A forward pass takes several sequences of different lengths flattened into
//! one token dimension; each sequence brings its block table, and the logits
//! of its last token are returned when asked for. Everything but attention is
//! row-wise, so a sequence computes the same values whatever it is batched
//! with.

use super::config::ModelConfig;
use super::layers::{silu_mul, RmsNorm, Rope};
use super::linear::{Embedding, Linear};
use crate::kernels::attention::{paged_attention, write_kv, AttnSeq, AttnShape};
use crate::kv_cache::storage::KvCache;
use crate::types::{BlockId, TokenId};
use anyhow::{bail, Result};

/// One sequence's share of a forward batch.
#[derive(Clone, Debug)]
pub struct BatchSeq {
    /// New tokens of this sequence in [`ForwardBatch::tokens`].
    pub num_tokens: usize,
    /// Cached tokens after this step: the new tokens are positions
    /// `ctx_len - num_tokens .. ctx_len`.
    pub ctx_len: usize,
    /// Blocks holding this sequence's positions, in order.
    pub block_table: Vec<BlockId>,
    /// Whether the logits of the last new token are wanted.
    pub want_logits: bool,
}

/// The input of one model step.
#[derive(Clone, Debug, Default)]
pub struct ForwardBatch {
    /// All new tokens, sequence after sequence.
    pub tokens: Vec<TokenId>,
    /// The sequences, in the order of their tokens.
    pub seqs: Vec<BatchSeq>,
}

/// One decoder layer's weights.
pub struct DecoderLayer {
    /// Norm before attention.
    pub attn_norm: RmsNorm,
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Attention output projection.
    pub o: Linear,
    /// Norm before the MLP.
    pub mlp_norm: RmsNorm,
    /// MLP gate projection.
    pub gate: Linear,
    /// MLP up projection.
    pub up: Linear,
    /// MLP down projection.
    pub down: Linear,
}

/// A complete decoder-only model.
pub struct Decoder {
    /// Hyper-parameters.
    pub config: ModelConfig,
    /// Token embedding.
    pub embed: Embedding,
    /// The stack.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// LM head.
    pub lm_head: Linear,
    /// Rotary embedding.
    pub rope: Rope,
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

impl Decoder {
    /// Runs one step and returns the logits of every sequence that asked for
    /// them, in batch order.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvCache) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.config;
        let t = batch.tokens.len();
        let total: usize = batch.seqs.iter().map(|s| s.num_tokens).sum();
        if total != t || t == 0 {
            bail!("batch has {t} tokens but its sequences claim {total}");
        }
        if kv.layers.len() != self.layers.len() {
            bail!(
                "KV cache has {} layers, model {}",
                kv.layers.len(),
                self.layers.len()
            );
        }
        let mut positions = Vec::with_capacity(t);
        let mut attn_seqs = Vec::with_capacity(batch.seqs.len());
        let mut q_start = 0;
        for s in &batch.seqs {
            if s.num_tokens > s.ctx_len {
                bail!("sequence has more new tokens than context");
            }
            positions.extend(s.ctx_len - s.num_tokens..s.ctx_len);
            attn_seqs.push(AttnSeq {
                q_start,
                q_len: s.num_tokens,
                ctx_len: s.ctx_len,
                block_table: &s.block_table,
            });
            q_start += s.num_tokens;
        }
        let (cos, sin) = self.rope.tables(&positions);
        let geom = kv.geometry;
        let shape = AttnShape {
            num_heads: cfg.num_heads,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
        };
        let kv_row = cfg.num_kv_heads * cfg.head_dim;

        let mut x = self.embed.forward(&batch.tokens)?;
        for (layer, cache) in self.layers.iter().zip(kv.layers.iter_mut()) {
            let h = layer.attn_norm.forward(&x);
            let mut q = layer.q.forward(&h, t)?;
            let mut k = layer.k.forward(&h, t)?;
            let v = layer.v.forward(&h, t)?;
            self.rope.apply(&mut q, cfg.num_heads, &cos, &sin);
            self.rope.apply(&mut k, cfg.num_kv_heads, &cos, &sin);
            for (s, a) in batch.seqs.iter().zip(&attn_seqs) {
                let rows = a.q_start * kv_row..(a.q_start + a.q_len) * kv_row;
                let start = s.ctx_len - s.num_tokens;
                write_kv(
                    cache,
                    &geom,
                    &s.block_table,
                    start,
                    &k[rows.clone()],
                    &v[rows],
                )?;
            }
            let mut attn = vec![0f32; q.len()];
            paged_attention(&q, &mut attn, cache, &geom, &attn_seqs, &shape)?;
            add_in_place(&mut x, &layer.o.forward(&attn, t)?);

            let h = layer.mlp_norm.forward(&x);
            let mut g = layer.gate.forward(&h, t)?;
            silu_mul(&mut g, &layer.up.forward(&h, t)?);
            add_in_place(&mut x, &layer.down.forward(&g, t)?);
        }

        let hidden = cfg.hidden_size;
        let mut last_rows = Vec::new();
        let mut end = 0;
        for s in &batch.seqs {
            end += s.num_tokens;
            if s.want_logits {
                last_rows.extend_from_slice(&x[(end - 1) * hidden..end * hidden]);
            }
        }
        let n = last_rows.len() / hidden;
        if n == 0 {
            return Ok(Vec::new());
        }
        let h = self.norm.forward(&last_rows);
        let logits = self.lm_head.forward(&h, n)?;
        let vocab = self.lm_head.out_features();
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }
}

/// Loads the decoder stack from `weights`; `qkv_bias` adds the q/k/v biases
/// Qwen2 has and Llama lacks.
pub fn load_stack(
    weights: &super::weights::WeightSource,
    config: ModelConfig,
    rope: Rope,
    qkv_bias: bool,
) -> Result<Decoder> {
    let c = &config;
    let (h, hd) = (c.hidden_size, c.head_dim);
    let q_dim = c.num_heads * hd;
    let kv_dim = c.num_kv_heads * hd;
    let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
        let w = weights.get(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias {
            Some(weights.get(&format!("{name}.bias"), &[out])?.to_f32_vec()?)
        } else {
            None
        };
        Linear::new(w, b)
    };
    let norm = |name: &str| -> Result<RmsNorm> {
        Ok(RmsNorm::new(
            weights.get(name, &[h])?.to_f32_vec()?,
            c.rms_norm_eps,
        ))
    };
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("blk.{i}");
        layers.push(DecoderLayer {
            attn_norm: norm(&format!("{p}.attn_norm.weight"))?,
            q: linear(&format!("{p}.attn_q"), q_dim, h, qkv_bias)?,
            k: linear(&format!("{p}.attn_k"), kv_dim, h, qkv_bias)?,
            v: linear(&format!("{p}.attn_v"), kv_dim, h, qkv_bias)?,
            o: linear(&format!("{p}.attn_output"), h, q_dim, false)?,
            mlp_norm: norm(&format!("{p}.ffn_norm.weight"))?,
            gate: linear(&format!("{p}.ffn_gate"), c.intermediate_size, h, false)?,
            up: linear(&format!("{p}.ffn_up"), c.intermediate_size, h, false)?,
            down: linear(&format!("{p}.ffn_down"), h, c.intermediate_size, false)?,
        });
    }
    let embed_raw = weights.get("token_embd.weight", &[c.vocab_size, h])?;
    let embed = Embedding::new(&embed_raw)?;
    let lm_head = if !c.tie_word_embeddings && weights.contains("output.weight") {
        linear("output", c.vocab_size, h, false)?
    } else {
        Linear::new(embed_raw, None)?
    };
    Ok(Decoder {
        embed,
        layers,
        norm: norm("output_norm.weight")?,
        lm_head,
        rope,
        config,
    })
}
