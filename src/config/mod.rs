//! Typed configuration: the TOML file (`examples/wsgate.toml` documents every key), CLI overrides merged
//! in [`Config::apply`], and [`Config::validate`], whose errors name the offending key.
//!
//! Every field has a default, so an empty file (or none) is the zero-config gateway: ws on
//! 127.0.0.1:8080, wss on 127.0.0.1:8443 with a self-signed certificate, one core per CPU.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod cluster;
pub use cluster::{ClusterConfig, Sharded, MAX_NODE_ID};

/// Configuration errors; each names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    /// A key of the `index`th `[[proxy]]` route (`proxy[index].key`).
    #[error("invalid value for `proxy[{index}].{key}`: {message}")]
    InvalidProxy {
        index: usize,
        key: &'static str,
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Which io driver each core uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, else epoll (logged per core).
    #[default]
    Auto,
    /// io_uring only; start fails if it cannot be set up.
    Uring,
    /// epoll only (the fallback driver).
    Epoll,
}

/// Data path of plain ws:// sessions (see `Config::ws_io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WsIo {
    #[default]
    Native,
    Poll,
}

/// How plain ws upgrades are parsed (see `Config::ws_upgrade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WsUpgrade {
    Hyper,
    #[default]
    Direct,
}

/// Data path of wss:// sessions (see `Config::wss_io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WssIo {
    /// rustls's unbuffered API on the native socket, per-core buffers (`transport::TlsIo`).
    #[default]
    Unbuffered,
    /// tokio-rustls (a buffered `ServerConnection`) through the poll adapter, hyper for the upgrade.
    Buffered,
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Worker threads, one monoio runtime each; 0 means one per available CPU.
    pub cores: usize,
    /// io driver: "auto", "uring" or "epoll".
    pub driver: DriverChoice,
    /// Pin worker `i` to CPU `i` (modulo the CPUs available).
    pub pin_cores: bool,
    /// Set up io_uring with SINGLE_ISSUER + DEFER_TASKRUN (kernel >= 6.1; refused -> plain ring).
    pub uring_defer_taskrun: bool,
    /// Data path of plain ws:// sessions: "native" (readiness + per-core buffers on the monoio
    /// socket) or "poll" (through the tokio-trait adapter, as wss:// sessions are).
    pub ws_io: WsIo,
    /// How plain ws:// upgrade requests are parsed: "hyper" (every request through hyper) or
    /// "direct" (upgrade requests parsed with httparse on the native socket, everything else still
    /// served by hyper; needs `ws_io = "native"`).
    pub ws_upgrade: WsUpgrade,
    /// Data path of wss:// sessions: "unbuffered" (rustls's unbuffered API on the native socket,
    /// TLS handshake and upgrade parsed there too; non-upgrade requests still served by hyper) or
    /// "buffered" (tokio-rustls and hyper through the poll adapter).
    pub wss_io: WssIo,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub routes: RoutesConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub origin: OriginConfig,
    pub admin: AdminConfig,
    pub cluster: ClusterConfig,
    /// Edge-proxy routes (`[[proxy]]`), relayed to upstream WebSocket servers (see `crate::proxy`).
    pub proxy: Vec<ProxyRoute>,
}

/// How a proxy route picks among its upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each core takes the next upstream in turn.
    #[default]
    RoundRobin,
    /// Rendezvous hashing on the authenticated user id (anonymous clients: round robin).
    UserHash,
}

