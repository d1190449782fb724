//! DeepSeek-V3/V2 against Hugging Face transformers on the tiny checkpoints
//! `models/deepseek/gen_tiny.py` builds (run by `models/fetch.sh`): the
//! prompt's last logits and 24 greedy tokens for 3 prompts, for bf16 V3,
//! block-scaled FP8 V3 and bf16 V2; absorbed against materialised MLA on the
//! same positions; the latent cache's size; broken checkpoints; the engine's
//! batch invariance, preemption and prefix caching on the latent cache; and
//! the real server serving the tiny V3 with R1's template.
//!
//! Tolerance: both sides compute in f32 from the same bf16 weights (the FP8
//! ones dequantized to bf16 the same way; r1serve loaded with f32
//! activations, `--dtype float32`, since the default rounds them to bf16 on
//! CPUs with AVX512_BF16, an error the kernel tests bound), so they differ
//! only by f32 rounding in a different order of operations: each dot product
//! of length k ≤ 320 carries a relative error of about √k·2⁻²⁴ ≈ 1e-6, and 4
//! layers with norms, softmaxes and residual adds compound it to ~1e-5 at
//! most (measured: ~1e-6). The bound, 1e-4 of the largest logit, is 10× that
//! and 10× tighter than the 1e-3: an error in the RoPE frequencies as
//! small as bf16 rounding (2⁻⁹ relative) shows as 3e-4 and must fail. The
//! generator records the smallest top-2 logit gap of its greedy steps (≥ 9e-4
//! for these checkpoints, against logits of magnitude ~10), and the error
//! must stay below half of it, two orders of magnitude above the measured
//! error, so equal greedy tokens are a meaningful requirement.

mod common;

use common::engine::{greedy, run, start, text_prompt, wait_idle};
use common::server::Server;
use common::{argmax, models_dir, rel_diff, SoloRun};
use futures::future::join_all;
use r1serve::engine::EngineConfig;
use r1serve::kernels::dense::{with_precision, Precision};
use r1serve::kv_cache::storage::{KvCache, KvDtype};
use r1serve::model::deepseek_v3::{self, AttentionPath, DeepseekV3};
use r1serve::model::{open_weights, source::resolve, Model};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const V3_BF16: &str = "tiny-deepseek-v3-bf16";
const V3_FP8: &str = "tiny-deepseek-v3-fp8";
const V2_BF16: &str = "tiny-deepseek-v2-bf16";
const LOGITS_TOL: f32 = 1e-4;

fn tiny(name: &str) -> PathBuf {
    let dir = models_dir().join(name);
    assert!(
        dir.join("complete").is_file(),
        "{} missing: run models/fetch.sh first (it generates the tiny DeepSeek checkpoints \
         with models/deepseek/gen_tiny.py)",
        dir.display()
    );
    dir
}

/// Loads with f32 activations (`--dtype float32`), so that the comparisons
/// below are between two f32 computations on every CPU.
fn load(dir: &Path) -> anyhow::Result<DeepseekV3> {
    let src = resolve(dir.to_str().unwrap(), None)?;
    let (weights, config) = open_weights(&src)?;
    with_precision(Precision::Float32, || deepseek_v3::load(&weights, config))
}

struct Prompt {
    ids: Vec<u32>,
    last_logits: Vec<f32>,
    greedy: Vec<u32>,
}

fn reference(dir: &Path) -> (Vec<Prompt>, f32) {
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let nums = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let prompts = j["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            ids: nums(&p["prompt_ids"]).iter().map(|&x| x as u32).collect(),
            last_logits: nums(&p["last_logits"]).iter().map(|&x| x as f32).collect(),
            greedy: nums(&p["greedy"]).iter().map(|&x| x as u32).collect(),
        })
        .collect();
    (prompts, j["min_top2_gap"].as_f64().unwrap() as f32)
}

/// Prefill then greedy decode (the default path: materialised prefill,
/// absorbed decode), against transformers' logits and tokens.
fn matches_transformers(name: &str) {
    let dir = tiny(name);
    let (prompts, gap) = reference(&dir);
    let mut model = load(&dir).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let (logits, tokens) = common::greedy(&mut model, &p.ids, p.greedy.len(), KvDtype::F32);
        let d = rel_diff(&logits, &p.last_logits);
        let abs = logits
            .iter()
            .zip(&p.last_logits)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{name} prompt {i}: rel diff {d:.2e}, max abs diff {abs:.2e} (min top-2 gap {gap:.3})"
        );
        assert!(d < LOGITS_TOL, "{name} prompt {i}: logits rel diff {d}");
        assert!(
            abs < gap / 2.0,
            "{name} prompt {i}: error {abs} vs top-2 gap {gap}"
        );
        assert_eq!(tokens, p.greedy, "{name} prompt {i}: greedy tokens");
    }
}

