//! A real `r1serve serve` on a free port, for end-to-end tests that also
//! read what the server logs: its stderr goes to a file the test can read
//! back. Killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::Value;

/// A running server process.
pub struct Server {
    child: Child,
    base: String,
    client: Client,
    log: PathBuf,
}

/// A free port: bind port 0, read the port, release it. Another process
/// could take it in between, which is unlikely enough on a test machine.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

impl Server {
    /// Starts `model` (a path) with `extra` flags, logging at `info`, and
    /// waits until `/health` answers 200.
    pub async fn start(model: &std::path::Path, extra: &[&str]) -> Server {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("r1serve-{}-{port}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_r1serve"))
            .args(["serve", "--model"])
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--kv-cache-memory", "256MiB", "--max-model-len", "2048"])
            .args(extra)
            .env_remove("R1SERVE_API_KEY")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("cannot start r1serve");
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: Client::new(),
            log,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(status) = self.child.try_wait().expect("cannot poll r1serve") {
                panic!("r1serve exited during startup: {status}\n{}", self.log());
            }
            if let Ok(response) = self.client.get(self.url("/health")).send().await {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server not ready after 300 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POSTs `body` and returns the status and the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request failed");
        let status = response.status();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// POSTs `body`, asserts 200 and returns the JSON answer.
    pub async fn post_ok(&self, path: &str, body: &Value) -> Value {
        let (status, json) = self.post(path, body).await;
        assert_eq!(status, StatusCode::OK, "{path} {body}: {json}");
        json
    }

    /// POSTs `body`, asserts a 400 naming `param`, and returns the error.
    pub async fn post_400(&self, path: &str, body: &Value, param: &str) -> Value {
        let (status, json) = self.post(path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {json}");
        assert_eq!(json["error"]["param"], param, "{body}: {json}");
        json
    }

    /// Streams `body` and returns the JSON of its `data:` events, without
    /// `[DONE]`.
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let text = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request failed")
            .text()
            .await
            .expect("stream body");
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|p| *p != "[DONE]")
            .map(|p| serde_json::from_str(p).expect("event JSON"))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
