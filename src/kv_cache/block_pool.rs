//! The block pool: which KV blocks are free, who holds the others, and which
//! already hold a known prefix. Modelled on vLLM's `block_pool.py` and
//! mistral.rs' flat free list: blocks are indices into flat `Vec`s, no `Rc`
//! and no lock per block.
//!
//! A block whose reference count drops to zero keeps its contents and its
//! hash: it sits in the free queue in LRU order and can be revived by a
//! prefix-cache hit until it is handed out again, when its hash is dropped.

use super::events::{EventLog, KvEvent};
use crate::types::BlockId;
use std::collections::{HashMap, VecDeque};

/// Hash of a full block: SHA-256 chained over the parent's hash, the
/// block's token ids and any extra keys, so equal hashes mean equal
/// prefixes. A block found by hash serves its KV to whoever asks, so the
/// hash must be collision resistant: with a 64-bit hash a client could craft
/// a prompt whose blocks collide with another's and read its KV (vLLM moved
/// to SHA-256 for the same reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockHash(pub [u8; 32]);

/// Fixed-size pool of KV blocks.
pub struct BlockPool {
    ref_counts: Vec<u32>,
    hashes: Vec<Option<BlockHash>>,
    /// Free blocks, least recently freed first. A block may appear here with
    /// a stale entry after being revived; `ref_counts` is the truth.
    free: VecDeque<BlockId>,
    num_free: usize,
    cached: HashMap<BlockHash, BlockId>,
    /// Prefix-cache changes for the outside, when someone listens.
    events: EventLog,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks.
    pub fn new(num_blocks: usize) -> Self {
        Self {
            ref_counts: vec![0; num_blocks],
            hashes: vec![None; num_blocks],
            free: (0..num_blocks as u32).map(BlockId).collect(),
            num_free: num_blocks,
            cached: HashMap::new(),
            events: EventLog::default(),
        }
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks with no holder (cached or not).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Holders of a block.
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts[block.index()]
    }

