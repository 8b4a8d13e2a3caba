//! The cross-core bus: the only way anything crosses from one core to another.
//!
//! Each core has one inbox: a lock-free crossbeam `SegQueue` plus an `AtomicWaker` for the core's bus
//! task. A sender pushes a message (a publish is a pointer to the shared, already-encoded frame) and
//! wakes the target core only if it was not already notified, so a burst of publishes costs one wake-up.
//! Messages from one core to another arrive in the order they were sent, which is what keeps delivery
//! order per (publisher, topic).
//!
//! With clustering on, the Redis bridge (`crate::cluster`) is one more participant: inbox index
//! `cores`, reached through [`Bus::bridge`]. It takes part in interest announcements like a core
//! does, which is how "a subscription is effective by its ack" holds across nodes too.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_queue::SegQueue;

/// Most cores one gateway can run (interest sets are `u64` bitmasks).
pub const MAX_CORES: usize = 64;
/// Messages handled before the bus task yields to the sessions on its core.
const DRAIN_BUDGET: usize = 512;

/// What cores send each other.
#[derive(Debug)]
pub enum BusMsg {
    /// Deliver this frame to the local subscribers of `topic`; `published_us` (`clock::now_us`) is
    /// when the publish was accepted, for the latency histogram.
    Publish {
        topic: Arc<str>,
        frame: Bytes,
        published_us: u64,
    },
    /// Deliver this frame to every local session of user `to`.
    Direct { to: Arc<str>, frame: Bytes },
    /// Core `from` now has (`on`) or no longer has local subscribers of `topic`. `gen` numbers the
    /// announcement so its confirmation can be matched.
    Interest {
        topic: Arc<str>,
        from: usize,
        on: bool,
        gen: u64,
    },
    /// The sender has recorded the `Interest` announcement `gen` for `topic`.
    InterestAck { topic: Arc<str>, gen: u64 },
    /// A publish from the embedding program (`Gateway::publish`), handled like an API publish.
    HostPublish {
        topic: Arc<str>,
        data: Box<serde_json::value::RawValue>,
    },
    /// Stop accepting, close sessions with 1001 and exit.
    Shutdown,
}

struct Inbox {
    queue: SegQueue<BusMsg>,
    waker: AtomicWaker,
    notified: AtomicBool,
}

/// All cores' inboxes (plus the cluster bridge's, when clustering is on); shared through an `Arc`.
pub struct Bus {
    inboxes: Box<[Inbox]>,
    cores: usize,
}

impl Bus {
    pub fn new(cores: usize) -> Arc<Self> {
        Self::with_bridge(cores, false)
    }

    /// A bus for `cores` cores and, with `bridge`, one extra inbox for the cluster bridge.
    pub fn with_bridge(cores: usize, bridge: bool) -> Arc<Self> {
        Arc::new(Self {
            inboxes: (0..cores + usize::from(bridge))
                .map(|_| Inbox {
                    queue: SegQueue::new(),
                    waker: AtomicWaker::new(),
                    notified: AtomicBool::new(false),
                })
                .collect(),
            cores,
        })
    }

    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The cluster bridge's inbox index, when clustering is on.
    pub fn bridge(&self) -> Option<usize> {
        (self.inboxes.len() > self.cores).then_some(self.cores)
    }

    /// How many other participants confirm an interest announcement from a core: the other cores
    /// and the bridge.
    pub fn peers(&self) -> usize {
        self.inboxes.len() - 1
    }

    /// Queue `msg` for core `to` and wake it if it is not already awake.
    pub fn send(&self, to: usize, msg: BusMsg) {
        let Some(inbox) = self.inboxes.get(to) else {
            return;
        };
        inbox.queue.push(msg);
        if !inbox.notified.swap(true, Ordering::AcqRel) {
            inbox.waker.wake();
        }
    }

    /// Send to every core but `from` (from the bridge, whose index is not a core's: to every core).
    pub fn broadcast(&self, from: usize, mut make: impl FnMut() -> BusMsg) {
        for to in (0..self.cores()).filter(|&c| c != from) {
            self.send(to, make());
        }
    }

    /// Send to every participant but `from`: the other cores and the bridge.
    pub fn broadcast_all(&self, from: usize, mut make: impl FnMut() -> BusMsg) {
        for to in (0..self.inboxes.len()).filter(|&c| c != from) {
            self.send(to, make());
        }
    }

    /// Wait until participant `me` has a message (for a consumer that is not a core, the bridge).
    pub async fn ready(&self, me: usize) {
        let Some(inbox) = self.inboxes.get(me) else {
            return std::future::pending().await;
        };
        poll_fn(|cx| {
            inbox.waker.register(cx.waker());
            inbox.notified.store(false, Ordering::Release);
            if inbox.queue.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Take the next message for core `me` without waiting (benchmarks and tests; a running core
    /// drains its inbox in `run`).
    pub fn try_recv(&self, me: usize) -> Option<BusMsg> {
        self.inboxes.get(me)?.queue.pop()
    }

    /// Messages waiting for core `me` (for stats).
    pub fn depth(&self, me: usize) -> usize {
        self.inboxes.get(me).map_or(0, |i| i.queue.len())
    }

    /// Core `me`'s bus loop: hand every message to `handle` until it returns `false`.
    pub async fn run(&self, me: usize, mut handle: impl FnMut(BusMsg) -> bool) {
        let Some(inbox) = self.inboxes.get(me) else {
            return;
        };
        poll_fn(|cx| {
            inbox.waker.register(cx.waker());
            inbox.notified.store(false, Ordering::Release);
            for _ in 0..DRAIN_BUDGET {
                match inbox.queue.pop() {
                    Some(msg) => {
                        if !handle(msg) {
                            return Poll::Ready(());
                        }
                    }
                    None => return Poll::Pending,
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }
}
