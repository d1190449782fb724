//! Row-wise CPU ops of the forward pass: RMSNorm (alone and fused with the
//! residual add), rotary embeddings and the gated activation. Each row is
//! computed in one pass and in the same order whatever the batch, so a
//! token's values do not depend on what shares its step. These ops are a
//! few percent of a step (the matmuls and attention are the rest), so they
//! stay plain Rust that the compiler vectorises, except the activation's
//! `exp`, which it cannot and [`super::simd`] does; rows run in parallel
//! only when there are enough of them to pay for the hand-off.

use super::backend::RopeStyle;
use super::isa::KernelIsa;
use super::simd::{self, F32x16, Isa, LANES};
use rayon::prelude::*;

/// Rows below which an op runs on the calling thread.
const PAR_ROWS: usize = 16;

fn norm_row(row: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(row).zip(w) {
        *o = v * scale * w;
    }
}

/// RMSNorm of each `w.len()`-wide row of `x`, scaled by `w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let dim = w.len();
    let mut out = vec![0f32; x.len()];
    if x.len() / dim >= PAR_ROWS {
        out.par_chunks_exact_mut(dim)
            .zip(x.par_chunks_exact(dim))
            .for_each(|(o, row)| norm_row(row, w, eps, o));
    } else {
        for (o, row) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
            norm_row(row, w, eps, o);
        }
    }
    out
}

/// `x += y`, then RMSNorm of each new row of `x` scaled by `w`.
pub fn add_rms_norm(x: &mut [f32], y: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let dim = w.len();
    let mut out = vec![0f32; x.len()];
    let row = |(o, (x, y)): (&mut [f32], (&mut [f32], &[f32]))| {
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
        norm_row(x, w, eps, o);
    };
    if x.len() / dim >= PAR_ROWS {
        out.par_chunks_exact_mut(dim)
            .zip(x.par_chunks_exact_mut(dim).zip(y.par_chunks_exact(dim)))
            .for_each(row);
    } else {
        out.chunks_exact_mut(dim)
            .zip(x.chunks_exact_mut(dim).zip(y.chunks_exact(dim)))
            .for_each(row);
    }
    out
}

/// `x += y`.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Per-token rotation angles: `cos` and `sin`, `positions × pairs` each.
pub struct RopeTables {
    /// Cosines, one row per token.
    pub cos: Vec<f32>,
    /// Sines, one row per token.
    pub sin: Vec<f32>,
    /// Rotated pairs per head (`head_dim / 2`).
    pub pairs: usize,
}

