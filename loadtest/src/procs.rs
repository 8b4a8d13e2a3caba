//! `--procs N`: run the load in N child processes and merge their results.
//!
//! One process cannot hold more sockets than its RLIMIT_NOFILE (20,000 here), and one tokio
//! runtime may not be enough client CPU, so the parent re-executes its own binary N times with
//! the same arguments plus the hidden `--child-index i --child-of N`. Children speak a tiny
//! line protocol (see [`crate::coord::Event`] / [`crate::coord::Command`]): they announce
//! `ready` after setup, the parent samples the server and answers `go` once *every* child is
//! ready (so the measured window is common to all), fanout children trade their per-topic
//! publish counts through the parent to know how many deliveries to drain for, and finally each
//! child prints its [`Partial`] (counters plus base64 hdrhistogram V2 blobs). The parent merges
//! them losslessly. A child that dies is counted as an error and no longer holds up a barrier, so
//! one crash cannot hang the run.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

use crate::cli::Scenario;
use crate::coord::{print_progress, progress_line, Command, Event};
use crate::procstat::{ServerProbe, ServerSample};
use crate::report::{Partial, ServerMarks};

/// Child pids, so the watchdog can kill them if the global deadline passes.
pub static CHILD_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// SIGKILLs every child started so far (watchdog / second Ctrl-C).
pub fn kill_children() {
    let pids = CHILD_PIDS.lock().unwrap_or_else(|p| p.into_inner());
    for &pid in pids.iter() {
        // SAFETY: plain syscall; a stale pid at worst gets ESRCH.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

struct ChildState {
    stdin: Option<ChildStdin>,
    alive: bool,
    ready: bool,
    published: Option<Vec<u64>>,
    window_end: bool,
    result: Option<Partial>,
    progress: (u64, u64, u64, u8),
}

impl ChildState {
    /// A child that finished or died no longer holds up a barrier.
    fn done(&self) -> bool {
        !self.alive || self.result.is_some()
    }
}

async fn send(st: &mut ChildState, cmd: &Command) {
    let Some(stdin) = st.stdin.as_mut() else {
        return;
    };
    let Ok(mut line) = serde_json::to_string(cmd) else {
        return;
    };
    line.push('\n');
    if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
        st.stdin = None;
    }
}

fn sample(probe: Option<ServerProbe>, marks: &mut ServerMarks) -> Option<ServerSample> {
    let p = probe?;
    match p.sample() {
        Ok(s) => Some(s),
        Err(e) => {
            marks.error.get_or_insert_with(|| format!("{e:#}"));
            None
        }
    }
}

/// Runs the children to completion and returns the merged partial plus the server marks.
pub async fn run_parent(
    sc: &Scenario,
    probe: Option<ServerProbe>,
    progress: bool,
) -> Result<(Partial, ServerMarks)> {
    let n = sc.common().procs;
    let exe = std::env::current_exe().context("cannot find own executable for --procs")?;
    let base: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut marks = ServerMarks::default();
    marks.start = sample(probe, &mut marks);

    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Option<Event>)>();
    let mut kids = Vec::with_capacity(n);
    let mut states: Vec<ChildState> = Vec::with_capacity(n);
    for i in 0..n {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(&base)
            .arg("--child-index")
            .arg(i.to_string())
            .arg("--child-of")
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start child process {i}"))?;
        if let Some(pid) = child.id() {
            CHILD_PIDS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(pid);
        }
        let stdout = child.stdout.take().context("child stdout not piped")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(ev) => {
                        if tx.send((i, Some(ev))).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("wsgate-load: child {i}: unexpected output: {line}"),
                }
            }
            let _ = tx.send((i, None));
        });
        states.push(ChildState {
            stdin: child.stdin.take(),
            alive: true,
            ready: false,
            published: None,
            window_end: false,
            result: None,
            progress: (0, 0, 0, 0),
        });
        kids.push(child);
    }
    drop(tx);

    let mut parent_errors: Vec<String> = Vec::new();
    let (mut go_sent, mut pubs_sent, mut end_sampled) = (false, false, false);
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_ops = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some((i, Some(ev))) => {
                    let st = &mut states[i];
                    match ev {
                        Event::Progress { ops, errors, open, phase } => {
                            st.progress = (ops, errors, open, phase)
                        }
                        Event::Ready => st.ready = true,
                        Event::Published { pubs } => st.published = Some(pubs),
                        Event::WindowEnd => st.window_end = true,
                        Event::Result { partial } => st.result = Some(*partial),
                    }
                }
                Some((i, None)) => {
                    states[i].alive = false;
                    states[i].stdin = None;
                    if states[i].result.is_none() {
                        parent_errors.push(format!(
                            "child process {i} exited without a result (crashed or killed)"
                        ));
                    }
                }
                None => break,
            },
            _ = tick.tick(), if progress => {
                let ops: u64 = states.iter().map(|s| s.progress.0).sum();
                let errors: u64 = states.iter().map(|s| s.progress.1).sum();
                let open: u64 = states.iter().map(|s| s.progress.2).sum();
                let phase = states.iter().map(|s| s.progress.3).min().unwrap_or(0);
                let line = progress_line(
                    sc.name(),
                    start.elapsed().as_secs_f64(),
                    phase,
                    ops,
                    ops.saturating_sub(last_ops) as f64,
                    open,
                    errors,
                );
                print_progress(&line, tty);
                last_ops = ops;
            }
        }
        if !go_sent && states.iter().all(|s| s.ready || s.done()) {
            marks.ready = sample(probe, &mut marks);
            for st in states.iter_mut() {
                send(st, &Command::Go).await;
            }
            go_sent = true;
        }
        if go_sent
            && !pubs_sent
            && matches!(sc, Scenario::Fanout(_))
            && states.iter().all(|s| s.published.is_some() || s.done())
        {
            let mut total: Vec<u64> = Vec::new();
            for p in states.iter().filter_map(|s| s.published.as_ref()) {
                if total.len() < p.len() {
                    total.resize(p.len(), 0);
                }
                for (a, b) in total.iter_mut().zip(p) {
                    *a += b;
                }
            }
            for st in states.iter_mut() {
                send(
                    st,
                    &Command::Pubs {
                        pubs: total.clone(),
                    },
                )
                .await;
            }
            pubs_sent = true;
        }
        if go_sent && !end_sampled && states.iter().all(|s| s.window_end || s.done()) {
            marks.end = sample(probe, &mut marks);
            end_sampled = true;
        }
        if states.iter().all(|s| !s.alive) {
            break;
        }
    }
    if progress && tty {
        eprintln!();
    }

    for (i, mut child) in kids.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(Ok(status)) if !status.success() && states[i].result.is_some() => {
                parent_errors.push(format!("child process {i} exited with {status}"));
            }
            Ok(_) => {}
            Err(_) => {
                let _ = child.start_kill();
                parent_errors.push(format!("child process {i} did not exit; killed"));
            }
        }
    }

    let mut merged = Partial::default();
    for st in &states {
        if let Some(p) = &st.result {
            merged.merge(p);
        }
    }
    for e in parent_errors {
        *merged.errors.entry(e).or_insert(0) += 1;
    }
    Ok((merged, marks))
}
