//! The HTTP/1 accept loop: a cap on open connections, a deadline for each
//! request's headers, and a graceful drain on shutdown.
//!
//! axum's own `serve` has neither limit, so a client sending half a request
//! line held its connection forever and enough of them exhausted the file
//! descriptors, after which even `/health` hung. Here the header deadline
//! (nginx's `client_header_timeout`) runs from the moment a connection waits
//! for a request, so it also closes idle keep-alive connections; a
//! connection over the cap is answered with a 503 in the OpenAI envelope and
//! closed rather than left in the kernel's backlog.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::error::ApiError;

/// Limits on what one client connection may hold.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Time a connection may take to send a request's headers, counted from
    /// when it starts waiting for them.
    pub header_timeout: Duration,
}

/// Connections over the cap being answered at once; beyond this a flood of
/// them is closed without an answer, since answering costs a descriptor too.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// How long a refused connection gets to take its 503 before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// How long to back off after `accept` fails (out of descriptors, say), so
/// the loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `stop` turns true, then lets open
/// connections finish their current request and returns once all are
/// closed.
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        // Token streams are many small writes; Nagle would batch them.
        let _ = stream.set_nodelay(true);
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "connection limit reached; refusing");
            if let Ok(refusal) = Arc::clone(&refusals).try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let mut draining = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.wait_for(|stop| *stop), if !draining => {
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(slot);
        });
    }
    // Every connection task holds a slot until it ends.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// Answers a connection over the cap with a 503 and closes it. The request
/// is read (and discarded) briefly after the answer, because closing a
/// socket with unread input resets it and the client could lose the answer.
async fn refuse(mut stream: TcpStream) {
    let body = serde_json::to_string(&ApiError::too_many_connections().body())
        .unwrap_or_else(|_| String::from("{}"));
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, exchange).await;
}
