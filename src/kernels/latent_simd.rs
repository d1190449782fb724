//! The body of the latent (MLA) attention kernel, written once over
//! [`F32x16`] and compiled per instruction set by
//! [`super::latent_attention`].
//!
//! One call is a group of query heads of one query row, over the rows of
//! its sequence it may see (already widened to f32). All heads of an MLA
//! layer read the same rows, so the rows are walked in tiles of 16 that
//! every head of the group uses while they are in cache: per tile, scores
//! for four heads at a time (each key vector loaded once for four dot
//! products), an online softmax update of each head's running maximum and
//! sum, and the tile's values (each row's first `v` elements) added to the
//! accumulators of four heads at a time (each value vector loaded once for
//! four heads). Blocks of four heads are compile-time sized so that their
//! accumulators live in registers as independent FMA chains; a fixed order
//! of operations makes the result depend only on the row's query and keys,
//! so batching does not change it.

use super::simd::{F32x16, LANES};

/// Keys per tile: one score vector.
const TILE: usize = LANES;
/// Heads whose scores, and whose value sums, are accumulated together.
const HEAD_BLOCK: usize = 4;

/// `o` (`heads × v`) = softmax(`scale` · q·Kᵀ) · V for the `heads` queries
/// `q` (`heads × w`) over `keys` (`n × w`; a key's first `v` values are its
/// value). `scratch` holds at least `heads × (v + TILE)` floats.
///
/// # Safety
/// Only inside a function compiled for `S`'s instruction set.
#[inline(always)]
pub(super) unsafe fn attend<S: F32x16>(
    q: &[f32],
    keys: &[f32],
    (w, v, scale): (usize, usize, f32),
    o: &mut [f32],
    scratch: &mut [f32],
) {
    let heads = q.len() / w;
    let n = keys.len() / w;
    let (acc, probs) = scratch[..heads * (v + TILE)].split_at_mut(heads * v);
    acc.fill(0.0);
    let mut max = vec![f32::NEG_INFINITY; heads];
    let mut sum = vec![0f32; heads];
    for t0 in (0..n).step_by(TILE) {
        let tn = TILE.min(n - t0);
        let tile = &keys[t0 * w..(t0 + tn) * w];
        for h0 in (0..heads).step_by(HEAD_BLOCK) {
            let hb = HEAD_BLOCK.min(heads - h0);
            let mut scores = [[f32::NEG_INFINITY; TILE]; HEAD_BLOCK];
            let qb = &q[h0 * w..(h0 + hb) * w];
            match hb {
                4 => score_block::<S, 4>(qb, tile, w, scale, &mut scores),
                3 => score_block::<S, 3>(qb, tile, w, scale, &mut scores),
                2 => score_block::<S, 2>(qb, tile, w, scale, &mut scores),
                _ => score_block::<S, 1>(qb, tile, w, scale, &mut scores),
            }
            for (x, s) in scores.iter().enumerate().take(hb) {
                let h = h0 + x;
                let sv = S::load(s.as_ptr());
                let tile_max = sv.reduce_max();
                let new_max = max[h].max(tile_max);
                let p = sv.add(S::splat(-new_max)).exp();
                let correction = (max[h] - new_max).exp();
                p.store(probs[h * TILE..(h + 1) * TILE].as_mut_ptr());
                sum[h] = sum[h] * correction + p.reduce_add();
                max[h] = new_max;
                if correction != 1.0 {
                    for a in &mut acc[h * v..(h + 1) * v] {
                        *a *= correction;
                    }
                }
            }
        }
        for h0 in (0..heads).step_by(HEAD_BLOCK) {
            let hb = HEAD_BLOCK.min(heads - h0);
            let p = &probs[h0 * TILE..(h0 + hb) * TILE];
            let a = &mut acc[h0 * v..(h0 + hb) * v];
            match hb {
                4 => value_block::<S, 4>(p, tile, (w, v), a),
                3 => value_block::<S, 3>(p, tile, (w, v), a),
                2 => value_block::<S, 2>(p, tile, (w, v), a),
                _ => value_block::<S, 1>(p, tile, (w, v), a),
            }
        }
    }
    for h in 0..heads {
        let inv = 1.0 / sum[h];
        for (o, a) in o[h * v..(h + 1) * v].iter_mut().zip(&acc[h * v..]) {
            *o = a * inv;
        }
    }
}

/// Scaled scores of `HB` heads (`q`: `HB × w`) for each key of `tile`, into
/// `scores[head][key]`; keys past the tile keep their −∞.
#[inline(always)]
unsafe fn score_block<S: F32x16, const HB: usize>(
    q: &[f32],
    tile: &[f32],
    w: usize,
    scale: f32,
    scores: &mut [[f32; TILE]; HEAD_BLOCK],
) {
    let vw = w / LANES * LANES;
    let qp = q.as_ptr();
    for (j, k) in tile.chunks_exact(w).enumerate() {
        let kp = k.as_ptr();
        let mut a = [S::zero(); HB];
        for d in (0..vw).step_by(LANES) {
            let kv = S::load(kp.add(d));
            for (x, a) in a.iter_mut().enumerate() {
                *a = S::load(qp.add(x * w + d)).fma(kv, *a);
            }
        }
        for (x, a) in a.iter().enumerate() {
            let qh = &q[x * w..(x + 1) * w];
            let tail: f32 = (vw..w).map(|d| qh[d] * k[d]).sum();
            scores[x][j] = (a.reduce_add() + tail) * scale;
        }
    }
}

/// Adds each key's value (its first `v` elements), weighted by `p`
/// (`HB × TILE` probabilities), to the `HB` heads' accumulators `acc`
/// (`HB × v`).
#[inline(always)]
unsafe fn value_block<S: F32x16, const HB: usize>(
    p: &[f32],
    tile: &[f32],
    (w, v): (usize, usize),
    acc: &mut [f32],
) {
    let tn = tile.len() / w;
    let vv = v / LANES * LANES;
    let tp = tile.as_ptr();
    for d in (0..vv).step_by(LANES) {
        let mut a = [S::zero(); HB];
        for j in 0..tn {
            let val = S::load(tp.add(j * w + d));
            for (x, a) in a.iter_mut().enumerate() {
                *a = S::splat(p[x * TILE + j]).fma(val, *a);
            }
        }
        for (x, a) in a.iter().enumerate() {
            let at = acc.as_mut_ptr().add(x * v + d);
            S::load(at).add(*a).store(at);
        }
    }
    for x in 0..HB {
        for d in vv..v {
            acc[x * v + d] += (0..tn)
                .map(|j| p[x * TILE + j] * tile[j * w + d])
                .sum::<f32>();
        }
    }
}
