//! `[cluster]`: the Redis bus that joins several gateway nodes (see `crate::cluster`).

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// Whether to use Redis sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharded {
    /// Sharded when the server is Redis 7 or newer, classic pub/sub otherwise.
    #[default]
    Auto,
    On,
    Off,
}

/// The cluster bus. Off unless `redis_url` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`; unset = this node runs alone.
    pub redis_url: Option<String>,
    /// This node's id, unique among the nodes (tags every message it sends so it never delivers its
    /// own publish twice). Unset = `<hostname>-<pid>-<random>`, new at every start.
    pub node_id: Option<String>,
    /// Channel names are `<prefix>:t:<topic>` and `<prefix>:direct`; nodes of one cluster share it.
    pub channel_prefix: String,
    /// "auto", "on" or "off": sharded pub/sub (SSUBSCRIBE/SPUBLISH).
    pub sharded: Sharded,
    /// Limit for one connection attempt to Redis.
    pub connect_timeout_ms: u64,
    /// First and longest wait between reconnection attempts (doubling in between).
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// `/readyz` answers 503 while Redis is unreachable. Off by default: local delivery still works,
    /// and taking every node out of rotation when Redis is down would turn a degraded cluster into an
    /// outage.
    pub ready_requires_redis: bool,
    /// Deliver JSON that a backend publishes straight to a topic channel (not from a node) as that
    /// topic's `data`.
    pub accept_backend_publishes: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            node_id: None,
            channel_prefix: "wsgate".into(),
            sharded: Sharded::Auto,
            connect_timeout_ms: 2_000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
            ready_requires_redis: false,
            accept_backend_publishes: true,
        }
    }
}

/// Longest node id (it prefixes every message on the wire with a one-byte length).
pub const MAX_NODE_ID: usize = 64;

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("redis-cluster://")) {
                return Err(invalid(
                    "cluster.redis_url",
                    format!("`{url}` is not a redis:// URL (TLS to Redis is not supported yet)"),
                ));
            }
            fred::types::config::Config::from_url(url)
                .map_err(|e| invalid("cluster.redis_url", e.to_string()))?;
        }
        if let Some(id) = &self.node_id {
            if id.is_empty()
                || id.len() > MAX_NODE_ID
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(invalid(
                    "cluster.node_id",
                    format!("must be 1-{MAX_NODE_ID} characters of A-Z a-z 0-9 . _ -"),
                ));
            }
        }
        if self.channel_prefix.is_empty()
            || self
                .channel_prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(invalid(
                "cluster.channel_prefix",
                "must be non-empty, without spaces or control characters",
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(invalid(
                "cluster.connect_timeout_ms",
                "must be greater than 0",
            ));
        }
        if self.reconnect_min_ms == 0 {
            return Err(invalid(
                "cluster.reconnect_min_ms",
                "must be greater than 0",
            ));
        }
        if self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(invalid(
                "cluster.reconnect_max_ms",
                "must be at least cluster.reconnect_min_ms",
            ));
        }
        Ok(())
    }
}
