//! A core-local shutdown signal handed to every long-running loop on the core (accept loops, the
//! heartbeat and stats tasks, the worker's main task), so each can `select!` between its work and
//! the signal.
//!
//! Each waiting future owns one slot in the waker list and frees it when dropped, so loops that
//! create a fresh `wait()` on every iteration (as `select!` in an accept loop does) keep the list as
//! short as the number of tasks waiting right now. (An earlier version appended a waker per poll and
//! grew by one entry per accepted connection, which showed up as most of the CPU of a handshake
//! storm.)

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Shutdown {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Option<Waker>>>,
}

impl Shutdown {
    pub fn fire(&self) {
        self.fired.set(true);
        for w in self.wakers.borrow_mut().iter_mut().filter_map(Option::take) {
            w.wake();
        }
    }

    /// Resolves once `fire` was called.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            shutdown: self,
            slot: None,
        }
    }

    #[cfg(test)]
    fn slots(&self) -> usize {
        self.wakers.borrow().len()
    }
}

/// The future returned by [`Shutdown::wait`].
pub struct Wait<'a> {
    shutdown: &'a Shutdown,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.fired.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.shutdown.wakers.borrow_mut();
        match self.slot {
            Some(i) => wakers[i] = Some(cx.waker().clone()),
            None => {
                let i = match wakers.iter().position(Option::is_none) {
                    Some(free) => {
                        wakers[free] = Some(cx.waker().clone());
                        free
                    }
                    None => {
                        wakers.push(Some(cx.waker().clone()));
                        wakers.len() - 1
                    }
                };
                drop(wakers);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Some(w) = self.shutdown.wakers.borrow_mut().get_mut(i) {
                *w = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn waiting_many_times_keeps_one_slot() {
        let s = Shutdown::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..10_000 {
            let mut w = Box::pin(s.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(s.slots(), 1);
        let mut w = Box::pin(s.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        s.fire();
        assert!(w.as_mut().poll(&mut cx).is_ready());
    }
}
