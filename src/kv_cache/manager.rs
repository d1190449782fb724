//! The KV-cache manager the scheduler talks to: "which of this prompt is
//! already computed", "make room for n more tokens of this sequence, or tell
//! me there is none", and "free this sequence". Block tables live here; the
//! pool owns reference counts and the prefix cache (as in vLLM's
//! `kv_cache_manager.py`).

use super::block_pool::{hash_block, BlockHash, BlockPool};
use super::events::KvEvent;
use crate::types::{BlockId, SeqId, TokenId};
use std::collections::HashMap;

#[derive(Default)]
struct SeqBlocks {
    blocks: Vec<BlockId>,
    /// Hashes of the leading full, computed blocks.
    hashes: Vec<BlockHash>,
}

/// Prefix-cache lookups, counted in tokens as vLLM does.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrefixStats {
    /// Prompt tokens looked up.
    pub queries: u64,
    /// Prompt tokens found cached.
    pub hits: u64,
}

/// Block tables over a [`BlockPool`].
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    prefix_caching: bool,
    seqs: HashMap<SeqId, SeqBlocks>,
    stats: PrefixStats,
}

impl KvCacheManager {
    /// A manager over `num_blocks` blocks of `block_size` tokens.
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        Self {
            pool: BlockPool::new(num_blocks),
            block_size,
            prefix_caching,
            seqs: HashMap::new(),
            stats: PrefixStats::default(),
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    /// Blocks nobody holds.
    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free()
    }

    /// Fraction of blocks held, 0..1.
    pub fn usage(&self) -> f64 {
        1.0 - self.pool.num_free() as f64 / self.pool.num_blocks().max(1) as f64
    }

    /// Prefix-cache counters.
    pub fn prefix_stats(&self) -> PrefixStats {
        self.stats
    }

