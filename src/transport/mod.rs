//! The bytes <-> messages boundary: WebSocket framing and socket/TLS IO for upgraded connections.
//!
//! Sessions (`crate::session`) see only [`Handler`] callbacks with whole messages and an [`Outbox`] of
//! encoded frames; nothing above this module knows whether the bytes travel over plain TCP, TLS, a
//! poll-based adapter or io_uring. Replacing the IO strategy (see docs/architecture.md) means replacing
//! this module only.

pub mod codec;
mod conn;
mod frames;
mod outbox;

pub use codec::{close_code, encode_frame, encode_frame_parts, CloseReason};
pub use conn::{run, ConnLimits};
pub use frames::{End, Frames, Handler, Message};
pub use outbox::{Outbox, Overflow};
