//! Inner loops of [`super::dense`]: dot products of a block of [`BLOCK`]
//! 16-bit weight rows with up to [`MAX_ROWS`] activation rows.
//!
//! One body ([`dots`]) serves the portable, AVX2 and AVX-512 kernels through
//! [`super::simd`]'s 16-lane vector types, whose operations are exactly
//! rounded and whose reduction has one order, so the three agree bit for
//! bit. Each (activation row, weight row) pair owns one accumulator: `k` is
//! walked in order, 16 lanes a step, the last partial step zero-padded, then
//! the lanes are reduced. How many weight rows (`NW`) and activation rows
//! (`R`) share a pass only sets how many independent chains keep the FMA
//! units busy and how often a widened weight vector is reused; it never
//! changes a result. The AVX512_BF16 kernel follows the same plan with
//! 32-element `vdpbf16ps` steps.

use half::{bf16, f16};

use super::bytes::HalfKind;
use super::dense::DenseIsa;
use super::isa::KernelIsa;
use super::simd::{F32x16, Portable, SimdLoad, LANES};

/// Weight rows per block.
pub(super) const BLOCK: usize = 8;
/// Most activation rows one pass applies a block to.
pub(super) const MAX_ROWS: usize = 4;

/// `out[r][t]`: activation row `r` of the pass · weight row `t` of the block.
pub(super) type BlockOut = [[f32; BLOCK]; MAX_ROWS];

/// The activation rows as the kernel wants them: f32, or rounded to bf16
/// for `vdpbf16ps`.
#[derive(Clone, Copy)]
pub(super) enum Activations<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

/// Activation rows per pass for `isa`: as many as leave registers for the
/// accumulators and the widened weights.
pub(super) fn rows_per_step(isa: DenseIsa) -> usize {
    match isa {
        DenseIsa::Scalar => 1,
        DenseIsa::Avx2 => 2,
        DenseIsa::Avx512 | DenseIsa::Avx512Bf16 | DenseIsa::AmxBf16 => MAX_ROWS,
    }
}

/// Weight rows `w` (each `2k` bytes of `kind`) · activation rows
/// `i0..i0 + r` (`r ≤ rows_per_step(isa)`), with the kernels of `isa`,
/// which this CPU must support and which must suit `act`.
pub(super) fn block(
    isa: DenseIsa,
    kind: HalfKind,
    w: &[&[u8]; BLOCK],
    act: Activations<'_>,
    i0: usize,
    r: usize,
    k: usize,
) -> BlockOut {
    assert!(isa.is_supported() && r <= rows_per_step(isa));
    for row in w {
        assert_eq!(row.len(), 2 * k);
    }
    let wp: [*const u8; BLOCK] = w.map(<[u8]>::as_ptr);
    match act {
        Activations::F32(x) => {
            assert!(x.len() >= (i0 + r) * k);
            let x = &x[i0 * k..];
            // SAFETY: every weight row holds `k` values and `x` holds `r`
            // rows of `k`; the CPU has the features of `isa` (checked above).
            unsafe {
                match (isa, kind) {
                    #[cfg(target_arch = "x86_64")]
                    (DenseIsa::Avx2, HalfKind::Bf16) => avx2::<bf16>(&wp, x, r, k),
                    #[cfg(target_arch = "x86_64")]
                    (DenseIsa::Avx2, HalfKind::F16) => avx2::<f16>(&wp, x, r, k),
                    #[cfg(target_arch = "x86_64")]
                    (DenseIsa::Avx512 | DenseIsa::Avx512Bf16, HalfKind::Bf16) => {
                        avx512::<bf16>(&wp, x, r, k)
                    }
                    #[cfg(target_arch = "x86_64")]
                    (DenseIsa::Avx512 | DenseIsa::Avx512Bf16, HalfKind::F16) => {
                        avx512::<f16>(&wp, x, r, k)
                    }
                    (_, HalfKind::Bf16) => blocks::<Portable, bf16, 1, 1>(&wp, x, k),
                    (_, HalfKind::F16) => blocks::<Portable, f16, 1, 1>(&wp, x, k),
                }
            }
        }
        Activations::Bf16(x) => {
            assert!(isa == DenseIsa::Avx512Bf16 && kind == HalfKind::Bf16);
            assert!(x.len() >= (i0 + r) * k);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; AVX512_BF16 was checked.
            let out = unsafe { vdpbf16::run(&wp, &x[i0 * k..], r, k) };
            #[cfg(not(target_arch = "x86_64"))]
            let out = unreachable!("AVX512_BF16 is never detected off x86-64");
            out
        }
    }
}

