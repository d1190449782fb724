//! The AMX-BF16 body of the latent (MLA) attention. Absorbed MLA decode is
//! compute-bound on a CPU: every cached row (576 values for R1) meets all
//! 128 query heads twice, once as a key and once as a value, so an f16
//! cache gives ~240 flops per byte read, where f32 FMAs on two cores reach
//! only a few percent of the memory bound. Here both products run on AMX
//! tiles in bf16 with f32 accumulation, as FlashMLA does on GPUs.
//!
//! A job is one query row over [`JOB`] positions of its sequence. It
//! gathers the positions' rows from their blocks (where each dimension's
//! positions lie side by side) into two bf16 layouts: the keys with pairs
//! of dimensions side by side (the tiles' VNNI layout) for `S = Q·Kᵀ`, and
//! the values one row per dimension for `Oᵀ = Vᵀ·Pᵀ`. The softmax of its
//! scores runs in f32; the probabilities go to bf16 and are transposed into
//! the VNNI layout. A task is a run of jobs on one thread that accumulates
//! into one `(max, sum, Oᵀ)` per head as FlashAttention-2 does, and
//! prefetches each next job's rows while the tiles compute; tasks are
//! merged in position order as in flash-decoding. Where jobs and tasks
//! start depends only on the row's length, so a row's result does not
//! depend on the batch.
//!
//! Heads, key width and value width are padded to multiples of 32 with
//! zeros (two tiles of each, so every loaded tile serves two products), and
//! every buffer a tile is loaded from is 64-byte aligned ([`TileBuf`]).

use super::amx::{self, TileBuf};
use super::simd::{Avx512, SimdLoad};
use crate::kv_cache::storage::{with_pair, KvGeometry, LayerKv};
use crate::types::BlockId;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Most tasks (runs of jobs on one thread, merged as they go) a row's
/// positions are split into: enough to spread one long row over the cores,
/// few enough that merging them is cheap. A constant, not the thread
/// count, so that results do not depend on the machine's cores.
const TASKS_PER_ROW: usize = 8;

/// The most bytes of task partials one call holds at once (they stay with
/// the calling thread between calls).
const WAVE_BYTES: usize = 16 << 20;

/// Steps of the score product per pass over the keys (see [`job`]).
const S_STEPS: usize = 6;

/// Positions per job: the gathered keys and values, the scores and the
/// partial output of 128 heads (~1 MiB for R1's rows) stay in L2.
const JOB: usize = 256;

/// A run of positions of a sequence: the first and how many.
type Span = (usize, usize);

/// One call's sizes and their padded counterparts.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    heads: usize,
    hp: usize,
    w: usize,
    wp: usize,
    v: usize,
    vp: usize,
}

impl Dims {
    /// `heads` query heads over rows of `w` values, the first `v` of which
    /// are the value.
    pub(super) fn new(heads: usize, w: usize, v: usize) -> Self {
        Dims {
            heads,
            hp: heads.next_multiple_of(32),
            w,
            wp: w.next_multiple_of(32),
            v,
            vp: v.next_multiple_of(32),
        }
    }
}

/// One query row's part of a call.
pub(super) struct Row<'a> {
    /// The row's sequence's blocks.
    pub table: &'a [BlockId],
    /// Positions the row sees (its own included).
    pub n: usize,
    /// Index of the row in the call's queries and outputs.
    pub index: usize,
}

/// Per head, a reference point for the exponentials (a score the task saw,
/// at most [`LAZY`] below its maximum), the sum of the exponentials of the
/// scores less that point, and `Oᵀ` (`vp × hp`) with the same weights; for
/// one task, or merged over several.
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    ot: TileBuf,
}

impl Partial {
    fn new(d: Dims) -> Self {
        let mut p = Partial::empty();
        p.fit(d);
        p
    }

    /// A partial without buffers, in the place of one that moved.
    fn empty() -> Self {
        Partial {
            max: Vec::new(),
            sum: Vec::new(),
            ot: TileBuf::default(),
        }
    }

    /// Sizes the buffers for `d`.
    fn fit(&mut self, d: Dims) {
        self.max.resize(d.hp, 0.0);
        self.sum.resize(d.hp, 0.0);
        self.ot.get::<f32>(d.vp * d.hp);
    }

