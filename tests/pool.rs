//! r1serve as a member of an llm-d inference pool, end to end: the metrics
//! the endpoint picker reads, present and idle from the first scrape (read
//! by `prometheus_client`'s parser), and the render endpoints its tokenizer
//! calls, which must give exactly the ids the same request is run on.
//! One server for all checks (see `tests/server.rs` on why).

mod common;

use common::server::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smollm_as_a_pool_member() {
    let server = Server::start(SMOL, &[], None).await;
    let name = served_name(&server).await;
    // First, before any request: every metric present at its idle value,
    // and no vLLM names without --metrics-compat.
    server
        .run_client(
            "metrics_client.py",
            &[("METRICS_MODEL", &name), ("METRICS_COMPAT", "")],
        )
        .await;
    chat_render_matches_the_run_prompt(&server).await;
    completion_render_matches_the_run_prompt(&server).await;
    render_refuses_what_generation_refuses(&server).await;
}

async fn served_name(server: &Server) -> String {
    let models: Value = server.get("/v1/models").await.json().await.expect("json");
    models["data"][0]["id"]
        .as_str()
        .expect("model id")
        .to_string()
}

/// The ids of `/v1/chat/completions/render` are the ids `/tokenize` gives
/// for the same messages and as many as the completion's
/// `usage.prompt_tokens`, with tools and with the conversation's ending
/// changed too (which changes the ids).
async fn chat_render_matches_the_run_prompt(server: &Server) {
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let mut rendered_ids = Vec::new();
    for extra in [
        json!({}),
        json!({"tools": tools}),
        json!({"add_generation_prompt": false}),
    ] {
        let mut request = chat("Name three prime numbers.", json!({"max_tokens": 1}));
        request["messages"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"role": "system", "content": "Be brief."}));
        let mut tokenize = json!({"messages": request["messages"]});
        for (k, v) in extra.as_object().unwrap() {
            request[k] = v.clone();
            tokenize[k] = v.clone();
        }
        let rendered = server
            .post_ok("/v1/chat/completions/render", &request)
            .await;
        let ids = ids_of(&rendered);
        assert!(
            rendered["request_id"]
                .as_str()
                .unwrap()
                .starts_with("chatcmpl-"),
            "{rendered}"
        );
        assert_eq!(rendered["stream"], false);
        assert!(rendered["features"].is_null());
        let tokenized = server.post_ok("/tokenize", &tokenize).await;
        assert_eq!(ids, ids_of_field(&tokenized, "tokens"), "{extra}");
        let completion = server.post_ok("/v1/chat/completions", &request).await;
        assert_eq!(
            completion["usage"]["prompt_tokens"].as_u64(),
            Some(ids.len() as u64),
            "{extra}"
        );
        rendered_ids.push(ids);
    }
    assert_ne!(rendered_ids[0], rendered_ids[2], "the ending is rendered");
    let streamed = server
        .post_ok(
            "/v1/chat/completions/render",
            &chat("Hi", json!({"stream": true})),
        )
        .await;
    assert_eq!(streamed["stream"], true);
}

/// `/v1/completions/render` answers a list, as vLLM does, holding the ids
/// `/tokenize` gives for the prompt (BOS and all), as many as the
/// completion's `usage.prompt_tokens`; a token prompt renders to itself.
async fn completion_render_matches_the_run_prompt(server: &Server) {
    let request = json!({"prompt": "The capital of France is", "max_tokens": 1});
    let rendered = server.post_ok("/v1/completions/render", &request).await;
    let entries = rendered.as_array().expect("a list");
    assert_eq!(entries.len(), 1, "{rendered}");
    let ids = ids_of(&entries[0]);
    assert!(entries[0]["request_id"]
        .as_str()
        .unwrap()
        .starts_with("cmpl-"));
    let tokenized = server
        .post_ok("/tokenize", &json!({"prompt": request["prompt"]}))
        .await;
    assert_eq!(ids, ids_of_field(&tokenized, "tokens"));
    let completion = server.post_ok("/v1/completions", &request).await;
    assert_eq!(
        completion["usage"]["prompt_tokens"].as_u64(),
        Some(ids.len() as u64)
    );
    let by_ids = server
        .post_ok(
            "/v1/completions/render",
            &json!({"prompt": ids, "max_tokens": 1}),
        )
        .await;
    assert_eq!(ids_of(&by_ids[0]), ids);
}

/// What the generating routes refuse, render refuses the same way: another
/// model's name, an empty prompt, a prompt that leaves no room in the
/// context, an out-of-vocabulary id.
async fn render_refuses_what_generation_refuses(server: &Server) {
    let response = server
        .post(
            "/v1/chat/completions/render",
            &chat("Hi", json!({"model": "not-served"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    server
        .post_400("/v1/completions/render", &json!({"prompt": ""}), "prompt")
        .await;
    server
        .post_400(
            "/v1/completions/render",
            &json!({"prompt": [1u32 << 30]}),
            "prompt",
        )
        .await;
    let long = "word ".repeat(3000);
    for path in ["/v1/chat/completions/render", "/v1/chat/completions"] {
        let response = server.post(path, &chat(&long, json!({}))).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
    }
}

fn ids_of(rendered: &Value) -> Vec<u64> {
    ids_of_field(rendered, "token_ids")
}

fn ids_of_field(value: &Value, field: &str) -> Vec<u64> {
    let ids: Vec<u64> = value[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {value}"))
        .iter()
        .map(|id| id.as_u64().expect("a token id"))
        .collect();
    assert!(!ids.is_empty(), "{value}");
    ids
}
