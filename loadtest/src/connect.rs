//! Opening WebSocket connections the way a load generator needs to.
//!
//! We do not use `tokio_tungstenite::connect_async` because it hides the socket: to spread tens of
//! thousands of connections over several loopback source addresses (each source address has its
//! own ~28k ephemeral ports towards one server port) we create a [`TcpSocket`], bind it to the
//! chosen source address, connect, and only then run TLS + the HTTP upgrade with
//! `client_async_tls_with_config` over that stream. The target is resolved once; non-loopback
//! targets are refused unless `--allow-remote`, so a typo cannot turn this tool against someone
//! else's server. Errors are classified into short, stable strings so that the report can count
//! them and say clearly when the server went away.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::cli::{parse_source_ips, parse_url, Common, ParsedUrl};

/// A client WebSocket over plain TCP or rustls.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Everything needed to open one more connection to the server under test.
pub struct Target {
    /// Every target with the address connected to (its first resolved address); connections go
    /// to them round-robin (several nodes of one cluster).
    nodes: Vec<(ParsedUrl, SocketAddr)>,
    next_node: AtomicUsize,
    connector: Option<Connector>,
    source_ips: Vec<IpAddr>,
    next_source: AtomicUsize,
    source_step: usize,
    connect_timeout: Duration,
}

/// Why a connection attempt or an established connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrKind {
    /// Nobody listens any more: the server is down. Scenarios stop early on this.
    Refused,
    /// The server reset / closed the connection unexpectedly.
    Closed,
    Timeout,
    /// Upgrade answered with a non-101 HTTP status, or TLS failure.
    Rejected,
    /// Out of local resources (file descriptors, ephemeral ports).
    Local,
    Other,
}

/// A classified failure: `msg` is short and stable so equal failures aggregate in the report.
#[derive(Debug, Clone)]
pub struct ConnError {
    pub kind: ErrKind,
    pub msg: String,
}

impl ConnError {
    pub fn new(kind: ErrKind, msg: impl Into<String>) -> Self {
        ConnError {
            kind,
            msg: msg.into(),
        }
    }
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// Maps an I/O error to a stable message.
pub fn classify_io(e: &std::io::Error, during: &str) -> ConnError {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => ConnError::new(
            ErrKind::Refused,
            format!("{during}: connection refused (server not running or died)"),
        ),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            ConnError::new(
                ErrKind::Closed,
                format!("{during}: connection reset by server ({})", e.kind()),
            )
        }
        K::TimedOut => ConnError::new(ErrKind::Timeout, format!("{during}: timed out")),
        K::AddrNotAvailable | K::AddrInUse => ConnError::new(
            ErrKind::Local,
            format!("{during}: no free local address/port (use --source-ips): {e}"),
        ),
        _ => {
            if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) {
                ConnError::new(
                    ErrKind::Local,
                    format!("{during}: too many open files (use --procs): {e}"),
                )
            } else {
                ConnError::new(ErrKind::Other, format!("{during}: {e}"))
            }
        }
    }
}

