//! The replicated domain model: what the registry holds and the commands that change it.
//!
//! Everything here is plain data. Commands carry every value that needs randomness or a clock
//! (ids, name hints, timestamps) so that applying them is deterministic on every node.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

/// Raft node id. Ids are never reused: a removed node's id is retired for good.
pub type NodeId = u64;

/// A registered user. `user_name` is the SSH login name: the user id without dashes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user_id: Uuid,
    pub name: String,
    /// Stored as given; uniqueness is checked on the lowercased form.
    pub email: String,
    pub user_name: String,
    /// argon2id PHC string; never leaves the cluster.
    pub password_hash: String,
    /// OpenSSH public key line the SSH server authenticates against.
    pub sshkey: String,
    pub created_at_ms: u64,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("user_name", &self.user_name)
            .field("password_hash", &"MASKED")
            .finish()
    }
}

/// The kind of public endpoint a socket gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketType {
    Http,
    Https,
    Tcp,
    Tls,
}

impl SocketType {
    /// Parses a socket type case-insensitively, as the original API did.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http" => Some(Self::Http),
            "https" => Some(Self::Https),
            "tcp" => Some(Self::Tcp),
            "tls" => Some(Self::Tls),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }

    /// tcp and tls sockets get a port of their own from the cluster's range.
    pub fn needs_port(self) -> bool {
        matches!(self, Self::Tcp | Self::Tls)
    }
}

/// A public endpoint owned by one account.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Socket {
    pub socket_id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// `<adjective>-<noun>-<4 digits>.<domain>`, unique, stable until the socket is deleted.
    pub dnsname: String,
    pub socket_type: SocketType,
    /// Allocated from the cluster's TCP range for tcp/tls sockets.
    pub port: Option<u16>,
    #[serde(flatten)]
    pub access: Access,
    pub created_at_ms: u64,
    /// A name of the owner's (`app.example.com`) the socket also answers to once verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_domain: Option<CustomDomain>,
}

/// A custom domain of a socket: routed (HTTP by Host, HTTPS and tls by SNI) and given a
/// certificate only once its owner has shown control of it, by a TXT record
/// `_mysocket-challenge.<name>` holding `token` or a CNAME from `name` to the socket's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomDomain {
    /// Lower case, without the final dot.
    pub name: String,
    pub token: String,
    pub verified: bool,
}

impl CustomDomain {
    /// The label of the TXT record that proves control of a custom domain.
    pub const TXT_LABEL: &'static str = "_mysocket-challenge";

    /// Where the TXT record that proves control goes.
    pub fn txt_name(&self) -> String {
        format!("{}.{}", Self::TXT_LABEL, self.name)
    }
}

/// Who may reach a socket: the rules the edge applies on the node where a connection arrives,
/// in this order: the address lists, the rate limit, Basic auth, cloud authentication.
/// Stored flat in a socket's row (`#[serde(flatten)]`), as before the lists and the limit
/// existed; rows written before them read as no list and no limit.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub protected: bool,
    pub protected_username: Option<String>,
    /// Salted, keyed hash of the Basic-auth password (see the node's `auth::basic_password`);
    /// the password itself is never stored.
    pub protected_password_hash: Option<String>,
    /// Visitors log in with the cluster's OpenID Connect provider; only the emails below, and
    /// the emails in the domains below, get through (http and https sockets).
    pub cloud_auth_enabled: bool,
    /// Lowercase.
    pub allowed_emails: Vec<String>,
    /// Lowercase, exact domains (no subdomains).
    pub allowed_domains: Vec<String>,
    /// Visitor networks let in (CIDR, in canonical form); empty: every address not denied.
    #[serde(default)]
    pub ip_allow: Vec<String>,
    /// Visitor networks refused (CIDR), whatever `ip_allow` says.
    #[serde(default)]
    pub ip_deny: Vec<String>,
    /// Requests (http, https) or new connections (tcp, tls) per second per visitor address
    /// (a burst of as many at once); 0: no limit.
    #[serde(default)]
    pub rate_limit: u32,
    /// tcp and tls sockets: a PROXY protocol header written to the service before the
    /// visitor's first byte, with the visitor's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// http and https sockets: the protocol the edge speaks to the service.
    #[serde(default, skip_serializing_if = "UpstreamProtocol::is_http1")]
    pub upstream: UpstreamProtocol,
}

