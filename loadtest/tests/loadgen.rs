//! End-to-end tests of the `wsgate-load` binary against a real wsgate gateway on loopback.
//!
//! Every test runs the real binary (`CARGO_BIN_EXE_wsgate-load`) with `--json` and parses the last
//! stdout line. Assertions are about correctness and self-consistency only (exit status, counts,
//! agreement with the gateway's own counters, ordering of percentiles); there are no rate or latency
//! thresholds, so a slow or busy machine cannot make them fail.
//!
//! The "server killed mid-run" test needs the gateway in another process so it can be SIGKILLed:
//! the test binary re-executes itself, running only [`server_process_helper`] with
//! `WSGATE_LOAD_TEST_SERVER=1` set, which starts a gateway, prints its address and blocks.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use wsgate::{Config, CoreSnapshot, DriverChoice, Gateway};

const LOAD: &str = env!("CARGO_BIN_EXE_wsgate-load");

/// Set in the environment of the re-executed test binary that hosts the gateway to be killed.
const SERVER_ENV: &str = "WSGATE_LOAD_TEST_SERVER";
/// Prefix of the line with which that helper announces its ws:// address on stdout.
const ADDR_LINE: &str = "WSGATE_LOAD_TEST_SERVER_ADDR=";

/// Upper bound for one wsgate-load run before the test gives up (never a performance bound: the
/// runs below take a few seconds; the tool's own watchdog fires well before this).
const RUN_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn gateway(cores: usize) -> Gateway {
    let mut c = Config {
        cores,
        driver: DriverChoice::Auto,
        pin_cores: false,
        ..Config::default()
    };
    c.listen.ws = "127.0.0.1:0".into();
    c.listen.wss = "127.0.0.1:0".into();
    // The admin listener defaults to a fixed port (9090); tests run gateways in parallel.
    c.admin.listen = "off".into();
    Gateway::start(c).expect("in-process gateway starts on ephemeral loopback ports")
}

fn ws_addr(gw: &Gateway) -> SocketAddr {
    gw.ws_addr().expect("gateway has a ws:// listener")
}

/// What one wsgate-load process did.
struct Outcome {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Everything needed to understand a failure.
    fn describe(&self) -> String {
        format!(
            "wsgate-load {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }

    /// The `--json` report: the last non-empty stdout line.
    fn report(&self) -> Value {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no report line on stdout\n{}", self.describe()));
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "last stdout line is not JSON ({e}): {line:?}\n{}",
                self.describe()
            )
        })
    }

    /// Exit 0 and `"ok": true`, or a panic with the whole output.
    fn expect_success(&self) -> Value {
        assert_eq!(
            self.code(),
            Some(0),
            "wsgate-load should exit 0\n{}",
            self.describe()
        );
        let r = self.report();
        assert_eq!(
            r["ok"],
            Value::Bool(true),
            "report not ok\n{}",
            self.describe()
        );
        assert_eq!(num(&r, "errors"), 0, "errors reported\n{}", self.describe());
        r
    }
}

/// Reads a child's pipe to the end on a thread (so a full pipe can never block the child).
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

fn spawn_load(args: &[String]) -> Child {
    Command::new(LOAD)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {LOAD}: {e}"))
}

/// Waits up to `limit` for `child`; kills it and panics (with its output) when it takes longer.
fn wait_bounded(mut child: Child, args: Vec<String>, limit: Duration) -> Outcome {
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => panic!("waiting for wsgate-load failed: {e}"),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Outcome {
            args,
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "wsgate-load {} did not exit within {limit:?}; killed it\n--- stdout ---\n{stdout}\n\
             --- stderr ---\n{stderr}",
            args.join(" ")
        ),
    }
}

