//! One core's topic table: topic -> the sessions on this core subscribed to it, plus which other cores
//! have subscribers of each topic.
//!
//! A publish is encoded once (`protocol::message_frame`), queued by reference in every local
//! subscriber's outbox, and pushed through the bus to exactly the cores that announced interest in the
//! topic. Interest travels over the bus too: when a topic gets its first subscriber on a core, the core
//! announces it to every other core and the `ack` of that subscribe is held back until all of them have
//! confirmed. From then on every publish accepted anywhere reaches this core, which is the protocol's
//! "subscription takes effect by the ack" rule, with no shared table and no lock.

pub mod protocol;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use ahash::RandomState;
use bytes::Bytes;
use indexmap::IndexMap;

use crate::bus::{Bus, BusMsg};
use crate::stats::CoreStats;
use crate::transport::Outbox;

/// What the topic table holds for a session: where to deliver, and its pending-confirmation state.
/// One per session, kept while it is open (idle ones included): rarely used state is boxed.
pub struct Subscriber {
    /// Unique on this core.
    pub id: u64,
    pub outbox: Outbox,
    /// Subscriptions still waiting for other cores to confirm interest; the session reads no further
    /// requests while this is non-zero.
    pub barrier: Cell<u32>,
    /// Where the core's session registry (`Worker`) keeps this session.
    pub(crate) slot: Cell<u32>,
    /// The `ack` frame to send once `barrier` drops to zero.
    deferred_ack: Cell<Option<Box<Bytes>>>,
    /// The authenticated user (JWT `sub`), the address of direct messages.
    pub user: Option<Arc<str>>,
}

impl Subscriber {
    /// A session's entry, with an outbox bounded to `max_outbound_bytes`.
    pub fn new(id: u64, max_outbound_bytes: usize, user: Option<Arc<str>>) -> Self {
        Self {
            id,
            outbox: Outbox::new(max_outbound_bytes),
            barrier: Cell::new(0),
            slot: Cell::new(0),
            deferred_ack: Cell::new(None),
            user,
        }
    }

    /// Send `ack` once the pending subscriptions are confirmed (see `barrier`).
    pub fn defer_ack(&self, ack: Bytes) {
        self.deferred_ack.set(Some(Box::new(ack)));
    }

    fn release_one(&self) {
        let left = self.barrier.get().saturating_sub(1);
        self.barrier.set(left);
        if left == 0 {
            if let Some(ack) = self.deferred_ack.take() {
                self.outbox.reply(*ack);
            }
            self.outbox.wake();
        }
    }
}

/// An interest announcement waiting for the other cores' confirmations.
struct Announce {
    gen: u64,
    outstanding: usize,
    waiters: Vec<Rc<Subscriber>>,
}

/// Sessions by id, O(1) insert/remove and fast iteration for fan-out.
type SessionSet = IndexMap<u64, Rc<Subscriber>, RandomState>;

struct Entry {
    subs: SessionSet,
    announce: Option<Announce>,
}

/// Whether a subscription is in effect now or once the other cores confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    Now,
    AfterConfirmation,
}

/// The per-core topic table (core-local; never shared across threads).
pub struct TopicTable {
    core: usize,
    bus: Arc<Bus>,
    stats: Arc<CoreStats>,
    local: RefCell<HashMap<Box<str>, Entry, RandomState>>,
    /// topic -> bitmask of other cores with subscribers.
    remote: RefCell<HashMap<Arc<str>, u64, RandomState>>,
    /// user id -> that user's sessions on this core (direct messages).
    users: RefCell<HashMap<Arc<str>, SessionSet, RandomState>>,
    next_gen: Cell<u64>,
}

impl TopicTable {
    pub fn new(core: usize, bus: Arc<Bus>, stats: Arc<CoreStats>) -> Self {
        Self {
            core,
            bus,
            stats,
            local: RefCell::default(),
            remote: RefCell::default(),
            users: RefCell::default(),
            next_gen: Cell::new(1),
        }
    }

