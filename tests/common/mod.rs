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

/// Connect over wss://, trusting the gateway's generated certificate.
pub async fn connect_tls(gw: &Gateway, path: &str) -> Ws {
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
    let url = format!(
        "wss://localhost:{}{}",
        gw.wss_addr().expect("wss").port(),
        path
    );
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(cfg));
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
