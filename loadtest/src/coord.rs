//! Run-wide shared state and the phase barriers.
//!
//! Every scenario has the same shape: *setup* (connect, subscribe), a *measured window*, and a
//! *drain/close* tail. The measured window must start only when all connections of all processes
//! are ready, and the server must be sampled exactly at the window edges. [`Coord`] hides whether
//! this process is alone (it samples the server itself) or a `--procs` child (it reports the
//! barrier on stdout and waits for the parent's `go` on stdin, and the parent samples the server
//! once every child reached the barrier). Scenario code is therefore identical in both roles.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};

use crate::connect::{ConnError, ErrKind, Target};
use crate::procstat::{self, Cpu, ServerProbe};
use crate::report::{human, Partial, ServerMarks};

pub const PHASE_SETUP: u8 = 0;
pub const PHASE_WINDOW: u8 = 1;
pub const PHASE_DRAIN: u8 = 2;

/// Child -> parent, one JSON object per stdout line.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    Progress {
        ops: u64,
        errors: u64,
        open: u64,
        phase: u8,
    },
    Ready,
    Published {
        pubs: Vec<u64>,
    },
    WindowEnd,
    Result {
        partial: Box<Partial>,
    },
}

/// Parent -> child, one JSON object per stdin line.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Go,
    Pubs { pubs: Vec<u64> },
}

/// Writes one event line to stdout (the parent reads it). Failing to write means the parent is
/// gone; there is nobody left to report to, so the child exits.
pub fn emit(ev: &Event) {
    let line = match serde_json::to_string(ev) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wsgate-load child: cannot serialise event: {e}");
            return;
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(1);
    }
}

/// State shared by all tasks of one process.
pub struct Ctx {
    pub target: Target,
    pub threads: usize,
    pub proc_index: usize,
    pub procs: usize,
    pub drain: Duration,
    pub connect_concurrency: usize,
    pub setup_timeout: Duration,
    /// Main operation counter (progress line).
    pub ops: AtomicU64,
    /// Currently open connections.
    pub open: AtomicU64,
    pub pings: AtomicU64,
    pub phase: AtomicU8,
    error_count: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    stop_tx: watch::Sender<bool>,
    fatal: AtomicBool,
}

impl Ctx {
    /// Open a connection to the target and count it as open.
    pub async fn open_counted(&self) -> Result<crate::connect::Ws, ConnError> {
        let ws = self.target.open(None).await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(ws)
    }

    pub fn new(
        target: Target,
        common: &crate::cli::Common,
        proc_index: usize,
        procs: usize,
    ) -> Ctx {
        Ctx {
            target,
            threads: common.threads,
            proc_index,
            procs,
            drain: Duration::from_secs_f64(common.drain),
            connect_concurrency: common.connect_concurrency,
            setup_timeout: Duration::from_secs_f64(common.setup_timeout),
            ops: AtomicU64::new(0),
            open: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            phase: AtomicU8::new(PHASE_SETUP),
            error_count: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            stop_tx: watch::channel(false).0,
            fatal: AtomicBool::new(false),
        }
    }

    /// Counts a failure; "connection refused" means the server is gone and stops the run.
    pub fn error(&self, e: &ConnError) {
        self.error_msg(&e.msg);
        if e.kind == ErrKind::Refused && !self.fatal.swap(true, Ordering::Relaxed) {
            eprintln!("wsgate-load: {} -- stopping the run", e.msg);
            self.stop();
        }
    }

    pub fn error_msg(&self, msg: &str) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        let mut g = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the number of distinct messages; equal failures aggregate.
        if g.len() < 32 || g.contains_key(msg) {
            *g.entry(msg.to_string()).or_insert(0) += 1;
        } else {
            *g.entry("(other errors)".to_string()).or_insert(0) += 1;
        }
    }

    pub fn error_count(&self) -> u64 {
        self.error_count.load(Ordering::Relaxed)
    }

    pub fn take_errors(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Ends the measured window early (Ctrl-C, server gone).
    pub fn stop(&self) {
        self.stop_tx.send_replace(true);
    }

    pub fn stopped(&self) -> bool {
        *self.stop_tx.borrow()
    }

    pub fn stop_rx(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }

    /// Sleeps `d` unless the run is stopped first.
    pub async fn sleep_or_stop(&self, d: Duration) {
        let mut rx = self.stop_rx();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = async { let _ = rx.wait_for(|s| *s).await; } => {}
        }
    }

    pub fn set_phase(&self, p: u8) {
        self.phase.store(p, Ordering::Relaxed);
    }
}

/// Barrier / sampling helper, see the module docs.
pub struct Coord {
    child_rx: Option<mpsc::UnboundedReceiver<String>>,
    probe: Option<ServerProbe>,
    pub marks: ServerMarks,
    cpu_go: Cpu,
    cpu_end: Option<Cpu>,
    pub go_at: Option<Instant>,
}

impl Coord {
    /// Standalone process: samples the server itself (the "before setup" mark is taken now).
    pub fn local(probe: Option<ServerProbe>) -> Coord {
        let mut c = Coord {
            child_rx: None,
            probe,
            marks: ServerMarks::default(),
            cpu_go: procstat::self_cpu(),
            cpu_end: None,
            go_at: None,
        };
        c.marks.start = c.sample();
        c
    }

