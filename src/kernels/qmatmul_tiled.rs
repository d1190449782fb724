//! Quantized matmul for the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) on CPUs with AVX-512 VNNI, and AMX-INT8 for batches where the CPU
//! has it, with the weights repacked once at load.
//!
//! # Layout
//!
//! Weight rows go in groups of 16. For each block of 32 elements a group
//! stores its quants as eight 64-byte rows, row `r` holding elements
//! `4r..4r + 4` of all 16 weight rows (row-major within). That is the
//! "VNNI" layout AMX wants for its second operand, and also what one 512-bit
//! `vpdpbusd` against four broadcast activation bytes consumes, so both
//! kernels below read the same bytes. 4- and 5-bit quants keep two per byte
//! (the low nibbles of 64 bytes are row `r`, the high ones row `r + 4`: the
//! same pairing as ggml's own nibbles, so repacking moves whole bytes), the
//! fifth bits are a 64-bit mask per register, and the 16 rows' f16 scales
//! (and mins) of a block sit together. The repacked matrix is as large as the
//! ggml one, give or take a cache line per group.
//!
//! # Exactness and batch invariance
//!
//! Quants are stored unsigned (ggml's, or Q8_0's plus 128); each block's
//! integer dot product is exact and loses its offset through the
//! activations' precomputed `corr` (AMX multiplies Q4_0 and Q5_0 as signed
//! quants, offset removed when the group is unpacked, so its sums need no
//! `corr`), so every kernel produces the same i32 per (activation row,
//! weight row, block). The f32 part is one code path ([`fold`]) applied
//! block by block in order, so a row's result is bit-identical whichever
//! kernel ran and however many rows came with it. Without AMX every batch
//! uses the VNNI kernel; with it, batches below [`AMX_MIN_ROWS`] rows (16
//! for the k-quants) still do (no tile traffic), and larger ones use AMX,
//! whose `tdpbsud` (or `tdpbssd`) does a 16×16×32 block in one instruction.

use std::arch::x86_64::*;

use candle_core::quantized::GgmlDType;

use super::amx;
use super::qmatmul::{Q8x32, QK};
use super::qmatmul_tiled_avx2;
use super::quantize::quantize_row_q8;

/// Weight rows per group: one 512-bit register holds four bytes of each.
pub(crate) const GROUP: usize = 16;

/// Batches from this many rows up use AMX; below, the tile loads and stores
/// per block cost more than `vpdpbusd` does for a few rows.
pub(super) const AMX_MIN_ROWS: usize = 8;

/// How many blocks ahead of the one being multiplied the VNNI kernel
/// prefetches its quants (2–4 KiB; 16 blocks into L1 was 9% slower).
pub(super) const PREFETCH_BLOCKS: usize = 8;

/// A weight matrix in the tiled layout: the 32-element types
/// ([`TiledWeights`]) or the k-quants (`qmatmul_tiled_k::TiledKWeights`),
/// as `QMatrix` runs it on each instruction set.
pub(crate) trait TiledMatrix: Sync {
    /// The quantized activation blocks its kernels read.
    type Act: Sync;
    /// Quantizes `m` activation rows as the kernels want them.
    fn quantize(&self, x: &[f32], m: usize) -> Vec<Self::Act>;
    /// Computes the weight rows `j0..j0 + width` (whole groups) of every
    /// activation row `i` into `o[i][..width]`, with AMX for large batches
    /// when `amx`, else with `vpdpbusd` alone.
    ///
    /// # Safety
    ///
    /// AVX-512 VNNI must be supported, and AMX granted when `amx`.
    unsafe fn tile(&self, xq: &[Self::Act], j0: usize, o: &mut [&mut [f32]], amx: bool);
    /// The same with AVX2, each 64-byte line read as two 256-bit halves.
    ///
    /// # Safety
    ///
    /// AVX2, FMA and F16C must be supported.
    unsafe fn tile_avx2(&self, xq: &[Self::Act], j0: usize, o: &mut [&mut [f32]]);
}

