//! Publishes the prefix cache's [`KvEvent`]s on a ZMQ PUB socket in vLLM's
//! format ([`wire`]), configured by vLLM's `--kv-events-config` JSON, so
//! llm-d's KV-cache-aware routing works with r1serve replicas.
//!
//! The engine thread hands each step's events to a bounded queue and never
//! waits: a publisher thread of its own encodes and sends them. When the
//! queue is full (a stalled publisher) the batch is dropped and counted, and
//! a PUB socket itself drops messages for slow subscribers and sends nothing
//! when there are none, so no subscriber can slow the engine. The sequence
//! number counts published batches, so a subscriber sees a gap after a drop.

pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketSend, ZmqMessage};

use crate::kv_cache::events::KvEvent;

/// Batches the queue holds before new ones are dropped: with one batch per
/// engine step, seconds of steps.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 4096;

/// `--kv-events-config`, vLLM's `KVEventsConfig` fields that apply here.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvEventsConfig {
    /// Whether to publish at all.
    #[serde(default)]
    pub enable_kv_cache_events: bool,
    /// `zmq`, or `null` to publish nothing.
    #[serde(default = "default_publisher")]
    pub publisher: String,
    /// Where the PUB socket binds, e.g. `tcp://*:5557`, or the address of a
    /// subscriber that binds, which it connects to.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// First frame of every message; subscribers filter on it.
    #[serde(default)]
    pub topic: String,
    /// Batches queued for the publisher before new ones are dropped.
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
}

fn default_publisher() -> String {
    "null".into()
}

fn default_endpoint() -> String {
    "tcp://*:5557".into()
}

fn default_max_queue_size() -> usize {
    DEFAULT_MAX_QUEUE_SIZE
}

impl KvEventsConfig {
    /// Parses the flag's JSON; `None` when events are off.
    pub fn parse(json: &str) -> Result<Option<Self>> {
        let config: Self = serde_json::from_str(json).context("--kv-events-config")?;
        if !config.enable_kv_cache_events || config.publisher == "null" {
            return Ok(None);
        }
        if config.publisher != "zmq" {
            bail!(
                "--kv-events-config: publisher '{}' is not supported (known: zmq, null)",
                config.publisher
            );
        }
        if !config.endpoint.starts_with("tcp://") {
            bail!(
                "--kv-events-config: endpoint '{}' must be tcp://HOST:PORT",
                config.endpoint
            );
        }
        if config.max_queue_size == 0 {
            bail!("--kv-events-config: max_queue_size must be positive");
        }
        Ok(Some(config))
    }

    /// Whether the socket binds (an endpoint on every interface, `*` or
    /// `::`) or connects to a subscriber that binds, as vLLM decides: llm-d
    /// deployments have each pod connect to the endpoint picker's socket.
    fn binds(&self) -> bool {
        self.endpoint.contains('*') || self.endpoint.contains("::")
    }

    /// The endpoint with ZMQ's `*` (every interface) spelled as an address.
    fn socket_address(&self) -> String {
        self.endpoint.replacen("tcp://*:", "tcp://0.0.0.0:", 1)
    }
}

/// The engine's end of the queue: cheap to call every step.
#[derive(Clone, Debug)]
pub struct KvEventSender {
    tx: mpsc::Sender<Vec<KvEvent>>,
    dropped: Arc<AtomicU64>,
}

impl KvEventSender {
    /// Queues one step's events without waiting; a full queue drops them
    /// and counts them in [`dropped`](Self::dropped).
    pub fn send(&self, events: Vec<KvEvent>) {
        if events.is_empty() {
            return;
        }
        let count = events.len() as u64;
        if self.tx.try_send(events).is_err() {
            self.dropped.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// Events dropped since start because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Binds (or starts connecting) the PUB socket and starts the publisher
/// thread. Fails, naming the endpoint, when the socket cannot bind.
pub fn start(config: &KvEventsConfig) -> Result<KvEventSender> {
    let (tx, rx) = mpsc::channel(config.max_queue_size);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let address = config.socket_address();
    let binds = config.binds();
    let topic = config.topic.clone();
    std::thread::Builder::new()
        .name("r1serve-kv-events".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = bound_tx.send(Err(anyhow::Error::new(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut socket = zeromq::PubSocket::new();
                if !binds {
                    // Connecting waits for the peer (retrying); the engine
                    // does not, and its batches queue, then drop, meanwhile.
                    let _ = bound_tx.send(Ok(format!("connecting to {address}")));
                    if let Err(e) = socket.connect(&address).await {
                        tracing::error!("KV-cache events: connecting to {address} failed: {e}");
                        return;
                    }
                    tracing::info!("KV-cache events: connected to {address}");
                } else {
                    match socket.bind(&address).await {
                        Ok(endpoint) => {
                            let _ = bound_tx.send(Ok(format!("bound to {endpoint}")));
                        }
                        Err(e) => {
                            let _ = bound_tx.send(Err(anyhow::Error::new(e)));
                            return;
                        }
                    }
                }
                publish(socket, rx, topic).await;
            });
        })
        .context("starting the KV-event publisher thread")?;
    let socket = bound_rx
        .recv()
        .context("the KV-event publisher thread ended before binding")?
        .with_context(|| format!("binding the KV-event socket to {}", config.endpoint))?;
    tracing::info!(topic = config.topic, "publishing KV-cache events: {socket}");
    Ok(KvEventSender {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    })
}

/// Sends each queued batch as topic, sequence number and payload, until
/// the engine drops its sender.
async fn publish(
    mut socket: zeromq::PubSocket,
    mut rx: mpsc::Receiver<Vec<KvEvent>>,
    topic: String,
) {
    let mut seq: u64 = 0;
    while let Some(events) = rx.recv().await {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let payload = wire::encode_batch(ts, &events);
        let mut message = ZmqMessage::from(topic.clone().into_bytes());
        message.push_back(seq.to_be_bytes().to_vec().into());
        message.push_back(payload.into());
        if let Err(e) = socket.send(message).await {
            tracing::warn!("publishing KV-cache events failed: {e}");
        }
        seq += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_follows_vllm() {
        let on = KvEventsConfig::parse(
            r#"{"enable_kv_cache_events": true, "publisher": "zmq",
                "endpoint": "tcp://*:5557", "topic": "kv-events"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(on.topic, "kv-events");
        assert!(on.binds());
        assert_eq!(on.socket_address(), "tcp://0.0.0.0:5557");
        assert_eq!(on.max_queue_size, DEFAULT_MAX_QUEUE_SIZE);
        for off in [
            r#"{"enable_kv_cache_events": false, "publisher": "zmq"}"#,
            r#"{"enable_kv_cache_events": true}"#,
        ] {
            assert_eq!(KvEventsConfig::parse(off).unwrap(), None, "{off}");
        }
        for bad in [
            r#"{"enable_kv_cache_events": true, "publisher": "kafka"}"#,
            r#"{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "ipc:///x"}"#,
            r#"{"enable_kv_cache_events": true, "replay_endpoint": "tcp://*:5558"}"#,
            "not json",
        ] {
            assert!(KvEventsConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = mpsc::channel(1);
        let sender = KvEventSender {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        sender.send(vec![KvEvent::AllBlocksCleared]);
        sender.send(Vec::new());
        sender.send(vec![KvEvent::AllBlocksCleared, KvEvent::AllBlocksCleared]);
        assert_eq!(sender.dropped(), 2);
    }
}
