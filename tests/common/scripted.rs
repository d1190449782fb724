//! A tiny deterministic [`Model`] for engine tests that need no weights.
//!
//! Its "KV cache" stores, per slot, the token id and position written
//! there; every step reads a sequence's whole context back through its block
//! table and derives the next-token logits from it. A wrong block table, a
//! prefix-cache block holding someone else's tokens, or a slot overwritten
//! while still in use therefore changes the output (or fails the step), just
//! as it would corrupt a real model's attention.

use r1serve::kernels::logits::reduce;
use r1serve::kv_cache::spec::{KvSpec, LayerKvSpec};
use r1serve::kv_cache::storage::KvDtype;
use r1serve::model::{ForwardBatch, LogitsRow, Model, ModelInfo, RowNeed};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// First token id the script produces; ids below it (EOS, specials) never
/// come out unless a test asks for them.
pub const BASE: u32 = 100;
/// Number of distinct ids the script produces.
pub const SPAN: u32 = 64;

/// Scores of every id in `BASE..BASE + SPAN` after `context`: a fixed
/// pseudo-random function of the whole context, with one clear maximum.
pub fn scores(context: &[u32]) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in context {
        h = (h ^ u64::from(t)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..SPAN)
        .map(|i| {
            let x = (h ^ u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .wrapping_mul(0xff51_afd7_ed55_8ccd);
            (x >> 40) as f32 / (1u64 << 24) as f32 * 4.0
        })
        .collect()
}

/// The greedy continuation of `prompt` by `steps` tokens, computed directly.
pub fn reference(prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut ctx = prompt.to_vec();
    for _ in 0..steps {
        let s = scores(&ctx);
        let best = (0..s.len()).fold(0, |b, i| if s[i] > s[b] { i } else { b });
        ctx.push(BASE + best as u32);
    }
    ctx[prompt.len()..].to_vec()
}

/// Counters a test can read while the engine owns the model.
#[derive(Default, Debug)]
pub struct Counters {
    /// Tokens the model computed (written into the cache).
    pub tokens: AtomicU64,
    /// Steps run.
    pub steps: AtomicU64,
}

/// The scripted model.
pub struct Scripted {
    info: ModelInfo,
    block_size: usize,
    /// `(token, position)` per slot, `None` when never written.
    slots: Vec<Option<(u32, usize)>>,
    counters: Arc<Counters>,
    /// When set, the next token is `cycle[context length % cycle.len()]`
    /// instead of the script: a model stuck in a loop.
    cycle: Option<Vec<u32>>,
}

impl Scripted {
    /// A model with `vocab_size` logits (the tokenizer's vocabulary) and
    /// a one-layer cache of 8 f32-equivalent bytes per token.
    pub fn new(vocab_size: usize, max_len: usize) -> (Self, Arc<Counters>) {
        assert!(vocab_size as u32 >= BASE + SPAN);
        let counters = Arc::new(Counters::default());
        let model = Scripted {
            info: ModelInfo {
                arch: "scripted".into(),
                device: "cpu".into(),
                vocab_size,
                max_position_embeddings: max_len,
                kv: KvSpec::uniform(
                    LayerKvSpec::Full {
                        num_kv_heads: 1,
                        k_dim: 1,
                        v_dim: 1,
                    },
                    1,
                ),
                kv_memory: None,
                step_tokens: 2048,
            },
            block_size: 0,
            slots: Vec::new(),
            counters: counters.clone(),
            cycle: None,
        };
        (model, counters)
    }

    /// The same model declaring `tokens` as its device's step budget.
    pub fn with_step_tokens(mut self, tokens: usize) -> Self {
        self.info.step_tokens = tokens;
        self
    }

    /// A model that repeats `cycle` forever, whatever the context.
    pub fn looping(vocab_size: usize, max_len: usize, cycle: Vec<u32>) -> Self {
        let (mut model, _) = Self::new(vocab_size, max_len);
        model.cycle = Some(cycle);
        model
    }
}

impl Model for Scripted {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn allocate_cache(
        &mut self,
        block_size: usize,
        num_blocks: usize,
        _dtype: KvDtype,
    ) -> anyhow::Result<()> {
        self.block_size = block_size;
        self.slots = vec![None; block_size * num_blocks];
        Ok(())
    }

    fn forward(&mut self, batch: &ForwardBatch) -> anyhow::Result<Vec<LogitsRow>> {
        let bs = self.block_size;
        let mut out = Vec::new();
        let mut next = 0;
        for s in &batch.seqs {
            let slot = |p: usize| s.block_table[p / bs].index() * bs + p % bs;
            let first = s.ctx_len - s.num_tokens;
            for (i, &t) in batch.tokens[next..next + s.num_tokens].iter().enumerate() {
                let at = slot(first + i);
                self.slots[at] = Some((t, first + i));
            }
            next += s.num_tokens;
            if !s.want_logits {
                continue;
            }
            let mut context = Vec::with_capacity(s.ctx_len);
            for p in 0..s.ctx_len {
                match self.slots[slot(p)] {
                    Some((t, q)) if q == p => context.push(t),
                    other => anyhow::bail!("slot of position {p} holds {other:?}"),
                }
            }
            let mut logits = vec![-10.0f32; self.info.vocab_size];
            match &self.cycle {
                Some(cycle) => logits[cycle[s.ctx_len % cycle.len()] as usize] = 10.0,
                None => {
                    for (i, v) in scores(&context).into_iter().enumerate() {
                        logits[BASE as usize + i] = v;
                    }
                }
            }
            let need = if s.all_logits { RowNeed::Full } else { s.need };
            out.push(reduce(&logits, need));
        }
        self.counters
            .tokens
            .fetch_add(batch.tokens.len() as u64, Ordering::Relaxed);
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }
}
