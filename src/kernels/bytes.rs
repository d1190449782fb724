//! The bytes behind a weight as the loader found them: borrowed from a
//! checkpoint's memory map where the layout allows (dense 16-bit
//! safetensors), owned otherwise. Kernels read them as a plain byte slice,
//! so where a weight came from never reaches the compute code.

use std::sync::Arc;

/// Element type of a dense 16-bit weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfKind {
    /// bfloat16: the top half of an f32.
    Bf16,
    /// IEEE binary16.
    F16,
}

impl HalfKind {
    /// The name checkpoints use for it.
    pub fn name(self) -> &'static str {
        match self {
            HalfKind::Bf16 => "bf16",
            HalfKind::F16 => "f16",
        }
    }
}

/// A weight's raw bytes.
#[derive(Clone)]
pub enum WeightBytes {
    /// Copied into memory (GGUF tensors read through a file handle, tensors
    /// converted at load).
    Owned(Arc<Vec<u8>>),
    /// A range of a read-only memory map shared by all tensors of a shard:
    /// the page cache holds the weights once, and they are never copied.
    Mapped {
        /// The whole shard.
        map: Arc<memmap2::Mmap>,
        /// First byte of the tensor in the map.
        offset: usize,
        /// Length in bytes.
        len: usize,
    },
}

impl WeightBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            WeightBytes::Owned(v) => v,
            WeightBytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            WeightBytes::Owned(v) => v.len(),
            WeightBytes::Mapped { len, .. } => *len,
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
