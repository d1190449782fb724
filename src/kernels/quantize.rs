//! Activation rows quantized for the integer matmul kernels as candle
//! quantizes them: Q8_0 / Q8_1 blocks of 32 and Q8_K super-blocks of 256.
//!
//! # Why two builds of one body
//!
//! Every quantized matmul quantizes its activation rows first, q, k and v
//! each their own copy, so a decode step of a 1.5B model rounds half a
//! million values. `f32::round` (halves away from zero) has no instruction
//! in the x86-64 baseline and compiled to a call to `roundf` per value: in
//! the Q4_K matmul bench on an AMX Xeon, quantizing (with `roundf`) took a
//! fifth of the samples (docs/performance.md). The same body compiled with
//! AVX2 enabled lets LLVM round with `vroundps` (`trunc(x + copysign(0.5 −
//! ulp, x))`, exact for every f32) and vectorize the loops, so both builds
//! give the same bits (tested), and the choice is only a matter of speed.
//! Q8_K's scan for the largest magnitude and its saturating casts stayed
//! scalar in that build, so its AVX2 body is written in intrinsics, the
//! portable one kept as its reference (same bits, tested).

use half::f16;

#[cfg(target_arch = "x86_64")]
use super::isa::{KernelIsa, Level};
#[cfg(target_arch = "x86_64")]
use super::qmatmul::Isa;
use super::qmatmul::{Q8Pair, Q8x32, Q8xK, QK, QK_K};

/// candle's `BlockQ8_0::from_float` (and `BlockQ8_1::from_float` when
/// `with_s`), plus the offset correction `corr` for weights stored with
/// `offset`.
pub(crate) fn quantize_row_q8(x: &[f32], out: &mut [Q8x32], with_s: bool, offset: i32) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: `simd` checked AVX2 and FMA.
        return unsafe { avx2::row_q8(x, out, with_s, offset) };
    }
    row_q8(x, out, with_s, offset)
}

/// [`quantize_row_q8`] straight into the pair layout.
pub(crate) fn quantize_row_pairs(x: &[f32], out: &mut [Q8Pair]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: `simd` checked AVX2 and FMA.
        return unsafe { avx2::row_pairs(x, out) };
    }
    row_pairs(x, out)
}

/// candle's `BlockQ8K::from_float`.
pub(crate) fn quantize_row_q8k(x: &[f32], out: &mut [Q8xK]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: `simd` checked AVX2 and FMA.
        return unsafe { avx2::row_q8k(x, out) };
    }
    row_q8k(x, out)
}

/// Whether the AVX2 build runs: the CPU has it and `R1SERVE_ISA` allows it.
#[cfg(target_arch = "x86_64")]
fn simd() -> bool {
    Isa::detect().level() >= Level::Avx2
}

