//! Readiness of upgraded sockets: one edge-triggered epoll set per core, woken through the core's
//! monoio driver.
//!
//! Why not `TcpStream::readable()` per session: that wait is an io_uring POLL_ADD whose future
//! (104 B) and `TcpStream` (80 B) live in every idle session's task, next to monoio's `SharedFd`
//! allocation and an op-slab slot: about 300 of the 790 bytes an idle ws session cost. Here a
//! session keeps its socket as a bare descriptor ([`Registered`], 4 bytes) added once to its core's
//! epoll set with `EPOLLET`; the event's data is the address of the session's [`Outbox`], which
//! already holds the session task's waker and now also two readiness bits. So waiting costs no
//! allocation and no re-arming: one `epoll_ctl` when the session starts and one when it ends.
//!
//! The epoll set itself is awaited by one driver task per core with monoio's `readable()` (an
//! io_uring POLL_ADD on the epoll descriptor, or a registration in monoio's own epoll on the
//! fallback driver); when it is readable, the task drains it with non-blocking `epoll_wait` calls
//! and wakes the sessions whose sockets changed. Nothing leaves the core: the set, the sessions and
//! the wake-ups all belong to one thread.
//!
//! Edge-triggered rules the session loop follows (`native.rs`): a readiness bit is set by an event
//! and cleared by the session only when the socket said "would block", or when a read returned less
//! than it asked for and the peer has not half-closed (every later arrival raises a new edge, and
//! that saves the second `recv` per wake-up that would only say "would block"), so no edge is lost
//! between a read and the next wait.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use super::outbox::Outbox;

/// The socket has bytes (or an end) to read.
pub(crate) const READABLE: u8 = 1;
/// The socket takes writes again.
pub(crate) const WRITABLE: u8 = 2;
/// The peer half-closed or the socket failed: read until the end instead of trusting a short read
/// to mean "drained" (no further edge would come).
pub(crate) const HANGUP: u8 = 4;

/// Events the driver asks for in one `epoll_wait`; when that many come, it drains again after the
/// woken sessions had their turn.
const BATCH: usize = 256;

/// The core's epoll set (created on the first registration of the thread).
struct Reactor {
    epfd: OwnedFd,
    /// A driver task is running for this set on this thread's runtime.
    driving: Cell<bool>,
}

thread_local! {
    static REACTOR: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
}

fn reactor() -> io::Result<Rc<Reactor>> {
    REACTOR.with(|r| {
        let mut slot = r.borrow_mut();
        if let Some(reactor) = slot.as_ref() {
            return Ok(reactor.clone());
        }
        // SAFETY: plain syscall; the result is checked before it is used as a descriptor.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let reactor = Rc::new(Reactor {
            // SAFETY: `fd` was just created and is owned by nothing else.
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
            driving: Cell::new(false),
        });
        *slot = Some(reactor.clone());
        Ok(reactor)
    })
}

/// A connected socket in its core's epoll set; closing it (drop) removes it from the set first.
/// The session's [`Outbox`] receives its readiness, so the outbox must outlive this value (the
/// session task holds both and drops this one first).
pub(crate) struct Registered {
    fd: RawFd,
    /// The errno of a failed registration (0: registered); kept here rather than in a `Result` to
    /// save the session future 8 bytes.
    err: i32,
}

impl Registered {
    /// Add `fd` (owned from now on: closed on drop, also on error) to this core's epoll set, with
    /// `outbox` receiving its readiness. Starts the core's driver task if it is not running. A
    /// failure is reported by [`Registered::error`].
    pub(crate) fn new(fd: RawFd, outbox: &Outbox) -> Self {
        match Self::add(fd, outbox) {
            Ok(()) => Self { fd, err: 0 },
            Err(e) => Self {
                fd,
                err: e.raw_os_error().unwrap_or(libc::EIO),
            },
        }
    }

    fn add(fd: RawFd, outbox: &Outbox) -> io::Result<()> {
        let reactor = reactor()?;
        if !reactor.driving.get() {
            reactor.driving.set(true);
            monoio::spawn(drive(reactor.clone()));
        }
        outbox.set_ready(READABLE | WRITABLE);
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: outbox as *const Outbox as u64,
        };
        // SAFETY: both descriptors are open; `ev` is a valid event for the call's duration.
        let r =
            unsafe { libc::epoll_ctl(reactor.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Why the socket could not be added to the epoll set, if it could not.
    pub(crate) fn error(&self) -> Option<io::Error> {
        (self.err != 0).then(|| io::Error::from_raw_os_error(self.err))
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Removed explicitly, not left to close(): the event data points at the session's outbox,
        // and must never be delivered after the session is gone.
        let _ = REACTOR.try_with(|r| {
            if let Some(reactor) = r.borrow().as_ref() {
                // SAFETY: removing our own descriptor; a null event is allowed for EPOLL_CTL_DEL.
                unsafe {
                    libc::epoll_ctl(
                        reactor.epfd.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        self.fd,
                        std::ptr::null_mut(),
                    )
                };
            }
        });
        // SAFETY: we own the descriptor and close it once.
        unsafe { libc::close(self.fd) };
    }
}

/// Marks the driver gone when its task is dropped (its runtime ended), so a later runtime on the
/// same thread starts a new one.
struct Driving(Rc<Reactor>);

impl Drop for Driving {
    fn drop(&mut self) {
        self.0.driving.set(false);
    }
}

/// The core's driver task: wait until the epoll set has events, hand them to the sessions' outboxes,
/// repeat.
async fn drive(reactor: Rc<Reactor>) {
    let guard = Driving(reactor);
    let epfd = guard.0.epfd.as_raw_fd();
    // SAFETY: `dup` of an open descriptor; checked below.
    let dup = unsafe { libc::dup(epfd) };
    if dup < 0 {
        tracing::error!(error = %io::Error::last_os_error(), "cannot watch the session epoll set: sessions will not be woken");
        return;
    }
    // monoio waits on the set like on a socket: POLL_ADD on io_uring, its own epoll otherwise.
    // SAFETY: `dup` is a fresh descriptor owned by this std value, then by monoio.
    let std = unsafe { std::net::TcpStream::from_raw_fd(dup) };
    let watch = match monoio::net::TcpStream::from_std(std) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the session epoll set: sessions will not be woken");
            return;
        }
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
    loop {
        // SAFETY: `events` has room for BATCH entries; timeout 0 never blocks.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), BATCH as i32, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "epoll_wait on the session set failed: sessions will not be woken");
            return;
        }
        for ev in &events[..n as usize] {
            let bits = ev.events as i32;
            let mut ready = 0;
            if bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
                ready |= READABLE;
            }
            if bits & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
                ready |= WRITABLE;
            }
            if bits & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
                ready |= HANGUP;
            }
            // SAFETY: the data is the address of a registered session's outbox; a session removes
            // its socket from the set before its outbox can go, and no session runs while this
            // batch is handled, so every address in it is live.
            let outbox = unsafe { &*(ev.u64 as *const Outbox) };
            outbox.on_ready(ready);
        }
        if n > 0 {
            // More may come while the woken sessions run: look again after their turn, and arm the
            // wait only once a look found nothing. Arming it (a POLL_ADD on the epoll descriptor)
            // makes the kernel re-check every ready item, so a busy core skips it.
            super::native::yield_now().await;
            continue;
        }
        if let Err(e) = watch.readable(false).await {
            tracing::error!(error = %e, "waiting on the session epoll set failed: sessions will not be woken");
            return;
        }
    }
}
