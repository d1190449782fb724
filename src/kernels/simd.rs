//! A 16-lane f32 vector with one interface over AVX-512, AVX2 (two 8-lane
//! halves) and plain arrays, so a kernel body is written once and compiled
//! per instruction set. Every operation is exactly rounded IEEE arithmetic
//! (fused multiply-add included) and reductions use one fixed order, so the
//! three implementations give bit-identical results.

use super::isa::{KernelIsa, Level};
use crate::kv_cache::storage::{Fp8E4m3, KvElem};
use half::{bf16, f16};

/// Lanes per vector.
pub const LANES: usize = 16;

/// The instruction sets that bodies written over [`F32x16`] are compiled
/// for: the paged attention and the elementwise ops dispatch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl KernelIsa for Isa {
    #[cfg(target_arch = "x86_64")]
    const ALL: &'static [Isa] = &[Isa::Portable, Isa::Avx2, Isa::Avx512];
    #[cfg(not(target_arch = "x86_64"))]
    const ALL: &'static [Isa] = &[Isa::Portable];

    fn level(self) -> Level {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Level::Avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Level::Avx2,
            Isa::Portable => Level::Scalar,
        }
    }

    fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "AVX-512F",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "AVX2+FMA+F16C",
            Isa::Portable => "portable",
        }
    }

    /// Whether this CPU can run the kernel body of `self`.
    fn is_supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => super::isa::cpu().avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => super::isa::cpu().avx2,
            Isa::Portable => true,
        }
    }
}

/// Sixteen f32 lanes. Methods are `unsafe` because they are only sound
/// inside a function compiled for the implementation's instruction set, and
/// loads and stores take raw pointers to 16 valid elements.
pub trait F32x16: Copy {
    /// All lanes `x`.
    unsafe fn splat(x: f32) -> Self;
    /// Loads 16 f32 from `p`.
    unsafe fn load(p: *const f32) -> Self;
    /// Loads 16 f16 from `p`, widened to f32.
    unsafe fn load_f16(p: *const f16) -> Self;
    /// Loads 16 bf16 from `p`, widened to f32.
    unsafe fn load_bf16(p: *const bf16) -> Self;
    /// Loads 16 E4M3 floats from `p`, widened to f32 and divided by 2⁸
    /// (`SimdLoad::SCALE`).
    unsafe fn load_fp8(p: *const Fp8E4m3) -> Self;
    /// Stores the lanes to `p`.
    unsafe fn store(self, p: *mut f32);
    /// Lane-wise `self + o`.
    unsafe fn add(self, o: Self) -> Self;
    /// Lane-wise `self * o`.
    unsafe fn mul(self, o: Self) -> Self;
    /// Lane-wise `self / o`.
    unsafe fn div(self, o: Self) -> Self;
    /// Lane-wise `self * b + c` with one rounding.
    unsafe fn fma(self, b: Self, c: Self) -> Self;
    /// Lane-wise maximum.
    unsafe fn max(self, o: Self) -> Self;
    /// Lane-wise minimum.
    unsafe fn min(self, o: Self) -> Self;
    /// Rounds to the nearest integer, ties to even.
    unsafe fn round(self) -> Self;
    /// `2^self` for lanes holding integers in `-126..=127`.
    unsafe fn pow2i(self) -> Self;
    /// `v` where `self >= t`, zero elsewhere.
    unsafe fn zero_below(self, t: f32, v: Self) -> Self;

    /// All lanes zero.
    #[inline(always)]
    unsafe fn zero() -> Self {
        Self::splat(0.0)
    }

    /// Sum of the lanes, pairwise in a fixed tree.
    #[inline(always)]
    unsafe fn reduce_add(self) -> f32 {
        let mut a = [0f32; LANES];
        self.store(a.as_mut_ptr());
        let mut n = LANES;
        while n > 1 {
            n /= 2;
            for i in 0..n {
                a[i] += a[i + n];
            }
        }
        a[0]
    }

