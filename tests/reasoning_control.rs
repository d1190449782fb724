//! Reasoning control end to end, on real models behind the real server:
//! thinking budgets in every request dialect, the forced close and the mask
//! on reopening, the answer reserve, `reasoning_end` (streamed and not) and
//! its metric, and the loop guard's silence on real reasoning.
//!
//! Both models get a chat template that opens `<think>` in the generation
//! prompt, so their outputs start inside the reasoning, as R1's do; neither
//! has `<think>` as a single token, so the tags are multi-token text, the
//! harder case for the engine's state tracking.

mod common;

use common::server::*;
use r1serve::engine::reasoning_control::DEFAULT_CLOSE_TEXT;
use r1serve::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// A Qwen-style template whose generation prompt opens the reasoning.
const R1_STYLE_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}";

const QUESTION: &str = "What is 17 * 23? Think briefly, then answer.";

fn tokenizer(model: &str) -> Tokenizer {
    common::gguf_tokenizer(&model_path(model))
}

async fn start(model: &str, extra: &[&str]) -> (Server, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "r1serve-reasoning-control-{}-{model}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let template = dir.join("r1.jinja");
    std::fs::write(&template, R1_STYLE_TEMPLATE).expect("write template");
    let template = template.to_string_lossy().into_owned();
    let mut args = vec!["--chat-template", template.as_str()];
    args.extend_from_slice(extra);
    (Server::start(model, &args, None).await, dir)
}

