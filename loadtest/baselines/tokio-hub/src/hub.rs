//! The shared pub/sub hub: one `std::sync::RwLock<HashMap<topic, HashMap<session, Peer>>>` for the
//! whole process, the design most Rust WebSocket hubs use.
//!
//! Publishing takes the read lock, looks the topic up and `try_send`s one `Message::Text` per
//! subscriber into that session's bounded channel. With tungstenite 0.24 `Message::Text` owns a
//! `String`, so the frame text (built once by the publisher) is cloned once per subscriber; that copy
//! is part of the mainstream cost this baseline measures. A full channel means a slow consumer: the
//! session is told to close with 1008 and removes itself from the hub on its way out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;

/// Process-unique session id.
pub type SessionId = u64;

/// What the hub keeps per subscribed session.
#[derive(Clone)]
pub struct Peer {
    /// The session's outbound queue (drained by its writer task).
    pub tx: mpsc::Sender<Message>,
    /// Woken when the queue overflowed: the writer closes the session with 1008.
    pub kick: Arc<Notify>,
}

/// Topic -> subscribers.
#[derive(Default)]
pub struct Hub {
    topics: RwLock<HashMap<String, HashMap<SessionId, Peer>>>,
    next_id: AtomicU64,
}

impl Hub {
    /// A new session id.
    pub fn next_id(&self) -> SessionId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Add `peer` to `topic`. Effective as soon as this returns (the write lock orders it before any
    /// later publish), so the caller may ack afterwards.
    pub fn subscribe(&self, topic: &str, id: SessionId, peer: &Peer) {
        let mut map = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(topic) {
            Some(subs) => {
                subs.insert(id, peer.clone());
            }
            None => {
                map.insert(topic.to_owned(), HashMap::from([(id, peer.clone())]));
            }
        }
    }

    /// Remove the session from `topic` (dropping the topic when it becomes empty).
    pub fn unsubscribe(&self, topic: &str, id: SessionId) {
        let mut map = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(subs) = map.get_mut(topic) {
            subs.remove(&id);
            if subs.is_empty() {
                map.remove(topic);
            }
        }
    }

    /// Deliver an already encoded `message` frame to every subscriber of `topic`; returns how many
    /// queues accepted it.
    pub fn publish(&self, topic: &str, frame: &str) -> usize {
        let map = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        let Some(subs) = map.get(topic) else {
            return 0;
        };
        let mut delivered = 0;
        for peer in subs.values() {
            match peer.tx.try_send(Message::Text(frame.to_owned())) {
                Ok(()) => delivered += 1,
                Err(TrySendError::Full(_)) => peer.kick.notify_one(),
                Err(TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }
}
