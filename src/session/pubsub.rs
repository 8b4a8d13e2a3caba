//! The pub/sub route: protocol v1 requests (subscribe / unsubscribe / publish, with optional ids, and
//! the `direct` extension) applied to this core's topic table. Bad requests get an `error` frame and
//! the session stays open; the topic permissions of the session's token and its rate limit are
//! enforced here.

use std::rc::Rc;
use std::sync::Arc;

use serde_json::value::RawValue;

use thin_vec::ThinVec;

use crate::auth::{Identity, TopicPattern};
use crate::hooks::PublishSource;
use crate::pubsub::protocol::{self, code, Request};
use crate::pubsub::{Subscribed, Subscriber};
use crate::transport::{close_code, CloseReason, Handler, Message, Outbox};
use crate::worker::Worker;

/// Token bucket over `clock::now_ms`.
struct RateLimit {
    per_ms: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
    /// Messages refused in a row; too many closes the session.
    strikes: u32,
}

impl RateLimit {
    fn new(per_sec: u32, burst: u32) -> Option<Self> {
        (per_sec > 0).then(|| {
            let burst = f64::from(if burst == 0 { per_sec } else { burst });
            Self {
                per_ms: f64::from(per_sec) / 1000.0,
                burst,
                tokens: burst,
                last_ms: crate::clock::now_ms(),
                strikes: 0,
            }
        })
    }

