//! The part of the upgrade request wsgate interprets itself: token extraction
//! (`wsgate::auth::find_token`: `Authorization: Bearer`, the `token` query parameter, a
//! `Sec-WebSocket-Protocol` entry `bearer.<jwt>`) and topic permission patterns
//! (`wsgate::auth::TopicPattern`).
//!
//! The request is built with `http` from fuzzer-chosen parts (GET, a URI that `http::Uri` accepts,
//! header name/value pairs that `http` accepts) the way hyper hands it to the gateway. Input format
//! (see `split`): URI, pattern and topic lines, then `Name:value` lines; the names `A` and `P` are
//! short for `Authorization` and `Sec-WebSocket-Protocol`.
#![no_main]

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use libfuzzer_sys::fuzz_target;
use wsgate::auth::{find_token, TopicPattern, SUBPROTOCOL_TOKEN_PREFIX};

struct Input<'a> {
    uri: &'a [u8],
    pattern: String,
    topic: String,
    headers: Vec<(&'a [u8], &'a [u8])>,
}

/// Line-based input (easy to write seeds for): line 1 the URI, line 2 a topic pattern, line 3 a topic,
/// then one `Name:value` header per line (the value is taken raw, after the first `:`).
fn split(data: &[u8]) -> Input<'_> {
    let mut lines = data.split(|&b| b == b'\n');
    let uri = lines.next().unwrap_or_default();
    let pattern = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let topic = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let headers = lines
        .filter_map(|l| {
            let i = l.iter().position(|&b| b == b':')?;
            Some((&l[..i], &l[i + 1..]))
        })
        .collect();
    Input {
        uri,
        pattern,
        topic,
        headers,
    }
}

fuzz_target!(|data: &[u8]| {
    let input = split(data);
    // Topic patterns: a pattern always matches its own text; `*` matches everything; a `p*` pattern
    // matches exactly the topics starting with `p`; anything else matches only itself.
    let p = TopicPattern::parse(&input.pattern);
    assert!(p.matches(&input.pattern));
    let m = p.matches(&input.topic);
    if input.pattern == "*" {
        assert!(m);
    } else if let Some(prefix) = input.pattern.strip_suffix('*') {
        assert_eq!(m, input.topic.starts_with(prefix));
    } else {
        assert_eq!(m, input.topic == input.pattern);
    }

    let mut b = http::Request::builder().method("GET");
    if let Ok(uri) = http::Uri::try_from(input.uri) {
        b = b.uri(uri);
    }
    let Ok(mut req) = b.body(()) else {
        return;
    };
    for &(name, value) in &input.headers {
        let name = match name {
            b"A" => AUTHORIZATION,
            b"P" => SEC_WEBSOCKET_PROTOCOL,
            n => match HeaderName::from_bytes(n) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        req.headers_mut().append(name, value);
    }

    let Some(found) = find_token(&req) else {
        // Nothing found: no usable bearer header, no `token` query parameter, no `bearer.` entry.
        assert!(req
            .headers()
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .all(|p| !p.trim().starts_with(SUBPROTOCOL_TOKEN_PREFIX)));
        return;
    };
    // The token never travels back to the client as the chosen subprotocol.
    if let Some(answer) = &found.answer_subprotocol {
        let answer = answer
            .to_str()
            .expect("answered subprotocol is visible ASCII");
        assert!(!answer.starts_with(SUBPROTOCOL_TOKEN_PREFIX));
        // An empty list element is not a subprotocol (RFC 9110 §5.6.1: recipients ignore them).
        assert!(!answer.is_empty(), "answered an empty subprotocol");
        assert!(
            !answer.contains(','),
            "answer {answer:?} is more than one subprotocol"
        );
        assert_eq!(answer, answer.trim());
        // It is one of the offered entries.
        assert!(req
            .headers()
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == answer));
    }
    // A bearer header wins over everything else and is trimmed.
    if let Some(Ok(v)) = req.headers().get(AUTHORIZATION).map(|v| v.to_str()) {
        let v = v.trim();
        if v.len() > 7 && v.is_char_boundary(7) && v[..7].eq_ignore_ascii_case("bearer ") {
            assert_eq!(found.token, v[7..].trim());
            assert!(found.answer_subprotocol.is_none());
        }
    }
});