/// Format selectors (const generics cannot take enums).
pub(super) const Q4_0: u8 = 0;
pub(super) const Q4_1: u8 = 1;
pub(super) const Q5_0: u8 = 2;
pub(super) const Q5_1: u8 = 3;
pub(super) const Q8_0: u8 = 4;

pub(super) const fn nibbles(f: u8) -> bool {
    f != Q8_0
}

pub(super) const fn high_bit(f: u8) -> bool {
    f == Q5_0 || f == Q5_1
}

pub(super) const fn has_min(f: u8) -> bool {
    f == Q4_1 || f == Q5_1
}

/// What the stored unsigned quants exceed ggml's signed ones by.
pub(super) const fn offset(f: u8) -> i32 {
    match f {
        Q4_0 => 8,
        Q5_0 => 16,
        Q8_0 => 128,
        _ => 0,
    }
}

/// Quant bytes of one block of a group.
pub(super) const fn qs_bytes(f: u8) -> usize {
    if nibbles(f) {
        GROUP * QK / 2
    } else {
        GROUP * QK
    }
}

/// One cache line; the repacked weights are a vector of these so every
/// block's quants start 64-byte aligned.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [u8; 64]);

/// The bytes of `lines`.
pub(super) fn line_bytes(lines: &[Line]) -> &[u8] {
    // SAFETY: `Line` is 64 plain bytes with no padding.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast(), lines.len() * 64) }
}

/// The bytes of `lines`, writable.
pub(super) fn line_bytes_mut(lines: &mut [Line]) -> &mut [u8] {
    // SAFETY: `Line` is 64 plain bytes with no padding, and any byte values
    // are valid.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 64) }
}

/// A `(n, k)` weight matrix in the layout described in the module docs.
#[derive(Debug, Clone)]
pub(crate) struct TiledWeights {
    pub(super) format: u8,
    k: usize,
    /// Blocks per weight row.
    pub(super) nb: usize,
    group_bytes: usize,
    data: Vec<Line>,
}

impl TiledWeights {
    /// Repacks ggml blocks (`n` rows of `k` elements) when the type has a
    /// tiled kernel and `n` fills whole groups; `None` otherwise.
    pub(crate) fn new(dtype: GgmlDType, n: usize, k: usize, src: &[u8]) -> Option<Self> {
        let format = match dtype {
            GgmlDType::Q4_0 => Q4_0,
            GgmlDType::Q4_1 => Q4_1,
            GgmlDType::Q5_0 => Q5_0,
            GgmlDType::Q5_1 => Q5_1,
            GgmlDType::Q8_0 => Q8_0,
            _ => return None,
        };
        if !n.is_multiple_of(GROUP) || !k.is_multiple_of(QK) {
            return None;
        }
        let nb = k / QK;
        let mut tw = Self {
            format,
            k,
            nb,
            group_bytes: 0,
            data: Vec::new(),
        };
        tw.group_bytes = tw.min_offset() + if has_min(format) { nb * 32 } else { 0 };
        tw.group_bytes = tw.group_bytes.next_multiple_of(64);
        tw.data = vec![Line([0; 64]); n / GROUP * tw.group_bytes / 64];
        tw.repack(dtype, src);
        Some(tw)
    }

    pub(super) fn qh_offset(&self) -> usize {
        self.nb * qs_bytes(self.format)
    }

    pub(super) fn d_offset(&self) -> usize {
        self.qh_offset()
            + if high_bit(self.format) {
                self.nb * 64
            } else {
                0
            }
    }

    pub(super) fn min_offset(&self) -> usize {
        self.d_offset() + self.nb * 32
    }

    fn bytes(&self) -> &[u8] {
        line_bytes(&self.data)
    }

    /// Bytes of the repacked matrix.
    pub(crate) fn size_in_bytes(&self) -> usize {
        self.data.len() * 64
    }

