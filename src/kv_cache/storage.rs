//! The KV tensors themselves: per layer, one K and one V buffer laid out by
//! head and block, `[kv_head][block][..]`, so one head's part of a block is
//! contiguous and the attention kernel streams it without gathering, and a
//! head's consecutive blocks (a sequence's usual allocation) are one stream.

use super::spec::{KvSpec, LayerKvSpec};
use anyhow::{Context, Result};
use half::{bf16, f16};
use memmap2::MmapMut;
use std::marker::PhantomData;

/// Element type of the stored keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// Half precision: the default, half the memory traffic of f32.
    #[default]
    F16,
    /// bfloat16: f32's range with 8 significant bits (llama.cpp's
    /// `-ctk bf16`; what vLLM caches for bf16 checkpoints).
    Bf16,
    /// 8-bit float, OCP E4M3 without scaling (vLLM's `fp8`): half the
    /// memory and traffic of f16, for long reasoning traces, at 4
    /// significant bits; magnitudes saturate at 448 and flush below 2⁻¹⁰.
    Fp8E4m3,
    /// Full precision, for exact parity checks against f32 references.
    F32,
}

impl KvDtype {
    /// Bytes per stored element.
    pub fn size(self) -> usize {
        match self {
            KvDtype::Fp8E4m3 => 1,
            KvDtype::F16 | KvDtype::Bf16 => 2,
            KvDtype::F32 => 4,
        }
    }
}

impl std::fmt::Display for KvDtype {
    /// The name `--kv-cache-dtype` takes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvDtype::F16 => "f16",
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp8E4m3 => "fp8",
            KvDtype::F32 => "f32",
        })
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f16" | "float16" | "auto" => Ok(KvDtype::F16),
            "bf16" | "bfloat16" => Ok(KvDtype::Bf16),
            "fp8" | "fp8_e4m3" => Ok(KvDtype::Fp8E4m3),
            "f32" | "float32" => Ok(KvDtype::F32),
            other => Err(format!(
                "unknown KV cache dtype `{other}` (expected f16, bf16, fp8 or f32)"
            )),
        }
    }
}

/// Shape of one layer's part of the paged cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvGeometry {
    /// Tokens per block.
    pub block_size: usize,
    /// Number of blocks in the pool.
    pub num_blocks: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Elements of one head's key.
    pub k_dim: usize,
    /// Elements of one head's value; 0 when values are read from the keys
    /// (a latent layer, see [`super::spec::LayerKvSpec::Latent`]).
    pub v_dim: usize,
}

impl KvGeometry {
    /// A layer whose keys and values are both `head_dim` wide.
    pub fn square(
        block_size: usize,
        num_blocks: usize,
        num_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        Self {
            block_size,
            num_blocks,
            num_kv_heads,
            k_dim: head_dim,
            v_dim: head_dim,
        }
    }

    /// Offset of one head's keys of `block` in the layer's key buffer.
    pub fn k_base(&self, block: usize, head: usize) -> usize {
        (head * self.num_blocks + block) * self.block_size * self.k_dim
    }

    /// Offset of one head's values of `block` in the layer's value buffer.
    pub fn v_base(&self, block: usize, head: usize) -> usize {
        (head * self.num_blocks + block) * self.block_size * self.v_dim
    }

    fn k_elems(&self) -> usize {
        self.num_blocks * self.block_size * self.num_kv_heads * self.k_dim
    }

