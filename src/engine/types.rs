//! What goes into the engine and what comes out of it: the only types the
//! HTTP layer and the engine share.

use super::stop::StopStrings;
use crate::kv_cache::storage::KvDtype;
use crate::reasoning::{ReasoningEnd, ReasoningParser};
use crate::structured::CompiledGrammar;
use crate::types::TokenId;
use std::sync::Arc;

/// Sampling and stopping parameters of one request, already validated.
#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass; 1 disables.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Drop tokens below `min_p × p(max)`; 0 disables.
    pub min_p: f32,
    /// Multiplicative penalty on tokens seen in prompt or output; 1 disables.
    pub repetition_penalty: f32,
    /// Subtracted once from tokens that appeared in the output.
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the output.
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens.
    pub logit_bias: Vec<(TokenId, f32)>,
    /// Seed of this request's private random stream.
    pub seed: Option<u64>,
    /// Number of top alternatives to report with each token's logprob;
    /// `None` reports no logprobs.
    pub logprobs: Option<usize>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// EOS and stop tokens are ignored until this many tokens exist.
    pub min_tokens: usize,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
    /// Extra token ids that end generation.
    pub stop_token_ids: Vec<TokenId>,
    /// Strings that end generation; they are not part of the output
    /// unless `include_stop_str_in_output`. Not looked for before
    /// `min_tokens` tokens exist.
    pub stop: StopStrings,
    /// Keep a matched stop string, or the text of the stop token or EOS
    /// that ended generation, at the end of the output.
    pub include_stop_str_in_output: bool,
    /// `Some(k)`: report the logprob of every prompt token after the first,
    /// with `k` alternatives per position.
    pub prompt_logprobs: Option<usize>,
    /// Parallel samples sharing the prompt.
    pub n: usize,
    /// Drop special tokens from the text.
    pub skip_special_tokens: bool,
    /// How the output's reasoning is tracked and bounded.
    pub reasoning: ReasoningParams,
    /// The grammar the answer (after any reasoning) must follow.
    pub grammar: Option<Arc<CompiledGrammar>>,
}

/// A request's reasoning settings.
#[derive(Clone, Debug, Default)]
pub struct ReasoningParams {
    /// Reasoning format of the output; `None` (the default) makes all of it
    /// content.
    pub parser: ReasoningParser,
    /// The prompt opened the reasoning block, so the output starts in it.
    pub starts_inside: bool,
    /// Most reasoning tokens before the engine closes the block; 0 means
    /// no reasoning at all.
    pub budget: Option<usize>,
    /// Tokens kept for the answer: the block is closed in time for it to
    /// end this many tokens before `max_tokens`.
    pub answer_reserve: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: None,
            max_tokens: 16,
            min_tokens: 0,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            stop: StopStrings::default(),
            include_stop_str_in_output: false,
            prompt_logprobs: None,
            n: 1,
            skip_special_tokens: true,
            reasoning: ReasoningParams::default(),
            grammar: None,
        }
    }
}

/// A request as the engine accepts it.
#[derive(Clone, Debug)]
pub struct EngineRequest {
    /// Tokenized prompt (never empty).
    pub prompt: Vec<TokenId>,
    /// Sampling parameters.
    pub params: SamplingParams,
}

/// Why a sample ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
    /// Aborted (client gone, shutdown).
    Abort,
}

impl FinishReason {
    /// The OpenAI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// Log-probability of a sampled token and its top alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The sampled token.
    pub token: TokenId,
    /// Its log-probability under the raw logits.
    pub logprob: f32,
    /// The most likely tokens with theirs, best first.
    pub top: Vec<(TokenId, f32)>,
}

/// Log-probability of a prompt token given the tokens before it.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptLogprob {
    /// The prompt's token.
    pub token: TokenId,
    /// Its log-probability under the raw logits.
    pub logprob: f32,
    /// 1 plus the number of tokens that were more likely.
    pub rank: usize,
    /// The most likely tokens with theirs, best first.
    pub top: Vec<(TokenId, f32)>,
}

