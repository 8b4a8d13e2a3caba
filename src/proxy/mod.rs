//! Edge-proxy routes (`[[proxy]]`): wsgate terminates the client's WebSocket (TLS, admission, JWT,
//! limits, pings: exactly as on its own routes) and relays messages to an existing WebSocket backend.
//!
//! The upstream is opened *before* the client gets its 101, from the client's core, so the response
//! can carry exactly the subprotocol the upstream chose. When no upstream can be reached within
//! `connect_timeout_ms` the client is still upgraded and then closed with 1014 ("bad gateway"): a
//! WebSocket client sees a close code it can act on instead of an HTTP error it usually cannot read.
//!
//! Balancing is per core and needs no coordination: round robin uses a core-local counter,
//! `user_hash` ranks the upstreams by rendezvous hashing of (user id, upstream URL), so a user lands on
//! the same upstream on every core and only the users of a removed upstream move. An upstream that
//! fails to connect is skipped on that core for `retry_after_ms` (tried again only when every upstream
//! of the route is marked down).
//!
//! - `upstream.rs`: the client half of the WebSocket handshake (plain or rustls) to one upstream.
//! - `relay.rs`: the session: messages both ways with bounded buffers, per-hop pings, close codes.

mod relay;
mod upstream;

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Request, Response};

use crate::auth::SUBPROTOCOL_TOKEN_PREFIX;
use crate::config::{Balance, Config, ConfigError, ProxyRoute};
use crate::http::{Accepted, HttpCtx, Route};

pub(crate) use relay::run;
use upstream::Connected;

/// The close code sent to a client whose upstream cannot be reached (RFC 6455 §7.4.1, "bad gateway").
pub const BAD_GATEWAY: u16 = 1014;

/// Request headers never forwarded: hop-by-hop (RFC 9110 §7.6.1), the client's own handshake (the
/// proxy makes a new one), and what the proxy itself sets.
const NOT_FORWARDED: [&str; 17] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "x-forwarded-proto",
];

/// One upstream of a route, parsed and resolved at start.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// As configured (logs, hashing).
    url: String,
    tls: bool,
    /// Host for SNI and certificate checks (no brackets, no port).
    host: String,
    /// `Host` header value.
    authority: String,
    addr: SocketAddr,
    /// Path of the URL; the client's path below the route's prefix is appended.
    path: String,
}

