//! DeepSeek-R1-shaped layers on the CPU, against the memory bandwidth a
//! plain memcpy reaches in the same run. Two tables:
//! 1. one MoE layer (hidden 7168, 256 routed experts of inner width 2048 and
//!    one shared, top-8 of 8 groups with 4 kept, noaux_tc routing) with
//!    random Q4_K weights, one decode step at batch 1 and 16: the step's time
//!    against the bytes of the experts it reads (9 at batch 1) over memcpy
//!    bandwidth. Only the experts the step's tokens are routed to are
//!    generated (R1's 256 would take 6.3 GB); routing runs over all 256.
//! 2. one MLA layer's absorbed decode attention (128 heads over latent rows
//!    of 512 + 64, f16 cache) at 1k, 16k and 64k context, batch 1 and 8:
//!    time against the latent bytes read over memcpy bandwidth ("of bound":
//!    one thread's memcpy, the target's measure; "of all": a memcpy split
//!    over every thread), and the flops it does per second (128 heads share
//!    each row, ~240 flops per byte: compute, not memory, bounds it on a CPU
//!    without AMX).
//!
//! `cargo bench --bench deepseek [-- moe|mla]` (only the named table; peak memory ~3.5 GB: the experts of a
//! batch of 16 and a 64k × 8 latent cache). `DS_QUICK=1` stops at 16k.

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use r1serve::kernels::attention::{write_kv, AttnSeq};
use r1serve::kernels::isa::KernelIsa;
use r1serve::kernels::latent_attention::latent_attention;
use r1serve::kernels::linear::Linear;
use r1serve::kernels::tensor::RawTensor;
use r1serve::kv_cache::spec::{KvSpec, LayerKvSpec};
use r1serve::kv_cache::storage::{KvCache, KvDtype};
use r1serve::model::config::Arch;
use r1serve::model::deepseek_config::DeepseekConfig;
use r1serve::model::moe::{routing, run_experts, Mlp};
use r1serve::types::BlockId;
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

const HIDDEN: usize = 7168;
const INNER: usize = 2048;
const EXPERTS: usize = 256;
const HEADS: usize = 128;
const LORA: usize = 512;
const ROPE: usize = 64;

/// Best time of `f` over at least `min_runs` runs and half a second.
fn time(min_runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::MAX;
    let mut runs = 0;
    while runs < min_runs || (start.elapsed().as_secs_f64() < 0.5 && runs < 100) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

/// Deterministic pseudo-random generator (64-bit LCG, top bits).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }

    /// Uniform in [-1, 1).
    fn value(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.value() * scale).collect()
    }
}

/// A `rows × cols` Q4_K matrix of random blocks (finite scales, random
/// nibbles): the cost of a matmul does not depend on the values.
fn q4k(rows: usize, cols: usize, rng: &mut Rng) -> anyhow::Result<Linear> {
    let (block_elems, block_bytes) = (GgmlDType::Q4K.block_size(), GgmlDType::Q4K.type_size());
    let blocks = rows * cols / block_elems;
    let mut data = vec![0u8; blocks * block_bytes];
    for block in data.chunks_exact_mut(block_bytes) {
        block[..2].copy_from_slice(&half::f16::from_f32(1e-3).to_le_bytes());
        block[2..4].copy_from_slice(&half::f16::from_f32(5e-4).to_le_bytes());
        for chunk in block[4..].chunks_mut(8) {
            let r = rng.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
    // Borrowed: candle's `from_data` copies out of the slice it is given, and
    // frees an owned buffer before that copy.
    let storage = QStorage::from_data(Cow::Borrowed(&data), &Device::Cpu, GgmlDType::Q4K)?;
    Linear::new(
        RawTensor::Quantized(QTensor::new(storage, (rows, cols))?),
        None,
    )
}

fn expert(rng: &mut Rng, inner: usize) -> anyhow::Result<Mlp> {
    Ok(Mlp::new(
        q4k(inner, HIDDEN, rng)?,
        q4k(inner, HIDDEN, rng)?,
        q4k(HIDDEN, inner, rng)?,
    ))
}

/// Bytes of one Q4_K expert (gate, up and down).
fn expert_bytes(inner: usize) -> usize {
    3 * inner * HIDDEN / GgmlDType::Q4K.block_size() * GgmlDType::Q4K.type_size()
}

/// Bytes per second of a memcpy of 512 MiB (far beyond any cache) on one
/// thread, and split over the rayon threads.
fn memcpy_bandwidth() -> (f64, f64) {
    let n = 512 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let one = time(3, || dst.copy_from_slice(black_box(&src)));
    let chunk = n.div_ceil(rayon::current_num_threads());
    let all = time(3, || {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(black_box(s)))
    });
    (n as f64 / one, n as f64 / all)
}

fn r1_config() -> anyhow::Result<DeepseekConfig> {
    let j = serde_json::json!({
        "q_lora_rank": 1536, "kv_lora_rank": LORA, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": ROPE, "v_head_dim": 128, "n_routed_experts": EXPERTS,
        "n_shared_experts": 1, "num_experts_per_tok": 8, "moe_intermediate_size": INNER,
        "first_k_dense_replace": 3, "n_group": 8, "topk_group": 4, "norm_topk_prob": true,
        "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
    });
    DeepseekConfig::from_hf_json(&j, Arch::DeepseekV3, std::path::Path::new("R1 config"))
}

fn moe_table(bandwidth: f64) -> anyhow::Result<()> {
    let ds = r1_config()?;
    let mut rng = Rng(7);
    let router = rng.values(EXPERTS * HIDDEN, 0.05);
    let bias = rng.values(EXPERTS, 0.01);
    println!("\nMoE layer, Q4_K experts (hidden {HIDDEN}, {EXPERTS} routed × {INNER} + 1 shared, top-8 of 8 groups / 4 kept)");
    println!(
        "{:>5} | {:>7} {:>9} | {:>10} {:>10} | {:>8} {:>7}",
        "batch", "experts", "MB read", "time", "bound", "GB/s", "of bound"
    );
    let h16 = rng.values(16 * HIDDEN, 1.0);
    let routed16 = routing(&ds, &router, Some(&bias), &h16);
    let mut experts: BTreeMap<usize, Mlp> = BTreeMap::new();
    for (e, tokens) in routed16.iter().enumerate() {
        if !tokens.is_empty() {
            experts.insert(e, expert(&mut rng, INNER)?);
        }
    }
    let shared = expert(&mut rng, INNER)?;
    for batch in [1usize, 16] {
        let h = &h16[..batch * HIDDEN];
        let step = || -> anyhow::Result<Vec<f32>> {
            let routed = routing(&ds, &router, Some(&bias), h);
            let chosen = routed
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.is_empty())
                .map(|(e, t)| (&experts[&e], t.as_slice()));
            let mut out = run_experts(chosen, h, batch)?;
            for (o, s) in out.iter_mut().zip(shared.forward(h, batch)?) {
                *o += s;
            }
            Ok(out)
        };
        let active = routing(&ds, &router, Some(&bias), h)
            .iter()
            .filter(|t| !t.is_empty())
            .count()
            + 1;
        let t = time(5, || {
            black_box(step().unwrap());
        });
        let bytes = (active * expert_bytes(INNER)) as f64;
        let bound = bytes / bandwidth;
        println!(
            "{:>5} | {:>7} {:>9.0} | {:>8.2}ms {:>8.2}ms | {:>8.1} {:>6.0}%",
            batch,
            active,
            bytes / 1e6,
            t * 1e3,
            bound * 1e3,
            bytes / t / 1e9,
            100.0 * bound / t
        );
    }
    Ok(())
}

