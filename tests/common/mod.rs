//! Shared helpers: an in-process gateway on ephemeral loopback ports, and real WebSocket clients
//! (tokio-tungstenite, with rustls for wss://).
#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsgate::{Config, DriverChoice, Gateway};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single expected event may take before the test fails (never a performance bound).
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A config for tests: ws + wss on ephemeral ports, no pinning, short close/shutdown timers.
pub fn config(cores: usize, driver: DriverChoice) -> Config {
    let mut c = Config {
        cores,
        driver,
        pin_cores: false,
        ..Config::default()
    };
    c.listen.ws = "127.0.0.1:0".into();
    c.listen.wss = "127.0.0.1:0".into();
    c.admin.listen = "127.0.0.1:0".into();
    c.limits.close_timeout_ms = 500;
    c.limits.shutdown_grace_ms = 2000;
    c
}

pub fn start(c: Config) -> Gateway {
    Gateway::start(c).expect("gateway starts")
}

pub fn ws_url(gw: &Gateway, path: &str) -> String {
    format!("ws://{}{}", gw.ws_addr().expect("ws listener"), path)
}

pub async fn connect(url: &str) -> Ws {
    let (ws, resp) = tokio::time::timeout(
        PATIENCE,
        tokio_tungstenite::connect_async_with_config(url, None, true),
    )
    .await
    .expect("connect in time")
    .expect("upgrade succeeds");
    assert_eq!(resp.status(), 101);
    ws
}

/// A TLS client configuration trusting the gateway's generated certificate.
#[allow(dead_code)] // not every test binary uses every helper
pub fn client_tls_config(gw: &Gateway) -> Arc<rustls::ClientConfig> {
    let pem = gw.self_signed_cert_pem().expect("self-signed cert");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(pem) {
        roots.add(cert).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// Connect over wss://, trusting the gateway's generated certificate.
pub async fn connect_tls(gw: &Gateway, path: &str) -> Ws {
    let cfg = client_tls_config(gw);
    let url = format!(
        "wss://localhost:{}{}",
        gw.wss_addr().expect("wss").port(),
        path
    );
    let connector = tokio_tungstenite::Connector::Rustls(cfg);
    let (ws, _) = tokio::time::timeout(
        PATIENCE,
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector)),
    )
    .await
    .expect("connect in time")
    .expect("tls upgrade succeeds");
    ws
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("pem")
}

/// Next data message (pings/pongs skipped); panics on close or timeout.
pub async fn next_msg(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("no error");
        match m {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

pub async fn next_json(ws: &mut Ws) -> Value {
    match next_msg(ws).await {
        Message::Text(t) => serde_json::from_str(&t).expect("server sends JSON"),
        other => panic!("expected text, got {other:?}"),
    }
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string())).await.expect("send");
}

/// Wait for the server's close frame and return it.
pub async fn expect_close(ws: &mut Ws) -> CloseFrame<'static> {
    loop {
        let m = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("close in time");
        match m {
            Some(Ok(Message::Close(Some(f)))) => return f,
            Some(Ok(Message::Close(None))) => panic!("close without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// Subscribe with an id and wait for its ack.
pub async fn subscribe(ws: &mut Ws, topic: &str, id: u64) {
    send_json(
        ws,
        serde_json::json!({"type":"subscribe","topic":topic,"id":id}),
    )
    .await;
    let ack = next_json(ws).await;
    assert_eq!(ack, serde_json::json!({"type":"ack","id":id}));
}

/// A hand-driven WebSocket client over a raw socket, for sending what well-behaved clients cannot.
pub mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Connect and upgrade; returns the socket positioned after the 101 response.
    pub async fn upgrade(addr: std::net::SocketAddr, path: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).ok();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("send request");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("response");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        s
    }

    /// Encode a client frame; `mask: None` sends it unmasked (a protocol violation).
    pub fn frame(first_byte: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut v = vec![first_byte];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => v.push(m | n as u8),
            n if n < 65536 => {
                v.push(m | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(m | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                v.extend_from_slice(&k);
                v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => v.extend_from_slice(payload),
        }
        v
    }

    /// A final, masked text frame.
    pub fn text(payload: &str) -> Vec<u8> {
        frame(0x81, payload.as_bytes(), Some([7, 1, 3, 9]))
    }

    /// Read one server frame: (first byte, payload).
    pub async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.expect("frame header");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).await.expect("len16");
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await.expect("len64");
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).await.expect("payload");
        (h[0], p)
    }

    /// Read frames until a close frame; returns its code.
    pub async fn read_close_code(s: &mut TcpStream) -> u16 {
        loop {
            let (b0, p) = read_frame(s).await;
            if b0 & 0x0f == 0x8 {
                return u16::from_be_bytes([p[0], p[1]]);
            }
        }
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`): (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("send");
    // Read the head, then Content-Length bytes (some servers keep the connection open), or to EOF.
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if let Some(len) = len {
                    if out.len() >= end + 4 + len {
                        return;
                    }
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("response in time");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
