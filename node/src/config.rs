//! Node configuration: flags, `MYSOCKET_*` environment variables and an optional TOML file,
//! merged in that order of precedence and validated before anything binds.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// A secret whose `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// Command line of `mysocketd`. Every flag also reads `MYSOCKET_<NAME>` from the environment.
#[derive(Parser, Debug, Default)]
#[command(name = "mysocketd", version, about = "mysocket edge node: Raft registry, API, SSH tunnels and public proxy")]
pub struct Flags {
    /// TOML config file; flags and environment override it.
    #[arg(long, env = "MYSOCKET_CONFIG")]
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
    pub join: Vec<String>,
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
    /// Minimum election timeout in milliseconds (default 1000; the maximum is twice it).
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
    /// Log filter, e.g. `info` or `mysocket_node=debug` (default info).
    #[arg(long, env = "MYSOCKET_LOG")]
    pub log: Option<String>,
    /// Planted bug for the fault-injection suite (builds with `--features planted-bugs` only).
    #[arg(long, env = "MYSOCKET_PLANTED_BUG")]
    pub planted_bug: Option<String>,
    /// Size of a snapshot's chunks, sent and accepted (default 1 MiB): the most of a snapshot a
    /// node holds in memory. Every node of a cluster must use the same. For tests.
    #[arg(long, hide = true)]
    pub snapshot_chunk_bytes: Option<usize>,
}

/// The TOML file: the same settings as the flags, with underscores.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub host: Option<String>,
    pub api_addr: Option<SocketAddr>,
    pub raft_addr: Option<SocketAddr>,
    pub ssh_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    pub advertise_raft_addr: Option<String>,
    pub advertise_host: Option<String>,
    pub initial_cluster: Option<String>,
    pub join: Option<Vec<String>>,
    pub cluster_secret: Option<String>,
    pub cluster_secret_file: Option<PathBuf>,
    pub operator_token_file: Option<PathBuf>,
    pub signup: Option<String>,
    pub max_accounts: Option<u64>,
    pub login_rate: Option<u32>,
    pub signup_rate: Option<u32>,
    pub write_rate: Option<u32>,
    pub max_connections_per_source: Option<usize>,
    pub stall_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub api_tls: Option<bool>,
    pub api_tls_cert: Option<PathBuf>,
    pub api_tls_key: Option<PathBuf>,
    pub internal_tls_cert: Option<PathBuf>,
    pub internal_tls_key: Option<PathBuf>,
    pub internal_tls_ca: Option<PathBuf>,
    pub internal_tls_domain: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub domain: Option<String>,
    pub tcp_ports: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    pub snapshot_threshold: Option<u64>,
    pub max_http_sockets: Option<u32>,
    pub max_tcp_sockets: Option<u32>,
    pub max_ssh_sessions: Option<u32>,
    pub token_ttl_secs: Option<u64>,
    pub log: Option<String>,
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

