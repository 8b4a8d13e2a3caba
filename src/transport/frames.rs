//! The sans-IO half of a WebSocket connection: bytes in -> frames -> whole messages for the
//! [`Handler`], with everything RFC 6455 asks of a server on the way (pings, fragment reassembly with
//! fail-fast UTF-8 checks, close validation, size limits). No socket here: `conn.rs` feeds it bytes,
//! and the fuzz targets feed it arbitrary input directly.

use std::io;

use fastwebsockets::OpCode;

use super::codec::{
    check_close_payload, close_code, encode_frame, parse_frame, CloseReason, Utf8Progress,
};
use super::outbox::Outbox;
use super::spill::Spill;

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
    /// `bytes` were read from the peer.
    fn on_read(&self, _bytes: usize) {}
    /// `bytes` were written, completing `frames` frames; `sampled_publish_us` is the publish time
    /// (`clock::now_us`) of a sampled publish this write completed.
    fn on_written(&self, _bytes: usize, _frames: usize, _sampled_publish_us: Option<u64>) {}
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

/// Frame parsing and message assembly state of one connection.
pub struct Frames {
    /// Bytes of an incomplete frame; empty (no allocation) between frames.
    pending: Spill,
    /// A fragmented message being reassembled (boxed: rare, and this struct lives in every session).
    frag: Option<Box<Fragments>>,
    /// `pending` may hold whole frames left unparsed because the handler paused input.
    stalled: bool,
    /// Largest message accepted (after reassembly).
    max_message: u32,
}

impl Frames {
    pub fn new(max_message: usize) -> Self {
        Self {
            pending: Spill::default(),
            frag: None,
            stalled: false,
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
        }
    }

    /// A parser that starts with `unparsed` (bytes the client sent right after its upgrade request)
    /// waiting as if input had been paused: the transport's loop parses them before it reads.
    pub fn with_unparsed(max_message: usize, unparsed: &[u8]) -> Self {
        let mut pending = Spill::default();
        pending.extend(unparsed);
        Self {
            pending,
            stalled: !unparsed.is_empty(),
            ..Self::new(max_message)
        }
    }

    /// Whether whole frames wait in `pending` for the handler to want input again.
    pub fn stalled(&self) -> bool {
        self.stalled
    }

    /// Feed newly received bytes (parsed in place when nothing is pending); keep the tail of an
    /// incomplete frame.
    pub fn feed<H: Handler>(&mut self, data: &mut [u8], h: &mut H) -> Result<(), End> {
        let mut pending = std::mem::take(&mut self.pending);
        let r = pending.process(data, |buf| match self.dispatch(buf, h) {
            Ok(used) => (used, Ok(())),
            Err(end) => (0, Err(end)),
        });
        self.pending = pending;
        r
    }

    /// Continue with what was left unparsed while the handler paused input.
    pub fn resume<H: Handler>(&mut self, h: &mut H) -> Result<(), End> {
        self.stalled = false;
        self.feed(&mut [], h)
    }

    /// Parse and dispatch the whole frames at the start of `buf`; returns the bytes they took.
    fn dispatch<H: Handler>(&mut self, buf: &mut [u8], h: &mut H) -> Result<usize, End> {
        let mut pos = 0;
        while pos < buf.len() {
            if !h.wants_input() {
                self.stalled = true;
                break;
            }
            let room = self.max_message as usize - self.frag.as_ref().map_or(0, |f| f.buf.len());
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
        Ok(pos)
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
                self.frag = Some(Box::new(Fragments {
                    opcode,
                    buf: payload.to_vec(),
                    utf8,
                }));
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
