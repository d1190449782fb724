//! Identifier newtypes shared by every layer of the server, so that a block
//! index can never be passed where a token id is expected.

use std::fmt;

/// A vocabulary id.
pub type TokenId = u32;

/// Index of a KV-cache block in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

impl BlockId {
    /// The block's index as a `usize`, for addressing KV storage.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One sequence inside the engine (a request with `n > 1` owns several).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq-{}", self.0)
    }
}

/// A client request as the engine knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req-{}", self.0)
    }
}