/// One step's news for one sample of a request.
#[derive(Clone, Debug)]
pub struct SampleOutput {
    /// Which of the `n` samples.
    pub index: usize,
    /// Tokens generated this step (usually one).
    pub token_ids: Vec<TokenId>,
    /// Answer text that became final this step (all text when the output is
    /// not parsed for reasoning).
    pub text: String,
    /// Reasoning text that became final this step.
    pub reasoning: String,
    /// Tokens of this sample counted as reasoning so far.
    pub reasoning_tokens: usize,
    /// Whether the sample is (or ended) inside its reasoning block.
    pub in_reasoning: bool,
    /// How the reasoning ended; set on the sample's last output.
    pub reasoning_end: Option<ReasoningEnd>,
    /// Logprobs of `token_ids`, when asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// Set on the sample's last output.
    pub finish_reason: Option<FinishReason>,
    /// The stop string or token that ended it, if any.
    pub stop_reason: Option<StopReason>,
}

/// What ended a sample with [`FinishReason::Stop`], when it was not EOS
/// (vLLM's `stop_reason`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// One of the request's `stop_token_ids`.
    Token(TokenId),
    /// One of the request's stop strings.
    Text(String),
}

/// Token accounting of a request, sent with every output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestUsage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
    /// Tokens generated so far, all samples.
    pub completion_tokens: usize,
}

/// An item of a request's output stream.
#[derive(Clone, Debug)]
pub struct RequestOutput {
    /// Sample updates of this step.
    pub samples: Vec<SampleOutput>,
    /// Usage so far.
    pub usage: RequestUsage,
    /// True on the last item: every sample has finished.
    pub finished: bool,
    /// When the request asked for them, the logprobs of its prompt tokens
    /// after the first, once, with the first sampled tokens.
    pub prompt_logprobs: Option<Vec<PromptLogprob>>,
}

/// Why the engine refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The waiting queue is full.
    #[error("the server is busy: {0} requests are waiting")]
    QueueFull(usize),
    /// Prompt plus `max_tokens` exceed the context.
    #[error("this model's maximum context length is {max} tokens, but {requested} were requested ({prompt} in the prompt, {completion} to generate)")]
    TooLong {
        /// Context limit.
        max: usize,
        /// Prompt + completion.
        requested: usize,
        /// Prompt tokens.
        prompt: usize,
        /// Completion tokens.
        completion: usize,
    },
    /// The prompt alone can never fit in the KV cache.
    #[error("the prompt needs {needed} KV blocks but the cache has only {available}")]
    TooLargeForCache {
        /// Blocks the request needs.
        needed: usize,
        /// Blocks in the whole pool.
        available: usize,
    },
    /// The engine was shut down.
    #[error("the engine has stopped")]
    Stopped,
    /// The engine thread died without being asked to stop.
    #[error("the engine failed: {0}")]
    Failed(String),
}

/// Counters and gauges the metrics endpoint reads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineStats {
    /// Requests being decoded or prefilled.
    pub running: usize,
    /// Requests waiting for admission.
    pub waiting: usize,
    /// Fraction of KV blocks in use, 0..1.
    pub kv_usage: f64,
    /// Free KV blocks.
    pub free_blocks: usize,
    /// KV blocks in the pool.
    pub total_blocks: usize,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Prompt tokens found there.
    pub prefix_hits: u64,
    /// Preemptions since start.
    pub preemptions: u64,
    /// Engine steps since start.
    pub steps: u64,
    /// Tokens processed by the model since start.
    pub step_tokens: u64,
    /// Prompt tokens of requests whose prefill has covered them (a cached
    /// prefix counts when the prefill passes it), each counted once.
    pub prompt_tokens: u64,
    /// Tokens sampled since start, all choices.
    pub generation_tokens: u64,
    /// Tokens per KV block (fixed at start, like the two below).
    pub block_size: usize,
    /// Element type of the KV cache.
    pub kv_dtype: KvDtype,
    /// Whether requests reuse the blocks of shared prompt prefixes.
    pub prefix_caching: bool,
    /// KV-cache events dropped because their queue was full.
    pub kv_events_dropped: u64,
}
