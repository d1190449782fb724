//! The problems of an eval: one JSON object per line of `--data`, with
//! `id`, `prompt` (a user message) or `messages` (a whole chat), `answer`,
//! and optionally `language` (an ISO code or script name: the script the
//! reasoning should be in) and `units` (units an answer may carry).

use crate::answers::answer::Reference;
use crate::answers::language::{Script, WordCounts};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

/// Most problems in one file: each becomes k requests.
pub const MAX_PROBLEMS: usize = 1_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: Value,
    prompt: Option<String>,
    messages: Option<Value>,
    answer: Value,
    language: Option<String>,
    #[serde(default)]
    units: Vec<String>,
}

/// One problem, ready to send and to check.
#[derive(Clone, Debug)]
pub struct Problem {
    /// The `id`, as a string (a numeric id is written in decimal).
    pub id: String,
    /// The chat messages to send.
    pub messages: Value,
    /// The reference answer.
    pub reference: Reference,
    /// The script the reasoning should be in: `language`, else the
    /// script most of the prompt's words are in.
    pub script: Option<Script>,
}

/// Reads `path`; an error names the file, the line and the problem.
pub fn load(path: &Path) -> Result<Vec<Problem>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --data {}", path.display()))?;
    let mut problems = Vec::new();
    let mut ids = HashSet::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), number + 1);
        let problem = parse(line).with_context(at)?;
        if !ids.insert(problem.id.clone()) {
            bail!("{}: id {:?} appears twice", at(), problem.id);
        }
        if problems.len() == MAX_PROBLEMS {
            bail!("{}: more than {MAX_PROBLEMS} problems", path.display());
        }
        problems.push(problem);
    }
    if problems.is_empty() {
        bail!("{}: no problems", path.display());
    }
    Ok(problems)
}

fn parse(line: &str) -> Result<Problem> {
    let line: Line = serde_json::from_str(line).context("not a problem object")?;
    let id = scalar(&line.id).context("`id` must be a string or a number")?;
    let answer = scalar(&line.answer).context("`answer` must be a string or a number")?;
    let messages = match (line.prompt, line.messages) {
        (Some(prompt), None) => serde_json::json!([{"role": "user", "content": prompt}]),
        (None, Some(messages @ Value::Array(_))) => messages,
        (None, Some(_)) => bail!("`messages` must be an array"),
        _ => bail!("give exactly one of `prompt` and `messages`"),
    };
    let script = match &line.language {
        Some(code) => Some(
            Script::for_language(code).with_context(|| format!("unknown `language` {code:?}"))?,
        ),
        None => WordCounts::of(&message_text(&messages)).dominant(),
    };
    Ok(Problem {
        id,
        messages,
        reference: Reference::new(&answer, &line.units),
        script,
    })
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The text of every message's string `content`, joined.
fn message_text(messages: &Value) -> String {
    let contents = messages.as_array().into_iter().flatten();
    contents
        .filter_map(|m| m["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A problem with an English prompt and `answer`, for other modules' tests.
#[cfg(test)]
pub(crate) fn tests_problem(answer: &str) -> Problem {
    let line = serde_json::json!({"id": "t", "prompt": "What is 5 + 7?", "answer": answer});
    parse(&line.to_string()).expect("test problem")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_or_name_their_problem() {
        let p = parse(r#"{"id": 3, "prompt": "Сколько будет 2+2?", "answer": 4}"#).unwrap();
        assert_eq!(p.id, "3");
        assert_eq!(p.script, Some(Script::Cyrillic));
        assert!(p.reference.matches("4.0"));
        let p = parse(r#"{"id": "a", "messages": [{"role": "user", "content": "hi"}], "answer": "B", "language": "zh"}"#)
            .unwrap();
        assert_eq!(p.script, Some(Script::Cjk));
        for (line, needle) in [
            (r#"{"id": "a", "answer": "1"}"#, "exactly one"),
            (
                r#"{"id": "a", "prompt": "x", "messages": [], "answer": "1"}"#,
                "exactly one",
            ),
            (r#"{"id": [], "prompt": "x", "answer": "1"}"#, "`id`"),
            (
                r#"{"id": "a", "prompt": "x", "answer": "1", "language": "klingon"}"#,
                "language",
            ),
            (
                r#"{"id": "a", "prompt": "x", "answer": "1", "extra": 1}"#,
                "not a problem",
            ),
        ] {
            let err = format!("{:#}", parse(line).unwrap_err());
            assert!(err.contains(needle), "{line}: {err}");
        }
    }
}
