//! Splitting a streamed completion into reasoning and `content`, and
//! watching reasoning for loops ([`LoopGuard`]).
//!
//! DeepSeek-R1 and its distills wrap their chain of thought in
//! `<think>` … `</think>`. The server streams text deltas from the
//! detokenizer through a [`ReasoningSplitter`], which routes each piece of
//! text to the reasoning or the content field and never lets tag text reach
//! the client, even when a tag arrives split over several deltas.
//!
//! # Whitespace policy
//!
//! * Reasoning text is passed through verbatim, like vLLM's `deepseek_r1`
//!   parser does: a `\n` right after a model-emitted `<think>` and the `\n`
//!   before `</think>` stay in `reasoning_content`. Trimming them would force
//!   the splitter to hold back every newline in the reasoning stream, delaying
//!   output for a cosmetic gain, and would make our reasoning text differ
//!   from vLLM's for the same generation.
//! * Whitespace right after `</think>` is dropped from the start of the
//!   content, because R1 always emits `</think>\n\n` and clients render the
//!   blank lines literally.
//! * Whitespace that precedes a model-emitted `<think>` at the very start of
//!   the output is dropped too, so that it does not leak into the content as
//!   a stray prefix of the final answer.

mod loop_guard;
mod splitter;
mod tracker;

pub use loop_guard::{
    InvalidLoopGuardConfig, Loop, LoopGuard, LoopGuardConfig, MAX_LOOP_GUARD_WINDOW,
};
pub use splitter::{prompt_opens_reasoning, ReasoningSplitter, Split};
pub use tracker::{ReasoningEnd, ReasoningPhase, ReasoningTracker};

use std::fmt;
use std::str::FromStr;

/// Opening tag of an R1 reasoning block.
pub const THINK_START: &str = "<think>";
/// Closing tag of an R1 reasoning block.
pub const THINK_END: &str = "</think>";

/// Which reasoning format the served model uses.
///
/// `auto` is deliberately not a variant: it is resolved from the model's
/// chat template before a parser is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReasoningParser {
    /// `<think>` … `</think>` blocks as emitted by DeepSeek-R1 and its
    /// distills.
    DeepSeekR1,
    /// No reasoning extraction: all output is content, tags included.
    #[default]
    None,
}

impl ReasoningParser {
    /// The name accepted by [`FromStr`] and shown in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningParser::DeepSeekR1 => "deepseek_r1",
            ReasoningParser::None => "none",
        }
    }
}

impl fmt::Display for ReasoningParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a reasoning parser name that is not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reasoning parser '{0}' (expected 'deepseek_r1' or 'none')")]
pub struct UnknownReasoningParser(pub String);

impl FromStr for ReasoningParser {
    type Err = UnknownReasoningParser;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deepseek_r1" => Ok(ReasoningParser::DeepSeekR1),
            "none" => Ok(ReasoningParser::None),
            other => Err(UnknownReasoningParser(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_names_round_trip() {
        for parser in [ReasoningParser::DeepSeekR1, ReasoningParser::None] {
            assert_eq!(parser.as_str().parse::<ReasoningParser>(), Ok(parser));
            assert_eq!(parser.to_string(), parser.as_str());
        }
    }

    #[test]
    fn unknown_parser_name_is_rejected() {
        let err = "auto".parse::<ReasoningParser>().unwrap_err();
        assert_eq!(err, UnknownReasoningParser("auto".to_string()));
        assert!("DeepSeek_R1".parse::<ReasoningParser>().is_err());
        assert!("".parse::<ReasoningParser>().is_err());
    }
}
