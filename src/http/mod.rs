//! HTTP/1.1 in front of the WebSocket routes (hyper): health check, 404/426, the admission checks
//! (Origin -> capacity -> per-IP -> JWT), and the upgrade.
//!
//! hyper serves the connection until a request on a WebSocket path passes `fastwebsockets::upgrade`
//! (key and version checks, `Sec-WebSocket-Accept`); the 101 is written, hyper hands the socket back
//! (`without_shutdown` + `into_parts`, including any bytes it read past the request) and the caller
//! starts the session in a task of its own.

mod direct;
mod timer;

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use arc_swap::ArcSwapOption;

use crate::admission::{Admission, Refusal};
use crate::auth::{find_token, AuthError, Identity, Verifier};
use crate::config::{Config, RouteName, RoutesConfig};
use crate::stats::CoreStats;
pub(crate) use direct::answer;
pub use direct::{head_end, upgrade_direct, Direct, Rewind};
pub use timer::MonoioTimer;

/// What the HTTP layer needs to route and admit requests (one per core, shared by its connections).
pub struct HttpCtx {
    pub routes: RoutesConfig,
    pub header_read_timeout: Duration,
    pub verifier: Arc<ArcSwapOption<Verifier>>,
    pub auth_pubsub: bool,
    pub auth_echo: bool,
    pub allowed_origins: Vec<String>,
    pub admission: Arc<Admission>,
    pub stats: Arc<CoreStats>,
    /// This core's `[[proxy]]` routes and their balancing state (set by the core at start).
    pub proxy: crate::proxy::Proxies,
}

impl HttpCtx {
    pub fn new(
        config: &Config,
        verifier: Arc<ArcSwapOption<Verifier>>,
        admission: Arc<Admission>,
        stats: Arc<CoreStats>,
    ) -> Self {
        let req = &config.auth.required_on;
        Self {
            routes: config.routes.clone(),
            header_read_timeout: config.limits.header_read_timeout(),
            verifier,
            auth_pubsub: req.contains(&RouteName::Pubsub),
            auth_echo: req.contains(&RouteName::Echo),
            allowed_origins: config.origin.allowed.clone(),
            admission,
            stats,
            proxy: crate::proxy::Proxies::default(),
        }
    }
}

/// Which session an upgraded connection runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Echo,
    /// Pub/sub, with the topics of `?topics=a,b` to subscribe at connect.
    PubSub {
        topics: Vec<String>,
    },
    /// An edge-proxy route (`[[proxy]]`), with the request to forward and, once the upstream
    /// answered, its connection.
    Proxy(crate::proxy::Proxied),
}

/// An upgraded connection handed back by hyper.
pub struct Upgraded<S> {
    pub io: S,
    /// Bytes the client sent after its request (already read by hyper).
    pub read_buf: Bytes,
    pub route: Route,
    /// The verified token's identity, when one was presented.
    pub identity: Option<Identity>,
}

/// A request that passed admission and was answered with a 101 (once written).
pub(crate) struct Accepted {
    pub(crate) route: Route,
    pub(crate) identity: Option<Identity>,
}

