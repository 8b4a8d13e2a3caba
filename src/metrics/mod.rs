//! Prometheus metrics (prometheus-client): a collector that reads every core's single-writer
//! counters and its once-a-second latency summaries at scrape time. Nothing on the data path knows
//! metrics exist; the cost of a scrape is paid by the scraping thread.

pub mod names;

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::control::Control;
use crate::stats::{CoreSnapshot, LatencySnapshot, LATENCY_BUCKETS_S};

struct GatewayCollector(Arc<Control>);

impl fmt::Debug for GatewayCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GatewayCollector")
    }
}

/// The registry served at `/metrics`.
pub fn registry(control: Arc<Control>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(GatewayCollector(control)));
    r
}

/// Encode the registry as Prometheus/OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

type Labels = Vec<(&'static str, String)>;

/// A label value and how to read its number from a core's snapshot.
type Series = (&'static str, fn(&CoreSnapshot) -> u64);

fn per_core(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    cores: &[CoreSnapshot],
    value: impl Fn(&CoreSnapshot) -> u64,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for c in cores {
        let labels: Labels = vec![("core", c.core.to_string())];
        put(&mut m, &labels, kind, value(c))?;
    }
    Ok(())
}

fn put(m: &mut MetricEncoder, labels: &Labels, kind: MetricType, v: u64) -> fmt::Result {
    let mut fam = m.encode_family(labels)?;
    match kind {
        MetricType::Counter => fam.encode_counter::<NoLabelSet, u64, u64>(&v, None),
        _ => fam.encode_gauge(&(v as i64)),
    }
}

fn per_reason(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    cores: &[CoreSnapshot],
    reasons: &[Series],
) -> fmt::Result {
    per_label(enc, name, help, "reason", cores, reasons)
}

fn per_label(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    key: &'static str,
    cores: &[CoreSnapshot],
    values: &[Series],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for c in cores {
        for (value, f) in values {
            let labels: Labels = vec![("core", c.core.to_string()), (key, value.to_string())];
            put(&mut m, &labels, MetricType::Counter, f(c))?;
        }
    }
    Ok(())
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    snaps: &[(usize, LatencySnapshot)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (core, s) in snaps {
        let labels: Labels = vec![("core", core.to_string())];
        let mut fam = m.encode_family(&labels)?;
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_S
            .iter()
            .zip(s.buckets.iter().chain(std::iter::repeat(&0)))
            .map(|(le, n)| (*le, *n))
            .collect();
        buckets.push((f64::INFINITY, s.count));
        fam.encode_histogram::<NoLabelSet>(s.sum_us / 1e6, s.count, &buckets, None)?;
    }
    Ok(())
}

impl Collector for GatewayCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let ctl = &self.0;
        let cores = ctl.snapshots();
        use MetricType::{Counter as C, Gauge as G};
        per_core(
            &mut enc,
            names::CONNECTIONS,
            "Open TCP connections (any phase)",
            G,
            &cores,
            |c| c.connections,
        )?;
        per_core(
            &mut enc,
            names::SESSIONS,
            "Open WebSocket sessions",
            G,
            &cores,
            |c| c.sessions,
        )?;
        per_core(
            &mut enc,
            names::ACCEPTED,
            "Accepted TCP connections",
            C,
            &cores,
            |c| c.accepted,
        )?;
        per_reason(
            &mut enc,
            names::REJECTED,
            "Connections refused before the upgrade, by reason",
            &cores,
            &[
                ("capacity", |c| c.rejected_capacity),
                ("per_ip", |c| c.rejected_per_ip),
                ("origin", |c| c.rejected_origin),
                ("auth", |c| c.auth_failures),
                ("handshake_timeout", |c| c.handshake_timeouts),
                ("tls_handshake_failed", |c| c.tls_handshake_failures),
            ],
        )?;
        per_label(
            &mut enc,
            names::UPGRADES,
            "Completed WebSocket upgrades, by transport",
            "transport",
            &cores,
            &[
                ("tls", |c| c.upgrades_tls),
                ("plain", |c| c.upgrades - c.upgrades_tls.min(c.upgrades)),
            ],
        )?;
        per_core(
            &mut enc,
            names::AUTH_FAILURES,
            "Upgrades refused for a missing or invalid token",
            C,
            &cores,
            |c| c.auth_failures,
        )?;
        per_core(
            &mut enc,
            names::MESSAGES_IN,
            "WebSocket messages received",
            C,
            &cores,
            |c| c.messages_in,
        )?;
        per_core(
            &mut enc,
            names::MESSAGES_OUT,
            "WebSocket frames written",
            C,
            &cores,
            |c| c.messages_out,
        )?;
        per_core(
            &mut enc,
            names::BYTES_IN,
            "Bytes read from clients (after TLS)",
            C,
            &cores,
            |c| c.bytes_in,
        )?;
        per_core(
            &mut enc,
            names::BYTES_OUT,
            "Bytes written to clients (before TLS)",
            C,
            &cores,
            |c| c.bytes_out,
        )?;
        per_core(
            &mut enc,
            names::PUBLISHES,
            "Publishes accepted on this core (clients and API)",
            C,
            &cores,
            |c| c.publishes,
        )?;
        per_core(
            &mut enc,
            names::DELIVERIES,
            "Frames queued to subscribers on this core",
            C,
            &cores,
            |c| c.deliveries,
        )?;
        per_core(
            &mut enc,
            names::DIRECT_MESSAGES,
            "Direct messages accepted on this core",
            C,
            &cores,
            |c| c.direct_messages,
        )?;
        per_core(
            &mut enc,
            names::BUS_HOPS_OUT,
            "Messages sent to other cores",
            C,
            &cores,
            |c| c.bus_out,
        )?;
        per_core(
            &mut enc,
            names::BUS_HOPS_IN,
            "Publishes received from other cores",
            C,
            &cores,
            |c| c.bus_in,
        )?;
        per_core(
            &mut enc,
            names::BUS_QUEUE_DEPTH,
            "Messages waiting in the core's bus inbox",
            G,
            &cores,
            |c| c.bus_depth,
        )?;
        per_core(
            &mut enc,
            names::TOPICS,
            "Topics with local subscribers",
            G,
            &cores,
            |c| c.topics,
        )?;
        per_core(
            &mut enc,
            names::SUBSCRIPTIONS,
            "Subscriptions",
            G,
            &cores,
            |c| c.subscriptions,
        )?;
        per_reason(
            &mut enc,
            names::DROPPED_MESSAGES,
            "Messages not delivered, by reason",
            &cores,
            &[
                ("slow_consumer", |c| c.slow_consumer_drops),
                ("rate_limited", |c| c.rate_limited),
            ],
        )?;
        per_reason(
            &mut enc,
            names::DISCONNECTS,
            "Sessions closed by the gateway, by reason",
            &cores,
            &[
                ("slow_consumer", |c| c.slow_consumer_closes),
                ("rate_limit", |c| c.rate_limit_closes),
                ("idle", |c| c.idle_timeouts),
                ("protocol_error", |c| c.protocol_errors),
            ],
        )?;
        per_core(
            &mut enc,
            names::PROXY_SESSIONS,
            "Proxied sessions open now",
            G,
            &cores,
            |c| c.proxy_sessions,
        )?;
        per_core(
            &mut enc,
            names::PROXY_UPSTREAM_FAILURES,
            "Upstream connect or handshake attempts that failed",
            C,
            &cores,
            |c| c.proxy_upstream_failures,
        )?;
        per_label(
            &mut enc,
            names::PROXY_BYTES,
            "Payload bytes relayed by proxy routes, by direction",
            "direction",
            &cores,
            &[
                ("upstream", |c| c.proxy_bytes_up),
                ("client", |c| c.proxy_bytes_down),
            ],
        )?;
        per_core(
            &mut enc,
            names::PROXY_BUFFERED_BYTES,
            "Bytes held in proxy relay buffers now",
            G,
            &cores,
            |c| c.proxy_buffered_bytes,
        )?;
        let lat: Vec<_> = ctl
            .stats
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.latency.lock().ok().map(|l| (i, l.clone())))
            .collect();
        histogram(
            &mut enc,
            names::PUBLISH_TO_WRITE_SECONDS,
            "Time from a publish being accepted to its frame being written to a subscriber (sampled, at most one in flight per session)",
            &lat,
        )?;
        let hs: Vec<_> = ctl
            .stats
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.handshake_latency.lock().ok().map(|l| (i, l.clone())))
            .collect();
        histogram(
            &mut enc,
            names::HANDSHAKE_SECONDS,
            "Time from accept to a completed WebSocket upgrade (TLS included)",
            &hs,
        )?;
        let mut up =
            enc.encode_descriptor(names::UPTIME_SECONDS, "Seconds since start", None, G)?;
        up.encode_gauge(&(ctl.started.elapsed().as_secs() as i64))?;
        let mut d = enc.encode_descriptor(
            names::CORE_DRIVER,
            "IO driver of each core (value 1)",
            None,
            G,
        )?;
        for c in &cores {
            let driver = match c.driver {
                Some(crate::stats::DriverKind::Uring) => "io_uring",
                Some(crate::stats::DriverKind::Epoll) => "epoll",
                None => "starting",
            };
            let labels: Labels = vec![("core", c.core.to_string()), ("driver", driver.to_string())];
            put(&mut d, &labels, G, 1)?;
        }
        if let Some(cl) = &ctl.cluster {
            cluster(&mut enc, cl)?;
        }
        Ok(())
    }
}

