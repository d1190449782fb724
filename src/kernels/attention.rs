//! Paged attention on the CPU: the op that writes new keys and values into
//! their cache slots, and causal attention of a batch of sequences over their
//! block tables (a prefill chunk with a cached prefix and a one-token decode
//! are the same case). GQA shares each K/V head between `group` query heads.
//!
//! The fast kernel ([`super::attention_simd`]) runs one job per sequence, KV
//! head, range of queries and chunk of keys, in parallel; each streams its
//! head's blocks (contiguous per block) straight from the cache (f16, bf16,
//! E4M3 or f32) into SIMD registers, widening there, and accumulates in f32.
//! Splitting the keys lets a single long sequence use every core (a model
//! has only a few KV heads); the chunks' partial softmaxes are merged here.
//! A row's result depends only on absolute positions (chunks start at fixed
//! positions), not on how queries are chunked or batched, so a sequence's
//! output does not depend on what else is in the step.
//! [`paged_attention_reference`] is the slow, obviously-correct version the
//! tests compare against. The kernel body is chosen per call from this
//! CPU's instruction sets (AVX-512F, AVX2 or portable), capped by
//! `R1SERVE_ISA` (see [`super::isa`]).

use super::attention_simd::{attend, scratch_len, Job, RowStats};
use super::isa::{self, KernelIsa, PathRun};
use super::simd::{self, Isa, SimdLoad, LANES};
use crate::kv_cache::storage::{with_pair, KvGeometry, KvPair, LayerKv, SlotAddr};
use crate::types::BlockId;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::cell::RefCell;

/// One sequence's part of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnSeq<'a> {
    /// First row of this sequence's queries in the batch.
    pub q_start: usize,
    /// Number of new tokens (queries); they are the last `q_len` of the context.
    pub q_len: usize,
    /// Tokens in the cache for this sequence, the new ones included.
    pub ctx_len: usize,
    /// Blocks holding positions `0..ctx_len`, in order.
    pub block_table: &'a [BlockId],
}

/// Shape parameters of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Query heads.
    pub num_heads: usize,
    /// Softmax scale, usually `1/sqrt(head_dim)`.
    pub scale: f32,
}

fn check(seqs: &[AttnSeq], geom: &KvGeometry, q_rows: usize, shape: &AttnShape) -> Result<()> {
    // The kernels address keys and values with one width; a layer whose
    // widths differ (MLA's latent rows) needs its own kernel.
    if geom.k_dim != geom.v_dim {
        bail!(
            "paged attention needs equal key and value widths, got {} and {}",
            geom.k_dim,
            geom.v_dim
        );
    }
    if geom.num_kv_heads == 0 || !shape.num_heads.is_multiple_of(geom.num_kv_heads) {
        bail!(
            "{} query heads are not a multiple of {} KV heads",
            shape.num_heads,
            geom.num_kv_heads
        );
    }
    for s in seqs {
        if s.q_len == 0 || s.q_len > s.ctx_len {
            bail!(
                "sequence has {} queries for a context of {}",
                s.q_len,
                s.ctx_len
            );
        }
        if s.q_start + s.q_len > q_rows {
            bail!("sequence queries exceed the batch");
        }
        if s.block_table.len() * geom.block_size < s.ctx_len {
            bail!(
                "block table of {} blocks cannot hold {} tokens",
                s.block_table.len(),
                s.ctx_len
            );
        }
        if let Some(b) = s.block_table.iter().find(|b| b.index() >= geom.num_blocks) {
            bail!("block {} is outside the pool", b.0);
        }
    }
    Ok(())
}

