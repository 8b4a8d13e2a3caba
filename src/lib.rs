//! wsgate: a thread-per-core WSS gateway with per-core sharded pub/sub.
//!
//! # Layout (the data path, in order)
//! - [`listener`]: one SO_REUSEPORT socket per core.
//! - `worker`: one core's monoio runtime, accept loop and per-connection task.
//! - [`tls`]: rustls settings and the self-signed certificate of the zero-config start.
//! - `http`: hyper HTTP/1.1 routing and the fastwebsockets upgrade.
//! - [`transport`]: bytes <-> WebSocket messages (codec, socket/TLS IO, the per-session outbox).
//! - `session`: what a route does with messages (echo, pub/sub).
//! - [`pubsub`]: protocol v1 envelopes and the per-core topic table.
//! - [`bus`]: crossbeam queues + wake-ups between cores.
//! - [`cluster`]: the Redis bridge that joins several nodes (a bus participant on its own thread).
//! - [`gateway`]: start/stop, bound addresses, stats; [`config`]: typed settings; [`stats`]: counters.
//!
//! ```no_run
//! let mut config = wsgate::Config::default();
//! config.listen.ws = "127.0.0.1:0".into();
//! config.listen.wss = "off".into();
//! let gw = wsgate::Gateway::start(config).expect("start");
//! println!("ws://{}/ws", gw.ws_addr().expect("ws enabled"));
//! gw.shutdown();
//! ```

mod admin;
pub mod admission;
pub mod auth;
pub mod bus;
mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod gateway;
pub mod hooks;
mod http;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod pubsub;
mod session;
mod shutdown;
pub mod stats;
pub mod tls;
pub mod transport;
mod worker;

pub use config::{Config, ConfigError, DriverChoice, Overrides};
pub use gateway::{Gateway, GatewayBuilder, PublishError, ShutdownHandle, StartError};
pub use hooks::{PublishDecision, PublishHook, PublishRequest, PublishSource};
pub use stats::{CoreSnapshot, DriverKind};