    /// Holders of a block, for tests and diagnostics.
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.pool.ref_count(block)
    }

    /// The longest run of cached full blocks at the start of `tokens`,
    /// leaving at least one token to compute (its logits are needed).
    pub fn cached_prefix(&self, tokens: &[TokenId]) -> Vec<BlockId> {
        if !self.prefix_caching {
            return Vec::new();
        }
        let mut found = Vec::new();
        let mut parent = None;
        let max_blocks = (tokens.len().saturating_sub(1)) / self.block_size;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let h = hash_block(parent, chunk, 0);
            match self.pool.lookup(h) {
                Some(b) => found.push(b),
                None => break,
            }
            parent = Some(h);
        }
        found
    }

    /// Counts a prefix-cache lookup that led to an admission.
    pub fn record_lookup(&mut self, prompt_tokens: usize, hit_tokens: usize) {
        self.stats.queries += prompt_tokens as u64;
        self.stats.hits += hit_tokens as u64;
    }

    /// The blocks of a sequence, in position order.
    pub fn block_table(&self, seq: SeqId) -> &[BlockId] {
        self.seqs.get(&seq).map_or(&[], |s| &s.blocks)
    }

    /// Ensures `seq` has room for `total_tokens`, starting a new sequence
    /// from the cached `prefix` blocks. Returns false, changing nothing,
    /// when the pool cannot supply the blocks.
    pub fn allocate(&mut self, seq: SeqId, prefix: &[BlockId], total_tokens: usize) -> bool {
        let have = self.seqs.get(&seq).map_or(0, |s| s.blocks.len());
        let revived = if have == 0 {
            prefix
                .iter()
                .filter(|b| self.pool.ref_count(**b) == 0)
                .count()
        } else {
            0
        };
        let base = if have == 0 { prefix.len() } else { have };
        let new_blocks = total_tokens.div_ceil(self.block_size).saturating_sub(base);
        if new_blocks + revived > self.pool.num_free() {
            return false;
        }
        let entry = self.seqs.entry(seq).or_default();
        if have == 0 {
            for &b in prefix {
                self.pool.acquire(b);
                entry.blocks.push(b);
                if let Some(h) = self.pool.hash_of(b) {
                    entry.hashes.push(h);
                }
            }
        }
        for _ in 0..new_blocks {
            let b = self.pool.allocate().expect("free count checked above");
            entry.blocks.push(b);
        }
        true
    }

    /// Registers the blocks that became full and computed, so later requests
    /// sharing the prefix can reuse them. With events on, each run of blocks
    /// that entered the cache is reported with its tokens.
    pub fn commit(&mut self, seq: SeqId, tokens: &[TokenId], num_computed: usize) {
        if !self.prefix_caching {
            return;
        }
        let Some(entry) = self.seqs.get_mut(&seq) else {
            return;
        };
        let full = (num_computed / self.block_size).min(entry.blocks.len());
        let mut stored: Option<KvEvent> = None;
        while entry.hashes.len() < full {
            let i = entry.hashes.len();
            let parent = entry.hashes.last().copied();
            let block_tokens = &tokens[i * self.block_size..(i + 1) * self.block_size];
            let h = hash_block(parent, block_tokens, 0);
            let entered = self.pool.register(entry.blocks[i], h);
            entry.hashes.push(h);
            if !self.pool.events().enabled() {
                continue;
            }
            match (&mut stored, entered) {
                (
                    Some(KvEvent::BlockStored {
                        block_hashes,
                        token_ids,
                        ..
                    }),
                    true,
                ) => {
                    block_hashes.push(h);
                    token_ids.extend_from_slice(block_tokens);
                }
                (_, true) => {
                    stored = Some(KvEvent::BlockStored {
                        block_hashes: vec![h],
                        parent,
                        token_ids: block_tokens.to_vec(),
                        block_size: self.block_size,
                    });
                }
                // A block whose prefix another block already caches ends
                // the run: the events describe only what entered.
                (_, false) => {
                    if let Some(event) = stored.take() {
                        self.pool.events().push(event);
                    }
                }
            }
        }
        if let Some(event) = stored {
            self.pool.events().push(event);
        }
    }

    /// Starts recording prefix-cache events for [`take_events`](Self::take_events).
    pub fn enable_events(&mut self) {
        self.pool.events().enable();
    }

    /// Prefix-cache events since the last call, oldest first; empty when
    /// events are off.
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.pool.events().drain()
    }

    /// Releases every block of `seq` (their contents stay cached).
    pub fn free(&mut self, seq: SeqId) {
        if let Some(entry) = self.seqs.remove(&seq) {
            // Tail first, so a prompt's leading blocks are the last evicted.
            for b in entry.blocks.into_iter().rev() {
                self.pool.release(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_is_reused_and_freed_blocks_return() {
        let mut m = KvCacheManager::new(16, 4, true);
        let a: Vec<u32> = (0..10).collect();
        assert!(m.cached_prefix(&a).is_empty());
        assert!(m.allocate(SeqId(1), &[], a.len()));
        m.commit(SeqId(1), &a, a.len());
        let mut b = a[..8].to_vec();
        b.extend([99, 98, 97]);
        let hit = m.cached_prefix(&b);
        assert_eq!(hit, m.block_table(SeqId(1))[..2].to_vec());
        assert!(m.allocate(SeqId(2), &hit, b.len()));
        assert_eq!(m.ref_count(hit[0]), 2);
        m.free(SeqId(1));
        m.free(SeqId(2));
        assert_eq!(m.num_free_blocks(), 16);
        // Still cached after both are gone.
        assert_eq!(m.cached_prefix(&b).len(), 2);
    }

    #[test]
    fn allocation_failure_changes_nothing() {
        let mut m = KvCacheManager::new(2, 4, true);
        assert!(!m.allocate(SeqId(1), &[], 9));
        assert_eq!(m.num_free_blocks(), 2);
        assert!(m.block_table(SeqId(1)).is_empty());
    }

    #[test]
    fn whole_prompt_hit_leaves_one_token_to_compute() {
        let mut m = KvCacheManager::new(8, 4, true);
        let a: Vec<u32> = (0..8).collect();
        assert!(m.allocate(SeqId(1), &[], 8));
        m.commit(SeqId(1), &a, 8);
        assert_eq!(m.cached_prefix(&a).len(), 1);
    }

    /// With events on, a commit reports the blocks that entered the cache
    /// with their tokens and chain, reuse reports nothing, eviction reports
    /// the hashes that left; with events off nothing is recorded.
    #[test]
    fn events_report_stores_and_evictions() {
        let mut m = KvCacheManager::new(4, 4, true);
        m.enable_events();
        let a: Vec<u32> = (0..10).collect();
        assert!(m.allocate(SeqId(1), &[], a.len()));
        m.commit(SeqId(1), &a, 6);
        m.commit(SeqId(1), &a, a.len());
        let events = m.take_events();
        let h0 = hash_block(None, &a[..4], 0);
        let h1 = hash_block(Some(h0), &a[4..8], 0);
        assert_eq!(
            events,
            [
                KvEvent::BlockStored {
                    block_hashes: vec![h0],
                    parent: None,
                    token_ids: a[..4].to_vec(),
                    block_size: 4,
                },
                KvEvent::BlockStored {
                    block_hashes: vec![h1],
                    parent: Some(h0),
                    token_ids: a[4..8].to_vec(),
                    block_size: 4,
                },
            ]
        );
        // A second sequence reusing the prefix stores nothing new.
        let prefix = m.cached_prefix(&a);
        assert_eq!(prefix.len(), 2);
        assert!(m.allocate(SeqId(2), &prefix, a.len()));
        m.commit(SeqId(2), &a, a.len());
        assert!(m.take_events().is_empty());
        m.free(SeqId(1));
        m.free(SeqId(2));
        // Four fresh blocks take every block, the two cached ones included.
        let b: Vec<u32> = (100..116).collect();
        assert!(m.allocate(SeqId(3), &[], b.len()));
        let events = m.take_events();
        let [KvEvent::BlockRemoved { block_hashes }] = &events[..] else {
            panic!("{events:?}");
        };
        let mut removed = block_hashes.clone();
        removed.sort_by_key(|h| h.0);
        let mut expected = vec![h0, h1];
        expected.sort_by_key(|h| h.0);
        assert_eq!(removed, expected);

        let mut off = KvCacheManager::new(4, 4, true);
        assert!(off.allocate(SeqId(1), &[], a.len()));
        off.commit(SeqId(1), &a, a.len());
        assert!(off.take_events().is_empty());
    }
}
