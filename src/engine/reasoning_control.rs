//! The engine's control over a sequence's reasoning: thinking budgets, the
//! answer reserve and the loop guard, as a logits processor.
//!
//! When a sequence must stop reasoning, the engine feeds it a close
//! sequence (a short wrap-up line, `</think>`, a blank line), tokenized once
//! at start, one forced token per step: every other token is masked, so the
//! model's KV cache sees exactly the text the client gets. Forced tokens
//! count as reasoning. After a forced close the opening tag is masked, so
//! the model cannot escape the budget by reopening its reasoning.

use super::logits::{LogitsContext, LogitsProcessor};
use super::reopen_mask::ReopenMask;
use super::types::{FinishReason, ReasoningParams};
use crate::reasoning::{
    LoopGuard, LoopGuardConfig, ReasoningEnd, ReasoningParser, ReasoningPhase, THINK_END,
    THINK_START,
};
use crate::tokenizer::Tokenizer;
use crate::types::TokenId;
use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest close sequence accepted: it is fed one token per step, so a long
/// one would spend the answer's room on boilerplate.
pub const MAX_CLOSE_TOKENS: usize = 32;

/// Default close text: a wrap-up line, the closing tag and a blank line, as
/// R1 itself ends its reasoning.
pub const DEFAULT_CLOSE_TEXT: &str =
    "\n\nI have thought about this enough; time to answer.\n</think>\n\n";

/// What the loop guard does when reasoning repeats itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoopGuardMode {
    /// No detection.
    Off,
    /// Close the reasoning as a budget would, so the model answers.
    #[default]
    Close,
    /// End the choice (`finish_reason` `stop`).
    Stop,
}

impl LoopGuardMode {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LoopGuardMode::Off => "off",
            LoopGuardMode::Close => "close",
            LoopGuardMode::Stop => "stop",
        }
    }
}

impl fmt::Display for LoopGuardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LoopGuardMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(LoopGuardMode::Off),
            "close" => Ok(LoopGuardMode::Close),
            "stop" => Ok(LoopGuardMode::Stop),
            other => Err(format!(
                "unknown loop guard mode '{other}' (expected off, close or stop)"
            )),
        }
    }
}

/// Server-wide reasoning control settings.
#[derive(Clone, Debug)]
pub struct ReasoningConfig {
    /// Text fed to close reasoning (default [`DEFAULT_CLOSE_TEXT`]); must
    /// contain `</think>` and tokenize to at most [`MAX_CLOSE_TOKENS`].
    pub close_text: String,
    /// Loop guard action (default close).
    pub loop_guard: LoopGuardMode,
    /// Loop detector settings (defaults: see [`LoopGuardConfig`]).
    pub loop_detector: LoopGuardConfig,
}

impl Default for ReasoningConfig {
    fn default() -> Self {
        Self {
            close_text: DEFAULT_CLOSE_TEXT.to_string(),
            loop_guard: LoopGuardMode::default(),
            loop_detector: LoopGuardConfig::default(),
        }
    }
}

/// The settings with their token ids, resolved once at engine start.
#[derive(Clone, Debug)]
pub struct ReasoningTokens {
    close: Vec<TokenId>,
    /// The close text up to the end of `</think>`, for answers a grammar
    /// constrains from their first token.
    close_at_tag: Vec<TokenId>,
    reopen: ReopenMask,
    /// Tokens that complete `</think>` and run past it.
    close_overrun: ReopenMask,
    /// `<think>` when the vocabulary has it as one token.
    think_token: Option<TokenId>,
    mode: LoopGuardMode,
    detector: LoopGuardConfig,
}

