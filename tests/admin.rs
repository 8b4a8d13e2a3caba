//! The admin listener against the real gateway: publish API (single and batch, to every core),
//! direct messages, errors naming the field, body limit, API key, stats, readiness, Prometheus
//! metrics, the live event stream, and certificate reload without dropping sessions.

mod common;

use std::sync::Arc;

use common::raw;
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wsgate::DriverChoice;

#[tokio::test]
async fn publish_api_reaches_subscribers_on_every_core_in_order() {
    let gw = start(config(2, DriverChoice::Auto));
    let admin = gw.admin_addr().unwrap();
    let mut subs = Vec::new();
    for i in 0..12 {
        let mut ws = connect(&ws_url(&gw, "/ws")).await;
        subscribe(&mut ws, "news", i).await;
        subs.push(ws);
    }
    assert!(
        gw.stats().iter().all(|s| s.sessions > 0),
        "subscribers on both cores"
    );
    let (status, body) = http(
        admin,
        "POST",
        "/api/publish",
        &[],
        r#"{"topic":"news","data":{"n":0}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["published"], 1);
    let batch = r#"[{"topic":"news","data":{"n":1}},{"topic":"news","data":{"n":2}},{"topic":"news","data":{"n":3}}]"#;
    let (status, body) = http(admin, "POST", "/api/publish", &[], batch).await;
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["published"].clone()
        ),
        (200, json!(3))
    );
    for ws in subs.iter_mut() {
        for n in 0..4 {
            assert_eq!(
                next_json(ws).await,
                json!({"type":"message","topic":"news","data":{"n":n}})
            );
        }
    }
}