/// The PROXY protocol's versions (HAProxy's spec): v1 is a text line, v2 a binary block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    V1,
    V2,
}

impl ProxyProtocol {
    /// As the API spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

/// How the edge speaks to an http or https socket's service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (every visitor's request, HTTP/1 or HTTP/2, is sent as HTTP/1.1).
    #[default]
    Http1,
    /// HTTP/2 without TLS ("prior knowledge"), for gRPC: streams and trailers pass as they are.
    H2c,
}

impl UpstreamProtocol {
    /// As the API spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        }
    }

    pub fn is_http1(&self) -> bool {
        *self == UpstreamProtocol::Http1
    }
}

impl Access {
    /// Whether any rule beyond Basic auth applies.
    pub fn has_visitor_rules(&self) -> bool {
        self.cloud_auth_enabled || !self.ip_allow.is_empty() || !self.ip_deny.is_empty() || self.rate_limit > 0
    }
}

/// Whether a credential is a login token or an API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// Issued by `POST /login` (or a refresh): a JWT that carries this credential's id.
    Token,
    /// Made by its owner for scripts and CI: `mysk_<id>_<secret>`, of which only the
    /// secret's SHA-256 is kept.
    ApiKey,
}

/// A credential an account holds. Every node accepts it while the registry holds it (and it
/// has not expired), so revoking it, one Raft entry, applies on every node at once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: CredentialKind,
    /// What its owner called it (an API key), or how it came (`login`, `refresh`).
    pub name: String,
    pub created_at_ms: u64,
    /// Never accepted at or after this time; `None`: until revoked (API keys only).
    pub expires_at_ms: Option<u64>,
    /// API keys: the SHA-256 (hex) of the secret. Never leaves the cluster.
    #[serde(default)]
    pub secret_hash: Option<String>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// Most login tokens an account holds: a login past it drops the oldest.
pub const MAX_TOKENS_PER_ACCOUNT: usize = 100;
/// Most API keys an account holds: one more is refused until one is revoked.
pub const MAX_API_KEYS_PER_ACCOUNT: usize = 50;

/// One SSH reverse-forward slot of a socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub tunnel_id: Uuid,
    pub socket_id: Uuid,
    pub user_id: Uuid,
    /// The port the client asks the SSH server to forward; unique within the account.
    pub local_port: u16,
    pub created_at_ms: u64,
}

/// Which node currently holds a tunnel's SSH session, and under which epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelSession {
    pub tunnel_id: Uuid,
    pub node_id: NodeId,
    /// Bumped by every claim; relayed connections carry it so a superseded holder can refuse.
    pub epoch: u64,
    pub since_ms: u64,
}

/// What a node tells the cluster about itself, so others can reach its services.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: NodeId,
    pub raft_addr: String,
    pub api_addr: String,
    pub ssh_addr: String,
    pub http_addr: String,
    pub https_addr: String,
    /// Where visitors reach the node's public ports: what the cluster's DNS answers while the
    /// node is alive.
    #[serde(default)]
    pub public_ips: Vec<std::net::IpAddr>,
    /// Leader-driven liveness: false once the leader stops hearing from the node.
    pub alive: bool,
    pub changed_at_ms: u64,
}

