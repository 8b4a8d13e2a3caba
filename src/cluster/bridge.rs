//! The bridge task: the Redis side of the cluster bus (one per node, on its own thread).
//!
//! One loop owns everything: the bus inbox (publishes and interest announcements from the cores),
//! the Redis subscriber's message stream, and the connection. It handles inbox messages in batches:
//! the publishes of a batch go out as one pipeline (in order, one round trip), then the batch's
//! subscription changes, then the interest confirmations, so a confirmation never precedes the
//! subscription it stands for. While Redis is down the same loop keeps draining the inbox (confirming
//! at once, counting what it cannot forward) and retries the connection with doubling backoff.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::Builder;
use fred::types::{ConnectHandle, Message, Value};
use tokio::sync::broadcast::error::RecvError;

use super::wire::{self, Payload};
use super::{ClusterState, Settings};
use crate::bus::{Bus, BusMsg};
use crate::config::Sharded;

/// Inbox messages handled per batch (one pipeline).
const BATCH: usize = 1024;
/// Channels per (S)SUBSCRIBE command when re-subscribing.
const SUBSCRIBE_CHUNK: usize = 512;
/// Messages the Redis client buffers for the bridge before it starts dropping.
const INCOMING_BUFFER: usize = 1 << 16;

type RedisError = fred::error::Error;

pub(super) struct Bridge {
    settings: Settings,
    bus: Arc<Bus>,
    me: usize,
    state: Arc<ClusterState>,
    node: Bytes,
    topic_prefix: String,
    direct_channel: String,
    /// topic -> cores with local subscribers (as they announced it).
    interest: HashMap<Arc<str>, u64, ahash::RandomState>,
    batch: Vec<BusMsg>,
    /// Not forwarded since the link went down (for the log line when it is back).
    gap: u64,
    stopping: bool,
}

/// A live connection: one client for publishing, one in subscriber mode.
struct Link {
    publisher: Client,
    subscriber: SubscriberClient,
    publisher_task: ConnectHandle,
    subscriber_task: ConnectHandle,
    /// Taken before the first subscription, so nothing between subscribing and serving is missed.
    incoming: tokio::sync::broadcast::Receiver<Message>,
    sharded: bool,
}

enum Op {
    Subscribe(String),
    Unsubscribe(String),
}

