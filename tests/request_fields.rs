//! Every OpenAI and vLLM request field the server recognizes is honored or
//! refused with a 400 naming it, never ignored: each check below fails if
//! its field were ignored. The real server, on a free port, with SmolLM2.

mod common;

use common::server::*;
use serde_json::{json, Value};

fn user(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

/// `body` with the fields of `extra` added.
fn with(body: &Value, extra: Value) -> Value {
    let mut body = body.clone();
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

fn text(reply: &Value) -> &str {
    reply["choices"][0]["text"].as_str().expect("text")
}

fn content(reply: &Value) -> &str {
    reply["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
}

fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("id"))
        .collect()
}

async fn tokenize(server: &Server, body: Value) -> Vec<u64> {
    ids(&server.post_ok("/tokenize", &body).await["tokens"])
}

async fn detokenize(server: &Server, tokens: &[u64]) -> String {
    server
        .post_ok("/detokenize", &json!({"tokens": tokens}))
        .await["prompt"]
        .as_str()
        .expect("prompt")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm_honors_vllm_request_fields() {
    let server = Server::start(SMOL, &[], None).await;
    stop_token_ids_end_generation(&server).await;
    stop_strings_can_stay_in_the_text(&server).await;
    special_tokens_can_be_kept(&server).await;
    generation_prompt_and_continuation(&server).await;
    chat_echo(&server).await;
    prompt_logprobs(&server).await;
    continuous_usage_stats(&server).await;
    unknown_and_refused_fields(&server).await;
    plain_defaults_without_an_r1_template(&server).await;
}

/// The greedy completion of `prompt` and its token ids, found as the
/// tokens the prompt's own tokens are followed by in `prompt + text`
/// (checked to decode back to the text).
async fn greedy_ids(server: &Server, prompt: &str, max_tokens: u64) -> (String, Vec<u64>) {
    let reply = server
        .post_ok(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}),
        )
        .await;
    let generated = text(&reply).to_string();
    let prompt_ids = tokenize(server, json!({"prompt": prompt})).await;
    let all = tokenize(server, json!({"prompt": format!("{prompt}{generated}")})).await;
    assert_eq!(
        all[..prompt_ids.len()],
        prompt_ids[..],
        "the boundary merged"
    );
    let tail = all[prompt_ids.len()..].to_vec();
    assert_eq!(detokenize(server, &tail).await, generated);
    (generated, tail)
}

async fn stop_token_ids_end_generation(server: &Server) {
    let prompt = "Count from one to twenty in words:";
    let (_, tail) = greedy_ids(server, prompt, 24).await;
    // The first token, from the third on, that did not occur before.
    let j = (2..tail.len())
        .find(|&j| !tail[..j].contains(&tail[j]))
        .expect("a fresh token");
    let stop = tail[j];
    let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0,
                      "stop_token_ids": [stop]});
    let reply = server.post_ok("/v1/completions", &body).await;
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "{reply}");
    assert_eq!(choice["stop_reason"], stop, "{reply}");
    assert_eq!(text(&reply), detokenize(server, &tail[..j]).await);
    assert_eq!(reply["usage"]["completion_tokens"], j + 1);
    // With include_stop_str_in_output the stop token's text stays.
    let kept = server
        .post_ok(
            "/v1/completions",
            &with(&body, json!({"include_stop_str_in_output": true})),
        )
        .await;
    assert_eq!(text(&kept), detokenize(server, &tail[..=j]).await);

    let chat = json!({"messages": user("hi"), "stop_token_ids": [10_000_000]});
    server
        .post_400("/v1/chat/completions", &chat, "stop_token_ids")
        .await;
}

