//! Protocol v1 pub/sub against the real gateway: cross-core fan-out (exactly once, in order, on both
//! io drivers), acks and errors with ids, `?topics=`, byte-for-byte data, unsubscribe, slow consumers.

mod common;

use std::collections::HashMap;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use wsgate::{DriverChoice, Gateway};

fn sessions_per_core(gw: &Gateway) -> Vec<u64> {
    gw.stats().iter().map(|s| s.sessions).collect()
}

/// Wait until the gateway counts `n` sessions in total (a session registers right after its upgrade).
async fn settle(gw: &Gateway, n: u64) -> Vec<u64> {
    for _ in 0..1500 {
        let per = sessions_per_core(gw);
        if per.iter().sum::<u64>() == n {
            return per;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    panic!(
        "gateway never reached {n} sessions: {:?}",
        sessions_per_core(gw)
    );
}

/// Open a connection and report which core accepted it.
async fn connect_on(gw: &Gateway, url: &str, open: u64) -> (Ws, usize) {
    let before = settle(gw, open).await;
    let ws = connect(url).await;
    let after = settle(gw, open + 1).await;
    let core = (0..after.len())
        .find(|&i| after[i] > before[i])
        .expect("a core gained a session");
    (ws, core)
}

async fn fanout_across_cores(driver: DriverChoice) {
    let gw = start(config(2, driver));
    let url = ws_url(&gw, "/ws");
    let mut open = 0;
    let mut subs = Vec::new();
    let mut sub_cores = [0usize; 2];
    while subs.len() < 16 || sub_cores.contains(&0) {
        assert!(subs.len() < 400, "connections never spread over both cores");
        let (mut ws, core) = connect_on(&gw, &url, open).await;
        open += 1;
        subscribe(&mut ws, "room", subs.len() as u64).await;
        sub_cores[core] += 1;
        subs.push(ws);
    }
    // One publisher on each core.
    let mut pubs: Vec<Option<Ws>> = vec![None, None];
    let mut spare = Vec::new();
    while pubs.iter().any(Option::is_none) {
        assert!(open < 800, "publishers never spread over both cores");
        let (ws, core) = connect_on(&gw, &url, open).await;
        open += 1;
        if pubs[core].is_none() {
            pubs[core] = Some(ws);
        } else {
            spare.push(ws);
        }
    }
    const N: u64 = 300;
    for (p, ws) in pubs.iter_mut().enumerate() {
        let ws = ws.as_mut().unwrap();
        for seq in 0..N {
            let msg = json!({"type":"publish","topic":"room","data":{"p":p,"seq":seq}});
            ws.feed(Message::Text(msg.to_string())).await.unwrap();
        }
        send_json(
            ws,
            json!({"type":"publish","topic":"other","data":0,"id":"done"}),
        )
        .await;
        assert_eq!(next_json(ws).await, json!({"type":"ack","id":"done"}));
    }
    for (i, ws) in subs.iter_mut().enumerate() {
        let mut next: HashMap<u64, u64> = HashMap::new();
        for _ in 0..2 * N {
            let m = next_json(ws).await;
            assert_eq!(m["type"], "message", "subscriber {i}: {m}");
            assert_eq!(m["topic"], "room");
            let (p, seq) = (
                m["data"]["p"].as_u64().unwrap(),
                m["data"]["seq"].as_u64().unwrap(),
            );
            let want = next.entry(p).or_insert(0);
            assert_eq!(
                seq, *want,
                "subscriber {i}: publisher {p} out of order or duplicated"
            );
            *want += 1;
        }
        assert_eq!(next.get(&0), Some(&N));
        assert_eq!(next.get(&1), Some(&N));
    }
    let stats = gw.stats();
    assert!(
        stats.iter().all(|s| s.bus_in > 0 && s.bus_out > 0),
        "both cores used the bus: {stats:?}"
    );
    let delivered: u64 = stats.iter().map(|s| s.deliveries).sum();
    assert_eq!(delivered, 2 * N * subs.len() as u64);
}

#[tokio::test]
async fn fanout_across_cores_exactly_once_in_order_io_uring() {
    fanout_across_cores(DriverChoice::Uring).await;
}

#[tokio::test]
async fn fanout_across_cores_exactly_once_in_order_epoll() {
    fanout_across_cores(DriverChoice::Epoll).await;
}

#[tokio::test]
async fn acks_and_errors_carry_ids_and_keep_the_session() {
    let gw = start(config(1, DriverChoice::Auto));
    let mut ws = connect(&ws_url(&gw, "/ws")).await;
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("invalid_json"))
    );
    assert!(e.get("id").is_none());

    send_json(&mut ws, json!({"type":"dance","id":"x1"})).await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), &e["id"]),
        (Some("unknown_type"), &json!("x1"))
    );

    send_json(&mut ws, json!({"type":"publish","data":1,"id":5})).await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), &e["id"]),
        (Some("bad_request"), &json!(5))
    );

    send_json(&mut ws, json!({"type":"subscribe","topic":"","id":6})).await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), &e["id"]),
        (Some("invalid_topic"), &json!(6))
    );

    ws.send(Message::Binary(vec![1, 2, 3])).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(e["code"], "unsupported_frame");

    subscribe(&mut ws, "still-open", 7).await;
    send_json(
        &mut ws,
        json!({"type":"publish","topic":"still-open","data":"hi","id":8}),
    )
    .await;
    let a = next_json(&mut ws).await;
    let b = next_json(&mut ws).await;
    let mut got = [a, b];
    got.sort_by_key(|v| v["type"].as_str().map(str::to_owned));
    assert_eq!(got[0], json!({"type":"ack","id":8}));
    assert_eq!(
        got[1],
        json!({"type":"message","topic":"still-open","data":"hi"})
    );
}

