//! The part of a completion request shared by the chat and legacy routes:
//! turning checked parameters (and any output constraint, compiled here)
//! into an engine request, submitting it, and
//! following its outputs (split into reasoning and answer by the engine)
//! through the tool-call parser while keeping the usage and metrics books.
//!
//! The route modules only decide how each [`ChoiceUpdate`] is framed.

use std::time::Instant;

use futures::StreamExt;
use serde_json::{Map, Value};

use super::backend::{OutputStream, PromptCodec};
use super::error::{ApiError, ErrorKind};
use super::protocol::{
    CompletionTokensDetails, Constraint, DeltaFunction, DeltaToolCall, Effort, FinishReason,
    GenerationParams, PromptTokensDetails, StopReason, ThinkingRequest, Usage,
};
use super::state::{AppState, ServedModel};
use crate::answers::language::{Script, WordCounter};
use crate::engine::stop::StopStrings;
use crate::engine::types::{
    EngineError, EngineRequest, FinishReason as EngineFinish, PromptLogprob, ReasoningParams,
    RequestUsage, SampleOutput, SamplingParams, StopReason as EngineStopReason, TokenLogprob,
};
use crate::metrics::{Completion, RequestRecorder};
use crate::reasoning::{ReasoningEnd, ReasoningParser};
use crate::structured::CompiledGrammar;
use crate::tokenizer::{ChatEnding, ChatPrompt, PromptTooLong};
use crate::tools::{call_id, ParsedText, ToolCallStream};
use crate::types::TokenId;
use std::sync::Arc;

/// Seconds a client is told to wait when the queue is full: long enough for
/// a few decode steps to free slots, short enough not to idle the server.
const QUEUE_FULL_RETRY_AFTER: u64 = 1;

/// Compiles the request's constraint for the served vocabulary on a
/// blocking thread (a large schema takes milliseconds); a schema or grammar
/// the engine rejects is a 400 naming the parameter, with its message.
pub async fn compile_constraint(
    state: &AppState,
    model: &ServedModel,
    constraint: Constraint,
) -> Result<Arc<CompiledGrammar>, ApiError> {
    let Some(vocab) = model.grammar.clone() else {
        return Err(ApiError::bad_request(
            &constraint.param,
            format!(
                "'{}' needs structured outputs, which this model's tokenizer does not support",
                constraint.param
            ),
        ));
    };
    state
        .tokenizer_work(move || {
            CompiledGrammar::compile(&constraint.spec, &vocab)
                .map(Arc::new)
                .map_err(|e| {
                    ApiError::bad_request(
                        &constraint.param,
                        format!("invalid '{}': {e}", constraint.param),
                    )
                })
        })
        .await
}

/// Builds the engine's sampling parameters, filling what the client left
/// out from the model's defaults and checking the length budget.
///
/// `default_max_tokens` is the route's default for an absent `max_tokens`:
/// `None` means "the rest of the context".
pub fn sampling_params(
    model: &ServedModel,
    params: &GenerationParams,
    prompt_len: usize,
    default_max_tokens: Option<usize>,
) -> Result<SamplingParams, ApiError> {
    let max_len = model.max_model_len;
    let requested = params.max_tokens.map(|m| m as usize).or(default_max_tokens);
    let max_tokens = match requested {
        Some(max_tokens) if prompt_len + max_tokens > max_len => {
            return Err(too_long(max_len, prompt_len, max_tokens));
        }
        Some(max_tokens) => max_tokens,
        None if prompt_len >= max_len => return Err(too_long(max_len, prompt_len, 1)),
        None => max_len - prompt_len,
    };
    let vocab = model.codec.vocab_size();
    if let Some(&(id, _)) = params
        .logit_bias
        .iter()
        .find(|(id, _)| *id as usize >= vocab)
    {
        return Err(ApiError::bad_request(
            "logit_bias",
            format!("'logit_bias' token {id} is outside the vocabulary of {vocab} tokens"),
        ));
    }
    if let Some(&id) = params
        .stop_token_ids
        .iter()
        .find(|&&id| id as usize >= vocab)
    {
        return Err(ApiError::bad_request(
            "stop_token_ids",
            format!("'stop_token_ids' token {id} is outside the vocabulary of {vocab} tokens"),
        ));
    }
    Ok(SamplingParams {
        temperature: params
            .temperature
            .or(model.defaults.temperature)
            .unwrap_or(1.0),
        top_p: params.top_p.or(model.defaults.top_p).unwrap_or(1.0),
        top_k: params
            .top_k
            .or(model.defaults.top_k)
            .map_or(0, |k| k as usize),
        min_p: params.min_p.or(model.defaults.min_p).unwrap_or(0.0),
        repetition_penalty: params
            .repetition_penalty
            .or(model.defaults.repetition_penalty)
            .unwrap_or(1.0),
        presence_penalty: params.presence_penalty,
        frequency_penalty: params.frequency_penalty,
        logit_bias: params.logit_bias.clone(),
        seed: params.seed,
        logprobs: params.logprobs.map(|k| k as usize),
        max_tokens,
        min_tokens: params.min_tokens as usize,
        ignore_eos: params.ignore_eos,
        stop_token_ids: params.stop_token_ids.clone(),
        stop: StopStrings::new(params.stop.clone())
            .map_err(|e| ApiError::bad_request("stop", e))?,
        include_stop_str_in_output: params.include_stop_str_in_output,
        prompt_logprobs: params.prompt_logprobs.map(|k| k as usize),
        n: params.n as usize,
        skip_special_tokens: params.skip_special_tokens,
        reasoning: ReasoningParams::default(),
        grammar: None,
    })
}

