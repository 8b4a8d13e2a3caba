//! The native data path for wss:// sessions: the TLS handshake and HTTP upgrade on rustls's
//! unbuffered API over the monoio socket, then the session's records (`tls_records`) on the plain
//! native loop, all with the per-core buffers.
//!
//! A buffered `rustls::ServerConnection` (and tokio-rustls around it) keeps a 4 KiB deframer buffer
//! per connection forever, plus the adapter's buffers; with `UnbufferedServerConnection` the caller
//! owns every buffer, and after the upgrade even that connection is replaced by the few objects a
//! session needs (see `tls_records`: about 2.1 KiB instead of 3.6). Per session then: the boxed
//! [`TlsState`] (record protection, the bytes of an incomplete record and ciphertext the socket
//! refused; both `Spill`s are unallocated while the session is idle). Records are read into the
//! per-core scratch buffer, decrypted in place and parsed there; replies are gathered into the
//! per-core plaintext buffer, sealed into the per-core ciphertext buffer and sent with one
//! non-blocking `sendmsg`.
//!
//! During the handshake, what the unbuffered API asks of its caller, and where it is handled:
//! - handshake flights and session tickets arrive as `EncodeTlsData`/`TransmitTlsData` at any time:
//!   [`TlsConn::feed`] and [`TlsConn::encrypt`] encode them into the same ciphertext stream, in
//!   order;
//! - after an error rustls has queued a fatal alert: [`TlsConn::alert`] encodes it so it is sent
//!   before the socket is closed.
//!
//! In the session, close_notify both ways: a received one ends the session like EOF (answered with
//! ours), and every close handshake ends with ours (`Wire::finish`).
//!
//! The TLS handshake and the HTTP upgrade run here ([`upgrade`]): the handshake through the
//! unbuffered connection, then the request head parsed with httparse and admitted by the same code
//! as the plain direct path (`http::direct::answer`). A buffered connection cannot be turned into an
//! unbuffered one, so requests that are not WebSocket upgrades are served by hyper through
//! [`TlsStream`], a small tokio-trait adapter around the same unbuffered connection.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use monoio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::ContentType;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::{with_scratch, ConnLimits};
use super::frames::{End, Frames, Handler};
use super::native::{recv, register, run_wire, sendmsg, Wire};
use super::outbox::Outbox;
use super::spill::Spill;
use super::tls_records::{Fail as RecordFail, Records};

/// Most plaintext encrypted per flush step (four full records).
const BATCH: usize = 64 * 1024;
/// Bound on the TLS overhead of one record (header, explicit nonce, tag, content type).
const RECORD_OVERHEAD: usize = 48;
/// Largest HTTP request head read on this path; bigger heads go to hyper (which answers 431).
const MAX_HEAD: usize = 16 * 1024;

