//! The paged-attention kernel against its slow reference on random shapes:
//! GQA ratios 1, 2 and 7, contexts 1 to 5,000, block sizes 8, 16 and 32,
//! prefill chunks over a cached prefix and batched decodes. Each test names
//! on stderr the instruction set `paged_attention` dispatched to and the ones
//! it did not (`R1SERVE_ISA` forces a lower one; the unit tests of
//! `kernels::attention` compare every body this CPU has bit for bit).

use r1serve::kernels::attention::{
    paged_attention, paged_attention_reference, report_dispatch, write_kv, AttnSeq, AttnShape,
};
use r1serve::kv_cache::storage::{KvCache, KvDtype, KvGeometry};
use r1serve::types::BlockId;

mod common;
use common::Lcg;

/// Runs one batch of `(ctx_len, q_len)` sequences and compares.
fn run(
    cases: &[(usize, usize)],
    kv_heads: usize,
    group: usize,
    block_size: usize,
    dtype: KvDtype,
    seed: u64,
) {
    run_hd(cases, kv_heads, group, block_size, 64, dtype, seed);
}

/// [`run`] with a head dimension of choice.
fn run_hd(
    cases: &[(usize, usize)],
    kv_heads: usize,
    group: usize,
    block_size: usize,
    hd: usize,
    dtype: KvDtype,
    seed: u64,
) {
    let mut rng = Lcg(seed);
    let heads = kv_heads * group;
    let blocks_needed: usize = cases.iter().map(|(c, _)| c.div_ceil(block_size)).sum();
    let geometry = KvGeometry::square(block_size, blocks_needed + 3, kv_heads, hd);
    let mut cache = KvCache::uniform(geometry, 1, dtype).unwrap();
    // Scatter sequences over shuffled blocks, as a real pool would.
    let mut free: Vec<u32> = (0..geometry.num_blocks as u32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, rng.below(i + 1));
    }
    let mut tables = Vec::new();
    for &(ctx, _) in cases {
        let table: Vec<BlockId> = (0..ctx.div_ceil(block_size))
            .map(|_| BlockId(free.pop().unwrap()))
            .collect();
        let k: Vec<f32> = (0..ctx * kv_heads * hd).map(|_| rng.next()).collect();
        let v: Vec<f32> = (0..ctx * kv_heads * hd).map(|_| rng.next()).collect();
        write_kv(&mut cache.layers[0], &geometry, &table, 0, &k, &v).unwrap();
        tables.push(table);
    }
    let rows: usize = cases.iter().map(|(_, q)| q).sum();
    let q: Vec<f32> = (0..rows * heads * hd).map(|_| rng.next() * 2.0).collect();
    let mut seqs = Vec::new();
    let mut start = 0;
    for (i, &(ctx, ql)) in cases.iter().enumerate() {
        seqs.push(AttnSeq {
            q_start: start,
            q_len: ql,
            ctx_len: ctx,
            block_table: &tables[i],
        });
        start += ql;
    }
    let shape = AttnShape {
        num_heads: heads,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let mut fast = vec![0f32; q.len()];
    let mut slow = vec![0f32; q.len()];
    paged_attention(&q, &mut fast, &cache.layers[0], &geometry, &seqs, &shape).unwrap();
    paged_attention_reference(&q, &mut slow, &cache.layers[0], &geometry, &seqs, &shape).unwrap();
    let err = fast
        .iter()
        .zip(&slow)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err < 1e-4,
        "cases {cases:?} gqa {group} bs {block_size}: max error {err}"
    );
}

#[test]
fn decode_matches_reference_across_gqa_and_block_sizes() {
    report_dispatch("decode_matches_reference_across_gqa_and_block_sizes");
    for (i, &group) in [1usize, 2, 7].iter().enumerate() {
        // 24: groups of 16 keys straddle blocks and start mid-group.
        for &bs in &[8usize, 16, 24, 32] {
            run(
                &[(1, 1), (17, 1), (30, 1), (300, 1), (5000, 1)],
                2,
                group,
                bs,
                KvDtype::F16,
                7 + i as u64,
            );
        }
    }
}

#[test]
fn prefill_with_cached_prefix_matches_reference() {
    report_dispatch("prefill_with_cached_prefix_matches_reference");
    for (i, &group) in [1usize, 2, 7].iter().enumerate() {
        for &bs in &[8usize, 16, 24, 32] {
            run(
                &[(5, 5), (16, 16), (30, 30), (100, 37), (700, 70), (33, 1)],
                2,
                group,
                bs,
                KvDtype::F32,
                100 + i as u64,
            );
        }
    }
}

/// The reference reads the same stored (rounded) keys and values, so the
/// narrower types are held to the same tolerance: only the kernel's
/// widening and accumulation are under test.
#[test]
fn bf16_and_fp8_caches_match_reference() {
    report_dispatch("bf16_and_fp8_caches_match_reference");
    for (i, dtype) in [KvDtype::Bf16, KvDtype::Fp8E4m3].into_iter().enumerate() {
        for &bs in &[8usize, 16, 24] {
            run(
                &[(1, 1), (40, 40), (300, 1), (2100, 1), (700, 33)],
                2,
                7,
                bs,
                dtype,
                200 + i as u64,
            );
        }
        run_hd(&[(90, 17), (333, 1)], 2, 3, 16, 40, dtype, 210 + i as u64);
    }
}

