//! Node configuration: flags, `MYSOCKET_*` environment variables and an optional TOML file —
//! one [`Settings`] struct for all three, merged in that order of precedence — validated
//! section by section (listeners, membership, credentials, limits, TLS, Raft) into a
//! [`Config`] before anything binds. [`tls`] reads and checks PEM files.

pub mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use serde::Serialize;

/// A secret whose `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// Every setting of a node, once: the command line (each flag also read from
/// `MYSOCKET_<NAME>`) and the TOML file (the same names with underscores; unknown keys are
/// refused) are both this struct. [`Settings::over`] puts one on top of the other.
#[derive(Parser, Deserialize, Serialize, Debug, Default)]
#[serde(deny_unknown_fields)]
#[command(name = "mysocketd", version, about = "mysocket edge node: Raft registry, API, SSH tunnels and public proxy")]
pub struct Settings {
    /// TOML config file; flags and environment override it.
    #[arg(long, env = "MYSOCKET_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's Raft id (a positive integer, never reused in a cluster).
    #[arg(long, env = "MYSOCKET_ID")]
    pub id: Option<u64>,
    /// Directory for the RocksDB data and snapshots.
    #[arg(long, env = "MYSOCKET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// IP address every listener binds to unless set one by one (default 127.0.0.1).
    #[arg(long, env = "MYSOCKET_HOST")]
    pub host: Option<String>,
    /// REST API, dashboard and metrics (default HOST:7070).
    #[arg(long, env = "MYSOCKET_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// Raft and node-to-node traffic (default HOST:7071).
    #[arg(long, env = "MYSOCKET_RAFT_ADDR")]
    pub raft_addr: Option<SocketAddr>,
    /// SSH tunnel server (default HOST:2222).
    #[arg(long, env = "MYSOCKET_SSH_ADDR")]
    pub ssh_addr: Option<SocketAddr>,
    /// Public HTTP (default HOST:8080).
    #[arg(long, env = "MYSOCKET_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Public HTTPS (default HOST:8443).
    #[arg(long, env = "MYSOCKET_HTTPS_ADDR")]
    pub https_addr: Option<SocketAddr>,
    /// Address other nodes use to reach this node's raft port, when it differs from raft-addr.
    #[arg(long, env = "MYSOCKET_ADVERTISE_RAFT_ADDR")]
    pub advertise_raft_addr: Option<String>,
    /// Host name or IP that clients are given for this node's API, SSH, HTTP and HTTPS ports
    /// (the node list of `GET /cluster`, a tunnel's server). Default: each listener's own
    /// address, or the host of the advertised raft address for a listener on all interfaces.
    #[arg(long, env = "MYSOCKET_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// Members of a new cluster, etcd style: `1=127.0.0.1:7071,2=127.0.0.2:7071,...`.
    #[arg(long, env = "MYSOCKET_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Internal (raft) addresses of running members to join through, `HOST:PORT`, comma
    /// separated. The request travels over the internal port with the cluster credential.
    #[arg(long, env = "MYSOCKET_JOIN", value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// The cluster credential shared by all nodes (prefer --cluster-secret-file).
    #[arg(long, env = "MYSOCKET_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// File holding the cluster credential.
    #[arg(long, env = "MYSOCKET_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// File holding the operator credential (membership changes, cluster-wide reads, accounts
    /// when sign-up is closed). The node that bootstraps a new cluster takes the token in it, or
    /// writes a fresh one there if it does not exist. Default: DATA_DIR/operator-token.
    #[arg(long, env = "MYSOCKET_OPERATOR_TOKEN_FILE")]
    pub operator_token_file: Option<PathBuf>,
    /// Who may create accounts: `open` (anyone, as mysocket.io did) or `closed` (operators
    /// only, with the operator credential). Default open.
    #[arg(long, env = "MYSOCKET_SIGNUP")]
    pub signup: Option<String>,
    /// Most accounts the cluster holds (default 10000).
    #[arg(long, env = "MYSOCKET_MAX_ACCOUNTS")]
    pub max_accounts: Option<u64>,
    /// Logins a minute, per source address and per account (default 30): a token bucket, 429
    /// with Retry-After beyond it.
    #[arg(long, env = "MYSOCKET_LOGIN_RATE", overrides_with = "login_rate")]
    pub login_rate: Option<u32>,
    /// Sign-ups an hour per source address (default 20).
    #[arg(long, env = "MYSOCKET_SIGNUP_RATE", overrides_with = "signup_rate")]
    pub signup_rate: Option<u32>,
    /// Changes (sockets, tunnels) a second per account (default 20).
    #[arg(long, env = "MYSOCKET_WRITE_RATE", overrides_with = "write_rate")]
    pub write_rate: Option<u32>,
    /// Connections one source address may hold open on each public port (API, SSH, HTTP,
    /// HTTPS, each tcp/tls socket) (default 256).
    #[arg(long, env = "MYSOCKET_MAX_CONNECTIONS_PER_SOURCE", overrides_with = "max_connections_per_source")]
    pub max_connections_per_source: Option<usize>,
    /// Seconds a public HTTP exchange may go without a byte from the side it waits on — a
    /// request body from the visitor, an answer from the service — before the node ends it
    /// (504 when the service never answered) (default 60).
    #[arg(long, env = "MYSOCKET_STALL_TIMEOUT_SECS", overrides_with = "stall_timeout_secs")]
    pub stall_timeout_secs: Option<u64>,
    /// Seconds an HTTP/2 connection on the public HTTPS port may stay without a request in
    /// flight before the node closes it (default 60).
    #[arg(long, env = "MYSOCKET_IDLE_TIMEOUT_SECS", overrides_with = "idle_timeout_secs")]
    pub idle_timeout_secs: Option<u64>,
    /// Serve the API over HTTPS with a certificate the cluster CA signs for this node's
    /// advertised API host (clients: `mysocketctl --cacert`, the CA from DATA_DIR/ca.pem or
    /// `GET /cluster/ca.pem`).
    #[arg(long, env = "MYSOCKET_API_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub api_tls: Option<bool>,
    /// PEM certificate chain for HTTPS on the API port, instead of one from the cluster CA.
    #[arg(long, env = "MYSOCKET_API_TLS_CERT")]
    pub api_tls_cert: Option<PathBuf>,
    /// PEM private key of --api-tls-cert.
    #[arg(long, env = "MYSOCKET_API_TLS_KEY")]
    pub api_tls_key: Option<PathBuf>,
    /// PEM certificate for TLS on the internal port.
    #[arg(long, env = "MYSOCKET_INTERNAL_TLS_CERT")]
    pub internal_tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the internal port.
    #[arg(long, env = "MYSOCKET_INTERNAL_TLS_KEY")]
    pub internal_tls_key: Option<PathBuf>,
    /// PEM CA that signed the peers' internal certificates.
    #[arg(long, env = "MYSOCKET_INTERNAL_TLS_CA")]
    pub internal_tls_ca: Option<PathBuf>,
    /// Server name expected in peers' internal certificates (default: the peer's host).
    #[arg(long, env = "MYSOCKET_INTERNAL_TLS_DOMAIN")]
    pub internal_tls_domain: Option<String>,
    /// PEM certificate chain for public HTTPS and tls sockets, e.g. a wildcard for
    /// `*.DOMAIN` from your own CA; default: certificates from the cluster's replicated CA.
    #[arg(long, env = "MYSOCKET_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "MYSOCKET_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Public domain of the sockets (default localhost), fixed when the cluster bootstraps.
    #[arg(long, env = "MYSOCKET_DOMAIN")]
    pub domain: Option<String>,
    /// Range of ports for tcp/tls sockets, `MIN-MAX` (default 20000-20999).
    #[arg(long, env = "MYSOCKET_TCP_PORTS")]
    pub tcp_ports: Option<String>,
    /// Raft heartbeat interval in milliseconds (default 100).
    #[arg(long, env = "MYSOCKET_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Minimum election timeout in milliseconds (default 300; the maximum is twice it). A
    /// follower that hears no leader starts an election after the maximum (the leader's lease)
    /// plus a random timeout between the two: 900 to 1,200 ms by default.
    #[arg(long, env = "MYSOCKET_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Build a snapshot and compact the log after this many entries (default 50000).
    #[arg(long, env = "MYSOCKET_SNAPSHOT_THRESHOLD")]
    pub snapshot_threshold: Option<u64>,
    /// Most http/https sockets per account (default 10).
    #[arg(long, env = "MYSOCKET_MAX_HTTP_SOCKETS")]
    pub max_http_sockets: Option<u32>,
    /// Most tcp/tls sockets per account (default 5).
    #[arg(long, env = "MYSOCKET_MAX_TCP_SOCKETS")]
    pub max_tcp_sockets: Option<u32>,
    /// Most SSH sessions one account may hold open on this node (default 20).
    #[arg(long, env = "MYSOCKET_MAX_SSH_SESSIONS")]
    pub max_ssh_sessions: Option<u32>,
    /// Token lifetime in seconds (default 18000, five hours).
    #[arg(long, env = "MYSOCKET_TOKEN_TTL_SECS")]
    pub token_ttl_secs: Option<u64>,
    /// OpenID Connect issuer for cloud authentication (the URL its
    /// `/.well-known/openid-configuration` is under). Without one, cloud-auth sockets are
    /// refused.
    #[arg(long, env = "MYSOCKET_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// The cluster's client id at the provider (with --oidc-issuer).
    #[arg(long, env = "MYSOCKET_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// File holding the client secret (with --oidc-issuer).
    #[arg(long, env = "MYSOCKET_OIDC_CLIENT_SECRET_FILE")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// How long a visitor's cloud-authentication session lasts, in seconds (default 28800,
    /// eight hours).
    #[arg(long, env = "MYSOCKET_OIDC_SESSION_SECS")]
    pub oidc_session_secs: Option<u64>,
    /// Authoritative DNS for the cluster's domain, UDP and TCP, on this address (port 53 in
    /// production; the local cluster uses 5353). Off when not given.
    #[arg(long, env = "MYSOCKET_DNS_LISTEN")]
    pub dns_listen: Option<SocketAddr>,
    /// DNS queries a second one source address may send (a burst of as many at once) before
    /// its queries are dropped unanswered (default 100).
    #[arg(long, env = "MYSOCKET_DNS_RATE_LIMIT")]
    pub dns_rate_limit: Option<u32>,
    /// The resolver that custom domains' proofs (TXT, CNAME) are looked up with, `IP:PORT`;
    /// default: the system's (/etc/resolv.conf).
    #[arg(long, env = "MYSOCKET_DNS_RESOLVER")]
    pub dns_resolver: Option<SocketAddr>,
    /// The addresses visitors reach this node's public ports at, comma separated (IPv4 and
    /// IPv6): what the cluster's DNS answers for its names while this node is live. Default:
    /// the public HTTP listener's address, unless it binds all interfaces.
    #[arg(long, env = "MYSOCKET_PUBLIC_IP", value_delimiter = ',')]
    pub public_ip: Option<Vec<std::net::IpAddr>>,
    /// ACME directory URL (RFC 8555), e.g. Let's Encrypt's: the cluster obtains a wildcard
    /// certificate for `*.DOMAIN` and DOMAIN over DNS-01 answered by its own DNS, and one per
    /// custom domain over HTTP-01, and renews them. Needs --acme-email.
    #[arg(long, env = "MYSOCKET_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// Contact email of the cluster's ACME account.
    #[arg(long, env = "MYSOCKET_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// PEM file of the CA that signed the ACME server's own HTTPS certificate (a test CA such
    /// as Pebble's); default: the system's roots.
    #[arg(long, env = "MYSOCKET_ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,
    /// Log filter, e.g. `info` or `mysocket_node=debug` (default info).
    #[arg(long, env = "MYSOCKET_LOG")]
    pub log: Option<String>,
    /// Planted bug for the fault-injection suite (builds with `--features planted-bugs` only).
    #[arg(long, env = "MYSOCKET_PLANTED_BUG")]
    #[serde(skip)]
    pub planted_bug: Option<String>,
    /// Size of a snapshot's chunks, sent and accepted (default 1 MiB): the most of a snapshot a
    /// node holds in memory. Every node of a cluster must use the same. For tests.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub snapshot_chunk_bytes: Option<usize>,
}

