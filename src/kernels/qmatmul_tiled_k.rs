//! Q4_K and Q6_K weights in the tiled layout of [`super::qmatmul_tiled`]:
//! 16 weight rows a group, each scaled sub-block (32 elements for Q4_K, 16
//! for Q6_K) stored as 64-byte rows of four elements of every weight row.
//! Q4_K keeps its nibbles (the low and high halves of 8 × 64 bytes are two
//! consecutive sub-blocks, ggml's pairing). Q6_K keeps its 6 bits (quant +
//! 32, 0..=63), so that a decode step streams ggml's bytes and no more: a
//! sub-block's lines 0–2 in the low six bits of three lines, whose top two
//! bits carry line 3's value, two bits each ([`q6_line`] rebuilds a line).
//! Sub-block scales are bytes, `[sub-block][row]`; Q4_K mins are bytes
//! `[sub-block pair][row][2]`, a pair a 16-bit lane each for `vpdpwssd`.
//!
//! Per (activation row, weight row, super-block) the integer part, `Σ scale
//! · (q·x)` and `Σ min · Σx`, is exact whichever kernel sums it (VNNI per
//! sub-block with [`accumulate`]; AMX per super-block with the scales
//! folded into unpacked quants, split in two parts for Q4_K and in three
//! base-7 digits for Q6_K, for batches of 16 rows and more; AVX2 per
//! sub-block with `vpmaddubsw`, in [`avx2_path`], on eight weight rows at
//! a time), and [`finish`] (or its 8-lane copy in `avx2_path`) turns it
//! into floats the same way after each, so the AMX, VNNI and AVX2 kernels
//! agree bit for bit, as for the 32-element types.

use std::arch::x86_64::*;

use candle_core::quantized::GgmlDType;

use super::qmatmul::{k4_scales, unpack_k, KBlock, Q8xK, QK_K};
use super::qmatmul_tiled::{
    drive_tile, line_bytes, line_bytes_mut, Line, TileKernels, TiledMatrix, GROUP,
};
use super::quantize::quantize_row_q8k;

mod amx_path;
mod avx2_path;

use amx_path::{unpacked_slots, AMX_MIN_ROWS_K, QUANT_SLOTS};

/// Format selectors (const generics cannot take enums).
const Q4K: u8 = 0;
const Q6K: u8 = 1;

/// Elements per scaled sub-block.
const fn sub(f: u8) -> usize {
    if f == Q4K {
        32
    } else {
        16
    }
}

/// Sub-blocks per super-block.
const fn nsub(f: u8) -> usize {
    QK_K / sub(f)
}

/// Quant bytes of one super-block of a group.
const fn qs_bytes(f: u8) -> usize {
    if f == Q4K {
        GROUP * QK_K / 2
    } else {
        GROUP * QK_K * 3 / 4
    }
}

/// Bytes of a Q6_K sub-block: three lines of 64.
const Q6_SUB: usize = 192;

/// Line `r` (0..4) of a Q6_K sub-block as the stored byte values (quant +
/// 32) from the sub-block's three lines `l0..l2`: lines 0–2 are their low
/// six bits, and line 3's bits `2i..2i + 2` are the top two bits of line
/// `i`. The 16-bit shifts carry bits across byte boundaries only into bits
/// that the masks clear.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn q6_line(l0: __m512i, l1: __m512i, l2: __m512i, r: usize) -> __m512i {
    let six = _mm512_set1_epi8(0x3F);
    match r {
        0 => _mm512_and_si512(l0, six),
        1 => _mm512_and_si512(l1, six),
        2 => _mm512_and_si512(l2, six),
        _ => {
            // (a & c) | (b & !c), bit by bit.
            const SELECT: i32 = 0xE4;
            let low = _mm512_ternarylogic_epi32::<SELECT>(
                _mm512_srli_epi16::<6>(l0),
                _mm512_srli_epi16::<4>(l1),
                _mm512_set1_epi8(0x03),
            );
            let all = _mm512_ternarylogic_epi32::<SELECT>(
                low,
                _mm512_srli_epi16::<2>(l2),
                _mm512_set1_epi8(0x0F),
            );
            _mm512_and_si512(all, six)
        }
    }
}