    fn repack(&mut self, dtype: GgmlDType, src: &[u8]) {
        let f = self.format;
        let ts = dtype.type_size();
        let row_bytes = self.nb * ts;
        let (qh_off, d_off, m_off) = (self.qh_offset(), self.d_offset(), self.min_offset());
        let gb = self.group_bytes;
        let out = line_bytes_mut(&mut self.data);
        // Groups are independent; a 7B checkpoint has gigabytes of them.
        use rayon::prelude::*;
        // Where the nibbles and the fifth bits start in a ggml block.
        let (qh_at, qs_at) = match f {
            Q4_0 => (0, 2),
            Q4_1 => (0, 4),
            Q5_0 => (2, 6),
            Q5_1 => (4, 8),
            _ => (0, 2),
        };
        out.par_chunks_exact_mut(gb)
            .enumerate()
            .for_each(|(g, group)| {
                for i in 0..GROUP {
                    let row = &src[(g * GROUP + i) * row_bytes..][..row_bytes];
                    for (b, blk) in row.chunks_exact(ts).enumerate() {
                        group[d_off + 32 * b + 2 * i..][..2].copy_from_slice(&blk[..2]);
                        if has_min(f) {
                            group[m_off + 32 * b + 2 * i..][..2].copy_from_slice(&blk[2..4]);
                        }
                        let qs = &mut group[qs_bytes(f) * b..][..qs_bytes(f)];
                        for r in 0..QK / 4 {
                            for t in 0..4 {
                                let e = 4 * r + t;
                                if !nibbles(f) {
                                    qs[64 * r + 4 * i + t] = blk[qs_at + e] ^ 0x80;
                                } else if r < 4 {
                                    qs[64 * r + 4 * i + t] = blk[qs_at + e];
                                }
                            }
                        }
                        if high_bit(f) {
                            let qh = u32::from_le_bytes(blk[qh_at..qh_at + 4].try_into().unwrap());
                            let masks = &mut group[qh_off + 64 * b..][..64];
                            // Elements `4r..4r + 4` are a nibble of `qh`; the
                            // nibble's bit `t` is bit `4·(i % 2) + t` of a mask
                            // byte. (Bit by bit, the branches cost a 0.5B
                            // checkpoint's load about 0.9 s of CPU.)
                            for r in 0..QK / 4 {
                                let nibble = (qh >> (4 * r) & 0xF) as u8;
                                masks[8 * r + i / 2] |= nibble << (4 * (i % 2));
                            }
                        }
                    }
                }
            });
    }
}

impl TiledMatrix for TiledWeights {
    type Act = Q8x32;

    /// ggml's Q8_0, or Q8_1 for the types with a min; `corr` removes the
    /// weight offset.
    fn quantize(&self, x: &[f32], m: usize) -> Vec<Q8x32> {
        use rayon::prelude::*;
        let mut xq = vec![Q8x32::ZERO; m * self.nb];
        let (with_s, off) = (has_min(self.format), offset(self.format));
        if m > 1 {
            xq.par_chunks_mut(self.nb)
                .zip(x.par_chunks(self.k))
                .for_each(|(q, row)| quantize_row_q8(row, q, with_s, off));
        } else {
            quantize_row_q8(x, &mut xq, with_s, off);
        }
        xq
    }

    unsafe fn tile(&self, xq: &[Q8x32], j0: usize, o: &mut [&mut [f32]], amx: bool) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match self.format {
                Q4_0 => drive_tile(&Kernels::<Q4_0>(self), xq, j0, o, amx),
                Q4_1 => drive_tile(&Kernels::<Q4_1>(self), xq, j0, o, amx),
                Q5_0 => drive_tile(&Kernels::<Q5_0>(self), xq, j0, o, amx),
                Q5_1 => drive_tile(&Kernels::<Q5_1>(self), xq, j0, o, amx),
                _ => drive_tile(&Kernels::<Q8_0>(self), xq, j0, o, amx),
            }
        }
    }

    unsafe fn tile_avx2(&self, xq: &[Q8x32], j0: usize, o: &mut [&mut [f32]]) {
        // SAFETY: forwarded from the caller.
        unsafe { qmatmul_tiled_avx2::tile(self, xq, j0, o) }
    }
}

impl TiledWeights {
    /// The bytes of weight-row group `g`.
    pub(super) fn group(&self, g: usize) -> &[u8] {
        &self.bytes()[g * self.group_bytes..][..self.group_bytes]
    }

