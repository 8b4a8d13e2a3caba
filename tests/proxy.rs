//! Edge-proxy routes (`[[proxy]]`) against real upstream servers: tokio-tungstenite servers on
//! loopback (plain and TLS) that echo, close on request or flood, and record the handshake they saw.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use wsgate::config::{Balance, ProxyRoute};
use wsgate::{Config, DriverChoice, Gateway};

/// A request target and its headers.
type Recorded = (String, Vec<(String, String)>);

/// What an upstream saw: request targets and headers, close codes received, messages flooded.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Recorded>>,
    closes: Mutex<Vec<u16>>,
    flooded: AtomicUsize,
    /// Pings received from wsgate (clients' pings must not be forwarded).
    pings: AtomicUsize,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

const FLOOD_MESSAGES: usize = 1024;
const FLOOD_SIZE: usize = 64 * 1024;

/// Start an upstream WebSocket server on 127.0.0.1:0 (TLS when `tls` is given).
async fn upstream(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = state.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve_upstream(stream, seen).await,
                    Some(cfg) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                        if let Ok(s) = acceptor.accept(stream).await {
                            serve_upstream(s, seen).await;
                        }
                    }
                }
            });
        }
    });
    Upstream { addr, seen }
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn serve_upstream<S>(stream: S, seen: Arc<Seen>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let path = Arc::new(Mutex::new(String::new()));
    let p = path.clone();
    let record = seen.clone();
    let callback = move |req: &Request, mut resp: Response| {
        let target = req.uri().to_string();
        *p.lock().unwrap() = target.clone();
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        record.requests.lock().unwrap().push((target, headers));
        let offers_v2 = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .any(|v| {
                v.to_str()
                    .unwrap_or("")
                    .split(',')
                    .any(|p| p.trim() == "chat.v2")
            });
        if offers_v2 {
            resp.headers_mut()
                .insert("sec-websocket-protocol", "chat.v2".parse().unwrap());
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let path = path.lock().unwrap().clone();
    if path.contains("flood") {
        for i in 0..FLOOD_MESSAGES {
            let mut m = vec![(i % 251) as u8; FLOOD_SIZE];
            m[..8].copy_from_slice(&(i as u64).to_be_bytes());
            if ws.send(Message::Binary(m)).await.is_err() {
                return;
            }
            seen.flooded.fetch_add(1, Ordering::SeqCst);
        }
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
        return;
    }
    if path.contains("ping") {
        // Ping wsgate; tell the client once the pong came back.
        let _ = ws.send(Message::Ping(b"up".to_vec())).await;
        while let Some(Ok(m)) = ws.next().await {
            if m == Message::Pong(b"up".to_vec()) {
                let _ = ws.send(Message::Text("pong ok".into())).await;
            }
            if let Message::Ping(_) = m {
                seen.pings.fetch_add(1, Ordering::SeqCst);
            }
        }
        return;
    }
    if path.contains("sink") {
        // Never read: the client's messages must back up into the client, not into wsgate.
        std::future::pending::<()>().await;
    }
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Text(t) if t == "close me" => {
                let frame = CloseFrame {
                    code: CloseCode::from(4001),
                    reason: "bye".into(),
                };
                let _ = ws.close(Some(frame)).await;
            }
            Message::Text(_) | Message::Binary(_) => {
                let _ = ws.send(m).await;
            }
            Message::Close(f) => {
                seen.closes
                    .lock()
                    .unwrap()
                    .push(f.map_or(1005, |f| u16::from(f.code)));
            }
            _ => {}
        }
    }
}

fn route(path: &str, upstreams: &[String]) -> ProxyRoute {
    ProxyRoute {
        path: path.into(),
        upstreams: upstreams.to_vec(),
        ..ProxyRoute::default()
    }
}

/// An echo upstream behind a gateway route `/p` (one core).
async fn echo_proxy() -> (Upstream, Gateway) {
    let up = upstream(None).await;
    let mut c = config(1, DriverChoice::Auto);
    c.proxy = vec![route("/p", &[url(up.addr, "/echo")])];
    (up, start(c))
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("ws://{addr}{path}")
}