/// One `[[proxy]]` route: client upgrades on `path` (and below it) are relayed to an upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyRoute {
    /// Client path prefix, e.g. "/chat" (matches /chat and /chat/...).
    pub path: String,
    /// One upstream URL (ws:// or wss://); or use `upstreams`.
    pub upstream: Option<String>,
    /// Several upstream URLs, balanced by `balance`.
    pub upstreams: Vec<String>,
    pub balance: Balance,
    /// Time allowed to connect to an upstream and complete its WebSocket handshake.
    pub connect_timeout_ms: u64,
    /// How long an upstream that failed to connect is skipped (per core).
    pub retry_after_ms: u64,
    /// Request header carrying the authenticated user id (the token's `sub`) to the upstream.
    pub user_header: String,
    /// Require a valid token for this route (401 otherwise).
    pub auth_required: bool,
    /// PEM file of CA certificates trusted for wss:// upstreams (default: the webpki roots).
    pub ca_file: Option<PathBuf>,
}

impl Default for ProxyRoute {
    fn default() -> Self {
        Self {
            path: String::new(),
            upstream: None,
            upstreams: Vec::new(),
            balance: Balance::RoundRobin,
            connect_timeout_ms: 3_000,
            retry_after_ms: 5_000,
            user_header: "x-wsgate-user".into(),
            auth_required: false,
            ca_file: None,
        }
    }
}

impl ProxyRoute {
    /// `upstream` and `upstreams` together.
    pub fn upstream_urls(&self) -> impl Iterator<Item = &str> {
        self.upstream
            .iter()
            .chain(self.upstreams.iter())
            .map(String::as_str)
    }
}

/// The admin listener: backend publish API, stats, health/readiness, metrics, reload, status page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address, or "off". Keep it off the public interface.
    pub listen: String,
    /// Bearer key required on everything but /healthz and /readyz; unset = no key (loopback only!).
    pub api_key: Option<String>,
    /// File holding the API key (surrounding whitespace trimmed).
    pub api_key_file: Option<PathBuf>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Serve /metrics (Prometheus text).
    pub metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            api_key: None,
            api_key_file: None,
            max_body_bytes: 1 << 20,
            metrics: true,
        }
    }
}

/// A WebSocket route, as named in `auth.required_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteName {
    Pubsub,
    Echo,
}

/// JWT authentication at the handshake (off unless `required_on` names a route or a key is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Routes whose upgrade needs a valid token (401 otherwise), e.g. ["pubsub"].
    pub required_on: Vec<RouteName>,
    /// HS256 shared secret (prefer `hs256_secret_file` outside of tests).
    pub hs256_secret: Option<String>,
    /// File holding the HS256 shared secret (surrounding whitespace is trimmed).
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM public key for RS256 tokens.
    pub rs256_public_key: Option<PathBuf>,
    /// PEM public key for ES256 tokens.
    pub es256_public_key: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated for `exp`/`nbf`, in seconds.
    pub leeway_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required_on: Vec::new(),
            hs256_secret: None,
            hs256_secret_file: None,
            rs256_public_key: None,
            es256_public_key: None,
            issuer: None,
            audience: None,
            leeway_s: 30,
        }
    }
}

impl AuthConfig {
    /// Whether any verification key is configured.
    pub fn has_keys(&self) -> bool {
        self.hs256_secret.is_some()
            || self.hs256_secret_file.is_some()
            || self.rs256_public_key.is_some()
            || self.es256_public_key.is_some()
    }
}

/// Browser `Origin` allowlist for WebSocket upgrades.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    /// Allowed origins, e.g. ["https://app.example.com"]; empty = any origin (and requests without
    /// an Origin header, i.e. non-browser clients, are always allowed).
    pub allowed: Vec<String>,
}

/// Listen addresses; "off" disables a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Plain WebSocket (and HTTP) listener.
    pub ws: String,
    /// TLS listener.
    pub wss: String,
    /// listen(2) backlog of each core's socket.
    pub backlog: u32,
}

/// Certificate and key for the wss listener; both absent means a self-signed certificate is generated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// TLS handshakes in progress at once per core; the accept loop waits for a free slot (excess
    /// connections wait in the listen backlog, their handshake deadline running). 0 = no limit.
    pub max_handshakes_per_core: usize,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            max_handshakes_per_core: 256,
        }
    }
}

