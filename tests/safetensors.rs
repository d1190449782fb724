//! The safetensors path on real weights, 16-bit weights kept as stored, and
//! loading errors.
//!
//! A helper dequantizes the Qwen2.5-0.5B GGUF into an HF directory (config,
//! tokenizer, two bf16 shards with an index); r1serve must produce the same
//! greedy tokens as candle-transformers' `qwen2` on that directory. Tiny
//! checkpoints written here check that bf16/f16 tensors (safetensors, and
//! GGUF F16/BF16) compute what their f32 twins compute, and that broken or
//! quantized checkpoints give errors naming the file and the problem.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::{argmax, greedy, SoloRun};
use half::{bf16, f16};
use r1serve::kernels::cpu::Cpu;
use r1serve::kernels::dense::{with_precision, Precision};
use r1serve::kernels::device::DeviceOptions;
use r1serve::kernels::linear::Embedding;
use r1serve::kv_cache::storage::KvDtype;
use r1serve::model::config::Arch;
use r1serve::model::decoder::Decoder;
use r1serve::model::load::{load, LoadOptions, LoadedModel};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn hf_dir() -> PathBuf {
    common::hf_dir::qwen05_bf16()
}

/// `--dtype float32`: f32 activations on every CPU, as candle-transformers
/// computes below (the default rounds them to bf16 on CPUs with
/// AVX512_BF16, an error the kernel tests bound).
fn float32() -> LoadOptions {
    LoadOptions {
        device: DeviceOptions {
            precision: Precision::Float32,
            ..DeviceOptions::default()
        },
        ..LoadOptions::default()
    }
}

#[test]
fn safetensors_qwen2_matches_candle_transformers_qwen2() {
    let dir = hf_dir();
    let mut m = load(dir.to_str().unwrap(), &float32()).unwrap();
    assert_eq!(m.generation_config.temperature, Some(0.7));
    assert!(m.tokenizer.eos_ids().contains(&151643));
    same_greedy_tokens_as_candle_qwen2(&mut m, &dir, &common::qwen05());
}

#[test]
fn safetensors_qwen2_1_5b_matches_candle_transformers_qwen2() {
    let dir = common::hf_dir::qwen15_bf16();
    let mut m = load(dir.to_str().unwrap(), &float32()).unwrap();
    same_greedy_tokens_as_candle_qwen2(&mut m, &dir, &common::qwen15());
}

/// 5 chat prompts × 32 greedy tokens of `m`, loaded from the bf16 directory `dir`,
/// equal candle-transformers' `qwen2` on the same shards widened to f32 (bf16
/// weights, f32 compute on both sides). First-step logits agree to 1e-3
/// relative: the two sum dot products of ≤ 8960 terms in different orders,
/// each off by ≲ √8960 · 2⁻²⁴ ≈ 6e-6 relative, compounded over ≤ 28 layers.
fn same_greedy_tokens_as_candle_qwen2(m: &mut LoadedModel, dir: &Path, gguf: &Path) {
    let prompts = common::chat_prompts(gguf);
    let cfg: candle_transformers::models::qwen2::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
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
    assert_eq!(prompts.len(), 5);
    for prompt in &prompts {
        reference.clear_kv_cache();
        let input = |t: &[u32]| Tensor::new(t, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let first = logits(reference.forward(&input(prompt), 0).unwrap());
        let mut want = vec![argmax(&first)];
        while want.len() < 32 {
            let pos = prompt.len() + want.len() - 1;
            let l = logits(
                reference
                    .forward(&input(&[*want.last().unwrap()]), pos)
                    .unwrap(),
            );
            want.push(argmax(&l));
        }
        let (ours_first, got) = greedy(m.model.as_mut(), prompt, 32, KvDtype::F32);
        assert_eq!(
            got,
            want,
            "{}: greedy tokens differ from candle-transformers qwen2",
            dir.display()
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
fn impossible_sizes_are_named() {
    for (key, value, words) in [
        ("num_attention_heads", 0, "attention head count is 0"),
        ("hidden_size", 0, "hidden size is 0"),
        ("num_key_value_heads", 3, "not a multiple of 3 KV heads"),
        ("head_dim", 5, "head width 5 is odd"),
    ] {
        let mut config = tiny_config("LlamaForCausalLM");
        config[key] = value.into();
        let dir = tiny_dir(&format!("size-{key}"), config, &tiny_tensors());
        let e = load_err(&dir);
        assert!(e.contains(words) && e.contains("config.json"), "{key}: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
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

/// One tensor of a hand-written safetensors file: name, dtype as the format
/// spells it, shape, little-endian data.
type RawEntry = (String, &'static str, Vec<usize>, Vec<u8>);

/// A safetensors file written by hand (length, JSON header, data), so tests
/// can store dtypes and defects that no library writes.
fn safetensors_bytes(tensors: &[RawEntry]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let end = data.len() + bytes.len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), end]}),
        );
        data.extend_from_slice(bytes);
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    out
}

/// Multiples of 1/128 in [-1, 1]: exact in bf16, f16 and f32 alike, so a
/// checkpoint stored in any of them holds the same numbers.
fn exact_values(n: usize, seed: usize) -> Vec<f32> {
    let mut x = seed as u64 * 2654435761 + 12345;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % 257) as f32 / 128.0 - 1.0
        })
        .collect()
}

