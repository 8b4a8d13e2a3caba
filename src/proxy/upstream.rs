//! The client half of an upstream WebSocket handshake, written out by hand over a monoio socket
//! (plain, or rustls for wss://): one GET with a fresh `Sec-WebSocket-Key`, then the 101 parsed with
//! httparse and its `Sec-WebSocket-Accept` and subprotocol checked. No HTTP client library: the
//! request is small, and the proxy needs the raw socket (and any frames that arrived with the 101)
//! afterwards.
//!
//! The caller bounds the whole exchange (connect, TLS, request, response) with the route's
//! `connect_timeout_ms`.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use monoio::io::IntoPollIo;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Target;

/// Largest upstream response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// The socket to an upstream: plain or TLS.
pub(crate) enum UpIo {
    Plain(TcpStreamPoll),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStreamPoll>>),
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpIo::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpIo::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpIo::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpIo::Plain(s) => s.is_write_vectored(),
            UpIo::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpIo::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpIo::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// An upgraded upstream connection.
pub(crate) struct Connected {
    pub io: UpIo,
    /// Bytes that arrived after the 101 (the first frames).
    pub rest: Bytes,
    /// The subprotocol the upstream chose.
    pub protocol: Option<String>,
}

/// What to send upstream.
pub(crate) struct Request<'a> {
    pub target: &'a Target,
    /// Request target (path and query).
    pub path: &'a str,
    pub protocols: &'a [String],
    /// Extra headers (forwarded and X-Forwarded-*), already filtered.
    pub headers: &'a [(HeaderName, HeaderValue)],
    pub tls: Option<&'a Arc<rustls::ClientConfig>>,
}

/// Why an upstream could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("tls: {0}")]
    Tls(io::Error),
    #[error("io: {0}")]
    Io(io::Error),
    #[error("handshake refused: {0}")]
    Handshake(String),
}

/// Connect and upgrade.
pub(crate) async fn open(req: Request<'_>) -> Result<Connected, UpstreamError> {
    let t = req.target;
    let stream = monoio::net::TcpStream::connect(t.addr)
        .await
        .map_err(UpstreamError::Connect)?;
    let _ = stream.set_nodelay(true);
    let poll = stream.into_poll_io().map_err(UpstreamError::Connect)?;
    let mut io = match (t.tls, req.tls) {
        (false, _) => UpIo::Plain(poll),
        (true, Some(cfg)) => {
            let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                .map_err(|e| UpstreamError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, poll)
                .await
                .map_err(UpstreamError::Tls)?;
            UpIo::Tls(Box::new(tls))
        }
        (true, None) => {
            return Err(UpstreamError::Handshake("no TLS client configured".into()));
        }
    };
    let mut nonce = [0u8; 16];
    getrandom::getrandom(&mut nonce)
        .map_err(|e| UpstreamError::Io(io::Error::other(e.to_string())))?;
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine.encode(nonce);
    write_all(&mut io, &request_head(&req, &key)).await?;
    let (head, rest) = read_head(&mut io).await?;
    let protocol = check_response(&head, &key, req.protocols)?;
    Ok(Connected {
        io,
        rest: Bytes::from(rest),
        protocol,
    })
}

fn request_head(req: &Request<'_>, key: &str) -> Vec<u8> {
    let mut out = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        req.path, req.target.authority
    )
    .into_bytes();
    if !req.protocols.is_empty() {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(req.protocols.join(", ").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (k, v) in req.headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Check a 101 response head; returns the chosen subprotocol.
fn check_response(
    head: &[u8],
    key: &str,
    offered: &[String],
) -> Result<Option<String>, UpstreamError> {
    let refuse = |m: String| Err(UpstreamError::Handshake(m));
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return refuse("malformed response".into()),
    }
    if resp.code != Some(101) {
        return refuse(format!("status {}", resp.code.unwrap_or(0)));
    }
    let get = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if !get("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return refuse("no `Upgrade: websocket`".into());
    }
    if get("sec-websocket-accept") != Some(accept_key(key).as_str()) {
        return refuse("wrong Sec-WebSocket-Accept".into());
    }
    if get("sec-websocket-extensions").is_some_and(|v| !v.is_empty()) {
        return refuse("an extension was negotiated that was not offered".into());
    }
    match get("sec-websocket-protocol") {
        None | Some("") => Ok(None),
        Some(p) if offered.iter().any(|o| o == p) => Ok(Some(p.to_owned())),
        Some(p) => refuse(format!("subprotocol `{p}` was not offered")),
    }
}

async fn write_all(io: &mut UpIo, mut data: &[u8]) -> Result<(), UpstreamError> {
    while !data.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, data))
            .await
            .map_err(UpstreamError::Io)?;
        if n == 0 {
            return Err(UpstreamError::Io(io::ErrorKind::WriteZero.into()));
        }
        data = &data[n..];
    }
    poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx))
        .await
        .map_err(UpstreamError::Io)
}

/// Read up to the end of the response head: (head, bytes after it).
async fn read_head(io: &mut UpIo) -> Result<(Vec<u8>, Vec<u8>), UpstreamError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(UpstreamError::Handshake("response head too large".into()));
        }
        let n = poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut chunk);
            Pin::new(&mut *io)
                .poll_read(cx, &mut rb)
                .map_ok(|()| rb.filled().len())
        })
        .await
        .map_err(UpstreamError::Io)?;
        if n == 0 {
            return Err(UpstreamError::Handshake(
                "connection closed during the handshake".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn responses_are_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n";
        let offered = vec!["chat".to_string()];
        assert_eq!(
            check_response(ok.as_bytes(), key, &offered).unwrap(),
            Some("chat".into())
        );
        assert!(check_response(ok.as_bytes(), key, &[]).is_err());
        assert!(check_response(ok.as_bytes(), "other", &offered).is_err());
        let denied = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert!(check_response(denied.as_bytes(), key, &offered).is_err());
    }
}
