//! WebSocket sessions: the echo route, and the pub/sub route as a reader task plus a writer task.
//!
//! Pub/sub: the stream is split with `StreamExt::split`. The writer task owns the sink and drains the
//! session's bounded `mpsc` channel (batching whatever is already queued into one flush). The reader
//! (this task) parses requests, updates the hub and publishes; its acks/errors go through the same
//! channel, so they are ordered with the messages. A subscribe is inserted into the hub *before* its
//! ack is queued, so the ack guarantees delivery of every later publish.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::hub::{Hub, Peer, SessionId};
use crate::listener::Context;
use crate::protocol::{self, code, Request};

/// How long a closing session may take to flush its close frame / remaining queue.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;

/// `/echo`: every text/binary message goes back unchanged with the same opcode.
pub async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // tungstenite answers pings and close frames itself; keep polling until the stream ends so the
    // close reply gets flushed.
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(msg) if msg.is_text() || msg.is_binary() => {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(frame) = close_for(&e) {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
                }
                break;
            }
        }
    }
}

/// The close frame to send for a read error tungstenite does not answer itself (it just fails the
/// stream): oversized message 1009, protocol violation 1002, invalid UTF-8 1007.
fn close_for(e: &WsError) -> Option<CloseFrame<'static>> {
    let (code, reason) = match e {
        WsError::Capacity(_) => (CloseCode::Size, "message too big"),
        WsError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        WsError::Utf8 => (CloseCode::Invalid, "invalid utf-8"),
        _ => return None,
    };
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// `/ws`: a pub/sub session, subscribed to `topics` at connect.
pub async fn pubsub<S>(ws: WebSocketStream<S>, ctx: Arc<Context>, topics: Vec<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel(ctx.queue);
    let kick = Arc::new(Notify::new());
    let peer = Peer {
        tx,
        kick: kick.clone(),
    };
    let mut session = Session {
        id: ctx.hub.next_id(),
        hub: &ctx.hub,
        peer,
        topics: HashSet::new(),
    };
    for t in topics {
        session.hub.subscribe(&t, session.id, &session.peer);
        session.topics.insert(t);
    }
    let mut writer = tokio::spawn(write_loop(sink, rx, kick));
    let writer_done = tokio::select! {
        _ = session.read_loop(stream) => false,
        _ = &mut writer => true,
    };
    // Leave the hub; once the last sender (ours) is dropped the writer drains what is queued and closes.
    session.leave();
    drop(session);
    if !writer_done
        && tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
}

struct Session<'a> {
    id: SessionId,
    hub: &'a Hub,
    peer: Peer,
    topics: HashSet<String>,
}

impl Session<'_> {
    async fn read_loop<S>(&mut self, mut stream: SplitStream<WebSocketStream<S>>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        while let Some(msg) = stream.next().await {
            let ok = match msg {
                Ok(Message::Text(text)) => self.on_text(&text).await,
                Ok(Message::Binary(_)) => {
                    self.reply(protocol::error(
                        None,
                        code::BAD_REQUEST,
                        "binary frames are not supported on the pub/sub route; send JSON text",
                    ))
                    .await
                }
                Ok(Message::Close(_)) => true, // tungstenite replies; the stream ends next
                Ok(_) => true,                 // ping/pong are handled by tungstenite
                Err(e) => {
                    if let Some(frame) = close_for(&e) {
                        // The writer sends it after whatever is queued; a full queue is moot here.
                        let _ = self.peer.tx.try_send(Message::Close(Some(frame)));
                    }
                    false
                }
            };
            if !ok {
                break;
            }
        }
    }

    /// Handle one request; `false` when the session is gone.
    async fn on_text(&mut self, text: &str) -> bool {
        let (id, request) = match protocol::parse(text) {
            Ok(r) => r,
            Err(e) => return self.reply(protocol::error(e.id, e.code, &e.message)).await,
        };
        let topic = match &request {
            Request::Subscribe(t) | Request::Unsubscribe(t) | Request::Publish(t, _) => t,
        };
        if let Err(why) = protocol::check_topic(topic) {
            return self
                .reply(protocol::error(id, code::INVALID_TOPIC, why))
                .await;
        }
        match &request {
            Request::Subscribe(t) => {
                if !self.topics.contains(&**t) {
                    self.hub.subscribe(t, self.id, &self.peer);
                    self.topics.insert(t.to_string());
                }
            }
            Request::Unsubscribe(t) => {
                if self.topics.remove(&**t) {
                    self.hub.unsubscribe(t, self.id);
                }
            }
            Request::Publish(t, data) => {
                let frame = protocol::message(t, data);
                self.hub.publish(t, &frame);
            }
        }
        self.ack(id).await
    }

    async fn ack(&self, id: Option<&RawValue>) -> bool {
        match id {
            Some(id) => self.reply(protocol::ack(id)).await,
            None => true,
        }
    }

    /// Queue a reply behind any pending messages (waits for room: backpressure on the reader).
    async fn reply(&self, text: String) -> bool {
        self.peer.tx.send(Message::Text(text)).await.is_ok()
    }

    fn leave(&mut self) {
        for t in self.topics.drain() {
            self.hub.unsubscribe(&t, self.id);
        }
    }
}

/// Drain the session's queue into the socket until the queue closes, the socket fails, or the hub
/// flags a slow consumer (then close with 1008).
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Message>,
    kick: Arc<Notify>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let kicked = tokio::select! {
        biased;
        _ = kick.notified() => true,
        _ = drain(&mut sink, &mut rx) => false,
    };
    let close = async {
        if kicked {
            sink.send(Message::Close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "slow consumer".into(),
            })))
            .await
        } else {
            sink.close().await
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
}

async fn drain<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    rx: &mut mpsc::Receiver<Message>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(first) = rx.recv().await {
        if sink.feed(first).await.is_err() {
            return;
        }
        for _ in 1..WRITE_BATCH {
            match rx.try_recv() {
                Ok(m) => {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}
