//! A direct upgrade path for plain ws:// connections: read the request head on the monoio socket,
//! parse it with httparse, and answer a WebSocket upgrade without building a hyper connection.
//!
//! Only upgrade requests on a WebSocket path are handled here (with the very same routing and
//! admission checks, `respond`); anything else (health checks, 404s, malformed or oversized requests)
//! is handed to hyper together with the bytes already read, so hyper keeps serving every plain HTTP
//! route. Enabled with `ws_upgrade = "direct"`.

use std::cell::RefCell;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Body;
use hyper::{Request, Response, StatusCode};
use monoio::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{respond, Accepted, HttpCtx};

/// Largest request head read here; bigger heads go to hyper (which answers 431).
const MAX_HEAD: usize = 16 * 1024;
/// Most request headers parsed here; more go to hyper.
const MAX_HEADERS: usize = 64;

/// What the direct path did with a connection.
pub enum Direct {
    /// Upgraded: run the session on this socket, starting with `rest` (bytes after the request).
    Upgraded {
        stream: TcpStream,
        rest: Bytes,
        route: super::Route,
        identity: Option<crate::auth::Identity>,
    },
    /// Not an upgrade request: serve it with hyper, replaying `read` first.
    Hyper { stream: TcpStream, read: Bytes },
    /// Answered (a refusal) or gone.
    Done,
}

fn recv(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    while !data.is_empty() {
        // SAFETY: `data` is valid for reads of `data.len()` bytes for the duration of the call.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => stream.writable(false).await?,
                io::ErrorKind::Interrupted => {}
                _ => return Err(e),
            }
        } else {
            data = &data[n as usize..];
        }
    }
    Ok(())
}

/// The response head (and body) as bytes.
fn serialize<B>(resp: &Response<B>, body: &[u8]) -> Vec<u8> {
    let status = resp.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (k, v) in resp.headers() {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Where the request head in `buf` ends (just past its blank line), once it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|end| end + 4)
}

/// Answer the complete request head `buf[..head_len]` if it is a WebSocket upgrade on a WebSocket
/// path, with the same routing and admission checks as hyper's path: the response bytes, and the
/// admitted session when it is a 101. `None`: not for this path, hand the bytes to hyper. A proxy
/// route connects its upstream before the 101 is written (`tls`: the client came over wss).
pub(crate) async fn answer(
    ctx: &HttpCtx,
    peer: IpAddr,
    buf: &[u8],
    head_len: usize,
    tls: bool,
) -> Option<(Vec<u8>, Option<Accepted>)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let is_ws_path = |p: &str| {
        let path = p.split('?').next().unwrap_or(p);
        path == ctx.routes.pubsub || path == ctx.routes.echo || ctx.proxy.matches(path)
    };
    let upgrade = match parsed.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {
            parsed.path.is_some_and(is_ws_path)
                && parsed.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("upgrade")
                        && std::str::from_utf8(h.value)
                            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
                })
        }
        _ => false,
    };
    if !upgrade {
        return None;
    }
    let mut req = Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/"));
    for h in parsed.headers.iter() {
        req = req.header(h.name, h.value);
    }
    let req = req.body(()).ok()?;
    let slot: RefCell<Option<Accepted>> = RefCell::new(None);
    let resp = respond(ctx, req, peer, &slot, Instant::now());
    let resp = crate::proxy::answer(ctx, resp, &slot, peer, tls).await;
    let body = body_bytes(resp.body());
    Some((serialize(&resp, &body), slot.into_inner()))
}

/// Read and handle the first request of a plain connection.
pub async fn upgrade_direct(stream: TcpStream, ctx: &HttpCtx, peer: IpAddr) -> Direct {
    let fd = stream.as_raw_fd();
    let mut buf: Vec<u8> = Vec::new();
    let head_len = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return Direct::Hyper {
                stream,
                read: buf.into(),
            };
        }
        let got = crate::transport::with_scratch(|scratch| match recv(fd, scratch) {
            Ok(n) => {
                buf.extend_from_slice(&scratch[..n]);
                Ok(n)
            }
            Err(e) => Err(e),
        });
        match got {
            Ok(0) => return Direct::Done,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stream.readable(false).await.is_err() {
                    return Direct::Done;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Direct::Done,
        }
    };
    let Some((response, accepted)) = answer(ctx, peer, &buf, head_len, false).await else {
        return Direct::Hyper {
            stream,
            read: buf.into(),
        };
    };
    if write_all(&stream, &response).await.is_err() {
        return Direct::Done;
    }
    match accepted {
        Some(accepted) => Direct::Upgraded {
            stream,
            rest: Bytes::copy_from_slice(&buf[head_len..]),
            route: accepted.route,
            identity: accepted.identity,
        },
        None => Direct::Done,
    }
}

/// The bytes of a `Full` body (our responses are small, in-memory bodies).
fn body_bytes(body: &http_body_util::Full<Bytes>) -> Bytes {
    let mut body = body.clone();
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// A stream that first yields bytes already read, then reads from `inner` (for handing a connection
/// to hyper after the direct path looked at its first request).
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
