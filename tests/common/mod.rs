//! Helpers shared by the integration tests: where the test checkpoints live
//! (fetched by `models/fetch.sh`), and a single-sequence runner over the real
//! engine-facing model interface.
#![allow(dead_code)]

pub mod server;

use r1serve::kv_cache::storage::KvDtype;
use r1serve::model::{BatchSeq, ForwardBatch, Model, RowNeed};
use r1serve::types::BlockId;
use std::path::PathBuf;

/// Directory of the test checkpoints; tests fail loudly when it is missing.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var("R1SERVE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/r1serve/models")
        });
    assert!(
        dir.is_dir(),
        "{} missing: run models/fetch.sh first",
        dir.display()
    );
    dir
}

/// One checkpoint (a file, or an HF directory) in [`models_dir`]; fails
/// loudly when it is missing.
pub fn model(file: &str) -> PathBuf {
    let path = models_dir().join(file);
    assert!(
        path.exists(),
        "{} missing: run models/fetch.sh first",
        path.display()
    );
    path
}

/// The tokenizer of a GGUF checkpoint (or header).
pub fn gguf_tokenizer(path: &std::path::Path) -> r1serve::tokenizer::Tokenizer {
    let file = r1serve::model::weights::GgufFile::open(path).expect("gguf");
    r1serve::tokenizer::Tokenizer::from_gguf(&file.content, path).expect("tokenizer")
}

/// SmolLM2-135M-Instruct Q4_1.
pub fn smollm2() -> PathBuf {
    models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Qwen2.5-Coder-0.5B-Instruct Q4_K_M.
pub fn qwen05() -> PathBuf {
    models_dir().join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

/// Qwen2.5-Coder-1.5B-Instruct Q4_K_M.
pub fn qwen15() -> PathBuf {
    models_dir().join("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
}

/// The header (tokenizer and template) of DeepSeek-R1-Distill-Qwen-7B Q4_K_M.
pub fn r1_header() -> PathBuf {
    models_dir().join("DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.head.gguf")
}

/// Small deterministic generator so failures reproduce: values uniform
/// in [-1, 1).
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value.
    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `n` values.
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }

    /// An index below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next() + 1.0) * 0.5 * n as f32) as usize % n
    }
}

/// One sequence through a model with a cache of its own (allocated anew
/// for the run), fed a few tokens at a time.
pub struct SoloRun<'a> {
    model: &'a mut dyn Model,
    table: Vec<BlockId>,
    ctx_len: usize,
}

impl<'a> SoloRun<'a> {
    /// A cache of `dtype` with room for `capacity` tokens.
    pub fn new(model: &'a mut dyn Model, capacity: usize, dtype: KvDtype) -> Self {
        let block_size = 16;
        let blocks = capacity.div_ceil(block_size);
        model
            .allocate_cache(block_size, blocks, dtype)
            .expect("cache");
        SoloRun {
            model,
            table: (0..blocks as u32).map(BlockId).collect(),
            ctx_len: 0,
        }
    }

    /// Appends `tokens` and returns the logits after the last of them.
    pub fn feed(&mut self, tokens: &[u32]) -> Vec<f32> {
        self.ctx_len += tokens.len();
        let batch = ForwardBatch {
            tokens: tokens.to_vec(),
            seqs: vec![BatchSeq {
                num_tokens: tokens.len(),
                ctx_len: self.ctx_len,
                block_table: self.table.clone(),
                want_logits: true,
                all_logits: false,
                need: RowNeed::Full,
            }],
        };
        let row = self.model.forward(&batch).expect("forward").remove(0);
        row.into_full().expect("a row asked whole comes back whole")
    }
}

/// Runs one sequence through a model with a private KV cache: prefill, then
/// greedy decode. Returns the prompt's last logits and the generated tokens.
pub fn greedy(
    model: &mut dyn Model,
    prompt: &[u32],
    steps: usize,
    dtype: KvDtype,
) -> (Vec<f32>, Vec<u32>) {
    let mut run = SoloRun::new(model, prompt.len() + steps, dtype);
    let first = run.feed(prompt);
    let mut out = vec![argmax(&first)];
    while out.len() < steps {
        let logits = run.feed(&[*out.last().unwrap()]);
        out.push(argmax(&logits));
    }
    (first, out)
}

/// Index of the largest value (first one on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// max |a - b| / max |b|.
pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Five chat prompts rendered with the model's own template and tokenizer.
pub fn chat_prompts(path: &std::path::Path) -> Vec<Vec<u32>> {
    let file = r1serve::model::weights::GgufFile::open(path).expect("gguf");
    let tok = r1serve::tokenizer::Tokenizer::from_gguf(&file.content, path).expect("tokenizer");
    let template = r1serve::tokenizer::ChatTemplate::from_tokenizer(&tok).expect("template");
    let questions = [
        "What is the capital of France?",
        "Write a Python function that reverses a string.",
        "Explain why the sky is blue in two sentences.",
        "¿Cuál es la raíz cuadrada de 144? Responde brevemente.",
        "List three prime numbers greater than 100.",
    ];
    questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let mut messages = vec![];
            if i % 2 == 1 {
                messages.push(serde_json::json!({"role": "system", "content": "You are a concise assistant."}));
            }
            messages.push(serde_json::json!({"role": "user", "content": q}));
            let text = template
                .render(&serde_json::Value::Array(messages), true, None, &serde_json::Map::new())
                .expect("render");
            tok.encode(&text, false).expect("encode")
        })
        .collect()
}

