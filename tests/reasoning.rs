//! R1-style outputs encoded with the real DeepSeek-R1 tokenizer (from the
//! R1-Distill GGUF header), fed token by token through the incremental
//! detokenizer and the reasoning splitter exactly as the server does, give
//! exactly the expected reasoning, content and reasoning-token count; and
//! the loop guard, fed real text in the R1 tokenizer's ids, stays quiet on
//! prose and reports a paragraph written three times as its third copy ends.

mod common;

use r1serve::reasoning::{
    prompt_opens_reasoning, Loop, LoopGuard, LoopGuardConfig, ReasoningParser, ReasoningTracker,
};
use r1serve::tokenizer::{ChatTemplate, IncrementalDecoder, Tokenizer};

fn r1() -> Tokenizer {
    common::gguf_tokenizer(&common::r1_header())
}

/// (reasoning, content, reasoning tokens) from streaming `ids`.
fn stream(tok: &Tokenizer, ids: &[u32], starts_in_reasoning: bool) -> (String, String, usize) {
    let mut detok = IncrementalDecoder::new(true);
    let mut split = ReasoningTracker::new(ReasoningParser::DeepSeekR1, starts_in_reasoning);
    let (mut reasoning, mut content) = (String::new(), String::new());
    for &id in ids {
        let s = split.push(1, &detok.push(tok, id).unwrap(), false);
        reasoning.push_str(&s.reasoning);
        content.push_str(&s.content);
    }
    let s = split.push(0, &detok.flush(tok).unwrap(), false);
    reasoning.push_str(&s.reasoning);
    content.push_str(&s.content);
    let s = split.finish();
    reasoning.push_str(&s.reasoning);
    content.push_str(&s.content);
    (reasoning, content, split.reasoning_tokens())
}

fn ids(tok: &Tokenizer, pieces: &[&str]) -> Vec<u32> {
    pieces
        .iter()
        .flat_map(|p| tok.encode(p, false).unwrap())
        .collect()
}

/// This GGUF carries the first R1 template, whose generation prompt ends at
/// `<｜Assistant｜>`; DeepSeek's later template appends `<think>\n`. The
/// starting state must follow whichever the prompt does.
#[test]
fn starting_state_follows_the_rendered_prompt() {
    let tok = r1();
    assert_eq!(tok.token_to_id("<think>"), Some(151648));
    assert_eq!(tok.token_to_id("</think>"), Some(151649));
    let template = ChatTemplate::from_tokenizer(&tok).unwrap();
    let prompt = template
        .render(
            &serde_json::json!([{"role": "user", "content": "2+2?"}]),
            true,
            None,
            &Default::default(),
        )
        .unwrap();
    assert!(prompt.ends_with("<｜Assistant｜>"), "{prompt:?}");
    assert!(!prompt_opens_reasoning(&prompt));
    assert!(prompt_opens_reasoning(&format!("{prompt}<think>\n")));
    assert!(!prompt_opens_reasoning(&format!(
        "{prompt}<think>\nx</think>\n\ny"
    )));
}

#[test]
fn forced_think_start() {
    let tok = r1();
    let out = ids(
        &tok,
        &[
            "The user asks 2+2. That is 4.\n",
            "</think>",
            "\n\n",
            "2 + 2 = 4.",
        ],
    );
    let (r, c, n) = stream(&tok, &out, true);
    assert_eq!(r, "The user asks 2+2. That is 4.\n");
    assert_eq!(c, "2 + 2 = 4.");
    let close = out.iter().position(|&t| t == 151649).unwrap();
    assert_eq!(n, close + 1, "reasoning tokens run through </think>");
}

#[test]
fn model_emitted_think() {
    let tok = r1();
    let out = ids(
        &tok,
        &[
            "<think>",
            "\nLet me think: 3*3=9.\n",
            "</think>",
            "\n\nNine.",
        ],
    );
    let (r, c, _) = stream(&tok, &out, false);
    assert_eq!(r, "\nLet me think: 3*3=9.\n");
    assert_eq!(c, "Nine.");
}

#[test]
fn tags_split_over_several_tokens() {
    let tok = r1();
    let out = ids(
        &tok,
        &[
            "Reasoning ",
            "here.",
            "</",
            "thi",
            "nk",
            ">",
            "\n\n",
            "Answer ",
            "there.",
        ],
    );
    assert!(
        !out.contains(&151649),
        "the closing tag must arrive in pieces"
    );
    let (r, c, _) = stream(&tok, &out, true);
    assert_eq!(r, "Reasoning here.");
    assert_eq!(c, "Answer there.");
}

#[test]
fn unclosed_reasoning_is_all_reasoning() {
    let tok = r1();
    let out = ids(
        &tok,
        &["Still thinking about 数学 and émojis 🤔 when the budget ran out"],
    );
    let (r, c, n) = stream(&tok, &out, true);
    assert_eq!(
        r,
        "Still thinking about 数学 and émojis 🤔 when the budget ran out"
    );
    assert_eq!(c, "");
    assert_eq!(n, out.len());
}

#[test]
fn empty_reasoning() {
    let tok = r1();
    let out = ids(&tok, &["\n\n", "</think>", "\n\n", "Hello!"]);
    let (r, c, _) = stream(&tok, &out, true);
    assert_eq!(r.trim(), "");
    assert_eq!(c, "Hello!");
}

#[test]
fn text_before_model_emitted_think_is_content() {
    let tok = r1();
    let out = ids(
        &tok,
        &["Sure. ", "<think>", "plan", "</think>", "\n\nDone."],
    );
    let (r, c, _) = stream(&tok, &out, false);
    assert_eq!(r, "plan");
    assert_eq!(c, "Sure. Done.");
}

/// Positions at which the default loop guard reports a loop in `ids`.
fn loop_reports(ids: &[u32]) -> Vec<(usize, Loop)> {
    let mut guard = LoopGuard::new(LoopGuardConfig::default()).expect("default config");
    ids.iter()
        .enumerate()
        .filter_map(|(i, &id)| guard.push(id).map(|found| (i, found)))
        .collect()
}

/// This repository's documentation is long technical prose that reuses its
/// terms, flag names and phrases everywhere, with tables of similar rows:
/// none of it is a loop. The same prose with one of its paragraphs written
/// three times in a row is one, reported at the third copy's last token.
#[test]
fn loop_guard_on_real_text() {
    let tok = r1();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let prose: String = ["README.md", "docs/architecture.md"]
        .iter()
        .map(|f| std::fs::read_to_string(root.join(f)).expect("docs"))
        .collect();
    let ids = tok.encode(&prose, false).unwrap();
    assert!(ids.len() > 10_000, "{} tokens", ids.len());
    assert_eq!(loop_reports(&ids), []);

    let paragraph = "Wait, let me re-check the multiplication: 17 times 23 is 17 times 20, which \
        is 340, plus 17 times 3, which is 51, so the total is 391. Yes, that is right.\n\n";
    let copy = tok.encode(paragraph, false).unwrap();
    let before = ids[..2000].to_vec();
    let looped: Vec<u32> = before
        .iter()
        .chain(copy.iter().cycle().take(3 * copy.len()))
        .copied()
        .collect();
    assert_eq!(
        loop_reports(&looped),
        [(
            looped.len() - 1,
            Loop {
                span: copy.len(),
                extent: 3 * copy.len()
            }
        )]
    );
}
