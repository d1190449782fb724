//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};

use super::error::{ApiError, Json};
use super::protocol::{Model, ModelList};
use super::state::{AppState, ServedModel};

fn entry(model: &ServedModel) -> Model {
    Model::new(
        model.name.clone(),
        model.created,
        "r1serve".to_string(),
        u32::try_from(model.max_model_len).ok(),
    )
}

/// Handles `GET /v1/models`: the one served model.
pub async fn list_models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let model = state.model()?;
    Ok(Json(ModelList::new(vec![entry(&model)])))
}

/// Handles `GET /v1/models/{id}`; ids may contain `/` (`org/name`). An id
/// that does not percent-decode to UTF-8 gets a 400 in the error envelope.
pub async fn get_model(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Model>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    let model = state.model()?;
    model.check_name(Some(&id))?;
    Ok(Json(entry(&model)))
}
