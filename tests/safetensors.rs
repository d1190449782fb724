//! The safetensors path on real weights, and loading errors.
//!
//! A helper dequantizes the Qwen2.5-0.5B GGUF into an HF directory (config,
//! tokenizer, two bf16 shards with an index); r1serve must produce the same
//! greedy tokens as candle-transformers' `qwen2` on that directory. Broken
//! checkpoints must give errors naming the file and the problem.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::{argmax, greedy};
use r1serve::kv_cache::storage::KvDtype;
use r1serve::model::load::{load, LoadOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn hf_dir() -> PathBuf {
    common::hf_dir::qwen05_hf_dir(&common::qwen05(), |dir| {
        let path = common::qwen05();
        let file = r1serve::model::weights::GgufFile::open(&path).unwrap();
        let tok = r1serve::tokenizer::Tokenizer::from_gguf(&file.content, &path).unwrap();
        tok.inner().save(dir.join("tokenizer.json"), false).unwrap();
        let config = serde_json::json!({
            "bos_token": null,
            "eos_token": tok.eos_token(),
            "add_bos_token": false,
            "chat_template": tok.chat_template(),
        });
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    })
}

#[test]
fn safetensors_qwen2_matches_candle_transformers_qwen2() {
    let dir = hf_dir();
    let mut m = load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(m.default_temperature, Some(0.7));
    assert!(m.tokenizer.eos_ids().contains(&151643));
    let prompts = common::chat_prompts(&common::qwen05());
    let cfg: candle_transformers::models::qwen2::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut shards: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    shards.sort();
    // SAFETY: test-owned files, not modified while mapped.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&shards, DType::F32, &Device::Cpu).unwrap() };
    let mut reference =
        candle_transformers::models::qwen2::ModelForCausalLM::new(&cfg, vb).unwrap();
    for prompt in prompts.iter().take(2) {
        reference.clear_kv_cache();
        let input = |t: &[u32]| Tensor::new(t, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let first = logits(reference.forward(&input(prompt), 0).unwrap());
        let mut want = vec![argmax(&first)];
        while want.len() < 16 {
            let pos = prompt.len() + want.len() - 1;
            let l = logits(
                reference
                    .forward(&input(&[*want.last().unwrap()]), pos)
                    .unwrap(),
            );
            want.push(argmax(&l));
        }
        let (ours_first, got) = greedy(m.model.as_mut(), prompt, 16, KvDtype::F32);
        assert_eq!(
            got, want,
            "greedy tokens differ from candle-transformers qwen2"
        );
        assert!(common::rel_diff(&ours_first, &first) < 1e-3);
    }
}

fn tiny_dir(name: &str, config: serde_json::Value, tensors: &[(&str, Vec<usize>)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r1serve-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, s)| {
            (
                n.to_string(),
                Tensor::zeros(s.as_slice(), DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
    dir
}

fn tiny_config(arch: &str) -> serde_json::Value {
    serde_json::json!({
        "architectures": [arch], "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "vocab_size": 32, "max_position_embeddings": 64, "tie_word_embeddings": true
    })
}

fn tiny_tensors() -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("model.embed_tokens.weight", vec![32, 8]),
        ("model.norm.weight", vec![8]),
        ("model.layers.0.input_layernorm.weight", vec![8]),
        ("model.layers.0.post_attention_layernorm.weight", vec![8]),
        ("model.layers.0.self_attn.q_proj.weight", vec![8, 8]),
        ("model.layers.0.self_attn.k_proj.weight", vec![4, 8]),
        ("model.layers.0.self_attn.v_proj.weight", vec![4, 8]),
        ("model.layers.0.self_attn.o_proj.weight", vec![8, 8]),
        ("model.layers.0.mlp.gate_proj.weight", vec![16, 8]),
        ("model.layers.0.mlp.up_proj.weight", vec![16, 8]),
        ("model.layers.0.mlp.down_proj.weight", vec![8, 16]),
    ]
}

fn load_err(dir: &Path) -> String {
    match r1serve::model::source::resolve(dir.to_str().unwrap(), None)
        .and_then(|s| r1serve::model::open_weights(&s))
        .and_then(|(w, c)| r1serve::model::build(&w, c))
    {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn tiny_llama_directory_loads() {
    let dir = tiny_dir("ok", tiny_config("LlamaForCausalLM"), &tiny_tensors());
    let src = r1serve::model::source::resolve(dir.to_str().unwrap(), None).unwrap();
    let (w, c) = r1serve::model::open_weights(&src).unwrap();
    assert!(r1serve::model::build(&w, c).is_ok());
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let mut t = tiny_tensors();
    t.retain(|(n, _)| !n.ends_with("o_proj.weight"));
    let dir = tiny_dir("missing", tiny_config("LlamaForCausalLM"), &t);
    let e = load_err(&dir);
    assert!(
        e.contains("o_proj.weight") && e.contains("missing") && e.contains(dir.to_str().unwrap()),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_file_tensor_and_shapes() {
    let mut t = tiny_tensors();
    t[4].1 = vec![8, 7];
    let dir = tiny_dir("shape", tiny_config("LlamaForCausalLM"), &t);
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("[8, 7]") && e.contains("[8, 8]"),
        "{e}"
    );
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tiny_dir("arch", tiny_config("MambaForCausalLM"), &tiny_tensors());
    let e = load_err(&dir);
    assert!(
        e.contains("MambaForCausalLM") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn missing_tokenizer_is_named() {
    let dir = tiny_dir("tok", tiny_config("LlamaForCausalLM"), &tiny_tensors());
    let e = match load(dir.to_str().unwrap(), &LoadOptions::default()) {
        Ok(_) => panic!("loaded without a tokenizer"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[test]
fn truncated_gguf_is_named() {
    let src = common::smollm2();
    let dst = std::env::temp_dir().join(format!("r1serve-trunc-{}.gguf", std::process::id()));
    let bytes = std::fs::read(&src).unwrap();
    std::fs::write(&dst, &bytes[..bytes.len() / 2]).unwrap();
    let e = match load(dst.to_str().unwrap(), &LoadOptions::default()) {
        Ok(_) => panic!("truncated file loaded"),
        Err(e) => format!("{e:#}"),
    };
    std::fs::remove_file(&dst).unwrap();
    assert!(
        e.contains("truncated") && e.contains(dst.to_str().unwrap()),
        "{e}"
    );
    // A header cut short is also an error, not a panic.
    std::fs::write(&dst, &bytes[..1000]).unwrap();
    assert!(load(dst.to_str().unwrap(), &LoadOptions::default()).is_err());
    std::fs::remove_file(&dst).unwrap();
}

#[test]
fn unsupported_gguf_architecture_is_named() {
    // Rewrite general.architecture of the SmolLM2 header to an unsupported one.
    let src = common::smollm2();
    let bytes = std::fs::read(&src).unwrap();
    let needle = b"\x05\x00\x00\x00\x00\x00\x00\x00llama";
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("arch string");
    let mut patched = bytes.clone();
    patched[pos + 8..pos + 13].copy_from_slice(b"mamba");
    let dst = std::env::temp_dir().join(format!("r1serve-arch-{}.gguf", std::process::id()));
    std::fs::write(&dst, &patched).unwrap();
    let e = match load(dst.to_str().unwrap(), &LoadOptions::default()) {
        Ok(_) => panic!("unsupported architecture loaded"),
        Err(e) => format!("{e:#}"),
    };
    std::fs::remove_file(&dst).unwrap();
    assert!(
        e.contains("mamba") && e.contains("unsupported architecture"),
        "{e}"
    );
}

#[test]
fn offline_hub_cache_resolves_repo_ids() {
    // A pre-populated HF cache: models--org--name/{refs/main, snapshots/<rev>/...}.
    let home = std::env::temp_dir().join(format!("r1serve-hfhome-{}", std::process::id()));
    let repo = home.join("hub/models--test-org--tiny-llama");
    let snap = repo.join("snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(
        repo.join("refs/main"),
        "0123456789abcdef0123456789abcdef01234567",
    )
    .unwrap();
    let dir = tiny_dir("hub", tiny_config("LlamaForCausalLM"), &tiny_tensors());
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(dir.join(f), snap.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(hf_dir().join(f), snap.join(f)).unwrap();
    }
    let out = std::process::Command::new("env")
        .arg(format!("HF_HOME={}", home.display()))
        .arg("HF_HUB_OFFLINE=1")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "offline_resolve_child",
            "--nocapture",
            "--include-ignored",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&home).unwrap();
}

/// Runs inside the child process of `offline_hub_cache_resolves_repo_ids`,
/// where HF_HOME and HF_HUB_OFFLINE are set.
#[test]
#[ignore = "run by offline_hub_cache_resolves_repo_ids"]
fn offline_resolve_child() {
    let src = r1serve::model::source::resolve("test-org/tiny-llama", None).unwrap();
    let r1serve::model::source::ResolvedSource::HfDir(dir) = src else {
        panic!("expected a directory");
    };
    assert!(dir.join("config.json").exists());
    let missing = r1serve::model::source::resolve("test-org/absent", None).unwrap_err();
    assert!(
        format!("{missing:#}").contains("HF_HUB_OFFLINE"),
        "{missing:#}"
    );
}
