//! `storm`: C workers looping connect + upgrade + close for the window.
//!
//! Measures the server's connection-setup path: handshake latency runs from the start of the TCP
//! connect to the receipt of the `101 Switching Protocols` response (including TLS for wss), then
//! the worker performs a clean WebSocket close so the server's teardown path is exercised too.
//! A refused connection means the server is gone and stops the run; other failures are counted
//! and the worker backs off briefly so a failing server is not hammered in a tight loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cli::{share, StormArgs};
use crate::connect::graceful_close;
use crate::coord::{Coord, Ctx};
use crate::report::{per_s, Partial, Report, ShardedHist};

pub async fn run(args: &StormArgs, ctx: Arc<Ctx>, coord: &mut Coord) -> Result<Partial> {
    let workers = share(args.connections, ctx.proc_index, ctx.procs);
    let hist = Arc::new(ShardedHist::new(ctx.threads));
    coord.ready(&ctx).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.common.duration);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (ctx, hist) = (ctx.clone(), hist.clone());
        tasks.spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while Instant::now() < deadline && !ctx.stopped() {
                let t0 = Instant::now();
                match ctx.target.open(None).await {
                    Ok(ws) => {
                        hist.record_us(w, t0.elapsed().as_micros() as u64);
                        ok += 1;
                        ctx.ops.fetch_add(1, Ordering::Relaxed);
                        graceful_close(ws, Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        failed += 1;
                        ctx.error(&e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (ok, failed)
        });
    }
    let mut p = Partial::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((ok, failed)) => {
                p.add("handshakes", ok);
                p.add("failures", failed);
            }
            Err(e) => ctx.error_msg(&format!("storm worker failed: {e}")),
        }
    }
    let elapsed = coord.elapsed();
    coord.window_end(&ctx);
    p.set_secs("window", elapsed);
    p.hists.insert("handshake".into(), hist.collect());
    Ok(p)
}

pub fn report(_args: &StormArgs, p: &Partial, r: &mut Report) {
    let secs = p.secs("window");
    r.elapsed_s = (secs * 1000.0).round() / 1000.0;
    r.op = "handshake".into();
    r.ops = p.get("handshakes");
    r.ops_per_s = per_s(r.ops, secs);
    r.failures = Some(p.get("failures"));
    r.latency_us = p.summary("handshake");
}
