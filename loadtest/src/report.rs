//! Results: what one process measured ([`Partial`]), how partials from `--procs` children merge,
//! and the final [`Report`] printed as a table or as one JSON line.
//!
//! A `Partial` is deliberately dumb (named counters, named histograms, error strings) so children
//! can ship it to the parent as JSON: histograms travel as hdrhistogram V2 serialisations in
//! base64, which merge losslessly, so percentiles over several processes are exact rather than
//! averages of percentiles.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::{Context, Result};
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest trackable latency: 10 minutes in µs (no run lasts longer).
const HIST_MAX_US: u64 = 600_000_000;

/// A latency histogram in microseconds that serialises as base64(V2).
#[derive(Clone, Debug)]
pub struct Hist(pub Histogram<u64>);

impl Hist {
    pub fn new() -> Hist {
        // Constant, valid bounds: this cannot fail at run time (not a network/OS condition).
        Hist(
            Histogram::new_with_bounds(1, HIST_MAX_US, 3)
                .expect("constant histogram bounds are valid"),
        )
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, HIST_MAX_US));
    }

    pub fn merge(&mut self, other: &Hist) {
        // add() only fails if values do not fit; saturating fallback value by value.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    fn encode(&self) -> Result<String> {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut buf)
            .map_err(|e| anyhow::anyhow!("histogram serialisation: {e:?}"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(buf))
    }

    fn decode(s: &str) -> Result<Hist> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .context("histogram base64")?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| anyhow::anyhow!("histogram deserialisation: {e:?}"))?;
        Ok(Hist(h))
    }
}

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let enc = self.encode().map_err(serde::ser::Error::custom)?;
        s.serialize_str(&enc)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hist, D::Error> {
        let s = String::deserialize(d)?;
        Hist::decode(&s).map_err(serde::de::Error::custom)
    }
}

/// Several mutex-protected histograms so that tasks on different worker threads rarely contend;
/// one histogram per connection would cost ~100 KiB each, too much for 20k subscribers.
pub struct ShardedHist {
    shards: Vec<Mutex<Hist>>,
}

impl ShardedHist {
    pub fn new(threads: usize) -> ShardedHist {
        let n = (threads * 4).max(1);
        ShardedHist {
            shards: (0..n).map(|_| Mutex::new(Hist::new())).collect(),
        }
    }

    pub fn record_us(&self, shard: usize, us: u64) {
        let m = &self.shards[shard % self.shards.len()];
        // A poisoned lock only means another task panicked mid-record; the data is still usable.
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        g.record_us(us);
    }

    pub fn collect(&self) -> Hist {
        let mut out = Hist::new();
        for m in &self.shards {
            let g = m.lock().unwrap_or_else(|p| p.into_inner());
            out.merge(&g);
        }
        out
    }
}

/// Latency percentiles in microseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// What one process measured. Merged by summing counters/errors/CPU and by max of durations.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Partial {
    pub counters: BTreeMap<String, u64>,
    pub hists: BTreeMap<String, Hist>,
    /// Error message -> occurrences.
    pub errors: BTreeMap<String, u64>,
    /// Named durations in seconds (window, publish, drain, ramp, last delivery): merged by max.
    pub secs: BTreeMap<String, f64>,
    /// Fanout: accepted publishes per topic (summed element-wise).
    pub pubs_per_topic: Vec<u64>,
    pub client_cpu_user_s: f64,
    pub client_cpu_sys_s: f64,
}

impl Partial {
    pub fn add(&mut self, name: &str, v: u64) {
        *self.counters.entry(name.to_string()).or_insert(0) += v;
    }

    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    pub fn secs(&self, name: &str) -> f64 {
        self.secs.get(name).copied().unwrap_or(0.0)
    }

    pub fn set_secs(&mut self, name: &str, v: f64) {
        let e = self.secs.entry(name.to_string()).or_insert(0.0);
        *e = e.max(v);
    }