    /// `R` activation rows (`xs`, row-major blocks) against group `g`, with
    /// `vpdpbusd` on broadcast activation bytes: lane `i` of result `j` is
    /// weight row `16g + i` for activation row `j`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn group_vnni<const F: u8, const R: usize>(&self, g: usize, xs: &[Q8x32]) -> [__m512; R] {
        let group = self.group(g);
        let nb = self.nb;
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            // A group is one stream of bytes, which the hardware prefetcher
            // alone keeps too few lines ahead of a one-row multiply for
            // DRAM's bandwidth (decode was 4% slower than on ggml's rows):
            // ask for a later block's quants into L2 (past the group's end,
            // its scales or the next group's quants, also read soon; a
            // prefetch never faults).
            let ahead = group
                .as_ptr()
                .wrapping_add(qs_bytes(F) * (b + PREFETCH_BLOCKS));
            for line in (0..qs_bytes(F)).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line).cast());
            }
            let w = self.unpack::<F>(group, b);
            let (dw, mw) = self.scales::<F>(group, b);
            for (j, acc) in acc.iter_mut().enumerate() {
                let y = &xs[j * nb + b];
                let xw = |r: usize| {
                    let v: [u8; 4] = std::array::from_fn(|t| y.qs[4 * r + t] as u8);
                    _mm512_set1_epi32(i32::from_le_bytes(v))
                };
                // Two chains halve the dependency on vpdpbusd's latency.
                let mut c0 = _mm512_setzero_si512();
                let mut c1 = _mm512_setzero_si512();
                for r in (0..8).step_by(2) {
                    c0 = _mm512_dpbusd_epi32(c0, w[r], xw(r));
                    c1 = _mm512_dpbusd_epi32(c1, w[r + 1], xw(r + 1));
                }
                *acc = epilogue::<F>(_mm512_add_epi32(c0, c1), dw, mw, y, *acc);
            }
        }
        acc
    }

    /// `R` activation rows (`xs`, row-major blocks) against one group (its
    /// quants already `unpacked` for the 4- and 5-bit types), two blocks per
    /// AMX step, into `out[j][16·gg..]`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn group_amx<const F: u8, const R: usize>(
        &self,
        group: &[u8],
        unpacked: &[[__m512i; 8]],
        xs: &[Q8x32],
        out: &mut [&mut [f32]],
        gg: usize,
    ) {
        // SAFETY: the caller guarantees AMX was granted.
        unsafe { amx::configure(R, QK) };
        let mut c = [[[0i32; 16]; 16]; 2];
        let nb = self.nb;
        let a_stride = nb * size_of::<Q8x32>();
        let mut acc = [_mm512_setzero_ps(); R];
        for b in (0..nb).step_by(2) {
            // An odd last block is computed twice and used once.
            let blocks = [b, (b + 1).min(nb - 1)];
            let w = blocks.map(|blk| {
                if nibbles(F) {
                    unpacked[blk].as_ptr().cast::<u8>()
                } else {
                    group[qs_bytes(F) * blk..].as_ptr()
                }
            });
            let a = blocks.map(|blk| xs[blk].qs.as_ptr());
            // SAFETY: tiles are configured for `R` rows; activation row `j`
            // of block `blk` is `xs[j·nb + blk]`, `R` rows exist, and each
            // weight operand is 8 × 64 readable bytes.
            unsafe {
                if signed_for_amx(F) {
                    amx::dot_blocks::<true>(a, a_stride, w, &mut c)
                } else {
                    amx::dot_blocks::<false>(a, a_stride, w, &mut c)
                }
            };
            let used = nb.min(b + 2) - b;
            let scales = [b, b + used - 1].map(|blk| self.scales::<F>(group, blk));
            // Row by row, both blocks in order: the same f32 operations
            // as block by block, with each accumulator loaded once a pair.
            for (j, acc) in acc.iter_mut().enumerate() {
                for (h, &(dw, mw)) in scales.iter().enumerate().take(used) {
                    let y = &xs[j * nb + b + h];
                    // SAFETY: a row of `c` is 16 i32.
                    let ci = unsafe { _mm512_loadu_si512(c[h][j].as_ptr().cast()) };
                    *acc = if signed_for_amx(F) {
                        fold::<F>(ci, dw, mw, y, *acc)
                    } else {
                        epilogue::<F>(ci, dw, mw, y, *acc)
                    };
                }
            }
        }
        for (row, acc) in out.iter_mut().zip(acc) {
            let dst = &mut row[GROUP * gg..][..GROUP];
            // SAFETY: `dst` holds 16 f32.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), acc) };
        }
    }

    /// Block `b` of a group as eight registers of unsigned quants, register
    /// `r` holding elements `4r..4r + 4` of the 16 weight rows.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn unpack<const F: u8>(&self, group: &[u8], b: usize) -> [__m512i; 8] {
        let qs = &group[qs_bytes(F) * b..][..qs_bytes(F)];
        let load = |o: usize| {
            let q = &qs[o..o + 64];
            // SAFETY: `q` is 64 readable bytes; the load is unaligned.
            unsafe { _mm512_loadu_si512(q.as_ptr().cast()) }
        };
        let mut w = [_mm512_setzero_si512(); 8];
        if !nibbles(F) {
            for (r, w) in w.iter_mut().enumerate() {
                *w = load(64 * r);
            }
            return w;
        }
        let low = _mm512_set1_epi8(0xF);
        for c in 0..4 {
            let raw = load(64 * c);
            w[c] = _mm512_and_si512(raw, low);
            w[c + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), low);
        }
        if high_bit(F) {
            let masks = &group[self.qh_offset() + 64 * b..][..64];
            let sixteen = _mm512_set1_epi8(16);
            for (r, w) in w.iter_mut().enumerate() {
                let k = u64::from_le_bytes(masks[8 * r..8 * r + 8].try_into().unwrap());
                *w = _mm512_mask_add_epi8(*w, k, *w, sixteen);
            }
        }
        w
    }

    /// [`Self::unpack`], less the offset where [`signed_for_amx`].
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn unpack_for_amx<const F: u8>(&self, group: &[u8], b: usize) -> [__m512i; 8] {
        let w = self.unpack::<F>(group, b);
        if !signed_for_amx(F) {
            return w;
        }
        let off = _mm512_set1_epi8(offset(F) as i8);
        w.map(|w| _mm512_sub_epi8(w, off))
    }

    /// The 16 weight rows' scales (and mins; zero for types without) of
    /// block `b`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn scales<const F: u8>(&self, group: &[u8], b: usize) -> (__m512, __m512) {
        let half = |o: usize| {
            let h = &group[o + 32 * b..][..32];
            // SAFETY: `h` is 16 readable f16; the load is unaligned.
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr().cast())) }
        };
        let mw = if has_min(F) {
            half(self.min_offset())
        } else {
            _mm512_setzero_ps()
        };
        (half(self.d_offset()), mw)
    }
}

