//! The pub/sub route: protocol v1 requests (subscribe / unsubscribe / publish, with optional ids)
//! applied to this core's topic table. Bad requests get an `error` frame and the session stays open.

use std::collections::HashSet;
use std::rc::Rc;

use ahash::RandomState;
use serde_json::value::RawValue;

use crate::pubsub::protocol::{self, code, Request};
use crate::pubsub::{Subscribed, Subscriber};
use crate::transport::{CloseReason, Handler, Message, Outbox};
use crate::worker::Worker;

pub struct PubSub {
    worker: Rc<Worker>,
    me: Rc<Subscriber>,
    /// Topics this session is subscribed to (to enforce the limit and to leave them at the end).
    topics: HashSet<Box<str>, RandomState>,
}

impl PubSub {
    pub fn new(worker: Rc<Worker>, me: Rc<Subscriber>, initial: &[String]) -> Self {
        let mut s = Self {
            worker,
            me,
            topics: HashSet::default(),
        };
        for t in initial {
            s.subscribe(t, None);
        }
        s
    }

    /// Leave every topic.
    pub fn leave(&mut self) {
        for t in self.topics.drain() {
            self.worker.table.unsubscribe(self.me.id, &t);
        }
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

    fn check_topic(&self, topic: &str, id: Option<&RawValue>) -> bool {
        match protocol::check_topic(topic, self.worker.limits.max_topic_len) {
            Ok(()) => true,
            Err(why) => {
                self.error(id, code::INVALID_TOPIC, why);
                false
            }
        }
    }

    fn subscribe(&mut self, topic: &str, id: Option<&RawValue>) {
        if !self.check_topic(topic, id) {
            return;
        }
        if self.topics.contains(topic) {
            return self.ack(id);
        }
        if self.topics.len() >= self.worker.limits.max_subscriptions {
            return self.error(
                id,
                code::TOO_MANY_SUBSCRIPTIONS,
                "subscription limit reached for this session",
            );
        }
        self.topics.insert(topic.into());
        match self.worker.table.subscribe(&self.me, topic) {
            Subscribed::Now => self.ack(id),
            Subscribed::AfterConfirmation => {
                if let Some(id) = id {
                    *self.me.deferred_ack.borrow_mut() = Some(protocol::ack_frame(id));
                }
            }
        }
    }
}

impl Handler for PubSub {
    fn on_message(&mut self, msg: Message<'_>) -> Result<(), CloseReason> {
        self.worker.stats.messages_in.add(1);
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
                if self.topics.remove(&*topic) {
                    self.worker.table.unsubscribe(self.me.id, &topic);
                }
                self.ack(env.id);
            }
            Request::Publish { topic, data } => {
                if self.check_topic(&topic, env.id) {
                    let frame = protocol::message_frame(&topic, data);
                    self.worker.table.publish(&topic, frame);
                    self.ack(env.id);
                }
            }
        }
        Ok(())
    }

    fn wants_input(&self) -> bool {
        self.me.barrier.get() == 0
    }

    fn outbox(&self) -> &Outbox {
        &self.me.outbox
    }
}
