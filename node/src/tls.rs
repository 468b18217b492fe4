//! TLS termination with the cluster's certificates. An operator's certificate
//! (`--tls-cert`/`--tls-key`, the same files on every node) is served for every name. Without
//! one, the cluster CA (generated at bootstrap and
//! replicated) signs a certificate for each socket name a client asks for (SNI), on first use,
//! so every node presents certificates that chain to the same CA: `curl --cacert` with the CA
//! from `GET /cluster/ca.pem` works for any socket. (A wildcard for `*.localhost` alone is
//! refused by clients, as `localhost` is a single label.) Names that are not sockets get the
//! replicated wildcard certificate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::time::Duration;

use rcgen::CertificateParams;
use rcgen::DistinguishedName;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::Issuer;
use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::ClientHello;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::cluster::NodeRef;

/// Shared, filled in once the cluster config is known.
pub type Slot = Arc<RwLock<Option<tokio_rustls::TlsAcceptor>>>;

/// Certificates minted per name; bounded so random SNI cannot grow memory.
const CACHE_MAX: usize = 10_000;

fn pem_certs(mut pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut pem).map(|c| c.map_err(|e| format!("bad certificate: {e}"))).collect()
}

fn pem_key(mut pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
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

fn certified(chain: Vec<CertificateDer<'static>>, key: &PrivateKeyDer<'static>) -> Result<Arc<CertifiedKey>, String> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| format!("unsupported key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// Picks (or mints) the certificate for the name a client asked for.
pub struct SniCerts {
    node: NodeRef,
    domain: String,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    leaf_key_der: PrivateKeyDer<'static>,
    ca_der: CertificateDer<'static>,
    fallback: Arc<CertifiedKey>,
    /// The operator's certificate, served for every name when given.
    operator: Option<Arc<CertifiedKey>>,
    cache: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for SniCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniCerts").field("domain", &self.domain).finish_non_exhaustive()
    }
}

impl SniCerts {
    pub fn new(node: NodeRef, cfg: &mysocket_raft_store::ClusterConfig) -> Result<SniCerts, String> {
        let ca_key = KeyPair::from_pem(&cfg.tls_ca_key).map_err(|e| format!("cluster CA key: {e}"))?;
        let params = crate::bootstrap::ca_params(&cfg.domain).map_err(|e| e.to_string())?;
        let issuer = Issuer::new(params, ca_key);
        let ca_der = pem_certs(cfg.tls_ca_cert.as_bytes())?.into_iter().next().ok_or("no CA certificate")?;
        let mut chain = pem_certs(cfg.tls_cert.as_bytes())?;
        chain.push(ca_der.clone());
        let fallback = certified(chain, &pem_key(cfg.tls_key.as_bytes())?)?;
        let operator = node.config.public_tls.as_ref().map(operator_cert).transpose()?;
        let leaf_key = KeyPair::generate().map_err(|e| e.to_string())?;
        let leaf_key_der = PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(|e| e.to_string())?;
        Ok(SniCerts {
            node,
            domain: cfg.domain.clone(),
            issuer,
            leaf_key,
            leaf_key_der,
            ca_der,
            fallback,
            operator,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn mint(&self, name: &str) -> Result<Arc<CertifiedKey>, String> {
        let mut p = CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&self.leaf_key, &self.issuer).map_err(|e| e.to_string())?;
        certified(vec![cert.der().clone(), self.ca_der.clone()], &self.leaf_key_der)
    }
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(c) = &self.operator {
            return Some(c.clone());
        }
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else { return Some(self.fallback.clone()) };
        if let Some(c) = self.cache.lock().expect("cert cache").get(&name) {
            return Some(c.clone());
        }
        let ours = name == self.domain || self.node.read(|r| r.socket_by_dnsname(&name).is_some());
        if !ours {
            return Some(self.fallback.clone());
        }
        match self.mint(&name) {
            Ok(c) => {
                let mut cache = self.cache.lock().expect("cert cache");
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(name, c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot mint a certificate");
                Some(self.fallback.clone())
            }
        }
    }
}

fn acceptor(resolver: Arc<SniCerts>, alpn: &[&[u8]]) -> Result<tokio_rustls::TlsAcceptor, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// One certificate for every name: the operator's for the API port, or the one the cluster CA
/// signed for this node's API host.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A certificate from the cluster CA for the names clients reach this node's API by: the
/// advertised host and the address it listens on (IP addresses as IP SANs).
fn api_cert(node: &NodeRef, cfg: &mysocket_raft_store::ClusterConfig) -> Result<Arc<CertifiedKey>, String> {
    let advertised = node.config.advertised(node.config.api_addr);
    let host = advertised.rsplit_once(':').map(|(h, _)| h).unwrap_or(&advertised);
    let mut names = vec![host.trim_start_matches('[').trim_end_matches(']').to_string()];
    let bound = node.config.api_addr.ip();
    if !bound.is_unspecified() && !names.contains(&bound.to_string()) {
        names.push(bound.to_string());
    }
    let ca_key = KeyPair::from_pem(&cfg.tls_ca_key).map_err(|e| format!("cluster CA key: {e}"))?;
    let issuer = Issuer::new(crate::bootstrap::ca_params(&cfg.domain).map_err(|e| e.to_string())?, ca_key);
    let ca_der = pem_certs(cfg.tls_ca_cert.as_bytes())?.into_iter().next().ok_or("no CA certificate")?;
    let mut p = CertificateParams::new(names.clone()).map_err(|e| e.to_string())?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, format!("mysocket API of node {}", node.id));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = p.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
    certified(vec![cert.der().clone(), ca_der], &key_der)
}

/// Fills `slot` with the API port's TLS: at once with the operator's certificate, or, for one
/// from the cluster CA, once the cluster has bootstrapped (until then the port refuses TLS).
pub async fn load_api(node: NodeRef, slot: Slot, stop: CancellationToken) {
    let cert = match &node.config.api_tls {
        crate::config::ApiTls::Off => return,
        crate::config::ApiTls::Files(t) => operator_cert(t),
        crate::config::ApiTls::ClusterCa => loop {
            if let Some(cfg) = node.read(|r| r.config().cloned()) {
                break api_cert(&node, &cfg);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        },
    };
    let made = cert.and_then(|c| {
        let mut cfg = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(OneCert(c)));
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    });
    match made {
        Ok(a) => {
            *slot.write().expect("tls slot") = Some(a);
            tracing::info!("the API serves HTTPS");
        }
        Err(e) => tracing::error!(error = %e, "cannot make the API's certificate; the API refuses connections"),
    }
}

/// Fills `https` (ALPN h2 and http/1.1) and `raw` (no ALPN, for tls sockets) once the cluster
/// config exists, and writes the cluster CA's certificate (public) to DATA_DIR/ca.pem, for
/// operators to hand to clients (`mysocketctl --cacert`, `curl --cacert`).
pub async fn load_when_ready(node: NodeRef, https: Slot, raw: Slot, stop: CancellationToken) {
    loop {
        if let Some(cfg) = node.read(|r| r.config().cloned()) {
            let ca_file = node.config.data_dir.join("ca.pem");
            if let Err(e) = std::fs::write(&ca_file, &cfg.tls_ca_cert) {
                tracing::warn!(file = %ca_file.display(), error = %e, "cannot write the cluster CA certificate");
            }
            let made = SniCerts::new(node.clone(), &cfg)
                .map(Arc::new)
                .and_then(|r| Ok((acceptor(r.clone(), &[b"h2", b"http/1.1"])?, acceptor(r, &[])?)));
            match made {
                Ok((h, r)) => {
                    *https.write().expect("tls slot") = Some(h);
                    *raw.write().expect("tls slot") = Some(r);
                    tracing::info!("TLS certificates ready");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot use the cluster TLS material; HTTPS and tls sockets are off")
                }
            }
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

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

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
