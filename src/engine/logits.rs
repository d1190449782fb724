//! The per-sequence logits-processor hook: everything that changes a
//! sequence's next-token distribution for a reason of its own (logit bias,
//! min_tokens, thinking budgets and the loop guard) acts through one trait,
//! called in order on the raw logits before penalties and sampling.
//!
//! Processors are built once per sequence from its parameters, and only
//! the ones a request needs exist, so a plain request pays nothing.

use super::grammar::GrammarProcessor;
use super::sequence::GenerationSetup;
use super::types::SamplingParams;
use crate::reasoning::ReasoningPhase;
use crate::types::TokenId;

/// What a processor may look at besides the logits.
pub struct LogitsContext {
    /// Tokens generated so far.
    pub num_generated: usize,
    /// Tokens that may still be generated under `max_tokens`.
    pub tokens_left: usize,
    /// Where the sequence stands relative to its reasoning block.
    pub phase: ReasoningPhase,
    /// Generated tokens counted as reasoning so far.
    pub reasoning_tokens: usize,
}

/// One step of a sequence's logits processing.
pub trait LogitsProcessor: Send {
    /// Changes `logits` before the next token is sampled.
    fn process(&mut self, ctx: &LogitsContext, logits: &mut [f32]);

    /// Sees the token that was sampled; `ctx` is the one `process` saw.
    fn observe(&mut self, _ctx: &LogitsContext, _token: TokenId) {}
}

/// `logit_bias`: fixed additions to some tokens' logits.
pub struct LogitBias(Vec<(TokenId, f32)>);

impl LogitsProcessor for LogitBias {
    fn process(&mut self, _ctx: &LogitsContext, logits: &mut [f32]) {
        for &(token, bias) in &self.0 {
            if let Some(l) = logits.get_mut(token as usize) {
                *l += bias;
            }
        }
    }
}

/// `min_tokens`: the tokens that would end the sequence are impossible
/// until it has this many.
pub struct MinTokens {
    min: usize,
    stop_ids: Vec<TokenId>,
}

impl LogitsProcessor for MinTokens {
    fn process(&mut self, ctx: &LogitsContext, logits: &mut [f32]) {
        if ctx.num_generated >= self.min {
            return;
        }
        for &t in &self.stop_ids {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// The processors `params` ask for, in the order they apply; `stop_ids`
/// are the ids that end the sequence (EOS unless ignored, and stop ids).
/// The grammar comes last: where it requires the end, the end is possible
/// whatever `min_tokens` says.
pub fn processors_for(
    params: &SamplingParams,
    stop_ids: &[TokenId],
    setup: &GenerationSetup,
) -> Vec<Box<dyn LogitsProcessor>> {
    let mut out: Vec<Box<dyn LogitsProcessor>> = Vec::new();
    if !params.logit_bias.is_empty() {
        out.push(Box::new(LogitBias(params.logit_bias.clone())));
    }
    if params.min_tokens > 0 && !stop_ids.is_empty() {
        out.push(Box::new(MinTokens {
            min: params.min_tokens,
            stop_ids: stop_ids.to_vec(),
        }));
    }
    if let Some(grammar) = &params.grammar {
        out.push(Box::new(GrammarProcessor::new(
            grammar,
            &params.reasoning,
            setup.reasoning.clone(),
        )));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(num_generated: usize) -> LogitsContext {
        LogitsContext {
            num_generated,
            tokens_left: 10,
            phase: ReasoningPhase::Before,
            reasoning_tokens: 0,
        }
    }

    #[test]
    fn only_requested_processors_exist() {
        assert!(processors_for(
            &SamplingParams::default(),
            &[2],
            &GenerationSetup::default()
        )
        .is_empty());
        let params = SamplingParams {
            logit_bias: vec![(1, 1.0)],
            min_tokens: 3,
            ..Default::default()
        };
        assert_eq!(
            processors_for(&params, &[2], &GenerationSetup::default()).len(),
            2
        );
    }

    #[test]
    fn logit_bias_adds() {
        let mut logits = [0.0, 1.0, 2.0];
        LogitBias(vec![(0, 5.0), (9, 1.0)]).process(&ctx(0), &mut logits);
        assert_eq!(logits, [5.0, 1.0, 2.0]);
    }

    #[test]
    fn min_tokens_masks_stop_ids_until_reached() {
        let mut p = MinTokens {
            min: 2,
            stop_ids: vec![1],
        };
        let mut logits = [0.0, 1.0];
        p.process(&ctx(1), &mut logits);
        assert_eq!(logits[1], f32::NEG_INFINITY);
        let mut logits = [0.0, 1.0];
        p.process(&ctx(2), &mut logits);
        assert_eq!(logits[1], 1.0);
    }
}