/// Maps a tungstenite error to a stable message.
pub fn classify_ws(e: &WsError, during: &str) -> ConnError {
    match e {
        WsError::Io(io) => {
            let mut c = classify_io(io, during);
            if c.msg.contains("certificate") {
                c.kind = ErrKind::Rejected;
                c.msg
                    .push_str(" (use --ca FILE or --insecure for test certificates)");
            }
            c
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => ConnError::new(
            ErrKind::Closed,
            format!("{during}: connection closed by server"),
        ),
        WsError::Protocol(p) => ConnError::new(
            ErrKind::Closed,
            format!("{during}: protocol error / server went away ({p})"),
        ),
        WsError::Http(resp) => ConnError::new(
            ErrKind::Rejected,
            format!("{during}: upgrade rejected with HTTP {}", resp.status()),
        ),
        WsError::Tls(t) => ConnError::new(ErrKind::Rejected, format!("{during}: TLS error: {t}")),
        WsError::Capacity(c) => ConnError::new(ErrKind::Other, format!("{during}: {c}")),
        other => ConnError::new(ErrKind::Other, format!("{during}: {other}")),
    }
}

impl Target {
    /// Resolves `--url`, enforces the loopback rule, loads TLS settings and source addresses.
    /// `proc_index`/`procs` interleave source addresses between `--procs` children.
    pub async fn new(
        common: &Common,
        default_path: &str,
        proc_index: usize,
        procs: usize,
    ) -> Result<Target> {
        let mut nodes = Vec::new();
        for one in common.url.split(',') {
            nodes.push(resolve(one.trim(), default_path, common.allow_remote).await?);
        }
        let (url, first) = nodes[0].clone();
        if let Some((other, _)) = nodes
            .iter()
            .find(|(u, a)| u.tls != url.tls || a.is_ipv4() != first.is_ipv4())
        {
            crate::usage!(
                "--url: every target must use the same scheme and IP family ({} vs {})",
                display_url(&url),
                display_url(other)
            );
        }
        let connector = if url.tls {
            tls_connector(common)?
        } else {
            None
        };
        let source_ips = match &common.source_ips {
            Some(s) => parse_source_ips(s)?,
            None => Vec::new(),
        };
        if let Some(bad) = source_ips
            .iter()
            .find(|ip| ip.is_ipv4() != first.ip().is_ipv4())
        {
            crate::usage!(
                "--source-ips address {bad} is not the same IP family as the target {}",
                first.ip()
            );
        }
        Ok(Target {
            nodes,
            next_node: AtomicUsize::new(0),
            connector,
            source_ips,
            next_source: AtomicUsize::new(proc_index),
            source_step: procs.max(1),
            connect_timeout: Duration::from_secs_f64(common.connect_timeout),
        })
    }

    /// The effective URL(s) (with the default path filled in).
    pub fn display_url(&self) -> String {
        let all: Vec<String> = self.nodes.iter().map(|(u, _)| display_url(u)).collect();
        all.join(",")
    }

    fn next_source_ip(&self) -> Option<IpAddr> {
        if self.source_ips.is_empty() {
            return None;
        }
        let k = self
            .next_source
            .fetch_add(self.source_step, Ordering::Relaxed);
        Some(self.source_ips[k % self.source_ips.len()])
    }

    /// TCP connect (from the next source address) + TLS + upgrade, bounded by
    /// `--connect-timeout`. `path` overrides the URL path (None = the URL's).
    pub async fn open(&self, path: Option<&str>) -> Result<Ws, ConnError> {
        match tokio::time::timeout(self.connect_timeout, self.open_inner(path)).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::new(
                ErrKind::Timeout,
                format!("connect+upgrade timed out after {:?}", self.connect_timeout),
            )),
        }
    }

    async fn open_inner(&self, path: Option<&str>) -> Result<Ws, ConnError> {
        let k = self.next_node.fetch_add(1, Ordering::Relaxed);
        let (url, addr) = &self.nodes[k % self.nodes.len()];
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| classify_io(&e, "socket"))?;
        if let Some(src) = self.next_source_ip() {
            set_bind_no_port(&socket);
            socket
                .bind(SocketAddr::new(src, 0))
                .map_err(|e| classify_io(&e, &format!("bind {src}")))?;
        }
        let stream = socket
            .connect(*addr)
            .await
            .map_err(|e| classify_io(&e, "connect"))?;
        // Latency numbers would otherwise include Nagle delays.
        let _ = stream.set_nodelay(true);
        let path = path.unwrap_or(&url.path);
        let scheme = if url.tls { "wss" } else { "ws" };
        let host = if url.host.contains(':') {
            format!("[{}]", url.host)
        } else {
            url.host.clone()
        };
        let request = format!("{scheme}://{host}:{}{path}", url.port);
        let config = WebSocketConfig {
            max_message_size: Some(64 << 20),
            max_frame_size: Some(64 << 20),
            ..WebSocketConfig::default()
        };
        let (ws, _resp) = tokio_tungstenite::client_async_tls_with_config(
            request,
            stream,
            Some(config),
            self.connector.clone(),
        )
        .await
        .map_err(|e| classify_ws(&e, "upgrade"))?;
        Ok(ws)
    }
}

/// Parse one `--url` target, resolve it and enforce the loopback rule.
async fn resolve(
    one: &str,
    default_path: &str,
    allow_remote: bool,
) -> Result<(ParsedUrl, SocketAddr)> {
    let url = parse_url(one, default_path)?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .with_context(|| format!("cannot resolve {}", url.host))?
        .collect();
    let Some(first) = addrs.first().copied() else {
        bail!("{} resolved to no address", url.host);
    };
    if !allow_remote {
        if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            crate::usage!(
                "refusing non-loopback target {} ({}): only 127.0.0.0/8, ::1 and localhost \
                 are allowed; pass --allow-remote for a real deployment you are responsible for",
                url.host,
                bad.ip()
            );
        }
    }
    Ok((url, first))
}

pub fn display_url(u: &ParsedUrl) -> String {
    let scheme = if u.tls { "wss" } else { "ws" };
    if u.host.contains(':') {
        format!("{scheme}://[{}]:{}{}", u.host, u.port, u.path)
    } else {
        format!("{scheme}://{}:{}{}", u.host, u.port, u.path)
    }
}

/// Lets the kernel pick the source port at connect() time (per destination) instead of at bind()
/// time (globally unique), which is what makes many source addresses useful. Best effort.
fn set_bind_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid fd owned by `socket`, pointer/len describe a c_int.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// rustls client configuration for wss: `--ca FILE`, `--insecure`, or (None) tokio-tungstenite's
/// default, the webpki roots, which loopback test certificates will not chain to.
fn tls_connector(common: &Common) -> Result<Option<Connector>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?;
    let config = if common.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else if let Some(path) = &common.ca {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read --ca {}", path.display()))?;
        for cert in certs {
            let cert = cert.with_context(|| format!("bad PEM in --ca {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("unusable certificate in --ca {}", path.display()))?;
        }
        if roots.is_empty() {
            bail!("--ca {} contains no certificate", path.display());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        return Ok(None);
    };
    Ok(Some(Connector::Rustls(Arc::new(config))))
}

/// `--insecure`: accepts any certificate but still checks handshake signatures.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends a Close frame and waits (bounded) for the server's reply / EOF, so the server sees a
/// clean close instead of a reset. Errors are irrelevant at this point and ignored.
pub async fn graceful_close(mut ws: Ws, wait: Duration) {
    let _ = tokio::time::timeout(wait, async {
        if ws.close(None).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
