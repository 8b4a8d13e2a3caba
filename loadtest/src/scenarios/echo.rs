//! `echo`: C connections to `/echo`, each keeping `--pipeline` messages in flight.
//!
//! Every payload embeds the connection and sequence number and a seq-dependent filler, so an echo
//! that comes back altered, truncated, out of order or with the wrong opcode is caught by
//! regenerating the expected bytes and comparing them in full (counted as `mismatches`; any
//! mismatch makes the run fail). The payload is regenerated instead of stored, so the pipeline
//! costs no memory per message. Round-trip time is measured from the send of a message to the
//! receipt of its echo.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{share, EchoArgs};
use crate::connect::{classify_ws, graceful_close, ConnError, ErrKind, Ws};
use crate::coord::{Coord, Ctx};
use crate::report::{per_s, Partial, Report, ShardedHist};
use crate::scenarios::setup_all;

/// Fills `buf` with the payload of message `seq` on connection `conn`.
pub fn fill_payload(buf: &mut Vec<u8>, conn: usize, seq: u64, len: usize, binary: bool) {
    use std::io::Write;
    buf.clear();
    let _ = write!(buf, "{conn:08x}:{seq:016x}:");
    let mut i = buf.len() as u64;
    while buf.len() < len {
        let b = if binary {
            // Full byte range, to catch servers that mangle non-UTF-8 binary frames.
            (seq.wrapping_mul(31).wrapping_add(i) & 0xff) as u8
        } else {
            b'a' + ((seq + i) % 26) as u8
        };
        buf.push(b);
        i += 1;
    }
    buf.truncate(len);
}

#[derive(Default)]
struct ConnStats {
    round_trips: u64,
    bytes: u64,
    mismatches: u64,
}

pub async fn run(args: &EchoArgs, ctx: Arc<Ctx>, coord: &mut Coord) -> Result<Partial> {
    let n = share(args.connections, ctx.proc_index, ctx.procs);
    // Globally unique connection ids: process i owns ids i, i+procs, ...
    let ids: Vec<usize> = (0..n).map(|k| ctx.proc_index + k * ctx.procs).collect();
    let conns = setup_all(&ctx, ids, |_| {
        let ctx = ctx.clone();
        async move { ctx.open_counted().await }
    })
    .await;

    coord.ready(&ctx).await?;
    let hist = Arc::new(ShardedHist::new(ctx.threads));
    let window = Duration::from_secs_f64(args.common.duration);
    let deadline = Instant::now() + window;
    let mut tasks = tokio::task::JoinSet::new();
    if !ctx.stopped() {
        for (id, ws) in conns {
            let ctx = ctx.clone();
            let hist = hist.clone();
            let args = args.clone();
            tasks.spawn(async move {
                let mut st = ConnStats::default();
                let r = echo_conn(ws, id, &args, &ctx, &hist, deadline, &mut st).await;
                ctx.open.fetch_sub(1, Ordering::Relaxed);
                if let Err(e) = r {
                    ctx.error(&e);
                }
                st
            });
        }
    }
    let mut p = Partial::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(st) => {
                p.add("round_trips", st.round_trips);
                p.add("bytes", st.bytes);
                p.add("mismatches", st.mismatches);
            }
            Err(e) => ctx.error_msg(&format!("echo task failed: {e}")),
        }
    }
    let elapsed = coord.elapsed();
    coord.window_end(&ctx);
    p.set_secs("window", elapsed);
    p.hists.insert("rtt".into(), hist.collect());
    Ok(p)
}