#[test]
fn v3_bf16_matches_transformers() {
    matches_transformers(V3_BF16);
}

#[test]
fn v3_fp8_block_scaled_matches_transformers_on_dequantized_weights() {
    matches_transformers(V3_FP8);
}

#[test]
fn v2_bf16_matches_transformers() {
    matches_transformers(V2_BF16);
}

/// Teacher-forced logits of a prompt and its reference continuation, fed
/// as a prefill of the prompt then one token at a time.
fn forced(model: &mut DeepseekV3, p: &Prompt) -> Vec<Vec<f32>> {
    let mut run = SoloRun::new(model, p.ids.len() + p.greedy.len(), KvDtype::F32);
    let mut out = vec![run.feed(&p.ids)];
    for &t in &p.greedy[..p.greedy.len() - 1] {
        out.push(run.feed(&[t]));
    }
    out
}

/// The absorbed form (W_UK in the query, attention over latent rows, W_UV
/// after) and the materialised one (per-head K/V from the latent rows)
/// compute the same function: agreement to f32 rounding (the same bound as
/// against transformers), at every position, prefill and decode, both
/// architectures.
#[test]
fn absorbed_and_materialized_attention_agree() {
    for name in [V3_BF16, V2_BF16] {
        let dir = tiny(name);
        let (prompts, _) = reference(&dir);
        let mut model = load(&dir).unwrap();
        model.set_attention_path(AttentionPath::Absorbed);
        let absorbed = forced(&mut model, &prompts[0]);
        model.set_attention_path(AttentionPath::Materialized);
        let materialized = forced(&mut model, &prompts[0]);
        let mut worst = 0f32;
        for (step, (a, m)) in absorbed.iter().zip(&materialized).enumerate() {
            let d = rel_diff(a, m);
            worst = worst.max(d);
            assert!(d < LOGITS_TOL, "{name} step {step}: rel diff {d}");
            assert_eq!(argmax(a), argmax(m), "{name} step {step}");
        }
        eprintln!(
            "{name}: absorbed vs materialised, worst rel diff {worst:.2e} over {} steps",
            absorbed.len()
        );
    }
}

/// One latent row per token and layer: (kv_lora_rank + qk_rope_head_dim)
/// elements, one head, no separate values.
#[test]
fn latent_cache_costs_one_row_per_token_and_layer() {
    let model = load(&tiny(V3_BF16)).unwrap();
    let ds = model.deepseek_config();
    let width = ds.kv_lora_rank + ds.qk_rope_head_dim;
    let layers = model.info().kv.layers.len();
    assert_eq!((width, layers), (64 + 16, 4));
    for dtype in [KvDtype::Bf16, KvDtype::F16, KvDtype::Fp8E4m3, KvDtype::F32] {
        assert_eq!(
            model.info().kv.bytes_per_token(dtype),
            layers * width * dtype.size()
        );
    }
    let cache = KvCache::new(&model.info().kv, 16, 8, KvDtype::Bf16).unwrap();
    for g in &cache.geometries {
        assert_eq!((g.num_kv_heads, g.k_dim, g.v_dim), (1, width, 0));
    }
}