/// Runs `wsgate-load <scenario> --url <url> <extra> --json --quiet` to completion.
fn load(scenario: &str, url: &str, extra: &[&str]) -> Outcome {
    let mut args: Vec<String> = vec![scenario.into(), "--url".into(), url.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(
        ["--json", "--quiet", "--setup-timeout", "30"]
            .iter()
            .map(|s| s.to_string()),
    );
    let child = spawn_load(&args);
    wait_bounded(child, args, RUN_LIMIT)
}

/// An unsigned integer field of a report (or of a nested object).
fn num(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("field {key:?} missing or not an unsigned integer in {v}"))
}

/// Checks a latency summary: present, non-empty, positive and ordered. Returns its count.
fn check_latency(r: &Value, key: &str) -> u64 {
    let l = r
        .get(key)
        .filter(|l| l.is_object())
        .unwrap_or_else(|| panic!("latency summary {key:?} missing in {r}"));
    let count = num(l, "count");
    assert!(count > 0, "{key}: no samples in {l}");
    let (p50, p90, p99, p999, max) = (
        num(l, "p50"),
        num(l, "p90"),
        num(l, "p99"),
        num(l, "p999"),
        num(l, "max"),
    );
    assert!(p50 > 0, "{key}: p50 must be positive: {l}");
    assert!(
        p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "{key}: percentiles not ordered (p50 <= p90 <= p99 <= p99.9 <= max): {l}"
    );
    count
}