/// One quant type's kernels over a tiled matrix, as [`drive_tile`] calls
/// them; the row count is a const so that each batch size is compiled on
/// its own.
pub(super) trait TileKernels {
    /// The quantized activation blocks the kernels read.
    type Act;
    /// Activation blocks per row.
    fn row_blocks(&self) -> usize;
    /// The smallest batch that AMX multiplies; smaller ones take `vnni`.
    fn amx_min_rows(&self) -> usize {
        AMX_MIN_ROWS
    }
    /// Unpacked-block slots a group needs before AMX reads it (0: AMX
    /// reads the stored bytes).
    fn unpacked_len(&self) -> usize;
    /// `R` activation rows (`xs`, row-major) against group `g` with
    /// `vpdpbusd`: lane `i` of result `j` is weight row `16g + i` of row `j`.
    ///
    /// # Safety
    /// AVX-512 VNNI must be available.
    unsafe fn vnni<const R: usize>(&self, g: usize, xs: &[Self::Act]) -> [__m512; R];
    /// Fills `unpacked` (`unpacked_len` slots) from group `g`.
    ///
    /// # Safety
    /// AVX-512 VNNI must be available.
    unsafe fn unpack(&self, g: usize, unpacked: &mut [[__m512i; 8]]);
    /// `R` activation rows against group `g` (already `unpacked`) with AMX,
    /// into `out[j][16·gg..]`.
    ///
    /// # Safety
    /// AVX-512 VNNI must be available and AMX granted.
    unsafe fn amx<const R: usize>(
        &self,
        g: usize,
        unpacked: &[[__m512i; 8]],
        xs: &[Self::Act],
        out: &mut [&mut [f32]],
        gg: usize,
    );
}

