//! GGUF `deepseek2` (llama.cpp's conversion of DeepSeek-V2/V3/R1) against
//! Hugging Face transformers: the tiny checkpoints of
//! `models/deepseek/gen_tiny.py`, converted by llama.cpp's own
//! `convert_hf_to_gguf.py` (`models/deepseek/gen_gguf.py`, run by
//! `models/fetch.sh`) to F32, F16 and Q8_0 — split `attn_k_b`/`attn_v_b`,
//! 3-D expert tensors, shared experts, `exp_probs_b`, YaRN and routing
//! metadata — and their tokenizers (`deepseek-v3`, `deepseek-llm`
//! pre-tokenizers) against transformers' token ids.
//!
//! Tolerances. F32 holds the checkpoint's bf16 values exactly, so the bound is
//! `tests/deepseek_v3.rs`'s (1e-4 of the largest logit: f32 rounding in a
//! different order, ~1e-5 at most). F16 holds them exactly too except below
//! f16's normal range (|w| < 2⁻¹⁴), where at most 2⁻²⁵ is lost per weight, far
//! under f32 rounding of the products; the same bound applies. Q8_0 rounds
//! each weight to 8 bits of its 32-block's scale and r1serve's kernels quantize
//! activations to 8 bits too: the drift `tests/common/parity.rs` accepts for
//! quantized GGUF models, 8% of the largest logit, bounds it (a wrong kernel
//! or layout differs by order 1).

mod common;

use candle_core::quantized::gguf_file;
use common::{greedy, models_dir, rel_diff};
use r1serve::kv_cache::storage::KvDtype;
use r1serve::model::deepseek_v3::{self, DeepseekV3};
use r1serve::model::{open_weights, source::resolve};
use r1serve::tokenizer::{ChatTemplate, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};

const V3: &str = "tiny-deepseek-v3-bf16";
const V2: &str = "tiny-deepseek-v2-bf16";
const EXACT_TOL: f32 = 1e-4;
const Q8_DRIFT: f32 = 0.08;

fn gguf(name: &str, kind: &str) -> PathBuf {
    let path = models_dir().join(format!("{name}.{kind}.gguf"));
    assert!(
        path.is_file(),
        "{} missing: run models/fetch.sh first (models/deepseek/gen_gguf.py converts the tiny \
         DeepSeek checkpoints with llama.cpp's convert_hf_to_gguf.py)",
        path.display()
    );
    path
}

fn load(path: &Path) -> anyhow::Result<DeepseekV3> {
    let (weights, config) = open_weights(&resolve(path.to_str().unwrap(), None)?)?;
    deepseek_v3::load(&weights, config)
}

struct Prompt {
    kind: String,
    text: String,
    ids: Vec<u32>,
    last_logits: Vec<f32>,
    greedy: Vec<u32>,
}

fn reference(name: &str) -> Vec<Prompt> {
    let path = models_dir().join(name).join("reference.json");
    let j: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let nums = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    j["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            kind: p["kind"].as_str().unwrap().to_string(),
            text: p["text"].as_str().unwrap().to_string(),
            ids: nums(&p["prompt_ids"]).iter().map(|&x| x as u32).collect(),
            last_logits: nums(&p["last_logits"]).iter().map(|&x| x as f32).collect(),
            greedy: nums(&p["greedy"]).iter().map(|&x| x as u32).collect(),
        })
        .collect()
}

/// Prefill and greedy decode of every reference prompt; the logits within
/// `tol` of transformers', and, when `same_tokens`, its 24 greedy tokens.
fn matches_transformers(name: &str, kind: &str, tol: f32, same_tokens: bool) {
    let mut model = load(&gguf(name, kind)).unwrap();
    for (i, p) in reference(name).iter().enumerate() {
        let (logits, tokens) = greedy(&mut model, &p.ids, p.greedy.len(), KvDtype::F32);
        let d = rel_diff(&logits, &p.last_logits);
        let same = tokens
            .iter()
            .zip(&p.greedy)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{name}.{kind} prompt {i}: logits rel diff {d:.2e}, first {same} of {} tokens equal",
            p.greedy.len()
        );
        assert!(d < tol, "{name}.{kind} prompt {i}: logits rel diff {d}");
        if same_tokens {
            assert_eq!(tokens, p.greedy, "{name}.{kind} prompt {i}: greedy tokens");
        }
    }
}

#[test]
fn v3_gguf_f32_matches_transformers() {
    matches_transformers(V3, "f32", EXACT_TOL, true);
}

#[test]
fn v3_gguf_f16_matches_transformers() {
    matches_transformers(V3, "f16", EXACT_TOL, true);
}

#[test]
fn v3_gguf_q8_0_stays_within_quantization_drift() {
    matches_transformers(V3, "q8_0", Q8_DRIFT, false);
}

