//! OpenAI's error envelope and the JSON extractor that reports malformed
//! bodies in it.
//!
//! Every failure a client can see is an [`ApiError`], rendered as
//! `{"error": {"message", "type", "param", "code"}}` with `param` and `code`
//! present as `null` when unset, because OpenAI SDKs read those keys
//! unconditionally.

use std::fmt;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The `type` field of an error, using the values OpenAI itself returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request cannot be served as sent (OpenAI also uses this for bad
    /// API keys and unknown models, distinguished by `code`).
    #[serde(rename = "invalid_request_error")]
    InvalidRequest,
    /// The server failed or is overloaded; retrying may succeed.
    #[serde(rename = "server_error")]
    Server,
}

impl ErrorKind {
    /// The wire name of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Server => "server_error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error returned to the client in OpenAI's envelope.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
pub struct ApiError {
    /// HTTP status of the response.
    pub status: StatusCode,
    /// Human-readable explanation, safe to show to the client.
    pub message: String,
    /// OpenAI error type.
    pub kind: ErrorKind,
    /// The request parameter at fault, e.g. `"temperature"`.
    pub param: Option<String>,
    /// Machine-readable error code, e.g. `"model_not_found"`.
    pub code: Option<String>,
    /// Seconds the client should wait before retrying; sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

/// The JSON body of an error response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error details.
    pub error: ErrorBody,
}

/// The object inside [`ErrorResponse`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human-readable explanation.
    pub message: String,
    /// OpenAI error type.
    #[serde(rename = "type")]
    pub kind: ErrorKind,
    /// The parameter at fault, `null` when none.
    pub param: Option<String>,
    /// Machine-readable code, `null` when none.
    pub code: Option<String>,
}

impl ApiError {
    /// An error with an arbitrary status and kind; prefer the named
    /// constructors.
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 for an invalid request parameter, naming the parameter.
    pub fn bad_request(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, message).with_param(param)
    }

    /// 400 for a request that is invalid as a whole rather than in one
    /// parameter (e.g. malformed JSON).
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, message)
    }

    /// 400 for an OpenAI parameter this server does not implement.
    pub fn unsupported_param(param: &str) -> Self {
        Self::bad_request(param, format!("'{param}' is not supported by this server"))
            .with_code("unsupported_parameter")
    }

    /// 401 for a missing or wrong API key. OpenAI reports this as an
    /// `invalid_request_error` with code `invalid_api_key`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::InvalidRequest,
            "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
        )
        .with_code("invalid_api_key")
    }

    /// 404 for a model name the server does not serve.
    pub fn model_not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorKind::InvalidRequest,
            format!("The model '{name}' does not exist"),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// 404 for an unknown route or resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::InvalidRequest, message)
    }

    /// 413 for a request body over the configured limit.
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::InvalidRequest,
            "Request body is too large",
        )
    }

    /// 405 for a known route called with a method it does not serve.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::InvalidRequest,
            format!("Method {method} is not allowed for {path}"),
        )
    }

    /// 408 for a request whose body stopped arriving.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorKind::InvalidRequest,
            "The request body was not received in time",
        )
    }

    /// 414 for a request target over `limit` bytes.
    pub fn uri_too_long(limit: usize) -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            ErrorKind::InvalidRequest,
            format!("The request URI is longer than {limit} bytes"),
        )
    }

    /// 503 for a connection over the server's connection limit.
    pub fn too_many_connections() -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Server,
                "The server has too many open connections, please retry later",
            )
        }
    }

    /// 503 when the engine queue is full; the client should retry after
    /// `retry_after` seconds.
    pub fn overloaded(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Server,
                "The server is currently overloaded, please retry later",
            )
        }
    }

    /// 500 with a generic message. The detail is logged, never sent, so that
    /// internal paths and state do not leak to clients.
    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!(%detail, "internal error while serving a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Server,
            "The server had an error while processing your request",
        )
    }

    /// Sets the parameter at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the machine-readable code.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// The JSON envelope, also used for errors sent inside an SSE stream.
    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorBody {
                message: self.message.clone(),
                kind: self.kind,
                param: self.param.clone(),
                code: self.code.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110 requires a challenge on every 401.
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                Self::invalid_body("Expected request with 'Content-Type: application/json'")
            }
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Self::payload_too_large()
            }
            JsonRejection::BytesRejection(_) if caused_by_timeout(&rejection) => {
                Self::request_timeout()
            }
            // axum's text already names the failing field path and position,
            // which is the precise message a client needs; 422 becomes 400
            // because OpenAI reports every malformed body as 400.
            other => Self::invalid_body(other.body_text()),
        }
    }
}

