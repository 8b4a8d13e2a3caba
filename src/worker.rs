//! One core: a monoio runtime pinned to a CPU, owning its listeners, its sessions, its topic table and
//! its bus inbox. Nothing here is shared with other threads except the bus and the stats counters.
//!
//! The accept loop only accepts; TLS, HTTP and the upgrade run in the connection's own task under
//! deadlines, and the session then runs in a fresh task (so the handshake's large future is freed).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::IntoPollIo;
use monoio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::admission::{Admission, Ticket};
use crate::auth::Verifier;
use crate::bus::{Bus, BusMsg};
use crate::config::{Config, DriverChoice, LimitsConfig, WsIo, WsUpgrade, WssIo};
use crate::http::HttpCtx;
use crate::pubsub::{Subscriber, TopicTable};
use crate::shutdown::Shutdown;
use crate::stats::{CoreStats, DriverKind};
use crate::transport::{close_code, CloseReason};
use crate::transport::{HandshakeGate, HandshakePermit, NativeIo, PollIo};

/// Everything a core needs to start; built by `Gateway::start` on the main thread.
pub(crate) struct CoreSpec {
    pub idx: usize,
    pub config: Arc<Config>,
    pub ws: Option<std::net::TcpListener>,
    pub wss: Option<std::net::TcpListener>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub verifier: Arc<arc_swap::ArcSwapOption<Verifier>>,
    pub admission: Arc<Admission>,
    /// The admin listener, its control handle and API key (core 0 only).
    pub admin: Option<(
        std::net::TcpListener,
        Arc<crate::control::Control>,
        Option<String>,
    )>,
    /// The embedding program's publish hook.
    pub hook: Option<Arc<dyn crate::hooks::PublishHook>>,
    pub bus: Arc<Bus>,
    pub stats: Arc<CoreStats>,
    pub ready: mpsc::Sender<Result<DriverKind, String>>,
}

/// Connections accepted beyond `max_connections` while their refusal (503) is being written; past
/// this margin, accept closes new sockets at once to protect file descriptors.
const REFUSAL_MARGIN: usize = 256;

/// One core's state, shared by its tasks through `Rc`.
pub struct Worker {
    /// Fired when this core stops; long-running tasks select on it.
    pub(crate) shutdown: Shutdown,
    pub idx: usize,
    pub limits: LimitsConfig,
    /// Data path for plain ws sessions.
    pub ws_io: WsIo,
    /// How plain ws upgrades are parsed.
    pub ws_upgrade: WsUpgrade,
    /// Data path of wss sessions.
    pub wss_io: WssIo,
    /// TLS handshakes in progress on this core, capped (`tls.max_handshakes_per_core`).
    tls_gate: Rc<HandshakeGate>,
    /// The embedding program's publish hook.
    hook: Option<Arc<dyn crate::hooks::PublishHook>>,
    pub http: Rc<HttpCtx>,
    pub table: TopicTable,
    pub stats: Arc<CoreStats>,
    pub(crate) admission: Arc<Admission>,
    next_id: Cell<u64>,
    /// Live sessions, for heartbeats and so shutdown can close each with 1001. A dense list (8 bytes
    /// a session, a third of a hash map's); each session knows its slot (`Subscriber::slot`).
    sessions: RefCell<Vec<Rc<Subscriber>>>,
    /// Publish-to-write latency of sampled deliveries on this core (µs); summarised into
    /// `stats.latency` once a second.
    latency: RefCell<hdrhistogram::Histogram<u64>>,
    /// Accept -> upgrade durations on this core (µs).
    handshakes: RefCell<hdrhistogram::Histogram<u64>>,
    /// Seconds until the heap is collected after a heartbeat round (0: none due); see
    /// `trim_after_closes`.
    trim_in: Cell<u8>,
}

