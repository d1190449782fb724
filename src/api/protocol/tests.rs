use super::*;
use crate::api::error::ApiError;
use crate::tokenizer::ChatEnding;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

fn base_chat() -> Value {
    json!({"model": "r1", "messages": [{"role": "user", "content": "hi"}]})
}

/// Base chat request with `extra` fields merged in.
fn chat_with(extra: Value) -> ChatCompletionRequest {
    let mut body = base_chat();
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    serde_json::from_value(body).unwrap()
}

fn chat_error(extra: Value) -> ApiError {
    chat_with(extra).validate().unwrap_err()
}

/// Asserts that `extra` fails validation naming `param`.
fn assert_rejected(extra: Value, param: &str) {
    let error = chat_error(extra.clone());
    assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST, "{extra}");
    assert_eq!(
        error.param.as_deref(),
        Some(param),
        "{extra}: {}",
        error.message
    );
}

fn completion_with(extra: Value) -> CompletionRequest {
    let mut body = json!({"model": "r1", "prompt": "hi"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    serde_json::from_value(body).unwrap()
}

/// Serializes `value` and compares it with the literal JSON.
fn assert_wire<T: Serialize>(value: &T, literal: &str) {
    let expected: Value = serde_json::from_str(literal).unwrap();
    // Through text, because `to_value` widens f32 to f64 digits that the
    // wire never carries.
    let wire: Value = serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap();
    assert_eq!(wire, expected);
}

/// Parses an OpenAI literal and checks it serializes back identically.
fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(literal: &str) -> T {
    let parsed: T = serde_json::from_str(literal).unwrap();
    assert_wire(&parsed, literal);
    parsed
}

#[test]
fn full_chat_request_parses_and_validates() {
    let request: ChatCompletionRequest = serde_json::from_value(json!({
        "model": "r1",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": null},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "x", "reasoning_content": "why", "tool_calls": []},
            {"role": "tool", "content": "result", "tool_call_id": "t1"}
        ],
        "max_tokens": 10, "max_completion_tokens": 20, "temperature": 0.6,
        "top_p": 0.95, "top_k": 40, "min_p": 0.05, "n": 2, "stop": "END",
        "seed": -1, "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "repetition_penalty": 1.1, "logit_bias": {"42": -100, "7": 5.5},
        "logprobs": true, "top_logprobs": 3, "stream": true,
        "stream_options": {"include_usage": true}, "user": "u",
        "chat_template_kwargs": {"enable_thinking": true},
        "include_reasoning": false, "ignore_eos": true, "min_tokens": 5,
        "some_future_field": {"x": 1},
        "response_format": {"type": "text"}, "tool_choice": "none", "tools": [],
        "modalities": ["text"], "parallel_tool_calls": true
    }))
    .unwrap();
    let checked = request.validate().unwrap();
    assert!(!checked.include_reasoning);
    let contents: Vec<&str> = checked
        .messages
        .iter()
        .map(|m| m.content.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(contents, ["be brief", "", "a\nb", "x", "result"]);
    assert_eq!(
        checked.messages[3].reasoning_content.as_deref(),
        Some("why")
    );
    assert_eq!(checked.messages[4].role, Role::Tool);
    let p = checked.params;
    assert_eq!(p.max_tokens, Some(20));
    assert_eq!(p.min_tokens, 5);
    assert_eq!(p.temperature, Some(0.6));
    assert_eq!(p.top_p, Some(0.95));
    assert_eq!(p.top_k, Some(40));
    assert_eq!(p.min_p, Some(0.05));
    assert_eq!(p.n, 2);
    assert_eq!(p.stop, ["END"]);
    assert_eq!(p.seed, Some(u64::MAX));
    assert_eq!((p.presence_penalty, p.frequency_penalty), (0.5, -0.5));
    assert_eq!(p.repetition_penalty, Some(1.1));
    assert_eq!(p.logit_bias, [(7, 5.5), (42, -100.0)]);
    assert_eq!(p.logprobs, Some(3));
    assert!(p.stream && p.include_usage && p.ignore_eos);
    assert_eq!(
        request.chat_template_kwargs.unwrap()["enable_thinking"],
        Value::Bool(true)
    );
}

#[test]
fn minimal_chat_request_defaults() {
    let checked = chat_with(json!({})).validate().unwrap();
    let p = checked.params;
    assert!(checked.include_reasoning);
    assert_eq!(
        (p.max_tokens, p.temperature, p.top_p, p.top_k),
        (None, None, None, None)
    );
    assert_eq!((p.n, p.min_tokens, p.repetition_penalty), (1, 0, None));
    assert_eq!(p.logprobs, None);
    assert!(!p.stream && !p.include_usage && !p.ignore_eos);
    assert!(p.stop.is_empty() && p.logit_bias.is_empty());
}

#[test]
fn model_is_optional_and_stop_list_accepted() {
    let request: ChatCompletionRequest =
        serde_json::from_value(json!({"messages": [{"role": "user", "content": "x"}],
                                      "stop": ["a", "b"], "max_tokens": 3}))
        .unwrap();
    assert_eq!(request.model, None);
    let p = request.validate().unwrap().params;
    assert_eq!(p.stop, ["a", "b"]);
    assert_eq!(p.max_tokens, Some(3));
}

#[test]
fn unknown_role_fails_to_parse() {
    let body = json!({"messages": [{"role": "robot", "content": "x"}]});
    assert!(serde_json::from_value::<ChatCompletionRequest>(body).is_err());
}

#[test]
fn unsupported_parameters_are_named() {
    for (extra, param) in [
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (json!({"function_call": "auto"}), "function_call"),
        (json!({"audio": {"voice": "alloy"}}), "audio"),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (json!({"prediction": {"type": "content"}}), "prediction"),
    ] {
        let error = chat_error(extra);
        assert_eq!(error.param.as_deref(), Some(param));
        assert_eq!(error.code.as_deref(), Some("unsupported_parameter"));
    }
}

#[test]
fn harmless_unsupported_values_are_accepted() {
    let extra = json!({"tools": null, "tool_choice": null, "functions": [],
                       "function_call": "none", "response_format": null,
                       "audio": null, "modalities": null, "prediction": null,
                       "parallel_tool_calls": false});
    assert!(chat_with(extra).validate().is_ok());
}

/// An assistant message's reasoning is read under either name; the two
/// names may agree but not differ. The request's `reasoning_field` takes
/// the three names and nothing else.
#[test]
fn reasoning_dialects_in_requests() {
    let turn = |fields: Value| {
        let mut message = json!({"role": "assistant", "content": "4"});
        if let (Some(message), Some(fields)) = (message.as_object_mut(), fields.as_object()) {
            message.extend(fields.clone());
        }
        json!({"messages": [{"role": "user", "content": "2+2?"}, message,
                            {"role": "user", "content": "and 3+3?"}]})
    };
    for fields in [
        json!({"reasoning_content": "add"}),
        json!({"reasoning": "add"}),
        json!({"reasoning": "add", "reasoning_content": "add"}),
        json!({"reasoning": null, "reasoning_content": "add"}),
    ] {
        let checked = chat_with(turn(fields.clone())).validate().unwrap();
        assert_eq!(
            checked.messages[1].reasoning_content.as_deref(),
            Some("add"),
            "{fields}"
        );
    }
    let plain = chat_with(turn(json!({}))).validate().unwrap();
    assert_eq!(plain.messages[1].reasoning_content, None);
    assert_rejected(
        turn(json!({"reasoning": "add", "reasoning_content": "sum"})),
        "messages[1].reasoning",
    );

    assert_eq!(
        chat_with(json!({})).validate().unwrap().reasoning_field,
        None
    );
    for field in ReasoningField::ALL {
        let checked = chat_with(json!({"reasoning_field": field.as_str()}))
            .validate()
            .unwrap();
        assert_eq!(checked.reasoning_field, Some(field));
    }
    for bad in ["thinking", "", "REASONING"] {
        assert_rejected(json!({"reasoning_field": bad}), "reasoning_field");
    }
}

#[test]
fn message_rules() {
    assert_rejected(json!({"messages": []}), "messages");
    assert_rejected(
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        "messages[0].content[0].type",
    );
    assert_rejected(
        json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text"}]}]}),
        "messages[1].content[0].text",
    );
    assert_rejected(
        json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c"}]}]}),
        "messages[0].tool_calls[0].function.name",
    );
    assert_rejected(
        json!({"messages": [{"role": "user", "content": "x", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}),
        "messages[0].tool_calls",
    );
}

#[test]
fn sampling_range_rules() {
    for (extra, param) in [
        (json!({"temperature": -0.1}), "temperature"),
        (json!({"temperature": 2.01}), "temperature"),
        (json!({"top_p": 0.0}), "top_p"),
        (json!({"top_p": 1.01}), "top_p"),
        (json!({"top_k": -2}), "top_k"),
        (json!({"min_p": -0.01}), "min_p"),
        (json!({"min_p": 1.01}), "min_p"),
        (json!({"n": 0}), "n"),
        (json!({"n": 129}), "n"),
        (json!({"presence_penalty": 2.5}), "presence_penalty"),
        (json!({"presence_penalty": -2.5}), "presence_penalty"),
        (json!({"frequency_penalty": 2.5}), "frequency_penalty"),
        (json!({"frequency_penalty": -2.5}), "frequency_penalty"),
        (json!({"repetition_penalty": 0.0}), "repetition_penalty"),
        (json!({"repetition_penalty": -1.0}), "repetition_penalty"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": -5}), "max_tokens"),
        (json!({"max_tokens": 5_000_000_000_i64}), "max_tokens"),
        (
            json!({"max_completion_tokens": 0, "max_tokens": 5}),
            "max_completion_tokens",
        ),
        (json!({"min_tokens": -1}), "min_tokens"),
        (json!({"min_tokens": 10, "max_tokens": 5}), "min_tokens"),
    ] {
        assert_rejected(extra, param);
    }
}

#[test]
fn sampling_boundaries_are_accepted() {
    for extra in [
        json!({"temperature": 0, "top_p": 1, "min_p": 0, "n": 1}),
        json!({"temperature": 2, "top_p": 0.001, "min_p": 1, "n": 128}),
        json!({"presence_penalty": -2, "frequency_penalty": 2, "repetition_penalty": 0.01}),
        json!({"min_tokens": 5, "max_tokens": 5}),
    ] {
        assert!(chat_with(extra.clone()).validate().is_ok(), "{extra}");
    }
    // Disabling is explicit (`Some(0)`), so it overrides a server default.
    for (top_k, expected) in [(-1, Some(0)), (0, Some(0)), (1, Some(1)), (50, Some(50))] {
        let p = chat_with(json!({"top_k": top_k}))
            .validate()
            .unwrap()
            .params;
        assert_eq!(p.top_k, expected);
    }
}

#[test]
fn logprobs_rules() {
    assert_rejected(
        json!({"logprobs": true, "top_logprobs": 21}),
        "top_logprobs",
    );
    assert_rejected(
        json!({"logprobs": true, "top_logprobs": -1}),
        "top_logprobs",
    );
    assert_rejected(json!({"top_logprobs": 2}), "top_logprobs");
    assert_rejected(
        json!({"logprobs": false, "top_logprobs": 2}),
        "top_logprobs",
    );
    let p = chat_with(json!({"logprobs": true}))
        .validate()
        .unwrap()
        .params;
    assert_eq!(p.logprobs, Some(0));
    let p = chat_with(json!({"top_logprobs": 0}))
        .validate()
        .unwrap()
        .params;
    assert_eq!(p.logprobs, None);
}

#[test]
fn logit_bias_rules() {
    assert_rejected(json!({"logit_bias": {"abc": 1}}), "logit_bias");
    assert_rejected(json!({"logit_bias": {"-3": 1}}), "logit_bias");
    assert_rejected(json!({"logit_bias": {"5": 100.5}}), "logit_bias");
    assert_rejected(json!({"logit_bias": {"5": -101}}), "logit_bias");
    let p = chat_with(json!({"logit_bias": {"5": 100, "3": -100}}))
        .validate()
        .unwrap()
        .params;
    assert_eq!(p.logit_bias, [(3, -100.0), (5, 100.0)]);
}

#[test]
fn stop_rules() {
    let many: Vec<String> = (0..=MAX_STOP_SEQUENCES).map(|i| i.to_string()).collect();
    assert_rejected(json!({"stop": many}), "stop");
    assert_rejected(json!({"stop": ""}), "stop");
    assert_rejected(json!({"stop": ["a", ""]}), "stop");
    let sixteen: Vec<String> = (0..MAX_STOP_SEQUENCES).map(|i| i.to_string()).collect();
    assert!(chat_with(json!({ "stop": sixteen })).validate().is_ok());
    let at_limit = vec!["x".repeat(MAX_STOP_BYTES / 2); 2];
    assert!(chat_with(json!({ "stop": at_limit })).validate().is_ok());
    let over = vec![
        "x".repeat(MAX_STOP_BYTES / 2),
        "x".repeat(MAX_STOP_BYTES / 2 + 1),
    ];
    assert_rejected(json!({ "stop": over }), "stop");
}

#[test]
fn completion_prompt_shapes() {
    let text = |t: &str| Prompt::Text(t.into());
    let cases = [
        (json!("text"), vec![text("text")]),
        (json!([1, 2, 3]), vec![Prompt::Tokens(vec![1, 2, 3])]),
        (json!(["only"]), vec![text("only")]),
        (json!([[4, 5]]), vec![Prompt::Tokens(vec![4, 5])]),
        (json!(""), vec![text("")]),
        (json!(["a", "b"]), vec![text("a"), text("b")]),
        (
            json!([[1], [2, 3]]),
            vec![Prompt::Tokens(vec![1]), Prompt::Tokens(vec![2, 3])],
        ),
    ];
    for (prompt, expected) in cases {
        let checked = completion_with(json!({ "prompt": prompt }))
            .validate()
            .unwrap();
        assert_eq!(checked.prompts, expected);
    }
}

#[test]
fn completion_rules() {
    let error = |extra: Value| completion_with(extra).validate().unwrap_err();
    // A batch's choices are bounded as `n` is: 128 in all.
    let prompts = vec!["a"; 64];
    assert!(completion_with(json!({"prompt": prompts, "n": 2}))
        .validate()
        .is_ok());
    let prompts = vec!["a"; 65];
    assert_eq!(
        error(json!({"prompt": prompts, "n": 2})).param.as_deref(),
        Some("prompt")
    );
    assert_eq!(
        error(json!({"prompt": [[1], []]})).param.as_deref(),
        Some("prompt")
    );
    assert_eq!(
        error(json!({"prompt": []})).param.as_deref(),
        Some("prompt")
    );
    assert_eq!(
        error(json!({"suffix": "end"})).param.as_deref(),
        Some("suffix")
    );
    assert_eq!(
        error(json!({"consensus": {"samples": 2}})).param.as_deref(),
        Some("consensus")
    );
    assert_eq!(
        error(json!({"best_of": 3, "n": 2})).param.as_deref(),
        Some("best_of")
    );
    assert_eq!(
        error(json!({"logprobs": 21})).param.as_deref(),
        Some("logprobs")
    );
    assert_eq!(
        error(json!({"logprobs": -1})).param.as_deref(),
        Some("logprobs")
    );
    assert_eq!(
        error(json!({"temperature": 3})).param.as_deref(),
        Some("temperature")
    );

    let ok = completion_with(json!({"best_of": 2, "n": 2, "echo": true, "logprobs": 5,
                                    "suffix": "", "max_tokens": 7}))
    .validate()
    .unwrap();
    assert!(ok.echo);
    assert_eq!(ok.params.logprobs, Some(5));
    assert_eq!(ok.params.max_tokens, Some(7));
    assert!(serde_json::from_value::<CompletionRequest>(json!({"prompt": [-1]})).is_err());
    assert!(serde_json::from_value::<CompletionRequest>(json!({"model": "x"})).is_err());
}

#[test]
fn chat_completion_matches_openai_docs() {
    let literal = r#"{
      "id": "chatcmpl-123",
      "object": "chat.completion",
      "created": 1677652288,
      "model": "gpt-4o-mini",
      "system_fingerprint": "fp_44709d6fcb",
      "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "\n\nHello there, how may I assist you today?"},
        "logprobs": null,
        "finish_reason": "stop"
      }],
      "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
                "completion_tokens_details": {"reasoning_tokens": 0}}
    }"#;
    let parsed: ChatCompletionResponse = round_trip(literal);
    assert_eq!(parsed.choices[0].finish_reason, Some(FinishReason::Stop));
}

#[test]
fn chat_completion_built_by_constructor() {
    let response = ChatCompletionResponse::new(
        "chatcmpl-1".into(),
        7,
        "r1".into(),
        vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: Role::Assistant,
                content: None,
                reasoning_content: Some("thinking".into()),
                reasoning: None,
                tool_calls: None,
            },
            logprobs: None,
            finish_reason: Some(FinishReason::Length),
            reasoning_end: None,
            stop_reason: None,
        }],
        Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            total_tokens: 7,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 2 }),
            completion_tokens_details: Some(CompletionTokensDetails {
                reasoning_tokens: 4,
            }),
        },
    );
    assert_wire(
        &response,
        r#"{"id":"chatcmpl-1","object":"chat.completion","created":7,"model":"r1",
            "choices":[{"index":0,"message":{"role":"assistant","content":null,
            "reasoning_content":"thinking"},"logprobs":null,"finish_reason":"length"}],
            "usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,
            "prompt_tokens_details":{"cached_tokens":2},
            "completion_tokens_details":{"reasoning_tokens":4}}}"#,
    );
}

