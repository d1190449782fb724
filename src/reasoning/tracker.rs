//! A sequence's reasoning state on its tokens: where it stands relative to
//! its reasoning block, how many of its tokens are reasoning, and the text
//! of each token routed to reasoning or content.
//!
//! The engine keeps one tracker per sequence and acts on its phase
//! (thinking budgets, the answer reserve, the loop guard); the HTTP layer
//! receives the already-split text and the count, so the split, the usage
//! figure and the engine's decisions come from this one definition.

use super::{ReasoningParser, ReasoningSplitter, Split};
use serde::{Deserialize, Serialize};

/// Where a sequence stands relative to its reasoning block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningPhase {
    /// No reasoning block has been opened (or the model does not reason).
    Before,
    /// Inside the block: generated text is reasoning.
    Inside,
    /// The block has been closed; generated text is the answer.
    After,
}

/// How a choice's reasoning ended, reported per choice as
/// `reasoning_end` and counted by `r1serve:reasoning_end_total{state}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEnd {
    /// The model ended its reasoning itself (its closing tag, or the end of
    /// the sequence inside the block).
    Closed,
    /// The server closed it: thinking budget or answer reserve reached.
    Budget,
    /// The loop guard closed it (or stopped the choice).
    Loop,
    /// The token limit cut the choice while it was still reasoning.
    Length,
    /// There was no reasoning.
    None,
}

impl ReasoningEnd {
    /// Every state, for metrics that list all label values.
    pub const ALL: [ReasoningEnd; 5] = [
        ReasoningEnd::Closed,
        ReasoningEnd::Budget,
        ReasoningEnd::Loop,
        ReasoningEnd::Length,
        ReasoningEnd::None,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEnd::Closed => "closed",
            ReasoningEnd::Budget => "budget",
            ReasoningEnd::Loop => "loop",
            ReasoningEnd::Length => "length",
            ReasoningEnd::None => "none",
        }
    }
}

/// Reasoning state of one generated sequence.
#[derive(Clone, Debug)]
pub struct ReasoningTracker {
    splitter: ReasoningSplitter,
    tokens: usize,
}

impl ReasoningTracker {
    /// A tracker for an output that starts inside a reasoning block when
    /// `starts_inside` (the prompt opened it); ignored for
    /// [`ReasoningParser::None`], whose outputs are all content.
    pub fn new(parser: ReasoningParser, starts_inside: bool) -> Self {
        Self {
            splitter: ReasoningSplitter::new(parser, starts_inside),
            tokens: 0,
        }
    }

    /// Routes the text of `count` new tokens and counts them. A token is
    /// reasoning when it was generated inside the block, when it completes
    /// the closing tag (as OpenAI counts the whole hidden trace), or when
    /// the server forced it to close the block.
    pub fn push(&mut self, count: usize, text: &str, forced: bool) -> Split {
        let was_inside = self.splitter.in_reasoning();
        let had_end = self.splitter.saw_reasoning_end();
        let split = self.splitter.push(text);
        if forced || was_inside || (!had_end && self.splitter.saw_reasoning_end()) {
            self.tokens += count;
        }
        split
    }

    /// Flushes text held back at the end of the sequence.
    pub fn finish(&mut self) -> Split {
        self.splitter.finish()
    }

    /// The current phase.
    pub fn phase(&self) -> ReasoningPhase {
        if self.splitter.in_reasoning() {
            ReasoningPhase::Inside
        } else if self.splitter.saw_reasoning_end() {
            ReasoningPhase::After
        } else {
            ReasoningPhase::Before
        }
    }

    /// Generated tokens counted as reasoning so far.
    pub fn reasoning_tokens(&self) -> usize {
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_rule_and_phases() {
        // One delta per token; the closing tag token counts as reasoning.
        let mut tracker = ReasoningTracker::new(ReasoningParser::DeepSeekR1, true);
        assert_eq!(tracker.phase(), ReasoningPhase::Inside);
        let mut reasoning = String::new();
        let mut content = String::new();
        for token in ["Hmm", ".", "</think>", "\n\n", "Yes"] {
            let split = tracker.push(1, token, false);
            reasoning.push_str(&split.reasoning);
            content.push_str(&split.content);
        }
        assert_eq!(tracker.reasoning_tokens(), 3);
        assert_eq!(tracker.phase(), ReasoningPhase::After);
        assert_eq!((reasoning.as_str(), content.as_str()), ("Hmm.", "Yes"));
    }

    #[test]
    fn a_block_opened_by_the_model_counts_from_inside_it() {
        let mut tracker = ReasoningTracker::new(ReasoningParser::DeepSeekR1, false);
        assert_eq!(tracker.phase(), ReasoningPhase::Before);
        tracker.push(1, "<think>", false);
        assert_eq!(tracker.phase(), ReasoningPhase::Inside);
        tracker.push(2, "ab", false);
        tracker.push(1, "</think>", false);
        assert_eq!(tracker.reasoning_tokens(), 3);
    }

    #[test]
    fn forced_tokens_count_even_after_the_tag() {
        let mut tracker = ReasoningTracker::new(ReasoningParser::DeepSeekR1, true);
        tracker.push(1, "x", false);
        tracker.push(1, "</think>", true);
        tracker.push(1, "\n\n", true);
        tracker.push(1, "A", false);
        assert_eq!(tracker.reasoning_tokens(), 3);
    }

    #[test]
    fn parser_none_never_reasons() {
        let mut tracker = ReasoningTracker::new(ReasoningParser::None, true);
        let split = tracker.push(1, "<think>x</think>", false);
        assert_eq!(split.content, "<think>x</think>");
        assert_eq!(tracker.phase(), ReasoningPhase::Before);
        assert_eq!(tracker.reasoning_tokens(), 0);
    }
}
