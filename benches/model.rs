//! Single-stream speed of r1serve's model core against candle-transformers'
//! quantized models on the same GGUF files, measured side by side in one run:
//! prefill of 512 tokens and greedy decode of 64 tokens.
//!
//! `cargo bench --bench model` (checkpoints from `models/fetch.sh`).

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use r1serve::kv_cache::storage::{KvCache, KvDtype, KvGeometry};
use r1serve::model::decoder::{BatchSeq, Decoder, ForwardBatch};
use r1serve::model::{build, open_weights, source};
use r1serve::types::BlockId;
use std::path::PathBuf;
use std::time::Instant;

const PREFILL: usize = 512;
const DECODE: usize = 64;

fn models_dir() -> PathBuf {
    std::env::var("R1SERVE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/r1serve/models")
        })
}

fn prompt(vocab: usize) -> Vec<u32> {
    (0..PREFILL as u32)
        .map(|i| 100 + (i * 7919) % (vocab as u32 - 200))
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0 as u32
}

/// (prefill tok/s, decode tok/s) of r1serve.
fn ours(model: &Decoder, tokens: &[u32]) -> (f64, f64) {
    let c = &model.config;
    let geometry = KvGeometry {
        block_size: 16,
        num_blocks: (PREFILL + DECODE).div_ceil(16),
        num_kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
    };
    let mut kv = KvCache::new(geometry, c.num_layers, KvDtype::F16);
    let table: Vec<BlockId> = (0..geometry.num_blocks as u32).map(BlockId).collect();
    let run = |kv: &mut KvCache, toks: Vec<u32>, ctx_len: usize| {
        let batch = ForwardBatch {
            seqs: vec![BatchSeq {
                num_tokens: toks.len(),
                ctx_len,
                block_table: table.clone(),
                want_logits: true,
            }],
            tokens: toks,
        };
        model.forward(&batch, kv).expect("forward").remove(0)
    };
    let t = Instant::now();
    let mut next = argmax(&run(&mut kv, tokens.to_vec(), tokens.len()));
    let prefill = tokens.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..DECODE {
        next = argmax(&run(&mut kv, vec![next], tokens.len() + i + 1));
    }
    (prefill, DECODE as f64 / t.elapsed().as_secs_f64())
}

trait Candle {
    fn fwd(&mut self, x: &Tensor, pos: usize) -> Vec<f32>;
}
impl Candle for candle_transformers::models::quantized_llama::ModelWeights {
    fn fwd(&mut self, x: &Tensor, pos: usize) -> Vec<f32> {
        self.forward(x, pos)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}
impl Candle for candle_transformers::models::quantized_qwen2::ModelWeights {
    fn fwd(&mut self, x: &Tensor, pos: usize) -> Vec<f32> {
        self.forward(x, pos)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}

fn theirs(m: &mut dyn Candle, tokens: &[u32]) -> (f64, f64) {
    let input = |t: &[u32]| Tensor::new(t, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let t = Instant::now();
    let mut next = argmax(&m.fwd(&input(tokens), 0));
    let prefill = tokens.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..DECODE {
        next = argmax(&m.fwd(&input(&[next]), tokens.len() + i));
    }
    (prefill, DECODE as f64 / t.elapsed().as_secs_f64())
}

fn main() {
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
        let path = models_dir().join(file);
        if !path.exists() {
            eprintln!("{}: missing, run models/fetch.sh", path.display());
            std::process::exit(1);
        }
        let src = source::resolve(path.to_str().unwrap(), None).unwrap();
        let (weights, config) = open_weights(&src).unwrap();
        let vocab = config.vocab_size;
        let model = build(&weights, config).unwrap();
        let tokens = prompt(vocab);
        ours(&model, &tokens[..32]); // warm-up
        let (op, od) = ours(&model, &tokens);
        drop(model);
        let mut f = std::fs::File::open(&path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        let mut reference: Box<dyn Candle> = if qwen {
            Box::new(
                candle_transformers::models::quantized_qwen2::ModelWeights::from_gguf(
                    ct,
                    &mut f,
                    &Device::Cpu,
                )
                .unwrap(),
            )
        } else {
            Box::new(
                candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
                    ct,
                    &mut f,
                    &Device::Cpu,
                )
                .unwrap(),
            )
        };
        let (tp, td) = theirs(reference.as_mut(), &tokens);
        println!("| {label} | r1serve | {op:.1} | {od:.1} |");
        println!("| {label} | candle-transformers | {tp:.1} | {td:.1} |");
        println!("| {label} | ratio | {:.2}x | {:.2}x |", op / tp, od / td);
    }
}
