//! Batched passes of the AVX2 dense kernel ([`super::dense`]): a block of
//! [`BLOCK`] weight rows is widened to f32 a panel of [`PANEL`] columns at a
//! time, into a buffer that stays in L1, and every activation row of the
//! call runs over that panel from there.
//!
//! # Why
//!
//! The streaming AVX2 kernel of `dense_simd` takes two activation rows per
//! pass over the whole of `k` (its sixteen registers allow no more), so a
//! batch widens each block once per pair of rows, and the widening (a
//! zero-extension and a shift per vector, or `vcvtph2ps`) competes with the
//! FMAs for the same ports; each pass also reads the block's rows and the
//! activation rows from L2 again. Here each block is widened once, and the
//! inner loop is loads and FMAs on L1-resident data: three activation rows
//! by two weight rows.
//!
//! The AVX-512 kernels keep their streaming passes: with 32 registers they
//! take four rows per pass, and on the Xeon measured the same panels made
//! the widening kernel's prefill 3–8% slower and `vdpbf16ps` no faster
//! (`docs/performance.md`).
//!
//! # Same results, bit for bit
//!
//! Every (activation row, weight row) pair keeps its 16-lane accumulator
//! across panels (in a buffer between them), walks `k` in the steps of the
//! streaming kernels (whole steps, the last partial step zero-padded on both
//! sides; a panel is a whole number of steps) and is reduced with the same
//! tree. So a row's result is the streaming kernels' result, whatever the
//! batch and whichever path ran.

use half::{bf16, f16};

use super::bytes::HalfKind;
use super::dense::DenseIsa;
use super::dense_simd::{fma_step, load_tail, rows_per_step, BLOCK};
use super::isa::KernelIsa;
use super::simd::{Avx2, F32x16, SimdLoad, LANES};

/// Columns per panel, a whole number of steps: eight widened rows take
/// 8 KiB.
const PANEL: usize = 256;
/// Activation rows whose accumulators are kept at once (32 KiB).
const SLAB: usize = 64;

/// Scratch buffers of one thread's share of a call.
pub(super) struct Scratch {
    wide: Vec<f32>,
    acc: Vec<f32>,
}

impl Scratch {
    /// Buffers for a panel of widened rows and a slab of accumulators.
    pub(super) fn new() -> Self {
        // 16 spare values, so the buffers can start on a 64-byte line.
        Scratch {
            wide: vec![0.0; BLOCK * PANEL + LANES],
            acc: vec![0.0; SLAB * BLOCK * LANES + LANES],
        }
    }
}

/// The start of `v` rounded up to a 64-byte line.
fn line_aligned(v: &mut [f32]) -> *mut f32 {
    let p = v.as_mut_ptr();
    // SAFETY: `Scratch::new` leaves 16 spare values, more than an offset
    // to the next line can be.
    unsafe { p.add(p.align_offset(64)) }
}

/// Whether a call of `m` activation rows takes these passes under `isa`:
/// where more rows than one streaming pass takes share each block.
pub(super) fn applies(isa: DenseIsa, m: usize) -> bool {
    isa == DenseIsa::Avx2 && m > rows_per_step(isa)
}

/// `out[i][t]` = activation row `i` of `x` (`out.len()` rows of `k`) ·
/// weight row `t` of `w` (each `2k` bytes of `kind`), with the kernels of
/// `isa`, which this CPU must support and for which [`applies`] holds.
pub(super) fn block(
    isa: DenseIsa,
    kind: HalfKind,
    w: &[&[u8]; BLOCK],
    x: &[f32],
    k: usize,
    scratch: &mut Scratch,
    out: &mut [[f32; BLOCK]],
) {
    assert!(isa.is_supported() && applies(isa, out.len()));
    assert!(x.len() >= out.len() * k);
    for row in w {
        assert_eq!(row.len(), 2 * k);
    }
    let wp: [*const u8; BLOCK] = w.map(<[u8]>::as_ptr);
    let wide = line_aligned(&mut scratch.wide);
    let acc = line_aligned(&mut scratch.acc);
    // SAFETY: every weight row holds `k` values, `x` holds the rows of
    // `out`, the buffers are `Scratch`'s, and the CPU has AVX2, FMA and
    // F16C (`isa`, checked above).
    unsafe {
        match kind {
            HalfKind::Bf16 => rows::<bf16>(&wp, wide, x, k, acc, out),
            HalfKind::F16 => rows::<f16>(&wp, wide, x, k, acc, out),
        }
    }
}

/// Activation rows per step: by [`NW`] weight rows, twelve of AVX2's
/// sixteen registers accumulate.
const R: usize = 3;
/// Weight rows per step.
const NW: usize = 2;