    fn take(&mut self) -> bool {
        let now = crate::clock::now_ms();
        let elapsed = now.saturating_sub(self.last_ms) as f64;
        self.last_ms = now;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

/// Lives in every pub/sub session's task, idle ones included, so it is kept small (32 bytes): the
/// user is the subscriber's, the token's topic patterns and the rate limit share one box that only
/// sessions with either get, and the topics are a sorted `ThinVec` (one pointer, nothing allocated
/// while empty).
pub struct PubSub {
    worker: Rc<Worker>,
    me: Rc<Subscriber>,
    rare: Option<Box<Rare>>,
    /// Topics this session is subscribed to (to enforce the limit and to leave them at the end),
    /// sorted.
    topics: ThinVec<Box<str>>,
}

/// What only some sessions have.
struct Rare {
    /// The token's `topics` claim; `None`: every topic.
    allowed: Option<Arc<[TopicPattern]>>,
    rate: Option<RateLimit>,
}

impl PubSub {
    pub fn new(
        worker: Rc<Worker>,
        me: Rc<Subscriber>,
        identity: Option<Identity>,
        initial: &[String],
    ) -> Self {
        worker.table.add_user_session(&me);
        let l = &worker.limits;
        let rate = RateLimit::new(l.rate_limit_per_sec, l.rate_limit_burst);
        let allowed = identity.and_then(|i| i.topics);
        let rare = (rate.is_some() || allowed.is_some()).then(|| Box::new(Rare { allowed, rate }));
        let mut s = Self {
            worker,
            me,
            rare,
            topics: ThinVec::new(),
        };
        for t in initial {
            s.subscribe(t, None);
        }
        s
    }

    fn error(&self, id: Option<&RawValue>, code: &str, message: &str) {
        self.me
            .outbox
            .reply(protocol::error_frame(id, code, message));
    }

    fn ack(&self, id: Option<&RawValue>) {
        if let Some(id) = id {
            self.me.outbox.reply(protocol::ack_frame(id));
        }
    }

    /// Topic name rules, then the token's `topics` claim.
    fn check_topic(&self, topic: &str, id: Option<&RawValue>) -> bool {
        if let Err(why) = protocol::check_topic(topic, self.worker.limits.max_topic_len) {
            self.error(id, code::INVALID_TOPIC, why);
            return false;
        }
        if !crate::auth::allows(self.rare.as_ref().and_then(|r| r.allowed.as_deref()), topic) {
            self.error(id, code::FORBIDDEN, "your token does not allow this topic");
            return false;
        }
        true
    }

    fn subscribe(&mut self, topic: &str, id: Option<&RawValue>) {
        if !self.check_topic(topic, id) {
            return;
        }
        let Err(at) = self.topics.binary_search_by(|t| (**t).cmp(topic)) else {
            return self.ack(id);
        };
        if self.topics.len() >= self.worker.limits.max_subscriptions {
            return self.error(
                id,
                code::TOO_MANY_SUBSCRIPTIONS,
                "subscription limit reached for this session",
            );
        }
        self.topics.insert(at, topic.into());
        match self.worker.table.subscribe(&self.me, topic) {
            Subscribed::Now => self.ack(id),
            Subscribed::AfterConfirmation => {
                if let Some(id) = id {
                    self.me.defer_ack(protocol::ack_frame(id));
                }
            }
        }
    }
}

impl Handler for PubSub {
    fn on_message(&mut self, msg: Message<'_>) -> Result<(), CloseReason> {
        self.worker.stats.messages_in.add(1);
        if let Some(rate) = self.rare.as_mut().and_then(|r| r.rate.as_mut()) {
            if !rate.take() {
                self.worker.stats.rate_limited.add(1);
                if rate.strikes >= self.worker.limits.rate_limit_close_after.max(1) {
                    return Err(CloseReason::new(close_code::POLICY, "rate limit exceeded"));
                }
                let id = match msg {
                    Message::Text(t) => protocol::parse(t).ok().and_then(|e| e.id),
                    Message::Binary(_) => None,
                };
                self.error(id, code::RATE_LIMITED, "too many messages; slow down");
                return Ok(());
            }
        }
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                self.error(
                    None,
                    code::UNSUPPORTED_FRAME,
                    "binary frames are not supported on the pub/sub route; send JSON text",
                );
                return Ok(());
            }
        };
        let env = match protocol::parse(text) {
            Ok(env) => env,
            Err(e) => {
                self.error(e.id, e.code, &e.message);
                return Ok(());
            }
        };
        match env.request {
            Request::Subscribe { topic } => self.subscribe(&topic, env.id),
            Request::Unsubscribe { topic } => {
                if let Ok(at) = self.topics.binary_search_by(|t| (**t).cmp(&*topic)) {
                    self.topics.remove(at);
                    self.worker.table.unsubscribe(self.me.id, &topic);
                }
                self.ack(env.id);
            }
            Request::Publish { topic, data } => {
                if self.check_topic(&topic, env.id) {
                    let user = self.me.user.as_deref();
                    match self
                        .worker
                        .publish(&topic, data, user, PublishSource::Client)
                    {
                        Ok(_) => self.ack(env.id),
                        Err((code, message)) => self.error(env.id, &code, &message),
                    }
                }
            }
            Request::Direct { to, data } => match &self.me.user {
                Some(user) => {
                    let frame = protocol::direct_frame(user, data);
                    self.worker.table.direct(&to, frame);
                    self.ack(env.id);
                }
                None => self.error(
                    env.id,
                    code::UNAUTHORIZED,
                    "direct messages need an authenticated session",
                ),
            },
        }
        Ok(())
    }

    fn wants_input(&self) -> bool {
        self.me.barrier.get() == 0
    }

    fn outbox(&self) -> &Outbox {
        &self.me.outbox
    }

    fn on_read(&self, bytes: usize) {
        self.worker.stats.bytes_in.add(bytes as u64);
    }

    fn on_written(&self, bytes: usize, frames: usize, sample: Option<u64>) {
        self.worker.on_written(bytes, frames, sample);
    }
}

impl super::Session for PubSub {
    fn worker(&self) -> &Worker {
        &self.worker
    }

    fn me(&self) -> &Subscriber {
        &self.me
    }

    /// Leave every topic and the user table.
    fn leave(&mut self) {
        for t in self.topics.drain(..) {
            self.worker.table.unsubscribe(self.me.id, &t);
        }
        self.worker.table.remove_user_session(&self.me);
    }
}
