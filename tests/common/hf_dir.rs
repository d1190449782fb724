//! Builds a Hugging Face-layout directory (config.json, two safetensors
//! shards with an index, tokenizer files) from a Qwen2.5 GGUF (0.5B or
//! 1.5B) by dequantizing every tensor to bf16, so the safetensors path is
//! tested on real weights. Cached next to the checkpoints; rebuilt when
//! missing. Built in a scratch directory and renamed into place, so no test
//! ever maps a shard that another one is still writing.

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use r1serve::model::weights::hf_name;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The bf16 Qwen2.5-Coder-0.5B directory with its tokenizer files, built on
/// first use.
pub fn qwen05_bf16() -> PathBuf {
    bf16_dir(&super::qwen05(), "hf-qwen2.5-coder-0.5b-bf16")
}

/// The bf16 Qwen2.5-Coder-1.5B directory with its tokenizer files, built on
/// first use.
pub fn qwen15_bf16() -> PathBuf {
    bf16_dir(&super::qwen15(), "hf-qwen2.5-coder-1.5b-bf16")
}

/// The directory `name` beside `gguf`, built from it on first use.
fn bf16_dir(gguf: &Path, name: &str) -> PathBuf {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_builder = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let done = gguf.parent().unwrap().join(name);
    if done.join("complete").exists() {
        return done;
    }
    let dir = done.with_file_name(format!("{name}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut f = std::fs::File::open(gguf).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let md = |k: &str| ct.metadata[k].clone();
    let mut names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    names.sort();
    let mut shards: [HashMap<String, Tensor>; 2] = [HashMap::new(), HashMap::new()];
    let mut index = serde_json::Map::new();
    for name in &names {
        let t = ct
            .tensor(&mut f, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let hf = hf_name(name);
        let shard = usize::from(name.starts_with("blk.1") || name.starts_with("blk.2"));
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        index.insert(hf.clone(), serde_json::Value::String(file));
        shards[shard].insert(hf, t);
    }
    for (i, s) in shards.iter().enumerate() {
        candle_core::safetensors::save(
            s,
            dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": index});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let u = |k: &str| md(k).to_u32().unwrap() as usize;
    let heads = u("qwen2.attention.head_count");
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": md("tokenizer.ggml.tokens").to_vec().unwrap().len(),
        "hidden_size": u("qwen2.embedding_length"),
        "intermediate_size": u("qwen2.feed_forward_length"),
        "num_hidden_layers": u("qwen2.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": u("qwen2.attention.head_count_kv"),
        "max_position_embeddings": u("qwen2.context_length"),
        "sliding_window": u("qwen2.context_length"),
        "max_window_layers": u("qwen2.block_count"),
        "tie_word_embeddings": !ct.tensor_infos.contains_key("output.weight"),
        "rope_theta": md("qwen2.rope.freq_base").to_f32().unwrap(),
        "rms_norm_eps": md("qwen2.attention.layer_norm_rms_epsilon").to_f32().unwrap(),
        "use_sliding_window": false,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let gen =
        serde_json::json!({"eos_token_id": [151645, 151643], "temperature": 0.7, "top_p": 0.8});
    std::fs::write(dir.join("generation_config.json"), gen.to_string()).unwrap();
    write_tokenizer(gguf, &dir);
    std::fs::write(dir.join("complete"), b"").unwrap();
    if done.exists() && !done.join("complete").exists() {
        // Left half-built by an older helper that wrote in place.
        std::fs::remove_dir_all(&done).unwrap();
    }
    if std::fs::rename(&dir, &done).is_err() {
        // Another process finished first; its copy is the same.
        std::fs::remove_dir_all(&dir).unwrap();
    }
    done
}

/// tokenizer.json and a tokenizer_config.json with the GGUF's chat template.
fn write_tokenizer(gguf: &Path, dir: &Path) {
    let file = r1serve::model::weights::GgufFile::open(gguf).unwrap();
    let tok = r1serve::tokenizer::Tokenizer::from_gguf(&file.content, gguf).unwrap();
    tok.inner().save(dir.join("tokenizer.json"), false).unwrap();
    let config = serde_json::json!({
        "bos_token": null,
        "eos_token": tok.eos_token(),
        "add_bos_token": false,
        "chat_template": tok.chat_template(),
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}