/// The reasoning settings of a chat request: its output is parsed with the
/// model's parser from the state the prompt leaves it in, and bounded by
/// the request's budget (explicit, else by effort, else the server's) and
/// answer reserve (the request's, else the server's when it fits).
pub fn reasoning_params(
    model: &ServedModel,
    thinking: &ThinkingRequest,
    max_tokens: usize,
    starts_inside: bool,
) -> Result<ReasoningParams, ApiError> {
    if model.reasoning == ReasoningParser::None {
        if thinking.asks_for_control() {
            let param = if thinking.budget.is_some() {
                "thinking_token_budget"
            } else if thinking.effort.is_some() {
                "reasoning_effort"
            } else {
                "answer_token_reserve"
            };
            return Err(ApiError::bad_request(
                param,
                format!(
                    "'{param}' needs a reasoning model, and this server parses no reasoning \
                     (--reasoning-parser none)"
                ),
            ));
        }
        return Ok(ReasoningParams::default());
    }
    let defaults = &model.thinking;
    let effort = thinking.effort.map(|e| {
        defaults.effort_budgets[match e {
            Effort::Low => 0,
            Effort::Medium => 1,
            Effort::High => 2,
        }]
    });
    let budget = thinking
        .budget
        .map(|b| b as usize)
        .or(effort)
        .or(defaults.budget);
    let answer_reserve = match thinking.answer_reserve {
        Some(r) if r as usize >= max_tokens => {
            return Err(ApiError::bad_request(
                "answer_token_reserve",
                format!(
                    "'answer_token_reserve' ({r}) must be less than the token limit ({max_tokens})"
                ),
            ))
        }
        Some(r) => Some(r as usize),
        None => defaults.answer_reserve.filter(|&r| r < max_tokens),
    };
    Ok(ReasoningParams {
        parser: model.reasoning,
        starts_inside,
        budget,
        answer_reserve,
    })
}

/// The 400 for a request that cannot fit the context, worded as OpenAI
/// words it so clients that parse the numbers keep working.
fn too_long(max_len: usize, prompt: usize, completion: usize) -> ApiError {
    ApiError::bad_request(
        "messages",
        format!(
            "This model's maximum context length is {max_len} tokens. However, you requested \
             {} tokens ({prompt} in the prompt, {completion} for the completion). Please reduce \
             the length of the prompt or the completion.",
            prompt + completion
        ),
    )
    .with_code("context_length_exceeded")
}

/// Maps an engine refusal to what the client sees.
fn engine_error(error: EngineError) -> ApiError {
    match error {
        EngineError::QueueFull(_) => ApiError::overloaded(QUEUE_FULL_RETRY_AFTER),
        EngineError::TooLong {
            max,
            prompt,
            completion,
            ..
        } => too_long(max, prompt, completion),
        EngineError::TooLargeForCache { .. } => {
            ApiError::bad_request("messages", error.to_string())
        }
        EngineError::Stopped => shutting_down(),
        EngineError::Failed(cause) => ApiError::internal(cause),
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Server,
        "The server is shutting down",
    )
}

