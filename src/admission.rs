//! Gateway-wide connection accounting: the total open connections and, when a per-IP limit is set,
//! open connections per client IP. These are the only counters shared by all cores, because a client's
//! connections land on any core; they are touched once at accept and once at close, never per message.
//!
//! The total is one atomic. The per-IP table is split into shards, each a small `Mutex<HashMap>`
//! held for one hash-map update; with no per-IP limit configured it is never touched.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 64;

/// Shared connection counters and their limits.
pub struct Admission {
    open: AtomicUsize,
    max: usize,
    per_ip_max: usize,
    per_ip: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The gateway is at `limits.max_connections` (503).
    Capacity,
    /// This IP is at `limits.max_connections_per_ip` (429).
    PerIp,
}

/// Holds one connection's place in the counters; dropping it gives the place back.
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(max: usize, per_ip_max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            per_ip_max,
            per_ip: (0..SHARDS).map(|_| Mutex::default()).collect(),
        })
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => (u128::from(*v6) as usize) ^ ((u128::from(*v6) >> 64) as usize),
        };
        &self.per_ip[h.wrapping_mul(0x9E37_79B9) % SHARDS]
    }

    /// Count a newly accepted connection. Every accepted socket gets a ticket (it holds a file
    /// descriptor either way); `over_limit` tells the HTTP layer whether to refuse its upgrade.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Ticket {
        self.open.fetch_add(1, Ordering::Relaxed);
        if self.per_ip_max > 0 {
            if let Ok(mut m) = self.shard(&ip).lock() {
                *m.entry(ip).or_insert(0) += 1;
            }
        }
        Ticket {
            admission: self.clone(),
            ip,
        }
    }

    /// Whether a connection from `ip` (already counted) is beyond a limit.
    pub fn over_limit(&self, ip: IpAddr) -> Option<Refusal> {
        if self.open.load(Ordering::Relaxed) > self.max {
            return Some(Refusal::Capacity);
        }
        if self.per_ip_max > 0 && self.ip_connections(ip) as usize > self.per_ip_max {
            return Some(Refusal::PerIp);
        }
        None
    }

    /// Open connections now, gateway-wide.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Most connections; accept refuses outright beyond this plus a margin for in-flight refusals.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Open connections from `ip` (0 when no per-IP limit is configured).
    pub fn ip_connections(&self, ip: IpAddr) -> u32 {
        self.shard(&ip)
            .lock()
            .map(|m| m.get(&ip).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Distinct IPs with open connections (0 when no per-IP limit is configured).
    pub fn tracked_ips(&self) -> usize {
        self.per_ip
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

impl Ticket {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let a = &self.admission;
        a.open.fetch_sub(1, Ordering::Relaxed);
        if a.per_ip_max > 0 {
            if let Ok(mut m) = a.shard(&self.ip).lock() {
                if let Some(n) = m.get_mut(&self.ip) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&self.ip);
                    }
                }
            }
        }
    }
}