pub mod hf_dir;
pub mod parity;
pub mod scripted;

/// Engine helpers: start an engine on a test checkpoint and drain requests.
pub mod engine {
    use futures::StreamExt;
    use r1serve::engine::types::{
        EngineRequest, EngineStats, FinishReason, RequestUsage, SamplingParams,
    };
    use r1serve::engine::{Engine, EngineConfig, EngineHandle};
    use r1serve::model::load::{load, LoadOptions};
    use r1serve::reasoning::ReasoningEnd;
    use r1serve::tokenizer::Tokenizer;
    use std::path::Path;
    use std::sync::Arc;

    /// Loads `path` and starts an engine with `config`.
    pub fn start(path: &Path, config: EngineConfig) -> (EngineHandle, Arc<Tokenizer>) {
        let m = load(path.to_str().unwrap(), &LoadOptions::default()).expect("load");
        let tok = m.tokenizer.clone();
        (
            Engine::start(m.model, tok.clone(), config).expect("engine"),
            tok,
        )
    }

    /// Everything a finished request produced.
    #[derive(Debug, Clone, Default)]
    pub struct Collected {
        /// Tokens per sample index.
        pub tokens: Vec<Vec<u32>>,
        /// Answer text (all text without a reasoning parser) per sample.
        pub text: Vec<String>,
        /// Reasoning text per sample.
        pub reasoning: Vec<String>,
        /// Reasoning tokens per sample.
        pub reasoning_tokens: Vec<usize>,
        /// How each sample's reasoning ended.
        pub reasoning_end: Vec<Option<ReasoningEnd>>,
        /// Finish reason per sample index.
        pub finish: Vec<Option<FinishReason>>,
        /// Final usage.
        pub usage: RequestUsage,
        /// Outputs received (steps with news).
        pub outputs: usize,
    }

    /// Runs a request to the end.
    pub async fn run(h: &EngineHandle, prompt: Vec<u32>, params: SamplingParams) -> Collected {
        let n = params.n;
        let mut s = h
            .add_request(EngineRequest { prompt, params })
            .expect("add");
        let mut c = Collected {
            tokens: vec![Vec::new(); n],
            text: vec![String::new(); n],
            reasoning: vec![String::new(); n],
            reasoning_tokens: vec![0; n],
            reasoning_end: vec![None; n],
            finish: vec![None; n],
            ..Default::default()
        };
        while let Some(o) = s.next().await {
            c.outputs += 1;
            c.usage = o.usage;
            for sample in o.samples {
                c.tokens[sample.index].extend(sample.token_ids);
                c.text[sample.index].push_str(&sample.text);
                c.reasoning[sample.index].push_str(&sample.reasoning);
                c.reasoning_tokens[sample.index] = sample.reasoning_tokens;
                if sample.reasoning_end.is_some() {
                    c.reasoning_end[sample.index] = sample.reasoning_end;
                }
                if sample.finish_reason.is_some() {
                    c.finish[sample.index] = sample.finish_reason;
                }
            }
            if o.finished {
                break;
            }
        }
        c
    }

    /// Waits (at most about 5 s) until the engine runs nothing, queues
    /// nothing and holds no block, and returns its statistics then.
    pub async fn wait_idle(h: &EngineHandle) -> EngineStats {
        for _ in 0..500 {
            let s = h.stats();
            if s.running == 0 && s.waiting == 0 && s.free_blocks == s.total_blocks {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        h.stats()
    }

    /// Starts a long request for `prompt`, reads two outputs, drops the
    /// stream, and checks that every block comes back.
    pub async fn abort_frees_every_block(h: &EngineHandle, prompt: Vec<u32>) {
        let mut s = h
            .add_request(EngineRequest {
                prompt,
                params: greedy(500),
            })
            .unwrap();
        s.next().await.unwrap();
        s.next().await.unwrap();
        assert!(h.stats().free_blocks < h.stats().total_blocks);
        drop(s);
        let st = wait_idle(h).await;
        assert_eq!(st.free_blocks, st.total_blocks);
        assert_eq!(st.running, 0);
    }

    /// Greedy parameters for `max_tokens` tokens that ignore EOS.
    pub fn greedy(max_tokens: usize) -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            max_tokens,
            ignore_eos: true,
            ..Default::default()
        }
    }

    /// A prompt of about `n` tokens of varied English text.
    pub fn text_prompt(tok: &Tokenizer, n: usize, salt: usize) -> Vec<u32> {
        const WORDS: &[&str] = &[
            "the", "model", "reasons", "about", "prime", "numbers", "and", "writes", "a", "short",
            "proof", "that", "every", "integer", "greater", "than", "one", "has", "factor",
            "river", "mountain", "city", "quietly", "because", "Rust", "compiler", "checks",
        ];
        let mut text = format!("Question {salt}:");
        let mut i = salt * 7 + 3;
        let mut ids = Vec::new();
        while ids.len() < n {
            for _ in 0..16 {
                i = (i * 31 + 17) % 1009;
                text.push(' ');
                text.push_str(WORDS[i % WORDS.len()]);
            }
            ids = tok.encode(&text, false).unwrap();
        }
        ids.truncate(n);
        ids
    }
}

/// JSON in the layout constrained answers use (`structured::compact_layout`):
/// `", "` between items and `": "` after keys, no other whitespace.
pub fn spaced_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(spaced_json).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), spaced_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}