impl ReasoningTokens {
    /// Tokenizes the close text and the opening tag with `tokenizer`.
    pub fn new(tokenizer: &Tokenizer, config: &ReasoningConfig) -> Result<Self> {
        if !config.close_text.contains(THINK_END) {
            bail!(
                "the thinking close text {:?} does not contain {THINK_END}, so it would not end the reasoning",
                config.close_text
            );
        }
        let close = tokenizer.encode(&config.close_text, false)?;
        let tag_end = config.close_text.find(THINK_END).unwrap_or_default() + THINK_END.len();
        let close_at_tag = tokenizer.encode(&config.close_text[..tag_end], false)?;
        if close.len() > MAX_CLOSE_TOKENS {
            bail!(
                "the thinking close text is {} tokens long; at most {MAX_CLOSE_TOKENS} are allowed",
                close.len()
            );
        }
        if let Some(eos) = close.iter().find(|t| tokenizer.eos_ids().contains(t)) {
            bail!("the thinking close text contains the end-of-sequence token {eos}");
        }
        config
            .loop_detector
            .validate()
            .map_err(|e| anyhow::anyhow!("loop guard settings: {e}"))?;
        let pieces: Arc<[Box<str>]> = (0..tokenizer.vocab_size() as TokenId)
            .map(|id| tokenizer.id_to_token(id).unwrap_or_default().into())
            .collect();
        Ok(Self {
            close,
            close_at_tag,
            reopen: ReopenMask::new(THINK_START, Arc::clone(&pieces)),
            close_overrun: ReopenMask::overrunning(THINK_END, pieces),
            think_token: tokenizer.token_to_id(THINK_START),
            mode: config.loop_guard,
            detector: config.loop_detector,
        })
    }

    /// Tokens of the close sequence.
    pub fn close_len(&self) -> usize {
        self.close.len()
    }

    /// Tokens that complete `</think>` with text after it.
    pub fn close_overrun(&self) -> &ReopenMask {
        &self.close_overrun
    }

    /// `<think>` as one token, where the vocabulary has it.
    pub fn think_token(&self) -> Option<TokenId> {
        self.think_token
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The model reasons as it likes.
    Free,
    /// The next token is `close[i]`.
    Forcing(usize),
    /// Reasoning was closed by the engine (or must never start): the
    /// opening tag is masked.
    Closed,
}

/// One sequence's reasoning control.
pub struct ReasoningControl {
    tokens: Arc<ReasoningTokens>,
    /// Close at the tag (the answer is constrained from its first token).
    close_at_tag: bool,
    budget: Option<usize>,
    reserve: Option<usize>,
    guard: Option<LoopGuard>,
    state: State,
    /// End of the text generated since the engine took over, for the
    /// reopening mask.
    tail: String,
    /// The guard fired in `close` mode: force the close at the next step.
    loop_seen: bool,
    /// The guard fired in `stop` mode: the choice ends here.
    stop: bool,
    /// Why the engine closed the reasoning, once it has.
    cause: Option<ReasoningEnd>,
}

impl ReasoningControl {
    /// The control of a sequence with `params`, or `None` when its output
    /// is not parsed for reasoning. `constrained`: a grammar constrains the
    /// answer, so a forced close ends with the tag.
    pub fn new(
        tokens: &Arc<ReasoningTokens>,
        params: &ReasoningParams,
        constrained: bool,
    ) -> Option<Self> {
        if params.parser == ReasoningParser::None {
            return None;
        }
        // The settings were checked when `tokens` was built.
        let guard = (tokens.mode != LoopGuardMode::Off)
            .then(|| LoopGuard::new(tokens.detector).ok())
            .flatten();
        Some(Self {
            tokens: Arc::clone(tokens),
            close_at_tag: constrained,
            budget: params.budget,
            reserve: params.answer_reserve,
            guard,
            state: State::Free,
            tail: String::new(),
            loop_seen: false,
            stop: false,
            cause: None,
        })
    }

    fn close(&self) -> &[TokenId] {
        if self.close_at_tag {
            &self.tokens.close_at_tag
        } else {
            &self.tokens.close
        }
    }

    /// Whether the token sampled after the last [`process`] was forced.
    ///
    /// [`process`]: LogitsProcessor::process
    pub fn forcing(&self) -> bool {
        matches!(self.state, State::Forcing(_))
    }

    /// Called when the model sampled its end-of-sequence token: when
    /// the request bounds its reasoning (a budget or a reserve promises an
    /// answer) and the model ends inside its reasoning with room left, the
    /// close sequence replaces the end, and its first token is returned.
    pub fn close_instead_of_stop(&mut self, ctx: &LogitsContext) -> Option<TokenId> {
        let promised = self.budget.is_some() || self.reserve.is_some();
        let room = ctx.tokens_left > self.close().len();
        if self.state != State::Free || ctx.phase != ReasoningPhase::Inside || !promised || !room {
            return None;
        }
        self.state = State::Forcing(0);
        self.cause = Some(ReasoningEnd::Closed);
        Some(self.close()[0])
    }

    /// Whether the loop guard ended the choice.
    pub fn should_stop(&self) -> bool {
        self.stop
    }

