//! `fanout`: S subscribers over T topics, N publishers, end-to-end latency and delivery accounting.
//!
//! Subscriber *i* (global index, across `--procs`) subscribes to topic `t{i % T}` with an `id` and
//! waits for the ack, because the protocol only guarantees delivery of publishes accepted after
//! the ack; the window starts only when every subscriber of every process is acked. Publisher *j*
//! sends its *k*-th publish to topic `t{(j + k) % T}` with `"pub": j` and a per-(publisher, topic)
//! `seq` in `data`, and an `id` so that acks bound the in-flight window and rejected publishes are
//! not expected. Receivers keep a seen-bitmap per (publisher, topic) stream, which tells unique,
//! duplicated and reordered deliveries apart; lost = expected - unique, where expected = sum over
//! topics of accepted publishes x subscribers of that topic. After publishing stops the run waits
//! until every expected delivery arrived or `--drain` expires, so slow servers show up as latency
//! rather than as loss.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::FanoutArgs;
use crate::connect::{classify_ws, graceful_close, ConnError, ErrKind, Ws};
use crate::coord::{Coord, Ctx};
use crate::report::{per_s, Partial, Report, ShardedHist};
use crate::scenarios::setup_all;

/// Largest seq a receiver tracks (guards the bitmap against garbage input).
const MAX_SEQ: u64 = 1 << 32;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Subscribers per topic over the whole run (all processes): `S / T` plus one for the first
/// `S % T` topics, because subscriber i takes topic i % T.
pub fn subs_per_topic(subscribers: usize, topics: usize) -> Vec<u64> {
    (0..topics)
        .map(|t| crate::cli::share(subscribers, t, topics) as u64)
        .collect()
}

/// What happened to one delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Unique,
    /// Unique, but a higher seq of the same stream arrived before it.
    Reordered,
    Duplicate,
}

/// Per-(publisher, topic) receive state of one subscriber.
#[derive(Default)]
pub struct Stream {
    bits: Vec<u64>,
    max: Option<u64>,
}

impl Stream {
    pub fn observe(&mut self, seq: u64) -> Seen {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) != 0 {
            return Seen::Duplicate;
        }
        self.bits[w] |= 1 << b;
        match self.max {
            Some(m) if seq < m => Seen::Reordered,
            _ => {
                self.max = Some(seq);
                Seen::Unique
            }
        }
    }
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(borrow, default)]
    topic: Option<&'a str>,
    #[serde(default)]
    data: Option<Payload>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    ts: u64,
    seq: u64,
    #[serde(rename = "pub")]
    publisher: u32,
}

/// Shared counters the drain loop watches.
struct Live {
    unique: AtomicU64,
    alive_subs: AtomicU64,
    /// ns since go of the latest delivery, for deliveries/s.
    last_delivery_ns: AtomicU64,
}

#[derive(Default)]
struct SubStats {
    received: u64,
    unique: u64,
    dup: u64,
    reordered: u64,
    unexpected: u64,
}

#[derive(Default)]
struct PubStats {
    sent: u64,
    acked: u64,
    rejected: u64,
    bytes: u64,
    /// Accepted (sent - rejected) per topic.
    per_topic: Vec<u64>,
}