#[test]
fn v2_gguf_f32_matches_transformers() {
    matches_transformers(V2, "f32", EXACT_TOL, true);
}

/// The GGUF header's hyper-parameters are the HF config's: MLA widths from
/// the `_mla` keys, routing (sigmoid, noaux_tc, 4 groups of which 2 kept,
/// normalised, × 2.5) and YaRN.
#[test]
fn gguf_metadata_reads_as_the_hf_config() {
    for name in [V3, V2] {
        let (_, from_gguf) =
            open_weights(&resolve(gguf(name, "f32").to_str().unwrap(), None).unwrap()).unwrap();
        let dir = models_dir().join(name);
        let (_, from_hf) = open_weights(&resolve(dir.to_str().unwrap(), None).unwrap()).unwrap();
        let (g, h) = (from_gguf.deepseek.unwrap(), from_hf.deepseek.unwrap());
        // YaRN's mscale travels as an f32 (`0.1 · mscale_all_dim`): equal
        // to f32 rounding.
        if let (Some(gy), Some(hy)) = (g.yarn, h.yarn) {
            assert!(
                (gy.mscale_all_dim - hy.mscale_all_dim).abs() < 1e-6,
                "{name}"
            );
            assert!((gy.mscale - hy.mscale).abs() < 1e-6, "{name}");
        }
        // The converter drops the MTP layer, and with it its count.
        let h = r1serve::model::config::DeepseekConfig {
            num_nextn_predict_layers: 0,
            yarn: g.yarn,
            ..*h
        };
        assert_eq!(g.yarn.is_some(), name == V3, "{name}");
        assert_eq!(*g, h, "{name}");
        assert_eq!(from_gguf.arch, from_hf.arch, "{name}");
        assert_eq!(from_gguf.rope_theta, from_hf.rope_theta, "{name}");
    }
}

fn gguf_tokenizer(path: &Path) -> Tokenizer {
    let file = r1serve::model::weights::GgufFile::open(path).unwrap();
    Tokenizer::from_gguf(&file.content, path).unwrap()
}

/// The GGUF tokenizer (pre-tokenizer `deepseek-v3` for V3, `deepseek-llm`
/// for V2, chosen from the header) renders R1's template and encodes the
/// reference prompts to transformers' ids, and splits text with digits,
/// CJK, punctuation and line breaks exactly as the HF `tokenizer.json` does.
#[test]
fn gguf_tokenizers_encode_as_transformers() {
    let samples = [
        "12345678 is 1,234,567.8; 2024-11-30!",
        "你好世界 and こんにちは, カタカナ\n\n  indented\ttabs  \r\n",
        "def add(a, b):\n    return a+b  # 'quoted' \"double\"",
        "µ-Ωmega Straße naïve (résumé) ...!!! ---",
    ];
    for (name, pre) in [(V3, "deepseek-v3"), (V2, "deepseek-llm")] {
        let path = gguf(name, "f32");
        let file = r1serve::model::weights::GgufFile::open(&path).unwrap();
        assert_eq!(file.meta_str("tokenizer.ggml.pre"), Some(pre));
        let tok = gguf_tokenizer(&path);
        let template = ChatTemplate::from_tokenizer(&tok).unwrap();
        for p in reference(name) {
            let ids = if p.kind == "chat" {
                let messages = serde_json::json!([{"role": "user", "content": p.text}]);
                let text = template
                    .render(&messages, true, None, &serde_json::Map::new())
                    .unwrap();
                tok.encode(&text, false).unwrap()
            } else {
                tok.encode(&p.text, true).unwrap()
            };
            assert_eq!(ids, p.ids, "{name}: {:?}", p.text);
        }
        let hf = Tokenizer::from_hf_dir(&models_dir().join(name)).unwrap();
        for s in samples {
            assert_eq!(
                tok.encode(s, false).unwrap(),
                hf.encode(s, false).unwrap(),
                "{name}: {s:?}"
            );
        }
    }
}

/// A GGUF without one of its expert tensors is refused with the file and
/// the tensor named.
#[test]
fn a_missing_expert_tensor_in_a_gguf_is_named() {
    let src = gguf(V3, "q8_0");
    let mut f = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let gone = "blk.2.ffn_up_exps.weight";
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = content
        .tensor_infos
        .keys()
        .filter(|n| n.as_str() != gone)
        .map(|n| {
            let t = content
                .tensor(&mut f, n, &candle_core::Device::Cpu)
                .unwrap();
            (n.clone(), t)
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("r1serve-dsgguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("broken.gguf");
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut std::fs::File::create(&out).unwrap(), &metadata, &refs).unwrap();
    let e = format!("{:#}", load(&out).err().expect("loading must fail"));
    assert!(
        e.contains(gone) && e.contains("missing") && e.contains("broken.gguf"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
