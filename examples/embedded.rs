//! Running wsgate inside another Rust program: routes configured in code, a publish hook that
//! authorises and transforms publishes before fan-out, publishing from the host program, and a
//! graceful shutdown. It checks itself with a real WebSocket client and exits non-zero on any
//! mismatch; `tests/embedding.rs` runs it.
//!
//! Run: `cargo run --example embedded`

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wsgate::{Config, Gateway, PublishDecision, PublishRequest};

/// The host's policy: `internal.*` topics are off limits to clients, and chat messages are wrapped.
fn policy(p: &PublishRequest<'_>) -> PublishDecision {
    if p.topic.starts_with("internal.") && p.source == wsgate::PublishSource::Client {
        return PublishDecision::Reject {
            code: "forbidden".into(),
            message: "internal topics are published by the host only".into(),
        };
    }
    if p.topic.starts_with("chat.") {
        return PublishDecision::Replace(format!(
            r#"{{"text":{},"moderated":true}}"#,
            p.data.get()
        ));
    }
    PublishDecision::Accept
}

async fn next_json(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("connection ended"))??;
        if let Message::Text(t) = msg {
            return Ok(serde_json::from_str(&t)?);
        }
    }
}

fn check(got: &Value, want: Value) -> anyhow::Result<()> {
    anyhow::ensure!(*got == want, "expected {want}, got {got}");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // Routes and listeners in code; no file, no admin listener, no TLS.
    let mut config = Config {
        cores: 2,
        pin_cores: false, // share the CPUs with the host's own threads
        ..Config::default()
    };
    config.listen.ws = "127.0.0.1:0".into();
    config.listen.wss = "off".into();
    config.admin.listen = "off".into();
    config.routes.pubsub = "/realtime".into();

    let gw = Gateway::builder(config).on_publish(policy).start()?;
    let url = format!(
        "ws://{}/realtime",
        gw.ws_addr()
            .ok_or_else(|| anyhow::anyhow!("no ws listener"))?
    );
    println!("embedded gateway on {url}");

    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    for (i, topic) in ["news", "chat.lobby", "internal.audit"].iter().enumerate() {
        ws.send(Message::Text(
            json!({"type":"subscribe","topic":topic,"id":i}).to_string(),
        ))
        .await?;
        check(&next_json(&mut ws).await?, json!({"type":"ack","id":i}))?;
    }

    // The host program publishes (from any thread; here, this one).
    gw.publish("news", r#"{"headline":"hello from the host"}"#)?;
    check(
        &next_json(&mut ws).await?,
        json!({"type":"message","topic":"news","data":{"headline":"hello from the host"}}),
    )?;

    // A client publish goes through the hook: chat is wrapped ...
    ws.send(Message::Text(
        json!({"type":"publish","topic":"chat.lobby","data":"hi all","id":"c1"}).to_string(),
    ))
    .await?;
    let mut got = [next_json(&mut ws).await?, next_json(&mut ws).await?];
    got.sort_by_key(|v| v["type"].as_str().map(str::to_owned));
    check(&got[0], json!({"type":"ack","id":"c1"}))?;
    check(
        &got[1],
        json!({"type":"message","topic":"chat.lobby","data":{"text":"hi all","moderated":true}}),
    )?;

    // ... and internal topics are refused to clients, but open to the host.
    ws.send(Message::Text(
        json!({"type":"publish","topic":"internal.audit","data":1,"id":"x"}).to_string(),
    ))
    .await?;
    let e = next_json(&mut ws).await?;
    check(&e["code"], json!("forbidden"))?;
    gw.publish("internal.audit", r#"{"event":"ok"}"#)?;
    check(
        &next_json(&mut ws).await?,
        json!({"type":"message","topic":"internal.audit","data":{"event":"ok"}}),
    )?;

    // Invalid input from the host is an error, not a crash.
    anyhow::ensure!(
        gw.publish("news", "{not json").is_err(),
        "bad JSON was accepted"
    );
    anyhow::ensure!(gw.publish("", "1").is_err(), "empty topic was accepted");

    // Graceful shutdown: the client gets close 1001. Shutdown blocks until drained, so it runs on a
    // separate thread while this one keeps reading.
    let stopper = std::thread::spawn(move || gw.shutdown());
    let mut code = None;
    while let Some(msg) = ws.next().await {
        if let Message::Close(Some(f)) = msg? {
            code = Some(u16::from(f.code));
            break;
        }
    }
    anyhow::ensure!(code == Some(1001), "expected close 1001, got {code:?}");
    drop(ws);
    stopper
        .join()
        .map_err(|_| anyhow::anyhow!("shutdown thread panicked"))?;
    println!("embedded example: all checks passed");
    Ok(())
}
