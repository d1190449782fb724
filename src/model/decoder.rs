//! The pre-norm decoder stack that Llama and Qwen2 share, written once
//! against the device seam ([`Backend`]). The architecture files decide
//! which tensors fill it (biases, RoPE pairing and scaling); this file only
//! runs it.
//!
//! Everything but attention is row-wise, so a sequence computes the same
//! values whatever it is batched with.

use super::config::ModelConfig;
use super::interface::{BatchLayout, ForwardBatch, LogitsRow, Model, ModelInfo};
use super::layers::Rope;
use super::weights::WeightSource;
use crate::kernels::attention::AttnShape;
use crate::kernels::backend::Backend;
use crate::kv_cache::spec::{KvSpec, LayerKvSpec};
use crate::kv_cache::storage::KvDtype;
use anyhow::{bail, Context, Result};

/// One decoder layer's weights.
pub struct DecoderLayer<B: Backend> {
    /// Norm before attention.
    pub attn_norm: B::Vector,
    /// Query projection.
    pub q: B::Linear,
    /// Key projection.
    pub k: B::Linear,
    /// Value projection.
    pub v: B::Linear,
    /// Attention output projection.
    pub o: B::Linear,
    /// Norm before the MLP.
    pub mlp_norm: B::Vector,
    /// MLP gate projection.
    pub gate: B::Linear,
    /// MLP up projection.
    pub up: B::Linear,
    /// MLP down projection.
    pub down: B::Linear,
}

/// A complete decoder-only model on one device.
pub struct Decoder<B: Backend> {
    backend: B,
    /// Hyper-parameters.
    pub config: ModelConfig,
    info: ModelInfo,
    embed: B::Embedding,
    layers: Vec<DecoderLayer<B>>,
    norm: B::Vector,
    lm_head: B::Linear,
    rope: Rope,
    cache: Option<B::Cache>,
}

impl<B: Backend> Decoder<B> {
    /// The allocated KV cache, for benches that fill it directly instead of
    /// prefilling long contexts through the model.
    pub fn cache_mut(&mut self) -> Option<&mut B::Cache> {
        self.cache.as_mut()
    }

    /// The token-embedding table, for tests of how weights are held.
    pub fn embedding(&self) -> &B::Embedding {
        &self.embed
    }
}

impl<B: Backend> Model for Decoder<B> {
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
        self.cache =
            Some(
                self.backend
                    .alloc_cache(&self.info.kv, block_size, num_blocks, dtype)?,
            );
        Ok(())
    }

    fn forward(&mut self, batch: &ForwardBatch) -> Result<Vec<LogitsRow>> {
        let (b, cfg) = (&self.backend, &self.config);
        let cache = self
            .cache
            .as_mut()
            .context("forward before the KV cache was allocated")?;
        let BatchLayout {
            positions,
            seqs,
            logit_rows: last_rows,
            logit_needs,
        } = batch.layout()?;
        let tables = b.rope_tables(&self.rope.inv_freq, &positions)?;
        let shape = AttnShape {
            num_heads: cfg.num_heads,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
        };
        let (hd, eps) = (cfg.head_dim, cfg.rms_norm_eps);

        let mut x = b.embed(&self.embed, &batch.tokens)?;
        let mut h = b.rms_norm(&x, &self.layers[0].attn_norm, eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let mut q = b.matmul(&layer.q, &h)?;
            let mut k = b.matmul(&layer.k, &h)?;
            let v = b.matmul(&layer.v, &h)?;
            b.rope(&mut q, hd, self.rope.style, &tables)?;
            b.rope(&mut k, hd, self.rope.style, &tables)?;
            b.write_kv(cache, i, &seqs, &k, &v)?;
            let attn = b.paged_attention(cache, i, &seqs, &shape, &q)?;
            h = b.add_rms_norm(&mut x, &b.matmul(&layer.o, &attn)?, &layer.mlp_norm, eps)?;

            let mut g = b.matmul(&layer.gate, &h)?;
            b.silu_mul(&mut g, &b.matmul(&layer.up, &h)?)?;
            let down = b.matmul(&layer.down, &g)?;
            match self.layers.get(i + 1) {
                Some(next) => h = b.add_rms_norm(&mut x, &down, &next.attn_norm, eps)?,
                None => b.add(&mut x, &down)?,
            }
        }
        if last_rows.is_empty() {
            return Ok(Vec::new());
        }
        let last = b.gather_rows(&x, &last_rows)?;
        let logits = b.matmul(&self.lm_head, &b.rms_norm(&last, &self.norm, eps)?)?;
        b.logits_out(logits, &logit_needs)
    }
}

/// Loads the decoder stack from `weights` onto `backend`; `qkv_bias` adds
/// the q/k/v biases Qwen2 has and Llama lacks.
pub fn load_stack<B: Backend>(
    backend: B,
    weights: &WeightSource,
    config: ModelConfig,
    rope: Rope,
    qkv_bias: bool,
) -> Result<Decoder<B>> {
    let c = &config;
    let (h, hd) = (c.hidden_size, c.head_dim);
    let q_dim = c.num_heads * hd;
    let kv_dim = c.num_kv_heads * hd;
    let b = &backend;
    let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<B::Linear> {
        let w = weights.get(&format!("{name}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(weights.get(&format!("{name}.bias"), &[out])?.to_f32_vec()?)
        } else {
            None
        };
        b.linear(w, bias)
    };
    let norm =
        |name: &str| -> Result<B::Vector> { b.vector(weights.get(name, &[h])?.to_f32_vec()?) };
    if c.num_layers == 0 {
        bail!("the model has no layers");
    }
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
    let embed = b.embedding(&embed_raw)?;
    let lm_head = if !c.tie_word_embeddings && weights.contains("output.weight") {
        linear("output", c.vocab_size, h, false)?
    } else {
        b.linear(embed_raw, None)?
    };
    let norm = norm("output_norm.weight")?;
    Ok(Decoder::assemble(
        backend,
        config,
        DecoderWeights {
            embed,
            layers,
            norm,
            lm_head,
        },
        rope,
    ))
}

/// Everything a [`Decoder`] multiplies, on its device.
pub struct DecoderWeights<B: Backend> {
    /// Token embeddings.
    pub embed: B::Embedding,
    /// The layers, in order.
    pub layers: Vec<DecoderLayer<B>>,
    /// The final norm.
    pub norm: B::Vector,
    /// The output projection.
    pub lm_head: B::Linear,
}

impl<B: Backend> Decoder<B> {
    /// A decoder of weights already on `backend`'s device (loaded by
    /// [`load_stack`], or generated there by a benchmark's synthetic model).
    pub fn assemble(
        backend: B,
        config: ModelConfig,
        weights: DecoderWeights<B>,
        rope: Rope,
    ) -> Self {
        let c = &config;
        let info = ModelInfo {
            arch: format!("{:?}", c.arch).to_lowercase(),
            device: backend.name(),
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            kv: KvSpec::uniform(
                LayerKvSpec::Full {
                    num_kv_heads: c.num_kv_heads,
                    k_dim: c.head_dim,
                    v_dim: c.head_dim,
                },
                c.num_layers,
            ),
            kv_memory: backend.kv_memory_budget(),
            step_tokens: backend.step_tokens(),
        };
        Decoder {
            norm: weights.norm,
            embed: weights.embed,
            layers: weights.layers,
            lm_head: weights.lm_head,
            rope,
            info,
            cache: None,
            backend,
            config,
        }
    }
}