async fn stop_strings_can_stay_in_the_text(server: &Server) {
    let prompt = "Count from one to twenty in words:";
    let (greedy, _) = greedy_ids(server, prompt, 24).await;
    // Three characters from the middle of whatever the model wrote (its
    // words depend on the CPU's rounding), cut where they first occur.
    let chars: Vec<(usize, char)> = greedy.char_indices().collect();
    assert!(chars.len() >= 6, "24 greedy tokens gave {greedy:?}");
    let mid = chars.len() / 2;
    let end = chars.get(mid + 3).map_or(greedy.len(), |&(i, _)| i);
    let word = &greedy[chars[mid].0..end];
    let at = greedy.find(word).expect("word in text");
    let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "stop": [word]});
    let cut = server.post_ok("/v1/completions", &body).await;
    assert_eq!(text(&cut), &greedy[..at]);
    assert_eq!(cut["choices"][0]["stop_reason"], word);
    let kept = server
        .post_ok(
            "/v1/completions",
            &with(&body, json!({"include_stop_str_in_output": true})),
        )
        .await;
    assert_eq!(text(&kept), &greedy[..at + word.len()]);
    assert_eq!(kept["choices"][0]["finish_reason"], "stop");
}

async fn special_tokens_can_be_kept(server: &Server) {
    let body = json!({"messages": user("Say hi."), "temperature": 0, "max_tokens": 48});
    let natural = server.post_ok("/v1/chat/completions", &body).await;
    assert_eq!(
        natural["choices"][0]["finish_reason"], "stop",
        "the model must end its answer within 48 tokens: {natural}"
    );
    // Past EOS, the EOS token is in the output; only its text differs.
    let past = with(&body, json!({"ignore_eos": true}));
    let skipped = server.post_ok("/v1/chat/completions", &past).await;
    assert!(!content(&skipped).contains("<|im_end|>"), "{skipped}");
    let kept = server
        .post_ok(
            "/v1/chat/completions",
            &with(&past, json!({"skip_special_tokens": false})),
        )
        .await;
    assert!(content(&kept).contains("<|im_end|>"), "{kept}");
    assert!(content(&kept).starts_with(content(&natural)), "{kept}");
    let spaced = with(
        &past,
        json!({"skip_special_tokens": false, "spaces_between_special_tokens": true}),
    );
    server
        .post_400(
            "/v1/chat/completions",
            &spaced,
            "spaces_between_special_tokens",
        )
        .await;
}

async fn generation_prompt_and_continuation(server: &Server) {
    let messages = json!([
        {"role": "user", "content": "Count from one to ten in words."},
        {"role": "assistant", "content": "One, two, three,"},
    ]);
    let count = |body: Value| async move {
        let reply = server
            .post_ok(
                "/v1/chat/completions",
                &with(&body, json!({"max_tokens": 1, "temperature": 0})),
            )
            .await;
        reply["usage"]["prompt_tokens"]
            .as_u64()
            .expect("prompt_tokens") as usize
    };
    let open = tokenize(server, json!({"messages": messages})).await;
    let closed = tokenize(
        server,
        json!({"messages": messages, "add_generation_prompt": false}),
    )
    .await;
    let continued = tokenize(
        server,
        json!({"messages": messages, "continue_final_message": true}),
    )
    .await;
    // The generation prompt adds tokens; continuing drops the end of turn,
    // leaving the closed rendering's tokens up to the message's text.
    assert!(open.len() > closed.len());
    let end_of_turn = tokenize(
        server,
        json!({"prompt": "<|im_end|>\n", "add_special_tokens": false}),
    )
    .await;
    assert_eq!(closed[..continued.len()], continued[..]);
    assert_eq!(closed[continued.len()..], end_of_turn[..]);
    assert!(detokenize(server, &continued)
        .await
        .ends_with("One, two, three,"));

    let body = json!({"messages": messages});
    assert_eq!(count(body.clone()).await, open.len());
    assert_eq!(
        count(with(&body, json!({"add_generation_prompt": false}))).await,
        closed.len()
    );
    assert_eq!(
        count(with(&body, json!({"continue_final_message": true}))).await,
        continued.len()
    );
    let both = with(
        &body,
        json!({"continue_final_message": true, "add_generation_prompt": true}),
    );
    server
        .post_400("/v1/chat/completions", &both, "continue_final_message")
        .await;
    let last_user = json!({"messages": user("hi"), "continue_final_message": true});
    server
        .post_400("/v1/chat/completions", &last_user, "continue_final_message")
        .await;
    // Continuing and echoing: the answer is the whole assistant message.
    let reply = server
        .post_ok(
            "/v1/chat/completions",
            &with(
                &body,
                json!({"continue_final_message": true, "echo": true, "max_tokens": 8,
                       "temperature": 0}),
            ),
        )
        .await;
    assert!(content(&reply).starts_with("One, two, three,"), "{reply}");
}

