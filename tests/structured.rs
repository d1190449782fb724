//! Structured outputs below the HTTP layer, on real vocabularies:
//! - the grammar engine over the Qwen2.5 and DeepSeek-R1 tokenizers accepts
//!   valid JSON for a schema and refuses what breaks it;
//! - the forced-call grammars of the three tool-call formats accept the
//!   markup their templates render (markers as the single tokens the
//!   tokenizer makes of them), which the tool-call parser reads back, and
//!   refuse other functions and arguments off the schema;
//! - in the engine (scripted model, so the model itself never writes what
//!   the grammar wants), the grammar holds from the first token without a
//!   reasoning parser and only after `</think>` with one: reasoning stays
//!   the model's own text.

mod common;

use std::sync::{Arc, OnceLock};

use common::engine::{run, wait_idle};
use common::scripted::Scripted;
use r1serve::engine::types::{FinishReason, ReasoningParams, SamplingParams};
use r1serve::engine::{Engine, EngineConfig};
use r1serve::kv_cache::storage::KvDtype;
use r1serve::reasoning::{ReasoningEnd, ReasoningParser};
use r1serve::structured::{CompiledGrammar, GrammarSpec, GrammarVocab};
use r1serve::tokenizer::{IncrementalDecoder, Tokenizer};
use r1serve::tools::{call_grammar, ToolCallParser, ToolCallStream, ToolFunction};
use serde_json::{json, Value};

struct Vocab {
    tok: Tokenizer,
    grammar: Arc<GrammarVocab>,
}

fn vocab(path: &std::path::Path) -> Vocab {
    let tok = common::gguf_tokenizer(path);
    let grammar = Arc::new(GrammarVocab::new(&tok, tok.vocab_size()).expect("grammar vocab"));
    Vocab { tok, grammar }
}

fn qwen() -> &'static Vocab {
    static V: OnceLock<Vocab> = OnceLock::new();
    V.get_or_init(|| vocab(&common::qwen05()))
}

fn r1() -> &'static Vocab {
    static V: OnceLock<Vocab> = OnceLock::new();
    V.get_or_init(|| vocab(&common::r1_header()))
}

fn smol() -> &'static Vocab {
    static V: OnceLock<Vocab> = OnceLock::new();
    V.get_or_init(|| vocab(&common::smollm2()))
}

fn compile(v: &Vocab, spec: GrammarSpec) -> CompiledGrammar {
    CompiledGrammar::compile(&spec, &v.grammar).expect("compiles")
}

/// Whether the grammar takes `text`, as the tokenizer encodes it, whole.
fn accepts(v: &Vocab, grammar: &CompiledGrammar, text: &str) -> bool {
    let tokens = v.tok.encode(text, false).expect("encode");
    let mut m = grammar.matcher();
    m.consume_tokens(&tokens).is_ok() && m.is_accepting().unwrap_or(false)
}

