//! Command-line contract of `wsgate-load`.
//!
//! The flags are shared by every scenario where they mean the same thing (`--url`, `--duration`,
//! `--json`, `--server-pid`, TLS, source addresses, process/thread fan-out) and live in
//! [`Common`], flattened into each scenario's own argument struct so that
//! `wsgate-load echo --url ... --connections 10` reads naturally. The hidden `--child-index` /
//! `--child-of` pair is how the `--procs` parent re-executes itself: a child gets the very same
//! argument vector plus those two flags, so there is exactly one parser for both roles.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

/// A bad command line or option value (exit status 2), as opposed to a failed run (1).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// `bail!` for usage errors.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::cli::Usage(format!($($arg)*)).into())
    };
}

/// Top-level parser.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "wsgate-load",
    version,
    about = "Load generator for the wsgate WebSocket pub/sub gateway",
    long_about = "Load generator for the wsgate WebSocket pub/sub gateway.\n\n\
        Scenarios: echo (round trips on /echo), fanout (pub/sub on /ws), idle (many held \
        connections), storm (connect + upgrade + close cycles).\n\
        Only loopback targets are accepted unless --allow-remote is given."
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The four workloads.
#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// C connections doing verified echo round trips on /echo.
    Echo(EchoArgs),
    /// S subscribers over T topics, N publishers at a target rate, end-to-end latency and loss.
    Fanout(FanoutArgs),
    /// Open N connections at a ramp rate and hold them (server memory per connection, pings).
    Idle(IdleArgs),
    /// C workers doing connect + upgrade + close cycles (handshakes/s and latency).
    Storm(StormArgs),
}

impl Scenario {
    pub fn common(&self) -> &Common {
        match self {
            Scenario::Echo(a) => &a.common,
            Scenario::Fanout(a) => &a.common,
            Scenario::Idle(a) => &a.common,
            Scenario::Storm(a) => &a.common,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Echo(_) => "echo",
            Scenario::Fanout(_) => "fanout",
            Scenario::Idle(_) => "idle",
            Scenario::Storm(_) => "storm",
        }
    }

    /// Route used when `--url` carries no path.
    pub fn default_path(&self) -> &'static str {
        match self {
            Scenario::Echo(_) => "/echo",
            _ => "/ws",
        }
    }

    /// Length of the measured window (seconds).
    pub fn window_secs(&self) -> f64 {
        match self {
            Scenario::Idle(a) => a.hold.unwrap_or(a.common.duration),
            _ => self.common().duration,
        }
    }

    /// Connections (or workers/subscribers+publishers) the whole run opens, for the report.
    pub fn connections(&self) -> usize {
        match self {
            Scenario::Echo(a) => a.connections,
            Scenario::Fanout(a) => a.subscribers + a.publishers,
            Scenario::Idle(a) => a.connections,
            Scenario::Storm(a) => a.connections,
        }
    }

    /// Hard upper bound for the whole run: setup + window + drain + ramp + slack for closing and
    /// reporting. A watchdog thread enforces it so that no run can hang.
    pub fn global_deadline(&self) -> Duration {
        let c = self.common();
        let ramp = match self {
            Scenario::Idle(a) if a.ramp > 0.0 => a.connections as f64 / a.ramp,
            _ => 0.0,
        };
        let secs = c.setup_timeout + self.window_secs() + 2.0 * c.drain + ramp + 15.0;
        Duration::from_secs_f64(secs.max(1.0))
    }

    /// Checks that do not need the network.
    pub fn validate(&self) -> Result<()> {
        let c = self.common();
        if !(c.duration.is_finite() && c.duration >= 0.0) {
            crate::usage!("--duration must be a non-negative number of seconds");
        }
        if !(c.drain.is_finite() && c.drain >= 0.0) {
            crate::usage!("--drain must be a non-negative number of seconds");
        }
        if !(c.connect_timeout.is_finite() && c.connect_timeout > 0.0) {
            crate::usage!("--connect-timeout must be > 0");
        }
        if !(c.setup_timeout.is_finite() && c.setup_timeout > 0.0) {
            crate::usage!("--setup-timeout must be > 0");
        }
        if c.procs == 0 || c.threads == 0 || c.connect_concurrency == 0 {
            crate::usage!("--procs, --threads and --connect-concurrency must be >= 1");
        }
        match self {
            Scenario::Echo(a) => {
                if a.pipeline == 0 {
                    crate::usage!("--pipeline must be >= 1");
                }
            }
            Scenario::Fanout(a) => {
                if a.topics == 0 {
                    crate::usage!("--topics must be >= 1");
                }
                if a.publishers == 0 {
                    crate::usage!("--publishers must be >= 1");
                }
                if !(a.rate.is_finite() && a.rate >= 0.0) {
                    crate::usage!("--rate must be >= 0 (0 = open loop)");
                }
                if a.window == 0 {
                    crate::usage!("--window must be >= 1");
                }
            }
            Scenario::Idle(a) => {
                if !(a.ramp.is_finite() && a.ramp > 0.0) {
                    crate::usage!("--ramp must be > 0 connections per second");
                }
                if let Some(h) = a.hold {
                    if !(h.is_finite() && h >= 0.0) {
                        crate::usage!("--hold must be a non-negative number of seconds");
                    }
                }
            }
            Scenario::Storm(a) => {
                if a.connections == 0 {
                    crate::usage!("--connections (workers) must be >= 1");
                }
            }
        }
        Ok(())
    }
}