async fn chat_echo(server: &Server) {
    let messages = json!([
        {"role": "user", "content": "Name an animal."},
        {"role": "assistant", "content": "Zebra quokka:"},
    ]);
    let body = json!({"messages": messages, "temperature": 0, "max_tokens": 8});
    let plain = server.post_ok("/v1/chat/completions", &body).await;
    let echoed = server
        .post_ok("/v1/chat/completions", &with(&body, json!({"echo": true})))
        .await;
    assert_eq!(
        content(&echoed),
        format!("Zebra quokka:{}", content(&plain))
    );
    let chunks = server
        .stream(
            "/v1/chat/completions",
            &with(&body, json!({"echo": true, "stream": true})),
        )
        .await;
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|piece| !piece.is_empty())
        .collect();
    assert_eq!(pieces.first(), Some(&"Zebra quokka:"), "{chunks:?}");
    assert_eq!(pieces.concat(), content(&echoed));
}

/// Tolerance between the logprob a prompt row gives and the one a
/// generation step gives for the same position. Both are log-softmax of
/// the same model's logits for the same context, computed in differently
/// shaped batches (a 64-row prefill chunk against a prefill ending at that
/// position). On AVX2 the kernels are batch-invariant and the two agree bit
/// for bit (measured: difference 0 at every checked position); kernels that
/// block rows differently sum in another order, leaving f32 rounding of a
/// few 1e-5 relative on logits of magnitude ~30, so ~1e-3 on a logprob (a
/// logit minus a log-sum-exp); 1e-2 leaves a margin.
const ROW_TOLERANCE: f64 = 1e-2;

