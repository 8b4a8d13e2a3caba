//! Every metric name wsgate exports, in one place (Prometheus conventions: `wsgate_` prefix, base
//! units, counters get `_total` appended by the encoder).

pub const CONNECTIONS: &str = "wsgate_connections";
pub const SESSIONS: &str = "wsgate_sessions";
pub const ACCEPTED: &str = "wsgate_accepted_connections";
pub const REJECTED: &str = "wsgate_rejected_connections";
pub const UPGRADES: &str = "wsgate_upgrades";
pub const HANDSHAKE_SECONDS: &str = "wsgate_handshake_duration_seconds";
pub const MESSAGES_IN: &str = "wsgate_messages_in";
pub const MESSAGES_OUT: &str = "wsgate_messages_out";
pub const BYTES_IN: &str = "wsgate_bytes_in";
pub const BYTES_OUT: &str = "wsgate_bytes_out";
pub const PUBLISHES: &str = "wsgate_publishes";
pub const DELIVERIES: &str = "wsgate_deliveries";
pub const DIRECT_MESSAGES: &str = "wsgate_direct_messages";
pub const BUS_HOPS_OUT: &str = "wsgate_bus_hops_out";
pub const BUS_HOPS_IN: &str = "wsgate_bus_hops_in";
pub const BUS_QUEUE_DEPTH: &str = "wsgate_bus_queue_depth";
pub const DROPPED_MESSAGES: &str = "wsgate_dropped_messages";
pub const DISCONNECTS: &str = "wsgate_disconnects";
pub const AUTH_FAILURES: &str = "wsgate_auth_failures";
pub const TOPICS: &str = "wsgate_topics";
pub const SUBSCRIPTIONS: &str = "wsgate_subscriptions";
pub const PUBLISH_TO_WRITE_SECONDS: &str = "wsgate_publish_to_write_seconds";
pub const UPTIME_SECONDS: &str = "wsgate_uptime_seconds";
pub const CORE_DRIVER: &str = "wsgate_core_driver";
pub const CLUSTER_UP: &str = "wsgate_cluster_redis_up";
pub const CLUSTER_CHANNELS: &str = "wsgate_cluster_channels";
pub const CLUSTER_SENT: &str = "wsgate_cluster_sent_messages";
pub const CLUSTER_RECEIVED: &str = "wsgate_cluster_received_messages";
pub const CLUSTER_NOT_FORWARDED: &str = "wsgate_cluster_not_forwarded_messages";
pub const CLUSTER_DROPPED_INCOMING: &str = "wsgate_cluster_dropped_incoming_messages";
pub const CLUSTER_RECONNECTS: &str = "wsgate_cluster_reconnects";
pub const PROXY_SESSIONS: &str = "wsgate_proxy_sessions";
pub const PROXY_UPSTREAM_FAILURES: &str = "wsgate_proxy_upstream_failures";
pub const PROXY_BYTES: &str = "wsgate_proxy_bytes";
pub const PROXY_BUFFERED_BYTES: &str = "wsgate_proxy_buffered_bytes";