impl Settings {
    /// `self` on top of `file`: each setting given here wins, the file fills the rest. The
    /// settings only a command line gives (the file's path, a planted bug, test knobs) are
    /// `self`'s.
    pub fn over(self, file: Settings) -> Result<Settings, ConfigError> {
        let json = |s: &Settings| serde_json::to_value(s).map_err(|e| bad(format!("a setting is not text: {e}")));
        let mut merged = json(&file)?;
        if let (Some(merged), serde_json::Value::Object(given)) = (merged.as_object_mut(), json(&self)?) {
            merged.extend(given.into_iter().filter(|(_, v)| !v.is_null()));
        }
        let mut s: Settings = serde_json::from_value(merged).map_err(|e| bad(e.to_string()))?;
        (s.config, s.planted_bug, s.snapshot_chunk_bytes) = (self.config, self.planted_bug, self.snapshot_chunk_bytes);
        Ok(s)
    }

    /// The settings of the TOML file at `path`.
    pub fn read(path: &std::path::Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| bad(format!("config file {}: {}", path.display(), e.message())))
    }
}

/// How this node enters a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// A new cluster of these members (id -> raft address); every member gets the same list.
    Initial(BTreeMap<u64, String>),
    /// Join a running cluster through one of these members' internal addresses.
    Join(Vec<String>),
    /// Restart of a node that already has state; its membership is in its log.
    Existing,
}