/// Both reasoning names serialize as given and parse back, in a message
/// and in a delta.
#[test]
fn both_reasoning_names_round_trip() {
    let message: AssistantMessage = round_trip(
        r#"{"role":"assistant","content":"4","reasoning_content":"2+2","reasoning":"2+2"}"#,
    );
    assert_eq!(message.reasoning.as_deref(), Some("2+2"));
    let delta: Delta = round_trip(r#"{"reasoning":"2+"}"#);
    assert_eq!(
        (delta.reasoning.as_deref(), delta.reasoning_content),
        (Some("2+"), None)
    );
}

#[test]
fn chat_chunks_match_openai_docs() {
    round_trip::<ChatCompletionChunk>(
        r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
    );
    round_trip::<ChatCompletionChunk>(
        r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#,
    );
    let with_null: ChatCompletionChunk = round_trip(
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    );
    assert_eq!(with_null.usage, Some(None));
    let usage: ChatCompletionChunk = round_trip(
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#,
    );
    assert_eq!(usage.usage.flatten().map(|u| u.total_tokens), Some(21));
}

#[test]
fn stop_reason_is_a_token_id_or_a_string_as_vllm_writes_it() {
    let choice = |reason| ChunkChoice {
        index: 0,
        delta: Delta::default(),
        logprobs: None,
        finish_reason: Some(FinishReason::Stop),
        reasoning_end: None,
        stop_reason: Some(reason),
    };
    let json = |reason| serde_json::to_value(choice(reason)).unwrap()["stop_reason"].clone();
    assert_eq!(json(StopReason::Token(151643)), serde_json::json!(151643));
    assert_eq!(
        json(StopReason::Text("END".into())),
        serde_json::json!("END")
    );
}

#[test]
fn chunk_usage_field_three_states() {
    let choice = ChunkChoice {
        index: 0,
        delta: Delta {
            reasoning_content: Some("r".into()),
            ..Delta::default()
        },
        logprobs: None,
        finish_reason: None,
        reasoning_end: None,
        stop_reason: None,
    };
    let plain = ChatCompletionChunk::new("c".into(), 1, "m".into(), vec![choice.clone()], false);
    assert_eq!(
        serde_json::to_string(&plain).unwrap(),
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"reasoning_content":"r"},"logprobs":null,"finish_reason":null}]}"#
    );
    let nulled = ChatCompletionChunk::new("c".into(), 1, "m".into(), vec![choice], true);
    assert!(serde_json::to_string(&nulled)
        .unwrap()
        .ends_with(r#""usage":null}"#));
    let last = ChatCompletionChunk::usage_only("c".into(), 1, "m".into(), Usage::default());
    assert_eq!(
        serde_json::to_string(&last).unwrap(),
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}"#
    );
}