pub async fn run(args: &FanoutArgs, ctx: Arc<Ctx>, coord: &mut Coord) -> Result<Partial> {
    let topics = args.topics;
    let sub_ids: Vec<usize> = (ctx.proc_index..args.subscribers)
        .step_by(ctx.procs)
        .collect();
    let pub_ids: Vec<usize> = (ctx.proc_index..args.publishers)
        .step_by(ctx.procs)
        .collect();
    let mut local_subs = vec![0u64; topics];
    for &i in &sub_ids {
        local_subs[i % topics] += 1;
    }

    // Setup: subscribers (connect + subscribe + ack), then publishers.
    let subs = setup_all(&ctx, sub_ids, |i| {
        let ctx = ctx.clone();
        async move {
            let mut ws = ctx.open_counted().await?;
            match subscribe(&mut ws, i, i % topics, &ctx).await {
                Ok(()) => Ok(ws),
                Err(e) => {
                    ctx.open.fetch_sub(1, Ordering::Relaxed);
                    Err(e)
                }
            }
        }
    })
    .await;
    let pubs = setup_all(&ctx, pub_ids, |_| {
        let ctx = ctx.clone();
        async move { ctx.open_counted().await }
    })
    .await;

    coord.ready(&ctx).await?;
    let go = Instant::now();
    let live = Arc::new(Live {
        unique: AtomicU64::new(0),
        alive_subs: AtomicU64::new(subs.len() as u64),
        last_delivery_ns: AtomicU64::new(0),
    });
    let hist = Arc::new(ShardedHist::new(ctx.threads));
    let (stop_subs_tx, stop_subs_rx) = watch::channel(false);

    let mut sub_tasks = tokio::task::JoinSet::new();
    for (i, ws) in subs {
        let (ctx, live, hist, stop) = (
            ctx.clone(),
            live.clone(),
            hist.clone(),
            stop_subs_rx.clone(),
        );
        sub_tasks.spawn(async move {
            let mut st = SubStats::default();
            let r = subscriber(ws, i, topics, &ctx, &live, &hist, go, stop, &mut st).await;
            live.alive_subs.fetch_sub(1, Ordering::Relaxed);
            ctx.open.fetch_sub(1, Ordering::Relaxed);
            if let Err(e) = r {
                ctx.error(&e);
            }
            st
        });
    }

    let window = Duration::from_secs_f64(args.common.duration);
    let deadline = go + window;
    let rate_per_pub = if args.rate > 0.0 {
        args.rate / args.publishers as f64
    } else {
        0.0
    };
    let mut pub_tasks = tokio::task::JoinSet::new();
    if !ctx.stopped() {
        for (j, ws) in pubs {
            let (ctx, args) = (ctx.clone(), args.clone());
            pub_tasks.spawn(async move {
                let mut st = PubStats {
                    per_topic: vec![0; args.topics],
                    ..PubStats::default()
                };
                let r = publisher(ws, j, &args, rate_per_pub, &ctx, deadline, &mut st).await;
                ctx.open.fetch_sub(1, Ordering::Relaxed);
                if let Err(e) = r {
                    ctx.error(&e);
                }
                st
            });
        }
    }
    let mut p = Partial {
        pubs_per_topic: vec![0; topics],
        ..Partial::default()
    };
    while let Some(r) = pub_tasks.join_next().await {
        match r {
            Ok(st) => {
                p.add("publishes", st.sent);
                p.add("publish_acks", st.acked);
                p.add("publish_errors", st.rejected);
                p.add("publish_bytes", st.bytes);
                for (a, b) in p.pubs_per_topic.iter_mut().zip(&st.per_topic) {
                    *a += b;
                }
            }
            Err(e) => ctx.error_msg(&format!("publisher task failed: {e}")),
        }
    }
    let publish_s = go.elapsed().as_secs_f64();

    // Drain: wait for every delivery this process's subscribers are owed.
    let global = coord.exchange_pubs(&p.pubs_per_topic).await?;
    let expected_local: u64 = local_subs.iter().zip(&global).map(|(s, n)| s * n).sum();
    let drain_start = Instant::now();
    let drain_deadline = drain_start + ctx.drain;
    while live.unique.load(Ordering::Relaxed) < expected_local
        && live.alive_subs.load(Ordering::Relaxed) > 0
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    coord.window_end(&ctx);
    stop_subs_tx.send_replace(true);
    while let Some(r) = sub_tasks.join_next().await {
        match r {
            Ok(st) => {
                p.add("deliveries_received", st.received);
                p.add("deliveries", st.unique);
                p.add("duplicated", st.dup);
                p.add("reordered", st.reordered);
                p.add("unexpected", st.unexpected);
            }
            Err(e) => ctx.error_msg(&format!("subscriber task failed: {e}")),
        }
    }
    p.set_secs("publish", publish_s);
    p.set_secs("drain", drain_s);
    p.set_secs(
        "last_delivery",
        live.last_delivery_ns.load(Ordering::Relaxed) as f64 / 1e9,
    );
    p.hists.insert("e2e".into(), hist.collect());
    Ok(p)
}

