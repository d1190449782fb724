//! Attention over a latent cache (MLA, [`LayerKvSpec::Latent`]): every head
//! of a sequence reads the same cached rows, the whole row as its key and
//! the row's first `v_dim` values as its value. DeepSeek's absorbed decode
//! is this op: queries already carry `W_UK`, and the caller applies `W_UV`
//! to the latent outputs, so per-head keys and values of cached tokens are
//! never formed.
//!
//! Each sequence's rows are widened to f32 once per call and shared by all
//! its heads and queries, which then run in parallel. A row's result
//! depends only on its own query and its sequence's cache, so batching does
//! not change it.
//!
//! [`LayerKvSpec::Latent`]: crate::kv_cache::spec::LayerKvSpec::Latent

use super::attention::AttnSeq;
use crate::kv_cache::storage::{KvGeometry, LayerKv, SlotAddr};
use crate::types::BlockId;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// The latent rows of positions `0..len` of a sequence, widened to f32:
/// `len × geom.k_dim` values.
pub fn read_rows(
    layer: &LayerKv,
    geom: &KvGeometry,
    block_table: &[BlockId],
    len: usize,
) -> Result<Vec<f32>> {
    if geom.num_kv_heads != 1 || geom.v_dim != 0 {
        bail!("not a latent layer: {geom:?}");
    }
    if block_table.len() * geom.block_size < len {
        bail!(
            "block table of {} blocks cannot hold {len} tokens",
            block_table.len()
        );
    }
    let w = geom.k_dim;
    let mut rows = vec![0f32; len * w];
    for (p, row) in rows.chunks_exact_mut(w).enumerate() {
        let block = block_table[p / geom.block_size].index();
        if block >= geom.num_blocks {
            bail!("block {block} is outside the pool");
        }
        let at = SlotAddr {
            block,
            head: 0,
            slot: p % geom.block_size,
        };
        layer.read(geom, at, row, &mut []);
    }
    Ok(rows)
}

/// Causal attention of `q` (`rows × num_heads × k_dim`) over each
/// sequence's latent rows, into `out` (`rows × num_heads × v_dim`), with
/// softmax scale `scale`.
pub fn latent_attention(
    q: &[f32],
    out: &mut [f32],
    layer: &LayerKv,
    geom: &KvGeometry,
    seqs: &[AttnSeq],
    (num_heads, v_dim, scale): (usize, usize, f32),
) -> Result<()> {
    let w = geom.k_dim;
    if v_dim > w || !q.len().is_multiple_of(num_heads * w) {
        bail!(
            "latent attention: queries of {} for {num_heads} heads of {w}",
            q.len()
        );
    }
    let rows = q.len() / (num_heads * w);
    if out.len() != rows * num_heads * v_dim {
        bail!("latent attention: output of {} for {rows} rows", out.len());
    }
    for s in seqs {
        if s.q_len == 0 || s.q_len > s.ctx_len || s.q_start + s.q_len > rows {
            bail!(
                "sequence has {} queries for a context of {}",
                s.q_len,
                s.ctx_len
            );
        }
        let cache = read_rows(layer, geom, s.block_table, s.ctx_len)?;
        let q_rows = &q[s.q_start * num_heads * w..(s.q_start + s.q_len) * num_heads * w];
        let o_rows =
            &mut out[s.q_start * num_heads * v_dim..(s.q_start + s.q_len) * num_heads * v_dim];
        o_rows
            .par_chunks_exact_mut(v_dim)
            .zip(q_rows.par_chunks_exact(w))
            .enumerate()
            .for_each(|(i, (o, qh))| {
                let pos = s.ctx_len - s.q_len + i / num_heads;
                attend(qh, &cache[..(pos + 1) * w], w, scale, o);
            });
    }
    Ok(())
}

/// One head's query over `keys` (rows of `w`): softmax-weighted sum of the
/// rows' first `o.len()` values.
fn attend(q: &[f32], keys: &[f32], w: usize, scale: f32, o: &mut [f32]) {
    let scores: Vec<f32> = keys
        .chunks_exact(w)
        .map(|k| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale)
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f32;
    o.fill(0.0);
    for (k, s) in keys.chunks_exact(w).zip(&scores) {
        let p = (s - max).exp();
        total += p;
        for (a, v) in o.iter_mut().zip(k) {
            *a += p * v;
        }
    }
    for a in o.iter_mut() {
        *a /= total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::write_kv;
    use crate::kv_cache::spec::{KvSpec, LayerKvSpec};
    use crate::kv_cache::storage::{KvCache, KvDtype};

    /// Against an f64 evaluation of the same formula, over a block table out
    /// of order and a context spanning blocks.
    #[test]
    fn matches_f64_softmax_over_latent_rows() {
        let (w, v_dim, heads, ctx, q_len) = (6, 4, 3, 11, 2);
        let spec = KvSpec::uniform(LayerKvSpec::Latent { width: w, v_dim }, 1);
        let mut cache = KvCache::new(&spec, 4, 5, KvDtype::F32).unwrap();
        let table = [BlockId(3), BlockId(0), BlockId(4)];
        let rows: Vec<f32> = (0..ctx * w)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let geom = cache.geometries[0];
        write_kv(&mut cache.layers[0], &geom, &table, 0, &rows, &[]).unwrap();
        let q: Vec<f32> = (0..q_len * heads * w)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
            .collect();
        let seq = AttnSeq {
            q_start: 0,
            q_len,
            ctx_len: ctx,
            block_table: &table,
        };
        let mut out = vec![0f32; q_len * heads * v_dim];
        latent_attention(
            &q,
            &mut out,
            &cache.layers[0],
            &geom,
            &[seq],
            (heads, v_dim, 0.3),
        )
        .unwrap();
        for i in 0..q_len {
            let pos = ctx - q_len + i;
            for h in 0..heads {
                let qh = &q[(i * heads + h) * w..][..w];
                let s: Vec<f64> = (0..=pos)
                    .map(|p| {
                        0.3 * (0..w)
                            .map(|d| qh[d] as f64 * rows[p * w + d] as f64)
                            .sum::<f64>()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..v_dim {
                    let want: f64 = (0..=pos)
                        .map(|p| (s[p] - m).exp() / z * rows[p * w + d] as f64)
                        .sum();
                    let got = out[(i * heads + h) * v_dim + d] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "q {i} head {h} dim {d}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
