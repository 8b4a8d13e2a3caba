//! Sessions: what an upgraded connection does with its messages. One task per session, on the core
//! that accepted it; the transport (`crate::transport`) does all IO and calls back with whole messages.
//!
//! - `echo`: every data message is sent back unchanged (conformance, benchmarks).
//! - `pubsub`: protocol v1 requests against the core's topic table.
//!
//! An idle session costs what its task holds, so the task is built to hold each thing once: the
//! subscriber and the route's handler are built before the task is spawned, the handler is moved into
//! the transport's future (which hands it back when the connection ends), and the task is that future
//! plus the connection's guard. Each route is its own task type, so an echo or pub/sub session does
//! not carry the proxy relay's larger state. `session_tasks_stay_within_budget` checks the sizes.

mod echo;
mod pubsub;

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use futures_util::FutureExt;

use crate::auth::Identity;
use crate::http::Route;
use crate::pubsub::Subscriber;
use crate::transport::{self, ConnLimits, End, Handler, SessionIo};
use crate::worker::{ConnGuard, Worker};

/// A route's handler, as the session's end needs it.
trait Session: Handler {
    fn worker(&self) -> &Worker;
    fn me(&self) -> &Subscriber;
    /// Leave what the session joined (topics, the user table) once its connection ended.
    fn leave(&mut self) {}
}

/// Start one upgraded connection's session in a task of its own; `guard` keeps the connection
/// counted until the session ends.
pub(crate) fn spawn<D: SessionIo + 'static>(
    io: D,
    read_buf: Bytes,
    route: Route,
    identity: Option<Identity>,
    worker: Rc<Worker>,
    guard: ConnGuard,
) {
    let limits = ConnLimits {
        max_message: worker.limits.max_message_size,
        close_timeout: worker.limits.close_timeout(),
    };
    worker.stats.sessions.add(1);
    worker.stats.upgrades.add(1);
    let user = identity.as_ref().map(|i| i.user.clone());
    let me = Rc::new(Subscriber::new(
        worker.next_session_id(),
        worker.limits.max_outbound_bytes,
        user,
    ));
    worker.register_session(&me);
    match route {
        Route::Echo => {
            let h = echo::Echo::new(worker, me);
            monoio::spawn(task(io, read_buf, h, limits, guard));
        }
        Route::PubSub { topics } => {
            let h = pubsub::PubSub::new(worker, me, identity, &topics);
            monoio::spawn(task(io, read_buf, h, limits, guard));
        }
        Route::Proxy(p) => {
            monoio::spawn(async move {
                let end =
                    crate::proxy::run(io, read_buf, p, worker.clone(), me.clone(), limits).await;
                ended(&worker, &me, &guard, &end);
            });
        }
    }
}

/// The task of an echo or pub/sub session: the transport's future, then the session's end. A
/// combinator, not an `async` block: awaiting a future an `async` block captured moves it into a
/// second slot of the block's state, so the task would hold the transport's future twice.
fn task<D: SessionIo, S: Session>(
    io: D,
    read_buf: Bytes,
    h: S,
    limits: ConnLimits,
    guard: ConnGuard,
) -> impl Future<Output = ()> {
    io.drive(read_buf, h, limits).map(move |(end, mut h)| {
        h.leave();
        ended(h.worker(), h.me(), &guard, &end);
    })
}

/// Account for a finished session and log how it ended.
fn ended(worker: &Worker, me: &Subscriber, guard: &ConnGuard, end: &End) {
    let stats = &worker.stats;
    worker.unregister_session(me);
    stats.sessions.sub(1);
    let user = me.user.as_deref().unwrap_or("-");
    let peer = guard.peer();
    match end {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::native::tests::session_future_size;
    use crate::transport::{NativeIo, TlsIo};

    /// The most a plain ws pub/sub or echo session's task future may take: every idle session keeps
    /// it for its whole life, and with monoio's 40-byte task header and trailer 216 bytes is what
    /// fits mimalloc's 256-byte size class (one byte more costs 64 per session; see
    /// docs/benchmarks.md, "Idle sessions below the targets").
    const WS_TASK_BUDGET: usize = 216;
    /// The same on wss: the TLS state is boxed, so only its pointer is added.
    const WSS_TASK_BUDGET: usize = 216;

    /// The task future a session of `route` gets, over `io` made from a connected socket.
    fn task_size<D: SessionIo + 'static>(
        route: Route,
        io: impl FnOnce(monoio::net::TcpStream) -> D,
    ) -> usize {
        session_future_size(|stream, _, limits| {
            let worker = crate::worker::tests::worker();
            let peer = std::net::IpAddr::from([127, 0, 0, 1]);
            let guard = ConnGuard::new(&worker.stats, worker.admission.admit(peer));
            let me = Rc::new(Subscriber::new(1, 1024, None));
            let io = io(stream);
            match route {
                Route::PubSub { topics } => {
                    let h = pubsub::PubSub::new(worker, me, None, &topics);
                    std::mem::size_of_val(&task(io, Bytes::new(), h, limits, guard))
                }
                _ => {
                    let h = echo::Echo::new(worker, me);
                    std::mem::size_of_val(&task(io, Bytes::new(), h, limits, guard))
                }
            }
        })
    }

    #[test]
    fn session_tasks_stay_within_budget() {
        let pubsub = || Route::PubSub { topics: Vec::new() };
        let ws_pubsub = task_size(pubsub(), NativeIo);
        let ws_echo = task_size(Route::Echo, NativeIo);
        let (wire, _client) = crate::transport::tls_handshaken(&[&rustls::version::TLS13], None);
        let wss_pubsub = task_size(pubsub(), |stream| TlsIo { stream, wire });
        println!(
            "task future: ws pubsub {ws_pubsub} B, ws echo {ws_echo} B, wss pubsub {wss_pubsub} B"
        );
        let readable = session_future_size(|s, _, _| std::mem::size_of_val(&s.readable(false)));
        println!(
            "readable() {readable} B, End {} B, ConnLimits {} B",
            std::mem::size_of::<End>(),
            std::mem::size_of::<ConnLimits>()
        );
        println!(
            "Subscriber {} B, PubSub handler {} B, TcpStream {} B, Frames {} B, ConnGuard {} B",
            std::mem::size_of::<Subscriber>(),
            std::mem::size_of::<pubsub::PubSub>(),
            std::mem::size_of::<monoio::net::TcpStream>(),
            std::mem::size_of::<crate::transport::Frames>(),
            std::mem::size_of::<ConnGuard>(),
        );
        assert!(
            ws_pubsub <= WS_TASK_BUDGET,
            "ws pub/sub task is {ws_pubsub} bytes"
        );
        assert!(ws_echo <= WS_TASK_BUDGET, "ws echo task is {ws_echo} bytes");
        assert!(
            wss_pubsub <= WSS_TASK_BUDGET,
            "wss pub/sub task is {wss_pubsub} bytes"
        );
    }
}
