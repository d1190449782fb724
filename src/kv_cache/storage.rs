//! The KV tensors themselves: per layer, one K and one V buffer laid out by
//! block, `[block][kv_head][slot][dim]`, so one head's keys in one block are
//! contiguous and the attention kernel streams them without gathering.

use half::f16;

/// Element type of the stored keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    /// Half precision: the default, half the memory traffic of f32.
    F16,
    /// Full precision, for exact parity checks against f32 references.
    F32,
}

impl KvDtype {
    /// Bytes per stored element.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F16 => 2,
            KvDtype::F32 => 4,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f16" | "float16" | "auto" => Ok(KvDtype::F16),
            "f32" | "float32" => Ok(KvDtype::F32),
            other => Err(format!(
                "unknown KV cache dtype `{other}` (expected f16 or f32)"
            )),
        }
    }
}

/// Shape of the paged cache shared by every layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvGeometry {
    /// Tokens per block.
    pub block_size: usize,
    /// Number of blocks in the pool.
    pub num_blocks: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
}

impl KvGeometry {
    /// Elements of one block of one layer's K (or V).
    pub fn block_elems(&self) -> usize {
        self.block_size * self.num_kv_heads * self.head_dim
    }

    /// Offset of `(block, head, slot)` in a layer buffer.
    pub fn offset(&self, block: usize, head: usize, slot: usize) -> usize {
        ((block * self.num_kv_heads + head) * self.block_size + slot) * self.head_dim
    }

    /// Bytes one token occupies across all layers, K and V.
    pub fn bytes_per_token(&self, num_layers: usize, dtype: KvDtype) -> usize {
        2 * num_layers * self.num_kv_heads * self.head_dim * dtype.size()
    }
}

/// One layer's K or V storage.
pub enum KvBuf {
    /// Half-precision elements.
    F16(Vec<f16>),
    /// Single-precision elements.
    F32(Vec<f32>),
}

impl KvBuf {
    fn zeros(dtype: KvDtype, n: usize) -> Self {
        use half::vec::HalfBitsVecExt;
        match dtype {
            // Zeroed integer vectors come from calloc, so the pool's pages are
            // committed only when first written, not all at startup.
            KvDtype::F16 => KvBuf::F16(vec![0u16; n].reinterpret_into()),
            KvDtype::F32 => KvBuf::F32(vec![0.0; n]),
        }
    }

    /// Stores `src` at element offset `at`.
    pub fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            KvBuf::F16(b) => {
                for (d, s) in b[at..at + src.len()].iter_mut().zip(src) {
                    *d = f16::from_f32(*s);
                }
            }
            KvBuf::F32(b) => b[at..at + src.len()].copy_from_slice(src),
        }
    }

    /// Loads `dst.len()` elements from offset `at` as f32.
    #[inline(always)]
    pub fn read(&self, at: usize, dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        match self {
            KvBuf::F16(b) => b[at..at + dst.len()].convert_to_f32_slice(dst),
            KvBuf::F32(b) => dst.copy_from_slice(&b[at..at + dst.len()]),
        }
    }
}

/// K and V of one layer.
pub struct LayerKv {
    /// Keys.
    pub k: KvBuf,
    /// Values.
    pub v: KvBuf,
}

/// The whole paged cache, allocated once at startup with a fixed budget.
pub struct KvCache {
    /// Shared shape.
    pub geometry: KvGeometry,
    /// Element type.
    pub dtype: KvDtype,
    /// One entry per decoder layer.
    pub layers: Vec<LayerKv>,
}

impl KvCache {
    /// Allocates `geometry.num_blocks` blocks for each of `num_layers` layers.
    pub fn new(geometry: KvGeometry, num_layers: usize, dtype: KvDtype) -> Self {
        let n = geometry.num_blocks * geometry.block_elems();
        let layers = (0..num_layers)
            .map(|_| LayerKv {
                k: KvBuf::zeros(dtype, n),
                v: KvBuf::zeros(dtype, n),
            })
            .collect();
        Self {
            geometry,
            dtype,
            layers,
        }
    }
}