/// The block-32 types' kernels for format `F`.
struct Kernels<'a, const F: u8>(&'a TiledWeights);

impl<const F: u8> TileKernels for Kernels<'_, F> {
    type Act = Q8x32;

    fn row_blocks(&self) -> usize {
        self.0.nb
    }

    fn unpacked_len(&self) -> usize {
        if nibbles(F) {
            self.0.nb
        } else {
            0
        }
    }

    unsafe fn vnni<const R: usize>(&self, g: usize, xs: &[Q8x32]) -> [__m512; R] {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.group_vnni::<F, R>(g, xs) }
    }

    unsafe fn unpack(&self, g: usize, unpacked: &mut [[__m512i; 8]]) {
        let group = self.0.group(g);
        for (b, u) in unpacked.iter_mut().enumerate() {
            // SAFETY: forwarded from the caller.
            *u = unsafe { self.0.unpack_for_amx::<F>(group, b) };
        }
    }

    unsafe fn amx<const R: usize>(
        &self,
        g: usize,
        unpacked: &[[__m512i; 8]],
        xs: &[Q8x32],
        out: &mut [&mut [f32]],
        gg: usize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            self.0
                .group_amx::<F, R>(self.0.group(g), unpacked, xs, out, gg)
        }
    }
}

/// The batch driver of both tiled modules, for output columns `j0..` (whole
/// groups) of every activation row in `o` (`xq`: `k.row_blocks()` blocks a
/// row). Without `amx`, or below `k.amx_min_rows()` rows, batches go through
/// `k.vnni` four, two or one rows at a time; larger ones with `amx` go group
/// by group: `k.unpack` fills its slots once, then `k.amx` runs chunks of
/// 16, 8, 4, 2 or 1 rows.
///
/// # Safety
///
/// AVX-512 VNNI must be available, and AMX granted when `amx`.
pub(super) unsafe fn drive_tile<K: TileKernels>(
    k: &K,
    xq: &[K::Act],
    j0: usize,
    o: &mut [&mut [f32]],
    amx: bool,
) {
    let (m, nb) = (o.len(), k.row_blocks());
    let width = o.first().map_or(0, |r| r.len());
    debug_assert!(j0.is_multiple_of(GROUP) && width.is_multiple_of(GROUP));
    let groups = j0 / GROUP..(j0 + width) / GROUP;
    if !amx || m < k.amx_min_rows() {
        // SAFETY: forwarded from the caller.
        return unsafe { drive_vnni(k, xq, groups, o) };
    }
    with_unpacked(k.unpacked_len(), |unpacked| {
        for (gg, g) in groups.enumerate() {
            // SAFETY: forwarded from the caller.
            unsafe { k.unpack(g, unpacked) };
            let mut i0 = 0;
            while i0 < m {
                let rows = [16, 8, 4, 2, 1].into_iter().find(|&r| r <= m - i0).unwrap();
                let xs = &xq[i0 * nb..(i0 + rows) * nb];
                let out = &mut o[i0..i0 + rows];
                // SAFETY: forwarded from the caller.
                unsafe {
                    match rows {
                        16 => k.amx::<16>(g, unpacked, xs, out, gg),
                        8 => k.amx::<8>(g, unpacked, xs, out, gg),
                        4 => k.amx::<4>(g, unpacked, xs, out, gg),
                        2 => k.amx::<2>(g, unpacked, xs, out, gg),
                        _ => k.amx::<1>(g, unpacked, xs, out, gg),
                    }
                }
                i0 += rows;
            }
        }
    });
}