/// A `(n, k)` Q4_K or Q6_K matrix in the layout described in the module docs.
#[derive(Debug, Clone)]
pub(crate) struct TiledKWeights {
    format: u8,
    k: usize,
    /// Super-blocks per weight row.
    nsb: usize,
    group_bytes: usize,
    data: Vec<Line>,
}

/// A super-block's per-row constants for 16 weight rows, widened once for
/// every activation row: the mins (Q4_K) and the super-block scales. (The
/// AMX paths fold the sub-block scales into their unpacked quants.)
struct Scales {
    mn: [__m512i; 4],
    d: __m512,
    dmin: __m512,
}

impl TiledKWeights {
    /// Repacks ggml super-blocks (`n` rows of `k` elements) when the type has
    /// a tiled kernel and `n` fills whole groups; `None` otherwise.
    pub(crate) fn new(dtype: GgmlDType, n: usize, k: usize, src: &[u8]) -> Option<Self> {
        let format = match dtype {
            GgmlDType::Q4K => Q4K,
            GgmlDType::Q6K => Q6K,
            _ => return None,
        };
        if !n.is_multiple_of(GROUP) || !k.is_multiple_of(QK_K) {
            return None;
        }
        let mut tw = Self {
            format,
            k,
            nsb: k / QK_K,
            group_bytes: 0,
            data: Vec::new(),
        };
        let end = tw.dmin_offset() + if format == Q4K { tw.nsb * 32 } else { 0 };
        tw.group_bytes = end.next_multiple_of(64);
        tw.data = vec![Line([0; 64]); n / GROUP * tw.group_bytes / 64];
        tw.repack(dtype, src);
        Some(tw)
    }

    fn sc_offset(&self) -> usize {
        self.nsb * qs_bytes(self.format)
    }

    fn mn_offset(&self) -> usize {
        self.sc_offset() + self.nsb * nsub(self.format) * GROUP
    }

    fn d_offset(&self) -> usize {
        self.mn_offset()
            + if self.format == Q4K {
                self.nsb * 128
            } else {
                0
            }
    }

    fn dmin_offset(&self) -> usize {
        self.d_offset() + self.nsb * 32
    }

    /// Bytes of the repacked matrix.
    pub(crate) fn size_in_bytes(&self) -> usize {
        self.data.len() * 64
    }

    fn repack(&mut self, dtype: GgmlDType, src: &[u8]) {
        let f = self.format;
        let ts = dtype.type_size();
        let row_bytes = self.nsb * ts;
        let sc_off = self.sc_offset();
        // Offsets from the end of the quants.
        let mn_off = self.mn_offset() - sc_off;
        let (d_off, dmin_off) = (self.d_offset() - sc_off, self.dmin_offset() - sc_off);
        let gb = self.group_bytes;
        // Groups are independent; a 7B checkpoint has gigabytes of them.
        use rayon::prelude::*;
        let out = line_bytes_mut(&mut self.data);
        out.par_chunks_exact_mut(gb)
            .enumerate()
            .for_each(|(g, group)| {
                let mut kb = KBlock::ZERO;
                for i in 0..GROUP {
                    let row = &src[(g * GROUP + i) * row_bytes..][..row_bytes];
                    // Quants before `sc_off`, per-row constants after.
                    let (quants, group) = group.split_at_mut(sc_off);
                    for (b, blk) in row.chunks_exact(ts).enumerate() {
                        let qs = &mut quants[qs_bytes(f) * b..][..qs_bytes(f)];
                        if f == Q4K {
                            group[d_off + 32 * b + 2 * i..][..2].copy_from_slice(&blk[0..2]);
                            group[dmin_off + 32 * b + 2 * i..][..2].copy_from_slice(&blk[2..4]);
                            for c in 0..4 {
                                for r in 0..8 {
                                    for t in 0..4 {
                                        qs[512 * c + 64 * r + 4 * i + t] =
                                            blk[16 + 32 * c + 4 * r + t];
                                    }
                                }
                            }
                            let (sc, mn) = k4_scales(&blk[4..16]);
                            for s in 0..8 {
                                group[128 * b + GROUP * s + i] = sc[s];
                                group[mn_off + 128 * b + 32 * (s / 2) + 2 * i + s % 2] = mn[s];
                            }
                        } else {
                            group[d_off + 32 * b + 2 * i..][..2].copy_from_slice(&blk[208..210]);
                            unpack_k(dtype, blk, &mut kb);
                            for s in 0..16 {
                                let sub = &mut qs[Q6_SUB * s..][..Q6_SUB];
                                for t in 0..4 {
                                    let q = |r: usize| (kb.q[16 * s + 4 * r + t] + 32) as u8;
                                    for r in 0..3 {
                                        sub[64 * r + 4 * i + t] = q(r) | (q(3) >> (2 * r)) << 6;
                                    }
                                }
                                group[256 * b + GROUP * s + i] = kb.scales[s] as i8 as u8;
                            }
                        }
                    }
                }
            });
    }
}

