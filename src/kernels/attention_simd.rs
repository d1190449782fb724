//! The body of the CPU paged-attention kernel, written once over
//! [`F32x16`] and compiled per instruction set by [`super::attention`].
//!
//! One job is one KV head of one sequence for a range of its queries and a
//! chunk of its keys. It makes three passes over the job's rows (query ×
//! group head):
//! 1. scores: for each two groups of 16 keys (one vector per key dimension,
//!    the cache stores keys dimension-major) and each tile of up to
//!    [`SCORE_ROWS`] rows, accumulate `q[d] · K[d][keys]` over `d` in
//!    registers, into a buffer laid out by groups of 16 positions ([`Scores`]);
//! 2. a causal mask and a softmax per row over the chunk, vectorised over
//!    positions;
//! 3. values: for each block and tile of up to [`VALUE_ROWS`] rows,
//!    accumulate `w · V[slot]` over the block's slots in registers, then add
//!    the block's sum to the row's accumulator.
//!
//! A job leaves its rows unnormalised, with the chunk's maximum score and sum
//! of weights, for [`super::attention`] to merge the chunks.
//!
//! Both streaming passes prefetch the blocks ahead of the one they compute.
//!
//! Every number a row gets depends only on absolute positions: chunks start
//! at fixed positions, score lanes are keys, softmax vectors start at a
//! multiple of 16, value sums are per block.
//! Positions a row may not see get weight exactly 0. So a row's output is the
//! same whether its query is decoded alone, batched, or part of any prefill
//! chunk.

use super::attention::AttnSeq;
use super::simd::{prefetch, F32x16, SimdLoad, LANES};
use crate::kv_cache::storage::{KvGeometry, KvPair};
use std::ops::Range;

/// Rows per score tile: one accumulator register each.
const SCORE_ROWS: usize = 8;
/// Rows per value tile; each holds up to [`VALUE_VECS`] accumulator
/// registers. Enough rows for a whole GQA group at decode, so each value
/// vector is loaded and widened once.
const VALUE_ROWS: usize = 8;
/// Vectors of a value row accumulated together.
const VALUE_VECS: usize = 2;
/// Bytes of a head's keys or values requested ahead of the block being
/// computed. A head's part of a block is only a few KiB and the next block
/// can be anywhere in the pool, so the hardware prefetcher would restart its
/// stream at every block; asking for the next blocks early keeps DRAM busy
/// while the current one is computed.
const PREFETCH_BYTES: usize = 8 << 10;

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
    /// Positions of the keys this job reads: whole blocks, starting at a
    /// multiple of 16.
    pub keys: Range<usize>,
}

/// One row's share of a job: its weights' maximum score and their sum (0 for
/// a row that sees none of the job's keys).
#[derive(Clone, Copy, Debug)]
pub(super) struct RowStats {
    pub max: f32,
    pub sum: f32,
}

impl<E> Job<'_, E> {
    /// Rows of the job: `(query, group head)` pairs, query-major.
    pub fn rows(&self) -> usize {
        self.queries.len() * self.group
    }

    /// End of the keys any row of the job can see.
    fn span(&self) -> usize {
        self.keys.end.min(self.first_pos() + self.queries.end)
    }

    /// Keys `self.keys.start..self.span()`: the scores the job keeps per row.
    fn width(&self) -> usize {
        self.span().saturating_sub(self.keys.start)
    }

    fn first_pos(&self) -> usize {
        self.seq.ctx_len - self.seq.q_len
    }

    /// Keys row `r` can see.
    fn visible(&self, r: usize) -> usize {
        self.first_pos() + self.queries.start + r / self.group + 1
    }

    /// Prefetches this head's part of block `b` of the sequence (if the
    /// table has one) from `buf`, the layer's keys or values.
    #[inline(always)]
    fn prefetch_block(&self, buf: &[E], b: usize) {
        if let Some(block) = self.seq.block_table.get(b) {
            let base = self.geom.k_base(block.index(), self.kv_head);
            prefetch(
                buf.as_ptr().wrapping_add(base),
                self.geom.block_size * self.geom.k_dim,
            );
        }
    }

    /// Blocks to keep requested ahead of the one being computed.
    fn prefetch_ahead(&self) -> usize {
        let block_bytes = self.geom.block_size * self.geom.k_dim * std::mem::size_of::<E>();
        PREFETCH_BYTES.div_ceil(block_bytes)
    }

    /// Offset of row `r`'s query vector in the batch.
    fn query_at(&self, r: usize) -> usize {
        let hd = self.geom.k_dim;
        let q_row = self.group * self.geom.num_kv_heads * hd;
        let i = self.queries.start + r / self.group;
        (self.seq.q_start + i) * q_row + (self.kv_head * self.group + r % self.group) * hd
    }
}