/// An address nothing listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn stat(gw: &Gateway, f: impl Fn(&wsgate::stats::CoreSnapshot) -> u64) -> u64 {
    gw.stats().iter().map(f).sum()
}

async fn roundtrip(ws: &mut Ws) {
    ws.send(Message::Text("hello upstream".into()))
        .await
        .unwrap();
    assert_eq!(next_msg(ws).await, Message::Text("hello upstream".into()));
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::Binary(big.clone())).await.unwrap();
    assert_eq!(next_msg(ws).await, Message::Binary(big));
}

async fn relay_both_ways(driver: DriverChoice) {
    let up = upstream(None).await;
    let mut c = config(1, driver);
    c.proxy = vec![route("/p", &[url(up.addr, "/echo")])];
    let gw = start(c);
    let mut ws = connect(&ws_url(&gw, "/p")).await;
    roundtrip(&mut ws).await;
    let mut wss = connect_tls(&gw, "/p").await;
    roundtrip(&mut wss).await;
    assert_eq!(stat(&gw, |s| s.proxy_sessions), 2);
    assert!(stat(&gw, |s| s.proxy_bytes_up) >= 2 * 100_000);
    assert!(stat(&gw, |s| s.proxy_bytes_down) >= 2 * 100_000);
    let protos: Vec<String> = up
        .seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, h)| header(h, "x-forwarded-proto").unwrap_or_default())
        .collect();
    assert_eq!(protos, vec!["ws", "wss"]);
    ws.close(None).await.unwrap();
    wss.close(None).await.unwrap();
}

#[tokio::test]
async fn relays_text_and_binary_both_ways_over_ws_and_wss_on_io_uring() {
    relay_both_ways(DriverChoice::Uring).await;
}

#[tokio::test]
async fn relays_text_and_binary_both_ways_over_ws_and_wss_on_epoll() {
    relay_both_ways(DriverChoice::Epoll).await;
}

#[tokio::test]
async fn relays_through_the_hyper_upgrade_path_too() {
    let up = upstream(None).await;
    let mut c = config(1, DriverChoice::Auto);
    c.ws_upgrade = wsgate::config::WsUpgrade::Hyper;
    c.proxy = vec![route("/p", &[url(up.addr, "/echo")])];
    let gw = start(c);
    let mut ws = connect(&ws_url(&gw, "/p")).await;
    roundtrip(&mut ws).await;
}

fn header(h: &[(String, String)], name: &str) -> Option<String> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

const SECRET: &str = "proxy-test-secret";