/// Request paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesConfig {
    /// Protocol v1 pub/sub sessions.
    pub pubsub: String,
    /// Echo sessions (conformance and benchmarks); may be "/".
    pub echo: String,
    /// Plain HTTP health check answering 200 "ok".
    pub health: String,
}

/// Limits that protect the gateway and its other clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest WebSocket message accepted (after reassembly); larger -> close 1009.
    pub max_message_size: usize,
    /// Bytes a session may have queued for sending; a subscriber beyond this is closed with 1008.
    pub max_outbound_bytes: usize,
    /// Topics one session may be subscribed to at once.
    pub max_subscriptions: usize,
    /// Longest topic name in bytes.
    pub max_topic_len: usize,
    /// Open connections allowed per gateway (split evenly across cores); more are closed at accept.
    /// 0 = derived from the process's open-file limit (raised to its hard limit at start).
    pub max_connections: usize,
    /// Open connections allowed per client IP; 0 = no per-IP limit. Over -> 429 before the upgrade.
    pub max_connections_per_ip: usize,
    /// Time allowed for a client to send complete HTTP request headers (each request).
    pub header_read_timeout_ms: u64,
    /// Time from accept to a completed upgrade (TLS handshake + HTTP request); slower -> closed.
    pub handshake_timeout_ms: u64,
    /// Messages per second a pub/sub session may send (token bucket); 0 = unlimited.
    pub rate_limit_per_sec: u32,
    /// Bucket size: messages a session may send in a burst above the rate.
    pub rate_limit_burst: u32,
    /// Consecutive rate-limited messages after which the session is closed with 1008.
    pub rate_limit_close_after: u32,
    /// Interval between server pings to each session; 0 = no pings.
    pub ping_interval_ms: u64,
    /// A session that sends nothing (not even a pong) for this long is closed with 1001; 0 = never.
    pub idle_timeout_ms: u64,
    /// Time allowed for the WebSocket close handshake and final flush.
    pub close_timeout_ms: u64,
    /// On shutdown, how long sessions get to close before the gateway stops anyway.
    pub shutdown_grace_ms: u64,
    /// After this many connections closed on a core (net, since its last trim), the core asks the
    /// allocator to return freed memory to the OS (mimalloc `mi_collect`, checked once a second), so
    /// RSS comes back after a mass disconnect; also after a heartbeat round that pinged at least this
    /// many sessions. 0 = never.
    pub memory_trim_after_closes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cores: 0,
            driver: DriverChoice::Auto,
            pin_cores: true,
            uring_defer_taskrun: true,
            ws_io: WsIo::Native,
            ws_upgrade: WsUpgrade::Direct,
            wss_io: WssIo::Unbuffered,
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            routes: RoutesConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            origin: OriginConfig::default(),
            admin: AdminConfig::default(),
            cluster: ClusterConfig::default(),
            proxy: Vec::new(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            ws: "127.0.0.1:8080".into(),
            wss: "127.0.0.1:8443".into(),
            backlog: 4096,
        }
    }
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self {
            pubsub: "/ws".into(),
            echo: "/echo".into(),
            health: "/healthz".into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: 1 << 20,
            max_outbound_bytes: 1 << 20,
            max_subscriptions: 1024,
            max_topic_len: 256,
            max_connections: 0,
            max_connections_per_ip: 0,
            header_read_timeout_ms: 10_000,
            handshake_timeout_ms: 10_000,
            rate_limit_per_sec: 0,
            rate_limit_burst: 0,
            rate_limit_close_after: 100,
            ping_interval_ms: 30_000,
            idle_timeout_ms: 60_000,
            close_timeout_ms: 3_000,
            shutdown_grace_ms: 5_000,
            memory_trim_after_closes: 1_000,
        }
    }
}

/// Command-line values that override the file (`None` = keep the file's value).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub ws: Option<String>,
    pub wss: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub cores: Option<usize>,
    pub driver: Option<DriverChoice>,
    pub pubsub_path: Option<String>,
    pub echo_path: Option<String>,
    pub admin: Option<String>,
}

