//! The cluster bus against a real `redis-server` (started here on a free port; `.ci/run` installs
//! it): two gateway nodes in one process, subscribers and publishers on both, Redis killed and
//! restarted mid-test.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use wsgate::config::Sharded;
use wsgate::{DriverChoice, Gateway};

/// A `redis-server` child on 127.0.0.1:`port`, killed on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut r = Redis { port, child: None };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `redis-server` ({e}): the cluster tests need a real Redis; install it \
                     with `apt-get install redis-server` (.ci/run does)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One RESP command over a fresh connection; returns the raw reply.
    fn command(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("redis");
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).expect("send");
        s.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("reply");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn node(redis: &Redis, id: &str, cores: usize, sharded: Sharded) -> Gateway {
    let mut c = config(cores, DriverChoice::Auto);
    c.listen.wss = "off".into();
    c.cluster.redis_url = Some(redis.url());
    c.cluster.node_id = Some(id.into());
    c.cluster.sharded = sharded;
    c.cluster.reconnect_min_ms = 50;
    c.cluster.reconnect_max_ms = 200;
    c.auth.hs256_secret = Some("cluster-secret".into());
    start(c)
}

async fn stats(gw: &Gateway) -> Value {
    let (status, body) = http(
        gw.admin_addr().expect("admin"),
        "GET",
        "/api/stats",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("stats JSON")
}

/// Wait until every node's bridge reports Redis `state` ("up"/"down").
async fn wait_redis(nodes: &[&Gateway], state: &str) {
    let deadline = Instant::now() + PATIENCE;
    for gw in nodes {
        loop {
            let s = stats(gw).await;
            if s["cluster"]["redis"] == state {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster bus never became {state}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn publish_via_api(gw: &Gateway, topic: &str, data: Value) {
    let body = json!({"topic": topic, "data": data}).to_string();
    let (status, resp) = http(
        gw.admin_addr().expect("admin"),
        "POST",
        "/api/publish",
        &[],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{resp}");
}

/// Read `n` messages on `topic` and return them by publisher, in arrival order.
async fn collect(ws: &mut Ws, n: usize) -> HashMap<String, Vec<u64>> {
    let mut by = HashMap::<String, Vec<u64>>::new();
    for _ in 0..n {
        let m = next_json(ws).await;
        assert_eq!(m["type"], "message", "{m}");
        let p = m["data"]["p"].as_str().expect("publisher").to_string();
        by.entry(p)
            .or_default()
            .push(m["data"]["n"].as_u64().expect("seq"));
    }
    by
}

/// Nothing more arrives: a request round trip (answered in order after anything already queued)
/// proves the session is live and that no extra message was waiting.
async fn assert_quiet(ws: &mut Ws, id: u64) {
    send_json(ws, json!({"type":"marker","id":id})).await;
    let m = next_json(ws).await;
    assert_eq!(
        (m["type"].as_str(), m["id"].as_u64()),
        (Some("error"), Some(id)),
        "unexpected message instead of the marker's answer: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_every_publish_once_in_order() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", 2, Sharded::Auto);
    let b = node(&redis, "node-b", 1, Sharded::Auto);
    wait_redis(&[&a, &b], "up").await;
    assert_eq!(
        stats(&a).await["cluster"]["sharded"],
        true,
        "Redis 7 -> sharded pub/sub"
    );

    let mut subs = Vec::new();
    for gw in [&a, &a, &a, &b, &b, &b] {
        let mut ws = connect(&ws_url(gw, "/ws")).await;
        subscribe(&mut ws, "room", 1).await;
        subs.push(ws);
    }
    let mut pub_a = connect(&ws_url(&a, "/ws")).await;
    let mut pub_b = connect(&ws_url(&b, "/ws")).await;
    const N: u64 = 40;
    for n in 0..N {
        for (p, ws) in [("a", &mut pub_a), ("b", &mut pub_b)] {
            send_json(
                ws,
                json!({"type":"publish","topic":"room","data":{"p":p,"n":n}}),
            )
            .await;
        }
        publish_via_api(&b, "room", json!({"p":"api-b","n":n})).await;
    }
    let want: Vec<u64> = (0..N).collect();
    for (i, ws) in subs.iter_mut().enumerate() {
        let got = collect(ws, 3 * N as usize).await;
        for p in ["a", "b", "api-b"] {
            assert_eq!(got.get(p), Some(&want), "subscriber {i}, publisher {p}");
        }
        assert_quiet(ws, 99).await;
    }
    let sa = stats(&a).await;
    assert_eq!(
        sa["cluster"]["sent"], N,
        "node a sends its client's publishes once: {sa}"
    );
    assert_eq!(sa["cluster"]["received"], 2 * N, "{sa}");

    // Unsubscribing the last local subscriber leaves the Redis channel.
    let channels = |r: &Redis| r.command(&["PUBSUB", "SHARDNUMSUB", "wsgate:t:room"]);
    assert!(channels(&redis).ends_with(":2\r\n"), "{}", channels(&redis));
    for ws in subs.iter_mut().skip(3) {
        send_json(ws, json!({"type":"unsubscribe","topic":"room","id":5})).await;
        assert_eq!(next_json(ws).await, json!({"type":"ack","id":5}));
    }
    let deadline = Instant::now() + PATIENCE;
    while !channels(&redis).ends_with(":1\r\n") {
        assert!(
            Instant::now() < deadline,
            "node b kept its channel: {}",
            channels(&redis)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_and_backend_publishes_cross_nodes() {
    let redis = Redis::start();
    let a = node(&redis, "node-a", 1, Sharded::Auto);
    let b = node(&redis, "node-b", 2, Sharded::Auto);
    wait_redis(&[&a, &b], "up").await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"dana","exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"cluster-secret"),
    )
    .expect("token");
    let mut on_a = connect(&ws_url(&a, &format!("/ws?token={token}"))).await;
    let mut on_b = connect(&ws_url(&b, &format!("/ws?token={token}"))).await;
    subscribe(&mut on_a, "prices", 1).await;
    subscribe(&mut on_b, "prices", 1).await;

    let (status, body) = http(
        b.admin_addr().expect("admin"),
        "POST",
        "/api/direct",
        &[],
        r#"{"to":"dana","data":{"hello":1}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(
            next_json(ws).await,
            json!({"type":"message","from":"api","data":{"hello":1}})
        );
        assert_quiet(ws, 2).await;
    }

    // A backend publishes plain JSON straight to Redis: every node delivers it once.
    let reply = redis.command(&["SPUBLISH", "wsgate:t:prices", r#"{"eur":1.08}"#]);
    assert_eq!(reply, ":2\r\n", "both nodes subscribed");
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(
            next_json(ws).await,
            json!({"type":"message","topic":"prices","data":{"eur":1.08}})
        );
    }
    // Not JSON: dropped and counted, and the sessions are unharmed.
    redis.command(&["SPUBLISH", "wsgate:t:prices", "{not json"]);
    redis.command(&["SPUBLISH", "wsgate:t:prices", "\u{0}wg1garbage"]);
    for ws in [&mut on_a, &mut on_b] {
        assert_quiet(ws, 3).await;
    }
    let deadline = Instant::now() + PATIENCE;
    while stats(&a).await["cluster"]["dropped_incoming"] != 2 {
        assert!(Instant::now() < deadline, "{}", stats(&a).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_after_redis_restarts() {
    let mut redis = Redis::start();
    let a = node(&redis, "node-a", 2, Sharded::Off);
    let b = node(&redis, "node-b", 1, Sharded::Off);
    wait_redis(&[&a, &b], "up").await;
    assert_eq!(stats(&a).await["cluster"]["sharded"], false);
    let mut sub_a = connect(&ws_url(&a, "/ws")).await;
    let mut sub_b = connect(&ws_url(&b, "/ws")).await;
    subscribe(&mut sub_a, "feed", 1).await;
    subscribe(&mut sub_b, "feed", 1).await;
    publish_via_api(&a, "feed", json!({"p":"a","n":0})).await;
    for ws in [&mut sub_a, &mut sub_b] {
        assert_eq!(collect(ws, 1).await["a"], vec![0]);
    }

    redis.kill();
    wait_redis(&[&a, &b], "down").await;
    let (status, body) = http(a.admin_addr().expect("admin"), "GET", "/readyz", &[], "").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready; cluster bus: down (Redis unreachable)")
    );
    let (_, metrics) = http(a.admin_addr().expect("admin"), "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("wsgate_cluster_redis_up{node=\"node-a\"} 0"),
        "{metrics}"
    );
    // Local delivery goes on; node b misses this one (documented).
    publish_via_api(&a, "feed", json!({"p":"a","n":1})).await;
    assert_eq!(collect(&mut sub_a, 1).await["a"], vec![1]);
    // A subscription made while Redis is down is acked at once and made in Redis when it is back.
    let mut late_b = connect(&ws_url(&b, "/ws")).await;
    subscribe(&mut late_b, "late", 1).await;

    redis.restart();
    wait_redis(&[&a, &b], "up").await;
    publish_via_api(&a, "feed", json!({"p":"a","n":2})).await;
    publish_via_api(&a, "late", json!({"p":"a","n":3})).await;
    assert_eq!(collect(&mut sub_a, 1).await["a"], vec![2]);
    assert_eq!(
        collect(&mut sub_b, 1).await["a"],
        vec![2],
        "b missed n=1 only"
    );
    assert_eq!(collect(&mut late_b, 1).await["a"], vec![3]);
    assert_quiet(&mut sub_b, 4).await;
    let sa = stats(&a).await;
    assert_eq!(sa["cluster"]["not_forwarded"], 1, "{sa}");
    assert_eq!(sa["cluster"]["reconnects"], 1, "{sa}");
    let (_, metrics) = http(a.admin_addr().expect("admin"), "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("wsgate_cluster_redis_up{node=\"node-a\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_node_starts_while_redis_is_down_and_joins_later() {
    let mut redis = Redis::start();
    redis.kill();
    let mut c = config(1, DriverChoice::Auto);
    c.cluster.redis_url = Some(redis.url());
    c.cluster.reconnect_min_ms = 50;
    c.cluster.reconnect_max_ms = 100;
    c.cluster.ready_requires_redis = true;
    let gw = start(c);
    let (status, body) = http(gw.admin_addr().expect("admin"), "GET", "/readyz", &[], "").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready; cluster bus: down (Redis unreachable)")
    );
    let mut ws = connect(&ws_url(&gw, "/ws")).await;
    subscribe(&mut ws, "t", 1).await;
    redis.restart();
    wait_redis(&[&gw], "up").await;
    let (status, _) = http(gw.admin_addr().expect("admin"), "GET", "/readyz", &[], "").await;
    assert_eq!(status, 200);
    let reply = redis.command(&["SPUBLISH", "wsgate:t:t", "7"]);
    assert_eq!(reply, ":1\r\n");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type":"message","topic":"t","data":7})
    );
}

#[test]
fn bad_cluster_settings_name_the_key() {
    for (edit, key) in [
        (
            (|c: &mut wsgate::Config| c.cluster.redis_url = Some("http://x".into()))
                as fn(&mut wsgate::Config),
            "cluster.redis_url",
        ),
        (
            |c| {
                c.cluster.redis_url = Some("redis://127.0.0.1:6379".into());
                c.cluster.node_id = Some("has space".into());
            },
            "cluster.node_id",
        ),
        (
            |c| c.cluster.channel_prefix = String::new(),
            "cluster.channel_prefix",
        ),
        (
            |c| {
                c.cluster.reconnect_min_ms = 500;
                c.cluster.reconnect_max_ms = 100;
            },
            "cluster.reconnect_max_ms",
        ),
    ] {
        let mut c = wsgate::Config::default();
        edit(&mut c);
        let err = c.validate().expect_err(key).to_string();
        assert!(err.contains(key), "{err}");
    }
}