impl Worker {
    fn new(
        idx: usize,
        config: &Config,
        http: HttpCtx,
        bus: &Arc<Bus>,
        stats: Arc<CoreStats>,
        admission: Arc<Admission>,
        hook: Option<Arc<dyn crate::hooks::PublishHook>>,
    ) -> Rc<Self> {
        Rc::new(Worker {
            shutdown: Shutdown::default(),
            idx,
            limits: config.limits.clone(),
            ws_io: config.ws_io,
            ws_upgrade: config.ws_upgrade,
            wss_io: config.wss_io,
            tls_gate: HandshakeGate::new(config.tls.max_handshakes_per_core),
            hook,
            http: Rc::new(http),
            table: TopicTable::new(idx, bus.clone(), stats.clone()),
            stats,
            admission,
            next_id: Cell::new(1),
            trim_in: Cell::new(0),
            sessions: RefCell::default(),
            latency: RefCell::new(crate::stats::latency_histogram()),
            handshakes: RefCell::new(crate::stats::latency_histogram()),
        })
    }

    pub fn next_session_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    pub fn register_session(&self, s: &Rc<Subscriber>) {
        let mut sessions = self.sessions.borrow_mut();
        s.slot.set(sessions.len() as u32);
        sessions.push(s.clone());
    }

    pub fn unregister_session(&self, s: &Subscriber) {
        let mut sessions = self.sessions.borrow_mut();
        let slot = s.slot.get() as usize;
        if sessions.get(slot).is_some_and(|x| std::ptr::eq(&**x, s)) {
            sessions.swap_remove(slot);
            if let Some(moved) = sessions.get(slot) {
                moved.slot.set(slot as u32);
            }
            // Give back most of the room after a mass disconnect.
            if sessions.capacity() > 1024 && sessions.len() < sessions.capacity() / 4 {
                let half = sessions.capacity() / 2;
                sessions.shrink_to(half);
            }
        }
    }

    /// Accept a publish on this core: run the embedding program's hook, encode once, fan out. Returns
    /// the local sessions reached, or the hook's rejection (code, message).
    pub fn publish(
        &self,
        topic: &str,
        data: &serde_json::value::RawValue,
        user: Option<&str>,
        source: crate::hooks::PublishSource,
    ) -> Result<usize, (String, String)> {
        let req = crate::hooks::PublishRequest {
            topic,
            data,
            user,
            source,
        };
        match crate::hooks::apply(self.hook.as_deref(), &req) {
            crate::hooks::Verdict::Reject { code, message } => Err((code, message)),
            crate::hooks::Verdict::Send(replaced) => {
                let data = replaced.as_deref().unwrap_or(data);
                let frame = crate::pubsub::protocol::message_frame(topic, data);
                Ok(self.table.publish(topic, frame))
            }
        }
    }

    /// Account for bytes/frames a session wrote (and a sampled publish-to-write latency).
    pub fn on_written(&self, bytes: usize, frames: usize, sampled_publish_us: Option<u64>) {
        self.stats.bytes_out.add(bytes as u64);
        self.stats.messages_out.add(frames as u64);
        if let Some(t) = sampled_publish_us {
            let us = crate::clock::now_us().saturating_sub(t).max(1);
            let _ = self.latency.borrow_mut().record(us);
        }
    }

    fn publish_latency_snapshot(&self) {
        let snap = crate::stats::LatencySnapshot::of(&self.latency.borrow());
        if let Ok(mut l) = self.stats.latency.lock() {
            *l = snap;
        }
        let snap = crate::stats::LatencySnapshot::of(&self.handshakes.borrow());
        if let Ok(mut l) = self.stats.handshake_latency.lock() {
            *l = snap;
        }
        self.stats.bus_depth.set(self.table.bus_depth() as u64);
    }

    fn record_handshake(&self, accepted: std::time::Instant, tls: bool) {
        let us = (accepted.elapsed().as_micros() as u64).max(1);
        let _ = self.handshakes.borrow_mut().record(us);
        if tls {
            self.stats.upgrades_tls.add(1);
        }
    }

    /// One heartbeat round: close sessions silent for longer than `idle_timeout_ms`; ping the rest
    /// when `ping_due`.
    fn heartbeat_round(&self, ping: &bytes::Bytes, ping_due: bool) {
        let now = crate::clock::now_ms();
        let idle = self.limits.idle_timeout_ms;
        for s in self.sessions.borrow().iter() {
            if idle > 0 && now.saturating_sub(s.outbox.last_rx()) > idle {
                self.stats.idle_timeouts.add(1);
                s.outbox
                    .close(CloseReason::new(close_code::GOING_AWAY, "idle timeout"));
            } else if ping_due {
                s.outbox.reply(ping.clone());
            }
        }
        let every = self.limits.memory_trim_after_closes;
        if ping_due && every > 0 && self.sessions.borrow().len() as u64 >= every {
            // Every session just queued a frame, i.e. allocated a queue it frees once the ping is
            // written: collect those pages once the sessions have had their turn.
            self.trim_in.set(2);
        }
    }
}