    /// Folds `p`, the task after those already in `self`, into `self`.
    fn merge(&mut self, p: &mut Partial, d: Dims) {
        let hp = d.hp;
        let mut a = vec![0f32; hp];
        let mut b = vec![0f32; hp];
        for h in 0..hp {
            let m = self.max[h].max(p.max[h]);
            a[h] = (self.max[h] - m).exp();
            b[h] = (p.max[h] - m).exp();
            self.sum[h] = self.sum[h] * a[h] + p.sum[h] * b[h];
            self.max[h] = m;
        }
        let new = p.ot.get::<f32>(d.vp * hp);
        let acc = self.ot.get::<f32>(d.vp * hp);
        for (acc, new) in acc.chunks_exact_mut(hp).zip(new.chunks_exact(hp)) {
            for h in 0..hp {
                acc[h] = acc[h] * a[h] + new[h] * b[h];
            }
        }
    }
}

/// A thread's gather, score and probability buffers, reused across calls.
#[derive(Default)]
struct Scratch {
    /// Keys, `wp/2 × JOB × 2` bf16: pair of dimensions, position, element.
    ktv: TileBuf,
    /// Values, `vp × JOB` bf16.
    vt: TileBuf,
    /// Scores, `hp × JOB` f32.
    s: TileBuf,
    /// Probabilities in bf16, `hp × JOB/2` pairs of positions.
    pb: TileBuf,
    /// The same transposed, `JOB/2 × hp`.
    pt: TileBuf,
    /// Per head, the factor a job rescales its task's sums by.
    corr: Vec<f32>,
    /// The runs of positions of the job being gathered (see [`gather`]).
    segments: Vec<(*const u8, usize, usize)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static SPARE: RefCell<Spare> = RefCell::new(Spare::default());
}

/// The calling thread's buffers, kept between calls: the bf16 queries and
/// the partials (fresh ones, 256 KiB each for R1, would page-fault on every
/// layer).
#[derive(Default)]
struct Spare {
    qb: TileBuf,
    parts: Vec<Partial>,
}

/// Attention of the query rows `rows` (`q`: rows of `heads × w`, scaled by
/// `scale`) over their sequences' latent rows in `layer`, into `out` (rows
/// of `heads × v`).
///
/// # Safety
///
/// This CPU has AVX-512F/BW/VL, AVX512_BF16 and AMX-BF16 with the tile
/// state granted; every block table covers its row's positions with blocks
/// inside the pool, and `q` and `out` hold every row's index.
pub(super) unsafe fn attention(
    q: &[f32],
    out: &mut [f32],
    layer: &LayerKv,
    geom: &KvGeometry,
    rows: &[Row],
    d: Dims,
    scale: f32,
) {
    let mut spare = SPARE.with_borrow_mut(std::mem::take);
    let qb = spare.qb.get::<u16>(rows.len() * d.hp * d.wp);
    for (r, row) in rows.iter().enumerate() {
        for h in 0..d.hp {
            // The buffer is reused: padding must be written as zeros.
            let dst = &mut qb[(r * d.hp + h) * d.wp..][..d.wp];
            let dims = if h < d.heads { d.w } else { 0 };
            let src = &q[(row.index * d.heads + h.min(d.heads - 1)) * d.w..][..dims];
            queries_bf16(src, scale, &mut dst[..dims]);
            dst[dims..].fill(0);
        }
    }
    let qb = &*qb;
    let tasks: Vec<(usize, usize, usize)> = rows
        .iter()
        .enumerate()
        .flat_map(|(r, row)| {
            let len = row
                .n
                .div_ceil(TASKS_PER_ROW)
                .next_multiple_of(JOB)
                .max(2 * JOB);
            (0..row.n)
                .step_by(len)
                .map(move |start| (r, start, row.n.min(start + len)))
        })
        .collect();
    let mut acc: Vec<Option<Partial>> = rows.iter().map(|_| None).collect();
    // Tasks run in waves whose partials (256 KiB each for R1) stay within
    // `WAVE_BYTES`, at least two per thread.
    let wave = (WAVE_BYTES / (4 * d.vp * d.hp)).max(2 * rayon::current_num_threads());
    let mut fresh = || {
        let mut p = spare.parts.pop().unwrap_or_else(|| Partial::new(d));
        p.fit(d);
        p
    };
    let mut parts: Vec<Partial> = (0..wave.min(tasks.len())).map(|_| fresh()).collect();
    for batch in tasks.chunks(wave) {
        parts[..batch.len()]
            .par_iter_mut()
            .zip(batch)
            .for_each(|(part, &(r, start, end))| {
                let row = &rows[r];
                let qr = &qb[r * d.hp * d.wp..][..d.hp * d.wp];
                SCRATCH.with_borrow_mut(|sc| {
                    for js in (start..end).step_by(JOB) {
                        let now = (js, JOB.min(end - js));
                        let next = (js + JOB < end).then(|| (js + JOB, JOB.min(end - js - JOB)));
                        // SAFETY: per this function's contract.
                        with_pair!(layer, pair => unsafe {
                            job(pair.keys(), geom, (row.table, now, next), qr, d, sc, (part, js == start))
                        });
                    }
                });
            });
        for (part, &(r, _, _)) in parts.iter_mut().zip(batch) {
            match &mut acc[r] {
                Some(a) => a.merge(part, d),
                slot => *slot = Some(std::mem::replace(part, Partial::empty())),
            }
        }
        for part in &mut parts {
            if part.max.is_empty() {
                *part = fresh();
            }
        }
    }
    for (row, a) in rows.iter().zip(&mut acc) {
        let a = a.as_mut().expect("every row sees its own position");
        let ot = a.ot.get::<f32>(d.vp * d.hp);
        let o = &mut out[row.index * d.heads * d.v..][..d.heads * d.v];
        for h in 0..d.heads {
            let inv = 1.0 / a.sum[h];
            for (x, o) in o[h * d.v..(h + 1) * d.v].iter_mut().enumerate() {
                *o = ot[x * d.hp + h] * inv;
            }
        }
    }
    spare
        .parts
        .extend(parts.into_iter().chain(acc.into_iter().flatten()));
    SPARE.with_borrow_mut(|s| *s = spare);
}

