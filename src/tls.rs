//! TLS termination settings: rustls with the ring provider, TLS 1.3 and 1.2, ALPN `http/1.1`.
//!
//! The certificate comes from PEM files, or, when none is configured, from a self-signed certificate
//! generated at start (rcgen) so the zero-config gateway serves wss:// out of the box. It sits in a
//! [`CertStore`] (a lock-free swappable slot read once per handshake), so a reload (SIGHUP or
//! `POST /api/reload`) changes the certificate for new connections without touching established ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Why TLS could not be set up; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert: cannot read certificates from {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("tls.key: cannot read a private key from {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("tls: certificate and key are not usable together: {0}")]
    Config(String),
    #[error("tls: cannot generate a self-signed certificate: {0}")]
    SelfSigned(String),
}

/// The server's TLS settings, the swappable certificate behind them, and, for a generated
/// certificate, its PEM (to give to clients).
pub struct TlsSetup {
    pub config: Arc<ServerConfig>,
    pub store: Arc<CertStore>,
    pub self_signed_pem: Option<String>,
}

/// The current certificate and key; rustls asks it once per handshake.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertStore {
    /// Load new PEM files and swap them in; on any error the current certificate stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let ck = load(cert, key, &self.provider)?;
        self.current.store(Arc::new(ck));
        Ok(())
    }

    /// DER of the leaf certificate now being served.
    pub fn leaf_der(&self) -> Option<CertificateDer<'static>> {
        self.current.load().cert.first().cloned()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.to_owned(),
            message: "no CERTIFICATE block found".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(certs, key_der, provider).map_err(|e| TlsError::Config(e.to_string()))
}

/// Load a certificate chain and key from PEM files.
pub fn from_files(cert: &Path, key: &Path) -> Result<TlsSetup, TlsError> {
    let provider = provider();
    let ck = load(cert, key, &provider)?;
    setup(ck, provider, None)
}

/// Generate a self-signed certificate for localhost, 127.0.0.1 and ::1.
pub fn self_signed() -> Result<TlsSetup, TlsError> {
    let names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let pem = generated.cert.pem();
    let key = PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into());
    let provider = provider();
    let ck = CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    setup(ck, provider, Some(pem))
}

fn setup(
    ck: CertifiedKey,
    provider: Arc<CryptoProvider>,
    self_signed_pem: Option<String>,
) -> Result<TlsSetup, TlsError> {
    let store = Arc::new(CertStore {
        current: ArcSwap::from_pointee(ck),
        provider: provider.clone(),
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Upgraded wss sessions keep only the traffic keys and rustls's key schedule, exported from the
    // connection after the upgrade (`transport::tls_records`).
    cfg.enable_secret_extraction = true;
    Ok(TlsSetup {
        config: Arc::new(cfg),
        store,
        self_signed_pem,
    })
}
