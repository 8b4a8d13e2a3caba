//! Who gets in and what protects everyone else: JWT auth (HS256/RS256/ES256, header, query and
//! subprotocol forms), topic permissions, direct messages, Origin allowlist, connection limits,
//! handshake deadlines under a slowloris flood, rate limits, heartbeats, vanished clients, shutdown.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use wsgate::config::RouteName;
use wsgate::{Config, DriverChoice, Gateway};

const SECRET: &str = "test-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn auth_config() -> Config {
    let mut c = config(2, DriverChoice::Auto);
    c.auth.required_on = vec![RouteName::Pubsub];
    c.auth.hs256_secret = Some(SECRET.into());
    c
}

/// Status of an upgrade attempt (101 on success), plus the response's subprotocol.
async fn try_upgrade(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    let mut req = ws_url(gw, path).into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(hyper_name(k), v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_ws, resp)) => (
            resp.status().as_u16(),
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_string()),
        ),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (resp.status().as_u16(), None),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn hyper_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    k.parse().unwrap()
}

async fn connect_with(gw: &Gateway, path: &str, token: &str) -> Ws {
    let mut req = ws_url(gw, path).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

#[tokio::test]
async fn jwt_is_required_and_verified_in_every_form() {
    let gw = start(auth_config());
    let good = hs256(json!({"sub":"alice","exp":now()+600}));
    assert_eq!(try_upgrade(&gw, "/ws", &[]).await.0, 401);
    assert_eq!(
        try_upgrade(&gw, "/ws", &[("authorization", "Bearer not.a.jwt")])
            .await
            .0,
        401
    );
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"alice","exp":now()+600}),
        &EncodingKey::from_secret(b"other"),
    )
    .unwrap();
    assert_eq!(
        try_upgrade(
            &gw,
            "/ws",
            &[("authorization", &format!("Bearer {forged}"))]
        )
        .await
        .0,
        401
    );
    let expired = hs256(json!({"sub":"alice","exp":now()-3600}));
    assert_eq!(
        try_upgrade(
            &gw,
            "/ws",
            &[("authorization", &format!("Bearer {expired}"))]
        )
        .await
        .0,
        401
    );
    let early = hs256(json!({"sub":"alice","exp":now()+7200,"nbf":now()+3600}));
    assert_eq!(
        try_upgrade(&gw, "/ws", &[("authorization", &format!("Bearer {early}"))])
            .await
            .0,
        401
    );

    assert_eq!(
        try_upgrade(&gw, "/ws", &[("authorization", &format!("Bearer {good}"))])
            .await
            .0,
        101
    );
    assert_eq!(
        try_upgrade(&gw, &format!("/ws?token={good}"), &[]).await.0,
        101
    );
    let proto = format!("wsgate.v1, bearer.{good}");
    assert_eq!(
        try_upgrade(&gw, "/ws", &[("sec-websocket-protocol", &proto)]).await,
        (101, Some("wsgate.v1".to_string()))
    );
    // The echo route does not require a token, but a bad one is still refused.
    assert_eq!(try_upgrade(&gw, "/echo", &[]).await.0, 101);
    assert_eq!(
        try_upgrade(&gw, "/echo", &[("authorization", "Bearer bad")])
            .await
            .0,
        401
    );
    let failures: u64 = gw.stats().iter().map(|s| s.auth_failures).sum();
    assert_eq!(failures, 6);
}