/// Tokenizes a prompt for a model of `max_model_len` tokens. A text that
/// cannot fit is refused by its byte length alone when the codec bounds the
/// bytes per token (`param` names the field at fault): tokenizing megabytes
/// costs seconds of CPU, and the tokenizer cannot stop part-way once the
/// count passes the limit. Texts that pass are tokenized whole, and their
/// token count is checked by the caller.
pub fn encode_prompt(
    codec: &dyn PromptCodec,
    text: &str,
    add_special_tokens: bool,
    max_model_len: usize,
    param: &str,
) -> Result<Vec<TokenId>, ApiError> {
    if let Some(limit) = byte_limit(codec, max_model_len) {
        if text.len() > limit {
            return Err(too_many_bytes(codec, text.len(), max_model_len, param));
        }
    }
    codec
        .encode(text, add_special_tokens)
        .map_err(ApiError::internal)
}

/// The most bytes a prompt of `max_model_len` tokens can have, when the
/// codec bounds the bytes per token.
pub fn byte_limit(codec: &dyn PromptCodec, max_model_len: usize) -> Option<usize> {
    codec
        .max_token_bytes()
        .map(|per_token| max_model_len.saturating_mul(per_token))
}

/// The 400 for a prompt refused by its byte length.
pub fn too_many_bytes(
    codec: &dyn PromptCodec,
    bytes: usize,
    max_model_len: usize,
    param: &str,
) -> ApiError {
    let per_token = codec.max_token_bytes().unwrap_or(0);
    ApiError::bad_request(
        param,
        format!(
            "This model's maximum context length is {max_model_len} tokens. However, the \
             prompt is {bytes} bytes long and no token covers more than {per_token} bytes, so \
             it has more than {max_model_len} tokens. Please reduce the length of the prompt."
        ),
    )
    .with_code("context_length_exceeded")
}

/// Renders and tokenizes a conversation (see [`PromptCodec::encode_chat`]),
/// refusing by byte length a rendering that cannot fit `max_model_len`.
pub fn encode_chat_prompt(
    codec: &dyn PromptCodec,
    messages: &Value,
    ending: ChatEnding,
    tools: Option<&Value>,
    extra: &Map<String, Value>,
    add_special_tokens: bool,
    max_model_len: usize,
) -> Result<ChatPrompt, ApiError> {
    let limit = byte_limit(codec, max_model_len);
    codec
        .encode_chat(messages, ending, tools, extra, add_special_tokens, limit)
        .map_err(|e| match e.downcast_ref::<PromptTooLong>() {
            Some(long) => too_many_bytes(codec, long.bytes, max_model_len, "messages"),
            None => ApiError::bad_request("messages", format!("chat template error: {e}")),
        })
}

/// One choice's news from one engine output, already split into reasoning,
/// content and tool calls.
#[derive(Clone, Debug, Default)]
pub struct ChoiceUpdate {
    /// Choice index.
    pub index: u32,
    /// New reasoning text.
    pub reasoning: String,
    /// New answer text (all text, for the legacy route).
    pub content: String,
    /// New pieces of tool calls, ids assigned.
    pub tool_calls: Vec<DeltaToolCall>,
    /// Logprobs of the tokens of this update, when requested.
    pub logprobs: Vec<TokenLogprob>,
    /// Set on the choice's last update.
    pub finish_reason: Option<FinishReason>,
    /// How the choice's reasoning ended; set on its last update.
    pub reasoning_end: Option<ReasoningEnd>,
    /// The stop token or string that ended the choice, on its last update.
    pub stop_reason: Option<StopReason>,
}

/// Per-choice bookkeeping.
struct ChoiceState {
    /// Parses the answer for tool calls.
    tools: ToolCallStream,
    /// Parses the reasoning the same way, only to count the calls written
    /// there: they are not executed.
    reasoning_tools: ToolCallStream,
    reasoning_tokens: usize,
    in_reasoning: bool,
    reasoning_end: Option<ReasoningEnd>,
    finished: bool,
    length: bool,
    /// Words of the reasoning per script, when the request measures its
    /// language.
    words: Option<WordCounter>,
}

