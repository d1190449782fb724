//! Attention over a latent cache (MLA, [`LayerKvSpec::Latent`]): every head
//! of a sequence reads the same cached rows, the whole row as its key and
//! the row's first `v_dim` values as its value. DeepSeek's absorbed decode
//! is this op: queries already carry `W_UK`, and the caller applies `W_UV`
//! to the latent outputs, so per-head keys and values of cached tokens are
//! never formed.
//!
//! Each sequence's rows are widened to f32 once per call and shared by all
//! its heads and queries; groups of heads of a query row then run in
//! parallel on the SIMD body of [`super::latent_simd`] (AVX-512, AVX2+FMA+F16C
//! or portable, dispatched at run time). A row's result depends only on its
//! own query and its sequence's cache, so batching does not change it.
//!
//! [`LayerKvSpec::Latent`]: crate::kv_cache::spec::LayerKvSpec::Latent

use super::attention::{AttnSeq, Isa};
use super::isa::KernelIsa;
use super::latent_simd;
use super::simd::{self, LANES};
use crate::kv_cache::storage::{KvGeometry, LayerKv, SlotAddr};
use crate::types::BlockId;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::cell::RefCell;

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
    latent_attention_on(
        Isa::detect(),
        q,
        out,
        layer,
        geom,
        seqs,
        (num_heads, v_dim, scale),
    )
}

/// [`latent_attention`] on the kernel body compiled for `isa`.
fn latent_attention_on(
    isa: Isa,
    q: &[f32],
    out: &mut [f32],
    layer: &LayerKv,
    geom: &KvGeometry,
    seqs: &[AttnSeq],
    (num_heads, v_dim, scale): (usize, usize, f32),
) -> Result<()> {
    let w = geom.k_dim;
    let rows = q.len() / (num_heads * w);
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
        let group = (1..=HEAD_GROUP.min(num_heads))
            .rev()
            .find(|g| num_heads.is_multiple_of(*g))
            .unwrap_or(1);
        o_rows
            .par_chunks_mut(group * v_dim)
            .zip(q_rows.par_chunks(group * w))
            .enumerate()
            .for_each(|(i, (o, qg))| {
                // Groups never straddle two query rows: `group` divides the
                // heads.
                let pos = s.ctx_len - s.q_len + i * group / num_heads;
                attend(isa, qg, &cache[..(pos + 1) * w], (w, v_dim, scale), o);
            });
    }
    Ok(())
}

/// Most query heads per task (the largest divisor of the head count up to
/// this): their accumulators (`16 × v_dim` floats) and a tile of keys stay
/// in L1/L2 while the task walks the rows.
const HEAD_GROUP: usize = 16;

thread_local! {
    /// Per-thread accumulators and probabilities, reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One group of heads of one query row over the `keys` it sees, on `isa`.
fn attend(isa: Isa, q: &[f32], keys: &[f32], shape: (usize, usize, f32), o: &mut [f32]) {
    let heads = q.len() / shape.0;
    SCRATCH.with_borrow_mut(|scratch| {
        let need = heads * (shape.1 + LANES);
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        // SAFETY: the variants run only where `Isa::detect` (or a test's
        // `to_test`) found their instruction set.
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => attend_avx512(q, keys, shape, o, scratch),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => attend_avx2(q, keys, shape, o, scratch),
                Isa::Portable => latent_simd::attend::<simd::Portable>(q, keys, shape, o, scratch),
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn attend_avx512(
    q: &[f32],
    keys: &[f32],
    shape: (usize, usize, f32),
    o: &mut [f32],
    scratch: &mut [f32],
) {
    latent_simd::attend::<simd::Avx512>(q, keys, shape, o, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(
    q: &[f32],
    keys: &[f32],
    shape: (usize, usize, f32),
    o: &mut [f32],
    scratch: &mut [f32],
) {
    latent_simd::attend::<simd::Avx2>(q, keys, shape, o, scratch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::write_kv;
    use crate::kv_cache::spec::{KvSpec, LayerKvSpec};
    use crate::kv_cache::storage::{KvCache, KvDtype};

    /// Every instruction set this CPU has, against an f64 evaluation of the
    /// same formula, over a block table out of order and a context spanning
    /// blocks: rows narrower than a vector, and rows of two vectors and a
    /// tail over several 16-key tiles with a partial one.
    #[test]
    fn matches_f64_softmax_over_latent_rows() {
        let isas = Isa::to_test("latent_attention::matches_f64_softmax_over_latent_rows");
        for &isa in &isas {
            check_against_f64(isa, (6, 4, 3, 11, 2));
            check_against_f64(isa, (40, 20, 6, 37, 3));
        }
    }

    fn check_against_f64(
        isa: Isa,
        (w, v_dim, heads, ctx, q_len): (usize, usize, usize, usize, usize),
    ) {
        let spec = KvSpec::uniform(LayerKvSpec::Latent { width: w, v_dim }, 1);
        let mut cache = KvCache::new(&spec, 4, 12, KvDtype::F32).unwrap();
        let table: Vec<BlockId> = (0..ctx.div_ceil(4))
            .rev()
            .map(|b| BlockId(b as u32))
            .collect();
        let rows: Vec<f32> = (0..ctx * w)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let geom = cache.geometries[0];
        write_kv(&mut cache.layers[0], &geom, &table, 0, &rows, &[]).unwrap();
        let q: Vec<f32> = (0..q_len * heads * w)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0 / (w as f32).sqrt())
            .collect();
        let seq = AttnSeq {
            q_start: 0,
            q_len,
            ctx_len: ctx,
            block_table: &table,
        };
        let mut out = vec![0f32; q_len * heads * v_dim];
        latent_attention_on(
            isa,
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
                    // Values are ≤ 1.6 in magnitude; f32 sums of ≤ 40
                    // products and an exp of relative error 2e-7 stay far
                    // below 1e-5.
                    assert!(
                        (got - want).abs() < 1e-5,
                        "{}: w {w}, q {i} head {h} dim {d}: {got} vs {want}",
                        isa.name()
                    );
                }
            }
        }
    }
}
