//! Row-wise CPU ops of the forward pass: RMSNorm (alone and fused with the
//! residual add), rotary embeddings and the gated activation. Each row is
//! computed in one pass and in the same order whatever the batch, so a
//! token's values do not depend on what shares its step. These ops are a
//! few percent of a step (the matmuls and attention are the rest), so they
//! stay plain Rust that the compiler vectorises; rows run in parallel only
//! when there are enough of them to pay for the hand-off.

use super::backend::RopeStyle;
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

/// `silu(gate) · up`, elementwise, written into `gate`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let f = |(g, u): (&mut f32, &f32)| *g = *g / (1.0 + (-*g).exp()) * u;
    if gate.len() >= PAR_ROWS * 4096 {
        gate.par_iter_mut().zip(up).for_each(f);
    } else {
        gate.iter_mut().zip(up).for_each(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
