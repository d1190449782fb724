//! `POST /v1/completions`: the legacy text-in, text-out route. No chat
//! template and no reasoning split: the model's raw text is the answer.
//!
//! A request may carry a batch of prompts, as OpenAI's and vLLM's route
//! takes them: each prompt is its own engine request, its `n` choices are
//! numbered from `n·i` for prompt `i` (vLLM's order), and the usage adds
//! up over all of them.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};

use super::backend::PromptCodec;
use super::error::{ApiError, Json};
use super::generation::{
    compile_constraint, encode_prompt, sampling_params, token_text, ChoiceUpdate, Generation,
};
use super::prompt_logprobs;
use super::protocol::{
    completion_id, unix_timestamp, warn_unknown_fields, CompletionChoice, CompletionChunk,
    CompletionLogprobs, CompletionRequest, CompletionResponse, Prompt, PromptLogprobs,
    TopLogprobMap, Usage,
};
use super::sse::{done_event, error_event, json_event, sse_response};
use super::state::{AppState, ServedModel};
use crate::engine::types::{PromptLogprob, TokenLogprob};
use crate::tools::{ToolCallParser, ToolCallStream};
use crate::types::TokenId;

/// OpenAI's default `max_tokens` for legacy completions.
pub(super) const DEFAULT_MAX_TOKENS: usize = 16;

/// Handles `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    Json(request): Json<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let model = state.model()?;
    model.check_name(request.model.as_deref())?;
    let completion = request.validate()?;
    warn_unknown_fields("/v1/completions", &request.unknown);
    let n = completion.params.n;
    let grammar = match completion.constraint {
        Some(constraint) => Some(compile_constraint(&state, &model, constraint).await?),
        None => None,
    };
    // Echoed prompts with `logprobs` carry their own tokens' logprobs
    // (the engine's prompt logprobs), as vLLM returns them: how
    // lm-evaluation-harness scores a continuation.
    let echo_logprobs = completion
        .params
        .logprobs
        .filter(|_| completion.echo)
        .map(|k| k as usize);
    // Every prompt is checked before any is submitted, so a bad one in a
    // batch costs the engine nothing.
    let mut checked = Vec::with_capacity(completion.prompts.len());
    for prompt in completion.prompts {
        let (text, ids) = completion_prompt(&state, &model, prompt, completion.echo).await?;
        let mut params = sampling_params(
            &model,
            &completion.params,
            ids.len(),
            Some(DEFAULT_MAX_TOKENS),
        )?;
        params.grammar = grammar.clone();
        if let Some(k) = echo_logprobs {
            params.prompt_logprobs = Some(params.prompt_logprobs.map_or(k, |p| p.max(k)));
        }
        checked.push((text, ids, params));
    }
    let reply = Arc::new(Reply {
        state: state.clone(),
        id: completion_id(),
        created: unix_timestamp(),
        model: Arc::clone(&model),
        logprobs: completion.params.logprobs.is_some(),
        echo_logprobs,
        prompt_logprobs: completion.params.prompt_logprobs.map(|k| k as usize),
        include_usage: completion.params.include_usage,
        continuous_usage: completion.params.continuous_usage,
    });
    let tools = ToolCallStream::new(ToolCallParser::None, true);
    let mut parts = Vec::with_capacity(checked.len());
    for (i, (text, ids, params)) in checked.into_iter().enumerate() {
        let prompt_ids = match echo_logprobs {
            Some(_) => ids.clone(),
            None => Vec::new(),
        };
        let generation = Generation::submit(&model, ids, params, arrived, &tools)?;
        parts.push(Part {
            reply: Arc::clone(&reply),
            first: i as u32 * n,
            generation,
            echo: completion.echo.then_some(text),
            prompt_ids,
            offsets: vec![0; n as usize],
        });
    }
    if completion.params.stream {
        Ok(reply.stream(parts))
    } else {
        // Collected inside the handler future: when a client hangs up
        // mid-request hyper drops that future, and with it the generations,
        // which aborts the requests in the engine.
        reply.collect(parts).await
    }
}

/// The prompt of a checked completion request, its text (only when
/// `echo` needs it) and ids; shared with `/v1/completions/render`, which
/// must give the same ids. Token prompts are checked against the
/// vocabulary, and an empty prompt is refused.
pub(super) async fn completion_prompt(
    state: &AppState,
    model: &ServedModel,
    prompt: Prompt,
    echo: bool,
) -> Result<(String, Vec<TokenId>), ApiError> {
    let codec = Arc::clone(&model.codec);
    let vocab = codec.vocab_size();
    let max_model_len = model.max_model_len;
    let (prompt_text, prompt_ids) = state
        .tokenizer_work(move || match prompt {
            Prompt::Text(text) => {
                let ids = encode_prompt(codec.as_ref(), &text, true, max_model_len, "prompt")?;
                Ok((text, ids))
            }
            Prompt::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(ApiError::bad_request(
                        "prompt",
                        format!("token {bad} is outside the vocabulary of {vocab} tokens"),
                    ));
                }
                let text = if echo {
                    codec.decode(&ids, false).map_err(ApiError::internal)?
                } else {
                    String::new()
                };
                Ok((text, ids))
            }
        })
        .await?;
    if prompt_ids.is_empty() {
        return Err(ApiError::bad_request(
            "prompt",
            "'prompt' must not be empty",
        ));
    }
    Ok((prompt_text, prompt_ids))
}

