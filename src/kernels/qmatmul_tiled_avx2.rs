//! The tiled layout of [`super::qmatmul_tiled`] on CPUs with AVX2 but no
//! AVX-512: each 64-byte row of a group is read as two 256-bit halves, weight
//! rows 0–7 and 8–15, and a group is computed as two independent passes.
//!
//! # Why
//!
//! On ggml's rows every (weight row, activation row, block) costs a
//! multiply, a widening, a conversion and a scale of its own, and each
//! output a horizontal sum. Here one `vpmaddubsw` multiplies four elements of
//! eight weight rows against four broadcast activation bytes, the 16-bit
//! pair sums of a whole block add up before one widening, and the scale
//! arithmetic runs on eight weight rows at once, about a third of the
//! instructions per product for a batch (docs/performance.md).
//!
//! # Exactness
//!
//! `vpmaddubsw` saturates its 16-bit pair sums, so how many of them are
//! added before widening follows from the operand ranges. Activations are
//! quantized here to ggml's Q8 (`round(x / d)` with `d = max|x| / 127`, so
//! |x| ≤ 127): a pair of 4-bit quants (≤ 15) sums to at most 2·15·127 =
//! 3 810 and eight such pairs stay below 2¹⁵ (30 480); 5-bit quants (≤ 31)
//! reach 7 874 a pair, four pairs 31 496. Q8_0's stored quants (the signed
//! ones + 128) would overflow, so its kernel multiplies the signed quants
//! instead, in `vpmaddubsw`'s usual sign trick (|w| times x with w's sign;
//! |w| ≤ 128 even for a file's −128), at most 2·128·127 = 32 512 a pair,
//! widened one register at a time. Every block's integer dot product is
//! therefore exact, its f32 part is one code path applied block by block in
//! order, and a row's result does not depend on the rows computed with it.

use std::arch::x86_64::*;

use super::qmatmul::{Q8x32, QK};
use super::qmatmul_tiled::{
    has_min, high_bit, nibbles, offset, qs_bytes, TiledWeights, GROUP, PREFETCH_BLOCKS, Q4_0, Q4_1,
    Q5_0, Q5_1, Q8_0,
};

/// Weight rows one 256-bit register holds four bytes of.
pub(super) const HALF: usize = GROUP / 2;

/// [`TiledMatrix::tile_avx2`](super::qmatmul_tiled::TiledMatrix::tile_avx2)
/// for the 32-element types.
///
/// # Safety
///
/// AVX2, FMA and F16C must be supported.
pub(super) unsafe fn tile(t: &TiledWeights, xq: &[Q8x32], j0: usize, o: &mut [&mut [f32]]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match t.format {
            Q4_0 => drive_halves(&Halves::<Q4_0>(t), xq, j0, o),
            Q4_1 => drive_halves(&Halves::<Q4_1>(t), xq, j0, o),
            Q5_0 => drive_halves(&Halves::<Q5_0>(t), xq, j0, o),
            Q5_1 => drive_halves(&Halves::<Q5_1>(t), xq, j0, o),
            _ => drive_halves(&Halves::<Q8_0>(t), xq, j0, o),
        }
    }
}

/// A tiled format's AVX2 kernels, which [`drive_halves`] runs over a tile.
pub(super) trait HalfKernels {
    /// The quantized activation blocks the kernels read.
    type Act;
    /// Activation blocks per row.
    fn row_blocks(&self) -> usize;
    /// The most activation rows [`Self::half`] takes at once (4 or 8).
    fn max_rows(&self) -> usize {
        4
    }
    /// `R` activation rows (`xs`, row-major) against weight rows
    /// `8h..8h + 8` of group `g`: lane `i` of result `j` is weight row
    /// `16g + 8h + i` for activation row `j`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be supported.
    unsafe fn half<const R: usize>(&self, g: usize, h: usize, xs: &[Self::Act]) -> [__m256; R];
    /// One activation row against group `g` in a single pass, both halves
    /// block by block, so that a decode step streams each weight line from
    /// memory once; the same arithmetic per lane as [`Self::half`].
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be supported.
    unsafe fn single(&self, g: usize, xs: &[Self::Act]) -> [__m256; 2];
}