impl Config {
    /// Merges flags, environment (already folded into `flags` by clap) and the TOML file, then
    /// validates. Reads secret and TLS files, so errors about them come before any bind.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        // First: a normal build must never start with a planted bug, whatever else is wrong.
        let planted_bug = flags.planted_bug.clone();
        if let Some(b) = &planted_bug {
            if !cfg!(feature = "planted-bugs") {
                return Err(bad(format!("--planted-bug {b}: this build has no planted bugs")));
            }
            if crate::planted::Bug::named(b).is_none() {
                let names: Vec<&str> = crate::planted::Bug::ALL.iter().map(|b| b.name()).collect();
                return Err(bad(format!("--planted-bug {b}: unknown; one of {}", names.join(", "))));
            }
        }
        let file = match &flags.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| bad(format!("cannot read config file {}: {e}", p.display())))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| bad(format!("config file {}: {}", p.display(), e.message())))?
            }
            None => FileConfig::default(),
        };
        macro_rules! pick {
            ($f:ident) => {
                flags.$f.clone().or(file.$f.clone())
            };
        }
        let id = pick!(id).ok_or_else(|| bad("--id is required (a positive integer)"))?;
        if id == 0 {
            return Err(bad("--id must be a positive integer"));
        }
        let host = pick!(host).unwrap_or_else(|| "127.0.0.1".to_string());
        let ip: std::net::IpAddr = host.parse().map_err(|_| bad(format!("--host {host:?} is not an IP address")))?;
        let at = |port: u16| SocketAddr::new(ip, port);
        let api_addr = pick!(api_addr).unwrap_or(at(7070));
        let raft_addr = pick!(raft_addr).unwrap_or(at(7071));
        let ssh_addr = pick!(ssh_addr).unwrap_or(at(2222));
        let http_addr = pick!(http_addr).unwrap_or(at(8080));
        let https_addr = pick!(https_addr).unwrap_or(at(8443));
        let addrs = [api_addr, raft_addr, ssh_addr, http_addr, https_addr];
        for (i, a) in addrs.iter().enumerate() {
            if a.port() != 0 && addrs[i + 1..].contains(a) {
                return Err(bad(format!("address {a} is given to two listeners")));
            }
        }
        let advertise_raft_addr = match pick!(advertise_raft_addr) {
            Some(a) => {
                check_host_port(&a, "--advertise-raft-addr")?;
                a
            }
            None if raft_addr.ip().is_unspecified() => {
                return Err(bad("--raft-addr binds all interfaces: give --advertise-raft-addr"))
            }
            None => raft_addr.to_string(),
        };
        let advertise_host = pick!(advertise_host);
        if let Some(h) = &advertise_host {
            if !is_host(h) {
                return Err(bad(format!("--advertise-host {h:?} is not a host name or an IP address (no port)")));
            }
        }
        let data_dir = pick!(data_dir).unwrap_or_else(|| PathBuf::from(format!("mysocket-data/node-{id}")));

        let has_state = data_dir.join("db").join("CURRENT").exists();
        let join: Vec<String> =
            if !flags.join.is_empty() { flags.join.clone() } else { file.join.clone().unwrap_or_default() };
        for j in &join {
            if j.contains("://") {
                return Err(bad(format!(
                    "--join {j:?}: give the internal (raft) address of a member, HOST:PORT such as 10.0.0.1:7071 \
                     (a node joins over the internal port with the cluster credential, not through the API)"
                )));
            }
            check_host_port(j, "--join")?;
        }
        let membership = match (pick!(initial_cluster), join.is_empty()) {
            (Some(_), false) => return Err(bad("give either --initial-cluster or --join, not both")),
            (Some(ic), true) => {
                let members = parse_initial_cluster(&ic)?;
                match members.get(&id) {
                    None => return Err(bad(format!("--initial-cluster does not include this node's id {id}"))),
                    Some(a) if a != &advertise_raft_addr => {
                        return Err(bad(format!(
                            "--initial-cluster gives node {id} the address {a}, but it advertises {advertise_raft_addr}"
                        )))
                    }
                    Some(_) => {}
                }
                if has_state {
                    Membership::Existing
                } else {
                    Membership::Initial(members)
                }
            }
            (None, false) => {
                if has_state {
                    Membership::Existing
                } else {
                    Membership::Join(join)
                }
            }
            (None, true) if has_state => Membership::Existing,
            (None, true) => {
                return Err(bad(format!(
                    "{} holds no data: give --initial-cluster to start a new cluster or --join to join one",
                    data_dir.display()
                )))
            }
        };

        let secret = match (pick!(cluster_secret), pick!(cluster_secret_file)) {
            (Some(s), None) => s,
            (None, Some(p)) => std::fs::read_to_string(&p)
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

        let operator_token_file = pick!(operator_token_file).unwrap_or_else(|| data_dir.join("operator-token"));
        let operator_token = read_operator_token(&operator_token_file, &secret)?.map(Secret);
        let signup = match pick!(signup).as_deref().map(str::trim) {
            None | Some("open") => Signup::Open,
            Some("closed") => Signup::Closed,
            Some(other) => return Err(bad(format!("--signup {other:?}: one of open, closed"))),
        };
        let max_accounts = pick!(max_accounts).unwrap_or(10_000);
        if max_accounts == 0 {
            return Err(bad("--max-accounts must be positive"));
        }

        let internal_tls = match (pick!(internal_tls_cert), pick!(internal_tls_key), pick!(internal_tls_ca)) {
            (None, None, None) => None,
            (Some(c), Some(k), Some(ca)) => {
                let read = |p: &PathBuf, what: &str| {
                    std::fs::read(p).map_err(|e| bad(format!("cannot read internal TLS {what} {}: {e}", p.display())))
                };
                Some(InternalTls {
                    cert_pem: read(&c, "certificate")?,
                    key_pem: read(&k, "key")?,
                    ca_pem: read(&ca, "CA")?,
                    domain: pick!(internal_tls_domain),
                })
            }
            _ => {
                return Err(bad(
                    "internal TLS needs all of --internal-tls-cert, --internal-tls-key and --internal-tls-ca",
                ))
            }
        };

        let defaults = RateLimits::default();
        let rate_limits = RateLimits {
            login_per_minute: pick!(login_rate).unwrap_or(defaults.login_per_minute),
            signup_per_hour: pick!(signup_rate).unwrap_or(defaults.signup_per_hour),
            writes_per_second: pick!(write_rate).unwrap_or(defaults.writes_per_second),
        };
        if rate_limits.login_per_minute == 0 || rate_limits.signup_per_hour == 0 || rate_limits.writes_per_second == 0 {
            return Err(bad("--login-rate, --signup-rate and --write-rate must be positive"));
        }

        let max_connections_per_source = pick!(max_connections_per_source).unwrap_or(256);
        if max_connections_per_source == 0 {
            return Err(bad("--max-connections-per-source must be positive"));
        }
        let stall_timeout = Duration::from_secs(pick!(stall_timeout_secs).unwrap_or(60));
        if stall_timeout.is_zero() {
            return Err(bad("--stall-timeout-secs must be positive"));
        }
        let idle_timeout = Duration::from_secs(pick!(idle_timeout_secs).unwrap_or(60));
        if idle_timeout.is_zero() {
            return Err(bad("--idle-timeout-secs must be positive"));
        }

        let api_tls = match (pick!(api_tls), pick!(api_tls_cert), pick!(api_tls_key)) {
            (Some(false) | None, None, None) => ApiTls::Off,
            (Some(true), None, None) => ApiTls::ClusterCa,
            (Some(true) | None, Some(c), Some(k)) => {
                let read = |p: &PathBuf, what: &str| {
                    std::fs::read_to_string(p)
                        .map_err(|e| bad(format!("cannot read API TLS {what} {}: {e}", p.display())))
                };
                let t = PublicTls { cert_pem: read(&c, "certificate")?, key_pem: read(&k, "key")? };
                crate::tls::operator_cert(&t)
                    .map_err(|e| bad(format!("--api-tls-cert {} / --api-tls-key {}: {e}", c.display(), k.display())))?;
                ApiTls::Files(t)
            }
            (Some(false), _, _) => return Err(bad("--api-tls=false with --api-tls-cert/--api-tls-key: choose one")),
            _ => {
                return Err(bad(
                    "HTTPS on the API with your own certificate needs both --api-tls-cert and --api-tls-key",
                ))
            }
        };

        let public_tls = match (pick!(tls_cert), pick!(tls_key)) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let read = |p: &PathBuf, what: &str| {
                    std::fs::read_to_string(p).map_err(|e| bad(format!("cannot read TLS {what} {}: {e}", p.display())))
                };
                let t = PublicTls { cert_pem: read(&c, "certificate")?, key_pem: read(&k, "key")? };
                crate::tls::operator_cert(&t)
                    .map_err(|e| bad(format!("--tls-cert {} / --tls-key {}: {e}", c.display(), k.display())))?;
                Some(t)
            }
            _ => return Err(bad("an operator certificate needs both --tls-cert and --tls-key")),
        };

        let domain = pick!(domain).unwrap_or_else(|| "localhost".to_string()).to_ascii_lowercase();
        if domain.is_empty()
            || !domain.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(bad(format!("--domain {domain:?} is not a DNS name")));
        }
        let tcp_ports = parse_port_range(&pick!(tcp_ports).unwrap_or_else(|| "20000-20999".to_string()))?;
        let heartbeat_ms = pick!(heartbeat_ms).unwrap_or(100);
        let election_ms = pick!(election_timeout_ms).unwrap_or(1000);
        if heartbeat_ms == 0 || election_ms < heartbeat_ms * 3 {
            return Err(bad("--election-timeout-ms must be at least three heartbeats (--heartbeat-ms)"));
        }
        let snapshot_threshold = pick!(snapshot_threshold).unwrap_or(50_000);
        if snapshot_threshold == 0 {
            return Err(bad("--snapshot-threshold must be positive"));
        }
        let snapshot_chunk = flags.snapshot_chunk_bytes.unwrap_or(1024 * 1024);
        if !(1024..=crate::peers::MAX_MESSAGE / 2).contains(&snapshot_chunk) {
            return Err(bad("--snapshot-chunk-bytes must be between 1 KiB and 32 MiB"));
        }
        let max_ssh_sessions = pick!(max_ssh_sessions).unwrap_or(20);
        if max_ssh_sessions == 0 {
            return Err(bad("--max-ssh-sessions must be positive"));
        }
        Ok(Config {
            id,
            data_dir,
            api_addr,
            raft_addr,
            ssh_addr,
            http_addr,
            https_addr,
            advertise_raft_addr,
            advertise_host,
            membership,
            cluster_secret: Secret(secret),
            operator_token_file,
            operator_token,
            signup,
            max_accounts,
            rate_limits,
            idle_timeout,
            max_connections_per_source,
            stall_timeout,
            api_tls,
            internal_tls,
            public_tls,
            domain,
            tcp_ports,
            heartbeat: Duration::from_millis(heartbeat_ms),
            election_timeout: Duration::from_millis(election_ms),
            snapshot_threshold,
            max_http_sockets: pick!(max_http_sockets).unwrap_or(10),
            max_tcp_sockets: pick!(max_tcp_sockets).unwrap_or(5),
            max_ssh_sessions,
            token_ttl: Duration::from_secs(pick!(token_ttl_secs).unwrap_or(5 * 3600)),
            log: pick!(log).unwrap_or_else(|| "info".to_string()),
            planted_bug,
            snapshot_chunk,
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
        Config::load(Flags::try_parse_from(argv).unwrap())
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
        let text = include_str!("../../deploy/mysocketd.example.toml");
        let setting =
            |l: &str| l.split_once(" = ").is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        let uncommented: Vec<&str> =
            text.lines().map(|l| l.strip_prefix("# ").filter(|rest| setting(rest)).unwrap_or(l)).collect();
        let f: FileConfig = toml::from_str(&uncommented.join("\n")).unwrap();
        assert_eq!(f.advertise_host.as_deref(), Some("edge1.example.net"));
        assert_eq!((f.max_ssh_sessions, f.tls_key.is_some()), (Some(20), true));
        assert_eq!((f.signup.as_deref(), f.api_tls, f.max_accounts), (Some("closed"), Some(true), Some(10_000)));
    }

    #[test]
    fn port_range() {
        assert_eq!(parse_port_range("20000-20999").unwrap(), (20000, 20999));
        assert!(parse_port_range("3-2").is_err());
        assert!(parse_port_range("0-2").is_err());
        assert!(parse_port_range("a-b").is_err());
    }
}