/// Runs [`dots`] over the block `NW` weight rows at a time.
///
/// # Safety
///
/// Every pointer in `w` must reach `2k` readable bytes, `x` must hold `R`
/// rows of `k`, and the CPU must have the features `S` is compiled for.
#[inline(always)]
unsafe fn blocks<S: F32x16, E: SimdLoad, const NW: usize, const R: usize>(
    w: &[*const u8; BLOCK],
    x: &[f32],
    k: usize,
) -> BlockOut {
    let xs: [*const f32; R] = std::array::from_fn(|r| x[r * k..].as_ptr());
    let mut out = [[0f32; BLOCK]; MAX_ROWS];
    for t0 in (0..BLOCK).step_by(NW) {
        let ws: [*const u8; NW] = std::array::from_fn(|j| w[t0 + j]);
        // SAFETY: forwarded from the caller.
        let d = unsafe { dots::<S, E, NW, R>(ws, xs, k) };
        for (o, d) in out.iter_mut().zip(&d) {
            o[t0..t0 + NW].copy_from_slice(d);
        }
    }
    out
}

/// `out[r][j] = Σ_c w[j][c]·x[r][c]` over `c < k`, one accumulator per
/// pair (see the module docs for the order).
///
/// # Safety
///
/// As [`blocks`], for the `NW` rows of `w` and `R` rows of `x`.
#[inline(always)]
unsafe fn dots<S: F32x16, E: SimdLoad, const NW: usize, const R: usize>(
    w: [*const u8; NW],
    x: [*const f32; R],
    k: usize,
) -> [[f32; NW]; R] {
    let full = k - k % LANES;
    // SAFETY: loads stay below `k` elements of every row (the partial step
    // copies what is left into padded buffers); `S` is supported.
    unsafe {
        let mut acc = [[S::zero(); NW]; R];
        let mut c = 0;
        while c < full {
            let mut wv = [S::zero(); NW];
            for j in 0..NW {
                wv[j] = E::load16::<S>(w[j].cast::<E>().add(c));
            }
            fma_step(&mut acc, &wv, &x, c, LANES);
            c += LANES;
        }
        if full < k {
            let left = k - full;
            let mut wv = [S::zero(); NW];
            for j in 0..NW {
                wv[j] = load_tail::<S, E>(w[j].add(2 * full), left);
            }
            fma_step(&mut acc, &wv, &x, full, left);
        }
        let mut out = [[0f32; NW]; R];
        for r in 0..R {
            for j in 0..NW {
                out[r][j] = acc[r][j].reduce_add();
            }
        }
        out
    }
}

/// One step of every widening kernel: `a[r][j] += wv[j] · x[r][at..at + n]`
/// for `n ≤ 16` values of each activation row `x[r]`, zero-padded (a whole
/// step when `n == LANES`). The streaming kernels and the batched ones
/// (`dense_batch`) share it, so they round alike.
///
/// # Safety
///
/// Every row of `xs` must reach `at + n` readable values; the CPU must have
/// `S`'s features.
#[inline(always)]
pub(super) unsafe fn fma_step<S: F32x16, const NW: usize, const R: usize>(
    a: &mut [[S; NW]; R],
    wv: &[S; NW],
    xs: &[*const f32; R],
    at: usize,
    n: usize,
) {
    for (a, x) in a.iter_mut().zip(xs) {
        // SAFETY: forwarded from the caller.
        let xv = unsafe {
            let p = x.add(at);
            if n == LANES {
                S::load(p)
            } else {
                f32::load_partial::<S>(p, n)
            }
        };
        for (a, w) in a.iter_mut().zip(wv) {
            // SAFETY: as above.
            *a = unsafe { w.fma(xv, *a) };
        }
    }
}

/// Loads `n < 16` values of `E` from `p` (any alignment), zero-padded.
///
/// # Safety
///
/// `p` must reach `2n` readable bytes; the CPU must have `S`'s features.
#[inline(always)]
pub(super) unsafe fn load_tail<S: F32x16, E: SimdLoad>(p: *const u8, n: usize) -> S {
    let mut a = [E::ZERO; LANES];
    // SAFETY: `a` has room for 16 values of two bytes; `p` for `n` of them.
    unsafe {
        std::ptr::copy_nonoverlapping(p, a.as_mut_ptr().cast::<u8>(), 2 * n);
        E::load16::<S>(a.as_ptr())
    }
}

/// The AVX2 kernels: two activation rows share each pass over four weight
/// rows (eight two-register accumulators); a single row takes four weight
/// rows at once for four independent FMA chains.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2<E: SimdLoad>(w: &[*const u8; BLOCK], x: &[f32], r: usize, k: usize) -> BlockOut {
    use super::simd::Avx2;
    // SAFETY: forwarded from `block`.
    unsafe {
        match r {
            2 => blocks::<Avx2, E, 2, 2>(w, x, k),
            _ => blocks::<Avx2, E, 4, 1>(w, x, k),
        }
    }
}