#[tokio::test]
async fn rs256_and_es256_keys_with_issuer_and_audience() {
    let dir = tempfile::tempdir().unwrap();
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let es_pub = dir.path().join("es.pub.pem");
    std::fs::write(&es_pub, es.public_key_pem()).unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut c = config(1, DriverChoice::Auto);
    c.auth.required_on = vec![RouteName::Pubsub, RouteName::Echo];
    c.auth.rs256_public_key = Some(format!("{fixtures}/jwt-rs256.pub.pem").into());
    c.auth.es256_public_key = Some(es_pub);
    c.auth.issuer = Some("https://issuer.test".into());
    c.auth.audience = Some("wsgate".into());
    let gw = start(c);
    let claims = json!({"sub":"u1","exp":now()+600,"iss":"https://issuer.test","aud":"wsgate"});
    let rsa_key = std::fs::read(format!("{fixtures}/jwt-rs256.key.pem")).unwrap();
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&rsa_key).unwrap(),
    )
    .unwrap();
    let es_tok = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    for t in [&rs, &es_tok] {
        assert_eq!(
            try_upgrade(&gw, "/echo", &[("authorization", &format!("Bearer {t}"))])
                .await
                .0,
            101
        );
    }
    let wrong_aud = json!({"sub":"u1","exp":now()+600,"iss":"https://issuer.test","aud":"other"});
    let t = encode(
        &Header::new(Algorithm::RS256),
        &wrong_aud,
        &EncodingKey::from_rsa_pem(&rsa_key).unwrap(),
    )
    .unwrap();
    assert_eq!(
        try_upgrade(&gw, "/echo", &[("authorization", &format!("Bearer {t}"))])
            .await
            .0,
        401
    );
    // HS256 is not configured here: refused.
    let hs = hs256(claims);
    assert_eq!(
        try_upgrade(&gw, "/echo", &[("authorization", &format!("Bearer {hs}"))])
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn topics_claim_limits_subscribe_and_publish() {
    let gw = start(auth_config());
    let tok = hs256(json!({"sub":"bob","exp":now()+600,"topics":["chat.*","news"]}));
    let mut ws = connect_with(&gw, "/ws", &tok).await;
    subscribe(&mut ws, "chat.room1", 1).await;
    subscribe(&mut ws, "news", 2).await;
    send_json(&mut ws, json!({"type":"subscribe","topic":"secret","id":3})).await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), &e["id"]),
        (Some("forbidden"), &json!(3))
    );
    send_json(
        &mut ws,
        json!({"type":"publish","topic":"newsroom","data":1,"id":4}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), &e["id"]),
        (Some("forbidden"), &json!(4))
    );
    // Still open and working.
    send_json(
        &mut ws,
        json!({"type":"publish","topic":"chat.room1","data":"ok","id":5}),
    )
    .await;
    let mut got = [next_json(&mut ws).await, next_json(&mut ws).await];
    got.sort_by_key(|v| v["type"].as_str().map(str::to_owned));
    assert_eq!(got[0], json!({"type":"ack","id":5}));
    assert_eq!(
        got[1],
        json!({"type":"message","topic":"chat.room1","data":"ok"})
    );
}

#[tokio::test]
async fn direct_messages_reach_every_session_of_a_user_on_every_core() {
    let gw = start(auth_config());
    let alice = hs256(json!({"sub":"alice","exp":now()+600}));
    let bob = hs256(json!({"sub":"bob","exp":now()+600}));
    // Enough alice sessions that both cores have some.
    let mut alices = Vec::new();
    for i in 0..12 {
        let mut ws = connect_with(&gw, "/ws", &alice).await;
        subscribe(&mut ws, "sync", i).await; // the ack proves the session is registered
        alices.push(ws);
    }
    let per_core: Vec<u64> = gw.stats().iter().map(|s| s.sessions).collect();
    let mut b = connect_with(&gw, "/ws", &bob).await;
    send_json(
        &mut b,
        json!({"type":"direct","to":"alice","data":{"hi":1},"id":"d1"}),
    )
    .await;
    assert_eq!(next_json(&mut b).await, json!({"type":"ack","id":"d1"}));
    for ws in alices.iter_mut() {
        assert_eq!(
            next_json(ws).await,
            json!({"type":"message","from":"bob","data":{"hi":1}})
        );
    }
    assert!(
        per_core.iter().all(|&n| n > 0),
        "alice has sessions on every core: {per_core:?}"
    );
    // Without a token there is no sender identity.
    let mut c = config(1, DriverChoice::Auto);
    c.auth.hs256_secret = Some(SECRET.into());
    let open = start(c);
    let mut anon = connect(&ws_url(&open, "/ws")).await;
    send_json(
        &mut anon,
        json!({"type":"direct","to":"alice","data":1,"id":9}),
    )
    .await;
    let e = next_json(&mut anon).await;
    assert_eq!(
        (e["code"].as_str(), &e["id"]),
        (Some("unauthorized"), &json!(9))
    );
}

