//! The echo route: each data message goes back unchanged with the same opcode.

use std::rc::Rc;

use fastwebsockets::OpCode;

use crate::pubsub::Subscriber;
use crate::transport::{encode_frame, CloseReason, Handler, Message, Outbox};
use crate::worker::Worker;

pub struct Echo {
    worker: Rc<Worker>,
    me: Rc<Subscriber>,
}

impl Echo {
    pub fn new(worker: Rc<Worker>, me: Rc<Subscriber>) -> Self {
        Self { worker, me }
    }
}

impl Handler for Echo {
    fn on_message(&mut self, msg: Message<'_>) -> Result<(), CloseReason> {
        let frame = match msg {
            Message::Text(t) => encode_frame(OpCode::Text, t.as_bytes()),
            Message::Binary(b) => encode_frame(OpCode::Binary, b),
        };
        self.worker.stats.messages_in.add(1);
        self.me.outbox.reply(frame);
        Ok(())
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

impl super::Session for Echo {
    fn worker(&self) -> &Worker {
        &self.worker
    }

    fn me(&self) -> &Subscriber {
        &self.me
    }
}