    /// Largest lane.
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        let mut a = [0f32; LANES];
        self.store(a.as_mut_ptr());
        a.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
    }

    /// `e^self`, relative error below 2e-7; exactly zero below
    /// `ln(f32::MIN_POSITIVE)` (so `-inf` gives 0).
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        const LOW: f32 = -87.336_54;
        const HIGH: f32 = 88.0;
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        let x = self.max(Self::splat(LOW)).min(Self::splat(HIGH));
        let n = x.mul(Self::splat(std::f32::consts::LOG2_E)).round();
        let r = n.fma(Self::splat(-LN2_HI), x);
        let r = n.fma(Self::splat(-LN2_LO), r);
        // Taylor series of e^r to degree 7 on |r| <= ln2/2.
        let mut p = Self::splat(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = p.fma(r, Self::splat(c));
        }
        self.zero_below(LOW, p.mul(n.pow2i()))
    }
}

/// Asks the CPU to start loading the cache lines of `len` elements from `p`
/// into L1. Only a hint: it never faults and changes no result, so `p` need
/// not point into a live allocation.
#[inline(always)]
pub fn prefetch<T>(p: *const T, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = len * std::mem::size_of::<T>();
        let base = p.cast::<i8>();
        for off in (0..bytes).step_by(64) {
            // SAFETY: a prefetch reads nothing architecturally and cannot
            // fault; SSE is part of the x86-64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Element types a kernel can load sixteen at a time as f32.
pub trait SimdLoad: KvElem {
    /// The loads return the stored values divided by this power of two, so
    /// a widening may leave out its last multiply; a kernel applies it once
    /// to what it computes from them (exact, as it is a power of two).
    const SCALE: f32 = 1.0;
    /// Loads 16 elements from `p`.
    unsafe fn load16<S: F32x16>(p: *const Self) -> S;
    /// Loads `n < 16` elements from `p`, the other lanes zero.
    #[inline(always)]
    unsafe fn load_partial<S: F32x16>(p: *const Self, n: usize) -> S {
        let mut a = [Self::ZERO; LANES];
        std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), n);
        Self::load16(a.as_ptr())
    }
}

impl SimdLoad for f32 {
    #[inline(always)]
    unsafe fn load16<S: F32x16>(p: *const f32) -> S {
        S::load(p)
    }
}

impl SimdLoad for f16 {
    #[inline(always)]
    unsafe fn load16<S: F32x16>(p: *const f16) -> S {
        S::load_f16(p)
    }
}

impl SimdLoad for bf16 {
    #[inline(always)]
    unsafe fn load16<S: F32x16>(p: *const bf16) -> S {
        S::load_bf16(p)
    }
}

/// Every E4M3 value is 2⁸ times the f16 whose bits are the code's sign at
/// bit 15 and its exponent and mantissa (`code & 0x7F`) at bits 7..=13:
/// f16's exponent bias, 15, is E4M3's plus 8, and subnormals map to
/// subnormals the same way. So widening is a few integer ops and an f16
/// conversion, and the 2⁸ is left to [`SimdLoad::SCALE`].
impl SimdLoad for Fp8E4m3 {
    const SCALE: f32 = 256.0;
    #[inline(always)]
    unsafe fn load16<S: F32x16>(p: *const Fp8E4m3) -> S {
        S::load_fp8(p)
    }
}

/// The portable implementation: plain arrays, for any CPU.
#[derive(Clone, Copy)]
pub struct Portable([f32; LANES]);

impl Portable {
    #[inline(always)]
    fn map2(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Portable(std::array::from_fn(|i| f(self.0[i], o.0[i])))
    }
}