/// Internal-port TLS material, read from the operator's files.
#[derive(Clone)]
pub struct InternalTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
    pub domain: Option<String>,
}

impl fmt::Debug for InternalTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InternalTls").field("domain", &self.domain).finish_non_exhaustive()
    }
}

/// The operator's certificate for public HTTPS and tls sockets, read and checked at start-up.
#[derive(Clone)]
pub struct PublicTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for PublicTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublicTls(MASKED)")
    }
}

/// Who may create accounts (`--signup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signup {
    /// Anyone who reaches the API, as mysocket.io did.
    Open,
    /// Only an operator (`POST /user` with the operator credential).
    Closed,
}

/// The token buckets of the API (see `limits.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Per source address and per account.
    pub login_per_minute: u32,
    /// Per source address.
    pub signup_per_hour: u32,
    /// Per account: socket and tunnel changes.
    pub writes_per_second: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits { login_per_minute: 30, signup_per_hour: 20, writes_per_second: 20 }
    }
}

/// HTTPS on the API port.
#[derive(Clone, Debug)]
pub enum ApiTls {
    /// Plain HTTP.
    Off,
    /// A certificate the cluster CA signs for the node's advertised API host.
    ClusterCa,
    /// The operator's certificate and key.
    Files(PublicTls),
}

/// Validated configuration of one node.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: u64,
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub ssh_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    pub advertise_raft_addr: String,
    /// `--advertise-host`, if given; see [`Config::advertised`].
    pub advertise_host: Option<String>,
    pub membership: Membership,
    pub cluster_secret: Secret,
    /// Where the operator token is (or is written, by the node that bootstraps the cluster).
    pub operator_token_file: PathBuf,
    /// The operator token in that file, if it existed at start.
    pub operator_token: Option<Secret>,
    pub signup: Signup,
    pub max_accounts: u64,
    pub rate_limits: RateLimits,
    /// How long a public HTTP/2 connection may be idle.
    pub idle_timeout: Duration,
    /// Connections one address may hold on each public port.
    pub max_connections_per_source: usize,
    /// How long a public HTTP exchange may wait on either side without a byte.
    pub stall_timeout: Duration,
    pub api_tls: ApiTls,
    pub internal_tls: Option<InternalTls>,
    /// Operator-provided public certificate; `None`: mint from the cluster CA.
    pub public_tls: Option<PublicTls>,
    pub domain: String,
    pub tcp_ports: (u16, u16),
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub snapshot_threshold: u64,
    pub max_http_sockets: u32,
    pub max_tcp_sockets: u32,
    pub max_ssh_sessions: u32,
    pub token_ttl: Duration,
    pub log: String,
    pub planted_bug: Option<String>,
    /// Size of snapshot chunks sent, and the largest accepted.
    pub snapshot_chunk: usize,
    /// The identity provider of cloud authentication, if the operator gave one.
    pub oidc: Option<Oidc>,
    /// Where visitors reach this node, as the cluster's DNS lists it (may be empty: then no
    /// name of the cluster points here).
    pub public_ips: Vec<std::net::IpAddr>,
    /// The authoritative DNS server, if this node runs one.
    pub dns: Option<Dns>,
    /// Certificates over ACME, if the operator gave a directory.
    pub acme: Option<Acme>,
    /// `--dns-resolver`: where custom domains are checked; `None`: the system's resolver.
    pub dns_resolver: Option<SocketAddr>,
}

/// `--acme-directory`, `--acme-email`, `--acme-ca-root`.
#[derive(Clone, Debug)]
pub struct Acme {
    pub directory: String,
    pub email: String,
    pub ca_root: Option<PathBuf>,
}

