//! The wss data path at the TLS level: what rustls's unbuffered API leaves to the gateway (answering
//! a client's KeyUpdate, fatal alerts, close_notify both ways, partial records and refused writes),
//! plain HTTPS requests next to upgrades, the handshake cap, and the old buffered path
//! (`wss_io = "buffered"`) still working. Real sockets and a real rustls client; the blocking client
//! gives byte-level control over the TLS connection.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{config, connect_tls, next_msg, start, PATIENCE};
use futures_util::SinkExt;
use rustls::{ClientConnection, StreamOwned};
use tokio_tungstenite::tungstenite::Message;
use wsgate::config::WssIo;
use wsgate::{DriverChoice, Gateway};

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn tls_client(gw: &Gateway) -> Tls {
    let cfg = common::client_tls_config(gw);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = ClientConnection::new(cfg, name).expect("client");
    let sock = TcpStream::connect(gw.wss_addr().expect("wss")).expect("connect");
    sock.set_read_timeout(Some(PATIENCE)).expect("timeout");
    StreamOwned::new(conn, sock)
}

/// Read one HTTP response (head + Content-Length body) from `s`.
fn read_response(s: &mut Tls) -> (u16, String) {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("response head");
        out.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
    let status = head[9..12].parse().expect("status");
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn upgrade(s: &mut Tls, path: &str) -> u16 {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send upgrade");
    read_response(s).0
}

/// A masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    common::raw::frame(0x80 | opcode, payload, Some([1, 2, 3, 4]))
}

/// One server frame: (first byte, payload).
fn read_frame(s: &mut Tls) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("frame head");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).expect("len16");
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).expect("len64");
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).expect("payload");
    (h[0], p)
}

fn echo_once(s: &mut Tls, text: &str) {
    s.write_all(&frame(0x1, text.as_bytes())).expect("send");
    assert_eq!(read_frame(s), (0x81, text.as_bytes().to_vec()));
}

fn both_drivers(mut f: impl FnMut(DriverChoice)) {
    f(DriverChoice::Uring);
    f(DriverChoice::Epoll);
}

#[test]
fn https_requests_next_to_upgrades() {
    both_drivers(|driver| {
        let gw = start(config(1, driver));
        let mut s = tls_client(&gw);
        // Keep-alive: two requests on one TLS connection, then a 404, all served by hyper.
        for _ in 0..2 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("send");
            assert_eq!(read_response(&mut s), (200, "ok".into()));
        }
        s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        assert_eq!(read_response(&mut s).0, 404);
        // An upgrade the direct path refuses (bad version) gets its status, then a clean close.
        let mut s = tls_client(&gw);
        let req = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n";
        s.write_all(req.as_bytes()).expect("send");
        let (status, _) = read_response(&mut s);
        assert!((400..500).contains(&status), "{status}");
        let mut rest = Vec::new();
        assert!(s.read_to_end(&mut rest).is_ok(), "closed with close_notify");
        // And an upgrade works.
        let mut s = tls_client(&gw);
        assert_eq!(upgrade(&mut s, "/echo"), 101);
        echo_once(&mut s, "after https");
    });
}

#[test]
fn client_key_updates_are_answered() {
    both_drivers(|driver| {
        let gw = start(config(1, driver));
        let mut s = tls_client(&gw);
        assert_eq!(upgrade(&mut s, "/echo"), 101);
        echo_once(&mut s, "before");
        for i in 0..3 {
            // A KeyUpdate with update_requested: the server must switch its read key and send one of
            // its own (a post-handshake EncodeTlsData on the unbuffered API) before the echo.
            s.conn.refresh_traffic_keys().expect("key update");
            echo_once(&mut s, &format!("after key update {i}"));
        }
    });
}