/// Thread body of core `spec.idx`.
pub(crate) fn run_core(spec: CoreSpec) {
    if spec.config.pin_cores {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Err(e) = monoio::utils::bind_to_cpu_set([spec.idx % cpus]) {
            tracing::warn!(core = spec.idx, error = ?e, "could not pin core to its CPU");
        }
    }
    let ready = spec.ready.clone();
    let fail = |msg: String| {
        let _ = ready.send(Err(msg));
    };
    let want = spec.config.driver;
    if want != DriverChoice::Epoll {
        // Single issuer + deferred task running: completions are handled when this thread asks for
        // them instead of through an inter-processor interrupt per completion (kernel >= 6.1). A
        // kernel that refuses the flags gets a plain ring.
        let tuned = spec.config.uring_defer_taskrun.then(|| {
            let mut b = io_uring::IoUring::builder();
            b.setup_single_issuer().setup_defer_taskrun();
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .uring_builder(b)
                .enable_timer()
                .build()
        });
        let built = match tuned {
            Some(Ok(rt)) => Ok(rt),
            Some(Err(e)) => {
                tracing::info!(core = spec.idx, error = %e, "io_uring refused DEFER_TASKRUN; using a plain ring");
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .enable_timer()
                    .build()
            }
            None => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build(),
        };
        match built {
            Ok(mut rt) => return rt.block_on(core_main(spec, DriverKind::Uring)),
            Err(e) if want == DriverChoice::Uring => {
                return fail(format!("core {}: io_uring unavailable: {e}", spec.idx))
            }
            Err(e) => tracing::warn!(
                core = spec.idx,
                error = %e,
                "io_uring unavailable, falling back to epoll"
            ),
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => rt.block_on(core_main(spec, DriverKind::Epoll)),
        Err(e) => fail(format!(
            "core {}: cannot start the epoll driver: {e}",
            spec.idx
        )),
    }
}

async fn core_main(spec: CoreSpec, driver: DriverKind) {
    let CoreSpec {
        idx,
        config,
        ws,
        wss,
        tls,
        verifier,
        admission,
        admin,
        hook,
        bus,
        stats,
        ready,
    } = spec;
    stats.set_driver(driver);
    let mut http = HttpCtx::new(&config, verifier, admission.clone(), stats.clone());
    match crate::proxy::Proxies::new(&config.proxy) {
        Ok(p) => http.proxy = p,
        Err(e) => {
            let _ = ready.send(Err(format!("core {idx}: {e}")));
            return;
        }
    }
    let worker = Worker::new(idx, &config, http, &bus, stats, admission, hook);
    let adopt = |l: Option<std::net::TcpListener>| l.map(TcpListener::from_std).transpose();
    let (ws, wss) = match (adopt(ws), adopt(wss)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            let _ = ready.send(Err(format!("core {idx}: cannot adopt listener: {e}")));
            return;
        }
    };
    tracing::info!(core = idx, driver = ?driver, "core started");
    {
        let worker = worker.clone();
        monoio::spawn(async move {
            let table_worker = worker.clone();
            bus.run(idx, move |msg| match table_worker.table.on_bus(msg) {
                Some(BusMsg::Shutdown) => {
                    table_worker.shutdown.fire();
                    false
                }
                Some(BusMsg::HostPublish { topic, data }) => {
                    let source = crate::hooks::PublishSource::Host;
                    if let Err((code, message)) = table_worker.publish(&topic, &data, None, source)
                    {
                        tracing::debug!(
                            topic = &*topic,
                            code,
                            message,
                            "host publish rejected by the hook"
                        );
                    }
                    true
                }
                _ => true,
            })
            .await;
            worker.shutdown.fire();
        });
    }
    if let Some(l) = ws {
        monoio::spawn(accept_loop(l, worker.clone(), None));
    }
    if let Some(l) = wss {
        monoio::spawn(accept_loop(l, worker.clone(), tls));
    }
    if worker.limits.ping_interval_ms > 0 || worker.limits.idle_timeout_ms > 0 {
        monoio::spawn(heartbeats(worker.clone()));
    }
    monoio::spawn(latency_snapshots(worker.clone()));
    if let Some((listener, control, api_key)) = admin {
        match TcpListener::from_std(listener) {
            Ok(l) => {
                monoio::spawn(crate::admin::serve(l, worker.clone(), control, api_key));
            }
            Err(e) => {
                let _ = ready.send(Err(format!(
                    "core {idx}: cannot adopt the admin listener: {e}"
                )));
                return;
            }
        }
    }
    let _ = ready.send(Ok(driver));
    worker.shutdown.wait().await;
    drain(&worker).await;
    tracing::debug!(core = idx, "core stopped");
}