/// A copy of a tiny checkpoint to break.
fn scratch_copy(name: &str, tag: &str) -> PathBuf {
    let src = tiny(name);
    let dir = std::env::temp_dir().join(format!("r1serve-ds-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    format!("{:#}", load(dir).err().expect("loading must fail"))
}

/// Rewrites the shard holding `name` through `edit` (remove or replace it).
fn edit_tensor(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shard = dir.join(index["weight_map"][name].as_str().unwrap());
    let bytes = std::fs::read(&shard).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&shard, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn a_missing_config_field_is_named() {
    let dir = scratch_copy(V3_BF16, "field");
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("kv_lora_rank");
    std::fs::write(&path, config.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("`kv_lora_rank`") && e.contains("config.json"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_expert_tensor_is_named() {
    let dir = scratch_copy(V3_BF16, "expert");
    let name = "model.layers.2.mlp.experts.5.up_proj.weight";
    edit_tensor(&dir, name, |t| t.retain(|(n, ..)| n != name));
    let e = load_err(&dir);
    assert!(e.contains(name) && e.contains("missing"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_block_scale_of_the_wrong_shape_is_named() {
    let dir = scratch_copy(V3_FP8, "scale");
    // q_b_proj is 4·48 × 96: one row of blocks of 128 × 128; two rows is wrong.
    let name = "model.layers.1.self_attn.q_b_proj.weight_scale_inv";
    edit_tensor(&dir, name, |t| {
        let s = t.iter_mut().find(|(n, ..)| n == name).unwrap();
        s.2 = vec![s.2[0] + 1, s.2[1]];
        s.3 = vec![0; s.2[0] * s.2[1] * 4];
    });
    let e = load_err(&dir);
    assert!(e.contains(name) && e.contains("expected F32"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Per-tensor FP8 (no block size) is a method r1serve does not implement.
#[test]
fn fp8_without_block_size_is_refused() {
    let dir = scratch_copy(V3_FP8, "noblock");
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["quantization_config"]
        .as_object_mut()
        .unwrap()
        .remove("weight_block_size");
    std::fs::write(&path, config.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("`fp8`") && e.contains("weight_block_size"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The server on the tiny V3: R1's chat template renders the prompt as
/// transformers' `apply_chat_template` did (same token count), greedy
/// decoding through the engine (latent paged cache, scheduler, sampler,
/// detokenizer) yields transformers' tokens, and the reasoning splitter
/// cuts them at R1's `<think>`: transformers' greedy continuation of this
/// prompt emits `<think>` as its second token, so the text after it is the
/// reasoning (unclosed, 24 tokens being too few for `</think>`) and what
/// came before it is dropped, as DeepSeek's R1 parsers do. The startup log
/// sizes the cache by latent rows and names the skipped MTP layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_serves_tiny_v3_with_r1_template_and_reasoning_split() {
    let dir = tiny(V3_BF16);
    let (prompts, _) = reference(&dir);
    let p = &prompts[0];
    let tok = r1serve::tokenizer::Tokenizer::from_hf_dir(&dir).unwrap();
    let id = |t: &str| tok.inner().token_to_id(t).unwrap();
    let open = p.greedy.iter().position(|&t| t == id("<think>"));
    let open = open.expect("the reference continuation opens <think>");
    let thought = &p.greedy[open + 1..];
    assert!(!thought.contains(&id("</think>")));
    // An f32 cache: f16 latent rows would move logits by ~1e-3, more than
    // some of the reference's top-2 gaps.
    let args = ["--max-model-len", "256", "--kv-cache-dtype", "f32"];
    let server = Server::start(V3_BF16, &args, None).await;
    let reply = server
        .post_ok(
            "/v1/chat/completions",
            &json!({
                "model": V3_BF16,
                "messages": [{"role": "user", "content": "What is 12 times 7?"}],
                "temperature": 0,
                "max_tokens": p.greedy.len(),
                "ignore_eos": true,
            }),
        )
        .await;
    let usage = &reply["usage"];
    assert_eq!(usage["prompt_tokens"], p.ids.len(), "{reply}");
    assert_eq!(usage["completion_tokens"], p.greedy.len(), "{reply}");
    assert_eq!(
        usage["completion_tokens_details"]["reasoning_tokens"],
        thought.len(),
        "{reply}"
    );
    let message = &reply["choices"][0]["message"];
    assert_eq!(
        message["reasoning_content"],
        tok.decode(thought, true).unwrap(),
        "{reply}"
    );
    assert!(message["content"].is_null(), "{reply}");
    // The pool is sized by the latent rows: 4 layers × (64 + 16) f32 values.
    let log = server.log();
    let per_token = 4 * (64 + 16) * 4;
    assert!(
        log.contains(&format!(
            "{per_token} bytes per token, {} tokens per GiB",
            (1 << 30) / per_token
        )),
        "{log}"
    );
    assert!(
        log.contains("skipping 1 multi-token-prediction layer"),
        "{log}"
    );
}

fn engine_config(cache_bytes: u64) -> EngineConfig {
    EngineConfig {
        kv_cache_memory: Some(cache_bytes),
        max_model_len: Some(256),
        // Several whole prompts per step; the chunked test sets its own.
        max_num_batched_tokens: Some(2048),
        ..Default::default()
    }
}

/// The tiny V3's latent block size in bytes, at the engine's default
/// 16-token blocks and cache type.
fn block_bytes(dir: &Path) -> usize {
    load(dir)
        .unwrap()
        .info()
        .kv
        .block_bytes(16, EngineConfig::default().kv_dtype)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Every sequence decodes the same tokens alone and in a batch of eight
/// (mixed prefill chunks and decodes, experts shared across sequences).
#[test]
fn engine_batch_invariance_on_tiny_v3() {
    let dir = tiny(V3_BF16);
    rt().block_on(async {
        let (alone_engine, tok) = start(&dir, engine_config(64 << 20));
        let lens = [5usize, 17, 33, 64, 100, 150, 180, 200];
        let prompts: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| text_prompt(&tok, n, i))
            .collect();
        let mut alone = Vec::new();
        for p in &prompts {
            alone.push(run(&alone_engine, p.clone(), greedy(40)).await.tokens[0].clone());
        }
        alone_engine.shutdown();
        let (h, _) = start(&dir, engine_config(64 << 20));
        let together = join_all(prompts.iter().map(|p| run(&h, p.clone(), greedy(40)))).await;
        for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(
                a, &t.tokens[0],
                "prompt {i} ({} tokens) differs in a batch",
                lens[i]
            );
        }
        let s = wait_idle(&h).await;
        assert_eq!(s.free_blocks, s.total_blocks);
        h.shutdown();
    });
}

/// A pool of latent blocks for two sequences forces preemption by
/// recompute; every request still decodes what it decodes unconstrained.
#[test]
fn engine_preemption_on_tiny_v3() {
    let dir = tiny(V3_BF16);
    rt().block_on(async {
        let (free, tok) = start(&dir, engine_config(64 << 20));
        let prompts: Vec<Vec<u32>> = (0..8).map(|i| text_prompt(&tok, 40 + 9 * i, i)).collect();
        let expected = join_all(prompts.iter().map(|p| run(&free, p.clone(), greedy(40)))).await;
        free.shutdown();
        let cfg = EngineConfig {
            kv_cache_memory: Some((2 * 10 * block_bytes(&dir)) as u64),
            max_model_len: Some(160),
            enable_prefix_caching: false,
            ..Default::default()
        };
        let (tight, _) = start(&dir, cfg);
        let got = join_all(prompts.iter().map(|p| run(&tight, p.clone(), greedy(40)))).await;
        for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
            assert_eq!(e.tokens, g.tokens, "request {i} changed under preemption");
        }
        let s = wait_idle(&tight).await;
        assert!(s.preemptions >= 1, "no preemption happened: {s:?}");
        assert_eq!(s.free_blocks, s.total_blocks);
        tight.shutdown();
    });
}

/// A shared prefix is served from cached latent blocks, with the same
/// tokens as a run that computes it.
#[test]
fn engine_prefix_cache_on_tiny_v3() {
    let dir = tiny(V3_BF16);
    rt().block_on(async {
        let (h, tok) = start(&dir, engine_config(64 << 20));
        let shared = text_prompt(&tok, 160, 42);
        let mut a = shared.clone();
        a.extend(text_prompt(&tok, 20, 1));
        let mut b = shared.clone();
        b.extend(text_prompt(&tok, 24, 2));
        run(&h, a, greedy(8)).await;
        let cached = run(&h, b.clone(), greedy(16)).await;
        assert!(cached.usage.cached_tokens >= 144, "{:?}", cached.usage);
        h.shutdown();
        let (nc, _) = start(
            &dir,
            EngineConfig {
                enable_prefix_caching: false,
                ..engine_config(64 << 20)
            },
        );
        let uncached = run(&nc, b, greedy(16)).await;
        assert_eq!(uncached.usage.cached_tokens, 0);
        assert_eq!(cached.tokens, uncached.tokens);
        nc.shutdown();
    });
}

/// A prompt prefilled in chunks of 32 tokens (each chunk materialising keys
/// and values from the latent rows of everything cached before it) decodes
/// the same tokens as one prefill of the whole prompt.
#[test]
fn engine_chunked_prefill_on_tiny_v3() {
    let dir = tiny(V3_BF16);
    rt().block_on(async {
        let (whole, tok) = start(&dir, engine_config(64 << 20));
        let prompt = text_prompt(&tok, 230, 9);
        let expected = run(&whole, prompt.clone(), greedy(16)).await;
        whole.shutdown();
        let (chunked, _) = start(
            &dir,
            EngineConfig {
                max_num_batched_tokens: Some(32),
                enable_prefix_caching: false,
                ..engine_config(64 << 20)
            },
        );
        let got = run(&chunked, prompt.clone(), greedy(16)).await;
        assert!(prompt.len() > 3 * 32, "{} tokens", prompt.len());
        assert_eq!(expected.tokens, got.tokens);
        chunked.shutdown();
    });
}