#[tokio::test]
async fn origin_allowlist() {
    let mut c = config(1, DriverChoice::Auto);
    c.origin.allowed = vec!["https://good.example".into()];
    let gw = start(c);
    assert_eq!(
        try_upgrade(&gw, "/ws", &[("origin", "https://evil.example")])
            .await
            .0,
        403
    );
    assert_eq!(
        try_upgrade(&gw, "/ws", &[("origin", "https://good.example")])
            .await
            .0,
        101
    );
    assert_eq!(try_upgrade(&gw, "/ws", &[]).await.0, 101);
}

#[tokio::test]
async fn global_and_per_ip_connection_limits() {
    let mut c = config(2, DriverChoice::Auto);
    c.limits.max_connections = 4;
    c.limits.max_connections_per_ip = 2;
    let gw = start(c);
    let port = gw.ws_addr().unwrap().port();
    let from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind((ip, 0).into()).unwrap();
            let stream = sock.connect(([127, 0, 0, 1], port).into()).await.unwrap();
            let url = format!("ws://127.0.0.1:{port}/ws");
            match tokio_tungstenite::client_async(url, stream).await {
                Ok((ws, _)) => Ok(ws),
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
                Err(e) => panic!("{e}"),
            }
        }
    };
    let a1 = from("127.0.0.1").await.unwrap();
    let a2 = from("127.0.0.1").await.unwrap();
    assert_eq!(from("127.0.0.1").await.err(), Some(429));
    // The refused connection is closed by the gateway and leaves the counters.
    wait_until(|| gw.open_connections() == 2).await;
    let b1 = from("127.0.0.2").await.unwrap();
    let b2 = from("127.0.0.2").await.unwrap();
    assert_eq!(from("127.0.0.3").await.err(), Some(503));
    assert_eq!(gw.connections_from("127.0.0.1".parse().unwrap()), 2);
    drop((a1, a2, b1, b2));
    wait_until(|| gw.open_connections() == 0).await;
    assert!(from("127.0.0.3").await.is_ok());
    let s = gw.stats();
    assert_eq!(s.iter().map(|c| c.rejected_per_ip).sum::<u64>(), 1);
    assert_eq!(s.iter().map(|c| c.rejected_capacity).sum::<u64>(), 1);
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in time");
}

#[tokio::test]
async fn slowloris_flood_does_not_block_new_clients() {
    let mut c = config(2, DriverChoice::Auto);
    c.limits.handshake_timeout_ms = 500;
    let gw = start(c);
    let addr = gw.wss_addr().unwrap();
    let plain = gw.ws_addr().unwrap();
    // 300 connections that never finish their handshake (half TLS, half a partial HTTP request).
    let mut idle = Vec::new();
    for i in 0..300 {
        let target = if i % 2 == 0 { addr } else { plain };
        let mut s = TcpStream::connect(target).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(s);
    }
    // A real client still gets in and works, over ws and wss.
    let mut ws = connect(&ws_url(&gw, "/echo")).await;
    ws.send(Message::Text("alive".into())).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::Text("alive".into()));
    let mut wss = connect_tls(&gw, "/echo").await;
    wss.send(Message::Text("alive".into())).await.unwrap();
    assert_eq!(next_msg(&mut wss).await, Message::Text("alive".into()));
    // The flood is cut off by the handshake deadline.
    wait_until(|| gw.stats().iter().map(|s| s.handshake_timeouts).sum::<u64>() >= 300).await;
    for s in idle.iter_mut() {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "closed by the gateway");
    }
}