/// The AVX-512 kernels: four activation rows against four weight rows per
/// pass (16 accumulators), a single row against all eight.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn avx512<E: SimdLoad>(w: &[*const u8; BLOCK], x: &[f32], r: usize, k: usize) -> BlockOut {
    use super::simd::Avx512;
    // SAFETY: forwarded from `block`.
    unsafe {
        match r {
            4 => blocks::<Avx512, E, 4, 4>(w, x, k),
            3 => blocks::<Avx512, E, 4, 3>(w, x, k),
            2 => blocks::<Avx512, E, 4, 2>(w, x, k),
            _ => blocks::<Avx512, E, BLOCK, 1>(w, x, k),
        }
    }
}

/// bf16 weights times bf16-rounded activations with `vdpbf16ps`, which
/// multiplies pairs exactly (8-bit significands) and adds both products to
/// an f32 lane with rounding; subnormal inputs and results are flushed to
/// zero.
#[cfg(target_arch = "x86_64")]
mod vdpbf16 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::{BlockOut, BLOCK, MAX_ROWS};

    /// Elements per step.
    const STEP: usize = 32;

    /// As `block`, for activation rows `x` (`r` rows of `k`).
    ///
    /// # Safety
    ///
    /// The CPU must have AVX512_BF16; every pointer in `w` must reach `2k`
    /// readable bytes.
    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma,f16c")]
    pub(super) unsafe fn run(w: &[*const u8; BLOCK], x: &[bf16], r: usize, k: usize) -> BlockOut {
        // SAFETY: forwarded from the caller.
        unsafe {
            match r {
                4 => blocks::<4, 4>(w, x, k),
                3 => blocks::<4, 3>(w, x, k),
                2 => blocks::<4, 2>(w, x, k),
                _ => blocks::<BLOCK, 1>(w, x, k),
            }
        }
    }

    #[inline(always)]
    unsafe fn blocks<const NW: usize, const R: usize>(
        w: &[*const u8; BLOCK],
        x: &[bf16],
        k: usize,
    ) -> BlockOut {
        let xs: [*const u8; R] = std::array::from_fn(|r| x[r * k..].as_ptr().cast());
        let mut out = [[0f32; BLOCK]; MAX_ROWS];
        for t0 in (0..BLOCK).step_by(NW) {
            let ws: [*const u8; NW] = std::array::from_fn(|j| w[t0 + j]);
            // SAFETY: forwarded from the caller.
            let d = unsafe { dots::<NW, R>(ws, xs, k) };
            for (o, d) in out.iter_mut().zip(&d) {
                o[t0..t0 + NW].copy_from_slice(d);
            }
        }
        out
    }

    /// 32 bf16 from `p` (any alignment), or the `n < 32` left zero-padded.
    #[inline(always)]
    unsafe fn load(p: *const u8, n: usize) -> __m512bh {
        // SAFETY: the caller guarantees `2n` readable bytes (64 when
        // `n == STEP`); `__m512i` and `__m512bh` are both 64 plain bytes.
        unsafe {
            let v = if n == STEP {
                _mm512_loadu_si512(p.cast())
            } else {
                let mut a = [0u8; 2 * STEP];
                std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), 2 * n);
                _mm512_loadu_si512(a.as_ptr().cast())
            };
            std::mem::transmute::<__m512i, __m512bh>(v)
        }
    }

    #[inline(always)]
    unsafe fn dots<const NW: usize, const R: usize>(
        w: [*const u8; NW],
        x: [*const u8; R],
        k: usize,
    ) -> [[f32; NW]; R] {
        // SAFETY: loads stay within `k` values of every row.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NW]; R];
            let mut c = 0;
            while c < k {
                let n = (k - c).min(STEP);
                let mut wv = [std::mem::transmute::<__m512, __m512bh>(_mm512_setzero_ps()); NW];
                for j in 0..NW {
                    wv[j] = load(w[j].add(2 * c), n);
                }
                for r in 0..R {
                    let xv = load(x[r].add(2 * c), n);
                    for j in 0..NW {
                        acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv[j], xv);
                    }
                }
                c += n;
            }
            let mut out = [[0f32; NW]; R];
            for r in 0..R {
                for j in 0..NW {
                    out[r][j] = reduce(acc[r][j]);
                }
            }
            out
        }
    }

    /// Sum of the lanes in the same tree order as `F32x16::reduce_add`.
    #[inline(always)]
    unsafe fn reduce(v: __m512) -> f32 {
        // SAFETY: AVX-512F is enabled by every caller (`run`).
        unsafe { super::super::simd::reduce_add_512(v) }
    }
}
