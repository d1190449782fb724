//! Paged attention on the CPU: the op that writes new keys and values into
//! their cache slots, and causal attention of a batch of sequences over their
//! block tables (a prefill chunk with a cached prefix and a one-token decode
//! are the same case). GQA shares each K/V head between `group` query heads.
//!
//! The fast kernel streams each sequence's blocks once per KV head (one block
//! of one head is contiguous), converts them to f32 in a small buffer, and
//! accumulates in f32. Every query's scores are computed key by key in
//! position order, independent of how queries are chunked or batched, so a
//! sequence's output does not depend on what else is in the step.
//! [`paged_attention_reference`] is the slow, obviously-correct version the
//! tests compare against.

use crate::kv_cache::storage::{KvBuf, KvGeometry, LayerKv};
use crate::types::BlockId;
use anyhow::{bail, Result};
use rayon::prelude::*;

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

/// Writes `new` (`tokens × kv_heads × head_dim`) into the slots of positions
/// `start_pos..start_pos + tokens` of a sequence.
pub fn write_kv(
    buf: &mut KvBuf,
    geom: &KvGeometry,
    block_table: &[BlockId],
    start_pos: usize,
    new: &[f32],
) -> Result<()> {
    let row = geom.num_kv_heads * geom.head_dim;
    let tokens = new.len() / row;
    if (start_pos + tokens).div_ceil(geom.block_size) > block_table.len() {
        bail!("block table too short for position {}", start_pos + tokens);
    }
    for (t, src) in new.chunks_exact(row).enumerate() {
        let pos = start_pos + t;
        let block = block_table[pos / geom.block_size].index();
        if block >= geom.num_blocks {
            bail!("block {block} is outside the pool");
        }
        for (h, head) in src.chunks_exact(geom.head_dim).enumerate() {
            buf.write(geom.offset(block, h, pos % geom.block_size), head);
        }
    }
    Ok(())
}

/// Dot product with a fixed summation order: eight lanes accumulate
/// elements `i ≡ lane (mod 8)`, then lanes are summed pairwise. The AVX2
/// version below follows the same order, so results are bit-identical.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let x = _mm256_loadu_ps(a.as_ptr().add(i));
        let y = _mm256_loadu_ps(b.as_ptr().add(i));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
        i += 8;
    }
    let mut l = [0f32; 8];
    _mm256_storeu_ps(l.as_mut_ptr(), acc);
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

/// Queries are processed this many at a time so the score buffer stays small
/// for long prefill chunks.
const Q_CHUNK: usize = 32;

/// Attention of one sequence for one KV head; returns `q_len × group × head_dim`.
/// Dispatches once per call to a copy compiled for AVX2/FMA/F16C when the CPU
/// has them; the body fixes its summation order explicitly, so both copies
/// give bit-identical results.
fn attend_one(
    q: &[f32],
    layer: &LayerKv,
    geom: &KvGeometry,
    seq: &AttnSeq,
    kv_head: usize,
    shape: &AttnShape,
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
            // SAFETY: the required CPU features were just detected.
            return unsafe { attend_one_avx2(q, layer, geom, seq, kv_head, shape) };
        }
    }
    attend_one_body::<PortableDot>(q, layer, geom, seq, kv_head, shape)
}

/// The dot product the kernel body uses, chosen once per call instead of
/// per key.
trait Dot {
    fn dot(a: &[f32], b: &[f32]) -> f32;
}

struct PortableDot;

