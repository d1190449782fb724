//! OpenAI's Responses API end to end: the real server on Qwen2.5-0.5B with
//! the model's own chat template made a reasoning template, driven by the
//! official `openai` package (`tests/responses_client.py`, which checks
//! every answer against the chat route's for the same conversation), and
//! the stream's framing checked byte for byte here.

mod common;

use common::server::{qwen_reasoning_template, Server, QWEN};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_api_through_the_openai_client() {
    let template = qwen_reasoning_template("responses");
    let template = template.to_string_lossy().into_owned();
    let server = Server::start(QWEN, &["--chat-template", &template], None).await;
    let out = server.run_client("responses_client.py", &[]).await;
    assert!(out.contains("all checks passed"), "{out}");
    stream_framing(&server).await;
}

/// Every event is `event: <type>` and a compact `data:` line whose `type`
/// is that name, numbered from 0; the stream ends after
/// `response.completed`, without `[DONE]`, as OpenAI's does.
async fn stream_framing(server: &Server) {
    let body = json!({"input": "Say hi.", "max_output_tokens": 24, "stream": true,
                      "temperature": 0});
    let response = server.post("/v1/responses", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.expect("body");
    assert!(text.ends_with("\n\n"), "{text:?}");
    assert!(!text.contains("[DONE]"), "{text:?}");
    let events: Vec<&str> = text[..text.len() - 2].split("\n\n").collect();
    let mut names = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let (name, data) = event
            .strip_prefix("event: ")
            .and_then(|e| e.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("bad event {event:?}"));
        assert!(!data.contains('\n'), "multi-line data {data:?}");
        let value: Value = serde_json::from_str(data).expect("event JSON");
        assert_eq!(data.len(), value.to_string().len(), "compact JSON: {data}");
        assert_eq!(value["type"], name, "{event}");
        assert_eq!(value["sequence_number"], i, "{event}");
        names.push(name);
    }
    assert_eq!(names.last(), Some(&"response.completed"), "{names:?}");
    assert!(
        names.contains(&"response.reasoning_text.delta"),
        "the reasoning template's output streams as reasoning: {names:?}"
    );
    let first: Value =
        serde_json::from_str(events[0].split_once("data: ").expect("data").1).expect("JSON");
    assert_eq!(first["response"]["status"], "in_progress");
    assert!(first["response"]["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("resp_")));
}