    pub fn merge(&mut self, o: &Partial) {
        for (k, v) in &o.counters {
            self.add(k, *v);
        }
        for (k, h) in &o.hists {
            self.hists.entry(k.clone()).or_default().merge(h);
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &o.secs {
            self.set_secs(k, *v);
        }
        if self.pubs_per_topic.len() < o.pubs_per_topic.len() {
            self.pubs_per_topic.resize(o.pubs_per_topic.len(), 0);
        }
        for (a, b) in self.pubs_per_topic.iter_mut().zip(&o.pubs_per_topic) {
            *a += b;
        }
        self.client_cpu_user_s += o.client_cpu_user_s;
        self.client_cpu_sys_s += o.client_cpu_sys_s;
    }

    pub fn summary(&self, hist: &str) -> Option<LatencySummary> {
        self.hists.get(hist).map(Hist::summary)
    }
}

/// Server observations at the three marks: before setup, at the start and at the end of the
/// measured window.
#[derive(Debug, Clone, Default)]
pub struct ServerMarks {
    pub start: Option<crate::procstat::ServerSample>,
    pub ready: Option<crate::procstat::ServerSample>,
    pub end: Option<crate::procstat::ServerSample>,
    pub error: Option<String>,
}

/// The final, flat report. Field order = JSON key order.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub url: String,
    pub ok: bool,
    pub procs: usize,
    pub threads: usize,
    pub connections: usize,
    pub duration_s: f64,
    pub elapsed_s: f64,
    /// What one "op" is for this scenario (round_trip, delivery, connection, handshake).
    pub op: String,
    pub ops: u64,
    pub ops_per_s: f64,
    pub latency_us: Option<LatencySummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatches: Option<u64>,
    // fanout
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publishers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_target: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publishes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publishes_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_errors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicated: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reordered: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unexpected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_s: Option<f64>,
    // idle / storm
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_rate_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_kib_per_conn: Option<f64>,
    /// The same at the end of the hold (after the server's heartbeat pings, if the hold outlasts
    /// its ping interval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_kib_per_conn_end: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_latency_us: Option<LatencySummary>,
    /// Ping frames received from the server (all connections, whole run).
    pub pings: u64,
    // server
    pub server_pid: Option<u32>,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    pub server_cpu_us_per_op: Option<f64>,
    pub server_setup_cpu_s: Option<f64>,
    pub server_rss_kib: Option<u64>,
    pub server_rss_kib_start: Option<u64>,
    pub server_rss_kib_ready: Option<u64>,
    // client
    pub client_cpu_s: f64,
    pub client_cpu_user_s: f64,
    pub client_cpu_sys_s: f64,
    pub client_cpu_pct: f64,
    pub errors: u64,
    pub error_messages: BTreeMap<String, u64>,
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

impl Report {
    /// Fills the fields every scenario shares: CPU, server marks, errors.
    pub fn finish_common(&mut self, p: &Partial, marks: &ServerMarks, server_pid: Option<u32>) {
        self.server_pid = server_pid;
        self.client_cpu_user_s = round3(p.client_cpu_user_s);
        self.client_cpu_sys_s = round3(p.client_cpu_sys_s);
        self.client_cpu_s = round3(p.client_cpu_user_s + p.client_cpu_sys_s);
        if self.elapsed_s >= 0.1 {
            self.client_cpu_pct = (self.client_cpu_s / self.elapsed_s * 1000.0).round() / 10.0;
        }
        self.pings = p.get("pings");
        let tck = crate::procstat::clk_tck();
        if let (Some(r), Some(e)) = (marks.ready, marks.end) {
            let cpu = e.cpu_ticks.saturating_sub(r.cpu_ticks) as f64 / tck;
            self.server_cpu_s = Some(round3(cpu));
            let wall = e.at.duration_since(r.at).as_secs_f64();
            if wall > 0.0 {
                self.server_cpu_pct = Some((cpu / wall * 1000.0).round() / 10.0);
            }
            if self.ops > 0 && self.op != "connection" {
                self.server_cpu_us_per_op = Some(round3(cpu * 1e6 / self.ops as f64));
            }
            self.server_rss_kib = Some(e.rss_kib);
        }
        if let (Some(s), Some(r)) = (marks.start, marks.ready) {
            self.server_setup_cpu_s =
                Some(round3(r.cpu_ticks.saturating_sub(s.cpu_ticks) as f64 / tck));
            self.server_rss_kib_start = Some(s.rss_kib);
            self.server_rss_kib_ready = Some(r.rss_kib);
        }
        self.error_messages = p.errors.clone();
        if let Some(e) = &marks.error {
            *self.error_messages.entry(e.clone()).or_insert(0) += 1;
        }
        self.errors = self.error_messages.values().sum();
    }