/// Sum of one per-core gateway counter, waiting (bounded) until it reaches `want`: the gateway
/// may bump a counter an instant after the client saw the effect. Returns the final sum, which
/// the caller compares exactly.
fn gateway_sum(gw: &Gateway, f: fn(&CoreSnapshot) -> u64, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sum: u64 = gw.stats().iter().map(f).sum();
        if sum >= want || Instant::now() >= deadline {
            return sum;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// echo
// ---------------------------------------------------------------------------------------------

fn check_echo(r: &Value, o: &Outcome) {
    assert_eq!(r["scenario"], "echo", "{}", o.describe());
    assert_eq!(r["op"], "round_trip", "{}", o.describe());
    let ops = num(r, "ops");
    assert!(ops > 0, "no round trips\n{}", o.describe());
    assert_eq!(num(r, "mismatches"), 0, "echo mismatches\n{}", o.describe());
    assert!(num(r, "bytes") > 0, "no bytes counted\n{}", o.describe());
    let count = check_latency(r, "latency_us");
    assert_eq!(
        count,
        ops,
        "one RTT sample per round trip\n{}",
        o.describe()
    );
}

#[test]
fn echo_ws_round_trips_without_mismatches() {
    let gw = gateway(2);
    let url = format!("ws://{}", ws_addr(&gw));
    let o = load(
        "echo",
        &url,
        &[
            "--connections",
            "20",
            "--pipeline",
            "2",
            "--duration",
            "1",
            "--drain",
            "10",
        ],
    );
    let r = o.expect_success();
    check_echo(&r, &o);
    assert_eq!(
        r["url"],
        format!("{url}/echo"),
        "default echo path filled in"
    );
    assert_eq!(num(&r, "connections"), 20);
}

#[test]
fn echo_wss_with_ca_file_round_trips_without_mismatches() {
    let gw = gateway(2);
    let pem = gw
        .self_signed_cert_pem()
        .expect("gateway generated a self-signed certificate");
    let mut ca = tempfile::NamedTempFile::new().expect("create temp file for --ca");
    std::io::Write::write_all(&mut ca, pem.as_bytes()).expect("write the gateway's PEM");
    let ca_path = ca.path().to_str().expect("temp path is UTF-8").to_string();
    let port = gw.wss_addr().expect("gateway has a wss:// listener").port();
    // The generated certificate covers localhost, 127.0.0.1 and ::1. The IP form is used because
    // `localhost` may resolve to ::1 first while the gateway listens on 127.0.0.1 only.
    let url = format!("wss://127.0.0.1:{port}/echo");
    let o = load(
        "echo",
        &url,
        &[
            "--ca",
            &ca_path,
            "--connections",
            "10",
            "--binary",
            "--payload",
            "1024",
            "--duration",
            "1",
            "--drain",
            "10",
        ],
    );
    let r = o.expect_success();
    check_echo(&r, &o);
}

#[test]
fn wss_without_trust_fails_with_a_certificate_hint() {
    // Without --ca/--insecure the webpki roots are used, which cannot validate the gateway's
    // self-signed certificate: every connection fails and the run reports it (exit 1).
    let gw = gateway(1);
    let port = gw.wss_addr().expect("gateway has a wss:// listener").port();
    let o = load(
        "echo",
        &format!("wss://127.0.0.1:{port}"),
        &["--connections", "2", "--duration", "1", "--drain", "2"],
    );
    assert_eq!(
        o.code(),
        Some(1),
        "untrusted cert is a run error\n{}",
        o.describe()
    );
    let r = o.report();
    assert_eq!(r["ok"], Value::Bool(false), "{}", o.describe());
    assert!(num(&r, "errors") >= 2, "{}", o.describe());
    assert_eq!(num(&r, "ops"), 0, "{}", o.describe());
    // e.g. "upgrade: invalid peer certificate: UnknownIssuer (use --ca FILE or --insecure ...)"
    assert!(
        o.stderr.contains("certificate") && o.stderr.contains("--ca"),
        "stderr should name the certificate problem and suggest --ca\n{}",
        o.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// fanout
// ---------------------------------------------------------------------------------------------

/// 50 subscribers over 5 topics (10 per topic), 2 publishers at a fixed rate: every accepted
/// publish must reach exactly its 10 subscribers, and the gateway must agree.
fn fanout_case(extra: &[&str]) {
    const SUBSCRIBERS: u64 = 50;
    const TOPICS: u64 = 5;
    let gw = gateway(2);
    let url = format!("ws://{}", ws_addr(&gw));
    let mut args = vec![
        "--subscribers",
        "50",
        "--topics",
        "5",
        "--publishers",
        "2",
        "--rate",
        "200",
        "--payload",
        "64",
        "--duration",
        "1",
        "--drain",
        "10",
    ];
    args.extend_from_slice(extra);
    let o = load("fanout", &url, &args);
    let r = o.expect_success();
    let d = || o.describe();

    assert_eq!(r["scenario"], "fanout", "{}", d());
    let publishes = num(&r, "publishes");
    let deliveries = num(&r, "deliveries");
    assert!(publishes > 0, "nothing published\n{}", d());
    assert_eq!(num(&r, "publish_errors"), 0, "publishes rejected\n{}", d());
    // Publishers go round-robin over the topics; each topic has SUBSCRIBERS / TOPICS subscribers.
    let expected = publishes * (SUBSCRIBERS / TOPICS);
    assert_eq!(
        num(&r, "expected"),
        expected,
        "expected deliveries\n{}",
        d()
    );
    assert_eq!(deliveries, expected, "deliveries == expected\n{}", d());
    assert_eq!(num(&r, "ops"), deliveries, "{}", d());
    for k in ["lost", "duplicated", "reordered", "unexpected"] {
        assert_eq!(num(&r, k), 0, "{k} must be 0\n{}", d());
    }
    let count = check_latency(&r, "latency_us");
    assert_eq!(
        count,
        deliveries,
        "one latency sample per delivery\n{}",
        d()
    );

    // The gateway's own view of the same run.
    let gw_publishes = gateway_sum(&gw, |s| s.publishes, publishes);
    let gw_deliveries = gateway_sum(&gw, |s| s.deliveries, deliveries);
    assert_eq!(
        gw_publishes,
        publishes,
        "gateway publishes vs loader (per core: {:?})\n{}",
        gw.stats().iter().map(|s| s.publishes).collect::<Vec<_>>(),
        d()
    );
    assert_eq!(
        gw_deliveries,
        deliveries,
        "gateway deliveries vs loader (per core: {:?})\n{}",
        gw.stats().iter().map(|s| s.deliveries).collect::<Vec<_>>(),
        d()
    );
    let drops: u64 = gw.stats().iter().map(|s| s.slow_consumer_drops).sum();
    assert_eq!(drops, 0, "gateway dropped deliveries\n{}", d());
}

#[test]
fn fanout_delivers_everything_and_matches_gateway_counters() {
    fanout_case(&[]);
}

#[test]
fn fanout_with_two_procs_and_source_ips_matches_gateway_counters() {
    fanout_case(&["--procs", "2", "--source-ips", "127.0.0.2-127.0.0.3"]);
}

// ---------------------------------------------------------------------------------------------
// idle and storm
// ---------------------------------------------------------------------------------------------

#[test]
fn idle_connects_and_holds_every_connection() {
    let gw = gateway(2);
    // The gateway runs in this process, so its memory is this process's.
    let me = std::process::id().to_string();
    let o = load(
        "idle",
        &format!("ws://{}", ws_addr(&gw)),
        &[
            "--connections",
            "200",
            "--ramp",
            "1000",
            "--hold",
            "1",
            "--drain",
            "5",
            "--server-pid",
            &me,
        ],
    );
    let r = o.expect_success();
    let d = || o.describe();
    assert_eq!(r["scenario"], "idle", "{}", d());
    assert_eq!(num(&r, "connected"), 200, "connected == requested\n{}", d());
    assert_eq!(num(&r, "failures"), 0, "{}", d());
    assert_eq!(num(&r, "dropped"), 0, "{}", d());
    assert_eq!(num(&r, "ops"), 200, "{}", d());
    let count = check_latency(&r, "handshake_latency_us");
    assert_eq!(count, 200, "one connect sample per connection\n{}", d());
    for key in ["server_rss_kib_per_conn", "server_rss_kib_per_conn_end"] {
        assert!(r[key].is_f64(), "{key} missing\n{}", d());
    }
    let upgrades = gateway_sum(&gw, |s| s.upgrades, 200);
    assert!(
        upgrades >= 200,
        "gateway saw {upgrades} upgrades for 200 connections\n{}",
        d()
    );
}

#[test]
fn several_targets_share_the_connections_round_robin() {
    let (a, b) = (gateway(1), gateway(1));
    let urls = format!("ws://{},ws://{}", ws_addr(&a), ws_addr(&b));
    let o = load(
        "idle",
        &urls,
        &["--connections", "40", "--ramp", "1000", "--hold", "1"],
    );
    let r = o.expect_success();
    assert_eq!(num(&r, "connected"), 40, "{}", o.describe());
    assert_eq!(gateway_sum(&a, |s| s.upgrades, 20), 20, "{}", o.describe());
    assert_eq!(gateway_sum(&b, |s| s.upgrades, 20), 20, "{}", o.describe());
    let mixed = load(
        "idle",
        &format!("ws://{},wss://{}", ws_addr(&a), ws_addr(&b)),
        &["--connections", "2"],
    );
    assert_eq!(mixed.status.code(), Some(2), "{}", mixed.describe());
}

#[test]
fn storm_handshakes_without_failures() {
    let gw = gateway(2);
    let o = load(
        "storm",
        &format!("ws://{}", ws_addr(&gw)),
        &["--connections", "4", "--duration", "1", "--drain", "5"],
    );
    let r = o.expect_success();
    let d = || o.describe();
    assert_eq!(r["scenario"], "storm", "{}", d());
    let handshakes = num(&r, "ops");
    assert!(handshakes > 0, "no handshakes\n{}", d());
    assert_eq!(num(&r, "failures"), 0, "{}", d());
    let count = check_latency(&r, "latency_us");
    assert_eq!(count, handshakes, "one sample per handshake\n{}", d());
    let upgrades = gateway_sum(&gw, |s| s.upgrades, handshakes);
    assert!(
        upgrades >= handshakes,
        "gateway saw {upgrades} upgrades for {handshakes} client handshakes\n{}",
        d()
    );
}

// ---------------------------------------------------------------------------------------------
// Failure handling
// ---------------------------------------------------------------------------------------------

#[test]
fn non_loopback_target_is_refused_without_allow_remote() {
    // 10.1.2.3 is never contacted: the loopback rule is checked before any connection.
    let o = load(
        "echo",
        "ws://10.1.2.3:80/",
        &["--connections", "1", "--duration", "1"],
    );
    assert!(
        o.stderr.contains("--allow-remote"),
        "the refusal should mention --allow-remote\n{}",
        o.describe()
    );
    assert_eq!(
        o.code(),
        Some(2),
        "README, Exit status: a refused (non-loopback) target is a bad command line, exit 2\n{}",
        o.describe()
    );
}

/// Kills the child (if still running) when dropped, so a failing test leaves no server behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the helper's stdout until the address line (bounded), then keeps draining it.
fn read_server_addr(stdout: ChildStdout) -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                // libtest may print "test server_process_helper ... " on the same line.
                if let Some((_, a)) = line.split_once(ADDR_LINE) {
                    let _ = tx.send(Ok(a.trim().to_string()));
                    sent = true;
                } else {
                    seen.push(line);
                }
            }
        }
        if !sent {
            let _ = tx.send(Err(seen.join("\n")));
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(a)) => a
            .parse()
            .unwrap_or_else(|e| panic!("helper printed a bad address {a:?}: {e}")),
        Ok(Err(out)) => panic!("server helper exited without printing its address; stdout:\n{out}"),
        Err(_) => panic!("server helper did not print its address within 60 s"),
    }
}

