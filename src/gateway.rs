//! The embeddable gateway: build from a [`Config`], start the cores, read the bound addresses and
//! stats, shut down. The `wsgate` binary is a thin CLI over this.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use crate::admission::Admission;
use crate::bus::{Bus, BusMsg};
use crate::config::{Config, ConfigError};
use crate::control::{Control, ReloadReport};
use crate::hooks::PublishHook;
use crate::stats::{CoreSnapshot, CoreStats, DriverKind};
use crate::tls::{self, TlsError};
use crate::worker::{run_core, CoreSpec};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start core {core}: {message}")]
    Core { core: usize, message: String },
    #[error("cannot start the cluster bus: {0}")]
    Cluster(String),
}

/// File descriptors kept free for listeners, the io driver and logging.
const FD_RESERVE: u64 = 64;

/// A running gateway. Dropping it shuts it down (close 1001 to every session) and joins its cores.
pub struct Gateway {
    ws: Option<SocketAddr>,
    wss: Option<SocketAddr>,
    bus: Arc<Bus>,
    stats: Vec<Arc<CoreStats>>,
    drivers: Vec<DriverKind>,
    threads: Vec<JoinHandle<()>>,
    self_signed_pem: Option<String>,
    fd_limit: Option<u64>,
    admin: Option<SocketAddr>,
    control: Arc<Control>,
    cluster: Option<crate::cluster::Cluster>,
}

/// A cloneable handle that stops or reloads the gateway from anywhere (signal handlers, threads).
#[derive(Clone)]
pub struct ShutdownHandle {
    bus: Arc<Bus>,
    control: Arc<Control>,
}

impl ShutdownHandle {
    /// Ask every core to stop accepting, close its sessions with 1001 and exit.
    pub fn shutdown(&self) {
        self.control
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for core in 0..self.bus.cores() {
            self.bus.send(core, BusMsg::Shutdown);
        }
    }

    /// Re-read the certificate and auth key files (what SIGHUP does).
    pub fn reload(&self) -> Result<ReloadReport, String> {
        self.control.reload()
    }
}

/// Why `Gateway::publish` refused a publish.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid topic: {0}")]
    Topic(&'static str),
    #[error("data is not valid JSON: {0}")]
    Json(String),
    #[error(
        "data is nested deeper than {} levels",
        crate::pubsub::protocol::MAX_DATA_DEPTH
    )]
    TooDeep,
    #[error("the gateway is shutting down")]
    Stopped,
}

/// Configure a gateway in code before starting it: `Gateway::builder(config).on_publish(..).start()`.
pub struct GatewayBuilder {
    config: Config,
    hook: Option<Arc<dyn PublishHook>>,
}

impl GatewayBuilder {
    /// Run `hook` on every publish before fan-out (see [`PublishHook`]).
    pub fn on_publish(mut self, hook: impl PublishHook) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Validate, bind and start; returns once every core is accepting.
    pub fn start(self) -> Result<Gateway, StartError> {
        Gateway::start_with(self.config, self.hook)
    }
}

impl Gateway {
    /// A builder for embedding: hooks and the like, then `start()`.
    pub fn builder(config: Config) -> GatewayBuilder {
        GatewayBuilder { config, hook: None }
    }

    /// Validate `config`, bind the listeners and start one thread per core. Returns once every core is
    /// accepting.
    pub fn start(config: Config) -> Result<Gateway, StartError> {
        Self::start_with(config, None)
    }