/// Writes keys `k` (`tokens × kv_heads × k_dim`) and values `v`
/// (`tokens × kv_heads × v_dim`) into the slots of positions
/// `start_pos..start_pos + tokens` of a sequence.
pub fn write_kv(
    layer: &mut LayerKv,
    geom: &KvGeometry,
    block_table: &[BlockId],
    start_pos: usize,
    k: &[f32],
    v: &[f32],
) -> Result<()> {
    let (kd, vd) = (geom.k_dim, geom.v_dim);
    let (k_row, v_row) = (geom.num_kv_heads * kd, geom.num_kv_heads * vd);
    let tokens = k.len() / k_row.max(1);
    if !k.len().is_multiple_of(k_row) || v.len() != tokens * v_row {
        bail!("keys and values must be whole rows of {k_row} and {v_row} elements for the same tokens");
    }
    if (start_pos + tokens).div_ceil(geom.block_size) > block_table.len() {
        bail!("block table too short for position {}", start_pos + tokens);
    }
    for t in 0..tokens {
        let (kt, vt) = (
            &k[t * k_row..(t + 1) * k_row],
            &v[t * v_row..(t + 1) * v_row],
        );
        let pos = start_pos + t;
        let block = block_table[pos / geom.block_size].index();
        if block >= geom.num_blocks {
            bail!("block {block} is outside the pool");
        }
        for head in 0..geom.num_kv_heads {
            let at = SlotAddr {
                block,
                head,
                slot: pos % geom.block_size,
            };
            layer.write(
                geom,
                at,
                &kt[head * kd..(head + 1) * kd],
                &vt[head * vd..(head + 1) * vd],
            );
        }
    }
    Ok(())
}

/// Most floats of scores one job keeps; a long prefill chunk is split into
/// jobs of fewer queries to stay under it (results do not depend on the
/// split).
const SCORE_BUDGET: usize = 1 << 20;

/// Keys per chunk, before rounding to whole blocks. Long enough that short
/// contexts stay one job per KV head (each chunk costs a few microseconds of
/// setup and merging, measurable at 1k positions); short enough that a long
/// reasoning trace at batch 1, where the model's few KV heads are all the
/// parallelism there is, spreads over many cores.
const KEY_CHUNK: usize = 2048;

/// Keys per chunk for a block size: a multiple of both the block size and
/// 16, so that every chunk starts a block and a score vector.
fn key_chunk(block_size: usize) -> usize {
    let (mut a, mut b) = (block_size, LANES);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    let lcm = block_size / a * LANES;
    KEY_CHUNK.next_multiple_of(lcm)
}

