//! Structured outputs end to end: the real server on Qwen2.5-0.5B (real
//! weights) with the model's own chat template, its tool block included,
//! made a reasoning template (its generation prompt opens `<think>`).
//!
//! The answers are validated by independent code: the `jsonschema` Python
//! package in `tests/structured_client.py`, and `regex`-free checks written
//! out here for the legacy route. Bad constraints are 400s naming the
//! parameter, with the grammar engine's message where it rejects them.

mod common;

use common::server::{qwen_reasoning_template, Server, QWEN};
use serde_json::{json, Value};

async fn start() -> Server {
    let template = qwen_reasoning_template("structured");
    let template = template.to_string_lossy().into_owned();
    Server::start(QWEN, &["--chat-template", &template], None).await
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

fn weather() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qwen_structured_outputs() {
    let server = start().await;
    bad_constraints_are_named(&server).await;
    legacy_route_follows_regex_and_choice(&server).await;
    python_structured_client(&server).await;
}

async fn bad_constraints_are_named(server: &Server) {
    let route = "/v1/chat/completions";
    for (extra, param, needle) in [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}}),
            "response_format",
            "nonsense",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                "schema": "not a schema"}}}),
            "response_format.json_schema.schema",
            "not valid JSON",
        ),
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format.type",
            "'xml' is not supported",
        ),
        (
            json!({"guided_regex": "(unclosed"}),
            "guided_regex",
            "invalid",
        ),
        (json!({"guided_choice": []}), "guided_choice", "empty"),
        (
            json!({"guided_grammar": "root ::= \"a\""}),
            "guided_grammar",
            "invalid",
        ),
        (
            json!({"guided_json": {"type": "object"}, "guided_regex": "a+"}),
            "guided_regex",
            "both constrain",
        ),
        (
            json!({"tools": [weather()], "tool_choice": {"type": "function",
                   "function": {"name": "get_time"}}}),
            "tool_choice",
            "'get_time', which is not in 'tools'",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools[0].function.parameters",
            "no parameters schema",
        ),
        (
            json!({"tool_choice": "required"}),
            "tool_choice",
            "requires 'tools'",
        ),
        (
            json!({"tools": [weather()], "tool_choice": "required",
                   "response_format": {"type": "json_object"}}),
            "response_format",
            "both constrain",
        ),
    ] {
        let error = server.post_400(route, &chat(extra.clone()), param).await;
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{extra}: {message:?} lacks {needle:?}"
        );
    }
}

/// `/v1/completions` takes vLLM's fields: with no reasoning on this route the
/// grammar holds from the first token, at any temperature.
async fn legacy_route_follows_regex_and_choice(server: &Server) {
    for seed in 0..4 {
        let reply = server
            .post_ok(
                "/v1/completions",
                &json!({"prompt": "A random product code:", "max_tokens": 24,
                        "temperature": 1.0, "seed": seed,
                        "guided_regex": "[A-Z]{3}-[0-9]{2,4}"}),
            )
            .await;
        let text = reply["choices"][0]["text"].as_str().expect("text");
        let (letters, digits) = text.split_once('-').expect("a dash");
        assert!(
            letters.len() == 3 && letters.chars().all(|c| c.is_ascii_uppercase()),
            "{text:?}"
        );
        assert!(
            (2..=4).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()),
            "{text:?}"
        );
        assert_eq!(reply["choices"][0]["finish_reason"], "stop", "{reply}");
        let reply = server
            .post_ok(
                "/v1/completions",
                &json!({"prompt": "Is the sky green? Answer:", "max_tokens": 8,
                        "temperature": 1.0, "seed": seed,
                        "structured_outputs": {"choice": ["yes", "no", "maybe not"]}}),
            )
            .await;
        let text = reply["choices"][0]["text"].as_str().expect("text");
        assert!(["yes", "no", "maybe not"].contains(&text), "{text:?}");
    }
}

/// Runs `tests/structured_client.py`.
async fn python_structured_client(server: &Server) {
    let out = server.run_client("structured_client.py", &[]).await;
    eprintln!("{out}");
}
