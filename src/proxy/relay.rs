//! A proxied session: the client side runs on wsgate's own transport (the same parser, limits,
//! heartbeats and shutdown handling as every other route, through a [`Handler`]); the upstream side is
//! a small client-role loop over the upstream socket. Both run in the session's one task.
//!
//! Messages, not frames, are relayed (fragments are reassembled on each hop, within
//! `max_message_size`); pings are answered on the hop they arrive on and never forwarded.
//!
//! Backpressure is the same mechanism in both directions: each direction has one bounded queue, the
//! outbox of the side it writes to (`max_outbound_bytes`), and the side that fills it stops reading
//! until it drains. So a client that does not read stops wsgate reading its upstream (whose sends
//! then block in TCP), and a slow upstream stops wsgate reading the client. Per session and
//! direction, wsgate holds at most that bound plus one message plus one socket read.
//!
//! Closing: a close code from either side is sent to the other (reason texts are not relayed); a
//! client that vanishes without a close frame closes the upstream with 1001, an upstream that
//! vanishes closes the client with 1011, and an upstream that breaks the protocol closes the client
//! with 1014. Frames to the upstream are masked with keys from a per-session xorshift generator
//! seeded by the OS.

use std::cell::Cell;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use fastwebsockets::OpCode;
use tokio::io::{AsyncRead, ReadBuf};

use super::upstream::{Connected, UpIo};
use super::{Proxied, BAD_GATEWAY};
use crate::pubsub::Subscriber;
use crate::stats::CoreStats;
use crate::transport::codec::{check_close_payload, parse_server_frame};
use crate::transport::{
    close_code, close_stream, encode_frame, encode_masked_frame, poll_write_outbox, with_scratch,
    CloseReason, ConnLimits, End, Handler, Message, Outbox, SessionIo,
};
use crate::worker::Worker;

/// Socket reads handled per wake-up before yielding to the core's other tasks.
const READ_BUDGET: usize = 16;

/// State both halves of a proxied session see.
struct Shared {
    /// The client's session (its outbox is the upstream -> client queue).
    me: Rc<Subscriber>,
    /// The client -> upstream queue (masked frames).
    up: Outbox,
    /// Set when the client side ended: the close code to send upstream.
    client_end: Cell<Option<u16>>,
    /// Bytes the upstream side holds outside the queues (unparsed input, a partial message).
    held: Cell<usize>,
    /// What this session currently adds to `stats.proxy_buffered_bytes`.
    accounted: Cell<usize>,
    mask: Cell<u64>,
    stats: std::sync::Arc<CoreStats>,
}

impl Shared {
    fn mask_key(&self) -> [u8; 4] {
        let mut x = self.mask.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.mask.set(x);
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((v >> 32) as u32).to_ne_bytes()
    }

    fn account(&self) {
        let now = self.me.outbox.queued_bytes() + self.up.queued_bytes() + self.held.get();
        let old = self.accounted.replace(now);
        if now >= old {
            self.stats.proxy_buffered_bytes.add((now - old) as u64);
        } else {
            self.stats.proxy_buffered_bytes.sub((old - now) as u64);
        }
    }

    fn release(&self) {
        let old = self.accounted.replace(0);
        self.stats.proxy_buffered_bytes.sub(old as u64);
    }

    fn masked(&self, opcode: OpCode, parts: &[&[u8]]) -> Bytes {
        encode_masked_frame(opcode, parts, self.mask_key())
    }
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        b = crate::clock::now_us().to_ne_bytes();
    }
    u64::from_ne_bytes(b) | 1
}

/// The client side: messages go to the upstream queue; reading pauses while it is full.
struct Relay {
    sh: Rc<Shared>,
    worker: Rc<Worker>,
}

impl Handler for Relay {
    fn on_message(&mut self, msg: Message<'_>) -> Result<(), CloseReason> {
        let (opcode, payload) = match msg {
            Message::Text(t) => (OpCode::Text, t.as_bytes()),
            Message::Binary(b) => (OpCode::Binary, b),
        };
        self.sh.up.reply(self.sh.masked(opcode, &[payload]));
        self.sh.stats.messages_in.add(1);
        self.sh.stats.proxy_bytes_up.add(payload.len() as u64);
        self.sh.account();
        Ok(())
    }

    fn wants_input(&self) -> bool {
        self.sh.up.queued_bytes() < self.sh.up.limit()
    }

    fn outbox(&self) -> &Outbox {
        &self.sh.me.outbox
    }

    fn on_read(&self, bytes: usize) {
        self.sh.stats.bytes_in.add(bytes as u64);
    }

