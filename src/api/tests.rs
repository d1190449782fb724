//! Router-level tests against a scripted engine and a byte tokenizer, so the
//! whole HTTP path (validation → engine → reasoning split → SSE) is checked
//! without loading a model. End-to-end tests with real models live in
//! `tests/server.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::{to_bytes, Body};
use axum::http::{header, Request, StatusCode};
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use super::backend::{InferenceBackend, OutputStream, PromptCodec};
use super::protocol::ReasoningField;
use super::router::{router, RouterConfig};
use super::state::{AppState, ServedModel};
use crate::engine::types::{
    EngineError, EngineRequest, EngineStats, FinishReason, RequestOutput, RequestUsage,
    SampleOutput, TokenLogprob,
};
use crate::metrics::Metrics;
use crate::reasoning::{ReasoningParser, ReasoningPhase, ReasoningTracker};
use crate::tokenizer::ChatPrompt;
use crate::tools::ToolCallParser;
use crate::types::TokenId;

/// One byte per token, so token counts are easy to predict.
struct ByteCodec {
    /// Appended to the rendered chat prompt, e.g. `<think>\n`.
    generation_suffix: &'static str,
    /// Time each `encode` takes, to make concurrent tokenizations overlap.
    encode_time: std::time::Duration,
    /// Encodes running now, and the most seen at once.
    encoding: AtomicUsize,
    max_encoding: AtomicUsize,
    /// Bytes of text tokenized so far.
    encoded_bytes: AtomicUsize,
}

impl ByteCodec {
    fn new(generation_suffix: &'static str) -> Self {
        Self {
            generation_suffix,
            encode_time: std::time::Duration::ZERO,
            encoding: AtomicUsize::new(0),
            max_encoding: AtomicUsize::new(0),
            encoded_bytes: AtomicUsize::new(0),
        }
    }
}