/// Cluster-wide settings and secrets, generated once at bootstrap and replicated so every node
/// presents the same host key and certificate and verifies the same tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub domain: String,
    pub tcp_port_min: u16,
    pub tcp_port_max: u16,
    /// OpenSSH private key (PEM) the SSH servers present.
    pub ssh_host_key: String,
    pub tls_ca_cert: String,
    pub tls_ca_key: String,
    /// Wildcard certificate for `*.<domain>`, signed by the CA above.
    pub tls_cert: String,
    pub tls_key: String,
    /// HMAC key for API tokens, hex.
    pub token_key: String,
    /// SHA-256 (hex) of the operator credential: the token that membership changes and
    /// cluster-wide reads need. Only its hash is replicated; the token itself is written once,
    /// to a file on the node that bootstrapped the cluster (or chosen by the operator).
    #[serde(default)]
    pub operator_token_hash: String,
    pub created_at_ms: u64,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("domain", &self.domain)
            .field("tcp_ports", &(self.tcp_port_min..=self.tcp_port_max))
            .field("secrets", &"MASKED")
            .finish()
    }
}

/// What the cluster holds for ACME: the account at the CA, the challenges it is answering,
/// the certificates it obtained, which node may order now, and the last failure. One row.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeState {
    /// The ACME account's credentials (instant-acme's JSON: the account URL and its private
    /// key). A secret: never printed.
    pub account: Option<String>,
    /// The directory URL the account belongs to.
    pub directory: Option<String>,
    /// DNS-01: TXT values the cluster's DNS serves at `_acme-challenge.<name>`, by name.
    pub dns_challenges: std::collections::BTreeMap<String, Vec<String>>,
    /// HTTP-01: key authorisations served at `/.well-known/acme-challenge/<token>`, by token.
    pub http_challenges: std::collections::BTreeMap<String, String>,
    /// Certificates by the name they were ordered for (`*.<domain>` or a custom domain).
    pub certificates: std::collections::BTreeMap<String, Certificate>,
    /// The node ordering certificates, until when (ms since the epoch); another node takes
    /// over once it lapses.
    pub lease: Option<(NodeId, u64)>,
    /// The last failure per name: when and what (for the dashboard and `/metrics`).
    pub failures: std::collections::BTreeMap<String, (u64, String)>,
}

impl fmt::Debug for AcmeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeState")
            .field("directory", &self.directory)
            .field("certificates", &self.certificates.keys().collect::<Vec<_>>())
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl AcmeState {
    /// The name of the cluster's certificate for `domain`: the wildcard (it covers the apex).
    pub fn wildcard(domain: &str) -> String {
        format!("*.{domain}")
    }
}

/// A certificate the cluster obtained over ACME.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// PEM private key. A secret: never printed.
    pub key_pem: String,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate").field("not_after_ms", &self.not_after_ms).finish_non_exhaustive()
    }
}

/// A change to [`AcmeState`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcmeChange {
    /// Takes the ordering lease for `node_id` until `until_ms`, if nobody else holds one that
    /// has not lapsed at the command's time.
    Lease {
        node_id: NodeId,
        until_ms: u64,
    },
    /// The account at `directory` (replaces one at another directory).
    Account {
        directory: String,
        credentials: String,
    },
    /// Starts (`Some`) or ends (`None`) serving a DNS-01 value for `name`.
    DnsChallenge {
        name: String,
        value: String,
        serve: bool,
    },
    /// Starts (`Some`) or ends (`None`) serving an HTTP-01 token.
    HttpChallenge {
        token: String,
        key_authorization: Option<String>,
    },
    /// A certificate for `name`; clears the name's failure.
    Issued {
        name: String,
        certificate: Certificate,
    },
    Failed {
        name: String,
        message: String,
    },
}

/// Per-account limits, set by the proposing node's configuration and checked at apply time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketLimits {
    pub max_http: u32,
    pub max_tcp: u32,
    pub max_tunnels_per_socket: u32,
}

impl Default for SocketLimits {
    fn default() -> Self {
        // The original service allowed 10 http(s) and 5 tcp/tls sockets per account.
        Self { max_http: 10, max_tcp: 5, max_tunnels_per_socket: 16 }
    }
}

