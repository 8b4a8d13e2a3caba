//! HTTP/1.1 in front of the WebSocket routes (hyper): health check, 404/426, and the upgrade.
//!
//! hyper serves the connection until a request on a WebSocket path passes `fastwebsockets::upgrade`
//! (key and version checks, `Sec-WebSocket-Accept`); the 101 is written, hyper hands the socket back
//! (`without_shutdown` + `into_parts`, including any bytes it read past the request) and the caller
//! starts the session in a task of its own.

mod timer;

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::RoutesConfig;
pub use timer::MonoioTimer;

/// Which session an upgraded connection runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Echo,
    /// Pub/sub, with the topics of `?topics=a,b` to subscribe at connect.
    PubSub {
        topics: Vec<String>,
    },
}

/// An upgraded connection handed back by hyper.
pub struct Upgraded<S> {
    pub io: S,
    /// Bytes the client sent after its request (already read by hyper).
    pub read_buf: Bytes,
    pub route: Route,
}

/// Serve HTTP on `io` until it closes (`None`) or upgrades (`Some`).
pub async fn serve<S>(
    io: S,
    routes: Rc<RoutesConfig>,
    header_read_timeout: Duration,
) -> Option<Upgraded<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let slot: Rc<RefCell<Option<Route>>> = Rc::default();
    let svc = {
        let slot = slot.clone();
        service_fn(move |req| {
            let resp = respond(&routes, req, &slot);
            async move { Ok::<_, Infallible>(resp) }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(MonoioTimer)
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    match builder
        .serve_connection(TokioIo::new(io), svc)
        .without_shutdown()
        .await
    {
        Ok(parts) => {
            let route = slot.borrow_mut().take()?;
            Some(Upgraded {
                io: parts.io.into_inner(),
                read_buf: parts.read_buf,
                route,
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

fn respond(
    routes: &RoutesConfig,
    mut req: Request<Incoming>,
    slot: &RefCell<Option<Route>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == routes.health {
        return match *req.method() {
            Method::GET | Method::HEAD => text(StatusCode::OK, "ok"),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        };
    }
    let route = if path == routes.echo {
        Route::Echo
    } else if path == routes.pubsub {
        Route::PubSub {
            topics: query_topics(req.uri().query()),
        }
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
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket upgrades must use GET\n",
        );
    }
    match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((resp, _upgrade_fut)) => {
            *slot.borrow_mut() = Some(route);
            resp.map(|_| Full::new(Bytes::new()))
        }
        Err(e) => {
            tracing::debug!(error = %e, "bad upgrade request");
            text(StatusCode::BAD_REQUEST, "bad WebSocket upgrade request\n")
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
