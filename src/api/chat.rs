//! `POST /v1/chat/completions`: template the conversation (with its tools),
//! constrain the answer when asked (`response_format`, vLLM's fields, or a
//! `tool_choice` that forces a call), generate, split the output into
//! reasoning (sent as `reasoning_content`, `reasoning` or both, see
//! [`ReasoningField`]), `content` and `tool_calls`, and answer as one JSON
//! body or as OpenAI's chunk stream.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use serde_json::{Map, Value};

use super::backend::PromptCodec;
use super::error::{ApiError, Json};
use super::generation::{
    compile_constraint, encode_chat_prompt, reasoning_params, sampling_params, token_text,
    ChoiceUpdate, Generation,
};
use super::prompt_logprobs;
use super::protocol::{
    chat_completion_id, unix_timestamp, warn_unknown_fields, AssistantMessage, ChatChoice,
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs,
    ChatTokenLogprob, ChatTools, ChunkChoice, Consensus, ConsensusResult, Constraint, Delta,
    DeltaToolCall, FunctionCall, ReasoningField, Role, TextMessage, ToolCall, ToolChoice,
    TopLogprob, ValidatedChat,
};
use super::sse::{done_event, error_event, json_event, sse_response};
use super::state::{AppState, ServedModel};
use crate::answers::language::{Script, WordCounts};
use crate::engine::types::TokenLogprob;
use crate::reasoning::{prompt_opens_reasoning, ReasoningParser};
use crate::structured::GrammarSpec;
use crate::tools::{call_grammar, ToolCallParser, ToolCallStream, ToolFunction};
use crate::types::TokenId;

/// Handles `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    Json(request): Json<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let model = state.model()?;
    model.check_name(request.model.as_deref())?;
    warn_unknown_fields("/v1/chat/completions", &request.unknown);
    let (chat, generation) = submit(&state, &model, request, arrived).await?;
    let reply = Reply {
        id: chat_completion_id(),
        created: unix_timestamp(),
        reasoning_field: chat.reasoning_field.unwrap_or(model.reasoning_field),
        model,
        include_reasoning: chat.include_reasoning,
        echo: chat.echo,
        logprobs: chat.params.logprobs.is_some(),
        include_usage: chat.params.include_usage,
        continuous_usage: chat.params.continuous_usage,
        consensus: chat.consensus.map(|c| (c, state.clone())),
    };
    if chat.params.stream {
        Ok(reply.stream(generation, chat.params.n))
    } else {
        // Collected inside the handler future: when a client hangs up
        // mid-request hyper drops that future, and with it the generation,
        // which aborts the request in the engine.
        reply.collect(generation, chat.params.n).await
    }
}

/// Checks a chat request, templates it with its tools, constrains it
/// (`response_format`, vLLM's fields, or a `tool_choice` that forces a
/// call) and submits it to the engine: what `/v1/chat/completions` and
/// `/v1/responses` share. Each choice parses its output for tool calls
/// when the model is shown tools.
pub(super) async fn submit(
    state: &AppState,
    model: &Arc<ServedModel>,
    request: ChatCompletionRequest,
    arrived: Instant,
) -> Result<(ValidatedChat, Generation), ApiError> {
    let chat = request.validate()?;
    let tools = shown_tools(&chat);
    let tool_stream = ToolCallStream::new(
        tools.map_or(ToolCallParser::None, |_| model.tool_parser),
        tools.is_none_or(|tools| tools.parallel),
    );
    let constraint = match tools.filter(|t| t.choice.forces_call()) {
        Some(tools) => Some(forced_call(model, tools)?),
        None => chat.constraint.clone(),
    };
    let grammar = match constraint {
        Some(c) => Some(compile_constraint(state, model, c).await?),
        None => None,
    };
    let kwargs = request.chat_template_kwargs.unwrap_or_default();
    let (prompt, prompt_ids) = chat_prompt(state, model, &chat, kwargs).await?;
    // Only a reasoning model's output is measured against the question.
    let script = (model.reasoning != ReasoningParser::None)
        .then(|| question_script(&chat.messages))
        .flatten();
    let mut params = sampling_params(model, &chat.params, prompt_ids.len(), None)?;
    let starts_inside =
        model.reasoning == ReasoningParser::DeepSeekR1 && prompt_opens_reasoning(&prompt);
    params.reasoning = reasoning_params(model, &chat.thinking, params.max_tokens, starts_inside)?;
    params.grammar = grammar;
    let generation = Generation::submit(model, prompt_ids, params, arrived, &tool_stream)?
        .with_prompt_script(script);
    Ok((chat, generation))
}

