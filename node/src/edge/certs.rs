//! TLS termination with the cluster's certificates. An operator's certificate
//! (`--tls-cert`/`--tls-key`, the same files on every node) is served for every name. Without
//! one, the cluster CA (generated at bootstrap and replicated) signs a certificate for each
//! socket name a client asks for (SNI), on first use, so every node presents certificates that
//! chain to the same CA: `curl --cacert` with the CA from `GET /cluster/ca.pem` works for any
//! socket. (A wildcard for `*.localhost` alone is refused by clients, as `localhost` is a
//! single label.) Names that are not sockets get the replicated wildcard certificate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
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

use crate::config::tls::certified;
use crate::config::tls::operator_cert;
use crate::config::tls::pem_certs;
use crate::config::tls::pem_key;
use crate::config::tls::ring;
use crate::control::NodeRef;
use crate::net::tls::Slot;

/// Certificates minted per name; bounded so random SNI cannot grow memory.
const CACHE_MAX: usize = 10_000;

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
    /// Certificates obtained over ACME, parsed, by their name in the registry, with the expiry
    /// they were parsed at (a renewal replaces them).
    acme: Mutex<HashMap<String, (u64, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for SniCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniCerts").field("domain", &self.domain).finish_non_exhaustive()
    }
}

impl SniCerts {
    pub fn new(node: NodeRef, cfg: &mysocket_raft_store::ClusterConfig) -> Result<SniCerts, String> {
        let ca_key = KeyPair::from_pem(&cfg.tls_ca_key).map_err(|e| format!("cluster CA key: {e}"))?;
        let params = crate::control::bootstrap::ca_params(&cfg.domain).map_err(|e| e.to_string())?;
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
            acme: Mutex::new(HashMap::new()),
        })
    }

    /// The unexpired ACME certificate for `name`: its own (a custom domain), or the cluster's
    /// wildcard for the apex and the names one label below it.
    fn acme_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let under = name == self.domain || name.split_once('.').is_some_and(|(_, parent)| parent == self.domain);
        let wildcard = under.then(|| crate::edge::acme::wildcard(&self.domain));
        let now = crate::control::now_ms();
        let (key, not_after) = self.node.read(|r| {
            // A custom domain's certificate only while a socket answers to it.
            if !under && r.socket_by_host(name).is_none() {
                return None;
            }
            let certs = &r.acme().certificates;
            [Some(name.to_string()), wildcard]
                .into_iter()
                .flatten()
                .find_map(|k| certs.get(&k).filter(|c| c.not_after_ms > now).map(|c| (k, c.not_after_ms)))
        })?;
        if let Some((at, c)) = self.acme.lock().expect("acme certs").get(&key) {
            if *at == not_after {
                return Some(c.clone());
            }
        }
        let (chain, pem) =
            self.node.read(|r| r.acme().certificates.get(&key).map(|c| (c.chain_pem.clone(), c.key_pem.clone())))?;
        let parsed = pem_certs(chain.as_bytes()).and_then(|chain| certified(chain, &pem_key(pem.as_bytes())?));
        match parsed {
            Ok(c) => {
                self.acme.lock().expect("acme certs").insert(key, (not_after, c.clone()));
                Some(c)
            }
            Err(e) => {
                tracing::warn!(name = %key, error = %e, "the ACME certificate does not load; serving the cluster CA's");
                None
            }
        }
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
        if let Some(c) = self.acme_cert(&name) {
            return Some(c);
        }
        if let Some(c) = self.cache.lock().expect("cert cache").get(&name) {
            return Some(c.clone());
        }
        let ours = name == self.domain || self.node.read(|r| r.socket_by_host(&name).is_some());
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