    fn v_elems(&self) -> usize {
        self.num_blocks * self.block_size * self.num_kv_heads * self.v_dim
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

impl KvElem for bf16 {
    const ZERO: Self = bf16::ZERO;
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// An OCP 8-bit float, E4M3 ("fn": no infinities): sign, 4 exponent bits
/// with bias 7, 3 mantissa bits; largest finite 448, smallest subnormal 2⁻⁹.
/// Code `0x7F`/`0xFF` (NaN) is never written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct Fp8E4m3(pub u8);

impl Fp8E4m3 {
    /// Largest finite magnitude.
    pub const MAX: f32 = 448.0;
}

impl KvElem for Fp8E4m3 {
    const ZERO: Self = Fp8E4m3(0);

    /// Rounds to nearest, ties to even; magnitudes beyond 448 (infinities
    /// included) saturate to ±448, as a saturating cast does. NaN is stored
    /// as 0: a NaN key or value means the model's residual stream already
    /// carries it, so the cache need not.
    fn from_f32(x: f32) -> Self {
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = x.abs();
        if a.is_nan() {
            return Fp8E4m3(0);
        }
        if a >= Self::MAX {
            return Fp8E4m3(sign | 0x7E);
        }
        // The binade's exponent; below 2⁻⁶ the subnormals share the
        // quantum of the lowest normal binade.
        let e = ((a.to_bits() >> 23) as i32 - 127).max(-6);
        // Dividing by a power of two is exact, so this rounds only once.
        let n = (a * (2f32).powi(3 - e)).round_ties_even() as u8;
        let code = if n < 8 {
            // Subnormal (only when e == -6): the code is the mantissa.
            n
        } else if n == 16 {
            // Rounded up into the next binade.
            ((e + 8) as u8) << 3
        } else {
            (((e + 7) as u8) << 3) | (n - 8)
        };
        Fp8E4m3(sign | code)
    }

    fn to_f32(self) -> f32 {
        let exp = i32::from((self.0 >> 3) & 0xF);
        let mant = f32::from(self.0 & 7);
        let a = if exp == 0 {
            mant * (2f32).powi(-9)
        } else {
            (8.0 + mant) * (2f32).powi(exp - 10)
        };
        if self.0 & 0x80 != 0 {
            -a
        } else {
            a
        }
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
    fn zeros(geom: &KvGeometry) -> Result<Self> {
        Ok(Self {
            k: KvBuffer::zeros(geom.k_elems())?,
            v: KvBuffer::zeros(geom.v_elems())?,
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
        let base = geom.k_base(at.block, at.head);
        let keys = self.k.get_mut();
        for (d, x) in k.iter().enumerate() {
            keys[base + d * geom.block_size + at.slot] = E::from_f32(*x);
        }
        let base = geom.v_base(at.block, at.head);
        let row = &mut self.v.get_mut()[base + at.slot * geom.v_dim..][..geom.v_dim];
        for (d, x) in row.iter_mut().zip(v) {
            *d = E::from_f32(*x);
        }
    }

    fn read(&self, geom: &KvGeometry, at: SlotAddr, k: &mut [f32], v: &mut [f32]) {
        let base = geom.k_base(at.block, at.head);
        let keys = self.keys();
        for (d, x) in k.iter_mut().enumerate() {
            *x = keys[base + d * geom.block_size + at.slot].to_f32();
        }
        let base = geom.v_base(at.block, at.head);
        for (x, e) in v
            .iter_mut()
            .zip(&self.values()[base + at.slot * geom.v_dim..][..geom.v_dim])
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
    /// bfloat16.
    Bf16(KvPair<bf16>),
    /// 8-bit float.
    Fp8E4m3(KvPair<Fp8E4m3>),
    /// Single precision.
    F32(KvPair<f32>),
}

/// Runs `$body` with `$p` bound to the layer's [`KvPair`], whatever its
/// element type.
macro_rules! with_pair {
    ($layer:expr, $p:ident => $body:expr) => {
        match $layer {
            LayerKv::F16($p) => $body,
            LayerKv::Bf16($p) => $body,
            LayerKv::Fp8E4m3($p) => $body,
            LayerKv::F32($p) => $body,
        }
    };
}
pub(crate) use with_pair;

impl LayerKv {
    fn zeros(dtype: KvDtype, geom: &KvGeometry) -> Result<Self> {
        Ok(match dtype {
            KvDtype::F16 => LayerKv::F16(KvPair::zeros(geom)?),
            KvDtype::Bf16 => LayerKv::Bf16(KvPair::zeros(geom)?),
            KvDtype::Fp8E4m3 => LayerKv::Fp8E4m3(KvPair::zeros(geom)?),
            KvDtype::F32 => LayerKv::F32(KvPair::zeros(geom)?),
        })
    }

    /// Stores one token's key (`k_dim`) and value (`v_dim`) at `at`.
    pub fn write(&mut self, geom: &KvGeometry, at: SlotAddr, k: &[f32], v: &[f32]) {
        with_pair!(self, p => p.write(geom, at, k, v))
    }

    /// Loads one token's key and value from `at`.
    pub fn read(&self, geom: &KvGeometry, at: SlotAddr, k: &mut [f32], v: &mut [f32]) {
        with_pair!(self, p => p.read(geom, at, k, v))
    }

    fn commit(&mut self) {
        with_pair!(self, p => p.commit())
    }
}

/// The whole paged cache, allocated once at startup with a fixed budget.
pub struct KvCache {
    /// Element type.
    pub dtype: KvDtype,
    /// One entry per decoder layer.
    pub layers: Vec<LayerKv>,
    /// Each layer's shape, in the order of `layers`.
    pub geometries: Vec<KvGeometry>,
}

impl KvCache {
    /// Allocates `num_blocks` zeroed blocks of `block_size` tokens for every
    /// layer of `spec`; see [`KvCache::commit`] for residency.
    pub fn new(
        spec: &KvSpec,
        block_size: usize,
        num_blocks: usize,
        dtype: KvDtype,
    ) -> Result<Self> {
        let geometries: Vec<KvGeometry> = spec
            .layers
            .iter()
            .map(|l| l.geometry(block_size, num_blocks))
            .collect();
        let layers = geometries
            .iter()
            .map(|g| LayerKv::zeros(dtype, g))
            .collect::<Result<_>>()?;
        Ok(Self {
            dtype,
            layers,
            geometries,
        })
    }

    /// A cache of `num_layers` layers that all have `geometry`'s shape.
    pub fn uniform(geometry: KvGeometry, num_layers: usize, dtype: KvDtype) -> Result<Self> {
        let spec = KvSpec::uniform(
            LayerKvSpec::Full {
                num_kv_heads: geometry.num_kv_heads,
                k_dim: geometry.k_dim,
                v_dim: geometry.v_dim,
            },
            num_layers,
        );
        Self::new(&spec, geometry.block_size, geometry.num_blocks, dtype)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_round_trip() {
        for dtype in [KvDtype::F16, KvDtype::Bf16, KvDtype::Fp8E4m3, KvDtype::F32] {
            assert_eq!(dtype.to_string().parse::<KvDtype>(), Ok(dtype));
        }
        assert_eq!("fp8_e4m3".parse::<KvDtype>(), Ok(KvDtype::Fp8E4m3));
        assert!("int4".parse::<KvDtype>().unwrap_err().contains("int4"));
    }

    /// Every finite E4M3 code against its value from the format's
    /// definition, and back.
    #[test]
    fn fp8_codes_round_trip() {
        for code in 0..=255u8 {
            if code & 0x7F == 0x7F {
                continue;
            }
            let (exp, mant) = (i32::from((code >> 3) & 0xF), f64::from(code & 7));
            let magnitude = if exp == 0 {
                mant / 8.0 * 2f64.powi(-6)
            } else {
                (1.0 + mant / 8.0) * 2f64.powi(exp - 7)
            };
            let want = if code & 0x80 != 0 {
                -magnitude
            } else {
                magnitude
            };
            let x = Fp8E4m3(code).to_f32();
            assert_eq!(x as f64, want, "code {code:#04x}");
            let back = Fp8E4m3::from_f32(x);
            // ±0 both decode to zero; keep the sign.
            assert_eq!(back, Fp8E4m3(code), "value {x}");
        }
    }

    #[test]
    fn fp8_rounds_to_nearest_even_and_saturates() {
        let enc = |x: f32| Fp8E4m3::from_f32(x).to_f32();
        // 1.0625 is halfway between 1 and 1.125: ties go to the even 1.
        assert_eq!(enc(1.0625), 1.0);
        assert_eq!(enc(1.0626), 1.125);
        // Halfway between 1.125 and 1.25 goes to 1.25 (even mantissa).
        assert_eq!(enc(1.1875), 1.25);
        // 15.5 is halfway between 15 and 16: rounds up into the next binade.
        assert_eq!(enc(15.5), 16.0);
        assert_eq!(enc(-3.3), -3.25);
        // Subnormals: quantum 2⁻⁹; half of it ties to zero.
        assert_eq!(enc(3.0 * 2f32.powi(-9)), 3.0 * 2f32.powi(-9));
        assert_eq!(enc(2f32.powi(-10)), 0.0);
        assert_eq!(enc(1.5 * 2f32.powi(-10)), 2f32.powi(-9));
        assert_eq!(enc(1e-30), 0.0);
        for big in [448.0, 460.0, 500.0, 1e9, f32::INFINITY] {
            assert_eq!(enc(big), 448.0);
            assert_eq!(enc(-big), -448.0);
        }
        assert_eq!(enc(f32::NAN), 0.0);
    }

    /// Each element type stores what it promises: one token's key and value
    /// come back rounded to the type, at the right place.
    #[test]
    fn every_dtype_reads_back_its_rounded_values() {
        let geom = KvGeometry::square(8, 3, 2, 5);
        let k = [0.1f32, -2.5, 300.0, 0.02, 7.0];
        let v = [1.0f32, 0.33, -0.01, 65.0, -448.5];
        let at = SlotAddr {
            block: 2,
            head: 1,
            slot: 5,
        };
        fn rounded<E: KvElem>(x: &[f32]) -> Vec<f32> {
            x.iter().map(|x| E::from_f32(*x).to_f32()).collect()
        }
        for dtype in [KvDtype::F16, KvDtype::Bf16, KvDtype::Fp8E4m3, KvDtype::F32] {
            let mut cache = KvCache::uniform(geom, 1, dtype).unwrap();
            cache.layers[0].write(&geom, at, &k, &v);
            let (mut k2, mut v2) = ([0f32; 5], [0f32; 5]);
            cache.layers[0].read(&geom, at, &mut k2, &mut v2);
            let (want_k, want_v) = match dtype {
                KvDtype::F16 => (rounded::<f16>(&k), rounded::<f16>(&v)),
                KvDtype::Bf16 => (rounded::<bf16>(&k), rounded::<bf16>(&v)),
                KvDtype::Fp8E4m3 => (rounded::<Fp8E4m3>(&k), rounded::<Fp8E4m3>(&v)),
                KvDtype::F32 => (k.to_vec(), v.to_vec()),
            };
            assert_eq!(k2.to_vec(), want_k, "{dtype:?}");
            assert_eq!(v2.to_vec(), want_v, "{dtype:?}");
            let rel = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(a, b)| ((a - b) / b).abs())
                    .fold(0f32, f32::max)
            };
            // Within half a unit in the last place of each type's mantissa
            // (the fp8 value 448.5 saturates to 448, well inside).
            let bound = match dtype {
                KvDtype::F16 => 2f32.powi(-11),
                KvDtype::Bf16 => 2f32.powi(-8),
                KvDtype::Fp8E4m3 => 2f32.powi(-4),
                KvDtype::F32 => 0.0,
            };
            assert!(rel(&k2, &k) <= bound, "{dtype:?} keys {k2:?}");
            assert!(rel(&v2, &v) <= bound, "{dtype:?} values {v2:?}");
            let other = SlotAddr { slot: 4, ..at };
            cache.layers[0].read(&geom, other, &mut k2, &mut v2);
            assert!(k2.iter().chain(&v2).all(|x| *x == 0.0), "{dtype:?}");
        }
    }

    /// Keys and values of different widths (MLA-style shapes) land in their
    /// own buffers without overlapping a neighbouring head or slot.
    #[test]
    fn unequal_key_and_value_widths_round_trip() {
        let geom = KvGeometry {
            block_size: 4,
            num_blocks: 3,
            num_kv_heads: 2,
            k_dim: 3,
            v_dim: 5,
        };
        let spec = KvSpec::uniform(
            LayerKvSpec::Full {
                num_kv_heads: 2,
                k_dim: 3,
                v_dim: 5,
            },
            1,
        );
        let mut cache = KvCache::new(&spec, 4, 3, KvDtype::F32).unwrap();
        assert_eq!(cache.geometries[0], geom);
        let mut n = 0f32;
        let mut all = Vec::new();
        for block in 0..3 {
            for head in 0..2 {
                for slot in 0..4 {
                    let at = SlotAddr { block, head, slot };
                    let k: Vec<f32> = (0..3).map(|i| n + i as f32).collect();
                    let v: Vec<f32> = (0..5).map(|i| -n - i as f32).collect();
                    cache.layers[0].write(&geom, at, &k, &v);
                    all.push((at, k, v));
                    n += 10.0;
                }
            }
        }
        for (at, k, v) in all {
            let (mut k2, mut v2) = ([0f32; 3], [0f32; 5]);
            cache.layers[0].read(&geom, at, &mut k2, &mut v2);
            assert_eq!((k2.to_vec(), v2.to_vec()), (k, v), "{at:?}");
        }
    }
}
