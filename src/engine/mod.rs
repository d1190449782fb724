//! The serving engine: requests in, token streams out. The engine loop runs
//! on its own OS thread and owns the model, the KV cache and the scheduler;
//! [`EngineHandle`] is the async side's door to it, through a command
//! channel. Dropping a request's stream aborts it.

mod engine_loop;
mod fault;
mod grammar;
pub mod logits;
pub mod prompt_logprobs;
pub mod reasoning_control;
mod reopen_mask;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod stop;
pub mod types;

pub use engine_loop::{Engine, EngineConfig};

use crate::types::RequestId;
use futures::Stream;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use types::{EngineError, EngineRequest, EngineStats, RequestOutput};

/// Messages from handles to the engine thread.
enum Command {
    Add(
        RequestId,
        Box<EngineRequest>,
        UnboundedSender<RequestOutput>,
    ),
    Abort(RequestId),
    Shutdown,
}

/// Limits checked on the caller's side before a request reaches the queue.
#[derive(Clone, Copy, Debug)]
struct Admission {
    max_model_len: usize,
    max_waiting: usize,
    num_blocks: usize,
    block_size: usize,
}

struct Shared {
    tx: Mutex<mpsc::Sender<Command>>,
    stats: Mutex<EngineStats>,
    /// Requests accepted but not yet admitted by the scheduler.
    waiting: AtomicUsize,
    next_id: AtomicU64,
    admission: Admission,
    /// The engine thread while it is expected to run: [`EngineHandle::shutdown`]
    /// takes it before asking it to stop, so a finished thread still here
    /// died on its own.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Why the engine thread died: marked by [`PanicWatch`] as the thread
    /// unwinds, detailed from the panic once the thread has ended.
    failure: Mutex<Option<String>>,
}

/// Owned by the engine loop; if dropped while the engine thread unwinds
/// from a panic, it marks the engine failed. The loop drops it before its
/// requests' output streams, so a client that sees its stream cut short
/// also sees the engine reported dead (`/health`, new requests) at once,
/// before the thread has finished unwinding.
struct PanicWatch(Arc<Shared>);

impl Drop for PanicWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(mut failure) = self.0.failure.lock() {
                failure.get_or_insert_with(|| "the engine thread panicked".to_string());
            }
        }
    }
}

/// Cheap, cloneable handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// Queues a request and returns its output stream.
    pub fn add_request(&self, req: EngineRequest) -> Result<RequestStream, EngineError> {
        let a = self.shared.admission;
        let prompt = req.prompt.len();
        let completion = req.params.max_tokens;
        if prompt + completion > a.max_model_len {
            return Err(EngineError::TooLong {
                max: a.max_model_len,
                requested: prompt + completion,
                prompt,
                completion,
            });
        }
        let needed = (prompt + completion).div_ceil(a.block_size);
        if needed > a.num_blocks {
            return Err(EngineError::TooLargeForCache {
                needed,
                available: a.num_blocks,
            });
        }
        let waiting = self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= a.max_waiting {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::QueueFull(waiting));
        }
        let id = RequestId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let sent = self
            .shared
            .tx
            .lock()
            .map_err(|_| EngineError::Stopped)?
            .send(Command::Add(id, Box::new(req), tx));
        if sent.is_err() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(match self.failure() {
                Some(cause) => EngineError::Failed(cause),
                None => EngineError::Stopped,
            });
        }
        Ok(RequestStream {
            id,
            rx,
            shared: self.shared.clone(),
            done: false,
        })
    }

    /// Latest statistics, refreshed after every step.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.shared.stats.lock().map(|s| *s).unwrap_or_default();
        s.waiting = s.waiting.max(self.shared.waiting.load(Ordering::SeqCst));
        s
    }

    /// The context limit requests are checked against.
    pub fn max_model_len(&self) -> usize {
        self.shared.admission.max_model_len
    }

    /// Aborts everything and stops the engine thread.
    pub fn shutdown(&self) {
        // Taken before the thread is told to stop, so that its end is never
        // mistaken for a failure.
        let thread = self.shared.thread.lock().ok().and_then(|mut t| t.take());
        if let Ok(tx) = self.shared.tx.lock() {
            let _ = tx.send(Command::Shutdown);
        }
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Why the engine thread died, if it ended without [`shutdown`]
    /// (a panic in a model step, say); `None` while it runs or after a
    /// shutdown. The first call after the thread has ended joins it to
    /// learn the panic's message.
    ///
    /// [`shutdown`]: Self::shutdown
    pub fn failure(&self) -> Option<String> {
        let mut failure = self.shared.failure.lock().ok()?;
        let mut thread = self.shared.thread.lock().ok()?;
        if thread.as_ref().is_some_and(|t| t.is_finished()) {
            let cause = match thread.take().map(|t| t.join()) {
                Some(Err(panic)) => {
                    format!("the engine thread panicked: {}", panic_message(&*panic))
                }
                _ => "the engine thread exited unexpectedly".to_string(),
            };
            *failure = Some(cause);
        }
        failure.clone()
    }
}

/// The text of a panic payload (`panic!` passes a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_string())
}

/// A request's outputs; dropping it before the end aborts the request.
pub struct RequestStream {
    id: RequestId,
    rx: UnboundedReceiver<RequestOutput>,
    shared: Arc<Shared>,
    done: bool,
}

impl RequestStream {
    /// The engine's id for this request.
    pub fn id(&self) -> RequestId {
        self.id
    }
}

impl Stream for RequestStream {
    type Item = RequestOutput;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RequestOutput>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(out)) = &polled {
            if out.finished {
                self.done = true;
            }
        }
        if let Poll::Ready(None) = &polled {
            self.done = true;
        }
        polled
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            if let Ok(tx) = self.shared.tx.lock() {
                let _ = tx.send(Command::Abort(self.id));
            }
        }
    }
}