    /// Publish `data` (JSON text) to `topic` from the host program, from any thread. It is delivered
    /// like an admin-API publish (through core 0, the publish hook included); publishes from one thread
    /// keep their order.
    pub fn publish(&self, topic: &str, data: &str) -> Result<(), PublishError> {
        crate::pubsub::protocol::check_topic(topic, self.control.config.limits.max_topic_len)
            .map_err(PublishError::Topic)?;
        let data = serde_json::value::RawValue::from_string(data.to_owned())
            .map_err(|e| PublishError::Json(e.to_string()))?;
        if crate::pubsub::protocol::json_depth(data.get()) > crate::pubsub::protocol::MAX_DATA_DEPTH
        {
            return Err(PublishError::TooDeep);
        }
        if self.threads.is_empty()
            || self
                .control
                .draining
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(PublishError::Stopped);
        }
        self.bus.send(
            0,
            BusMsg::HostPublish {
                topic: Arc::from(topic),
                data,
            },
        );
        Ok(())
    }

    fn start_with(
        mut config: Config,
        hook: Option<Arc<dyn PublishHook>>,
    ) -> Result<Gateway, StartError> {
        config.validate()?;
        let cores = config.effective_cores();
        let fd_limit = raise_fd_limit();
        if config.limits.max_connections == 0 {
            let derived = fd_limit.map_or(10_000, |l| l.saturating_sub(FD_RESERVE).max(1));
            config.limits.max_connections = derived as usize;
        } else if let Some(limit) = fd_limit {
            if config.limits.max_connections as u64 + FD_RESERVE > limit {
                tracing::warn!(
                    max_connections = config.limits.max_connections,
                    open_file_limit = limit,
                    "limits.max_connections exceeds the open-file limit; connections beyond it will fail at accept"
                );
            }
        }
        let (ws_addr, wss_addr) = (config.ws_addr(), config.wss_addr());
        let tls = match wss_addr {
            None => None,
            Some(_) => Some(match (&config.tls.cert, &config.tls.key) {
                (Some(c), Some(k)) => tls::from_files(c, k)?,
                _ => tls::self_signed()?,
            }),
        };
        let bind = |key,
                    addr: Option<SocketAddr>|
         -> Result<Vec<Option<std::net::TcpListener>>, StartError> {
            match addr {
                None => Ok((0..cores).map(|_| None).collect()),
                Some(addr) => crate::listener::bind_reuseport(addr, cores, config.listen.backlog)
                    .map(|v| v.into_iter().map(Some).collect())
                    .map_err(|source| StartError::Bind { key, addr, source }),
            }
        };
        let verifier = Arc::new(arc_swap::ArcSwapOption::new(
            crate::auth::Verifier::from_config(&config.auth)?.map(Arc::new),
        ));
        let admin_listener = match config.admin_addr() {
            None => None,
            Some(addr) => Some(
                std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| StartError::Bind {
                        key: "admin.listen",
                        addr,
                        source,
                    })?,
            ),
        };
        let admin_bound = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let api_key = match (&config.admin.api_key, &config.admin.api_key_file) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map(|k| k.trim().to_string())
                    .ok()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| ConfigError::Invalid {
                        key: "admin.api_key_file",
                        message: format!("cannot read a key from {}", path.display()),
                    })?,
            ),
            (None, None) => None,
        };
        let admission = Admission::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        );
        let ws = bind("listen.ws", ws_addr)?;
        let wss = bind("listen.wss", wss_addr)?;
        let local = |v: &[Option<std::net::TcpListener>]| {
            v.first()
                .and_then(|l| l.as_ref())
                .and_then(|l| l.local_addr().ok())
        };
        let (ws_bound, wss_bound) = (local(&ws), local(&wss));

        let bus = Bus::with_bridge(cores, config.cluster.enabled());
        let cluster = crate::cluster::Cluster::start(
            &config.cluster,
            config.limits.max_topic_len,
            bus.clone(),
        )
        .map_err(|e| StartError::Cluster(e.to_string()))?;
        let stats: Vec<Arc<CoreStats>> = (0..cores).map(|_| Arc::default()).collect();
        let config = Arc::new(config);
        let control = Arc::new(Control {
            config: config.clone(),
            started: std::time::Instant::now(),
            draining: std::sync::atomic::AtomicBool::new(false),
            stats: stats.clone(),
            admission: admission.clone(),
            certs: tls.as_ref().map(|t| t.store.clone()),
            verifier: verifier.clone(),
            cluster: cluster.as_ref().map(|c| c.state.clone()),
        });
        let mut admin_listener = admin_listener;
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(cores);
        for (idx, (ws, wss)) in ws.into_iter().zip(wss).enumerate() {
            let spec = CoreSpec {
                idx,
                config: config.clone(),
                ws,
                wss,
                tls: tls.as_ref().map(|t| t.config.clone()),
                verifier: verifier.clone(),
                admission: admission.clone(),
                hook: hook.clone(),
                admin: if idx == 0 {
                    admin_listener
                        .take()
                        .map(|l| (l, control.clone(), api_key.clone()))
                } else {
                    None
                },
                bus: bus.clone(),
                stats: stats[idx].clone(),
                ready: ready_tx.clone(),
            };
            let t = std::thread::Builder::new()
                .name(format!("wsgate-core-{idx}"))
                .spawn(move || run_core(spec))
                .map_err(|e| StartError::Core {
                    core: idx,
                    message: e.to_string(),
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        let mut gw = Gateway {
            ws: ws_bound,
            wss: wss_bound,
            bus,
            stats,
            drivers: Vec::with_capacity(cores),
            threads,
            self_signed_pem: tls.and_then(|t| t.self_signed_pem),
            fd_limit,
            admin: admin_bound,
            control,
            cluster,
        };
        for core in 0..cores {
            match ready_rx.recv() {
                Ok(Ok(d)) => gw.drivers.push(d),
                Ok(Err(message)) => return Err(StartError::Core { core, message }),
                Err(_) => {
                    return Err(StartError::Core {
                        core,
                        message: "core thread exited during start".into(),
                    })
                }
            }
        }
        Ok(gw)
    }

    /// Address of the ws:// listener, if enabled.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws
    }

    /// Address of the wss:// listener, if enabled.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss
    }

    /// PEM of the generated certificate, when no certificate was configured.
    pub fn self_signed_cert_pem(&self) -> Option<&str> {
        self.self_signed_pem.as_deref()
    }

    /// The driver each core got (index = core).
    pub fn drivers(&self) -> Vec<DriverKind> {
        self.stats.iter().filter_map(|s| s.driver()).collect()
    }

    /// The process's open-file limit after start (raised to the hard limit).
    pub fn fd_limit(&self) -> Option<u64> {
        self.fd_limit
    }

    /// Counters of every core.
    pub fn stats(&self) -> Vec<CoreSnapshot> {
        self.stats
            .iter()
            .enumerate()
            .map(|(i, s)| CoreSnapshot::of(i, s))
            .collect()
    }

    /// Open connections gateway-wide (any phase).
    pub fn open_connections(&self) -> usize {
        self.control.admission.open()
    }

    /// Open connections from `ip` (tracked only when `limits.max_connections_per_ip` is set).
    pub fn connections_from(&self, ip: std::net::IpAddr) -> u32 {
        self.control.admission.ip_connections(ip)
    }

    /// Address of the admin listener, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Re-read the certificate and auth key files; established sessions are untouched.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        self.control.reload()
    }

    /// DER of the certificate new wss connections get.
    pub fn current_certificate_der(&self) -> Option<Vec<u8>> {
        self.control
            .certs
            .as_ref()
            .and_then(|c| c.leaf_der())
            .map(|d| d.to_vec())
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            bus: self.bus.clone(),
            control: self.control.clone(),
        }
    }

    /// Stop gracefully and wait for every core to finish.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Block until the gateway stops (after a `ShutdownHandle::shutdown`).
    pub fn wait(mut self) {
        self.join();
    }

    /// The cluster bridge's state (node id, Redis link), with clustering on.
    pub fn cluster(&self) -> Option<&crate::cluster::ClusterState> {
        self.cluster.as_ref().map(|c| &*c.state)
    }

    fn stop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shutdown_handle().shutdown();
        self.join();
    }

    /// Join the cores, then stop the cluster bridge: it forwards what the cores handed it while
    /// draining before it exits.
    fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let (Some(cluster), Some(bridge)) = (&mut self.cluster, self.bus.bridge()) {
            self.bus.send(bridge, BusMsg::Shutdown);
            cluster.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns the resulting soft limit.
fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass by valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}