impl PromptCodec for ByteCodec {
    fn encode(&self, text: &str, _add_special_tokens: bool) -> anyhow::Result<Vec<TokenId>> {
        let now = self.encoding.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_encoding.fetch_max(now, Ordering::SeqCst);
        self.encoded_bytes.fetch_add(text.len(), Ordering::SeqCst);
        std::thread::sleep(self.encode_time);
        self.encoding.fetch_sub(1, Ordering::SeqCst);
        Ok(text.bytes().map(TokenId::from).collect())
    }
    fn max_token_bytes(&self) -> Option<usize> {
        Some(1)
    }
    fn decode(&self, ids: &[TokenId], _skip: bool) -> anyhow::Result<String> {
        let bytes: Vec<u8> = ids.iter().map(|&id| id as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn vocab_size(&self) -> usize {
        256
    }
    fn encode_chat(
        &self,
        messages: &Value,
        ending: crate::tokenizer::ChatEnding,
        tools: Option<&Value>,
        _extra: &Map<String, Value>,
        add_special_tokens: bool,
        max_bytes: Option<usize>,
    ) -> anyhow::Result<ChatPrompt> {
        let mut out = String::new();
        if let Some(tools) = tools {
            out.push_str(&format!("<tools>{}", tools.as_array().map_or(0, Vec::len)));
        }
        for m in messages.as_array().into_iter().flatten() {
            out.push_str(&format!(
                "<{}>{}",
                m["role"].as_str().unwrap_or(""),
                m["content"].as_str().unwrap_or("")
            ));
        }
        if ending == crate::tokenizer::ChatEnding::GenerationPrompt {
            out.push_str("<assistant>");
            out.push_str(self.generation_suffix);
        }
        if max_bytes.is_some_and(|limit| out.len() > limit) {
            return Err(crate::tokenizer::PromptTooLong { bytes: out.len() }.into());
        }
        let ids = self.encode(&out, add_special_tokens)?;
        Ok(ChatPrompt { text: out, ids })
    }
}

/// Emits `script` one piece per token for every choice, then finishes with
/// `Stop`, or with `Length` when `max_tokens` cuts it short. With `hang`, the
/// stream stalls after the first token, for disconnect tests; with `die`,
/// it ends after the first token without finishing, as when the engine
/// thread dies, and the engine reports `failure` to later callers.
struct ScriptedEngine {
    script: Vec<&'static str>,
    hang: bool,
    die: bool,
    failure: Mutex<Option<String>>,
    queue_full: bool,
    live: Arc<AtomicUsize>,
    last_request: Mutex<Option<EngineRequest>>,
}

/// Counts live request streams; a drop is an abort.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl InferenceBackend for ScriptedEngine {
    fn add_request(&self, request: EngineRequest) -> Result<OutputStream, EngineError> {
        if self.queue_full {
            return Err(EngineError::QueueFull(0));
        }
        if let Some(cause) = self.failure() {
            return Err(EngineError::Failed(cause));
        }
        *self.last_request.lock().unwrap() = Some(request.clone());
        let prompt_tokens = request.prompt.len();
        let steps = self.script.len().min(request.params.max_tokens);
        let length = steps < self.script.len();
        let n = request.params.n;
        let logprobs = request.params.logprobs;
        // The text is split as the engine splits it, with the real tracker.
        let reasoning = &request.params.reasoning;
        let mut trackers =
            vec![ReasoningTracker::new(reasoning.parser, reasoning.starts_inside); n];
        let outputs: Vec<RequestOutput> = (0..steps)
            .map(|step| {
                let last = step + 1 == steps;
                RequestOutput {
                    samples: trackers
                        .iter_mut()
                        .enumerate()
                        .map(|(index, tracker)| {
                            let mut split = tracker.push(1, self.script[step], false);
                            if last {
                                let tail = tracker.finish();
                                split.reasoning.push_str(&tail.reasoning);
                                split.content.push_str(&tail.content);
                            }
                            SampleOutput {
                                index,
                                token_ids: vec![1],
                                text: split.content,
                                reasoning: split.reasoning,
                                reasoning_tokens: tracker.reasoning_tokens(),
                                in_reasoning: tracker.phase() == ReasoningPhase::Inside,
                                reasoning_end: None,
                                logprobs: logprobs
                                    .map(|k| TokenLogprob {
                                        token: u32::from(b'a'),
                                        logprob: -0.5,
                                        top: vec![(u32::from(b'b'), -1.0); k],
                                    })
                                    .into_iter()
                                    .collect(),
                                finish_reason: last.then_some(if length {
                                    FinishReason::Length
                                } else {
                                    FinishReason::Stop
                                }),
                                stop_reason: None,
                            }
                        })
                        .collect(),
                    usage: RequestUsage {
                        prompt_tokens,
                        cached_tokens: 0,
                        completion_tokens: (step + 1) * n,
                    },
                    finished: last,
                    prompt_logprobs: None,
                }
            })
            .collect();
        self.live.fetch_add(1, Ordering::SeqCst);
        let guard = LiveGuard(Arc::clone(&self.live));
        let first = futures::stream::iter(outputs.clone().into_iter().take(1));
        let rest: OutputStream = if self.hang {
            Box::pin(futures::stream::pending())
        } else if self.die {
            *self.failure.lock().unwrap() = Some("scripted death".into());
            Box::pin(futures::stream::empty())
        } else {
            Box::pin(futures::stream::iter(outputs.into_iter().skip(1)))
        };
        Ok(Box::pin(first.chain(rest).map(move |o| {
            let _keep_alive = &guard;
            o
        })))
    }
    fn stats(&self) -> EngineStats {
        EngineStats {
            running: self.live.load(Ordering::SeqCst),
            ..EngineStats::default()
        }
    }
    fn shutdown(&self) {}
    fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }
}

fn metrics() -> Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS
        .get_or_init(|| Metrics::install().expect("only these tests install a recorder"))
        .clone()
}

struct Harness {
    app: Router,
    engine: Arc<ScriptedEngine>,
    codec: Arc<ByteCodec>,
}

