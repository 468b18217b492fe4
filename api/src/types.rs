//! REST types. Field names follow the original mysocket.io API exactly, misspellings included.

use serde::Deserialize;
use serde::Serialize;

/// Every error answer: `{"message": "..."}`.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

/// `GET /cluster`.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// `null` while there is no leader.
    pub leader: Option<u64>,
    pub term: u64,
    pub nodes: Vec<NodeView>,
    /// The SSH host key every node presents (OpenSSH public-key format), for clients to pin;
    /// `null` until the cluster has bootstrapped.
    #[serde(default)]
    pub ssh_host_key: Option<String>,
    /// Whether the cluster has an OpenID Connect provider: cloud authentication for sockets,
    /// and signing in to the console with it.
    #[serde(default)]
    pub identity_provider: bool,
}

impl ClusterView {
    /// Every node's SSH endpoint (`host:port`), in the order listed.
    pub fn ssh_addrs(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| !n.ssh_addr.is_empty()).map(|n| n.ssh_addr.clone()).collect()
    }
}

/// One member of the cluster, as `GET /cluster` shows it. Anyone sees a node's id and the
/// addresses clients dial; the rest (`raft_addr`, `voter`, `last_applied`, `tunnels`) only an
/// operator (absent otherwise).
#[derive(utoipa::ToSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: u64,
    /// `host:port` of the node's API as clients dial it (`--advertise-host`; never `0.0.0.0`).
    /// Empty until the node has registered its addresses.
    pub api_addr: String,
    /// The node's internal (Raft) address; operators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_addr: Option<String>,
    /// SSH tunnel endpoint of the node as clients dial it; empty until it has registered.
    #[serde(default)]
    pub ssh_addr: String,
    /// Operators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voter: Option<bool>,
    /// Operators only; absent when the node did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied: Option<u64>,
    /// Tunnel sessions the node holds; operators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnels: Option<usize>,
}

/// `POST /cluster/nodes`: add a node (as a learner, then as a voter once caught up).
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddNode {
    pub id: u64,
    pub raft_addr: String,
}

/// `GET /cluster/digest`: a hash of the whole registry at an applied index, for comparing
/// replicas.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestView {
    pub node_id: u64,
    pub last_applied: u64,
    pub digest: String,
    pub accounts: usize,
    pub sockets: usize,
    pub tunnels: usize,
    pub sessions: usize,
    /// Snapshots this node installed from a leader since it started.
    pub snapshots_installed: u64,
    /// Last log index covered by this node's own snapshot, if any.
    pub snapshot_index: Option<u64>,
    /// Last purged log index, if the log was compacted.
    pub purged_index: Option<u64>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /user`.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreate {
    /// 1 to 100 printable characters.
    #[schema(min_length = 1, max_length = 100, pattern = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$")]
    pub name: String,
    #[schema(max_length = 254, pattern = r"^[^@\s]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")]
    pub email: String,
    /// 6 to 256 characters.
    #[schema(min_length = 6, max_length = 256)]
    pub password: String,
    /// An OpenSSH public key line (ed25519, ecdsa, or rsa of 2048 bits or more).
    #[schema(min_length = 1, max_length = 16384)]
    pub sshkey: String,
}

/// A user as the API shows it (never the password hash).
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub user_id: String,
    pub name: String,
    pub email: String,
    pub user_name: String,
    pub sshkey: String,
}

/// `POST /login`.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub email: String,
    pub password: String,
}

/// `POST /login` and `POST /login/refresh` answer.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenReply {
    pub token: String,
}

/// `POST /socket` and `POST /connect`. Everything but `name` is optional; unknown fields are
/// ignored, as the original client sends extra ones.
#[derive(utoipa::ToSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketCreate {
    #[serde(default)]
    pub name: String,
    /// `http`, `https`, `tcp` or `tls`, any case; default `http`.
    #[serde(default)]
    pub socket_type: Option<String>,
    #[serde(default)]
    pub protected_socket: bool,
    #[serde(default)]
    pub protected_username: Option<String>,
    #[serde(default)]
    pub protected_password: Option<String>,
    #[serde(default)]
    pub cloud_authentication_enabled: bool,
    #[serde(default)]
    pub cloud_authentication_email_allowed_addressses: Vec<String>,
    #[serde(default)]
    pub cloud_authentication_email_allowed_domains: Vec<String>,
    /// Visitor addresses let in, as CIDR networks or single addresses (IPv4 and IPv6); empty:
    /// every address not denied. For every socket type.
    #[serde(default)]
    pub ip_allow: Vec<String>,
    /// Visitor addresses refused (CIDR or single addresses), whatever `ip_allow` says.
    #[serde(default)]
    pub ip_deny: Vec<String>,
    /// Requests (http, https) or new connections (tcp, tls) per second per visitor address,
    /// with a burst of as many at once; 0 or absent: no limit.
    #[serde(default)]
    pub rate_limit: u32,
    /// The first label of the socket's name, chosen (`demo` → `demo.<domain>`): letters,
    /// digits and inner hyphens, at most 63, unique in the cluster (409 when taken); absent:
    /// a random `<adjective>-<noun>-<4 digits>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// tcp and tls sockets: the public port, chosen from the cluster's range (409 when
    /// taken); absent: a free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A domain of your own (`app.example.com`) the socket answers to once you prove control
    /// of it (see `custom_domain` in the answer); unique in the cluster (409 when claimed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_domain: Option<String>,
    /// tcp and tls sockets: `v1` or `v2` writes a PROXY protocol header with the visitor's
    /// address to the service before the visitor's first byte; absent: none. (http and https
    /// services get the address in `X-Forwarded-For`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// http and https sockets: `http1` (default) or `h2c`, HTTP/2 without TLS to the service,
    /// for gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_protocol: Option<String>,
}