/// What every part of one reply shares.
struct Reply {
    state: AppState,
    id: String,
    created: u64,
    model: Arc<ServedModel>,
    logprobs: bool,
    /// `Some(k)`: echoed prompts carry their logprobs, `k` alternatives a
    /// token.
    echo_logprobs: Option<usize>,
    /// The client's `prompt_logprobs`, which `echo_logprobs` may exceed in
    /// what the engine computes.
    prompt_logprobs: Option<usize>,
    include_usage: bool,
    /// Every chunk carries its prompt's usage so far.
    continuous_usage: bool,
}

/// One prompt of a request: its engine request and its choices' state.
struct Part {
    reply: Arc<Reply>,
    /// The index of its first choice.
    first: u32,
    generation: Generation,
    /// The prompt text, when echoed.
    echo: Option<String>,
    /// The prompt's ids, kept only when its echo carries logprobs.
    prompt_ids: Vec<TokenId>,
    /// Characters of text each choice has returned so far, for
    /// `text_offset`.
    offsets: Vec<u32>,
}

/// What the stream of one part yields.
enum PartEvent {
    Frames(Vec<Bytes>),
    Finished(Usage),
    Failed(ApiError),
}

impl Reply {
    fn codec(&self) -> &dyn PromptCodec {
        self.model.codec.as_ref()
    }

    /// The echoed prompt's logprobs: `null` for its first token (nothing
    /// predicts it), then each token's own logprob, and as alternatives
    /// the `k` most likely tokens together with the token itself, as vLLM
    /// returns them (so a client can tell whether the prompt was the
    /// greedy continuation); and the characters of the prompt's token
    /// texts, where the generated tokens' `text_offset` continues. Every
    /// prompt token's text is decoded, so this runs off the async threads.
    async fn echoed(
        &self,
        ids: Vec<TokenId>,
        entries: Vec<PromptLogprob>,
        k: usize,
    ) -> Result<(CompletionLogprobs, u32), ApiError> {
        let codec = Arc::clone(&self.model.codec);
        self.state
            .tokenizer_work(move || {
                let codec: &dyn PromptCodec = codec.as_ref();
                let mut logprobs = CompletionLogprobs::default();
                let mut offset = 0u32;
                for (i, &id) in ids.iter().enumerate() {
                    let token = token_text(codec, id);
                    logprobs.text_offset.push(offset);
                    offset = offset.saturating_add(token.chars().count() as u32);
                    let entry = i.checked_sub(1).and_then(|j| entries.get(j));
                    logprobs.token_logprobs.push(entry.map(|e| e.logprob));
                    logprobs.top_logprobs.push(entry.map(|e| {
                        let mut top: Vec<(String, f32)> = e
                            .top
                            .iter()
                            .take(k)
                            .map(|&(id, logprob)| (token_text(codec, id), logprob))
                            .collect();
                        if !top.iter().any(|(text, _)| *text == token) {
                            top.push((token.clone(), e.logprob));
                        }
                        TopLogprobMap(top)
                    }));
                    logprobs.tokens.push(token);
                }
                Ok((logprobs, offset))
            })
            .await
    }

    /// The prompt's logprobs in vLLM's `prompt_logprobs` field, with the
    /// alternatives the client asked for there: fewer than the engine
    /// computed when an echo with more `logprobs` raised its count.
    fn prompt_logprobs_field(&self, entries: &[PromptLogprob]) -> Option<PromptLogprobs> {
        let k = self.prompt_logprobs?;
        if self.echo_logprobs.is_none_or(|echo| echo <= k) {
            return Some(prompt_logprobs::wire(self.codec(), entries));
        }
        let entries: Vec<PromptLogprob> = entries
            .iter()
            .map(|e| PromptLogprob {
                top: e.top[..k.min(e.top.len())].to_vec(),
                ..*e
            })
            .collect();
        Some(prompt_logprobs::wire(self.codec(), &entries))
    }

