//! The body of the CPU paged-attention kernel, written once over
//! [`F32x16`] and compiled per instruction set by [`super::attention`].
//!
//! One job is one KV head of one sequence for a range of its queries. It
//! makes three passes over the job's rows (query × group head):
//! 1. scores: for each 16 keys (one vector per key dimension, the cache
//!    stores keys dimension-major) and each tile of up to [`SCORE_ROWS`]
//!    rows, accumulate `q[d] · K[d][16 keys]` over `d` in registers;
//! 2. a causal mask and a softmax per row, vectorised over positions;
//! 3. values: for each block and tile of up to [`VALUE_ROWS`] rows,
//!    accumulate `w · V[slot]` over the block's slots in registers, then add
//!    the block's sum to the row's accumulator.
//!
//! Every number a row gets depends only on absolute positions: score lanes
//! are keys, softmax vectors start at position 0, value sums are per block.
//! Positions a row may not see get weight exactly 0. So a row's output is the
//! same whether its query is decoded alone, batched, or part of any prefill
//! chunk.

use super::attention::AttnSeq;
use super::simd::{F32x16, SimdLoad, LANES};
use crate::kv_cache::storage::{KvElem, KvGeometry, KvPair};
use std::ops::Range;

/// Rows per score tile: one accumulator register each.
const SCORE_ROWS: usize = 8;
/// Rows per value tile; each holds up to four accumulator registers.
const VALUE_ROWS: usize = 4;
/// Vectors of a value row accumulated together.
const VALUE_VECS: usize = 4;

/// One KV head of one sequence, for the queries in `queries`.
pub(super) struct Job<'a, E> {
    /// The layer's cache.
    pub kv: &'a KvPair<E>,
    /// Its shape.
    pub geom: &'a KvGeometry,
    /// The sequence.
    pub seq: &'a AttnSeq<'a>,
    /// The whole batch's queries.
    pub q: &'a [f32],
    /// Query heads sharing this KV head.
    pub group: usize,
    /// Softmax scale.
    pub scale: f32,
    /// The KV head.
    pub kv_head: usize,
    /// Indices of this job's queries within the sequence.
    pub queries: Range<usize>,
}

impl<E> Job<'_, E> {
    /// Rows of the job: `(query, group head)` pairs, query-major.
    pub fn rows(&self) -> usize {
        self.queries.len() * self.group
    }

    /// Keys any row of the job can see.
    fn span(&self) -> usize {
        self.first_pos() + self.queries.end
    }

    fn first_pos(&self) -> usize {
        self.seq.ctx_len - self.seq.q_len
    }

    /// Keys row `r` can see.
    fn visible(&self, r: usize) -> usize {
        self.first_pos() + self.queries.start + r / self.group + 1
    }

    /// Offset of row `r`'s query vector in the batch.
    fn query_at(&self, r: usize) -> usize {
        let hd = self.geom.head_dim;
        let q_row = self.group * self.geom.num_kv_heads * hd;
        let i = self.queries.start + r / self.group;
        (self.seq.q_start + i) * q_row + (self.kv_head * self.group + r % self.group) * hd
    }
}

/// Floats of scratch [`attend`] needs for `job`.
pub(super) fn scratch_len<E>(job: &Job<'_, E>) -> usize {
    let rows = job.rows();
    rows * score_stride(job.span())
        + rows * padded_dim(job.geom.head_dim)
        + rows * job.geom.head_dim
}

fn score_stride(span: usize) -> usize {
    // Tiles store 16 lanes from their first key, up to 15 past `span`.
    span.next_multiple_of(LANES) + LANES
}

fn padded_dim(hd: usize) -> usize {
    hd.next_multiple_of(LANES)
}

/// Attention of `job`'s rows into `out` (`rows × head_dim`), using
/// `scratch` (at least [`scratch_len`] floats, any contents).
///
/// # Safety
/// The CPU must support `S`'s instruction set, and the job must have passed
/// the checks of [`super::attention::paged_attention`] (block table covers
/// the context, blocks inside the pool, queries inside `q`).
#[inline(always)]
pub(super) unsafe fn attend<S: F32x16, E: KvElem + SimdLoad>(
    job: &Job<'_, E>,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let rows = job.rows();
    let span = job.span();
    let stride = score_stride(span);
    let hd = job.geom.head_dim;
    let (scores, rest) = scratch.split_at_mut(rows * stride);
    let (acc, packed) = rest.split_at_mut(rows * padded_dim(hd));
    pack_queries(job, &mut packed[..rows * hd]);
    scores_pass::<S, E>(job, packed, scores, stride);
    let sums = softmax_pass::<S, E>(job, scores, stride);
    acc.fill(0.0);
    values_pass::<S, E>(job, scores, stride, acc);
    let pd = padded_dim(hd);
    for (r, sum) in sums.iter().enumerate() {
        for (o, a) in out[r * hd..(r + 1) * hd].iter_mut().zip(&acc[r * pd..]) {
            *o = a / sum;
        }
    }
}