thread_local! {
    /// Decrypted bytes on their way to the frame parser, or frames on their way to encryption.
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Ciphertext on its way to the socket.
    static CIPHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` over one of this core's buffers, emptied; a buffer grown past `max` by a huge record or
/// batch is released afterwards, so it does not pin memory on the core forever.
fn with_buf<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<u8>>>,
    max: usize,
    f: impl FnOnce(&mut Vec<u8>) -> R,
) -> R {
    key.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        let r = f(&mut b);
        if b.capacity() > max {
            *b = Vec::new();
        }
        r
    })
}

fn with_plain<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    with_buf(&PLAIN, 2 * BATCH, f)
}

fn with_cipher<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    with_buf(&CIPHER, 4 * BATCH, f)
}

/// Why feeding ciphertext stopped.
enum Fail<E> {
    Tls(rustls::Error),
    App(E),
}

fn invalid_data(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Append what `write` produces to `out`, growing it to the size rustls asks for.
fn append_with(
    out: &mut Vec<u8>,
    mut want: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<InsufficientSizeError>>,
) -> Result<(), ()> {
    let start = out.len();
    for _ in 0..3 {
        out.resize(start + want, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(InsufficientSizeError { required_size })) => want = required_size,
            Err(None) => break,
        }
    }
    out.truncate(start);
    Err(())
}

fn encode_err(e: EncodeError) -> Option<InsufficientSizeError> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s),
        EncodeError::AlreadyEncoded => None,
    }
}

fn encrypt_err(e: EncryptError) -> Option<InsufficientSizeError> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s),
        EncryptError::EncryptExhausted => None,
    }
}

/// One TLS connection's state: the rustls state machine and only the bytes that cannot be handed on
/// yet.
pub struct TlsConn {
    /// Boxed: the state is about 1.1 KiB, and a session's value is moved through several futures
    /// (the connection task, `session::spawn`, the wire) whose layouts can each keep a copy of a
    /// moved-from value (rustc #62958); behind a pointer it exists once.
    conn: Box<UnbufferedServerConnection>,
    /// Ciphertext of an incomplete record; empty (no allocation) between records.
    incoming: Spill,
    /// Ciphertext the socket refused; sent before anything else. Empty (no allocation) when idle.
    outgoing: Spill,
    /// The peer sent close_notify.
    peer_closed: bool,
    /// We queued close_notify.
    closed: bool,
}

impl TlsConn {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self {
            conn: Box::new(UnbufferedServerConnection::new(config)?),
            incoming: Spill::default(),
            outgoing: Spill::default(),
            peer_closed: false,
            closed: false,
        })
    }

    /// Process ciphertext just read: decrypted application data goes to `app`, TLS records to send
    /// (handshake, tickets, KeyUpdate, alerts) are appended to `out`. An incomplete record is kept.
    fn feed<E>(
        &mut self,
        input: &mut [u8],
        out: &mut Vec<u8>,
        app: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), Fail<E>> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let r = incoming.process(input, |buf| self.pump(buf, out, app));
        self.incoming = incoming;
        r
    }

    /// Run the state machine over `buf` until it needs more input. Returns the bytes consumed.
    fn pump<E>(
        &mut self,
        buf: &mut [u8],
        out: &mut Vec<u8>,
        app: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> (usize, Result<(), Fail<E>>) {
        let mut used = 0;
        loop {
            let status = self.conn.process_tls_records(&mut buf[used..]);
            let discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => return (used + discard, Err(Fail::Tls(e))),
            };
            let mut extra = 0;
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = match record {
                            Ok(r) => r,
                            Err(e) => return (used + discard, Err(Fail::Tls(e))),
                        };
                        extra += record.discard;
                        if let Err(e) = app(record.payload) {
                            return (used + discard + extra, Err(Fail::App(e)));
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut enc) => {
                    if append_with(out, 1024, |b| enc.encode(b).map_err(encode_err)).is_err() {
                        let e = rustls::Error::General("cannot encode a TLS record".into());
                        return (used + discard, Err(Fail::Tls(e)));
                    }
                }
                // Encoded records are sent in order by the caller, before anything encrypted later.
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed
                | ConnectionState::BlockedHandshake
                | ConnectionState::WriteTraffic(_) => return (used + discard, Ok(())),
                // Early data is not enabled, so this cannot happen; refuse rather than spin.
                _ => {
                    let e = rustls::Error::General("unexpected TLS state".into());
                    return (used + discard, Err(Fail::Tls(e)));
                }
            }
            used += discard + extra;
        }
    }

    /// Encode the fatal alert rustls queued after an error into `out`.
    fn alert(&mut self, out: &mut Vec<u8>) {
        for _ in 0..4 {
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    if append_with(out, 256, |b| enc.encode(b).map_err(encode_err)).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }

    /// Encrypt `plain` into `out` (after any TLS records rustls wants sent first); with `plain`
    /// empty and `close` set, a close_notify alert instead.
    fn encrypt(&mut self, plain: &[u8], close: bool, out: &mut Vec<u8>) -> io::Result<()> {
        for _ in 0..8 {
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let r = if close {
                        self.closed = true;
                        append_with(out, 64, |b| w.queue_close_notify(b).map_err(encrypt_err))
                    } else {
                        let records = plain.len() / 16384 + 1;
                        let want = plain.len() + records * RECORD_OVERHEAD;
                        append_with(out, want, |b| w.encrypt(plain, b).map_err(encrypt_err))
                    };
                    return r.map_err(|()| invalid_data("cannot encrypt"));
                }
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    append_with(out, 1024, |b| enc.encode(b).map_err(encode_err))
                        .map_err(|()| invalid_data("cannot encode a TLS record"))?;
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::PeerClosed) => self.peer_closed = true,
                Ok(ConnectionState::Closed) => return Err(io::ErrorKind::BrokenPipe.into()),
                Ok(_) => return Err(invalid_data("TLS connection not ready for data")),
                Err(e) => return Err(invalid_data(e)),
            }
        }
        Err(invalid_data("TLS connection not ready for data"))
    }

    fn emit(&mut self, fd: RawFd, ct: &[u8]) -> io::Result<()> {
        emit(&mut self.outgoing, fd, ct)
    }

    fn send_pending(&mut self, fd: RawFd) -> io::Result<bool> {
        send_pending(&mut self.outgoing, fd)
    }
}

/// Send `ct` after what `outgoing` already holds; what the socket refuses is kept there.
fn emit(outgoing: &mut Spill, fd: RawFd, ct: &[u8]) -> io::Result<()> {
    if !outgoing.is_empty() {
        outgoing.extend(ct);
        return Ok(());
    }
    let mut sent = 0;
    while sent < ct.len() {
        match sendmsg(fd, &[IoSlice::new(&ct[sent..])]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    outgoing.extend(&ct[sent..]);
    Ok(())
}

/// Send what `outgoing` holds. `Ok(true)` = nothing is pending any more.
fn send_pending(outgoing: &mut Spill, fd: RawFd) -> io::Result<bool> {
    while !outgoing.is_empty() {
        match sendmsg(fd, &[IoSlice::new(outgoing.as_slice())]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => outgoing.consume(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A wss session on the native path (see the module docs).
pub struct TlsIo {
    pub(crate) stream: TcpStream,
    pub(crate) wire: TlsWire,
}

/// A wss session's TLS state after the upgrade, boxed: the wire lives in every session's future,
/// and the box (632 bytes) fits mimalloc's 640-byte class.
pub(crate) struct TlsWire(Box<TlsState>);

pub(crate) struct TlsState {
    rec: Records,
    /// Ciphertext of an incomplete record.
    incoming: Spill,
    /// Ciphertext the socket refused; sent before anything else.
    outgoing: Spill,
}

impl std::ops::Deref for TlsWire {
    type Target = TlsState;
    fn deref(&self) -> &TlsState {
        &self.0
    }
}

impl std::ops::DerefMut for TlsWire {
    fn deref_mut(&mut self) -> &mut TlsState {
        &mut self.0
    }
}

impl TlsWire {
    /// Take over an upgraded connection from the handshake's rustls connection (see
    /// `tls_records`). Fails only if rustls cannot export the connection's secrets.
    pub(crate) fn new(tls: TlsConn) -> Result<Self, rustls::Error> {
        let mut rec = Records::new(*tls.conn)?;
        rec.peer_closed = tls.peer_closed;
        rec.closed = tls.closed;
        Ok(Self(Box::new(TlsState {
            rec,
            incoming: tls.incoming,
            outgoing: tls.outgoing,
        })))
    }
}

impl TlsState {
    /// Open the records in `input` (after any incomplete one kept from before); keep the tail.
    fn open(
        &mut self,
        input: &mut [u8],
        out: &mut Vec<u8>,
        app: &mut impl FnMut(&mut [u8]) -> Result<(), End>,
    ) -> Result<(), RecordFail<End>> {
        let rec = &mut self.rec;
        self.incoming.process(input, |buf| rec.open(buf, out, app))
    }

    fn emit(&mut self, fd: RawFd, ct: &[u8]) -> io::Result<()> {
        emit(&mut self.outgoing, fd, ct)
    }

    fn send_pending(&mut self, fd: RawFd) -> io::Result<bool> {
        send_pending(&mut self.outgoing, fd)
    }
}

impl Wire for TlsWire {
    fn on_bytes<H: Handler>(
        &mut self,
        fd: RawFd,
        data: &mut [u8],
        frames: &mut Frames,
        h: &mut H,
    ) -> Result<(), End> {
        with_cipher(|ct| {
            let r = match self.open(data, ct, &mut |p| frames.feed(p, h)) {
                Ok(()) if self.rec.peer_closed => Err(End::Eof),
                Ok(()) => Ok(()),
                Err(RecordFail::App(end)) => Err(end),
                Err(RecordFail::Tls(alert, e)) => {
                    self.rec.fatal(alert, ct);
                    Err(End::Io(invalid_data(e)))
                }
            };
            match self.emit(fd, ct) {
                Err(e) if r.is_ok() => Err(End::Io(e)),
                _ => r,
            }
        })
    }

    fn flush(
        &mut self,
        fd: RawFd,
        outbox: &Outbox,
        report: &dyn Fn(usize, usize, Option<u64>),
    ) -> io::Result<bool> {
        loop {
            if !self.send_pending(fd)? {
                return Ok(false);
            }
            if outbox.is_empty() {
                return Ok(true);
            }
            with_plain(|p| {
                outbox.with_front(|frames| {
                    for f in frames {
                        let room = BATCH - p.len();
                        p.extend_from_slice(&f[..f.len().min(room)]);
                        if p.len() == BATCH {
                            break;
                        }
                    }
                });
                with_cipher(|ct| {
                    self.rec
                        .seal(ContentType::ApplicationData, p, ct)
                        .map_err(invalid_data)?;
                    let (frames, sample) = outbox.consume(p.len());
                    report(p.len(), frames, sample);
                    self.emit(fd, ct)
                })
            })?;
        }
    }

    fn finish(&mut self, fd: RawFd) {
        if self.rec.closed {
            return;
        }
        with_cipher(|ct| {
            if self.rec.close_notify(ct).is_ok() {
                let _ = self.emit(fd, ct);
            }
        });
    }
}

impl super::SessionIo for TlsIo {
    fn drive<H: Handler>(
        self,
        prefix: Bytes,
        h: H,
        limits: ConnLimits,
    ) -> impl Future<Output = (End, H)> {
        let sock = register(self.stream, h.outbox());
        run_wire(sock, self.wire, prefix, h, limits)
    }
}

/// What the TLS upgrade path did with a connection.
pub enum TlsUpgrade {
    /// Upgraded: run the session, starting with `rest` (plaintext after the request).
    Upgraded {
        io: TlsIo,
        rest: Bytes,
        route: crate::http::Route,
        identity: Option<crate::auth::Identity>,
    },
    /// Not an upgrade request: serve it with hyper over [`TlsStream`], replaying `read` first.
    Hyper {
        stream: TcpStream,
        tls: TlsConn,
        read: Bytes,
    },
    /// The TLS handshake failed.
    Failed,
    /// Answered (a refusal) or gone.
    Done,
}

/// Write `plain` (empty: just what is pending) and wait until the socket took all of it.
async fn write_all(stream: &TcpStream, tls: &mut TlsConn, plain: &[u8]) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    if !plain.is_empty() {
        with_cipher(|ct| {
            tls.encrypt(plain, false, ct)?;
            tls.emit(fd, ct)
        })?;
    }
    while !tls.send_pending(fd)? {
        stream.writable(false).await?;
    }
    Ok(())
}

/// TLS handshake and first HTTP request of a wss connection, on the native socket.
pub async fn upgrade(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    ctx: &crate::http::HttpCtx,
    peer: IpAddr,
) -> TlsUpgrade {
    let Ok(mut tls) = TlsConn::new(config) else {
        return TlsUpgrade::Failed;
    };
    let fd = stream.as_raw_fd();
    let mut head: Vec<u8> = Vec::new();
    let head_len = loop {
        if let Some(end) = crate::http::head_end(&head) {
            break end;
        }
        if head.len() >= MAX_HEAD {
            return TlsUpgrade::Hyper {
                stream,
                tls,
                read: head.into(),
            };
        }
        let got = with_scratch(|scratch| match recv(fd, scratch) {
            Ok(0) => Err(false),
            Ok(n) => with_cipher(|ct| {
                let r = tls.feed(&mut scratch[..n], ct, &mut |p| {
                    head.extend_from_slice(p);
                    Ok::<(), ()>(())
                });
                let failed = r.is_err();
                if failed {
                    tls.alert(ct);
                }
                let sent = tls.emit(fd, ct);
                match (failed, sent) {
                    (true, _) => Err(true),
                    (false, Err(_)) => Err(false),
                    (false, Ok(())) => Ok(true),
                }
            }),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(_) => Err(false),
        });
        let got = match got {
            Ok(got) => got,
            Err(false) => return TlsUpgrade::Done,
            Err(true) => {
                // Best effort: let the alert reach the client.
                let _ = write_all(&stream, &mut tls, &[]).await;
                return TlsUpgrade::Failed;
            }
        };
        if write_all(&stream, &mut tls, &[]).await.is_err() || tls.peer_closed {
            return TlsUpgrade::Done;
        }
        if !got && stream.readable(false).await.is_err() {
            return TlsUpgrade::Done;
        }
    };
    let Some((response, accepted)) = crate::http::answer(ctx, peer, &head, head_len, true).await
    else {
        return TlsUpgrade::Hyper {
            stream,
            tls,
            read: head.into(),
        };
    };
    if write_all(&stream, &mut tls, &response).await.is_err() {
        return TlsUpgrade::Done;
    }
    match accepted {
        Some(a) => match TlsWire::new(tls) {
            Ok(wire) => TlsUpgrade::Upgraded {
                rest: Bytes::copy_from_slice(&head[head_len..]),
                io: TlsIo { stream, wire },
                route: a.route,
                identity: a.identity,
            },
            Err(e) => {
                tracing::error!(client = %peer, error = %e, "cannot take over the TLS connection after the upgrade");
                TlsUpgrade::Failed
            }
        },
        None => {
            // A refusal: close cleanly.
            with_cipher(|ct| {
                if tls.encrypt(&[], true, ct).is_ok() {
                    let _ = tls.emit(fd, ct);
                }
            });
            let _ = write_all(&stream, &mut tls, &[]).await;
            TlsUpgrade::Done
        }
    }
}

/// The unbuffered connection behind tokio's IO traits, for hyper (requests on the wss listener that
/// are not WebSocket upgrades: health checks, 404s, oversized heads). Not on the session path.
pub struct TlsStream {
    io: monoio::net::tcp::stream_poll::TcpStreamPoll,
    tls: TlsConn,
    /// Decrypted bytes not read yet.
    plain: Vec<u8>,
    eof: bool,
}

impl TlsStream {
    pub fn new(io: monoio::net::tcp::stream_poll::TcpStreamPoll, tls: TlsConn) -> Self {
        Self {
            io,
            tls,
            plain: Vec::new(),
            eof: false,
        }
    }

    /// Write pending ciphertext through the poll adapter.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.tls.outgoing.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, self.tls.outgoing.as_slice()) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.tls.outgoing.consume(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn queue(&mut self, plain: &[u8], close: bool) -> io::Result<()> {
        let tls = &mut self.tls;
        with_cipher(|ct| {
            tls.encrypt(plain, close, ct)?;
            tls.outgoing.extend(ct);
            Ok(())
        })
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.drain(..n);
                if this.plain.is_empty() {
                    this.plain = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || this.tls.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            let (io, tls, plain) = (&mut this.io, &mut this.tls, &mut this.plain);
            let r = with_scratch(|scratch| {
                let mut rb = ReadBuf::new(scratch);
                match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(false));
                }
                Poll::Ready(with_cipher(|ct| {
                    let r = tls.feed(&mut scratch[..n], ct, &mut |p| {
                        plain.extend_from_slice(p);
                        Ok::<(), ()>(())
                    });
                    if r.is_err() {
                        tls.alert(ct);
                    }
                    tls.outgoing.extend(ct);
                    match r {
                        Err(Fail::Tls(e)) => Err(invalid_data(e)),
                        _ => Ok(true),
                    }
                }))
            });
            match r {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    let _ = this.poll_drain(cx);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(more)) => this.eof = !more,
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map(|r| r.map(|()| 0)),
        }
        let n = buf.len().min(BATCH);
        self.queue(&buf[..n], false)?;
        // Started now; `poll_flush` finishes it.
        let _ = self.poll_drain(cx);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.tls.closed {
            self.queue(&[], true)?;
        }
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.io).poll_shutdown(cx),
            other => other,
        }
    }
}

/// Caps the TLS handshakes in progress on one core: a handshake's peak memory is many times an idle
/// session's, so a connection storm must not run thousands at once. The accept loop waits for a free
/// slot before accepting (excess connections wait in the kernel's listen backlog).
pub struct HandshakeGate {
    cap: usize,
    busy: std::cell::Cell<usize>,
    waiter: RefCell<Option<Waker>>,
}

/// A handshake slot, released on drop.
pub struct HandshakePermit(Rc<HandshakeGate>);

impl HandshakeGate {
    /// `cap` = 0: no limit.
    pub fn new(cap: usize) -> Rc<Self> {
        Rc::new(Self {
            cap,
            busy: std::cell::Cell::new(0),
            waiter: RefCell::new(None),
        })
    }

    /// Wait until a slot is free (one waiter: the core's wss accept loop).
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| {
            if self.cap == 0 || self.busy.get() < self.cap {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Take a slot (after `ready`, or over the cap if called without it).
    pub fn enter(self: &Rc<Self>) -> HandshakePermit {
        self.busy.set(self.busy.get() + 1);
        HandshakePermit(self.clone())
    }

    pub fn in_progress(&self) -> usize {
        self.busy.get()
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let g = &self.0;
        g.busy.set(g.busy.get().saturating_sub(1));
        if let Some(w) = g.waiter.borrow_mut().take() {
            w.wake();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::transport::native::tests::{session_future_size, Sink};
    use crate::transport::SessionIo;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    use rustls::ClientConnection;
    use std::io::{Read, Write};

    /// The session future (TLS state included, as it lives inline in the task) is part of every
    /// idle wss session's memory: keep it small. The record state is boxed, so this is close to the
    /// plain native session's budget.
    const TLS_SESSION_FUTURE_BUDGET: usize = 192;

    /// A server wire after a complete handshake with a real rustls client (in memory), and that
    /// client. `suites`: restrict the client to these (None: rustls's defaults).
    pub(crate) fn handshaken(
        versions: &[&'static rustls::SupportedProtocolVersion],
        suites: Option<&[rustls::SupportedCipherSuite]>,
    ) -> (TlsWire, ClientConnection) {
        let setup = crate::tls::self_signed().expect("tls setup");
        let pem = setup.self_signed_pem.clone().expect("self-signed pem");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(suites) = suites {
            provider.cipher_suites = suites.to_vec();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = "localhost".try_into().expect("name");
        let mut client = ClientConnection::new(Arc::new(config), name).expect("client");
        let mut server = TlsConn::new(setup.config).expect("server");
        for _ in 0..4 {
            let mut c2s = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut c2s).expect("client write");
            }
            let mut s2c = Vec::new();
            let r = server.feed(&mut c2s, &mut s2c, &mut |_| Ok::<(), ()>(()));
            assert!(r.is_ok(), "server handshake failed");
            client.read_tls(&mut &s2c[..]).expect("client read");
            client.process_new_packets().expect("client handshake");
        }
        assert!(!client.is_handshaking());
        (TlsWire::new(server).expect("take over"), client)
    }

    /// Client -> server: the records the client produced, opened by the wire; returns the
    /// plaintext and whatever the server sealed in answer (already fed back to the client).
    fn client_to_server(wire: &mut TlsWire, client: &mut ClientConnection) -> Vec<u8> {
        let mut c2s = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut c2s).expect("client write");
        }
        let mut got = Vec::new();
        let mut answer = Vec::new();
        // Two halves, so a record split across reads is kept and completed.
        let half = c2s.len() / 2;
        let (a, b) = c2s.split_at_mut(half);
        for part in [a, b] {
            let r = wire.open(part, &mut answer, &mut |p: &mut [u8]| {
                got.extend_from_slice(p);
                Ok(())
            });
            assert!(r.is_ok(), "server failed to open records");
        }
        if !answer.is_empty() {
            client.read_tls(&mut &answer[..]).expect("client read");
            client
                .process_new_packets()
                .expect("client accepts the answer");
        }
        got
    }

    /// Server -> client: seal `plain`, let the client read it.
    fn server_to_client(
        wire: &mut TlsWire,
        client: &mut ClientConnection,
        plain: &[u8],
    ) -> Vec<u8> {
        let mut ct = Vec::new();
        wire.rec
            .seal(ContentType::ApplicationData, plain, &mut ct)
            .expect("seal");
        let mut rd = &ct[..];
        let mut got = Vec::new();
        while !rd.is_empty() {
            client.read_tls(&mut rd).expect("client read");
            let state = client.process_new_packets().expect("client opens");
            let mut part = vec![0u8; state.plaintext_bytes_to_read()];
            client.reader().read_exact(&mut part).expect("plaintext");
            got.extend_from_slice(&part);
        }
        got
    }

    fn exchange(wire: &mut TlsWire, client: &mut ClientConnection) {
        client.writer().write_all(b"hello server").expect("write");
        assert_eq!(client_to_server(wire, client), b"hello server");
        let big = vec![7u8; 40_000]; // three records
        client.writer().write_all(&big).expect("write");
        assert_eq!(client_to_server(wire, client), big);
        assert_eq!(
            server_to_client(wire, client, b"hello client"),
            b"hello client"
        );
        assert_eq!(server_to_client(wire, client, &big), big);
    }

    #[test]
    fn records_carry_data_both_ways_on_tls13_and_tls12() {
        use rustls::crypto::ring::cipher_suite as cs;
        let cases: [(&[&'static rustls::SupportedProtocolVersion], Option<Vec<_>>); 5] = [
            (&[&rustls::version::TLS13], None),
            (
                &[&rustls::version::TLS13],
                Some(vec![cs::TLS13_CHACHA20_POLY1305_SHA256]),
            ),
            (
                &[&rustls::version::TLS13],
                Some(vec![cs::TLS13_AES_128_GCM_SHA256]),
            ),
            (
                &[&rustls::version::TLS12],
                Some(vec![cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]),
            ),
            (
                &[&rustls::version::TLS12],
                Some(vec![cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]),
            ),
        ];
        for (versions, suites) in cases {
            let (mut wire, mut client) = handshaken(versions, suites.as_deref());
            exchange(&mut wire, &mut client);
        }
    }

    #[test]
    fn key_updates_both_ways() {
        let (mut wire, mut client) = handshaken(&[&rustls::version::TLS13], None);
        // The client updates its key and asks for ours: the next records must open with the new
        // read key, and the client must accept our KeyUpdate and records under our new key.
        assert_eq!(
            server_to_client(&mut wire, &mut client, b"before"),
            b"before"
        );
        client.refresh_traffic_keys().expect("key update");
        client.writer().write_all(b"after update").expect("write");
        assert_eq!(client_to_server(&mut wire, &mut client), b"after update");
        // The tickets went out under the first key; the new one starts at sequence 0.
        assert_eq!(wire.rec.tx_seq(), 0, "no KeyUpdate was sent");
        exchange(&mut wire, &mut client);
    }

    #[test]
    fn a_tampered_record_is_refused_with_bad_record_mac() {
        let (mut wire, mut client) = handshaken(&[&rustls::version::TLS13], None);
        client.writer().write_all(b"tamper with me").expect("write");
        let mut c2s = Vec::new();
        client.write_tls(&mut c2s).expect("client write");
        let last = c2s.len() - 1;
        c2s[last] ^= 1;
        let mut answer = Vec::new();
        let r = wire.open(&mut c2s, &mut answer, &mut |_| Ok(()));
        let Err(RecordFail::Tls(alert, _)) = r else {
            panic!("a tampered record was accepted");
        };
        assert_eq!(alert, rustls::AlertDescription::BadRecordMac);
        wire.rec.fatal(alert, &mut answer);
        client.read_tls(&mut &answer[..]).expect("client read");
        let err = client
            .process_new_packets()
            .expect_err("the client sees the alert");
        assert!(matches!(
            err,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
        ));
    }

    #[test]
    fn close_notify_both_ways() {
        let (mut wire, mut client) = handshaken(&[&rustls::version::TLS13], None);
        client.send_close_notify();
        assert!(client_to_server(&mut wire, &mut client).is_empty());
        assert!(wire.rec.peer_closed);
        let mut ct = Vec::new();
        wire.rec.close_notify(&mut ct).expect("close_notify");
        client.read_tls(&mut &ct[..]).expect("client read");
        let state = client.process_new_packets().expect("client");
        assert!(state.peer_has_closed());
        assert!(wire
            .rec
            .seal(ContentType::ApplicationData, b"x", &mut ct)
            .is_err());
    }

    #[test]
    fn tls_session_future_stays_within_budget() {
        let size = session_future_size(|stream, h: Sink, limits| {
            let (wire, _client) = handshaken(&[&rustls::version::TLS13], None);
            let io = TlsIo { stream, wire };
            std::mem::size_of_val(&io.drive(Bytes::new(), h, limits))
        });
        println!(
            "tls session future: {size} bytes; TlsWire {} B, TlsState {} B (boxed)",
            std::mem::size_of::<TlsWire>(),
            std::mem::size_of::<TlsState>()
        );
        assert!(
            size <= TLS_SESSION_FUTURE_BUDGET,
            "tls session future is {size} bytes"
        );
    }
}