/// Parse and resolve a `ws://` or `wss://` upstream URL.
fn parse_url(url: &str) -> Result<Target, String> {
    let lower = url.to_ascii_lowercase();
    let (tls, rest) = if lower.starts_with("ws://") {
        (false, &url[5..])
    } else if lower.starts_with("wss://") {
        (true, &url[6..])
    } else {
        return Err(format!("`{url}` is not a ws:// or wss:// URL"));
    };
    if rest.contains(['?', '#', '@', ' ']) {
        return Err(format!(
            "`{url}`: only scheme://host[:port][/path] is supported"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{url}`: unterminated [ipv6] host"))?;
        (h, tail.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("`{url}`: `{p}` is not a port"))?,
        None if tls => 443,
        None => 80,
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("`{url}`: cannot resolve `{host}`: {e}"))?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{url}`: `{host}` resolves to no address"))?;
    Ok(Target {
        url: url.to_owned(),
        tls,
        host: host.to_owned(),
        authority: authority.to_owned(),
        addr,
        path: path.to_owned(),
    })
}

/// Whether `path` is `prefix` or below it (segment-wise: /chat matches /chat/x, not /chatty).
fn under(prefix: &str, path: &str) -> bool {
    path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')))
}

fn bad(index: usize, key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::InvalidProxy {
        index,
        key,
        message: message.into(),
    }
}

/// Validate every `[[proxy]]` route; errors name `proxy[i].key`.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let routes = &config.routes;
    for (i, r) in config.proxy.iter().enumerate() {
        let p = &r.path;
        if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
            return Err(bad(
                i,
                "path",
                format!("`{p}` is not an absolute path like /chat"),
            ));
        }
        if [&routes.pubsub, &routes.echo, &routes.health].contains(&p) {
            return Err(bad(i, "path", format!("`{p}` is already a [routes] path")));
        }
        if config.proxy[..i].iter().any(|o| &o.path == p) {
            return Err(bad(
                i,
                "path",
                format!("`{p}` is used by another [[proxy]]"),
            ));
        }
        if r.upstream_urls().next().is_none() {
            return Err(bad(i, "upstream", "set `upstream` or `upstreams`"));
        }
        for url in r.upstream_urls() {
            let key = if r.upstream.as_deref() == Some(url) {
                "upstream"
            } else {
                "upstreams"
            };
            parse_url(url).map_err(|m| bad(i, key, m))?;
        }
        if r.connect_timeout_ms == 0 {
            return Err(bad(i, "connect_timeout_ms", "must be greater than 0"));
        }
        let header = HeaderName::from_bytes(r.user_header.as_bytes()).map_err(|_| {
            bad(
                i,
                "user_header",
                format!("`{}` is not a header name", r.user_header),
            )
        })?;
        if NOT_FORWARDED.contains(&header.as_str()) || header.as_str().starts_with("sec-websocket-")
        {
            return Err(bad(i, "user_header", format!("`{header}` is reserved")));
        }
        if r.auth_required && !config.auth.has_keys() {
            return Err(bad(
                i,
                "auth_required",
                "auth is required but no key is configured in [auth]",
            ));
        }
        if let Some(f) = &r.ca_file {
            load_roots(f).map_err(|m| bad(i, "ca_file", m))?;
        }
    }
    Ok(())
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: unusable certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(roots)
}

fn tls_client(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = match ca_file {
        Some(f) => load_roots(f)?,
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// One route with this core's balancing state.
struct RouteState {
    path: String,
    targets: Vec<Target>,
    down_until: Vec<Cell<Option<Instant>>>,
    next: Cell<usize>,
    balance: Balance,
    connect_timeout: Duration,
    retry_after: Duration,
    user_header: HeaderName,
    auth_required: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A core's proxy routes (built once per core; empty when none are configured).
#[derive(Default)]
pub struct Proxies {
    routes: Vec<RouteState>,
}

impl Proxies {
    /// Build from validated config (resolves upstream hosts and loads CA files again).
    pub fn new(routes: &[ProxyRoute]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let targets = r
                .upstream_urls()
                .map(parse_url)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("proxy[{i}]: {e}"))?;
            let tls = if targets.iter().any(|t| t.tls) {
                Some(tls_client(r.ca_file.as_deref()).map_err(|e| format!("proxy[{i}]: {e}"))?)
            } else {
                None
            };
            let user_header = HeaderName::from_bytes(r.user_header.as_bytes())
                .map_err(|e| format!("proxy[{i}].user_header: {e}"))?;
            out.push(RouteState {
                path: r.path.clone(),
                down_until: targets.iter().map(|_| Cell::new(None)).collect(),
                targets,
                next: Cell::new(0),
                balance: r.balance,
                connect_timeout: Duration::from_millis(r.connect_timeout_ms),
                retry_after: Duration::from_millis(r.retry_after_ms),
                user_header,
                auth_required: r.auth_required,
                tls,
            });
        }
        Ok(Self { routes: out })
    }

    /// The route serving `path` (the longest matching prefix).
    fn find(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| under(&r.path, path))
            .max_by_key(|(_, r)| r.path.len())
            .map(|(i, _)| i)
    }

    /// Whether `path` (without query) belongs to a proxy route.
    pub fn matches(&self, path: &str) -> bool {
        self.find(path).is_some()
    }

    /// The route for an upgrade request and whether it needs a token.
    pub(crate) fn route_for<B>(&self, req: &Request<B>) -> Option<(Route, bool)> {
        let idx = self.find(req.uri().path())?;
        let r = &self.routes[idx];
        let suffix = &req.uri().path()[r.path.trim_end_matches('/').len()..];
        let mut headers = Vec::new();
        let mut protocols = Vec::new();
        let mut forwarded_for = Vec::new();
        for (name, value) in req.headers() {
            let n = name.as_str();
            if n == "sec-websocket-protocol" {
                protocols.extend(
                    value
                        .to_str()
                        .unwrap_or("")
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty() && !p.starts_with(SUBPROTOCOL_TOKEN_PREFIX))
                        .map(str::to_owned),
                );
            } else if n == "x-forwarded-for" {
                forwarded_for.push(value.clone());
            } else if !NOT_FORWARDED.contains(&n)
                && name != r.user_header
                && !named_in_connection(req, n)
            {
                headers.push((name.clone(), value.clone()));
            }
        }
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        Some((
            Route::Proxy(Proxied(Rc::new(Pending {
                route: idx,
                suffix: format!("{suffix}{query}"),
                protocols,
                headers,
                forwarded_for,
                conn: RefCell::new(None),
            }))),
            r.auth_required,
        ))
    }
}

