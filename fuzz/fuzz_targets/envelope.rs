//! Pub/sub protocol v1 envelopes: `wsgate::pubsub::protocol::parse` on arbitrary UTF-8, then every
//! frame builder on what it returns. Each built frame must be a single final text frame whose header
//! length matches the payload, and whose payload is JSON that reads back to the same topic / user /
//! raw `data` / raw `id` / error code and message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;
use wsgate::pubsub::protocol::{
    ack_frame, check_topic, direct_frame, error_frame, message_frame, parse, Request,
    MAX_DATA_DEPTH,
};

/// What a client sees in any server frame.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Out<'a> {
    #[serde(rename = "type")]
    kind: String,
    topic: Option<String>,
    from: Option<String>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    code: Option<String>,
    message: Option<String>,
}

/// `Option<&RawValue>` alone reads `null` as `None`; a present `null` is a value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Checks the 2/4/10-byte server header (FIN + text, unmasked, minimal length form) and returns the
/// payload.
fn payload(frame: &[u8]) -> &[u8] {
    assert!(frame.len() >= 2, "frame shorter than a header");
    assert_eq!(frame[0], 0x81, "not a final text frame");
    assert_eq!(frame[1] & 0x80, 0, "server frames must not be masked");
    let (len, head) = match frame[1] & 0x7f {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as u64, 4),
        127 => (u64::from_be_bytes(frame[2..10].try_into().unwrap()), 10),
        n => (n as u64, 2),
    };
    // Minimal length encoding (RFC 6455 §5.2).
    match head {
        4 => assert!(len >= 126),
        10 => assert!(len >= 65536),
        _ => {}
    }
    assert_eq!(
        len as usize,
        frame.len() - head,
        "header length != payload length"
    );
    &frame[head..]
}

fn read(frame: &[u8]) -> Out<'_> {
    let p = payload(frame);
    let text = std::str::from_utf8(p).expect("text frame payload is not UTF-8");
    match serde_json::from_str::<Out<'_>>(text) {
        Ok(o) => o,
        Err(e) => panic!("frame payload is not the expected JSON ({e}): {text:?}"),
    }
}

/// Nesting depth of valid JSON, via serde_json itself (an independent check of the gateway's limit).
fn depth(raw: &str) -> usize {
    let v: serde_json::Value = match serde_json::from_str(raw) {
        Ok(v) => v,
        // Numbers out of f64 range are valid JSON that `Value` refuses; depth is not at issue there.
        Err(_) => return 0,
    };
    fn d(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(d).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(d).max().unwrap_or(0),
            _ => 0,
        }
    }
    d(&v)
}

fn same_raw(a: Option<&RawValue>, b: Option<&RawValue>) {
    assert_eq!(a.map(RawValue::get), b.map(RawValue::get));
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // Topic rules on the raw input too (any length limit).
    let max = text.len() / 2;
    if check_topic(text, max).is_ok() {
        assert!(!text.is_empty() && text.len() <= max && !text.chars().any(char::is_control));
    }

    match parse(text) {
        Ok(env) => {
            if let Some(id) = env.id {
                let first = id.get().as_bytes()[0];
                assert!(first == b'"' || first == b'-' || first.is_ascii_digit());
                let f = ack_frame(id);
                let o = read(&f);
                assert_eq!(o.kind, "ack");
                same_raw(o.id, Some(id));
            }
            let f = error_frame(env.id, "bad_request", "m\u{0}\"\\\u{7f}");
            let o = read(&f);
            assert_eq!(o.kind, "error");
            same_raw(o.id, env.id);
            match env.request {
                Request::Subscribe { topic } | Request::Unsubscribe { topic } => {
                    let _ = check_topic(&topic, 256);
                }
                Request::Publish { topic, data } => {
                    let _ = check_topic(&topic, 256);
                    assert!(depth(data.get()) <= MAX_DATA_DEPTH);
                    let f = message_frame(&topic, data);
                    let o = read(&f);
                    assert_eq!(o.kind, "message");
                    assert_eq!(o.topic.as_deref(), Some(&*topic));
                    same_raw(o.data, Some(data));
                }
                Request::Direct { to, data } => {
                    assert!(!to.is_empty());
                    let f = direct_frame(&to, data);
                    let o = read(&f);
                    assert_eq!(o.kind, "message");
                    assert_eq!(o.from.as_deref(), Some(&*to));
                    same_raw(o.data, Some(data));
                    // The recipient's identity is arbitrary text as well.
                    let f = message_frame(&to, data);
                    let o = read(&f);
                    assert_eq!(o.topic.as_deref(), Some(&*to));
                }
            }
        }
        Err(e) => {
            let f = error_frame(e.id, e.code, &e.message);
            let o = read(&f);
            assert_eq!(o.kind, "error");
            same_raw(o.id, e.id);
            assert_eq!(o.code.as_deref(), Some(e.code));
            assert_eq!(o.message.as_deref(), Some(&*e.message));
        }
    }
});