/// `dst` = bf16(`scale` · `src`), rounded to nearest even.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn queries_bf16(src: &[f32], scale: f32, dst: &mut [u16]) {
    let sv = _mm512_set1_ps(scale);
    for (s, d) in src.chunks(16).zip(dst.chunks_mut(16)) {
        let m = lanes(s.len());
        let x = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s.as_ptr()), sv);
        let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(x));
        _mm256_mask_storeu_epi16(d.as_mut_ptr().cast(), m, b);
    }
}

/// The mask of the first `n` (at most 16) lanes.
fn lanes(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

/// One job: positions `start..start + cnt` of the sequence with blocks
/// `table`, for the padded bf16 queries `qb` (`hp × wp`), added to `part`
/// (that the job starts, when `first`) as in FlashAttention-2: where a
/// head's maximum grows, its sums so far are rescaled (rarely, after the
/// first jobs), and the products accumulate into them on the tiles.
/// While its tiles compute, the rows of `next` (the positions of the
/// thread's next job) are prefetched, so that the next gather does not
/// wait for memory.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
unsafe fn job<E: SimdLoad>(
    keys: &[E],
    geom: &KvGeometry,
    (table, (start, cnt), next): (&[BlockId], Span, Option<Span>),
    qb: &[u16],
    d: Dims,
    sc: &mut Scratch,
    (part, first): (&mut Partial, bool),
) {
    let c32 = cnt.next_multiple_of(32);
    gather(keys, geom, (table, start, cnt), d, sc);
    let calls = (d.hp / 32) * (c32 / 32 * (d.wp / 32).div_ceil(S_STEPS) + d.vp / 32);
    let mut prefetch = Prefetch::new(keys, geom, table, next, calls);
    amx::configure(16, 64);
    let ktv = sc.ktv.get::<u16>(d.wp * JOB).as_ptr();
    let vt = sc.vt.get::<u16>(d.vp * JOB).as_ptr();
    let s = sc.s.get::<f32>(d.hp * JOB).as_mut_ptr();
    let pb = sc.pb.get::<u32>(d.hp * JOB / 2).as_mut_ptr();
    let pt = sc.pt.get::<u32>(d.hp * JOB / 2).as_mut_ptr();
    sc.corr.resize(d.hp, 0.0);
    // The key width in panels of `S_STEPS` steps: a pair of query tiles'
    // panel stays in L1 while every key tile passes it.
    for g in (0..d.hp / 16).step_by(2) {
        for k0 in (0..d.wp / 32).step_by(S_STEPS) {
            let a = [0, 1].map(|i| qb.as_ptr().add((g + i) * 16 * d.wp + 32 * k0) as *const u8);
            for t in (0..c32 / 16).step_by(2) {
                let b = [0, 1].map(|i| ktv.add(k0 * 32 * JOB + (t + i) * 32) as *const u8);
                let c = [0, 1].map(|i| [0, 1].map(|j| s.add((g + i) * 16 * JOB + (t + j) * 16)));
                prefetch.step();
                amx::gemm_bf16_2x2(
                    (a, d.wp * 2, 64),
                    (b, JOB * 4, 16 * JOB * 4),
                    S_STEPS.min(d.wp / 32 - k0),
                    (c, JOB * 4, k0 > 0),
                );
            }
        }
    }
    for h in 0..d.hp {
        let row = s.add(h * JOB) as *const f32;
        let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
        for j in (0..cnt).step_by(16) {
            mx = _mm512_mask_max_ps(mx, lanes(cnt - j), mx, _mm512_loadu_ps(row.add(j)));
        }
        let job_max = _mm512_reduce_max_ps(mx);
        // The reference point moves only when a job's maximum passes it by
        // more than `LAZY`: exponentials stay below e^LAZY (far inside f32
        // and bf16), and a task's sums are rescaled a few times at most.
        let (m, corr) = if first {
            (job_max, 0.0)
        } else if job_max > part.max[h] + LAZY {
            (job_max, (part.max[h] - job_max).exp())
        } else {
            (part.max[h], 1.0)
        };
        let neg = _mm512_set1_ps(-m);
        let mut sum = _mm512_setzero_ps();
        for j in (0..c32).step_by(32) {
            let e = [0, 16].map(|k| {
                let x = exp(_mm512_add_ps(_mm512_loadu_ps(row.add(j + k)), neg));
                _mm512_maskz_mov_ps(lanes(cnt.saturating_sub(j + k)), x)
            });
            sum = _mm512_add_ps(sum, _mm512_add_ps(e[0], e[1]));
            let p: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(e[1], e[0]));
            _mm512_storeu_si512(pb.add(h * JOB / 2 + j / 2).cast(), p);
        }
        let job_sum = _mm512_reduce_add_ps(sum);
        part.sum[h] = if first {
            job_sum
        } else {
            part.sum[h] * corr + job_sum
        };
        part.max[h] = m;
        sc.corr[h] = corr;
    }
    let ot = part.ot.get::<f32>(d.vp * d.hp);
    if !first && sc.corr[..d.hp].iter().any(|&c| c != 1.0) {
        for row in ot.chunks_exact_mut(d.hp) {
            for (o, c) in row.iter_mut().zip(&sc.corr) {
                *o *= c;
            }
        }
    }
    let ot = ot.as_mut_ptr();
    for h0 in (0..d.hp).step_by(16) {
        for r0 in (0..c32 / 2).step_by(16) {
            let mut m = [_mm512_setzero_si512(); 16];
            for (i, m) in m.iter_mut().enumerate() {
                *m = _mm512_loadu_si512(pb.add((h0 + i) * JOB / 2 + r0).cast());
            }
            transpose16(&mut m);
            for (i, m) in m.iter().enumerate() {
                _mm512_storeu_si512(pt.add((r0 + i) * d.hp + h0).cast(), *m);
            }
        }
    }
    for dt in (0..d.vp / 16).step_by(2) {
        let a = [0, 1].map(|i| vt.add((dt + i) * 16 * JOB) as *const u8);
        for ht in (0..d.hp / 16).step_by(2) {
            let b = [0, 1].map(|j| pt.add((ht + j) * 16) as *const u8);
            let c = [0, 1].map(|i| [0, 1].map(|j| ot.add((dt + i) * 16 * d.hp + (ht + j) * 16)));
            prefetch.step();
            amx::gemm_bf16_2x2(
                (a, JOB * 2, 64),
                (b, d.hp * 4, 16 * d.hp * 4),
                c32 / 32,
                (c, d.hp * 4, !first),
            );
        }
    }
}