#[test]
fn a_forged_record_gets_a_fatal_alert() {
    both_drivers(|driver| {
        let gw = start(config(1, driver));
        let mut s = tls_client(&gw);
        assert_eq!(upgrade(&mut s, "/echo"), 101);
        echo_once(&mut s, "hello");
        // An application-data record that does not decrypt.
        let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        forged.extend_from_slice(&[0x5a; 32]);
        s.sock.write_all(&forged).expect("send forged record");
        let mut buf = [0u8; 64];
        let err = loop {
            match s.read(&mut buf) {
                Ok(0) => panic!("closed without an alert"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        let alert = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .cloned();
        assert!(
            matches!(alert, Some(rustls::Error::AlertReceived(_))),
            "expected a fatal alert, got {err:?}"
        );
        // The core is fine.
        let mut s = tls_client(&gw);
        assert_eq!(upgrade(&mut s, "/echo"), 101);
        echo_once(&mut s, "still serving");
    });
}

#[test]
fn close_handshake_ends_with_close_notify() {
    both_drivers(|driver| {
        let gw = start(config(1, driver));
        let mut s = tls_client(&gw);
        assert_eq!(upgrade(&mut s, "/echo"), 101);
        s.write_all(&frame(0x8, &1000u16.to_be_bytes()))
            .expect("close");
        assert_eq!(read_frame(&mut s), (0x88, 1000u16.to_be_bytes().to_vec()));
        s.conn.send_close_notify();
        s.flush().expect("flush");
        // rustls reports a TCP close without close_notify as an error: Ok means the server sent it.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("clean TLS close");
        assert!(rest.is_empty());
    });
}

/// Many messages of mixed sizes sent without reading: the server's writes are refused and its
/// ciphertext queues, records arrive split across reads; every echo must come back in order.
async fn pipelined_mixed_sizes(gw: &Gateway) {
    let mut ws = connect_tls(gw, "/echo").await;
    let sizes: Vec<usize> = (0..120)
        .map(|i| [1, 125, 126, 4000, 16_500, 70_000][i % 6])
        .collect();
    for (i, n) in sizes.iter().enumerate() {
        let payload = vec![(i % 251) as u8; *n];
        ws.feed(Message::Binary(payload)).await.expect("feed");
    }
    ws.flush().await.expect("flush");
    for (i, n) in sizes.iter().enumerate() {
        assert_eq!(
            next_msg(&mut ws).await,
            Message::Binary(vec![(i % 251) as u8; *n])
        );
    }
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn pipelined_large_and_small_messages_on_both_wss_paths() {
    for io in [WssIo::Unbuffered, WssIo::Buffered] {
        for driver in [DriverChoice::Uring, DriverChoice::Epoll] {
            let mut c = config(1, driver);
            c.wss_io = io;
            c.limits.max_outbound_bytes = 16 << 20;
            let gw = start(c);
            pipelined_mixed_sizes(&gw).await;
        }
    }
}

#[tokio::test]
async fn handshakes_over_the_cap_wait_for_a_slot() {
    let mut c = config(1, DriverChoice::Auto);
    c.tls.max_handshakes_per_core = 1;
    c.limits.handshake_timeout_ms = 300;
    let gw = start(c);
    // Holds the only slot until its handshake deadline.
    let _silent = tokio::net::TcpStream::connect(gw.wss_addr().expect("wss"))
        .await
        .expect("connect");
    // Wait until the core has accepted it (and so given it the slot) before the real client comes.
    let accepted = || gw.stats().iter().map(|s| s.accepted).sum::<u64>();
    tokio::time::timeout(PATIENCE, async {
        while accepted() < 1 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("silent connection accepted");
    let mut ws = connect_tls(&gw, "/echo").await;
    ws.send(Message::Text("through".into()))
        .await
        .expect("send");
    assert_eq!(next_msg(&mut ws).await, Message::Text("through".into()));
    let timeouts: u64 = gw.stats().iter().map(|s| s.handshake_timeouts).sum();
    assert!(
        timeouts >= 1,
        "the second handshake waited for the first one's slot"
    );
    let _ = ws.close(None).await;
}
