//! `/v1/completions` with a batch of prompts, and echoed prompts with their
//! logprobs (how lm-evaluation-harness scores a continuation): each checked
//! against the same prompts sent one request at a time. The real server, on
//! a free port, with SmolLM2.

mod common;

use std::time::{Duration, Instant};

use common::server::*;
use futures::StreamExt;
use serde_json::{json, Value};

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
];

/// Logprobs of one token computed in two requests whose steps hold
/// different rows: the prompt's rows against a decode of the same position
/// sum their dot products in another order, a few 1e-5 relative on logits
/// of magnitude ~30, so ~1e-3 on a logprob (a logit minus a log-sum-exp);
/// 1e-2 leaves a margin. (The same bound as tests/request_fields.rs.)
const ROW_TOLERANCE: f64 = 1e-2;

fn texts(reply: &Value) -> Vec<String> {
    reply["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| c["text"].as_str().expect("text").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_take_batches_of_prompts_and_echo_their_logprobs() {
    let server = Server::start(SMOL, &[], None).await;
    batches_answer_as_single_requests(&server).await;
    streamed_batches_interleave_by_index(&server).await;
    echoed_prompts_carry_their_logprobs(&server).await;
    batch_bounds_and_render(&server).await;
    a_dropped_batch_frees_every_request(&server).await;
}

/// A batch of three prompts with `n = 2`, greedy: choice `2i + j` is
/// prompt `i`'s answer, token for token the single request's, and the
/// usage is the sum of the single requests'.
async fn batches_answer_as_single_requests(server: &Server) {
    let mut singles = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for prompt in PROMPTS {
        let reply = server
            .post_ok(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0}),
            )
            .await;
        singles.push(texts(&reply)[0].clone());
        prompt_tokens += reply["usage"]["prompt_tokens"].as_u64().expect("usage");
        completion_tokens += reply["usage"]["completion_tokens"].as_u64().expect("usage");
    }
    let batch = server
        .post_ok(
            "/v1/completions",
            &json!({"prompt": PROMPTS, "max_tokens": 12, "temperature": 0, "n": 2}),
        )
        .await;
    let choices = batch["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 6, "{batch}");
    for (k, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], k, "{batch}");
        assert_eq!(choice["text"], singles[k / 2], "choice {k}: {batch}");
    }
    usage_adds_up(&batch["usage"]);
    assert_eq!(batch["usage"]["prompt_tokens"], prompt_tokens, "{batch}");
    assert_eq!(
        batch["usage"]["completion_tokens"],
        2 * completion_tokens,
        "{batch}"
    );

    // Token prompts batch the same way.
    let mut lists = Vec::new();
    for prompt in PROMPTS {
        let ids = server
            .post_ok("/tokenize", &json!({"prompt": prompt}))
            .await["tokens"]
            .clone();
        lists.push(ids);
    }
    let tokens = server
        .post_ok(
            "/v1/completions",
            &json!({"prompt": lists, "max_tokens": 12, "temperature": 0}),
        )
        .await;
    assert_eq!(texts(&tokens), singles);
}

/// Streamed, with `echo` and a usage chunk: every chunk names its choice
/// by its index in the batch, each choice's text is its prompt followed by
/// the single request's answer, and one usage chunk covers the batch.
async fn streamed_batches_interleave_by_index(server: &Server) {
    let body = json!({"prompt": PROMPTS, "max_tokens": 12, "temperature": 0, "n": 2,
                      "echo": true, "stream": true,
                      "stream_options": {"include_usage": true}});
    let chunks = server.stream("/v1/completions", &body).await;
    let joined = joined(&chunks, "text");
    assert_eq!(joined.len(), 6);
    let whole = server
        .post_ok(
            "/v1/completions",
            &json!({"prompt": PROMPTS, "max_tokens": 12, "temperature": 0}),
        )
        .await;
    for (k, text) in joined.iter().enumerate() {
        let expected = format!("{}{}", PROMPTS[k / 2], texts(&whole)[k / 2]);
        assert_eq!(*text, expected, "choice {k}");
    }
    let usages: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["usage"].is_null())
        .map(|c| &c["usage"])
        .collect();
    assert_eq!(usages.len(), 1, "one usage chunk");
    usage_adds_up(usages[0]);
    assert_eq!(
        usages[0]["prompt_tokens"], whole["usage"]["prompt_tokens"],
        "{}",
        usages[0]
    );
    assert_eq!(
        usages[0]["completion_tokens"].as_u64(),
        whole["usage"]["completion_tokens"].as_u64().map(|c| 2 * c)
    );
    let last = chunks.last().expect("chunks");
    assert!(last["choices"].as_array().is_some_and(Vec::is_empty));
}

