//! Gateway-wide control state, shared by the cores, the admin listener and `Gateway`: readiness,
//! the cross-core stats view, and reloading certificates and auth keys without a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use serde_json::{json, Value};

use crate::admission::Admission;
use crate::auth::Verifier;
use crate::config::Config;
use crate::stats::{CoreSnapshot, CoreStats};
use crate::tls::CertStore;

pub struct Control {
    pub config: Arc<Config>,
    pub started: Instant,
    /// Set when shutdown begins: `/readyz` turns 503.
    pub draining: AtomicBool,
    pub stats: Vec<Arc<CoreStats>>,
    pub admission: Arc<Admission>,
    /// The wss certificate, swappable at run time (`None` with wss off).
    pub certs: Option<Arc<CertStore>>,
    /// JWT keys, swappable at run time (`None` inside when auth is not configured).
    pub verifier: Arc<ArcSwapOption<Verifier>>,
    /// The cluster bridge's state, with clustering on.
    pub cluster: Option<Arc<crate::cluster::ClusterState>>,
}

/// What a reload changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub certificate: &'static str,
    pub auth_keys: &'static str,
}

impl Control {
    /// Every core started (its driver is known), no shutdown has begun and, where the config asks
    /// for it, the cluster bus is connected.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && self.stats.iter().all(|s| s.driver().is_some())
            && (!self.config.cluster.ready_requires_redis
                || self.cluster.as_ref().is_none_or(|c| c.is_up()))
    }

    pub fn snapshots(&self) -> Vec<CoreSnapshot> {
        self.stats
            .iter()
            .enumerate()
            .map(|(i, s)| CoreSnapshot::of(i, s))
            .collect()
    }

    /// Re-read the certificate/key files and the auth key files. On any error nothing changes for
    /// that part and the error is returned; established sessions are never touched.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        let certificate = match (&self.certs, &self.config.tls.cert, &self.config.tls.key) {
            (Some(store), Some(cert), Some(key)) => {
                store.reload(cert, key).map_err(|e| e.to_string())?;
                "reloaded"
            }
            (Some(_), _, _) => "self-signed (nothing to reload)",
            (None, _, _) => "wss off",
        };
        let auth_keys = if self.config.auth.has_keys() {
            let v = Verifier::from_config(&self.config.auth).map_err(|e| e.to_string())?;
            self.verifier.store(v.map(Arc::new));
            "reloaded"
        } else {
            "not configured"
        };
        tracing::info!(certificate, auth_keys, "reload done");
        Ok(ReloadReport {
            certificate,
            auth_keys,
        })
    }

    /// The `/api/stats` document: totals, per core, drops by reason, uptime.
    pub fn stats_json(&self) -> Value {
        let cores = self.snapshots();
        let sum = |f: fn(&CoreSnapshot) -> u64| cores.iter().map(f).sum::<u64>();
        let latency = self
            .stats
            .iter()
            .filter_map(|s| s.latency.lock().ok().map(|l| l.clone()))
            .max_by_key(|l| l.p99_us);
        json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "ready": self.ready(),
            "connections": self.admission.open(),
            "sessions": sum(|c| c.sessions),
            "topics": sum(|c| c.topics),
            "subscriptions": sum(|c| c.subscriptions),
            "messages_in": sum(|c| c.messages_in),
            "messages_out": sum(|c| c.messages_out),
            "bytes_in": sum(|c| c.bytes_in),
            "bytes_out": sum(|c| c.bytes_out),
            "publishes": sum(|c| c.publishes),
            "deliveries": sum(|c| c.deliveries),
            "drops": {
                "slow_consumer": sum(|c| c.slow_consumer_drops),
                "rate_limited": sum(|c| c.rate_limited),
                "idle_timeout": sum(|c| c.idle_timeouts),
                "protocol_error": sum(|c| c.protocol_errors),
            },
            "rejected": {
                "capacity": sum(|c| c.rejected_capacity),
                "per_ip": sum(|c| c.rejected_per_ip),
                "origin": sum(|c| c.rejected_origin),
                "auth": sum(|c| c.auth_failures),
                "handshake_timeout": sum(|c| c.handshake_timeouts),
                "tls_handshake_failed": sum(|c| c.tls_handshake_failures),
            },
            "publish_to_write_latency_us_worst_core": latency,
            "cluster": self.cluster.as_ref().map(|c| c.json()),
            "cores": cores,
        })
    }
}