/// Encodes `values` as safetensors `dtype`.
fn encode(dtype: &str, values: &[f32]) -> Vec<u8> {
    match dtype {
        "F32" => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        "BF16" => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        "F16" => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        other => panic!("no encoder for {other}"),
    }
}

/// The tiny Llama's tensors with deterministic values, every one stored as `dtype`.
fn tiny_entries(dtype: &'static str) -> Vec<RawEntry> {
    tiny_tensors()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let values = exact_values(shape.iter().product(), i);
            (name.to_string(), dtype, shape, encode(dtype, &values))
        })
        .collect()
}

/// A fresh directory holding `config` and, as `model.safetensors`, `file`.
fn raw_dir(name: &str, config: &serde_json::Value, file: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r1serve-raw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    dir
}

/// The model in `dir`, with f32 activations (the 16-bit weights' numbers
/// are compared with their f32 twins').
fn build_dir(dir: &Path) -> Decoder<Cpu> {
    let src = r1serve::model::source::resolve(dir.to_str().unwrap(), None).unwrap();
    let (w, c) = r1serve::model::open_weights(&src).unwrap();
    with_precision(Precision::Float32, || match c.arch {
        Arch::Llama => r1serve::model::llama::load(Cpu, &w, c).unwrap(),
        Arch::Qwen2 => r1serve::model::qwen2::load(Cpu, &w, c).unwrap(),
        other => panic!("{other:?} is not a decoder-stack model"),
    })
}

/// Logits after each of a few tokens fed one step at a time (prefill of
/// three, then single tokens), the same inputs for every model.
fn teacher_forced_logits(model: &mut Decoder<Cpu>) -> Vec<Vec<f32>> {
    let mut run = SoloRun::new(model, 16, KvDtype::F32);
    let mut out = vec![run.feed(&[1, 7, 30])];
    for t in [4, 19, 0, 31] {
        out.push(run.feed(&[t]));
    }
    out
}

// The 16-bit and f32 models hold the same numbers (see `exact_values`), so
// every product is the same and only the order of summation may differ: a
// dot product of at most 16 terms of size ≤ 1 is then off by ≤ 16·2⁻²⁴
// relative, ~1e-6. 1e-5 leaves room for that error to pass through the
// layer's norms and attention.
const SAME_NUMBERS_TOL: f32 = 1e-5;

