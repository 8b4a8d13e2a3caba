//! The native data path for plain ws:// sessions: wait for readiness without a buffer, then move bytes
//! with plain non-blocking syscalls.
//!
//! An idle session owns no read buffer and no pending operation: its socket sits in the core's
//! epoll set (`readiness`) and the session waits on two readiness bits. Once readable, it `recv`s into
//! the per-core scratch buffer shared with the poll path, parses in place, and keeps only an
//! incomplete frame. Writes go straight to the socket with one `sendmsg` of every queued frame; only
//! what the socket refuses stays queued, and the task then waits for writability. One flat loop, so
//! the session future stays small (its size is checked by a unit test).

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::os::fd::{IntoRawFd, RawFd};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use monoio::net::TcpStream;

use super::codec::encode_close;
use super::conn::{with_scratch, ConnLimits, MAX_IOVECS, READ_BUDGET};
use super::frames::{End, Frames, Handler};
use super::outbox::Outbox;
use super::readiness::{Registered, HANGUP, READABLE, WRITABLE};

/// What differs between the native data paths (plain ws here, TLS in `tls_native`): how bytes read
/// from the socket become frames, and how queued frames become bytes on the socket. The session
/// loop, the read budget and the close handshake are shared; the socket is passed in (`fd`), so a
/// wire holds only its own state (plain ws: none).
pub(super) trait Wire {
    /// Bytes just read from the socket (in the per-core scratch buffer).
    fn on_bytes<H: Handler>(
        &mut self,
        fd: RawFd,
        data: &mut [u8],
        frames: &mut Frames,
        h: &mut H,
    ) -> Result<(), End>;
    /// Write queued frames as far as the socket takes them now. `Ok(true)` = everything is written.
    fn flush(
        &mut self,
        fd: RawFd,
        outbox: &Outbox,
        report: &dyn Fn(usize, usize, Option<u64>),
    ) -> io::Result<bool>;
    /// The connection is about to be half-closed (TLS queues its close_notify here).
    fn finish(&mut self, _fd: RawFd) {}
}

/// Plain ws: bytes are frames.
pub(super) struct Plain;

impl Wire for Plain {
    fn on_bytes<H: Handler>(
        &mut self,
        _fd: RawFd,
        data: &mut [u8],
        frames: &mut Frames,
        h: &mut H,
    ) -> Result<(), End> {
        frames.feed(data, h)
    }
    fn flush(
        &mut self,
        fd: RawFd,
        outbox: &Outbox,
        report: &dyn Fn(usize, usize, Option<u64>),
    ) -> io::Result<bool> {
        flush_outbox(fd, outbox, report)
    }
}