/// The script of the question being answered (the last user message),
/// which the reasoning's language is measured against; `None` when it has
/// no words.
fn question_script(messages: &[TextMessage]) -> Option<Script> {
    let question = messages.iter().rev().find(|m| m.role == Role::User)?;
    WordCounts::of(question.content.as_deref()?).dominant()
}

/// The tools the model is shown. With `tool_choice: "none"` it is not
/// shown them, as vLLM does by default, and its output is not parsed for
/// calls.
fn shown_tools(chat: &ValidatedChat) -> Option<&ChatTools> {
    chat.tools
        .as_ref()
        .filter(|tools| tools.choice != ToolChoice::None)
}

/// The prompt of a checked chat request as the model sees it, its text and
/// ids, templated and tokenized off the async threads; shared with
/// `/v1/chat/completions/render`, which must give the same ids.
pub(super) async fn chat_prompt(
    state: &AppState,
    model: &ServedModel,
    chat: &ValidatedChat,
    kwargs: Map<String, Value>,
) -> Result<(String, Vec<TokenId>), ApiError> {
    let messages = serde_json::to_value(&chat.messages).map_err(ApiError::internal)?;
    let definitions = shown_tools(chat).map(|tools| Value::Array(tools.definitions.clone()));
    let codec = Arc::clone(&model.codec);
    let max_model_len = model.max_model_len;
    let ending = chat.ending;
    state
        .tokenizer_work(move || {
            // The template writes BOS and every special token itself.
            let chat = encode_chat_prompt(
                codec.as_ref(),
                &messages,
                ending,
                definitions.as_ref(),
                &kwargs,
                false,
                max_model_len,
            )?;
            Ok((chat.text, chat.ids))
        })
        .await
}

/// The constraint of a `tool_choice` that forces a call: the served
/// format's call markup around the arguments schema of the named function,
/// or of any function for `required` (with `parallel_tool_calls`, one or
/// more calls).
fn forced_call(model: &ServedModel, tools: &ChatTools) -> Result<Constraint, ApiError> {
    let functions: Vec<ToolFunction> = tools
        .definitions
        .iter()
        .filter_map(ToolFunction::from_definition)
        .filter(|f| match &tools.choice {
            ToolChoice::Named(name) => &f.name == name,
            _ => true,
        })
        .collect();
    let parallel = tools.parallel && tools.choice == ToolChoice::Required;
    let token = |marker: &str| model.grammar.as_ref().and_then(|v| v.single_token(marker));
    let grammar =
        call_grammar(model.tool_parser, &functions, parallel, &token).ok_or_else(|| {
            ApiError::bad_request(
                "tool_choice",
                "a 'tool_choice' that forces a call needs a tool-call format, and this server has \
             none (--tool-call-parser none, and the chat template shows no tool-call markup)",
            )
        })?;
    Ok(Constraint {
        spec: GrammarSpec::Lark(grammar),
        param: "tool_choice".into(),
    })
}

/// What every part of one reply shares.
struct Reply {
    id: String,
    created: u64,
    model: Arc<ServedModel>,
    include_reasoning: bool,
    reasoning_field: ReasoningField,
    /// Text every choice's answer starts with (chat `echo`).
    echo: Option<String>,
    logprobs: bool,
    include_usage: bool,
    /// Every chunk carries the usage so far.
    continuous_usage: bool,
    /// The vote to take over the answers, and the state whose blocking
    /// pool takes it (extraction reads every answer whole).
    consensus: Option<(Consensus, AppState)>,
}

impl Reply {
    /// The vote over the choices' answer texts (`None` for a choice that
    /// never left its reasoning), when the request asked for one.
    async fn vote(
        &self,
        answers: Vec<Option<String>>,
    ) -> Result<Option<ConsensusResult>, ApiError> {
        let Some((consensus, state)) = &self.consensus else {
            return Ok(None);
        };
        let consensus = consensus.clone();
        state
            .tokenizer_work(move || Ok(consensus.vote(answers.iter().map(Option::as_deref))))
            .await
            .map(Some)
    }

    fn logprobs(&self, entries: &[TokenLogprob]) -> Option<ChatLogprobs> {
        self.logprobs.then(|| ChatLogprobs {
            content: Some(
                entries
                    .iter()
                    .map(|entry| chat_logprob(self.model.codec.as_ref(), entry))
                    .collect(),
            ),
        })
    }

    /// Reasoning text as `(reasoning_content, reasoning)`: under the
    /// reply's field names, or under none when it is empty or not wanted.
    fn reasoning(&self, text: String) -> (Option<String>, Option<String>) {
        self.reasoning_field
            .place((self.include_reasoning && !text.is_empty()).then_some(text))
    }