#[tokio::test]
async fn data_is_delivered_byte_for_byte() {
    let gw = start(config(2, DriverChoice::Auto));
    let mut sub = connect(&ws_url(&gw, "/ws")).await;
    subscribe(&mut sub, "raw", 1).await;
    let mut publisher = connect(&ws_url(&gw, "/ws")).await;
    let data = r#"{ "b" : [1, 2.50, 1e3, "\u00e9\n"],"n":null }"#;
    let req = format!(r#"{{"type":"publish","topic":"raw","data":{data},"id":2}}"#);
    publisher.send(Message::Text(req)).await.unwrap();
    assert_eq!(
        next_json(&mut publisher).await,
        json!({"type":"ack","id":2})
    );
    match next_msg(&mut sub).await {
        Message::Text(t) => assert_eq!(
            t,
            format!(r#"{{"type":"message","topic":"raw","data":{data}}}"#)
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn topics_query_subscribes_at_connect() {
    let gw = start(config(2, DriverChoice::Auto));
    let mut sub = connect(&ws_url(&gw, "/ws?topics=alpha,be%2Cta")).await;
    // Any acked request makes the connect-time subscriptions effective.
    subscribe(&mut sub, "zzz", 1).await;
    let mut publisher = connect(&ws_url(&gw, "/ws")).await;
    for (i, t) in ["alpha", "be,ta"].iter().enumerate() {
        send_json(
            &mut publisher,
            json!({"type":"publish","topic":t,"data":i,"id":i}),
        )
        .await;
        assert_eq!(
            next_json(&mut publisher).await,
            json!({"type":"ack","id":i})
        );
    }
    assert_eq!(
        next_json(&mut sub).await,
        json!({"type":"message","topic":"alpha","data":0})
    );
    assert_eq!(
        next_json(&mut sub).await,
        json!({"type":"message","topic":"be,ta","data":1})
    );
}

#[tokio::test]
async fn unsubscribe_stops_delivery_after_its_ack() {
    let gw = start(config(2, DriverChoice::Auto));
    let mut sub = connect(&ws_url(&gw, "/ws")).await;
    subscribe(&mut sub, "a", 1).await;
    subscribe(&mut sub, "b", 2).await;
    send_json(&mut sub, json!({"type":"unsubscribe","topic":"a","id":3})).await;
    assert_eq!(next_json(&mut sub).await, json!({"type":"ack","id":3}));
    let mut publisher = connect(&ws_url(&gw, "/ws")).await;
    for (i, t) in ["a", "b"].iter().enumerate() {
        send_json(
            &mut publisher,
            json!({"type":"publish","topic":t,"data":t,"id":i}),
        )
        .await;
        assert_eq!(
            next_json(&mut publisher).await,
            json!({"type":"ack","id":i})
        );
    }
    assert_eq!(
        next_json(&mut sub).await,
        json!({"type":"message","topic":"b","data":"b"})
    );
}

#[tokio::test]
async fn subscription_limit_is_enforced() {
    let mut c = config(1, DriverChoice::Auto);
    c.limits.max_subscriptions = 2;
    let gw = start(c);
    let mut ws = connect(&ws_url(&gw, "/ws")).await;
    subscribe(&mut ws, "a", 1).await;
    subscribe(&mut ws, "b", 2).await;
    send_json(&mut ws, json!({"type":"subscribe","topic":"c","id":3})).await;
    let e: Value = next_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), &e["id"]),
        (Some("too_many_subscriptions"), &json!(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_others_get_everything() {
    let mut c = config(2, DriverChoice::Auto);
    c.limits.max_outbound_bytes = 64 * 1024;
    // The stuck client reads only after the flood; its close frame must still be waiting for it.
    c.limits.close_timeout_ms = 60_000;
    let gw = start(c);
    let url = ws_url(&gw, "/ws");
    let mut stuck = connect(&url).await;
    subscribe(&mut stuck, "flood", 1).await;
    let mut healthy = connect(&url).await;
    subscribe(&mut healthy, "flood", 1).await;
    let mut publisher = connect(&url).await;
    const N: usize = 4000;
    let pad = "x".repeat(4000);
    let reader = tokio::spawn(async move {
        for seq in 0..N {
            let m = next_json(&mut healthy).await;
            assert_eq!(
                m["data"]["seq"], seq,
                "healthy subscriber got every message in order"
            );
        }
    });
    for seq in 0..N {
        // Every 5th publish waits for its ack: paced enough for a reading client, far too much for a
        // client that never reads.
        let msg = if seq % 5 == 4 {
            json!({"type":"publish","topic":"flood","data":{"seq":seq,"pad":pad},"id":seq})
        } else {
            json!({"type":"publish","topic":"flood","data":{"seq":seq,"pad":pad}})
        };
        publisher
            .send(Message::Text(msg.to_string()))
            .await
            .unwrap();
        if seq % 5 == 4 {
            assert_eq!(
                next_json(&mut publisher).await,
                json!({"type":"ack","id":seq})
            );
        }
    }
    reader.await.unwrap();
    let drops: u64 = gw.stats().iter().map(|s| s.slow_consumer_drops).sum();
    assert!(drops > 0, "the stuck subscriber overflowed its queue");
    // The stuck client finally reads: whatever was buffered, then close 1008.
    assert_eq!(expect_close(&mut stuck).await.code, CloseCode::Policy);
}