impl Config {
    /// Parse a TOML document; unknown keys are errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Read and parse a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Merge command-line overrides (the one place where flags beat the file).
    pub fn apply(&mut self, o: Overrides) {
        if let Some(v) = o.ws {
            self.listen.ws = v;
        }
        if let Some(v) = o.wss {
            self.listen.wss = v;
        }
        if let Some(v) = o.cert {
            self.tls.cert = Some(v);
        }
        if let Some(v) = o.key {
            self.tls.key = Some(v);
        }
        if let Some(v) = o.cores {
            self.cores = v;
        }
        if let Some(v) = o.driver {
            self.driver = v;
        }
        if let Some(v) = o.pubsub_path {
            self.routes.pubsub = v;
        }
        if let Some(v) = o.echo_path {
            self.routes.echo = v;
        }
        if let Some(v) = o.admin {
            self.admin.listen = v;
        }
    }

    /// Check every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cores > crate::bus::MAX_CORES {
            return Err(invalid(
                "cores",
                format!("at most {} cores are supported", crate::bus::MAX_CORES),
            ));
        }
        let ws = parse_listen("listen.ws", &self.listen.ws)?;
        let wss = parse_listen("listen.wss", &self.listen.wss)?;
        if ws.is_none() && wss.is_none() {
            return Err(invalid(
                "listen",
                "both listeners are off; enable ws or wss",
            ));
        }
        let admin = parse_listen("admin.listen", &self.admin.listen)?;
        for (key, other) in [("admin.listen", ws), ("admin.listen", wss)] {
            if let (Some(a), Some(b)) = (admin, other) {
                if a == b && a.port() != 0 {
                    return Err(invalid(
                        key,
                        format!("same address as a public listener ({a})"),
                    ));
                }
            }
        }
        if self.admin.api_key.is_some() && self.admin.api_key_file.is_some() {
            return Err(invalid(
                "admin.api_key",
                "set either admin.api_key or admin.api_key_file, not both",
            ));
        }
        if self.admin.api_key.as_deref() == Some("") {
            return Err(invalid("admin.api_key", "must not be empty"));
        }
        if self.admin.max_body_bytes == 0 {
            return Err(invalid("admin.max_body_bytes", "must be greater than 0"));
        }
        if let (Some(a), Some(b)) = (ws, wss) {
            if a == b && a.port() != 0 {
                return Err(invalid(
                    "listen.wss",
                    format!("same address as listen.ws ({a})"),
                ));
            }
        }
        if self.listen.backlog == 0 {
            return Err(invalid("listen.backlog", "must be at least 1"));
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                return Err(invalid("tls.key", "tls.cert is set but tls.key is not"))
            }
            (None, Some(_)) => {
                return Err(invalid("tls.cert", "tls.key is set but tls.cert is not"))
            }
            _ => {}
        }
        let r = &self.routes;
        for (key, path) in [
            ("routes.pubsub", &r.pubsub),
            ("routes.echo", &r.echo),
            ("routes.health", &r.health),
        ] {
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
                return Err(invalid(
                    key,
                    format!("`{path}` is not an absolute path like /ws"),
                ));
            }
        }
        if r.pubsub == r.echo || r.pubsub == r.health || r.echo == r.health {
            return Err(invalid(
                "routes",
                "pubsub, echo and health paths must differ",
            ));
        }
        let l = &self.limits;
        let positive = [
            ("limits.max_message_size", l.max_message_size as u64),
            ("limits.max_outbound_bytes", l.max_outbound_bytes as u64),
            ("limits.max_subscriptions", l.max_subscriptions as u64),
            ("limits.max_topic_len", l.max_topic_len as u64),
            ("limits.header_read_timeout_ms", l.header_read_timeout_ms),
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.close_timeout_ms", l.close_timeout_ms),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if l.max_message_size > (1 << 30) {
            return Err(invalid("limits.max_message_size", "must be at most 1 GiB"));
        }
        if l.ping_interval_ms > 0
            && l.idle_timeout_ms > 0
            && l.idle_timeout_ms <= l.ping_interval_ms
        {
            return Err(invalid(
                "limits.idle_timeout_ms",
                "must be longer than limits.ping_interval_ms, or clients are closed before they can answer a ping",
            ));
        }
        let a = &self.auth;
        if a.hs256_secret.is_some() && a.hs256_secret_file.is_some() {
            return Err(invalid(
                "auth.hs256_secret",
                "set either auth.hs256_secret or auth.hs256_secret_file, not both",
            ));
        }
        if a.hs256_secret.as_deref() == Some("") {
            return Err(invalid("auth.hs256_secret", "must not be empty"));
        }
        if !a.required_on.is_empty() && !a.has_keys() {
            return Err(invalid(
                "auth.required_on",
                "auth is required but no key is configured (auth.hs256_secret[_file], auth.rs256_public_key or auth.es256_public_key)",
            ));
        }
        for o in &self.origin.allowed {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(invalid(
                    "origin.allowed",
                    format!("`{o}` is not an origin like https://app.example.com (scheme://host[:port], no path)"),
                ));
            }
        }
        self.cluster.validate()?;
        crate::proxy::validate(self)
    }

    /// The plain listener address (`None` when "off"). Call after `validate`.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        parse_listen("listen.ws", &self.listen.ws).ok().flatten()
    }

    /// The TLS listener address (`None` when "off"). Call after `validate`.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        parse_listen("listen.wss", &self.listen.wss).ok().flatten()
    }

    /// The admin listener address (`None` when "off"). Call after `validate`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        parse_listen("admin.listen", &self.admin.listen)
            .ok()
            .flatten()
    }

    /// Worker count with 0 resolved to the CPUs available.
    pub fn effective_cores(&self) -> usize {
        if self.cores == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(crate::bus::MAX_CORES)
        } else {
            self.cores
        }
    }
}

