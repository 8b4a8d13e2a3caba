//! Per-core counters, written only by their own core and read by anyone (stats API, tests, metrics).
//!
//! Each core owns its `CoreStats`; an update is a plain relaxed load + store of a core-private cache
//! line, so the hot path has no contended atomics and no locks. Readers sum the cores at read time.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;

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
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
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
    /// Upgrades that came over TLS (the rest are plain).
    pub upgrades_tls: Counter,
    /// Sessions closed as slow consumers / for their rate limit.
    pub slow_consumer_closes: Counter,
    pub rate_limit_closes: Counter,
    /// Topics with at least one local subscriber.
    pub topics: Counter,
    pub subscriptions: Counter,
    pub messages_in: Counter,
    /// Frames written to clients (deliveries, acks, echoes, control frames).
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
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
    /// The core's publish-to-write latency, copied from its core-local histogram once a second (the
    /// only lock here: taken by the core once a second and by scrapes).
    pub latency: Mutex<LatencySnapshot>,
    /// Accept -> upgrade durations, summarised the same way.
    pub handshake_latency: Mutex<LatencySnapshot>,
    /// Bus inbox depth, sampled once a second by the core.
    pub bus_depth: Counter,
    /// Proxied sessions open now (see `crate::proxy`).
    pub proxy_sessions: Counter,
    /// Upstream connects or handshakes that failed (each attempt, including retries).
    pub proxy_upstream_failures: Counter,
    /// Payload bytes relayed client -> upstream and upstream -> client.
    pub proxy_bytes_up: Counter,
    pub proxy_bytes_down: Counter,
    /// Bytes the proxy holds in its relay buffers now (both directions, all proxied sessions).
    pub proxy_buffered_bytes: Counter,
}

/// Upper bounds (seconds) of the latency histogram buckets exported to Prometheus.
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A summary of an hdrhistogram of microseconds: enough for Prometheus buckets and percentiles.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LatencySnapshot {
    pub count: u64,
    pub sum_us: f64,
    /// Cumulative counts at each bound of `LATENCY_BUCKETS_S`.
    pub buckets: Vec<u64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySnapshot {
    pub fn of(h: &Histogram<u64>) -> Self {
        let buckets = LATENCY_BUCKETS_S
            .iter()
            .map(|le| h.count_between(0, (le * 1e6) as u64))
            .collect();
        Self {
            count: h.len(),
            sum_us: h.mean() * h.len() as f64,
            buckets,
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// A histogram of microseconds, 1 µs to 60 s, 2 significant digits (small enough to summarise
/// every second).
pub fn latency_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail at run time.
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
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
    pub upgrades_tls: u64,
    pub slow_consumer_closes: u64,
    pub rate_limit_closes: u64,
    pub bus_depth: u64,
    pub topics: u64,
    pub subscriptions: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub publishes: u64,
    pub deliveries: u64,
    pub bus_out: u64,
    pub bus_in: u64,
    pub slow_consumer_drops: u64,
    pub protocol_errors: u64,
    pub proxy_sessions: u64,
    pub proxy_upstream_failures: u64,
    pub proxy_bytes_up: u64,
    pub proxy_bytes_down: u64,
    pub proxy_buffered_bytes: u64,
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
            upgrades_tls: s.upgrades_tls.get(),
            slow_consumer_closes: s.slow_consumer_closes.get(),
            rate_limit_closes: s.rate_limit_closes.get(),
            bus_depth: s.bus_depth.get(),
            topics: s.topics.get(),
            subscriptions: s.subscriptions.get(),
            messages_in: s.messages_in.get(),
            messages_out: s.messages_out.get(),
            bytes_in: s.bytes_in.get(),
            bytes_out: s.bytes_out.get(),
            publishes: s.publishes.get(),
            deliveries: s.deliveries.get(),
            bus_out: s.bus_out.get(),
            bus_in: s.bus_in.get(),
            slow_consumer_drops: s.slow_consumer_drops.get(),
            protocol_errors: s.protocol_errors.get(),
            proxy_sessions: s.proxy_sessions.get(),
            proxy_upstream_failures: s.proxy_upstream_failures.get(),
            proxy_bytes_up: s.proxy_bytes_up.get(),
            proxy_bytes_down: s.proxy_bytes_down.get(),
            proxy_buffered_bytes: s.proxy_buffered_bytes.get(),
        }
    }
}