/// The Redis bridge's link state and counters (only with clustering on).
fn cluster(enc: &mut DescriptorEncoder, cl: &crate::cluster::ClusterState) -> fmt::Result {
    use std::sync::atomic::Ordering::Relaxed;
    let node: Labels = vec![("node", cl.node_id.clone())];
    let series: [(&str, &str, MetricType, u64); 7] = [
        (
            names::CLUSTER_UP,
            "1 while the cluster bus is connected to Redis",
            MetricType::Gauge,
            u64::from(cl.is_up()),
        ),
        (
            names::CLUSTER_CHANNELS,
            "Redis channels this node is subscribed to",
            MetricType::Gauge,
            cl.channels.load(Relaxed),
        ),
        (
            names::CLUSTER_SENT,
            "Publishes and direct messages sent to Redis for other nodes",
            MetricType::Counter,
            cl.sent.load(Relaxed),
        ),
        (
            names::CLUSTER_RECEIVED,
            "Messages from other nodes or backends forwarded to this node's cores",
            MetricType::Counter,
            cl.received.load(Relaxed),
        ),
        (
            names::CLUSTER_NOT_FORWARDED,
            "Local publishes that did not reach other nodes (Redis unreachable or failing)",
            MetricType::Counter,
            cl.not_forwarded.load(Relaxed),
        ),
        (
            names::CLUSTER_DROPPED_INCOMING,
            "Messages from Redis dropped (malformed, or the bridge fell behind)",
            MetricType::Counter,
            cl.dropped_incoming.load(Relaxed),
        ),
        (
            names::CLUSTER_RECONNECTS,
            "Reconnections to Redis after the first connection",
            MetricType::Counter,
            cl.reconnects.load(Relaxed),
        ),
    ];
    for (name, help, kind, v) in series {
        let mut m = enc.encode_descriptor(name, help, None, kind)?;
        put(&mut m, &node, kind, v)?;
    }
    Ok(())
}
