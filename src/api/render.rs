//! `POST /v1/chat/completions/render` and `/v1/completions/render`: the
//! token ids the server would compute for a request, without generating,
//! as vLLM answers them. The llm-d router's tokenizer calls these to hash a
//! request's prefix blocks exactly as the replica will, for prefix-aware
//! routing.
//!
//! The prompt comes from the same functions the generating routes use
//! ([`chat_prompt`], [`completion_prompt`]), and the request is checked as
//! they check it (token limits included), so a request renders exactly
//! when it would be accepted, and to the ids it would be run on.

use axum::extract::State;
use serde::Serialize;

use super::chat::chat_prompt;
use super::completions::{completion_prompt, DEFAULT_MAX_TOKENS};
use super::error::{ApiError, Json};
use super::generation::sampling_params;
use super::protocol::{
    chat_completion_id, completion_id, ChatCompletionRequest, CompletionRequest,
};
use super::state::AppState;
use crate::types::TokenId;

/// A rendered request, in the fields of vLLM's `GenerateRequest` that a
/// text-only prompt fills. vLLM also echoes its own `sampling_params`,
/// which are vLLM's internal form and are left out here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RenderResponse {
    /// A fresh id in the form the generating route would use.
    pub request_id: String,
    /// The prompt's token ids.
    pub token_ids: Vec<TokenId>,
    /// Multimodal features; always `null` for these text-only models.
    pub features: Option<()>,
    /// The served model's name.
    pub model: String,
    /// Whether the request asked for a stream.
    pub stream: bool,
}

/// Handles `POST /v1/chat/completions/render`.
pub async fn render_chat(
    State(state): State<AppState>,
    Json(request): Json<ChatCompletionRequest>,
) -> Result<Json<RenderResponse>, ApiError> {
    let model = state.model()?;
    model.check_name(request.model.as_deref())?;
    let chat = request.validate()?;
    let kwargs = request.chat_template_kwargs.unwrap_or_default();
    let (_, token_ids) = chat_prompt(&state, &model, &chat, kwargs).await?;
    sampling_params(&model, &chat.params, token_ids.len(), None)?;
    Ok(Json(RenderResponse {
        request_id: chat_completion_id(),
        token_ids,
        features: None,
        model: model.name.clone(),
        stream: chat.params.stream,
    }))
}

/// Handles `POST /v1/completions/render`: a list, as vLLM answers, with
/// one entry per prompt of the request.
pub async fn render_completion(
    State(state): State<AppState>,
    Json(request): Json<CompletionRequest>,
) -> Result<Json<Vec<RenderResponse>>, ApiError> {
    let model = state.model()?;
    model.check_name(request.model.as_deref())?;
    let completion = request.validate()?;
    let mut rendered = Vec::with_capacity(completion.prompts.len());
    for prompt in completion.prompts {
        let (_, token_ids) = completion_prompt(&state, &model, prompt, false).await?;
        sampling_params(
            &model,
            &completion.params,
            token_ids.len(),
            Some(DEFAULT_MAX_TOKENS),
        )?;
        rendered.push(RenderResponse {
            request_id: completion_id(),
            token_ids,
            features: None,
            model: model.name.clone(),
            stream: completion.params.stream,
        });
    }
    Ok(Json(rendered))
}
