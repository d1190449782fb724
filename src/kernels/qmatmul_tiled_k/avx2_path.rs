//! The k-quant tiled kernels on CPUs with AVX2 but no AVX-512: each 64-byte
//! line of a group read as two 256-bit halves, weight rows 0–7 and 8–15, as
//! the 32-element types do ([`super::super::qmatmul_tiled_avx2`]).
//!
//! # Exactness
//!
//! `vpmaddubsw` multiplies four quants of eight weight rows by four
//! broadcast activation bytes and saturates its 16-bit pair sums, so how
//! many pairs are added before widening follows from the operand ranges.
//! Q8_K activations lie in −128..=127. Q4_K quants are at most 15: a pair
//! sums to at most 2·15·128 = 3 840, a 32-element sub-block's 16 pairs per
//! row to 30 720 in two lanes of eight, below 2¹⁵. Q6_K's quants, rebuilt
//! from their six-bit lines as quant + 32, are at most 63: a pair reaches
//! 16 128, two pairs 32 256, so a 16-element sub-block is two such sums.
//! The widening `vpmaddwd` multiplies by the sub-block's scale in the same
//! instruction (the scale in both 16-bit halves of a row's lane), and Q6_K's
//! +32 leaves through `Σ scale·bsum` per super-block. Every super-block's
//! integer sum is thus the one the AVX-512 kernels compute, and [`finish`]
//! is their f32 formula in the same order, so the AVX2 kernels give the
//! same bits as the VNNI and AMX ones.

use std::arch::x86_64::*;

use super::super::qmatmul::Q8xK;
use super::super::qmatmul_tiled::GROUP;
use super::super::qmatmul_tiled_avx2::{drive_halves, HalfKernels, HALF};
use super::{nsub, qs_bytes, sub, TiledKWeights, Q4K, Q6K, Q6_SUB};

/// [`TiledMatrix::tile_avx2`](super::TiledMatrix::tile_avx2) for Q4_K and
/// Q6_K.
///
/// # Safety
///
/// AVX2, FMA and F16C must be supported.
pub(super) unsafe fn tile(t: &TiledKWeights, xq: &[Q8xK], j0: usize, o: &mut [&mut [f32]]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if t.format == Q4K {
            drive_halves(&Halves::<Q4K>(t), xq, j0, o)
        } else {
            drive_halves(&Halves::<Q6K>(t), xq, j0, o)
        }
    }
}