struct Setup {
    script: Vec<&'static str>,
    suffix: &'static str,
    reasoning: ReasoningParser,
    reasoning_field: ReasoningField,
    tool_parser: ToolCallParser,
    keys: Vec<String>,
    hang: bool,
    die: bool,
    queue_full: bool,
    load: bool,
    encode_time: std::time::Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            script: vec!["<think>", "hmm", "</think>", "\n\n", "Hi", "!"],
            suffix: "",
            reasoning: ReasoningParser::DeepSeekR1,
            reasoning_field: ReasoningField::default(),
            tool_parser: ToolCallParser::Hermes,
            keys: Vec::new(),
            hang: false,
            die: false,
            queue_full: false,
            load: true,
            encode_time: std::time::Duration::ZERO,
        }
    }
}

fn harness(setup: Setup) -> Harness {
    let engine = Arc::new(ScriptedEngine {
        script: setup.script,
        hang: setup.hang,
        die: setup.die,
        failure: Mutex::new(None),
        queue_full: setup.queue_full,
        live: Arc::new(AtomicUsize::new(0)),
        last_request: Mutex::new(None),
    });
    let codec = Arc::new(ByteCodec {
        encode_time: setup.encode_time,
        ..ByteCodec::new(setup.suffix)
    });
    let state = AppState::new(setup.keys, metrics());
    if setup.load {
        state.set_model(ServedModel {
            engine: engine.clone(),
            codec: codec.clone(),
            name: "test-model".into(),
            max_model_len: 128,
            defaults: crate::model::generation_config::R1_DEFAULTS,
            reasoning: setup.reasoning,
            reasoning_field: setup.reasoning_field,
            tool_parser: setup.tool_parser,
            thinking: Default::default(),
            grammar: None,
            created: 1,
        });
    }
    let app = router(
        state,
        &RouterConfig {
            max_body_bytes: 4096,
            allowed_origins: vec!["*".into()],
            body_timeout: std::time::Duration::from_secs(5),
        },
    );
    Harness { app, engine, codec }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), 1 << 24).await.unwrap();
        (status, headers, body.to_vec())
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, _, bytes) = self.send(post(path, body)).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn post_raw(&self, path: &str, body: Value) -> (StatusCode, String) {
        let (status, _, bytes) = self.send(post(path, body)).await;
        (status, String::from_utf8(bytes).unwrap())
    }
}

fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    body.split("\n\n")
        .filter(|e| !e.is_empty() && *e != "data: [DONE]")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test]
async fn chat_splits_reasoning_and_counts_tokens() {
    let h = harness(Setup::default());
    let (status, body) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user("hey"), "model": "test-model"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let message = &body["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["reasoning_content"], "hmm");
    assert_eq!(message["content"], "Hi!");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["logprobs"], Value::Null);
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 6);
    assert_eq!(usage["prompt_tokens"], "<user>hey<assistant>".len());
    assert_eq!(usage["total_tokens"], 6 + "<user>hey<assistant>".len());
    // "hmm" and "</think>" are reasoning; "<think>" itself arrives before
    // the block opens.
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 2);
    let request = h.engine.last_request.lock().unwrap().clone().unwrap();
    assert_eq!(request.params.temperature, 0.6, "model default applies");
    assert_eq!(request.params.top_p, 0.95);
    assert_eq!(
        request.params.max_tokens,
        128 - "<user>hey<assistant>".len()
    );
}