impl F32x16 for Portable {
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Portable([x; LANES])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Portable(std::ptr::read_unaligned(p as *const [f32; LANES]))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> Self {
        let h = std::ptr::read_unaligned(p as *const [f16; LANES]);
        Portable(h.map(f16::to_f32))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const bf16) -> Self {
        let h = std::ptr::read_unaligned(p as *const [bf16; LANES]);
        Portable(h.map(bf16::to_f32))
    }
    #[inline(always)]
    unsafe fn load_fp8(p: *const Fp8E4m3) -> Self {
        let h = std::ptr::read_unaligned(p as *const [Fp8E4m3; LANES]);
        Portable(h.map(|x| x.to_f32() / <Fp8E4m3 as SimdLoad>::SCALE))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; LANES], self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        self.map2(o, |a, b| a + b)
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        self.map2(o, |a, b| a * b)
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        self.map2(o, |a, b| a / b)
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        Portable(std::array::from_fn(|i| self.0[i].mul_add(b.0[i], c.0[i])))
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        // Same operand order as `maxps`: the second operand wins on NaN.
        self.map2(o, |a, b| if a > b { a } else { b })
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        self.map2(o, |a, b| if a < b { a } else { b })
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        Portable(self.0.map(f32::round_ties_even))
    }
    #[inline(always)]
    unsafe fn pow2i(self) -> Self {
        Portable(
            self.0
                .map(|n| f32::from_bits(((n as i32 + 127) as u32) << 23)),
        )
    }
    #[inline(always)]
    unsafe fn zero_below(self, t: f32, v: Self) -> Self {
        Portable(std::array::from_fn(|i| {
            if self.0[i] >= t {
                v.0[i]
            } else {
                0.0
            }
        }))
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{reduce_add_512, Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{F32x16, Fp8E4m3, LANES};
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// AVX-512F: one register. Needs `avx512f`.
    #[derive(Clone, Copy)]
    pub struct Avx512(pub __m512);

    /// [`F32x16::reduce_add`]'s tree (lane `i` plus lane `i + 8`, then
    /// `i + 4`, `i + 2`, `i + 1`) in registers: the same additions in the
    /// same order, without a store and sixteen scalar loads. Needs `avx512f`.
    /// (The AVX2 type keeps the default: alternating bench runs showed no
    /// gain there, within their ±10% noise.)
    #[inline(always)]
    pub unsafe fn reduce_add_512(v: __m512) -> f32 {
        let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b11_10_11_10>(v, v));
        let v = _mm512_castps512_ps256(v);
        let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        let v = _mm_add_ss(v, _mm_shuffle_ps::<0b01>(v, v));
        _mm_cvtss_f32(v)
    }

    impl F32x16 for Avx512 {
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx512(_mm512_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> Self {
            Avx512(_mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)))
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const bf16) -> Self {
            let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
            Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(w)))
        }
        #[inline(always)]
        unsafe fn load_fp8(p: *const Fp8E4m3) -> Self {
            Avx512(_mm512_cvtph_ps(fp8_to_f16_bits(_mm_loadu_si128(
                p as *const __m128i,
            ))))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn reduce_add(self) -> f32 {
            reduce_add_512(self.0)
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Avx512(_mm512_add_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Avx512(_mm512_mul_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            Avx512(_mm512_div_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn fma(self, b: Self, c: Self) -> Self {
            Avx512(_mm512_fmadd_ps(self.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            Avx512(_mm512_max_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn min(self, o: Self) -> Self {
            Avx512(_mm512_min_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn round(self) -> Self {
            Avx512(_mm512_roundscale_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(self.0))
        }
        #[inline(always)]
        unsafe fn pow2i(self) -> Self {
            let n = _mm512_add_epi32(_mm512_cvtps_epi32(self.0), _mm512_set1_epi32(127));
            Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(n)))
        }
        #[inline(always)]
        unsafe fn zero_below(self, t: f32, v: Self) -> Self {
            let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(self.0, _mm512_set1_ps(t));
            Avx512(_mm512_maskz_mov_ps(keep, v.0))
        }
    }

    /// The f16 bit patterns of 16 E4M3 codes' values divided by 2⁸: each
    /// code to the top byte of its word, then an arithmetic shift by one
    /// puts exponent and mantissa in place and copies the sign into bit 14,
    /// which the mask clears.
    #[inline(always)]
    unsafe fn fp8_to_f16_bits(codes: __m128i) -> __m256i {
        let high = _mm256_slli_epi16::<8>(_mm256_cvtepu8_epi16(codes));
        _mm256_and_si256(
            _mm256_srai_epi16::<1>(high),
            _mm256_set1_epi16(0xBF80u16 as i16),
        )
    }

    /// Eight bf16 from `p`, widened (a bf16 is the top half of an f32).
    #[inline(always)]
    unsafe fn bf16_to_f32x8(p: *const bf16) -> __m256 {
        let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
    }

    /// AVX2 with FMA and F16C: two 8-lane halves.
    #[derive(Clone, Copy)]
    pub struct Avx2(__m256, __m256);

    impl Avx2 {
        #[inline(always)]
        unsafe fn map2(self, o: Self, f: impl Fn(__m256, __m256) -> __m256) -> Self {
            Avx2(f(self.0, o.0), f(self.1, o.1))
        }
    }

    impl F32x16 for Avx2 {
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx2(_mm256_set1_ps(x), _mm256_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(LANES / 2)))
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> Self {
            Avx2(
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(LANES / 2) as *const __m128i)),
            )
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const bf16) -> Self {
            Avx2(bf16_to_f32x8(p), bf16_to_f32x8(p.add(LANES / 2)))
        }
        #[inline(always)]
        unsafe fn load_fp8(p: *const Fp8E4m3) -> Self {
            let h = fp8_to_f16_bits(_mm_loadu_si128(p as *const __m128i));
            Avx2(
                _mm256_cvtph_ps(_mm256_castsi256_si128(h)),
                _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(h)),
            )
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0);
            _mm256_storeu_ps(p.add(LANES / 2), self.1);
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            self.map2(o, |a, b| _mm256_add_ps(a, b))
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            self.map2(o, |a, b| _mm256_mul_ps(a, b))
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            self.map2(o, |a, b| _mm256_div_ps(a, b))
        }
        #[inline(always)]
        unsafe fn fma(self, b: Self, c: Self) -> Self {
            Avx2(
                _mm256_fmadd_ps(self.0, b.0, c.0),
                _mm256_fmadd_ps(self.1, b.1, c.1),
            )
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            self.map2(o, |a, b| _mm256_max_ps(a, b))
        }
        #[inline(always)]
        unsafe fn min(self, o: Self) -> Self {
            self.map2(o, |a, b| _mm256_min_ps(a, b))
        }
        #[inline(always)]
        unsafe fn round(self) -> Self {
            const MODE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            Avx2(
                _mm256_round_ps::<MODE>(self.0),
                _mm256_round_ps::<MODE>(self.1),
            )
        }
        #[inline(always)]
        unsafe fn pow2i(self) -> Self {
            let one = |x: __m256| {
                let n = _mm256_add_epi32(_mm256_cvtps_epi32(x), _mm256_set1_epi32(127));
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(n))
            };
            Avx2(one(self.0), one(self.1))
        }
        #[inline(always)]
        unsafe fn zero_below(self, t: f32, v: Self) -> Self {
            let t = _mm256_set1_ps(t);
            Avx2(
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(self.0, t), v.0),
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(self.1, t), v.1),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on every implementation this CPU supports and checks they agree bit for bit.
    fn all_agree(input: &[f32; LANES], f: fn(&[f32; LANES]) -> [[u32; LANES]; 3]) {
        let r = f(input);
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                assert_eq!(r[0], r[1], "AVX2 differs from portable for {input:?}");
            }
            if is_x86_feature_detected!("avx512f") {
                assert_eq!(r[0], r[2], "AVX-512 differs from portable for {input:?}");
            }
        }
    }

    unsafe fn exp_bits<S: F32x16>(x: &[f32; LANES]) -> [u32; LANES] {
        let mut out = [0f32; LANES];
        S::load(x.as_ptr()).exp().store(out.as_mut_ptr());
        out.map(f32::to_bits)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn exp_avx2(x: &[f32; LANES]) -> [u32; LANES] {
        exp_bits::<Avx2>(x)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp_avx512(x: &[f32; LANES]) -> [u32; LANES] {
        exp_bits::<Avx512>(x)
    }

    fn exp_all(x: &[f32; LANES]) -> [[u32; LANES]; 3] {
        // SAFETY: the x86 variants' results are only compared when
        // `all_agree` detected their features; otherwise they are not run.
        unsafe {
            let p = exp_bits::<Portable>(x);
            #[cfg(target_arch = "x86_64")]
            {
                let a2 = if is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
                {
                    exp_avx2(x)
                } else {
                    p
                };
                let a5 = if is_x86_feature_detected!("avx512f") {
                    exp_avx512(x)
                } else {
                    p
                };
                [p, a2, a5]
            }
            #[cfg(not(target_arch = "x86_64"))]
            [p, p, p]
        }
    }

    unsafe fn load_bits<S: F32x16>(raw: &[u8; 32]) -> [[u32; LANES]; 3] {
        let mut out = [[0f32; LANES]; 3];
        S::load_f16(raw.as_ptr().cast()).store(out[0].as_mut_ptr());
        S::load_bf16(raw.as_ptr().cast()).store(out[1].as_mut_ptr());
        S::load_fp8(raw.as_ptr().cast()).store(out[2].as_mut_ptr());
        out.map(|o| o.map(f32::to_bits))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_avx2(raw: &[u8; 32]) -> [[u32; LANES]; 3] {
        load_bits::<Avx2>(raw)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn load_avx512(raw: &[u8; 32]) -> [[u32; LANES]; 3] {
        load_bits::<Avx512>(raw)
    }

    /// The f16, bf16 and E4M3 loads widen every finite code of their type
    /// as the scalar conversion does (E4M3 divided by its `SCALE`), on every
    /// instruction set.
    #[test]
    fn loads_widen_every_code_identically() {
        // All 2¹⁶ 16-bit patterns in pages of 16 lanes, skipping NaNs (bf16
        // quiets them when widening, a shift does not; the cache never
        // holds one) and, for E4M3, its NaN codes.
        for page in 0..4096u32 {
            let codes: [u16; LANES] = std::array::from_fn(|i| (page * 16 + i as u32) as u16);
            let mut raw = [0u8; 32];
            for (i, c) in codes.iter().enumerate() {
                raw[2 * i..2 * i + 2].copy_from_slice(&c.to_le_bytes());
            }
            // SAFETY: `raw` holds 16 elements of each type; the x86 variants
            // run only where their features were detected.
            let portable = unsafe { load_bits::<Portable>(&raw) };
            let fp8 = |i: usize| raw[i] & 0x7F != 0x7F;
            for (i, c) in codes.iter().enumerate() {
                let (h, b) = (f16::from_bits(*c), bf16::from_bits(*c));
                if !h.is_nan() {
                    assert_eq!(portable[0][i], h.to_f32().to_bits());
                }
                if !b.is_nan() {
                    assert_eq!(portable[1][i], b.to_f32().to_bits());
                }
                if fp8(i) {
                    let want = Fp8E4m3(raw[i]).to_f32() / <Fp8E4m3 as SimdLoad>::SCALE;
                    assert_eq!(portable[2][i], want.to_bits());
                }
            }
            #[cfg(target_arch = "x86_64")]
            {
                let compare = |other: [[u32; LANES]; 3], name: &str| {
                    for i in 0..LANES {
                        let (h, b) = (f16::from_bits(codes[i]), bf16::from_bits(codes[i]));
                        if !h.is_nan() {
                            assert_eq!(other[0][i], portable[0][i], "{name} f16 {:#x}", codes[i]);
                        }
                        if !b.is_nan() {
                            assert_eq!(other[1][i], portable[1][i], "{name} bf16 {:#x}", codes[i]);
                        }
                        if fp8(i) {
                            assert_eq!(other[2][i], portable[2][i], "{name} fp8 {:#x}", raw[i]);
                        }
                    }
                };
                if is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
                {
                    compare(unsafe { load_avx2(&raw) }, "AVX2");
                    if is_x86_feature_detected!("avx512f") {
                        compare(unsafe { load_avx512(&raw) }, "AVX-512");
                    }
                }
            }
        }
    }

    #[test]
    fn exp_is_accurate_and_identical_across_instruction_sets() {
        let mut worst = 0f64;
        for k in 0..2000 {
            let input: [f32; LANES] =
                std::array::from_fn(|i| -100.0 + (k * LANES + i) as f32 * 0.0031);
            all_agree(&input, exp_all);
            let got = exp_all(&input)[0];
            for (x, g) in input.iter().zip(got) {
                let g = f32::from_bits(g) as f64;
                let want = (*x as f64).exp();
                if *x < -87.336_54 {
                    assert_eq!(g, 0.0, "exp({x}) must flush to zero");
                } else {
                    worst = worst.max(((g - want) / want).abs());
                }
            }
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        let special = [
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1.0,
            88.0,
            -87.0,
            -1e30,
            1e-30,
            -0.5,
            0.5,
            2.0,
            -2.0,
            -10.0,
            -20.0,
            -40.0,
            -80.0,
        ];
        all_agree(&special, exp_all);
        let got = exp_all(&special)[0].map(f32::from_bits);
        assert_eq!(got[0], 0.0);
        assert_eq!(got[1], 1.0);
    }

    unsafe fn sum_bits<S: F32x16>(x: &[f32; LANES]) -> [u32; LANES] {
        let mut out = [0u32; LANES];
        out[0] = S::load(x.as_ptr()).reduce_add().to_bits();
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sum_avx2(x: &[f32; LANES]) -> [u32; LANES] {
        sum_bits::<Avx2>(x)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn sum_avx512(x: &[f32; LANES]) -> [u32; LANES] {
        sum_bits::<Avx512>(x)
    }

    fn sum_all(x: &[f32; LANES]) -> [[u32; LANES]; 3] {
        // SAFETY: as in `exp_all`.
        unsafe {
            let p = sum_bits::<Portable>(x);
            #[cfg(target_arch = "x86_64")]
            {
                let a2 = if is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
                {
                    sum_avx2(x)
                } else {
                    p
                };
                let a5 = if is_x86_feature_detected!("avx512f") {
                    sum_avx512(x)
                } else {
                    p
                };
                [p, a2, a5]
            }
            #[cfg(not(target_arch = "x86_64"))]
            [p, p, p]
        }
    }

    /// The in-register reduction adds the lanes in the portable tree's
    /// order: lanes of very different magnitudes, where any other order
    /// rounds differently, sum to the same bits.
    #[test]
    fn reduce_add_is_one_tree_on_every_instruction_set() {
        let mut seed = 7u64;
        for _ in 0..2000 {
            let input: [f32; LANES] = std::array::from_fn(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let mantissa = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                mantissa * 2f32.powi((seed >> 20 & 31) as i32 - 8)
            });
            all_agree(&input, sum_all);
        }
        let wrong_order = [
            1e8, 1.0, -1e8, 1.0, 3.0, 0.5, -3.0, 0.25, 1e-3, 7.0, 1e7, -7.0, 2.0, -1e7, 0.125, 1.5,
        ];
        all_agree(&wrong_order, sum_all);
    }
}
