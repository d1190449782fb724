//! Q4_K and Q6_K weights in the tiled layout of [`super::qmatmul_tiled`]:
//! 16 weight rows a group, each scaled sub-block (32 elements for Q4_K, 16
//! for Q6_K) stored as 64-byte rows of four elements of every weight row.
//! Q4_K keeps its nibbles (the low and high halves of 8 × 64 bytes are two
//! consecutive sub-blocks, ggml's pairing); Q6_K is stored as bytes (quant +
//! 32), 8 bits instead of 6.56, to keep its unpacking out of the hot loop.
//! Sub-block scales are bytes, `[sub-block][row]`; Q4_K mins are bytes
//! `[sub-block pair][row][2]`, a pair a 16-bit lane each for `vpdpwssd`.
//!
//! Per (activation row, weight row, super-block) the integer part, `Σ scale
//! · (q·x)` and `Σ min · Σx`, is exact whichever kernel sums it (VNNI per
//! sub-block with [`accumulate`]; AMX per sub-block for Q6_K, per
//! super-block with the scales folded into the quants for Q4_K), and
//! [`finish`] turns it into floats the same way after each, so the AMX and
//! VNNI kernels agree bit for bit, as for the 32-element types.

use std::arch::x86_64::*;

use candle_core::quantized::GgmlDType;

use super::amx;
use super::qmatmul::{k4_scales, unpack_k, KBlock, Q8xK, QK_K};
use super::qmatmul_tiled::{drive_tile, line_bytes, line_bytes_mut, Line, TileKernels, GROUP};
use super::quantize::quantize_row_q8k;

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
        GROUP * QK_K
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