fn token(sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn forwards_path_query_identity_and_subprotocol_but_no_hop_by_hop_headers() {
    let up = upstream(None).await;
    let mut c = config(1, DriverChoice::Auto);
    c.auth.hs256_secret = Some(SECRET.into());
    c.proxy = vec![ProxyRoute {
        auth_required: true,
        user_header: "x-user".into(),
        ..route("/p", &[url(up.addr, "/up")])
    }];
    let gw = start(c);
    let addr = gw.ws_addr().unwrap();

    // Without a token: refused before any upstream is contacted.
    match tokio_tungstenite::connect_async(ws_url(&gw, "/p")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert!(up.seen.requests.lock().unwrap().is_empty());

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /p/room/42?x=1 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n\
         Connection: Upgrade, X-Hop\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat.v1, chat.v2\r\n\
         Authorization: Bearer {}\r\nX-Forwarded-For: 10.0.0.1\r\nX-Hop: secret\r\nTE: trailers\r\n\
         Trailer: X-T\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\
         X-User: mallory\r\nX-Custom: kept\r\n\r\n",
        token("alice")
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(PATIENCE, s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-protocol: chat.v2\r\n"),
        "the upstream's choice reaches the client: {head}"
    );
    s.write_all(&raw::text("via raw")).await.unwrap();
    let (b0, payload) = raw::read_frame(&mut s).await;
    assert_eq!((b0, payload.as_slice()), (0x81, b"via raw".as_slice()));

    let requests = up.seen.requests.lock().unwrap();
    let (target, h) = &requests[0];
    assert_eq!(target, "/up/room/42?x=1");
    assert_eq!(
        header(h, "x-forwarded-for").as_deref(),
        Some("10.0.0.1, 127.0.0.1")
    );
    assert_eq!(header(h, "x-forwarded-proto").as_deref(), Some("ws"));
    assert_eq!(
        header(h, "x-user").as_deref(),
        Some("alice"),
        "not the spoofed value"
    );
    assert_eq!(h.iter().filter(|(k, _)| k == "x-user").count(), 1);
    assert_eq!(header(h, "x-custom").as_deref(), Some("kept"));
    assert_eq!(
        header(h, "sec-websocket-protocol").as_deref(),
        Some("chat.v1, chat.v2")
    );
    assert_eq!(header(h, "host"), Some(up.addr.to_string()));
    for gone in [
        "x-hop",
        "te",
        "trailer",
        "keep-alive",
        "proxy-authorization",
    ] {
        assert_eq!(header(h, gone), None, "{gone} must not be forwarded");
    }
    assert_eq!(header(h, "connection").as_deref(), Some("Upgrade"));
}

#[tokio::test]
async fn subprotocol_is_negotiated_end_to_end_with_tungstenite() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (_up, gw) = echo_proxy().await;
    let mut req = ws_url(&gw, "/p").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat.v2".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "chat.v2"
    );
    roundtrip(&mut ws).await;
}

#[tokio::test]
async fn client_close_code_reaches_the_upstream() {
    let (up, gw) = echo_proxy().await;
    let mut ws = connect(&ws_url(&gw, "/p")).await;
    roundtrip(&mut ws).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4002),
        reason: "done".into(),
    }))
    .await
    .unwrap();
    let echoed = expect_close(&mut ws).await;
    assert_eq!(u16::from(echoed.code), 4002);
    assert_eq!(upstream_closes(&up).await, vec![4002]);
}

