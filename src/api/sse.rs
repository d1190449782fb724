//! Server-sent events framed byte-for-byte as OpenAI does.
//!
//! On the chat and completions routes each event is `data: <compact
//! JSON>\n\n` and the stream ends with `data: [DONE]\n\n`; there are no
//! `event:`/`id:` lines, comments or keep-alives, because some OpenAI
//! clients parse the stream line by line and choke on anything else. The
//! Responses API names each event (`event: <type>\n` before its data line)
//! and ends without `[DONE]`, as OpenAI's does ([`named_event`]). axum's
//! `Sse` type would do the same framing but adds nothing we need, so the
//! body is built by hand.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use futures::{Stream, StreamExt};
use serde::Serialize;

use super::error::ApiError;

/// The terminal event of every stream.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// Frames `value` as one `data:` event.
///
/// Fails only if `value`'s `Serialize` impl fails, which no type in
/// [`super::protocol`] does; callers can send [`error_event`] instead.
pub fn json_event<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, serde_json::Error> {
    let mut buf = b"data: ".to_vec();
    serde_json::to_writer(&mut buf, value)?;
    buf.extend_from_slice(b"\n\n");
    Ok(Bytes::from(buf))
}

/// Frames `value` as one event named `name`: `event: <name>\n` and a
/// `data:` line, as the Responses API streams.
pub fn named_event<T: Serialize + ?Sized>(
    name: &str,
    value: &T,
) -> Result<Bytes, serde_json::Error> {
    let mut buf = format!("event: {name}\ndata: ").into_bytes();
    serde_json::to_writer(&mut buf, value)?;
    buf.extend_from_slice(b"\n\n");
    Ok(Bytes::from(buf))
}

/// The `data: [DONE]` event.
pub fn done_event() -> Bytes {
    Bytes::from_static(DONE_EVENT)
}

/// An error reported mid-stream, after the 200 status has been sent: the
/// same `{"error": {...}}` envelope as a non-streaming error, as vLLM does.
pub fn error_event(error: &ApiError) -> Bytes {
    // The envelope holds only strings and a unit enum, so serialization
    // cannot fail; the fallback keeps this path panic-free regardless.
    json_event(&error.body()).unwrap_or_else(|_| {
        Bytes::from_static(b"data: {\"error\":{\"message\":\"internal error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n")
    })
}

/// A `200 text/event-stream` response whose body is `events`, written as
/// they arrive. Each item must be a complete frame from [`json_event`],
/// [`error_event`] or [`done_event`].
pub fn sse_response<S>(events: S) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let body = Body::from_stream(events.map(Ok::<_, Infallible>));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Stops nginx-style proxies from buffering the stream into one burst.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use serde_json::json;

    #[test]
    fn json_event_is_compact_data_line() {
        let bytes = json_event(&json!({"a": [1, 2], "b": "x y"})).unwrap();
        assert_eq!(&bytes[..], b"data: {\"a\":[1,2],\"b\":\"x y\"}\n\n");
    }

    #[test]
    fn named_event_has_an_event_line() {
        let bytes = named_event("response.created", &json!({"a": 1})).unwrap();
        assert_eq!(&bytes[..], b"event: response.created\ndata: {\"a\":1}\n\n");
    }

    #[test]
    fn newlines_in_strings_stay_escaped() {
        let bytes = json_event(&json!({"content": "a\n\nb"})).unwrap();
        assert_eq!(&bytes[..], b"data: {\"content\":\"a\\n\\nb\"}\n\n");
    }

    #[test]
    fn error_event_uses_envelope() {
        let bytes = error_event(&ApiError::bad_request("n", "bad n"));
        assert_eq!(
            &bytes[..],
            &b"data: {\"error\":{\"message\":\"bad n\",\"type\":\"invalid_request_error\",\"param\":\"n\",\"code\":null}}\n\n"[..]
        );
    }

    #[tokio::test]
    async fn response_has_headers_and_exact_body() {
        let events = vec![
            json_event(&json!({"id": 1})).unwrap(),
            json_event(&json!({"id": 2})).unwrap(),
            done_event(),
        ];
        let response = sse_response(futures::stream::iter(events));
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        assert_eq!(
            &body[..],
            b"data: {\"id\":1}\n\ndata: {\"id\":2}\n\ndata: [DONE]\n\n"
        );
    }
}
