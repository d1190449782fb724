//! Shared state of the HTTP server: what every handler can reach.
//!
//! The port is bound before the model loads, so the model lives in a
//! [`OnceLock`] that is filled once loading succeeds; until then handlers
//! that need it answer 503 and `/health` reports loading.

use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::backend::{InferenceBackend, PromptCodec};
use super::error::{ApiError, ErrorKind};
use super::protocol::ReasoningField;
use crate::metrics::Metrics;
use crate::model::generation_config::GenerationDefaults;
use crate::reasoning::ReasoningParser;
use crate::structured::GrammarVocab;
use crate::tools::ToolCallParser;

/// A loaded model, ready to serve.
pub struct ServedModel {
    /// The engine running it.
    pub engine: Arc<dyn InferenceBackend>,
    /// Its tokenizer and chat template.
    pub codec: Arc<dyn PromptCodec>,
    /// The name clients pass as `model`.
    pub name: String,
    /// Prompt plus completion limit in tokens.
    pub max_model_len: usize,
    /// Sampling parameters for what the client leaves out, all sources but
    /// the request already layered (see [`GenerationDefaults`]).
    pub defaults: GenerationDefaults,
    /// How chat output is split into reasoning and content.
    pub reasoning: ReasoningParser,
    /// The name(s) chat responses carry the reasoning under, unless a
    /// request names its own.
    pub reasoning_field: ReasoningField,
    /// How tool calls are read from chat answers.
    pub tool_parser: ToolCallParser,
    /// Reasoning bounds for requests that set none.
    pub thinking: ThinkingDefaults,
    /// The vocabulary indexed for structured outputs; `None` when the
    /// grammar engine cannot read this tokenizer (constrained requests are
    /// then refused).
    pub grammar: Option<Arc<GrammarVocab>>,
    /// Unix time the model finished loading, reported as `created`.
    pub created: u64,
}

/// Server-wide reasoning bounds, from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThinkingDefaults {
    /// `--thinking-budget`: reasoning tokens of a request that names no
    /// budget or effort (default: unbounded).
    pub budget: Option<usize>,
    /// `--reasoning-effort-budgets`: the budgets of `low`, `medium` and
    /// `high` (default 1024, 4096, 16384).
    pub effort_budgets: [usize; 3],
    /// `--answer-token-reserve`: tokens kept for the answer of a request
    /// that names none, when its token limit exceeds them (default: none).
    pub answer_reserve: Option<usize>,
}

impl Default for ThinkingDefaults {
    fn default() -> Self {
        Self {
            budget: None,
            effort_budgets: [1024, 4096, 16384],
            answer_reserve: None,
        }
    }
}

impl ServedModel {
    /// Checks the `model` field of a request: absent is fine (there is one
    /// model), anything else must be the served name.
    pub fn check_name(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            Some(name) if name != self.name => Err(ApiError::model_not_found(name)),
            _ => Ok(()),
        }
    }
}

struct Inner {
    model: OnceLock<Arc<ServedModel>>,
    api_keys: Vec<String>,
    metrics: Metrics,
    tokenizer_slots: Semaphore,
}

/// Cheaply clonable handle to the server state.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl AppState {
    /// State for a server that has not loaded its model yet. An empty
    /// `api_keys` disables authentication. Tokenizer and template work runs
    /// on at most as many threads as the machine has cores.
    pub fn new(api_keys: Vec<String>, metrics: Metrics) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            inner: Arc::new(Inner {
                model: OnceLock::new(),
                api_keys,
                metrics,
                tokenizer_slots: Semaphore::new(cores),
            }),
        }
    }

    /// Runs blocking tokenizer or template work off the async threads, at
    /// most one job per core at a time: a flood of long prompts then queues
    /// (waiting costs no CPU) instead of taking every core from the engine.
    /// A panic in the work becomes a 500 instead of taking the connection
    /// down.
    pub async fn tokenizer_work<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let _slot = self
            .inner
            .tokenizer_slots
            .acquire()
            .await
            .map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(ApiError::internal)?
    }

    /// Publishes the loaded model; later calls are ignored because a server
    /// serves exactly one model for its lifetime.
    pub fn set_model(&self, model: ServedModel) {
        if self.inner.model.set(Arc::new(model)).is_err() {
            tracing::warn!("a model is already being served; ignoring the second one");
        }
    }

    /// The served model, if loading has finished.
    pub fn try_model(&self) -> Option<Arc<ServedModel>> {
        self.inner.model.get().cloned()
    }

    /// The served model while its engine runs: `None` while it loads and
    /// once the engine has died, when `/health` must send traffic elsewhere.
    pub fn healthy_model(&self) -> Option<Arc<ServedModel>> {
        self.try_model()
            .filter(|model| model.engine.failure().is_none())
    }

    /// The served model, or 503 while it is still loading.
    pub fn model(&self) -> Result<Arc<ServedModel>, ApiError> {
        self.try_model().ok_or_else(|| ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Server,
                "The model is still loading, please retry later",
            )
        })
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether authentication is on.
    pub fn requires_key(&self) -> bool {
        !self.inner.api_keys.is_empty()
    }

    /// Whether `key` is one of the configured keys. Every key is compared,
    /// each in constant time, so the timing reveals neither which key
    /// matched nor how much of a guess was right (only, unavoidably, the
    /// lengths involved).
    pub fn key_is_valid(&self, key: &str) -> bool {
        self.inner
            .api_keys
            .iter()
            .fold(subtle::Choice::from(0), |found, valid| {
                found | valid.as_bytes().ct_eq(key.as_bytes())
            })
            .into()
    }
}
