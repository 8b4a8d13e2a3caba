//! `examples/embedded.rs` is built by `cargo test` and run here: it embeds a gateway, installs a
//! publish hook, publishes from the host, checks everything with a real client and shuts down.

use std::process::Command;
use std::time::Duration;

#[test]
fn embedded_example_runs_and_passes_its_checks() {
    let exe = std::env::current_exe().expect("test binary path");
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("embedded"))
        .expect("target dir");
    assert!(example.exists(), "{} was not built: plain `cargo test` builds examples (or run `cargo build --example embedded`)", example.display());
    let mut child = Command::new(&example)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the example");
    for _ in 0..600 {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().expect("wait").is_none() {
        let _ = child.kill();
        panic!("the embedded example did not finish within 30 s");
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "status {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
