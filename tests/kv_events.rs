//! KV-cache events and vLLM-named metrics on a live server, as an llm-d
//! pool sees them: a Python subscriber written from the documented wire
//! format (pyzmq + msgpack) checks stores, evictions and sequence numbers
//! against a small cache that must evict, and `prometheus_client` reads the
//! `vllm:` metrics from the first scrape. One server for all checks.

mod common;

use common::server::*;
use serde_json::Value;

/// Tokens per KV block: the server's default, which the client checks.
const BLOCK_SIZE: &str = "16";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smollm_publishes_kv_events() {
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    // `*`: the server binds and the subscriber connects.
    let config = format!(
        r#"{{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:{port}", "topic": "kv-events"}}"#
    );
    // About 22 blocks of SmolLM2's 368 KiB (30 layers, 3 KV heads of 64,
    // keys and values in f16, 16 tokens): a few prompts fill it.
    let server = Server::start(
        SMOL,
        &[
            "--kv-cache-memory",
            "8MiB",
            "--max-model-len",
            "256",
            "--metrics-compat",
            "vllm",
            "--kv-events-config",
            &config,
        ],
        None,
    )
    .await;
    let models: Value = server.get("/v1/models").await.json().await.expect("json");
    let name = models["data"][0]["id"].as_str().expect("model id");
    server
        .run_client(
            "metrics_client.py",
            &[("METRICS_MODEL", name), ("METRICS_COMPAT", "vllm")],
        )
        .await;
    let num_blocks = num_blocks(&server).await;
    let messages = server
        .run_client(
            "kv_events_client.py",
            &[
                ("KV_EVENTS_ENDPOINT", &endpoint),
                ("KV_EVENTS_TOPIC", "kv-events"),
                ("KV_BLOCK_SIZE", BLOCK_SIZE),
                ("KV_NUM_BLOCKS", &num_blocks.to_string()),
            ],
        )
        .await;
    assert!(messages.trim().parse::<u64>().expect("a count") > 1);
    assert_eq!(server.metric("r1serve:kv_events_dropped_total").await, 0.0);
}

/// The pool's block count, from the `num_blocks` label of
/// `cache_config_info`.
async fn num_blocks(server: &Server) -> usize {
    let text = server.get("/metrics").await.text().await.expect("metrics");
    let line = text
        .lines()
        .find(|l| l.starts_with("r1serve:cache_config_info{"))
        .unwrap_or_else(|| panic!("no cache_config_info:\n{text}"));
    let (_, rest) = line.split_once("num_blocks=\"").expect("num_blocks label");
    rest.split('"')
        .next()
        .unwrap()
        .parse()
        .expect("a block count")
}