    /// `--procs` child: barriers go through stdout/stdin. A closed stdin means the parent died,
    /// and the child exits rather than run unsupervised.
    pub fn child() -> Coord {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) => {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                    _ => {
                        eprintln!("wsgate-load child: parent went away, exiting");
                        std::process::exit(1);
                    }
                }
            }
        });
        Coord {
            child_rx: Some(rx),
            probe: None,
            marks: ServerMarks::default(),
            cpu_go: procstat::self_cpu(),
            cpu_end: None,
            go_at: None,
        }
    }

    fn sample(&mut self) -> Option<procstat::ServerSample> {
        let probe = self.probe?;
        match probe.sample() {
            Ok(s) => Some(s),
            Err(e) => {
                if self.marks.error.is_none() {
                    self.marks.error = Some(format!("{e:#}"));
                }
                None
            }
        }
    }

    async fn recv_cmd(&mut self) -> Result<Command> {
        let rx = self.child_rx.as_mut().context("not a child")?;
        let line = rx
            .recv()
            .await
            .context("parent closed the command channel")?;
        serde_json::from_str(&line).with_context(|| format!("bad command from parent: {line:?}"))
    }

    /// Setup done: wait until every process is ready, then the window starts.
    pub async fn ready(&mut self, ctx: &Ctx) -> Result<()> {
        if self.child_rx.is_some() {
            emit(&Event::Ready);
            match self.recv_cmd().await? {
                Command::Go => {}
                other => bail!("expected go from parent, got {other:?}"),
            }
        } else {
            self.marks.ready = self.sample();
        }
        ctx.set_phase(PHASE_WINDOW);
        self.cpu_go = procstat::self_cpu();
        self.go_at = Some(Instant::now());
        Ok(())
    }

    /// Fanout: trade this process's accepted publishes per topic for the global totals.
    pub async fn exchange_pubs(&mut self, local: &[u64]) -> Result<Vec<u64>> {
        if self.child_rx.is_none() {
            return Ok(local.to_vec());
        }
        emit(&Event::Published {
            pubs: local.to_vec(),
        });
        match self.recv_cmd().await? {
            Command::Pubs { pubs } => Ok(pubs),
            other => bail!("expected publish totals from parent, got {other:?}"),
        }
    }

    /// The measured window is over (for fanout: after the drain).
    pub fn window_end(&mut self, ctx: &Ctx) {
        self.cpu_end = Some(procstat::self_cpu());
        ctx.set_phase(PHASE_DRAIN);
        if self.child_rx.is_some() {
            emit(&Event::WindowEnd);
        } else {
            self.marks.end = self.sample();
        }
    }

    /// Seconds since `go` (0 before it).
    pub fn elapsed(&self) -> f64 {
        self.go_at.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0)
    }

    /// Client CPU over the window into the partial.
    pub fn fill_cpu(&self, p: &mut Partial) {
        let end = self.cpu_end.unwrap_or_else(procstat::self_cpu);
        let d = end.since(&self.cpu_go);
        p.client_cpu_user_s += d.user_s;
        p.client_cpu_sys_s += d.sys_s;
    }
}

/// Formats the once-per-second progress line.
pub fn progress_line(
    scenario: &str,
    t: f64,
    phase: u8,
    ops: u64,
    ops_per_s: f64,
    open: u64,
    errors: u64,
) -> String {
    let ph = match phase {
        PHASE_SETUP => "setup",
        PHASE_WINDOW => "run",
        _ => "drain",
    };
    format!(
        "[{scenario} {t:>5.0}s {ph:<5}] ops {ops} ({}/s)  open {open}  errors {errors}",
        human(ops_per_s)
    )
}

/// Prints progress lines on stderr (standalone) or ships progress events (child), once a second.
pub fn spawn_progress(ctx: Arc<Ctx>, scenario: &'static str, child: bool, enabled: bool) {
    if !enabled && !child {
        return;
    }
    tokio::spawn(async move {
        let start = Instant::now();
        let tty = std::io::stderr().is_terminal();
        let mut last_ops = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let ops = ctx.ops.load(Ordering::Relaxed);
            let open = ctx.open.load(Ordering::Relaxed);
            let errors = ctx.error_count();
            let phase = ctx.phase.load(Ordering::Relaxed);
            if child {
                emit(&Event::Progress {
                    ops,
                    errors,
                    open,
                    phase,
                });
            } else {
                let line = progress_line(
                    scenario,
                    start.elapsed().as_secs_f64(),
                    phase,
                    ops,
                    ops.saturating_sub(last_ops) as f64,
                    open,
                    errors,
                );
                print_progress(&line, tty);
            }
            last_ops = ops;
        }
    });
}

/// One progress line on stderr; on a terminal it overwrites the previous one.
pub fn print_progress(line: &str, tty: bool) {
    if tty {
        eprint!("\r\x1b[K{line}");
    } else {
        eprintln!("{line}");
    }
}

/// Ends an overwritten progress line before the report is printed.
pub fn end_progress(enabled: bool) {
    if enabled && std::io::stderr().is_terminal() {
        eprintln!();
    }
}