/// Angles `position × inv_freq[i]` for each token.
pub fn rope_tables(inv_freq: &[f32], positions: &[usize]) -> RopeTables {
    let pairs = inv_freq.len();
    let mut cos = Vec::with_capacity(positions.len() * pairs);
    let mut sin = Vec::with_capacity(positions.len() * pairs);
    for &p in positions {
        for f in inv_freq {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    RopeTables { cos, sin, pairs }
}

/// Rotates the first `2 · pairs` dimensions of every `head_dim`-wide head
/// of every row of `x` in place; row `t` uses the angles of token `t`.
pub fn rope(x: &mut [f32], head_dim: usize, style: RopeStyle, t: &RopeTables) {
    rope_at(x, head_dim, 0, style, t);
}

/// Rotates the `2 · pairs` dimensions starting at `offset` of every
/// `chunk`-wide chunk of every row of `x` in place (MLA ropes only the tail
/// of each head); row `t` uses the angles of token `t`.
pub fn rope_at(x: &mut [f32], chunk: usize, offset: usize, style: RopeStyle, t: &RopeTables) {
    let half = t.pairs;
    let tokens = t.cos.len() / half.max(1);
    if tokens == 0 {
        return;
    }
    let row_len = x.len() / tokens;
    for (i, row) in x.chunks_exact_mut(row_len).enumerate() {
        let c = &t.cos[i * half..(i + 1) * half];
        let s = &t.sin[i * half..(i + 1) * half];
        for part in row.chunks_exact_mut(chunk) {
            let head = &mut part[offset..offset + 2 * half];
            for j in 0..half {
                let (i1, i2) = match style {
                    RopeStyle::Half => (j, j + half),
                    RopeStyle::Interleaved => (2 * j, 2 * j + 1),
                };
                let (a, b) = (head[i1], head[i2]);
                head[i1] = a * c[j] - b * s[j];
                head[i2] = a * s[j] + b * c[j];
            }
        }
    }
}

/// `silu(gate) · up`, elementwise, written into `gate`: `g / (1 + e^−g) · u`
/// with [`F32x16::exp`] in every lane, the tail included, so an element's
/// value depends on nothing but its inputs. A scalar `expf` per element was
/// about 2% of a prefill step.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gate and up differ in length");
    let isa = Isa::detect();
    let run = |(g, u): (&mut [f32], &[f32])| silu_mul_chunk(isa, g, u);
    if gate.len() >= PAR_ROWS * 4096 {
        gate.par_chunks_mut(SILU_CHUNK)
            .zip(up.par_chunks(SILU_CHUNK))
            .for_each(run);
    } else {
        run((gate, up));
    }
}

/// Elements per parallel task of [`silu_mul`].
const SILU_CHUNK: usize = 16 * 1024;

fn silu_mul_chunk(isa: Isa, gate: &mut [f32], up: &[f32]) {
    // SAFETY: `Isa::detect` returns only instruction sets this CPU has.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => silu_mul_avx512(gate, up),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => silu_mul_avx2(gate, up),
            Isa::Portable => silu_mul_body::<simd::Portable>(gate, up),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn silu_mul_avx512(gate: &mut [f32], up: &[f32]) {
    // SAFETY: forwarded from the caller.
    unsafe { silu_mul_body::<simd::Avx512>(gate, up) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    // SAFETY: forwarded from the caller.
    unsafe { silu_mul_body::<simd::Avx2>(gate, up) }
}

/// # Safety
///
/// `S` must be an implementation this CPU supports.
#[inline(always)]
unsafe fn silu_mul_body<S: F32x16>(gate: &mut [f32], up: &[f32]) {
    let mut g = gate.chunks_exact_mut(LANES);
    let mut u = up.chunks_exact(LANES);
    for (g, u) in (&mut g).zip(&mut u) {
        // SAFETY: 16 elements each; `S` is supported (the caller).
        unsafe { silu_mul_16::<S>(g.as_mut_ptr(), u.as_ptr()) };
    }
    let (g, u) = (g.into_remainder(), u.remainder());
    if !g.is_empty() {
        let (mut gs, mut us) = ([0f32; LANES], [0f32; LANES]);
        gs[..g.len()].copy_from_slice(g);
        us[..u.len()].copy_from_slice(u);
        // SAFETY: as above.
        unsafe { silu_mul_16::<S>(gs.as_mut_ptr(), us.as_ptr()) };
        g.copy_from_slice(&gs[..g.len()]);
    }
}

/// # Safety
///
/// `g` and `u` point to 16 valid elements; `S` is supported.
#[inline(always)]
unsafe fn silu_mul_16<S: F32x16>(g: *mut f32, u: *const f32) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let x = S::load(g);
        let e = x.mul(S::splat(-1.0)).exp();
        x.div(e.add(S::splat(1.0))).mul(S::load(u)).store(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set gives the same bits, tail included, within
    /// 4e-7 relative of an f64 evaluation: `exp` is within 2e-7 (its own
    /// test), its error reaches `1 + e` scaled by `e/(1+e) ≤ 1`, and the add,
    /// the division and the product round once each (3·2⁻²⁴ ≈ 1.8e-7).
    #[test]
    fn silu_mul_is_accurate_and_identical_across_instruction_sets() {
        let n = 64 * LANES + 5;
        let gate: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 40.0).collect();
        let up: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
        let isas = Isa::to_test("ops::silu_mul_is_accurate_and_identical_across_instruction_sets");
        let runs: Vec<Vec<f32>> = isas
            .iter()
            .map(|&isa| {
                let mut g = gate.clone();
                silu_mul_chunk(isa, &mut g, &up);
                g
            })
            .collect();
        for (isa, run) in isas.iter().zip(&runs) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(run),
                bits(&runs[0]),
                "{isa:?} differs from {:?}",
                isas[0]
            );
        }
        for ((g, u), got) in gate.iter().zip(&up).zip(&runs[0]) {
            let (g, u) = (*g as f64, *u as f64);
            let want = g / (1.0 + (-g).exp()) * u;
            let err = (*got as f64 - want).abs();
            assert!(
                err <= 4e-7 * want.abs(),
                "silu({g})·{u}: {got} against {want}"
            );
        }
        let mut whole = gate.clone();
        silu_mul(&mut whole, &up);
        assert_eq!(
            whole,
            runs[isas.len() - 1],
            "silu_mul runs the dispatched body"
        );
    }

    #[test]
    fn rope_at_position_zero_is_identity() {
        let t = rope_tables(&[1.0, 0.1, 0.01, 0.001], &[0]);
        let mut x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        rope(&mut x, 8, RopeStyle::Half, &t);
        assert_eq!(x, (0..8).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn rope_preserves_pair_norms() {
        for style in [RopeStyle::Half, RopeStyle::Interleaved] {
            let t = rope_tables(&[1.0, 0.01], &[17]);
            let mut x = vec![1.0, 2.0, 3.0, 4.0];
            rope(&mut x, 4, style, &t);
            let n: f32 = x.iter().map(|v| v * v).sum();
            assert!((n - 30.0).abs() < 1e-4);
        }
    }

    /// The fused residual-and-norm equals the two steps, bit for bit, for
    /// row counts on both sides of the parallel threshold.
    #[test]
    fn fused_add_norm_equals_add_then_norm() {
        let dim = 24;
        let w: Vec<f32> = (0..dim).map(|i| 0.5 + i as f32 / 10.0).collect();
        for rows in [1, 3, PAR_ROWS + 1] {
            let x: Vec<f32> = (0..rows * dim).map(|i| (i as f32 * 0.37).sin()).collect();
            let y: Vec<f32> = (0..rows * dim).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut fused_x = x.clone();
            let fused = add_rms_norm(&mut fused_x, &y, &w, 1e-6);
            let mut plain_x = x.clone();
            add(&mut plain_x, &y);
            assert_eq!(fused_x, plain_x);
            assert_eq!(fused, rms_norm(&plain_x, &w, 1e-6));
        }
    }

    /// Row results do not depend on how many rows share the call.
    #[test]
    fn norm_rows_are_batch_invariant() {
        let dim = 40;
        let w = vec![1.5f32; dim];
        let x: Vec<f32> = (0..(PAR_ROWS + 3) * dim)
            .map(|i| (i as f32 * 0.7).sin())
            .collect();
        let all = rms_norm(&x, &w, 1e-5);
        for r in [0, 5, PAR_ROWS + 2] {
            let one = rms_norm(&x[r * dim..(r + 1) * dim], &w, 1e-5);
            assert_eq!(one, all[r * dim..(r + 1) * dim]);
        }
    }
}