async fn prompt_logprobs(server: &Server) {
    // Over 64 tokens, so the prompt spans several prefill chunks, and over
    // a block, so a cached prefix exists once the first request ran.
    let prompt = "The history of the bicycle begins in the early nineteenth century, when \
                  inventors in Germany and France built two-wheeled machines pushed along by \
                  the rider's feet. Pedals came later, attached to the front wheel, and the \
                  chain drive that moves the rear wheel arrived in the eighteen-eighties, \
                  together with wheels of equal size.";
    let prompt_ids = tokenize(server, json!({"prompt": prompt})).await;
    assert!(prompt_ids.len() > 64, "{} tokens", prompt_ids.len());
    let body = json!({"prompt": prompt, "max_tokens": 1, "temperature": 0});
    server.post_ok("/v1/completions", &body).await;

    let reply = server
        .post_ok(
            "/v1/completions",
            &with(&body, json!({"prompt_logprobs": 3})),
        )
        .await;
    let entries = reply["choices"][0]["prompt_logprobs"]
        .as_array()
        .expect("prompt_logprobs");
    assert_eq!(entries.len(), prompt_ids.len());
    assert!(entries[0].is_null());
    for (i, entry) in entries.iter().enumerate().skip(1) {
        let tokens = entry.as_object().expect("entry");
        let own = &tokens[&prompt_ids[i].to_string()];
        assert!(own["rank"].as_u64().expect("rank") >= 1);
        assert!(own["logprob"].as_f64().expect("logprob") <= 0.0);
        assert!((3..=4).contains(&tokens.len()), "{entry}");
        let ranks: Vec<u64> = tokens.values().filter_map(|t| t["rank"].as_u64()).collect();
        for rank in 1..=3 {
            assert!(ranks.contains(&rank), "{entry}");
        }
    }
    // Each prompt row against a generation step over the prompt cut there:
    // the greedy token is the row's rank-1 token, with the same logprob.
    for i in [5, 40, 63, 64, prompt_ids.len() - 2] {
        let step = server
            .post_ok(
                "/v1/completions",
                &json!({"prompt": &prompt_ids[..=i], "max_tokens": 1, "temperature": 0,
                        "logprobs": 1}),
            )
            .await;
        let logprobs = &step["choices"][0]["logprobs"];
        let generated = logprobs["token_logprobs"][0].as_f64().expect("logprob");
        let best = entries[i + 1]
            .as_object()
            .expect("entry")
            .values()
            .find(|t| t["rank"] == 1)
            .expect("rank 1");
        assert_eq!(best["decoded_token"], logprobs["tokens"][0], "position {i}");
        let row = best["logprob"].as_f64().expect("logprob");
        assert!(
            (row - generated).abs() <= ROW_TOLERANCE,
            "position {i}: prompt row {row}, generation {generated}"
        );
    }

    let chat = json!({"messages": user("Hello there"), "max_tokens": 2, "prompt_logprobs": 0});
    let reply = server.post_ok("/v1/chat/completions", &chat).await;
    let entries = reply["prompt_logprobs"]
        .as_array()
        .expect("prompt_logprobs");
    assert_eq!(entries.len() as u64, reply["usage"]["prompt_tokens"]);
    assert!(entries[0].is_null());
    assert!(entries[1..]
        .iter()
        .all(|e| e.as_object().is_some_and(|t| t.len() == 1)));
    server
        .post_400(
            "/v1/chat/completions",
            &with(&chat, json!({"stream": true})),
            "prompt_logprobs",
        )
        .await;
    server
        .post_400(
            "/v1/completions",
            &with(&body, json!({"prompt_logprobs": 21})),
            "prompt_logprobs",
        )
        .await;
}

/// vLLM's `stream_options.continuous_usage_stats`: with `include_usage`,
/// every chunk carries the usage so far (a completion batch's chunks their
/// own prompt's), ending at the final usage chunk's counts; without
/// `include_usage` no chunk carries any, as in vLLM.
async fn continuous_usage_stats(server: &Server) {
    let options = json!({"include_usage": true, "continuous_usage_stats": true});
    let body = json!({"messages": user("Count to ten."), "max_tokens": 12,
                      "temperature": 0, "stream": true, "stream_options": options});
    let chunks = server.stream("/v1/chat/completions", &body).await;
    let (last, running) = chunks.split_last().expect("chunks");
    let total = &last["usage"];
    usage_adds_up(total);
    let mut before = 0;
    for chunk in running {
        let usage = &chunk["usage"];
        usage_adds_up(usage);
        assert_eq!(usage["prompt_tokens"], total["prompt_tokens"], "{chunk}");
        let done = usage["completion_tokens"]
            .as_u64()
            .expect("completion tokens");
        assert!(done >= before, "{chunk}");
        if chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            assert!(done >= 1, "text before any token: {chunk}");
        }
        before = done;
    }
    assert_eq!(Some(before), total["completion_tokens"].as_u64());
    let without = with(
        &body,
        json!({"stream_options": {"continuous_usage_stats": true}}),
    );
    for chunk in server.stream("/v1/chat/completions", &without).await {
        assert!(chunk.get("usage").is_none(), "{chunk}");
    }

    let prompts = ["One, two,", "The sky is"];
    let mut own = Vec::new();
    for prompt in prompts {
        let reply = server
            .post_ok(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 1}),
            )
            .await;
        own.push(reply["usage"]["prompt_tokens"].clone());
    }
    let body = json!({"prompt": prompts, "max_tokens": 6, "ignore_eos": true, "stream": true,
                      "stream_options": options});
    let chunks = server.stream("/v1/completions", &body).await;
    let (last, running) = chunks.split_last().expect("chunks");
    assert!(running.len() >= 2, "{chunks:?}");
    for chunk in running {
        let index = chunk["choices"][0]["index"].as_u64().expect("index") as usize;
        assert_eq!(chunk["usage"]["prompt_tokens"], own[index], "{chunk}");
        usage_adds_up(&chunk["usage"]);
    }
    assert_eq!(last["usage"]["completion_tokens"], 12, "{last}");
}