    /// Add `sub` to `topic`. With `AfterConfirmation`, the subscriber's barrier was raised and drops
    /// when every other core has recorded the interest.
    pub fn subscribe(&self, sub: &Rc<Subscriber>, topic: &str) -> Subscribed {
        let mut local = self.local.borrow_mut();
        if !local.contains_key(topic) {
            let announce = (self.bus.peers() > 0).then(|| {
                let gen = self.next_gen.get();
                self.next_gen.set(gen + 1);
                let shared: Arc<str> = Arc::from(topic);
                let from = self.core;
                self.bus.broadcast_all(from, || BusMsg::Interest {
                    topic: shared.clone(),
                    from,
                    on: true,
                    gen,
                });
                Announce {
                    gen,
                    outstanding: self.bus.peers(),
                    waiters: Vec::new(),
                }
            });
            local.insert(
                topic.into(),
                Entry {
                    subs: IndexMap::default(),
                    announce,
                },
            );
            self.stats.topics.add(1);
        }
        let Some(entry) = local.get_mut(topic) else {
            return Subscribed::Now;
        };
        if entry.subs.insert(sub.id, sub.clone()).is_none() {
            self.stats.subscriptions.add(1);
        }
        match &mut entry.announce {
            Some(a) => {
                sub.barrier.set(sub.barrier.get() + 1);
                a.waiters.push(sub.clone());
                Subscribed::AfterConfirmation
            }
            None => Subscribed::Now,
        }
    }

    pub fn unsubscribe(&self, sub_id: u64, topic: &str) {
        let mut local = self.local.borrow_mut();
        let Some(entry) = local.get_mut(topic) else {
            return;
        };
        if entry.subs.swap_remove(&sub_id).is_some() {
            self.stats.subscriptions.sub(1);
        }
        if entry.subs.is_empty() {
            local.remove(topic);
            self.stats.topics.sub(1);
            if self.bus.peers() > 0 {
                let shared: Arc<str> = Arc::from(topic);
                let from = self.core;
                self.bus.broadcast_all(from, || BusMsg::Interest {
                    topic: shared.clone(),
                    from,
                    on: false,
                    gen: 0,
                });
            }
        }
    }

    /// Deliver `frame` to the subscribers of `topic` on this core, hand it to every core that has
    /// some and, with clustering on, to the bridge (once, for the other nodes). Returns the number of
    /// local sessions reached.
    pub fn publish(&self, topic: &str, frame: Bytes) -> usize {
        self.stats.publishes.add(1);
        let published_us = crate::clock::now_us();
        let mask = self.remote.borrow().get(topic).copied().unwrap_or(0);
        let bridge = self.bus.bridge();
        if mask != 0 || bridge.is_some() {
            // One shared topic name for every hop: the interested cores, then the bridge.
            let shared: Arc<str> = Arc::from(topic);
            for core in (0..self.bus.cores()).filter(|c| mask & (1 << c) != 0) {
                self.stats.bus_out.add(1);
                self.bus.send(
                    core,
                    BusMsg::Publish {
                        topic: shared.clone(),
                        frame: frame.clone(),
                        published_us,
                    },
                );
            }
            if let Some(bridge) = bridge {
                self.bus.send(
                    bridge,
                    BusMsg::Publish {
                        topic: shared,
                        frame: frame.clone(),
                        published_us,
                    },
                );
            }
        }
        self.deliver_local(topic, &frame, published_us)
    }

    /// Messages waiting in this core's bus inbox.
    pub fn bus_depth(&self) -> usize {
        self.bus.depth(self.core)
    }

    /// Register an authenticated session as reachable by direct messages.
    pub fn add_user_session(&self, sub: &Rc<Subscriber>) {
        if let Some(u) = &sub.user {
            self.users
                .borrow_mut()
                .entry(u.clone())
                .or_default()
                .insert(sub.id, sub.clone());
        }
    }