fn acme(s: &Settings) -> Result<Option<Acme>, ConfigError> {
    let Some(directory) = s.acme_directory.as_deref().map(str::trim) else {
        if s.acme_email.is_some() || s.acme_ca_root.is_some() {
            return Err(bad("--acme-email and --acme-ca-root need --acme-directory"));
        }
        return Ok(None);
    };
    let host = directory.strip_prefix("https://").or_else(|| directory.strip_prefix("http://"));
    if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
        return Err(bad(format!("--acme-directory {directory:?} is not an http(s) URL")));
    }
    let email = s.acme_email.as_deref().map(str::trim).unwrap_or_default();
    let (local, domain) = email.split_once('@').unwrap_or_default();
    if local.is_empty() || !domain.contains('.') || email.contains(char::is_whitespace) {
        return Err(bad("--acme-directory needs --acme-email, the ACME account's contact (an email address)"));
    }
    if let Some(p) = &s.acme_ca_root {
        let pem = std::fs::read(p).map_err(|e| bad(format!("cannot read --acme-ca-root {}: {e}", p.display())))?;
        if tls::pem_certs(&pem).map(|c| c.is_empty()).unwrap_or(true) {
            return Err(bad(format!("--acme-ca-root {} holds no PEM certificate", p.display())));
        }
    }
    Ok(Some(Acme { directory: directory.to_string(), email: email.to_string(), ca_root: s.acme_ca_root.clone() }))
}

/// `--dns-listen` and its rate limit.
#[derive(Clone, Debug)]
pub struct Dns {
    pub listen: SocketAddr,
    /// Queries a second per source address.
    pub rate_limit: u32,
}

/// `--public-ip`, or the public HTTP listener's address; `--dns-listen` with its limit.
fn dns(s: &Settings, http_addr: SocketAddr) -> Result<(Vec<std::net::IpAddr>, Option<Dns>), ConfigError> {
    let public_ips = match &s.public_ip {
        Some(ips) => {
            if let Some(ip) = ips.iter().find(|ip| ip.is_unspecified() || ip.is_multicast()) {
                return Err(bad(format!("--public-ip {ip} is not an address visitors can reach")));
            }
            ips.clone()
        }
        None if http_addr.ip().is_unspecified() => Vec::new(),
        None => vec![http_addr.ip()],
    };
    let rate_limit = s.dns_rate_limit.unwrap_or(100);
    if rate_limit == 0 {
        return Err(bad("--dns-rate-limit must be at least 1 query a second"));
    }
    let dns = match s.dns_listen {
        Some(listen) => Some(Dns { listen, rate_limit }),
        None if s.dns_rate_limit.is_some() => return Err(bad("--dns-rate-limit needs --dns-listen")),
        None => None,
    };
    Ok((public_ips, dns))
}

/// The cluster's OpenID Connect provider, as the operator configured it.
#[derive(Clone)]
pub struct Oidc {
    /// Without a trailing slash.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// How long a session lasts.
    pub session: Duration,
}

impl fmt::Debug for Oidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oidc").field("issuer", &self.issuer).field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

/// `--oidc-issuer`, `--oidc-client-id`, `--oidc-client-secret-file`: all or none; the issuer an
/// http(s) URL.
fn oidc(s: &Settings) -> Result<Option<Oidc>, ConfigError> {
    let Some(issuer) = s.oidc_issuer.as_deref() else {
        if s.oidc_client_id.is_some() || s.oidc_client_secret_file.is_some() || s.oidc_session_secs.is_some() {
            return Err(bad("--oidc-client-id, --oidc-client-secret-file and --oidc-session-secs need --oidc-issuer"));
        }
        return Ok(None);
    };
    let issuer = issuer.trim().trim_end_matches('/');
    let url = issuer.strip_prefix("https://").or_else(|| issuer.strip_prefix("http://"));
    if url.is_none_or(|rest| rest.is_empty() || rest.contains(char::is_whitespace)) {
        return Err(bad(format!("--oidc-issuer {issuer:?} is not an http(s) URL")));
    }
    let client_id = s.oidc_client_id.as_deref().map(str::trim).filter(|c| !c.is_empty());
    let client_id = client_id.ok_or_else(|| bad("--oidc-issuer needs --oidc-client-id"))?;
    let p = s.oidc_client_secret_file.as_ref().ok_or_else(|| bad("--oidc-issuer needs --oidc-client-secret-file"))?;
    let text = std::fs::read_to_string(p)
        .map_err(|e| bad(format!("cannot read the OIDC client secret file {}: {e}", p.display())))?;
    if text.trim().is_empty() {
        return Err(bad(format!("the OIDC client secret file {} is empty", p.display())));
    }
    let client_secret = Secret(text.trim().to_string());
    let session = s.oidc_session_secs.unwrap_or(8 * 3600);
    if !(1..=30 * 24 * 3600).contains(&session) {
        return Err(bad("--oidc-session-secs must be between 1 and 2592000 (30 days)"));
    }
    Ok(Some(Oidc {
        issuer: issuer.to_string(),
        client_id: client_id.to_string(),
        client_secret,
        session: Duration::from_secs(session),
    }))
}

