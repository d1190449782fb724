//! x86-64 SIMD inner loops for [`super::qmatmul`].
//!
//! Every kernel reduces a weight block to a vector of *unsigned* bytes (the
//! raw quants, before ggml's offset is subtracted) and multiplies it with the
//! signed activation bytes. That is the operand order of both AVX2
//! `vpmaddubsw` and VNNI `vpdpbusd`, so one kernel body serves every
//! instruction set: the `simd_kernels!` macro instantiates it for AVX2,
//! AVX-VNNI and AVX-512 VNNI with a different integer dot-product primitive
//! and `target_feature` list. The
//! offset (8 for Q4_0, 16 for Q5_0, 32 for Q6_K) is subtracted exactly via the
//! activation block sums (precomputed per call), so the integer results equal
//! ggml's.
//!
//! Each kernel decodes a weight block once and applies it to `R ≤ 8`
//! activation rows, which is where batched calls save work.

use candle_core::quantized::GgmlDType;

use super::isa::KernelIsa;
use super::qmatmul::{Isa, Q8Pair, Q8x32, Q8xK};

/// A SIMD kernel: dot products of one weight row with `R` activation rows.
/// `unsafe` because it is compiled for instruction-set extensions; the
/// selectors below only return kernels this CPU can run.
pub(super) type RowKernel<B, const R: usize> = unsafe fn(&[u8], [&[B]; R]) -> [f32; R];

/// The SIMD kernel for a 32-element-block weight type, or `None` when `isa`
/// has none for `dtype` (or this CPU cannot run `isa`). Chosen once per call
/// rather than per weight row: the per-row dispatch was a few percent of a
/// decode step.
pub(super) fn dot32<const R: usize>(isa: Isa, dtype: GgmlDType) -> Option<RowKernel<Q8x32, R>> {
    #[cfg(target_arch = "x86_64")]
    {
        use GgmlDType as T;
        if !isa.is_supported() {
            return None;
        }
        let kernel: RowKernel<Q8x32, R> = match (isa, dtype) {
            (Isa::AvxVnni, T::Q4_0) => avxvnni::dot32::<Q4_0, R>,
            (Isa::AvxVnni, T::Q4_1) => avxvnni::dot32::<Q4_1, R>,
            (Isa::AvxVnni, T::Q5_0) => avxvnni::dot32::<Q5_0, R>,
            (Isa::AvxVnni, T::Q5_1) => avxvnni::dot32::<Q5_1, R>,
            (Isa::AvxVnni, T::Q8_0) => avxvnni::dot32::<Q8_0, R>,
            (Isa::Avx512Vnni, T::Q4_0) => vnni::dot32::<Q4_0, R>,
            (Isa::Avx512Vnni, T::Q4_1) => vnni::dot32::<Q4_1, R>,
            (Isa::Avx512Vnni, T::Q5_0) => vnni::dot32::<Q5_0, R>,
            (Isa::Avx512Vnni, T::Q5_1) => vnni::dot32::<Q5_1, R>,
            (Isa::Avx512Vnni, T::Q8_0) => vnni::dot32::<Q8_0, R>,
            (Isa::Avx2, T::Q4_0) => avx2::dot32::<Q4_0, R>,
            (Isa::Avx2, T::Q4_1) => avx2::dot32::<Q4_1, R>,
            (Isa::Avx2, T::Q5_0) => avx2::dot32::<Q5_0, R>,
            (Isa::Avx2, T::Q5_1) => avx2::dot32::<Q5_1, R>,
            (Isa::Avx2, T::Q8_0) => avx2::dot32::<Q8_0, R>,
            _ => return None,
        };
        Some(kernel)
    }
    // No kernel off x86-64.
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, dtype);
        None
    }
}