#[tokio::test]
async fn upstream_close_code_reaches_the_client() {
    let (_up, gw) = echo_proxy().await;
    let mut ws = connect(&ws_url(&gw, "/p")).await;
    ws.send(Message::Text("close me".into())).await.unwrap();
    let f = expect_close(&mut ws).await;
    assert_eq!(u16::from(f.code), 4001);
    tokio::time::timeout(PATIENCE, async {
        while stat(&gw, |s| s.proxy_sessions) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("proxied session ends");
}

#[tokio::test]
async fn upstream_down_closes_the_client_with_1014() {
    let mut c = config(1, DriverChoice::Auto);
    c.proxy = vec![route("/p", &[url(dead_addr(), "/echo")])];
    let gw = start(c);
    // A raw client: tungstenite 0.24 reports the (later registered) 1014 as a protocol error.
    let mut s = raw::upgrade(gw.ws_addr().unwrap(), "/p").await;
    assert_eq!(read_close(&mut s).await, 1014);
    assert_eq!(stat(&gw, |s| s.proxy_upstream_failures), 1);
    let mut wss = connect_tls(&gw, "/p").await;
    assert!(matches!(
        tokio::time::timeout(PATIENCE, wss.next()).await.unwrap(),
        Some(Ok(Message::Close(Some(_))))
    ));
}

#[tokio::test]
async fn round_robin_uses_every_upstream() {
    let (a, b) = (upstream(None).await, upstream(None).await);
    let mut c = config(1, DriverChoice::Auto);
    c.proxy = vec![route("/p", &[url(a.addr, "/echo"), url(b.addr, "/echo")])];
    let gw = start(c);
    for _ in 0..4 {
        let mut ws = connect(&ws_url(&gw, "/p")).await;
        roundtrip(&mut ws).await;
        ws.close(None).await.unwrap();
    }
    assert_eq!(a.seen.requests.lock().unwrap().len(), 2);
    assert_eq!(b.seen.requests.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn user_hash_keeps_a_user_on_one_upstream() {
    let (a, b) = (upstream(None).await, upstream(None).await);
    let mut c = config(1, DriverChoice::Auto);
    c.auth.hs256_secret = Some(SECRET.into());
    c.proxy = vec![ProxyRoute {
        balance: Balance::UserHash,
        ..route("/p", &[url(a.addr, "/echo"), url(b.addr, "/echo")])
    }];
    let gw = start(c);
    for _ in 0..3 {
        let mut ws = connect(&ws_url(&gw, &format!("/p?token={}", token("bob")))).await;
        roundtrip(&mut ws).await;
        ws.close(None).await.unwrap();
    }
    let counts = (
        a.seen.requests.lock().unwrap().len(),
        b.seen.requests.lock().unwrap().len(),
    );
    assert!(counts == (3, 0) || counts == (0, 3), "{counts:?}");
}

#[tokio::test]
async fn a_refusing_upstream_is_skipped() {
    let b = upstream(None).await;
    let mut c = config(1, DriverChoice::Auto);
    c.proxy = vec![ProxyRoute {
        retry_after_ms: 600_000,
        ..route("/p", &[url(dead_addr(), "/echo"), url(b.addr, "/echo")])
    }];
    let gw = start(c);
    for _ in 0..4 {
        let mut ws = connect(&ws_url(&gw, "/p")).await;
        roundtrip(&mut ws).await;
        ws.close(None).await.unwrap();
    }
    assert_eq!(b.seen.requests.lock().unwrap().len(), 4);
    assert_eq!(
        stat(&gw, |s| s.proxy_upstream_failures),
        1,
        "the refusing upstream was tried once, then skipped"
    );
}

#[tokio::test]
async fn wss_upstream_with_a_private_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let up = upstream(Some(Arc::new(server))).await;
    let mut c = config(1, DriverChoice::Auto);
    c.proxy = vec![ProxyRoute {
        ca_file: Some(ca),
        ..route("/p", &[format!("wss://127.0.0.1:{}/echo", up.addr.port())])
    }];
    let gw = start(c);
    let mut ws = connect(&ws_url(&gw, "/p")).await;
    roundtrip(&mut ws).await;

    // Without the CA the upstream's certificate is refused: 1014.
    let mut c = config(1, DriverChoice::Auto);
    c.proxy = vec![route(
        "/p",
        &[format!("wss://127.0.0.1:{}/echo", up.addr.port())],
    )];
    let gw = start(c);
    let mut s = raw::upgrade(gw.ws_addr().unwrap(), "/p").await;
    assert_eq!(read_close(&mut s).await, 1014);
}

async fn read_close(s: &mut tokio::net::TcpStream) -> u16 {
    tokio::time::timeout(PATIENCE, raw::read_close_code(s))
        .await
        .expect("close in time")
}

/// A client that does not read while its upstream floods: wsgate's relay buffers stay within their
/// bound, the upstream's sends block, and once the client reads, every message arrives in order.
/// 64 MiB is more than the kernel can buffer on the way (tcp_rmem/tcp_wmem maxima of 32 + 4 MiB on
/// the upstream hop, a 16 KiB receive buffer at the client), so "sent < all" means wsgate stopped
/// reading.
#[tokio::test]
async fn slow_client_does_not_grow_gateway_buffers() {
    const OUTBOUND: usize = 256 * 1024;
    const MAX_MESSAGE: usize = 128 * 1024;
    // The outbound queue, a message past it, a partial message and one socket read (see relay.rs).
    const BOUND: u64 = (OUTBOUND + 3 * MAX_MESSAGE + 128 * 1024) as u64;
    let up = upstream(None).await;
    let mut c = config(1, DriverChoice::Auto);
    c.limits.max_outbound_bytes = OUTBOUND;
    c.limits.max_message_size = MAX_MESSAGE;
    c.limits.idle_timeout_ms = 0;
    c.proxy = vec![route("/p", &[url(up.addr, "/flood")])];
    let gw = start(c);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(gw.ws_addr().unwrap()).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url(&gw, "/p"), stream)
        .await
        .unwrap();

    let buffered = || stat(&gw, |s| s.proxy_buffered_bytes);
    let mut most = 0;
    tokio::time::timeout(PATIENCE, async {
        while buffered() < OUTBOUND as u64 {
            most = most.max(buffered());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the client's queue fills up");
    for _ in 0..50 {
        most = most.max(buffered());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(most <= BOUND, "buffered {most} > {BOUND}");
    let sent = up.seen.flooded.load(Ordering::SeqCst);
    eprintln!("while the client read nothing: at most {most} bytes buffered, upstream sent {sent} of {FLOOD_MESSAGES}");
    assert!(
        sent < FLOOD_MESSAGES,
        "the upstream could send all {sent} messages to a client that reads nothing"
    );

    for i in 0..FLOOD_MESSAGES {
        most = most.max(buffered());
        match next_msg(&mut ws).await {
            Message::Binary(b) => {
                assert_eq!(b.len(), FLOOD_SIZE);
                assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), i as u64);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(most <= BOUND, "buffered {most} > {BOUND}");
    assert_eq!(u16::from(expect_close(&mut ws).await.code), 1000);
}

/// The other direction: an upstream that does not read while the client floods. wsgate stops reading
/// the client (whose sends then block) instead of queueing for the upstream.
#[tokio::test]
async fn slow_upstream_does_not_grow_gateway_buffers() {
    const OUTBOUND: usize = 256 * 1024;
    const MAX_MESSAGE: usize = 128 * 1024;
    const BOUND: u64 = (OUTBOUND + 3 * MAX_MESSAGE + 128 * 1024) as u64;
    let up = upstream(None).await;
    let mut c = config(1, DriverChoice::Auto);
    c.limits.max_outbound_bytes = OUTBOUND;
    c.limits.max_message_size = MAX_MESSAGE;
    c.limits.idle_timeout_ms = 0;
    c.proxy = vec![route("/p", &[url(up.addr, "/sink")])];
    let gw = start(c);
    let ws = connect(&ws_url(&gw, "/p")).await;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let flood = tokio::spawn(async move {
        let mut ws = ws;
        for _ in 0..FLOOD_MESSAGES {
            if ws.send(Message::Binary(vec![7; FLOOD_SIZE])).await.is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let buffered = || stat(&gw, |s| s.proxy_buffered_bytes);
    let mut most = 0;
    tokio::time::timeout(PATIENCE, async {
        while buffered() < OUTBOUND as u64 {
            most = most.max(buffered());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the upstream's queue fills up");
    for _ in 0..50 {
        most = most.max(buffered());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = sent.load(Ordering::SeqCst);
    eprintln!("while the upstream read nothing: at most {most} bytes buffered, client sent {sent} of {FLOOD_MESSAGES}");
    assert!(most <= BOUND, "buffered {most} > {BOUND}");
    assert!(sent < FLOOD_MESSAGES, "the client could send everything");
    assert!(!flood.is_finished());
    flood.abort();
}

#[tokio::test]
async fn pings_are_answered_per_hop_and_not_forwarded() {
    let up = upstream(None).await;
    let mut c = config(1, DriverChoice::Auto);
    c.proxy = vec![route("/p", &[url(up.addr, "/ping")])];
    let gw = start(c);
    let mut ws = connect(&ws_url(&gw, "/p")).await;
    // The upstream's ping is answered by wsgate and never reaches the client.
    let first = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first, Message::Text("pong ok".into()));
    // The client's ping is answered by wsgate and never reaches the upstream.
    ws.send(Message::Ping(b"client".to_vec())).await.unwrap();
    let pong = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"client".to_vec()));
    ws.close(None).await.unwrap();
    let _ = expect_close(&mut ws).await;
    assert_eq!(up.seen.pings.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_upstream_that_never_answers_the_handshake_times_out_with_1014() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let mut c = config(1, DriverChoice::Auto);
    c.proxy = vec![ProxyRoute {
        connect_timeout_ms: 200,
        ..route("/p", &[url(addr, "/echo")])
    }];
    let gw = start(c);
    let mut s = raw::upgrade(gw.ws_addr().unwrap(), "/p").await;
    assert_eq!(read_close(&mut s).await, 1014);
    assert_eq!(stat(&gw, |s| s.proxy_upstream_failures), 1);
    held.abort();
}

#[tokio::test]
async fn shutdown_closes_both_sides_with_1001() {
    let (up, gw) = echo_proxy().await;
    let mut ws = connect(&ws_url(&gw, "/p")).await;
    roundtrip(&mut ws).await;
    let stop = std::thread::spawn(move || gw.shutdown());
    assert_eq!(u16::from(expect_close(&mut ws).await.code), 1001);
    assert_eq!(upstream_closes(&up).await, vec![1001]);
    stop.join().unwrap();
}

/// The close codes the upstream received, once it received one.
async fn upstream_closes(up: &Upstream) -> Vec<u16> {
    tokio::time::timeout(PATIENCE, async {
        while up.seen.closes.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("upstream saw a close");
    up.seen.closes.lock().unwrap().clone()
}

fn proxy_key(toml: &str) -> String {
    let c = Config::from_toml(toml, std::path::Path::new("t.toml")).unwrap();
    c.validate().unwrap_err().to_string()
}

#[test]
fn bad_proxy_config_names_the_key() {
    let e = Config::from_toml(
        "[[proxy]]\npath = \"/p\"\nupstream = \"ws://127.0.0.1:1/\"\nupstram = \"x\"\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("upstram"), "{e}");
    let e = proxy_key("[[proxy]]\npath = \"p\"\nupstream = \"ws://127.0.0.1:1/\"\n");
    assert!(e.contains("proxy[0].path"), "{e}");
    let e = proxy_key("[[proxy]]\npath = \"/echo\"\nupstream = \"ws://127.0.0.1:1/\"\n");
    assert!(e.contains("proxy[0].path"), "{e}");
    let e = proxy_key(
        "[[proxy]]\npath = \"/a\"\nupstream = \"ws://127.0.0.1:1/\"\n\
         [[proxy]]\npath = \"/a\"\nupstream = \"ws://127.0.0.1:2/\"\n",
    );
    assert!(e.contains("proxy[1].path"), "{e}");
    let e = proxy_key("[[proxy]]\npath = \"/p\"\nupstream = \"http://127.0.0.1:1/\"\n");
    assert!(e.contains("proxy[0].upstream"), "{e}");
    let e = proxy_key("[[proxy]]\npath = \"/p\"\nupstreams = [\"ws://127.0.0.1:99999/\"]\n");
    assert!(e.contains("proxy[0].upstreams"), "{e}");
    let e = proxy_key("[[proxy]]\npath = \"/p\"\n");
    assert!(e.contains("proxy[0].upstream"), "{e}");
    let e = proxy_key(
        "[[proxy]]\npath = \"/p\"\nupstream = \"ws://127.0.0.1:1/\"\nauth_required = true\n",
    );
    assert!(e.contains("proxy[0].auth_required"), "{e}");
    let e = proxy_key(
        "[[proxy]]\npath = \"/p\"\nupstream = \"wss://127.0.0.1:1/\"\nca_file = \"/nonexistent.pem\"\n",
    );
    assert!(e.contains("proxy[0].ca_file"), "{e}");
    let e = proxy_key("[[proxy]]\npath = \"/p\"\nupstream = \"ws://127.0.0.1:1/\"\nuser_header = \"connection\"\n");
    assert!(e.contains("proxy[0].user_header"), "{e}");
    let e = Config::from_toml(
        "[[proxy]]\npath = \"/p\"\nupstream = \"ws://127.0.0.1:1/\"\nbalance = \"random\"\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("balance") || e.to_string().contains("random"),
        "{e}"
    );
}