impl Dot for PortableDot {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot(a, b)
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2Dot;

#[cfg(target_arch = "x86_64")]
impl Dot for Avx2Dot {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        if a.len().is_multiple_of(8) {
            // SAFETY: only reached from `attend_one_avx2`, which runs after
            // AVX2 was detected; the length is a multiple of 8.
            unsafe { dot_avx2(a, b) }
        } else {
            dot(a, b)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn attend_one_avx2(
    q: &[f32],
    layer: &LayerKv,
    geom: &KvGeometry,
    seq: &AttnSeq,
    kv_head: usize,
    shape: &AttnShape,
) -> Vec<f32> {
    attend_one_body::<Avx2Dot>(q, layer, geom, seq, kv_head, shape)
}

#[inline(always)]
fn attend_one_body<D: Dot>(
    q: &[f32],
    layer: &LayerKv,
    geom: &KvGeometry,
    seq: &AttnSeq,
    kv_head: usize,
    shape: &AttnShape,
) -> Vec<f32> {
    let hd = geom.head_dim;
    let bs = geom.block_size;
    let group = shape.num_heads / geom.num_kv_heads;
    let q_row = shape.num_heads * hd;
    let first_pos = seq.ctx_len - seq.q_len;
    let mut out = vec![0f32; seq.q_len * group * hd];
    let mut kv = vec![0f32; bs * hd];
    for c0 in (0..seq.q_len).step_by(Q_CHUNK) {
        let c1 = (c0 + Q_CHUNK).min(seq.q_len);
        let rows = (c1 - c0) * group;
        let span = first_pos + c1;
        let mut scores = vec![f32::NEG_INFINITY; rows * span];
        let query = |i: usize, g: usize| {
            let at = (seq.q_start + i) * q_row + (kv_head * group + g) * hd;
            &q[at..at + hd]
        };
        for (b, block) in seq.block_table[..span.div_ceil(bs)].iter().enumerate() {
            let n = bs.min(span - b * bs);
            layer
                .k
                .read(geom.offset(block.index(), kv_head, 0), &mut kv[..n * hd]);
            for j in 0..n {
                let kp = b * bs + j;
                let key = &kv[j * hd..(j + 1) * hd];
                for i in c0.max(kp.saturating_sub(first_pos))..c1 {
                    for g in 0..group {
                        let r = (i - c0) * group + g;
                        scores[r * span + kp] = D::dot(query(i, g), key) * shape.scale;
                    }
                }
            }
        }
        let mut sums = vec![0f32; rows];
        for (r, row) in scores.chunks_exact_mut(span).enumerate() {
            let valid = first_pos + c0 + r / group + 1;
            let max = row[..valid]
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0f32;
            for v in &mut row[..valid] {
                *v = (*v - max).exp();
                sum += *v;
            }
            sums[r] = sum;
        }
        let acc = &mut out[c0 * group * hd..c1 * group * hd];
        for (b, block) in seq.block_table[..span.div_ceil(bs)].iter().enumerate() {
            let n = bs.min(span - b * bs);
            layer
                .v
                .read(geom.offset(block.index(), kv_head, 0), &mut kv[..n * hd]);
            for j in 0..n {
                let kp = b * bs + j;
                let val = &kv[j * hd..(j + 1) * hd];
                for i in c0.max(kp.saturating_sub(first_pos))..c1 {
                    for g in 0..group {
                        let r = (i - c0) * group + g;
                        let w = scores[r * span + kp];
                        for (a, v) in acc[r * hd..(r + 1) * hd].iter_mut().zip(val) {
                            *a += w * v;
                        }
                    }
                }
            }
        }
        for (r, sum) in sums.iter().enumerate() {
            for a in &mut acc[r * hd..(r + 1) * hd] {
                *a /= sum;
            }
        }
    }
    out
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
    let q_row = shape.num_heads * geom.head_dim;
    check(seqs, geom, q.len() / q_row, shape)?;
    let group = shape.num_heads / geom.num_kv_heads;
    let tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..geom.num_kv_heads).map(move |h| (s, h)))
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(s, h)| attend_one(q, layer, geom, &seqs[s], h, shape))
        .collect();
    let hd = geom.head_dim;
    for (&(s, h), res) in tasks.iter().zip(&results) {
        let seq = &seqs[s];
        for i in 0..seq.q_len {
            let dst = (seq.q_start + i) * q_row + h * group * hd;
            out[dst..dst + group * hd].copy_from_slice(&res[i * group * hd..(i + 1) * group * hd]);
        }
    }
    Ok(())
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
    let hd = geom.head_dim;
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
                for p in 0..=pos {
                    let block = seq.block_table[p / geom.block_size].index();
                    layer
                        .k
                        .read(geom.offset(block, kvh, p % geom.block_size), &mut k);
                    let s: f64 = qv.iter().zip(&k).map(|(a, b)| *a as f64 * *b as f64).sum();
                    scores.push(s * shape.scale as f64);
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                let mut acc = vec![0f64; hd];
                for (p, e) in exps.iter().enumerate() {
                    let block = seq.block_table[p / geom.block_size].index();
                    layer
                        .v
                        .read(geom.offset(block, kvh, p % geom.block_size), &mut v);
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
