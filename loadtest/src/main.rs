//! `wsgate-load`: the load generator bundled with wsgate.
//!
//! It drives a gateway that speaks protocol v1 (`/echo`, `/ws` pub/sub) with four scenarios
//! (echo, fanout, idle, storm) and reports throughput, hdrhistogram latency percentiles,
//! correctness counters, and, with `--server-pid`, the server's CPU and memory over the measured
//! window next to the generator's own CPU, so a reader can tell which side saturated.
//!
//! Process model: a single process by default (a current-thread tokio runtime unless
//! `--threads N`, so that on a small box the client does not steal the server's cores), or, with
//! `--procs N`, a parent that re-executes itself N times and merges the children's results
//! (see [`procs`]). Every run is bounded: a watchdog thread ends the process when the global
//! deadline (setup + window + drain + slack) passes, whatever state the network is in.

mod cli;
mod connect;
mod coord;
mod procs;
mod procstat;
mod report;
mod scenarios;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::{Cli, Scenario};
use crate::connect::Target;
use crate::coord::{emit, end_progress, spawn_progress, Coord, Ctx, Event};
use crate::procstat::ServerProbe;
use crate::report::{Partial, Report};

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsgate-load: error: {e:#}");
            if e.chain().any(|c| c.is::<cli::Usage>()) {
                2
            } else {
                1
            }
        }
    };
    let _ = std::io::stdout().flush();
    // Exit explicitly: lingering tasks (a blocked stdin reader, half-closed sockets) must not
    // delay the end of a finished run.
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    let sc = cli.scenario;
    sc.validate()?;
    let c = sc.common();
    let child = match (c.child_index, c.child_of) {
        (Some(i), Some(n)) if i < n => Some((i, n)),
        (None, None) => None,
        _ => crate::usage!("--child-index/--child-of are internal flags and must come together"),
    };
    // Only the ring provider is compiled in; installing it explicitly makes that unambiguous.
    let _ = rustls::crypto::ring::default_provider().install_default();
    procstat::raise_nofile();
    // Children get a little longer than the parent so the parent reports their hang.
    let slack = if child.is_some() { 5 } else { 0 };
    start_watchdog(sc.global_deadline() + Duration::from_secs(slack));

    let rt = if c.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(c.threads)
            .enable_all()
            .build()
    }
    .context("cannot start the tokio runtime")?;

    let result = rt.block_on(async move {
        match child {
            Some((i, n)) => run_child(&sc, i, n).await,
            None if sc.common().procs > 1 => run_parent(&sc).await,
            None => run_local(&sc).await,
        }
    });
    // Do not wait for blocking-pool threads: a child's stdin reader sits in read(2) forever.
    rt.shutdown_background();
    result
}

/// Hard stop at the global deadline, independent of the async runtime.
fn start_watchdog(deadline: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!(
            "wsgate-load: error: global deadline of {:.0}s exceeded (setup + duration + drain); \
             aborting. The server is probably wedged or overloaded.",
            deadline.as_secs_f64()
        );
        procs::kill_children();
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    });
}

fn progress_enabled(sc: &Scenario) -> bool {
    let ramp = match sc {
        Scenario::Idle(a) => a.connections as f64 / a.ramp,
        _ => 0.0,
    };
    !sc.common().quiet && sc.window_secs() + ramp >= 3.0
}

fn server_probe(sc: &Scenario) -> Result<Option<ServerProbe>> {
    let pids = &sc.common().server_pid;
    if pids.is_empty() {
        return Ok(None);
    }
    let p = ServerProbe::new(pids)?;
    p.sample().context("--server-pid")?;
    Ok(Some(p))
}

/// First Ctrl-C ends the measured window early (a report is still printed); the second exits.
fn spawn_ctrl_c(ctx: Option<Arc<Ctx>>) {
    tokio::spawn(async move {
        let mut n = 0;
        while tokio::signal::ctrl_c().await.is_ok() {
            n += 1;
            if n >= 2 {
                procs::kill_children();
                std::process::exit(130);
            }
            if let Some(ctx) = &ctx {
                ctx.stop();
            }
        }
    });
}

async fn run_local(sc: &Scenario) -> Result<i32> {
    let c = sc.common();
    let target = Target::new(c, sc.default_path(), 0, 1).await?;
    let url = target.display_url();
    let probe = server_probe(sc)?;
    let ctx = Arc::new(Ctx::new(target, c, 0, 1));
    let mut coord = Coord::local(probe);
    spawn_ctrl_c(Some(ctx.clone()));
    let progress = progress_enabled(sc);
    spawn_progress(ctx.clone(), sc.name(), false, progress);
    let partial = scenarios::run(sc, ctx, &mut coord).await?;
    end_progress(progress);
    let report = scenarios::report(sc, url, &partial, &coord.marks);
    output(&report, c.json);
    Ok(report.exit_code())
}

async fn run_parent(sc: &Scenario) -> Result<i32> {
    let c = sc.common();
    // Validate the target (loopback rule, TLS files) before starting children.
    let target = Target::new(c, sc.default_path(), 0, c.procs).await?;
    let url = target.display_url();
    drop(target);
    let probe = server_probe(sc)?;
    spawn_ctrl_c(None);
    let (partial, marks) = procs::run_parent(sc, probe, progress_enabled(sc)).await?;
    let report = scenarios::report(sc, url, &partial, &marks);
    output(&report, c.json);
    Ok(report.exit_code())
}

async fn run_child(sc: &Scenario, i: usize, n: usize) -> Result<i32> {
    let c = sc.common();
    let fail = |msg: String| {
        let mut p = Partial::default();
        p.errors.insert(msg, 1);
        emit(&Event::Result {
            partial: Box::new(p),
        });
        Ok(1)
    };
    let target = match Target::new(c, sc.default_path(), i, n).await {
        Ok(t) => t,
        Err(e) => return fail(format!("child {i}: {e:#}")),
    };
    let ctx = Arc::new(Ctx::new(target, c, i, n));
    let mut coord = Coord::child();
    spawn_ctrl_c(Some(ctx.clone()));
    spawn_progress(ctx.clone(), sc.name(), true, true);
    match scenarios::run(sc, ctx, &mut coord).await {
        Ok(p) => {
            emit(&Event::Result {
                partial: Box::new(p),
            });
            Ok(0)
        }
        Err(e) => fail(format!("child {i}: {e:#}")),
    }
}

fn output(r: &Report, json: bool) {
    if json {
        match serde_json::to_string(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("wsgate-load: cannot serialise report: {e}"),
        }
        for (m, n) in &r.error_messages {
            eprintln!("wsgate-load: error: {n} x {m}");
        }
    } else {
        print!("{}", r.table());
    }
}