/// The SIMD kernel for a k-quant weight type, or `None` when `isa` has none
/// for `dtype` (or this CPU cannot run `isa`).
pub(super) fn dotk<const R: usize>(isa: Isa, dtype: GgmlDType) -> Option<RowKernel<Q8xK, R>> {
    #[cfg(target_arch = "x86_64")]
    {
        use GgmlDType as T;
        if !isa.is_supported() {
            return None;
        }
        let kernel: RowKernel<Q8xK, R> = match (isa, dtype) {
            (Isa::AvxVnni, T::Q4K) => avxvnni::dot_q4k::<R>,
            (Isa::AvxVnni, T::Q6K) => avxvnni::dot_q6k::<R>,
            (Isa::Avx512Vnni, T::Q4K) => wide::dot_q4k::<R>,
            (Isa::Avx512Vnni, T::Q6K) => wide::dot_q6k::<R>,
            (Isa::Avx2, T::Q4K) => avx2::dot_q4k::<R>,
            (Isa::Avx2, T::Q6K) => avx2::dot_q6k::<R>,
            _ => return None,
        };
        Some(kernel)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, dtype);
        None
    }
}

/// The AVX-512 VNNI kernel for Q4_0 / Q5_0 / Q8_0 weights against
/// activations in [`Q8Pair`] form (two blocks per 512-bit step), or `None`
/// when `isa` or `dtype` has no such kernel.
pub(super) fn dot32_pairs<const R: usize>(
    isa: Isa,
    dtype: GgmlDType,
) -> Option<RowKernel<Q8Pair, R>> {
    #[cfg(target_arch = "x86_64")]
    {
        use GgmlDType as T;
        if isa != Isa::Avx512Vnni || !isa.is_supported() {
            return None;
        }
        let kernel: RowKernel<Q8Pair, R> = match dtype {
            T::Q4_0 => pairs::dot::<Q4_0, R>,
            T::Q5_0 => pairs::dot::<Q5_0, R>,
            T::Q8_0 => pairs::dot::<Q8_0, R>,
            _ => return None,
        };
        Some(kernel)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, dtype);
        None
    }
}

/// Kernel selectors for `dot32` (const generics cannot take enums).
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