/// A configuration the node refuses to start with.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The operator token in `path`, if the file exists: at least 16 characters, and never the
/// cluster secret (the two grant different powers). Read at start and again by the node that
/// bootstraps the cluster (the file may have been written meanwhile).
pub fn read_operator_token(path: &std::path::Path, cluster_secret: &str) -> Result<Option<String>, ConfigError> {
    let t = match std::fs::read_to_string(path) {
        Ok(t) => t.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("cannot read operator token file {}: {e}", path.display()))),
    };
    if t.len() < 16 {
        return Err(bad(format!("the operator token in {} must be at least 16 characters", path.display())));
    }
    if t == cluster_secret {
        return Err(bad("the operator token and the cluster secret must differ: they grant different powers"));
    }
    Ok(Some(t))
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) =
            part.split_once('=').ok_or_else(|| bad(format!("--initial-cluster entry {part:?} is not ID=HOST:PORT")))?;
        let id: u64 =
            id.trim().parse().map_err(|_| bad(format!("--initial-cluster id {id:?} is not a positive integer")))?;
        if id == 0 {
            return Err(bad("--initial-cluster ids start at 1"));
        }
        check_host_port(addr.trim(), "--initial-cluster")?;
        if out.insert(id, addr.trim().to_string()).is_some() {
            return Err(bad(format!("--initial-cluster names node {id} twice")));
        }
    }
    if out.is_empty() {
        return Err(bad("--initial-cluster is empty"));
    }
    Ok(out)
}

fn check_host_port(s: &str, what: &str) -> Result<(), ConfigError> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad(format!("{what}: {s:?} is not HOST:PORT")))?;
    if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(bad(format!("{what}: {s:?} is not HOST:PORT")));
    }
    Ok(())
}

