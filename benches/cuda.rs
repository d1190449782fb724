//! The CUDA path's speed on the GPU it runs on, as one table (run by
//! `benches/cuda/device-check.sh`; needs `--features cuda` and a GPU):
//!
//! 1. a device-to-device copy, the bandwidth ceiling (bytes read + written
//!    per second, as memory bandwidth is quoted);
//! 2. decode attention over the paged cache with R1-Distill-Qwen-7B's
//!    layer shape (28 query heads, 4 KV heads of 128, f16 cache, blocks of
//!    16 in shuffled order) at 4k, 32k and 128k tokens, batch 1 and 64: KV
//!    bytes read per second, and that as a share of the copy's rate;
//! 3. decode of a synthetic model with R1-Distill-Qwen-7B's shapes (random
//!    bf16 weights generated on the device; its cache filled directly, so
//!    contexts of 4k tokens need no prefill): batch 1 against the
//!    weight-read roofline (weight bytes / copy rate), and aggregate tok/s
//!    at batch 8, 64 and 256; each step with greedy rows reduced to their
//!    argmax on the GPU, and again with whole logits rows copied to the host.
//!
//! `cargo bench --features cuda --bench cuda`.

use anyhow::Result;
use r1serve::kernels::attention::{AttnSeq, AttnShape};
use r1serve::kernels::backend::{Backend, RopeStyle};
use r1serve::kernels::cuda::{device_count, Cuda};
use r1serve::kv_cache::spec::{KvSpec, LayerKvSpec};
use r1serve::kv_cache::storage::KvDtype;
use r1serve::model::config::{Arch, ModelConfig};
use r1serve::model::decoder::{Decoder, DecoderLayer, DecoderWeights};
use r1serve::model::layers::Rope;
use r1serve::model::{BatchSeq, ForwardBatch, Model, RowNeed};
use r1serve::types::BlockId;
use std::time::Instant;

const BLOCK: usize = 16;

/// R1-Distill-Qwen-7B (Qwen2 7B) without its q/k/v biases, which add no
/// traffic worth counting.
fn qwen7b() -> ModelConfig {
    ModelConfig {
        arch: Arch::Qwen2,
        hidden_size: 3584,
        intermediate_size: 18944,
        num_layers: 28,
        num_heads: 28,
        num_kv_heads: 4,
        head_dim: 128,
        vocab_size: 152_064,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_style: RopeStyle::Half,
        rope_scaling: None,
        max_position_embeddings: 131_072,
        tie_word_embeddings: false,
        weight_quant: None,
        deepseek: None,
    }
}

/// Block tables of `ctx` tokens for `batch` sequences over one pool, each
/// sequence's blocks shuffled as a busy pool leaves them.
fn tables(batch: usize, ctx: usize) -> Vec<Vec<BlockId>> {
    let per = ctx.div_ceil(BLOCK);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..batch)
        .map(|s| {
            let mut t: Vec<BlockId> = (0..per).map(|b| BlockId((s * per + b) as u32)).collect();
            for i in (1..t.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                t.swap(i, (state >> 33) as usize % (i + 1));
            }
            t
        })
        .collect()
}

fn copy_rate(g: &Cuda) -> Result<f64> {
    let n = 1usize << 30;
    let src = g.gpu().stream.alloc_zeros::<f32>(n)?;
    let mut dst = g.gpu().stream.alloc_zeros::<f32>(n)?;
    let ms = g
        .gpu()
        .time_ms(2, 10, || Ok(g.gpu().stream.memcpy_dtod(&src, &mut dst)?))?;
    Ok(2.0 * (n * 4) as f64 / (ms * 1e-3))
}

