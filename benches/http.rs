//! Load generator against the real server: `r1serve serve` with
//! SmolLM2-135M Q4_1 on a free local port, driven by N concurrent streaming
//! chat clients (greedy, `ignore_eos`, distinct prompts). For N = 1, 8 and
//! 32 it reports aggregate tokens/s, time to first token (TTFT) and
//! inter-token latency (ITL, the gap between content chunks), p50 and p99.
//! Then it runs the 16-client workload through HTTP and, after stopping the
//! server, through an in-process engine with the same settings and the same
//! templated prompts, and prints the HTTP overhead on throughput. Target:
//! at most 5%.
//!
//! `cargo bench --bench http` (cargo builds the server binary with the
//! bench; checkpoints from `models/fetch.sh`, found in `$R1SERVE_MODELS` or
//! `~/.cache/r1serve/models`).
//!
//! Environment:
//! - `R1SERVE_BENCH_QUICK=1`: a smoke run, with levels 1 and 8 and 16
//!   tokens per request instead of 1, 8, 32 and 64 tokens.

#[path = "../tests/common/mod.rs"]
mod common;

use futures::StreamExt;
use r1serve::engine::types::{EngineRequest, SamplingParams};
use r1serve::engine::{Engine, EngineConfig, EngineHandle};
use r1serve::model::load::{load, LoadOptions};
use r1serve::tokenizer::{ChatTemplate, Tokenizer};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Context limit of the server and of the in-process engine.
const MAX_MODEL_LEN: usize = 2048;
/// KV pool of the server and of the in-process engine, in MiB.
const KV_MIB: u64 = 256;
/// Clients of the HTTP-versus-engine comparison.
const COMPARE_CLIENTS: usize = 16;

/// Sizes of one run; see the header for the two presets.
struct Plan {
    /// Client counts of the load table.
    levels: Vec<usize>,
    /// Tokens generated per request.
    tokens: usize,
}

impl Plan {
    fn from_env() -> Plan {
        if std::env::var("R1SERVE_BENCH_QUICK").is_ok_and(|v| v == "1") {
            Plan {
                levels: vec![1, 8],
                tokens: 16,
            }
        } else {
            Plan {
                levels: vec![1, 8, 32],
                tokens: 64,
            }
        }
    }
}

/// The checkpoint; fails with a message when it is missing.
fn model_path() -> PathBuf {
    common::model(MODEL)
}

/// The chat messages of client `i`.
fn messages(i: usize) -> Value {
    json!([{"role": "user", "content": format!("Request {i}: write a short story about the number {i}.")}])
}

/// A running `r1serve serve`, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts the binary cargo built alongside this bench on a free port and
    /// waits until `/health` answers 200.
    async fn start(client: &Client) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        let child = Command::new(env!("CARGO_BIN_EXE_r1serve"))
            .args(["serve", "--model"])
            .arg(model_path())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--max-model-len", &MAX_MODEL_LEN.to_string()])
            .args(["--kv-cache-memory", &format!("{KV_MIB}MiB")])
            .env_remove("R1SERVE_API_KEY")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start r1serve");
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(status) = server.child.try_wait().expect("cannot poll r1serve") {
                panic!("r1serve exited during startup: {status}");
            }
            let health = client.get(format!("{}/health", server.base)).send().await;
            if health.is_ok_and(|r| r.status() == StatusCode::OK) {
                return server;
            }
            assert!(Instant::now() < deadline, "server not ready after 300 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client saw: when it sent its request, when each chunk with
/// new text (HTTP) or new tokens (engine) arrived, and the tokens counted.
struct Trace {
    sent: Instant,
    chunks: Vec<Instant>,
    tokens: usize,
}

/// Streams one chat completion and records its chunks.
async fn http_client(client: Client, base: String, i: usize, tokens: usize) -> Trace {
    let body = json!({
        "messages": messages(i),
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let sent = Instant::now();
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("request failed");
    assert_eq!(response.status(), StatusCode::OK, "chat completion refused");
    let mut trace = Trace {
        sent,
        chunks: Vec::with_capacity(tokens),
        tokens: 0,
    };
    let mut bytes = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(piece) = bytes.next().await {
        let now = Instant::now();
        buffer.push_str(std::str::from_utf8(&piece.expect("body")).expect("UTF-8 SSE"));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim_end().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let chunk: Value = serde_json::from_str(data).expect("JSON chunk");
            let delta = &chunk["choices"][0]["delta"];
            let has_text = ["content", "reasoning_content"]
                .iter()
                .any(|k| delta[k].as_str().is_some_and(|s| !s.is_empty()));
            if has_text {
                trace.chunks.push(now);
            }
            if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                trace.tokens = n as usize;
            }
        }
    }
    trace
}

/// Runs one request on the engine and records its outputs.
async fn engine_client(h: EngineHandle, prompt: Vec<u32>, tokens: usize) -> Trace {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let sent = Instant::now();
    let mut stream = h
        .add_request(EngineRequest { prompt, params })
        .expect("add_request");
    let mut trace = Trace {
        sent,
        chunks: Vec::with_capacity(tokens),
        tokens: 0,
    };
    while let Some(out) = stream.next().await {
        let new: usize = out.samples.iter().map(|s| s.token_ids.len()).sum();
        if new > 0 {
            trace.chunks.push(Instant::now());
        }
        trace.tokens += new;
        if out.finished {
            break;
        }
    }
    trace
}

/// Summary of one level: aggregate tokens/s from the first request sent to
/// the last chunk received, and TTFT and ITL percentiles in milliseconds.
struct Summary {
    rate: f64,
    ttft: (f64, f64),
    itl: (f64, f64),
}

/// The `q` quantile (nearest rank) of `v`, which it sorts.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn summarize(traces: &[Trace]) -> Summary {
    let start = traces.iter().map(|t| t.sent).min().expect("clients");
    let end = traces
        .iter()
        .filter_map(|t| t.chunks.last())
        .max()
        .expect("no chunk received");
    let tokens: usize = traces.iter().map(|t| t.tokens).sum();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut ttft: Vec<f64> = traces
        .iter()
        .filter_map(|t| t.chunks.first().map(|c| ms(*c - t.sent)))
        .collect();
    let mut itl: Vec<f64> = traces
        .iter()
        .flat_map(|t| t.chunks.windows(2).map(|w| ms(w[1] - w[0])))
        .collect();
    if itl.is_empty() {
        itl.push(f64::NAN);
    }
    Summary {
        rate: tokens as f64 / (*end - start).as_secs_f64(),
        ttft: (quantile(&mut ttft, 0.5), quantile(&mut ttft, 0.99)),
        itl: (quantile(&mut itl, 0.5), quantile(&mut itl, 0.99)),
    }
}