/// Serve HTTP on `io` until it closes (`None`) or upgrades (`Some`); `tls` = the client came over
/// wss:// (forwarded to proxy upstreams).
pub async fn serve<S>(io: S, ctx: Rc<HttpCtx>, peer: IpAddr, tls: bool) -> Option<Upgraded<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let slot: Rc<RefCell<Option<Accepted>>> = Rc::default();
    let header_read_timeout = ctx.header_read_timeout;
    let svc = {
        let slot = slot.clone();
        service_fn(move |req| {
            let started = Instant::now();
            let resp = respond(&ctx, req, peer, &slot, started);
            let (ctx, slot) = (ctx.clone(), slot.clone());
            async move {
                let resp = crate::proxy::answer(&ctx, resp, &slot, peer, tls).await;
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(MonoioTimer)
        .header_read_timeout(header_read_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    match builder
        .serve_connection(TokioIo::new(io), svc)
        .without_shutdown()
        .await
    {
        Ok(parts) => {
            let accepted = slot.borrow_mut().take()?;
            Some(Upgraded {
                io: parts.io.into_inner(),
                read_buf: parts.read_buf,
                route: accepted.route,
                identity: accepted.identity,
            })
        }
        Err(e) => {
            tracing::debug!(error = %e, "http connection ended with an error");
            None
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn respond<B>(
    ctx: &HttpCtx,
    mut req: Request<B>,
    peer: IpAddr,
    slot: &RefCell<Option<Accepted>>,
    started: Instant,
) -> Response<Full<Bytes>> {
    let routes = &ctx.routes;
    let path = req.uri().path();
    if path == routes.health {
        return match *req.method() {
            Method::GET | Method::HEAD => text(StatusCode::OK, "ok"),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        };
    }
    let (route, auth_required) = if path == routes.echo {
        (Route::Echo, ctx.auth_echo)
    } else if path == routes.pubsub {
        let topics = query_topics(req.uri().query());
        (Route::PubSub { topics }, ctx.auth_pubsub)
    } else if let Some(proxied) = ctx.proxy.route_for(&req) {
        proxied
    } else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "this path expects a WebSocket upgrade\n",
        );
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    let path = path.to_owned();
    let reject = |status: StatusCode, reason: &'static str| {
        let mut r = text(status, reason);
        // A refused client does not get to keep the connection (and its place in the counters).
        r.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        tracing::info!(
            client = %peer,
            path,
            status = status.as_u16(),
            reason,
            elapsed_us = started.elapsed().as_micros() as u64,
            "handshake rejected"
        );
        r
    };
    if req.method() != Method::GET {
        return reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket upgrades must use GET\n",
        );
    }
    if !ctx.allowed_origins.is_empty() {
        if let Some(origin) = req.headers().get(ORIGIN) {
            let ok = origin.to_str().is_ok_and(|o| {
                ctx.allowed_origins
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(o))
            });
            if !ok {
                ctx.stats.rejected_origin.add(1);
                return reject(StatusCode::FORBIDDEN, "origin not allowed\n");
            }
        }
    }
    match ctx.admission.over_limit(peer) {
        Some(Refusal::Capacity) => {
            ctx.stats.rejected_capacity.add(1);
            return reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "server at connection capacity\n",
            );
        }
        Some(Refusal::PerIp) => {
            ctx.stats.rejected_per_ip.add(1);
            return reject(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address\n",
            );
        }
        None => {}
    }
    let found = find_token(&req);
    let verifier = ctx.verifier.load();
    let identity = match (&found, &*verifier) {
        (Some(f), Some(v)) => match v.verify(&f.token) {
            Ok(id) => Some(id),
            Err(e) => {
                ctx.stats.auth_failures.add(1);
                return reject(StatusCode::UNAUTHORIZED, e.reason());
            }
        },
        (None, _) | (Some(_), None) if auth_required => {
            ctx.stats.auth_failures.add(1);
            return reject(StatusCode::UNAUTHORIZED, AuthError::Missing.reason());
        }
        _ => None,
    };
    match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((resp, _upgrade_fut)) => {
            *slot.borrow_mut() = Some(Accepted { route, identity });
            let mut resp = resp.map(|_| Full::new(Bytes::new()));
            if let Some(p) = found.and_then(|f| f.answer_subprotocol) {
                resp.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, p);
            }
            resp
        }
        Err(e) => {
            tracing::debug!(error = %e, "bad upgrade request");
            reject(StatusCode::BAD_REQUEST, "bad WebSocket upgrade request\n")
        }
    }
}

/// `?topics=a,b%2Cc` -> ["a", "b,c"]: the raw value is split on commas before percent-decoding, so an
/// encoded comma can appear inside a topic name.
fn query_topics(query: Option<&str>) -> Vec<String> {
    let Some(q) = query else {
        return Vec::new();
    };
    q.split('&')
        .filter_map(|kv| kv.strip_prefix("topics="))
        .flat_map(|v| v.split(','))
        .filter(|t| !t.is_empty())
        .map(|t| {
            form_urlencoded::parse(format!("t={t}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::query_topics;

    #[test]
    fn topics_query_is_split_then_decoded() {
        assert_eq!(query_topics(Some("topics=a,b%2Fc&x=1")), vec!["a", "b/c"]);
        assert_eq!(query_topics(Some("x=1")), Vec::<String>::new());
        assert_eq!(query_topics(None), Vec::<String>::new());
        assert_eq!(
            query_topics(Some("topics=a,,b&topics=c")),
            vec!["a", "b", "c"]
        );
    }
}
