//! Sans-IO WebSocket frame codec (RFC 6455, server role).
//!
//! fastwebsockets keeps its frame parser private and tied to its own read buffer and async stream, so
//! the gateway parses headers here, on borrowed bytes, and reuses fastwebsockets' public pieces for the
//! rest: [`OpCode`], [`fastwebsockets::unmask`] for payloads, [`Frame::fmt_head`] to encode headers and
//! [`CloseCode::is_allowed`] for close codes. Parsing on a borrowed slice is what lets a session own no
//! read buffer between messages (see `conn.rs`).

use bytes::{BufMut, Bytes, BytesMut};
use fastwebsockets::{CloseCode, Frame, OpCode, Payload};

/// Close codes the gateway sends (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
}

/// Why the gateway closes a connection: code plus a short reason for the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
    pub(crate) const fn protocol(reason: &'static str) -> Self {
        Self::new(close_code::PROTOCOL_ERROR, reason)
    }
}

/// A parsed frame header; `payload` is the byte range of the (already unmasked) payload in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: std::ops::Range<usize>,
}

/// Parse one client frame from the start of `buf`, unmasking its payload in place.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame, `Ok(Some((header, consumed)))` for a whole
/// frame, and `Err` with the close reason when the frame violates the protocol or exceeds `max_payload`
/// (checked from the header alone, before any payload arrives).
pub fn parse_frame(
    buf: &mut [u8],
    max_payload: usize,
) -> Result<Option<(FrameHeader, usize)>, CloseReason> {
    parse_frame_from(buf, max_payload, true)
}

/// [`parse_frame`] for frames a server sends (unmasked), as read by the gateway's proxy when it is
/// the client of an upstream.
pub fn parse_server_frame(
    buf: &mut [u8],
    max_payload: usize,
) -> Result<Option<(FrameHeader, usize)>, CloseReason> {
    parse_frame_from(buf, max_payload, false)
}

fn parse_frame_from(
    buf: &mut [u8],
    max_payload: usize,
    masked: bool,
) -> Result<Option<(FrameHeader, usize)>, CloseReason> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(CloseReason::protocol("reserved bits set"));
    }
    let opcode =
        OpCode::try_from(b0 & 0x0f).map_err(|_| CloseReason::protocol("reserved opcode"))?;
    if masked && b1 & 0x80 == 0 {
        return Err(CloseReason::protocol("client frame not masked"));
    }
    if !masked && b1 & 0x80 != 0 {
        return Err(CloseReason::protocol("server frame masked"));
    }
    let len7 = (b1 & 0x7f) as usize;
    let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
    if control && (!fin || len7 > 125) {
        return Err(CloseReason::protocol("invalid control frame"));
    }
    let (len, mut pos) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(CloseReason::protocol("invalid payload length"));
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    if len > max_payload as u64 {
        return Err(CloseReason::new(close_code::TOO_BIG, "message too big"));
    }
    let len = len as usize;
    let mask_len = if masked { 4 } else { 0 };
    if buf.len() < pos + mask_len + len {
        return Ok(None);
    }
    if masked {
        let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        fastwebsockets::unmask(&mut buf[pos..pos + len], mask);
    }
    let payload = pos..pos + len;
    Ok(Some((
        FrameHeader {
            fin,
            opcode,
            payload: payload.clone(),
        },
        payload.end,
    )))
}

/// Encode one unmasked server frame (header + payload) into a single shareable buffer.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut head = [0u8; 10];
    let n = Frame::new(true, opcode, None, Payload::Borrowed(payload)).fmt_head(&mut head);
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.put_slice(&head[..n]);
    out.put_slice(payload);
    out.freeze()
}

/// Encode a frame whose payload is the concatenation of `parts`, without an intermediate copy.
pub fn encode_frame_parts(opcode: OpCode, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; 10];
    let n = fmt_head_len(opcode, len, &mut head);
    let mut out = BytesMut::with_capacity(n + len);
    out.put_slice(&head[..n]);
    for p in parts {
        out.put_slice(p);
    }
    out.freeze()
}

/// Encode one final frame as a client sends it: masked with `key` (RFC 6455 §5.3).
pub fn encode_masked_frame(opcode: OpCode, parts: &[&[u8]], key: [u8; 4]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; 10];
    let n = fmt_head_len(opcode, len, &mut head);
    head[1] |= 0x80;
    let mut out = BytesMut::with_capacity(n + 4 + len);
    out.put_slice(&head[..n]);
    out.put_slice(&key);
    let start = out.len();
    for p in parts {
        out.put_slice(p);
    }
    fastwebsockets::unmask(&mut out[start..], key);
    out.freeze()
}