#[test]
fn chat_logprobs_shape_and_infinity() {
    let literal = r#"{"content":[{"token":"Hello","logprob":-0.31725305,"bytes":[72,101,108,108,111],
        "top_logprobs":[{"token":"Hello","logprob":-0.31725305,"bytes":[72,101,108,108,111]},
                        {"token":"Hi","logprob":-1.3190403,"bytes":[72,105]}]}]}"#;
    round_trip::<ChatLogprobs>(literal);
    let entry = ChatTokenLogprob {
        token: "x".into(),
        logprob: f32::NEG_INFINITY,
        bytes: None,
        top_logprobs: vec![TopLogprob {
            token: "y".into(),
            logprob: f32::NAN,
            bytes: Some(vec![121]),
        }],
    };
    assert_wire(
        &entry,
        r#"{"token":"x","logprob":-9999.0,"bytes":null,
            "top_logprobs":[{"token":"y","logprob":-9999.0,"bytes":[121]}]}"#,
    );
}

#[test]
fn completion_matches_openai_docs() {
    round_trip::<CompletionResponse>(
        r#"{
          "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
          "object": "text_completion",
          "created": 1589478378,
          "model": "gpt-3.5-turbo-instruct",
          "system_fingerprint": "fp_44709d6fcb",
          "choices": [{"text": "\n\nThis is indeed a test", "index": 0, "logprobs": null, "finish_reason": "length"}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        }"#,
    );
    round_trip::<CompletionChunk>(
        r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"text":"Hi","index":0,"logprobs":null,"finish_reason":null}]}"#,
    );
}

