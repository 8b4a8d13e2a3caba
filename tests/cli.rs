//! The `wsgate` binary: --help documents the CLI contract, bad configs exit non-zero naming the key or
//! file, and a started gateway prints its URLs, serves ws:// and wss://, and stops on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

fn wsgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    c.env("RUST_LOG", "warn");
    c
}

fn fails_with(args: &[&str], needle: &str) {
    let out = wsgate().args(args).output().expect("run wsgate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: stderr should name `{needle}`: {stderr}"
    );
}

#[test]
fn help_documents_the_cli_contract() {
    let out = wsgate().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--ws",
        "--wss",
        "--cert",
        "--key",
        "--cores",
        "--driver",
        "--pubsub-path",
        "--echo-path",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/wsgate.toml");
    let out = wsgate()
        .args(["--config", example, "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_configs_name_the_key_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let unknown = file("unknown.toml", "[limits]\nmax_mesage_size = 10\n");
    fails_with(&["--config", &unknown], "max_mesage_size");
    let bad_addr = file("addr.toml", "[listen]\nws = \"localhost:http\"\n");
    fails_with(&["--config", &bad_addr], "listen.ws");
    fails_with(
        &["--config", "/nonexistent/wsgate.toml"],
        "/nonexistent/wsgate.toml",
    );
    fails_with(
        &[
            "--ws",
            "off",
            "--wss",
            "127.0.0.1:0",
            "--cert",
            "/nonexistent/c.pem",
            "--key",
            "/nonexistent/k.pem",
        ],
        "tls.cert",
    );
    let garbage = file("garbage.pem", "not a pem\n");
    fails_with(
        &[
            "--ws",
            "off",
            "--wss",
            "127.0.0.1:0",
            "--cert",
            &garbage,
            "--key",
            &garbage,
        ],
        "garbage.pem",
    );
    fails_with(
        &["--cores", "65", "--ws", "127.0.0.1:0", "--wss", "off"],
        "cores",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    fails_with(
        &["--ws", &addr, "--wss", "off", "--admin", "off"],
        "listen.ws",
    );
    fails_with(
        &["--ws", "127.0.0.1:0", "--wss", "off", "--admin", &addr],
        "admin.listen",
    );
}

#[tokio::test]
async fn binary_serves_ws_and_wss_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let cfg = dir.path().join("wsgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "cores = 2\n[listen]\nws = \"127.0.0.1:0\"\nwss = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n[admin]\nlisten = \"off\"\n",
            cert, key
        ),
    )
    .unwrap();
    let mut child = wsgate()
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--driver",
            "epoll",
            "--echo-path",
            "/e",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (ws_url, wss_url) = tokio::task::spawn_blocking(move || {
        let (mut ws, mut wss) = (None, None);
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(u) = line
                .split_whitespace()
                .find(|w| w.starts_with("ws://") && w.ends_with("/e"))
            {
                ws = Some(u.to_string());
            }
            if let Some(u) = line
                .split_whitespace()
                .find(|w| w.starts_with("wss://") && w.ends_with("/e"))
            {
                wss = Some(u.to_string());
            }
            if ws.is_some() && wss.is_some() {
                break;
            }
        }
        (ws.expect("ws url printed"), wss.expect("wss url printed"))
    })
    .await
    .unwrap();
    let mut ws = connect(&ws_url).await;
    ws.send(Message::Text("via binary".into())).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::Text("via binary".into()));
    // The configured certificate is served (the client trusts only it).
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let url = wss_url.replace("127.0.0.1", "localhost");
    let (mut wss, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        true,
        Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
            tls,
        ))),
    )
    .await
    .unwrap();
    wss.send(Message::Text("tls".into())).await.unwrap();
    assert_eq!(next_msg(&mut wss).await, Message::Text("tls".into()));

    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(
        expect_close(&mut ws).await.code,
        tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away
    );
    drop((ws, wss));
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..200 {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("wsgate did not exit after SIGTERM");
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
}

/// Start the binary with `args` (plus ephemeral listeners) and return it with its ws address.
fn spawn_gateway(args: &[&str]) -> (std::process::Child, String) {
    let mut child = wsgate()
        .env("RUST_LOG", "info")
        .args([
            "--ws",
            "127.0.0.1:0",
            "--wss",
            "off",
            "--admin",
            "off",
            "--cores",
            "1",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut addr = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(u) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
            addr = u
                .trim_start_matches("ws://")
                .split('/')
                .next()
                .unwrap()
                .to_string();
            break;
        }
    }
    assert!(!addr.is_empty(), "no ws address printed");
    (child, addr)
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..400 {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    panic!("wsgate did not exit");
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("slow-drain.toml");
    // A long drain: only the second signal can end the process quickly.
    std::fs::write(
        &cfg,
        "[limits]\nshutdown_grace_ms = 60000\nclose_timeout_ms = 60000\n",
    )
    .unwrap();
    let (mut child, addr) = spawn_gateway(&["--config", cfg.to_str().unwrap()]);
    // A client that upgrades and then never reads or answers the close handshake.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still draining after the first signal"
    );
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child);
    assert_eq!(
        status.code(),
        Some(1),
        "the second signal exits at once with status 1"
    );
}

#[test]
fn json_logs_record_refused_handshakes_without_tokens() {
    let (mut child, addr) = spawn_gateway(&["--log-format", "json"]);
    let stderr = child.stderr.take().unwrap();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    // A refused upgrade (wrong method), carrying a secret-looking token in the query.
    s.write_all(b"POST /ws?token=SECRET-TOKEN HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 405"));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_exit(&mut child);
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut logs).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("handshake rejected"))
        .unwrap_or_else(|| panic!("no rejection logged:\n{logs}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("log lines are JSON");
    assert_eq!(v["fields"]["status"], 405);
    assert_eq!(v["fields"]["client"], "127.0.0.1");
    assert!(!logs.contains("SECRET-TOKEN"), "a token reached the logs");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join(format!("{name}.crt")), ck.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join(format!("{name}.key")),
            ck.key_pair.serialize_pem(),
        )
        .unwrap();
        ck
    };
    let (a, b) = (write("a"), write("b"));
    let (crt, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(dir.path().join("a.crt"), &crt).unwrap();
    std::fs::copy(dir.path().join("a.key"), &key).unwrap();
    let mut child = wsgate()
        .args([
            "--ws",
            "off",
            "--wss",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--cores",
            "1",
        ])
        .args([
            "--cert",
            crt.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let port = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(u) = line.split_whitespace().find(|w| w.starts_with("wss://")) {
                let hostport = u
                    .trim_start_matches("wss://")
                    .split('/')
                    .next()
                    .unwrap_or_default();
                return hostport
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .parse::<u16>()
                    .unwrap();
            }
        }
        panic!("no wss url printed");
    })
    .await
    .unwrap();
    let roots = vec![a.cert.der().clone(), b.cert.der().clone()];
    let served = || {
        let roots = roots.clone();
        async move {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store.add(r).unwrap();
            }
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(store)
                .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect(name, tcp)
                .await
                .unwrap();
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        }
    };
    assert_eq!(served().await, a.cert.der().to_vec());
    std::fs::copy(dir.path().join("b.crt"), &crt).unwrap();
    std::fs::copy(dir.path().join("b.key"), &key).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let mut now_b = false;
    for _ in 0..100 {
        if served().await == b.cert.der().to_vec() {
            now_b = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        now_b,
        "after SIGHUP new connections get the new certificate"
    );
    let _ = child.kill();
    let _ = child.wait();
}