/// A DNS name (`edge-1.example.com`) or an IP address, without a port.
fn is_host(h: &str) -> bool {
    h.parse::<std::net::IpAddr>().is_ok()
        || (!h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
}

fn parse_port_range(s: &str) -> Result<(u16, u16), ConfigError> {
    let err = || bad(format!("--tcp-ports {s:?} is not MIN-MAX with 1 <= MIN <= MAX <= 65535"));
    let (a, b) = s.split_once('-').ok_or_else(err)?;
    let (a, b): (u16, u16) = (a.trim().parse().map_err(|_| err())?, b.trim().parse().map_err(|_| err())?);
    if a == 0 || a > b {
        return Err(err());
    }
    Ok((a, b))
}

/// A planted bug is refused by a normal build, and must be one the suite knows.
fn check_planted_bug(bug: Option<&str>) -> Result<(), ConfigError> {
    let Some(b) = bug else { return Ok(()) };
    if !cfg!(feature = "planted-bugs") {
        return Err(bad(format!("--planted-bug {b}: this build has no planted bugs")));
    }
    if crate::planted::Bug::named(b).is_none() {
        let names: Vec<&str> = crate::planted::Bug::ALL.iter().map(|b| b.name()).collect();
        return Err(bad(format!("--planted-bug {b}: unknown; one of {}", names.join(", "))));
    }
    Ok(())
}

/// The listeners and the addresses the node is reached by.
struct Listen {
    api_addr: SocketAddr,
    raft_addr: SocketAddr,
    ssh_addr: SocketAddr,
    http_addr: SocketAddr,
    https_addr: SocketAddr,
    advertise_raft_addr: String,
    advertise_host: Option<String>,
}

impl Listen {
    fn from(s: &Settings) -> Result<Listen, ConfigError> {
        let host = s.host.clone().unwrap_or_else(|| "127.0.0.1".to_string());
        let ip: std::net::IpAddr = host.parse().map_err(|_| bad(format!("--host {host:?} is not an IP address")))?;
        let at = |given: Option<SocketAddr>, port: u16| given.unwrap_or(SocketAddr::new(ip, port));
        let (api_addr, raft_addr, ssh_addr) = (at(s.api_addr, 7070), at(s.raft_addr, 7071), at(s.ssh_addr, 2222));
        let (http_addr, https_addr) = (at(s.http_addr, 8080), at(s.https_addr, 8443));
        let addrs = [api_addr, raft_addr, ssh_addr, http_addr, https_addr];
        for (i, a) in addrs.iter().enumerate() {
            if a.port() != 0 && addrs[i + 1..].contains(a) {
                return Err(bad(format!("address {a} is given to two listeners")));
            }
        }
        let advertise_raft_addr = match s.advertise_raft_addr.clone() {
            Some(a) => {
                check_host_port(&a, "--advertise-raft-addr")?;
                a
            }
            None if raft_addr.ip().is_unspecified() => {
                return Err(bad("--raft-addr binds all interfaces: give --advertise-raft-addr"))
            }
            None => raft_addr.to_string(),
        };
        let advertise_host = s.advertise_host.clone();
        if let Some(h) = &advertise_host {
            if !is_host(h) {
                return Err(bad(format!("--advertise-host {h:?} is not a host name or an IP address (no port)")));
            }
        }
        Ok(Listen { api_addr, raft_addr, ssh_addr, http_addr, https_addr, advertise_raft_addr, advertise_host })
    }
}

/// How this node enters a cluster: `--initial-cluster`, `--join`, or the state it has.
fn membership(s: &Settings, id: u64, data_dir: &std::path::Path, advertised: &str) -> Result<Membership, ConfigError> {
    let has_state = data_dir.join("db").join("CURRENT").exists();
    let join = s.join.clone().unwrap_or_default();
    for j in &join {
        if j.contains("://") {
            return Err(bad(format!(
                "--join {j:?}: give the internal (raft) address of a member, HOST:PORT such as 10.0.0.1:7071 \
                 (a node joins over the internal port with the cluster credential, not through the API)"
            )));
        }
        check_host_port(j, "--join")?;
    }
    match (s.initial_cluster.as_deref(), join.is_empty()) {
        (Some(_), false) => Err(bad("give either --initial-cluster or --join, not both")),
        (Some(ic), true) => {
            let members = parse_initial_cluster(ic)?;
            match members.get(&id) {
                None => return Err(bad(format!("--initial-cluster does not include this node's id {id}"))),
                Some(a) if a != advertised => {
                    return Err(bad(format!(
                        "--initial-cluster gives node {id} the address {a}, but it advertises {advertised}"
                    )))
                }
                Some(_) => {}
            }
            Ok(if has_state { Membership::Existing } else { Membership::Initial(members) })
        }
        (None, _) if has_state => Ok(Membership::Existing),
        (None, false) => Ok(Membership::Join(join)),
        (None, true) => Err(bad(format!(
            "{} holds no data: give --initial-cluster to start a new cluster or --join to join one",
            data_dir.display()
        ))),
    }
}

/// The cluster credential, and the operator token's file (and the token, if it exists).
fn credentials(s: &Settings, data_dir: &std::path::Path) -> Result<(Secret, PathBuf, Option<Secret>), ConfigError> {
    let secret = match (s.cluster_secret.clone(), s.cluster_secret_file.as_ref()) {
        (Some(s), None) => s,
        (None, Some(p)) => std::fs::read_to_string(p)
            .map_err(|e| bad(format!("cannot read cluster secret file {}: {e}", p.display())))?
            .trim()
            .to_string(),
        (Some(_), Some(_)) => return Err(bad("give either --cluster-secret or --cluster-secret-file, not both")),
        (None, None) => {
            return Err(bad("a cluster credential is required: --cluster-secret-file (or MYSOCKET_CLUSTER_SECRET)"))
        }
    };
    if secret.len() < 16 {
        return Err(bad("the cluster secret must be at least 16 characters"));
    }
    let operator_token_file = s.operator_token_file.clone().unwrap_or_else(|| data_dir.join("operator-token"));
    let operator_token = read_operator_token(&operator_token_file, &secret)?.map(Secret);
    Ok((Secret(secret), operator_token_file, operator_token))
}

/// What callers may cost the node: sign-up, accounts, rates, connections, timeouts, sockets.
struct Limits {
    signup: Signup,
    max_accounts: u64,
    rate_limits: RateLimits,
    max_connections_per_source: usize,
    stall_timeout: Duration,
    idle_timeout: Duration,
    max_http_sockets: u32,
    max_tcp_sockets: u32,
    max_ssh_sessions: u32,
    token_ttl: Duration,
}

impl Limits {
    fn from(s: &Settings) -> Result<Limits, ConfigError> {
        let signup = match s.signup.as_deref().map(str::trim) {
            None | Some("open") => Signup::Open,
            Some("closed") => Signup::Closed,
            Some(other) => return Err(bad(format!("--signup {other:?}: one of open, closed"))),
        };
        let defaults = RateLimits::default();
        let rate_limits = RateLimits {
            login_per_minute: s.login_rate.unwrap_or(defaults.login_per_minute),
            signup_per_hour: s.signup_rate.unwrap_or(defaults.signup_per_hour),
            writes_per_second: s.write_rate.unwrap_or(defaults.writes_per_second),
        };
        if rate_limits.login_per_minute == 0 || rate_limits.signup_per_hour == 0 || rate_limits.writes_per_second == 0 {
            return Err(bad("--login-rate, --signup-rate and --write-rate must be positive"));
        }
        let positive = |v: Option<u64>, default: u64, flag: &str| match v.unwrap_or(default) {
            0 => Err(bad(format!("{flag} must be positive"))),
            n => Ok(n),
        };
        let max_connections_per_source =
            positive(s.max_connections_per_source.map(|n| n as u64), 256, "--max-connections-per-source")? as usize;
        Ok(Limits {
            signup,
            max_accounts: positive(s.max_accounts, 10_000, "--max-accounts")?,
            rate_limits,
            max_connections_per_source,
            stall_timeout: Duration::from_secs(positive(s.stall_timeout_secs, 60, "--stall-timeout-secs")?),
            idle_timeout: Duration::from_secs(positive(s.idle_timeout_secs, 60, "--idle-timeout-secs")?),
            max_http_sockets: s.max_http_sockets.unwrap_or(10),
            max_tcp_sockets: s.max_tcp_sockets.unwrap_or(5),
            max_ssh_sessions: positive(s.max_ssh_sessions.map(u64::from), 20, "--max-ssh-sessions")? as u32,
            token_ttl: Duration::from_secs(s.token_ttl_secs.unwrap_or(5 * 3600)),
        })
    }
}

/// A certificate and its key from the operator's files, checked.
fn read_cert(
    cert: &std::path::Path,
    key: &std::path::Path,
    what: &str,
    flags: [&str; 2],
) -> Result<PublicTls, ConfigError> {
    let read = |p: &std::path::Path, part: &str| {
        std::fs::read_to_string(p).map_err(|e| bad(format!("cannot read {what} {part} {}: {e}", p.display())))
    };
    let t = PublicTls { cert_pem: read(cert, "certificate")?, key_pem: read(key, "key")? };
    tls::operator_cert(&t)
        .map_err(|e| bad(format!("{} {} / {} {}: {e}", flags[0], cert.display(), flags[1], key.display())))?;
    Ok(t)
}

/// TLS on the API port, on the internal port, and for public HTTPS and tls sockets.
fn tls(s: &Settings) -> Result<(ApiTls, Option<InternalTls>, Option<PublicTls>), ConfigError> {
    let internal_tls = match (&s.internal_tls_cert, &s.internal_tls_key, &s.internal_tls_ca) {
        (None, None, None) => None,
        (Some(c), Some(k), Some(ca)) => {
            let read = |p: &PathBuf, what: &str| {
                std::fs::read(p).map_err(|e| bad(format!("cannot read internal TLS {what} {}: {e}", p.display())))
            };
            Some(InternalTls {
                cert_pem: read(c, "certificate")?,
                key_pem: read(k, "key")?,
                ca_pem: read(ca, "CA")?,
                domain: s.internal_tls_domain.clone(),
            })
        }
        _ => {
            return Err(bad("internal TLS needs all of --internal-tls-cert, --internal-tls-key and --internal-tls-ca"))
        }
    };
    let api_tls = match (s.api_tls, &s.api_tls_cert, &s.api_tls_key) {
        (Some(false) | None, None, None) => ApiTls::Off,
        (Some(true), None, None) => ApiTls::ClusterCa,
        (Some(true) | None, Some(c), Some(k)) => {
            ApiTls::Files(read_cert(c, k, "API TLS", ["--api-tls-cert", "--api-tls-key"])?)
        }
        (Some(false), _, _) => return Err(bad("--api-tls=false with --api-tls-cert/--api-tls-key: choose one")),
        _ => return Err(bad("HTTPS on the API with your own certificate needs both --api-tls-cert and --api-tls-key")),
    };
    let public_tls = match (&s.tls_cert, &s.tls_key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some(read_cert(c, k, "TLS", ["--tls-cert", "--tls-key"])?),
        _ => return Err(bad("an operator certificate needs both --tls-cert and --tls-key")),
    };
    Ok((api_tls, internal_tls, public_tls))
}

/// The sockets' public domain, lowercase.
fn domain(s: &Settings) -> Result<String, ConfigError> {
    let domain = s.domain.clone().unwrap_or_else(|| "localhost".to_string()).to_ascii_lowercase();
    if domain.is_empty()
        || !domain.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        return Err(bad(format!("--domain {domain:?} is not a DNS name")));
    }
    Ok(domain)
}

