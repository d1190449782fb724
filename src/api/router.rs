//! The route table and the middleware stack around it.
//!
//! Outermost first: request id (taken from `x-request-id` or minted) →
//! tracing span carrying it → id echoed on the response → CORS → body limit
//! → API-key check (every route but `/health`) → handler.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use super::error::ApiError;
use super::state::AppState;
use super::{chat, completions, models, ops, tokenize};

/// Header carrying the request id in both directions.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How long browsers may cache a CORS preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// HTTP-level settings of the router.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Origins allowed by CORS; `*` allows any; empty disables CORS headers.
    pub allowed_origins: Vec<String>,
}

/// Builds the complete application: routes, auth and middleware.
pub fn router(state: AppState, config: &RouterConfig) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{*id}", get(models::get_model))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    uri = %request.uri().path(),
                    request_id = %id,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(cors(&config.allowed_origins))
        .layer(middleware::map_response(json_payload_too_large))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes));
    Router::new()
        .route("/health", get(ops::health))
        .merge(protected)
        // The tower layer enforces the limit (also on bodies without a
        // Content-Length); axum's own 2 MB default would undercut it.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware)
        .with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| match HeaderValue::from_str(o) {
                    Ok(value) => Some(value),
                    Err(_) => {
                        tracing::warn!(origin = %o, "ignoring an allowed origin that is not a valid header value");
                        None
                    }
                }),
        )
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, REQUEST_ID])
        .expose_headers([REQUEST_ID])
        .max_age(CORS_MAX_AGE)
}

/// Rejects requests without a configured key as `Authorization: Bearer`.
async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.requires_key() {
        return next.run(request).await;
    }
    let key = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match key {
        Some(key) if state.key_is_valid(key) => next.run(request).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

/// Gives the body limit's plain-text 413 the OpenAI error envelope, and
/// tells the client the connection ends: the rest of the oversized body is
/// never read, so a client reusing the connection would see it cut off.
async fn json_payload_too_large<B>(response: axum::http::Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response.map(axum::body::Body::new);
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let mut response = if is_json {
        response.map(axum::body::Body::new)
    } else {
        ApiError::payload_too_large().into_response()
    };
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "No route for {} {}",
        request.method(),
        request.uri().path()
    ))
}