/// Instantiates the kernels for one instruction set. `$features` is the
/// `target_feature` list; `$prims` must define `dot_u8_i8_acc(acc, u, x) ->
/// i32x8` (`acc` plus `u[i] * x[i]` summed over each group of four bytes)
/// and, with `kquants: yes` (the Q4_K / Q6_K kernels; AVX-512 has its own in
/// [`wide`]), `dot_scaled_acc(acc, u, x, sv) -> i32x8` (`acc` plus the
/// byte-pair products weighted by the i16 lanes of `sv`). Callers keep
/// `u ≤ 128` and every `u·x` byte-pair sum within i16, so neither primitive
/// saturates.
macro_rules! simd_kernels {
    ($name:ident, $features:literal, kquants: $kq:ident, { $($prims:item)* }) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use std::arch::x86_64::*;

            use super::super::qmatmul::{k4_scales, Q8x32, Q8xK, QK};
            use super::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};

            $($prims)*

            /// Signed × signed bytes via the unsigned primitive: |w| · (x·sign w).
            #[target_feature(enable = $features)]
            #[inline]
            fn dot_i8_i8_acc(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
                dot_u8_i8_acc(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
            }

            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn load32(b: &[u8]) -> __m256i {
                let b = &b[..32];
                // SAFETY: `b` holds 32 readable bytes; the load is unaligned.
                unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn load32i(b: &[i8]) -> __m256i {
                let b = &b[..32];
                // SAFETY: `b` holds 32 readable bytes; the load is unaligned.
                unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
            }

            /// 16 bytes of packed nibbles → 32 bytes: low nibbles first, then
            /// high nibbles (ggml's element order).
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn nibbles(b: &[u8]) -> __m256i {
                let b = &b[..16];
                // SAFETY: `b` holds 16 readable bytes; the load is unaligned.
                let v = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
                let lo = _mm_and_si128(v, _mm_set1_epi8(0xF));
                let hi = _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(0xF));
                _mm256_set_m128i(hi, lo)
            }

            /// The 32 bits of `qh` as bytes: 0x10 where the bit is set.
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn high_bits(qh: u32) -> __m256i {
                let shuf = _mm256_set_epi64x(
                    0x0303030303030303,
                    0x0202020202020202,
                    0x0101010101010101,
                    0,
                );
                let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
                let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
                _mm256_and_si256(set, _mm256_set1_epi8(0x10))
            }

            /// The little-endian f16 at `b[o..o + 2]`, converted with F16C
            /// (inline, unlike `half`'s runtime-dispatched call, which would
            /// force every accumulator register to be spilled around it).
            /// Written in assembly so that `vmovd` zeroes the register first:
            /// from intrinsics, LLVM inserts the 16 bits with `vpinsrw` into
            /// whatever register it picks, often the multiply-add
            /// accumulator, which chains every block's scale onto the
            /// previous block's multiply-add (a false dependency that made
            /// Q5_0 at m = 1 18% slower per token than ggml's kernel).
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn f16_at(b: &[u8], o: usize) -> f32 {
                let bits = u32::from(u16::from_le_bytes([b[o], b[o + 1]]));
                let wide: __m128;
                // SAFETY: register-only instructions of F16C, which
                // `$features` includes.
                unsafe {
                    std::arch::asm!(
                        "vmovd {x}, {b:e}",
                        "vcvtph2ps {x}, {x}",
                        b = in(reg) bits,
                        x = out(xmm_reg) wide,
                        options(pure, nomem, nostack, preserves_flags),
                    );
                }
                _mm_cvtss_f32(wide)
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
            }

            /// Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 row · `R` Q8 rows.
            #[target_feature(enable = $features)]
            pub(super) fn dot32<const K: u8, const R: usize>(
                w: &[u8],
                xs: [&[Q8x32]; R],
            ) -> [f32; R] {
                let bytes = match K {
                    Q4_0 => 18,
                    Q4_1 => 20,
                    Q5_0 => 22,
                    Q5_1 => 24,
                    _ => 34,
                };
                let mut acc = [_mm256_setzero_ps(); R];
                let mut mins = [0f32; R];
                for (b, blk) in w.chunks_exact(bytes).enumerate() {
                    let d = f16_at(blk, 0);
                    let (u, m) = match K {
                        Q4_0 => (nibbles(&blk[2..18]), 0.0),
                        Q4_1 => (nibbles(&blk[4..20]), f16_at(blk, 2)),
                        Q5_0 | Q5_1 => {
                            let o = if K == Q5_0 { 2 } else { 4 };
                            let qh = u32::from_le_bytes([blk[o], blk[o + 1], blk[o + 2], blk[o + 3]]);
                            let u = _mm256_or_si256(nibbles(&blk[o + 4..o + 20]), high_bits(qh));
                            if K == Q5_0 {
                                (u, 0.0)
                            } else {
                                (u, f16_at(blk, 2))
                            }
                        }
                        _ => (load32(&blk[2..2 + QK]), 0.0),
                    };
                    for r in 0..R {
                        let y = &xs[r][b];
                        let x = load32i(&y.qs);
                        // The offset correction seeds lane 0 of the integer sum.
                        let init = if K == Q4_0 || K == Q5_0 {
                            _mm256_zextsi128_si256(_mm_cvtsi32_si128(y.corr))
                        } else {
                            _mm256_setzero_si256()
                        };
                        let p = if K == Q8_0 {
                            dot_i8_i8_acc(init, u, x)
                        } else {
                            dot_u8_i8_acc(init, u, x)
                        };
                        acc[r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(p),
                            _mm256_set1_ps(d * y.d),
                            acc[r],
                        );
                        if K == Q4_1 || K == Q5_1 {
                            mins[r] += m * y.s;
                        }
                    }
                }
                let mut out = [0f32; R];
                for r in 0..R {
                    out[r] = hsum(acc[r]) + mins[r];
                }
                out
            }

            /// The sixteen i16 block sums of a Q8_K block.
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn load_bsums(y: &Q8xK) -> __m256i {
                // SAFETY: `bsums` is 16 × i16 = 32 readable bytes; the load is
                // unaligned.
                unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) }
            }

            /// A Q4_K superblock's eight 32-element sub-blocks as unsigned
            /// bytes, their scales as i16 lanes, and the mins of its sixteen
            /// 16-element halves as i16 (to weigh the activations' bsums).
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn q4k_unpack(blk: &[u8]) -> ([__m256i; 8], [__m256i; 8], __m256i) {
                let mask = _mm256_set1_epi8(0xF);
                let (sc, mn) = k4_scales(&blk[4..16]);
                let mn = _mm_cvtsi64_si128(u64::from_le_bytes(mn) as i64);
                let mins16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn));
                let mut q = [_mm256_setzero_si256(); 8];
                let mut sv = [_mm256_setzero_si256(); 8];
                for c in 0..4 {
                    let raw = load32(&blk[16 + 32 * c..]);
                    q[2 * c] = _mm256_and_si256(raw, mask);
                    q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                    sv[2 * c] = _mm256_set1_epi16(sc[2 * c] as i16);
                    sv[2 * c + 1] = _mm256_set1_epi16(sc[2 * c + 1] as i16);
                }
                (q, sv, mins16)
            }

            /// A Q6_K superblock's eight 32-element sub-blocks as unsigned
            /// bytes (stored +32), the scales of each sub-block's two halves
            /// as i16 lanes, and all sixteen scales as i16.
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn q6k_unpack(blk: &[u8]) -> ([__m256i; 8], [__m256i; 8], __m256i) {
                let m4 = _mm256_set1_epi8(0xF);
                let m2 = _mm256_set1_epi8(0x30);
                let sc = &blk[192..208];
                let mut q = [_mm256_setzero_si256(); 8];
                let mut sv = [_mm256_setzero_si256(); 8];
                for h in 0..2 {
                    let ql0 = load32(&blk[64 * h..]);
                    let ql1 = load32(&blk[64 * h + 32..]);
                    let qh = load32(&blk[128 + 32 * h..]);
                    let hb = [
                        _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2),
                        _mm256_and_si256(qh, m2),
                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2),
                    ];
                    let lb = [
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    ];
                    for p in 0..4 {
                        q[4 * h + p] = _mm256_or_si256(lb[p], hb[p]);
                    }
                }
                for (t, v) in sv.iter_mut().enumerate() {
                    *v = _mm256_set_m128i(
                        _mm_set1_epi16(sc[2 * t + 1] as i8 as i16),
                        _mm_set1_epi16(sc[2 * t] as i8 as i16),
                    );
                }
                // SAFETY: `sc` is 16 readable bytes; the load is unaligned.
                let scales16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(sc.as_ptr().cast()) });
                (q, sv, scales16)
            }

            simd_kernels!(@kquants $kq, $features);
        }
    };
    (@kquants yes, $features:literal) => {
        /// Q4_K row · `R` Q8_K rows.
        #[target_feature(enable = $features)]
        pub(super) fn dot_q4k<const R: usize>(w: &[u8], xs: [&[Q8xK]; R]) -> [f32; R] {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut accm = [_mm256_setzero_ps(); R];
            for (b, blk) in w.chunks_exact(144).enumerate() {
                let d = f16_at(blk, 0);
                let dmin = f16_at(blk, 2);
                let (q, sv, mins16) = q4k_unpack(blk);
                for r in 0..R {
                    let y = &xs[r][b];
                    let mut isum = _mm256_setzero_si256();
                    for s in 0..8 {
                        let x = load32i(&y.qs[QK * s..]);
                        isum = dot_scaled_acc(isum, q[s], x, sv[s]);
                    }
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(isum),
                        _mm256_set1_ps(d * y.d),
                        acc[r],
                    );
                    let msum = _mm256_madd_epi16(mins16, load_bsums(y));
                    accm[r] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(msum),
                        _mm256_set1_ps(dmin * y.d),
                        accm[r],
                    );
                }
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = hsum(_mm256_sub_ps(acc[r], accm[r]));
            }
            out
        }

        /// Q6_K row · `R` Q8_K rows.
        #[target_feature(enable = $features)]
        pub(super) fn dot_q6k<const R: usize>(w: &[u8], xs: [&[Q8xK]; R]) -> [f32; R] {
            let mut acc = [_mm256_setzero_ps(); R];
            for (b, blk) in w.chunks_exact(210).enumerate() {
                let d = f16_at(blk, 208);
                let (q, sv, scales16) = q6k_unpack(blk);
                for r in 0..R {
                    let y = &xs[r][b];
                    let mut isum = _mm256_setzero_si256();
                    for t in 0..8 {
                        let x = load32i(&y.qs[QK * t..]);
                        isum = dot_scaled_acc(isum, q[t], x, sv[t]);
                    }
                    // Quants are stored +32; remove 32·Σ scale·Σx exactly.
                    let off = _mm256_madd_epi16(scales16, load_bsums(y));
                    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(off, 5));
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(isum),
                        _mm256_set1_ps(d * y.d),
                        acc[r],
                    );
                }
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = hsum(acc[r]);
            }
            out
        }
    };
    (@kquants no, $features:literal) => {};
}