    /// The cached block holding `hash`, if any.
    pub fn lookup(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Takes a free block, evicting its cached hash; `None` when exhausted.
    pub fn allocate(&mut self) -> Option<BlockId> {
        while let Some(b) = self.free.pop_front() {
            if self.ref_counts[b.index()] != 0 {
                continue; // revived by a cache hit after it was freed
            }
            if let Some(h) = self.hashes[b.index()].take() {
                if self.cached.get(&h) == Some(&b) {
                    self.cached.remove(&h);
                    self.events.push(KvEvent::BlockRemoved {
                        block_hashes: vec![h],
                    });
                }
            }
            self.ref_counts[b.index()] = 1;
            self.num_free -= 1;
            return Some(b);
        }
        None
    }

    /// Adds a holder to a block (a prefix-cache hit or a shared prompt).
    pub fn acquire(&mut self, block: BlockId) {
        let rc = &mut self.ref_counts[block.index()];
        if *rc == 0 {
            self.num_free -= 1;
            // Its stale queue entry is skipped by `allocate`.
        }
        *rc += 1;
    }

    /// Drops a holder; the last one returns the block to the free queue.
    pub fn release(&mut self, block: BlockId) {
        let rc = &mut self.ref_counts[block.index()];
        assert!(*rc > 0, "double free of block {}", block.0);
        *rc -= 1;
        if *rc == 0 {
            self.num_free += 1;
            // Compact the queue so stale entries never pile up.
            if self.free.len() > 2 * self.num_blocks() {
                let rcs = &self.ref_counts;
                let mut seen = vec![false; rcs.len()];
                self.free.retain(|b| {
                    let keep = rcs[b.index()] == 0 && !seen[b.index()];
                    seen[b.index()] = true;
                    keep
                });
            }
            self.free.push_back(block);
        }
    }

    /// Records that a full block now holds the prefix `hash`, and says
    /// whether it entered the cache. A hash already cached elsewhere keeps
    /// its first block: at most one block per hash.
    pub fn register(&mut self, block: BlockId, hash: BlockHash) -> bool {
        if self.hashes[block.index()].is_some() || self.cached.contains_key(&hash) {
            return false;
        }
        self.hashes[block.index()] = Some(hash);
        self.cached.insert(hash, block);
        true
    }

    /// Hash a block is registered under.
    pub fn hash_of(&self, block: BlockId) -> Option<BlockHash> {
        self.hashes[block.index()]
    }

    /// Forgets every cached prefix (blocks stay allocated to their holders).
    pub fn reset_prefix_cache(&mut self) {
        self.cached.clear();
        self.hashes.iter_mut().for_each(|h| *h = None);
        self.events.push(KvEvent::AllBlocksCleared);
    }

    /// The prefix-cache event log: the manager records stores there (it
    /// knows their tokens), the pool records evictions and clears.
    pub fn events(&mut self) -> &mut EventLog {
        &mut self.events
    }
}

/// Chained hash of a block: parent hash, token ids and extra keys, each
/// field tagged or length-prefixed so no two inputs share an encoding.
pub fn hash_block(parent: Option<BlockHash>, tokens: &[u32], extra: u64) -> BlockHash {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    match parent {
        Some(p) => {
            h.update([1]);
            h.update(p.0);
        }
        None => h.update([0]),
    }
    h.update((tokens.len() as u64).to_le_bytes());
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.update(extra.to_le_bytes());
    BlockHash(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(h: u8) -> BlockHash {
        BlockHash([h; 32])
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate,
        Release(usize),
        Acquire(usize),
        Register(usize, u8),
        Lookup(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Allocate),
            (0usize..64).prop_map(Op::Release),
            (0usize..64).prop_map(Op::Acquire),
            ((0usize..64), any::<u8>()).prop_map(|(b, h)| Op::Register(b, h % 16)),
            any::<u8>().prop_map(|h| Op::Lookup(h % 16)),
        ]
    }

    proptest! {
        /// Random operation sequences against a shadow model of holders:
        /// no double free, consistent counts, one block per hash.
        #[test]
        fn pool_invariants(ops in proptest::collection::vec(op(), 1..300)) {
            let n = 8;
            let mut pool = BlockPool::new(n);
            let mut holders: Vec<u32> = vec![0; n];
            for op in ops {
                match op {
                    Op::Allocate => {
                        let free_before = pool.num_free();
                        match pool.allocate() {
                            Some(b) => {
                                prop_assert_eq!(holders[b.index()], 0, "allocated a held block");
                                holders[b.index()] = 1;
                                prop_assert_eq!(pool.hash_of(b), None);
                            }
                            None => prop_assert_eq!(free_before, 0),
                        }
                    }
                    Op::Release(i) => {
                        let b = BlockId((i % n) as u32);
                        if holders[b.index()] > 0 {
                            pool.release(b);
                            holders[b.index()] -= 1;
                        }
                    }
                    Op::Acquire(i) => {
                        let b = BlockId((i % n) as u32);
                        // Only held or cached blocks may be acquired.
                        if holders[b.index()] > 0 || pool.hash_of(b).is_some() {
                            pool.acquire(b);
                            holders[b.index()] += 1;
                        }
                    }
                    Op::Register(i, h) => {
                        let b = BlockId((i % n) as u32);
                        if holders[b.index()] > 0 {
                            pool.register(b, key(h));
                        }
                    }
                    Op::Lookup(h) => {
                        if let Some(b) = pool.lookup(key(h)) {
                            prop_assert_eq!(pool.hash_of(b), Some(key(h)));
                        }
                    }
                }
                for (b, &held) in holders.iter().enumerate() {
                    prop_assert_eq!(pool.ref_count(BlockId(b as u32)), held);
                }
                let free = holders.iter().filter(|&&c| c == 0).count();
                prop_assert_eq!(pool.num_free(), free);
                let mut seen = std::collections::HashSet::new();
                for b in 0..n {
                    if let Some(h) = pool.hash_of(BlockId(b as u32)) {
                        prop_assert!(seen.insert(h), "hash {:?} on two blocks", h);
                        prop_assert_eq!(pool.lookup(h), Some(BlockId(b as u32)));
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut pool = BlockPool::new(2);
        let b = pool.allocate().unwrap();
        pool.release(b);
        pool.release(b);
    }

    #[test]
    fn freed_blocks_keep_their_prefix_until_reused_lru_first() {
        let mut pool = BlockPool::new(2);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.register(a, key(1));
        pool.register(b, key(2));
        pool.release(a);
        pool.release(b);
        assert_eq!(pool.lookup(key(1)), Some(a));
        let c = pool.allocate().unwrap();
        assert_eq!(c, a, "least recently freed goes first");
        assert_eq!(pool.lookup(key(1)), None);
        assert_eq!(pool.lookup(key(2)), Some(b));
    }

    #[test]
    fn block_hash_is_sha256_of_an_unambiguous_encoding() {
        // Known answer, from Python's hashlib: SHA-256 of
        // [0] ++ 2u64 ++ 1u32 ++ 2u32 ++ 0u64, little-endian.
        let want = "707bf01b66c92492fd91edcc3e8615334f8f18c48034720b29c9f0e44a3132d1";
        let root = hash_block(None, &[1, 2], 0);
        let hex: String = root.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want);
        // Chaining, token order, extra keys and the parent's presence all
        // change the hash.
        assert_ne!(hash_block(Some(root), &[1, 2], 0), root);
        assert_ne!(hash_block(None, &[2, 1], 0), root);
        assert_ne!(hash_block(None, &[1, 2], 1), root);
        assert_ne!(hash_block(Some(BlockHash([0; 32])), &[1, 2], 0), root);
    }

    #[test]
    fn reset_reports_all_blocks_cleared() {
        let mut pool = BlockPool::new(2);
        pool.events().enable();
        let b = pool.allocate().unwrap();
        assert!(pool.register(b, key(1)));
        assert!(!pool.register(b, key(2)), "a block holds one prefix");
        pool.reset_prefix_cache();
        assert_eq!(pool.events().drain(), [KvEvent::AllBlocksCleared]);
        assert_eq!(pool.lookup(key(1)), None);
    }
}
