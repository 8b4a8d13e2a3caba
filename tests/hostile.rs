//! Hostile input against the real gateway: each gets a clear error (status, error frame or close
//! code) and the gateway keeps serving everybody else.

mod common;

use common::raw;
use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wsgate::{DriverChoice, Gateway};

/// The gateway still serves a well-behaved client over ws and wss.
async fn still_serving(gw: &Gateway) {
    let mut ws = connect(&ws_url(gw, "/echo")).await;
    ws.send(Message::Text("still here".into())).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::Text("still here".into()));
    let mut wss = connect_tls(gw, "/echo").await;
    wss.send(Message::Text("still here".into())).await.unwrap();
    assert_eq!(next_msg(&mut wss).await, Message::Text("still here".into()));
}

async fn response_to(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("closed in time");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn garbage_tls_and_http() {
    let gw = start(config(2, DriverChoice::Auto));
    let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let r = response_to(gw.wss_addr().unwrap(), &junk).await;
    assert!(!r.contains("HTTP/1.1 101"));
    for _ in 0..1000 {
        if gw
            .stats()
            .iter()
            .map(|s| s.tls_handshake_failures)
            .sum::<u64>()
            >= 1
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        gw.stats()
            .iter()
            .map(|s| s.tls_handshake_failures)
            .sum::<u64>()
            >= 1
    );
    let r = response_to(
        gw.ws_addr().unwrap(),
        b"\x16\x03\x01garbage that is not http\r\n\r\n",
    )
    .await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");
    let r = response_to(gw.ws_addr().unwrap(), b"GET / HTTP/1.1\r\nHost x\r\n\r\n").await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");
    still_serving(&gw).await;
}

#[tokio::test]
async fn oversized_request_headers() {
    let gw = start(config(1, DriverChoice::Auto));
    let mut many = String::from("GET /ws HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = response_to(gw.ws_addr().unwrap(), many.as_bytes()).await;
    assert!(
        r.is_empty() || r.starts_with("HTTP/1.1 431"),
        "{}",
        &r[..r.len().min(200)]
    );
    let huge = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let r = response_to(gw.ws_addr().unwrap(), huge.as_bytes()).await;
    assert!(
        r.is_empty() || r.starts_with("HTTP/1.1 431"),
        "{}",
        &r[..r.len().min(200)]
    );
    let no_key = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n";
    let r = response_to(gw.ws_addr().unwrap(), no_key.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    still_serving(&gw).await;
}

#[tokio::test]
async fn frame_level_violations_close_1002() {
    let gw = start(config(1, DriverChoice::Auto));
    let addr = gw.ws_addr().unwrap();
    let k = Some([1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked client frame", raw::frame(0x81, b"hi", None)),
        ("reserved opcode 0x3", raw::frame(0x83, b"x", k)),
        ("reserved opcode 0xB", raw::frame(0x8B, b"x", k)),
        (
            "control frame over 125 bytes",
            raw::frame(0x89, &[0u8; 126], k),
        ),
        ("fragmented control frame", raw::frame(0x09, b"p", k)),
        ("reserved bits", raw::frame(0xC1, b"x", k)),
        (
            "invalid close code 1005",
            raw::frame(0x88, &1005u16.to_be_bytes(), k),
        ),
        (
            "invalid close code 999",
            raw::frame(0x88, &999u16.to_be_bytes(), k),
        ),
        ("one-byte close payload", raw::frame(0x88, &[3], k)),
    ];
    for path in ["/echo", "/ws"] {
        for (what, bytes) in &cases {
            let mut s = raw::upgrade(addr, path).await;
            s.write_all(bytes).await.unwrap();
            let code = tokio::time::timeout(PATIENCE, raw::read_close_code(&mut s))
                .await
                .unwrap();
            assert_eq!(code, 1002, "{path}: {what}");
        }
    }
    still_serving(&gw).await;
}

#[tokio::test]
async fn deeply_nested_json_gets_an_error_frame() {
    let gw = start(config(1, DriverChoice::Auto));
    let mut ws = connect(&ws_url(&gw, "/ws")).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    ws.send(Message::Text(deep.clone())).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(e["type"], "error");
    let publish = format!(r#"{{"type":"publish","topic":"t","data":{deep},"id":1}}"#);
    ws.send(Message::Text(publish)).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(e["type"], "error", "{e}");
    subscribe(&mut ws, "fine", 2).await;
}

/// A 1 MiB publish fanned out to 1,000 subscribers: shared once, delivered whole to each, and the
/// gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_publish_to_a_thousand_subscribers() {
    const SUBS: usize = 1000;
    let mut c = config(2, DriverChoice::Auto);
    c.limits.max_message_size = 2 << 20;
    let gw = start(c);
    let addr = gw.ws_addr().unwrap();
    let mut subs = Vec::with_capacity(SUBS);
    for i in 0..SUBS {
        let mut s = raw::upgrade(addr, "/ws").await;
        s.write_all(&raw::text(&format!(
            r#"{{"type":"subscribe","topic":"big","id":{i}}}"#
        )))
        .await
        .unwrap();
        let (_, ack) = raw::read_frame(&mut s).await;
        assert_eq!(ack, format!(r#"{{"type":"ack","id":{i}}}"#).as_bytes());
        subs.push(s);
    }
    let data = "x".repeat(1 << 20);
    let mut publisher = connect(&ws_url(&gw, "/ws")).await;
    send_json(
        &mut publisher,
        json!({"type":"publish","topic":"big","data":data,"id":"big"}),
    )
    .await;
    assert_eq!(
        next_json(&mut publisher).await,
        json!({"type":"ack","id":"big"})
    );
    let expected_len = r#"{"type":"message","topic":"big","data":""}"#.len() + (1 << 20);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let (b0, payload) = tokio::time::timeout(PATIENCE * 4, raw::read_frame(&mut s))
                    .await
                    .unwrap();
                assert_eq!(b0, 0x81);
                assert_eq!(payload.len(), expected_len);
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    let delivered: u64 = gw.stats().iter().map(|s| s.deliveries).sum();
    assert_eq!(delivered, SUBS as u64);
    still_serving(&gw).await;
}