    /// Exit status: 0 clean, 1 run errors (server died, connections failed), 3 correctness
    /// violations (echo mismatches, lost/duplicated/reordered deliveries).
    pub fn exit_code(&self) -> i32 {
        let violations = self.mismatches.unwrap_or(0)
            + self.lost.unwrap_or(0)
            + self.duplicated.unwrap_or(0)
            + self.reordered.unwrap_or(0)
            + self.unexpected.unwrap_or(0);
        if self.errors > 0 {
            1
        } else if violations > 0 {
            3
        } else {
            0
        }
    }

    pub fn set_ok(&mut self) {
        self.ok = self.exit_code() == 0;
    }

    /// Human-readable table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
        row("scenario", format!("{}  {}", self.scenario, self.url));
        row(
            "setup",
            format!(
                "{} connections, {} proc(s) x {} thread(s), window {:.1}s (elapsed {:.2}s)",
                self.connections, self.procs, self.threads, self.duration_s, self.elapsed_s
            ),
        );
        let plural = match self.op.as_str() {
            "delivery" => "deliveries".to_string(),
            op => format!("{op}s"),
        };
        if self.op != "connection" {
            row(
                &plural,
                format!("{}  ({}/s)", self.ops, human(self.ops_per_s)),
            );
        }
        if let (Some(b), Some(bps)) = (self.bytes, self.bytes_per_s) {
            row("bytes", format!("{b}  ({}B/s)", human(bps)));
        }
        if let Some(m) = self.mismatches {
            row("mismatches", m.to_string());
        }
        if let Some(p) = self.publishes {
            row(
                "publishes",
                format!(
                    "{p}  ({}/s, target {}/s, {} rejected)",
                    human(self.publishes_per_s.unwrap_or(0.0)),
                    match self.rate_target {
                        Some(r) if r > 0.0 => human(r),
                        _ => "max".to_string(),
                    },
                    self.publish_errors.unwrap_or(0)
                ),
            );
        }
        if let (Some(e), Some(d)) = (self.expected, self.deliveries) {
            row(
                "expected",
                format!(
                    "{e} deliveries, {d} received (unique)  publish {:.2}s + drain {:.2}s",
                    self.publish_s.unwrap_or(0.0),
                    self.drain_s.unwrap_or(0.0)
                ),
            );
            row(
                "lost/dup/reord",
                format!(
                    "{} / {} / {}  (unexpected {})",
                    self.lost.unwrap_or(0),
                    self.duplicated.unwrap_or(0),
                    self.reordered.unwrap_or(0),
                    self.unexpected.unwrap_or(0)
                ),
            );
        }
        if let Some(c) = self.connected {
            row(
                "connected",
                format!(
                    "{c}  failures {}  ({}/s over {:.2}s ramp)  dropped during hold {}",
                    self.failures.unwrap_or(0),
                    human(self.connect_rate_per_s.unwrap_or(0.0)),
                    self.ramp_s.unwrap_or(0.0),
                    self.dropped.unwrap_or(0)
                ),
            );
        } else if let Some(f) = self.failures {
            row("failures", f.to_string());
        }
        if let Some(l) = &self.latency_us {
            row(&format!("{} latency us", self.op), lat(l));
        }
        if let Some(l) = &self.handshake_latency_us {
            row("connect latency us", lat(l));
        }
        row("server pings", self.pings.to_string());
        match (self.server_pid, self.server_cpu_s) {
            (Some(pid), Some(cpu)) => {
                row(
                    "server cpu",
                    format!(
                        "pid {pid}: {cpu:.3}s over window ({:.1}% of a core){}",
                        self.server_cpu_pct.unwrap_or(0.0),
                        match self.server_cpu_us_per_op {
                            // idle: the per-op figure is the connect phase's CPU.
                            Some(u) if self.op == "connection" => {
                                format!(", setup {u:.2} us/connection")
                            }
                            Some(u) => format!(", {u:.2} us/{}", self.op),
                            None => String::new(),
                        }
                    ),
                );
                row(
                    "server rss",
                    format!(
                        "{} KiB at end (before setup {} KiB, window start {} KiB){}",
                        self.server_rss_kib.unwrap_or(0),
                        self.server_rss_kib_start.unwrap_or(0),
                        self.server_rss_kib_ready.unwrap_or(0),
                        match (
                            self.server_rss_kib_per_conn,
                            self.server_rss_kib_per_conn_end
                        ) {
                            (Some(v), Some(e)) => {
                                format!(", {v:.2} KiB/conn when connected, {e:.2} at end")
                            }
                            (Some(v), None) => format!(", {v:.2} KiB/conn"),
                            _ => String::new(),
                        }
                    ),
                );
                if let Some(s) = self.server_setup_cpu_s {
                    row("server setup cpu", format!("{s:.3}s"));
                }
            }
            (Some(pid), None) => row("server", format!("pid {pid}: not observed")),
            _ => row("server cpu", "n/a (pass --server-pid PID)".to_string()),
        }
        row(
            "client cpu",
            format!(
                "{:.3}s (user {:.3} sys {:.3}) = {:.1}% of a core",
                self.client_cpu_s,
                self.client_cpu_user_s,
                self.client_cpu_sys_s,
                self.client_cpu_pct
            ),
        );
        row("errors", self.errors.to_string());
        for (m, n) in &self.error_messages {
            row("  error", format!("{n} x {m}"));
        }
        row("result", if self.ok { "OK" } else { "FAILED" }.to_string());
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<w$}  {v}\n"))
            .collect()
    }
}