/// Close every session with 1001 and wait (bounded) for connections to finish.
async fn drain(worker: &Worker) {
    let sessions: Vec<_> = worker.sessions.borrow().clone();
    for s in sessions {
        s.outbox.close(CloseReason::new(
            close_code::GOING_AWAY,
            "server shutting down",
        ));
    }
    let deadline = Instant::now() + worker.limits.shutdown_grace();
    while worker.stats.sessions.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Once a second, summarise the core's latency histogram where scrapes can read it (and trim memory
/// after a mass disconnect).
async fn latency_snapshots(worker: Rc<Worker>) {
    let mut high = 0;
    loop {
        monoio::select! {
            _ = monoio::time::sleep(Duration::from_secs(1)) => {
                worker.publish_latency_snapshot();
                high = trim_after_closes(&worker, high);
            }
            _ = worker.shutdown.wait() => return,
        }
    }
}

/// mimalloc keeps the pages sessions freed in this thread's heap (and their arenas committed) until
/// the thread allocates enough to reuse or purge them; a core that goes quiet after a mass disconnect
/// would keep its peak RSS. Once `limits.memory_trim_after_closes` connections have closed since the
/// last high-water mark, collect this core's heap. The same after a heartbeat round over at least
/// that many sessions: each session's outbox queue was allocated for the ping and freed after it, and
/// without a collection those pages stay resident (measured: +0.13 KiB per idle ws session).
/// Returns the new high-water mark.
fn trim_after_closes(worker: &Worker, high: u64) -> u64 {
    let open = worker.stats.connections.get();
    let every = worker.limits.memory_trim_after_closes;
    let after_heartbeat = match worker.trim_in.get() {
        0 => false,
        n => {
            worker.trim_in.set(n - 1);
            n == 1
        }
    };
    if every > 0 && (high.saturating_sub(open) >= every || after_heartbeat) {
        // SAFETY: mi_collect only walks and releases this thread's own mimalloc heap.
        unsafe { libmimalloc_sys::mi_collect(true) };
        return open;
    }
    high.max(open)
}

/// Per-core heartbeat task: one timer for all of the core's sessions instead of one per session.
async fn heartbeats(worker: Rc<Worker>) {
    let l = &worker.limits;
    let period = match (l.ping_interval_ms, l.idle_timeout_ms) {
        (0, idle) => idle / 4,
        (ping, 0) => ping,
        (ping, idle) => ping.min(idle / 4).max(1),
    };
    let ping = crate::transport::encode_frame(fastwebsockets::OpCode::Ping, b"");
    let mut since_ping = 0;
    loop {
        monoio::select! {
            _ = monoio::time::sleep(Duration::from_millis(period.max(1))) => {},
            _ = worker.shutdown.wait() => return,
        }
        since_ping += period;
        let due =
            worker.limits.ping_interval_ms > 0 && since_ping >= worker.limits.ping_interval_ms;
        if due {
            since_ping = 0;
        }
        worker.heartbeat_round(&ping, due);
    }
}

async fn accept_loop(
    listener: TcpListener,
    worker: Rc<Worker>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    loop {
        if tls.is_some() {
            // At most `tls.max_handshakes_per_core` handshakes at once; the rest wait in the backlog.
            monoio::select! {
                _ = worker.tls_gate.ready() => {},
                _ = worker.shutdown.wait() => return,
            }
        }
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = worker.shutdown.wait() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                worker.stats.accepted.add(1);
                if worker.admission.open() >= worker.admission.max() + REFUSAL_MARGIN {
                    worker.stats.rejected_capacity.add(1);
                    continue;
                }
                let ticket = worker.admission.admit(peer.ip());
                let _ = stream.set_nodelay(true);
                let permit = tls.as_ref().map(|_| worker.tls_gate.enter());
                let tls = tls.clone();
                monoio::spawn(connection(stream, ticket, worker.clone(), tls, permit));
            }
            Err(e) => {
                tracing::warn!(core = worker.idx, error = %e, "accept failed");
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    monoio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Run an upgraded connection's session in a task of its own (the handshake task and its large
/// future end here); `guard` keeps the connection counted until the session ends. Each data path is
/// its own task type, so a native ws task carries no TLS state.
fn spawn_session<D: crate::transport::SessionIo + 'static>(
    io: D,
    rest: bytes::Bytes,
    route: crate::http::Route,
    identity: Option<crate::auth::Identity>,
    worker: Rc<Worker>,
    guard: ConnGuard,
) {
    crate::session::spawn(io, rest, route, identity, worker, guard);
}

/// A plain connection on the direct upgrade path (`ws_upgrade = "direct"`): upgrade requests are
/// answered without hyper and go straight to a native session; anything else is served by hyper.
async fn direct_connection(
    stream: TcpStream,
    guard: ConnGuard,
    peer: std::net::IpAddr,
    accepted: Instant,
    worker: Rc<Worker>,
) {
    use crate::http::{upgrade_direct, Direct, Rewind};
    let deadline = worker.limits.handshake_timeout();
    // The first request head must also arrive within the header read timeout, as with hyper.
    let head_deadline = deadline.min(worker.limits.header_read_timeout());
    let first =
        monoio::time::timeout(head_deadline, upgrade_direct(stream, &worker.http, peer)).await;
    match first {
        Err(_) => worker.stats.handshake_timeouts.add(1),
        Ok(Direct::Done) => {}
        Ok(Direct::Upgraded {
            stream,
            rest,
            route,
            identity,
        }) => {
            worker.record_handshake(accepted, false);
            spawn_session(NativeIo(stream), rest, route, identity, worker, guard);
        }
        Ok(Direct::Hyper { stream, read }) => {
            let Ok(io) = stream.into_poll_io() else {
                return;
            };
            let io = Rewind::new(read, io);
            serve_rest(io, guard, peer, accepted, worker, false).await;
        }
    }
}

/// Serve the rest of a connection whose first request was not for a direct upgrade path with hyper
/// (bytes already read replayed by `io`), within what is left of the handshake deadline.
async fn serve_rest<S>(
    io: S,
    guard: ConnGuard,
    peer: std::net::IpAddr,
    accepted: Instant,
    worker: Rc<Worker>,
    tls: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let left = worker
        .limits
        .handshake_timeout()
        .saturating_sub(accepted.elapsed());
    let serve = crate::http::serve(io, worker.http.clone(), peer, tls);
    let Ok(up) = monoio::time::timeout(left, serve).await else {
        worker.stats.handshake_timeouts.add(1);
        return;
    };
    if let Some(up) = up {
        worker.record_handshake(accepted, tls);
        let (io, rest) = (PollIo(up.io), up.read_buf);
        spawn_session(io, rest, up.route, up.identity, worker, guard);
    }
}

/// A wss connection on the unbuffered TLS path (`wss_io = "unbuffered"`): TLS handshake and upgrade
/// on the native socket, then a native TLS session; non-upgrade requests are served by hyper over
/// the same unbuffered TLS connection.
async fn tls_connection(
    stream: TcpStream,
    guard: ConnGuard,
    peer: std::net::IpAddr,
    accepted: Instant,
    worker: Rc<Worker>,
    config: Arc<rustls::ServerConfig>,
) {
    use crate::http::Rewind;
    use crate::transport::{upgrade_tls, TlsStream, TlsUpgrade};
    let deadline = worker.limits.handshake_timeout();
    let head_deadline = deadline.min(worker.limits.header_read_timeout());
    let first = upgrade_tls(stream, config, &worker.http, peer);
    match monoio::time::timeout(head_deadline, first).await {
        Err(_) => worker.stats.handshake_timeouts.add(1),
        Ok(TlsUpgrade::Failed) => worker.stats.tls_handshake_failures.add(1),
        Ok(TlsUpgrade::Done) => {}
        Ok(TlsUpgrade::Upgraded {
            io,
            rest,
            route,
            identity,
        }) => {
            worker.record_handshake(accepted, true);
            spawn_session(io, rest, route, identity, worker, guard);
        }
        Ok(TlsUpgrade::Hyper { stream, tls, read }) => {
            let Ok(io) = stream.into_poll_io() else {
                return;
            };
            let io = Rewind::new(read, TlsStream::new(io, tls));
            serve_rest(io, guard, peer, accepted, worker, true).await;
        }
    }
}

/// Counts a connection as open (on its core and gateway-wide) for as long as it lives, in whichever
/// task ends up owning it.
pub(crate) struct ConnGuard {
    stats: Arc<CoreStats>,
    ticket: Ticket,
}

impl ConnGuard {
    pub(crate) fn new(stats: &Arc<CoreStats>, ticket: Ticket) -> Self {
        stats.connections.add(1);
        Self {
            stats: stats.clone(),
            ticket,
        }
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> std::net::IpAddr {
        self.ticket.ip()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.stats.connections.sub(1);
    }
}

async fn connection(
    stream: TcpStream,
    ticket: Ticket,
    worker: Rc<Worker>,
    tls: Option<Arc<rustls::ServerConfig>>,
    // Held until the handshake is over (dropped when this task ends; sessions run in their own).
    _permit: Option<HandshakePermit>,
) {
    let peer = ticket.ip();
    let accepted = Instant::now();
    let guard = ConnGuard::new(&worker.stats, ticket);
    if let Some(config) = &tls {
        if worker.wss_io == WssIo::Unbuffered {
            let config = config.clone();
            return tls_connection(stream, guard, peer, accepted, worker, config).await;
        }
    }
    if tls.is_none() && worker.ws_upgrade == WsUpgrade::Direct && worker.ws_io == WsIo::Native {
        return direct_connection(stream, guard, peer, accepted, worker).await;
    }
    let io = match stream.into_poll_io() {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!(error = %e, "cannot convert stream");
            return;
        }
    };
    let deadline = worker.limits.handshake_timeout();
    let http = worker.http.clone();
    match tls {
        None => {
            let Ok(up) =
                monoio::time::timeout(deadline, crate::http::serve(io, http, peer, false)).await
            else {
                worker.stats.handshake_timeouts.add(1);
                return;
            };
            if let Some(up) = up {
                worker.record_handshake(accepted, false);
                let native = match worker.ws_io {
                    WsIo::Native => up.io.try_into_comp_io().map_err(|(e, io)| {
                        tracing::debug!(error = %e, "native io unavailable for this socket");
                        io
                    }),
                    WsIo::Poll => Err(up.io),
                };
                let (buf, route, id) = (up.read_buf, up.route, up.identity);
                match native {
                    Ok(stream) => {
                        spawn_session(NativeIo(stream), buf, route, id, worker, guard);
                    }
                    Err(io) => {
                        spawn_session(PollIo(io), buf, route, id, worker, guard);
                    }
                }
            }
        }
        Some(config) => {
            let acceptor = TlsAcceptor::from(config);
            let stats = worker.stats.clone();
            let handshake = async move {
                let tls = match acceptor.accept(io).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        stats.tls_handshake_failures.add(1);
                        tracing::debug!(error = %e, "tls handshake failed");
                        return None;
                    }
                };
                crate::http::serve(tls, http, peer, true).await
            };
            let Ok(up) = monoio::time::timeout(deadline, handshake).await else {
                worker.stats.handshake_timeouts.add(1);
                return;
            };
            if let Some(up) = up {
                worker.record_handshake(accepted, true);
                let (io, rest) = (PollIo(up.io), up.read_buf);
                spawn_session(io, rest, up.route, up.identity, worker, guard);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A core's state for tests that need one, without its tasks.
    pub(crate) fn worker() -> Rc<Worker> {
        let config = Config::default();
        let stats = Arc::new(CoreStats::default());
        let admission = Admission::new(1000, 0);
        let verifier = Arc::new(arc_swap::ArcSwapOption::empty());
        let http = HttpCtx::new(&config, verifier, admission.clone(), stats.clone());
        Worker::new(0, &config, http, &Bus::new(1), stats, admission, None)
    }
}
