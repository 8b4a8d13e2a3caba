//! The sans-IO frame path: `wsgate::transport::Frames` fed arbitrary client bytes, plus the codec
//! pieces it is built from (`codec::parse_frame`, `codec::check_close_payload`, `encode_frame[_parts]`).
//!
//! Input layout: byte 0 picks the message size limit, bytes 1..3 the split point, byte 3 the pattern of
//! pauses (`Handler::wants_input() == false` after a message), the rest is the client's byte stream.
//!
//! Invariants:
//! - every delivered message is at most `max` bytes; text messages are UTF-8;
//! - the stream fed whole, without pauses, and the stream fed in two pieces with pauses/resumes give
//!   the same messages, the same queued reply bytes, and the same ending (split points must not matter);
//! - `parse_frame`: consumed length, payload range and unmasking are right, control frames are final
//!   and <= 125 bytes, no payload exceeds the limit, and every prefix of a whole frame is "incomplete";
//! - `check_close_payload` accepts exactly the RFC 6455 rules;
//! - server frames from `encode_frame`/`encode_frame_parts` agree and parse back once masked.
#![no_main]

use fastwebsockets::OpCode;
use libfuzzer_sys::fuzz_target;
use wsgate::transport::codec::{check_close_payload, parse_frame};
use wsgate::transport::{
    encode_frame, encode_frame_parts, CloseReason, End, Frames, Handler, Message, Outbox,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Text(String),
    Binary(Vec<u8>),
}

struct Echo {
    outbox: Outbox,
    max: usize,
    events: Vec<Event>,
    /// Bit i: pause after the i-th message (cycled).
    pauses: u8,
    paused: bool,
}

impl Echo {
    fn new(max: usize, pauses: u8) -> Self {
        Self {
            outbox: Outbox::new(1 << 20),
            max,
            events: Vec::new(),
            pauses,
            paused: false,
        }
    }
}

impl Handler for Echo {
    fn on_message(&mut self, msg: Message<'_>) -> Result<(), CloseReason> {
        assert!(
            !self.paused,
            "message delivered while the handler paused input"
        );
        // Like the echo route (src/session/echo.rs).
        let (frame, event) = match msg {
            Message::Text(t) => {
                assert!(std::str::from_utf8(t.as_bytes()).is_ok());
                assert!(
                    t.len() <= self.max,
                    "text message {} > max {}",
                    t.len(),
                    self.max
                );
                (
                    encode_frame(OpCode::Text, t.as_bytes()),
                    Event::Text(t.to_owned()),
                )
            }
            Message::Binary(b) => {
                assert!(
                    b.len() <= self.max,
                    "binary message {} > max {}",
                    b.len(),
                    self.max
                );
                (encode_frame(OpCode::Binary, b), Event::Binary(b.to_vec()))
            }
        };
        self.outbox.reply(frame);
        let i = self.events.len() % 8;
        self.events.push(event);
        self.paused = self.pauses & (1 << i) != 0;
        Ok(())
    }

    fn wants_input(&self) -> bool {
        !self.paused
    }

    fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}

/// A comparable summary of how feeding ended.
fn outcome(r: Result<(), End>) -> Option<String> {
    match r {
        Ok(()) => None,
        Err(End::Io(e)) => panic!("sans-IO code returned an IO error: {e}"),
        Err(e) => Some(format!("{e:?}")),
    }
}

/// Resume while the handler has paused with whole frames waiting.
fn drain(frames: &mut Frames, h: &mut Echo) -> Result<(), End> {
    while frames.stalled() {
        h.paused = false;
        frames.resume(h)?;
    }
    Ok(())
}

