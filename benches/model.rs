//! Single-stream speed of r1serve's model core against candle-transformers'
//! quantized models on the same GGUF files, measured side by side in one run:
//! prefill of 512 tokens and greedy decode of 64 tokens.
//!
//! `cargo bench --bench model` (checkpoints from `models/fetch.sh`);
//! `MODEL_R1SERVE_ONLY=1` prints r1serve's rows only (candle-transformers
//! needs minutes per model), for A/B runs of two r1serve builds.

#[path = "../tests/common/mod.rs"]
mod common;

use common::argmax;
use common::parity::{load_reference, Reference};
use r1serve::kv_cache::storage::KvDtype;
use r1serve::model::{build, open_weights, source, BatchSeq, ForwardBatch, Model, RowNeed};
use r1serve::types::BlockId;
use std::time::Instant;

const PREFILL: usize = 512;
const DECODE: usize = 64;

fn prompt(vocab: usize) -> Vec<u32> {
    (0..PREFILL as u32)
        .map(|i| 100 + (i * 7919) % (vocab as u32 - 200))
        .collect()
}

/// (prefill tok/s, decode tok/s) of r1serve.
fn ours(model: &mut dyn Model, tokens: &[u32]) -> (f64, f64) {
    let blocks = (PREFILL + DECODE).div_ceil(16);
    model.allocate_cache(16, blocks, KvDtype::F16).unwrap();
    let table: Vec<BlockId> = (0..blocks as u32).map(BlockId).collect();
    let mut run = |toks: Vec<u32>, ctx_len: usize| {
        let batch = ForwardBatch {
            seqs: vec![BatchSeq {
                num_tokens: toks.len(),
                ctx_len,
                block_table: table.clone(),
                want_logits: true,
                all_logits: false,
                need: RowNeed::Full,
            }],
            tokens: toks,
        };
        let row = model.forward(&batch).expect("forward").remove(0);
        row.into_full().expect("asked whole")
    };
    let t = Instant::now();
    let mut next = argmax(&run(tokens.to_vec(), tokens.len()));
    let prefill = tokens.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..DECODE {
        next = argmax(&run(vec![next], tokens.len() + i + 1));
    }
    (prefill, DECODE as f64 / t.elapsed().as_secs_f64())
}

/// (prefill tok/s, decode tok/s) of candle-transformers.
fn theirs(m: &mut dyn Reference, tokens: &[u32]) -> (f64, f64) {
    let t = Instant::now();
    let mut next = argmax(&m.forward(tokens, 0));
    let prefill = tokens.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..DECODE {
        next = argmax(&m.forward(&[next], tokens.len() + i));
    }
    (prefill, DECODE as f64 / t.elapsed().as_secs_f64())
}

fn main() {
    // As in the server, whose engine loop runs on a worker of its pool.
    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    pool.install(run);
}

fn run() {
    let files = [
        (
            "SmolLM2-135M Q4_1",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            false,
        ),
        (
            "Qwen2.5-0.5B Q4_K_M",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            true,
        ),
    ];
    println!(
        "threads: {} (rayon)\n\n| model | engine | prefill {PREFILL} tok/s | decode tok/s |\n|---|---|---|---|",
        rayon::current_num_threads()
    );
    for (label, file, qwen) in files {
        let path = common::model(file);
        let src = source::resolve(path.to_str().unwrap(), None).unwrap();
        let (weights, config) = open_weights(&src).unwrap();
        let vocab = config.vocab_size;
        let mut model = build(&weights, config).unwrap();
        let tokens = prompt(vocab);
        ours(model.as_mut(), &tokens[..32]); // warm-up
        let (op, od) = ours(model.as_mut(), &tokens);
        drop(model);
        if std::env::var_os("MODEL_R1SERVE_ONLY").is_some() {
            println!("| {label} | r1serve | {op:.1} | {od:.1} |");
            continue;
        }
        let mut reference = load_reference(&path, qwen);
        let (tp, td) = theirs(reference.as_mut(), &tokens);
        println!("| {label} | r1serve | {op:.1} | {od:.1} |");
        println!("| {label} | candle-transformers | {tp:.1} | {td:.1} |");
        println!("| {label} | ratio | {:.2}x | {:.2}x |", op / tp, od / td);
    }
}
