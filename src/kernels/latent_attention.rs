//! Attention over a latent cache (MLA, [`LayerKvSpec::Latent`]): every head
//! of a sequence reads the same cached rows, the whole row as its key and
//! the row's first `v_dim` values as its value. DeepSeek's absorbed decode
//! is this op: queries already carry `W_UK`, and the caller applies `W_UV`
//! to the latent outputs, so per-head keys and values of cached tokens are
//! never formed.
//!
//! Two bodies, dispatched at run time. Where the CPU has AMX-BF16 and the
//! cache is not f32, [`super::latent_amx`] runs both products on tiles in
//! bf16 (the op is compute-bound: every cached row meets every head).
//! Otherwise each sequence's rows are widened to f32 once per call and
//! shared by all its heads and queries; groups of heads of a query row then
//! run in parallel on the f32 SIMD body of [`super::latent_simd`] (AVX-512,
//! AVX2+FMA+F16C or portable); an f32 cache, which asks for exact
//! arithmetic, always gets this one. A row's result depends only on its own
//! query and its sequence's cache, so batching does not change it.
//!
//! [`LayerKvSpec::Latent`]: crate::kv_cache::spec::LayerKvSpec::Latent

use super::attention::AttnSeq;
use super::isa::{KernelIsa, Level};
#[cfg(target_arch = "x86_64")]
use super::latent_amx;
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
    check_table(geom, block_table, len)?;
    let w = geom.k_dim;
    let mut rows = vec![0f32; len * w];
    for (p, row) in rows.chunks_exact_mut(w).enumerate() {
        let block = block_table[p / geom.block_size].index();
        let at = SlotAddr {
            block,
            head: 0,
            slot: p % geom.block_size,
        };
        layer.read(geom, at, row, &mut []);
    }
    Ok(rows)
}