/// The socket-creation parameters, already validated by the API layer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSocket {
    pub socket_id: Uuid,
    pub name: String,
    pub socket_type: SocketType,
    /// The first label of the dnsname, e.g. `brave-otter-0042`; apply probes for a free one.
    pub dnsname_hint: String,
    /// Where to start looking for a free TCP port (tcp/tls only).
    pub port_hint: u16,
    /// The user chose the label: `dnsname_hint` is taken as it is, or the socket is refused.
    #[serde(default)]
    pub label_chosen: bool,
    /// The user chose the port: `port_hint` is taken as it is, or the socket is refused.
    #[serde(default)]
    pub port_chosen: bool,
    #[serde(flatten)]
    pub access: Access,
    /// Claimed now, verified later.
    #[serde(default)]
    pub custom_domain: Option<CustomDomain>,
}

/// A new tunnel: its id and where to start looking for a free relay port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTunnel {
    pub tunnel_id: Uuid,
    pub local_port_hint: u16,
}

/// A state change, as proposed to Raft. Its `Debug` (and so every log line openraft or the
/// node writes about an entry) names the command's kind and ids only: commands carry password
/// hashes and the cluster's keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster config; only the first one ever applied takes effect.
    Bootstrap(ClusterConfig),
    /// Creates or updates a node's addresses and marks it alive.
    RegisterNode(NodeRecord),
    /// Leader-driven liveness. Marking a node dead releases every session it holds.
    SetNodeAlive {
        node_id: NodeId,
        alive: bool,
    },
    /// A node left the membership: its id is never accepted again and its sessions are released.
    RetireNode {
        node_id: NodeId,
    },
    CreateAccount {
        user_id: Uuid,
        name: String,
        email: String,
        password_hash: String,
        sshkey: String,
        /// The cluster-wide cap on accounts, from the proposing node's configuration.
        #[serde(default)]
        max_accounts: Option<u64>,
    },
    CreateSocket {
        user_id: Uuid,
        socket: NewSocket,
        limits: SocketLimits,
        /// `POST /connect` creates the socket's first tunnel in the same command.
        first_tunnel: Option<NewTunnel>,
    },
    DeleteSocket {
        user_id: Uuid,
        socket_id: Uuid,
    },
    /// Replaces a socket's access rules; its name, type, address and tunnels stay.
    SetSocketAccess {
        user_id: Uuid,
        socket_id: Uuid,
        access: Access,
    },
    /// Claims a custom domain for a socket (unverified), or gives it up (`None`).
    SetSocketDomain {
        user_id: Uuid,
        socket_id: Uuid,
        domain: Option<CustomDomain>,
    },
    /// The leader found the proof of control of a socket's custom domain `name`.
    VerifyDomain {
        socket_id: Uuid,
        name: String,
    },
    CreateTunnel {
        user_id: Uuid,
        socket_id: Uuid,
        tunnel: NewTunnel,
        limits: SocketLimits,
    },
    DeleteTunnel {
        user_id: Uuid,
        socket_id: Uuid,
        tunnel_id: Uuid,
    },
    /// Newest claim wins: takes the session for `node_id` with a fresh epoch.
    ClaimTunnel {
        user_id: Uuid,
        tunnel_id: Uuid,
        node_id: NodeId,
    },
    /// Releases the session only if `(node_id, epoch)` still holds it.
    ReleaseTunnel {
        tunnel_id: Uuid,
        node_id: NodeId,
        epoch: u64,
    },
    /// Gives a cluster bootstrapped before operator tokens existed its operator credential
    /// (the SHA-256 of the token); refused once the cluster has one.
    SetOperatorToken {
        hash: String,
    },
    /// ACME state (accounts, challenges, certificates, the ordering lease).
    Acme(AcmeChange),
    /// Records a login token or an API key. The account's expired credentials go; past
    /// [`MAX_TOKENS_PER_ACCOUNT`] the oldest token goes, past [`MAX_API_KEYS_PER_ACCOUNT`]
    /// a key is refused, and an API key's name is unique among the account's keys.
    IssueCredential(Credential),
    /// Revokes one of `user_id`'s credentials.
    RevokeCredential {
        user_id: Uuid,
        id: Uuid,
    },
    /// Several client requests in one log entry (group commit): applied in order, each with
    /// its own request id and clock, answered by [`Response::Batch`] in the same order. One
    /// entry instead of many saves Raft's per-entry work on every node.
    Batch(Vec<Request>),
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("socket_id", &self.socket_id)
            .field("user_id", &self.user_id)
            .field("socket_type", &self.socket_type)
            .field("port", &self.port)
            .field("protected", &self.access.protected)
            .field("cloud_auth_enabled", &self.access.cloud_auth_enabled)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for NewSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSocket")
            .field("socket_id", &self.socket_id)
            .field("socket_type", &self.socket_type)
            .field("protected", &self.access.protected)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Bootstrap(c) => write!(f, "Bootstrap({})", c.domain),
            Command::RegisterNode(n) => write!(f, "RegisterNode({})", n.node_id),
            Command::SetNodeAlive { node_id, alive } => write!(f, "SetNodeAlive({node_id}, {alive})"),
            Command::RetireNode { node_id } => write!(f, "RetireNode({node_id})"),
            Command::CreateAccount { user_id, .. } => write!(f, "CreateAccount({user_id})"),
            Command::CreateSocket { user_id, socket, first_tunnel, .. } => {
                write!(f, "CreateSocket({user_id}, {}", socket.socket_id)?;
                match first_tunnel {
                    Some(t) => write!(f, ", tunnel {})", t.tunnel_id),
                    None => write!(f, ")"),
                }
            }
            Command::DeleteSocket { user_id, socket_id } => write!(f, "DeleteSocket({user_id}, {socket_id})"),
            Command::SetSocketAccess { user_id, socket_id, .. } => write!(f, "SetSocketAccess({user_id}, {socket_id})"),
            Command::SetSocketDomain { user_id, socket_id, .. } => write!(f, "SetSocketDomain({user_id}, {socket_id})"),
            Command::VerifyDomain { socket_id, name } => write!(f, "VerifyDomain({socket_id}, {name})"),
            Command::CreateTunnel { user_id, socket_id, tunnel, .. } => {
                write!(f, "CreateTunnel({user_id}, {socket_id}, {})", tunnel.tunnel_id)
            }
            Command::DeleteTunnel { user_id, socket_id, tunnel_id } => {
                write!(f, "DeleteTunnel({user_id}, {socket_id}, {tunnel_id})")
            }
            Command::ClaimTunnel { user_id, tunnel_id, node_id } => {
                write!(f, "ClaimTunnel({user_id}, {tunnel_id}, node {node_id})")
            }
            Command::ReleaseTunnel { tunnel_id, node_id, epoch } => {
                write!(f, "ReleaseTunnel({tunnel_id}, node {node_id}, epoch {epoch})")
            }
            Command::SetOperatorToken { .. } => write!(f, "SetOperatorToken"),
            Command::IssueCredential(c) => write!(f, "IssueCredential({}, {:?}, {})", c.user_id, c.kind, c.id),
            Command::RevokeCredential { user_id, id } => write!(f, "RevokeCredential({user_id}, {id})"),
            Command::Acme(change) => match change {
                AcmeChange::Lease { node_id, until_ms } => write!(f, "Acme(Lease({node_id}, {until_ms}))"),
                AcmeChange::Account { directory, .. } => write!(f, "Acme(Account({directory}))"),
                AcmeChange::DnsChallenge { name, serve, .. } => write!(f, "Acme(DnsChallenge({name}, {serve}))"),
                AcmeChange::HttpChallenge { key_authorization, .. } => {
                    write!(f, "Acme(HttpChallenge({}))", key_authorization.is_some())
                }
                AcmeChange::Issued { name, .. } => write!(f, "Acme(Issued({name}))"),
                AcmeChange::Failed { name, .. } => write!(f, "Acme(Failed({name}))"),
            },
            Command::Batch(list) => f.debug_list().entries(list.iter().map(|r| &r.cmd)).finish(),
        }
    }
}