    async fn collect(self, mut generation: Generation, n: u32) -> Result<Response, ApiError> {
        let mut reasoning = vec![String::new(); n as usize];
        let mut content = vec![self.echo.clone().unwrap_or_default(); n as usize];
        let mut logprobs = vec![Vec::new(); n as usize];
        let mut finish = vec![None; n as usize];
        let mut stop_reasons = vec![None; n as usize];
        let mut calls = vec![Vec::new(); n as usize];
        let mut ends = vec![None; n as usize];
        while let Some(updates) = generation.next().await {
            for update in updates? {
                let i = update.index as usize;
                if let (Some(end), Some(slot)) = (update.reasoning_end, ends.get_mut(i)) {
                    *slot = Some(end);
                }
                if let (Some(r), Some(c), Some(l), Some(f), Some(t), Some(s)) = (
                    reasoning.get_mut(i),
                    content.get_mut(i),
                    logprobs.get_mut(i),
                    finish.get_mut(i),
                    calls.get_mut(i),
                    stop_reasons.get_mut(i),
                ) {
                    r.push_str(&update.reasoning);
                    c.push_str(&update.content);
                    l.extend(update.logprobs);
                    *f = update.finish_reason;
                    *s = update.stop_reason;
                    merge_tool_calls(t, update.tool_calls);
                }
            }
        }
        // Only a consensus request copies the answers out for its vote.
        let consensus = match self.consensus {
            Some(_) => {
                let answers = (0..n as usize)
                    .map(|i| (!generation.in_reasoning(i)).then(|| content[i].clone()))
                    .collect();
                self.vote(answers).await?
            }
            None => None,
        };
        let mut reasoning: Vec<_> = reasoning.into_iter().map(|r| self.reasoning(r)).collect();
        let choices = (0..n as usize)
            .map(|i| ChatChoice {
                index: i as u32,
                message: AssistantMessage {
                    role: Role::Assistant,
                    // A reply that is only tool calls has no content, as
                    // OpenAI's.
                    content: (self.echo.is_some()
                        || !generation.in_reasoning(i)
                            && (!content[i].is_empty() || calls[i].is_empty()))
                    .then(|| std::mem::take(&mut content[i])),
                    reasoning_content: reasoning[i].0.take(),
                    reasoning: reasoning[i].1.take(),
                    tool_calls: (!calls[i].is_empty()).then(|| std::mem::take(&mut calls[i])),
                },
                logprobs: self.logprobs(&logprobs[i]),
                finish_reason: finish[i],
                reasoning_end: ends[i],
                stop_reason: stop_reasons[i].take(),
            })
            .collect();
        let mut response = ChatCompletionResponse::new(
            self.id,
            self.created,
            self.model.name.clone(),
            choices,
            generation.usage(),
        );
        response.prompt_logprobs = generation
            .take_prompt_logprobs()
            .map(|entries| prompt_logprobs::wire(self.model.codec.as_ref(), &entries));
        response.consensus = consensus;
        Ok(Json(response).into_response())
    }

    fn chunk(&self, choice: ChunkChoice) -> ChatCompletionChunk {
        ChatCompletionChunk::new(
            self.id.clone(),
            self.created,
            self.model.name.clone(),
            vec![choice],
            self.include_usage,
        )
    }

    /// The chunk for one update, or `None` when it carries nothing the
    /// client can see (text held back by the splitter or detokenizer).
    fn update_chunk(&self, update: ChoiceUpdate) -> Option<ChatCompletionChunk> {
        let (reasoning_content, reasoning) = self.reasoning(update.reasoning);
        let delta = Delta {
            role: None,
            content: (!update.content.is_empty()).then_some(update.content),
            reasoning_content,
            reasoning,
            tool_calls: (!update.tool_calls.is_empty()).then_some(update.tool_calls),
        };
        let empty = delta.content.is_none()
            && delta.reasoning_content.is_none()
            && delta.reasoning.is_none()
            && delta.tool_calls.is_none()
            && update.logprobs.is_empty()
            && update.finish_reason.is_none();
        (!empty).then(|| {
            self.chunk(ChunkChoice {
                index: update.index,
                logprobs: self.logprobs(&update.logprobs),
                delta,
                finish_reason: update.finish_reason,
                reasoning_end: update.reasoning_end,
                stop_reason: update.stop_reason,
            })
        })
    }