    fn on_written(&self, bytes: usize, frames: usize, sample: Option<u64>) {
        self.worker.on_written(bytes, frames, sample);
        self.sh.account();
        if self.sh.me.outbox.queued_bytes() < self.sh.me.outbox.limit() {
            self.sh.up.wake();
        }
    }
}

/// The client side of a session whose upstream could not be reached: it only waits for the 1014.
struct Unavailable(Rc<Subscriber>);

impl Handler for Unavailable {
    fn on_message(&mut self, _msg: Message<'_>) -> Result<(), CloseReason> {
        Ok(())
    }
    fn outbox(&self) -> &Outbox {
        &self.0.outbox
    }
}

/// Run a proxied session to its end (both sides closed); returns how the client side ended.
pub(crate) async fn run<D: SessionIo>(
    io: D,
    read_buf: Bytes,
    proxied: Proxied,
    worker: Rc<Worker>,
    me: Rc<Subscriber>,
    limits: ConnLimits,
) -> End {
    let Some(conn) = proxied.take() else {
        me.outbox
            .close(CloseReason::new(BAD_GATEWAY, "upstream unavailable"));
        return io.drive(read_buf, Unavailable(me), limits).await.0;
    };
    let stats = worker.stats.clone();
    stats.proxy_sessions.add(1);
    let sh = Rc::new(Shared {
        me,
        up: Outbox::new(worker.limits.max_outbound_bytes),
        client_end: Cell::new(None),
        held: Cell::new(0),
        accounted: Cell::new(0),
        mask: Cell::new(seed()),
        stats: stats.clone(),
    });
    let h = Relay {
        sh: sh.clone(),
        worker,
    };
    let client = async {
        let (end, _) = io.drive(read_buf, h, limits).await;
        let code = match &end {
            End::PeerClosed(code) => *code,
            End::Closed(reason) => reason.code,
            End::Eof | End::Io(_) => close_code::GOING_AWAY,
        };
        sh.client_end.set(Some(code));
        sh.up.wake();
        end
    };
    let (end, ()) = futures_util::future::join(client, upstream_side(conn, &sh, limits)).await;
    sh.release();
    stats.proxy_sessions.sub(1);
    end
}

/// How the relaying phase ended.
enum Outcome {
    /// The client side ended; send this close code upstream.
    ClientEnded(u16),
    /// The upstream sent a close frame with this code.
    UpstreamClosed(u16),
    /// The upstream broke the protocol.
    Invalid(CloseReason),
    /// The upstream connection failed or ended without a close frame.
    Lost,
}

struct Up {
    io: UpIo,
    /// Received bytes not yet parsed (at most one read plus an incomplete frame).
    pending: Vec<u8>,
    /// A fragmented message being reassembled.
    frag: Option<(OpCode, Vec<u8>)>,
    needs_flush: bool,
    max_message: usize,
}

async fn upstream_side(conn: Connected, sh: &Shared, limits: ConnLimits) {
    let mut u = Up {
        io: conn.io,
        pending: conn.rest.to_vec(),
        frag: None,
        needs_flush: false,
        max_message: limits.max_message,
    };
    let outcome = poll_fn(|cx| u.poll_relay(cx, sh)).await;
    u.pending = Vec::new();
    u.frag = None;
    sh.held.set(0);
    sh.account();
    let client = &sh.me.outbox;
    let (code, wait) = match outcome {
        Outcome::ClientEnded(code) => (code, true),
        Outcome::UpstreamClosed(code) => {
            client.close(CloseReason::new(code, "upstream closed"));
            (code, false)
        }
        Outcome::Invalid(reason) => {
            client.close(CloseReason::new(BAD_GATEWAY, "invalid upstream frames"));
            (reason.code, true)
        }
        Outcome::Lost => {
            client.close(CloseReason::new(
                close_code::INTERNAL,
                "upstream connection lost",
            ));
            return;
        }
    };
    let frame = sh.masked(OpCode::Close, &[&code.to_be_bytes()]);
    let _ = monoio::time::timeout(limits.close_timeout, u.close(sh, frame, wait)).await;
    sh.account();
}

