//! A core-local shutdown signal handed to every long-running loop on the core (accept loops, the
//! worker's main task), so each can `select!` between its work and the signal.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Shutdown {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Shutdown {
    pub fn fire(&self) {
        self.fired.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once `fire` was called.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.fired.get() {
                return Poll::Ready(());
            }
            let mut wakers = self.wakers.borrow_mut();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}