/// Raft's timings and snapshots: heartbeat, election timeout, snapshot threshold and chunk.
fn raft(s: &Settings) -> Result<(Duration, Duration, u64, usize), ConfigError> {
    let heartbeat_ms = s.heartbeat_ms.unwrap_or(100);
    // Chosen against etcd's defaults (BENCHMARKS.md, failover): a follower waits out the
    // leader's lease (the maximum, 600 ms) and then its own random timeout (300-600 ms), so a
    // dead leader is replaced 0.9-1.2 s after its last heartbeat; nine heartbeats missed in a
    // row before anyone stands, so a slow moment does not start an election.
    let election_ms = s.election_timeout_ms.unwrap_or(300);
    if heartbeat_ms == 0 || election_ms < heartbeat_ms * 3 {
        return Err(bad("--election-timeout-ms must be at least three heartbeats (--heartbeat-ms)"));
    }
    let snapshot_threshold = s.snapshot_threshold.unwrap_or(50_000);
    if snapshot_threshold == 0 {
        return Err(bad("--snapshot-threshold must be positive"));
    }
    let snapshot_chunk = s.snapshot_chunk_bytes.unwrap_or(1024 * 1024);
    if !(1024..=MAX_SNAPSHOT_CHUNK).contains(&snapshot_chunk) {
        return Err(bad("--snapshot-chunk-bytes must be between 1 KiB and 32 MiB"));
    }
    Ok((Duration::from_millis(heartbeat_ms), Duration::from_millis(election_ms), snapshot_threshold, snapshot_chunk))
}

/// Largest snapshot chunk a node sends or accepts: well within an internal message.
pub const MAX_SNAPSHOT_CHUNK: usize = 32 * 1024 * 1024;