/// `echo` with `logprobs`: the tokens are the prompt's then the answer's,
/// the first prompt token has `null` entries, every later prompt token
/// its own logprob as the engine's `prompt_logprobs` gives it and among
/// its alternatives (so the largest alternative equals it exactly where the
/// prompt token was the greedy one), and the generated tokens' entries
/// are those of the request without `echo`.
async fn echoed_prompts_carry_their_logprobs(server: &Server) {
    let prompt = PROMPTS[2];
    let ids = server
        .post_ok("/tokenize", &json!({"prompt": prompt}))
        .await["tokens"]
        .as_array()
        .expect("tokens")
        .len();
    let plain = server
        .post_ok(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 2,
                    "prompt_logprobs": 2}),
        )
        .await;
    let echoed = server
        .post_ok(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 2,
                    "echo": true}),
        )
        .await;
    let choice = &echoed["choices"][0];
    assert_eq!(
        choice["text"],
        format!("{prompt}{}", texts(&plain)[0]),
        "{echoed}"
    );
    assert!(
        choice.get("prompt_logprobs").is_none(),
        "not asked for: {echoed}"
    );
    let logprobs = &choice["logprobs"];
    let generated = &plain["choices"][0]["logprobs"];
    let tokens = logprobs["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), ids + 3, "{logprobs}");
    assert!(logprobs["token_logprobs"][0].is_null());
    assert!(logprobs["top_logprobs"][0].is_null());
    assert_eq!(logprobs["text_offset"][0], 0);
    let rows = plain["choices"][0]["prompt_logprobs"]
        .as_array()
        .expect("prompt_logprobs");
    let mut offset = 0;
    for i in 0..tokens.len() {
        assert_eq!(logprobs["text_offset"][i], offset, "position {i}");
        offset += tokens[i].as_str().expect("token").chars().count();
        if i == 0 {
            continue;
        }
        let own = logprobs["token_logprobs"][i].as_f64().expect("logprob");
        let top = logprobs["top_logprobs"][i].as_object().expect("top");
        let best = top
            .values()
            .filter_map(Value::as_f64)
            .fold(f64::MIN, f64::max);
        if i < ids {
            let row = rows[i].as_object().expect("row");
            assert_eq!(row.len(), top.len(), "position {i}: {row:?} {top:?}");
            let entry = row
                .values()
                .find(|e| e["decoded_token"] == tokens[i])
                .expect("the prompt token's own entry");
            assert_eq!(entry["logprob"].as_f64(), Some(own), "position {i}");
            assert_eq!(top[tokens[i].as_str().unwrap()].as_f64(), Some(own));
            assert_eq!(entry["rank"] == 1, own == best, "position {i}: {top:?}");
        } else {
            let j = i - ids;
            assert_eq!(tokens[i], generated["tokens"][j], "position {i}");
            let theirs = generated["token_logprobs"][j].as_f64().expect("logprob");
            assert!((own - theirs).abs() <= ROW_TOLERANCE, "position {i}");
            assert_eq!(top.len(), 2, "position {i}: {top:?}");
        }
    }

    // Both at once: the echo's three alternatives do not widen the
    // `prompt_logprobs` field beyond the one asked for there.
    let both = server
        .post_ok(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 3,
                    "echo": true, "prompt_logprobs": 1}),
        )
        .await;
    let field = both["choices"][0]["prompt_logprobs"]
        .as_array()
        .expect("prompt_logprobs");
    assert_eq!(field.len(), ids);
    for (i, row) in field.iter().enumerate().skip(1) {
        let row = row.as_object().expect("row");
        assert!((1..=2).contains(&row.len()), "position {i}: {row:?}");
        let top = both["choices"][0]["logprobs"]["top_logprobs"][i]
            .as_object()
            .expect("top");
        assert!((3..=4).contains(&top.len()), "position {i}: {top:?}");
    }

    // Streamed: each choice's first chunk is the echo with the same
    // prompt logprobs.
    let chunks = server
        .stream(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 2,
                    "echo": true, "stream": true}),
        )
        .await;
    let first = &chunks[0]["choices"][0];
    assert_eq!(first["text"], prompt);
    let streamed = &first["logprobs"];
    for field in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        let all = logprobs[field].as_array().expect("field");
        assert_eq!(
            streamed[field].as_array().expect("streamed field")[..],
            all[..ids],
            "{field}"
        );
    }
    assert_eq!(joined(&chunks, "text")[0], choice["text"]);
}