/// Whether reading the body failed because it stopped arriving (the
/// router's body read timeout), somewhere down the error's causes.
fn caused_by_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source())
        .any(|e| e.is::<tower_http::timeout::TimeoutError>())
}

/// A JSON body extractor and response type whose rejections are
/// [`ApiError`]s instead of axum's plain-text ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(value))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body};
    use serde_json::{json, Value};

    async fn render(error: ApiError) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn bad_request_envelope() {
        let (status, headers, body) = render(ApiError::bad_request("temperature", "too hot")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body,
            json!({"error": {"message": "too hot", "type": "invalid_request_error",
                             "param": "temperature", "code": null}})
        );
    }

    #[tokio::test]
    async fn absent_param_and_code_are_null() {
        let (_, _, body) = render(ApiError::invalid_body("bad")).await;
        let error = body["error"].as_object().unwrap();
        assert_eq!(error["param"], Value::Null);
        assert_eq!(error["code"], Value::Null);
        assert_eq!(error.len(), 4);
    }

    #[tokio::test]
    async fn model_not_found_matches_openai() {
        let (status, _, body) = render(ApiError::model_not_found("gpt-9")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["message"], "The model 'gpt-9' does not exist");
    }

    #[tokio::test]
    async fn unauthorized_has_challenge() {
        let (status, headers, body) = render(ApiError::unauthorized()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }

    #[tokio::test]
    async fn overloaded_sets_retry_after() {
        let (status, headers, body) = render(ApiError::overloaded(7)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "7");
        assert_eq!(body["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn internal_hides_detail() {
        let (status, _, body) = render(ApiError::internal("/secret/path: CUDA OOM")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("secret"));
    }

    #[tokio::test]
    async fn payload_too_large_and_unsupported() {
        let (status, _, _) = render(ApiError::payload_too_large()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (_, _, body) = render(ApiError::unsupported_param("tools")).await;
        assert_eq!(body["error"]["param"], "tools");
        assert_eq!(body["error"]["code"], "unsupported_parameter");
    }

    #[derive(Debug, Deserialize)]
    struct Probe {
        name: String,
    }

    async fn extract(content_type: Option<&str>, body: &str) -> Result<Json<Probe>, ApiError> {
        let mut builder = Request::builder().method("POST").uri("/");
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        let request = builder.body(Body::from(body.to_string())).unwrap();
        Json::<Probe>::from_request(request, &()).await
    }

    #[tokio::test]
    async fn json_extractor_accepts_valid_body() {
        let Json(probe) = extract(Some("application/json"), r#"{"name":"x"}"#)
            .await
            .unwrap();
        assert_eq!(probe.name, "x");
    }

    #[tokio::test]
    async fn json_rejections_become_400_envelopes() {
        let syntax = extract(Some("application/json"), "{").await.unwrap_err();
        assert_eq!(syntax.status, StatusCode::BAD_REQUEST);
        assert_eq!(syntax.kind, ErrorKind::InvalidRequest);

        let missing = extract(Some("application/json"), "{}").await.unwrap_err();
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        assert!(missing.message.contains("name"), "{}", missing.message);

        let wrong_type = extract(Some("text/plain"), r#"{"name":"x"}"#)
            .await
            .unwrap_err();
        assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
        assert!(wrong_type.message.contains("application/json"));

        let no_type = extract(None, r#"{"name":"x"}"#).await.unwrap_err();
        assert_eq!(no_type.status, StatusCode::BAD_REQUEST);
    }
}
