//! Long-context decode cost. Two tables from one run:
//! 1. the paged-attention op alone over 1k–32k contexts, as bytes of KV read
//!    per second against a plain memcpy of the same bytes;
//! 2. a whole Qwen2.5-0.5B decode step (batch 1 and 8) at those contexts,
//!    with the KV cache filled directly (values do not change the cost).
//!
//! `cargo bench --bench attention`

#[path = "../tests/common/mod.rs"]
mod common;

use r1serve::kernels::attention::{paged_attention, write_kv, AttnSeq, AttnShape};
use r1serve::kv_cache::storage::{KvCache, KvDtype, KvGeometry};
use r1serve::model::decoder::{BatchSeq, ForwardBatch};
use r1serve::model::{build, open_weights, source};
use r1serve::types::BlockId;
use std::time::Instant;

const CONTEXTS: [usize; 4] = [1024, 4096, 16384, 32768];

fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    // Qwen2.5-0.5B attention geometry: 14 query heads, 2 KV heads, 64 dims.
    let (kv_heads, heads, hd, bs) = (2usize, 14usize, 64usize, 16usize);
    println!("## Paged attention op (one layer, batch 1, f16 KV)\n");
    println!("| context | attention | KV bytes | GB/s | memcpy GB/s | ratio |\n|---|---|---|---|---|---|");
    for &ctx in &CONTEXTS {
        let blocks = ctx / bs;
        let geometry = KvGeometry {
            block_size: bs,
            num_blocks: blocks,
            num_kv_heads: kv_heads,
            head_dim: hd,
        };
        let mut cache = KvCache::new(geometry, 1, KvDtype::F16);
        let table: Vec<BlockId> = (0..blocks as u32).map(BlockId).collect();
        let data: Vec<f32> = (0..ctx * kv_heads * hd)
            .map(|i| ((i * 7) % 13) as f32 * 0.01)
            .collect();
        write_kv(&mut cache.layers[0], &geometry, &table, 0, &data, &data).unwrap();
        let q = vec![0.1f32; heads * hd];
        let mut out = vec![0f32; heads * hd];
        let seqs = [AttnSeq {
            q_start: 0,
            q_len: 1,
            ctx_len: ctx,
            block_table: &table,
        }];
        let shape = AttnShape {
            num_heads: heads,
            scale: 0.125,
        };
        let t = time(|| {
            paged_attention(&q, &mut out, &cache.layers[0], &geometry, &seqs, &shape).unwrap()
        });
        let bytes = 2 * ctx * kv_heads * hd * 2;
        let src = vec![1u8; bytes];
        let mut dst = vec![0u8; bytes];
        let tm = time(|| {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
        });
        let gbs = bytes as f64 / t / 1e9;
        let mgbs = bytes as f64 / tm / 1e9;
        println!(
            "| {ctx} | {:.3} ms | {:.1} MiB | {gbs:.1} | {mgbs:.1} | {:.2} |",
            t * 1e3,
            bytes as f64 / (1 << 20) as f64,
            gbs / mgbs
        );
    }

    let path = common::model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let src = source::resolve(path.to_str().unwrap(), None).expect("run models/fetch.sh");
    let (weights, config) = open_weights(&src).unwrap();
    let model = build(&weights, config).unwrap();
    let c = &model.config;
    println!("\n## Qwen2.5-0.5B Q4_K_M decode step (f16 KV)\n");
    println!(
        "| context | batch 1 | batch 8 | batch 1 vs 1k | batch 8 vs 1k |\n|---|---|---|---|---|"
    );
    let mut base = (0.0, 0.0);
    for &ctx in &CONTEXTS {
        let mut row = Vec::new();
        for batch in [1usize, 8] {
            let per_seq = ctx.div_ceil(bs) + 1;
            let geometry = KvGeometry {
                block_size: bs,
                num_blocks: per_seq * batch,
                num_kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
            };
            let mut cache = KvCache::new(geometry, c.num_layers, KvDtype::F16);
            let fill: Vec<f32> = (0..ctx * c.num_kv_heads * c.head_dim)
                .map(|i| ((i * 5) % 11) as f32 * 0.02)
                .collect();
            let mut seqs = Vec::new();
            for b in 0..batch {
                let table: Vec<BlockId> = (0..per_seq)
                    .map(|i| BlockId((b * per_seq + i) as u32))
                    .collect();
                for layer in &mut cache.layers {
                    write_kv(layer, &geometry, &table, 0, &fill, &fill).unwrap();
                }
                seqs.push(BatchSeq {
                    num_tokens: 1,
                    ctx_len: ctx + 1,
                    block_table: table,
                    want_logits: true,
                });
            }
            let fb = ForwardBatch {
                tokens: vec![1000; batch],
                seqs,
            };
            row.push(time(|| {
                model.forward(&fb, &mut cache).unwrap();
            }));
        }
        if ctx == CONTEXTS[0] {
            base = (row[0], row[1]);
        }
        println!(
            "| {ctx} | {:.1} ms | {:.1} ms | {:.2}x | {:.2}x |",
            row[0] * 1e3,
            row[1] * 1e3,
            row[0] / base.0,
            row[1] / base.1
        );
    }
}