    /// The end state of a choice that finished for `finish` in `phase`.
    pub fn end_state(&self, phase: ReasoningPhase, finish: FinishReason) -> ReasoningEnd {
        if self.stop {
            return ReasoningEnd::Loop;
        }
        match phase {
            ReasoningPhase::Inside if finish == FinishReason::Length => ReasoningEnd::Length,
            ReasoningPhase::Inside => ReasoningEnd::Closed,
            ReasoningPhase::After => self.cause.unwrap_or(ReasoningEnd::Closed),
            ReasoningPhase::Before => ReasoningEnd::None,
        }
    }

    /// Decides, before a token is sampled, whether the engine takes over.
    fn update(&mut self, ctx: &LogitsContext) {
        if self.state != State::Free {
            return;
        }
        // Started when exactly the close fits before the reserve, so the
        // reasoning, close included, ends `reserve` tokens before the limit.
        let reserve_hit = self
            .reserve
            .is_some_and(|r| ctx.tokens_left <= r + self.close().len());
        match ctx.phase {
            ReasoningPhase::Inside => {
                let budget_hit = self.budget.is_some_and(|b| ctx.reasoning_tokens >= b);
                if self.loop_seen {
                    self.state = State::Forcing(0);
                    self.cause = Some(ReasoningEnd::Loop);
                } else if budget_hit || reserve_hit {
                    self.state = State::Forcing(0);
                    self.cause = Some(ReasoningEnd::Budget);
                }
            }
            // No room (or no budget) for a block that has not started:
            // it never does.
            ReasoningPhase::Before if self.budget == Some(0) || reserve_hit => {
                self.state = State::Closed;
            }
            ReasoningPhase::Before | ReasoningPhase::After => {}
        }
    }

    /// Whether the next token's logits (context `ctx`) go to the sampler
    /// untouched: the reasoning runs free, as it does until a budget, a
    /// reserve or the loop guard takes over. Decides what
    /// [`LogitsProcessor::process`] then does with the same `ctx`.
    pub fn leaves_logits(&mut self, ctx: &LogitsContext) -> bool {
        self.update(ctx);
        self.state == State::Free
    }
}

impl LogitsProcessor for ReasoningControl {
    fn process(&mut self, ctx: &LogitsContext, logits: &mut [f32]) {
        self.update(ctx);
        match self.state {
            State::Free => {}
            State::Forcing(i) => {
                let keep = self.close()[i] as usize;
                logits.fill(f32::NEG_INFINITY);
                if let Some(l) = logits.get_mut(keep) {
                    *l = 0.0;
                }
            }
            State::Closed => self.tokens.reopen.apply(&self.tail, logits),
        }
    }

