//! A session's outbound queue: encoded frames waiting to be written, shared between the session's task
//! (which writes them) and everything that delivers to it (the core's topic table, the bus).
//!
//! Frames are `Bytes`, so one publish encoded once is queued by reference in every subscriber's outbox.
//! The queue is bounded in bytes: a delivery that would exceed the bound marks the session as a slow
//! consumer and asks the transport to close it, so one stuck client never grows memory without bound or
//! delays anybody else.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::task::Waker;

use bytes::Bytes;

use super::codec::{close_code, CloseReason};

/// Returned by [`Outbox::deliver`] when the session could not keep up and is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Every session has one, idle or not, so its layout is packed: the close reason is boxed (it is set
/// once, at the end), the sample's byte count is non-zero (so its `Option` costs nothing) and the
/// limit fits in the padding.
#[derive(Default)]
struct Inner {
    frames: VecDeque<Bytes>,
    bytes: usize,
    waker: Option<Waker>,
    close: Option<Box<CloseReason>>,
    /// A sampled publish in the queue: (publish time in `clock::now_us`, queued bytes up to and
    /// including its frame). At most one per session, so sampling costs nothing per frame.
    stamp: Option<(u64, NonZeroUsize)>,
    /// Most bytes a session may have queued before it is closed as a slow consumer.
    limit: u32,
    /// The front frame is partly written; it must be finished before anything else goes out.
    front_started: bool,
}

/// The outbound queue of one session (core-local; shared through `Rc`).
pub struct Outbox {
    inner: RefCell<Inner>,
    /// When the peer last sent anything (`clock::now_ms`), for idle timeouts.
    last_rx: std::cell::Cell<u64>,
    /// The socket's readiness (`readiness::READABLE` / `WRITABLE`), set by the core's epoll driver
    /// and cleared by the session when the socket would block. Kept here because the outbox is the
    /// session's one stable, shared address and already holds its task's waker.
    ready: std::cell::Cell<u8>,
}

impl Outbox {
    /// An outbox that holds up to `limit` bytes (at most 4 GiB).
    pub fn new(limit: usize) -> Self {
        Self {
            inner: RefCell::new(Inner {
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                ..Inner::default()
            }),
            last_rx: std::cell::Cell::new(crate::clock::now_ms()),
            ready: std::cell::Cell::new(0),
        }
    }

    /// An epoll event for the session's socket: remember it and wake the session.
    pub(crate) fn on_ready(&self, bits: u8) {
        self.ready.set(self.ready.get() | bits);
        wake(&mut self.inner.borrow_mut());
    }

    pub(crate) fn set_ready(&self, bits: u8) {
        self.ready.set(bits);
    }

    pub(crate) fn is_ready(&self, bit: u8) -> bool {
        self.ready.get() & bit != 0
    }

    /// The socket would block: wait for its next edge.
    pub(crate) fn clear_ready(&self, bit: u8) {
        self.ready.set(self.ready.get() & !bit);
    }

    /// Queue a frame that others send to this session (a publish). Over the limit, the session is closed
    /// with 1008 and the frame is dropped for this session only. A frame larger than the limit is still
    /// accepted into an empty queue, so a message within `max_message_size` can always be delivered.
    pub fn deliver(&self, frame: Bytes) -> Result<(), Overflow> {
        self.deliver_stamped(frame, None)
    }

    /// [`Outbox::deliver`], sampling the frame for the publish-to-write latency histogram when
    /// `published_us` is given and no other sample is in flight.
    pub fn deliver_stamped(&self, frame: Bytes, published_us: Option<u64>) -> Result<(), Overflow> {
        let mut inner = self.inner.borrow_mut();
        if inner.close.is_some() {
            return Err(Overflow);
        }
        if inner.bytes > 0 && inner.bytes + frame.len() > inner.limit as usize {
            discard_unstarted(&mut inner);
            inner.close = Some(Box::new(CloseReason::new(
                close_code::POLICY,
                "slow consumer",
            )));
            wake(&mut inner);
            return Err(Overflow);
        }
        Self::push_locked(&mut inner, frame);
        if let (Some(t), None) = (published_us, inner.stamp) {
            inner.stamp = NonZeroUsize::new(inner.bytes).map(|upto| (t, upto));
        }
        Ok(())
    }

    /// Queue a frame the session itself produced (an ack, an echo, a pong). The session stops reading
    /// while its queue is over the limit, so this needs no bound of its own.
    pub fn reply(&self, frame: Bytes) {
        let mut inner = self.inner.borrow_mut();
        if inner.close.is_none() {
            Self::push_locked(&mut inner, frame);
        }
    }

    /// Queue a frame even when a close was requested (the close frame itself).
    pub(crate) fn force_reply(&self, frame: Bytes) {
        Self::push_locked(&mut self.inner.borrow_mut(), frame);
    }

    fn push_locked(inner: &mut Inner, frame: Bytes) {
        inner.bytes += frame.len();
        let was_empty = inner.frames.is_empty();
        inner.frames.push_back(frame);
        if was_empty {
            wake(inner);
        }
    }

    /// Ask the transport to close the session with `reason` once what is queued has been written.
    pub fn close(&self, reason: CloseReason) {
        let mut inner = self.inner.borrow_mut();
        if inner.close.is_none() {
            inner.close = Some(Box::new(reason));
            wake(&mut inner);
        }
    }

    /// Wake the session's task (used when something other than a frame changes its state).
    pub fn wake(&self) {
        wake(&mut self.inner.borrow_mut());
    }