#[tokio::test]
async fn chat_stream_matches_openai_framing() {
    let h = harness(Setup::default());
    let (status, raw) = h
        .post_raw(
            "/v1/chat/completions",
            json!({"messages": user("hey"), "stream": true,
                   "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(raw.starts_with("data: {\"id\":\"chatcmpl-"), "{raw}");
    let chunks = events(&raw);
    let first = &chunks[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(first["usage"], Value::Null);
    let id = first["id"].clone();
    let mut reasoning = String::new();
    let mut content = String::new();
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        for choice in chunk["choices"].as_array().unwrap() {
            reasoning.push_str(choice["delta"]["reasoning_content"].as_str().unwrap_or(""));
            content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    assert_eq!((reasoning.as_str(), content.as_str()), ("hmm", "Hi!"));
    let last_choice = &chunks[chunks.len() - 2];
    assert_eq!(last_choice["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["completion_tokens_details"]["reasoning_tokens"],
        2
    );
}

#[tokio::test]
async fn stream_without_usage_omits_the_field() {
    let h = harness(Setup::default());
    let (_, raw) = h
        .post_raw(
            "/v1/chat/completions",
            json!({"messages": user("x"), "stream": true}),
        )
        .await;
    for chunk in events(&raw) {
        assert!(chunk.get("usage").is_none(), "{chunk}");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn prompt_opened_reasoning_and_unclosed_block() {
    let h = harness(Setup {
        script: vec!["step ", "one ", "two", "</think>", "answer"],
        suffix: "<think>\n",
        ..Setup::default()
    });
    let (_, body) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user("q"), "max_tokens": 3}),
        )
        .await;
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(choice["message"]["reasoning_content"], "step one two");
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(
        body["usage"]["completion_tokens_details"]["reasoning_tokens"],
        3
    );
    assert_eq!(body["usage"]["completion_tokens"], 3);

    let (_, body) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user("q"), "include_reasoning": false}),
        )
        .await;
    let message = &body["choices"][0]["message"];
    assert!(message.get("reasoning_content").is_none(), "{message}");
    assert_eq!(message["content"], "answer");
    assert_eq!(
        body["usage"]["completion_tokens_details"]["reasoning_tokens"],
        4
    );
}

/// The reasoning goes under the server's `--reasoning-field` unless the
/// request names its own, in the message and in every delta alike, and
/// under no name when it is not wanted.
#[tokio::test]
async fn reasoning_field_names_message_and_delta_fields() {
    const NAMES: [&str; 2] = ["reasoning_content", "reasoning"];
    let expected = |field: ReasoningField| match field {
        ReasoningField::ReasoningContent => vec!["reasoning_content"],
        ReasoningField::Reasoning => vec!["reasoning"],
        ReasoningField::Both => NAMES.to_vec(),
    };
    for server in ReasoningField::ALL {
        let h = harness(Setup {
            reasoning_field: server,
            ..Setup::default()
        });
        let overrides = ReasoningField::ALL.map(Some);
        for request in [None].into_iter().chain(overrides) {
            let mut body = json!({"messages": user("hey"), "n": 2});
            if let Some(field) = request {
                body["reasoning_field"] = json!(field.as_str());
            }
            let names = expected(request.unwrap_or(server));
            let what = format!("server {server}, request {request:?}");
            let (status, reply) = h.post("/v1/chat/completions", body.clone()).await;
            assert_eq!(status, StatusCode::OK, "{what}: {reply}");
            for choice in reply["choices"].as_array().unwrap() {
                let message = &choice["message"];
                for name in NAMES {
                    let want = names.contains(&name).then(|| json!("hmm"));
                    assert_eq!(message.get(name), want.as_ref(), "{what}: {message}");
                }
                assert_eq!(message["content"], "Hi!", "{what}");
            }
            body["stream"] = json!(true);
            let (_, raw) = h.post_raw("/v1/chat/completions", body.clone()).await;
            let chunks = events(&raw);
            for name in NAMES {
                let want = if names.contains(&name) { "hmm" } else { "" };
                assert_eq!(joined_deltas(&chunks, name), [want, want], "{what}: {name}");
            }
            body["include_reasoning"] = json!(false);
            let (_, raw) = h.post_raw("/v1/chat/completions", body.clone()).await;
            for name in NAMES {
                assert_eq!(joined_deltas(&events(&raw), name), ["", ""], "{what}");
            }
        }
        let (status, reply) = h
            .post(
                "/v1/chat/completions",
                json!({"messages": user("hey"), "reasoning_field": "thoughts"}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(reply["error"]["param"], "reasoning_field", "{reply}");
    }
}

/// The text of `field` in the deltas of `chunks`, joined per choice.
fn joined_deltas(chunks: &[Value], field: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for chunk in chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            let index = choice["index"].as_u64().unwrap() as usize;
            if out.len() <= index {
                out.resize(index + 1, String::new());
            }
            out[index].push_str(choice["delta"][field].as_str().unwrap_or(""));
        }
    }
    out
}

#[tokio::test]
async fn n_choices_stream_interleaved_with_logprobs() {
    let h = harness(Setup {
        script: vec!["a", "b"],
        reasoning: ReasoningParser::None,
        ..Setup::default()
    });
    let (_, raw) = h
        .post_raw(
            "/v1/chat/completions",
            json!({"messages": user("x"), "n": 2, "stream": true, "logprobs": true, "top_logprobs": 2}),
        )
        .await;
    let indices: Vec<u64> = events(&raw)
        .iter()
        .map(|c| c["choices"][0]["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [0, 1, 0, 1, 0, 1]);
    let chunk = &events(&raw)[2];
    let logprob = &chunk["choices"][0]["logprobs"]["content"][0];
    assert_eq!(logprob["token"], "a");
    assert_eq!(logprob["bytes"], json!([97]));
    assert_eq!(logprob["top_logprobs"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn completions_plain_echo_and_logprobs() {
    let h = harness(Setup {
        script: vec!["1", "2", "3"],
        ..Setup::default()
    });
    let (status, body) = h
        .post(
            "/v1/completions",
            json!({"prompt": "count:", "echo": true, "n": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][1]["text"], "count:123");
    assert_eq!(body["usage"]["prompt_tokens"], 6);
    assert_eq!(body["usage"]["completion_tokens"], 6);

    let (_, body) = h
        .post(
            "/v1/completions",
            json!({"prompt": [99, 100], "logprobs": 1, "max_tokens": 2}),
        )
        .await;
    let logprobs = &body["choices"][0]["logprobs"];
    assert_eq!(logprobs["tokens"], json!(["a", "a"]));
    assert_eq!(logprobs["text_offset"], json!([0, 1]));
    assert_eq!(logprobs["top_logprobs"][0], json!({"b": -1.0}));
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    let (_, raw) = h
        .post_raw("/v1/completions", json!({"prompt": "x", "stream": true}))
        .await;
    let text: String = events(&raw)
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "123");
}

#[tokio::test]
async fn error_statuses() {
    let h = harness(Setup::default());
    let (status, body) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user("x"), "model": "gpt-4"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "model_not_found");

    let (status, body) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user("x"), "max_tokens": 200}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("128") && message.contains("200"),
        "{message}"
    );

    let (status, _) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user("x"), "temperature": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _, _) = h
        .send(
            Request::post("/v1/completions")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let big = "x".repeat(5000);
    let (status, _, bytes) = h
        .send(post("/v1/completions", json!({"prompt": big})))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let (status, _) = h.post("/nope", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = h.post("/detokenize", json!({"tokens": [1000]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn queue_full_is_503_with_retry_after() {
    let h = harness(Setup {
        queue_full: true,
        ..Setup::default()
    });
    let (status, headers, _) = h
        .send(post("/v1/chat/completions", json!({"messages": user("x")})))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
}

#[tokio::test]
async fn api_keys_guard_everything_but_health() {
    let h = harness(Setup {
        keys: vec!["k1".into(), "k2".into()],
        ..Setup::default()
    });
    let get = |path: &str, key: Option<&str>| {
        let mut builder = Request::get(path);
        if let Some(key) = key {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        builder.body(Body::empty()).unwrap()
    };
    assert_eq!(h.send(get("/health", None)).await.0, StatusCode::OK);
    assert_eq!(
        h.send(get("/v1/models", None)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.send(get("/metrics", Some("k"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.send(get("/v1/models", Some("k2"))).await.0,
        StatusCode::OK
    );
    let (status, _, body) = h.send(get("/v1/models/test-model", Some("k1"))).await;
    assert_eq!(status, StatusCode::OK);
    let model: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(model["id"], "test-model");
    assert_eq!(
        h.send(get("/v1/models/other/model", Some("k1"))).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn loading_server_reports_503() {
    let h = harness(Setup {
        load: false,
        ..Setup::default()
    });
    let (status, _, _) = h
        .send(Request::get("/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = h.post("/v1/completions", json!({"prompt": "x"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn request_id_is_echoed_or_minted() {
    let h = harness(Setup::default());
    let (_, headers, _) = h
        .send(
            Request::get("/health")
                .header("x-request-id", "abc")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(headers["x-request-id"], "abc");
    let (_, headers, _) = h
        .send(Request::get("/health").body(Body::empty()).unwrap())
        .await;
    assert!(!headers["x-request-id"].is_empty());
}

#[tokio::test]
async fn dropping_the_stream_aborts_the_request() {
    let h = harness(Setup {
        hang: true,
        ..Setup::default()
    });
    let response = h
        .app
        .clone()
        .oneshot(post(
            "/v1/chat/completions",
            json!({"messages": user("x"), "stream": true}),
        ))
        .await
        .unwrap();
    let mut body = response.into_body().into_data_stream();
    // The role chunk, then the first token's chunk; then the engine stalls.
    body.next().await.unwrap().unwrap();
    assert_eq!(h.engine.live.load(Ordering::SeqCst), 1);
    drop(body);
    assert_eq!(h.engine.live.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn tokenize_and_metrics() {
    let h = harness(Setup::default());
    let (_, body) = h.post("/tokenize", json!({"prompt": "hi"})).await;
    assert_eq!(
        body,
        json!({"count": 2, "max_model_len": 128, "tokens": [104, 105]})
    );
    let (_, body) = h.post("/tokenize", json!({"messages": user("hi")})).await;
    assert_eq!(body["count"], "<user>hi<assistant>".len());
    let (_, body) = h.post("/detokenize", json!({"tokens": [104, 105]})).await;
    assert_eq!(body, json!({"prompt": "hi"}));
    h.post("/v1/chat/completions", json!({"messages": user("x")}))
        .await;
    let (status, headers, body) = h
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    for name in [
        "r1serve:num_requests_running{model_name=\"test-model\"}",
        "r1serve:request_success_total{model_name=\"test-model\",finished_reason=\"stop\"}",
        "r1serve:reasoning_tokens_total{model_name=\"test-model\"}",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

/// A Hermes call split mid-marker and mid-JSON, after some reasoning.
const CALL_SCRIPT: [&str; 8] = [
    "<think>",
    "plan",
    "</think>",
    "\n\n",
    "<tool",
    "_call>\n{\"name\": \"get_",
    "weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_",
    "call>",
];

#[tokio::test]
async fn tool_calls_answer_in_openai_shape_streamed_or_not() {
    let h = harness(Setup {
        script: CALL_SCRIPT.to_vec(),
        ..Setup::default()
    });
    let request = json!({"messages": user("weather?"), "tools": weather_tools()});
    let (status, body) = h.post("/v1/chat/completions", request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let prompt = h
        .engine
        .last_request
        .lock()
        .unwrap()
        .clone()
        .unwrap()
        .prompt;
    assert!(prompt.starts_with(b"<tools>1".map(TokenId::from).as_slice()));
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let message = &choice["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["reasoning_content"], "plan");
    let calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    let id = calls[0]["id"].as_str().unwrap();
    assert!(id.starts_with("call_") && id.len() == 29, "{id}");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(
        calls[0]["function"],
        json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );

    let mut streamed = request;
    streamed["stream"] = json!(true);
    let (_, raw) = h.post_raw("/v1/chat/completions", streamed).await;
    let chunks = events(&raw);
    let pieces: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .flat_map(|t| t.as_array().unwrap())
        .collect();
    let first = pieces[0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["type"], "function");
    assert_eq!(first["function"]["name"], "get_weather");
    assert!(first["id"].as_str().unwrap().starts_with("call_"));
    let arguments: String = pieces
        .iter()
        .map(|p| p["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, calls[0]["function"]["arguments"]);
    assert!(pieces[1..].iter().all(|p| p.get("id").is_none()));
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "", "no content streamed before the call");
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
}

#[tokio::test]
async fn tool_choice_none_shows_no_tools_and_parses_nothing() {
    let h = harness(Setup {
        script: CALL_SCRIPT.to_vec(),
        ..Setup::default()
    });
    let (status, body) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user("weather?"), "tools": weather_tools(), "tool_choice": "none"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let prompt = h
        .engine
        .last_request
        .lock()
        .unwrap()
        .clone()
        .unwrap()
        .prompt;
    assert!(!prompt.starts_with(b"<tools>".map(TokenId::from).as_slice()));
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["message"].get("tool_calls").is_none());
    assert!(choice["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("<tool_call>"));
}

#[tokio::test]
async fn bad_tools_get_a_400_naming_the_problem() {
    let h = harness(Setup::default());
    let (status, body) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user("x"), "tool_choice": "auto"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "tool_choice");
    let (status, body) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user("x"), "tools": weather_tools(), "tool_choice": "required"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // This harness's byte vocabulary is not indexed for structured
    // outputs, so a forced call is refused up front rather than unenforced.
    assert_eq!(body["error"]["param"], "tool_choice");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("needs structured outputs")),
        "{body}"
    );
}
fn get_with(path: &str, authorization: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    builder.body(Body::empty()).unwrap()
}

/// The body of an error response, checked to be OpenAI's envelope.
fn envelope(bytes: &[u8]) -> Value {
    let body: Value = serde_json::from_slice(bytes)
        .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(bytes)));
    let error = body["error"].as_object().expect("an 'error' object");
    for key in ["message", "type", "param", "code"] {
        assert!(error.contains_key(key), "{key} missing from {body}");
    }
    body
}

#[tokio::test]
async fn unknown_routes_need_the_key_and_bearer_is_case_insensitive() {
    let h = harness(Setup {
        keys: vec!["k1".into()],
        ..Setup::default()
    });
    let (status, _, body) = h.send(get_with("/admin", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(envelope(&body)["error"]["code"], "invalid_api_key");
    let (status, _, body) = h.send(get_with("/admin", Some("Bearer k1"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    envelope(&body);
    for scheme in ["bearer k1", "BEARER k1", "Bearer   k1 "] {
        let (status, _, _) = h.send(get_with("/v1/models", Some(scheme))).await;
        assert_eq!(status, StatusCode::OK, "{scheme}");
    }
    for wrong in ["Basic k1", "Bearerk1", "Bearer ", "k1"] {
        let (status, _, _) = h.send(get_with("/v1/models", Some(wrong))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    // A wrong method on a real route is no way around the key either.
    let (status, _, _) = h.send(get_with("/v1/chat/completions", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn router_errors_carry_the_envelope() {
    let h = harness(Setup::default());
    let (status, _, body) = h.send(get_with("/v1/chat/completions", None)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(envelope(&body)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("GET"));

    let long = format!("/v1/models/{}", "a".repeat(super::router::MAX_URI_BYTES));
    let (status, _, body) = h.send(get_with(&long, None)).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);
    envelope(&body);

    let (status, _, body) = h.send(get_with("/v1/models/%FF%FE", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    envelope(&body);
}

#[tokio::test]
async fn template_kwargs_cannot_smuggle_reserved_variables() {
    let h = harness(Setup::default());
    for (kwargs, param) in [
        (
            json!({"tools": [{"type": "function"}]}),
            "chat_template_kwargs.tools",
        ),
        (
            json!({"documents": [{"text": "d"}]}),
            "chat_template_kwargs.documents",
        ),
        (
            json!({"tool_choice": "auto"}),
            "chat_template_kwargs.tool_choice",
        ),
        (json!({"messages": []}), "chat_template_kwargs.messages"),
        (
            json!({"bos_token": "<s>"}),
            "chat_template_kwargs.bos_token",
        ),
    ] {
        for path in ["/v1/chat/completions", "/tokenize"] {
            let (status, body) = h
                .post(
                    path,
                    json!({"messages": user("x"), "chat_template_kwargs": kwargs}),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {kwargs}: {body}");
            assert_eq!(body["error"]["param"], param, "{body}");
        }
    }
    // Values asking for nothing pass, as they do as parameters.
    let (status, body) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user("x"),
                   "chat_template_kwargs": {"tools": [], "tool_choice": "none", "thinking": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn numeric_ranges_keep_logits_finite() {
    let h = harness(Setup::default());
    for penalty in [1e-38, 0.0, -1.0, 1e38, 0.009, 100.5] {
        let (status, body) = h
            .post(
                "/v1/completions",
                json!({"prompt": "x", "repetition_penalty": penalty}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{penalty}: {body}");
        assert_eq!(body["error"]["param"], "repetition_penalty");
    }
    for penalty in [0.01, 1.3, 100.0] {
        let (status, body) = h
            .post(
                "/v1/completions",
                json!({"prompt": "x", "repetition_penalty": penalty}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{penalty}: {body}");
    }
    // 1/t overflows for the smallest temperatures: they sample greedily.
    for (temperature, sent) in [(1e-45, 0.0), (1e-6, 0.0), (1e-5, 1e-5), (0.7, 0.7)] {
        let (status, body) = h
            .post(
                "/v1/completions",
                json!({"prompt": "x", "temperature": temperature}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let request = h.engine.last_request.lock().unwrap().clone().unwrap();
        assert_eq!(request.params.temperature, sent as f32, "{temperature}");
        let inverse = 1.0 / request.params.temperature;
        assert!(request.params.temperature == 0.0 || inverse.is_finite());
    }
}

#[tokio::test]
async fn wrong_json_types_name_the_field() {
    let h = harness(Setup::default());
    for (extra, field) in [
        (
            json!({"stream": true, "stream_options": []}),
            "stream_options",
        ),
        (
            json!({"stream": true, "stream_options": "yes"}),
            "stream_options",
        ),
        (
            json!({"stream": true, "stream_options": {"include_usage": "yes"}}),
            "stream_options",
        ),
        (json!({"messages": [["user", "hi"]]}), "messages"),
    ] {
        let mut body = json!({"messages": user("x")});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, reply) = h.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    let (status, _) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user("x"), "stream": true, "stream_options": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn prompts_too_long_by_bytes_are_not_tokenized() {
    let h = harness(Setup::default());
    // One byte per token and 128 tokens of context: 129 bytes cannot fit.
    let (status, body) = h
        .post("/tokenize", json!({"prompt": "x".repeat(129)}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    let (status, body) = h
        .post("/v1/completions", json!({"prompt": "x".repeat(200)}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["param"], "prompt");
    let (status, body) = h
        .post(
            "/v1/chat/completions",
            json!({"messages": user(&"x".repeat(200))}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["param"], "messages");
    assert_eq!(h.codec.encoded_bytes.load(Ordering::SeqCst), 0);
    // At the limit the text is tokenized.
    let (status, body) = h
        .post("/tokenize", json!({"prompt": "x".repeat(128)}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.codec.encoded_bytes.load(Ordering::SeqCst), 128);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokenization_runs_at_most_one_job_per_core() {
    let h = harness(Setup {
        encode_time: std::time::Duration::from_millis(50),
        ..Setup::default()
    });
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let requests = (0..cores * 3).map(|_| h.post("/tokenize", json!({"prompt": "hi"})));
    for (status, body) in futures::future::join_all(requests).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let most = h.codec.max_encoding.load(Ordering::SeqCst);
    assert!(
        most <= cores,
        "{most} tokenizations at once on {cores} cores"
    );
}

#[tokio::test]
async fn a_dead_engine_fails_requests_and_health() {
    let h = harness(Setup {
        die: true,
        ..Setup::default()
    });
    let (status, _, _) = h.send(get_with("/health", None)).await;
    assert_eq!(status, StatusCode::OK);
    // The engine dies under this request: its stream ends unfinished.
    let (status, body) = h.post("/v1/completions", json!({"prompt": "x"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["type"], "server_error");
    let (status, _, _) = h.send(get_with("/health", None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = h.post("/v1/completions", json!({"prompt": "x"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
}