    fn observe(&mut self, ctx: &LogitsContext, token: TokenId) {
        // Only text from the close on can grow into a reopening tag.
        if self.state != State::Free {
            self.tokens.reopen.advance(&mut self.tail, token);
        }
        match self.state {
            State::Forcing(i) if i + 1 == self.close().len() => self.state = State::Closed,
            State::Forcing(i) => self.state = State::Forcing(i + 1),
            State::Free if ctx.phase == ReasoningPhase::Inside => {
                let Some(guard) = &mut self.guard else {
                    return;
                };
                if guard.push(token).is_some() {
                    match self.tokens.mode {
                        LoopGuardMode::Stop => self.stop = true,
                        LoopGuardMode::Close | LoopGuardMode::Off => self.loop_seen = true,
                    }
                }
            }
            State::Free | State::Closed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOSE: [TokenId; 3] = [50, 51, 52];

    /// Token 10 is `<think>`; 7, 8 and 9 spell it as `<th`, `ink`, `>`.
    fn tokens(mode: LoopGuardMode) -> Arc<ReasoningTokens> {
        let pieces: Arc<[Box<str>]> = (0..64)
            .map(|i| match i {
                7 => "<th".into(),
                8 => "ink".into(),
                9 => ">".into(),
                10 => "<think>".into(),
                _ => format!("x{i}").into(),
            })
            .collect();
        Arc::new(ReasoningTokens {
            close: CLOSE.to_vec(),
            close_at_tag: CLOSE[..2].to_vec(),
            reopen: ReopenMask::new(THINK_START, Arc::clone(&pieces)),
            close_overrun: ReopenMask::overrunning(THINK_END, pieces),
            think_token: Some(10),
            mode,
            detector: LoopGuardConfig::default(),
        })
    }

    fn control(budget: Option<usize>, reserve: Option<usize>) -> ReasoningControl {
        let params = ReasoningParams {
            parser: ReasoningParser::DeepSeekR1,
            starts_inside: true,
            budget,
            answer_reserve: reserve,
        };
        ReasoningControl::new(&tokens(LoopGuardMode::Off), &params, false).unwrap()
    }

    /// Runs one step with flat logits over 64 ids and returns the argmax
    /// after processing and whether the control forced it.
    fn step(
        c: &mut ReasoningControl,
        num_generated: usize,
        phase: ReasoningPhase,
        reasoning_tokens: usize,
        tokens_left: usize,
    ) -> (TokenId, bool) {
        let ctx = LogitsContext {
            num_generated,
            tokens_left,
            phase,
            reasoning_tokens,
        };
        let mut logits = vec![0.0f32; 64];
        logits[1] = 1.0;
        c.process(&ctx, &mut logits);
        let token = (0..64).fold(0, |b, i| if logits[i] > logits[b] { i } else { b }) as TokenId;
        let forced = c.forcing();
        c.observe(&ctx, token);
        (token, forced)
    }

    #[test]
    fn budget_forces_the_close_then_masks_reopening() {
        let mut c = control(Some(2), None);
        let inside = ReasoningPhase::Inside;
        assert_eq!(step(&mut c, 0, inside, 0, 100), (1, false));
        assert_eq!(step(&mut c, 1, inside, 1, 99), (1, false));
        let forced: Vec<_> = (0..3).map(|i| step(&mut c, 1, inside, 2 + i, 98)).collect();
        assert_eq!(forced, vec![(50, true), (51, true), (52, true)]);
        let mut logits = vec![0.0f32; 64];
        logits[10] = 5.0;
        c.process(
            &LogitsContext {
                num_generated: 5,
                tokens_left: 95,
                phase: ReasoningPhase::After,
                reasoning_tokens: 5,
            },
            &mut logits,
        );
        assert_eq!(logits[10], f32::NEG_INFINITY);
        assert_eq!(
            c.end_state(ReasoningPhase::After, FinishReason::Stop),
            ReasoningEnd::Budget
        );
    }

    /// `leaves_logits` says, before each step, whether `process` will
    /// leave the row as it is: the engine then lets the device reduce it.
    #[test]
    fn leaves_logits_foretells_process() {
        let mut c = control(Some(2), None);
        let mut seen = Vec::new();
        for i in 0..7 {
            let phase = if i < 5 {
                ReasoningPhase::Inside
            } else {
                ReasoningPhase::After
            };
            let ctx = LogitsContext {
                num_generated: i,
                tokens_left: 100 - i,
                phase,
                reasoning_tokens: i,
            };
            let leaves = c.leaves_logits(&ctx);
            let mut logits: Vec<f32> = (0..64).map(|t| (t % 13) as f32).collect();
            logits[10] = 20.0;
            let before = logits.clone();
            c.process(&ctx, &mut logits);
            assert_eq!(leaves, logits == before, "step {i}");
            seen.push(leaves);
            let token = crate::kernels::logits::argmax(&logits);
            c.observe(&ctx, token);
        }
        // Free for the budget's two tokens, then the forced close and the
        // masked answer.
        assert_eq!(seen, [true, true, false, false, false, false, false]);
    }

    /// A grammar constrains the answer from its first token: the close
    /// ends with the tag, and the grammar starts right after it.
    #[test]
    fn a_constrained_answer_gets_the_close_up_to_the_tag() {
        let params = ReasoningParams {
            parser: ReasoningParser::DeepSeekR1,
            starts_inside: true,
            budget: Some(1),
            answer_reserve: None,
        };
        let mut c = ReasoningControl::new(&tokens(LoopGuardMode::Off), &params, true).unwrap();
        let inside = ReasoningPhase::Inside;
        assert_eq!(step(&mut c, 0, inside, 0, 100), (1, false));
        let forced: Vec<_> = (0..3)
            .map(|i| step(&mut c, 1 + i, inside, 1 + i, 99))
            .collect();
        assert_eq!(forced, vec![(50, true), (51, true), (1, false)]);
    }

    #[test]
    fn the_reserve_starts_the_close_so_it_ends_before_the_reserve() {
        // max_tokens 40, reserve 16, close 3: forced from 19 tokens left.
        let mut c = control(None, Some(16));
        assert!(!step(&mut c, 0, ReasoningPhase::Inside, 0, 20).1);
        assert_eq!(step(&mut c, 0, ReasoningPhase::Inside, 1, 19), (50, true));
    }

    #[test]
    fn budget_zero_before_a_block_keeps_it_from_opening() {
        let params = ReasoningParams {
            parser: ReasoningParser::DeepSeekR1,
            starts_inside: false,
            budget: Some(0),
            answer_reserve: None,
        };
        // The one-token tag is always masked; the spelled-out one only at
        // its last token, right after the others.
        let mut c = ReasoningControl::new(&tokens(LoopGuardMode::Off), &params, false).unwrap();
        let ctx = LogitsContext {
            num_generated: 0,
            tokens_left: 10,
            phase: ReasoningPhase::Before,
            reasoning_tokens: 0,
        };
        let mut infinite_after = |history: &[TokenId]| {
            for &t in history {
                c.process(&ctx, &mut vec![0.0f32; 64]);
                c.observe(&ctx, t);
            }
            let mut logits = vec![0.0f32; 64];
            c.process(&ctx, &mut logits);
            (0..64)
                .filter(|&i| logits[i].is_infinite())
                .collect::<Vec<_>>()
        };
        assert_eq!(infinite_after(&[3, 7, 8]), vec![9, 10]);
        assert_eq!(infinite_after(&[8]), vec![10]);
        assert_eq!(
            c.end_state(ReasoningPhase::Before, FinishReason::Stop),
            ReasoningEnd::None
        );
    }

    #[test]
    fn an_end_inside_bounded_reasoning_becomes_the_close() {
        let ctx = |tokens_left| LogitsContext {
            num_generated: 3,
            tokens_left,
            phase: ReasoningPhase::Inside,
            reasoning_tokens: 3,
        };
        assert_eq!(control(None, None).close_instead_of_stop(&ctx(50)), None);
        assert_eq!(control(Some(9), None).close_instead_of_stop(&ctx(3)), None);
        let mut c = control(Some(9), None);
        assert_eq!(c.close_instead_of_stop(&ctx(50)), Some(50));
        assert!(c.forcing());
        c.observe(&ctx(50), 50);
        assert_eq!(step(&mut c, 0, ReasoningPhase::Inside, 4, 49), (51, true));
    }

    #[test]
    fn end_states() {
        let c = control(None, None);
        assert_eq!(
            c.end_state(ReasoningPhase::Inside, FinishReason::Length),
            ReasoningEnd::Length
        );
        assert_eq!(
            c.end_state(ReasoningPhase::After, FinishReason::Length),
            ReasoningEnd::Closed
        );
        assert_eq!(
            c.end_state(ReasoningPhase::Before, FinishReason::Stop),
            ReasoningEnd::None
        );
        let params = ReasoningParams::default();
        assert!(ReasoningControl::new(&tokens(LoopGuardMode::Close), &params, false).is_none());
    }

    #[test]
    fn the_loop_guard_closes_or_stops() {
        for mode in [LoopGuardMode::Close, LoopGuardMode::Stop] {
            let params = ReasoningParams {
                parser: ReasoningParser::DeepSeekR1,
                starts_inside: true,
                ..Default::default()
            };
            let mut c = ReasoningControl::new(&tokens(mode), &params, false).unwrap();
            let span: Vec<TokenId> = (10..50).collect();
            let mut fired_at = None;
            for (i, &t) in span.iter().cycle().take(400).enumerate() {
                let ctx = LogitsContext {
                    num_generated: i,
                    tokens_left: 1000,
                    phase: ReasoningPhase::Inside,
                    reasoning_tokens: i,
                };
                let mut logits = vec![0.0f32; 64];
                c.process(&ctx, &mut logits);
                if c.forcing() || c.should_stop() {
                    fired_at = Some(i);
                    break;
                }
                c.observe(&ctx, t);
            }
            // Three copies of the 40-token span are 120 tokens.
            assert_eq!(fired_at, Some(120), "{mode}");
            let end = c.end_state(ReasoningPhase::Inside, FinishReason::Stop);
            assert_eq!(
                end == ReasoningEnd::Loop,
                mode == LoopGuardMode::Stop,
                "{mode}"
            );
        }
    }
}