/// Runs `n` concurrent HTTP clients to the end.
async fn http_level(client: &Client, server: &Server, n: usize, tokens: usize) -> Summary {
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(http_client(client.clone(), server.base.clone(), i, tokens)))
        .collect();
    let mut traces = Vec::with_capacity(n);
    for t in tasks {
        traces.push(t.await.expect("client task"));
    }
    summarize(&traces)
}

/// Runs `n` concurrent engine requests on the prompts the server would
/// have built for the same clients.
async fn engine_level(h: &EngineHandle, prompts: &[Vec<u32>], tokens: usize) -> Summary {
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| tokio::spawn(engine_client(h.clone(), p.clone(), tokens)))
        .collect();
    let mut traces = Vec::with_capacity(prompts.len());
    for t in tasks {
        traces.push(t.await.expect("engine task"));
    }
    summarize(&traces)
}

/// The token ids the server's chat endpoint produces for client `i`.
fn chat_prompt(tok: &Tokenizer, template: &ChatTemplate, i: usize) -> Vec<u32> {
    let text = template
        .render(&messages(i), true, None, &serde_json::Map::new())
        .expect("render");
    tok.encode(&text, false).expect("encode")
}

fn row(label: &str, s: &Summary) {
    println!(
        "| {label} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        s.rate, s.ttft.0, s.ttft.1, s.itl.0, s.itl.1
    );
}

const HEADER: &str = "| clients | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |\n\
                      |---|---|---|---|---|---|";

fn main() {
    let plan = Plan::from_env();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let client = Client::new();
        let server = Server::start(&client).await;
        // Warm-up: first-touch of weights and buffers in the server.
        http_level(&client, &server, 1, 4).await;
        println!(
            "## Streaming chat over HTTP, SmolLM2-135M Q4_1, {} tokens per request\n\n{HEADER}",
            plan.tokens
        );
        for &n in &plan.levels {
            row(
                &n.to_string(),
                &http_level(&client, &server, n, plan.tokens).await,
            );
        }
        let http = http_level(&client, &server, COMPARE_CLIENTS, plan.tokens).await;
        drop(server);

        let m = load(
            model_path().to_str().expect("UTF-8 path"),
            &LoadOptions::default(),
        )
        .expect("load");
        let tok = m.tokenizer.clone();
        let template = ChatTemplate::from_tokenizer(&tok).expect("chat template");
        let config = EngineConfig {
            max_model_len: Some(MAX_MODEL_LEN),
            kv_cache_memory: Some(KV_MIB << 20),
            ..Default::default()
        };
        let h = Engine::start(m.model, tok.clone(), config).expect("engine");
        let prompts: Vec<_> = (0..COMPARE_CLIENTS)
            .map(|i| chat_prompt(&tok, &template, i))
            .collect();
        // Warm-up, as for the server.
        engine_level(&h, &prompts[..1], 4).await;
        let direct = engine_level(&h, &prompts, plan.tokens).await;
        h.shutdown();

        println!(
            "\n## {COMPARE_CLIENTS} clients: in-process engine vs HTTP\n\n{}",
            HEADER.replacen("clients", "path", 1)
        );
        row("engine", &direct);
        row("HTTP", &http);
        println!(
            "\nHTTP overhead on throughput: {:.1}% (target <= 5%)",
            (direct.rate - http.rate) / direct.rate * 100.0
        );
    });
}