/// Sends `{"type":"subscribe","topic":"tX","id":i}` and waits for the matching ack.
async fn subscribe(ws: &mut Ws, i: usize, topic: usize, ctx: &Ctx) -> Result<(), ConnError> {
    let req = format!(r#"{{"type":"subscribe","topic":"t{topic}","id":{i}}}"#);
    ws.send(Message::Text(req))
        .await
        .map_err(|e| classify_ws(&e, "subscribe send"))?;
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let m: Incoming = match serde_json::from_str(&t) {
                        Ok(m) => m,
                        Err(_) => continue,
                    };
                    if m.id != Some(i as u64) {
                        continue;
                    }
                    return match m.ty {
                        "ack" => Ok(()),
                        _ => Err(ConnError::new(
                            ErrKind::Rejected,
                            format!(
                                "subscribe rejected: {}",
                                m.code.as_deref().unwrap_or("unknown")
                            ),
                        )),
                    };
                }
                Some(Ok(Message::Ping(_))) => {
                    ctx.pings.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(ConnError::new(
                        ErrKind::Closed,
                        "subscribe: connection closed by server",
                    ))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(classify_ws(&e, "subscribe")),
            }
        }
    };
    match tokio::time::timeout(ctx.setup_timeout, wait).await {
        Ok(r) => r,
        Err(_) => Err(ConnError::new(ErrKind::Timeout, "subscribe: no ack")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    mut ws: Ws,
    i: usize,
    topics: usize,
    ctx: &Ctx,
    live: &Live,
    hist: &ShardedHist,
    go: Instant,
    mut stop: watch::Receiver<bool>,
    st: &mut SubStats,
) -> Result<(), ConnError> {
    let my_topic = format!("t{}", i % topics);
    let mut streams: HashMap<u32, Stream> = HashMap::new();
    loop {
        let msg = tokio::select! {
            biased;
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            m = ws.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_))) => {
                ctx.pings.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(ConnError::new(
                    ErrKind::Closed,
                    "subscriber: connection closed by server",
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(classify_ws(&e, "subscriber receive")),
        };
        let now = now_ns();
        let m: Incoming = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(_) => {
                st.unexpected += 1;
                continue;
            }
        };
        if m.ty != "message" {
            continue;
        }
        let Some(data) = m.data else {
            st.unexpected += 1;
            continue;
        };
        if m.topic != Some(my_topic.as_str()) || data.seq >= MAX_SEQ {
            st.unexpected += 1;
            continue;
        }
        st.received += 1;
        hist.record_us(i, now.saturating_sub(data.ts) / 1000);
        match streams.entry(data.publisher).or_default().observe(data.seq) {
            Seen::Duplicate => st.dup += 1,
            seen => {
                st.unique += 1;
                if seen == Seen::Reordered {
                    st.reordered += 1;
                }
                live.unique.fetch_add(1, Ordering::Relaxed);
                live.last_delivery_ns
                    .fetch_max(go.elapsed().as_nanos() as u64, Ordering::Relaxed);
                ctx.ops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    graceful_close(ws, Duration::from_secs(1)).await;
    Ok(())
}

/// Builds one publish frame with `data` sized to `payload` bytes.
pub fn publish_frame(
    buf: &mut String,
    topic: usize,
    id: u64,
    publisher: usize,
    seq: u64,
    payload: usize,
) {
    buf.clear();
    let ts = now_ns();
    let mut data = String::with_capacity(payload.max(64));
    let _ = write!(data, r#"{{"ts":{ts},"seq":{seq},"pub":{publisher},"pad":""#);
    // The remaining bytes are the pad plus the closing `"}`.
    let pad = payload.saturating_sub(data.len() + 2);
    data.extend(std::iter::repeat('x').take(pad));
    data.push_str("\"}");
    let _ = write!(
        buf,
        r#"{{"type":"publish","topic":"t{topic}","id":{id},"data":{data}}}"#
    );
}

/// One publisher: paced (`rate_per_pub` > 0) or open loop, never more than `--window` unacked.
async fn publisher(
    mut ws: Ws,
    j: usize,
    args: &FanoutArgs,
    rate_per_pub: f64,
    ctx: &Ctx,
    deadline: Instant,
    st: &mut PubStats,
) -> Result<(), ConnError> {
    let topics = args.topics;
    let window = args.window as u64;
    let start = Instant::now();
    let mut frame = String::new();
    let send_err = |e| classify_ws(&e, "publish send");
    let inflight = |st: &PubStats| st.sent - st.acked - st.rejected;

    loop {
        let now = Instant::now();
        if now >= deadline || ctx.stopped() {
            break;
        }
        let due = if rate_per_pub > 0.0 {
            ((now - start).as_secs_f64() * rate_per_pub) as u64
        } else {
            u64::MAX
        };
        let room = window.saturating_sub(inflight(st));
        let n = due.saturating_sub(st.sent).min(room).min(256);
        if n > 0 {
            // A server that stops reading would block these writes forever: bound them.
            let batch = async {
                for _ in 0..n {
                    let k = st.sent;
                    let topic = (j + k as usize) % topics;
                    let seq = k / topics as u64;
                    publish_frame(&mut frame, topic, k, j, seq, args.payload);
                    st.bytes += frame.len() as u64;
                    ws.feed(Message::Text(frame.clone()))
                        .await
                        .map_err(send_err)?;
                    st.sent += 1;
                    st.per_topic[topic] += 1;
                }
                ws.flush().await.map_err(send_err)
            };
            match tokio::time::timeout_at((deadline + ctx.drain).into(), batch).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(ConnError::new(
                        ErrKind::Timeout,
                        "publish send: server stopped reading (stalled past --drain)",
                    ))
                }
            }
        }
        // Read whatever replies are ready; block only if there is nothing to send right now.
        let must_wait = inflight(st) >= window || (rate_per_pub > 0.0 && n == 0);
        if must_wait {
            let next_due = if rate_per_pub > 0.0 && inflight(st) < window {
                start + Duration::from_secs_f64((st.sent + 1) as f64 / rate_per_pub)
            } else {
                deadline
            };
            let wake = next_due.min(deadline);
            tokio::select! {
                m = ws.next() => handle_reply(m, j, topics, ctx, st)?,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        for _ in 0..1024 {
            match ws.next().now_or_never() {
                Some(m) => handle_reply(m, j, topics, ctx, st)?,
                None => break,
            }
        }
    }
    // Collect the outstanding acks so accepted/rejected counts are exact.
    let ack_deadline = Instant::now() + ctx.drain;
    while inflight(st) > 0 {
        match tokio::time::timeout_at(ack_deadline.into(), ws.next()).await {
            Ok(m) => handle_reply(m, j, topics, ctx, st)?,
            Err(_) => {
                ctx.error_msg("publisher: acks still missing after --drain");
                break;
            }
        }
    }
    graceful_close(ws, Duration::from_secs(1)).await;
    Ok(())
}

type Next = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

fn handle_reply(
    m: Next,
    j: usize,
    topics: usize,
    ctx: &Ctx,
    st: &mut PubStats,
) -> Result<(), ConnError> {
    match m {
        Some(Ok(Message::Text(t))) => {
            if let Ok(r) = serde_json::from_str::<Incoming>(&t) {
                match (r.ty, r.id) {
                    ("ack", Some(_)) => st.acked += 1,
                    ("error", Some(id)) => {
                        st.rejected += 1;
                        let topic = (j + id as usize) % topics;
                        st.per_topic[topic] = st.per_topic[topic].saturating_sub(1);
                        ctx.error_msg(&format!(
                            "publish rejected: {}",
                            r.code.as_deref().unwrap_or("unknown")
                        ));
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        Some(Ok(Message::Ping(_))) => {
            ctx.pings.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Some(Ok(Message::Close(_))) | None => Err(ConnError::new(
            ErrKind::Closed,
            "publisher: connection closed by server",
        )),
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(classify_ws(&e, "publisher receive")),
    }
}

pub fn report(args: &FanoutArgs, p: &Partial, r: &mut Report) {
    let subs = subs_per_topic(args.subscribers, args.topics);
    let expected: u64 = subs.iter().zip(&p.pubs_per_topic).map(|(s, n)| s * n).sum();
    let unique = p.get("deliveries");
    let publish_s = p.secs("publish");
    let drain_s = p.secs("drain");
    let last = p.secs("last_delivery");
    r.elapsed_s = ((publish_s + drain_s) * 1000.0).round() / 1000.0;
    r.op = "delivery".into();
    r.ops = unique;
    r.ops_per_s = per_s(unique, if last > 0.0 { last } else { publish_s });
    r.latency_us = p.summary("e2e");
    r.payload = Some(args.payload);
    r.subscribers = Some(args.subscribers);
    r.topics = Some(args.topics);
    r.publishers = Some(args.publishers);
    r.rate_target = Some(args.rate);
    r.publishes = Some(p.get("publishes"));
    r.publishes_per_s = Some(per_s(p.get("publishes"), publish_s));
    r.publish_errors = Some(p.get("publish_errors"));
    r.deliveries = Some(unique);
    r.deliveries_per_s = Some(r.ops_per_s);
    r.expected = Some(expected);
    r.lost = Some(expected.saturating_sub(unique));
    r.duplicated = Some(p.get("duplicated"));
    r.reordered = Some(p.get("reordered"));
    r.unexpected = Some(p.get("unexpected"));
    r.publish_s = Some((publish_s * 1000.0).round() / 1000.0);
    r.drain_s = Some((drain_s * 1000.0).round() / 1000.0);
    r.bytes = Some(p.get("publish_bytes"));
    r.bytes_per_s = Some(per_s(p.get("publish_bytes"), publish_s));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_tracking() {
        let mut s = Stream::default();
        assert_eq!(s.observe(0), Seen::Unique);
        assert_eq!(s.observe(2), Seen::Unique);
        assert_eq!(s.observe(1), Seen::Reordered);
        assert_eq!(s.observe(2), Seen::Duplicate);
        assert_eq!(s.observe(200), Seen::Unique);
    }

    #[test]
    fn subs_split() {
        assert_eq!(subs_per_topic(10, 3), vec![4, 3, 3]);
        assert_eq!(subs_per_topic(2, 4), vec![1, 1, 0, 0]);
    }

    #[test]
    fn publish_frame_is_json_with_sized_data() -> anyhow::Result<()> {
        let mut f = String::new();
        for payload in [0usize, 10, 64, 128, 1000] {
            publish_frame(&mut f, 3, 9, 1, 4, payload);
            let v: serde_json::Value = serde_json::from_str(&f)?;
            assert_eq!(v["topic"], "t3");
            assert_eq!(v["data"]["seq"], 4);
            assert_eq!(v["data"]["pub"], 1);
            let data = serde_json::to_string(&v["data"])?;
            if payload >= 64 {
                assert_eq!(data.len(), payload);
            }
        }
        Ok(())
    }
}