/// Floats of scratch [`attend`] needs for `job`.
pub(super) fn scratch_len<E>(job: &Job<'_, E>) -> usize {
    let rows = job.rows();
    rows * score_positions(job.width()) + rows * padded_dim(job.geom.k_dim) + rows * job.geom.k_dim
}

/// Score entries per row for `width` keys: a key group starting before
/// their end may store up to 15 lanes past it (a block whose size is not a
/// multiple of 16).
fn score_positions(width: usize) -> usize {
    (width.div_ceil(LANES) + 1) * LANES
}

fn padded_dim(hd: usize) -> usize {
    hd.next_multiple_of(LANES)
}

/// A job's scores, then its softmax weights, in groups of 16 positions from
/// the job's first key: `[group][row][lane]`. A score tile stores whole
/// vectors, a row's softmax walks its vectors in position order, and the
/// values pass finds every row's weight for one position at a fixed offset
/// from one pointer.
#[derive(Clone, Copy)]
struct Scores {
    ptr: *mut f32,
    rows: usize,
    /// Position of the first entry, a multiple of 16.
    origin: usize,
}

impl Scores {
    /// Row `r`'s entry for position `pos`, and the 15 after it in its group.
    #[inline(always)]
    unsafe fn at(self, r: usize, pos: usize) -> *mut f32 {
        let i = pos - self.origin;
        self.ptr
            .add((i / LANES * self.rows + r) * LANES + i % LANES)
    }

    /// Stores `width` scores of row `r` from position `pos` on.
    #[inline(always)]
    unsafe fn store<S: F32x16>(self, r: usize, pos: usize, width: usize, v: S) {
        if pos.is_multiple_of(LANES) && width == LANES {
            v.store(self.at(r, pos));
        } else {
            // Blocks smaller than 16, or not a multiple of it: the lanes may
            // straddle two groups.
            let mut lanes = [0f32; LANES];
            v.store(lanes.as_mut_ptr());
            for (i, x) in lanes[..width].iter().enumerate() {
                *self.at(r, pos + i) = *x;
            }
        }
    }
}

/// Unnormalised attention of `job`'s rows over its keys into `out`
/// (`rows × head_dim`, `Σ exp(score - max) · v`), using `scratch` (at least
/// [`scratch_len`] floats, any contents); returns each row's maximum and sum.
///
/// # Safety
/// The CPU must support `S`'s instruction set, and the job must have passed
/// the checks of [`super::attention::paged_attention`] (block table covers
/// the context, blocks inside the pool, queries inside `q`).
#[inline(always)]
pub(super) unsafe fn attend<S: F32x16, E: SimdLoad>(
    job: &Job<'_, E>,
    scratch: &mut [f32],
    out: &mut [f32],
) -> Vec<RowStats> {
    let rows = job.rows();
    let hd = job.geom.k_dim;
    let (scores, rest) = scratch.split_at_mut(rows * score_positions(job.width()));
    let (acc, packed) = rest.split_at_mut(rows * padded_dim(hd));
    let scores = Scores {
        ptr: scores.as_mut_ptr(),
        rows,
        origin: job.keys.start,
    };
    pack_queries(job, &mut packed[..rows * hd]);
    scores_pass::<S, E>(job, packed, scores);
    let stats = softmax_pass::<S, E>(job, scores);
    acc.fill(0.0);
    values_pass::<S, E>(job, scores, acc);
    let pd = padded_dim(hd);
    for r in 0..rows {
        let dst = &mut out[r * hd..(r + 1) * hd];
        dst.copy_from_slice(&acc[r * pd..r * pd + hd]);
        if E::SCALE != 1.0 {
            for x in dst {
                *x *= E::SCALE;
            }
        }
    }
    stats
}

