//! `POST /tokenize` and `POST /detokenize`, in vLLM's shapes, for clients
//! that budget context or debug templates.

use std::sync::Arc;

use axum::extract::State;

use super::error::{ApiError, Json};
use super::generation::{encode_chat_prompt, encode_prompt};
use super::protocol::{
    chat_ending, text_messages, validate_template_kwargs, validate_tools, DetokenizeRequest,
    DetokenizeResponse, TokenizeRequest, TokenizeResponse,
};
use super::state::AppState;

/// Handles `POST /tokenize`: a prompt, or messages rendered with the chat
/// template exactly as `/v1/chat/completions` would.
pub async fn tokenize(
    State(state): State<AppState>,
    Json(request): Json<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let model = state.model()?;
    let codec = Arc::clone(&model.codec);
    let tokens = match request {
        TokenizeRequest::Chat(chat) => {
            model.check_name(chat.model.as_deref())?;
            validate_template_kwargs(chat.chat_template_kwargs.as_ref())?;
            let messages = text_messages(&chat.messages)?;
            let ending = chat_ending(
                chat.add_generation_prompt,
                chat.continue_final_message,
                &messages,
            )?;
            let messages = serde_json::to_value(messages).map_err(ApiError::internal)?;
            let tools = validate_tools(chat.tools.as_ref(), None, None)?
                .map(|tools| serde_json::Value::Array(tools.definitions));
            let kwargs = chat.chat_template_kwargs.unwrap_or_default();
            let max_model_len = model.max_model_len;
            state
                .tokenizer_work(move || {
                    encode_chat_prompt(
                        codec.as_ref(),
                        &messages,
                        ending,
                        tools.as_ref(),
                        &kwargs,
                        chat.add_special_tokens,
                        max_model_len,
                    )
                    .map(|prompt| prompt.ids)
                })
                .await?
        }
        TokenizeRequest::Text(text) => {
            model.check_name(text.model.as_deref())?;
            let max_model_len = model.max_model_len;
            state
                .tokenizer_work(move || {
                    encode_prompt(
                        codec.as_ref(),
                        &text.prompt,
                        text.add_special_tokens,
                        max_model_len,
                        "prompt",
                    )
                })
                .await?
        }
    };
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: model.max_model_len,
        tokens,
    }))
}

/// Handles `POST /detokenize`. Special tokens are kept, so the text shows
/// exactly what the ids are.
pub async fn detokenize(
    State(state): State<AppState>,
    Json(request): Json<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let model = state.model()?;
    model.check_name(request.model.as_deref())?;
    let vocab = model.codec.vocab_size();
    if let Some(bad) = request.tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::bad_request(
            "tokens",
            format!("token {bad} is outside the vocabulary of {vocab} tokens"),
        ));
    }
    let codec = Arc::clone(&model.codec);
    let prompt = state
        .tokenizer_work(move || {
            codec
                .decode(&request.tokens, false)
                .map_err(ApiError::internal)
        })
        .await?;
    Ok(Json(DetokenizeResponse { prompt }))
}