/// Fails unless `geom` is a latent layer and `block_table` holds positions
/// `0..len` in blocks of the pool.
fn check_table(geom: &KvGeometry, block_table: &[BlockId], len: usize) -> Result<()> {
    if geom.num_kv_heads != 1 || geom.v_dim != 0 {
        bail!("not a latent layer: {geom:?}");
    }
    let blocks = len.div_ceil(geom.block_size);
    if block_table.len() < blocks {
        bail!(
            "block table of {} blocks cannot hold {len} tokens",
            block_table.len()
        );
    }
    if let Some(b) = block_table[..blocks]
        .iter()
        .find(|b| b.index() >= geom.num_blocks)
    {
        bail!("block {} is outside the pool", b.index());
    }
    Ok(())
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
        check_table(geom, s.block_table, s.ctx_len)?;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::AmxBf16 && !matches!(layer, LayerKv::F32(_)) {
        let rows: Vec<latent_amx::Row> = seqs
            .iter()
            .flat_map(|s| {
                (0..s.q_len).map(|i| latent_amx::Row {
                    table: s.block_table,
                    n: s.ctx_len - s.q_len + i + 1,
                    index: s.q_start + i,
                })
            })
            .collect();
        let dims = latent_amx::Dims::new(num_heads, w, v_dim);
        // SAFETY: `Isa::AmxBf16` is dispatched only where the CPU has its
        // instruction sets; the tables were checked above, and `q` and
        // `out` by the caller.
        unsafe { latent_amx::attention(q, out, layer, geom, &rows, dims, scale) };
        return Ok(());
    }
    for s in seqs {
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

/// The latent kernel's bodies, least preferred first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// Tiles in bf16; the f32 body for f32 caches.
    #[cfg(target_arch = "x86_64")]
    AmxBf16,
}

impl KernelIsa for Isa {
    #[cfg(target_arch = "x86_64")]
    const ALL: &'static [Isa] = &[Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::AmxBf16];
    #[cfg(not(target_arch = "x86_64"))]
    const ALL: &'static [Isa] = &[Isa::Portable];

    fn level(self) -> Level {
        match self {
            Isa::Portable => Level::Scalar,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Level::Avx2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Level::Avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::AmxBf16 => Level::Amx,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "AVX2+FMA+F16C",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "AVX-512F",
            #[cfg(target_arch = "x86_64")]
            Isa::AmxBf16 => "AMX-BF16",
        }
    }

    fn is_supported(self) -> bool {
        let cpu = super::isa::cpu();
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => cpu.avx2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => cpu.avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::AmxBf16 => cpu.amx_bf16,
        }
    }
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
                Isa::Avx512 | Isa::AmxBf16 => attend_avx512(q, keys, shape, o, scratch),
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

    /// The AMX body on 16-bit and fp8 caches (the ones it serves) against
    /// an f64 evaluation: several jobs with a partial last one, tasks of
    /// several jobs (contexts past 2048), heads and
    /// widths that need padding, blocks of 8, 16 and 32 positions out of
    /// order, several queries, and R1's shape.
    ///
    /// The reference takes the kernel's inputs: the scaled query and the
    /// cached values rounded to bf16 (round to nearest even, as
    /// `vcvtneps2bf16`). The bound comes from what the kernel still rounds:
    /// each score is an f32 sum of `w` exact products, off by at most
    /// δ = w · 2⁻²⁴ · Σ_d |q̃_d k̃_d|, so normalised weights change by a factor
    /// within e^{±2δ}; the weights are rounded to bf16 (2⁻⁹) and normalised
    /// by their unrounded sum (2⁻⁹ more); `exp` (5·10⁻⁶ in each weight and
    /// in the sum) and the f32 sums add 1.2·10⁻⁵. Each output is within
    /// (e^{2δ_max}·(1 + 2⁻⁹)²·(1 + 1.2·10⁻⁵) − 1) · Σ_j p_j |ṽ_jd| of the
    /// reference.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn amx_body_within_bf16_rounding_of_f64() {
        let isas = Isa::to_test("latent_attention::amx_body_within_bf16_rounding_of_f64");
        if !isas.contains(&Isa::AmxBf16) {
            return;
        }
        for dtype in [KvDtype::F16, KvDtype::Bf16, KvDtype::Fp8E4m3] {
            for shape in [
                (40, 20, 20, 600, 2, 16),
                (40, 20, 20, 2300, 2, 16),
                (48, 32, 16, 70, 3, 8),
                (64, 64, 32, 530, 1, 32),
                (576, 512, 128, 300, 1, 16),
            ] {
                check_amx(dtype, shape);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn check_amx(
        dtype: KvDtype,
        (w, v_dim, heads, ctx, q_len, bs): (usize, usize, usize, usize, usize, usize),
    ) {
        let spec = KvSpec::uniform(LayerKvSpec::Latent { width: w, v_dim }, 1);
        let blocks = ctx.div_ceil(bs);
        let mut cache = KvCache::new(&spec, bs, blocks + 1, dtype).unwrap();
        let table: Vec<BlockId> = (1..=blocks).rev().map(|b| BlockId(b as u32)).collect();
        // Pseudo-random values whose spread changes every 300 positions
        // (jobs hold 256) by factors that move scores by more than the AMX
        // body's `LAZY`, so that maxima grow and fall from job to job and
        // both the rescaling of a task's sums and the merge of tasks matter.
        let rows: Vec<f32> = (0..ctx * w)
            .map(|i| {
                let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                (x as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * [1.0, 8.0, 40.0][i / w / 300 % 3]
            })
            .collect();
        let geom = cache.geometries[0];
        write_kv(&mut cache.layers[0], &geom, &table, 0, &rows, &[]).unwrap();
        let stored = read_rows(&cache.layers[0], &geom, &table, ctx).unwrap();
        let scale = 0.3;
        let (q, out) = attend_queries(
            Isa::AmxBf16,
            &cache,
            (&table, ctx, q_len),
            (heads, v_dim, scale),
        );
        let bf = |x: f32| half::bf16::from_f32(x).to_f64();
        let stored: Vec<f64> = stored.iter().map(|&x| bf(x)).collect();
        for i in 0..q_len {
            let pos = ctx - q_len + i;
            for h in 0..heads {
                let qh: Vec<f64> = q[(i * heads + h) * w..][..w]
                    .iter()
                    .map(|&x| bf(x * scale))
                    .collect();
                let key = |p: usize| &stored[p * w..(p + 1) * w];
                let dot = |p: usize, f: fn(f64) -> f64| -> f64 {
                    qh.iter().zip(key(p)).map(|(a, b)| f(a * b)).sum()
                };
                let s: Vec<f64> = (0..=pos).map(|p| dot(p, |x| x)).collect();
                let delta = (0..=pos)
                    .map(|p| w as f64 * 2f64.powi(-24) * dot(p, f64::abs))
                    .fold(0f64, f64::max);
                let r = 2f64.powi(-9);
                let factor = (2.0 * delta).exp() * (1.0 + r).powi(2) * (1.0 + 1.2e-5) - 1.0;
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..v_dim {
                    let (want, mag) = (0..=pos).fold((0f64, 0f64), |(a, b), p| {
                        let pw = (s[p] - m).exp() / z;
                        let v = stored[p * w + d];
                        (a + pw * v, b + pw * v.abs())
                    });
                    let got = out[(i * heads + h) * v_dim + d] as f64;
                    assert!(
                        (got - want).abs() <= factor * mag,
                        "{dtype:?} w {w} heads {heads} ctx {ctx} block {bs}: q {i} head {h} \
                         dim {d}: {got} vs {want} (bound {})",
                        factor * mag
                    );
                }
            }
        }
    }

    /// Queries of a fixed pattern (magnitudes up to 1.6/√w) for the last
    /// `q_len` of `ctx` positions of one sequence with blocks `table` in
    /// layer 0 of `cache`, and their attention on `isa`.
    fn attend_queries(
        isa: Isa,
        cache: &KvCache,
        (table, ctx, q_len): (&[BlockId], usize, usize),
        (heads, v_dim, scale): (usize, usize, f32),
    ) -> (Vec<f32>, Vec<f32>) {
        let geom = cache.geometries[0];
        let w = geom.k_dim;
        let q: Vec<f32> = (0..q_len * heads * w)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0 / (w as f32).sqrt())
            .collect();
        let seq = AttnSeq {
            q_start: 0,
            q_len,
            ctx_len: ctx,
            block_table: table,
        };
        let mut out = vec![0f32; q_len * heads * v_dim];
        latent_attention_on(
            isa,
            &q,
            &mut out,
            &cache.layers[0],
            &geom,
            &[seq],
            (heads, v_dim, scale),
        )
        .unwrap();
        (q, out)
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
        let (q, out) = attend_queries(isa, &cache, (&table, ctx, q_len), (heads, v_dim, 0.3));
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