/// Flags every scenario understands.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Target, ws://HOST:PORT[/path] or wss://... (path defaults per scenario). Several
    /// comma-separated targets (the nodes of one cluster) get the connections round-robin.
    #[arg(long)]
    pub url: String,

    /// Length of the measured window in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,

    /// Drain timeout in seconds: how long to wait for in-flight echoes / deliveries after the
    /// window closes.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub drain: f64,

    /// Print one JSON object with every figure as the last stdout line (instead of the table).
    #[arg(long)]
    pub json: bool,

    /// Gateway process to observe: CPU time and VmRSS from /proc over the measured window.
    /// Several comma-separated PIDs (e.g. the nodes of a cluster, Redis) are summed.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// wss only: accept any server certificate (self-signed test certificates).
    #[arg(long)]
    pub insecure: bool,

    /// wss only: trust the CA certificate(s) in this PEM file.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,

    /// Bind client sockets to these source addresses round-robin, e.g. 127.0.0.2-127.0.0.9 or
    /// 127.0.0.2,127.0.0.3 (more than ~28k connections to one server port need several).
    #[arg(long, value_name = "RANGE|LIST")]
    pub source_ips: Option<String>,

    /// Split the load over N child processes (one process holds < RLIMIT_NOFILE sockets).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub procs: usize,

    /// Tokio worker threads per process (1 = current-thread runtime, leaves CPU to the server).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,

    /// Allow non-loopback targets. Only for real deployments you own: the generator can
    /// saturate a server and its network.
    #[arg(long)]
    pub allow_remote: bool,

    /// Per-connection timeout for TCP connect + TLS + upgrade, seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub connect_timeout: f64,

    /// Upper bound for the setup phase (connecting, subscribing), seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub setup_timeout: f64,

    /// Connections being established at the same time during setup.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub connect_concurrency: usize,

    /// No live progress line on stderr.
    #[arg(long)]
    pub quiet: bool,

    /// Internal: index of this child process (set by --procs).
    #[arg(long, hide = true)]
    pub child_index: Option<usize>,

    /// Internal: number of child processes (set by --procs).
    #[arg(long, hide = true)]
    pub child_of: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50, value_name = "C")]
    pub connections: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub payload: usize,
    /// Send binary frames instead of text frames.
    #[arg(long)]
    pub binary: bool,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub pipeline: usize,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscriber connections; subscriber i subscribes to topic t{i % T}.
    #[arg(long, alias = "connections", default_value_t = 100, value_name = "S")]
    pub subscribers: usize,
    /// Number of topics, named t0..t{T-1}.
    #[arg(long, default_value_t = 10, value_name = "T")]
    pub topics: usize,
    /// Publisher connections (publish round-robin over the topics).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub publishers: usize,
    /// Total target publish rate in messages/s over all publishers; 0 = open loop (as fast as
    /// acks allow, bounded by --window).
    #[arg(long, default_value_t = 1000.0, value_name = "R")]
    pub rate: f64,
    /// Size of the `data` JSON value of each publish, in bytes.
    #[arg(long, default_value_t = 128, value_name = "BYTES")]
    pub payload: usize,
    /// Max unacknowledged publishes per publisher connection.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub window: usize,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub connections: usize,
    /// Connection attempts per second during the ramp (total over all processes).
    #[arg(long, default_value_t = 1000.0, value_name = "R")]
    pub ramp: f64,
    /// Seconds to hold the connections once all are open (default: --duration).
    #[arg(long, value_name = "H")]
    pub hold: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    /// Concurrent workers, each looping connect + upgrade + close.
    #[arg(long, default_value_t = 8, value_name = "C")]
    pub connections: usize,
}