impl TiledKWeights {
    /// `R` activation rows (`xs`, row-major super-blocks) against halves
    /// `h0..h0 + H` of group `g`: lane `i` of result `[h][j]` is weight row
    /// `16g + 8(h0 + h) + i` for activation row `j`. With `H = 2` (one row,
    /// a decode step) both halves go super-block by super-block, so each
    /// weight line is streamed from memory once.
    ///
    /// One body over raw offsets, as the VNNI decode kernel: helpers that
    /// return register arrays were not inlined here (a call, a
    /// `vzeroupper` and a trip through the stack per super-block).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn rows<const F: u8, const R: usize, const H: usize>(
        &self,
        g: usize,
        h0: usize,
        xs: &[Q8xK],
    ) -> [[__m256; R]; H] {
        let group = self.group(g);
        let nsb = self.nsb;
        assert!(h0 + H <= 2, "halves {h0}..{}", h0 + H);
        assert!(xs.len() >= R * nsb, "{R} rows of {nsb} super-blocks");
        let end = self.dmin_offset() + if F == Q4K { 32 * nsb } else { 0 };
        assert!(group.len() >= end, "group of {} bytes", group.len());
        let p = group.as_ptr();
        // SAFETY (these loads): every offset below is inside the group, whose
        // regions `new` sized for `nsb` super-blocks (asserted above).
        let load = |o: usize| unsafe { _mm256_loadu_si256(p.add(o).cast()) };
        let bytes8 = |o: usize| unsafe { _mm_loadl_epi64(p.add(o).cast()) };
        let bytes16 = |o: usize| unsafe { _mm_loadu_si128(p.add(o).cast()) };
        let half = |o: usize| _mm256_cvtph_ps(bytes16(o));
        let (sc_at, mn_at) = (self.sc_offset(), self.mn_offset());
        let (d_at, dmin_at) = (self.d_offset(), self.dmin_offset());
        let low = _mm256_set1_epi8(0xF);
        let mut acc = [[_mm256_setzero_ps(); R]; H];
        for b in 0..nsb {
            // A single row (a decode step) streams the group from memory:
            // ask for the quants 4 KiB ahead into L2 (past the group's end:
            // its scales or the next group, read soon; a prefetch never
            // faults). Batches find a tile's groups in L2 after their first
            // rows, and the prefetches were 4% of a 512-row matmul's time.
            if H == 2 {
                let ahead = p.wrapping_add(qs_bytes(F) * b + 4096);
                for l in (0..qs_bytes(F)).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(l).cast());
                }
            }
            for (hh, acc) in acc.iter_mut().enumerate() {
                let h = h0 + hh;
                let q = qs_bytes(F) * b + 32 * h;
                let sc8 = |s: usize| bytes8(sc_at + nsub(F) * GROUP * b + GROUP * s + HALF * h);
                let mut t = [_mm256_setzero_si256(); R];
                for s in 0..nsub(F) {
                    let sc = sc8(s);
                    let sc = if F == Q4K {
                        _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(sc, sc))
                    } else {
                        _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(sc, sc))
                    };
                    let mut w = [_mm256_setzero_si256(); 8];
                    if F == Q4K {
                        for (r, w) in w.iter_mut().enumerate() {
                            let raw = load(q + 512 * (s / 2) + 64 * r);
                            let raw = if s % 2 == 1 {
                                _mm256_srli_epi16::<4>(raw)
                            } else {
                                raw
                            };
                            *w = _mm256_and_si256(raw, low);
                        }
                    } else {
                        let at = q + Q6_SUB * s;
                        let [l0, l1, l2] = [0, 1, 2].map(|r| load(at + 64 * r));
                        for (r, w) in w.iter_mut().take(4).enumerate() {
                            *w = q6_half_line(l0, l1, l2, r);
                        }
                    }
                    for (j, t) in t.iter_mut().enumerate() {
                        // SAFETY: `j·nsb + b < R·nsb ≤ xs.len()` (asserted).
                        let y = unsafe { xs.get_unchecked(j * nsb + b) };
                        let x = y.qs.as_ptr().wrapping_add(sub(F) * s);
                        // SAFETY: element `4r + 3 < sub(F)` of sub-block `s`
                        // is inside `y.qs`.
                        let xw = |r: usize| unsafe {
                            _mm256_set1_epi32(x.add(4 * r).cast::<i32>().read_unaligned())
                        };
                        let pair = |r: usize| _mm256_maddubs_epi16(w[r], xw(r));
                        let sum = if F == Q4K {
                            let mut p16 = pair(0);
                            for r in 1..8 {
                                p16 = _mm256_add_epi16(p16, pair(r));
                            }
                            _mm256_madd_epi16(p16, sc)
                        } else {
                            let p01 = _mm256_add_epi16(pair(0), pair(1));
                            let p23 = _mm256_add_epi16(pair(2), pair(3));
                            _mm256_add_epi32(_mm256_madd_epi16(p01, sc), _mm256_madd_epi16(p23, sc))
                        };
                        *t = _mm256_add_epi32(*t, sum);
                    }
                }
                if F == Q6K {
                    // Σ scale·bsum over the sub-blocks, two at a time: row
                    // `i`'s lane holds its scales of sub-blocks `2pr` and
                    // `2pr + 1` as 16-bit halves, against the activation
                    // row's two bsums.
                    let mut corr = [_mm256_setzero_si256(); R];
                    for pr in 0..nsub(F) / 2 {
                        let sc =
                            _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(sc8(2 * pr), sc8(2 * pr + 1)));
                        for (j, c) in corr.iter_mut().enumerate() {
                            // SAFETY: as above.
                            let y = unsafe { xs.get_unchecked(j * nsb + b) };
                            let [b0, b1] =
                                [y.bsums[2 * pr], y.bsums[2 * pr + 1]].map(|v| v as u16 as u32);
                            let sums = _mm256_set1_epi32((b0 | b1 << 16) as i32);
                            *c = _mm256_add_epi32(*c, _mm256_madd_epi16(sc, sums));
                        }
                    }
                    for (t, c) in t.iter_mut().zip(corr) {
                        *t = _mm256_sub_epi32(*t, _mm256_slli_epi32::<5>(c));
                    }
                }
                let d = half(d_at + 32 * b + 16 * h);
                let (dmin, mn) = if F == Q4K {
                    let at = mn_at + 128 * b + 16 * h;
                    let mn = [0, 1, 2, 3].map(|pr| _mm256_cvtepu8_epi16(bytes16(at + 32 * pr)));
                    (half(dmin_at + 32 * b + 16 * h), mn)
                } else {
                    (_mm256_setzero_ps(), [_mm256_setzero_si256(); 4])
                };
                for (j, (acc, t)) in acc.iter_mut().zip(t).enumerate() {
                    // SAFETY: as above.
                    let y = unsafe { xs.get_unchecked(j * nsb + b) };
                    *acc = finish::<F>(t, d, dmin, &mn, y, *acc);
                }
            }
        }
        acc
    }
}

