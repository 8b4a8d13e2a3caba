//! Protocol v1 requests and the server's JSON frames.
//!
//! Requests are parsed borrowing from the received text; `data` and `id` stay as raw JSON
//! (`serde_json::value::RawValue`) so they are forwarded byte-for-byte, never re-serialised.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Error codes of `{"type":"error"}` frames.
pub mod code {
    pub const INVALID_JSON: &str = "invalid_json";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    pub const INVALID_TOPIC: &str = "invalid_topic";
}

/// A client request.
pub enum Request<'a> {
    Subscribe(Cow<'a, str>),
    Unsubscribe(Cow<'a, str>),
    Publish(Cow<'a, str>, &'a RawValue),
}

/// A rejected request: becomes an `error` frame, the connection stays open.
pub struct Rejected<'a> {
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
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

/// Keep a present `null` as `Some` (plain `Option<&RawValue>` would map it to `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parse one text message of the pub/sub route into `(id, request)`.
#[allow(clippy::type_complexity)]
pub fn parse(text: &str) -> Result<(Option<&RawValue>, Request<'_>), Rejected<'_>> {
    let raw: Raw<'_> = serde_json::from_str(text).map_err(|e| Rejected {
        id: None,
        code: if e.is_data() {
            code::BAD_REQUEST
        } else {
            code::INVALID_JSON
        },
        message: Cow::Owned(e.to_string()),
    })?;
    let reject = |id, code, message: &'static str| Rejected {
        id,
        code,
        message: Cow::Borrowed(message),
    };
    if let Some(id) = raw.id {
        let first = id.get().as_bytes().first().copied().unwrap_or(b' ');
        if !(first == b'"' || first == b'-' || first.is_ascii_digit()) {
            return Err(reject(
                None,
                code::BAD_REQUEST,
                "`id` must be a string or a number",
            ));
        }
    }
    let id = raw.id;
    let kind = raw
        .kind
        .ok_or_else(|| reject(id, code::BAD_REQUEST, "missing field `type`"))?;
    let topic = || {
        raw.topic
            .clone()
            .ok_or_else(|| reject(id, code::BAD_REQUEST, "missing field `topic`"))
    };
    let request = match &*kind {
        "subscribe" => Request::Subscribe(topic()?),
        "unsubscribe" => Request::Unsubscribe(topic()?),
        "publish" => Request::Publish(
            topic()?,
            raw.data
                .ok_or_else(|| reject(id, code::BAD_REQUEST, "missing field `data`"))?,
        ),
        other => {
            return Err(Rejected {
                id,
                code: code::UNKNOWN_TYPE,
                message: Cow::Owned(format!("unknown request type `{}`", other.escape_debug())),
            })
        }
    };
    Ok((id, request))
}

/// Topic rule shared with wsgate: non-empty, at most 256 bytes, no control characters.
pub fn check_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        Err("topic must not be empty")
    } else if topic.len() > 256 {
        Err("topic is too long")
    } else if topic.chars().any(char::is_control) {
        Err("topic must not contain control characters")
    } else {
        Ok(())
    }
}

fn push_json_string(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

/// `{"type":"message","topic":T,"data":D}`, with `D` copied verbatim; built once per publish.
pub fn message(topic: &str, data: &RawValue) -> String {
    let mut s = String::with_capacity(40 + topic.len() + data.get().len());
    s.push_str("{\"type\":\"message\",\"topic\":");
    push_json_string(&mut s, topic);
    s.push_str(",\"data\":");
    s.push_str(data.get());
    s.push('}');
    s
}

/// `{"type":"ack","id":ID}`.
pub fn ack(id: &RawValue) -> String {
    format!("{{\"type\":\"ack\",\"id\":{}}}", id.get())
}

/// `{"type":"error","id":ID,"code":C,"message":M}` (`id` only when known).
pub fn error(id: Option<&RawValue>, code: &str, message: &str) -> String {
    let mut s = String::from("{\"type\":\"error\",");
    if let Some(id) = id {
        s.push_str("\"id\":");
        s.push_str(id.get());
        s.push(',');
    }
    s.push_str("\"code\":");
    push_json_string(&mut s, code);
    s.push_str(",\"message\":");
    push_json_string(&mut s, message);
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let (id, r) = parse(r#"{"type":"publish","topic":"t","data":{"a": [1, 2]},"id":7}"#)
            .ok()
            .unwrap();
        assert_eq!(id.map(|i| i.get()), Some("7"));
        match r {
            Request::Publish(t, d) => {
                assert_eq!(t, "t");
                assert_eq!(
                    message(&t, d),
                    r#"{"type":"message","topic":"t","data":{"a": [1, 2]}}"#
                );
            }
            _ => panic!("not a publish"),
        }
        assert_eq!(parse("{nope").err().unwrap().code, code::INVALID_JSON);
        assert_eq!(parse("[1]").err().unwrap().code, code::BAD_REQUEST);
        assert_eq!(
            parse(r#"{"type":"x","id":"q"}"#).err().unwrap().code,
            code::UNKNOWN_TYPE
        );
        assert_eq!(
            parse(r#"{"type":"publish","topic":"t"}"#)
                .err()
                .unwrap()
                .code,
            code::BAD_REQUEST
        );
        let e = parse(r#"{"type":"subscribe","topic":"t","id":null}"#)
            .err()
            .unwrap();
        assert!(e.id.is_none());
        assert_eq!(
            error(None, code::BAD_REQUEST, "m \"q\""),
            r#"{"type":"error","code":"bad_request","message":"m \"q\""}"#
        );
    }
}
