//! Running the HTTP server: bind first, load the model in the background,
//! watch the engine, and shut down gracefully on SIGINT/SIGTERM or with an
//! error when the engine dies.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connections::{serve_connections, ConnectionLimits};
use super::router::{router, RouterConfig};
use super::state::{AppState, ServedModel};
use crate::metrics::UPKEEP_PERIOD;

/// How often the engine thread is checked for life. Requests it held learn
/// at once (their streams close); this only bounds how long the process
/// lingers before exiting for its orchestrator to restart it.
const ENGINE_CHECK_PERIOD: Duration = Duration::from_millis(250);

/// How long in-flight requests may drain once the engine has died; they
/// cannot progress, so this only lets their 500s be written.
const FAILED_ENGINE_DRAIN: Duration = Duration::from_secs(2);

/// How the server listens and stops.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Address to bind.
    pub addr: SocketAddr,
    /// Router settings.
    pub router: RouterConfig,
    /// Connection cap and header deadline.
    pub connections: ConnectionLimits,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_timeout: Duration,
}

/// Binds `options.addr`, serves `state` while `load` produces the model
/// (`/health` answers 503 until it does), and returns after a shutdown
/// signal once in-flight requests have finished or the timeout passed, with
/// the engine stopped. A failed load is returned as the error, and so is
/// the death of the engine thread, after which nothing can be served.
pub async fn serve<L>(options: ServerOptions, state: AppState, load: L) -> Result<()>
where
    L: Future<Output = Result<ServedModel>> + Send + 'static,
{
    let listener = TcpListener::bind(options.addr)
        .await
        .with_context(|| format!("binding {}", options.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "listening; loading the model");
    let app = router(state.clone(), &options.router);
    let upkeep = state.metrics().spawn_upkeep(UPKEEP_PERIOD);

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut server = tokio::spawn(serve_connections(
        listener,
        app,
        options.connections,
        stop_rx,
    ));

    let loading_state = state.clone();
    let mut loading = tokio::spawn(async move {
        let model = load.await?;
        tracing::info!(model = %model.name, max_model_len = model.max_model_len, "model loaded; ready");
        loading_state.set_model(model);
        anyhow::Ok(())
    });

    let mut load_pending = true;
    let mut engine_check = tokio::time::interval(ENGINE_CHECK_PERIOD);
    // Created once: a signal arriving while the loop is between two
    // `select!`s must not be missed.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            result = &mut server => break result.context("server task failed"),
            _ = engine_check.tick() => {
                let Some(cause) = state.try_model().and_then(|m| m.engine.failure()) else {
                    continue;
                };
                tracing::error!(%cause, "the engine died; stopping the server");
                let _ = stop_tx.send(true);
                if tokio::time::timeout(FAILED_ENGINE_DRAIN, &mut server).await.is_err() {
                    server.abort();
                }
                break Err(anyhow!("the engine died: {cause}"));
            }
            result = &mut loading, if load_pending => {
                load_pending = false;
                if let Err(error) = result.context("model loading task failed").and_then(|r| r) {
                    let _ = stop_tx.send(true);
                    server.abort();
                    return Err(error.context("loading the model"));
                }
            }
            () = &mut shutdown => {
                tracing::info!(timeout = ?options.shutdown_timeout, "shutting down: draining in-flight requests");
                let _ = stop_tx.send(true);
                break match tokio::time::timeout(options.shutdown_timeout, &mut server).await {
                    Ok(result) => result.context("server task failed"),
                    Err(_) => {
                        tracing::warn!("shutdown timeout reached; dropping remaining requests");
                        server.abort();
                        Ok(())
                    }
                };
            }
        }
    };
    loading.abort();
    upkeep.abort();
    if let Some(model) = state.try_model() {
        // Stopping joins the engine thread, which may be mid-step.
        if let Err(error) = tokio::task::spawn_blocking(move || model.engine.shutdown()).await {
            tracing::error!(%error, "engine shutdown panicked");
        }
    }
    outcome
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM (what orchestrators
/// send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