/// Runs `k` over the weight rows `j0..j0 + width` (whole groups) of every
/// activation row `i`, into `o[i][..width]`. Activation rows go eight,
/// four, two or one at a time (at most [`HalfKernels::max_rows`]), each
/// chunk over every half-group of the tile, so the chunk's blocks stay in
/// L1 while the tile's weights cycle through L2.
///
/// # Safety
///
/// AVX2, FMA and F16C must be supported.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn drive_halves<K: HalfKernels>(
    k: &K,
    xq: &[K::Act],
    j0: usize,
    o: &mut [&mut [f32]],
) {
    let (m, nb) = (o.len(), k.row_blocks());
    let width = o.first().map_or(0, |r| r.len());
    debug_assert!(j0.is_multiple_of(GROUP) && width.is_multiple_of(GROUP));
    let mut i0 = 0;
    while i0 < m {
        let rows = [8, 4, 2, 1]
            .into_iter()
            .find(|&r| r <= m - i0 && r <= k.max_rows())
            .unwrap();
        let xs = &xq[i0 * nb..(i0 + rows) * nb];
        let out = &mut o[i0..i0 + rows];
        for (gg, g) in (j0 / GROUP..(j0 + width) / GROUP).enumerate() {
            // SAFETY (the kernels): forwarded from the caller.
            if rows == 1 {
                let [lo, hi] = unsafe { k.single(g, xs) };
                store(out, GROUP * gg, [lo]);
                store(out, GROUP * gg + HALF, [hi]);
                continue;
            }
            for h in 0..2 {
                let col = GROUP * gg + HALF * h;
                match rows {
                    8 => store(out, col, unsafe { k.half::<8>(g, h, xs) }),
                    4 => store(out, col, unsafe { k.half::<4>(g, h, xs) }),
                    2 => store(out, col, unsafe { k.half::<2>(g, h, xs) }),
                    _ => store(out, col, unsafe { k.half::<1>(g, h, xs) }),
                }
            }
        }
        i0 += rows;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn store<const R: usize>(out: &mut [&mut [f32]], col: usize, acc: [__m256; R]) {
    for (row, acc) in out.iter_mut().zip(acc) {
        let dst = &mut row[col..col + HALF];
        // SAFETY: `dst` holds 8 f32; the store is unaligned.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), acc) };
    }
}

/// The 32-element types' AVX2 kernels for format `F`.
struct Halves<'a, const F: u8>(&'a TiledWeights);

impl<const F: u8> HalfKernels for Halves<'_, F> {
    type Act = Q8x32;

    fn row_blocks(&self) -> usize {
        self.0.nb
    }

    /// Eight rows share each block's unpacked weights (the 5-bit types'
    /// fifth bits rebuilt once for twice the rows): with four, the matmul
    /// bench's time at 16 and 512 rows was 1.06–1.36× that with eight for
    /// Q4_1, Q5_0 and Q8_0.
    fn max_rows(&self) -> usize {
        8
    }

    unsafe fn half<const R: usize>(&self, g: usize, h: usize, xs: &[Q8x32]) -> [__m256; R] {
        // SAFETY: forwarded from the caller.
        unsafe { half::<F, R>(self.0, g, h, xs) }
    }

    unsafe fn single(&self, g: usize, xs: &[Q8x32]) -> [__m256; 2] {
        // SAFETY: forwarded from the caller.
        unsafe { single::<F>(self.0, g, xs) }
    }
}

/// `R` activation rows (`xs`, row-major blocks) against weight rows
/// `8h..8h + 8` of group `g`: lane `i` of result `j` is weight row
/// `16g + 8h + i` for activation row `j`.
#[target_feature(enable = "avx2,fma,f16c")]
fn half<const F: u8, const R: usize>(
    t: &TiledWeights,
    g: usize,
    h: usize,
    xs: &[Q8x32],
) -> [__m256; R] {
    let group = t.group(g);
    let nb = t.nb;
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        // The first pass streams the group from memory; ask for whole lines
        // a few blocks ahead into L2 (the second pass finds them there).
        if h == 0 {
            let ahead = group
                .as_ptr()
                .wrapping_add(qs_bytes(F) * (b + PREFETCH_BLOCKS));
            for line in (0..qs_bytes(F)).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line).cast());
            }
        }
        let w = unpack::<F>(t, group, b, h);
        let (dw, mw) = scales::<F>(t, group, b, h);
        for (j, acc) in acc.iter_mut().enumerate() {
            let y = &xs[j * nb + b];
            *acc = epilogue::<F>(block_dot::<F>(&w, y), dw, mw, y, *acc);
        }
    }
    acc
}

/// One activation row against group `g` in a single pass, both halves
/// block by block: a decode step streams each weight line from memory
/// once. The same arithmetic per lane as [`half`].
#[target_feature(enable = "avx2,fma,f16c")]
fn single<const F: u8>(t: &TiledWeights, g: usize, y: &[Q8x32]) -> [__m256; 2] {
    let group = t.group(g);
    let mut acc = [_mm256_setzero_ps(); 2];
    for (b, y) in y.iter().enumerate().take(t.nb) {
        let ahead = group
            .as_ptr()
            .wrapping_add(qs_bytes(F) * (b + PREFETCH_BLOCKS));
        for line in (0..qs_bytes(F)).step_by(64) {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line).cast());
        }
        for (h, acc) in acc.iter_mut().enumerate() {
            let w = unpack::<F>(t, group, b, h);
            let (dw, mw) = scales::<F>(t, group, b, h);
            *acc = epilogue::<F>(block_dot::<F>(&w, y), dw, mw, y, *acc);
        }
    }
    acc
}

