//! The body of the latent (MLA) attention kernel, written once over
//! [`F32x16`] and compiled per instruction set by
//! [`super::latent_attention`].
//!
//! One call is a group of query heads of one query row, over the rows of
//! its sequence it may see (already widened to f32). All heads of an MLA
//! layer read the same rows, so the rows are walked in tiles of 16 that
//! stay in L1 while every head of the group uses them: per tile, scores for
//! four heads at a time (each key vector loaded once for four dot
//! products), an online softmax update of each head's running maximum and
//! sum, and the tile's values (each row's first `v` elements) added to each
//! head's accumulator. The result depends only on the row's query and keys,
//! in a fixed order, so batching does not change it.

use super::simd::{F32x16, LANES};

/// Keys per tile: one score vector.
const TILE: usize = LANES;
/// Heads whose scores are accumulated together.
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
    let vw = w / LANES * LANES;
    for t0 in (0..n).step_by(TILE) {
        let tn = TILE.min(n - t0);
        let tile = &keys[t0 * w..(t0 + tn) * w];
        for h0 in (0..heads).step_by(HEAD_BLOCK) {
            let hb = HEAD_BLOCK.min(heads - h0);
            let mut scores = [[f32::NEG_INFINITY; TILE]; HEAD_BLOCK];
            for (j, k) in tile.chunks_exact(w).enumerate() {
                let mut a = [S::zero(); HEAD_BLOCK];
                let kp = k.as_ptr();
                for d in (0..vw).step_by(LANES) {
                    let kv = S::load(kp.add(d));
                    for (x, a) in a.iter_mut().enumerate().take(hb) {
                        *a = S::load(q.as_ptr().add((h0 + x) * w + d)).fma(kv, *a);
                    }
                }
                for (x, a) in a.iter().enumerate().take(hb) {
                    let qh = &q[(h0 + x) * w..(h0 + x + 1) * w];
                    let tail: f32 = (vw..w).map(|d| qh[d] * k[d]).sum();
                    scores[x][j] = (a.reduce_add() + tail) * scale;
                }
            }
            for (x, s) in scores.iter().enumerate().take(hb) {
                let h = h0 + x;
                let sv = S::load(s.as_ptr());
                let tile_max = sv.reduce_max();
                let new_max = max[h].max(tile_max);
                let p = sv.add(S::splat(-new_max)).exp();
                let correction = (max[h] - new_max).exp();
                let p_row = &mut probs[h * TILE..(h + 1) * TILE];
                p.store(p_row.as_mut_ptr());
                sum[h] = sum[h] * correction + p.reduce_add();
                max[h] = new_max;
                if correction != 1.0 {
                    for a in &mut acc[h * v..(h + 1) * v] {
                        *a *= correction;
                    }
                }
            }
        }
        let vv = v / LANES * LANES;
        for h in 0..heads {
            let p_row = &probs[h * TILE..h * TILE + tn];
            let a_row = &mut acc[h * v..(h + 1) * v];
            for d in (0..vv).step_by(LANES) {
                let mut a = S::load(a_row.as_ptr().add(d));
                for (j, &p) in p_row.iter().enumerate() {
                    a = S::splat(p).fma(S::load(tile.as_ptr().add(j * w + d)), a);
                }
                a.store(a_row.as_mut_ptr().add(d));
            }
            for (d, a) in a_row.iter_mut().enumerate().skip(vv) {
                *a += p_row
                    .iter()
                    .enumerate()
                    .map(|(j, &p)| p * tile[j * w + d])
                    .sum::<f32>();
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
