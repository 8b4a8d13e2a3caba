//! Protocol v1 envelopes (`../shared/protocol-v1.md`, extensions in docs/protocol.md): parsing client
//! requests without copying, and building the server's frames.
//!
//! `data` is kept as the publisher's raw JSON text (`serde_json::value::RawValue`) and spliced into the
//! outgoing `message` frame, so subscribers get it byte-for-byte and nothing is re-serialised.

use std::borrow::Cow;

use bytes::Bytes;
use fastwebsockets::OpCode;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::transport::encode_frame_parts;

/// Error codes sent in `{"type":"error","code":..}` frames (documented in docs/protocol.md).
pub mod code {
    pub const INVALID_JSON: &str = "invalid_json";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    pub const INVALID_TOPIC: &str = "invalid_topic";
    pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
    pub const UNSUPPORTED_FRAME: &str = "unsupported_frame";
    pub const FORBIDDEN: &str = "forbidden";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const RATE_LIMITED: &str = "rate_limited";
}

/// A client request, borrowing from the received text.
#[derive(Debug)]
pub enum Request<'a> {
    Subscribe {
        topic: Cow<'a, str>,
    },
    Unsubscribe {
        topic: Cow<'a, str>,
    },
    Publish {
        topic: Cow<'a, str>,
        data: &'a RawValue,
    },
    /// Extension: a message to every session of one user (docs/protocol.md).
    Direct {
        to: Cow<'a, str>,
        data: &'a RawValue,
    },
}

/// A request plus its optional `id`, which is echoed raw in the `ack`/`error`.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub id: Option<&'a RawValue>,
    pub request: Request<'a>,
}

/// Why a request was refused; becomes an `error` frame and the connection stays open.
#[derive(Debug)]
pub struct RequestError<'a> {
    pub id: Option<&'a RawValue>,
    pub code: &'static str,
    pub message: Cow<'static, str>,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

/// `Option<&RawValue>` would turn `null` into `None`; a present `null` is a real value here.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Deepest nesting of arrays/objects accepted in `data` (serde_json's own limit for the envelope).
pub const MAX_DATA_DEPTH: usize = 128;

/// Nesting depth of a JSON text that is already known to be valid (strings are skipped).
pub fn json_depth(raw: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in raw.as_bytes() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parse one text message of the pub/sub route.
pub fn parse(text: &str) -> Result<Envelope<'_>, RequestError<'_>> {
    let raw: Raw<'_> = serde_json::from_str(text).map_err(|e| RequestError {
        id: None,
        code: if e.is_data() {
            code::BAD_REQUEST
        } else {
            code::INVALID_JSON
        },
        message: Cow::Owned(format!("{e}")),
    })?;
    let bad = |id, code, message: &'static str| RequestError {
        id,
        code,
        message: Cow::Borrowed(message),
    };
    if let Some(id) = raw.id {
        let first = id.get().as_bytes().first().copied().unwrap_or(b' ');
        if !(first == b'"' || first == b'-' || first.is_ascii_digit()) {
            return Err(bad(
                None,
                code::BAD_REQUEST,
                "`id` must be a string or a number",
            ));
        }
    }
    let id = raw.id;
    if raw
        .data
        .is_some_and(|d| json_depth(d.get()) > MAX_DATA_DEPTH)
    {
        return Err(bad(
            id,
            code::BAD_REQUEST,
            "`data` is nested too deeply (at most 128 levels)",
        ));
    }
    let kind = raw
        .kind
        .ok_or_else(|| bad(id, code::BAD_REQUEST, "missing field `type`"))?;
    let topic = || {
        raw.topic
            .clone()
            .ok_or_else(|| bad(id, code::BAD_REQUEST, "missing field `topic`"))
    };
    let request = match &*kind {
        "subscribe" => Request::Subscribe { topic: topic()? },
        "unsubscribe" => Request::Unsubscribe { topic: topic()? },
        "publish" => Request::Publish {
            topic: topic()?,
            data: raw
                .data
                .ok_or_else(|| bad(id, code::BAD_REQUEST, "missing field `data`"))?,
        },
        "direct" => Request::Direct {
            to: raw
                .to
                .clone()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| bad(id, code::BAD_REQUEST, "missing field `to`"))?,
            data: raw
                .data
                .ok_or_else(|| bad(id, code::BAD_REQUEST, "missing field `data`"))?,
        },
        _ => {
            return Err(RequestError {
                id,
                code: code::UNKNOWN_TYPE,
                message: Cow::Owned(format!("unknown request type `{}`", kind.escape_debug())),
            })
        }
    };
    Ok(Envelope { id, request })
}