#[test]
fn bf16_and_f16_safetensors_stay_16_bit_and_compute_like_f32() {
    let config = tiny_config("LlamaForCausalLM");
    let f32_dir = raw_dir("f32", &config, &safetensors_bytes(&tiny_entries("F32")));
    let mut reference = build_dir(&f32_dir);
    assert!(matches!(reference.embedding(), Embedding::Dense { .. }));
    let want = teacher_forced_logits(&mut reference);
    let table = exact_values(32 * 8, 0);
    for dtype in ["BF16", "F16"] {
        let dir = raw_dir(dtype, &config, &safetensors_bytes(&tiny_entries(dtype)));
        let mut m = build_dir(&dir);
        assert!(
            matches!(m.embedding(), Embedding::Half { .. }),
            "{dtype} embedding was not kept 16-bit"
        );
        let rows = m.embedding().forward(&[3, 31]).unwrap();
        assert_eq!(rows[..8], table[3 * 8..4 * 8], "{dtype} row 3");
        assert_eq!(rows[8..], table[31 * 8..], "{dtype} row 31");
        assert!(
            m.embedding().forward(&[32]).is_err(),
            "id past the vocabulary"
        );
        for (step, (got, want)) in teacher_forced_logits(&mut m).iter().zip(&want).enumerate() {
            let d = common::rel_diff(got, want);
            assert!(d < SAME_NUMBERS_TOL, "{dtype} step {step}: rel diff {d}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::remove_dir_all(&f32_dir).unwrap();
}

/// A tiny Llama GGUF (tied embeddings) with every tensor stored as `dtype`.
fn tiny_gguf(path: &Path, dtype: candle_core::quantized::GgmlDType) {
    use candle_core::quantized::{gguf_file::Value, QTensor};
    let tensors: Vec<(String, QTensor)> = tiny_tensors()
        .into_iter()
        .enumerate()
        .map(|(i, (hf, shape))| {
            let values = exact_values(shape.iter().product(), i);
            let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).unwrap();
            (gguf_name(hf), QTensor::quantize(&t, dtype).unwrap())
        })
        .collect();
    let meta = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(8)),
        ("llama.feed_forward_length", Value::U32(16)),
        ("llama.block_count", Value::U32(1)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.vocab_size", Value::U32(32)),
        ("llama.context_length", Value::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
    ];
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &meta, &tensors).unwrap();
}

/// The GGUF name of a tiny-model tensor (the inverse of `hf_name`).
fn gguf_name(hf: &str) -> String {
    let names = [
        "token_embd.weight",
        "output_norm.weight",
        "blk.0.attn_norm.weight",
        "blk.0.ffn_norm.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_v.weight",
        "blk.0.attn_output.weight",
        "blk.0.ffn_gate.weight",
        "blk.0.ffn_up.weight",
        "blk.0.ffn_down.weight",
    ];
    names
        .iter()
        .find(|g| r1serve::model::weights::hf_name(g) == hf)
        .unwrap()
        .to_string()
}

#[test]
fn gguf_f16_and_bf16_tensors_stay_16_bit_and_compute_like_f32() {
    use candle_core::quantized::GgmlDType;
    let dir = std::env::temp_dir().join(format!("r1serve-gguf16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let load_gguf = |dtype: GgmlDType| {
        let path = dir.join(format!("tiny-{dtype:?}.gguf"));
        tiny_gguf(&path, dtype);
        build_dir(&path)
    };
    let mut reference = load_gguf(GgmlDType::F32);
    let want = teacher_forced_logits(&mut reference);
    let table = exact_values(32 * 8, 0);
    for dtype in [GgmlDType::F16, GgmlDType::BF16] {
        let mut m = load_gguf(dtype);
        assert!(
            matches!(m.embedding(), Embedding::Half { .. }),
            "GGUF {dtype:?} embedding was not kept 16-bit"
        );
        assert_eq!(m.embedding().forward(&[5]).unwrap(), table[5 * 8..6 * 8]);
        for (step, (got, want)) in teacher_forced_logits(&mut m).iter().zip(&want).enumerate() {
            let d = common::rel_diff(got, want);
            assert!(
                d < SAME_NUMBERS_TOL,
                "GGUF {dtype:?} step {step}: rel diff {d}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quantization_configs_are_refused_by_method() {
    let file = safetensors_bytes(&tiny_entries("BF16"));
    for method in ["fp8", "gptq", "awq", "bitsandbytes", "compressed-tensors"] {
        let mut config = tiny_config("Qwen2ForCausalLM");
        config["quantization_config"] = serde_json::json!({"quant_method": method, "bits": 4});
        let dir = raw_dir(&format!("quant-{method}"), &config, &file);
        let e = load_err(&dir);
        assert!(
            e.contains(&format!("`{method}`"))
                && e.contains(dir.join("config.json").to_str().unwrap())
                && e.contains("does not implement"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let mut config = tiny_config("Qwen2ForCausalLM");
    config["quantization_config"] = serde_json::json!({"bits": 4});
    let dir = raw_dir("quant-unnamed", &config, &file);
    let e = load_err(&dir);
    assert!(
        e.contains("quant_method") && e.contains("config.json"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn f8_tensors_without_a_method_are_refused() {
    for dtype in ["F8_E4M3", "F8_E5M2"] {
        let mut t = tiny_entries("BF16");
        let q = &mut t[4];
        assert!(q.0.ends_with("q_proj.weight"));
        q.1 = dtype;
        q.3 = vec![0x38; 64];
        let dir = raw_dir(
            dtype,
            &tiny_config("LlamaForCausalLM"),
            &safetensors_bytes(&t),
        );
        let e = load_err(&dir);
        assert!(
            e.contains("model.layers.0.self_attn.q_proj.weight")
                && e.contains(dtype)
                && e.contains(dir.join("model.safetensors").to_str().unwrap()),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn integer_weights_are_refused_by_name_and_dtype() {
    let mut t = tiny_entries("BF16");
    let down = &mut t[10];
    assert!(down.0.ends_with("down_proj.weight"));
    down.1 = "I8";
    down.3 = vec![1; 128];
    let dir = raw_dir(
        "i8",
        &tiny_config("LlamaForCausalLM"),
        &safetensors_bytes(&t),
    );
    let e = load_err(&dir);
    assert!(
        e.contains("model.layers.0.mlp.down_proj.weight")
            && e.contains("I8")
            && e.contains(dir.join("model.safetensors").to_str().unwrap()),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shard_missing_from_the_index_is_named() {
    let t = tiny_entries("BF16");
    let (first, second) = t.split_at(5);
    let dir = raw_dir("shards", &tiny_config("LlamaForCausalLM"), &[]);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut map = serde_json::Map::new();
    for (part, file) in [first, second].iter().zip(names) {
        for (name, ..) in part.iter() {
            map.insert(name.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join(names[0]), safetensors_bytes(first)).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains(dir.join(names[1]).to_str().unwrap()) && e.contains("missing"),
        "{e}"
    );
    // With both shards present the same directory loads.
    std::fs::write(dir.join(names[1]), safetensors_bytes(second)).unwrap();
    build_dir(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_safetensors_are_named() {
    let whole = safetensors_bytes(&tiny_entries("BF16"));
    let header_end = 8 + u64::from_le_bytes(whole[..8].try_into().unwrap()) as usize;
    // Cut in the data, in the JSON header, in the length prefix, and empty.
    for (case, len) in [
        ("data", whole.len() - 10),
        ("header", header_end / 2),
        ("prefix", 5),
        ("empty", 0),
    ] {
        let dir = raw_dir(
            &format!("trunc-{case}"),
            &tiny_config("LlamaForCausalLM"),
            &whole[..len],
        );
        let e = load_err(&dir);
        let file = dir.join("model.safetensors");
        assert!(
            e.contains(file.to_str().unwrap()) && e.contains("truncated"),
            "{case}: {e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // Bytes after the last tensor are reported as such.
    let mut padded = whole.clone();
    padded.extend_from_slice(&[0; 7]);
    let dir = raw_dir("trailing", &tiny_config("LlamaForCausalLM"), &padded);
    let e = load_err(&dir);
    assert!(e.contains("7 bytes follow the last tensor"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn garbage_safetensors_headers_are_errors() {
    let with_header = |json: &[u8]| {
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(json);
        f
    };
    let cases: [(&str, Vec<u8>); 5] = [
        ("not-json", with_header(b"this is not json at all")),
        ("not-utf8", with_header(&[0xff, 0xfe, 0x7b, 0x7d])),
        ("huge-length", u64::MAX.to_le_bytes().repeat(4)),
        (
            "wrong-size",
            with_header(br#"{"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,6]}}"#),
        ),
        (
            "unknown-dtype",
            with_header(br#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}}"#),
        ),
    ];
    for (case, file) in cases {
        let dir = raw_dir(
            &format!("garbage-{case}"),
            &tiny_config("LlamaForCausalLM"),
            &file,
        );
        let e = load_err(&dir);
        assert!(
            e.contains(dir.join("model.safetensors").to_str().unwrap())
                && e.contains("not a valid safetensors file"),
            "{case}: {e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