    /// One choice's chunk; `usage` fills its usage field (continuous
    /// usage).
    fn chunk(&self, choice: CompletionChoice, usage: Option<Usage>) -> Bytes {
        let mut chunk = CompletionChunk::new(
            self.id.clone(),
            self.created,
            self.model.name.clone(),
            vec![choice],
            self.include_usage,
        );
        if usage.is_some() {
            chunk.usage = Some(usage);
        }
        json_event(&chunk).unwrap_or_else(|e| error_event(&ApiError::internal(e)))
    }

    async fn collect(self: Arc<Self>, parts: Vec<Part>) -> Result<Response, ApiError> {
        let done = futures::future::try_join_all(parts.into_iter().map(Part::collect)).await?;
        let mut choices = Vec::new();
        let mut usages = Vec::new();
        for (part_choices, usage) in done {
            choices.extend(part_choices);
            usages.push(usage);
        }
        let response = CompletionResponse::new(
            self.id.clone(),
            self.created,
            self.model.name.clone(),
            choices,
            usages.into_iter().sum(),
        );
        Ok(Json(response).into_response())
    }

    fn stream(self: Arc<Self>, parts: Vec<Part>) -> Response {
        let events = stream::select_all(parts.into_iter().map(|p| Box::pin(p.events())));
        // Owning the parts' streams in the body's state ties the engine
        // requests to the response body: a dropped body aborts them all.
        let body = stream::unfold(Some((events, Vec::new())), move |state| {
            let reply = Arc::clone(&self);
            async move {
                let (mut events, mut usages) = state?;
                loop {
                    match events.next().await {
                        Some(PartEvent::Frames(frames)) => {
                            return Some((frames, Some((events, usages))));
                        }
                        Some(PartEvent::Finished(usage)) => usages.push(usage),
                        Some(PartEvent::Failed(error)) => {
                            return Some((vec![error_event(&error), done_event()], None));
                        }
                        None => {
                            let mut frames = Vec::with_capacity(2);
                            if reply.include_usage {
                                let chunk = CompletionChunk::usage_only(
                                    reply.id.clone(),
                                    reply.created,
                                    reply.model.name.clone(),
                                    usages.into_iter().sum(),
                                );
                                frames.push(
                                    json_event(&chunk)
                                        .unwrap_or_else(|e| error_event(&ApiError::internal(e))),
                                );
                            }
                            frames.push(done_event());
                            return Some((frames, None));
                        }
                    }
                }
            }
        });
        sse_response(body.flat_map(stream::iter))
    }
}

impl Part {
    /// The reply's `choices` index of this part's choice `index`.
    fn index(&self, index: u32) -> u32 {
        self.first + index
    }

    fn logprobs(&mut self, index: u32, entries: &[TokenLogprob]) -> Option<CompletionLogprobs> {
        if !self.reply.logprobs {
            return None;
        }
        let codec = self.reply.codec();
        let mut logprobs = CompletionLogprobs::default();
        let offset = self.offsets.get_mut(index as usize)?;
        for entry in entries {
            let token = token_text(codec, entry.token);
            logprobs.text_offset.push(*offset);
            *offset = offset.saturating_add(token.chars().count() as u32);
            logprobs.tokens.push(token);
            logprobs.token_logprobs.push(Some(entry.logprob));
            logprobs.top_logprobs.push(Some(TopLogprobMap(
                entry
                    .top
                    .iter()
                    .map(|&(id, logprob)| (token_text(codec, id), logprob))
                    .collect(),
            )));
        }
        Some(logprobs)
    }

    /// The echoed prompt's logprobs and where the generated tokens'
    /// offsets continue, for requests with `echo` and `logprobs`, once the
    /// engine has sent the prompt's `entries`.
    async fn echo_logprobs(
        &mut self,
        entries: Option<Vec<PromptLogprob>>,
    ) -> Result<Option<(CompletionLogprobs, u32)>, ApiError> {
        let Some(k) = self.reply.echo_logprobs else {
            return Ok(None);
        };
        let ids = std::mem::take(&mut self.prompt_ids);
        let echoed = self.reply.echoed(ids, entries.unwrap_or_default(), k);
        Ok(Some(echoed.await?))
    }

