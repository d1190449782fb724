//! `POST /v1/completions`: the legacy text-in, text-out route. No chat
//! template and no reasoning split: the model's raw text is the answer.

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
    CompletionLogprobs, CompletionRequest, CompletionResponse, Prompt, TopLogprobMap,
};
use super::sse::{done_event, error_event, json_event, sse_response};
use super::state::{AppState, ServedModel};
use crate::engine::types::TokenLogprob;
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
    if completion.echo && completion.params.logprobs.is_some() {
        // Echoed prompt tokens would need prompt logprobs, which the engine
        // does not compute.
        return Err(ApiError::bad_request(
            "echo",
            "'echo' together with 'logprobs' is not supported",
        ));
    }
    let (prompt_text, prompt_ids) =
        completion_prompt(&state, &model, completion.prompt, completion.echo).await?;
    let mut params = sampling_params(
        &model,
        &completion.params,
        prompt_ids.len(),
        Some(DEFAULT_MAX_TOKENS),
    )?;
    if let Some(constraint) = completion.constraint {
        params.grammar = Some(compile_constraint(&state, &model, constraint).await?);
    }
    let generation = Generation::submit(
        &model,
        prompt_ids,
        params,
        arrived,
        &ToolCallStream::new(ToolCallParser::None, true),
    )?;
    let reply = Reply {
        id: completion_id(),
        created: unix_timestamp(),
        model,
        echo: completion.echo.then_some(prompt_text),
        logprobs: completion.params.logprobs.is_some(),
        include_usage: completion.params.include_usage,
        offsets: vec![0; completion.params.n as usize],
    };
    if completion.params.stream {
        Ok(reply.stream(generation, completion.params.n))
    } else {
        // Collected inside the handler future: when a client hangs up
        // mid-request hyper drops that future, and with it the generation,
        // which aborts the request in the engine.
        reply.collect(generation, completion.params.n).await
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
    id: String,
    created: u64,
    model: Arc<ServedModel>,
    echo: Option<String>,
    logprobs: bool,
    include_usage: bool,
    /// Characters of text each choice has returned so far, for
    /// `text_offset`.
    offsets: Vec<u32>,
}

impl Reply {
    fn logprobs(&mut self, index: u32, entries: &[TokenLogprob]) -> Option<CompletionLogprobs> {
        if !self.logprobs {
            return None;
        }
        let codec: &dyn PromptCodec = self.model.codec.as_ref();
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

    async fn collect(mut self, mut generation: Generation, n: u32) -> Result<Response, ApiError> {
        let echo = self.echo.clone().unwrap_or_default();
        let mut choices: Vec<CompletionChoice> = (0..n)
            .map(|index| CompletionChoice {
                index,
                text: echo.clone(),
                logprobs: self.logprobs.then(CompletionLogprobs::default),
                prompt_logprobs: None,
                finish_reason: None,
                stop_reason: None,
            })
            .collect();
        while let Some(updates) = generation.next().await {
            for update in updates? {
                let logprobs = self.logprobs(update.index, &update.logprobs);
                let Some(choice) = choices.get_mut(update.index as usize) else {
                    continue;
                };
                choice.text.push_str(&update.content);
                choice.finish_reason = update.finish_reason;
                choice.stop_reason = update.stop_reason;
                if let (Some(all), Some(new)) = (choice.logprobs.as_mut(), logprobs) {
                    all.tokens.extend(new.tokens);
                    all.token_logprobs.extend(new.token_logprobs);
                    all.top_logprobs.extend(new.top_logprobs);
                    all.text_offset.extend(new.text_offset);
                }
            }
        }
        if let Some(entries) = generation.take_prompt_logprobs() {
            let wire = prompt_logprobs::wire(self.model.codec.as_ref(), &entries);
            for choice in &mut choices {
                choice.prompt_logprobs = Some(wire.clone());
            }
        }
        let response = CompletionResponse::new(
            self.id,
            self.created,
            self.model.name.clone(),
            choices,
            generation.usage(),
        );
        Ok(Json(response).into_response())
    }

    fn chunk(&self, choice: CompletionChoice) -> Bytes {
        let chunk = CompletionChunk::new(
            self.id.clone(),
            self.created,
            self.model.name.clone(),
            vec![choice],
            self.include_usage,
        );
        json_event(&chunk).unwrap_or_else(|e| error_event(&ApiError::internal(e)))
    }

    /// The frame for one update, or `None` when it carries nothing.
    fn update_frame(&mut self, update: ChoiceUpdate) -> Option<Bytes> {
        if update.content.is_empty() && update.logprobs.is_empty() && update.finish_reason.is_none()
        {
            return None;
        }
        let logprobs = self.logprobs(update.index, &update.logprobs);
        Some(self.chunk(CompletionChoice {
            index: update.index,
            text: update.content,
            logprobs,
            prompt_logprobs: None,
            finish_reason: update.finish_reason,
            stop_reason: update.stop_reason,
        }))
    }

    fn stream(self, generation: Generation, n: u32) -> Response {
        let opening: Vec<Bytes> = match &self.echo {
            Some(prompt) => (0..n)
                .map(|index| {
                    self.chunk(CompletionChoice {
                        index,
                        text: prompt.clone(),
                        logprobs: None,
                        prompt_logprobs: None,
                        finish_reason: None,
                        stop_reason: None,
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        // Owning the generation in the stream state ties the engine request
        // to the response body: a dropped body aborts it.
        let body = stream::unfold(Some((generation, self)), |state| async move {
            let (mut generation, mut reply) = state?;
            match generation.next().await {
                Some(Ok(updates)) => {
                    let frames: Vec<Bytes> = updates
                        .into_iter()
                        .filter_map(|u| reply.update_frame(u))
                        .collect();
                    Some((frames, Some((generation, reply))))
                }
                Some(Err(error)) => Some((vec![error_event(&error), done_event()], None)),
                None => {
                    let mut frames = Vec::with_capacity(2);
                    if reply.include_usage {
                        let chunk = CompletionChunk::usage_only(
                            reply.id.clone(),
                            reply.created,
                            reply.model.name.clone(),
                            generation.usage(),
                        );
                        frames.push(
                            json_event(&chunk)
                                .unwrap_or_else(|e| error_event(&ApiError::internal(e))),
                        );
                    }
                    frames.push(done_event());
                    Some((frames, None))
                }
            }
        });
        sse_response(stream::iter(opening).chain(body.flat_map(stream::iter)))
    }
}