fn attention(g: &Cuda, copy: f64) -> Result<()> {
    let c = qwen7b();
    let spec = KvSpec::uniform(
        LayerKvSpec::Full {
            num_kv_heads: c.num_kv_heads,
            k_dim: c.head_dim,
            v_dim: c.head_dim,
        },
        1,
    );
    println!("| context | batch | ms per call | KV GB/s read | of copy rate |");
    println!("|---|---|---|---|---|");
    for ctx in [4096, 32_768, 131_072] {
        for batch in [1, 64] {
            let tables = tables(batch, ctx);
            let mut cache =
                g.alloc_cache(&spec, BLOCK, batch * ctx.div_ceil(BLOCK), KvDtype::F16)?;
            let width = c.num_kv_heads * c.head_dim;
            // Fill with values, not zeros, through the real write path.
            let kv = g.from_host(&vec![0.01f32; ctx * width], width)?;
            for t in &tables {
                let seq = [AttnSeq {
                    q_start: 0,
                    q_len: ctx,
                    ctx_len: ctx,
                    block_table: t,
                }];
                g.write_kv(&mut cache, 0, &seq, &kv, &kv)?;
            }
            let seqs: Vec<AttnSeq> = tables
                .iter()
                .enumerate()
                .map(|(i, t)| AttnSeq {
                    q_start: i,
                    q_len: 1,
                    ctx_len: ctx,
                    block_table: t,
                })
                .collect();
            let q = g.from_host(
                &vec![0.5f32; batch * c.num_heads * c.head_dim],
                c.num_heads * c.head_dim,
            )?;
            let shape = AttnShape {
                num_heads: c.num_heads,
                scale: 1.0 / (c.head_dim as f32).sqrt(),
            };
            let ms = g.gpu().time_ms(3, 20, || {
                g.paged_attention(&cache, 0, &seqs, &shape, &q)?;
                Ok(())
            })?;
            let bytes = (batch * ctx * width * 2 * 2) as f64;
            let rate = bytes / (ms * 1e-3);
            println!(
                "| {ctx} | {batch} | {ms:.3} | {:.0} | {:.0}% |",
                rate / 1e9,
                100.0 * rate / copy
            );
        }
    }
    Ok(())
}

fn synthetic(g: &Cuda) -> Result<(Decoder<Cuda>, f64)> {
    let c = qwen7b();
    let (h, hd) = (c.hidden_size, c.head_dim);
    let mut seed = 1u64;
    let mut lin = |out: usize, inp: usize| {
        seed += 1;
        g.random_linear(out, inp, seed, 1.0 / (inp as f32).sqrt())
    };
    let mut layers = Vec::new();
    for _ in 0..c.num_layers {
        layers.push(DecoderLayer {
            attn_norm: g.vector(vec![1.0; h])?,
            q: lin(c.num_heads * hd, h)?,
            k: lin(c.num_kv_heads * hd, h)?,
            v: lin(c.num_kv_heads * hd, h)?,
            o: lin(h, c.num_heads * hd)?,
            mlp_norm: g.vector(vec![1.0; h])?,
            gate: lin(c.intermediate_size, h)?,
            up: lin(c.intermediate_size, h)?,
            down: lin(h, c.intermediate_size)?,
        });
    }
    let lm_head = lin(c.vocab_size, h)?;
    let per_layer =
        2 * h * (c.num_heads * hd) + 2 * h * (c.num_kv_heads * hd) + 3 * h * c.intermediate_size;
    let weight_bytes = 2.0 * (c.num_layers * per_layer + c.vocab_size * h) as f64;
    let weights = DecoderWeights {
        embed: g.random_embedding(c.vocab_size, h, 7, 1.0)?,
        layers,
        norm: g.vector(vec![1.0; h])?,
        lm_head,
    };
    let rope = Rope::new(hd, c.rope_theta, c.rope_style, None, None);
    Ok((Decoder::assemble(g.clone(), c, weights, rope), weight_bytes))
}