/// Check a topic name against the gateway's rules (non-empty, bounded, no control characters).
pub fn check_topic(topic: &str, max_len: usize) -> Result<(), &'static str> {
    if topic.is_empty() {
        Err("topic must not be empty")
    } else if topic.len() > max_len {
        Err("topic is too long")
    } else if topic.chars().any(char::is_control) {
        Err("topic must not contain control characters")
    } else {
        Ok(())
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// `{"type":"message","topic":T,"data":D}` as one text frame; `data` is copied verbatim.
pub fn message_frame(topic: &str, data: &RawValue) -> Bytes {
    let topic = json_string(topic);
    encode_frame_parts(
        OpCode::Text,
        &[
            b"{\"type\":\"message\",\"topic\":",
            topic.as_bytes(),
            b",\"data\":",
            data.get().as_bytes(),
            b"}",
        ],
    )
}

/// `{"type":"message","from":USER,"data":D}`: a direct message as its recipients see it.
pub fn direct_frame(from: &str, data: &RawValue) -> Bytes {
    let from = json_string(from);
    encode_frame_parts(
        OpCode::Text,
        &[
            b"{\"type\":\"message\",\"from\":",
            from.as_bytes(),
            b",\"data\":",
            data.get().as_bytes(),
            b"}",
        ],
    )
}

/// `{"type":"ack","id":ID}`.
pub fn ack_frame(id: &RawValue) -> Bytes {
    encode_frame_parts(
        OpCode::Text,
        &[b"{\"type\":\"ack\",\"id\":", id.get().as_bytes(), b"}"],
    )
}

/// `{"type":"error","id":ID,"code":C,"message":M}` (`id` only when the request had one).
pub fn error_frame(id: Option<&RawValue>, code: &str, message: &str) -> Bytes {
    let code = json_string(code);
    let message = json_string(message);
    let (id_head, id_raw, id_tail): (&[u8], &[u8], &[u8]) = match id {
        Some(id) => (b"\"id\":", id.get().as_bytes(), b","),
        None => (b"", b"", b""),
    };
    encode_frame_parts(
        OpCode::Text,
        &[
            b"{\"type\":\"error\",",
            id_head,
            id_raw,
            id_tail,
            b"\"code\":",
            code.as_bytes(),
            b",\"message\":",
            message.as_bytes(),
            b"}",
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &Bytes) -> &str {
        let head = if frame[1] & 0x7f == 126 { 4 } else { 2 };
        std::str::from_utf8(&frame[head..]).unwrap()
    }

    #[test]
    fn parses_requests_and_keeps_data_raw() {
        let e = parse(r#"{"type":"publish","topic":"a","data":{"x": [1, 2.50]},"id":7}"#).unwrap();
        assert_eq!(e.id.map(|i| i.get()), Some("7"));
        match e.request {
            Request::Publish { topic, data } => {
                assert_eq!(topic, "a");
                assert_eq!(data.get(), r#"{"x": [1, 2.50]}"#);
                assert_eq!(
                    payload(&message_frame(&topic, data)),
                    r#"{"type":"message","topic":"a","data":{"x": [1, 2.50]}}"#
                );
            }
            other => panic!("{other:?}"),
        }
        let e = parse(r#"{"type":"publish","topic":"a","data":null}"#).unwrap();
        assert!(matches!(e.request, Request::Publish { data, .. } if data.get() == "null"));
        let e = parse(r#"{"type":"subscribe","topic":"q\"t","extra":1}"#).unwrap();
        assert!(matches!(e.request, Request::Subscribe { topic } if topic == "q\"t"));
    }

    #[test]
    fn reports_errors_with_ids() {
        assert_eq!(parse("{nope").unwrap_err().code, code::INVALID_JSON);
        assert_eq!(parse("[1]").unwrap_err().code, code::BAD_REQUEST);
        let e = parse(r#"{"type":"dance","id":"x"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.id.map(|i| i.get())),
            (code::UNKNOWN_TYPE, Some("\"x\""))
        );
        let e = parse(r#"{"type":"publish","topic":"t","id":3}"#).unwrap_err();
        assert_eq!(
            (e.code, e.id.map(|i| i.get())),
            (code::BAD_REQUEST, Some("3"))
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"t","id":{}}"#)
                .unwrap_err()
                .code,
            code::BAD_REQUEST
        );
        let f = error_frame(
            parse(r#"{"id":1}"#).unwrap_err().id,
            "bad_request",
            "m \"q\"",
        );
        assert_eq!(
            payload(&f),
            r#"{"type":"error","id":1,"code":"bad_request","message":"m \"q\""}"#
        );
    }

    #[test]
    fn depth_of_data_is_bounded() {
        assert_eq!(json_depth(r#"{"a":[1,{"b":"[[[{"}]}"#), 3);
        assert_eq!(json_depth(r#""\"[[""#), 0);
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        let text = format!(r#"{{"type":"publish","topic":"t","data":{deep},"id":1}}"#);
        let e = parse(&text).unwrap_err();
        assert_eq!(
            (e.code, e.id.map(|i| i.get())),
            (code::BAD_REQUEST, Some("1"))
        );
    }

    #[test]
    fn topic_rules() {
        assert!(check_topic("chat.room-1", 16).is_ok());
        assert!(check_topic("", 16).is_err());
        assert!(check_topic("a\nb", 16).is_err());
        assert!(check_topic(&"x".repeat(17), 16).is_err());
    }
}