impl Config {
    /// Puts the flags (environment folded in by clap) on top of the TOML file, then validates
    /// section by section. Reads secret and TLS files, so errors about them come before any
    /// bind.
    pub fn load(flags: Settings) -> Result<Config, ConfigError> {
        // First: a normal build must never start with a planted bug, whatever else is wrong.
        check_planted_bug(flags.planted_bug.as_deref())?;
        let s = match flags.config.clone() {
            Some(p) => flags.over(Settings::read(&p)?)?,
            None => flags,
        };
        let id = s.id.ok_or_else(|| bad("--id is required (a positive integer)"))?;
        if id == 0 {
            return Err(bad("--id must be a positive integer"));
        }
        let listen = Listen::from(&s)?;
        let data_dir = s.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("mysocket-data/node-{id}")));
        let membership = membership(&s, id, &data_dir, &listen.advertise_raft_addr)?;
        let (cluster_secret, operator_token_file, operator_token) = credentials(&s, &data_dir)?;
        let limits = Limits::from(&s)?;
        let (api_tls, internal_tls, public_tls) = tls(&s)?;
        let (heartbeat, election_timeout, snapshot_threshold, snapshot_chunk) = raft(&s)?;
        let (public_ips, dns) = dns(&s, listen.http_addr)?;
        Ok(Config {
            id,
            data_dir,
            api_addr: listen.api_addr,
            raft_addr: listen.raft_addr,
            ssh_addr: listen.ssh_addr,
            http_addr: listen.http_addr,
            https_addr: listen.https_addr,
            advertise_raft_addr: listen.advertise_raft_addr,
            advertise_host: listen.advertise_host,
            membership,
            cluster_secret,
            operator_token_file,
            operator_token,
            signup: limits.signup,
            max_accounts: limits.max_accounts,
            rate_limits: limits.rate_limits,
            idle_timeout: limits.idle_timeout,
            max_connections_per_source: limits.max_connections_per_source,
            stall_timeout: limits.stall_timeout,
            api_tls,
            internal_tls,
            public_tls,
            domain: domain(&s)?,
            tcp_ports: parse_port_range(s.tcp_ports.as_deref().unwrap_or("20000-20999"))?,
            heartbeat,
            election_timeout,
            snapshot_threshold,
            max_http_sockets: limits.max_http_sockets,
            max_tcp_sockets: limits.max_tcp_sockets,
            max_ssh_sessions: limits.max_ssh_sessions,
            token_ttl: limits.token_ttl,
            log: s.log.clone().unwrap_or_else(|| "info".to_string()),
            planted_bug: s.planted_bug.clone(),
            snapshot_chunk,
            oidc: oidc(&s)?,
            public_ips,
            dns,
            acme: acme(&s)?,
            dns_resolver: s.dns_resolver,
        })
    }

    /// `host:port` at which clients reach the listener bound to `a`: the advertised host if
    /// one was given; else the bound address, unless it is all interfaces (`0.0.0.0`, `::`),
    /// which no client can dial — then the host other nodes reach this one by (the advertised
    /// raft address).
    pub fn advertised(&self, a: SocketAddr) -> String {
        let host = match &self.advertise_host {
            Some(h) => h.as_str(),
            None if a.ip().is_unspecified() => {
                self.advertise_raft_addr.rsplit_once(':').map(|(h, _)| h).unwrap_or("127.0.0.1")
            }
            None => return a.to_string(),
        };
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", a.port())
        } else {
            format!("{host}:{}", a.port())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_and_rejects_garbage() {
        let m = parse_initial_cluster("1=127.0.0.1:7071, 2=127.0.0.2:7071").unwrap();
        assert_eq!(m.get(&2).map(String::as_str), Some("127.0.0.2:7071"));
        for bad in ["", "1", "x=127.0.0.1:1", "0=a:1", "1=a:1,1=b:2", "1=nohost", "1=h:0"] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad:?} should be refused");
        }
    }

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["mysocketd", "--id", "1", "--cluster-secret", "0123456789abcdef0123", "--data-dir"];
        let dir = std::env::temp_dir().join("mysocket-config-test-no-state");
        argv.push(dir.to_str().unwrap());
        argv.extend_from_slice(args);
        Config::load(Settings::try_parse_from(argv).unwrap())
    }

    #[test]
    fn clients_are_given_an_address_they_can_dial() {
        let ic = ["--initial-cluster", "1=10.0.0.5:7071"];
        let c = config(&[&ic[..], &["--host", "10.0.0.5", "--ssh-addr", "0.0.0.0:2222"]].concat()).unwrap();
        assert_eq!(c.advertised(c.api_addr), "10.0.0.5:7070", "a listener on one address gives that address");
        assert_eq!(c.advertised(c.ssh_addr), "10.0.0.5:2222", "all interfaces: the raft host instead");
        let all = ["--host", "0.0.0.0", "--advertise-raft-addr", "node1.internal:7071"];
        let c = config(&[&all[..], &["--initial-cluster", "1=node1.internal:7071"]].concat()).unwrap();
        assert_eq!(c.advertised(c.ssh_addr), "node1.internal:2222");
        let c = config(
            &[&all[..], &["--initial-cluster", "1=node1.internal:7071", "--advertise-host", "Edge-1.example.com"]]
                .concat(),
        )
        .unwrap();
        assert_eq!(c.advertised(c.ssh_addr), "Edge-1.example.com:2222");
        assert_eq!(c.advertised(c.https_addr), "Edge-1.example.com:8443");
        let c = config(&[&ic[..], &["--host", "10.0.0.5", "--advertise-host", "2001:db8::7"]].concat()).unwrap();
        assert_eq!(c.advertised(c.api_addr), "[2001:db8::7]:7070");
        for h in ["", "edge:2222", "http://edge", "-edge", "a..b", "edge 1", "ex_ample.com"] {
            let flag = format!("--advertise-host={h}");
            let e = config(&[&ic[..], &["--host", "10.0.0.5", &flag]].concat()).unwrap_err();
            assert!(e.0.contains("--advertise-host"), "{h:?}: {e}");
        }
    }

    /// Every setting `deploy/mysocketd.example.toml` shows, the commented ones too, is one the
    /// node reads (the file refuses unknown keys, so a misspelt example would stop a node).
    #[test]
    fn the_example_config_names_only_real_settings() {
        let text = include_str!("../../../deploy/mysocketd.example.toml");
        let setting =
            |l: &str| l.split_once(" = ").is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        let uncommented: Vec<&str> =
            text.lines().map(|l| l.strip_prefix("# ").filter(|rest| setting(rest)).unwrap_or(l)).collect();
        let f: Settings = toml::from_str(&uncommented.join("\n")).unwrap();
        assert_eq!(f.advertise_host.as_deref(), Some("edge1.example.net"));
        assert_eq!((f.max_ssh_sessions, f.tls_key.is_some()), (Some(20), true));
        assert_eq!((f.signup.as_deref(), f.api_tls, f.max_accounts), (Some("closed"), Some(true), Some(10_000)));
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_fills_the_rest() {
        let file: Settings =
            toml::from_str("id = 3\nlog = \"debug\"\njoin = [\"10.0.0.1:7071\"]\nmax_accounts = 7").unwrap();
        let flags = Settings::try_parse_from(["mysocketd", "--id", "1", "--max-accounts", "9"]).unwrap();
        let s = flags.over(file).unwrap();
        assert_eq!((s.id, s.log.as_deref(), s.max_accounts), (Some(1), Some("debug"), Some(9)));
        assert_eq!(s.join, Some(vec!["10.0.0.1:7071".to_string()]));
        let flags = Settings::try_parse_from(["mysocketd", "--join", "10.0.0.2:7071,10.0.0.3:7071"]).unwrap();
        assert_eq!(flags.over(Settings::default()).unwrap().join.map(|j| j.len()), Some(2));
        for only_flags in ["planted_bug = \"x\"", "config = \"/etc/x.toml\"", "snapshot_chunk_bytes = 1"] {
            assert!(toml::from_str::<Settings>(only_flags).is_err(), "{only_flags} is not a file setting");
        }
    }

    #[test]
    fn port_range() {
        assert_eq!(parse_port_range("20000-20999").unwrap(), (20000, 20999));
        assert!(parse_port_range("3-2").is_err());
        assert!(parse_port_range("0-2").is_err());
        assert!(parse_port_range("a-b").is_err());
    }
}
