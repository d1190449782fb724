//! Tool calls against the real tokenizers and templates: R1-format and
//! V3.1-format outputs encoded with the DeepSeek-R1 tokenizer (from the
//! R1-Distill GGUF header), and Hermes outputs encoded with the Qwen2.5
//! tokenizer, are fed token by token through the incremental detokenizer,
//! the reasoning splitter and the tool-call parser exactly as the server
//! does; and conversations with tools and tool calls render through the
//! API's message checks and the models' own templates exactly as Hugging
//! Face transformers renders them (`tests/fixtures/tool_templates_*.json`,
//! from `gen_tool_template_fixtures.py`).

mod common;

use std::path::Path;
use std::sync::OnceLock;

use r1serve::api::protocol::{text_messages, ChatMessage};
use r1serve::reasoning::{ReasoningParser, ReasoningSplitter};
use r1serve::tokenizer::{ChatTemplate, IncrementalDecoder, Tokenizer};
use r1serve::tools::{ToolCallParser, ToolCallStream};

fn load(path: &Path) -> Tokenizer {
    common::gguf_tokenizer(path)
}

/// The DeepSeek-R1 tokenizer, read once: building one takes seconds.
fn r1() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| load(&common::r1_header()))
}

/// The Qwen2.5 tokenizer, read once.
fn qwen() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| load(&common::qwen05()))
}

/// What a client sees for one choice.
#[derive(Debug, Default, PartialEq)]
struct Streamed {
    reasoning: String,
    content: String,
    /// `(name, arguments)` per call.
    calls: Vec<(String, String)>,
    /// Calls written inside the reasoning, counted but not executed.
    calls_in_reasoning: u32,
}

impl Streamed {
    fn add(&mut self, reasoning: &str, parsed: r1serve::tools::ParsedText) {
        self.reasoning.push_str(reasoning);
        self.content.push_str(&parsed.content);
        for delta in parsed.calls {
            match delta.name {
                Some(name) => {
                    assert_eq!(delta.index as usize, self.calls.len());
                    self.calls.push((name, delta.arguments));
                }
                None => self.calls[delta.index as usize]
                    .1
                    .push_str(&delta.arguments),
            }
        }
    }
}

/// Streams `text` as the model would emit it: encoded, then detokenized one
/// token at a time, split into reasoning and answer, the answer parsed for
/// calls and the reasoning only counted.
fn stream(tok: &Tokenizer, text: &str, parser: ToolCallParser) -> Streamed {
    let ids = tok.encode(text, false).unwrap();
    let mut detok = IncrementalDecoder::new(true);
    let mut split = ReasoningSplitter::new(ReasoningParser::DeepSeekR1, false);
    let mut answer = ToolCallStream::new(parser, true);
    let mut thoughts = ToolCallStream::new(parser, true);
    let mut out = Streamed::default();
    let mut feed = |s: r1serve::reasoning::Split, out: &mut Streamed| {
        thoughts.push(&s.reasoning);
        out.add(&s.reasoning, answer.push(&s.content));
    };
    for &id in &ids {
        let piece = detok.push(tok, id).unwrap();
        feed(split.push(&piece), &mut out);
    }
    feed(split.push(&detok.flush(tok).unwrap()), &mut out);
    feed(split.finish(), &mut out);
    out.add("", answer.finish());
    thoughts.finish();
    out.calls_in_reasoning = thoughts.calls();
    out
}

fn call(name: &str, arguments: &str) -> (String, String) {
    (name.to_string(), arguments.to_string())
}

#[test]
fn deepseek_markers_are_split_across_r1_tokens() {
    // The R1 distills keep Qwen's vocabulary, which has no DeepSeek tool
    // tokens: every marker arrives in pieces, the case the parser must hold
    // text back for.
    let tok = r1();
    for marker in [
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁sep｜>",
        "<｜tool▁call▁end｜>",
    ] {
        let ids = tok.encode(marker, false).unwrap();
        assert!(ids.len() > 1, "{marker} is one token: {ids:?}");
    }
}