/// Headers listed in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
fn named_in_connection<B>(req: &Request<B>, name: &str) -> bool {
    req.headers()
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(name))
}

/// What a proxied upgrade carries from the HTTP layer to its session: the request as it will be
/// forwarded and, once connected, the upstream connection.
pub(crate) struct Pending {
    route: usize,
    /// Path below the route's prefix, plus `?query`.
    suffix: String,
    /// Subprotocols the client offered (a `bearer.` token entry removed).
    protocols: Vec<String>,
    /// End-to-end request headers to forward.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Incoming `X-Forwarded-For` values (the peer is appended).
    forwarded_for: Vec<HeaderValue>,
    conn: RefCell<Option<Connected>>,
}

/// The payload of [`Route::Proxy`] (shared, compared by identity).
#[derive(Clone)]
pub struct Proxied(Rc<Pending>);

impl std::fmt::Debug for Proxied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxied")
            .field("route", &self.0.route)
            .field("suffix", &self.0.suffix)
            .finish()
    }
}

impl PartialEq for Proxied {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Proxied {}

impl Proxied {
    fn take(&self) -> Option<Connected> {
        self.0.conn.borrow_mut().take()
    }
}

/// FNV-1a: stable across processes and cores (rendezvous scores must agree everywhere).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl RouteState {
    /// Upstreams in the order to try them: the balancing choice first; those marked down are left
    /// out unless every upstream is down.
    fn order(&self, user: Option<&str>) -> Vec<usize> {
        let n = self.targets.len();
        let ranked: Vec<usize> = match (self.balance, user) {
            (Balance::UserHash, Some(u)) => {
                let mut v: Vec<(u64, usize)> = (0..n)
                    .map(|i| (fnv1a(&[u.as_bytes(), self.targets[i].url.as_bytes()]), i))
                    .collect();
                v.sort_by_key(|&(score, _)| std::cmp::Reverse(score));
                v.into_iter().map(|(_, i)| i).collect()
            }
            _ => {
                let start = self.next.get();
                self.next.set(start.wrapping_add(1));
                (0..n).map(|k| (start + k) % n).collect()
            }
        };
        let now = Instant::now();
        let up: Vec<usize> = ranked
            .iter()
            .copied()
            .filter(|&i| self.down_until[i].get().is_none_or(|t| t <= now))
            .collect();
        if up.is_empty() {
            ranked
        } else {
            up
        }
    }
}

/// Finish a proxied upgrade before its 101 goes out: connect the upstream and answer with the
/// subprotocol it chose. Responses of other routes pass through unchanged.
pub(crate) async fn answer(
    ctx: &HttpCtx,
    resp: Response<Full<Bytes>>,
    slot: &RefCell<Option<Accepted>>,
    peer: IpAddr,
    tls: bool,
) -> Response<Full<Bytes>> {
    let (pending, user) = match &*slot.borrow() {
        Some(Accepted {
            route: Route::Proxy(p),
            identity,
        }) => (p.0.clone(), identity.as_ref().map(|i| i.user.clone())),
        _ => return resp,
    };
    match ctx.proxy.routes.get(pending.route) {
        // Boxed: the connect state is paid only by proxied handshakes, not by every handshake task.
        Some(route) => Box::pin(connect(ctx, route, resp, &pending, user, peer, tls)).await,
        None => resp,
    }
}

