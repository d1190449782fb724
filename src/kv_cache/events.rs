//! What the prefix cache tells the outside world: blocks whose contents
//! became reusable, blocks evicted, the cache cleared. A router that knows
//! which replica holds which prefix can send a request where its prompt is
//! already computed (llm-d's precise prefix-cache scorer reads these as
//! vLLM's KV-cache events).
//!
//! The pool only appends to an in-memory list that its owner drains once
//! per engine step; publishing is someone else's job, so the cache stays a
//! bottom layer that knows no sockets or formats. When nobody listens the
//! list is never enabled and nothing is recorded.

use super::block_pool::BlockHash;
use crate::types::TokenId;

/// A change to the set of cached prefix blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    /// Consecutive full blocks of one sequence entered the prefix cache.
    BlockStored {
        /// Their hashes, in position order.
        block_hashes: Vec<BlockHash>,
        /// The hash of the block before the first, `None` at the start of a
        /// prompt.
        parent: Option<BlockHash>,
        /// Their token ids, `block_size` per block.
        token_ids: Vec<TokenId>,
        /// Tokens per block.
        block_size: usize,
    },
    /// Blocks left the prefix cache: their memory was handed to new work.
    BlockRemoved {
        /// Their hashes.
        block_hashes: Vec<BlockHash>,
    },
    /// Every cached prefix was forgotten.
    AllBlocksCleared,
}

/// Events recorded since the last drain, or nothing at all when disabled.
#[derive(Debug, Default)]
pub struct EventLog {
    events: Option<Vec<KvEvent>>,
}

impl EventLog {
    /// Starts recording.
    pub fn enable(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// Whether events are being recorded.
    pub fn enabled(&self) -> bool {
        self.events.is_some()
    }

    /// Records `event`; removals in a row merge into one event, as an
    /// eviction burst frees many blocks in one step.
    pub fn push(&mut self, event: KvEvent) {
        let Some(events) = &mut self.events else {
            return;
        };
        if let (
            Some(KvEvent::BlockRemoved { block_hashes }),
            KvEvent::BlockRemoved { block_hashes: more },
        ) = (events.last_mut(), &event)
        {
            block_hashes.extend_from_slice(more);
            return;
        }
        events.push(event);
    }

    /// The events since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }
}