#[test]
fn schemas_are_enforced_on_real_vocabularies() {
    let schema = json!({"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
        "priority": {"enum": ["low", "high"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "owner": {"type": "object", "properties": {"name": {"type": "string"}},
                  "required": ["name"]}},
        "required": ["code", "priority", "score"], "additionalProperties": false});
    for v in [qwen(), r1()] {
        let g = compile(v, GrammarSpec::JsonSchema(schema.clone()));
        for good in [
            json!({"code": "ABC-123", "priority": "low", "score": 1}),
            json!({"code": "XYZ-999", "priority": "high", "score": 10, "tags": ["a", "b c"],
                   "owner": {"name": "Zoë"}}),
        ] {
            assert!(accepts(v, &g, &common::spaced_json(&good)), "{good}");
        }
        for bad in [
            json!({"code": "abc-123", "priority": "low", "score": 1}),
            json!({"code": "ABC-123", "priority": "urgent", "score": 1}),
            json!({"code": "ABC-123", "priority": "low", "score": 11}),
            json!({"code": "ABC-123", "priority": "low", "score": 1.5}),
            json!({"code": "ABC-123", "priority": "low"}),
            json!({"code": "ABC-123", "priority": "low", "score": 1, "tags": ["a", "b", "c"]}),
            json!({"code": "ABC-123", "priority": "low", "score": 1, "owner": {}}),
            json!({"code": "ABC-123", "priority": "low", "score": 1, "extra": 0}),
        ] {
            assert!(!accepts(v, &g, &common::spaced_json(&bad)), "{bad}");
        }
        // The layout is fixed: no padding to run an answer on with.
        let good = json!({"code": "ABC-123", "priority": "low", "score": 1});
        assert!(!accepts(
            v,
            &g,
            &format!("{}\n\n", common::spaced_json(&good))
        ));
        assert!(!accepts(v, &g, &good.to_string()));
    }
}

#[test]
fn every_constraint_kind_compiles_or_names_its_error() {
    let v = qwen();
    let choice = compile(
        v,
        GrammarSpec::Choice(vec!["yes".into(), "no \"way\"".into()]),
    );
    assert!(accepts(v, &choice, "yes"));
    assert!(accepts(v, &choice, "no \"way\""));
    assert!(!accepts(v, &choice, "maybe"));
    let regex = compile(v, GrammarSpec::Regex("[a-c]{2}[0-9]+".into()));
    assert!(accepts(v, &regex, "ab12"));
    assert!(!accepts(v, &regex, "ad12"));
    let lark = compile(
        v,
        GrammarSpec::Lark("start: \"sum: \" num (\"+\" num)*\nnum: /[0-9]+/".into()),
    );
    assert!(accepts(v, &lark, "sum: 1+22+3"));
    assert!(!accepts(v, &lark, "sum: 1+"));
    let any = compile(v, GrammarSpec::JsonObject);
    assert!(accepts(v, &any, "{\"a\": [1, {\"b\": null}]}"));
    assert!(!accepts(v, &any, "[1]"));
    for (spec, needle) in [
        (
            GrammarSpec::JsonSchema(json!({"type": "nonsense"})),
            "nonsense",
        ),
        (GrammarSpec::JsonSchema(json!(true)), "JSON object"),
        (GrammarSpec::Regex("(".into()), "("),
        (GrammarSpec::Choice(vec![]), "empty"),
        (GrammarSpec::Lark("root ::= \"a\"".into()), ""),
    ] {
        let error = CompiledGrammar::compile(&spec, &v.grammar).expect_err("rejected");
        assert!(error.contains(needle), "{spec:?}: {error}");
    }
}

fn weather() -> ToolFunction {
    ToolFunction {
        name: "get_weather".into(),
        parameters: json!({"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"]}),
    }
}

fn time() -> ToolFunction {
    ToolFunction {
        name: "get_time".into(),
        parameters: json!({"type": "object", "properties": {}}),
    }
}

/// Feeds `text`, encoded as the model would write it, token by token
/// through the detokenizer and the tool-call parser, as the server does.
fn parse_calls(v: &Vocab, parser: ToolCallParser, text: &str) -> Vec<(String, Value)> {
    let mut detok = IncrementalDecoder::new(false);
    let mut stream = ToolCallStream::new(parser, true);
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut take = |parsed: r1serve::tools::ParsedText| {
        assert!(parsed.content.trim().is_empty(), "{:?}", parsed.content);
        for delta in parsed.calls {
            match delta.name {
                Some(name) => calls.push((name, delta.arguments)),
                None => calls[delta.index as usize].1.push_str(&delta.arguments),
            }
        }
    };
    for id in v.tok.encode(text, false).expect("encode") {
        let piece = detok.push(&v.tok, id).expect("decode");
        take(stream.push(&piece));
    }
    take(stream.push(&detok.flush(&v.tok).expect("flush")));
    take(stream.finish());
    calls
        .into_iter()
        .map(|(n, a)| (n, serde_json::from_str(&a).expect("JSON arguments")))
        .collect()
}