    fn stream(self, generation: Generation, n: u32) -> Response {
        // OpenAI opens each choice with the role and an empty content; vLLM
        // then sends the echoed text as each choice's first content.
        let open = |index: u32, delta: Delta| {
            let choice = ChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason: None,
                reasoning_end: None,
                stop_reason: None,
            };
            self.framed(self.chunk(choice), &generation)
        };
        let role = Delta {
            role: Some(Role::Assistant),
            content: Some(String::new()),
            ..Delta::default()
        };
        let opening: Vec<Bytes> = (0..n)
            .map(|index| open(index, role.clone()))
            .chain(self.echo.iter().flat_map(|echo| {
                (0..n).map(|index| {
                    let content = Delta {
                        content: Some(echo.clone()),
                        ..Delta::default()
                    };
                    open(index, content)
                })
            }))
            .collect();
        // The generation lives in the stream state, so when axum drops the
        // body of a disconnected client the engine request goes with it.
        // A consensus request also keeps each choice's answer for the vote,
        // echoed start included as in the collected reply.
        let voters = if self.consensus.is_some() {
            n as usize
        } else {
            0
        };
        let answers = vec![self.echo.clone().unwrap_or_default(); voters];
        let body = stream::unfold(Some((generation, self, answers)), |state| async move {
            let (mut generation, reply, mut answers) = state?;
            match generation.next().await {
                Some(Ok(updates)) => {
                    for update in &updates {
                        if let Some(answer) = answers.get_mut(update.index as usize) {
                            answer.push_str(&update.content);
                        }
                    }
                    let frames: Vec<Bytes> = updates
                        .into_iter()
                        .filter_map(|u| reply.update_chunk(u))
                        .map(|c| reply.framed(c, &generation))
                        .collect();
                    Some((frames, Some((generation, reply, answers))))
                }
                Some(Err(error)) => Some((vec![error_event(&error), done_event()], None)),
                None => {
                    let answers = answers
                        .into_iter()
                        .enumerate()
                        .map(|(i, a)| (!generation.in_reasoning(i)).then_some(a))
                        .collect();
                    let consensus = match reply.vote(answers).await {
                        Ok(consensus) => consensus,
                        Err(error) => return Some((vec![error_event(&error), done_event()], None)),
                    };
                    Some((reply.closing(&generation, consensus), None))
                }
            }
        });
        sse_response(stream::iter(opening).chain(body.flat_map(stream::iter)))
    }

    /// Frames a chunk, with the usage so far when the client asked for it
    /// in every chunk.
    fn framed(&self, mut chunk: ChatCompletionChunk, generation: &Generation) -> Bytes {
        if self.continuous_usage {
            chunk.usage = Some(Some(generation.usage()));
        }
        frame(&chunk)
    }

    /// The stream's last frames: the usage chunk when asked for, carrying
    /// the vote of a consensus request (else a chunk of its own), then
    /// `[DONE]`.
    fn closing(&self, generation: &Generation, consensus: Option<ConsensusResult>) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(2);
        let last = if self.include_usage {
            Some(ChatCompletionChunk::usage_only(
                self.id.clone(),
                self.created,
                self.model.name.clone(),
                generation.usage(),
            ))
        } else {
            consensus.is_some().then(|| self.chunk_without_choices())
        };
        if let Some(mut last) = last {
            last.consensus = consensus;
            frames.push(frame(&last));
        }
        frames.push(done_event());
        frames
    }

    fn chunk_without_choices(&self) -> ChatCompletionChunk {
        ChatCompletionChunk::new(
            self.id.clone(),
            self.created,
            self.model.name.clone(),
            Vec::new(),
            false,
        )
    }
}

/// Adds streamed tool-call pieces to a choice's calls: a piece with an id
/// starts a call, the others extend the arguments of the call they name.
pub(super) fn merge_tool_calls(calls: &mut Vec<ToolCall>, pieces: Vec<DeltaToolCall>) {
    for piece in pieces {
        match piece.id {
            Some(id) => calls.push(ToolCall {
                id,
                kind: piece.kind.unwrap_or_else(|| "function".to_string()),
                function: FunctionCall {
                    name: piece.function.name.unwrap_or_default(),
                    arguments: piece.function.arguments,
                },
            }),
            None => {
                if let Some(call) = calls.get_mut(piece.index as usize) {
                    call.function.arguments.push_str(&piece.function.arguments);
                }
            }
        }
    }
}

/// Frames a chunk; the protocol types always serialize, and should one ever
/// fail the client gets an error event rather than a broken stream.
fn frame<T: serde::Serialize>(chunk: &T) -> Bytes {
    json_event(chunk).unwrap_or_else(|e| error_event(&ApiError::internal(e)))
}

fn chat_logprob(codec: &dyn PromptCodec, entry: &TokenLogprob) -> ChatTokenLogprob {
    let token = token_text(codec, entry.token);
    ChatTokenLogprob {
        bytes: Some(token.as_bytes().to_vec()),
        token,
        logprob: entry.logprob,
        top_logprobs: entry
            .top
            .iter()
            .map(|&(id, logprob)| {
                let token = token_text(codec, id);
                TopLogprob {
                    bytes: Some(token.as_bytes().to_vec()),
                    token,
                    logprob,
                }
            })
            .collect(),
    }
}