/// One layer's seven matrix products at batch 1 (cuBLAS, each with its
/// input's bf16 conversion), run 28 times back to back plus the output
/// head: how close they alone come to the weight-read roofline, without the
/// other kernels or the host's per-op work.
fn products_alone(g: &Cuda, copy: f64, weight_bytes: f64) -> Result<()> {
    let c = qwen7b();
    let (h, q, kv, ff) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
    );
    let shapes = [(q, h), (kv, h), (kv, h), (h, q), (ff, h), (ff, h), (h, ff)];
    let layer: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(o, n))| g.random_linear(o, n, 100 + i as u64, 0.01))
        .collect::<Result<_>>()?;
    let head = g.random_linear(c.vocab_size, h, 99, 0.01)?;
    let xs: Vec<_> = [h, q, ff]
        .iter()
        .map(|&n| g.from_host(&vec![0.5f32; n], n))
        .collect::<Result<_>>()?;
    let ms = g.gpu().time_ms(1, 3, || {
        for _ in 0..c.num_layers {
            for (l, &(_, n)) in layer.iter().zip(&shapes) {
                let x = &xs[[h, q, ff]
                    .iter()
                    .position(|&w| w == n)
                    .expect("an input width")];
                g.matmul(l, x)?;
            }
        }
        g.matmul(&head, &xs[0])?;
        Ok(())
    })?;
    println!(
        "batch-1 matrix products alone (cuBLAS, queued back to back): {ms:.2} ms per token = {:.0}% of the weight-read roofline",
        100.0 * (weight_bytes / copy * 1e3) / ms
    );
    Ok(())
}

fn decode(g: &Cuda, copy: f64) -> Result<()> {
    let (mut model, weight_bytes) = synthetic(g)?;
    let ctx = 4096usize;
    let steps = 8usize;
    let max_batch = 256;
    let per = (ctx + steps + 4).div_ceil(BLOCK);
    model.allocate_cache(BLOCK, max_batch * per, KvDtype::F16)?;
    let roofline = copy / weight_bytes;
    println!();
    products_alone(g, copy, weight_bytes)?;
    println!(
        "synthetic R1-Distill-Qwen-7B shapes: {:.2} GB of bf16 weights, f16 KV cache, contexts from {ctx} tokens",
        weight_bytes / 1e9
    );
    // Greedy rows come back as their argmax (reduced on the GPU); whole
    // rows are what a request with logits processors or logprobs costs.
    println!("| batch | ms per step, argmax on the GPU | ms per step, whole rows to the host | tok/s (argmax) | batch-1 roofline (weights / copy rate) |");
    println!("|---|---|---|---|---|");
    for batch in [1, 8, 64, 256] {
        let tables: Vec<Vec<BlockId>> = (0..batch)
            .map(|s| (0..per).map(|b| BlockId((s * per + b) as u32)).collect())
            .collect();
        let step = |model: &mut Decoder<Cuda>, i: usize, need: RowNeed| -> Result<()> {
            let batch = ForwardBatch {
                tokens: (0..batch as u32).map(|t| 100 + t).collect(),
                seqs: tables
                    .iter()
                    .map(|t| BatchSeq {
                        num_tokens: 1,
                        ctx_len: ctx + i + 1,
                        block_table: t.clone(),
                        want_logits: true,
                        all_logits: false,
                        need,
                    })
                    .collect(),
            };
            model.forward(&batch)?;
            Ok(())
        };
        let mut ms = [0.0; 2];
        for (need, ms) in [RowNeed::Argmax, RowNeed::Full].into_iter().zip(&mut ms) {
            step(&mut model, 0, need)?;
            step(&mut model, 1, need)?;
            let t = Instant::now();
            for i in 0..steps {
                step(&mut model, 2 + i, need)?;
            }
            *ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
        }
        let tps = batch as f64 * 1e3 / ms[0];
        let roof = if batch == 1 {
            format!("{roofline:.0} tok/s: {:.0}%", 100.0 * tps / roofline)
        } else {
            String::new()
        };
        println!(
            "| {batch} | {:.2} | {:.2} | {tps:.0} | {roof} |",
            ms[0], ms[1]
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    if device_count() == 0 {
        eprintln!("no CUDA device visible: the CUDA benchmark did not run");
        std::process::exit(2);
    }
    let g = Cuda::new(0, 0.9)?;
    let copy = copy_rate(&g)?;
    println!(
        "device-to-device copy: {:.0} GB/s (read + written)",
        copy / 1e9
    );
    println!();
    attention(&g, copy)?;
    decode(&g, copy)?;
    Ok(())
}