/// Gives each new call an id and turns parser pieces into wire pieces.
fn wire_calls(parsed: ParsedText) -> (String, Vec<DeltaToolCall>) {
    let calls = parsed
        .calls
        .into_iter()
        .map(|delta| {
            let first = delta.name.is_some();
            DeltaToolCall {
                index: delta.index,
                id: first.then(call_id),
                kind: first.then(|| "function".to_string()),
                function: DeltaFunction {
                    name: delta.name,
                    arguments: delta.arguments,
                },
            }
        })
        .collect();
    (parsed.content, calls)
}

impl ChoiceState {
    fn push(&mut self, sample: SampleOutput) -> Result<ChoiceUpdate, ApiError> {
        // The engine split the text and counted the reasoning tokens.
        self.reasoning_tokens = sample.reasoning_tokens;
        self.in_reasoning = sample.in_reasoning;
        if sample.reasoning_end.is_some() {
            self.reasoning_end = sample.reasoning_end;
        }
        let finishing = sample.finish_reason.is_some();
        if let Some(words) = &mut self.words {
            words.push(&sample.reasoning);
        }
        self.reasoning_tools.push(&sample.reasoning);
        let mut parsed = self.tools.push(&sample.text);
        if finishing {
            self.reasoning_tools.finish();
            let tail = self.tools.finish();
            parsed.content.push_str(&tail.content);
            parsed.calls.extend(tail.calls);
        }
        let (content, tool_calls) = wire_calls(parsed);
        let finish_reason = match sample.finish_reason {
            None => None,
            Some(reason) => {
                self.finished = true;
                match reason {
                    EngineFinish::Stop if self.tools.calls() > 0 => Some(FinishReason::ToolCalls),
                    EngineFinish::Stop => Some(FinishReason::Stop),
                    EngineFinish::Length => {
                        self.length = true;
                        Some(FinishReason::Length)
                    }
                    EngineFinish::Abort => return Err(shutting_down()),
                }
            }
        };
        Ok(ChoiceUpdate {
            index: u32::try_from(sample.index).unwrap_or(u32::MAX),
            reasoning: sample.reasoning,
            content,
            tool_calls,
            logprobs: sample.logprobs,
            finish_reason,
            reasoning_end: sample.reasoning_end,
            stop_reason: sample.stop_reason.map(|reason| match reason {
                EngineStopReason::Token(id) => StopReason::Token(id),
                EngineStopReason::Text(text) => StopReason::Text(text),
            }),
        })
    }
}

/// A submitted request: its output stream, its metrics recorder and the
/// state of each choice. Dropping it drops the stream, which aborts the
/// request in the engine.
pub struct Generation {
    outputs: OutputStream,
    recorder: RequestRecorder,
    choices: Vec<ChoiceState>,
    usage: RequestUsage,
    prompt_logprobs: Option<Vec<PromptLogprob>>,
    /// The script of the question, which the reasoning's is measured
    /// against.
    prompt_script: Option<Script>,
    done: bool,
}

impl Generation {
    /// Submits `prompt` to the engine. `arrived` is when the HTTP request
    /// came in; each choice parses its answer with a copy of `tools`.
    pub fn submit(
        model: &ServedModel,
        prompt: Vec<TokenId>,
        params: SamplingParams,
        arrived: Instant,
        tools: &ToolCallStream,
    ) -> Result<Self, ApiError> {
        let n = params.n;
        let params_starts_inside = params.reasoning.starts_inside;
        // Known before the engine reports it, for chunks sent ahead of the
        // first output (vLLM's continuous usage).
        let usage = RequestUsage {
            prompt_tokens: prompt.len(),
            ..RequestUsage::default()
        };
        let outputs = model
            .engine
            .add_request(EngineRequest { prompt, params })
            .map_err(engine_error)?;
        let choices = (0..n)
            .map(|_| ChoiceState {
                tools: tools.clone(),
                reasoning_tools: tools.clone(),
                reasoning_tokens: 0,
                in_reasoning: params_starts_inside,
                reasoning_end: None,
                finished: false,
                length: false,
                words: None,
            })
            .collect();
        Ok(Self {
            outputs,
            recorder: RequestRecorder::new(model.name.as_str().into(), arrived),
            choices,
            usage,
            prompt_logprobs: None,
            prompt_script: None,
            done: false,
        })
    }