#[test]
fn forced_call_grammars_accept_what_the_templates_render() {
    let paris = json!({"city": "Paris", "unit": "c"});
    let cases: [(&Vocab, ToolCallParser, String, String); 3] = [
        (
            qwen(),
            ToolCallParser::Hermes,
            format!(
                "<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {}}}\n</tool_call>",
                common::spaced_json(&paris)
            ),
            "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>".into(),
        ),
        (
            r1(),
            ToolCallParser::DeepSeekR1,
            format!(
                "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
                common::spaced_json(&paris)
            ),
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>".into(),
        ),
        (
            r1(),
            ToolCallParser::DeepSeekV31,
            format!(
                "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
                common::spaced_json(&paris)
            ),
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>".into(),
        ),
    ];
    for (v, parser, weather_call, time_call) in cases {
        let token = |m: &str| v.grammar.single_token(m);
        let named = call_grammar(parser, &[weather()], false, &token).expect("grammar");
        let named = compile(v, GrammarSpec::Lark(named));
        assert!(
            accepts(v, &named, &weather_call),
            "{parser}: {weather_call}"
        );
        assert!(
            !accepts(v, &named, &time_call),
            "{parser}: another function"
        );
        let off_schema = weather_call.replace("\"c\"", "\"k\"");
        assert!(!accepts(v, &named, &off_schema), "{parser}: {off_schema}");
        assert_eq!(
            parse_calls(v, parser, &weather_call),
            [("get_weather".to_string(), paris.clone())],
            "{parser}"
        );

        let any = call_grammar(parser, &[weather(), time()], true, &token).expect("grammar");
        let any = compile(v, GrammarSpec::Lark(any));
        let two = match parser {
            ToolCallParser::Hermes => format!("{weather_call}\n{time_call}"),
            ToolCallParser::DeepSeekR1 => weather_call.replace(
                "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
                &format!(
                    "<｜tool▁call▁end｜>\n{}",
                    time_call.replace("<｜tool▁calls▁begin｜>", "")
                ),
            ),
            _ => weather_call.replace(
                "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
                &format!(
                    "<｜tool▁call▁end｜>{}",
                    time_call.replace("<｜tool▁calls▁begin｜>", "")
                ),
            ),
        };
        assert!(accepts(v, &any, &time_call), "{parser}: {time_call}");
        assert!(accepts(v, &any, &two), "{parser}: {two}");
        assert!(!accepts(v, &named, &two), "{parser}: one call only");
        let parsed = parse_calls(v, parser, &two);
        let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["get_weather", "get_time"], "{parser}: {two}");
    }
}

/// The markers are the tokenizers' own single tokens where the vocabulary
/// has them (Qwen2.5's `<tool_call>`), so a forced call puts the model on
/// the token path its template renders; elsewhere (the R1-Distill
/// vocabulary spells DeepSeek's tool markers in pieces) they are text.
#[test]
fn markers_are_single_tokens_where_the_vocabulary_has_them() {
    let token = |v: &Vocab, m: &str| v.grammar.single_token(m);
    let open = qwen()
        .tok
        .token_to_id("<tool_call>")
        .expect("Qwen has <tool_call>");
    assert_eq!(token(qwen(), "<tool_call>"), Some(open));
    let g = call_grammar(ToolCallParser::Hermes, &[weather()], false, &|m| {
        token(qwen(), m)
    })
    .unwrap();
    assert!(g.contains(&format!("<[{open}]>")), "{g}");
    for marker in [
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁sep｜>",
        "<｜tool▁call▁end｜>",
        "<｜tool▁calls▁end｜>",
    ] {
        let id = token(r1(), marker);
        assert_eq!(id, r1().tok.token_to_id(marker), "{marker}");
        let g = call_grammar(ToolCallParser::DeepSeekR1, &[weather()], false, &|m| {
            token(r1(), m)
        })
        .unwrap();
        match id {
            Some(id) => assert!(g.contains(&format!("<[{id}]>")), "{g}"),
            None => assert!(g.contains(&format!("\"{marker}\"")), "{g}"),
        }
    }
}