#[test]
fn legacy_logprobs_keep_order_and_nulls() {
    let literal = r#"{"tokens":["\n","This"],"token_logprobs":[null,-0.5],
        "top_logprobs":[null,{"This":-0.5,"A":-1.25}],"text_offset":[0,1]}"#;
    let parsed: CompletionLogprobs = round_trip(literal);
    let order: Vec<&str> = parsed.top_logprobs[1]
        .as_ref()
        .unwrap()
        .0
        .iter()
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(order, ["This", "A"]);
    let logprobs = CompletionLogprobs {
        tokens: vec!["a".into()],
        token_logprobs: vec![Some(f32::NEG_INFINITY)],
        top_logprobs: vec![Some(TopLogprobMap(vec![
            ("z".into(), -1.0),
            ("a".into(), f32::NEG_INFINITY),
        ]))],
        text_offset: vec![0],
    };
    assert_eq!(
        serde_json::to_string(&logprobs).unwrap(),
        r#"{"tokens":["a"],"token_logprobs":[-9999.0],"top_logprobs":[{"z":-1.0,"a":-9999.0}],"text_offset":[0]}"#
    );
}

#[test]
fn completion_chunk_constructors() {
    let usage = CompletionChunk::usage_only("cmpl-1".into(), 1, "m".into(), Usage::default());
    assert_eq!(usage.object, OBJECT_TEXT_COMPLETION);
    assert!(usage.choices.is_empty());
    let plain = CompletionChunk::new("cmpl-1".into(), 1, "m".into(), Vec::new(), false);
    assert!(!serde_json::to_string(&plain).unwrap().contains("usage"));
    let response =
        CompletionResponse::new("cmpl-1".into(), 1, "m".into(), Vec::new(), Usage::default());
    assert_eq!(response.object, "text_completion");
}