/// Copies the job's query vectors into `packed`, tile by tile of
/// [`SCORE_ROWS`] rows, dimension-major within a tile (`[d][row]`): the
/// score loop then reads every row's `q[d]` from one pointer, which keeps
/// its registers free for accumulators.
fn pack_queries<E>(job: &Job<'_, E>, packed: &mut [f32]) {
    let (hd, rows) = (job.geom.head_dim, job.rows());
    for r0 in (0..rows).step_by(SCORE_ROWS) {
        let nr = SCORE_ROWS.min(rows - r0);
        let tile = &mut packed[r0 * hd..(r0 + nr) * hd];
        for r in 0..nr {
            let q = &job.q[job.query_at(r0 + r)..][..hd];
            for (d, x) in q.iter().enumerate() {
                tile[d * nr + r] = *x;
            }
        }
    }
}

/// Pass 1: scaled scores of every row against keys `0..span`.
#[inline(always)]
unsafe fn scores_pass<S: F32x16, E: KvElem + SimdLoad>(
    job: &Job<'_, E>,
    packed: &[f32],
    scores: &mut [f32],
    stride: usize,
) {
    let (bs, rows, span) = (job.geom.block_size, job.rows(), job.span());
    for (b, block) in job.seq.block_table[..span.div_ceil(bs)].iter().enumerate() {
        let base = job.geom.head_base(block.index(), job.kv_head);
        let n = bs.min(span - b * bs);
        for s0 in (0..n).step_by(LANES) {
            let keys = job.kv.keys().as_ptr().add(base + s0);
            let width = LANES.min(bs - s0);
            let pos0 = b * bs + s0;
            let mut r0 = 0;
            while r0 < rows {
                let nr = SCORE_ROWS.min(rows - r0);
                // Rows are query-major, so the tile's last row sees the most;
                // a tile that sees none of these keys is left to the mask.
                if job.visible(r0 + nr - 1) > pos0 {
                    let tile = ScoreTile {
                        keys,
                        width,
                        q: packed.as_ptr().add(r0 * job.geom.head_dim),
                        dst: scores.as_mut_ptr().add(r0 * stride + pos0),
                        stride,
                    };
                    match nr {
                        1 => tile.run::<S, 1>(job),
                        2 => tile.run::<S, 2>(job),
                        3 => tile.run::<S, 3>(job),
                        4 => tile.run::<S, 4>(job),
                        5 => tile.run::<S, 5>(job),
                        6 => tile.run::<S, 6>(job),
                        7 => tile.run::<S, 7>(job),
                        _ => tile.run::<S, SCORE_ROWS>(job),
                    }
                }
                r0 += nr;
            }
        }
    }
}

/// Sixteen keys (`width` of them real) against a tile of rows.
struct ScoreTile<E> {
    keys: *const E,
    width: usize,
    /// The tile's packed queries (see [`pack_queries`]).
    q: *const f32,
    dst: *mut f32,
    stride: usize,
}

impl<E: KvElem + SimdLoad> ScoreTile<E> {
    #[inline(always)]
    unsafe fn run<S: F32x16, const R: usize>(&self, job: &Job<'_, E>) {
        let (bs, hd) = (job.geom.block_size, job.geom.head_dim);
        let acc = if self.width == LANES {
            self.dots::<S, R, true>(bs, hd)
        } else {
            self.dots::<S, R, false>(bs, hd)
        };
        let scale = S::splat(job.scale);
        for (r, a) in acc.iter().enumerate() {
            a.mul(scale).store(self.dst.add(r * self.stride));
        }
    }

    /// `Σ_d q[row][d] · K[d][16 keys]` for each row; a separate loop per
    /// `FULL` so the hot one has no width test.
    #[inline(always)]
    unsafe fn dots<S: F32x16, const R: usize, const FULL: bool>(
        &self,
        bs: usize,
        hd: usize,
    ) -> [S; R] {
        let mut acc = [S::zero(); R];
        let mut k = self.keys;
        let mut q = self.q;
        for _ in 0..hd {
            let x = if FULL {
                E::load16::<S>(k)
            } else {
                E::load_partial::<S>(k, self.width)
            };
            for (r, a) in acc.iter_mut().enumerate() {
                *a = S::splat(*q.add(r)).fma(x, *a);
            }
            k = k.add(bs);
            q = q.add(R);
        }
        acc
    }
}

