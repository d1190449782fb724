//! The AMX path of the k-quant tiled kernels: each group's super-blocks
//! unpacked once (for batches of [`AMX_MIN_ROWS_K`] rows and more) with
//! their sub-block scales folded into the quants, so a super-block is one
//! run of full K = 64 tile products per accumulator.

use std::arch::x86_64::*;

use super::super::amx;
use super::super::qmatmul::{Q8xK, QK_K};
use super::super::qmatmul_tiled::GROUP;
use super::{finish, nsub, q6_line, qs_bytes, Scales, TiledKWeights, Q4K, Q6K, Q6_SUB};

impl Scales {
    /// As one unpacked slot, stored beside the super-block's quants so that
    /// every chunk of activation rows loads them instead of widening them.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn to_slot(&self) -> [__m512i; 8] {
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
    pub(super) fn from_slot(slot: &[__m512i; 8]) -> Self {
        Self {
            mn: [slot[0], slot[1], slot[2], slot[3]],
            d: _mm512_castsi512_ps(slot[4]),
            dmin: _mm512_castsi512_ps(slot[5]),
        }
    }
}

impl TiledKWeights {
    /// Q4_K sub-block `s` of super-block `b` as nibble bytes, register `r`
    /// holding elements `4r..4r + 4` of the sub-block for the 16 rows.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    pub(super) fn unpack_q4k(&self, group: &[u8], b: usize, s: usize) -> [__m512i; 8] {
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
    pub(super) fn unpack_scaled(&self, group: &[u8], b: usize, out: &mut [[__m512i; 8]]) {
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
    pub(super) fn unpack_digits(&self, group: &[u8], b: usize, out: &mut [[__m512i; 8]]) {
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
            let lines = &group[qs_bytes(Q6K) * b + Q6_SUB * s..][..Q6_SUB];
            let [l0, l1, l2] = [0, 1, 2].map(|l| {
                let v = &lines[64 * l..][..64];
                // SAFETY: `v` is 64 readable bytes; the load is unaligned.
                unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
            });
            for r in 0..4 {
                let q = _mm512_sub_epi8(q6_line(l0, l1, l2, r), centre);
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

    /// `R` activation rows (`xs`, row-major super-blocks) against one Q4_K
    /// group (its super-blocks `unpacked` by [`Self::unpack_scaled`]), a
    /// super-block per pair of accumulator tiles, into `out[j][16·gg..]`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn group_amx_q4k<const R: usize>(
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
    pub(super) unsafe fn group_amx_q6k<const R: usize>(
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
}

/// The smallest batch that the k-quants multiply with AMX. Unpacking a
/// group costs about what 16 rows of tile products save: below, the VNNI
/// kernel reads the stored quants directly (on the matmul bench's 4864 ×
/// 896 matrices at 8 rows, VNNI took 0.5–0.7× AMX's time for Q4_K and 0.8×
/// for Q6_K; 8 and 12 streams of Qwen2.5-Coder-1.5B Q4_K_M decoded 19%
/// faster than with AMX from 8 rows).
pub(super) const AMX_MIN_ROWS_K: usize = 16;

/// Unpacked slots (of 8 lines) of a super-block's quants, by format: two
/// operands of 8 KiB for Q4_K, three digit copies of 4 KiB for Q6_K.
pub(super) const QUANT_SLOTS: [usize; 2] = [2 * nsub(Q4K), 24];

/// Unpacked slots a super-block of format `f` takes: its quants, then its
/// [`Scales`].
pub(super) const fn unpacked_slots(f: u8) -> usize {
    QUANT_SLOTS[f as usize] + 1
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
