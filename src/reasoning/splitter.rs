//! The streaming state machine behind [`ReasoningSplitter`].

use super::{ReasoningParser, THINK_END, THINK_START};

/// Longest text that can be the unfinished start of a tag: one byte short of
/// the longer tag, since a complete tag is recognised immediately.
const MAX_PARTIAL_TAG: usize = THINK_END.len() - 1;

/// Text routed by one [`ReasoningSplitter::push`] or
/// [`ReasoningSplitter::finish`] call. Either field may be empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Text that belongs to `reasoning_content`.
    pub reasoning: String,
    /// Text that belongs to `content`.
    pub content: String,
}

impl Split {
    /// True when the call produced no text for either field, so the caller
    /// can skip sending an empty delta.
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Parser `none`: text is forwarded untouched.
    Passthrough,
    /// No reasoning block has been opened yet; text is content unless a
    /// `<think>` turns up.
    Before {
        /// Leading whitespace not yet emitted, because it is dropped if
        /// `<think>` follows it.
        held_ws: String,
        /// Whether any content has been emitted in this state.
        emitted: bool,
    },
    /// Inside `<think>` … `</think>`.
    Reasoning,
    /// After the first `</think>`; everything is content from now on.
    After {
        /// Still dropping the whitespace that R1 emits after `</think>`.
        strip_ws: bool,
    },
}

/// Splits streamed text deltas into reasoning and content.
///
/// Feed every detokenized delta to [`push`](Self::push) and call
/// [`finish`](Self::finish) once at the end of the sequence to flush text
/// held back because it could have been the start of a tag.
#[derive(Clone, Debug)]
pub struct ReasoningSplitter {
    state: State,
    /// Unclassified tail of the stream: at most an unfinished tag prefix
    /// between calls.
    pending: String,
    saw_end: bool,
}

impl ReasoningSplitter {
    /// Creates a splitter for one output sequence.
    ///
    /// `starts_in_reasoning` says that the prompt already opened a `<think>`
    /// block (see [`prompt_opens_reasoning`]), so the output begins inside
    /// the reasoning. It is ignored for [`ReasoningParser::None`].
    pub fn new(parser: ReasoningParser, starts_in_reasoning: bool) -> Self {
        let state = match parser {
            ReasoningParser::None => State::Passthrough,
            ReasoningParser::DeepSeekR1 if starts_in_reasoning => State::Reasoning,
            ReasoningParser::DeepSeekR1 => State::Before {
                held_ws: String::new(),
                emitted: false,
            },
        };
        Self {
            state,
            pending: String::new(),
            saw_end: false,
        }
    }

    /// Routes one text delta. Text that could be the beginning of a tag is
    /// held back until the next call decides whether it is one.
    pub fn push(&mut self, delta: &str) -> Split {
        let mut out = Split::default();
        if self.state == State::Passthrough {
            out.content.push_str(delta);
            return out;
        }
        self.pending.push_str(delta);
        self.drain(&mut out, false);
        out
    }

    /// Flushes held-back text at the end of the sequence. An unfinished tag
    /// prefix (e.g. the output stopped at `</thi`) is emitted as ordinary
    /// text, since it never became a tag.
    pub fn finish(&mut self) -> Split {
        let mut out = Split::default();
        if self.state == State::Passthrough {
            return out;
        }
        self.drain(&mut out, true);
        // An output made only of whitespace is still the model's answer.
        if let State::Before { held_ws, .. } = &mut self.state {
            out.content.push_str(held_ws);
            held_ws.clear();
        }
        out
    }

    /// True while the splitter is inside the reasoning block (token
    /// counting on top of it: [`ReasoningTracker`](super::ReasoningTracker)).
    pub fn in_reasoning(&self) -> bool {
        self.state == State::Reasoning
    }

    /// True once a `</think>` has been consumed.
    pub fn saw_reasoning_end(&self) -> bool {
        self.saw_end
    }

    /// Classifies `pending` up to the point where it may still hold a tag
    /// prefix, or entirely when `at_end`.
    fn drain(&mut self, out: &mut Split, at_end: bool) {
        while let Some((index, tag)) = find_tag(&self.pending) {
            let text: String = self.pending.drain(..index).collect();
            self.emit(out, &text);
            self.pending.drain(..tag.len());
            self.enter_tag(tag);
        }
        let keep = if at_end {
            0
        } else {
            partial_tag_len(&self.pending)
        };
        let text: String = self.pending.drain(..self.pending.len() - keep).collect();
        self.emit(out, &text);
    }

    fn enter_tag(&mut self, tag: &str) {
        let closing = tag == THINK_END;
        match self.state {
            State::Before { .. } if closing => self.close_reasoning(),
            State::Before { .. } => self.state = State::Reasoning,
            State::Reasoning if closing => self.close_reasoning(),
            // A repeated `<think>` inside reasoning, or any tag after the
            // first close, is dropped: tags never reach the client and only
            // the first close ends the reasoning.
            State::Reasoning | State::After { .. } | State::Passthrough => {}
        }
    }