#[test]
fn model_list_matches_openai_docs() {
    let list: ModelList = round_trip(
        r#"{"object":"list","data":[{"id":"model-id-0","object":"model","created":1686935002,"owned_by":"organization-owner"}]}"#,
    );
    assert_eq!(
        list,
        ModelList::new(vec![Model::new(
            "model-id-0".into(),
            1686935002,
            "organization-owner".into(),
            None
        )])
    );
    assert_wire(
        &ModelList::new(vec![Model::new(
            "r1".into(),
            1,
            "r1serve".into(),
            Some(4096),
        )]),
        r#"{"object":"list","data":[{"id":"r1","object":"model","created":1,"owned_by":"r1serve","max_model_len":4096}]}"#,
    );
}

#[test]
fn tokenize_shapes() {
    let text: TokenizeRequest = serde_json::from_str(r#"{"prompt":"hi"}"#).unwrap();
    assert_eq!(
        text,
        TokenizeRequest::Text(TokenizeTextRequest {
            model: None,
            prompt: "hi".into(),
            add_special_tokens: true
        })
    );
    let chat: TokenizeRequest = serde_json::from_str(
        r#"{"model":"r1","messages":[{"role":"user","content":"hi"}],"add_generation_prompt":false}"#,
    )
    .unwrap();
    let TokenizeRequest::Chat(chat) = chat else {
        panic!("expected the chat shape");
    };
    assert!(chat.add_generation_prompt == Some(false) && !chat.add_special_tokens);
    assert!(serde_json::from_str::<TokenizeRequest>(r#"{"tokens":[1]}"#).is_err());
    assert_wire(
        &TokenizeResponse {
            count: 2,
            max_model_len: 4096,
            tokens: vec![1, 2],
        },
        r#"{"count":2,"max_model_len":4096,"tokens":[1,2]}"#,
    );
    let detok: DetokenizeRequest = serde_json::from_str(r#"{"tokens":[1,2]}"#).unwrap();
    assert_eq!(detok.tokens, [1, 2]);
    assert_wire(
        &DetokenizeResponse {
            prompt: "hi".into(),
        },
        r#"{"prompt":"hi"}"#,
    );
}

#[test]
fn ids_and_timestamp() {
    assert!(chat_completion_id().starts_with("chatcmpl-"));
    assert!(completion_id().starts_with("cmpl-"));
    assert_ne!(chat_completion_id(), chat_completion_id());
    assert!(unix_timestamp() > 1_600_000_000);
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
}

#[test]
fn tools_are_checked_and_kept_as_sent() {
    let tools = json!([weather_tool(), {"type": "function", "function": {"name": "now",
        "parameters": {"type": "object", "properties": {}}}}]);
    let checked = chat_with(json!({"tools": tools, "parallel_tool_calls": false}))
        .validate()
        .unwrap()
        .tools
        .unwrap();
    assert_eq!(checked.definitions, tools.as_array().unwrap().clone());
    assert_eq!(checked.choice, ToolChoice::Auto);
    assert!(!checked.parallel);
    let none = chat_with(json!({"tools": [weather_tool()], "tool_choice": "none"}))
        .validate()
        .unwrap()
        .tools
        .unwrap();
    assert_eq!(none.choice, ToolChoice::None);
    // No tools: nothing to render or parse, and "none" asks for nothing.
    for extra in [
        json!({"tools": [], "tool_choice": "none"}),
        json!({"tool_choice": "none"}),
    ] {
        assert!(chat_with(extra).validate().unwrap().tools.is_none());
    }
}

#[test]
fn bad_tools_are_named() {
    let tool = |function: Value| json!([{"type": "function", "function": function}]);
    for (extra, param, needle) in [
        (
            json!({"tools": tool(json!({"name": "f", "parameters": {"type": "string"}}))}),
            "tools[0].function.parameters",
            "must describe an object",
        ),
        (
            json!({"tools": tool(json!({"name": "f", "parameters": "x"}))}),
            "tools[0].function.parameters",
            "must be a JSON object",
        ),
        (
            json!({"tools": [weather_tool(), weather_tool()]}),
            "tools[1].function.name",
            "more than once",
        ),
        (
            json!({"tools": tool(json!({"description": "no name", "parameters": {}}))}),
            "tools[0].function.name",
            "must be a string",
        ),
        (
            json!({"tools": tool(json!({"name": "has space", "parameters": {}}))}),
            "tools[0].function.name",
            "letters, digits",
        ),
        (
            json!({"tools": [{"type": "retrieval"}]}),
            "tools[0].type",
            "'retrieval' is not supported",
        ),
        (json!({"tools": {"a": 1}}), "tools", "array"),
        (
            json!({"tool_choice": "auto"}),
            "tool_choice",
            "requires 'tools'",
        ),
        (
            json!({"tools": tool(json!({"name": "f"}))}),
            "tools[0].function.parameters",
            "function 'f' has no parameters schema",
        ),
        (
            json!({"tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
            "'nope', which is not in 'tools'",
        ),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
            "tool_choice",
            "requires 'tools'",
        ),
        (
            json!({"tools": [weather_tool()], "tool_choice": "required",
                   "response_format": {"type": "json_object"}}),
            "response_format",
            "both constrain the answer",
        ),
        (
            json!({"tools": [weather_tool()], "tool_choice": "sometimes"}),
            "tool_choice",
            "'sometimes'",
        ),
        (
            json!({"tools": [weather_tool()], "parallel_tool_calls": "yes"}),
            "parallel_tool_calls",
            "boolean",
        ),
    ] {
        let error = chat_error(extra.clone());
        assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST, "{extra}");
        assert_eq!(error.param.as_deref(), Some(param), "{extra}");
        assert!(
            error.message.contains(needle),
            "{extra}: {:?} lacks {needle:?}",
            error.message
        );
    }
}

#[test]
fn tool_sizes_are_bounded() {
    let many: Vec<Value> = (0..=MAX_TOOLS)
        .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
        .collect();
    assert_rejected(json!({"tools": many}), "tools");
    let long = "x".repeat(MAX_TOOLS_BYTES);
    let big = json!([{"type": "function", "function": {"name": "f", "description": long}}]);
    assert_rejected(json!({"tools": big}), "tools");
}

#[test]
fn tool_turns_render_with_null_content_and_string_arguments() {
    let request = chat_with(json!({"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C"}
    ]}));
    let messages = request.validate().unwrap().messages;
    let json = serde_json::to_value(&messages).unwrap();
    assert_eq!(json[1]["content"], Value::Null);
    assert_eq!(
        json[1]["tool_calls"],
        json!([{"type": "function", "id": "call_1",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );
    assert_eq!(json[2]["tool_call_id"], "call_1");
    assert_eq!(json[2]["content"], "22 C");
    assert!(json[0].get("tool_calls").is_none());
}

#[test]
fn unknown_fields_are_captured_and_recognized_ones_are_not() {
    let chat = chat_with(json!({
        "max_tokens": 3, "stop_token_ids": [7], "response_format": {"type": "text"},
        "echo": false, "guided_foo": 1, "zz_extra": {"a": [1]},
        "thinking_token_budget": 8, "reasoning_effort": "low", "reasoning": {"exclude": true},
        "answer_token_reserve": 4, "reasoning_field": "both",
    }));
    assert_eq!(
        chat.unknown.keys().collect::<Vec<_>>(),
        ["guided_foo", "zz_extra"]
    );
    assert_eq!(chat.sampling.max_tokens, Some(3));
    assert!(chat_with(json!({"n": 1})).unknown.is_empty());
    let completion = completion_with(json!({"echo": true, "best_of": 1, "foo": null}));
    assert_eq!(completion.unknown.keys().collect::<Vec<_>>(), ["foo"]);
}

#[test]
fn vllm_output_fields_are_checked_and_passed_on() {
    let p = chat_with(json!({
        "stop_token_ids": [9, 2, 9], "skip_special_tokens": false,
        "include_stop_str_in_output": true, "prompt_logprobs": 3,
    }))
    .validate()
    .unwrap()
    .params;
    assert_eq!(p.stop_token_ids, [2, 9]);
    assert!(!p.skip_special_tokens && p.include_stop_str_in_output);
    assert_eq!(p.prompt_logprobs, Some(3));
    let p = chat_with(json!({})).validate().unwrap().params;
    assert!(p.skip_special_tokens && !p.include_stop_str_in_output);
    assert!(p.stop_token_ids.is_empty() && p.prompt_logprobs.is_none());
    let many: Vec<i64> = (0..=MAX_STOP_TOKEN_IDS as i64).collect();
    for (extra, param) in [
        (json!({"stop_token_ids": [-1]}), "stop_token_ids"),
        (json!({"stop_token_ids": [1i64 << 32]}), "stop_token_ids"),
        (json!({"stop_token_ids": many}), "stop_token_ids"),
        (json!({"prompt_logprobs": -1}), "prompt_logprobs"),
        (json!({"prompt_logprobs": 21}), "prompt_logprobs"),
        (
            json!({"skip_special_tokens": false, "spaces_between_special_tokens": true}),
            "spaces_between_special_tokens",
        ),
        (json!({"service_tier": "flex"}), "service_tier"),
        (json!({"store": true}), "store"),
    ] {
        assert_rejected(extra, param);
    }
    for harmless in [
        json!({"spaces_between_special_tokens": true}),
        json!({"skip_special_tokens": false, "spaces_between_special_tokens": false}),
        json!({"service_tier": "auto", "store": false, "metadata": {"k": "v"}}),
    ] {
        assert!(chat_with(harmless.clone()).validate().is_ok(), "{harmless}");
    }
}

#[test]
fn chat_endings_and_echo_follow_vllm() {
    let assistant = json!([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello, I"},
    ]);
    let ending = |extra: Value| chat_with(extra).validate().map(|c| c.ending);
    assert_eq!(ending(json!({})).unwrap(), ChatEnding::GenerationPrompt);
    assert_eq!(
        ending(json!({"add_generation_prompt": false})).unwrap(),
        ChatEnding::Closed
    );
    assert_eq!(
        ending(json!({"messages": assistant, "continue_final_message": true})).unwrap(),
        ChatEnding::ContinueFinal
    );
    assert_rejected(
        json!({"messages": assistant, "continue_final_message": true, "add_generation_prompt": true}),
        "continue_final_message",
    );
    assert_rejected(
        json!({"continue_final_message": true}),
        "continue_final_message",
    );
    let echo = |extra: Value| chat_with(extra).validate().unwrap().echo;
    assert_eq!(
        echo(json!({"messages": assistant, "echo": true})).as_deref(),
        Some("Hello, I")
    );
    assert_eq!(echo(json!({"messages": assistant})), None);
    assert_eq!(
        echo(json!({"echo": true})),
        None,
        "the last message is the user's"
    );
}

#[test]
fn unimplemented_vllm_parameters_are_named_unless_they_ask_for_nothing() {
    for (extra, param) in [
        (json!({"use_beam_search": true}), "use_beam_search"),
        (json!({"allowed_token_ids": [1, 2]}), "allowed_token_ids"),
        (
            json!({"truncate_prompt_tokens": 10}),
            "truncate_prompt_tokens",
        ),
        (json!({"chat_template": "{{ messages }}"}), "chat_template"),
    ] {
        let error = chat_error(extra.clone());
        assert_eq!(error.param.as_deref(), Some(param), "{extra}");
        assert_eq!(error.code.as_deref(), Some("unsupported_parameter"));
        let error = completion_with(extra.clone()).validate().unwrap_err();
        assert_eq!(error.param.as_deref(), Some(param), "{extra}");
    }
    for nothing in [
        json!({"use_beam_search": false, "bad_words": [], "guided_json": null}),
        json!({"return_tokens_as_token_ids": false, "documents": []}),
    ] {
        let chat = chat_with(nothing.clone());
        assert!(chat.unknown.is_empty(), "{nothing}: recognized");
        assert!(chat.validate().is_ok(), "{nothing}");
        assert!(
            completion_with(nothing.clone()).validate().is_ok(),
            "{nothing}"
        );
    }
}