    /// Measures the share of the reasoning written in `script` (the
    /// question's), for the language-consistency metric; `None` measures
    /// nothing.
    pub fn with_prompt_script(mut self, script: Option<Script>) -> Self {
        self.prompt_script = script;
        for choice in &mut self.choices {
            choice.words = script.map(|_| WordCounter::default());
        }
        self
    }

    /// The share of the reasoning's words, over all choices, written in
    /// the question's script; `None` without a script or reasoning words.
    fn language_share(&self) -> Option<f64> {
        let script = self.prompt_script?;
        let (matching, total) = self
            .choices
            .iter()
            .filter_map(|c| c.words.as_ref().map(WordCounter::counts))
            .fold((0, 0), |(m, t), counts| {
                (m + counts.get(script), t + counts.total())
            });
        (total > 0).then(|| matching as f64 / total as f64)
    }

    /// The updates of the next engine output, or `None` once every choice
    /// has finished. An aborted request yields a 503; a stream that ends
    /// without its last output means the engine thread died, a 500.
    pub async fn next(&mut self) -> Option<Result<Vec<ChoiceUpdate>, ApiError>> {
        if self.done {
            return None;
        }
        let Some(output) = self.outputs.next().await else {
            self.done = true;
            return Some(Err(ApiError::internal(
                "the engine ended a request's output stream without finishing it",
            )));
        };
        let new_tokens = output.samples.iter().map(|s| s.token_ids.len()).sum();
        self.recorder.on_output(new_tokens);
        self.usage = output.usage;
        if output.prompt_logprobs.is_some() {
            self.prompt_logprobs = output.prompt_logprobs;
        }
        let mut updates = Vec::with_capacity(output.samples.len());
        for sample in output.samples {
            let Some(choice) = self.choices.get_mut(sample.index) else {
                self.done = true;
                return Some(Err(ApiError::internal(format!(
                    "engine returned sample {} of a request with {} choices",
                    sample.index,
                    self.choices.len()
                ))));
            };
            match choice.push(sample) {
                Ok(update) => {
                    if !update.content.is_empty() || !update.tool_calls.is_empty() {
                        self.recorder.on_answer_text();
                    }
                    updates.push(update);
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
        if output.finished || self.choices.iter().all(|c| c.finished) {
            self.done = true;
            if let Some(share) = self.language_share() {
                self.recorder.on_reasoning_language(share);
            }
            self.recorder.finish(Completion {
                finished_reason: if self.choices.iter().any(|c| c.length) {
                    "length"
                } else {
                    "stop"
                },
                reasoning_tokens: self.reasoning_tokens(),
                ended_in_reasoning: self.choices.iter().any(|c| c.in_reasoning),
                reasoning_ends: ReasoningEnd::ALL.map(|state| {
                    self.choices
                        .iter()
                        .filter(|c| c.reasoning_end == Some(state))
                        .count()
                }),
                tool_calls_in_reasoning: self
                    .choices
                    .iter()
                    .map(|c| c.reasoning_tools.calls() as usize)
                    .sum(),
            });
        }
        Some(Ok(updates))
    }

    /// Whether choice `index` ended (or so far is) inside its reasoning
    /// block; its `content` is then `null`, as the answer never started.
    pub fn in_reasoning(&self, index: usize) -> bool {
        self.choices.get(index).is_some_and(|c| c.in_reasoning)
    }

    fn reasoning_tokens(&self) -> usize {
        self.choices.iter().map(|c| c.reasoning_tokens).sum()
    }

    /// The prompt's logprobs, once the engine has sent them (requests
    /// with `prompt_logprobs` only).
    pub fn take_prompt_logprobs(&mut self) -> Option<Vec<PromptLogprob>> {
        self.prompt_logprobs.take()
    }

    /// Token accounting so far, in OpenAI's shape.
    pub fn usage(&self) -> Usage {
        let prompt = to_u32(self.usage.prompt_tokens);
        let completion = to_u32(self.usage.completion_tokens);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: to_u32(self.usage.cached_tokens),
            }),
            completion_tokens_details: Some(CompletionTokensDetails {
                reasoning_tokens: to_u32(self.reasoning_tokens()),
            }),
        }
    }
}

fn to_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The text of one token as clients see it in logprobs. Decoding a single
/// token is microseconds of work, so it runs inline.
pub fn token_text(codec: &dyn PromptCodec, id: TokenId) -> String {
    codec.decode(&[id], false).unwrap_or_default()
}