fn check_parse_frame(orig: &[u8], max: usize, cut: usize) {
    let mut buf = orig.to_vec();
    match parse_frame(&mut buf, max) {
        Ok(Some((h, used))) => {
            assert!(used <= orig.len());
            assert_eq!(h.payload.end, used);
            assert!(h.payload.start >= 6 && h.payload.start <= 14);
            let len = h.payload.len();
            assert!(len <= max, "payload {len} > max {max}");
            let control = matches!(h.opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
            assert!(!control || (h.fin && len <= 125));
            assert_eq!(orig[0] & 0x70, 0, "reserved bits accepted");
            assert_ne!(orig[1] & 0x80, 0, "unmasked frame accepted");
            assert_eq!(h.fin, orig[0] & 0x80 != 0);
            let mask = &orig[h.payload.start - 4..h.payload.start];
            for (i, b) in buf[h.payload.clone()].iter().enumerate() {
                assert_eq!(*b, orig[h.payload.start + i] ^ mask[i % 4], "bad unmasking");
            }
            assert_eq!(
                &buf[used..],
                &orig[used..],
                "bytes after the frame were touched"
            );
            // Every strict prefix of a whole frame is incomplete, never an error.
            let k = cut % used;
            let mut prefix = orig[..k].to_vec();
            assert_eq!(
                parse_frame(&mut prefix, max),
                Ok(None),
                "prefix {k} of {used}"
            );
        }
        Ok(None) => assert_eq!(buf, orig, "incomplete frame was modified"),
        Err(reason) => {
            assert!(reason.code == 1002 || reason.code == 1009, "{reason:?}");
        }
    }
}

fn check_close(payload: &[u8]) {
    let result = check_close_payload(payload);
    if payload.is_empty() {
        assert_eq!(result, Ok(1000));
        return;
    }
    if payload.len() == 1 {
        assert_eq!(result.map_err(|r| r.code), Err(1002));
        return;
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let utf8 = std::str::from_utf8(&payload[2..]).is_ok();
    // RFC 6455 §7.4.1/§7.4.2 plus the IANA registry (1012..=1014): what a server may accept.
    let may_accept = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    // What it must accept (the codes RFC 6455 itself defines as sendable, and the private ranges).
    let must_accept = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
    match result {
        Ok(c) => {
            assert_eq!(c, code);
            assert!(may_accept, "close code {code} accepted");
            assert!(utf8, "invalid UTF-8 close reason accepted");
        }
        Err(r) => {
            assert!(!must_accept || !utf8, "valid close {code} rejected: {r:?}");
            if must_accept {
                assert_eq!(r.code, 1007, "bad UTF-8 reason must close with 1007");
            } else {
                // An unknown/forbidden code is a protocol error (1007 only if the reason is bad too).
                assert!(r.code == 1002 || (r.code == 1007 && !utf8), "{code}: {r:?}");
            }
        }
    }
}

fn check_encode(op: OpCode, payload: &[u8], cut: usize) {
    let a = encode_frame(op, payload);
    let k = cut % (payload.len() + 1);
    let b = encode_frame_parts(op, &[&payload[..k], &payload[k..]]);
    assert_eq!(a, b, "encode_frame and encode_frame_parts disagree");
    // Mask it like a client and parse it back.
    let head = a.len() - payload.len();
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut c = a[..head].to_vec();
    c[1] |= 0x80;
    c.extend_from_slice(&mask);
    c.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let (h, used) = parse_frame(&mut c, payload.len()).unwrap().unwrap();
    assert_eq!((h.fin, h.opcode, used), (true, op, c.len()));
    assert_eq!(&c[h.payload], payload);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let max = match data[0] >> 6 {
        0 => (data[0] & 0x3f) as usize,
        1 => 120 + (data[0] & 0x3f) as usize,
        2 => 65530 + (data[0] & 0x0f) as usize,
        _ => 1 << 20,
    };
    let cut = u16::from_le_bytes([data[1], data[2]]) as usize;
    let pauses = data[3];
    let stream = &data[4..];

    // Codec pieces on the same bytes.
    check_parse_frame(stream, max, cut);
    check_close(stream);
    if stream.len() <= 125 {
        check_encode(OpCode::Ping, stream, cut);
    }
    check_encode(OpCode::Binary, stream, cut);

    // Reference run: everything in one call, never paused.
    let mut whole = Echo::new(max, 0);
    let mut frames = Frames::new(max);
    let mut buf = stream.to_vec();
    let reference = outcome(frames.feed(&mut buf, &mut whole));

    // Split run: two calls at a fuzzer-chosen point, pausing after some messages.
    let split = if stream.is_empty() {
        0
    } else {
        cut % (stream.len() + 1)
    };
    let mut parts = Echo::new(max, pauses);
    let mut frames = Frames::new(max);
    let (mut a, mut b) = (stream[..split].to_vec(), stream[split..].to_vec());
    let result = frames
        .feed(&mut a, &mut parts)
        .and_then(|()| drain(&mut frames, &mut parts))
        .and_then(|()| frames.feed(&mut b, &mut parts))
        .and_then(|()| drain(&mut frames, &mut parts));
    let result = outcome(result);

    assert_eq!(
        whole.events, parts.events,
        "messages depend on the split point"
    );
    assert_eq!(reference, result, "ending depends on the split point");
    assert_eq!(
        whole.outbox.queued_bytes(),
        parts.outbox.queued_bytes(),
        "replies depend on the split point"
    );
});