/// How far past a task's reference point a job's maximum may go before the
/// point moves (and the task's sums are rescaled).
const LAZY: f32 = 8.0;

/// `e^x` for the softmax, relative error below 5·10⁻⁶ (the probabilities
/// are rounded to bf16, 2⁻⁹, right after): a degree-5 Taylor polynomial on
/// `|r| ≤ ln2/2` (remainder below `r⁶/720·e^{2|r|}`), scaled by `2ⁿ` with
/// `vscalefps`; zero below −104.
#[inline(always)]
unsafe fn exp(x: __m512) -> __m512 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(1.0 / 120.0);
    for c in [1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// Prefetches the cache lines of a range of positions' blocks, a share at
/// each [`Prefetch::step`], into L1 and L2 (`T0`: faster than `T1`, into L2
/// only, on the AMX Xeon).
struct Prefetch<E> {
    /// Each block's first element, its lines following on.
    blocks: Vec<*const E>,
    lines_per_block: usize,
    next: usize,
    per_step: usize,
}

impl<E> Prefetch<E> {
    /// Over the blocks of `range` (`(start, cnt)`; none: nothing to do), in
    /// `steps` shares.
    fn new(
        keys: &[E],
        geom: &KvGeometry,
        table: &[BlockId],
        range: Option<Span>,
        steps: usize,
    ) -> Self {
        let bs = geom.block_size;
        let blocks: Vec<*const E> = range
            .map(|(start, cnt)| {
                table[start / bs..(start + cnt).div_ceil(bs)]
                    .iter()
                    // The blocks were checked against the pool.
                    .map(|b| keys[geom.k_base(b.index(), 0)..].as_ptr())
                    .collect()
            })
            .unwrap_or_default();
        let lines_per_block = (bs * geom.k_dim * std::mem::size_of::<E>()).div_ceil(64);
        let per_step = (blocks.len() * lines_per_block).div_ceil(steps.max(1));
        Prefetch {
            blocks,
            lines_per_block,
            next: 0,
            per_step,
        }
    }

    /// Issues the next share of the lines.
    #[inline(always)]
    fn step(&mut self) {
        let end = (self.next + self.per_step).min(self.blocks.len() * self.lines_per_block);
        for i in self.next..end {
            let base = self.blocks[i / self.lines_per_block].cast::<u8>();
            // SAFETY: a prefetch never faults, and the address lies inside
            // the block.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(base.add(64 * (i % self.lines_per_block)).cast());
            }
        }
        self.next = end;
    }
}