fn mla_table((bandwidth, parallel): (f64, f64), contexts: &[usize]) -> anyhow::Result<()> {
    let width = LORA + ROPE;
    let block = 16;
    println!("\nMLA absorbed decode attention ({HEADS} heads over latent rows of {LORA} + {ROPE}, f16 cache)");
    println!(
        "{:>6} {:>5} | {:>9} | {:>10} {:>10} | {:>8} {:>7} {:>7} | {:>9}",
        "ctx", "batch", "MB read", "time", "bound", "GB/s", "of bound", "of all", "GFLOP/s"
    );
    let mut rng = Rng(11);
    for &ctx in contexts {
        for batch in [1usize, 8] {
            let blocks_per_seq = ctx.div_ceil(block);
            let spec = KvSpec::uniform(LayerKvSpec::Latent { width, v_dim: LORA }, 1);
            let mut cache = KvCache::new(&spec, block, batch * blocks_per_seq, KvDtype::F16)?;
            cache.commit();
            let tables: Vec<Vec<BlockId>> = (0..batch)
                .map(|s| {
                    (0..blocks_per_seq)
                        .map(|b| BlockId((s * blocks_per_seq + b) as u32))
                        .collect()
                })
                .collect();
            let rows = rng.values(ctx * width, 1.0);
            for table in &tables {
                write_kv(
                    &mut cache.layers[0],
                    &cache.geometries[0],
                    table,
                    0,
                    &rows,
                    &[],
                )?;
            }
            drop(rows);
            let seqs: Vec<AttnSeq> = tables
                .iter()
                .enumerate()
                .map(|(i, table)| AttnSeq {
                    q_start: i,
                    q_len: 1,
                    ctx_len: ctx,
                    block_table: table,
                })
                .collect();
            let q = rng.values(batch * HEADS * width, 0.1);
            let mut out = vec![0f32; batch * HEADS * LORA];
            let shape = (HEADS, LORA, 0.07);
            let (layer, geom) = (&cache.layers[0], &cache.geometries[0]);
            let t = time(1, || {
                latent_attention(&q, &mut out, layer, geom, &seqs, shape).unwrap();
            });
            let bytes = (batch * ctx * width * 2) as f64;
            let bound = bytes / bandwidth;
            let flops = (batch * ctx * HEADS * (width + LORA) * 2) as f64;
            println!(
                "{:>6} {:>5} | {:>9.1} | {:>8.2}ms {:>8.2}ms | {:>8.2} {:>7.1}% {:>6.1}% | {:>9.1}",
                ctx,
                batch,
                bytes / 1e6,
                t * 1e3,
                bound * 1e3,
                bytes / t / 1e9,
                100.0 * bound / t,
                100.0 * bytes / parallel / t,
                flops / t / 1e9
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::var_os("DS_QUICK").is_some();
    let (bandwidth, parallel) = memcpy_bandwidth();
    println!(
        "isa: {:?}, rayon threads: {}, memcpy {:.1} GB/s (one thread; {:.1} GB/s on all)",
        r1serve::kernels::Isa::detect(),
        rayon::current_num_threads(),
        bandwidth / 1e9,
        parallel / 1e9
    );
    // Cargo passes `--bench`; another argument names the one table to run.
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if wanted("moe") {
        moe_table(bandwidth)?;
    }
    if !wanted("mla") {
        return Ok(());
    }
    let contexts: &[usize] = if quick {
        &[1024, 16384]
    } else {
        &[1024, 16384, 65536]
    };
    mla_table((bandwidth, parallel), contexts)
}
