//! Drives one upgraded WebSocket connection: bytes in -> frames -> messages for the session, and the
//! session's queued frames -> one vectored write.
//!
//! Everything happens in one task without splitting the stream: a single `poll` writes what is queued,
//! then reads whatever the socket has into a per-core scratch buffer and parses it in place. Only the
//! bytes of an incomplete frame (and of an unfinished fragmented message) are kept per session, so an
//! idle session owns no read buffer. Reads pause while the session's outbox is over its bound, which is
//! the backpressure for echo and for request/ack traffic.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::codec::encode_close;
use super::frames::{End, Frames, Handler};
use super::outbox::Outbox;

/// Size of the per-core read scratch buffer.
const SCRATCH: usize = 64 * 1024;
/// Reads handled per wake-up before the task yields to its neighbours on the core.
pub(crate) const READ_BUDGET: usize = 16;
/// Most frames handed to one `writev`.
pub(crate) const MAX_IOVECS: usize = 64;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// Run `f` over this core's read scratch buffer (never re-entered: parsing does not read).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH_BUF.with(|s| f(&mut s.borrow_mut()[..]))
}

/// Per-route protocol limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Largest message (after reassembly) accepted; larger -> close 1009.
    pub max_message: usize,
    /// How long the close handshake and the final flush may take.
    pub close_timeout: Duration,
}

struct Conn<S> {
    io: S,
    frames: Frames,
    /// TLS may hold written bytes until flushed.
    needs_flush: bool,
}

/// Run a connection until it ends, then perform the close handshake. `prefix` holds bytes the HTTP layer
/// read past the upgrade request.
pub async fn run<S, H>(io: S, prefix: Bytes, handler: &mut H, limits: ConnLimits) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut conn = Conn {
        io,
        frames: Frames::new(limits.max_message),
        needs_flush: false,
    };
    let mut prefix = prefix.to_vec();
    let mut end = conn.frames.feed(&mut prefix, handler).err();
    if end.is_none() {
        end = Some(poll_fn(|cx| conn.poll_open(cx, handler)).await);
    }
    let end = end.unwrap_or(End::Eof);
    let outbox = handler.outbox();
    let close_frame = match &end {
        End::PeerClosed(code) => Some(encode_close(*code, "")),
        End::Closed(reason) => Some(encode_close(reason.code, reason.reason)),
        End::Eof | End::Io(_) => None,
    };
    if let Some(frame) = close_frame {
        let _ = monoio::time::timeout(limits.close_timeout, conn.close(outbox, frame)).await;
    }
    outbox.detach();
    end
}

/// Write everything queued in `outbox` to `io` with as few `writev`s as it allows, then flush (TLS
/// may hold written bytes until flushed; `needs_flush` remembers that across calls).
pub(crate) fn poll_write_outbox<S: AsyncWrite + Unpin>(
    stream: &mut S,
    needs_flush: &mut bool,
    cx: &mut Context<'_>,
    outbox: &Outbox,
    report: &dyn Fn(usize, usize, Option<u64>),
) -> Poll<io::Result<()>> {
    while !outbox.is_empty() {
        let res = outbox.with_front(|frames| {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for f in frames.iter().take(MAX_IOVECS) {
                slices[n] = IoSlice::new(f);
                n += 1;
            }
            Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..n])
        });
        match res {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                let (frames, sample) = outbox.consume(n);
                report(n, frames, sample);
                *needs_flush = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    if *needs_flush {
        match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => *needs_flush = false,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Ready(Ok(()))
}

/// Close handshake: flush, send our close frame, half-close, then (when `linger`) read and drop until
/// the peer is gone, so the close frame is not lost to a TCP reset. Bounded by the caller's timeout.
pub(crate) async fn close_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    needs_flush: &mut bool,
    outbox: &Outbox,
    frame: Bytes,
    linger: bool,
) {
    outbox.force_reply(frame);
    let flushed =
        poll_fn(|cx| poll_write_outbox(stream, needs_flush, cx, outbox, &|_, _, _| {})).await;
    if flushed.is_err() {
        return;
    }
    let _ = poll_fn(|cx| Pin::new(&mut *stream).poll_shutdown(cx)).await;
    if !linger {
        return;
    }
    let mut sink = [0u8; 1024];
    loop {
        let r = poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut sink);
            Pin::new(&mut *stream)
                .poll_read(cx, &mut rb)
                .map_ok(|()| rb.filled().len())
        })
        .await;
        if !matches!(r, Ok(n) if n > 0) {
            return;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn poll_open<H: Handler>(&mut self, cx: &mut Context<'_>, h: &mut H) -> Poll<End> {
        h.outbox().register(cx.waker());
        for _ in 0..READ_BUDGET {
            if let Poll::Ready(Err(e)) =
                self.poll_write_queue(cx, h.outbox(), &|b, f, s| h.on_written(b, f, s))
            {
                return Poll::Ready(End::Io(e));
            }
            if let Some(reason) = h.outbox().close_requested() {
                return Poll::Ready(End::Closed(reason));
            }
            if !h.wants_input() || h.outbox().queued_bytes() >= h.outbox().limit() {
                return Poll::Pending;
            }
            if self.frames.stalled() {
                if let Err(end) = self.frames.resume(h) {
                    return Poll::Ready(end);
                }
                continue;
            }
            match self.poll_read_and_process(cx, h) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(end)) => return Poll::Ready(end),
                Poll::Ready(Ok(())) => {}
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Write everything queued with as few `writev`s as the socket allows.
    fn poll_write_queue(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &Outbox,
        report: &dyn Fn(usize, usize, Option<u64>),
    ) -> Poll<io::Result<()>> {
        poll_write_outbox(&mut self.io, &mut self.needs_flush, cx, outbox, report)
    }

    fn poll_read_and_process<H: Handler>(
        &mut self,
        cx: &mut Context<'_>,
        h: &mut H,
    ) -> Poll<Result<(), End>> {
        SCRATCH_BUF.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut rb = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(End::Io(e))),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(End::Eof));
            }
            h.outbox().touch();
            h.on_read(n);
            Poll::Ready(self.frames.feed(&mut scratch[..n], h))
        })
    }

    /// Close handshake: see [`close_stream`].
    async fn close(&mut self, outbox: &Outbox, frame: Bytes) {
        close_stream(&mut self.io, &mut self.needs_flush, outbox, frame, true).await;
    }
}
