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
use fastwebsockets::OpCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::codec::{
    check_close_payload, close_code, encode_close, encode_frame, parse_frame, CloseReason,
    Utf8Progress,
};
use super::outbox::Outbox;

/// Size of the per-core read scratch buffer.
const SCRATCH: usize = 64 * 1024;
/// Reads handled per wake-up before the task yields to its neighbours on the core.
const READ_BUDGET: usize = 16;
/// Most frames handed to one `writev`.
const MAX_IOVECS: usize = 64;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// A complete data message, borrowed from the transport's buffers for the duration of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// What a route does with a connection's messages (echo, pub/sub, ...); it never sees the socket.
pub trait Handler {
    /// A complete data message arrived; `Err` closes the connection with that reason.
    fn on_message(&mut self, msg: Message<'_>) -> Result<(), CloseReason>;
    /// `false` pauses reading (e.g. while a subscription is being confirmed by the other cores).
    fn wants_input(&self) -> bool {
        true
    }
    /// Where replies and deliveries for this connection are queued.
    fn outbox(&self) -> &Outbox;
}

/// Per-route protocol limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Largest message (after reassembly) accepted; larger -> close 1009.
    pub max_message: usize,
    /// How long the close handshake and the final flush may take.
    pub close_timeout: Duration,
}

/// How a connection ended, for logs and counters.
#[derive(Debug)]
pub enum End {
    /// The peer sent a close frame with this code.
    PeerClosed(u16),
    /// The gateway closed it (protocol error, slow consumer, shutdown, ...).
    Closed(CloseReason),
    /// The peer vanished without a close frame.
    Eof,
    /// A socket or TLS error.
    Io(io::Error),
}

struct Fragments {
    opcode: OpCode,
    buf: Vec<u8>,
    utf8: Utf8Progress,
}

