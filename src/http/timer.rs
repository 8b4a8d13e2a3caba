//! hyper's `Timer` on monoio's timer wheel (hyper needs one for `header_read_timeout`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Sleeps on the current core's monoio timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct MonoioTimer;

/// monoio's `Sleep` is tied to the thread that created it, hyper asks for `Send + Sync`.
struct CoreSleep(Pin<Box<monoio::time::Sleep>>);

// SAFETY: a `CoreSleep` is created, polled and dropped by the hyper connection that asked for it, and
// every connection future runs to completion on the single monoio thread that spawned it (monoio never
// moves tasks between threads), so the value never actually crosses a thread.
unsafe impl Send for CoreSleep {}
// SAFETY: as above; no reference to it is ever shared with another thread.
unsafe impl Sync for CoreSleep {}

impl Future for CoreSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for CoreSleep {}

impl hyper::rt::Timer for MonoioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoreSleep(Box::pin(monoio::time::sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}
