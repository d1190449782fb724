//! The KV tensors themselves: per layer, one K and one V buffer laid out by
//! head and block, `[kv_head][block][..]`, so one head's part of a block is
//! contiguous and the attention kernel streams it without gathering, and a
//! head's consecutive blocks (a sequence's usual allocation) are one stream.

use anyhow::{Context, Result};
use half::f16;
use memmap2::MmapMut;
use std::marker::PhantomData;

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

    /// Offset of one head's part of `block` in a layer buffer.
    pub fn head_base(&self, block: usize, head: usize) -> usize {
        (head * self.num_blocks + block) * self.block_size * self.head_dim
    }

    /// Bytes one token occupies across all layers, K and V.
    pub fn bytes_per_token(&self, num_layers: usize, dtype: KvDtype) -> usize {
        2 * num_layers * self.num_kv_heads * self.head_dim * dtype.size()
    }
}

/// Where one token's key and value for one head live in a layer's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotAddr {
    /// Block index in the pool.
    pub block: usize,
    /// KV head.
    pub head: usize,
    /// Slot within the block.
    pub slot: usize,
}

/// Element types the cache stores.
pub trait KvElem: Copy + Send + Sync + 'static {
    /// Zero.
    const ZERO: Self;
    /// Rounds an f32 to this type.
    fn from_f32(x: f32) -> Self;
    /// Widens to f32.
    fn to_f32(self) -> f32;
}

impl KvElem for f16 {
    const ZERO: Self = f16::ZERO;
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl KvElem for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// One layer's keys and values in one element type.
///
/// Within a block, one head's values are stored slot-major (`[slot][dim]`,
/// a token's value row is contiguous) and its keys dimension-major
/// (`[dim][slot]`): a SIMD vector then holds one dimension of consecutive
/// keys, so scores for many keys accumulate lane-wise without a horizontal
/// sum per key.
pub struct KvPair<E> {
    k: KvBuffer<E>,
    v: KvBuffer<E>,
}

/// One layer's keys or values in an anonymous mapping: zeroed, page-aligned
/// (vector loads of a head's part of a block never straddle cache lines) and
/// committed only when touched. On Linux it asks for transparent huge pages,
/// since decode streams the whole cache and 4 KiB pages cost a TLB walk
/// (two levels deep under a hypervisor) every 4 KiB; on the development VM
/// this made no measurable difference, but it costs nothing.
struct KvBuffer<E> {
    map: MmapMut,
    len: usize,
    elem: PhantomData<E>,
}

impl<E: KvElem> KvBuffer<E> {
    fn zeros(len: usize) -> Result<Self> {
        let bytes = len * std::mem::size_of::<E>();
        let map = MmapMut::map_anon(bytes.max(1))
            .with_context(|| format!("cannot map {bytes} bytes for the KV cache"))?;
        // Only a hint: without huge pages the cache works the same.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(Self {
            map,
            len,
            elem: PhantomData,
        })
    }

    fn get(&self) -> &[E] {
        // SAFETY: the mapping holds `len` elements' bytes, is page-aligned,
        // and every bit pattern is a valid `E` (plain floats).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast(), self.len) }
    }

    fn get_mut(&mut self) -> &mut [E] {
        // SAFETY: as in `get`, and `&mut self` makes the view exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast(), self.len) }
    }
}

impl<E: KvElem> KvPair<E> {
    fn zeros(n: usize) -> Result<Self> {
        Ok(Self {
            k: KvBuffer::zeros(n)?,
            v: KvBuffer::zeros(n)?,
        })
    }

    /// All keys of the layer, laid out as described on the type.
    pub fn keys(&self) -> &[E] {
        self.k.get()
    }

    /// All values of the layer, laid out as described on the type.
    pub fn values(&self) -> &[E] {
        self.v.get()
    }

    fn write(&mut self, geom: &KvGeometry, at: SlotAddr, k: &[f32], v: &[f32]) {
        let base = geom.head_base(at.block, at.head);
        let keys = self.k.get_mut();
        for (d, x) in k.iter().enumerate() {
            keys[base + d * geom.block_size + at.slot] = E::from_f32(*x);
        }
        let row = &mut self.v.get_mut()[base + at.slot * geom.head_dim..][..geom.head_dim];
        for (d, x) in row.iter_mut().zip(v) {
            *d = E::from_f32(*x);
        }
    }

    fn read(&self, geom: &KvGeometry, at: SlotAddr, k: &mut [f32], v: &mut [f32]) {
        let base = geom.head_base(at.block, at.head);
        let keys = self.keys();
        for (d, x) in k.iter_mut().enumerate() {
            *x = keys[base + d * geom.block_size + at.slot].to_f32();
        }
        for (x, e) in v
            .iter_mut()
            .zip(&self.values()[base + at.slot * geom.head_dim..])
        {
            *x = e.to_f32();
        }
    }

    fn commit(&mut self) {
        use rayon::prelude::*;
        let per_page = (4096 / std::mem::size_of::<E>()).max(1);
        for buf in [&mut self.k, &mut self.v] {
            buf.get_mut()
                .par_chunks_mut(per_page * 256)
                .for_each(|chunk| {
                    for page in chunk.chunks_mut(per_page) {
                        // SAFETY: `page` is a valid, exclusive element; the
                        // volatile write is not elided, so the page is faulted in.
                        unsafe { std::ptr::write_volatile(page.as_mut_ptr(), E::ZERO) };
                    }
                });
        }
    }
}

/// K and V of one layer, in the cache's element type.
pub enum LayerKv {
    /// Half precision.
    F16(KvPair<f16>),
    /// Single precision.
    F32(KvPair<f32>),
}

impl LayerKv {
    fn zeros(dtype: KvDtype, n: usize) -> Result<Self> {
        Ok(match dtype {
            KvDtype::F16 => LayerKv::F16(KvPair::zeros(n)?),
            KvDtype::F32 => LayerKv::F32(KvPair::zeros(n)?),
        })
    }

    /// Stores one token's key and value (`head_dim` each) at `at`.
    pub fn write(&mut self, geom: &KvGeometry, at: SlotAddr, k: &[f32], v: &[f32]) {
        match self {
            LayerKv::F16(p) => p.write(geom, at, k, v),
            LayerKv::F32(p) => p.write(geom, at, k, v),
        }
    }

    /// Loads one token's key and value from `at`.
    pub fn read(&self, geom: &KvGeometry, at: SlotAddr, k: &mut [f32], v: &mut [f32]) {
        match self {
            LayerKv::F16(p) => p.read(geom, at, k, v),
            LayerKv::F32(p) => p.read(geom, at, k, v),
        }
    }

    fn commit(&mut self) {
        match self {
            LayerKv::F16(p) => p.commit(),
            LayerKv::F32(p) => p.commit(),
        }
    }
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
    /// Allocates `geometry.num_blocks` zeroed blocks for each of
    /// `num_layers` layers; see [`KvCache::commit`] for residency.
    pub fn new(geometry: KvGeometry, num_layers: usize, dtype: KvDtype) -> Result<Self> {
        let n = geometry.num_blocks * geometry.block_elems();
        let layers = (0..num_layers)
            .map(|_| LayerKv::zeros(dtype, n))
            .collect::<Result<_>>()?;
        Ok(Self {
            geometry,
            dtype,
            layers,
        })
    }

    /// Touches every page of the pool so the whole budget is resident now:
    /// a server then fails at startup rather than mid-request when the
    /// memory is not there, and its RSS stays flat as blocks are reused.
    pub fn commit(&mut self) {
        for layer in &mut self.layers {
            layer.commit();
        }
    }
}