async fn unknown_and_refused_fields(server: &Server) {
    let body = json!({"messages": user("hi"), "max_tokens": 2,
                      "frobnicate_level": 3, "stop_token_ids": [], "user": "u1",
                      "metadata": {"k": "v"}, "service_tier": "auto", "store": false});
    server.post_ok("/v1/chat/completions", &body).await;
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("ignoring unrecognized request fields"))
        .map(str::to_string)
        .expect("a warning naming the unrecognized field");
    assert!(line.contains("frobnicate_level"), "{line}");
    for recognized in ["stop_token_ids", "metadata", "service_tier", "user"] {
        assert!(!line.contains(recognized), "{line}");
    }
    let completion = json!({"prompt": "hi", "max_tokens": 1, "zork_mode": true});
    server.post_ok("/v1/completions", &completion).await;
    assert!(server.log().contains("zork_mode"));
    for (extra, param) in [
        (json!({"service_tier": "priority"}), "service_tier"),
        (json!({"store": true}), "store"),
        (json!({"use_beam_search": true}), "use_beam_search"),
    ] {
        server
            .post_400("/v1/chat/completions", &with(&body, extra), param)
            .await;
    }
}

/// `n` seeded samples of `body`'s messages, without sampling parameters of
/// its own and with `explicit` ones.
async fn seeded(server: &Server, explicit: Value) -> Value {
    let body = json!({"messages": user("Tell me a story about a dragon."),
                      "max_tokens": 32, "seed": 11});
    let reply = server
        .post_ok("/v1/chat/completions", &with(&body, explicit))
        .await;
    reply["choices"][0]["message"].clone()
}

async fn plain_defaults_without_an_r1_template(server: &Server) {
    // A GGUF has no generation_config.json and SmolLM2's template is not
    // R1's: temperature and top_p are 1.
    let implicit = seeded(server, json!({})).await;
    assert_eq!(
        implicit,
        seeded(server, json!({"temperature": 1.0, "top_p": 1.0})).await
    );
    assert_ne!(
        implicit,
        seeded(server, json!({"temperature": 0.6, "top_p": 0.95})).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_template_defaults_yield_to_the_override_flag() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/templates_r1qwen7b.json").expect("fixture"),
    )
    .expect("fixture JSON");
    let dir = std::env::temp_dir().join(format!("r1serve-fields-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let template = dir.join("r1.jinja");
    std::fs::write(
        &template,
        fixture["chat_template"].as_str().expect("template"),
    )
    .expect("write template");
    let server = Server::start(
        SMOL,
        &[
            "--chat-template",
            template.to_str().expect("path"),
            "--override-generation-config",
            r#"{"top_p": 0.5}"#,
        ],
        None,
    )
    .await;
    // R1's temperature (0.6), the flag's top_p (0.5, not R1's 0.95).
    let implicit = seeded(&server, json!({})).await;
    assert_eq!(
        implicit,
        seeded(&server, json!({"temperature": 0.6, "top_p": 0.5})).await
    );
    assert_ne!(
        implicit,
        seeded(&server, json!({"temperature": 1.0, "top_p": 1.0})).await
    );
    let log = server.log();
    assert!(
        log.contains("sampling defaults for requests that set none: temperature=0.6 top_p=0.5"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