impl Scales {
    /// As one unpacked slot, stored beside the super-block's quants so that
    /// every chunk of activation rows loads them instead of widening them.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn to_slot(&self) -> [__m512i; 8] {
        let [m0, m1, m2, m3] = self.mn;
        let (d, dmin) = (_mm512_castps_si512(self.d), _mm512_castps_si512(self.dmin));
        [
            m0,
            m1,
            m2,
            m3,
            d,
            dmin,
            _mm512_setzero_si512(),
            _mm512_setzero_si512(),
        ]
    }

    /// The inverse of [`Self::to_slot`].
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn from_slot(slot: &[__m512i; 8]) -> Self {
        Self {
            mn: [slot[0], slot[1], slot[2], slot[3]],
            d: _mm512_castsi512_ps(slot[4]),
            dmin: _mm512_castsi512_ps(slot[5]),
        }
    }
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
                                for r in 0..4 {
                                    for t in 0..4 {
                                        let q = kb.q[16 * s + 4 * r + t] + 32;
                                        qs[256 * s + 64 * r + 4 * i + t] = q as u8;
                                    }
                                }
                                group[256 * b + GROUP * s + i] = kb.scales[s] as i8 as u8;
                            }
                        }
                    }
                }
            });
    }

    /// Quantizes `m` activation rows to ggml's Q8_K.
    pub(crate) fn quantize(&self, x: &[f32], m: usize) -> Vec<Q8xK> {
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

    /// Computes the weight rows `j0..j0 + width` (whole groups) of every
    /// activation row `i` into `o[i][..width]`.
    ///
    /// # Safety
    ///
    /// `Isa::Amx` must be supported (AVX-512 VNNI, and AMX granted).
    pub(crate) unsafe fn tile(&self, xq: &[Q8xK], j0: usize, o: &mut [&mut [f32]]) {
        // SAFETY: forwarded from the caller.
        unsafe {
            if self.format == Q4K {
                drive_tile(&Kernels::<Q4K>(self), xq, j0, o, true)
            } else {
                drive_tile(&Kernels::<Q6K>(self), xq, j0, o, true)
            }
        }
    }

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

    /// Q4_K sub-block `s` of super-block `b` as nibble bytes, register `r`
    /// holding elements `4r..4r + 4` of the sub-block for the 16 rows.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn unpack_q4k(&self, group: &[u8], b: usize, s: usize) -> [__m512i; 8] {
        let at = qs_bytes(Q4K) * b + 512 * (s / 2);
        let low = _mm512_set1_epi8(0xF);
        std::array::from_fn(|r| {
            let q = &group[at + 64 * r..][..64];
            // SAFETY: `q` is 64 readable bytes; the load is unaligned.
            let raw = unsafe { _mm512_loadu_si512(q.as_ptr().cast()) };
            let raw = if s % 2 == 1 {
                _mm512_srli_epi16::<4>(raw)
            } else {
                raw
            };
            _mm512_and_si512(raw, low)
        })
    }

    /// Q4_K super-block `b` as the AMX path's weight operands, with the
    /// sub-block scales folded into the quants. A 6-bit scale times a 4-bit
    /// quant needs 10 bits, so the scale is split, `sc = 8·(sc >> 3) + (sc &
    /// 7)`: both parts times a quant are bytes (≤ 105), and `Σ sc·q·x = 8·Σ
    /// (sc >> 3)·q·x + Σ (sc & 7)·q·x` exactly, each sum over the whole
    /// super-block in one accumulator tile. `out[s]` is sub-block `s` times
    /// `sc >> 3` and `out[8 + s]` times `sc & 7`, registers as in
    /// [`Self::unpack_q4k`]: a 64-element tile step (two sub-blocks) is
    /// 1 KiB of consecutive lines.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn unpack_scaled(&self, group: &[u8], b: usize, out: &mut [[__m512i; 8]]) {
        let out = &mut out[..QUANT_SLOTS[Q4K as usize]];
        let sc_at = self.sc_offset() + nsub(Q4K) * GROUP * b;
        let even = _mm512_set1_epi16(0x00FF);
        for s in 0..nsub(Q4K) {
            let v = &group[sc_at + GROUP * s..][..16];
            // SAFETY: `v` is 16 readable bytes; the load is unaligned.
            let sc = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(v.as_ptr().cast()) });
            // Row i's scale in both 16-bit halves of its lane.
            let sc = _mm512_or_si512(sc, _mm512_slli_epi32::<16>(sc));
            let parts = [
                _mm512_srli_epi16::<3>(sc),
                _mm512_and_si512(sc, _mm512_set1_epi16(7)),
            ];
            let q = self.unpack_q4k(group, b, s);
            for (h, part) in parts.into_iter().enumerate() {
                for (o, q) in out[nsub(Q4K) * h + s].iter_mut().zip(q) {
                    // Each byte's product fits its byte: the 16-bit products
                    // of the even and the odd bytes leave each other alone.
                    let lo = _mm512_mullo_epi16(_mm512_and_si512(q, even), part);
                    let hi = _mm512_mullo_epi16(_mm512_andnot_si512(even, q), part);
                    *o = _mm512_or_si512(lo, hi);
                }
            }
        }
    }

    /// Q6_K super-block `b` as the AMX path's weight operands: the quants
    /// centred (-32..=31, signed bytes) times each balanced base-7 digit of
    /// their sub-block's scale ([`base7_digits`]), so `Σ sc·q·x = 49·Σ d0·q·x +
    /// 7·Σ d1·q·x + Σ d2·q·x` exactly, each sum over the whole super-block
    /// in one accumulator tile. `out[8k..8k + 8]` is digit `k`'s copy, 64
    /// lines in the stored order (sub-block `s`, line `r` at `4s + r`): a
    /// 64-element tile step is 1 KiB of consecutive lines.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn unpack_digits(&self, group: &[u8], b: usize, out: &mut [[__m512i; 8]]) {
        let out = &mut out[..QUANT_SLOTS[Q6K as usize]];
        let sc_at = self.sc_offset() + nsub(Q6K) * GROUP * b;
        let (centre, low) = (_mm512_set1_epi8(32), _mm512_set1_epi16(0x00FF));
        for s in 0..nsub(Q6K) {
            let sc = &group[sc_at + GROUP * s..][..GROUP];
            // SAFETY: `sc` is 16 readable bytes; the load is unaligned.
            let sc = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(sc.as_ptr().cast()) });
            let digits = base7_digits(sc).map(|d| {
                // The digit in both 16-bit halves of row i's lane.
                let d = _mm512_cvtepu16_epi32(d);
                _mm512_or_si512(d, _mm512_slli_epi32::<16>(d))
            });
            for r in 0..4 {
                let q = &group[qs_bytes(Q6K) * b + 256 * s + 64 * r..][..64];
                // SAFETY: `q` is 64 readable bytes; the load is unaligned.
                let q = _mm512_sub_epi8(unsafe { _mm512_loadu_si512(q.as_ptr().cast()) }, centre);
                let even = _mm512_srai_epi16::<8>(_mm512_slli_epi16::<8>(q));
                let odd = _mm512_srai_epi16::<8>(q);
                let line = 4 * s + r;
                for (k, d) in digits.into_iter().enumerate() {
                    // |q·d| ≤ 96: each 16-bit product's low byte is the
                    // signed byte product.
                    let lo = _mm512_and_si512(_mm512_mullo_epi16(even, d), low);
                    let hi = _mm512_slli_epi16::<8>(_mm512_mullo_epi16(odd, d));
                    out[8 * k + line / 8][line % 8] = _mm512_or_si512(lo, hi);
                }
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
                        for (r, w) in w.iter_mut().take(4).enumerate() {
                            *w = line(q + 256 * (s + h) + 64 * r);
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

    /// `R` activation rows (`xs`, row-major super-blocks) against one Q4_K
    /// group (its super-blocks `unpacked` by [`Self::unpack_scaled`]), a
    /// super-block per pair of accumulator tiles, into `out[j][16·gg..]`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn group_amx_q4k<const R: usize>(
        &self,
        unpacked: &[[__m512i; 8]],
        xs: &[Q8xK],
        out: &mut [&mut [f32]],
        gg: usize,
    ) {
        const SB: usize = unpacked_slots(Q4K);
        // SAFETY: the caller guarantees AMX was granted.
        unsafe { amx::configure(R, 64) };
        let mut c = [[[0i32; 16]; 16]; 2];
        let nsb = self.nsb;
        assert!(unpacked.len() >= SB * nsb && xs.len() >= R * nsb);
        let a_stride = nsb * size_of::<Q8xK>();
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nsb {
            let w = [0, nsub(Q4K)].map(|h| unpacked[SB * b + h].as_ptr().cast::<u8>());
            // SAFETY: tiles are configured for `R` rows of 64 bytes;
            // activation row `j` of super-block `b` is `xs[j·nsb + b]` (`R`
            // rows exist, asserted), each with `QK_K` quants; each weight
            // operand is `QK_K / 64` KiB of `unpacked` (asserted).
            unsafe { amx::dot_i8(xs[b].qs.as_ptr(), a_stride, w, QK_K / 64, &mut c) };
            let sv = Scales::from_slot(&unpacked[SB * b + QUANT_SLOTS[Q4K as usize]]);
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: a row of `c` is 16 i32.
                let [upper, lower] = c
                    .each_ref()
                    .map(|c| unsafe { _mm512_loadu_si512(c[j].as_ptr().cast()) });
                let t = _mm512_add_epi32(_mm512_slli_epi32::<3>(upper), lower);
                *acc = finish::<Q4K>(t, sv.d, sv.dmin, &sv.mn, &xs[j * nsb + b], *acc);
            }
        }
        store_rows(out, gg, acc);
    }

    /// `R` activation rows (`xs`, row-major super-blocks) against one Q6_K
    /// group (its super-blocks `unpacked` by [`Self::unpack_digits`]), a
    /// super-block per three accumulator tiles, into `out[j][16·gg..]`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn group_amx_q6k<const R: usize>(
        &self,
        unpacked: &[[__m512i; 8]],
        xs: &[Q8xK],
        out: &mut [&mut [f32]],
        gg: usize,
    ) {
        const SB: usize = unpacked_slots(Q6K);
        // SAFETY: the caller guarantees AMX was granted.
        unsafe { amx::configure(R, 64) };
        let mut c = [[[0i32; 16]; 16]; 3];
        let nsb = self.nsb;
        assert!(unpacked.len() >= SB * nsb && xs.len() >= R * nsb);
        let a_stride = nsb * size_of::<Q8xK>();
        let (c49, c7) = (_mm512_set1_epi32(49), _mm512_set1_epi32(7));
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nsb {
            let w = [0, 8, 16].map(|k| unpacked[SB * b + k].as_ptr().cast::<i8>());
            // SAFETY: tiles are configured for `R` rows of 64 bytes;
            // activation row `j` of super-block `b` is `xs[j·nsb + b]` (`R`
            // rows exist, asserted), each with `QK_K` quants; each weight
            // operand is `QK_K / 64` KiB of `unpacked` (asserted).
            unsafe { amx::dot_s8x3(xs[b].qs.as_ptr(), a_stride, w, QK_K / 64, &mut c) };
            let sv = Scales::from_slot(&unpacked[SB * b + QUANT_SLOTS[Q6K as usize]]);
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: a row of `c` is 16 i32.
                let [d0, d1, d2] = c
                    .each_ref()
                    .map(|c| unsafe { _mm512_loadu_si512(c[j].as_ptr().cast()) });
                let t = _mm512_add_epi32(
                    _mm512_add_epi32(_mm512_mullo_epi32(d0, c49), _mm512_mullo_epi32(d1, c7)),
                    d2,
                );
                *acc = finish::<Q6K>(t, sv.d, sv.dmin, &sv.mn, &xs[j * nsb + b], *acc);
            }
        }
        store_rows(out, gg, acc);
    }

    /// `R` activation rows (`xs`, row-major super-blocks) against one Q6_K
    /// group's stored bytes, two 16-element sub-blocks per AMX step (K =
    /// 16: a quarter of a tile product), each sum scaled on the vector
    /// units: for batches too small to pay for [`Self::unpack_digits`].
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn group_amx_q6k_stored<const R: usize>(
        &self,
        group: &[u8],
        xs: &[Q8xK],
        out: &mut [&mut [f32]],
        gg: usize,
    ) {
        // SAFETY: the caller guarantees AMX was granted.
        unsafe { amx::configure(R, sub(Q6K)) };
        let mut c = [[[0i32; 16]; 16]; 2];
        let nsb = self.nsb;
        let a_stride = nsb * size_of::<Q8xK>();
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nsb {
            let sv = self.scales::<Q6K>(group, b);
            let sc_at = self.sc_offset() + nsub(Q6K) * GROUP * b;
            let sc: [__m512i; 16] = std::array::from_fn(|s| {
                let v = &group[sc_at + GROUP * s..][..16];
                // SAFETY: `v` is 16 readable bytes; the load is unaligned.
                _mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(v.as_ptr().cast()) })
            });
            let mut t = [_mm512_setzero_si512(); R];
            for s in (0..nsub(Q6K)).step_by(2) {
                let w = [s, s + 1].map(|ss| group[qs_bytes(Q6K) * b + 256 * ss..].as_ptr());
                let a = [s, s + 1].map(|ss| xs[b].qs[sub(Q6K) * ss..].as_ptr());
                // SAFETY: tiles are configured for `R` rows of 16 elements;
                // activation row `j` of super-block `b` is `xs[j·nsb + b]`,
                // `R` rows exist, and each weight operand is 4 × 64
                // readable bytes.
                unsafe { amx::dot_blocks(a, a_stride, w, &mut c) };
                for (h, c) in c.iter().enumerate() {
                    for (j, t) in t.iter_mut().enumerate() {
                        // SAFETY: a row of `c` is 16 i32.
                        let ci = unsafe { _mm512_loadu_si512(c[j].as_ptr().cast()) };
                        *t = accumulate::<Q6K>(*t, ci, sc[s + h], s + h, &xs[j * nsb + b]);
                    }
                }
            }
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = finish::<Q6K>(t[j], sv.d, sv.dmin, &sv.mn, &xs[j * nsb + b], *acc);
            }
        }
        store_rows(out, gg, acc);
    }
}