struct Conn<S> {
    io: S,
    /// Bytes of an incomplete frame; empty (no allocation) between frames.
    pending: Vec<u8>,
    /// A fragmented message being reassembled.
    frag: Option<Fragments>,
    /// TLS may hold written bytes until flushed.
    needs_flush: bool,
    /// `pending` may hold whole frames left unparsed because the handler paused input.
    stalled: bool,
    limits: ConnLimits,
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
        pending: prefix.to_vec(),
        frag: None,
        needs_flush: false,
        stalled: false,
        limits,
    };
    let mut end = if conn.pending.is_empty() {
        None
    } else {
        let mut pending = std::mem::take(&mut conn.pending);
        let r = conn.process(&mut pending, handler);
        r.err()
    };
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

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn poll_open<H: Handler>(&mut self, cx: &mut Context<'_>, h: &mut H) -> Poll<End> {
        h.outbox().register(cx.waker());
        for _ in 0..READ_BUDGET {
            if let Poll::Ready(Err(e)) = self.poll_write_queue(cx, h.outbox()) {
                return Poll::Ready(End::Io(e));
            }
            if let Some(reason) = h.outbox().close_requested() {
                return Poll::Ready(End::Closed(reason));
            }
            if !h.wants_input() || h.outbox().queued_bytes() >= h.outbox().limit() {
                return Poll::Pending;
            }
            if self.stalled {
                self.stalled = false;
                let mut pending = std::mem::take(&mut self.pending);
                if let Err(end) = self.process(&mut pending, h) {
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
    fn poll_write_queue(&mut self, cx: &mut Context<'_>, outbox: &Outbox) -> Poll<io::Result<()>> {
        while !outbox.is_empty() {
            let res = outbox.with_front(|frames| {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut n = 0;
                for f in frames.iter().take(MAX_IOVECS) {
                    slices[n] = IoSlice::new(f);
                    n += 1;
                }
                Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n])
            });
            match res {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    outbox.consume(n);
                    self.needs_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.needs_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
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
            if self.pending.is_empty() {
                Poll::Ready(self.process(&mut scratch[..n], h))
            } else {
                let mut pending = std::mem::take(&mut self.pending);
                pending.extend_from_slice(&scratch[..n]);
                Poll::Ready(self.process(&mut pending, h))
            }
        })
    }

    /// Parse and dispatch every whole frame in `buf`; keep the tail of an incomplete frame.
    fn process<H: Handler>(&mut self, buf: &mut [u8], h: &mut H) -> Result<(), End> {
        let mut pos = 0;
        while pos < buf.len() {
            if !h.wants_input() {
                self.stalled = true;
                break;
            }
            let room = self.limits.max_message - self.frag.as_ref().map_or(0, |f| f.buf.len());
            match parse_frame(&mut buf[pos..], room) {
                Ok(Some((header, used))) => {
                    let range = pos + header.payload.start..pos + header.payload.end;
                    pos += used;
                    self.on_frame(header.fin, header.opcode, &buf[range], h)?;
                    if h.outbox().close_requested().is_some() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(reason) => return Err(End::Closed(reason)),
            }
        }
        self.pending.clear();
        if pos < buf.len() {
            self.pending.extend_from_slice(&buf[pos..]);
        } else if self.pending.capacity() > 0 {
            self.pending = Vec::new();
        }
        Ok(())
    }

    fn on_frame<H: Handler>(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &[u8],
        h: &mut H,
    ) -> Result<(), End> {
        let closed = End::Closed;
        match opcode {
            OpCode::Text | OpCode::Binary => {
                if self.frag.is_some() {
                    return Err(closed(CloseReason::protocol("expected continuation frame")));
                }
                if fin {
                    return deliver(h, opcode, payload).map_err(closed);
                }
                let mut utf8 = Utf8Progress::default();
                if opcode == OpCode::Text {
                    utf8.advance(payload, false).map_err(closed)?;
                }
                self.frag = Some(Fragments {
                    opcode,
                    buf: payload.to_vec(),
                    utf8,
                });
            }
            OpCode::Continuation => {
                let Some(frag) = self.frag.as_mut() else {
                    return Err(closed(CloseReason::protocol(
                        "unexpected continuation frame",
                    )));
                };
                frag.buf.extend_from_slice(payload);
                if frag.opcode == OpCode::Text {
                    frag.utf8.advance(&frag.buf, fin).map_err(closed)?;
                }
                if fin {
                    if let Some(frag) = self.frag.take() {
                        deliver(h, frag.opcode, &frag.buf).map_err(closed)?;
                    }
                }
            }
            OpCode::Ping => h.outbox().reply(encode_frame(OpCode::Pong, payload)),
            OpCode::Pong => {}
            OpCode::Close => {
                let code = check_close_payload(payload).map_err(closed)?;
                return Err(End::PeerClosed(code));
            }
        }
        Ok(())
    }

    /// Close handshake: flush, send our close frame, half-close, then read (and drop) until the peer is
    /// gone, so the close frame is not lost to a TCP reset. Bounded by the caller's timeout.
    async fn close(&mut self, outbox: &Outbox, frame: Bytes) {
        outbox.force_reply(frame);
        if poll_fn(|cx| self.poll_write_queue(cx, outbox))
            .await
            .is_err()
        {
            return;
        }
        let _ = poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
        let mut sink = [0u8; 1024];
        loop {
            let r = poll_fn(|cx| {
                let mut rb = ReadBuf::new(&mut sink);
                Pin::new(&mut self.io)
                    .poll_read(cx, &mut rb)
                    .map_ok(|()| rb.filled().len())
            })
            .await;
            if !matches!(r, Ok(n) if n > 0) {
                return;
            }
        }
    }
}

fn deliver<H: Handler>(h: &mut H, opcode: OpCode, payload: &[u8]) -> Result<(), CloseReason> {
    if opcode == OpCode::Text {
        let text = simdutf8::basic::from_utf8(payload)
            .map_err(|_| CloseReason::new(close_code::INVALID_PAYLOAD, "invalid utf-8"))?;
        h.on_message(Message::Text(text))
    } else {
        h.on_message(Message::Binary(payload))
    }
}