#[tokio::test]
async fn rate_limit_errors_then_closes_1008() {
    let mut c = config(1, DriverChoice::Auto);
    c.limits.rate_limit_per_sec = 5;
    c.limits.rate_limit_burst = 5;
    c.limits.rate_limit_close_after = 20;
    let gw = start(c);
    let mut ws = connect(&ws_url(&gw, "/ws")).await;
    for i in 0..8 {
        send_json(
            &mut ws,
            json!({"type":"publish","topic":"t","data":i,"id":i}),
        )
        .await;
    }
    let mut acks = 0;
    let mut limited = 0;
    for _ in 0..8 {
        let m = next_json(&mut ws).await;
        match m["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert_eq!(m["code"], "rate_limited");
                assert!(m["id"].is_number(), "error carries the id: {m}");
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(acks >= 5 && limited >= 1, "acks {acks}, limited {limited}");
    for i in 0..40 {
        if ws
            .send(Message::Text(
                json!({"type":"publish","topic":"t","data":i}).to_string(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(expect_close(&mut ws).await.code, CloseCode::Policy);
}

#[tokio::test]
async fn heartbeats_keep_live_clients_and_close_silent_ones() {
    let mut c = config(1, DriverChoice::Auto);
    c.limits.ping_interval_ms = 100;
    c.limits.idle_timeout_ms = 400;
    let gw = start(c);
    // A silent raw client: upgrades, then never sends anything (not even pongs).
    let mut raw = TcpStream::connect(gw.ws_addr().unwrap()).await.unwrap();
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    // A live client answers pings (tungstenite replies while it reads).
    let mut live = connect(&ws_url(&gw, "/ws")).await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Ok(m) = tokio::time::timeout_at(until, live.next()).await {
        match m.unwrap().unwrap() {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "got {pings} pings");
    subscribe(&mut live, "still-here", 1).await;
    // The silent one was closed with 1001 "idle timeout" (after its 101 and some pings).
    let mut all = Vec::new();
    tokio::time::timeout(PATIENCE, raw.read_to_end(&mut all))
        .await
        .unwrap()
        .ok();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let close = [0x88u8, 14, 0x03, 0xe9];
    assert!(
        all.windows(4).any(|w| w == close),
        "close 1001 frame present"
    );
    assert!(text.contains("idle timeout"));
    assert!(gw.stats()[0].idle_timeouts >= 1);
}

#[tokio::test]
async fn vanished_clients_free_everything() {
    let mut c = config(2, DriverChoice::Auto);
    c.limits.max_connections_per_ip = 1000;
    let gw = start(c);
    let mut clients = Vec::new();
    for i in 0..24u64 {
        let mut ws = connect(&ws_url(&gw, "/ws")).await;
        subscribe(&mut ws, &format!("topic-{}", i % 5), i).await;
        subscribe(&mut ws, "shared", 100 + i).await;
        clients.push(ws);
    }
    let s = gw.stats();
    assert_eq!(s.iter().map(|c| c.subscriptions).sum::<u64>(), 48);
    assert!(
        s.iter().all(|c| c.sessions > 0),
        "sessions on both cores: {s:?}"
    );
    // Vanish: TCP reset, no close frame.
    for ws in clients {
        if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
            socket2::SockRef::from(tcp)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(ws);
    }
    wait_until(|| {
        let s = gw.stats();
        s.iter()
            .all(|c| c.sessions == 0 && c.subscriptions == 0 && c.topics == 0 && c.connections == 0)
    })
    .await;
    assert_eq!(gw.open_connections(), 0);
    assert_eq!(gw.connections_from("127.0.0.1".parse().unwrap()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_what_was_published_then_1001() {
    let gw = start(config(2, DriverChoice::Auto));
    let mut subs = Vec::new();
    for i in 0..8 {
        let mut ws = connect(&ws_url(&gw, "/ws")).await;
        subscribe(&mut ws, "last-words", i).await;
        subs.push(ws);
    }
    let mut publisher = connect(&ws_url(&gw, "/ws")).await;
    for seq in 0..200 {
        send_json(
            &mut publisher,
            json!({"type":"publish","topic":"last-words","data":seq,"id":seq}),
        )
        .await;
        assert_eq!(
            next_json(&mut publisher).await,
            json!({"type":"ack","id":seq})
        );
    }
    let stopper = std::thread::spawn(move || gw.shutdown());
    for ws in subs.iter_mut() {
        for seq in 0..200 {
            assert_eq!(
                next_json(ws).await,
                json!({"type":"message","topic":"last-words","data":seq})
            );
        }
        assert_eq!(expect_close(ws).await.code, CloseCode::Away);
    }
    drop((subs, publisher));
    stopper.join().unwrap();
}
