//! What the engine sees of a model: [`Model`], one step over a
//! [`ForwardBatch`], and the [`ModelInfo`] it sizes its KV pool and limits
//! from. Any architecture on any device implements it; the engine never
//! learns which.

use crate::kernels::attention::AttnSeq;
pub use crate::kernels::logits::{LogitsRow, RowNeed};
use crate::kv_cache::spec::KvSpec;
use crate::kv_cache::storage::KvDtype;
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
    /// Whether the logits of every new token are wanted, in order (for
    /// prompt logprobs); the last token's row is then among them.
    pub all_logits: bool,
    /// What the sampler needs of the last new token's row when only that
    /// row is wanted; rows for `all_logits` come back whole.
    pub need: RowNeed,
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

/// Where each sequence of a [`ForwardBatch`] sits in the flattened
/// token dimension, as every architecture's step needs it.
pub struct BatchLayout<'a> {
    /// The position of every new token, in batch order.
    pub positions: Vec<usize>,
    /// Each sequence's rows and blocks, for attention.
    pub seqs: Vec<AttnSeq<'a>>,
    /// The rows whose logits are wanted, in order.
    pub logit_rows: Vec<usize>,
    /// What is needed of each of `logit_rows`.
    pub logit_needs: Vec<RowNeed>,
}

impl ForwardBatch {
    /// Checks that the sequences account for every token (each at least
    /// one, within its context) and lays them out.
    pub fn layout(&self) -> Result<BatchLayout<'_>> {
        let t = self.tokens.len();
        let total: usize = self.seqs.iter().map(|s| s.num_tokens).sum();
        if total != t || t == 0 {
            bail!("batch has {t} tokens but its sequences claim {total}");
        }
        let mut layout = BatchLayout {
            positions: Vec::with_capacity(t),
            seqs: Vec::with_capacity(self.seqs.len()),
            logit_rows: Vec::new(),
            logit_needs: Vec::new(),
        };
        let mut q_start = 0;
        for s in &self.seqs {
            if s.num_tokens > s.ctx_len || s.num_tokens == 0 {
                bail!(
                    "sequence has {} new tokens for a context of {}",
                    s.num_tokens,
                    s.ctx_len
                );
            }
            layout.positions.extend(s.ctx_len - s.num_tokens..s.ctx_len);
            layout.seqs.push(AttnSeq {
                q_start,
                q_len: s.num_tokens,
                ctx_len: s.ctx_len,
                block_table: &s.block_table,
            });
            if s.all_logits {
                layout.logit_rows.extend(q_start..q_start + s.num_tokens);
                layout
                    .logit_needs
                    .extend(std::iter::repeat_n(RowNeed::Full, s.num_tokens));
            } else if s.want_logits {
                layout.logit_rows.push(q_start + s.num_tokens - 1);
                layout.logit_needs.push(s.need);
            }
            q_start += s.num_tokens;
        }
        Ok(layout)
    }
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
    /// Device memory left for the KV cache after loading, on devices with
    /// memory of their own ([`crate::kernels::backend::Backend::kv_memory_budget`]).
    pub kv_memory: Option<u64>,
    /// Most tokens per engine step unless configured
    /// ([`crate::kernels::backend::Backend::step_tokens`]).
    pub step_tokens: usize,
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
    /// sequence with `all_logits`, else one row when `want_logits`, reduced
    /// as [`BatchSeq::need`] asks. A row may always come back whole.
    fn forward(&mut self, batch: &ForwardBatch) -> Result<Vec<LogitsRow>>;
}
