//! The route table and the middleware stack around it.
//!
//! Outermost first: request id (taken from `x-request-id` or minted) →
//! tracing span carrying it → id echoed on the response → CORS → URI length
//! → API-key check (every path but `/health`, unknown ones included, so
//! routes cannot be enumerated without a key) → body limit and read timeout
//! → handler. Every error the stack itself produces (404, 405, 408, 413, 414)
//! carries the OpenAI envelope.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use super::error::ApiError;
use super::state::AppState;
use super::{chat, completions, models, ops, render, responses, tokenize};

/// Header carrying the request id in both directions.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How long browsers may cache a CORS preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// Longest accepted request target. No route needs more than a model id;
/// nginx's default header buffers allow 8 KiB too. hyper itself answers
/// longer ones, beyond 64 KiB, with a bare 414 before any of this runs.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The one path served without an API key, for load balancers.
const HEALTH: &str = "/health";

/// HTTP-level settings of the router.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Origins allowed by CORS; `*` allows any; empty disables CORS headers.
    pub allowed_origins: Vec<String>,
    /// Longest wait for the next piece of a request body (nginx's
    /// `client_body_timeout`); the request then fails with 408.
    pub body_timeout: Duration,
}

/// Builds the complete application: routes, auth and middleware.
pub fn router(state: AppState, config: &RouterConfig) -> Router {
    let routes = Router::new()
        .route(HEALTH, get(ops::health))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/chat/completions/render", post(render::render_chat))
        .route("/v1/completions/render", post(render::render_completion))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{*id}", get(models::get_model))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
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
                })
                .on_failure(log_failure),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(cors(&config.allowed_origins))
        .layer(middleware::from_fn(limit_uri))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .layer(middleware::map_response(json_payload_too_large))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(RequestBodyTimeoutLayer::new(config.body_timeout));
    routes
        // The tower layer enforces the limit (also on bodies without a
        // Content-Length); axum's own 2 MB default would undercut it.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware)
        .with_state(state)
}

/// Logs a 5xx the way an operator wants it: a 503 is the server saying
/// "not now" (loading, overloaded, draining), expected and retried, so it
/// is no error; anything else is. Handlers log the cause of their 500s.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _span: &Span) {
    match class {
        ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::debug!(?latency, "answered 503");
        }
        class => tracing::error!(%class, ?latency, "response failed"),
    }
}

/// Refuses request targets over [`MAX_URI_BYTES`] with a 414.
async fn limit_uri(request: Request, next: Next) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if length > MAX_URI_BYTES {
        return ApiError::uri_too_long(MAX_URI_BYTES).into_response();
    }
    next.run(request).await
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

/// Rejects requests to any path but `/health` without a configured key as
/// `Authorization: Bearer` (the scheme name is case-insensitive, RFC 9110
/// §11.1). CORS preflights never reach here: the CORS layer answers them.
async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.requires_key() || request.uri().path() == HEALTH {
        return next.run(request).await;
    }
    let key = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
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

/// The credentials of a `Bearer` authorization value.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::method_not_allowed(request.method().as_str(), request.uri().path())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "No route for {} {}",
        request.method(),
        request.uri().path()
    ))
}