impl Up {
    fn poll_relay(&mut self, cx: &mut Context<'_>, sh: &Shared) -> Poll<Outcome> {
        sh.up.register(cx.waker());
        for _ in 0..READ_BUDGET {
            if let Some(code) = sh.client_end.get() {
                return Poll::Ready(Outcome::ClientEnded(code));
            }
            let was_full = sh.up.queued_bytes() >= sh.up.limit();
            let noop = |_: usize, _: usize, _: Option<u64>| {};
            if let Poll::Ready(Err(_)) =
                poll_write_outbox(&mut self.io, &mut self.needs_flush, cx, &sh.up, &noop)
            {
                return Poll::Ready(Outcome::Lost);
            }
            if was_full && sh.up.queued_bytes() < sh.up.limit() {
                sh.me.outbox.wake();
            }
            if let Err(outcome) = self.parse(sh) {
                return Poll::Ready(outcome);
            }
            self.hold(sh);
            if sh.me.outbox.queued_bytes() >= sh.me.outbox.limit() {
                // Resumed by the client side's writes (`Relay::on_written`).
                return Poll::Pending;
            }
            let read = with_scratch(|scratch| {
                let mut rb = ReadBuf::new(scratch);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        self.pending.extend_from_slice(rb.filled());
                        Poll::Ready(Ok(rb.filled().len()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            });
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Outcome::Lost),
                Poll::Ready(Ok(_)) => {}
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn hold(&self, sh: &Shared) {
        let frag = self.frag.as_ref().map_or(0, |(_, b)| b.len());
        sh.held.set(self.pending.len() + frag);
        sh.account();
    }

    /// Relay every whole frame in `pending` while the client's queue has room.
    fn parse(&mut self, sh: &Shared) -> Result<(), Outcome> {
        let mut pos = 0;
        let result = loop {
            if sh.me.outbox.queued_bytes() >= sh.me.outbox.limit() {
                break Ok(());
            }
            let room = self.max_message - self.frag.as_ref().map_or(0, |(_, b)| b.len());
            match parse_server_frame(&mut self.pending[pos..], room) {
                Ok(Some((header, used))) => {
                    let range = pos + header.payload.start..pos + header.payload.end;
                    pos += used;
                    let payload = &self.pending[range];
                    if let Err(o) = on_frame(&mut self.frag, header.fin, header.opcode, payload, sh)
                    {
                        break Err(o);
                    }
                }
                Ok(None) => break Ok(()),
                Err(reason) => break Err(Outcome::Invalid(reason)),
            }
        };
        self.pending.drain(..pos);
        if self.pending.is_empty() && self.pending.capacity() > 4096 {
            // An idle session keeps no read buffer.
            self.pending = Vec::new();
        }
        result
    }

    /// Send our close frame after what is queued; when `wait`, read (and drop) until the upstream
    /// answers and goes away. Bounded by the caller's timeout.
    async fn close(&mut self, sh: &Shared, frame: Bytes, wait: bool) {
        close_stream(&mut self.io, &mut self.needs_flush, &sh.up, frame, wait).await;
        sh.up.drain();
    }
}

fn on_frame(
    frag: &mut Option<(OpCode, Vec<u8>)>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    sh: &Shared,
) -> Result<(), Outcome> {
    let invalid = |reason: &'static str| {
        Outcome::Invalid(CloseReason::new(close_code::PROTOCOL_ERROR, reason))
    };
    match opcode {
        OpCode::Text | OpCode::Binary => {
            if frag.is_some() {
                return Err(invalid("expected continuation frame"));
            }
            if fin {
                deliver(opcode, payload, sh)?;
            } else {
                *frag = Some((opcode, payload.to_vec()));
            }
        }
        OpCode::Continuation => {
            let Some((_, buf)) = frag.as_mut() else {
                return Err(invalid("unexpected continuation frame"));
            };
            buf.extend_from_slice(payload);
            if fin {
                if let Some((op, buf)) = frag.take() {
                    deliver(op, &buf, sh)?;
                }
            }
        }
        OpCode::Ping => sh.up.reply(sh.masked(OpCode::Pong, &[payload])),
        OpCode::Pong => {}
        OpCode::Close => {
            return Err(match check_close_payload(payload) {
                Ok(code) => Outcome::UpstreamClosed(code),
                Err(reason) => Outcome::Invalid(reason),
            })
        }
    }
    Ok(())
}

fn deliver(opcode: OpCode, payload: &[u8], sh: &Shared) -> Result<(), Outcome> {
    if opcode == OpCode::Text && simdutf8::basic::from_utf8(payload).is_err() {
        return Err(Outcome::Invalid(CloseReason::new(
            close_code::INVALID_PAYLOAD,
            "invalid utf-8",
        )));
    }
    sh.me.outbox.reply(encode_frame(opcode, payload));
    sh.stats.proxy_bytes_down.add(payload.len() as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frames_parse_back() {
        let mut frame =
            encode_masked_frame(OpCode::Text, &[b"hello ", b"proxy"], [1, 2, 3, 4]).to_vec();
        let (h, used) = crate::transport::codec::parse_frame(&mut frame, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(&frame[h.payload], b"hello proxy");
        let mut server = encode_frame(OpCode::Binary, b"x").to_vec();
        assert!(parse_server_frame(&mut server, 10).unwrap().is_some());
        assert!(
            parse_server_frame(&mut frame, 1024).is_err(),
            "masked server frame"
        );
    }
}
