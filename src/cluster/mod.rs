//! The cluster bus: several gateway nodes share topics through Redis pub/sub.
//!
//! A node runs one extra thread, the bridge, with a tokio current-thread runtime and the `fred`
//! Redis client. The cores never talk to Redis: the bridge is one more participant of the crossbeam
//! bus (`crate::bus`), so
//! - a local publish is delivered by the cores exactly as without clustering and also handed to the
//!   bridge once, which sends the already-encoded frame to Redis tagged with the node id;
//! - a core's interest announcement for a topic reaches the bridge like any other core, and the
//!   bridge confirms it only after Redis confirmed the (S)SUBSCRIBE, so "a subscription is effective
//!   by its ack" holds across nodes; the node unsubscribes when its last local subscriber leaves;
//! - a message from Redis is forwarded, as the same shared bytes, to exactly the cores with local
//!   subscribers; a node drops its own messages (node id tag), so nothing is delivered twice.
//!
//! Redis down: local delivery goes on untouched; the bridge confirms subscriptions at once (they are
//! made in Redis when it is back), counts what it could not forward, and reconnects with backoff,
//! re-subscribing every channel. Messages published while Redis is unreachable do not reach other
//! nodes; the gap is logged and counted.

mod bridge;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::bus::Bus;
use crate::config::ClusterConfig;

/// The bridge's state as the admin API, `/readyz` and `/metrics` see it (written by the bridge only).
#[derive(Debug, Default)]
pub struct ClusterState {
    pub node_id: String,
    pub up: AtomicBool,
    pub sharded: AtomicBool,
    /// Publishes and direct messages sent to Redis.
    pub sent: AtomicU64,
    /// Messages from other nodes (or backends) forwarded to the cores.
    pub received: AtomicU64,
    /// Of `received`: JSON published by a backend rather than a node.
    pub received_backend: AtomicU64,
    /// Publishes and direct messages not forwarded to other nodes (Redis unreachable or failing).
    pub not_forwarded: AtomicU64,
    /// Messages from Redis dropped: malformed, or the bridge fell behind the client's buffer.
    pub dropped_incoming: AtomicU64,
    /// Successful connections to Redis after the first.
    pub reconnects: AtomicU64,
    /// Redis channels this node is subscribed to (topics with local subscribers, plus direct).
    pub channels: AtomicU64,
}

impl ClusterState {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn json(&self) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "node_id": self.node_id,
            "redis": if self.is_up() { "up" } else { "down" },
            "sharded": self.sharded.load(Ordering::Relaxed),
            "channels": n(&self.channels),
            "sent": n(&self.sent),
            "received": n(&self.received),
            "received_backend": n(&self.received_backend),
            "not_forwarded": n(&self.not_forwarded),
            "dropped_incoming": n(&self.dropped_incoming),
            "reconnects": n(&self.reconnects),
        })
    }
}

/// What the bridge needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub url: String,
    pub prefix: String,
    pub sharded: crate::config::Sharded,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub accept_backend: bool,
    pub max_topic_len: usize,
}

/// A running bridge thread.
pub struct Cluster {
    pub state: Arc<ClusterState>,
    thread: Option<JoinHandle<()>>,
}

impl Cluster {
    /// Start the bridge on its own thread; it owns the bus inbox `bus.bridge()`.
    pub fn start(
        config: &ClusterConfig,
        max_topic_len: usize,
        bus: Arc<Bus>,
    ) -> std::io::Result<Option<Self>> {
        let (Some(url), Some(me)) = (&config.redis_url, bus.bridge()) else {
            return Ok(None);
        };
        let state = Arc::new(ClusterState {
            node_id: config.node_id.clone().unwrap_or_else(generated_node_id),
            ..Default::default()
        });
        let settings = Settings {
            url: url.clone(),
            prefix: config.channel_prefix.clone(),
            sharded: config.sharded,
            connect_timeout: config.connect_timeout(),
            reconnect_min: Duration::from_millis(config.reconnect_min_ms),
            reconnect_max: Duration::from_millis(config.reconnect_max_ms),
            accept_backend: config.accept_backend_publishes,
            max_topic_len,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("wsgate-cluster".into())
            .spawn(move || runtime.block_on(bridge::Bridge::new(settings, bus, me, st).run()))?;
        tracing::info!(node_id = %state.node_id, redis = %redacted(url), "cluster bus starting");
        Ok(Some(Self {
            state,
            thread: Some(thread),
        }))
    }

    /// Wait for the bridge to exit (after it got `BusMsg::Shutdown`).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `<hostname>-<pid>-<random>`, cut to the allowed length.
fn generated_node_id() -> String {
    let mut host = [0u8; 64];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let ok = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0;
    let host: String = if ok {
        host.iter()
            .take_while(|&&b| b != 0)
            .map(|&b| b as char)
            .filter(|c| c.is_ascii_alphanumeric() || ".-_".contains(*c))
            .take(40)
            .collect()
    } else {
        String::new()
    };
    let random = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = ahash::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish() as u32
    };
    let host = if host.is_empty() { "node".into() } else { host };
    format!("{host}-{}-{random:08x}", std::process::id())
}

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_ids_are_valid_and_differ() {
        let a = super::generated_node_id();
        let b = super::generated_node_id();
        assert_ne!(a, b);
        for id in [a, b] {
            assert!(id.len() <= crate::config::MAX_NODE_ID, "{id}");
            let mut c = crate::config::Config::default();
            c.cluster.node_id = Some(id.clone());
            assert!(c.validate().is_ok(), "{id}");
        }
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            super::redacted("redis://user:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(
            super::redacted("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