fn reasoning_tokens(reply: &Value) -> u64 {
    reply["usage"]["completion_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .expect("reasoning_tokens")
}

/// The reply and the streamed reply agree on every field; returns the
/// non-streamed one.
async fn both_ways(server: &Server, body: &Value) -> Value {
    let reply = server.post_ok("/v1/chat/completions", body).await;
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = server.stream("/v1/chat/completions", &streamed).await;
    let choice = &reply["choices"][0];
    let message = &choice["message"];
    assert_eq!(
        joined(&chunks, "reasoning_content")[0],
        message["reasoning_content"].as_str().unwrap_or(""),
        "{body}"
    );
    assert_eq!(
        joined(&chunks, "content")[0],
        message["content"].as_str().unwrap_or(""),
        "{body}"
    );
    let last = chunks
        .iter()
        .rev()
        .find(|c| !c["choices"][0]["finish_reason"].is_null())
        .expect("a final chunk");
    assert_eq!(last["choices"][0]["finish_reason"], choice["finish_reason"]);
    assert_eq!(last["choices"][0]["reasoning_end"], choice["reasoning_end"]);
    let with_end = chunks
        .iter()
        .filter(|c| c["choices"][0].get("reasoning_end").is_some())
        .count();
    assert_eq!(with_end, 1, "reasoning_end comes in the final chunk only");
    // The prefix cache may serve the second copy's prompt.
    let usage = &chunks.last().expect("usage")["usage"];
    for field in ["completion_tokens", "completion_tokens_details"] {
        assert_eq!(usage[field], reply["usage"][field], "{body}");
    }
    reply
}

/// Budgets 0, 1, 8 and 64 give exactly min(natural, budget) reasoning
/// tokens, plus the close when the server ended the reasoning (the budget
/// cut it, or the model tried to end its output inside it), then an
/// answer; the reasoning kept is the start of the unbounded one.
async fn budgets_bound_the_reasoning(server: &Server, close_len: u64) {
    let free = both_ways(
        server,
        &chat(QUESTION, json!({"temperature": 0, "max_tokens": 160})),
    )
    .await;
    let natural = match free["choices"][0]["reasoning_end"].as_str() {
        Some("closed") => reasoning_tokens(&free),
        Some("length") => u64::MAX,
        other => panic!("unexpected end {other:?}: {free}"),
    };
    // A model that ends its output inside the reasoning leaves no answer;
    // under a budget the server closes the block for it.
    let ends_inside = free["choices"][0]["message"]["content"].is_null();
    let natural_text = free["choices"][0]["message"]["reasoning_content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let wrap_up = DEFAULT_CLOSE_TEXT
        .split("</think>")
        .next()
        .expect("close text");
    for (budget, dialect) in [
        (0u64, json!({"thinking_token_budget": 0})),
        (1, json!({"reasoning": {"max_tokens": 1}})),
        (8, json!({"thinking_token_budget": 8})),
        (
            64,
            json!({"reasoning": {"max_tokens": 64}, "reasoning_effort": null}),
        ),
    ] {
        let mut extra = json!({"temperature": 0, "max_tokens": 64 + close_len + 48});
        extra
            .as_object_mut()
            .expect("object")
            .extend(dialect.as_object().expect("object").clone());
        let reply = both_ways(server, &chat(QUESTION, extra)).await;
        let choice = &reply["choices"][0];
        let reasoning = choice["message"]["reasoning_content"]
            .as_str()
            .unwrap_or("");
        if natural <= budget && !ends_inside {
            assert_eq!(reasoning_tokens(&reply), natural, "budget {budget}");
            assert_eq!(choice["reasoning_end"], "closed", "budget {budget}");
            assert_eq!(reasoning, natural_text);
        } else if natural <= budget {
            // The close takes the place of the end-of-sequence token.
            assert_eq!(reasoning_tokens(&reply), natural - 1 + close_len, "{reply}");
            assert_eq!(choice["reasoning_end"], "closed", "budget {budget}");
            assert_eq!(reasoning, format!("{natural_text}{wrap_up}"));
        } else {
            assert_eq!(
                reasoning_tokens(&reply),
                budget + close_len,
                "budget {budget}: {reply}"
            );
            assert_eq!(choice["reasoning_end"], "budget", "budget {budget}");
            let kept = reasoning
                .strip_suffix(wrap_up)
                .unwrap_or_else(|| panic!("budget {budget}: {reasoning:?} lacks the wrap-up"));
            assert!(natural_text.starts_with(kept), "budget {budget}: {kept:?}");
        }
        assert!(
            choice["message"]["content"].is_string(),
            "budget {budget}: an answer follows: {reply}"
        );
    }
    let ended = server
        .metric("r1serve:reasoning_end_total{state=\"budget\"}")
        .await;
    assert!(ended >= 2.0, "{ended}");
    // English questions, English reasoning (digits are not words): each
    // request observes the share of its reasoning's words in Latin script.
    let observed = server
        .metric("r1serve:reasoning_language_consistency_count")
        .await;
    let shares = server
        .metric("r1serve:reasoning_language_consistency_sum")
        .await;
    assert!(observed >= 2.0, "{observed} requests measured");
    assert!(
        shares <= observed && shares / observed > 0.9,
        "mean share {}",
        shares / observed
    );
}

/// After a forced close the model cannot reopen its reasoning, even when
/// a logit bias pushes it to write `<think>`: the tokens it generates (read
/// from logprobs, which the splitter does not filter) never spell the tag
/// again, and the reasoning count stops at the close.
async fn a_forced_close_cannot_be_reopened(server: &Server, tok: &Tokenizer, close_len: u64) {
    // The first token of the tag strongly, the middle ones a little: the
    // model then starts the tag and would finish it on its own.
    let open = tok.encode("<think>", false).expect("encode");
    let bias: serde_json::Map<String, Value> = open
        .iter()
        .enumerate()
        .take(open.len().saturating_sub(1).max(1))
        .map(|(i, id)| (id.to_string(), json!(if i == 0 { 10 } else { 4 })))
        .collect();
    let first = tok.decode(&open[..1], false).expect("decode");
    let body = chat(
        QUESTION,
        json!({
            "temperature": 0, "max_tokens": 8 + close_len + 40, "thinking_token_budget": 8,
            "logit_bias": bias, "logprobs": true,
        }),
    );
    let reply = both_ways(server, &body).await;
    let choice = &reply["choices"][0];
    assert_eq!(choice["reasoning_end"], "budget", "{reply}");
    assert_eq!(reasoning_tokens(&reply), 8 + close_len);
    let pieces: Vec<&str> = choice["logprobs"]["content"]
        .as_array()
        .expect("logprobs")
        .iter()
        .map(|t| t["token"].as_str().expect("token"))
        .collect();
    let after_close: String = pieces[(8 + close_len) as usize..].concat();
    assert!(
        after_close.contains(&first),
        "the bias should make the model start the tag: {after_close:?}"
    );
    assert!(!after_close.contains("<think>"), "{after_close:?}");
}

/// max_tokens 40 with a reserve of 16: the reasoning, close included, ends
/// within 24 tokens, and the answer gets the rest.
async fn the_answer_reserve_leaves_room(server: &Server) {
    let reply = both_ways(
        server,
        &chat(
            QUESTION,
            json!({"temperature": 0, "max_tokens": 40, "answer_token_reserve": 16}),
        ),
    )
    .await;
    let choice = &reply["choices"][0];
    assert!(reasoning_tokens(&reply) <= 24, "{reply}");
    let content = choice["message"]["content"].as_str().unwrap_or("");
    assert!(!content.trim().is_empty(), "{reply}");
    assert!(
        matches!(choice["reasoning_end"].as_str(), Some("budget" | "closed")),
        "{reply}"
    );

    let refused = server
        .post(
            "/v1/chat/completions",
            &chat(
                QUESTION,
                json!({"max_tokens": 16, "answer_token_reserve": 16}),
            ),
        )
        .await;
    assert_eq!(refused.status(), reqwest::StatusCode::BAD_REQUEST);
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["param"], "answer_token_reserve");
}

/// Efforts map to the configured budgets.
async fn effort_maps_to_the_configured_budget(server: &Server, close_len: u64) {
    for (effort, budget) in [("low", 2u64), ("medium", 4)] {
        let reply = both_ways(
            server,
            &chat(
                QUESTION,
                json!({"temperature": 0, "max_tokens": 80, "reasoning_effort": effort}),
            ),
        )
        .await;
        assert_eq!(reasoning_tokens(&reply), budget + close_len, "{effort}");
    }
    let hidden = server
        .post_ok(
            "/v1/chat/completions",
            &chat(
                QUESTION,
                json!({"max_tokens": 40, "reasoning": {"effort": "low", "exclude": true}}),
            ),
        )
        .await;
    assert!(hidden["choices"][0]["message"]
        .get("reasoning_content")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen_reasoning_control() {
    let tok = tokenizer(QWEN);
    let close_len = tok.encode(DEFAULT_CLOSE_TEXT, false).expect("encode").len() as u64;
    let (server, dir) = start(QWEN, &["--reasoning-effort-budgets", "2,4,6"]).await;
    budgets_bound_the_reasoning(&server, close_len).await;
    a_forced_close_cannot_be_reopened(&server, &tok, close_len).await;
    the_answer_reserve_leaves_room(&server).await;
    effort_maps_to_the_configured_budget(&server, close_len).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm_reasoning_control() {
    let tok = tokenizer(SMOL);
    let close_len = tok.encode(DEFAULT_CLOSE_TEXT, false).expect("encode").len() as u64;
    let (server, dir) = start(SMOL, &[]).await;
    budgets_bound_the_reasoning(&server, close_len).await;
    a_forced_close_cannot_be_reopened(&server, &tok, close_len).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The loop guard (on by default) never fires on the real model's own
/// reasoning: 200 samples at temperature 0.6, each up to 192 tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_guard_is_silent_on_real_reasoning() {
    let (server, dir) = start(QWEN, &[]).await;
    let questions = [
        "What is 17 * 23?",
        "Is 221 a prime number?",
        "Name three rivers in Europe.",
        "How many legs do four spiders have?",
    ];
    let mut ends = std::collections::HashMap::<String, usize>::new();
    for (i, q) in questions.iter().enumerate() {
        let reply = server
            .post_ok(
                "/v1/chat/completions",
                &chat(
                    q,
                    // The guard watches reasoning only: each sample stops
                    // where its reasoning closes.
                    json!({
                        "temperature": 0.6, "top_p": 0.95, "n": 50, "seed": i,
                        "max_tokens": 192, "stop": ["</think>"],
                    }),
                ),
            )
            .await;
        for choice in reply["choices"].as_array().expect("choices") {
            let end = choice["reasoning_end"].as_str().expect("reasoning_end");
            *ends.entry(end.to_string()).or_default() += 1;
        }
    }
    assert_eq!(ends.values().sum::<usize>(), 200);
    assert_eq!(ends.get("loop"), None, "{ends:?}");
    eprintln!("reasoning ends over 200 samples: {ends:?}");
    let _ = std::fs::remove_dir_all(dir);
}
