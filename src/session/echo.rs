//! The echo route: each data message goes back unchanged with the same opcode.

use std::rc::Rc;

use fastwebsockets::OpCode;

use crate::pubsub::Subscriber;
use crate::transport::{encode_frame, CloseReason, Handler, Message, Outbox};

pub struct Echo {
    me: Rc<Subscriber>,
}

impl Echo {
    pub fn new(me: Rc<Subscriber>) -> Self {
        Self { me }
    }
}

impl Handler for Echo {
    fn on_message(&mut self, msg: Message<'_>) -> Result<(), CloseReason> {
        let frame = match msg {
            Message::Text(t) => encode_frame(OpCode::Text, t.as_bytes()),
            Message::Binary(b) => encode_frame(OpCode::Binary, b),
        };
        self.me.outbox.reply(frame);
        Ok(())
    }

    fn outbox(&self) -> &Outbox {
        &self.me.outbox
    }
}