/// Share of `total` items for process `idx` of `n` (the first `total % n` get one more).
pub fn share(total: usize, idx: usize, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    total / n + usize::from(idx < total % n)
}

/// Parses `--source-ips`: `A-B` (inclusive IPv4 range) or a comma list of addresses.
pub fn parse_source_ips(s: &str) -> Result<Vec<IpAddr>> {
    let s = s.trim();
    if s.is_empty() {
        crate::usage!("--source-ips is empty");
    }
    if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a
            .trim()
            .parse()
            .with_context(|| format!("bad range start in --source-ips {s:?}"))?;
        let b: Ipv4Addr = b
            .trim()
            .parse()
            .with_context(|| format!("bad range end in --source-ips {s:?}"))?;
        let (lo, hi) = (u32::from(a), u32::from(b));
        if hi < lo {
            crate::usage!("--source-ips range {s:?} is reversed");
        }
        if hi - lo >= 65536 {
            crate::usage!("--source-ips range {s:?} is larger than 65536 addresses");
        }
        return Ok((lo..=hi).map(|v| IpAddr::V4(Ipv4Addr::from(v))).collect());
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<IpAddr>()
                .with_context(|| format!("bad address {p:?} in --source-ips"))
        })
        .collect()
}

/// Pieces of `--url` the connector needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    pub tls: bool,
    /// Host as written, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// Path plus query (`/ws?topics=a`), the scenario default when the URL had none.
    pub path: String,
}

/// Parses `ws[s]://HOST[:PORT][/path][?query]`; an empty path or `/` becomes `default_path`.
pub fn parse_url(url: &str, default_path: &str) -> Result<ParsedUrl> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else {
        crate::usage!("--url must start with ws:// or wss:// (got {url:?})");
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.is_empty() {
        crate::usage!("--url {url:?} has no host");
    }
    if authority.contains('@') {
        crate::usage!("--url {url:?}: user info is not supported");
    }
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let end = after
            .find(']')
            .with_context(|| format!("--url {url:?}: unterminated IPv6 literal"))?;
        let host = &after[..end];
        let port = match &after[end + 1..] {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .with_context(|| format!("--url {url:?}: junk after IPv6 literal"))?,
            ),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .with_context(|| format!("--url {url:?}: bad port {p:?}"))?,
        None => {
            if tls {
                443
            } else {
                80
            }
        }
    };
    let path = if tail.is_empty() || tail == "/" {
        default_path.to_string()
    } else if tail.starts_with('?') {
        format!("{default_path}{tail}")
    } else {
        tail.to_string()
    };
    Ok(ParsedUrl {
        tls,
        host,
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_splits_everything() {
        for total in 0..20 {
            for n in 1..6 {
                let sum: usize = (0..n).map(|i| share(total, i, n)).sum();
                assert_eq!(sum, total);
            }
        }
    }

    #[test]
    fn source_ip_range_and_list() -> Result<()> {
        let r = parse_source_ips("127.0.0.2-127.0.0.4")?;
        assert_eq!(r.len(), 3);
        assert_eq!(r[2], "127.0.0.4".parse::<IpAddr>()?);
        let l = parse_source_ips("127.0.0.2, 127.0.0.9")?;
        assert_eq!(l.len(), 2);
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_ips("nope").is_err());
        Ok(())
    }

    #[test]
    fn url_defaults() -> Result<()> {
        let u = parse_url("ws://127.0.0.1:9000", "/echo")?;
        assert_eq!(u.path, "/echo");
        assert_eq!(u.port, 9000);
        assert!(!u.tls);
        let u = parse_url("wss://localhost/ws?topics=a,b", "/echo")?;
        assert_eq!(u.path, "/ws?topics=a,b");
        assert_eq!(u.port, 443);
        assert!(u.tls);
        let u = parse_url("ws://[::1]:81/", "/ws")?;
        assert_eq!(u.host, "::1");
        assert_eq!(u.path, "/ws");
        let u = parse_url("ws://127.0.0.1:1?topics=x", "/ws")?;
        assert_eq!(u.path, "/ws?topics=x");
        assert!(parse_url("http://x", "/").is_err());
        assert!(parse_url("ws://h:notaport", "/").is_err());
        Ok(())
    }
}