/// Pass 2: masks what each row may not see, replaces scores by
/// `exp(score - max)` and returns each row's sum of them.
#[inline(always)]
unsafe fn softmax_pass<S: F32x16, E>(
    job: &Job<'_, E>,
    scores: &mut [f32],
    stride: usize,
) -> Vec<f32> {
    let padded = job.span().next_multiple_of(LANES);
    // A loop, not an iterator closure: closures are not compiled with the
    // caller's target features, so their vector calls would not inline.
    let mut sums = Vec::with_capacity(job.rows());
    for r in 0..job.rows() {
        let row = &mut scores[r * stride..r * stride + padded];
        row[job.visible(r)..].fill(f32::NEG_INFINITY);
        let mut m = S::splat(f32::NEG_INFINITY);
        for c in row.chunks_exact(LANES) {
            m = m.max(S::load(c.as_ptr()));
        }
        let neg_max = S::splat(-m.reduce_max());
        let mut sum = S::zero();
        for c in row.chunks_exact_mut(LANES) {
            let e = S::load(c.as_ptr()).add(neg_max).exp();
            e.store(c.as_mut_ptr());
            sum = sum.add(e);
        }
        sums.push(sum.reduce_add());
    }
    sums
}

/// Pass 3: `acc[row] += Σ weight · value`, one block at a time.
#[inline(always)]
unsafe fn values_pass<S: F32x16, E: KvElem + SimdLoad>(
    job: &Job<'_, E>,
    weights: &[f32],
    stride: usize,
    acc: &mut [f32],
) {
    let (bs, hd, rows, span) = (
        job.geom.block_size,
        job.geom.head_dim,
        job.rows(),
        job.span(),
    );
    let pd = padded_dim(hd);
    for (b, block) in job.seq.block_table[..span.div_ceil(bs)].iter().enumerate() {
        let base = job.geom.head_base(block.index(), job.kv_head);
        let pos0 = b * bs;
        let slots = bs.min(span - pos0);
        let mut r0 = 0;
        while r0 < rows {
            let nr = VALUE_ROWS.min(rows - r0);
            if job.visible(r0 + nr - 1) > pos0 {
                let mut d0 = 0;
                while d0 < hd {
                    let tile = ValueTile {
                        values: job.kv.values().as_ptr().add(base + d0),
                        hd,
                        slots,
                        last_width: (hd - d0).min(LANES),
                        weights: weights.as_ptr().add(r0 * stride + pos0),
                        stride,
                        acc: acc.as_mut_ptr().add(r0 * pd + d0),
                        acc_stride: pd,
                    };
                    let full = hd - d0 >= VALUE_VECS * LANES;
                    match (nr, full) {
                        (1, true) => tile.run::<S, 1, VALUE_VECS>(),
                        (2, true) => tile.run::<S, 2, VALUE_VECS>(),
                        (3, true) => tile.run::<S, 3, VALUE_VECS>(),
                        (_, true) => tile.run::<S, VALUE_ROWS, VALUE_VECS>(),
                        (1, false) => tile.run::<S, 1, 1>(),
                        (2, false) => tile.run::<S, 2, 1>(),
                        (3, false) => tile.run::<S, 3, 1>(),
                        (_, false) => tile.run::<S, VALUE_ROWS, 1>(),
                    }
                    d0 += if full { VALUE_VECS * LANES } else { LANES };
                }
            }
            r0 += nr;
        }
    }
}

/// `G` vectors of the value rows of one block against a tile of rows.
struct ValueTile<E> {
    values: *const E,
    hd: usize,
    slots: usize,
    /// Real lanes of the tile's last vector (16 unless the head dimension
    /// is not a multiple of 16).
    last_width: usize,
    weights: *const f32,
    stride: usize,
    acc: *mut f32,
    acc_stride: usize,
}

impl<E: KvElem + SimdLoad> ValueTile<E> {
    #[inline(always)]
    unsafe fn run<S: F32x16, const R: usize, const G: usize>(&self) {
        let mut sum = [[S::zero(); G]; R];
        // The rows' weights for up to 16 slots, slot-major, so the inner
        // loop reads them from one pointer.
        let mut w = [0f32; LANES * VALUE_ROWS];
        for j0 in (0..self.slots).step_by(LANES) {
            let m = LANES.min(self.slots - j0);
            for r in 0..R {
                for jj in 0..m {
                    w[jj * R + r] = *self.weights.add(r * self.stride + j0 + jj);
                }
            }
            let mut row = self.values.add(j0 * self.hd);
            let mut wp = w.as_ptr();
            for _ in 0..m {
                let mut x = [S::zero(); G];
                for (g, xg) in x.iter_mut().enumerate() {
                    *xg = if g + 1 < G || self.last_width == LANES {
                        E::load16::<S>(row.add(g * LANES))
                    } else {
                        E::load_partial::<S>(row.add(g * LANES), self.last_width)
                    };
                }
                for (r, s) in sum.iter_mut().enumerate() {
                    let wr = S::splat(*wp.add(r));
                    for g in 0..G {
                        s[g] = wr.fma(x[g], s[g]);
                    }
                }
                row = row.add(self.hd);
                wp = wp.add(R);
            }
        }
        for (r, s) in sum.iter().enumerate() {
            for (g, v) in s.iter().enumerate() {
                let p = self.acc.add(r * self.acc_stride + g * LANES);
                S::load(p).add(*v).store(p);
            }
        }
    }
}