/// The activation bytes `4r..4r + 4` of `qs` in every 32-bit lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn broadcast(qs: &[u8; QK], r: usize) -> __m256i {
    let v: [u8; 4] = qs[4 * r..4 * r + 4].try_into().unwrap();
    _mm256_set1_epi32(i32::from_le_bytes(v))
}

/// One block's integer dot products for eight weight rows (the stored
/// quants' for the 4- and 5-bit types, the signed ones' for Q8_0), exact by
/// the ranges in the module docs.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn block_dot<const F: u8>(w: &[__m256i; 8], y: &Q8x32) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    // SAFETY: i8 and u8 arrays of one length have one layout.
    let x: &[u8; QK] = unsafe { &*y.qs.as_ptr().cast::<[u8; QK]>() };
    if F == Q8_0 {
        let mut c = _mm256_setzero_si256();
        for (r, &w) in w.iter().enumerate() {
            let xb = broadcast(x, r);
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xb, w));
            c = _mm256_add_epi32(c, _mm256_madd_epi16(p, ones));
        }
        return c;
    }
    // Pair sums that may be added before one widening: eight for 4-bit
    // quants, four for 5-bit ones.
    let run = if high_bit(F) { 4 } else { 8 };
    let mut c = _mm256_setzero_si256();
    for chunk in (0..8).step_by(run) {
        let mut s = _mm256_setzero_si256();
        for (r, &w) in w.iter().enumerate().skip(chunk).take(run) {
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w, broadcast(x, r)));
        }
        c = _mm256_add_epi32(c, _mm256_madd_epi16(s, ones));
    }
    c
}

/// Half `h` of block `b` of a group as eight registers, register `r`
/// holding elements `4r..4r + 4` of the eight weight rows: the stored
/// unsigned quants, or for Q8_0 the signed ones.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn unpack<const F: u8>(t: &TiledWeights, group: &[u8], b: usize, h: usize) -> [__m256i; 8] {
    let qs = &group[qs_bytes(F) * b..][..qs_bytes(F)];
    let load = |line: usize| {
        let q = &qs[64 * line + 32 * h..][..32];
        // SAFETY: `q` is 32 readable bytes; the load is unaligned.
        unsafe { _mm256_loadu_si256(q.as_ptr().cast()) }
    };
    let mut w = [_mm256_setzero_si256(); 8];
    if !nibbles(F) {
        let flip = _mm256_set1_epi8(-128);
        for (r, w) in w.iter_mut().enumerate() {
            *w = _mm256_xor_si256(load(r), flip);
        }
        return w;
    }
    let low = _mm256_set1_epi8(0xF);
    for c in 0..4 {
        let raw = load(c);
        w[c] = _mm256_and_si256(raw, low);
        w[c + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), low);
    }
    if high_bit(F) {
        // Bit `p` of a register's 64-bit mask is its byte `p`'s fifth bit.
        let masks = &group[t.qh_offset() + 64 * b..][..64];
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let sixteen = _mm256_set1_epi8(16);
        for (r, w) in w.iter_mut().enumerate() {
            let k = u32::from_le_bytes(masks[8 * r + 4 * h..][..4].try_into().unwrap());
            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(k as i32), spread);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
            *w = _mm256_add_epi8(*w, _mm256_and_si256(set, sixteen));
        }
    }
    w
}

/// The eight weight rows' scales (and mins; zero for types without) of
/// half `h` of block `b`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scales<const F: u8>(t: &TiledWeights, group: &[u8], b: usize, h: usize) -> (__m256, __m256) {
    let eight = |o: usize| {
        let e = &group[o + 32 * b + 16 * h..][..16];
        // SAFETY: `e` is 8 readable f16; the load is unaligned.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(e.as_ptr().cast())) }
    };
    let mw = if has_min(F) {
        eight(t.min_offset())
    } else {
        _mm256_setzero_ps()
    };
    (eight(t.d_offset()), mw)
}

/// Folds block sums `c` into `acc`: `acc + (c [+ corr])·(dw·dx) [+ mw·s]`,
/// ggml's per-block formula (Q8_0's sums are already signed; the 4- and
/// 5-bit offset types lose their offset through `corr`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn epilogue<const F: u8>(c: __m256i, dw: __m256, mw: __m256, y: &Q8x32, acc: __m256) -> __m256 {
    let c = if offset(F) != 0 && F != Q8_0 {
        _mm256_add_epi32(c, _mm256_set1_epi32(y.corr))
    } else {
        c
    };
    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(y.d));
    let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), scale, acc);
    if has_min(F) {
        _mm256_fmadd_ps(mw, _mm256_set1_ps(y.s), acc)
    } else {
        acc
    }
}