#[test]
fn r1_calls_after_reasoning_are_parsed() {
    let tok = r1();
    let text = "<think>\nThe user wants the weather and the time, so I call both tools.\n</think>\n\n\
        <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n\
        {\"city\": \"Paris\", \"unit\": \"celsius\"}\n```<｜tool▁call▁end｜>\n\
        <｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{\"tz\": \"Europe/Paris\"}\n```\
        <｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    let out = stream(tok, text, ToolCallParser::DeepSeekR1);
    assert_eq!(
        out,
        Streamed {
            reasoning: "\nThe user wants the weather and the time, so I call both tools.\n"
                .to_string(),
            content: String::new(),
            calls: vec![
                call("get_weather", r#"{"city": "Paris", "unit": "celsius"}"#),
                call("get_time", r#"{"tz": "Europe/Paris"}"#),
            ],
            calls_in_reasoning: 0,
        }
    );
    for (_, arguments) in &out.calls {
        serde_json::from_str::<serde_json::Value>(arguments).expect("arguments are JSON");
    }
}

#[test]
fn r1_calls_inside_reasoning_are_counted_not_executed() {
    let tok = r1();
    let inner = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n\
        ```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    let text = format!("<think>\nMaybe {inner} but I know it.\n</think>\n\nIt is sunny in Paris.");
    let out = stream(tok, &text, ToolCallParser::DeepSeekR1);
    assert_eq!(out.content, "It is sunny in Paris.");
    assert!(out.calls.is_empty());
    assert_eq!(out.calls_in_reasoning, 1);
    assert!(out.reasoning.contains(inner), "{:?}", out.reasoning);
}

#[test]
fn r1_text_before_a_call_is_content() {
    let tok = r1();
    let text = "<think>\nok\n</think>\n\nLet me look that up.\n<｜tool▁calls▁begin｜>\
        <｜tool▁call▁begin｜>function<｜tool▁sep｜>search_web\n```json\n{\"query\": \"r1serve ¿qué?\"}\n```\
        <｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    let out = stream(tok, text, ToolCallParser::DeepSeekR1);
    assert_eq!(out.content, "Let me look that up.");
    assert_eq!(
        out.calls,
        [call("search_web", r#"{"query": "r1serve ¿qué?"}"#)]
    );
}

#[test]
fn v31_calls_with_the_r1_tokenizer() {
    let tok = r1();
    let text = "<think>\nhm\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather\
        <｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    let out = stream(tok, text, ToolCallParser::DeepSeekV31);
    assert_eq!(out.calls, [call("get_weather", r#"{"city": "Paris"}"#)]);
    assert_eq!(out.content, "");
}

#[test]
fn hermes_calls_with_the_qwen_tokenizer() {
    let tok = qwen();
    assert_eq!(tok.encode("<tool_call>", false).unwrap().len(), 1);
    let text = "I will check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    let out = stream(tok, text, ToolCallParser::Hermes);
    assert_eq!(out.content, "I will check.");
    assert_eq!(
        out.calls,
        [
            call("get_weather", r#"{"city":"Paris","days":[1,2]}"#),
            call("get_time", "{}")
        ]
    );
    // The Qwen template has no reasoning block; a plain answer stays whole.
    let plain = stream(tok, "No tools needed: 4.", ToolCallParser::Hermes);
    assert_eq!(plain.content, "No tools needed: 4.");
    assert!(plain.calls.is_empty());
}

fn check_tool_templates(key: &str, tok: &Tokenizer) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("tool_templates_{key}.json"));
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let template = ChatTemplate::from_tokenizer(tok).unwrap();
    for case in fixture["renders"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let messages = serde_json::to_value(text_messages(&messages).unwrap()).unwrap();
        let tools = case["tools"]
            .as_bool()
            .unwrap()
            .then(|| fixture["tools"].clone());
        let rendered = template
            .render(&messages, true, tools.as_ref(), &serde_json::Map::new())
            .unwrap();
        assert_eq!(
            rendered,
            case["rendered"].as_str().unwrap(),
            "{key}: {} tools={}",
            case["name"],
            case["tools"]
        );
    }
}

#[test]
fn qwen_tool_templates_match_hf() {
    check_tool_templates("qwen25coder", qwen());
}

#[test]
fn r1_tool_templates_match_hf() {
    check_tool_templates("r1qwen7b", r1());
}
