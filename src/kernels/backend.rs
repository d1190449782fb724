//! The device seam: every op a forward pass needs, over buffers the device
//! owns. Architecture files are written once against [`Backend`]; a device
//! plugs in beside the CPU one by implementing it, without touching them.
//! Only token ids go in and only what the sampler needs of the logits comes
//! out ([`Backend::logits_out`]), so a device keeps activations, weights and
//! the KV cache in its own memory.
//!
//! Shapes are row-major: one row per token, `width` values per row. Ops
//! are row-wise except attention, so a token's values never depend on
//! which other tokens share its step.

use super::attention::{AttnSeq, AttnShape};
use super::logits::{self, LogitsRow, RowNeed};
use super::tensor::RawTensor;
use crate::kv_cache::spec::KvSpec;
use crate::kv_cache::storage::KvDtype;
use crate::types::TokenId;
use anyhow::{bail, Result};

/// How rotary embeddings pair up dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(i, i + d/2)`: HF checkpoints, and Qwen2 in GGUF.
    Half,
    /// Pairs `(2i, 2i + 1)`: llama.cpp permutes Llama's q/k weights for this.
    Interleaved,
}

/// Fails unless two activations hold the same number of values in rows of
/// the same width: what every element-wise op needs. Arguments are
/// `(values, width)` of each.
pub fn same_shape(x: (usize, usize), y: (usize, usize)) -> Result<()> {
    if x != y {
        bail!(
            "shape mismatch: {}×{} vs {}×{}",
            x.0 / x.1.max(1),
            x.1,
            y.0 / y.1.max(1),
            y.1
        );
    }
    Ok(())
}

/// A device that runs forward passes.
pub trait Backend: Send + Sync + 'static {
    /// Activations: `rows × width` f32 values in device memory.
    type Act: Send;
    /// A linear layer (weight and optional bias) as the device multiplies it.
    type Linear: Send + Sync;
    /// A token-embedding table.
    type Embedding: Send + Sync;
    /// A per-channel vector (a norm's scale).
    type Vector: Send + Sync;
    /// The paged KV cache of every layer.
    type Cache: Send;
    /// The rotation angles of one step's tokens, computed once and shared
    /// by every layer.
    type RopeTables;

    /// A short name for logs (`cpu`, `cuda:0`).
    fn name(&self) -> String;

    /// Bytes of device memory left for the KV cache once the weights are
    /// loaded, where the device has its own memory (a GPU, sized by
    /// `--gpu-memory-utilization`); `None` sizes the cache from host RAM.
    fn kv_memory_budget(&self) -> Option<u64> {
        None
    }

    /// Most tokens one engine step should carry on this device when
    /// `--max-num-batched-tokens` does not say: enough rows for the
    /// device's matmuls to run at their batched rate, and no more, since
    /// every running stream waits for the whole step.
    fn step_tokens(&self) -> usize;

    /// Takes a `(out, in)` weight and an optional bias onto the device.
    fn linear(&self, weight: RawTensor, bias: Option<Vec<f32>>) -> Result<Self::Linear>;
    /// Takes a `(vocab, width)` table onto the device.
    fn embedding(&self, table: &RawTensor) -> Result<Self::Embedding>;
    /// Takes a vector onto the device.
    fn vector(&self, values: Vec<f32>) -> Result<Self::Vector>;
    /// Allocates and commits the cache `spec` describes: `num_blocks`
    /// blocks of `block_size` tokens per layer.
    fn alloc_cache(
        &self,
        spec: &KvSpec,
        block_size: usize,
        num_blocks: usize,
        dtype: KvDtype,
    ) -> Result<Self::Cache>;

    /// Number of rows of `x`.
    fn rows(&self, x: &Self::Act) -> usize;
    /// Gathers the embedding rows of `ids`.
    fn embed(&self, table: &Self::Embedding, ids: &[TokenId]) -> Result<Self::Act>;
    /// `x · Wᵀ (+ b)`.
    fn matmul(&self, w: &Self::Linear, x: &Self::Act) -> Result<Self::Act>;
    /// RMSNorm of each row, scaled by `w`.
    fn rms_norm(&self, x: &Self::Act, w: &Self::Vector, eps: f32) -> Result<Self::Act>;
    /// `x += y`, then RMSNorm of the new `x` (a residual add and the next
    /// layer's norm in one pass over the rows).
    fn add_rms_norm(
        &self,
        x: &mut Self::Act,
        y: &Self::Act,
        w: &Self::Vector,
        eps: f32,
    ) -> Result<Self::Act>;
    /// `x += y`.
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()>;
    /// Angles for tokens at `positions` with per-pair inverse frequencies
    /// `inv_freq` (`head_dim / 2` of them).
    fn rope_tables(&self, inv_freq: &[f32], positions: &[usize]) -> Result<Self::RopeTables>;
    /// Rotates every `head_dim`-wide head of every row in place.
    fn rope(
        &self,
        x: &mut Self::Act,
        head_dim: usize,
        style: RopeStyle,
        tables: &Self::RopeTables,
    ) -> Result<()>;
    /// `silu(gate) · up`, into `gate`.
    fn silu_mul(&self, gate: &mut Self::Act, up: &Self::Act) -> Result<()>;
    /// Stores the new tokens' keys and values of layer `layer` in their
    /// cache slots (`seqs` says which rows belong to which sequence).
    fn write_kv(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        seqs: &[AttnSeq],
        k: &Self::Act,
        v: &Self::Act,
    ) -> Result<()>;
    /// Causal attention of the queries `q` over each sequence's cached
    /// context in layer `layer`.
    fn paged_attention(
        &self,
        cache: &Self::Cache,
        layer: usize,
        seqs: &[AttnSeq],
        shape: &AttnShape,
        q: &Self::Act,
    ) -> Result<Self::Act>;
    /// The rows `rows` of `x`, in that order.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize]) -> Result<Self::Act>;
    /// Moves `x` (the logits rows) to host memory, row after row.
    fn logits_to_host(&self, x: Self::Act) -> Result<Vec<f32>>;
    /// Moves the logits rows `x` to the host, each reduced as its entry of
    /// `needs` asks ([`logits::reduce`] defines the result). The default
    /// copies every row and reduces on the host; a device with memory of
    /// its own reduces before the copy.
    fn logits_out(&self, x: Self::Act, needs: &[RowNeed]) -> Result<Vec<LogitsRow>> {
        Ok(logits::reduce_rows(self.logits_to_host(x)?, needs))
    }
}