#[tokio::test]
async fn bad_requests_name_the_field_and_bodies_are_limited() {
    let mut c = config(1, DriverChoice::Auto);
    c.admin.max_body_bytes = 1000;
    let gw = start(c);
    let admin = gw.admin_addr().unwrap();
    let cases = [
        (r#"{"data":1}"#, "topic"),
        (r#"{"topic":"t"}"#, "data"),
        (r#"{"topic":"","data":1}"#, "topic"),
        (
            r#"[{"topic":"ok","data":1},{"topic":"bad\nname","data":1}]"#,
            "topic",
        ),
    ];
    for (body, field) in cases {
        let (status, resp) = http(admin, "POST", "/api/publish", &[], body).await;
        assert_eq!(status, 400, "{body}: {resp}");
        let v: Value = serde_json::from_str(&resp).expect("JSON error body");
        assert_eq!(v["field"], field, "{body}: {resp}");
    }
    let (status, resp) = http(admin, "POST", "/api/publish", &[], "{not json").await;
    assert_eq!(status, 400, "{resp}");
    let big = format!(r#"{{"topic":"t","data":"{}"}}"#, "x".repeat(2000));
    assert_eq!(http(admin, "POST", "/api/publish", &[], &big).await.0, 413);
    assert_eq!(http(admin, "GET", "/api/publish", &[], "").await.0, 405);
    assert_eq!(http(admin, "GET", "/nope", &[], "").await.0, 404);
}

#[tokio::test]
async fn api_key_protects_everything_but_health() {
    let mut c = config(1, DriverChoice::Auto);
    c.admin.api_key = Some("s3cret".into());
    let gw = start(c);
    let admin = gw.admin_addr().unwrap();
    assert_eq!(http(admin, "GET", "/healthz", &[], "").await.0, 200);
    assert_eq!(http(admin, "GET", "/readyz", &[], "").await.0, 200);
    for path in ["/api/stats", "/metrics", "/"] {
        assert_eq!(http(admin, "GET", path, &[], "").await.0, 401, "{path}");
        assert_eq!(
            http(admin, "GET", path, &[("Authorization", "Bearer wrong")], "")
                .await
                .0,
            401
        );
        assert_eq!(
            http(
                admin,
                "GET",
                path,
                &[("Authorization", "Bearer s3cret")],
                ""
            )
            .await
            .0,
            200
        );
    }
    assert_eq!(
        http(admin, "GET", "/api/stats?key=s3cret", &[], "").await.0,
        200
    );
    let publish = r#"{"topic":"t","data":1}"#;
    assert_eq!(
        http(admin, "POST", "/api/publish", &[], publish).await.0,
        401
    );
}

#[tokio::test]
async fn stats_metrics_and_live_stream_reflect_traffic() {
    let gw = start(config(2, DriverChoice::Auto));
    let admin = gw.admin_addr().unwrap();
    let mut sub = connect(&ws_url(&gw, "/ws")).await;
    subscribe(&mut sub, "m", 1).await;
    let mut wss = connect_tls(&gw, "/echo").await;
    wss.send(Message::Text("x".into())).await.unwrap();
    next_msg(&mut wss).await;
    let mut publisher = connect(&ws_url(&gw, "/ws")).await;
    for i in 0..10 {
        send_json(
            &mut publisher,
            json!({"type":"publish","topic":"m","data":i,"id":i}),
        )
        .await;
        next_json(&mut publisher).await;
        next_json(&mut sub).await;
    }
    let (status, body) = http(admin, "GET", "/api/stats", &[], "").await;
    assert_eq!(status, 200);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["sessions"], 3);
    assert_eq!(s["publishes"], 10);
    assert_eq!(s["deliveries"], 10);
    assert_eq!(s["cores"].as_array().unwrap().len(), 2);
    assert!(s["cores"][0]["driver"].is_string());
    assert!(s["messages_out"].as_u64().unwrap() >= 21, "{s}");
    // Latency summaries are refreshed once a second by each core.
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let (status, metrics) = http(admin, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    for needle in [
        "wsgate_sessions{core=\"0\"}",
        "wsgate_publishes_total{core=",
        "wsgate_upgrades_total{core=",
        "transport=\"tls\"",
        "wsgate_publish_to_write_seconds_bucket{",
        "wsgate_handshake_duration_seconds_count{",
        "wsgate_dropped_messages_total{core=\"0\",reason=\"slow_consumer\"} 0",
        "wsgate_core_driver{",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}");
    }
    let sum = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(sum("wsgate_publishes_total"), 10.0);
    assert_eq!(sum("wsgate_publish_to_write_seconds_count"), 10.0);
    // The live stream pushes stats documents.
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /api/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches("data: {").count() < 2 {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream ended");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("text/event-stream"));
}

#[tokio::test]
async fn direct_messages_through_the_api() {
    let mut c = config(2, DriverChoice::Auto);
    c.auth.hs256_secret = Some("k".into());
    let gw = start(c);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"carol","exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"k"),
    )
    .unwrap();
    let mut ws = connect(&ws_url(&gw, &format!("/ws?token={token}"))).await;
    subscribe(&mut ws, "sync", 1).await;
    let (status, body) = http(
        gw.admin_addr().unwrap(),
        "POST",
        "/api/direct",
        &[],
        r#"{"to":"carol","data":"hi"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type":"message","from":"api","data":"hi"})
    );
    let (status, body) = http(
        gw.admin_addr().unwrap(),
        "POST",
        "/api/direct",
        &[],
        r#"{"data":"hi"}"#,
    )
    .await;
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["field"].clone()
        ),
        (400, json!("to"))
    );
}

fn write_cert(dir: &std::path::Path, name: &str) -> rcgen::CertifiedKey {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), ck.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), ck.key_pair.serialize_pem()).unwrap();
    ck
}

async fn wss_trusting(gw: &wsgate::Gateway, roots: &[&rcgen::CertifiedKey]) -> Ws {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.cert.der().clone()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let url = format!("wss://localhost:{}/echo", gw.wss_addr().unwrap().port());
    tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        true,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(cfg))),
    )
    .await
    .expect("wss connect")
    .0
}