/// The bodies compiled with AVX2 and FMA enabled (FMA only lets LLVM pick
/// the VEX encodings: it never contracts a multiply and an add on its own).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{Q8Pair, Q8x32, Q8xK, QK, QK_K};

    /// [`super::row_q8`] in AVX2 intrinsics: as for Q8_K, LLVM kept the
    /// saturating `as i8` scalar, and quantizing was a twentieth of the
    /// 0.5B's prefill (mostly Q5_0 and Q8_0 matrices).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn row_q8(x: &[f32], out: &mut [Q8x32], with_s: bool, offset: i32) {
        let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
        for (xs, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
            let d = abs_max(xs) / 127.0;
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let mut sum = 0;
            for (xs, qs) in xs.chunks_exact(16).zip(y.qs.chunks_exact_mut(16)) {
                // Not `.map` with a closure: one that was not inlined cost
                // a call and a `vzeroupper` per use.
                let mut q = [_mm256_setzero_si256(); 2];
                for (h, q) in q.iter_mut().enumerate() {
                    let r = round_away(_mm256_mul_ps(load8(&xs[8 * h..]), id));
                    // `as i8` saturates and makes NaN 0.
                    let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(r, r);
                    let r = _mm256_andnot_ps(nan, _mm256_min_ps(_mm256_max_ps(r, lo), hi));
                    *q = _mm256_cvttps_epi32(r);
                }
                sum += store_bytes(q, qs);
            }
            super::set_block_sums(y, f16::from_f32(d), sum, with_s, offset);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn row_pairs(x: &[f32], out: &mut [Q8Pair]) {
        super::row_pairs(x, out)
    }

    /// [`super::row_q8k`] in AVX2 intrinsics: LLVM kept its magnitude scan
    /// and its saturating `as i8` scalar, and quantizing was a tenth of the
    /// AMX Q4_K matmul's time at 512 rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn row_q8k(x: &[f32], out: &mut [Q8xK]) {
        let sign = _mm256_set1_ps(-0.0);
        let top = _mm256_set1_ps(127.0);
        for (xs, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
            let amax = abs_max(xs);
            if amax == 0.0 {
                *y = Q8xK::ZERO;
                continue;
            }
            // The first value of that magnitude, as the scalar scan keeps.
            let target = _mm256_set1_ps(amax);
            let mut max = amax;
            for v in xs.chunks_exact(8) {
                let hit = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, load8(v)), target);
                let bits = _mm256_movemask_ps(hit);
                if bits != 0 {
                    max = v[bits.trailing_zeros() as usize];
                    break;
                }
            }
            let iscale = -128f32 / max;
            let scale = _mm256_set1_ps(iscale);
            let blocks = xs.chunks_exact(16).zip(y.qs.chunks_exact_mut(16));
            for ((xs, qs), bs) in blocks.zip(y.bsums.iter_mut()) {
                let mut q = [_mm256_setzero_si256(); 2];
                for (h, q) in q.iter_mut().enumerate() {
                    let r = round_away(_mm256_mul_ps(scale, load8(&xs[8 * h..])));
                    // `min` second: a NaN becomes 127, as `f32::min` makes it.
                    *q = _mm256_cvttps_epi32(_mm256_min_ps(r, top));
                }
                *bs = store_bytes(q, qs) as i16;
            }
            y.pair_sums();
            y.d = 1.0 / iscale;
        }
    }

    /// The first 8 values of `v`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load8(v: &[f32]) -> __m256 {
        let v = &v[..8];
        // SAFETY: `v` is 8 readable f32; the load is unaligned.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    /// The largest magnitude in `xs` (a multiple of 8 long); a NaN never
    /// wins, as in the scalar scans.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn abs_max(xs: &[f32]) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for v in xs.chunks_exact(8) {
            // The running maximum second: a NaN operand is never kept.
            m = _mm256_max_ps(_mm256_andnot_ps(sign, load8(v)), m);
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
    }

    /// `x` rounded to an integer, halves away from zero (`f32::round`):
    /// `trunc(x + copysign(0.5 − ulp, x))`, exact for every f32.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn round_away(x: __m256) -> __m256 {
        let half = _mm256_set1_ps(0.5 - f32::EPSILON / 4.0);
        let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
        _mm256_round_ps::<_MM_FROUND_TO_ZERO>(_mm256_add_ps(x, _mm256_or_ps(sign, half)))
    }

    /// Stores 16 integers in -128..=127 (two registers of 8) as bytes in
    /// `dst` and returns their sum.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn store_bytes(q: [__m256i; 2], dst: &mut [i8]) -> i32 {
        // In range: packing saturates nothing.
        let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q[0], q[1]));
        let bytes = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
        let dst = &mut dst[..16];
        // SAFETY: `dst` is 16 writable bytes; the store is unaligned.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), bytes) };
        let s = _mm256_add_epi32(q[0], q[1]);
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_hadd_epi32(s, s);
        _mm_cvtsi128_si32(_mm_hadd_epi32(s, s))
    }
}

#[inline(always)]
fn row_q8(x: &[f32], out: &mut [Q8x32], with_s: bool, offset: i32) {
    for (xs, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (d16, sum) = block_q8(xs, &mut y.qs);
        set_block_sums(y, d16, sum, with_s, offset);
    }
}

/// A Q8_0/Q8_1 block's scale, offset correction and (with `with_s`) scaled
/// sum, from its f16 scale and the sum of its quants: shared by both
/// builds so they cannot drift apart.
#[inline(always)]
fn set_block_sums(y: &mut Q8x32, d16: f16, sum: i32, with_s: bool, offset: i32) {
    y.d = d16.to_f32();
    y.corr = -offset * sum;
    y.s = if with_s {
        (f16::from_f32(sum as f32) * d16).to_f32()
    } else {
        0.0
    };
}

#[inline(always)]
fn row_pairs(x: &[f32], out: &mut [Q8Pair]) {
    let mut qs = [0i8; QK];
    for (xs, p) in x.chunks_exact(2 * QK).zip(out.iter_mut()) {
        for (half, xs) in xs.chunks_exact(QK).enumerate() {
            let (d16, _) = block_q8(xs, &mut qs);
            for (u, q) in p.qs[half * QK..(half + 1) * QK].iter_mut().zip(&qs) {
                *u = (*q as u8) ^ 0x80;
            }
            p.scale[8 * half..8 * half + 8].fill(d16.to_f32());
        }
    }
}

