//! `idle`: open N connections at `--ramp` per second and hold them for `--hold` seconds.
//!
//! This measures what an idle connection costs the server: the RSS delta between "before
//! connecting" and "all connected", divided by the connections actually established, plus the
//! server CPU spent to accept them and to keep them alive (pings) during the hold. Each held
//! connection keeps reading, so server pings are answered (tungstenite queues the pong and sends
//! it on the next read) and counted, and a connection the server drops during the hold is
//! reported as an error. Connection attempts are paced, not bursted, so the accept path is
//! measured rather than the listen backlog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{share, IdleArgs};
use crate::connect::graceful_close;
use crate::coord::{Coord, Ctx};
use crate::report::{per_s, Partial, Report, ShardedHist};

struct Shared {
    attempts_done: AtomicU64,
    connected: AtomicU64,
    dropped: AtomicU64,
    /// ns since ramp start of the last completed attempt.
    last_done_ns: AtomicU64,
}

pub async fn run(args: &IdleArgs, ctx: Arc<Ctx>, coord: &mut Coord) -> Result<Partial> {
    let n = share(args.connections, ctx.proc_index, ctx.procs);
    let ramp = args.ramp / ctx.procs as f64;
    let hold = Duration::from_secs_f64(args.hold.unwrap_or(args.common.duration));
    let nofile = crate::procstat::raise_nofile();
    if n as u64 + 64 > nofile {
        eprintln!(
            "wsgate-load: warning: {n} connections in one process but RLIMIT_NOFILE is {nofile}; \
             use --procs to split them"
        );
    }
    let shared = Arc::new(Shared {
        attempts_done: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        last_done_ns: AtomicU64::new(0),
    });
    let hist = Arc::new(ShardedHist::new(ctx.threads));
    let (release_tx, release_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(ctx.connect_concurrency));
    let start = Instant::now();
    let setup_deadline = start + Duration::from_secs_f64(n as f64 / ramp) + ctx.setup_timeout;
    let mut tasks = tokio::task::JoinSet::new();
    let mut launched = 0u64;
    for k in 0..n {
        if ctx.stopped() {
            break;
        }
        let due = start + Duration::from_secs_f64(k as f64 / ramp);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let permit =
            match tokio::time::timeout_at(setup_deadline.into(), sem.clone().acquire_owned()).await
            {
                Ok(Ok(p)) => p,
                _ => {
                    ctx.error_msg("idle: ramp did not finish within --setup-timeout");
                    break;
                }
            };
        launched += 1;
        let (ctx, shared, hist, mut release) = (
            ctx.clone(),
            shared.clone(),
            hist.clone(),
            release_rx.clone(),
        );
        tasks.spawn(async move {
            let t0 = Instant::now();
            let r = ctx.target.open(None).await;
            drop(permit);
            let done = |s: &Shared| {
                s.last_done_ns
                    .fetch_max(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                s.attempts_done.fetch_add(1, Ordering::Relaxed);
            };
            let mut ws = match r {
                Ok(ws) => ws,
                Err(e) => {
                    ctx.error(&e);
                    done(&shared);
                    return;
                }
            };
            hist.record_us(k, t0.elapsed().as_micros() as u64);
            shared.connected.fetch_add(1, Ordering::Relaxed);
            ctx.open.fetch_add(1, Ordering::Relaxed);
            ctx.ops.fetch_add(1, Ordering::Relaxed);
            done(&shared);
            loop {
                tokio::select! {
                    biased;
                    _ = async { let _ = release.wait_for(|v| *v).await; } => {
                        ctx.open.fetch_sub(1, Ordering::Relaxed);
                        graceful_close(ws, Duration::from_secs(2)).await;
                        return;
                    }
                    m = ws.next() => match m {
                        Some(Ok(Message::Ping(_))) => {
                            ctx.pings.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            ctx.open.fetch_sub(1, Ordering::Relaxed);
                            shared.dropped.fetch_add(1, Ordering::Relaxed);
                            ctx.error_msg("idle: connection closed by server while held");
                            return;
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
        });
    }
    // All attempts finished (connected or failed) = setup done.
    while shared.attempts_done.load(Ordering::Relaxed) < launched && Instant::now() < setup_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if shared.attempts_done.load(Ordering::Relaxed) < launched {
        ctx.error_msg("idle: connection attempts still pending at --setup-timeout");
    }
    let ramp_s = shared.last_done_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let connected = shared.connected.load(Ordering::Relaxed);

    coord.ready(&ctx).await?;
    let dropped_before = shared.dropped.load(Ordering::Relaxed);
    // Hold; end early if the server dropped every connection (nothing left to measure).
    let hold_end = Instant::now() + hold;
    while connected > 0 && !ctx.stopped() && ctx.open.load(Ordering::Relaxed) > 0 {
        let now = Instant::now();
        if now >= hold_end {
            break;
        }
        ctx.sleep_or_stop((hold_end - now).min(Duration::from_millis(200)))
            .await;
    }
    let elapsed = coord.elapsed();
    coord.window_end(&ctx);
    let dropped_hold = shared.dropped.load(Ordering::Relaxed) - dropped_before;
    release_tx.send_replace(true);
    let close_deadline = Instant::now() + ctx.drain + Duration::from_secs(2);
    while !tasks.is_empty() {
        match tokio::time::timeout_at(close_deadline.into(), tasks.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                tasks.abort_all();
                break;
            }
        }
    }

    let mut p = Partial::default();
    p.add("attempts", launched);
    p.add("connected", connected);
    p.add("failures", launched.saturating_sub(connected));
    p.add("not_attempted", n as u64 - launched);
    p.add("dropped", dropped_hold);
    p.set_secs("ramp", ramp_s);
    p.set_secs("window", elapsed);
    p.hists.insert("connect".into(), hist.collect());
    Ok(p)
}

pub fn report(_args: &IdleArgs, p: &Partial, r: &mut Report) {
    let connected = p.get("connected");
    let ramp_s = p.secs("ramp");
    r.elapsed_s = (p.secs("window") * 1000.0).round() / 1000.0;
    r.op = "connection".into();
    r.ops = connected;
    r.ops_per_s = per_s(connected, ramp_s);
    r.connected = Some(connected);
    r.failures = Some(p.get("failures") + p.get("not_attempted"));
    r.connect_rate_per_s = Some(r.ops_per_s);
    r.ramp_s = Some((ramp_s * 1000.0).round() / 1000.0);
    r.dropped = Some(p.get("dropped"));
    r.handshake_latency_us = p.summary("connect");
}

/// Server RSS per connection and setup CPU per connection, once the server marks are known.
pub fn finish(r: &mut Report) {
    let connected = r.connected.unwrap_or(0);
    if connected == 0 {
        return;
    }
    let per_conn =
        |s: u64, at: u64| ((at as f64 - s as f64) / connected as f64 * 100.0).round() / 100.0;
    if let (Some(s), Some(rd)) = (r.server_rss_kib_start, r.server_rss_kib_ready) {
        r.server_rss_kib_per_conn = Some(per_conn(s, rd));
    }
    if let (Some(s), Some(end)) = (r.server_rss_kib_start, r.server_rss_kib) {
        r.server_rss_kib_per_conn_end = Some(per_conn(s, end));
    }
    if let Some(cpu) = r.server_setup_cpu_s {
        r.server_cpu_us_per_op = Some((cpu * 1e6 / connected as f64 * 1000.0).round() / 1000.0);
    }
}
