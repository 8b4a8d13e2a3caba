//! The admin listener (default 127.0.0.1:9090, off the public port): the backend publish API, stats,
//! health and readiness, Prometheus metrics, certificate/key reload and a live status page.
//!
//! It runs as a task on core 0 and publishes through core 0's topic table, so an API publish is
//! delivered exactly like a client's: encoded once, to local subscribers directly and to the other
//! cores through the bus. Documented with curl examples in docs/api.md.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use monoio::io::IntoPollIo;
use monoio::net::TcpListener;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::control::Control;
use crate::http::MonoioTimer;
use crate::pubsub::protocol;
use crate::worker::Worker;

/// Response bodies: a whole document, or the endless `/api/live` event stream. (hyper's boxed
/// bodies want `Send`; the live stream holds a core-local timer.)
enum AdminBody {
    Full(Full<Bytes>),
    Live(LiveStats),
}

impl Body for AdminBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            AdminBody::Full(b) => Pin::new(b).poll_frame(cx),
            AdminBody::Live(l) => Pin::new(l).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AdminBody::Full(b) => b.is_end_stream(),
            AdminBody::Live(_) => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            AdminBody::Full(b) => b.size_hint(),
            AdminBody::Live(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// How often `/api/live` pushes a stats document.
const LIVE_PERIOD: Duration = Duration::from_millis(500);

struct AdminCtx {
    worker: Rc<Worker>,
    control: Arc<Control>,
    api_key: Option<String>,
    registry: Registry,
}

/// Accept admin connections on core 0 until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    worker: Rc<Worker>,
    control: Arc<Control>,
    api_key: Option<String>,
) {
    let registry = crate::metrics::registry(control.clone());
    let ctx = Rc::new(AdminCtx {
        worker,
        control,
        api_key,
        registry,
    });
    // No shutdown select here: the admin listener keeps answering (`/readyz` -> 503) while the core
    // drains its sessions, and ends with the core's runtime.
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                monoio::spawn(async move {
                    let Ok(io) = stream.into_poll_io() else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
                    });
                    let mut b = http1::Builder::new();
                    b.timer(MonoioTimer)
                        .header_read_timeout(Duration::from_secs(10));
                    if let Err(e) = b.serve_connection(TokioIo::new(io), svc).await {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AdminBody> {
    let mut r = Response::new(AdminBody::Full(Full::new(body.into())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<AdminBody> {
    full(status, "application/json", v.to_string())
}

fn error(
    status: StatusCode,
    message: impl Into<String>,
    field: Option<&str>,
) -> Response<AdminBody> {
    let mut v = json!({ "error": message.into() });
    if let Some(f) = field {
        v["field"] = json!(f);
    }
    json_response(status, &v)
}

fn authorized(ctx: &AdminCtx, req: &Request<Incoming>) -> bool {
    let Some(key) = &ctx.api_key else {
        return true;
    };
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let query = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v.into_owned())
    });
    let given = header.map(str::to_owned).or(query);
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(ctx: &AdminCtx, req: Request<Incoming>) -> Response<AdminBody> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return full(StatusCode::OK, "text/plain", "ok"),
        (&Method::GET, "/readyz") => {
            let cluster = match &ctx.control.cluster {
                Some(c) if c.is_up() => "; cluster bus: up",
                Some(_) => "; cluster bus: down (Redis unreachable)",
                None => "",
            };
            return if ctx.control.ready() {
                full(StatusCode::OK, "text/plain", format!("ready{cluster}"))
            } else {
                full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready{cluster}"),
                )
            };
        }
        _ => {}
    }
    if !authorized(ctx, &req) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key (Authorization: Bearer <key>)",
            None,
        );
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/") => full(
            StatusCode::OK,
            "text/html; charset=utf-8",
            include_str!("status.html"),
        ),
        (&Method::GET, "/api/stats") => json_response(StatusCode::OK, &ctx.control.stats_json()),
        (&Method::GET, "/api/live") => live(ctx),
        (&Method::GET, "/metrics") if ctx.control.config.admin.metrics => {
            match crate::metrics::render(&ctx.registry) {
                Ok(text) => full(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics encoding failed",
                    None,
                ),
            }
        }
        (&Method::POST, "/api/publish") => match body(ctx, req).await {
            Ok(b) => publish(ctx, &b),
            Err(r) => r,
        },
        (&Method::POST, "/api/direct") => match body(ctx, req).await {
            Ok(b) => direct(ctx, &b),
            Err(r) => r,
        },
        (&Method::POST, "/api/reload") => match ctx.control.reload() {
            Ok(report) => json_response(StatusCode::OK, &json!(report)),
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the current certificate and keys");
                error(StatusCode::INTERNAL_SERVER_ERROR, e, None)
            }
        },
        (_, "/api/publish" | "/api/direct" | "/api/reload") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use POST", None)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
            None,
        ),
    }
}