fn served_cert(ws: &Ws) -> Vec<u8> {
    match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Rustls(tls) => {
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        }
        _ => panic!("not TLS"),
    }
}

#[tokio::test]
async fn certificate_reload_keeps_sessions_and_serves_the_new_cert() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_cert(dir.path(), "a");
    let b = write_cert(dir.path(), "b");
    let (crt, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(dir.path().join("a.crt"), &crt).unwrap();
    std::fs::copy(dir.path().join("a.key"), &key).unwrap();
    let mut c = config(2, DriverChoice::Auto);
    c.tls.cert = Some(crt.clone());
    c.tls.key = Some(key.clone());
    let gw = start(c);
    let mut old = wss_trusting(&gw, &[&a, &b]).await;
    assert_eq!(served_cert(&old), a.cert.der().to_vec());

    std::fs::copy(dir.path().join("b.crt"), &crt).unwrap();
    std::fs::copy(dir.path().join("b.key"), &key).unwrap();
    let (status, body) = http(gw.admin_addr().unwrap(), "POST", "/api/reload", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let new = wss_trusting(&gw, &[&a, &b]).await;
    assert_eq!(served_cert(&new), b.cert.der().to_vec());
    old.send(Message::Text("old session".into())).await.unwrap();
    assert_eq!(
        next_msg(&mut old).await,
        Message::Text("old session".into())
    );

    // A broken new certificate is refused and the current one stays.
    std::fs::write(&crt, "garbage").unwrap();
    let (status, body) = http(gw.admin_addr().unwrap(), "POST", "/api/reload", &[], "").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("tls.cert"), "{body}");
    // A key that does not match the certificate is refused too.
    std::fs::copy(dir.path().join("b.crt"), &crt).unwrap();
    std::fs::copy(dir.path().join("a.key"), &key).unwrap();
    assert!(gw.reload().map(|_| ()).unwrap_err().contains("tls"));
    let again = wss_trusting(&gw, &[&a, &b]).await;
    assert_eq!(served_cert(&again), b.cert.der().to_vec());
    assert_eq!(gw.current_certificate_der(), Some(b.cert.der().to_vec()));
}

/// Every series the shipped Grafana dashboard queries exists in a real scrape.
#[tokio::test]
async fn grafana_dashboard_uses_only_exported_metrics() {
    let gw = start(config(1, DriverChoice::Auto));
    let (_, metrics) = http(gw.admin_addr().unwrap(), "GET", "/metrics", &[], "").await;
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana-dashboard.json"
    ))
    .unwrap();
    let _: Value = serde_json::from_str(&dash).expect("dashboard is JSON");
    let mut used: Vec<&str> = dash
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("wsgate_"))
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() > 10);
    for name in used {
        assert!(
            metrics.contains(&format!("\n{name}")) || metrics.contains(&format!("\n{name}{{")),
            "dashboard uses {name}, not in /metrics"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_draining() {
    let mut c = config(1, DriverChoice::Auto);
    c.limits.close_timeout_ms = 3000;
    c.limits.shutdown_grace_ms = 3000;
    let gw = start(c);
    let admin = gw.admin_addr().unwrap();
    assert_eq!(http(admin, "GET", "/readyz", &[], "").await.0, 200);
    // A session that never answers the close handshake keeps the gateway draining for a while.
    let _silent = raw::upgrade(gw.ws_addr().unwrap(), "/ws").await;
    let handle = gw.shutdown_handle();
    handle.shutdown();
    let (status, body) = http(admin, "GET", "/readyz", &[], "").await;
    assert_eq!((status, body.as_str()), (503, "not ready"));
    assert_eq!(
        http(admin, "GET", "/healthz", &[], "").await.0,
        200,
        "still alive while draining"
    );
    tokio::task::spawn_blocking(move || drop(gw)).await.unwrap();
}
