//! Accept loops and the per-connection handshake: optional TLS, a look at the HTTP request head to
//! answer plain HTTP (`GET /healthz` 200, unknown paths 404, non-upgrade requests 426) without
//! tungstenite, then tungstenite's `accept_hdr_async`, whose callback routes `/echo` and `/ws`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{StatusCode, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::hub::Hub;
use crate::session;

/// Time allowed for the TLS handshake plus the HTTP upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// State shared by every connection.
pub struct Context {
    pub hub: Hub,
    pub ws_config: WebSocketConfig,
    pub queue: usize,
}

impl Context {
    pub fn new(args: &crate::Args) -> Self {
        let ws_config = WebSocketConfig {
            max_message_size: Some(args.max_message),
            max_frame_size: Some(args.max_message),
            ..Default::default()
        };
        Self {
            hub: Hub::default(),
            ws_config,
            queue: args.queue,
        }
    }
}

/// Bind a listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Accept forever, one task per connection.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, ctx: Arc<Context>) {
    loop {
        let (tcp, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("tokio-hub: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => handle(tcp, ctx).await,
                Some(acceptor) => {
                    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    if let Ok(Ok(stream)) = tls {
                        handle(stream, ctx).await;
                    }
                }
            }
        });
    }
}

/// Serve one connection (plain TCP or TLS) until it ends.
async fn handle<S>(mut stream: S, ctx: Arc<Context>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        _ => return,
    };
    // Plain HTTP answers (one request per connection); only real upgrades reach tungstenite.
    let plain: Option<(&str, &str, &str)> = match request_path(&head) {
        Some("/healthz") => Some(("200 OK", "", "ok")),
        Some("/echo" | "/ws") if !is_upgrade(&head) => Some((
            "426 Upgrade Required",
            "upgrade: websocket\r\n",
            "upgrade required",
        )),
        Some("/echo" | "/ws") => None,
        _ => Some(("404 Not Found", "", "not found")),
    };
    if let Some((status, headers, body)) = plain {
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    }
    let stream = Rewind::new(head, stream);
    let mut uri: Option<Uri> = None;
    let slot = &mut uri;
    // The callback signature (a large `Err`) is imposed by tungstenite.
    #[allow(clippy::result_large_err)]
    let route = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match req.uri().path() {
            "/echo" | "/ws" => {
                *slot = Some(req.uri().clone());
                Ok(resp)
            }
            _ => {
                let mut err = ErrorResponse::new(Some("not found".to_string()));
                *err.status_mut() = StatusCode::NOT_FOUND;
                Err(err)
            }
        }
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, route, Some(ctx.ws_config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        _ => return,
    };
    let Some(uri) = uri else { return };
    match uri.path() {
        "/echo" => session::echo(ws).await,
        _ => {
            let topics = query_topics(uri.query().unwrap_or(""));
            session::pubsub(ws, ctx, topics).await
        }
    }
}

/// Read until the end of the HTTP request head (`\r\n\r\n`); `None` on EOF or an oversized head.
/// Whatever was read (head and anything after it) is replayed to tungstenite through [`Rewind`].
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if buf[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// Path of the request line (`GET /path?query HTTP/1.1`), without the query.
fn request_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let _method = parts.next()?;
    let target = parts.next()?;
    Some(target.split('?').next().unwrap_or(target))
}

/// Whether the head carries `Upgrade: websocket` (header names and value compared case-insensitively).
fn is_upgrade(head: &[u8]) -> bool {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len());
    let Ok(head) = std::str::from_utf8(&head[..end]) else {
        return false;
    };
    head.split("\r\n").skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("upgrade")
                && value.trim().eq_ignore_ascii_case("websocket")
        })
    })
}

/// `topics=a,b%2Cc` -> `["a", "b,c"]` (split on commas before percent-decoding; empty items skipped).
fn query_topics(query: &str) -> Vec<String> {
    let mut topics = Vec::new();
    for pair in query.split('&') {
        let Some(list) = pair.strip_prefix("topics=") else {
            continue;
        };
        for item in list.split(',').filter(|t| !t.is_empty()) {
            let item = item.replace('+', " ");
            if let Ok(t) = percent_encoding::percent_decode_str(&item).decode_utf8() {
                if crate::protocol::check_topic(&t).is_ok() {
                    topics.push(t.into_owned());
                }
            }
        }
    }
    topics
}

/// A stream that first yields `prefix` (bytes already read while peeking at the request head), then
/// reads from `inner`; writes go straight to `inner`.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let rest = &this.prefix[this.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_helpers() {
        assert_eq!(
            request_path(b"GET /healthz HTTP/1.1\r\n\r\n"),
            Some("/healthz")
        );
        assert_eq!(
            request_path(b"GET /ws?topics=a HTTP/1.1\r\n\r\n"),
            Some("/ws")
        );
        assert!(is_upgrade(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\r\n"
        ));
        assert!(!is_upgrade(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(query_topics("x=1&topics=a,,b%2Cc"), vec!["a", "b,c"]);
    }
}