/// One block of candle's Q8_0 quantization: the quants into `qs`, and the
/// f16 scale and the sum of the quants.
#[inline(always)]
fn block_q8(xs: &[f32], qs: &mut [i8]) -> (f16, i32) {
    let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    (f16::from_f32(d), sum)
}

#[inline(always)]
fn row_q8k(x: &[f32], out: &mut [Q8xK]) {
    for (xs, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in xs {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *y = Q8xK::ZERO;
            continue;
        }
        let iscale = -128f32 / max;
        for (q, &v) in y.qs.iter_mut().zip(xs) {
            *q = (iscale * v).round().min(127.0) as i8;
        }
        for (bs, qs) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
            *bs = qs.iter().map(|&q| q as i32).sum::<i32>() as i16;
        }
        y.pair_sums();
        y.d = 1.0 / iscale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows whose scaled values fall on every kind of rounding case: exact
    /// halves of both signs (where `round` and round-to-even differ),
    /// values one ulp either side of a half, zeros, and random values.
    fn rows(len: usize) -> Vec<Vec<f32>> {
        let mut seed = 7u64;
        let mut random = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let halves: Vec<f32> = (0..len)
            .map(|i| (i % 200) as f32 - 100.0 + if i % 2 == 0 { 0.5 } else { -0.5 })
            .collect();
        let near: Vec<f32> = halves
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let bits = v.to_bits();
                f32::from_bits(if i % 3 == 0 { bits + 1 } else { bits - 1 })
            })
            .collect();
        let mut with_ends = halves.clone();
        // Q8_0 scales by 127 / amax and Q8_K by -128 / max: pin both so the
        // halves stay halves after scaling.
        for b in with_ends.chunks_mut(QK) {
            b[0] = 127.0;
        }
        let mut k_ends = halves.clone();
        for b in k_ends.chunks_mut(QK_K) {
            b[0] = -128.0;
        }
        vec![
            halves,
            near,
            with_ends,
            k_ends,
            vec![0.0; len],
            (0..len).map(|_| random()).collect(),
            (0..len).map(|_| 1e-30 * random()).collect(),
            // Non-finite values: NaN never holds the maximum and quantizes
            // to 127 (`f32::min`); an infinity makes every other value 0.
            (0..len)
                .map(|i| match i % 97 {
                    5 => f32::NAN,
                    50 if i % 3 == 0 => f32::NEG_INFINITY,
                    _ => random(),
                })
                .collect(),
        ]
    }

    #[test]
    fn every_build_gives_the_same_bits() {
        #[cfg(target_arch = "x86_64")]
        if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("fma") {
            eprintln!("quantize: AVX2+FMA: not on this CPU, not run (portable build only)");
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            eprintln!("quantize: AVX2+FMA: not an x86-64 CPU, not run");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let len = 4 * QK_K;
            for x in rows(len) {
                let (mut a, mut b) = (vec![Q8x32::ZERO; len / QK], vec![Q8x32::ZERO; len / QK]);
                row_q8(&x, &mut a, true, 8);
                // SAFETY: checked above.
                unsafe { avx2::row_q8(&x, &mut b, true, 8) };
                for (a, b) in a.iter().zip(&b) {
                    assert_eq!(
                        (a.qs, a.d.to_bits(), a.s.to_bits(), a.corr),
                        (b.qs, b.d.to_bits(), b.s.to_bits(), b.corr)
                    );
                }

                let (mut a, mut b) = (vec![Q8Pair::ZERO; len / 64], vec![Q8Pair::ZERO; len / 64]);
                row_pairs(&x, &mut a);
                // SAFETY: checked above.
                unsafe { avx2::row_pairs(&x, &mut b) };
                for (a, b) in a.iter().zip(&b) {
                    assert_eq!(a.qs, b.qs);
                    assert_eq!(a.scale.map(f32::to_bits), b.scale.map(f32::to_bits));
                }

                let (mut a, mut b) = (vec![Q8xK::ZERO; len / QK_K], vec![Q8xK::ZERO; len / QK_K]);
                row_q8k(&x, &mut a);
                // SAFETY: checked above.
                unsafe { avx2::row_q8k(&x, &mut b) };
                for (a, b) in a.iter().zip(&b) {
                    assert_eq!(
                        (a.qs, a.bsums, a.pairs, a.d.to_bits()),
                        (b.qs, b.bsums, b.pairs, b.d.to_bits())
                    );
                }
            }
        }
    }

    /// Halves round away from zero, as candle's `f32::round` does.
    #[test]
    fn halves_round_away_from_zero() {
        let mut x = vec![0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 3.5;
        let mut y = [Q8x32::ZERO];
        quantize_row_q8(&x, &mut y, false, 0);
        assert_eq!(&y[0].qs[..4], &[127, 3, -3, 4]);
    }
}
