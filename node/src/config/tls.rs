//! TLS material as the node reads it: PEM certificates and keys, checked at start-up so a bad
//! file stops the node before it binds, and the one crypto provider every TLS endpoint uses.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;

pub fn pem_certs(mut pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut pem).map(|c| c.map_err(|e| format!("bad certificate: {e}"))).collect()
}

pub fn pem_key(mut pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut pem)
        .map_err(|e| format!("bad key: {e}"))?
        .ok_or_else(|| "no private key in the cluster TLS material".to_string())
}

/// The operator's certificate chain and key, checked: parsable, with a key rustls can sign with.
pub fn operator_cert(t: &crate::config::PublicTls) -> Result<Arc<CertifiedKey>, String> {
    let chain = pem_certs(t.cert_pem.as_bytes())?;
    if chain.is_empty() {
        return Err("no certificate in the PEM file".into());
    }
    let key = rustls_pemfile::private_key(&mut t.key_pem.as_bytes())
        .map_err(|e| format!("bad key: {e}"))?
        .ok_or_else(|| "no private key in the PEM file".to_string())?;
    let c = certified(chain, &key)?;
    c.keys_match().map_err(|e| format!("the key does not match the certificate: {e}"))?;
    Ok(c)
}

pub fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| format!("unsupported key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

pub fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