simd_kernels!(avx2, "avx2,fma,f16c", kquants: yes, {
    /// `vpmaddubsw` pairs (no saturation for the operand ranges used here),
    /// then `vpmaddwd` with ones to widen to i32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot_u8_i8_acc(acc: __m256i, u: __m256i, x: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(u, x);
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// `acc + Σ sv·(u·x)`: the i16 scales ride along in the widening
    /// `vpmaddwd`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot_scaled_acc(acc: __m256i, u: __m256i, x: __m256i, sv: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), sv))
    }
});

simd_kernels!(
    vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    kquants: no,
    {
        /// One `vpdpbusd`: u8·i8 products summed in groups of four into i32.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        fn dot_u8_i8_acc(acc: __m256i, u: __m256i, x: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, u, x)
        }

    }
);

simd_kernels!(avxvnni, "avx2,fma,f16c,avxvnni", kquants: yes, {
    /// One VEX-encoded `vpdpbusd`: u8·i8 products summed in groups of four.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    #[inline]
    fn dot_u8_i8_acc(acc: __m256i, u: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, x)
    }

    /// `acc + Σ sv·(u·x)`: `vpmaddubsw` then the fused VEX `vpdpwssd`.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    #[inline]
    fn dot_scaled_acc(acc: __m256i, u: __m256i, x: __m256i, sv: __m256i) -> __m256i {
        _mm256_dpwssd_avx_epi32(acc, _mm256_maddubs_epi16(u, x), sv)
    }
});

