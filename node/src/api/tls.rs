//! HTTPS on the API port: the operator's certificate, or one the cluster CA signs for the
//! node's advertised API host.

use std::sync::Arc;
use std::time::Duration;

use rcgen::CertificateParams;
use rcgen::DistinguishedName;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::Issuer;
use rcgen::KeyPair;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::ClientHello;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::config::tls::certified;
use crate::config::tls::operator_cert;
use crate::config::tls::pem_certs;
use crate::config::tls::ring;
use crate::control::NodeRef;
use crate::net::tls::Slot;

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
    let issuer = Issuer::new(crate::control::bootstrap::ca_params(&cfg.domain).map_err(|e| e.to_string())?, ca_key);
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
