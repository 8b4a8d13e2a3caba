//! Autobahn conformance (cases 1.* to 10.*; the suite has no 8.*) against the echo route, driven by `kosoku` (a Python
//! runner of the Autobahn cases: `pip install kosoku`). Every case must be OK, NON-STRICT or
//! INFORMATIONAL; none may fail. Runs on both io drivers. If `kosoku` is not on PATH the test installs
//! it with pip, and fails with a clear message when that is impossible (it never skips silently).
//!
//! kosoku has no TLS, so the wss runs put a relay in front of the wss listener: it accepts kosoku's
//! plain connections and carries each over its own real TLS client connection (tokio-rustls,
//! trusting the generated certificate) to the gateway, so every case crosses the gateway's TLS data
//! path end to end, including close_notify and the TCP close after the close handshake.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use wsgate::config::WssIo;
use wsgate::DriverChoice;

fn kosoku_available() -> bool {
    Command::new("kosoku")
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ensure_kosoku() {
    if kosoku_available() {
        return;
    }
    eprintln!("kosoku not found on PATH; installing it with `python3 -m pip install kosoku`");
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "kosoku"])
        .status();
    assert!(
        status.is_ok_and(|s| s.success()) && kosoku_available(),
        "the Autobahn runner `kosoku` is required: install it with `pip install kosoku` (.ci/run does)"
    );
}

/// The two runs take turns: each is a few hundred timed cases, and running them side by side on a
/// small machine only makes both slower.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A plain TCP front for the gateway's wss listener (see the module docs). Returns its address and the
/// runtime that serves it (dropping the runtime stops the relay).
fn tls_relay(gw: &wsgate::Gateway) -> (std::net::SocketAddr, tokio::runtime::Runtime) {
    let cfg = common::client_tls_config(gw);
    let target = gw.wss_addr().expect("wss listener");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("relay runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("relay bind");
    let addr = listener.local_addr().expect("relay addr");
    rt.spawn(async move {
        while let Ok((mut plain, _)) = listener.accept().await {
            let connector = tokio_rustls::TlsConnector::from(cfg.clone());
            tokio::spawn(async move {
                let Ok(tcp) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = (tcp.set_nodelay(true), plain.set_nodelay(true));
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let Ok(mut tls) = connector.connect(name, tcp).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
            });
        }
    });
    (addr, rt)
}

fn run_autobahn(driver: DriverChoice, wss: Option<WssIo>) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    ensure_kosoku();
    let mut c = common::config(2, driver);
    match wss {
        None => c.listen.wss = "off".into(),
        Some(io) => c.wss_io = io,
    }
    c.routes.echo = "/".into();
    c.routes.pubsub = "/ws".into();
    // The cases expect exact frame sequences: a heartbeat ping landing inside a long case (9.*) is
    // recorded as an unexpected frame and fails it, whatever the data path.
    c.limits.ping_interval_ms = 0;
    // Cases 9.* send messages up to 16 MiB.
    c.limits.max_message_size = 20 << 20;
    c.limits.max_outbound_bytes = 20 << 20;
    let gw = common::start(c);
    let relay = wss.map(|_| tls_relay(&gw));
    let addr = match &relay {
        Some((addr, _)) => addr.to_string(),
        None => gw.ws_addr().expect("ws listener").to_string(),
    };
    let out = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("kosoku");
    for case in [
        "1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*",
    ] {
        cmd.args(["-i", case]);
    }
    let run = cmd
        .args(["-o", out.path().to_str().expect("utf-8 path"), &addr])
        .output()
        .expect("run kosoku");
    let index = out.path().join("index.json");
    let text = std::fs::read_to_string(&index).unwrap_or_else(|e| {
        panic!(
            "kosoku wrote no {}: {e}\nstdout: {}\nstderr: {}",
            index.display(),
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        )
    });
    let report: serde_json::Value = serde_json::from_str(&text).expect("index.json is JSON");
    let cases = report
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(|v| v.as_object())
        .expect("one agent in the report");
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = Vec::new();
    for (id, r) in cases {
        let behavior = r["behavior"].as_str().unwrap_or("?");
        let close = r["behaviorClose"].as_str().unwrap_or("?");
        *tally.entry(behavior.to_string()).or_default() += 1;
        let ok = |b: &str| matches!(b, "OK" | "NON-STRICT" | "INFORMATIONAL");
        if !ok(behavior) || !ok(close) {
            failed.push(format!("{id}: behavior={behavior} close={close}"));
        }
    }
    eprintln!(
        "autobahn ({driver:?}, wss: {wss:?}): {} cases, {tally:?}",
        cases.len()
    );
    for f in &failed {
        let id = f.split(':').next().unwrap_or_default();
        let file = out
            .path()
            .join(cases[id]["reportfile"].as_str().unwrap_or_default());
        let detail = std::fs::read_to_string(&file).unwrap_or_default();
        eprintln!("{f}\n{}", &detail[..detail.len().min(2000)]);
    }
    assert!(
        cases.len() > 290,
        "expected the whole 1.*-10.* selection, got {}",
        cases.len()
    );
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
}

#[test]
fn autobahn_1_to_10_on_io_uring() {
    run_autobahn(DriverChoice::Uring, None);
}

#[test]
fn autobahn_1_to_10_on_epoll() {
    run_autobahn(DriverChoice::Epoll, None);
}

#[test]
fn autobahn_1_to_10_over_wss_on_io_uring() {
    run_autobahn(DriverChoice::Uring, Some(WssIo::Unbuffered));
}

#[test]
fn autobahn_1_to_10_over_wss_on_epoll() {
    run_autobahn(DriverChoice::Epoll, Some(WssIo::Unbuffered));
}

/// The previous wss data path (tokio-rustls + hyper), kept as `wss_io = "buffered"`.
#[test]
fn autobahn_1_to_10_over_buffered_wss() {
    run_autobahn(DriverChoice::Auto, Some(WssIo::Buffered));
}
