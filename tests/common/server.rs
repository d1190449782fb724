//! The real `r1serve serve` binary on a free port, spoken to over HTTP, for
//! the end-to-end tests: starting it, requests, SSE framing checks and
//! metric reading.
//!
//! Models come from `$R1SERVE_MODELS` or `~/.cache/r1serve/models`
//! (`models/fetch.sh` downloads them); a missing model fails the test rather
//! than skipping it, so CI cannot pass without exercising the server. The
//! server logs at `info` to a file the test can read back ([`Server::log`]).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

pub const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
pub const KEY: &str = "test-key";

pub fn model_path(file: &str) -> PathBuf {
    super::model(file)
}

/// The Python with the test clients (`tests/requirements.txt`):
/// `$R1SERVE_PYTHON`, else the venv `models/fetch.sh` creates
/// (`$R1SERVE_VENV`, default `~/.cache/r1serve/venv`), else `python3`.
/// Whichever it is, a missing client fails the test that needs it.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("R1SERVE_PYTHON") {
        return python.into();
    }
    let venv = std::env::var_os("R1SERVE_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/r1serve/venv")));
    venv.map(|v| v.join("bin/python"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "python3".into())
}

/// A free port: bind port 0, read the port, release it. Another process
/// could take it in between, which is unlikely enough on a test machine.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// How many cores a server's test may count on. A test binary's tests run
/// side by side (two at a time on a 2-core machine), so a test that compares
/// the server's latencies against each other holds the machine alone
/// ([`Server::start_alone`]); every other server holds a shared claim. A
/// test that starts two servers at once must not share a binary with one
/// that starts alone: its second shared claim would wait behind the queued
/// exclusive one, which waits for its first.
static CPU: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A running server process, killed on drop.
pub struct Server {
    /// The server process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The HTTP client.
    pub client: Client,
    /// The API key sent, if any.
    pub key: Option<&'static str>,
    /// Where the server's stderr goes.
    pub log: PathBuf,
    /// A shared claim on the machine, for all but [`Server::start_alone`].
    _shared: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
    /// The exclusive claim of [`Server::start_alone`].
    _alone: Option<tokio::sync::RwLockWriteGuard<'static, ()>>,
}

impl Server {
    pub async fn start(model: &str, extra: &[&str], key: Option<&'static str>) -> Server {
        let shared = CPU.read().await;
        Self::spawn(model, extra, key, Some(shared), None).await
    }

    /// Starts once no other server of this test binary runs, and keeps
    /// others from starting until dropped: for tests that time the server.
    pub async fn start_alone(model: &str, extra: &[&str]) -> Server {
        let alone = CPU.write().await;
        Self::spawn(model, extra, None, None, Some(alone)).await
    }

    async fn spawn(
        model: &str,
        extra: &[&str],
        key: Option<&'static str>,
        shared: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
        alone: Option<tokio::sync::RwLockWriteGuard<'static, ()>>,
    ) -> Server {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("r1serve-{}-{port}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_r1serve"));
        command
            .args(["serve", "--model"])
            .arg(model_path(model))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .env_remove("R1SERVE_API_KEY")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr);
        // clap rejects a repeated option, so the default length and cache
        // size yield to a test's own.
        if !extra.contains(&"--max-model-len") {
            command.args(["--max-model-len", "2048"]);
        }
        if !extra.contains(&"--kv-cache-memory") {
            command.args(["--kv-cache-memory", "256MiB"]);
        }
        if let Some(key) = key {
            command.args(["--api-key", key]);
        }
        let child = command.spawn().expect("cannot start r1serve");
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            // The server closes a keep-alive connection idle for
            // `--header-timeout` (60 s); a pooled connection reused at that
            // moment fails mid-request, so the pool lets go sooner.
            client: Client::builder()
                .pool_idle_timeout(Duration::from_secs(20))
                .build()
                .expect("HTTP client"),
            key,
            log,
            _shared: shared,
            _alone: alone,
        };
        server.wait_ready().await;
        server
    }

    /// Polls `/health` until 200; the port is bound before the model
    /// loads, so 503 (or a refused connection very early) means "wait".
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut saw_loading = false;
        loop {
            if let Some(status) = self.child.try_wait().expect("cannot poll r1serve") {
                panic!("r1serve exited during startup: {status}\n{}", self.log());
            }
            if let Ok(response) = self.client.get(self.url("/health")).send().await {
                match response.status() {
                    StatusCode::OK => break,
                    StatusCode::SERVICE_UNAVAILABLE => saw_loading = true,
                    other => panic!("/health answered {other}"),
                }
            }
            assert!(Instant::now() < deadline, "server not ready after 300 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Not asserted: a tiny model may load before the first poll.
        let _ = saw_loading;
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn authed(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.authed(self.client.post(self.url(path)).json(body))
            .send()
            .await
            .expect("request failed")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.authed(self.client.get(self.url(path)))
            .send()
            .await
            .expect("request failed")
    }

    pub async fn post_ok(&self, path: &str, body: &Value) -> Value {
        let response = self.post(path, body).await;
        let status = response.status();
        let text = response.text().await.expect("body");
        assert_eq!(status, StatusCode::OK, "{path} {body}: {text}");
        serde_json::from_str(&text).expect("JSON body")
    }

    /// Posts `body`, expects a 400 naming `param`, and returns the error.
    pub async fn post_400(&self, path: &str, body: &Value, param: &str) -> Value {
        let response = self.post(path, body).await;
        let status = response.status();
        let text = response.text().await.expect("body");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {text}");
        let json: Value = serde_json::from_str(&text).expect("JSON body");
        assert_eq!(json["error"]["param"], param, "{body}: {json}");
        json
    }

    /// Streams `body` and returns the raw SSE text after checking its
    /// framing byte for byte.
    pub async fn stream_raw(&self, path: &str, body: &Value) -> String {
        let response = self.post(path, body).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let text = response.text().await.expect("stream body");
        check_sse_framing(&text);
        text
    }

    pub async fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        events(&self.stream_raw(path, body).await)
    }

    /// Runs `tests/SCRIPT` (a Python client of `tests/requirements.txt`)
    /// against this server, as an OpenAI client configured by environment
    /// (`OPENAI_BASE_URL`, `OPENAI_API_KEY`, and `env`), asserts that it
    /// exits successfully and returns its standard output. A failure shows
    /// the client's output and the end of the server's log.
    pub async fn run_client(&self, script: &str, env: &[(&str, &str)]) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join(script);
        let output = tokio::process::Command::new(python())
            .arg(path)
            .env("OPENAI_BASE_URL", self.url("/v1"))
            .env("OPENAI_API_KEY", self.key.unwrap_or("unused"))
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output()
            .await
            .expect("cannot run Python");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{script} failed:\n{stdout}\n{}\nserver log tail:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        stdout
    }

    /// The value of a metric, named with its labels but without the
    /// `model_name` label every metric carries.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.expect("metrics");
        text.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (without_model_name(key) == name).then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A metric's key with its `model_name` label removed.