impl TiledMatrix for TiledKWeights {
    type Act = Q8xK;

    /// ggml's Q8_K.
    fn quantize(&self, x: &[f32], m: usize) -> Vec<Q8xK> {
        use rayon::prelude::*;
        let mut xq = vec![Q8xK::ZERO; m * self.nsb];
        if m > 1 {
            xq.par_chunks_mut(self.nsb)
                .zip(x.par_chunks(self.k))
                .for_each(|(q, row)| quantize_row_q8k(row, q));
        } else {
            quantize_row_q8k(x, &mut xq);
        }
        xq
    }

    unsafe fn tile(&self, xq: &[Q8xK], j0: usize, o: &mut [&mut [f32]], amx: bool) {
        // SAFETY: forwarded from the caller.
        unsafe {
            if self.format == Q4K {
                drive_tile(&Kernels::<Q4K>(self), xq, j0, o, amx)
            } else {
                drive_tile(&Kernels::<Q6K>(self), xq, j0, o, amx)
            }
        }
    }

    unsafe fn tile_avx2(&self, xq: &[Q8xK], j0: usize, o: &mut [&mut [f32]]) {
        // SAFETY: forwarded from the caller.
        unsafe { avx2_path::tile(self, xq, j0, o) }
    }
}

impl TiledKWeights {
    fn group(&self, g: usize) -> &[u8] {
        &line_bytes(&self.data)[g * self.group_bytes..][..self.group_bytes]
    }