/// Read the request body within `admin.max_body_bytes` (413 beyond).
async fn body(ctx: &AdminCtx, req: Request<Incoming>) -> Result<Bytes, Response<AdminBody>> {
    let max = ctx.control.config.admin.max_body_bytes;
    let too_big = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {max} bytes (admin.max_body_bytes)"),
            None,
        )
    };
    if req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > max)
    {
        return Err(too_big());
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_big())
        }
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read body: {e}"),
            None,
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishReq<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectReq<'a> {
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn bad_json(e: serde_json::Error) -> Response<AdminBody> {
    let msg = e.to_string();
    let field = ["topic", "data", "to"]
        .into_iter()
        .find(|f| msg.contains(&format!("`{f}`")));
    error(StatusCode::BAD_REQUEST, msg, field)
}

fn publish(ctx: &AdminCtx, body: &[u8]) -> Response<AdminBody> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(_) => return error(StatusCode::BAD_REQUEST, "body is not UTF-8", None),
    };
    let batch = text.trim_start().starts_with('[');
    let reqs: Vec<PublishReq<'_>> = if batch {
        match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return bad_json(e),
        }
    } else {
        match serde_json::from_str(text) {
            Ok(v) => vec![v],
            Err(e) => return bad_json(e),
        }
    };
    let max_topic = ctx.worker.limits.max_topic_len;
    for (i, r) in reqs.iter().enumerate() {
        if let Err(why) = protocol::check_topic(&r.topic, max_topic) {
            let mut resp = error(StatusCode::BAD_REQUEST, why, Some("topic"));
            if batch {
                resp = json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": why, "field": "topic", "index": i}),
                );
            }
            return resp;
        }
    }
    let (mut local, mut rejected) = (0, Vec::new());
    for (i, r) in reqs.iter().enumerate() {
        match ctx
            .worker
            .publish(&r.topic, r.data, None, crate::hooks::PublishSource::Api)
        {
            Ok(n) => local += n,
            Err((code, message)) => {
                rejected.push(json!({"index": i, "code": code, "message": message}))
            }
        }
    }
    if !rejected.is_empty() {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({"published": reqs.len() - rejected.len(), "rejected": rejected, "local_sessions_reached": local}),
        );
    }
    json_response(
        StatusCode::OK,
        &json!({"published": reqs.len(), "local_sessions_reached": local}),
    )
}

fn direct(ctx: &AdminCtx, body: &[u8]) -> Response<AdminBody> {
    let r: DirectReq<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    if r.to.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "`to` must not be empty",
            Some("to"),
        );
    }
    let frame = protocol::direct_frame("api", r.data);
    let local = ctx.worker.table.direct(&r.to, frame);
    json_response(
        StatusCode::OK,
        &json!({"sent": 1, "local_sessions_reached": local}),
    )
}

/// `GET /api/live`: server-sent events, one stats document every `LIVE_PERIOD`.
fn live(ctx: &AdminCtx) -> Response<AdminBody> {
    let body = LiveStats {
        control: ctx.control.clone(),
        sleep: None,
    };
    let mut r = Response::new(AdminBody::Live(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

struct LiveStats {
    control: Arc<Control>,
    sleep: Option<Pin<Box<monoio::time::Sleep>>>,
}

impl Body for LiveStats {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.sleep = Some(Box::pin(monoio::time::sleep(LIVE_PERIOD)));
        let event = format!("data: {}\n\n", self.control.stats_json());
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}
