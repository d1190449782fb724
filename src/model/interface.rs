//! What the engine sees of a model: [`Model`], one step over a
//! [`ForwardBatch`], and the [`ModelInfo`] it sizes its KV pool and limits
//! from. Any architecture on any device implements it; the engine never
//! learns which.

use crate::kv_cache::spec::KvSpec;
use crate::kv_cache::storage::KvDtype;
use crate::types::{BlockId, TokenId};
use anyhow::Result;

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
    /// Whether the logits of every new token are wanted, in order (for
    /// prompt logprobs); the last token's row is then among them.
    pub all_logits: bool,
}

/// The input of one model step: several sequences of different lengths
/// flattened into one token dimension.
#[derive(Clone, Debug, Default)]
pub struct ForwardBatch {
    /// All new tokens, sequence after sequence.
    pub tokens: Vec<TokenId>,
    /// The sequences, in the order of their tokens.
    pub seqs: Vec<BatchSeq>,
}

/// What a model declares about itself.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Architecture name, for logs (`qwen2`, `llama`).
    pub arch: String,
    /// Device name, for logs (`cpu`).
    pub device: String,
    /// Rows of the logits.
    pub vocab_size: usize,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// What each layer caches per token.
    pub kv: KvSpec,
}

/// A model ready to run steps.
pub trait Model: Send {
    /// The model's declared limits and cache needs.
    fn info(&self) -> &ModelInfo;

    /// Allocates (and commits) the model's KV cache on its device:
    /// `num_blocks` blocks of `block_size` tokens for every layer of
    /// [`ModelInfo::kv`]. Replaces any cache allocated before.
    fn allocate_cache(
        &mut self,
        block_size: usize,
        num_blocks: usize,
        dtype: KvDtype,
    ) -> Result<()>;

    /// Runs one step: writes the new tokens' keys and values into their
    /// blocks and returns the logits (`vocab_size` each) of every sequence
    /// that asked for them, in batch order: one row per new token of a
    /// sequence with `all_logits`, else one row when `want_logits`.
    fn forward(&mut self, batch: &ForwardBatch) -> Result<Vec<Vec<f32>>>;
}