    /// The 16 weight rows' mins (Q4_K) and super-block scales of
    /// super-block `b`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn scales<const F: u8>(&self, group: &[u8], b: usize) -> Scales {
        let half = |o: usize| {
            let h = &group[o + 32 * b..][..32];
            // SAFETY: `h` is 16 readable f16; the load is unaligned.
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr().cast())) }
        };
        if F == Q4K {
            Scales {
                mn: mins(group, self.mn_offset() + 128 * b),
                d: half(self.d_offset()),
                dmin: half(self.dmin_offset()),
            }
        } else {
            Scales {
                mn: [_mm512_setzero_si512(); 4],
                d: half(self.d_offset()),
                dmin: _mm512_setzero_ps(),
            }
        }
    }

    /// `R` activation rows (`xs`, row-major super-blocks) against group `g`
    /// with `vpdpbusd` on broadcast activation bytes: lane `i` of result `j`
    /// is weight row `16g + i` for activation row `j`.
    ///
    /// This is the decode kernel, written as one body over raw offsets:
    /// helpers that return register arrays are not always inlined under
    /// `target_feature` (the AMX path's [`Scales`], 26 vectors, is a call per
    /// super-block whose result goes through the stack). Sub-blocks go in
    /// pairs, so Q4_K reads each quant line once for both of its nibbles.
    /// With the software prefetch this made single-stream decode ~1.1× faster
    /// on an AMX Xeon; the old body with only the prefetch added was not
    /// (docs/performance.md). The AMX path keeps the helpers: there a group's
    /// scales serve up to 16 activation rows.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn group_vnni<const F: u8, const R: usize>(&self, g: usize, xs: &[Q8xK]) -> [__m512; R] {
        let group = self.group(g);
        let nsb = self.nsb;
        assert!(xs.len() >= R * nsb, "{R} rows of {nsb} super-blocks");
        let end = self.dmin_offset() + if F == Q4K { 32 * nsb } else { 0 };
        assert!(group.len() >= end, "group of {} bytes", group.len());
        let p = group.as_ptr();
        // SAFETY (these loads): every offset below is inside the group, whose
        // regions `new` sized for `nsb` super-blocks (asserted above).
        let line = |o: usize| unsafe { _mm512_loadu_si512(p.add(o).cast()) };
        let bytes16 = |o: usize| unsafe { _mm_loadu_si128(p.add(o).cast()) };
        let half = |o: usize| unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.add(o).cast())) };
        let (sc_at, mn_at) = (self.sc_offset(), self.mn_offset());
        let (d_at, dmin_at) = (self.d_offset(), self.dmin_offset());
        let low = _mm512_set1_epi8(0xF);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nsb {
            let q = qs_bytes(F) * b;
            // As in the 32-element kernel: a group is one stream of bytes,
            // so ask for the quants 4 KiB ahead into L2 (past the group's
            // end, its scales or the next group: read soon; never faults).
            for l in (0..qs_bytes(F)).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(q + 4096 + l).cast());
            }
            let mut t = [_mm512_setzero_si512(); R];
            for s in (0..nsub(F)).step_by(2) {
                let mut w = [[_mm512_setzero_si512(); 8]; 2];
                if F == Q4K {
                    let [lo, hi] = &mut w;
                    for (r, (lo, hi)) in lo.iter_mut().zip(hi).enumerate() {
                        let raw = line(q + 512 * (s / 2) + 64 * r);
                        *lo = _mm512_and_si512(raw, low);
                        *hi = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), low);
                    }
                } else {
                    for (h, w) in w.iter_mut().enumerate() {
                        let at = q + Q6_SUB * (s + h);
                        let [l0, l1, l2] = [0, 1, 2].map(|r| line(at + 64 * r));
                        for (r, w) in w.iter_mut().take(4).enumerate() {
                            *w = q6_line(l0, l1, l2, r);
                        }
                    }
                }
                let sc = [s, s + 1].map(|ss| {
                    let v = bytes16(sc_at + nsub(F) * GROUP * b + GROUP * ss);
                    if F == Q4K {
                        _mm512_cvtepu8_epi32(v)
                    } else {
                        _mm512_cvtepi8_epi32(v)
                    }
                });
                for (j, t) in t.iter_mut().enumerate() {
                    // SAFETY: `j·nsb + b < R·nsb ≤ xs.len()` (asserted).
                    let y = unsafe { xs.get_unchecked(j * nsb + b) };
                    for (h, (w, sc)) in w.iter().zip(sc).enumerate() {
                        let x = y.qs.as_ptr().wrapping_add(sub(F) * (s + h));
                        // SAFETY: element `4r + 3 < sub(F)` of sub-block
                        // `s + h < nsub(F)` is inside `y.qs`.
                        let xw = |r: usize| unsafe {
                            _mm512_set1_epi32(x.add(4 * r).cast::<i32>().read_unaligned())
                        };
                        // Two chains halve the dependency on vpdpbusd's latency.
                        let mut c0 = _mm512_setzero_si512();
                        let mut c1 = _mm512_setzero_si512();
                        for r in (0..sub(F) / 4).step_by(2) {
                            c0 = _mm512_dpbusd_epi32(c0, w[r], xw(r));
                            c1 = _mm512_dpbusd_epi32(c1, w[r + 1], xw(r + 1));
                        }
                        *t = accumulate::<F>(*t, _mm512_add_epi32(c0, c1), sc, s + h, y);
                    }
                }
            }
            let d = half(d_at + 32 * b);
            let (dmin, mn) = if F == Q4K {
                (half(dmin_at + 32 * b), mins(group, mn_at + 128 * b))
            } else {
                (_mm512_setzero_ps(), [_mm512_setzero_si512(); 4])
            };
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let y = unsafe { xs.get_unchecked(j * nsb + b) };
                *acc = finish::<F>(t[j], d, dmin, &mn, y, *acc);
            }
        }
        acc
    }
}