fn engine(vocab: &Vocab, model: Scripted) -> r1serve::engine::EngineHandle {
    let config = EngineConfig {
        kv_cache_memory: Some(64 * 16 * 8),
        kv_dtype: KvDtype::F32,
        max_model_len: Some(1024),
        ..Default::default()
    };
    Engine::start(Box::new(model), Arc::new(vocab.tok.clone()), config).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A scripted model that writes a fixed cycle of tokens (reasoning-like
/// text) whatever the context, against a schema it never writes itself.
#[test]
fn the_grammar_holds_after_the_reasoning_and_not_in_it() {
    let v = smol();
    let schema = json!({"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "s": {"enum": ["a", "b"]}}, "required": ["n", "s"], "additionalProperties": false});
    let grammar = Arc::new(compile(v, GrammarSpec::JsonSchema(schema)));
    let cycle: Vec<u32> = (1000..1040).collect();
    rt().block_on(async {
        let h = engine(
            v,
            Scripted::looping(v.tok.vocab_size(), 4096, cycle.clone()),
        );
        // top_p keeps the reasoning on the model's cycle (all its mass),
        // while the answer samples among the grammar's tokens.
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            seed: Some(5),
            n: 4,
            max_tokens: 120,
            reasoning: ReasoningParams {
                parser: ReasoningParser::DeepSeekR1,
                starts_inside: true,
                budget: Some(16),
                answer_reserve: None,
            },
            grammar: Some(grammar.clone()),
            ..Default::default()
        };
        let got = run(&h, (200..208).collect(), params).await;
        for i in 0..4 {
            assert_eq!(got.reasoning_end[i], Some(ReasoningEnd::Budget));
            assert_eq!(got.finish[i], Some(FinishReason::Stop), "{got:?}");
            // The reasoning is the model's own cycle, then the close.
            assert_eq!(&got.tokens[i][..16], &cycle[8..24]);
            let free = v.tok.decode(&cycle[8..24], false).unwrap();
            assert!(
                got.reasoning[i].starts_with(&free),
                "{:?}",
                got.reasoning[i]
            );
            let answer: Value = serde_json::from_str(&got.text[i]).expect("JSON answer");
            let n = answer["n"].as_u64().expect("n");
            assert!(n <= 99, "{answer}");
            assert!(answer["s"] == "a" || answer["s"] == "b", "{answer}");
            assert_eq!(answer.as_object().unwrap().len(), 2, "{answer}");
        }
        let s = wait_idle(&h).await;
        assert_eq!(s.free_blocks, s.total_blocks);
        h.shutdown();
    });
}

#[test]
fn without_a_reasoning_parser_the_grammar_holds_from_the_first_token() {
    let v = smol();
    let grammar = Arc::new(compile(
        v,
        GrammarSpec::Choice(vec!["alpha".into(), "beta gamma".into()]),
    ));
    rt().block_on(async {
        let (model, _) = Scripted::new(v.tok.vocab_size(), 4096);
        let h = engine(v, model);
        for temperature in [0.0, 1.0] {
            let params = SamplingParams {
                temperature,
                seed: Some(9),
                n: 3,
                max_tokens: 16,
                grammar: Some(grammar.clone()),
                ..Default::default()
            };
            let got = run(&h, (300..310).collect(), params).await;
            for i in 0..3 {
                assert!(
                    got.text[i] == "alpha" || got.text[i] == "beta gamma",
                    "{:?}",
                    got.text[i]
                );
                assert_eq!(got.finish[i], Some(FinishReason::Stop));
            }
        }
        h.shutdown();
    });
}
