//! Sessions: what an upgraded connection does with its messages. One task per session, on the core
//! that accepted it; the transport (`crate::transport`) does all IO and calls back with whole messages.
//!
//! - `echo`: every data message is sent back unchanged (conformance, benchmarks).
//! - `pubsub`: protocol v1 requests against the core's topic table.

mod echo;
mod pubsub;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::Bytes;

use crate::auth::Identity;
use crate::http::Route;
use crate::pubsub::Subscriber;
use crate::transport::{self, ConnLimits, End, Outbox};
use crate::worker::Worker;

/// Run one upgraded connection to its end.
pub async fn run<D: transport::SessionIo>(
    io: D,
    read_buf: Bytes,
    route: Route,
    identity: Option<Identity>,
    peer: std::net::IpAddr,
    worker: Rc<Worker>,
) {
    let limits = ConnLimits {
        max_message: worker.limits.max_message_size,
        close_timeout: worker.limits.close_timeout(),
    };
    let stats = worker.stats.clone();
    stats.sessions.add(1);
    stats.upgrades.add(1);
    let me = Rc::new(Subscriber {
        id: worker.next_session_id(),
        outbox: Outbox::new(worker.limits.max_outbound_bytes),
        barrier: Cell::new(0),
        deferred_ack: RefCell::new(None),
        user: identity.as_ref().map(|i| i.user.clone()),
    });
    worker.register_session(&me);
    let end = match route {
        Route::Echo => {
            let mut h = echo::Echo::new(worker.clone(), me.clone());
            io.drive(read_buf, &mut h, limits).await
        }
        Route::PubSub { topics } => {
            let mut h = pubsub::PubSub::new(worker.clone(), me.clone(), identity, &topics);
            let end = io.drive(read_buf, &mut h, limits).await;
            h.leave();
            end
        }
        Route::Proxy(p) => {
            crate::proxy::run(io, read_buf, p, worker.clone(), me.clone(), limits).await
        }
    };
    worker.unregister_session(me.id);
    stats.sessions.sub(1);
    let user = me.user.as_deref().unwrap_or("-");
    match &end {
        End::Closed(reason) if reason.code == transport::close_code::POLICY => {
            match reason.reason {
                "slow consumer" => stats.slow_consumer_closes.add(1),
                _ => stats.rate_limit_closes.add(1),
            }
            tracing::info!(client = %peer, user, code = reason.code, reason = reason.reason, "session closed by gateway");
        }
        End::Closed(reason) if reason.code != transport::close_code::GOING_AWAY => {
            stats.protocol_errors.add(u64::from(
                reason.code == transport::close_code::PROTOCOL_ERROR,
            ));
            tracing::info!(client = %peer, user, code = reason.code, reason = reason.reason, "session closed by gateway");
        }
        End::Closed(reason) if reason.reason == "idle timeout" => {
            tracing::info!(client = %peer, user, "session closed: idle timeout");
        }
        End::Io(e) => {
            tracing::info!(client = %peer, user, error = %e, "session ended by a socket error")
        }
        End::Eof => tracing::info!(client = %peer, user, "session ended without a close frame"),
        End::Closed(_) | End::PeerClosed(_) => {}
    }
}