#[test]
fn long_prefill_chunk_matches_reference() {
    report_dispatch("long_prefill_chunk_matches_reference");
    // Its later queries see keys past the kernel's first chunk of 2,048.
    run(&[(2300, 400)], 1, 7, 16, KvDtype::F16, 3);
}

#[test]
fn head_dims_that_are_not_a_multiple_of_16_match_reference() {
    report_dispatch("head_dims_that_are_not_a_multiple_of_16_match_reference");
    for (i, &hd) in [8usize, 40, 80, 136].iter().enumerate() {
        run_hd(
            &[(1, 1), (50, 50), (333, 1), (90, 17)],
            2,
            3,
            16,
            hd,
            KvDtype::F16,
            50 + i as u64,
        );
        run_hd(
            &[(70, 9), (20, 1)],
            1,
            2,
            8,
            hd,
            KvDtype::F32,
            60 + i as u64,
        );
    }
}

/// A query's output must not depend on how its sequence's queries are
/// chunked or what else is in the batch: the engine's batch invariance
/// rests on this, so the comparison is bit for bit.
#[test]
fn outputs_are_bit_identical_across_chunkings_and_batches() {
    report_dispatch("outputs_are_bit_identical_across_chunkings_and_batches");
    let (kv_heads, group, hd, bs) = (2usize, 7usize, 64usize, 16usize);
    let heads = kv_heads * group;
    // Two key chunks of the kernel's 2,048 positions, the last one partial.
    let ctx = 2200usize;
    let mut rng = Lcg(99);
    let geometry = KvGeometry::square(bs, 2 * ctx.div_ceil(bs), kv_heads, hd);
    let mut cache = KvCache::uniform(geometry, 1, KvDtype::F16).unwrap();
    let a: Vec<BlockId> = (0..ctx.div_ceil(bs) as u32).map(BlockId).collect();
    let b: Vec<BlockId> = (ctx.div_ceil(bs) as u32..2 * ctx.div_ceil(bs) as u32)
        .rev()
        .map(BlockId)
        .collect();
    for table in [&a, &b] {
        let k: Vec<f32> = (0..ctx * kv_heads * hd).map(|_| rng.next()).collect();
        let v: Vec<f32> = (0..ctx * kv_heads * hd).map(|_| rng.next()).collect();
        write_kv(&mut cache.layers[0], &geometry, table, 0, &k, &v).unwrap();
    }
    let row = heads * hd;
    let qa: Vec<f32> = (0..ctx * row).map(|_| rng.next() * 3.0).collect();
    let qb: Vec<f32> = (0..ctx * row).map(|_| rng.next() * 3.0).collect();
    let shape = AttnShape {
        num_heads: heads,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    // Sequence A's queries `from..to` (A's context ending at `to`), alone or
    // after sequence B's last `b_len` queries in the same batch.
    let attend = |from: usize, to: usize, b_len: usize| -> Vec<u32> {
        let mut q = qb[(ctx - b_len) * row..].to_vec();
        q.extend_from_slice(&qa[from * row..to * row]);
        let mut seqs = Vec::new();
        if b_len > 0 {
            seqs.push(AttnSeq {
                q_start: 0,
                q_len: b_len,
                ctx_len: ctx,
                block_table: &b,
            });
        }
        seqs.push(AttnSeq {
            q_start: b_len,
            q_len: to - from,
            ctx_len: to,
            block_table: &a,
        });
        let mut out = vec![0f32; q.len()];
        paged_attention(&q, &mut out, &cache.layers[0], &geometry, &seqs, &shape).unwrap();
        out[b_len * row..]
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<u32>>()
    };
    let whole = attend(0, ctx, 0);
    for (from, to, b_len) in [
        (0, 100, 0),
        (100, ctx, 5),
        (200, 201, 0),
        (ctx - 1, ctx, 1),
        (17, 250, 40),
        (2047, 2049, 3),
        (1500, 2100, 0),
        (ctx - 2, ctx, ctx),
    ] {
        assert!(
            attend(from, to, b_len) == whole[from * row..to * row],
            "queries {from}..{to} with {b_len} other rows differ from the whole prefill"
        );
    }
}

#[test]
fn bad_block_tables_are_errors_not_panics() {
    let geometry = KvGeometry::square(16, 2, 1, 8);
    let cache = KvCache::uniform(geometry, 1, KvDtype::F32).unwrap();
    let q = vec![0f32; 8];
    let mut out = vec![0f32; 8];
    let shape = AttnShape {
        num_heads: 1,
        scale: 1.0,
    };
    let short = [BlockId(0)];
    let seqs = [AttnSeq {
        q_start: 0,
        q_len: 1,
        ctx_len: 40,
        block_table: &short,
    }];
    assert!(paged_attention(&q, &mut out, &cache.layers[0], &geometry, &seqs, &shape).is_err());
    let outside = [BlockId(5)];
    let seqs = [AttnSeq {
        q_start: 0,
        q_len: 1,
        ctx_len: 1,
        block_table: &outside,
    }];
    assert!(paged_attention(&q, &mut out, &cache.layers[0], &geometry, &seqs, &shape).is_err());
}