/// `PATCH /socket/{socket_id}`: the access rules to change; absent fields stay as they are.
/// A protected socket keeps its password unless a new one is given.
#[derive(utoipa::ToSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_socket: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_authentication_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_authentication_email_allowed_addressses: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_authentication_email_allowed_domains: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_allow: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_deny: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Claims this custom domain instead of the socket's current one (unverified until the
    /// proof is found); an empty value gives it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_domain: Option<String>,
    /// `v1`, `v2`, or `off` (or empty) for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// `http1` or `h2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_protocol: Option<String>,
}

/// A socket's custom domain and how to prove control of it: either DNS record below, at the
/// domain's own DNS provider. The cluster looks for it every few seconds.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomDomain {
    pub name: String,
    /// True once the proof was found: the domain then routes to the socket on every node and
    /// gets a certificate.
    pub verified: bool,
    /// A TXT record of this name ...
    pub txt_name: String,
    /// ... holding this value;
    pub txt_value: String,
    /// or a CNAME from `name` to this (the socket's name).
    pub cname_target: String,
}

/// A socket as the API shows it.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Socket {
    pub socket_id: String,
    pub dnsname: String,
    pub name: String,
    pub socket_type: String,
    /// `[80, 443]` for http/https; the allocated port for tcp/tls.
    pub socket_tcp_ports: Vec<u16>,
    pub protected_socket: bool,
    pub protected_username: String,
    /// Always empty: the cluster keeps only a salted hash of the password and never returns
    /// it (the original API returned it in clear).
    pub protected_password: String,
    pub cloud_authentication_enabled: bool,
    pub cloud_authentication_email_allowed_addressses: Vec<String>,
    pub cloud_authentication_email_allowed_domains: Vec<String>,
    /// Visitor networks let in (CIDR); empty: every address not denied.
    #[serde(default)]
    pub ip_allow: Vec<String>,
    /// Visitor networks refused (CIDR).
    #[serde(default)]
    pub ip_deny: Vec<String>,
    /// Requests or new connections per second per visitor address; 0: no limit.
    #[serde(default)]
    pub rate_limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_domain: Option<CustomDomain>,
    /// tcp and tls sockets: `v1` or `v2` when the service gets a PROXY protocol header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// http and https sockets: `http1` or `h2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_protocol: Option<String>,
    pub tunnels: Vec<Tunnel>,
    pub user_name: String,
    /// Where visitors reach the socket, as the answering node serves it: `http://` and
    /// `https://` URLs for http/https sockets (also at a verified custom domain), `tcp://` or
    /// `tls://` name and port for tcp/tls sockets.
    #[serde(default)]
    pub urls: Vec<String>,
}

/// `GET /socket/{id}/log`: each tunnel's recent log lines, as its SSH session gets them.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentLog {
    pub tunnels: Vec<TunnelLog>,
}

/// One tunnel's recent lines, from the node holding it (the last 50 of its current session);
/// none while no client holds it or its holder does not answer.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelLog {
    pub tunnel_id: String,
    /// The node holding it, when one does.
    pub node_id: Option<u64>,
    pub lines: Vec<String>,
}

/// A tunnel as the API shows it.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub tunnel_id: String,
    /// The relay port to forward with `ssh -R <local_port>:127.0.0.1:<service port>`.
    pub local_port: u16,
    /// `host:port` of an SSH endpoint of the cluster (the answering node's), as clients dial it.
    pub tunnel_server: String,
    /// The node holding the tunnel's SSH session and the session's epoch; absent while no
    /// client is connected. Every newer connection gets a higher epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<TunnelHolder>,
}

/// Who holds a tunnel: the node with the SSH session and the session's epoch.
#[derive(utoipa::ToSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelHolder {
    pub node_id: u64,
    pub epoch: u64,
}

/// A login token or an API key of an account, as `GET /credentials` lists it; the secret is
/// never shown again.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialView {
    pub id: String,
    /// `token` (from a login) or `api_key`.
    pub kind: String,
    /// An API key's name; `login` or `refresh` for a token.
    pub name: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC; `null`: until revoked.
    pub expires_at: Option<String>,
    /// The credential this request was made with.
    #[serde(default)]
    pub current: bool,
}

/// `POST /apikeys`.
#[derive(utoipa::ToSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCreate {
    /// 1 to 64 letters, digits, `-`, `_` or `.`; unique among the account's keys.
    pub name: String,
    /// Days until the key stops working (1 to 3650); absent: until revoked.
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// The answer to `POST /apikeys`: the key itself, shown this once.
#[derive(utoipa::ToSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    /// `mysk_...`: send it as `x-access-token` (mysocketctl: MYSOCKET_API_KEY).
    pub key: String,
    #[serde(flatten)]
    pub credential: CredentialView,
}
