//! One sequence in the engine: its tokens, how many of them have KV in the
//! cache, and its generation state (logits processors, sampler,
//! detokenizer, stop matcher, reasoning state).

use super::logits::{processors_for, LogitsProcessor};
use super::reasoning_control::{ReasoningControl, ReasoningTokens};
use super::sampler::SamplerState;
use super::stop::StopChecker;
use super::types::{FinishReason, SamplingParams};
use crate::reasoning::ReasoningTracker;
use crate::tokenizer::IncrementalDecoder;
use crate::types::{RequestId, SeqId, TokenId};
use std::sync::Arc;

/// What every sequence of an engine is set up with besides its request.
#[derive(Clone, Debug, Default)]
pub struct GenerationSetup {
    /// The model's end-of-sequence ids.
    pub eos: Vec<TokenId>,
    /// Reasoning control's token ids; without them reasoning is tracked
    /// but never controlled.
    pub reasoning: Option<Arc<ReasoningTokens>>,
}

/// A sequence's place in the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    /// Queued (new or preempted).
    Waiting,
    /// Holding KV blocks and scheduled every step.
    Running,
    /// Done; about to be removed.
    Finished(FinishReason),
}

/// A sample of a request.
pub struct Sequence {
    /// Engine-wide id.
    pub id: SeqId,
    /// Owning request.
    pub request: RequestId,
    /// Sample index within the request.
    pub index: usize,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<TokenId>,
    /// Length of the prompt part of `tokens`.
    pub prompt_len: usize,
    /// Tokens whose KV is in the cache; catches up with `tokens.len()`.
    pub num_computed: usize,
    /// Prompt tokens served by the prefix cache on first admission.
    pub cached_prompt: Option<usize>,
    /// Scheduling state.
    pub status: SeqStatus,
    /// Another sample whose prompt this one waits for, so it can reuse the
    /// prompt's blocks through the prefix cache instead of recomputing them.
    pub wait_for: Option<SeqId>,
    /// Sampling parameters (shared by the request's samples).
    pub params: Arc<SamplingParams>,
    /// Random stream and penalty counts.
    pub sampler: SamplerState,
    /// Text streaming state.
    pub detok: IncrementalDecoder,
    /// Stop-string matcher.
    pub stop: StopChecker,
    /// Ids that end the sequence: stop ids, and EOS unless ignored.
    pub stop_ids: Vec<TokenId>,
    /// The request's logits processors, in order.
    pub processors: Vec<Box<dyn LogitsProcessor>>,
    /// Reasoning control (budget, reserve, loop guard), when the output is
    /// parsed for reasoning.
    pub control: Option<ReasoningControl>,
    /// Reasoning phase, count and text split.
    pub reasoning: ReasoningTracker,
}

impl Sequence {
    /// A waiting sequence for `prompt`.
    pub fn new(
        id: SeqId,
        request: RequestId,
        index: usize,
        prompt: Vec<TokenId>,
        params: Arc<SamplingParams>,
        setup: &GenerationSetup,
    ) -> Self {
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend_from_slice(&setup.eos);
        }
        let r = &params.reasoning;
        Self {
            id,
            request,
            index,
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            cached_prompt: None,
            status: SeqStatus::Waiting,
            wait_for: None,
            sampler: SamplerState::new(params.seed, index),
            detok: IncrementalDecoder::new(params.skip_special_tokens),
            stop: StopChecker::new(params.stop.clone())
                .keeping_match(params.include_stop_str_in_output),
            processors: processors_for(&params, &stop_ids, setup),
            control: setup
                .reasoning
                .as_ref()
                .and_then(|tokens| ReasoningControl::new(tokens, r, params.grammar.is_some())),
            reasoning: ReasoningTracker::new(r.parser, r.starts_inside),
            stop_ids,
            params,
        }
    }

    /// Tokens generated so far.
    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to be run through the model.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Runs new text through the stop matcher. Until `min_tokens` tokens
    /// exist, stop strings are not looked for (as in vLLM): the text passes
    /// straight through, and matching starts afresh from the next token.
    pub fn match_stops(&mut self, text: &str) -> (String, Option<String>) {
        if self.num_generated() < self.params.min_tokens {
            return (text.to_string(), None);
        }
        self.stop.push(text)
    }

    /// Whether the prompt is still being computed.
    pub fn in_prefill(&self) -> bool {
        self.num_computed < self.prompt_len
    }

    /// Whether this sequence collects its request's prompt logprobs: the
    /// first sample of a request that asked, until its first token (see
    /// [`super::prompt_logprobs`]).
    pub fn wants_prompt_logits(&self) -> bool {
        self.index == 0 && self.params.prompt_logprobs.is_some() && self.num_generated() == 0
    }
}