pub fn without_model_name(key: &str) -> String {
    let Some((name, labels)) = key.split_once('{') else {
        return key.to_string();
    };
    let labels: Vec<&str> = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|label| !label.starts_with("model_name="))
        .collect();
    if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    }
}

/// OpenAI's framing: only `data: <json>` events separated by a blank line,
/// ending with `data: [DONE]`; no comments, ids or event names.
pub fn check_sse_framing(text: &str) {
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream must end with [DONE]: {text:?}"
    );
    let body = &text[..text.len() - 2];
    for event in body.split("\n\n") {
        assert!(event.starts_with("data: "), "bad event {event:?}");
        assert!(!event.contains('\n'), "multi-line event {event:?}");
        let payload = &event["data: ".len()..];
        if payload != "[DONE]" {
            let value: Value = serde_json::from_str(payload).expect("event is JSON");
            // Re-serializing reorders keys but keeps the length of compact
            // JSON, so equal lengths mean no whitespace between tokens.
            assert_eq!(
                payload.len(),
                value.to_string().len(),
                "event JSON must be compact: {payload}"
            );
        }
    }
    assert_eq!(text.matches("data: [DONE]").count(), 1);
}

pub fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|p| *p != "[DONE]")
        .map(|p| serde_json::from_str(p).expect("event JSON"))
        .collect()
}

pub fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": content}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// Joins the text fields of streamed chat chunks per choice index.
pub fn joined(chunks: &[Value], field: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for chunk in chunks {
        for choice in chunk["choices"].as_array().expect("choices") {
            let index = choice["index"].as_u64().expect("index") as usize;
            if out.len() <= index {
                out.resize(index + 1, String::new());
            }
            let text = if field == "text" {
                &choice["text"]
            } else {
                &choice["delta"][field]
            };
            out[index].push_str(text.as_str().unwrap_or(""));
        }
    }
    out
}

pub fn usage_adds_up(usage: &Value) {
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    let completion = usage["completion_tokens"]
        .as_u64()
        .expect("completion_tokens");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(prompt + completion),
        "{usage}"
    );
    assert!(prompt > 0, "{usage}");
}

/// Qwen2.5's own chat template (tools and all) with `<think>\n` after its
/// generation prompt, as the DeepSeek-R1 distills' templates open the
/// reasoning; written to a temporary file named after `tag`.
pub fn qwen_reasoning_template(tag: &str) -> PathBuf {
    const GENERATION_PROMPT: &str = "<|im_start|>assistant\\n";
    let tok = super::gguf_tokenizer(&super::qwen05());
    let mut template = tok.chat_template().expect("Qwen's template").to_string();
    let at = template
        .rfind(GENERATION_PROMPT)
        .expect("the template writes a generation prompt")
        + GENERATION_PROMPT.len();
    template.insert_str(at, "<think>\\n");
    let path = std::env::temp_dir().join(format!(
        "r1serve-{tag}-{}-qwen-think.jinja",
        std::process::id()
    ));
    std::fs::write(&path, template).expect("write template");
    path
}
