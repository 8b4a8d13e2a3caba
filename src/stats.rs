//! Per-core counters, written only by their own core and read by anyone (stats API, tests, metrics).
//!
//! Each core owns its `CoreStats`; an update is a plain relaxed load + store of a core-private cache
//! line, so the hot path has no contended atomics and no locks. Readers sum the cores at read time.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

/// A single-writer counter or gauge.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0
            .store(self.0.load(Relaxed).saturating_sub(n), Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Which IO driver a core runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Uring,
    Epoll,
}

/// One core's counters. Padded to keep cores off each other's cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreStats {
    /// Open TCP connections (any phase).
    pub connections: Counter,
    /// Upgraded WebSocket sessions open now.
    pub sessions: Counter,
    pub accepted: Counter,
    /// Upgrades refused: gateway at `max_connections` (503), IP at its limit (429), bad Origin (403).
    pub rejected_capacity: Counter,
    pub rejected_per_ip: Counter,
    pub rejected_origin: Counter,
    /// Upgrades refused for a missing or invalid token (401).
    pub auth_failures: Counter,
    /// Sessions closed for sending nothing within `idle_timeout_ms`.
    pub idle_timeouts: Counter,
    /// Messages refused by the per-session rate limit.
    pub rate_limited: Counter,
    /// Handshakes (TLS + HTTP upgrade) that missed `handshake_timeout_ms`.
    pub handshake_timeouts: Counter,
    pub direct_messages: Counter,
    pub tls_handshake_failures: Counter,
    pub upgrades: Counter,
    /// Topics with at least one local subscriber.
    pub topics: Counter,
    pub subscriptions: Counter,
    pub messages_in: Counter,
    pub publishes: Counter,
    /// Frames queued to local subscribers.
    pub deliveries: Counter,
    /// Publishes pushed to / received from other cores.
    pub bus_out: Counter,
    pub bus_in: Counter,
    /// Deliveries refused because the subscriber's outbound queue was full (session closed with 1008).
    pub slow_consumer_drops: Counter,
    pub protocol_errors: Counter,
    /// 0 = not started, 1 = io_uring, 2 = epoll.
    driver: AtomicU8,
}

impl CoreStats {
    pub fn set_driver(&self, d: DriverKind) {
        self.driver.store(
            match d {
                DriverKind::Uring => 1,
                DriverKind::Epoll => 2,
            },
            Relaxed,
        );
    }
    pub fn driver(&self) -> Option<DriverKind> {
        match self.driver.load(Relaxed) {
            1 => Some(DriverKind::Uring),
            2 => Some(DriverKind::Epoll),
            _ => None,
        }
    }
}

/// A point-in-time copy of one core's counters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CoreSnapshot {
    pub core: usize,
    pub driver: Option<DriverKind>,
    pub connections: u64,
    pub sessions: u64,
    pub accepted: u64,
    pub rejected_capacity: u64,
    pub rejected_per_ip: u64,
    pub rejected_origin: u64,
    pub auth_failures: u64,
    pub idle_timeouts: u64,
    pub rate_limited: u64,
    pub handshake_timeouts: u64,
    pub direct_messages: u64,
    pub tls_handshake_failures: u64,
    pub upgrades: u64,
    pub topics: u64,
    pub subscriptions: u64,
    pub messages_in: u64,
    pub publishes: u64,
    pub deliveries: u64,
    pub bus_out: u64,
    pub bus_in: u64,
    pub slow_consumer_drops: u64,
    pub protocol_errors: u64,
}

impl CoreSnapshot {
    pub fn of(core: usize, s: &CoreStats) -> Self {
        Self {
            core,
            driver: s.driver(),
            connections: s.connections.get(),
            sessions: s.sessions.get(),
            accepted: s.accepted.get(),
            rejected_capacity: s.rejected_capacity.get(),
            rejected_per_ip: s.rejected_per_ip.get(),
            rejected_origin: s.rejected_origin.get(),
            auth_failures: s.auth_failures.get(),
            idle_timeouts: s.idle_timeouts.get(),
            rate_limited: s.rate_limited.get(),
            handshake_timeouts: s.handshake_timeouts.get(),
            direct_messages: s.direct_messages.get(),
            tls_handshake_failures: s.tls_handshake_failures.get(),
            upgrades: s.upgrades.get(),
            topics: s.topics.get(),
            subscriptions: s.subscriptions.get(),
            messages_in: s.messages_in.get(),
            publishes: s.publishes.get(),
            deliveries: s.deliveries.get(),
            bus_out: s.bus_out.get(),
            bus_in: s.bus_in.get(),
            slow_consumer_drops: s.slow_consumer_drops.get(),
            protocol_errors: s.protocol_errors.get(),
        }
    }
}