/// Half of [`super::q6_line`]: eight weight rows' stored bytes of line `r`
/// of a sub-block, from the halves of its three lines.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q6_half_line(l0: __m256i, l1: __m256i, l2: __m256i, r: usize) -> __m256i {
    let six = _mm256_set1_epi8(0x3F);
    match r {
        0 => _mm256_and_si256(l0, six),
        1 => _mm256_and_si256(l1, six),
        2 => _mm256_and_si256(l2, six),
        _ => {
            let part = |v: __m256i, m: i8| _mm256_and_si256(v, _mm256_set1_epi8(m));
            _mm256_or_si256(
                _mm256_or_si256(
                    part(_mm256_srli_epi16::<6>(l0), 0x03),
                    part(_mm256_srli_epi16::<4>(l1), 0x0C),
                ),
                part(_mm256_srli_epi16::<2>(l2), 0x30),
            )
        }
    }
}

/// Folds a super-block's exact integer sum `t` into `acc`:
/// `acc + t·(d·dx) − (Σ min·Σx)·(dmin·dx)`, in the operations and order of
/// the AVX-512 kernels' `finish`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn finish<const F: u8>(
    t: __m256i,
    d: __m256,
    dmin: __m256,
    mn: &[__m256i; 4],
    y: &Q8xK,
    acc: __m256,
) -> __m256 {
    let dx = _mm256_set1_ps(y.d);
    let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(d, dx), acc);
    if F != Q4K {
        return acc;
    }
    // Sub-block pairs' sums of 32 activations side by side in a dword
    // (`Q8xK::pairs`), as the mins are stored: `vpmaddwd` gives each row
    // both products' sum. Broadcast from memory, they cost no shuffles:
    // building them here from the sums of 16 took 8% of a 512-row matmul.
    let mut msum = _mm256_setzero_si256();
    for (mn, &pair) in mn.iter().zip(&y.pairs) {
        msum = _mm256_add_epi32(msum, _mm256_madd_epi16(*mn, _mm256_set1_epi32(pair)));
    }
    _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, dx), acc)
}

/// The k-quants' AVX2 kernels for format `F`.
struct Halves<'a, const F: u8>(&'a TiledKWeights);

impl<const F: u8> HalfKernels for Halves<'_, F> {
    type Act = Q8xK;

    fn row_blocks(&self) -> usize {
        self.0.nsb
    }

    /// Q6_K's sub-blocks take four weight registers, not eight, which
    /// leaves room for eight rows' sums: its rebuilt bytes then serve
    /// twice the rows (at 512 rows, the matmul bench's time with eight was
    /// 0.86× that with four; Q4_K's with eight was 1.12×).
    fn max_rows(&self) -> usize {
        if F == Q6K {
            8
        } else {
            4
        }
    }

    unsafe fn half<const R: usize>(&self, g: usize, h: usize, xs: &[Q8xK]) -> [__m256; R] {
        // SAFETY: forwarded from the caller.
        let [acc] = unsafe { self.0.rows::<F, R, 1>(g, h, xs) };
        acc
    }

    unsafe fn single(&self, g: usize, xs: &[Q8xK]) -> [__m256; 2] {
        // SAFETY: forwarded from the caller.
        let [[lo], [hi]] = unsafe { self.0.rows::<F, 1, 2>(g, 0, xs) };
        [lo, hi]
    }
}