/// A Q4_K super-block's mins for 16 weight rows at `at`: register `p`
/// holds sub-blocks `2p` and `2p + 1` as the two 16-bit halves of each
/// row's lane (stored so, 32 bytes a pair).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn mins(group: &[u8], at: usize) -> [__m512i; 4] {
    std::array::from_fn(|p| {
        let v = &group[at + 32 * p..][..32];
        // SAFETY: `v` is 32 readable bytes; the load is unaligned.
        _mm512_cvtepu8_epi16(unsafe { _mm256_loadu_si256(v.as_ptr().cast()) })
    })
}

/// Adds sub-block `s`'s integer dot products (`isum`, 16 weight rows) times
/// its scales `sc` to `t`; Q6_K's +32 offset leaves through the activation
/// sums.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn accumulate<const F: u8>(t: __m512i, isum: __m512i, sc: __m512i, s: usize, y: &Q8xK) -> __m512i {
    let isum = if F == Q6K {
        _mm512_sub_epi32(isum, _mm512_set1_epi32(32 * i32::from(y.bsums[s])))
    } else {
        isum
    };
    _mm512_add_epi32(t, _mm512_mullo_epi32(sc, isum))
}

/// Folds a super-block's exact integer sum `t` into `acc`:
/// `acc + t·(d·dx) − (Σ min·Σx)·(dmin·dx)`, ggml's per-super-block formula
/// (`dmin` and the mins `mn` only for Q4_K).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn finish<const F: u8>(
    t: __m512i,
    d: __m512,
    dmin: __m512,
    mn: &[__m512i; 4],
    y: &Q8xK,
    acc: __m512,
) -> __m512 {
    let dx = _mm512_set1_ps(y.d);
    let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(d, dx), acc);
    if F != Q4K {
        return acc;
    }
    // Sub-block pairs' sums of 32 quants, side by side in a dword as
    // `Q8xK::pairs` holds them, meet their weight rows' pairs of mins in
    // `vpdpwssd`.
    let mut msum = _mm512_setzero_si512();
    for (mn, &pair) in mn.iter().zip(&y.pairs) {
        msum = _mm512_dpwssd_epi32(msum, *mn, _mm512_set1_epi32(pair));
    }
    _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dmin, dx), acc)
}

/// The k-quant kernels for format `F`.
struct Kernels<'a, const F: u8>(&'a TiledKWeights);

impl<const F: u8> TileKernels for Kernels<'_, F> {
    type Act = Q8xK;

    fn row_blocks(&self) -> usize {
        self.0.nsb
    }

    fn amx_min_rows(&self) -> usize {
        AMX_MIN_ROWS_K
    }

    /// Both formats' super-blocks are unpacked (scales folded in, and
    /// their [`Scales`] widened) once per group for AMX.
    fn unpacked_len(&self) -> usize {
        self.0.nsb * unpacked_slots(F)
    }

    unsafe fn vnni<const R: usize>(&self, g: usize, xs: &[Q8xK]) -> [__m512; R] {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.group_vnni::<F, R>(g, xs) }
    }

    unsafe fn unpack(&self, g: usize, unpacked: &mut [[__m512i; 8]]) {
        let group = self.0.group(g);
        for (b, u) in unpacked.chunks_exact_mut(unpacked_slots(F)).enumerate() {
            // SAFETY: forwarded from the caller.
            unsafe {
                if F == Q4K {
                    self.0.unpack_scaled(group, b, u)
                } else {
                    self.0.unpack_digits(group, b, u)
                }
                u[QUANT_SLOTS[F as usize]] = self.0.scales::<F>(group, b).to_slot();
            }
        }
    }

    unsafe fn amx<const R: usize>(
        &self,
        _g: usize,
        unpacked: &[[__m512i; 8]],
        xs: &[Q8xK],
        out: &mut [&mut [f32]],
        gg: usize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            if F == Q4K {
                self.0.group_amx_q4k::<R>(unpacked, xs, out, gg)
            } else {
                self.0.group_amx_q6k::<R>(unpacked, xs, out, gg)
            }
        }
    }
}