/// Stores each activation row's 16 sums at `row[16·gg..]`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn store_rows<const R: usize>(out: &mut [&mut [f32]], gg: usize, acc: [__m512; R]) {
    for (row, acc) in out.iter_mut().zip(acc) {
        let dst = &mut row[GROUP * gg..][..GROUP];
        // SAFETY: `dst` holds 16 f32.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), acc) };
    }
}

/// Balanced base-7 digits (each in -3..=3, `v = 49·d[0] + 7·d[1] + d[2]`)
/// of 16 signed 16-bit values `v` in -128..=127. A Q6_K quant (-32..=31)
/// times a digit is a signed byte, so the three digit-scaled copies of a
/// super-block's quants carry its sub-block scales into full-K tile
/// products. With `u = v + 136` (≥ 0, ≡ v + 3 mod 7), `u / 7` is `(u ·
/// 9363) >> 16` for every such `u` (exact below 13107), the digit is `u mod
/// 7 − 3`, and what is left `u / 7 − 19`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn base7_digits(v: __m256i) -> [__m256i; 3] {
    let (bias, inv7, seven) = (
        _mm256_set1_epi16(136),
        _mm256_set1_epi16(9363),
        _mm256_set1_epi16(7),
    );
    let (three, nineteen) = (_mm256_set1_epi16(3), _mm256_set1_epi16(19));
    let mut v = v;
    let mut d = [_mm256_setzero_si256(); 3];
    for d in d.iter_mut().rev() {
        let u = _mm256_add_epi16(v, bias);
        let q = _mm256_mulhi_epu16(u, inv7);
        *d = _mm256_sub_epi16(_mm256_sub_epi16(u, _mm256_mullo_epi16(q, seven)), three);
        v = _mm256_sub_epi16(q, nineteen);
    }
    d
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
    // Sums of 32 quants are 16-bit: sub-block pairs' sums side by side in a
    // dword, lanes 0, 1, 4 and 5 (the in-lane pairwise add of the 16 sums
    // of 16), meet their weight rows' pairs of mins in `vpdpwssd`.
    // SAFETY: `bsums` is 16 readable i16; the load is unaligned.
    let b = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
    let xsum = _mm256_hadd_epi16(b, b);
    let pair = [
        _mm256_extract_epi32::<0>(xsum),
        _mm256_extract_epi32::<1>(xsum),
        _mm256_extract_epi32::<4>(xsum),
        _mm256_extract_epi32::<5>(xsum),
    ];
    let mut msum = _mm512_setzero_si512();
    for (mn, pair) in mn.iter().zip(pair) {
        msum = _mm512_dpwssd_epi32(msum, *mn, _mm512_set1_epi32(pair));
    }
    _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dmin, dx), acc)
}