    fn close_reasoning(&mut self) {
        self.saw_end = true;
        self.state = State::After { strip_ws: true };
    }

    fn emit(&mut self, out: &mut Split, text: &str) {
        if text.is_empty() {
            return;
        }
        match &mut self.state {
            State::Passthrough => out.content.push_str(text),
            State::Before { held_ws, emitted } => {
                if *emitted {
                    out.content.push_str(text);
                } else if text.chars().all(char::is_whitespace) {
                    held_ws.push_str(text);
                } else {
                    out.content.push_str(held_ws);
                    out.content.push_str(text);
                    held_ws.clear();
                    *emitted = true;
                }
            }
            State::Reasoning => out.reasoning.push_str(text),
            State::After { strip_ws } => {
                let text = if *strip_ws { text.trim_start() } else { text };
                if !text.is_empty() {
                    *strip_ws = false;
                    out.content.push_str(text);
                }
            }
        }
    }
}

/// Earliest complete tag in `text`, as (byte index, tag).
fn find_tag(text: &str) -> Option<(usize, &'static str)> {
    let start = text.find(THINK_START).map(|i| (i, THINK_START));
    let end = text.find(THINK_END).map(|i| (i, THINK_END));
    match (start, end) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of a tag.
fn partial_tag_len(text: &str) -> usize {
    let from = text.len().saturating_sub(MAX_PARTIAL_TAG);
    (from..text.len())
        .filter(|&i| text.as_bytes()[i] == b'<')
        .map(|i| &text[i..])
        .find(|tail| THINK_START.starts_with(tail) || THINK_END.starts_with(tail))
        .map_or(0, str::len)
}

/// Whether a rendered prompt leaves the model inside a reasoning block: the
/// last `<think>` comes after the last `</think>` (R1 chat templates end the
/// generation prompt with `<think>\n`).
pub fn prompt_opens_reasoning(prompt: &str) -> bool {
    match (prompt.rfind(THINK_START), prompt.rfind(THINK_END)) {
        (Some(open), Some(close)) => open > close,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs `chunks` through a fresh splitter and returns the concatenated
    /// (reasoning, content).
    fn run_parser(parser: ReasoningParser, starts: bool, chunks: &[&str]) -> (String, String) {
        let mut splitter = ReasoningSplitter::new(parser, starts);
        let mut reasoning = String::new();
        let mut content = String::new();
        for chunk in chunks {
            let split = splitter.push(chunk);
            reasoning.push_str(&split.reasoning);
            content.push_str(&split.content);
        }
        let split = splitter.finish();
        reasoning.push_str(&split.reasoning);
        content.push_str(&split.content);
        (reasoning, content)
    }

    fn run(starts: bool, chunks: &[&str]) -> (String, String) {
        run_parser(ReasoningParser::DeepSeekR1, starts, chunks)
    }

    fn pair(reasoning: &str, content: &str) -> (String, String) {
        (reasoning.to_string(), content.to_string())
    }

    /// Checks every split of `text` into two and three chunks, plus one chunk
    /// per character, against the expected result.
    fn assert_all_splits(starts: bool, text: &str, expected: (String, String)) {
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &bounds {
            for &j in bounds.iter().filter(|&&j| j >= i) {
                let chunks = [&text[..i], &text[i..j], &text[j..]];
                assert_eq!(run(starts, &chunks), expected, "chunks {chunks:?}");
            }
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(starts, &chars), expected, "one char per chunk");
    }

    #[test]
    fn forced_think_start_from_prompt() {
        let text = "Let me think.\nOK.\n</think>\n\nThe answer is 4.";
        assert_all_splits(true, text, pair("Let me think.\nOK.\n", "The answer is 4."));
    }

    #[test]
    fn model_emitted_think_keeps_reasoning_verbatim() {
        let text = "<think>\nHmm.\n</think>\n\nHi!";
        assert_all_splits(false, text, pair("\nHmm.\n", "Hi!"));
    }

    #[test]
    fn whitespace_before_model_think_is_dropped() {
        assert_all_splits(false, "\n <think>r</think>c", pair("r", "c"));
    }

    #[test]
    fn repeated_think_after_forced_start_is_dropped() {
        assert_all_splits(true, "<think>\nr</think>c", pair("\nr", "c"));
    }

    #[test]
    fn text_before_model_think_is_content() {
        assert_all_splits(false, "Sure. <think>r</think>\n\nc", pair("r", "Sure. c"));
    }

    #[test]
    fn unclosed_reasoning_is_all_reasoning() {
        let text = "step 1\nstep 2 </thi";
        assert_all_splits(true, text, pair(text, ""));
        assert_all_splits(false, "<think>abc", pair("abc", ""));
    }

    #[test]
    fn empty_reasoning_block() {
        assert_all_splits(
            false,
            "<think>\n\n</think>\n\nanswer",
            pair("\n\n", "answer"),
        );
        assert_all_splits(true, "</think>\n\nanswer", pair("", "answer"));
    }

    #[test]
    fn tags_after_first_close_are_dropped_from_content() {
        let text = "r</think>\n\na </think> b <think> c";
        assert_all_splits(true, text, pair("r", "a  b  c"));
    }

    #[test]
    fn whitespace_inside_content_is_kept_after_first_text() {
        assert_all_splits(true, "r</think> \n a\n\nb\n", pair("r", "a\n\nb\n"));
    }

    #[test]
    fn stray_close_before_any_open_is_dropped() {
        assert_all_splits(false, "a</think>\n b", pair("", "ab"));
    }

    #[test]
    fn no_think_at_all_is_content() {
        assert_all_splits(
            false,
            "  plain <b>answer</b> <th",
            pair("", "  plain <b>answer</b> <th"),
        );
    }

    #[test]
    fn whitespace_only_output_is_content() {
        assert_eq!(run(false, &["\n", " "]), pair("", "\n "));
    }

    #[test]
    fn multibyte_text_next_to_tags() {
        assert_all_splits(true, "日本é</think>\n\nü<", pair("日本é", "ü<"));
    }

    #[test]
    fn parser_none_passes_everything_through() {
        let text = "<think>\nr</think>\n\nc";
        let result = run_parser(
            ReasoningParser::None,
            true,
            &["<thi", "nk>\nr</", "think>\n\nc"],
        );
        assert_eq!(result, pair("", text));
        let mut splitter = ReasoningSplitter::new(ReasoningParser::None, true);
        assert!(!splitter.in_reasoning());
        assert!(splitter.push("</think>").content == "</think>");
        assert!(!splitter.saw_reasoning_end());
        assert!(splitter.finish().is_empty());
    }

    #[test]
    fn split_close_tag_is_held_back() {
        let mut splitter = ReasoningSplitter::new(ReasoningParser::DeepSeekR1, true);
        let split = splitter.push("abc</thi");
        assert_eq!(
            split,
            Split {
                reasoning: "abc".into(),
                content: String::new()
            }
        );
        assert!(splitter.in_reasoning());
        let split = splitter.push("nk>\n\nx");
        assert_eq!(
            split,
            Split {
                reasoning: String::new(),
                content: "x".into()
            }
        );
        assert!(!splitter.in_reasoning());
        assert!(splitter.saw_reasoning_end());
    }

    #[test]
    fn held_prefix_that_is_not_a_tag_is_released() {
        let mut splitter = ReasoningSplitter::new(ReasoningParser::DeepSeekR1, true);
        assert_eq!(splitter.push("a <th").reasoning, "a ");
        assert_eq!(splitter.push("ing").reasoning, "<thing");
    }

    #[test]
    fn prompt_opens_reasoning_cases() {
        assert!(prompt_opens_reasoning(
            "<｜User｜>hi<｜Assistant｜><think>\n"
        ));
        assert!(!prompt_opens_reasoning("<｜User｜>hi<｜Assistant｜>"));
        assert!(!prompt_opens_reasoning("<think>a</think>b"));
        assert!(prompt_opens_reasoning("<think>a</think>b<think>\n"));
        assert!(!prompt_opens_reasoning(""));
        assert!(!prompt_opens_reasoning("</think>"));
    }

    fn fragment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "<think>", "</think>", "<", "</", "<thi", "</thin", "think>", ">", "\n", " ", "a", "é",
            "日",
        ])
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_result(
            starts in any::<bool>(),
            parts in prop::collection::vec(fragment(), 0..24),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let text: String = parts.concat();
            let whole = run(starts, &[text.as_str()]);
            let bounds: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            let mut points: Vec<usize> = cuts.iter().map(|c| bounds[c.index(bounds.len())]).collect();
            points.push(0);
            points.push(text.len());
            points.sort_unstable();
            let chunks: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            let chunked = run(starts, &chunks);
            prop_assert_eq!(chunked, whole);
        }

        #[test]
        fn tags_never_reach_either_field(
            starts in any::<bool>(),
            parts in prop::collection::vec(
                prop::sample::select(vec!["<think>", "</think>", "\n", " ", "a", "é"]),
                0..24,
            ),
        ) {
            let text: String = parts.concat();
            let (reasoning, content) = run(starts, &[text.as_str()]);
            prop_assert!(!reasoning.contains(['<', '>']) && !content.contains(['<', '>']));
            // Only tags and whitespace are ever dropped; reasoning and content
            // are compared as multisets because text before a model-emitted
            // `<think>` moves to content.
            let visible = |s: &str| {
                let mut chars: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
                chars.sort_unstable();
                chars
            };
            let stripped = text.replace(THINK_END, "").replace(THINK_START, "");
            prop_assert_eq!(visible(&stripped), visible(&(reasoning + &content)));
        }
    }
}