impl Bridge {
    pub(super) fn new(
        settings: Settings,
        bus: Arc<Bus>,
        me: usize,
        state: Arc<ClusterState>,
    ) -> Self {
        let topic_prefix = format!("{}:t:", settings.prefix);
        let direct_channel = format!("{}:direct", settings.prefix);
        Self {
            node: Bytes::from(state.node_id.clone().into_bytes()),
            settings,
            bus,
            me,
            state,
            topic_prefix,
            direct_channel,
            interest: HashMap::default(),
            batch: Vec::with_capacity(BATCH),
            gap: 0,
            stopping: false,
        }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = self.settings.reconnect_min;
        let mut connected_before = false;
        let mut down_since = Instant::now();
        let mut attempts = 0u32;
        while !self.stopping {
            let settings = self.settings.clone();
            let link = match self.while_down(connect(&settings)).await {
                None => break,
                Some(Ok(link)) => Some(link),
                Some(Err(e)) => {
                    attempts += 1;
                    if attempts == 1 || attempts % 20 == 0 {
                        tracing::warn!(error = %e, attempts, "cluster bus: cannot reach Redis; delivering on this node only, retrying");
                    }
                    None
                }
            };
            if let Some(link) = link {
                match self.resubscribe(&link).await {
                    Ok(()) => {
                        attempts = 0;
                        backoff = self.settings.reconnect_min;
                        self.state.sharded.store(link.sharded, Ordering::Relaxed);
                        self.state.up.store(true, Ordering::Relaxed);
                        if connected_before {
                            self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                down_s = down_since.elapsed().as_secs_f32(),
                                not_forwarded = self.gap,
                                channels = self.state.channels.load(Ordering::Relaxed),
                                "cluster bus: Redis is back, channels re-subscribed; the messages counted as not_forwarded did not reach other nodes"
                            );
                        } else {
                            tracing::info!(
                                sharded = link.sharded,
                                "cluster bus: connected to Redis"
                            );
                        }
                        connected_before = true;
                        self.gap = 0;
                        let why = self.serve(link).await;
                        self.state.up.store(false, Ordering::Relaxed);
                        if self.stopping {
                            break;
                        }
                        down_since = Instant::now();
                        tracing::warn!(reason = %why, "cluster bus: lost Redis; delivering on this node only until it is back");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster bus: subscribing failed; reconnecting");
                        close(link).await;
                    }
                }
            }
            if self.while_down(tokio::time::sleep(backoff)).await.is_none() {
                break;
            }
            backoff = (backoff * 2).min(self.settings.reconnect_max);
        }
        self.state.up.store(false, Ordering::Relaxed);
    }

    /// Run `fut` while handling the inbox without Redis; `None` if a shutdown came first.
    async fn while_down<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Some(out),
                () = self.bus.ready(self.me) => {
                    self.take_batch();
                    let batch = std::mem::take(&mut self.batch);
                    for msg in &batch {
                        self.note_interest_down(msg);
                    }
                    self.batch = batch;
                    self.batch.clear();
                    if self.stopping {
                        return None;
                    }
                }
            }
        }
    }

    fn note_interest_down(&mut self, msg: &BusMsg) {
        match msg {
            BusMsg::Interest {
                topic,
                from,
                on,
                gen,
            } => {
                self.set_interest(topic, *from, *on);
                if *on {
                    self.ack(topic, *from, *gen);
                }
            }
            BusMsg::Publish { .. } | BusMsg::Direct { .. } => {
                self.gap += 1;
                self.state.not_forwarded.fetch_add(1, Ordering::Relaxed);
            }
            BusMsg::Shutdown => self.stopping = true,
            _ => {}
        }
    }

    fn take_batch(&mut self) {
        while self.batch.len() < BATCH {
            match self.bus.try_recv(self.me) {
                Some(msg) => self.batch.push(msg),
                None => break,
            }
        }
    }

    /// Serve a live link until it fails or a shutdown arrives; returns why it ended.
    async fn serve(&mut self, mut link: Link) -> String {
        let why = loop {
            tokio::select! {
                biased;
                r = &mut link.publisher_task => break format!("publisher connection ended: {}", ended(r)),
                r = &mut link.subscriber_task => break format!("subscriber connection ended: {}", ended(r)),
                m = link.incoming.recv() => match m {
                    Ok(m) => self.on_redis_message(m),
                    Err(RecvError::Lagged(n)) => {
                        self.state.dropped_incoming.fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(dropped = n, "cluster bus: fell behind Redis; messages from other nodes were dropped");
                    }
                    Err(RecvError::Closed) => break "subscriber stream closed".into(),
                },
                () = self.bus.ready(self.me) => {
                    self.take_batch();
                    if let Err(e) = self.flush_batch(&link).await {
                        break e.to_string();
                    }
                    if self.stopping {
                        close(link).await;
                        return "shutdown".into();
                    }
                }
            }
        };
        close(link).await;
        why
    }

    /// Send a batch: publishes first (one pipeline), then subscription changes, then confirmations.
    /// Confirmations are sent even when Redis fails; the topic is re-subscribed on reconnect.
    async fn flush_batch(&mut self, link: &Link) -> Result<(), RedisError> {
        let batch = std::mem::take(&mut self.batch);
        let pipeline = link.publisher.pipeline();
        let mut queued = 0usize;
        let mut ops = Vec::new();
        let mut acks = Vec::new();
        let mut result = Ok(());
        for msg in &batch {
            match msg {
                BusMsg::Publish { topic, frame, .. } => {
                    let channel = format!("{}{topic}", self.topic_prefix);
                    let payload = wire::topic_message(&self.node, frame);
                    if let Err(e) = queue_publish(&pipeline, link.sharded, channel, payload).await {
                        result = Err(e);
                    }
                    queued += 1;
                }
                BusMsg::Direct { to, frame } => {
                    let payload = wire::direct_message(&self.node, to, frame);
                    let channel = self.direct_channel.clone();
                    if let Err(e) = queue_publish(&pipeline, link.sharded, channel, payload).await {
                        result = Err(e);
                    }
                    queued += 1;
                }
                BusMsg::Interest {
                    topic,
                    from,
                    on,
                    gen,
                } => {
                    let before = self.interest.contains_key(topic);
                    self.set_interest(topic, *from, *on);
                    let after = self.interest.contains_key(topic);
                    let channel = || format!("{}{topic}", self.topic_prefix);
                    match (before, after) {
                        (false, true) => ops.push(Op::Subscribe(channel())),
                        (true, false) => ops.push(Op::Unsubscribe(channel())),
                        _ => {}
                    }
                    if *on {
                        acks.push((topic.clone(), *from, *gen));
                    }
                }
                BusMsg::Shutdown => self.stopping = true,
                _ => {}
            }
        }
        self.batch = batch;
        self.batch.clear();
        if queued > 0 && result.is_ok() {
            let sent = pipeline.try_all::<Value>().await;
            let failed = sent.iter().filter(|r| r.is_err()).count();
            self.state
                .sent
                .fetch_add((queued - failed) as u64, Ordering::Relaxed);
            if let Some(Err(e)) = sent.into_iter().find(|r| r.is_err()) {
                result = Err(e);
            }
            if failed > 0 {
                self.gap += failed as u64;
                self.state
                    .not_forwarded
                    .fetch_add(failed as u64, Ordering::Relaxed);
            }
        } else if queued > 0 {
            self.gap += queued as u64;
            self.state
                .not_forwarded
                .fetch_add(queued as u64, Ordering::Relaxed);
        }
        if result.is_ok() {
            for op in ops {
                let r = match op {
                    Op::Subscribe(ch) => subscribe(link, vec![ch]).await,
                    Op::Unsubscribe(ch) => unsubscribe(link, ch).await,
                };
                if let Err(e) = r {
                    result = Err(e);
                    break;
                }
            }
        }
        self.state
            .channels
            .store(self.interest.len() as u64 + 1, Ordering::Relaxed);
        for (topic, from, gen) in acks {
            self.ack(&topic, from, gen);
        }
        result
    }

    fn set_interest(&mut self, topic: &Arc<str>, from: usize, on: bool) {
        let bit = 1u64 << from;
        if on {
            *self.interest.entry(topic.clone()).or_insert(0) |= bit;
        } else if let Some(mask) = self.interest.get_mut(topic) {
            *mask &= !bit;
            if *mask == 0 {
                self.interest.remove(topic);
            }
        }
    }

    fn ack(&self, topic: &Arc<str>, from: usize, gen: u64) {
        self.bus.send(
            from,
            BusMsg::InterestAck {
                topic: topic.clone(),
                gen,
            },
        );
    }

    /// Subscribe a fresh link to the direct channel and every topic with local subscribers.
    async fn resubscribe(&self, link: &Link) -> Result<(), RedisError> {
        let mut channels: Vec<String> = Vec::with_capacity(self.interest.len() + 1);
        channels.push(self.direct_channel.clone());
        channels.extend(
            self.interest
                .keys()
                .map(|t| format!("{}{t}", self.topic_prefix)),
        );
        let n = channels.len();
        // A sharded (S)SUBSCRIBE must name channels of one hash slot: one channel per command then,
        // all in flight together.
        let chunk = if link.sharded { 1 } else { SUBSCRIBE_CHUNK };
        let mut pending = Vec::with_capacity(n.div_ceil(chunk));
        while !channels.is_empty() {
            let rest = channels.split_off(channels.len().min(chunk));
            pending.push(subscribe(link, std::mem::replace(&mut channels, rest)));
        }
        futures_util::future::try_join_all(pending).await?;
        self.state.channels.store(n as u64, Ordering::Relaxed);
        Ok(())
    }

    fn on_redis_message(&mut self, m: Message) {
        let Some(payload) = m.value.into_bytes() else {
            self.state.dropped_incoming.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let channel: &str = &m.channel;
        let direct = channel == self.direct_channel;
        let topic = match channel.strip_prefix(self.topic_prefix.as_str()) {
            Some(t) if !direct => Some(t),
            _ if direct => None,
            _ => return,
        };
        let decoded = match wire::decode(payload, direct) {
            Ok(d) => d,
            Err(e) => {
                self.state.dropped_incoming.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(channel, error = %e, "cluster bus: dropped a malformed message");
                return;
            }
        };
        match (decoded, topic) {
            (Payload::Tagged { node, .. }, _) if node == self.node => {}
            (
                Payload::Tagged {
                    user: Some(user),
                    frame,
                    ..
                },
                None,
            ) => {
                let Ok(to) = std::str::from_utf8(&user) else {
                    return;
                };
                let to: Arc<str> = Arc::from(to);
                self.state.received.fetch_add(1, Ordering::Relaxed);
                self.bus.broadcast(self.me, || BusMsg::Direct {
                    to: to.clone(),
                    frame: frame.clone(),
                });
            }
            (Payload::Tagged { frame, .. }, Some(topic)) => self.forward(topic, frame),
            (Payload::Foreign(json), Some(topic)) if self.settings.accept_backend => {
                match backend_frame(topic, &json, self.settings.max_topic_len) {
                    Ok(frame) => {
                        self.state.received_backend.fetch_add(1, Ordering::Relaxed);
                        self.forward(topic, frame);
                    }
                    Err(why) => {
                        self.state.dropped_incoming.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(topic, why, "cluster bus: dropped a backend publish");
                    }
                }
            }
            _ => {
                self.state.dropped_incoming.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Hand a frame to every core with local subscribers of `topic`.
    fn forward(&self, topic: &str, frame: Bytes) {
        let Some((topic, &mask)) = self.interest.get_key_value(topic) else {
            return;
        };
        self.state.received.fetch_add(1, Ordering::Relaxed);
        let published_us = crate::clock::now_us();
        for core in (0..self.bus.cores()).filter(|c| mask & (1 << c) != 0) {
            self.bus.send(
                core,
                BusMsg::Publish {
                    topic: topic.clone(),
                    frame: frame.clone(),
                    published_us,
                },
            );
        }
    }
}

/// A backend's JSON, checked like an API publish, as a `message` frame.
fn backend_frame(topic: &str, json: &[u8], max_topic_len: usize) -> Result<Bytes, &'static str> {
    use crate::pubsub::protocol;
    protocol::check_topic(topic, max_topic_len)?;
    let text = std::str::from_utf8(json).map_err(|_| "not UTF-8")?;
    let raw: &serde_json::value::RawValue = serde_json::from_str(text).map_err(|_| "not JSON")?;
    if protocol::json_depth(raw.get()) > protocol::MAX_DATA_DEPTH {
        return Err("nested too deep");
    }
    Ok(protocol::message_frame(topic, raw))
}

async fn connect(settings: &Settings) -> Result<Link, RedisError> {
    let config = fred::types::config::Config::from_url(&settings.url)?;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = settings.connect_timeout;
            c.internal_command_timeout = settings.connect_timeout;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.broadcast_channel_capacity = INCOMING_BUFFER;
            p.default_command_timeout = Duration::from_secs(5);
        });
    let publisher = builder.build()?;
    let subscriber = builder.build_subscriber_client()?;
    let deadline = settings.connect_timeout + Duration::from_millis(500);
    let timed_out = || RedisError::new(fred::error::ErrorKind::Timeout, "connect timed out");
    let publisher_task = tokio::time::timeout(deadline, publisher.init())
        .await
        .map_err(|_| timed_out())??;
    let subscriber_task = match tokio::time::timeout(deadline, subscriber.init()).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let _ = publisher.quit().await;
            return Err(e);
        }
        Err(_) => {
            let _ = publisher.quit().await;
            return Err(timed_out());
        }
    };
    let incoming = subscriber.message_rx();
    let sharded = match settings.sharded {
        Sharded::On => true,
        Sharded::Off => false,
        Sharded::Auto => publisher.server_version().is_some_and(|v| v.major >= 7),
    };
    Ok(Link {
        publisher,
        subscriber,
        publisher_task,
        subscriber_task,
        incoming,
        sharded,
    })
}

async fn close(link: Link) {
    let quit = async {
        let _ = link.subscriber.quit().await;
        let _ = link.publisher.quit().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), quit).await;
    link.publisher_task.abort();
    link.subscriber_task.abort();
}

async fn queue_publish(
    pipeline: &fred::clients::Pipeline<Client>,
    sharded: bool,
    channel: String,
    payload: Bytes,
) -> Result<(), RedisError> {
    if sharded {
        pipeline.spublish::<(), _, _>(channel, payload).await
    } else {
        pipeline.publish::<(), _, _>(channel, payload).await
    }
}

async fn subscribe(link: &Link, channels: Vec<String>) -> Result<(), RedisError> {
    if link.sharded {
        link.subscriber.ssubscribe(channels).await
    } else {
        link.subscriber.subscribe(channels).await
    }
}

async fn unsubscribe(link: &Link, channel: String) -> Result<(), RedisError> {
    if link.sharded {
        link.subscriber.sunsubscribe(channel).await
    } else {
        link.subscriber.unsubscribe(channel).await
    }
}

fn ended(r: Result<Result<(), RedisError>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "closed".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}