async fn batch_bounds_and_render(server: &Server) {
    let many: Vec<&str> = vec!["a"; 65];
    server
        .post_400(
            "/v1/completions",
            &json!({"prompt": many, "n": 2, "max_tokens": 1}),
            "prompt",
        )
        .await;
    for empty in [json!([]), json!([[1], []])] {
        server
            .post_400("/v1/completions", &json!({"prompt": empty}), "prompt")
            .await;
    }
    // One prompt beyond the context refuses the whole batch.
    let too_long = "word ".repeat(20_000);
    let response = server
        .post(
            "/v1/completions",
            &json!({"prompt": ["fine", too_long], "max_tokens": 1}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let rendered = server
        .post_ok("/v1/completions/render", &json!({"prompt": PROMPTS}))
        .await;
    let rendered = rendered.as_array().expect("a list");
    assert_eq!(rendered.len(), PROMPTS.len());
    for (entry, prompt) in rendered.iter().zip(PROMPTS) {
        let ids = server
            .post_ok("/tokenize", &json!({"prompt": prompt}))
            .await["tokens"]
            .clone();
        assert_eq!(entry["token_ids"], ids);
    }
}

/// A client that drops a streamed batch aborts every prompt's request:
/// nothing runs afterwards and the KV cache is empty.
async fn a_dropped_batch_frees_every_request(server: &Server) {
    let body = json!({"prompt": PROMPTS, "max_tokens": 1500, "ignore_eos": true,
                      "stream": true});
    let response = server.post("/v1/completions", &body).await;
    assert!(response.status().is_success());
    let mut stream = response.bytes_stream();
    stream.next().await.expect("first chunk").expect("bytes");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("r1serve:num_requests_running").await < 3.0 {
        assert!(Instant::now() < deadline, "the batch never ran together");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stream);
    loop {
        let running = server.metric("r1serve:num_requests_running").await;
        let usage = server.metric("r1serve:kv_cache_usage_perc").await;
        if running == 0.0 && usage == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running after the client left ({running}, {usage})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// lm-evaluation-harness's scoring request (a batch of token prompts,
/// `echo`, `logprobs`) on the bf16 Qwen2.5-Coder-0.5B directory with f32
/// activations and cache, checked by `tests/echo_logprobs_client.py`
/// against HF transformers on the same directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_logprobs_agree_with_transformers() {
    let dir = common::hf_dir::qwen05_bf16();
    let name = dir.file_name().and_then(|n| n.to_str()).expect("name");
    let server = Server::start(
        name,
        &["--dtype", "float32", "--kv-cache-dtype", "f32"],
        None,
    )
    .await;
    let out = server
        .run_client(
            "echo_logprobs_client.py",
            &[("R1SERVE_HF_DIR", dir.to_str().expect("path"))],
        )
        .await;
    eprintln!("{out}");
}