/// One connection: keep `pipeline` messages in flight until the deadline, verify every echo,
/// then drain what is still in flight (bounded by `--drain`) and close.
async fn echo_conn(
    mut ws: Ws,
    id: usize,
    args: &EchoArgs,
    ctx: &Ctx,
    hist: &ShardedHist,
    deadline: Instant,
    st: &mut ConnStats,
) -> Result<(), ConnError> {
    let mut inflight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(args.pipeline);
    let mut out = Vec::with_capacity(args.payload + 32);
    let mut expect = Vec::with_capacity(args.payload + 32);
    let mut next_seq = 0u64;
    let send_err = |e| classify_ws(&e, "echo send");

    let make = |buf: &Vec<u8>| -> Message {
        if args.binary {
            Message::Binary(buf.clone())
        } else {
            // fill_payload only writes ASCII in text mode.
            Message::Text(String::from_utf8_lossy(buf).into_owned())
        }
    };

    for _ in 0..args.pipeline {
        fill_payload(&mut out, id, next_seq, args.payload, args.binary);
        ws.feed(make(&out)).await.map_err(send_err)?;
        inflight.push_back((next_seq, Instant::now()));
        next_seq += 1;
    }
    ws.flush().await.map_err(send_err)?;

    let mut drain_deadline: Option<Instant> = None;
    while let Some(&(seq, sent_at)) = inflight.front() {
        let sending = Instant::now() < deadline && !ctx.stopped();
        let wait_until = if sending {
            // A healthy echo never takes longer than the window plus the drain timeout.
            deadline + ctx.drain
        } else {
            *drain_deadline.get_or_insert_with(|| Instant::now() + ctx.drain)
        };
        let msg = match tokio::time::timeout_at(wait_until.into(), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(classify_ws(&e, "echo receive")),
            Ok(None) => {
                return Err(ConnError::new(
                    ErrKind::Closed,
                    "echo receive: connection closed by server",
                ))
            }
            Err(_) => {
                return Err(ConnError::new(
                    ErrKind::Timeout,
                    format!(
                        "echo receive: {} echo(es) still missing after --drain",
                        inflight.len()
                    ),
                ))
            }
        };
        let (data, is_binary): (&[u8], bool) = match &msg {
            Message::Text(t) => (t.as_bytes(), false),
            Message::Binary(b) => (b.as_slice(), true),
            Message::Ping(_) => {
                ctx.pings.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => {
                return Err(ConnError::new(
                    ErrKind::Closed,
                    "echo receive: server sent Close mid-run",
                ))
            }
        };
        inflight.pop_front();
        let rtt = sent_at.elapsed();
        hist.record_us(id, rtt.as_micros() as u64);
        fill_payload(&mut expect, id, seq, args.payload, args.binary);
        if is_binary != args.binary || data != expect.as_slice() {
            st.mismatches += 1;
        }
        st.round_trips += 1;
        st.bytes += (args.payload + data.len()) as u64;
        ctx.ops.fetch_add(1, Ordering::Relaxed);

        if Instant::now() < deadline && !ctx.stopped() {
            fill_payload(&mut out, id, next_seq, args.payload, args.binary);
            ws.send(make(&out)).await.map_err(send_err)?;
            inflight.push_back((next_seq, Instant::now()));
            next_seq += 1;
        }
    }
    graceful_close(ws, Duration::from_secs(1)).await;
    Ok(())
}

pub fn report(args: &EchoArgs, p: &Partial, r: &mut Report) {
    let secs = p.secs("window");
    r.elapsed_s = (secs * 1000.0).round() / 1000.0;
    r.op = "round_trip".into();
    r.ops = p.get("round_trips");
    r.ops_per_s = per_s(r.ops, secs);
    r.bytes = Some(p.get("bytes"));
    r.bytes_per_s = Some(per_s(p.get("bytes"), secs));
    r.payload = Some(args.payload);
    r.pipeline = Some(args.pipeline);
    r.mismatches = Some(p.get("mismatches"));
    r.latency_us = p.summary("rtt");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_exact_length_and_varies() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for len in [0usize, 1, 10, 26, 64, 1000] {
            fill_payload(&mut a, 3, 7, len, false);
            assert_eq!(a.len(), len);
            assert!(std::str::from_utf8(&a).is_ok());
            fill_payload(&mut b, 3, 8, len, false);
            if len > 20 {
                assert_ne!(a, b);
            }
        }
        fill_payload(&mut a, 1, 2, 300, true);
        assert_eq!(a.len(), 300);
    }
}