/// A command with what makes it idempotent and deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Client request id: a retried write with the same id is applied once and answered with
    /// the first answer.
    pub request_id: Option<String>,
    /// Proposer's wall clock, so timestamps do not depend on when a node applies the entry.
    pub at_ms: u64,
    pub cmd: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.cmd)
    }
}

/// Why a command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Invalid(String),
    /// A release or relay carried an epoch that a newer claim has superseded.
    #[error("{0}")]
    Stale(String),
}

/// A socket with its tunnels, as answered to the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketView {
    pub socket: Socket,
    pub tunnels: Vec<Tunnel>,
}

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Response {
    #[default]
    Done,
    Account(Account),
    Socket(SocketView),
    Tunnel(Tunnel),
    Claimed {
        session: TunnelSession,
        /// The node that held the tunnel before this claim, if any; it must close its session.
        superseded: Option<TunnelSession>,
    },
    /// Sessions released by this command (a node marked dead or retired releases several).
    Released(Vec<TunnelSession>),
    /// A socket or tunnel deleted, with the tunnel sessions that ended with it (their nodes
    /// close them).
    Deleted(Vec<TunnelSession>),
    Rejected(Rejection),
    /// The answers to a [`Command::Batch`], in its order.
    Batch(Vec<Response>),
    Credential(Credential),
}