/// Word `i` of the interleave of two 16-word vectors: `a[i/2]` for even
/// `i`, `b[i/2]` (index 32 and up) for odd.
const INTERLEAVE: [u16; 32] = {
    let mut idx = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        idx[i] = (i / 2 + (i % 2) * 32) as u16;
        i += 1;
    }
    idx
};

/// Copies positions `start..start + cnt` into `sc.ktv` and `sc.vt` in bf16
/// (positions up to the next multiple of 32 get zero values, so that their
/// zero probabilities contribute nothing).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
unsafe fn gather<E: SimdLoad>(
    keys: &[E],
    geom: &KvGeometry,
    (table, start, cnt): (&[BlockId], usize, usize),
    d: Dims,
    sc: &mut Scratch,
) {
    let bs = geom.block_size;
    let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr().cast());
    let ktv = sc.ktv.get::<u16>(d.wp * JOB).as_mut_ptr();
    let vt = sc.vt.get::<u16>(d.vp * JOB).as_mut_ptr();
    // The job's runs of at most 16 positions inside one block: where each
    // starts in the cache, its first position in the job, its length.
    sc.segments.clear();
    let mut p = start;
    while p < start + cnt {
        let slot = p % bs;
        let len = (bs - slot).min(start + cnt - p).min(16);
        let kp = keys
            .as_ptr()
            .add(geom.k_base(table[p / bs].index(), 0) + slot);
        sc.segments.push((kp.cast(), p - start, len));
        p += len;
    }
    // Sixteen pairs of dimensions at a time over every run: the lines
    // written (16 KiB of each layout) stay in L1 until they are complete.
    for p0 in (0..d.wp / 2).step_by(16) {
        for &(kp, j, len) in &sc.segments {
            let kp = kp.cast::<E>();
            let mask = lanes(len);
            for pr in p0..(p0 + 16).min(d.wp / 2) {
                let r0 = load_row(kp, (2 * pr, d.w, bs, len));
                let r1 = load_row(kp, (2 * pr + 1, d.w, bs, len));
                let pairs = _mm512_permutex2var_epi16(
                    _mm512_castsi256_si512(r0),
                    idx,
                    _mm512_castsi256_si512(r1),
                );
                _mm512_mask_storeu_epi32(ktv.add((pr * JOB + j) * 2).cast(), mask, pairs);
                for (dim, r) in [(2 * pr, r0), (2 * pr + 1, r1)] {
                    if dim < d.vp {
                        _mm256_mask_storeu_epi16(vt.add(dim * JOB + j).cast(), mask, r);
                    }
                }
            }
        }
    }
    let c32 = cnt.next_multiple_of(32);
    let vt = sc.vt.get::<u16>(d.vp * JOB);
    for dim in 0..d.vp {
        vt[dim * JOB + cnt..dim * JOB + c32].fill(0);
    }
}

