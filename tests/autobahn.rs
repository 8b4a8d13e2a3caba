//! Autobahn conformance (cases 1.* to 10.*; the suite has no 8.*) against the echo route, driven by `kosoku` (a Python
//! runner of the Autobahn cases: `pip install kosoku`). Every case must be OK, NON-STRICT or
//! INFORMATIONAL; none may fail. Runs on both io drivers. If `kosoku` is not on PATH the test installs
//! it with pip, and fails with a clear message when that is impossible (it never skips silently).

mod common;

use std::collections::BTreeMap;
use std::process::Command;

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

fn run_autobahn(driver: DriverChoice) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    ensure_kosoku();
    let mut c = common::config(2, driver);
    c.listen.wss = "off".into();
    c.routes.echo = "/".into();
    c.routes.pubsub = "/ws".into();
    // Cases 9.* send messages up to 16 MiB.
    c.limits.max_message_size = 20 << 20;
    c.limits.max_outbound_bytes = 20 << 20;
    let gw = common::start(c);
    let addr = gw.ws_addr().expect("ws listener").to_string();
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
    eprintln!("autobahn ({driver:?}): {} cases, {tally:?}", cases.len());
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
    run_autobahn(DriverChoice::Uring);
}

#[test]
fn autobahn_1_to_10_on_epoll() {
    run_autobahn(DriverChoice::Epoll);
}
