//! The bytes <-> messages boundary: WebSocket framing and socket/TLS IO for upgraded connections.
//!
//! Sessions (`crate::session`) see only [`Handler`] callbacks with whole messages and an [`Outbox`] of
//! encoded frames; nothing above this module knows whether the bytes travel over plain TCP, TLS, a
//! poll-based adapter or io_uring. Replacing the IO strategy (see docs/architecture.md) means replacing
//! this module only.

pub mod codec;
mod conn;
mod frames;
pub(crate) mod native;
mod outbox;
mod readiness;
mod spill;
mod tls_native;
mod tls_records;

pub use codec::{close_code, encode_frame, encode_frame_parts, encode_masked_frame, CloseReason};
pub(crate) use conn::with_scratch;
pub(crate) use conn::{close_stream, poll_write_outbox};
pub use conn::{run, ConnLimits};
pub use frames::{End, Frames, Handler, Message};
pub use native::run as run_native;
pub use outbox::{Outbox, Overflow};
pub use tls_native::upgrade as upgrade_tls;
pub use tls_native::{HandshakeGate, HandshakePermit, TlsConn, TlsIo, TlsStream, TlsUpgrade};

/// How a session's bytes move. Each data path is its own type, so a spawned session task contains
/// the state of its own path only (a native ws session does not carry the TLS path's future).
///
/// `drive` takes the handler by value and hands it back with the end: the returned future is then
/// the only place the socket, the handler and the limits are stored (a future that borrowed the
/// handler would sit next to a second copy of everything it was built from).
pub trait SessionIo {
    fn drive<H: Handler>(
        self,
        prefix: bytes::Bytes,
        h: H,
        limits: ConnLimits,
    ) -> impl std::future::Future<Output = (End, H)>;
}

/// Through the tokio-trait adapters (TLS, or plain ws with `ws_io = "poll"`).
pub struct PollIo<S>(pub S);

/// Natively on the monoio socket (plain ws). For wss on the native socket see [`TlsIo`].
pub struct NativeIo(pub monoio::net::TcpStream);

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static> SessionIo for PollIo<S> {
    async fn drive<H: Handler>(
        self,
        prefix: bytes::Bytes,
        mut h: H,
        limits: ConnLimits,
    ) -> (End, H) {
        (run(self.0, prefix, &mut h, limits).await, h)
    }
}

impl SessionIo for NativeIo {
    fn drive<H: Handler>(
        self,
        prefix: bytes::Bytes,
        h: H,
        limits: ConnLimits,
    ) -> impl std::future::Future<Output = (End, H)> {
        run_native(self.0, prefix, h, limits)
    }
}

#[cfg(test)]
pub(crate) use tls_native::tests::handshaken as tls_handshaken;