/// The 512-bit pair kernel: each weight block is decoded to signed bytes
/// (Q4_0 −8, Q5_0 −16, Q8_0 as stored), two blocks fill one register, and
/// every activation row costs one `vpdpbusd`, one conversion and two float
/// operations per two blocks. `vpdpbusd` wants its first operand unsigned, so
/// the activations come +128 and the integer accumulator is seeded with
/// `−128·Σw` per four weights, computed once per weight register for all
/// rows: the integer sums equal the 256-bit kernels'.
#[cfg(target_arch = "x86_64")]
mod pairs {
    use std::arch::x86_64::*;

    use super::super::qmatmul::{Q8Pair, QK};
    use super::vnni::{f16_at, high_bits, load32, nibbles};
    use super::{Q4_0, Q5_0};

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn signed_quants<const K: u8>(blk: &[u8]) -> __m256i {
        match K {
            Q4_0 => _mm256_sub_epi8(nibbles(&blk[2..18]), _mm256_set1_epi8(8)),
            Q5_0 => {
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                let u = _mm256_or_si256(nibbles(&blk[6..22]), high_bits(qh));
                _mm256_sub_epi8(u, _mm256_set1_epi8(16))
            }
            _ => load32(&blk[2..2 + QK]),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn dot<const K: u8, const R: usize>(w: &[u8], xs: [&[Q8Pair]; R]) -> [f32; R] {
        let bytes = match K {
            Q4_0 => 18,
            Q5_0 => 22,
            _ => 34,
        };
        let mut acc = [_mm512_setzero_ps(); R];
        for (p, two) in w.chunks_exact(2 * bytes).enumerate() {
            let (b0, b1) = two.split_at(bytes);
            let s = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(signed_quants::<K>(b0)),
                signed_quants::<K>(b1),
            );
            let seed = _mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), s),
            );
            let dw = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(f16_at(b0, 0)))),
                _mm256_castps_pd(_mm256_set1_ps(f16_at(b1, 0))),
            ));
            for r in 0..R {
                let y = &xs[r][p];
                // SAFETY: `Q8Pair` is 64-byte aligned and each field loaded
                // is exactly 64 bytes.
                let (x, dx) = unsafe {
                    (
                        _mm512_load_si512(y.qs.as_ptr().cast()),
                        _mm512_load_ps(y.scale.as_ptr()),
                    )
                };
                let sum = _mm512_dpbusd_epi32(seed, x, s);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, dx), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(acc[r]);
        }
        out
    }
}