/// Reports on stderr, for `test`, which instruction set [`paged_attention`]
/// dispatches to and, by name, those it does not and why (this CPU lacks
/// them, `R1SERVE_ISA` caps them, or only the dispatched one runs).
pub fn report_dispatch(test: &str) {
    let chosen = Isa::detect();
    let paths: Vec<_> = Isa::ALL
        .iter()
        .map(|&i| {
            let run = match isa::path_run(i.level(), i.is_supported()) {
                PathRun::Ran if i != chosen => PathRun::NotDispatched,
                run => run,
            };
            (i.name(), run)
        })
        .collect();
    isa::report(test, &paths);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn attend_avx512<E: SimdLoad>(
    job: &Job<'_, E>,
    scratch: &mut [f32],
    out: &mut [f32],
) -> Vec<RowStats> {
    attend::<simd::Avx512, E>(job, scratch, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<E: SimdLoad>(
    job: &Job<'_, E>,
    scratch: &mut [f32],
    out: &mut [f32],
) -> Vec<RowStats> {
    attend::<simd::Avx2, E>(job, scratch, out)
}

thread_local! {
    /// Per-thread score and accumulator space, reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One job's unnormalised `rows × head_dim` output and its rows' softmax
/// statistics.
struct Partial {
    out: Vec<f32>,
    stats: Vec<RowStats>,
}

/// Runs one job on this thread.
fn run_job<E: SimdLoad>(isa: Isa, job: &Job<'_, E>) -> Partial {
    let mut out = vec![0f32; job.rows() * job.geom.k_dim];
    let stats = SCRATCH.with_borrow_mut(|scratch| {
        // Starts on a cache line: the kernel stores whole 64-byte vectors.
        let need = scratch_len(job) + LANES;
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let start = scratch.as_ptr().align_offset(64).min(LANES);
        let scratch = &mut scratch[start..];
        // SAFETY: `paged_attention` checked the job's sequence against the
        // pool and the batch; the ISA variants run only where detected.
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => attend_avx512(job, scratch, &mut out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => attend_avx2(job, scratch, &mut out),
                Isa::Portable => attend::<simd::Portable, E>(job, scratch, &mut out),
            }
        }
    });
    Partial { out, stats }
}

/// Merges the key chunks of one row, in chunk order:
/// `Σ e^(mᵢ-m) · outᵢ / Σ e^(mᵢ-m) · sumᵢ` with `m` the largest maximum.
/// Chunks the row does not see are skipped, so the result does not depend
/// on which of them were computed. Non-finite scores give NaN, as a plain
/// softmax would.
fn merge_row(parts: &[(&[f32], RowStats)], dst: &mut [f32]) {
    dst.fill(f32::NAN);
    let seen = || parts.iter().filter(|(_, s)| s.sum > 0.0);
    let max = seen().fold(f32::NEG_INFINITY, |m, (_, s)| m.max(s.max));
    let mut total = 0.0;
    for (i, (out, stats)) in seen().enumerate() {
        let w = (stats.max - max).exp();
        total += w * stats.sum;
        if i == 0 {
            for (d, o) in dst.iter_mut().zip(*out) {
                *d = w * o;
            }
        } else {
            for (d, o) in dst.iter_mut().zip(*out) {
                *d += w * o;
            }
        }
    }
    for d in dst.iter_mut() {
        *d /= total;
    }
}

/// Causal paged attention for a batch: `q` and `out` are
/// `rows × num_heads × head_dim`, rows grouped by sequence as in `seqs`.
pub fn paged_attention(
    q: &[f32],
    out: &mut [f32],
    layer: &LayerKv,
    geom: &KvGeometry,
    seqs: &[AttnSeq],
    shape: &AttnShape,
) -> Result<()> {
    let q_row = shape.num_heads * geom.k_dim;
    check(seqs, geom, q.len() / q_row, shape)?;
    if out.len() != q.len() {
        bail!("output has {} elements for {} queries", out.len(), q.len());
    }
    with_pair!(layer, kv => attend_batch(q, out, kv, geom, seqs, shape));
    Ok(())
}

fn attend_batch<E: SimdLoad>(
    q: &[f32],
    out: &mut [f32],
    kv: &KvPair<E>,
    geom: &KvGeometry,
    seqs: &[AttnSeq],
    shape: &AttnShape,
) {
    let isa = Isa::detect();
    let group = shape.num_heads / geom.num_kv_heads;
    let chunk = key_chunk(geom.block_size);
    // Jobs of one (sequence, KV head, queries) are consecutive, in key order.
    let mut jobs = Vec::new();
    let mut units = Vec::new();
    for seq in seqs {
        let width = seq.ctx_len.min(chunk) + 2 * LANES;
        let per_job = (SCORE_BUDGET / (group * width)).clamp(1, seq.q_len);
        for kv_head in 0..geom.num_kv_heads {
            for c0 in (0..seq.q_len).step_by(per_job) {
                let queries = c0..(c0 + per_job).min(seq.q_len);
                let span = seq.ctx_len - seq.q_len + queries.end;
                let first = jobs.len();
                for k0 in (0..span).step_by(chunk) {
                    jobs.push(Job {
                        kv,
                        geom,
                        seq,
                        q,
                        group,
                        scale: shape.scale,
                        kv_head,
                        queries: queries.clone(),
                        keys: k0..(k0 + chunk).min(span),
                    });
                }
                units.push(first..jobs.len());
            }
        }
    }
    let results: Vec<Partial> = jobs.par_iter().map(|job| run_job(isa, job)).collect();
    let hd = geom.k_dim;
    let q_row = shape.num_heads * hd;
    let mut parts = Vec::new();
    for unit in units {
        let job = &jobs[unit.start];
        for (i, query) in job.queries.clone().enumerate() {
            let dst = (job.seq.q_start + query) * q_row + job.kv_head * group * hd;
            for h in 0..group {
                let r = i * group + h;
                parts.clear();
                parts.extend(
                    results[unit.clone()]
                        .iter()
                        .map(|p| (&p.out[r * hd..(r + 1) * hd], p.stats[r])),
                );
                merge_row(&parts, &mut out[dst + h * hd..dst + (h + 1) * hd]);
            }
        }
    }
}

/// Slow reference: gathers each position's K and V one by one and computes
/// attention in f64, head by head, query by query.
pub fn paged_attention_reference(
    q: &[f32],
    out: &mut [f32],
    layer: &LayerKv,
    geom: &KvGeometry,
    seqs: &[AttnSeq],
    shape: &AttnShape,
) -> Result<()> {
    let hd = geom.k_dim;
    let q_row = shape.num_heads * hd;
    check(seqs, geom, q.len() / q_row, shape)?;
    let group = shape.num_heads / geom.num_kv_heads;
    let mut k = vec![0f32; hd];
    let mut v = vec![0f32; hd];
    for seq in seqs {
        for i in 0..seq.q_len {
            let pos = seq.ctx_len - seq.q_len + i;
            for head in 0..shape.num_heads {
                let kvh = head / group;
                let qv = &q[(seq.q_start + i) * q_row + head * hd..][..hd];
                let mut scores = Vec::with_capacity(pos + 1);
                let addr = |p: usize| SlotAddr {
                    block: seq.block_table[p / geom.block_size].index(),
                    head: kvh,
                    slot: p % geom.block_size,
                };
                for p in 0..=pos {
                    layer.read(geom, addr(p), &mut k, &mut v);
                    let s: f64 = qv.iter().zip(&k).map(|(a, b)| *a as f64 * *b as f64).sum();
                    scores.push(s * shape.scale as f64);
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                let mut acc = vec![0f64; hd];
                for (p, e) in exps.iter().enumerate() {
                    layer.read(geom, addr(p), &mut k, &mut v);
                    for (a, x) in acc.iter_mut().zip(&v) {
                        *a += e / total * *x as f64;
                    }
                }
                let dst = &mut out[(seq.q_start + i) * q_row + head * hd..][..hd];
                for (d, a) in dst.iter_mut().zip(acc) {
                    *d = a as f32;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::isa::Level;
    use crate::kv_cache::storage::{KvCache, KvDtype};

    fn bits<E: SimdLoad>(
        isa: Isa,
        kv: &KvPair<E>,
        geom: &KvGeometry,
        seq: &AttnSeq,
        q: &[f32],
    ) -> Vec<u32> {
        let job = Job {
            kv,
            geom,
            seq,
            q,
            group: 3,
            scale: 0.1,
            kv_head: 0,
            queries: 0..seq.q_len,
            keys: 0..seq.ctx_len,
        };
        let partial = run_job(isa, &job);
        let stats = partial.stats.iter().flat_map(|s| [s.max, s.sum]);
        partial
            .out
            .iter()
            .copied()
            .chain(stats)
            .map(f32::to_bits)
            .collect()
    }

    /// Every instruction set this CPU has gives the portable kernel's bits,
    /// with a head dimension that leaves a partial vector.
    #[test]
    fn instruction_sets_agree_bit_for_bit() {
        let geom = KvGeometry::square(16, 8, 1, 72);
        let isas = Isa::to_test("attention::instruction_sets_agree_bit_for_bit");
        if isas.len() < 2 {
            eprintln!(
                "attention::instruction_sets_agree_bit_for_bit: only the portable kernel runs here, \
                 nothing to compare it with"
            );
        }
        for dtype in [KvDtype::F16, KvDtype::Bf16, KvDtype::Fp8E4m3, KvDtype::F32] {
            let mut cache = KvCache::uniform(geom, 1, dtype).unwrap();
            let table: Vec<BlockId> = (0..8).rev().map(BlockId).collect();
            let n = 120 * 72;
            let k: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.03)
                .collect();
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.02)
                .collect();
            write_kv(&mut cache.layers[0], &geom, &table, 0, &k, &v).unwrap();
            let q: Vec<f32> = (0..40 * 3 * 72)
                .map(|i| ((i * 29 % 89) as f32 - 44.0) * 0.05)
                .collect();
            let seq = AttnSeq {
                q_start: 0,
                q_len: 40,
                ctx_len: 120,
                block_table: &table,
            };
            let results: Vec<Vec<u32>> = isas
                .iter()
                .map(|&isa| with_pair!(&cache.layers[0], kv => bits(isa, kv, &geom, &seq, &q)))
                .collect();
            assert_eq!(results.len(), isas.len());
            assert!(results.iter().all(|r| *r == results[0]), "{dtype:?}");
        }
    }

    /// Dispatch never goes above the cap nor to a body this CPU lacks, and
    /// takes the best one within both.
    #[test]
    fn dispatch_is_capped() {
        for limit in [Level::Scalar, Level::Avx2, Level::Avx512, Level::Amx] {
            let got = Isa::best_under(limit);
            assert!(got.level() <= limit && got.is_supported(), "{limit:?}");
            for &better in Isa::ALL {
                if better.level() <= limit && better.is_supported() {
                    assert!(better.level() <= got.level(), "{limit:?}: {got:?}");
                }
            }
        }
        assert_eq!(Isa::best_under(Level::Scalar), Isa::Portable);
    }
}