fn flush_outbox(
    fd: RawFd,
    outbox: &Outbox,
    report: &dyn Fn(usize, usize, Option<u64>),
) -> io::Result<bool> {
    while !outbox.is_empty() {
        let r = outbox.with_front(|frames| {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for f in frames.iter().take(MAX_IOVECS) {
                slices[n] = IoSlice::new(f);
                n += 1;
            }
            sendmsg(fd, &slices[..n])
        });
        match r {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let (frames, sample) = outbox.consume(n);
                report(n, frames, sample);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

pub(super) fn sendmsg(fd: RawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: `msg` points at `slices`, which outlives the call; IoSlice is ABI-compatible with iovec.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = slices.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub(super) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// How a round of reads ended.
enum Read {
    /// The read budget is used up; the socket may have more.
    Budget,
    /// The socket has nothing more for now (its readiness is cleared).
    Drained,
    /// The handler wants no more input for now; the socket may have more.
    Paused,
}

/// Read what the socket has (up to the read budget) and feed it to the wire.
fn read_some<W: Wire, H: Handler>(
    fd: RawFd,
    w: &mut W,
    frames: &mut Frames,
    h: &mut H,
) -> Result<Read, End> {
    for _ in 0..READ_BUDGET {
        let r = with_scratch(|scratch| match recv(fd, scratch) {
            Ok(0) => Err(End::Eof),
            Ok(n) => {
                h.outbox().touch();
                h.on_read(n);
                let short = n < scratch.len() && !h.outbox().is_ready(HANGUP);
                w.on_bytes(fd, &mut scratch[..n], frames, h)
                    .map(|()| !short)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(End::Io(e)),
        });
        if !r? {
            h.outbox().clear_ready(READABLE);
            return Ok(Read::Drained);
        }
        if !h.wants_input() || h.outbox().close_requested().is_some() {
            return Ok(Read::Paused);
        }
    }
    Ok(Read::Budget)
}

/// Run a plain ws session on the native path until it ends, then perform the close handshake.
pub fn run<H: Handler>(
    stream: TcpStream,
    prefix: Bytes,
    h: H,
    limits: ConnLimits,
) -> impl Future<Output = (End, H)> {
    let sock = register(stream, h.outbox());
    run_wire(sock, Plain, prefix, h, limits)
}

/// Take the socket from monoio into this core's epoll set (see `readiness`). The connection's
/// handshake ran to completion on `stream`, so no monoio operation still refers to it.
pub(super) fn register(stream: TcpStream, outbox: &Outbox) -> Registered {
    Registered::new(stream.into_raw_fd(), outbox)
}

/// Run a session on a native wire until it ends, then perform the close handshake.
///
/// Written as `fn -> impl Future` with one flat `async move` block: an `async fn` (or a nested one
/// taking references) would keep its arguments twice in the future, and every byte here is paid by
/// every idle session. For the same reason the future keeps neither the bytes that came with the
/// upgrade (they wait in the parser) nor the limits (only the close timeout, in milliseconds), and
/// the socket is a bare registered descriptor whose readiness lives in the outbox: waiting is a
/// check of two bits and a waker, no pending operation.
#[allow(clippy::manual_async_fn)] // deliberate: see above (rustc issue #62958)
pub(super) fn run_wire<W: Wire, H: Handler>(
    sock: Registered,
    mut wire: W,
    prefix: Bytes,
    mut h: H,
    limits: ConnLimits,
) -> impl Future<Output = (End, H)> {
    let mut frames = Frames::with_unparsed(limits.max_message, &prefix);
    let close_ms = u32::try_from(limits.close_timeout.as_millis()).unwrap_or(u32::MAX);
    async move {
        if let Some(e) = sock.error() {
            drop(sock);
            h.outbox().detach();
            return (End::Io(e), h);
        }
        let fd = sock.fd();
        let end = 'open: loop {
            let outbox = h.outbox();
            if outbox.is_ready(WRITABLE) {
                match wire.flush(fd, outbox, &|n, f, s| h.on_written(n, f, s)) {
                    Ok(true) => {}
                    Ok(false) => h.outbox().clear_ready(WRITABLE),
                    Err(e) => break 'open End::Io(e),
                }
            }
            if let Some(reason) = h.outbox().close_requested() {
                break 'open End::Closed(reason);
            }
            if can_read(&h) {
                if frames.stalled() {
                    if let Err(end) = frames.resume(&mut h) {
                        break 'open end;
                    }
                    continue;
                }
                if h.outbox().is_ready(READABLE) {
                    match read_some(fd, &mut wire, &mut frames, &mut h) {
                        // Budget used up: let the core's other tasks run, then continue.
                        Ok(Read::Budget) => yield_now().await,
                        Ok(Read::Drained | Read::Paused) => {}
                        Err(end) => break 'open end,
                    }
                    continue;
                }
            }
            // Nothing to do until the socket or the outbox changes.
            let (h, frames) = (&h, &frames);
            poll_fn(move |cx| {
                let outbox = h.outbox();
                outbox.register(cx.waker());
                let wake = (outbox.is_ready(WRITABLE) && !outbox.is_empty())
                    || outbox.close_requested().is_some()
                    || (can_read(h) && (outbox.is_ready(READABLE) || frames.stalled()));
                if wake {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        };
        let close_frame = match &end {
            End::PeerClosed(code) => Some(encode_close(*code, "")),
            End::Closed(reason) => Some(encode_close(reason.code, reason.reason)),
            End::Eof | End::Io(_) => None,
        };
        if let Some(frame) = close_frame {
            // Boxed: the close handshake happens once, its state need not live in every session.
            let closing = close(fd, &mut wire, h.outbox(), frame);
            let timeout = Duration::from_millis(u64::from(close_ms));
            let _ = Box::pin(monoio::time::timeout(timeout, closing)).await;
        } else if matches!(end, End::Eof) {
            // The peer is gone or half-closed: answer its close (TLS close_notify) if the socket
            // takes it now, without waiting.
            if wire.flush(fd, h.outbox(), &|_, _, _| {}).is_ok() {
                wire.finish(fd);
            }
        }
        // Out of the epoll set before the outbox (which its events point at) can go.
        drop(sock);
        h.outbox().detach();
        (end, h)
    }
}

/// The session takes input now: it wants it and its outbox has room for the replies.
fn can_read<H: Handler>(h: &H) -> bool {
    h.wants_input() && h.outbox().queued_bytes() < h.outbox().limit()
}

/// Give the core's other tasks a turn.
pub(super) async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Wait until the socket has `bit` (`READABLE` / `WRITABLE`) again.
async fn ready(outbox: &Outbox, bit: u8) {
    poll_fn(|cx| {
        outbox.register(cx.waker());
        if outbox.is_ready(bit) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Write everything the wire has queued, waiting for writability as needed. `false` = the socket
/// failed.
async fn flush_all<W: Wire>(fd: RawFd, wire: &mut W, outbox: &Outbox) -> bool {
    loop {
        match wire.flush(fd, outbox, &|_, _, _| {}) {
            Ok(true) => return true,
            Ok(false) => {
                outbox.clear_ready(WRITABLE);
                ready(outbox, WRITABLE).await;
            }
            Err(_) => return false,
        }
    }
}

/// Close handshake: flush, send our close frame (and, on TLS, close_notify), half-close, then read
/// (and drop) until the peer is gone. Bounded by the caller's timeout.
async fn close<W: Wire>(fd: RawFd, wire: &mut W, outbox: &Outbox, frame: Bytes) {
    outbox.force_reply(frame);
    if !flush_all(fd, wire, outbox).await {
        return;
    }
    wire.finish(fd);
    if !flush_all(fd, wire, outbox).await {
        return;
    }
    // SAFETY: shutdown(2) on our own open socket.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    let mut sink = [0u8; 1024];
    loop {
        match recv(fd, &mut sink) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                outbox.clear_ready(READABLE);
                ready(outbox, READABLE).await;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::transport::{CloseReason, Message};

    /// A handler that drops every message; like the real ones, it refers to its outbox.
    pub(crate) struct Sink(std::rc::Rc<Outbox>);

    impl Handler for Sink {
        fn on_message(&mut self, _msg: Message<'_>) -> Result<(), CloseReason> {
            Ok(())
        }
        fn outbox(&self) -> &Outbox {
            &self.0
        }
    }

    /// The size of the session future `make` builds over a connected socket.
    pub(crate) fn session_future_size(
        make: impl FnOnce(TcpStream, Sink, ConnLimits) -> usize,
    ) -> usize {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let client = monoio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            let h = Sink(std::rc::Rc::new(Outbox::new(1024)));
            let limits = ConnLimits {
                max_message: 1024,
                close_timeout: std::time::Duration::from_millis(10),
            };
            make(client, h, limits)
        })
    }

    /// The per-session future is part of every idle session's memory: keep it small. (The prototype
    /// in shared/research reached 256 bytes with a `readable()` future inside; here waiting is two
    /// readiness bits in the outbox, see `readiness`.)
    const SESSION_FUTURE_BUDGET: usize = 160;

    #[test]
    fn session_future_stays_within_budget() {
        let size = session_future_size(|client, h, limits| {
            std::mem::size_of_val(&run(client, Bytes::new(), h, limits))
        });
        println!("native session future: {size} bytes");
        assert!(
            size <= SESSION_FUTURE_BUDGET,
            "session future is {size} bytes"
        );
    }
}