    pub fn close_requested(&self) -> Option<CloseReason> {
        self.inner.borrow().close.as_deref().copied()
    }

    pub fn queued_bytes(&self) -> usize {
        self.inner.borrow().bytes
    }

    pub fn limit(&self) -> usize {
        self.inner.borrow().limit as usize
    }

    /// Drop everything queued (as if written); returns the number of frames. An in-memory sink for
    /// benchmarks and tests.
    pub fn drain(&self) -> usize {
        let mut inner = self.inner.borrow_mut();
        let n = inner.frames.len();
        inner.frames.clear();
        inner.bytes = 0;
        inner.front_started = false;
        inner.stamp = None;
        n
    }

    /// Record that the peer sent something now.
    pub(crate) fn touch(&self) {
        self.last_rx.set(crate::clock::now_ms());
    }

    /// When the peer last sent anything (`clock::now_ms` scale).
    pub fn last_rx(&self) -> u64 {
        self.last_rx.get()
    }

    pub(crate) fn register(&self, waker: &Waker) {
        let mut inner = self.inner.borrow_mut();
        match &inner.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => inner.waker = Some(waker.clone()),
        }
    }

    /// Run `f` over the queued frames (front first) and drop the `written` bytes it reports.
    pub(crate) fn with_front<R>(&self, f: impl FnOnce(&VecDeque<Bytes>) -> R) -> R {
        f(&self.inner.borrow().frames)
    }

    /// Drop `written` bytes from the front. Returns the frames completed and, if this write completed
    /// the sampled frame, its publish time.
    pub(crate) fn consume(&self, mut written: usize) -> (usize, Option<u64>) {
        let mut frames = 0;
        let mut inner = self.inner.borrow_mut();
        inner.bytes -= written;
        let sample = match inner.stamp {
            Some((t, upto)) if upto.get() <= written => {
                inner.stamp = None;
                Some(t)
            }
            Some((t, upto)) => {
                inner.stamp = NonZeroUsize::new(upto.get() - written).map(|upto| (t, upto));
                None
            }
            None => None,
        };
        while written > 0 {
            let Some(front) = inner.frames.front_mut() else {
                break;
            };
            if front.len() <= written {
                written -= front.len();
                inner.frames.pop_front();
                inner.front_started = false;
                frames += 1;
            } else {
                let _ = front.split_to(written);
                written = 0;
                inner.front_started = true;
            }
        }
        // An empty queue keeps no buffer: idle sessions are the common case (and every one of them
        // gets a heartbeat ping now and then), and a kept buffer would cost each of them at least
        // 128 bytes for good. Allocating it again for the next burst is cheap by comparison.
        if inner.frames.is_empty() && inner.frames.capacity() > 0 {
            inner.frames = VecDeque::new();
        }
        (frames, sample)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.inner.borrow().frames.is_empty()
    }

    /// Drop the waker so a finished session's task is not kept alive by deliveries racing its end.
    pub(crate) fn detach(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.waker = None;
        inner.frames.clear();
        inner.bytes = 0;
        inner.stamp = None;
        if inner.close.is_none() {
            inner.close = Some(Box::new(CloseReason::new(close_code::NORMAL, "")));
        }
    }
}

/// Drop every queued frame except a partly written one (cutting a frame would corrupt the stream).
fn discard_unstarted(inner: &mut Inner) {
    let keep = if inner.front_started {
        inner.frames.pop_front()
    } else {
        None
    };
    inner.frames.clear();
    inner.bytes = 0;
    inner.stamp = None;
    if let Some(f) = keep {
        inner.bytes = f.len();
        inner.frames.push_back(f);
    }
}

fn wake(inner: &mut Inner) {
    if let Some(w) = &inner.waker {
        w.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_with_1008_and_drops_queue() {
        let o = Outbox::new(10);
        o.deliver(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(o.deliver(Bytes::from_static(b"123456")), Err(Overflow));
        assert_eq!(o.close_requested().map(|c| c.code), Some(1008));
        assert!(o.is_empty());
    }

    #[test]
    fn overflow_keeps_a_partly_written_frame() {
        let o = Outbox::new(10);
        o.deliver(Bytes::from_static(b"123456")).unwrap();
        o.consume(2);
        assert_eq!(o.deliver(Bytes::from_static(b"abcdefgh")), Err(Overflow));
        o.with_front(|q| assert_eq!(q.iter().map(|f| &f[..]).collect::<Vec<_>>(), vec![b"3456"]));
    }

    #[test]
    fn sampled_frame_reports_when_fully_written() {
        let o = Outbox::new(100);
        o.reply(Bytes::from_static(b"ab"));
        o.deliver_stamped(Bytes::from_static(b"cde"), Some(7))
            .unwrap();
        o.deliver_stamped(Bytes::from_static(b"fg"), Some(9))
            .unwrap();
        assert_eq!(o.consume(4), (1, None));
        assert_eq!(o.consume(1), (1, Some(7)));
        assert_eq!(o.consume(2), (1, None));
    }

    #[test]
    fn consume_handles_partial_frames() {
        let o = Outbox::new(100);
        o.reply(Bytes::from_static(b"abc"));
        o.reply(Bytes::from_static(b"defg"));
        o.consume(4);
        assert_eq!(o.queued_bytes(), 3);
        o.with_front(|q| assert_eq!(&q[0][..], b"efg"));
        o.consume(3);
        assert!(o.is_empty());
    }
}