impl LimitsConfig {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

fn parse_listen(key: &'static str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        invalid(
            key,
            format!("`{value}` is not an address like 127.0.0.1:8080 or [::1]:8080, or \"off\""),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { key, .. } => key.to_string(),
            other => other.to_string(),
        }
    }

    #[test]
    fn defaults_are_valid_and_zero_config() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.ws_addr(), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.wss_addr(), Some("127.0.0.1:8443".parse().unwrap()));
        assert!(c.effective_cores() >= 1);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e =
            Config::from_toml("[limits]\nmax_mesage_size = 5\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("max_mesage_size"), "{e}");
        let c = Config::from_toml("[listen]\nws = \"nope\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(key_of(c.validate().unwrap_err()), "listen.ws");
        let c = Config::from_toml("[tls]\ncert = \"a.pem\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(key_of(c.validate().unwrap_err()), "tls.key");
        let c = Config::from_toml("[routes]\necho = \"echo\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(key_of(c.validate().unwrap_err()), "routes.echo");
        let c = Config::from_toml("[limits]\nmax_message_size = 0\n", Path::new("x.toml")).unwrap();
        assert_eq!(key_of(c.validate().unwrap_err()), "limits.max_message_size");
    }

    #[test]
    fn overrides_beat_the_file() {
        let mut c = Config::from_toml(
            "cores = 3\n[listen]\nws = \"127.0.0.1:1\"\n",
            Path::new("x"),
        )
        .unwrap();
        c.apply(Overrides {
            ws: Some("off".into()),
            cores: Some(1),
            echo_path: Some("/".into()),
            ..Default::default()
        });
        c.validate().unwrap();
        assert_eq!(
            (c.ws_addr(), c.cores, c.routes.echo.as_str()),
            (None, 1, "/")
        );
    }
}
