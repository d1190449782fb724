//! Structured outputs in the engine: the grammar constrains the answer
//! only, never the reasoning before it.
//!
//! The processor follows the closing tag itself, on token spellings, so the
//! grammar starts exactly at the answer's first token. While the model
//! reasons, tokens that would complete `</think>` and run past it (Qwen
//! spells `>\n\n` as one token) are masked: the tag then ends on a token
//! boundary and no answer text escapes the grammar. A model that may open
//! its reasoning itself (the prompt does not) gets one chance: its first
//! token may be a single-token `<think>`; anything else starts the answer.

use std::sync::Arc;

use super::logits::{LogitsContext, LogitsProcessor};
use super::reasoning_control::ReasoningTokens;
use super::types::ReasoningParams;
use crate::reasoning::ReasoningParser;
use crate::structured::{CompiledGrammar, GrammarState};
use crate::types::TokenId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// First token of an output that may open its reasoning block.
    Opening(TokenId),
    /// Inside the reasoning block: free.
    Reasoning,
    /// The answer: constrained.
    Answer,
}

/// One sequence's grammar, applied to its answer.
pub struct GrammarProcessor {
    state: GrammarState,
    tags: Option<Arc<ReasoningTokens>>,
    stage: Stage,
    /// End of the reasoning text, for spotting `</think>`.
    tail: String,
    /// The grammar engine failed once; the answer was ended.
    failed: bool,
}

impl GrammarProcessor {
    /// The processor of a sequence with `reasoning` settings; `tags` are
    /// the engine's reasoning tokens (without them the whole output is the
    /// answer).
    pub fn new(
        grammar: &CompiledGrammar,
        reasoning: &ReasoningParams,
        tags: Option<Arc<ReasoningTokens>>,
    ) -> Self {
        let stage = match (&tags, reasoning.parser) {
            (None, _) | (_, ReasoningParser::None) => Stage::Answer,
            (Some(_), _) if reasoning.starts_inside => Stage::Reasoning,
            (Some(t), _) => t.think_token().map_or(Stage::Answer, Stage::Opening),
        };
        Self {
            state: GrammarState::new(grammar),
            tags,
            stage,
            tail: String::new(),
            failed: false,
        }
    }

    fn report(&mut self, result: Result<(), String>) {
        if let Err(e) = result {
            if !self.failed {
                tracing::warn!("structured output: {e}; ending the answer");
            }
            self.failed = true;
        }
    }
}

impl LogitsProcessor for GrammarProcessor {
    fn process(&mut self, _ctx: &LogitsContext, logits: &mut [f32]) {
        match self.stage {
            Stage::Reasoning => {
                if let Some(tags) = &self.tags {
                    tags.close_overrun().apply(&self.tail, logits);
                }
            }
            Stage::Opening(think) => {
                let open = logits.get(think as usize).copied();
                let result = self.state.apply(logits);
                self.report(result);
                if let Some(l) = open {
                    logits[think as usize] = l;
                }
            }
            Stage::Answer => {
                let result = self.state.apply(logits);
                self.report(result);
            }
        }
    }

    fn observe(&mut self, _ctx: &LogitsContext, token: TokenId) {
        match self.stage {
            Stage::Opening(think) if token == think => self.stage = Stage::Reasoning,
            Stage::Opening(_) | Stage::Answer => {
                self.stage = Stage::Answer;
                let result = self.state.consume(token);
                self.report(result);
            }
            Stage::Reasoning => {
                let Some(tags) = &self.tags else {
                    return;
                };
                let close = tags.close_overrun();
                if close.completes(&self.tail, token) {
                    self.stage = Stage::Answer;
                } else {
                    close.advance(&mut self.tail, token);
                }
            }
        }
    }
}
