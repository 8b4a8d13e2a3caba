//! The admin status page in a real browser: headless Chromium (Debian package `chromium`) loads
//! `GET /` from the admin listener while a load runs, and the numbers it shows change. Driven over
//! the Chrome DevTools Protocol with tokio-tungstenite. Set `WSGATE_SCREENSHOT=path.png` to save a
//! screenshot (docs/status-page.png was made that way).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wsgate::DriverChoice;

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    panic!("a Chromium browser is required: `apt-get install chromium` (.ci/run installs it)");
}

struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Page {
    ws: common::Ws,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::Text(msg.to_string()))
            .await
            .expect("send CDP");
        loop {
            let m = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("CDP reply in time")
                .expect("CDP open")
                .expect("CDP ok");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).expect("CDP JSON");
                if v["id"] == id {
                    return v;
                }
            }
        }
    }

    async fn text(&mut self, selector_id: &str) -> String {
        let expr = format!("document.getElementById('{selector_id}').textContent");
        let v = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        v["result"]["result"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn number(s: &str) -> u64 {
    s.replace(',', "").parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_live_numbers_in_a_real_browser() {
    let browser_bin = chromium();
    let gw = start(config(2, DriverChoice::Auto));
    let admin = gw.admin_addr().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser_bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{admin}/"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let browser = Browser(child);
    // Keep draining the browser's stderr after the address shows up: a closed pipe would kill it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let devtools = tokio::task::spawn_blocking(move || rx.recv_timeout(PATIENCE))
        .await
        .unwrap()
        .expect("chromium prints its DevTools address");
    let port: u16 = devtools
        .trim_start_matches("ws://")
        .split(['/', ':'])
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("devtools port");
    let devtools_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut page_ws = None;
    for _ in 0..100 {
        let (_, body) = http(devtools_addr, "GET", "/json/list", &[], "").await;
        let targets: Value = serde_json::from_str(&body).unwrap_or(json!([]));
        page_ws = targets
            .as_array()
            .and_then(|ts| {
                ts.iter().find(|t| {
                    t["type"] == "page"
                        && t["url"]
                            .as_str()
                            .is_some_and(|u| u.contains(&admin.to_string()))
                })
            })
            .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned));
        if page_ws.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ws, _) = tokio_tungstenite::connect_async(page_ws.expect("the status page target"))
        .await
        .expect("connect to the page's DevTools endpoint");
    let mut page = Page { ws, next_id: 0 };

    // Load: a subscriber and a publisher on the pub/sub route, running until the test ends.
    let mut sub = connect(&ws_url(&gw, "/ws")).await;
    subscribe(&mut sub, "load", 1).await;
    let mut publisher = connect(&ws_url(&gw, "/ws")).await;
    let load = tokio::spawn(async move {
        for i in 0u64.. {
            let m = json!({"type":"publish","topic":"load","data":i});
            if publisher.send(Message::Text(m.to_string())).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = sub.next().await {} });

    let mut first = 0;
    for _ in 0..100 {
        first = number(&page.text("messages-in").await);
        if first > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first > 0, "the page shows messages in");
    let mut later = first;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        later = number(&page.text("messages-in").await);
        if later > first {
            break;
        }
    }
    assert!(
        later > first,
        "the page's numbers change while load runs ({first} -> {later})"
    );
    assert!(number(&page.text("sessions").await) >= 2);
    let rows = page
        .call("Runtime.evaluate", json!({"expression": "document.querySelectorAll('#cores tr').length", "returnByValue": true}))
        .await;
    assert_eq!(rows["result"]["result"]["value"], 2, "one row per core");
    if let Ok(path) = std::env::var("WSGATE_SCREENSHOT") {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let shot = page
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["result"]["data"].as_str().unwrap_or_default())
            .expect("base64 PNG");
        std::fs::write(&path, png).expect("write screenshot");
    }
    load.abort();
    drain.abort();
    drop(browser);
}