    pub fn remove_user_session(&self, sub: &Subscriber) {
        if let Some(u) = &sub.user {
            let mut users = self.users.borrow_mut();
            if let Some(sessions) = users.get_mut(u) {
                sessions.swap_remove(&sub.id);
                if sessions.is_empty() {
                    users.remove(u);
                }
            }
        }
    }

    /// Deliver a direct-message frame to every session of `to` on every core (and every node). Every
    /// other core gets it (users are not announced across cores); returns the local sessions reached.
    pub fn direct(&self, to: &str, frame: Bytes) -> usize {
        self.stats.direct_messages.add(1);
        if self.bus.peers() > 0 {
            let shared: Arc<str> = Arc::from(to);
            self.bus.broadcast_all(self.core, || BusMsg::Direct {
                to: shared.clone(),
                frame: frame.clone(),
            });
        }
        self.deliver_user(to, &frame)
    }

    fn deliver_user(&self, to: &str, frame: &Bytes) -> usize {
        let users = self.users.borrow();
        let Some(sessions) = users.get(to) else {
            return 0;
        };
        let mut n = 0;
        for sub in sessions.values() {
            match sub.outbox.deliver(frame.clone()) {
                Ok(()) => n += 1,
                Err(_) => self.stats.slow_consumer_drops.add(1),
            }
        }
        self.stats.deliveries.add(n as u64);
        n
    }

    fn deliver_local(&self, topic: &str, frame: &Bytes, published_us: u64) -> usize {
        let local = self.local.borrow();
        let Some(entry) = local.get(topic) else {
            return 0;
        };
        let mut n = 0;
        for sub in entry.subs.values() {
            match sub
                .outbox
                .deliver_stamped(frame.clone(), Some(published_us))
            {
                Ok(()) => n += 1,
                Err(_) => self.stats.slow_consumer_drops.add(1),
            }
        }
        self.stats.deliveries.add(n as u64);
        n
    }

    /// Another core confirmed announcement `gen`; when all have, release the waiting subscribers.
    fn on_interest_ack(&self, topic: &str, gen: u64) {
        let waiters = {
            let mut local = self.local.borrow_mut();
            let Some(a) = local
                .get_mut(topic)
                .and_then(|e| e.announce.as_mut())
                .filter(|a| a.gen == gen)
            else {
                return;
            };
            a.outstanding -= 1;
            if a.outstanding > 0 {
                return;
            }
            local
                .get_mut(topic)
                .and_then(|e| e.announce.take())
                .map(|a| a.waiters)
                .unwrap_or_default()
        };
        for w in waiters {
            w.release_one();
        }
    }

    /// Handle a message from another core; anything that is not pub/sub is handed back.
    pub fn on_bus(&self, msg: BusMsg) -> Option<BusMsg> {
        match msg {
            BusMsg::Publish {
                topic,
                frame,
                published_us,
            } => {
                self.stats.bus_in.add(1);
                self.deliver_local(&topic, &frame, published_us);
            }
            BusMsg::Direct { to, frame } => {
                self.stats.bus_in.add(1);
                self.deliver_user(&to, &frame);
            }
            BusMsg::Interest {
                topic,
                from,
                on,
                gen,
            } => {
                let mut remote = self.remote.borrow_mut();
                if on {
                    *remote.entry(topic.clone()).or_insert(0) |= 1 << from;
                    drop(remote);
                    self.bus.send(from, BusMsg::InterestAck { topic, gen });
                } else if let Some(mask) = remote.get_mut(&topic) {
                    *mask &= !(1 << from);
                    if *mask == 0 {
                        remote.remove(&topic);
                    }
                }
            }
            BusMsg::InterestAck { topic, gen } => self.on_interest_ack(&topic, gen),
            other => return Some(other),
        }
        None
    }
}