/// Copies the job's query vectors into `packed`, tile by tile of
/// [`SCORE_ROWS`] rows, dimension-major within a tile (`[d][row]`): the
/// score loop then reads every row's `q[d]` from one pointer, which keeps
/// its registers free for accumulators.
fn pack_queries<E>(job: &Job<'_, E>, packed: &mut [f32]) {
    let (hd, rows) = (job.geom.k_dim, job.rows());
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
///
/// Full groups of 16 keys are taken two at a time (from one block or two),
/// which doubles the independent accumulators per row: one group alone
/// leaves the loop waiting on FMA latency.
#[inline(always)]
unsafe fn scores_pass<S: F32x16, E: SimdLoad>(job: &Job<'_, E>, packed: &[f32], scores: Scores) {
    let (bs, span) = (job.geom.block_size, job.span());
    let (first, blocks) = (job.keys.start / bs, span.div_ceil(bs));
    let ahead = job.prefetch_ahead();
    for b in first..(first + ahead).min(blocks) {
        job.prefetch_block(job.kv.keys(), b);
    }
    let mut held: Option<KeyGroup<E>> = None;
    for (b, block) in job.seq.block_table[..blocks].iter().enumerate().skip(first) {
        if b + ahead < blocks {
            job.prefetch_block(job.kv.keys(), b + ahead);
        }
        let base = job.geom.k_base(block.index(), job.kv_head);
        let n = bs.min(span - b * bs);
        for s0 in (0..n).step_by(LANES) {
            let group = KeyGroup {
                keys: job.kv.keys().as_ptr().add(base + s0),
                width: LANES.min(bs - s0),
                pos: b * bs + s0,
            };
            if group.width < LANES {
                score_groups::<S, E, 1>(job, packed, scores, [group]);
            } else if let Some(first) = held.take() {
                score_groups::<S, E, 2>(job, packed, scores, [first, group]);
            } else {
                held = Some(group);
            }
        }
    }
    if let Some(last) = held {
        score_groups::<S, E, 1>(job, packed, scores, [last]);
    }
}

/// Up to 16 consecutive keys of one block.
#[derive(Clone, Copy)]
struct KeyGroup<E> {
    /// The first key's dimension 0 (dimensions are `block_size` apart).
    keys: *const E,
    /// Real keys (16 unless the block is smaller).
    width: usize,
    /// The first key's position.
    pos: usize,
}

/// Scores of every row tile against `V` key groups (all full when `V > 1`).
#[inline(always)]
unsafe fn score_groups<S: F32x16, E: SimdLoad, const V: usize>(
    job: &Job<'_, E>,
    packed: &[f32],
    scores: Scores,
    groups: [KeyGroup<E>; V],
) {
    let rows = job.rows();
    let mut r0 = 0;
    while r0 < rows {
        let nr = SCORE_ROWS.min(rows - r0);
        // Rows are query-major, so the tile's last row sees the most; a tile
        // that sees none of these keys is left to the mask.
        if job.visible(r0 + nr - 1) > groups[0].pos {
            let tile = ScoreTile {
                groups,
                q: packed.as_ptr().add(r0 * job.geom.k_dim),
                scores,
                r0,
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

/// `V` groups of keys against a tile of rows.
struct ScoreTile<E, const V: usize> {
    groups: [KeyGroup<E>; V],
    /// The tile's packed queries (see [`pack_queries`]).
    q: *const f32,
    scores: Scores,
    /// The tile's first row.
    r0: usize,
}

impl<E: SimdLoad, const V: usize> ScoreTile<E, V> {
    #[inline(always)]
    unsafe fn run<S: F32x16, const R: usize>(&self, job: &Job<'_, E>) {
        let (bs, hd) = (job.geom.block_size, job.geom.k_dim);
        let acc = if self.groups[0].width == LANES {
            self.dots::<S, R, true>(bs, hd)
        } else {
            self.dots::<S, R, false>(bs, hd)
        };
        let scale = S::splat(job.scale * E::SCALE);
        for (r, row) in acc.iter().enumerate() {
            for (g, a) in self.groups.iter().zip(row) {
                self.scores.store(self.r0 + r, g.pos, g.width, a.mul(scale));
            }
        }
    }

    /// `Σ_d q[row][d] · K[d][keys]` for each row and group; a separate loop
    /// per `FULL` so the hot one has no width test.
    #[inline(always)]
    unsafe fn dots<S: F32x16, const R: usize, const FULL: bool>(
        &self,
        bs: usize,
        hd: usize,
    ) -> [[S; V]; R] {
        let mut acc = [[S::zero(); V]; R];
        let mut q = self.q;
        for d in 0..hd {
            let mut x = [S::zero(); V];
            for (xg, g) in x.iter_mut().zip(&self.groups) {
                let k = g.keys.add(d * bs);
                *xg = if FULL {
                    E::load16::<S>(k)
                } else {
                    E::load_partial::<S>(k, g.width)
                };
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let qr = S::splat(*q.add(r));
                for (av, xv) in a.iter_mut().zip(&x) {
                    *av = qr.fma(*xv, *av);
                }
            }
            q = q.add(R);
        }
        acc
    }
}

/// Pass 2: masks what each row may not see, replaces scores by
/// `exp(score - max)` and returns each row's maximum and sum of them.
#[inline(always)]
unsafe fn softmax_pass<S: F32x16, E>(job: &Job<'_, E>, scores: Scores) -> Vec<RowStats> {
    let groups = job.keys.start / LANES..job.span().div_ceil(LANES);
    // Loops, not iterator closures: closures are not compiled with the
    // caller's target features, so their vector calls would not inline.
    let mut stats = Vec::with_capacity(job.rows());
    for r in 0..job.rows() {
        let visible = job.visible(r);
        if visible <= job.keys.start {
            // A prefill row before the chunk: weight 0 for all its keys.
            for g in groups.clone() {
                S::zero().store(scores.at(r, g * LANES));
            }
            stats.push(RowStats {
                max: f32::NEG_INFINITY,
                sum: 0.0,
            });
            continue;
        }
        let mut m = S::splat(f32::NEG_INFINITY);
        for g in groups.clone() {
            let p = scores.at(r, g * LANES);
            for i in visible.saturating_sub(g * LANES).min(LANES)..LANES {
                *p.add(i) = f32::NEG_INFINITY;
            }
            m = m.max(S::load(p));
        }
        let max = m.reduce_max();
        let neg_max = S::splat(-max);
        let mut sum = S::zero();
        for g in groups.clone() {
            let p = scores.at(r, g * LANES);
            let e = S::load(p).add(neg_max).exp();
            e.store(p);
            sum = sum.add(e);
        }
        stats.push(RowStats {
            max,
            sum: sum.reduce_add(),
        });
    }
    stats
}

/// Pass 3: `acc[row] += Σ weight · value`, one block at a time.
#[inline(always)]
unsafe fn values_pass<S: F32x16, E: SimdLoad>(job: &Job<'_, E>, weights: Scores, acc: &mut [f32]) {
    let (bs, hd, rows, span) = (job.geom.block_size, job.geom.k_dim, job.rows(), job.span());
    let pd = padded_dim(hd);
    let (first, blocks) = (job.keys.start / bs, span.div_ceil(bs));
    let ahead = job.prefetch_ahead();
    for b in first..(first + ahead).min(blocks) {
        job.prefetch_block(job.kv.values(), b);
    }
    for (b, block) in job.seq.block_table[..blocks].iter().enumerate().skip(first) {
        if b + ahead < blocks {
            job.prefetch_block(job.kv.values(), b + ahead);
        }
        let base = job.geom.k_base(block.index(), job.kv_head);
        let pos0 = b * bs;
        let mut r0 = 0;
        while r0 < rows {
            let nr = VALUE_ROWS.min(rows - r0);
            if job.visible(r0 + nr - 1) > pos0 {
                let mut d0 = 0;
                while d0 < hd {
                    let vecs = if hd - d0 >= VALUE_VECS * LANES {
                        VALUE_VECS
                    } else {
                        1
                    };
                    let tile = ValueTile {
                        values: job.kv.values().as_ptr().add(base + d0),
                        hd,
                        pos0,
                        slots: bs.min(span - pos0),
                        weights,
                        r0,
                        acc: acc.as_mut_ptr().add(r0 * pd + d0),
                        acc_stride: pd,
                    };
                    match (vecs, hd - d0 >= LANES) {
                        (VALUE_VECS, _) => tile.run_rows::<S, VALUE_VECS, true>(nr),
                        (_, true) => tile.run_rows::<S, 1, true>(nr),
                        _ => tile.run_rows::<S, 1, false>(nr),
                    }
                    d0 += vecs * LANES;
                }
            }
            r0 += nr;
        }
    }
}

/// `G` vectors of the value rows of one block against a tile of rows.
struct ValueTile<E> {
    /// Slot 0's value row, from the tile's first dimension.
    values: *const E,
    hd: usize,
    /// Position of the block's slot 0.
    pos0: usize,
    slots: usize,
    weights: Scores,
    /// The tile's first row.
    r0: usize,
    acc: *mut f32,
    acc_stride: usize,
}

impl<E: SimdLoad> ValueTile<E> {
    #[inline(always)]
    unsafe fn run_rows<S: F32x16, const G: usize, const FULL: bool>(&self, rows: usize) {
        match rows {
            1 => self.run::<S, 1, G, FULL>(),
            2 => self.run::<S, 2, G, FULL>(),
            3 => self.run::<S, 3, G, FULL>(),
            4 => self.run::<S, 4, G, FULL>(),
            5 => self.run::<S, 5, G, FULL>(),
            6 => self.run::<S, 6, G, FULL>(),
            7 => self.run::<S, 7, G, FULL>(),
            _ => self.run::<S, VALUE_ROWS, G, FULL>(),
        }
    }

    /// `FULL`: the tile's last vector has 16 real lanes (the head dimension
    /// left from here is at least 16).
    #[inline(always)]
    unsafe fn run<S: F32x16, const R: usize, const G: usize, const FULL: bool>(&self) {
        let width = (self.hd % LANES).max(1);
        let mut sum = [[S::zero(); G]; R];
        let mut j = 0;
        while j < self.slots {
            // Slots up to the end of this group of 16 positions: their
            // weights are 16 floats apart per row.
            let pos = self.pos0 + j;
            let m = (LANES - pos % LANES).min(self.slots - j);
            let w = self.weights.at(self.r0, pos);
            let mut row = self.values.add(j * self.hd);
            for jj in 0..m {
                let mut x = [S::zero(); G];
                for (g, xg) in x.iter_mut().enumerate() {
                    *xg = if FULL {
                        E::load16::<S>(row.add(g * LANES))
                    } else {
                        E::load_partial::<S>(row.add(g * LANES), width)
                    };
                }
                for (r, s) in sum.iter_mut().enumerate() {
                    let wr = S::splat(*w.add(r * LANES + jj));
                    for g in 0..G {
                        s[g] = wr.fma(x[g], s[g]);
                    }
                }
                row = row.add(self.hd);
            }
            j += m;
        }
        for (r, s) in sum.iter().enumerate() {
            for (g, v) in s.iter().enumerate() {
                let p = self.acc.add(r * self.acc_stride + g * LANES);
                S::load(p).add(*v).store(p);
            }
        }
    }
}