#[test]
fn server_killed_mid_run_makes_the_tool_fail_clearly() {
    let exe = std::env::current_exe().expect("path of this test binary");
    let server = Command::new(exe)
        .args([
            "--exact",
            "server_process_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(SERVER_ENV, "1")
        // The helper exits when its stdin closes, i.e. when this process goes away.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("re-execute this test binary as the server process");
    let mut server = KillOnDrop(server);
    let addr = read_server_addr(server.0.stdout.take().expect("helper stdout is piped"));

    let args: Vec<String> = [
        "echo",
        "--url",
        &format!("ws://{addr}"),
        "--connections",
        "10",
        "--duration",
        "30",
        "--drain",
        "5",
        "--json",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let loader = spawn_load(&args);
    std::thread::sleep(Duration::from_millis(1500));
    server.0.kill().expect("SIGKILL the server process");
    let _ = server.0.wait();

    // Must end on its own long before --duration 30; wait_bounded kills it and fails otherwise.
    let o = wait_bounded(loader, args, Duration::from_secs(20));
    assert_eq!(
        o.code(),
        Some(1),
        "a server that dies mid-run is a run error (exit 1)\n{}",
        o.describe()
    );
    let stderr = o.stderr.to_lowercase();
    // e.g. "echo receive: connection reset by server (connection reset)"
    assert!(
        stderr.contains("server")
            && ["reset", "closed", "refused", "went away"]
                .iter()
                .any(|w| stderr.contains(w)),
        "stderr should say that the server went away\n{}",
        o.describe()
    );
    let r = o.report();
    assert_eq!(r["ok"], Value::Bool(false), "{}", o.describe());
    assert!(num(&r, "errors") > 0, "{}", o.describe());
}

/// Not a test of its own: the server process for the test above. Without `WSGATE_LOAD_TEST_SERVER`
/// (a normal `cargo test` run) it returns at once.
#[test]
fn server_process_helper() {
    if std::env::var_os(SERVER_ENV).is_none() {
        return;
    }
    let gw = gateway(1);
    println!("\n{ADDR_LINE}{}", ws_addr(&gw));
    std::io::Write::flush(&mut std::io::stdout()).expect("flush the address line");
    // Block until the parent closes our stdin (it died or is done) or, as a backstop, 2 minutes.
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(120));
    std::process::exit(0);
}
