//! The four workloads plus the setup helper they share.
//!
//! Each scenario module exposes `run` (does the work in this process and returns a
//! [`Partial`]) and `report` (turns a possibly merged `Partial` into the scenario's fields of the
//! [`Report`]). Keeping the two apart is what lets `--procs` merge children before reporting.

pub mod echo;
pub mod fanout;
pub mod idle;
pub mod storm;

use std::future::Future;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::Scenario;
use crate::connect::ConnError;
use crate::coord::{Coord, Ctx};
use crate::report::{Partial, Report, ServerMarks};

/// Runs the scenario's share of the work in this process.
pub async fn run(sc: &Scenario, ctx: Arc<Ctx>, coord: &mut Coord) -> Result<Partial> {
    let mut p = match sc {
        Scenario::Echo(a) => echo::run(a, ctx.clone(), coord).await?,
        Scenario::Fanout(a) => fanout::run(a, ctx.clone(), coord).await?,
        Scenario::Idle(a) => idle::run(a, ctx.clone(), coord).await?,
        Scenario::Storm(a) => storm::run(a, ctx.clone(), coord).await?,
    };
    coord.fill_cpu(&mut p);
    p.add(
        "pings",
        ctx.pings.load(std::sync::atomic::Ordering::Relaxed),
    );
    for (k, v) in ctx.take_errors() {
        *p.errors.entry(k).or_insert(0) += v;
    }
    Ok(p)
}

/// Builds the final report from the (merged) partial and the server marks.
pub fn report(sc: &Scenario, url: String, p: &Partial, marks: &ServerMarks) -> Report {
    let c = sc.common();
    let mut r = Report {
        scenario: sc.name().to_string(),
        url,
        procs: c.procs,
        threads: c.threads,
        connections: sc.connections(),
        duration_s: sc.window_secs(),
        ..Report::default()
    };
    match sc {
        Scenario::Echo(a) => echo::report(a, p, &mut r),
        Scenario::Fanout(a) => fanout::report(a, p, &mut r),
        Scenario::Idle(a) => idle::report(a, p, &mut r),
        Scenario::Storm(a) => storm::report(a, p, &mut r),
    }
    r.finish_common(p, marks, c.server_pid.first().copied());
    if let Scenario::Idle(_) = sc {
        idle::finish(&mut r);
    }
    r.set_ok();
    r
}

/// Runs `f(id)` for every id with at most `--connect-concurrency` in flight, bounded overall by
/// `--setup-timeout`. Failures are counted in `ctx`; the successes come back sorted by id.
pub async fn setup_all<T, F, Fut>(ctx: &Arc<Ctx>, ids: Vec<usize>, f: F) -> Vec<(usize, T)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, ConnError>> + Send + 'static,
    T: Send + 'static,
{
    let sem = Arc::new(Semaphore::new(ctx.connect_concurrency));
    let deadline = Instant::now() + ctx.setup_timeout;
    let mut set = JoinSet::new();
    let mut out = Vec::with_capacity(ids.len());
    let mut timed_out = false;
    for id in ids {
        if ctx.stopped() {
            break;
        }
        let permit = match tokio::time::timeout_at(deadline, sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                timed_out = true;
                break;
            }
        };
        let fut = f(id);
        set.spawn(async move {
            let r = fut.await;
            drop(permit);
            (id, r)
        });
    }
    while !timed_out {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok((id, Ok(t))))) => out.push((id, t)),
            Ok(Some(Ok((_, Err(e))))) => ctx.error(&e),
            Ok(Some(Err(e))) => ctx.error_msg(&format!("setup task failed: {e}")),
            Ok(None) => break,
            Err(_) => timed_out = true,
        }
    }
    if timed_out {
        let left = set.len();
        set.abort_all();
        ctx.error_msg(&format!(
            "setup did not finish within --setup-timeout ({left} connections still pending)"
        ));
    }
    out.sort_by_key(|(id, _)| *id);
    out
}
