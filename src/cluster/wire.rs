//! What nodes put in Redis messages: the already-encoded WebSocket frame, tagged with the sending
//! node's id so that a node drops its own publishes when Redis echoes them back.
//!
//! ```text
//! topic channel   MAGIC | id_len u8 | node id | frame
//! direct channel  MAGIC | id_len u8 | node id | user_len u16 BE | user | frame
//! ```
//!
//! `MAGIC` starts with a NUL byte, which no JSON text does, so a topic channel can also carry plain
//! JSON published by a backend (`PUBLISH wsgate:t:news '{"x":1}'`), delivered as that topic's data.
//! Frames are checked to be one complete, unmasked text frame before they reach any client, so a
//! stray payload cannot corrupt a session's byte stream.

use bytes::{BufMut, Bytes, BytesMut};

/// Format marker and version.
pub const MAGIC: &[u8; 4] = b"\0wg1";

/// A decoded Redis payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload {
    /// From a node: who sent it, the user it is addressed to (direct channel only), the frame.
    Tagged {
        node: Bytes,
        user: Option<Bytes>,
        frame: Bytes,
    },
    /// Anything else: JSON published by a backend.
    Foreign(Bytes),
}

/// Why a tagged payload was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated payload")]
    Truncated,
    #[error("the frame is not one complete unmasked text frame")]
    BadFrame,
    #[error("user id is not UTF-8")]
    BadUser,
}

/// A publish from node `node` (at most 255 bytes; the config allows 64).
pub fn topic_message(node: &[u8], frame: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(MAGIC.len() + 1 + node.len() + frame.len());
    put_node(&mut b, node);
    b.put_slice(frame);
    b.freeze()
}

/// A direct message from node `node` to user `user`.
pub fn direct_message(node: &[u8], user: &str, frame: &[u8]) -> Bytes {
    let user = &user.as_bytes()[..user.len().min(u16::MAX as usize)];
    let mut b = BytesMut::with_capacity(MAGIC.len() + 3 + node.len() + user.len() + frame.len());
    put_node(&mut b, node);
    b.put_u16(user.len() as u16);
    b.put_slice(user);
    b.put_slice(frame);
    b.freeze()
}

fn put_node(b: &mut BytesMut, node: &[u8]) {
    let node = &node[..node.len().min(u8::MAX as usize)];
    b.put_slice(MAGIC);
    b.put_u8(node.len() as u8);
    b.put_slice(node);
}

/// Decode a payload received on a topic channel (`direct = false`) or the direct channel.
pub fn decode(payload: Bytes, direct: bool) -> Result<Payload, WireError> {
    if !payload.starts_with(MAGIC) {
        return Ok(Payload::Foreign(payload));
    }
    let mut at = MAGIC.len();
    let id_len = *payload.get(at).ok_or(WireError::Truncated)? as usize;
    at += 1;
    let node = take(&payload, &mut at, id_len)?;
    let user = if direct {
        let hi = *payload.get(at).ok_or(WireError::Truncated)? as usize;
        let lo = *payload.get(at + 1).ok_or(WireError::Truncated)? as usize;
        at += 2;
        let user = take(&payload, &mut at, hi << 8 | lo)?;
        std::str::from_utf8(&user).map_err(|_| WireError::BadUser)?;
        Some(user)
    } else {
        None
    };
    let frame = payload.slice(at..);
    if !is_text_frame(&frame) {
        return Err(WireError::BadFrame);
    }
    Ok(Payload::Tagged { node, user, frame })
}

fn take(payload: &Bytes, at: &mut usize, len: usize) -> Result<Bytes, WireError> {
    let end = at.checked_add(len).ok_or(WireError::Truncated)?;
    if end > payload.len() {
        return Err(WireError::Truncated);
    }
    let out = payload.slice(*at..end);
    *at = end;
    Ok(out)
}

/// One complete, final, unmasked text frame whose header length matches the bytes.
fn is_text_frame(f: &[u8]) -> bool {
    let (Some(&b0), Some(&b1)) = (f.first(), f.get(1)) else {
        return false;
    };
    if b0 != 0x81 || b1 & 0x80 != 0 {
        return false;
    }
    let (header, len) = match b1 & 0x7f {
        126 => match f.get(2..4) {
            Some(l) => (4, u16::from_be_bytes([l[0], l[1]]) as u64),
            None => return false,
        },
        127 => match f.get(2..10).and_then(|l| <[u8; 8]>::try_from(l).ok()) {
            Some(l) => (10, u64::from_be_bytes(l)),
            None => return false,
        },
        n => (2, n as u64),
    };
    (f.len() - header) as u64 == len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Bytes {
        crate::transport::encode_frame(fastwebsockets::OpCode::Text, text.as_bytes())
    }

    #[test]
    fn topic_round_trip() {
        for size in [3, 200, 70_000] {
            let f = frame(&"x".repeat(size));
            let p = topic_message(b"node-a", &f);
            assert_eq!(
                decode(p, false),
                Ok(Payload::Tagged {
                    node: Bytes::from_static(b"node-a"),
                    user: None,
                    frame: f,
                })
            );
        }
    }

    #[test]
    fn direct_round_trip() {
        let f = frame("{\"type\":\"direct\"}");
        let p = direct_message(b"n1", "alice", &f);
        assert_eq!(
            decode(p, true),
            Ok(Payload::Tagged {
                node: Bytes::from_static(b"n1"),
                user: Some(Bytes::from_static(b"alice")),
                frame: f,
            })
        );
    }

    #[test]
    fn json_is_foreign() {
        let p = Bytes::from_static(b"{\"price\":1}");
        assert_eq!(decode(p.clone(), false), Ok(Payload::Foreign(p)));
    }

    #[test]
    fn broken_payloads_are_refused() {
        let f = frame("hello");
        let good = topic_message(b"n", &f);
        for cut in MAGIC.len()..good.len() {
            assert!(decode(good.slice(..cut), false).is_err(), "cut at {cut}");
        }
        let mut masked = BytesMut::from(&good[..]);
        let at = MAGIC.len() + 2 + 1;
        masked[at] |= 0x80;
        assert_eq!(decode(masked.freeze(), false), Err(WireError::BadFrame));
        let binary = topic_message(
            b"n",
            &crate::transport::encode_frame(fastwebsockets::OpCode::Binary, b"x"),
        );
        assert_eq!(decode(binary, false), Err(WireError::BadFrame));
        let mut bad_user = BytesMut::from(&direct_message(b"n", "ab", &f)[..]);
        bad_user[MAGIC.len() + 4] = 0xff;
        assert_eq!(decode(bad_user.freeze(), true), Err(WireError::BadUser));
    }
}
