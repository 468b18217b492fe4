//! The internal port's TLS (mutual: both ends show certificates from the operator's internal
//! CA), and the slot a listener reads its acceptor from.

use std::sync::Arc;
use std::sync::RwLock;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;

use crate::config::tls::pem_certs;
use crate::config::tls::pem_key;
use crate::config::tls::ring;

/// Shared, filled in once the cluster config is known.
pub type Slot = Arc<RwLock<Option<tokio_rustls::TlsAcceptor>>>;

/// The internal port's TLS (mutual: the peer must show a certificate from the cluster's
/// internal CA) — the PEM files an operator gives with `--internal-tls-*`.
struct InternalPki {
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl InternalPki {
    fn read(t: &crate::config::InternalTls) -> Result<InternalPki, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in pem_certs(&t.ca_pem)? {
            roots.add(c).map_err(|e| format!("bad internal CA: {e}"))?;
        }
        let chain = pem_certs(&t.cert_pem)?;
        if chain.is_empty() || roots.is_empty() {
            return Err("the internal certificate and CA files hold no certificate".into());
        }
        Ok(InternalPki { roots: Arc::new(roots), chain, key: pem_key(&t.key_pem)? })
    }
}

/// The internal port's server side: gRPC over HTTP/2 (ALPN h2) and relays, clients verified.
pub fn internal_acceptor(t: &crate::config::InternalTls) -> Result<tokio_rustls::TlsAcceptor, String> {
    let pki = InternalPki::read(t)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(pki.roots, ring())
        .build()
        .map_err(|e| format!("internal CA: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.chain, pki.key)
        .map_err(|e| format!("internal certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The client side for relays to other nodes' internal port.
pub fn internal_connector(t: &crate::config::InternalTls) -> Result<tokio_rustls::TlsConnector, String> {
    let pki = InternalPki::read(t)?;
    let cfg = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(pki.roots)
        .with_client_auth_cert(pki.chain, pki.key)
        .map_err(|e| format!("internal certificate: {e}"))?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}