fn lat(l: &LatencySummary) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={}, mean {:.1})",
        l.p50, l.p90, l.p99, l.p999, l.max, l.count, l.mean
    )
}

/// 12345.6 -> "12.3k".
pub fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

/// Per-second rate helper used by the scenario report builders.
pub fn per_s(n: u64, secs: f64) -> f64 {
    rate(n, secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_roundtrip_and_merge() -> Result<()> {
        let mut a = Hist::new();
        for v in 1..=1000 {
            a.record_us(v);
        }
        let mut p = Partial::default();
        p.hists.insert("rtt".into(), a);
        p.add("ops", 1000);
        let json = serde_json::to_string(&p)?;
        let back: Partial = serde_json::from_str(&json)?;
        let mut merged = Partial::default();
        merged.merge(&back);
        merged.merge(&back);
        let s = merged.summary("rtt").context("hist")?;
        assert_eq!(s.count, 2000);
        assert_eq!(merged.get("ops"), 2000);
        assert!(s.p50 >= 495 && s.p50 <= 505);
        Ok(())
    }

    #[test]
    fn exit_codes() {
        let mut r = Report::default();
        assert_eq!(r.exit_code(), 0);
        r.lost = Some(1);
        assert_eq!(r.exit_code(), 3);
        r.errors = 2;
        assert_eq!(r.exit_code(), 1);
    }
}
