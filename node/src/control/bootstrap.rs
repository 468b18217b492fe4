//! Cluster secrets generated once, by the first leader, and replicated through Raft: the SSH
//! host key, a CA with a wildcard certificate for `*.<domain>`, and the token signing key.

use mysocket_raft_store::ClusterConfig;
use rand::RngCore;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DistinguishedName;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

/// The cluster CA's parameters. Deterministic for a domain, so a node can rebuild the issuer
/// from the replicated CA key and sign certificates that chain to the replicated CA cert.
pub fn ca_params(domain: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, format!("mysocket CA for {domain}"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(ca)
}

/// Generates fresh cluster material for `domain`.
/// `operator_token_hash`: see [`ClusterConfig::operator_token_hash`].
pub fn generate(
    domain: &str,
    tcp_ports: (u16, u16),
    now_ms: u64,
    operator_token_hash: &str,
) -> Result<ClusterConfig, String> {
    let mut rng = rand::thread_rng();

    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let host_key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let ssh_host_key = host_key.to_openssh(LineEnding::LF).map_err(|e| format!("encode host key: {e}"))?.to_string();

    let err = |e: rcgen::Error| format!("generate certificates: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca = ca_params(domain).map_err(err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;

    let leaf_key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::new(vec![format!("*.{domain}"), domain.to_string()]).map_err(err)?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(DnType::CommonName, format!("*.{domain}"));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;

    let mut token_key = [0u8; 32];
    rng.fill_bytes(&mut token_key);

    Ok(ClusterConfig {
        domain: domain.to_string(),
        tcp_port_min: tcp_ports.0,
        tcp_port_max: tcp_ports.1,
        ssh_host_key,
        tls_ca_cert: ca_cert.pem(),
        tls_ca_key: ca_key_pem,
        tls_cert: leaf_cert.pem(),
        tls_key: leaf_key.serialize_pem(),
        token_key: hex::encode(token_key),
        operator_token_hash: operator_token_hash.to_string(),
        created_at_ms: now_ms,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn material_parses() {
        let c = super::generate("example.test", (20000, 20010), 1, "").unwrap();
        russh::keys::PrivateKey::from_openssh(&c.ssh_host_key).unwrap();
        assert!(c.tls_cert.contains("BEGIN CERTIFICATE"));
        assert!(c.tls_ca_cert.contains("BEGIN CERTIFICATE"));
        assert_eq!(c.token_key.len(), 64);
    }
}