/// [`drive_tile`] without AMX: `k.vnni` four, two or one rows at a time
/// over the output groups `groups`. Its own function so that the stores
/// and the kernels' register results inline under the AVX-512 features
/// (in `drive_tile`, which also runs the AMX path, they were calls).
///
/// # Safety
///
/// AVX-512 VNNI must be available.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn drive_vnni<K: TileKernels>(
    k: &K,
    xq: &[K::Act],
    groups: std::ops::Range<usize>,
    o: &mut [&mut [f32]],
) {
    let (m, nb) = (o.len(), k.row_blocks());
    let mut i0 = 0;
    while i0 < m {
        let rows = [4, 2, 1].into_iter().find(|&r| r <= m - i0).unwrap();
        let xs = &xq[i0 * nb..(i0 + rows) * nb];
        for (gg, g) in groups.clone().enumerate() {
            let mut acc = [_mm512_setzero_ps(); 4];
            // SAFETY (these calls and the stores): forwarded from the
            // caller; `dst` holds 16 f32.
            unsafe {
                match rows {
                    4 => acc = k.vnni::<4>(g, xs),
                    2 => acc[..2].copy_from_slice(&k.vnni::<2>(g, xs)),
                    _ => acc[..1].copy_from_slice(&k.vnni::<1>(g, xs)),
                }
                for (row, acc) in o[i0..i0 + rows].iter_mut().zip(acc) {
                    let dst = &mut row[GROUP * gg..][..GROUP];
                    _mm512_storeu_ps(dst.as_mut_ptr(), acc);
                }
            }
        }
        i0 += rows;
    }
}

thread_local! {
    /// Each thread's buffer of unpacked weight blocks (16 bytes per weight
    /// column of the widest matrix it has multiplied).
    static UNPACKED: std::cell::RefCell<Vec<[__m512i; 8]>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` unpacked-block slots of this thread's buffer. A group
/// is unpacked there once for all activation rows, and well before AMX
/// loads it: a tile load of freshly stored bytes waits for the stores to
/// reach the cache, which cost more than the multiply when done block by
/// block.
fn with_unpacked<T>(len: usize, f: impl FnOnce(&mut [[__m512i; 8]]) -> T) -> T {
    UNPACKED.with_borrow_mut(|buf| {
        if buf.len() < len {
            // SAFETY: all-zero bytes are valid integer vectors.
            buf.resize(len, unsafe { std::mem::zeroed() });
        }
        f(&mut buf[..len])
    })
}

/// Whether AMX multiplies this format's unpacked quants as signed bytes
/// (`tdpbssd`): the 4- and 5-bit types with a fixed offset lose it when
/// unpacked, so their exact block sums come out of the tiles without the
/// activations' `corr`, one vector add fewer per row and block. (Q8_0 reads
/// its stored bytes, which are unsigned.)
const fn signed_for_amx(f: u8) -> bool {
    nibbles(f) && offset(f) != 0
}

/// Folds block sums `c` (16 weight rows, offset still in) into `acc`:
/// `acc + (c + corr)·(dw·dx) [+ mw·s]`, ggml's per-block formula. Both
/// kernels go through here (or [`fold`] with the offset already out) so
/// their results are bit-identical.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn epilogue<const F: u8>(c: __m512i, dw: __m512, mw: __m512, y: &Q8x32, acc: __m512) -> __m512 {
    let c = if offset(F) != 0 {
        _mm512_add_epi32(c, _mm512_set1_epi32(y.corr))
    } else {
        c
    };
    fold::<F>(c, dw, mw, y, acc)
}

/// [`epilogue`] for exact block sums `c` (the weights' offset out).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn fold<const F: u8>(c: __m512i, dw: __m512, mw: __m512, y: &Q8x32, acc: __m512) -> __m512 {
    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(y.d));
    let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), scale, acc);
    if has_min(F) {
        _mm512_fmadd_ps(mw, _mm512_set1_ps(y.s), acc)
    } else {
        acc
    }
}