/// 512-bit Q4_K / Q6_K kernels for several activation rows: two 32-element
/// sub-blocks (with their scales) fill one register, so each row costs half
/// the `vpmaddubsw` / `vpdpwssd` pairs and loads of the 256-bit kernels. The
/// integer sums per sub-block are the 256-bit kernels', regrouped.
#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    use super::super::qmatmul::{Q8xK, QK};
    use super::vnni::{f16_at, load_bsums, q4k_unpack, q6k_unpack};

    /// `[lo | hi]` in one 512-bit register.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn join(lo: __m256i, hi: __m256i) -> __m512i {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }

    /// Sub-blocks `2j` and `2j + 1` in register `j`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn pair_up(v: [__m256i; 8]) -> [__m512i; 4] {
        let mut out = [_mm512_setzero_si512(); 4];
        for (j, o) in out.iter_mut().enumerate() {
            *o = join(v[2 * j], v[2 * j + 1]);
        }
        out
    }

    /// Activations of sub-blocks `2j` and `2j + 1`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn load64(y: &Q8xK, j: usize) -> __m512i {
        let b = &y.qs[2 * QK * j..2 * QK * (j + 1)];
        // SAFETY: `b` holds 64 readable bytes; the load is unaligned.
        unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
    }

    /// Σ over four register pairs of `sv · (q · x)` for one activation row.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn scaled_sum(q: &[__m512i; 4], sv: &[__m512i; 4], y: &Q8xK) -> __m512i {
        let mut isum = _mm512_setzero_si512();
        for j in 0..4 {
            isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(q[j], load64(y, j)), sv[j]);
        }
        isum
    }

    /// Q4_K row · `R` Q8_K rows.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn dot_q4k<const R: usize>(w: &[u8], xs: [&[Q8xK]; R]) -> [f32; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        let mut accm = [_mm256_setzero_ps(); R];
        for (b, blk) in w.chunks_exact(144).enumerate() {
            let d = f16_at(blk, 0);
            let dmin = f16_at(blk, 2);
            let (q8, sv8, mins16) = q4k_unpack(blk);
            let (q, sv) = (pair_up(q8), pair_up(sv8));
            for r in 0..R {
                let y = &xs[r][b];
                acc[r] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(scaled_sum(&q, &sv, y)),
                    _mm512_set1_ps(d * y.d),
                    acc[r],
                );
                let msum = _mm256_madd_epi16(mins16, load_bsums(y));
                accm[r] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(msum),
                    _mm256_set1_ps(dmin * y.d),
                    accm[r],
                );
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(_mm512_sub_ps(acc[r], _mm512_zextps256_ps512(accm[r])));
        }
        out
    }

    /// Q6_K row · `R` Q8_K rows.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn dot_q6k<const R: usize>(w: &[u8], xs: [&[Q8xK]; R]) -> [f32; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, blk) in w.chunks_exact(210).enumerate() {
            let d = f16_at(blk, 208);
            let (q8, sv8, scales16) = q6k_unpack(blk);
            let (qq, sv) = (pair_up(q8), pair_up(sv8));
            for r in 0..R {
                let y = &xs[r][b];
                // Quants are stored +32; remove 32·Σ scale·Σx exactly.
                let off = _mm256_madd_epi16(scales16, load_bsums(y));
                let isum = _mm512_sub_epi32(
                    scaled_sum(&qq, &sv, y),
                    _mm512_zextsi256_si512(_mm256_slli_epi32(off, 5)),
                );
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * y.d), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(acc[r]);
        }
        out
    }
}