/// The smallest batch for which Q6_K's AMX path unpacks its digit copies
/// (at 8 rows the unpacking made the Q6_K bench's matmul 1.25× slower, at
/// 16 1.2× faster, at 512 2.2×).
const Q6K_UNPACK_MIN_ROWS: usize = 16;

/// Unpacked slots (of 8 lines) of a super-block's quants, by format: two
/// operands of 8 KiB for Q4_K, three digit copies of 4 KiB for Q6_K.
const QUANT_SLOTS: [usize; 2] = [2 * nsub(Q4K), 24];

/// Unpacked slots a super-block of format `f` takes: its quants, then its
/// [`Scales`].
const fn unpacked_slots(f: u8) -> usize {
    QUANT_SLOTS[f as usize] + 1
}

/// The k-quant kernels for format `F`.
struct Kernels<'a, const F: u8>(&'a TiledKWeights);

impl<const F: u8> TileKernels for Kernels<'_, F> {
    type Act = Q8xK;

    fn row_blocks(&self) -> usize {
        self.0.nsb
    }

    /// Both formats' super-blocks are unpacked (scales folded in, and
    /// their [`Scales`] widened) once per group for AMX. Q6_K's unpacking costs about what 16 rows'
    /// products save, so smaller batches read its stored bytes
    /// ([`TiledKWeights::group_amx_q6k_stored`]).
    fn unpacked_len(&self, m: usize) -> usize {
        if F == Q6K && m < Q6K_UNPACK_MIN_ROWS {
            0
        } else {
            self.0.nsb * unpacked_slots(F)
        }
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
        g: usize,
        unpacked: &[[__m512i; 8]],
        xs: &[Q8xK],
        out: &mut [&mut [f32]],
        gg: usize,
    ) {
        let group = self.0.group(g);
        // SAFETY: forwarded from the caller.
        unsafe {
            if F == Q4K {
                self.0.group_amx_q4k::<R>(unpacked, xs, out, gg)
            } else if unpacked.is_empty() {
                self.0.group_amx_q6k_stored::<R>(group, xs, out, gg)
            } else {
                self.0.group_amx_q6k::<R>(unpacked, xs, out, gg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The reference for [`super::base7_digits`]: every `i8`'s digits
    /// (index: the byte), by division.
    const DIGITS7: [[i8; 3]; 256] = {
        let mut t = [[0i8; 3]; 256];
        let mut b = 0;
        while b < 256 {
            let mut v = b as u8 as i8 as i32;
            let mut k = 3;
            while k > 0 {
                k -= 1;
                let d = (v + 3).rem_euclid(7) - 3;
                t[b][k] = d as i8;
                v = (v - d) / 7;
            }
            b += 1;
        }
        t
    };

    /// Every byte's digits are in -3..=3, rebuild it, and times any centred
    /// Q6_K quant stay a signed byte.
    #[test]
    fn base7_digits_rebuild_every_scale() {
        for v in i8::MIN..=i8::MAX {
            let d = DIGITS7[usize::from(v as u8)];
            assert!(d.iter().all(|d| (-3..=3).contains(d)), "{v}: {d:?}");
            let rebuilt = 49 * i32::from(d[0]) + 7 * i32::from(d[1]) + i32::from(d[2]);
            assert_eq!(rebuilt, i32::from(v), "{v}: {d:?}");
            for q in -32..=31 {
                assert!(d.iter().all(|&d| i8::try_from(q * i32::from(d)).is_ok()));
            }
        }
    }

    /// The SIMD digits are the table's, for every byte.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_base7_digits_match_the_table() {
        use crate::kernels::isa::{self, Level, PathRun};
        use std::arch::x86_64::*;
        let run = isa::path_run(Level::Avx512Vnni, isa::cpu().avx512vnni);
        isa::report(
            "qmatmul_tiled_k::simd_base7_digits_match_the_table",
            &[("AVX-512 VNNI", run)],
        );
        if run != PathRun::Ran {
            return;
        }
        for chunk in (i8::MIN..=i8::MAX).collect::<Vec<_>>().chunks(16) {
            let v: [i16; 16] = std::array::from_fn(|i| i16::from(chunk[i]));
            // SAFETY: AVX-512 (with AVX2) checked above; `v` is 16 i16.
            let d = unsafe { super::base7_digits(_mm256_loadu_si256(v.as_ptr().cast())) };
            for (k, d) in d.into_iter().enumerate() {
                let mut got = [0i16; 16];
                // SAFETY: `got` is 16 writable i16.
                unsafe { _mm256_storeu_si256(got.as_mut_ptr().cast(), d) };
                for (x, g) in chunk.iter().zip(got) {
                    assert_eq!(
                        i16::from(DIGITS7[usize::from(*x as u8)][k]),
                        g,
                        "{x} digit {k}"
                    );
                }
            }
        }
    }
}