impl Response {
    /// The answers this response stands for: a batch's, in order, or itself.
    pub fn each(&self) -> Box<dyn Iterator<Item = &Response> + '_> {
        match self {
            Response::Batch(list) => Box::new(list.iter().flat_map(|r| r.each())),
            one => Box::new(std::iter::once(one)),
        }
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What openraft and the node log of an entry is its kind and ids: never a hash or a key.
    #[test]
    fn commands_and_answers_print_no_secret() {
        let user_id = Uuid::new_v4();
        let socket = NewSocket {
            socket_id: Uuid::new_v4(),
            name: "web".into(),
            socket_type: SocketType::Http,
            dnsname_hint: "brave-otter-0001".into(),
            port_hint: 0,
            label_chosen: false,
            port_chosen: false,
            custom_domain: None,
            access: Access {
                protected: true,
                protected_username: Some("bob".into()),
                protected_password_hash: Some("hmac-sha256$00$11".into()),
                ..Access::default()
            },
        };
        let config = ClusterConfig {
            domain: "example.test".into(),
            tcp_port_min: 1,
            tcp_port_max: 2,
            ssh_host_key: "-----BEGIN OPENSSH PRIVATE KEY-----".into(),
            tls_ca_cert: "ca-cert".into(),
            tls_ca_key: "ca-key-secret".into(),
            tls_cert: "cert".into(),
            tls_key: "key-secret".into(),
            token_key: "token-key-secret".into(),
            operator_token_hash: "operator-hash-secret".into(),
            created_at_ms: 0,
        };
        let commands = [
            Command::CreateAccount {
                user_id,
                name: "Ada".into(),
                email: "ada@example.com".into(),
                password_hash: "$argon2id$secret".into(),
                sshkey: "ssh-ed25519 AAAA".into(),
                max_accounts: None,
            },
            Command::CreateSocket {
                user_id,
                socket: socket.clone(),
                limits: SocketLimits::default(),
                first_tunnel: None,
            },
            Command::Bootstrap(config),
        ];
        let each = commands.iter().map(|cmd| Request { request_id: None, at_ms: 0, cmd: cmd.clone() }).collect();
        let batch = Request { request_id: None, at_ms: 0, cmd: Command::Batch(each) };
        let printed = format!("{batch:?} {batch} {:?}", commands[1]);
        for secret in ["argon2id", "hmac-sha256", "PRIVATE KEY", "secret", "bob"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains(&user_id.to_string()) && printed.contains("CreateAccount"), "{printed}");
    }
}