    async fn collect(mut self) -> Result<(Vec<CompletionChoice>, Usage), ApiError> {
        let n = self.offsets.len() as u32;
        let mut choices: Vec<CompletionChoice> = (0..n)
            .map(|index| CompletionChoice {
                index: self.index(index),
                text: self.echo.clone().unwrap_or_default(),
                logprobs: self.reply.logprobs.then(CompletionLogprobs::default),
                prompt_logprobs: None,
                finish_reason: None,
                stop_reason: None,
            })
            .collect();
        while let Some(updates) = self.generation.next().await {
            for update in updates? {
                let logprobs = self.logprobs(update.index, &update.logprobs);
                let Some(choice) = choices.get_mut(update.index as usize) else {
                    continue;
                };
                choice.text.push_str(&update.content);
                choice.finish_reason = update.finish_reason;
                choice.stop_reason = update.stop_reason;
                if let (Some(all), Some(new)) = (choice.logprobs.as_mut(), logprobs) {
                    append(all, new);
                }
            }
        }
        let entries = self.generation.take_prompt_logprobs();
        let field = entries
            .as_deref()
            .and_then(|e| self.reply.prompt_logprobs_field(e));
        if let Some((echoed, end)) = self.echo_logprobs(entries).await? {
            for choice in &mut choices {
                let generated = choice.logprobs.replace(echoed.clone());
                if let (Some(all), Some(mut generated)) = (choice.logprobs.as_mut(), generated) {
                    for offset in &mut generated.text_offset {
                        *offset = offset.saturating_add(end);
                    }
                    append(all, generated);
                }
            }
        }
        if let Some(wire) = field {
            for choice in &mut choices {
                choice.prompt_logprobs = Some(wire.clone());
            }
        }
        Ok((choices, self.generation.usage()))
    }

    /// One of this part's chunks, with its usage so far when the client
    /// asked for it in every chunk.
    fn chunk(&self, choice: CompletionChoice) -> Bytes {
        let usage = self.reply.continuous_usage.then(|| self.generation.usage());
        self.reply.chunk(choice, usage)
    }

    /// The frame for one update, or `None` when it carries nothing.
    fn update_frame(&mut self, update: ChoiceUpdate) -> Option<Bytes> {
        if update.content.is_empty() && update.logprobs.is_empty() && update.finish_reason.is_none()
        {
            return None;
        }
        let logprobs = self.logprobs(update.index, &update.logprobs);
        Some(self.chunk(CompletionChoice {
            index: self.index(update.index),
            text: update.content,
            logprobs,
            prompt_logprobs: None,
            finish_reason: update.finish_reason,
            stop_reason: update.stop_reason,
        }))
    }

    /// Each choice's echo chunk: the prompt text, with `logprobs` when
    /// asked for.
    fn echo_frames(&self, logprobs: Option<CompletionLogprobs>) -> Vec<Bytes> {
        let Some(prompt) = &self.echo else {
            return Vec::new();
        };
        (0..self.offsets.len() as u32)
            .map(|index| {
                self.chunk(CompletionChoice {
                    index: self.index(index),
                    text: prompt.clone(),
                    logprobs: logprobs.clone(),
                    prompt_logprobs: None,
                    finish_reason: None,
                    stop_reason: None,
                })
            })
            .collect()
    }

    /// The echo chunks once the engine has sent the prompt's logprobs,
    /// ahead of the first generated text, whose offsets then continue
    /// after the prompt's.
    async fn echo_with_logprobs(&mut self) -> Result<Vec<Bytes>, ApiError> {
        let entries = self.generation.take_prompt_logprobs();
        let Some((logprobs, end)) = self.echo_logprobs(entries).await? else {
            return Ok(Vec::new());
        };
        for offset in &mut self.offsets {
            *offset = offset.saturating_add(end);
        }
        Ok(self.echo_frames(Some(logprobs)))
    }

    /// The part's frames as the engine produces them, then its usage. An
    /// echo goes first: at once, or with its logprobs once the engine has
    /// computed them, ahead of the first generated text.
    fn events(self) -> impl futures::Stream<Item = PartEvent> {
        let with_logprobs = self.reply.echo_logprobs.is_some();
        let opening = if with_logprobs {
            Vec::new()
        } else {
            self.echo_frames(None)
        };
        let mut echo_pending = self.echo.is_some() && with_logprobs;
        let body = stream::unfold(Some(self), move |state| {
            let pending = std::mem::take(&mut echo_pending);
            async move {
                let mut part = state?;
                match part.generation.next().await {
                    Some(Ok(updates)) => {
                        let mut frames = Vec::new();
                        if pending {
                            match part.echo_with_logprobs().await {
                                Ok(echo) => frames = echo,
                                Err(error) => return Some((PartEvent::Failed(error), None)),
                            }
                        }
                        frames.extend(updates.into_iter().filter_map(|u| part.update_frame(u)));
                        Some((PartEvent::Frames(frames), Some(part)))
                    }
                    Some(Err(error)) => Some((PartEvent::Failed(error), None)),
                    None => {
                        let usage = part.generation.usage();
                        Some((PartEvent::Finished(usage), None))
                    }
                }
            }
        });
        stream::iter((!opening.is_empty()).then(|| PartEvent::Frames(opening))).chain(body)
    }
}

fn append(all: &mut CompletionLogprobs, new: CompletionLogprobs) {
    all.tokens.extend(new.tokens);
    all.token_logprobs.extend(new.token_logprobs);
    all.top_logprobs.extend(new.top_logprobs);
    all.text_offset.extend(new.text_offset);
}