/// Header of an unmasked, final frame of `len` payload bytes (same layout `Frame::fmt_head` writes).
fn fmt_head_len(opcode: OpCode, len: usize, head: &mut [u8; 10]) -> usize {
    head[0] = 0x80 | opcode as u8;
    if len < 126 {
        head[1] = len as u8;
        2
    } else if len < 65536 {
        head[1] = 126;
        head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A close frame with `code` and `reason`.
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    encode_frame_parts(OpCode::Close, &[&code.to_be_bytes(), reason.as_bytes()])
}

/// Validate a received close payload; returns the code to echo back (RFC 6455 §5.5.1, §7.4).
pub fn check_close_payload(payload: &[u8]) -> Result<u16, CloseReason> {
    match payload.len() {
        0 => Ok(close_code::NORMAL),
        1 => Err(CloseReason::protocol("invalid close payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !CloseCode::from(code).is_allowed() || (1016..3000).contains(&code) {
                return Err(CloseReason::protocol("invalid close code"));
            }
            if simdutf8::basic::from_utf8(&payload[2..]).is_err() {
                return Err(CloseReason::new(
                    close_code::INVALID_PAYLOAD,
                    "invalid utf-8 in close reason",
                ));
            }
            Ok(code)
        }
    }
}

/// Incremental UTF-8 validation across the fragments of one text message, failing as soon as the bytes
/// seen so far cannot start a valid string (RFC 6455 §8.1 "fail fast").
#[derive(Debug, Default)]
pub struct Utf8Progress {
    checked: usize,
}

impl Utf8Progress {
    /// Check `buf[self.checked..]`; a truncated code point at the end is fine unless `complete`.
    pub fn advance(&mut self, buf: &[u8], complete: bool) -> Result<(), CloseReason> {
        let bad = CloseReason::new(close_code::INVALID_PAYLOAD, "invalid utf-8");
        match simdutf8::compat::from_utf8(&buf[self.checked..]) {
            Ok(_) => {
                self.checked = buf.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !complete => {
                self.checked += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(bad),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![(if fin { 0x80 } else { 0 }) | op];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n < 65536 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[test]
    fn parses_every_length_form_and_unmasks() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut buf = masked(true, 2, &payload);
            let total = buf.len();
            for cut in [1, 2, total / 2, total - 1] {
                let mut part = buf[..cut].to_vec();
                assert_eq!(
                    parse_frame(&mut part, 1 << 20),
                    Ok(None),
                    "len {len} cut {cut}"
                );
            }
            let (h, used) = parse_frame(&mut buf, 1 << 20).unwrap().unwrap();
            assert_eq!(used, total);
            assert!(h.fin);
            assert_eq!(h.opcode, OpCode::Binary);
            assert_eq!(&buf[h.payload], &payload[..]);
        }
    }

    #[test]
    fn rejects_protocol_violations() {
        let mut unmasked = vec![0x81, 0x01, b'a'];
        assert_eq!(parse_frame(&mut unmasked, 100).unwrap_err().code, 1002);
        let mut rsv = masked(true, 1, b"a");
        rsv[0] |= 0x40;
        assert_eq!(parse_frame(&mut rsv, 100).unwrap_err().code, 1002);
        let mut op = masked(true, 3, b"a");
        assert_eq!(parse_frame(&mut op, 100).unwrap_err().code, 1002);
        let mut frag_ping = masked(false, 9, b"a");
        assert_eq!(parse_frame(&mut frag_ping, 100).unwrap_err().code, 1002);
        let mut big_ping = masked(true, 9, &[0u8; 126]);
        assert_eq!(parse_frame(&mut big_ping, 1000).unwrap_err().code, 1002);
        // Too big is known from the header alone.
        let mut big = masked(true, 2, &[0u8; 200])[..8].to_vec();
        assert_eq!(parse_frame(&mut big, 100).unwrap_err().code, 1009);
    }

    #[test]
    fn encodes_headers_like_fastwebsockets() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let p = vec![7u8; len];
            let a = encode_frame(OpCode::Text, &p);
            let b = encode_frame_parts(OpCode::Text, &[&p[..len / 2], &p[len / 2..]]);
            assert_eq!(a, b);
            assert_eq!(
                a.len() - len,
                if len < 126 {
                    2
                } else if len < 65536 {
                    4
                } else {
                    10
                }
            );
        }
        assert_eq!(
            &encode_close(1000, "ok")[..],
            &[0x88, 4, 0x03, 0xe8, b'o', b'k']
        );
    }

    #[test]
    fn close_payload_rules() {
        assert_eq!(check_close_payload(&[]), Ok(1000));
        assert_eq!(check_close_payload(&[3]).unwrap_err().code, 1002);
        assert_eq!(
            check_close_payload(&1005u16.to_be_bytes())
                .unwrap_err()
                .code,
            1002
        );
        assert_eq!(check_close_payload(&3000u16.to_be_bytes()), Ok(3000));
        let mut bad = 1000u16.to_be_bytes().to_vec();
        bad.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(check_close_payload(&bad).unwrap_err().code, 1007);
    }

    #[test]
    fn utf8_fails_fast_across_fragments() {
        let s = "κόσμε".as_bytes();
        let mut p = Utf8Progress::default();
        p.advance(&s[..1], false).unwrap();
        p.advance(&s[..5], false).unwrap();
        p.advance(s, true).unwrap();
        let mut p = Utf8Progress::default();
        assert!(p.advance(&s[..1], true).is_err());
        let mut p = Utf8Progress::default();
        assert!(p.advance(&[b'a', 0xff], false).is_err());
    }
}