async fn connect(
    ctx: &HttpCtx,
    route: &RouteState,
    mut resp: Response<Full<Bytes>>,
    pending: &Pending,
    user: Option<Arc<str>>,
    peer: IpAddr,
    tls: bool,
) -> Response<Full<Bytes>> {
    let mut forwarded_for = pending
        .forwarded_for
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    if !forwarded_for.is_empty() {
        forwarded_for.push_str(", ");
    }
    forwarded_for.push_str(&peer.to_string());
    let mut extra = pending.headers.clone();
    let proto_header = HeaderValue::from_static(if tls { "wss" } else { "ws" });
    extra.push((HeaderName::from_static("x-forwarded-proto"), proto_header));
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        extra.push((HeaderName::from_static("x-forwarded-for"), v));
    }
    if let Some(v) = user
        .as_deref()
        .and_then(|u| HeaderValue::from_bytes(u.as_bytes()).ok())
    {
        extra.push((route.user_header.clone(), v));
    }
    resp.headers_mut().remove(SEC_WEBSOCKET_PROTOCOL);
    for i in route.order(user.as_deref()) {
        let target = &route.targets[i];
        let path = join_path(&target.path, &pending.suffix);
        let req = upstream::Request {
            target,
            path: &path,
            protocols: &pending.protocols,
            headers: &extra,
            tls: route.tls.as_ref(),
        };
        match monoio::time::timeout(route.connect_timeout, upstream::open(req)).await {
            Ok(Ok(conn)) => {
                route.down_until[i].set(None);
                if let Some(p) = conn
                    .protocol
                    .as_deref()
                    .and_then(|p| HeaderValue::from_str(p).ok())
                {
                    resp.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, p);
                }
                *pending.conn.borrow_mut() = Some(conn);
                return resp;
            }
            Ok(Err(e)) => {
                tracing::info!(upstream = %target.url, error = %e, "proxy upstream failed");
            }
            Err(_) => {
                tracing::info!(upstream = %target.url, "proxy upstream connect timed out");
            }
        }
        ctx.stats.proxy_upstream_failures.add(1);
        route.down_until[i].set(Some(Instant::now() + route.retry_after));
    }
    // No upstream: upgrade anyway and close with 1014 (see the module docs). A client that offered
    // subprotocols gets its first one back, since some clients refuse a 101 without one.
    if let Some(p) = pending
        .protocols
        .first()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        resp.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp
}

/// The upstream URL's path followed by the client's path below the route prefix (and its query).
fn join_path(base: &str, suffix: &str) -> String {
    match suffix.strip_prefix('/') {
        Some(rest) if base.ends_with('/') => format!("{base}{rest}"),
        _ => format!("{base}{suffix}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_resolve() {
        let t = parse_url("ws://127.0.0.1:7000/chat").unwrap();
        assert_eq!(
            (t.tls, t.addr.port(), t.path.as_str()),
            (false, 7000, "/chat")
        );
        let t = parse_url("WSS://[::1]/x").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.addr.port()), (true, "::1", 443));
        assert_eq!(parse_url("ws://127.0.0.1").unwrap().path, "/");
        for bad in [
            "http://a",
            "ws://",
            "ws://a:b/",
            "ws://127.0.0.1/?q",
            "ws://u@h/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(under("/chat", "/chat"));
        assert!(under("/chat", "/chat/room"));
        assert!(!under("/chat", "/chatty"));
        assert!(under("/", "/anything"));
        assert_eq!(join_path("/chat", "/room?x=1"), "/chat/room?x=1");
        assert_eq!(join_path("/chat", "?x=1"), "/chat?x=1");
        assert_eq!(join_path("/", "/room"), "/room");
        assert_eq!(join_path("/", ""), "/");
    }

    #[test]
    fn rendezvous_is_stable_and_spreads() {
        let url = |i: usize| format!("ws://127.0.0.1:{}/", 7000 + i);
        let route = RouteState {
            path: "/p".into(),
            targets: (0..3).map(|i| parse_url(&url(i)).unwrap()).collect(),
            down_until: (0..3).map(|_| Cell::new(None)).collect(),
            next: Cell::new(0),
            balance: Balance::UserHash,
            connect_timeout: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            user_header: HeaderName::from_static("x-u"),
            auth_required: false,
            tls: None,
        };
        let first = |u: &str| route.order(Some(u))[0];
        assert_eq!(first("alice"), first("alice"));
        let used: std::collections::HashSet<usize> =
            (0..64).map(|i| first(&format!("user{i}"))).collect();
        assert_eq!(used.len(), 3);
        let alice = first("alice");
        route.down_until[alice].set(Some(Instant::now() + Duration::from_secs(60)));
        assert_ne!(first("alice"), alice);
    }
}
