//! `POST /v1/chat/completions`: template the conversation, generate, split
//! the output into `reasoning_content` and `content`, and answer as one JSON
//! body or as OpenAI's chunk stream.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};

use super::backend::PromptCodec;
use super::error::{ApiError, Json};
use super::generation::{encode_prompt, sampling_params, token_text, ChoiceUpdate, Generation};
use super::protocol::{
    chat_completion_id, unix_timestamp, AssistantMessage, ChatChoice, ChatCompletionChunk,
    ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs, ChatTokenLogprob, ChunkChoice,
    Delta, Role, TopLogprob,
};
use super::sse::{done_event, error_event, json_event, sse_response};
use super::state::{AppState, ServedModel};
use crate::engine::types::TokenLogprob;
use crate::reasoning::{prompt_opens_reasoning, ReasoningParser};

/// Handles `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    Json(request): Json<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let model = state.model()?;
    model.check_name(request.model.as_deref())?;
    let chat = request.validate()?;
    let messages = serde_json::to_value(&chat.messages).map_err(ApiError::internal)?;
    let kwargs = request.chat_template_kwargs.unwrap_or_default();
    let codec = Arc::clone(&model.codec);
    let max_model_len = model.max_model_len;
    let (prompt, prompt_ids) = state
        .tokenizer_work(move || {
            let prompt = codec.render_chat(&messages, true, &kwargs).map_err(|e| {
                ApiError::bad_request("messages", format!("chat template error: {e}"))
            })?;
            // The template already wrote BOS and every special token.
            let ids = encode_prompt(codec.as_ref(), &prompt, false, max_model_len, "messages")?;
            Ok((prompt, ids))
        })
        .await?;
    let params = sampling_params(&model, &chat.params, prompt_ids.len(), None)?;
    let starts_in_reasoning =
        model.reasoning == ReasoningParser::DeepSeekR1 && prompt_opens_reasoning(&prompt);
    let generation = Generation::submit(
        &model,
        prompt_ids,
        params,
        arrived,
        model.reasoning,
        starts_in_reasoning,
    )?;
    let reply = Reply {
        id: chat_completion_id(),
        created: unix_timestamp(),
        model,
        include_reasoning: chat.include_reasoning,
        logprobs: chat.params.logprobs.is_some(),
        include_usage: chat.params.include_usage,
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

/// What every part of one reply shares.
struct Reply {
    id: String,
    created: u64,
    model: Arc<ServedModel>,
    include_reasoning: bool,
    logprobs: bool,
    include_usage: bool,
}

impl Reply {
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

    async fn collect(self, mut generation: Generation, n: u32) -> Result<Response, ApiError> {
        let mut reasoning = vec![String::new(); n as usize];
        let mut content = vec![String::new(); n as usize];
        let mut logprobs = vec![Vec::new(); n as usize];
        let mut finish = vec![None; n as usize];
        while let Some(updates) = generation.next().await {
            for update in updates? {
                let i = update.index as usize;
                if let (Some(r), Some(c), Some(l), Some(f)) = (
                    reasoning.get_mut(i),
                    content.get_mut(i),
                    logprobs.get_mut(i),
                    finish.get_mut(i),
                ) {
                    r.push_str(&update.reasoning);
                    c.push_str(&update.content);
                    l.extend(update.logprobs);
                    *f = update.finish_reason;
                }
            }
        }
        let choices = (0..n as usize)
            .map(|i| ChatChoice {
                index: i as u32,
                message: AssistantMessage {
                    role: Role::Assistant,
                    content: (!generation.in_reasoning(i)).then(|| std::mem::take(&mut content[i])),
                    reasoning_content: (self.include_reasoning && !reasoning[i].is_empty())
                        .then(|| std::mem::take(&mut reasoning[i])),
                },
                logprobs: self.logprobs(&logprobs[i]),
                finish_reason: finish[i],
            })
            .collect();
        let response = ChatCompletionResponse::new(
            self.id,
            self.created,
            self.model.name.clone(),
            choices,
            generation.usage(),
        );
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
        let delta = Delta {
            role: None,
            content: (!update.content.is_empty()).then_some(update.content),
            reasoning_content: (self.include_reasoning && !update.reasoning.is_empty())
                .then_some(update.reasoning),
        };
        let empty = delta.content.is_none()
            && delta.reasoning_content.is_none()
            && update.logprobs.is_empty()
            && update.finish_reason.is_none();
        (!empty).then(|| {
            self.chunk(ChunkChoice {
                index: update.index,
                logprobs: self.logprobs(&update.logprobs),
                delta,
                finish_reason: update.finish_reason,
            })
        })
    }

    fn stream(self, generation: Generation, n: u32) -> Response {
        // OpenAI opens each choice with the role and an empty content.
        let opening: Vec<Bytes> = (0..n)
            .map(|index| {
                frame(&self.chunk(ChunkChoice {
                    index,
                    delta: Delta {
                        role: Some(Role::Assistant),
                        content: Some(String::new()),
                        reasoning_content: None,
                    },
                    logprobs: None,
                    finish_reason: None,
                }))
            })
            .collect();
        // The generation lives in the stream state, so when axum drops the
        // body of a disconnected client the engine request goes with it.
        let body = stream::unfold(Some((generation, self)), |state| async move {
            let (mut generation, reply) = state?;
            match generation.next().await {
                Some(Ok(updates)) => {
                    let frames: Vec<Bytes> = updates
                        .into_iter()
                        .filter_map(|u| reply.update_chunk(u))
                        .map(|c| frame(&c))
                        .collect();
                    Some((frames, Some((generation, reply))))
                }
                Some(Err(error)) => Some((vec![error_event(&error), done_event()], None)),
                None => {
                    let mut frames = Vec::with_capacity(2);
                    if reply.include_usage {
                        frames.push(frame(&ChatCompletionChunk::usage_only(
                            reply.id.clone(),
                            reply.created,
                            reply.model.name.clone(),
                            generation.usage(),
                        )));
                    }
                    frames.push(done_event());
                    Some((frames, None))
                }
            }
        });
        sse_response(stream::iter(opening).chain(body.flat_map(stream::iter)))
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
