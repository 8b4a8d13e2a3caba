//! Plain HTTP behaviour of the public listener: health check, 404, 426, bad upgrades, configurable
//! paths (the echo route at `/`), over plain TCP and TLS.

mod common;

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wsgate::DriverChoice;

async fn raw_request(addr: std::net::SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
}

#[tokio::test]
async fn health_404_426_and_bad_upgrade() {
    let gw = start(config(1, DriverChoice::Auto));
    let addr = gw.ws_addr().unwrap();
    let r = raw_request(addr, &get("/healthz", "")).await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok"), "{r}");
    let r = raw_request(addr, &get("/nope", "")).await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    for path in ["/ws", "/echo"] {
        let r = raw_request(addr, &get(path, "")).await;
        assert!(r.starts_with("HTTP/1.1 426"), "{r}");
        assert!(r.to_ascii_lowercase().contains("upgrade: websocket"), "{r}");
    }
    let bad_version = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n";
    let r = raw_request(addr, &get("/echo", bad_version)).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
}

#[tokio::test]
async fn header_read_timeout_closes_silent_connections() {
    let mut c = config(1, DriverChoice::Auto);
    c.limits.header_read_timeout_ms = 200;
    let gw = start(c);
    let mut s = TcpStream::connect(gw.ws_addr().unwrap()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // The gateway gives up on the incomplete request and closes the connection.
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("closed by the header read timeout")
        .ok();
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
}

#[tokio::test]
async fn echo_route_can_live_at_root_and_health_works_over_tls() {
    let mut c = config(1, DriverChoice::Auto);
    c.routes.echo = "/".into();
    c.routes.pubsub = "/pubsub".into();
    let gw = start(c);
    let mut ws = connect(&ws_url(&gw, "/")).await;
    ws.send(Message::Text("root".into())).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::Text("root".into()));
    let mut ps = connect(&ws_url(&gw, "/pubsub")).await;
    subscribe(&mut ps, "t", 1).await;
    let mut wss = connect_tls(&gw, "/").await;
    wss.send(Message::Binary(vec![9; 10])).await.unwrap();
    assert_eq!(next_msg(&mut wss).await, Message::Binary(vec![9; 10]));
}