/// The `len` positions from `kp` of dimension `dim` (of `w`, in blocks of
/// `bs` positions) in bf16, zeros past them and for `dim >= w`.
#[inline(always)]
unsafe fn load_row<E: SimdLoad>(
    kp: *const E,
    (dim, w, bs, len): (usize, usize, usize, usize),
) -> __m256i {
    if dim >= w {
        return _mm256_setzero_si256();
    }
    let x: Avx512 = if len == 16 {
        E::load16(kp.add(dim * bs))
    } else {
        E::load_partial(kp.add(dim * bs), len)
    };
    let x = if E::SCALE == 1.0 {
        x.0
    } else {
        _mm512_mul_ps(x.0, _mm512_set1_ps(E::SCALE))
    };
    std::mem::transmute(_mm512_cvtneps_pbh(x))
}

/// Transposes a 16 × 16 matrix of 32-bit elements held one row a register.
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(m: &mut [__m512i; 16]) {
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(m[2 * i], m[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(m[2 * i], m[2 * i + 1]);
    }
    // In each 128-bit lane L of u[4g + x]: element 4L + x of rows 4g..4g+4.
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (a, b) = (t[4 * g], t[4 * g + 2]);
        let (c, e) = (t[4 * g + 1], t[4 * g + 3]);
        u[4 * g] = _mm512_unpacklo_epi64(a, b);
        u[4 * g + 1] = _mm512_unpackhi_epi64(a, b);
        u[4 * g + 2] = _mm512_unpacklo_epi64(c, e);
        u[4 * g + 3] = _mm512_unpackhi_epi64(c, e);
    }
    for x in 0..4 {
        let lo01 = _mm512_shuffle_i32x4::<0x44>(u[x], u[4 + x]);
        let hi01 = _mm512_shuffle_i32x4::<0xEE>(u[x], u[4 + x]);
        let lo23 = _mm512_shuffle_i32x4::<0x44>(u[8 + x], u[12 + x]);
        let hi23 = _mm512_shuffle_i32x4::<0xEE>(u[8 + x], u[12 + x]);
        m[x] = _mm512_shuffle_i32x4::<0x88>(lo01, lo23);
        m[4 + x] = _mm512_shuffle_i32x4::<0xDD>(lo01, lo23);
        m[8 + x] = _mm512_shuffle_i32x4::<0x88>(hi01, hi23);
        m[12 + x] = _mm512_shuffle_i32x4::<0xDD>(hi01, hi23);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register transpose against index arithmetic, where AVX-512 runs.
    #[test]
    fn transpose16_transposes() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("latent_amx::transpose16_transposes: NOT RUN: this CPU lacks AVX-512F");
            return;
        }
        let src: Vec<i32> = (0..256).collect();
        let mut got = vec![0i32; 256];
        // SAFETY: AVX-512F is present; the loads and stores stay in 256 i32.
        unsafe {
            #[target_feature(enable = "avx512f")]
            unsafe fn run(src: &[i32], dst: &mut [i32]) {
                let mut m = [_mm512_setzero_si512(); 16];
                for (i, m) in m.iter_mut().enumerate() {
                    *m = _mm512_loadu_si512(src.as_ptr().add(16 * i).cast());
                }
                transpose16(&mut m);
                for (i, m) in m.iter().enumerate() {
                    _mm512_storeu_si512(dst.as_mut_ptr().add(16 * i).cast(), *m);
                }
            }
            run(&src, &mut got);
        }
        for r in 0..16 {
            for c in 0..16 {
                assert_eq!(got[16 * r + c], src[16 * c + r], "row {r} column {c}");
            }
        }
    }
}
