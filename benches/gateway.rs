//! Micro-benchmarks of the publish path, piece by piece (criterion). What each one means is written
//! down in docs/benchmarks.md; run with `cargo bench --bench gateway`.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::value::RawValue;
use wsgate::bus::{Bus, BusMsg};
use wsgate::pubsub::{protocol, Subscriber, TopicTable};
use wsgate::stats::CoreStats;

fn subscriber(id: u64) -> Rc<Subscriber> {
    Rc::new(Subscriber::new(id, usize::MAX / 2, None))
}

fn payload(len: usize) -> String {
    format!(
        r#"{{"ts":1732890000000000000,"seq":42,"pad":"{}"}}"#,
        "x".repeat(len)
    )
}

fn encode_publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_publish");
    for len in [64usize, 1024, 16 * 1024] {
        let data = payload(len);
        let raw: &RawValue = serde_json::from_str(&data).unwrap();
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &raw, |b, raw| {
            b.iter(|| protocol::message_frame(black_box("chat.room-42"), raw))
        });
    }
    g.finish();
}

fn parse_envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_envelope");
    for len in [64usize, 1024, 16 * 1024] {
        let text = format!(
            r#"{{"type":"publish","topic":"chat.room-42","data":{},"id":7}}"#,
            payload(len)
        );
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &text, |b, text| {
            b.iter(|| protocol::parse(black_box(text)).map(|e| e.id.is_some()))
        });
    }
    g.finish();
}

/// One hop core A -> core B and back through the bus, busy-polling on both sides (no wake-up cost;
/// the wake-up is measured by the load generator). Reported per round trip.
fn bus_hop(c: &mut Criterion) {
    let bus = Bus::new(2);
    let echo = bus.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let peer = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(m) = echo.try_recv(1) {
                echo.send(0, m);
            }
        }
    });
    let frame = Bytes::from_static(b"frame");
    let topic: Arc<str> = Arc::from("t");
    c.bench_function("bus_round_trip", |b| {
        b.iter(|| {
            bus.send(
                1,
                BusMsg::Publish {
                    topic: topic.clone(),
                    frame: frame.clone(),
                    published_us: 0,
                },
            );
            loop {
                if let Some(m) = bus.try_recv(0) {
                    break black_box(m);
                }
            }
        })
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = peer.join();
}

fn topic_table(c: &mut Criterion) {
    const TOPICS: usize = 100_000;
    let names: Vec<String> = (0..TOPICS).map(|i| format!("room.{i}")).collect();
    let mut g = c.benchmark_group("topic_table_100k");
    g.bench_function("subscribe_all_then_unsubscribe", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let table = TopicTable::new(0, Bus::new(1), Arc::new(CoreStats::default()));
                let s = subscriber(1);
                let t0 = Instant::now();
                for n in &names {
                    table.subscribe(&s, n);
                }
                for n in &names {
                    table.unsubscribe(1, n);
                }
                total += t0.elapsed();
            }
            total / TOPICS as u32
        })
    });
    let table = TopicTable::new(0, Bus::new(1), Arc::new(CoreStats::default()));
    let subs: Vec<_> = (0..TOPICS as u64).map(subscriber).collect();
    for (n, s) in names.iter().zip(&subs) {
        table.subscribe(s, n);
    }
    let frame = Bytes::from_static(b"\x81\x02hi");
    let mut i = 0usize;
    g.bench_function("lookup_and_deliver_one", |b| {
        b.iter(|| {
            i = (i + 7919) % TOPICS;
            let n = table.publish(&names[i], frame.clone());
            subs[i].outbox.drain();
            n
        })
    });
    g.finish();
}

fn fanout_local(c: &mut Criterion) {
    const SESSIONS: u64 = 10_000;
    let table = TopicTable::new(0, Bus::new(1), Arc::new(CoreStats::default()));
    let subs: Vec<_> = (0..SESSIONS).map(subscriber).collect();
    for s in &subs {
        table.subscribe(s, "hot");
    }
    let data = payload(100);
    let raw: &RawValue = serde_json::from_str(&data).unwrap();
    let mut g = c.benchmark_group("fanout_10k_local");
    g.throughput(Throughput::Elements(SESSIONS));
    g.bench_function("publish_one_frame", |b| {
        b.iter(|| {
            let frame = protocol::message_frame("hot", raw);
            let n = table.publish("hot", frame);
            for s in &subs {
                s.outbox.drain();
            }
            n
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    encode_publish,
    parse_envelope,
    bus_hop,
    topic_table,
    fanout_local
);
criterion_main!(benches);
