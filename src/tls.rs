//! TLS termination settings: rustls with the ring provider, TLS 1.3 and 1.2, ALPN `http/1.1`.
//!
//! The certificate comes from PEM files, or, when none is configured, from a self-signed certificate
//! generated at start (rcgen) so the zero-config gateway serves wss:// out of the box.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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

/// The server's TLS settings plus, for a generated certificate, its PEM (to give to clients).
pub struct TlsSetup {
    pub config: Arc<ServerConfig>,
    pub self_signed_pem: Option<String>,
}

/// Load a certificate chain and key from PEM files.
pub fn from_files(cert: &Path, key: &Path) -> Result<TlsSetup, TlsError> {
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
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        message: e.to_string(),
    })?;
    Ok(TlsSetup {
        config: server_config(certs, key)?,
        self_signed_pem: None,
    })
}

/// Generate a self-signed certificate for localhost, 127.0.0.1 and ::1.
pub fn self_signed() -> Result<TlsSetup, TlsError> {
    let names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let pem = ck.cert.pem();
    let key = PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    Ok(TlsSetup {
        config: server_config(vec![ck.cert.der().clone()], key)?,
        self_signed_pem: Some(pem),
    })
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