/// The body of [`block`]: every slab of activation rows over every panel.
///
/// # Safety
///
/// Every pointer in `w` must reach `2k` readable bytes of `E`, `x` must
/// hold `out.len()` rows of `k`, `wide` a panel and `acc` a slab's
/// accumulators, and the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows<E: SimdLoad>(
    w: &[*const u8; BLOCK],
    wide: *mut f32,
    x: &[f32],
    k: usize,
    acc: *mut f32,
    out: &mut [[f32; BLOCK]],
) {
    let m = out.len();
    let mut i0 = 0;
    while i0 < m {
        let slab = (m - i0).min(SLAB);
        // SAFETY: forwarded from the caller.
        unsafe {
            std::ptr::write_bytes(acc, 0, slab * BLOCK * LANES);
            let mut c0 = 0;
            while c0 < k {
                let len = (k - c0).min(PANEL);
                widen::<Avx2, E>(w, c0, len, wide);
                let mut r0 = 0;
                while r0 < slab {
                    let n = (slab - r0).min(R);
                    let xr = x[(i0 + r0) * k + c0..].as_ptr();
                    let a = acc.add(r0 * BLOCK * LANES);
                    match n {
                        R => panel::<Avx2, NW, R>(wide, xr, k, a, len),
                        2 => panel::<Avx2, NW, 2>(wide, xr, k, a, len),
                        1 => panel::<Avx2, NW, 1>(wide, xr, k, a, len),
                        n => unreachable!("{n} rows left of a pass of {R}"),
                    }
                    r0 += n;
                }
                c0 += len;
            }
            for (i, o) in out[i0..i0 + slab].iter_mut().enumerate() {
                for (t, o) in o.iter_mut().enumerate() {
                    *o = Avx2::load(acc.add((i * BLOCK + t) * LANES)).reduce_add();
                }
            }
        }
        i0 += slab;
    }
}

/// Widens columns `c0..c0 + len` of every row of `w` into `wide` (row `t`
/// at `t * PANEL`), zero-padded to a whole step.
///
/// # Safety
///
/// As [`rows`], and the CPU must have the features `S` is compiled for.
#[inline(always)]
unsafe fn widen<S: F32x16, E: SimdLoad>(
    w: &[*const u8; BLOCK],
    c0: usize,
    len: usize,
    wide: *mut f32,
) {
    let full = len - len % LANES;
    // SAFETY: forwarded from the caller.
    unsafe {
        for (t, row) in w.iter().enumerate() {
            let src = row.cast::<E>().add(c0);
            let dst = wide.add(t * PANEL);
            let mut c = 0;
            while c < full {
                E::load16::<S>(src.add(c)).store(dst.add(c));
                c += LANES;
            }
            // Rows may start at any byte of a memory map: the tail is copied
            // as bytes, never through a `*const E`.
            if full < len {
                load_tail::<S, E>(row.add(2 * (c0 + full)), len - full).store(dst.add(full));
            }
        }
    }
}

/// One panel of `R` activation rows (row `r` at `x + r * k`, from the
/// panel's first column) against the widened block, added to their
/// accumulators at `acc` (row `r`, weight row `t` at
/// `(r * BLOCK + t) * LANES`).
///
/// # Safety
///
/// As [`widen`]; `wide` holds the widened panel.
#[inline(always)]
unsafe fn panel<S: F32x16, const NW: usize, const R: usize>(
    wide: *const f32,
    x: *const f32,
    k: usize,
    acc: *mut f32,
    len: usize,
) {
    let full = len - len % LANES;
    // SAFETY: forwarded from the caller.
    unsafe {
        let xs: [*const f32; R] = std::array::from_fn(|r| x.add(r * k));
        for t0 in (0..BLOCK).step_by(NW) {
            let slot = |r: usize, j: usize| acc.add((r * BLOCK + t0 + j) * LANES);
            let mut a: [[S; NW]; R] =
                std::array::from_fn(|r| std::array::from_fn(|j| S::load(slot(r, j))));
            let ws: [*const f32; NW] = std::array::from_fn(|j| wide.add((t0 + j) * PANEL));
            let mut c = 0;
            while c < full {
                let wv: [S; NW] = std::array::from_fn(|j| S::load(ws[j].add(c)));
                fma_step(&mut a, &wv, &xs, c, LANES);
                c += LANES;
            }
            if full < len {
                let wv: [S; NW] = std::array::from_fn(|j| S::load(ws[j].add(full)));
                fma_step(&mut a, &wv, &xs, full, len - full);
            }
            for (r, a) in a.iter().enumerate() {
                for (j, a) in a.iter().enumerate() {
                    a.store(slot(r, j));
                }
            }
        }
    }
}
