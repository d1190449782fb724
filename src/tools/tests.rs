//! Unit tests of the tool-call stream: every format, fed whole and split at
//! every character, must give the same content and calls.

use super::*;

/// A parsed choice: content and `(name, arguments)` per call.
type Parsed = (String, Vec<(String, String)>);

/// Feeds `pieces` and merges the deltas the way a client does, checking
/// that each call's name comes in its first delta only.
fn run(parser: ToolCallParser, parallel: bool, pieces: &[&str]) -> Parsed {
    let mut stream = ToolCallStream::new(parser, parallel);
    let mut content = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut outputs: Vec<ParsedText> = pieces.iter().map(|p| stream.push(p)).collect();
    outputs.push(stream.finish());
    for out in outputs {
        content.push_str(&out.content);
        for delta in out.calls {
            let index = delta.index as usize;
            match delta.name {
                Some(name) => {
                    assert_eq!(index, calls.len(), "a new call starts at the next index");
                    calls.push((name, delta.arguments));
                }
                None => calls[index].1.push_str(&delta.arguments),
            }
        }
    }
    (content, calls)
}

/// Runs `text` whole, then split at every character boundary, then one
/// character per push, and checks all agree.
fn parse_all_ways(parser: ToolCallParser, text: &str) -> Parsed {
    let whole = run(parser, true, &[text]);
    for (i, _) in text.char_indices().skip(1) {
        let split = run(parser, true, &[&text[..i], &text[i..]]);
        assert_eq!(split, whole, "split at byte {i} of {text:?}");
    }
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
    assert_eq!(run(parser, true, &chars), whole, "one char per push");
    whole
}

fn call(name: &str, arguments: &str) -> (String, String) {
    (name.to_string(), arguments.to_string())
}

#[test]
fn hermes_calls_after_content() {
    let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    assert_eq!(
        parse_all_ways(ToolCallParser::Hermes, text),
        (
            "Let me check.".to_string(),
            vec![
                call("get_weather", r#"{"city":"Paris"}"#),
                call("get_time", "{}")
            ]
        )
    );
}

#[test]
fn deepseek_r1_calls_stream_their_arguments() {
    let text = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\", \"unit\": \"c\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    assert_eq!(
        parse_all_ways(ToolCallParser::DeepSeekR1, text),
        (
            String::new(),
            vec![
                call("get_weather", r#"{"city": "Paris", "unit": "c"}"#),
                call("get_time", "{}")
            ]
        )
    );
    // The arguments arrive before the call is closed.
    let mut stream = ToolCallStream::new(ToolCallParser::DeepSeekR1, true);
    let head = stream.push("<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"a\": ");
    assert_eq!(head.calls[0].name.as_deref(), Some("f"));
    assert_eq!(head.calls[0].arguments, "{\"a\":");
    let rest = stream.push("1}\n``");
    assert_eq!(rest.calls[0].arguments, " 1}");
}

#[test]
fn deepseek_v31_calls() {
    let text = "Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    assert_eq!(
        parse_all_ways(ToolCallParser::DeepSeekV31, text),
        (
            "Sure.".to_string(),
            vec![call("get_weather", r#"{"city": "Paris"}"#)]
        )
    );
}

#[test]
fn text_without_calls_is_unchanged() {
    for parser in [
        ToolCallParser::Hermes,
        ToolCallParser::DeepSeekR1,
        ToolCallParser::DeepSeekV31,
        ToolCallParser::None,
    ] {
        let text = "a < b and <tool but not a call: <｜tool▁x｜>\n\n";
        assert_eq!(parse_all_ways(parser, text), (text.to_string(), vec![]));
    }
}

#[test]
fn malformed_first_call_stays_content() {
    let text = "<tool_call>\nnot json\n</tool_call>";
    assert_eq!(
        parse_all_ways(ToolCallParser::Hermes, text),
        (text.to_string(), vec![])
    );
    let text = "<｜tool▁call▁begin｜>no separator\n```json\n{}\n```<｜tool▁call▁end｜>";
    assert_eq!(
        run(ToolCallParser::DeepSeekR1, true, &[text]).1,
        Vec::<(String, String)>::new()
    );
}

#[test]
fn serial_calls_keep_only_the_first() {
    let text = "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
    assert_eq!(
        run(ToolCallParser::Hermes, false, &[text]),
        (String::new(), vec![call("a", "{}")])
    );
    assert_eq!(run(ToolCallParser::Hermes, true, &[text]).1.len(), 2);
}

#[test]
fn unfinished_calls_at_the_end() {
    // A DeepSeek call cut off keeps the arguments it had.
    assert_eq!(
        run(
            ToolCallParser::DeepSeekR1,
            true,
            &["<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"a\": 1"]
        ),
        (String::new(), vec![call("f", "{\"a\": 1")])
    );
    // A Hermes call without its close tag is a call if its JSON is whole...
    assert_eq!(
        run(
            ToolCallParser::Hermes,
            true,
            &["<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": [1]}}"]
        ),
        (String::new(), vec![call("f", r#"{"x":[1]}"#)])
    );
    // ...and content if not.
    assert_eq!(
        run(
            ToolCallParser::Hermes,
            true,
            &["<tool_call>{\"name\": \"f\""]
        ),
        ("<tool_call>{\"name\": \"f\"".to_string(), vec![])
    );
}

#[test]
fn call_ids_look_like_openai_ids() {
    let id = call_id();
    assert!(id.starts_with(CALL_ID_PREFIX));
    assert_eq!(id.len(), CALL_ID_PREFIX.len() + 24);
    assert_ne!(call_id(), id);
}
