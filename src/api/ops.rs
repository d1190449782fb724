//! Operational routes: `GET /health` for load balancers and `GET /metrics`
//! for Prometheus.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::state::AppState;

/// Handles `GET /health`: 200 once the model is loaded and while its engine
/// runs, 503 before and after, so an orchestrator only routes traffic to a
/// ready replica.
pub async fn health(State(state): State<AppState>) -> StatusCode {
    if state.healthy_model().is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Handles `GET /metrics` in the Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let model = state.try_model();
    let engine = model
        .as_deref()
        .map(|model| (model.name.as_str(), model.engine.stats()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics().render(engine),
    )
        .into_response()
}
