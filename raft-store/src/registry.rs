//! The registry as a deterministic state machine: `apply` is a pure function of the current
//! state and the command, so every replica that applies the same log ends in the same state.
//!
//! The state is kept in memory for fast reads and persisted as rows (`table/key -> json`);
//! [`Registry::apply`] reports which rows it touched so the store writes exactly those, in the
//! same RocksDB batch as `last_applied`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;
use sha2::Sha256;
use uuid::Uuid;

use crate::model::*;

/// How many answered request ids are remembered for deduplication.
pub const DEDUP_CAPACITY: usize = 65_536;

/// First and last relay port handed to tunnels (the `local_port` a client forwards).
pub const RELAY_PORT_MIN: u16 = 10_000;
pub const RELAY_PORT_MAX: u16 = 60_000;

/// Identifies one persisted row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowKey {
    Config,
    Account(Uuid),
    Socket(Uuid),
    Tunnel(Uuid),
    Session(Uuid),
    Epoch(Uuid),
    Node(NodeId),
    Retired(NodeId),
    Request(String),
    Acme,
    Credential(Uuid),
}

impl RowKey {
    pub fn encode(&self) -> String {
        match self {
            RowKey::Config => "config".to_string(),
            RowKey::Account(id) => format!("acct/{id}"),
            RowKey::Socket(id) => format!("sock/{id}"),
            RowKey::Tunnel(id) => format!("tun/{id}"),
            RowKey::Session(id) => format!("sess/{id}"),
            RowKey::Epoch(id) => format!("epoch/{id}"),
            RowKey::Node(id) => format!("node/{id:020}"),
            RowKey::Retired(id) => format!("retired/{id:020}"),
            RowKey::Request(id) => format!("req/{id}"),
            RowKey::Acme => "acme".to_string(),
            RowKey::Credential(id) => format!("cred/{id}"),
        }
    }

    pub fn decode(s: &str) -> Option<RowKey> {
        let (table, key) = s.split_once('/').unwrap_or((s, ""));
        let uuid = || key.parse::<Uuid>().ok();
        let num = || key.parse::<u64>().ok();
        Some(match table {
            "config" => RowKey::Config,
            "acct" => RowKey::Account(uuid()?),
            "sock" => RowKey::Socket(uuid()?),
            "tun" => RowKey::Tunnel(uuid()?),
            "sess" => RowKey::Session(uuid()?),
            "epoch" => RowKey::Epoch(uuid()?),
            "node" => RowKey::Node(num()?),
            "retired" => RowKey::Retired(num()?),
            "req" => RowKey::Request(key.to_string()),
            "acme" => RowKey::Acme,
            "cred" => RowKey::Credential(uuid()?),
            _ => return None,
        })
    }
}

/// An answered request kept for deduplication, with the order it was answered in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Answered {
    seq: u64,
    response: Response,
}

/// Errors loading persisted rows.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("unknown row key {0:?}")]
    UnknownKey(String),
    #[error("row {key} is corrupt: {source}")]
    Corrupt { key: String, source: serde_json::Error },
}

/// The whole replicated registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    config: Option<ClusterConfig>,
    accounts: BTreeMap<Uuid, Account>,
    sockets: BTreeMap<Uuid, Socket>,
    tunnels: BTreeMap<Uuid, Tunnel>,
    sessions: BTreeMap<Uuid, TunnelSession>,
    /// Last epoch handed out per tunnel; survives release so epochs only grow.
    epochs: BTreeMap<Uuid, u64>,
    nodes: BTreeMap<NodeId, NodeRecord>,
    retired: BTreeSet<NodeId>,
    acme: AcmeState,
    credentials: BTreeMap<Uuid, Credential>,
    answered: BTreeMap<String, Answered>,
    next_seq: u64,
    /// Index of the last log entry applied to this registry (not a row: kept in the state
    /// machine's metadata).
    applied_index: u64,

    // Indexes, derived from the tables above and rebuilt on load.
    emails: BTreeMap<String, Uuid>,
    user_names: BTreeMap<String, Uuid>,
    dnsnames: BTreeMap<String, Uuid>,
    ports: BTreeMap<u16, Uuid>,
    /// Custom domains claimed, verified or not: unique in the cluster.
    custom_domains: BTreeMap<String, Uuid>,
    relay_ports: BTreeMap<(Uuid, u16), Uuid>,
    /// `(user, socket)`: an account's sockets without scanning every socket.
    user_sockets: BTreeSet<(Uuid, Uuid)>,
    /// `(socket, tunnel)`: a socket's tunnels without scanning every tunnel.
    socket_tunnels: BTreeSet<(Uuid, Uuid)>,
    /// `(user, credential)`: an account's tokens and keys.
    user_credentials: BTreeSet<(Uuid, Uuid)>,
    answered_order: BTreeMap<u64, String>,
}

/// Rows touched by one or more applies.
pub type Dirty = BTreeSet<RowKey>;

/// Every `(id, _)` pair of a two-id index.
fn id_range(id: &Uuid) -> std::ops::RangeInclusive<(Uuid, Uuid)> {
    (*id, Uuid::nil())..=(*id, Uuid::max())
}

fn email_key(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

impl Registry {
    // ----- reads -----

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn set_applied_index(&mut self, index: u64) {
        self.applied_index = index;
    }

    pub fn config(&self) -> Option<&ClusterConfig> {
        self.config.as_ref()
    }

    pub fn account(&self, user_id: &Uuid) -> Option<&Account> {
        self.accounts.get(user_id)
    }

    pub fn account_by_email(&self, email: &str) -> Option<&Account> {
        self.emails.get(&email_key(email)).and_then(|id| self.accounts.get(id))
    }

    pub fn account_by_user_name(&self, user_name: &str) -> Option<&Account> {
        self.user_names.get(user_name).and_then(|id| self.accounts.get(id))
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    pub fn socket(&self, socket_id: &Uuid) -> Option<&Socket> {
        self.sockets.get(socket_id)
    }

    pub fn socket_by_dnsname(&self, dnsname: &str) -> Option<&Socket> {
        // Names are kept in lower case; most lookups already are (no copy for those).
        let id = if dnsname.bytes().any(|b| b.is_ascii_uppercase()) {
            self.dnsnames.get(&dnsname.to_ascii_lowercase())
        } else {
            self.dnsnames.get(dnsname)
        };
        id.and_then(|id| self.sockets.get(id))
    }

    /// The socket a visitor's Host or SNI names: by its name in the cluster's domain, or by
    /// its custom domain once verified.
    pub fn socket_by_host(&self, host: &str) -> Option<&Socket> {
        if let Some(s) = self.socket_by_dnsname(host) {
            return Some(s);
        }
        let id = self.custom_domains.get(&host.to_ascii_lowercase())?;
        self.sockets.get(id).filter(|s| s.custom_domain.as_ref().is_some_and(|d| d.verified))
    }

    /// Sockets with a custom domain not verified yet.
    pub fn unverified_domains(&self) -> impl Iterator<Item = &Socket> {
        self.custom_domains
            .values()
            .filter_map(|id| self.sockets.get(id))
            .filter(|s| s.custom_domain.as_ref().is_some_and(|d| !d.verified))
    }

    /// Sockets with a verified custom domain.
    pub fn verified_domains(&self) -> impl Iterator<Item = &Socket> {
        self.custom_domains
            .values()
            .filter_map(|id| self.sockets.get(id))
            .filter(|s| s.custom_domain.as_ref().is_some_and(|d| d.verified))
    }

    pub fn socket_by_port(&self, port: u16) -> Option<&Socket> {
        self.ports.get(&port).and_then(|id| self.sockets.get(id))
    }

    /// The sockets holding a port from the cluster's range (tcp and tls), by port.
    pub fn port_sockets(&self) -> impl Iterator<Item = &Socket> {
        self.ports.values().filter_map(|id| self.sockets.get(id))
    }

    pub fn sockets(&self) -> impl Iterator<Item = &Socket> {
        self.sockets.values()
    }

    pub fn sockets_of(&self, user_id: &Uuid) -> Vec<&Socket> {
        self.user_sockets.range(id_range(user_id)).filter_map(|(_, s)| self.sockets.get(s)).collect()
    }

    /// A socket with its tunnels, ordered by creation.
    pub fn socket_view(&self, socket_id: &Uuid) -> Option<SocketView> {
        let socket = self.sockets.get(socket_id)?.clone();
        Some(SocketView { tunnels: self.tunnels_of(socket_id), socket })
    }

    pub fn tunnel(&self, tunnel_id: &Uuid) -> Option<&Tunnel> {
        self.tunnels.get(tunnel_id)
    }

    pub fn tunnels(&self) -> impl Iterator<Item = &Tunnel> {
        self.tunnels.values()
    }

    pub fn tunnels_of(&self, socket_id: &Uuid) -> Vec<Tunnel> {
        let mut v: Vec<Tunnel> =
            self.socket_tunnels.range(id_range(socket_id)).filter_map(|(_, t)| self.tunnels.get(t)).cloned().collect();
        v.sort_by_key(|t| (t.created_at_ms, t.tunnel_id));
        v
    }

    /// The tunnel an SSH client may forward: `(user, relay port)` maps to at most one tunnel.
    pub fn tunnel_by_relay_port(&self, user_id: &Uuid, local_port: u16) -> Option<&Tunnel> {
        self.relay_ports.get(&(*user_id, local_port)).and_then(|id| self.tunnels.get(id))
    }

    pub fn session(&self, tunnel_id: &Uuid) -> Option<&TunnelSession> {
        self.sessions.get(tunnel_id)
    }

    pub fn sessions(&self) -> impl Iterator<Item = &TunnelSession> {
        self.sessions.values()
    }

    pub fn sessions_on(&self, node_id: NodeId) -> usize {
        self.sessions.values().filter(|s| s.node_id == node_id).count()
    }

    pub fn last_epoch(&self, tunnel_id: &Uuid) -> u64 {
        self.epochs.get(tunnel_id).copied().unwrap_or(0)
    }

    pub fn node(&self, node_id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&node_id)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    pub fn acme(&self) -> &AcmeState {
        &self.acme
    }

    /// The DNS-01 values served at `_acme-challenge.<owner>` (`owner` in the zone of `domain`,
    /// without it; the apex is `domain` itself). The wildcard's are served at the apex's.
    pub fn acme_challenges(&self, owner: &str, domain: &str) -> Vec<String> {
        let name = if owner == domain { domain.to_string() } else { format!("{owner}.{domain}") };
        self.acme.dns_challenges.get(&name).cloned().unwrap_or_default()
    }

    pub fn credential(&self, id: &Uuid) -> Option<&Credential> {
        self.credentials.get(id)
    }

    /// An account's tokens and API keys, oldest first.
    pub fn credentials_of(&self, user_id: &Uuid) -> Vec<&Credential> {
        let mut v: Vec<&Credential> =
            self.user_credentials.range(id_range(user_id)).filter_map(|(_, c)| self.credentials.get(c)).collect();
        v.sort_by_key(|c| (c.created_at_ms, c.id));
        v
    }

    pub fn is_retired(&self, node_id: NodeId) -> bool {
        self.retired.contains(&node_id)
    }

    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (self.accounts.len(), self.sockets.len(), self.tunnels.len(), self.sessions.len())
    }

    // ----- apply -----

    /// Applies one request; every row it changes is added to `dirty`.
    pub fn apply(&mut self, req: &Request, dirty: &mut Dirty) -> Response {
        if let Some(id) = &req.request_id {
            if let Some(a) = self.answered.get(id) {
                return a.response.clone();
            }
        }
        let response = self.apply_cmd(&req.cmd, req.at_ms, dirty);
        // Only answers that changed something are remembered: a rejection changed nothing, so
        // running the retry afresh is the same as the first attempt never having happened.
        if let (Some(id), false) = (&req.request_id, matches!(response, Response::Rejected(_))) {
            self.remember(id.clone(), response.clone(), dirty);
        }
        response
    }

    fn remember(&mut self, id: String, response: Response, dirty: &mut Dirty) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.answered_order.insert(seq, id.clone());
        self.answered.insert(id.clone(), Answered { seq, response });
        dirty.insert(RowKey::Request(id));
        while self.answered.len() > DEDUP_CAPACITY {
            let Some((_, oldest)) = self.answered_order.pop_first() else { break };
            self.answered.remove(&oldest);
            dirty.insert(RowKey::Request(oldest));
        }
    }

    fn apply_cmd(&mut self, cmd: &Command, now: u64, dirty: &mut Dirty) -> Response {
        match self.try_apply(cmd, now, dirty) {
            Ok(r) => r,
            Err(rej) => Response::Rejected(rej),
        }
    }

    fn try_apply(&mut self, cmd: &Command, now: u64, dirty: &mut Dirty) -> Result<Response, Rejection> {
        match cmd {
            // Each request in a batch is deduplicated and answered on its own; the batch itself
            // is never rejected, so one bad request does not fail its neighbours.
            Command::Batch(reqs) => Ok(Response::Batch(reqs.iter().map(|r| self.apply(r, dirty)).collect())),
            Command::Bootstrap(cfg) => {
                if self.config.is_none() {
                    if cfg.tcp_port_min > cfg.tcp_port_max {
                        return Err(Rejection::Invalid("tcp port range is empty".into()));
                    }
                    self.config = Some(cfg.clone());
                    dirty.insert(RowKey::Config);
                }
                Ok(Response::Done)
            }
            Command::SetOperatorToken { hash } => match &mut self.config {
                Some(cfg) if cfg.operator_token_hash.is_empty() => {
                    cfg.operator_token_hash = hash.clone();
                    dirty.insert(RowKey::Config);
                    Ok(Response::Done)
                }
                Some(_) => Err(Rejection::Conflict("the cluster has an operator token already".into())),
                None => Err(Rejection::Invalid("the cluster has not bootstrapped yet".into())),
            },
            Command::RegisterNode(rec) => {
                if self.retired.contains(&rec.node_id) {
                    return Err(Rejection::Conflict(format!(
                        "node id {} was removed and cannot be reused",
                        rec.node_id
                    )));
                }
                let mut rec = rec.clone();
                rec.alive = true;
                rec.changed_at_ms = now;
                self.nodes.insert(rec.node_id, rec.clone());
                dirty.insert(RowKey::Node(rec.node_id));
                Ok(Response::Done)
            }
            Command::SetNodeAlive { node_id, alive } => {
                match self.nodes.get_mut(node_id) {
                    Some(rec) if rec.alive != *alive => {
                        rec.alive = *alive;
                        rec.changed_at_ms = now;
                        dirty.insert(RowKey::Node(*node_id));
                    }
                    Some(_) => {}
                    // An unregistered node can still hold sessions: releasing them is allowed.
                    None if !*alive => {}
                    None => return Err(Rejection::NotFound(format!("node {node_id} is not registered"))),
                }
                if *alive {
                    Ok(Response::Done)
                } else {
                    Ok(Response::Released(self.release_node(*node_id, dirty)))
                }
            }
            Command::RetireNode { node_id } => {
                if self.retired.insert(*node_id) {
                    dirty.insert(RowKey::Retired(*node_id));
                }
                if self.nodes.remove(node_id).is_some() {
                    dirty.insert(RowKey::Node(*node_id));
                }
                Ok(Response::Released(self.release_node(*node_id, dirty)))
            }
            Command::Acme(change) => self.apply_acme(change, now, dirty),
            Command::IssueCredential(c) => self.issue_credential(c, now, dirty),
            Command::RevokeCredential { user_id, id } => match self.credentials.get(id) {
                Some(c) if &c.user_id == user_id => {
                    self.drop_credential(id, dirty);
                    Ok(Response::Done)
                }
                _ => Err(Rejection::NotFound("no such token or API key".into())),
            },
            Command::CreateAccount { user_id, name, email, password_hash, sshkey, max_accounts } => {
                let user_name = user_id.simple().to_string();
                if let Some(max) = max_accounts {
                    if self.accounts.len() as u64 >= *max {
                        return Err(Rejection::Limit(format!(
                            "this cluster holds its maximum of {max} accounts; ask an operator"
                        )));
                    }
                }
                if self.accounts.contains_key(user_id) || self.user_names.contains_key(&user_name) {
                    return Err(Rejection::Conflict("user id already exists".into()));
                }
                let ek = email_key(email);
                if self.emails.contains_key(&ek) {
                    return Err(Rejection::Conflict(format!("an account with email {email} already exists")));
                }
                let acct = Account {
                    user_id: *user_id,
                    name: name.clone(),
                    email: email.clone(),
                    user_name: user_name.clone(),
                    password_hash: password_hash.clone(),
                    sshkey: sshkey.clone(),
                    created_at_ms: now,
                };
                self.emails.insert(ek, *user_id);
                self.user_names.insert(user_name, *user_id);
                self.accounts.insert(*user_id, acct.clone());
                dirty.insert(RowKey::Account(*user_id));
                Ok(Response::Account(acct))
            }
            Command::CreateSocket { user_id, socket, limits, first_tunnel } => {
                self.create_socket(user_id, socket, limits, first_tunnel.as_ref(), now, dirty)
            }
            Command::SetSocketAccess { user_id, socket_id, access } => {
                let s = self.owned_socket(user_id, socket_id)?;
                if access.protected && s.socket_type.needs_port() {
                    return Err(Rejection::Invalid("Basic auth works on http and https sockets only".into()));
                }
                if access.cloud_auth_enabled && s.socket_type.needs_port() {
                    return Err(Rejection::Invalid("cloud authentication works on http and https sockets only".into()));
                }
                if access.proxy_protocol.is_some() && !s.socket_type.needs_port() {
                    return Err(Rejection::Invalid("the PROXY protocol works on tcp and tls sockets only".into()));
                }
                if !access.upstream.is_http1() && s.socket_type.needs_port() {
                    return Err(Rejection::Invalid("h2c works on http and https sockets only".into()));
                }
                self.sockets.get_mut(socket_id).expect("owned above").access = access.clone();
                dirty.insert(RowKey::Socket(*socket_id));
                Ok(Response::Socket(self.socket_view(socket_id).expect("owned above")))
            }
            Command::SetSocketDomain { user_id, socket_id, domain } => {
                let old = self.owned_socket(user_id, socket_id)?.custom_domain.clone();
                if let Some(d) = domain {
                    self.domain_free(&d.name, Some(socket_id))?;
                }
                if let Some(old) = old {
                    self.custom_domains.remove(&old.name);
                }
                if let Some(d) = domain {
                    self.custom_domains.insert(d.name.clone(), *socket_id);
                }
                self.sockets.get_mut(socket_id).expect("owned above").custom_domain = domain.clone();
                dirty.insert(RowKey::Socket(*socket_id));
                Ok(Response::Socket(self.socket_view(socket_id).expect("owned above")))
            }
            Command::VerifyDomain { socket_id, name } => {
                match self.sockets.get_mut(socket_id).and_then(|s| s.custom_domain.as_mut()) {
                    Some(d) if &d.name == name => d.verified = true,
                    _ => return Err(Rejection::NotFound(format!("no socket claims {name}"))),
                }
                dirty.insert(RowKey::Socket(*socket_id));
                Ok(Response::Done)
            }
            Command::DeleteSocket { user_id, socket_id } => {
                let s = self.owned_socket(user_id, socket_id)?.clone();
                if let Some(d) = &s.custom_domain {
                    self.custom_domains.remove(&d.name);
                }
                let mut ended = Vec::new();
                for t in self.tunnels_of(socket_id) {
                    ended.extend(self.remove_tunnel(&t, dirty));
                }
                self.dnsnames.remove(&s.dnsname.to_ascii_lowercase());
                if let Some(p) = s.port {
                    self.ports.remove(&p);
                }
                self.sockets.remove(socket_id);
                self.user_sockets.remove(&(s.user_id, *socket_id));
                dirty.insert(RowKey::Socket(*socket_id));
                Ok(Response::Deleted(ended))
            }
            Command::CreateTunnel { user_id, socket_id, tunnel, limits } => {
                self.owned_socket(user_id, socket_id)?;
                let existing = self.socket_tunnels.range(id_range(socket_id)).count();
                if existing as u32 >= limits.max_tunnels_per_socket {
                    return Err(Rejection::Limit(format!(
                        "a socket may have at most {} tunnels",
                        limits.max_tunnels_per_socket
                    )));
                }
                let t = self.add_tunnel(user_id, socket_id, tunnel, now, dirty)?;
                Ok(Response::Tunnel(t))
            }
            Command::DeleteTunnel { user_id, socket_id, tunnel_id } => {
                self.owned_socket(user_id, socket_id)?;
                let t = match self.tunnels.get(tunnel_id) {
                    Some(t) if &t.socket_id == socket_id => t.clone(),
                    _ => return Err(Rejection::NotFound("tunnel not found".into())),
                };
                Ok(Response::Deleted(self.remove_tunnel(&t, dirty).into_iter().collect()))
            }
            Command::ClaimTunnel { user_id, tunnel_id, node_id } => {
                match self.tunnels.get(tunnel_id) {
                    Some(t) if &t.user_id == user_id => {}
                    _ => return Err(Rejection::NotFound("tunnel not found".into())),
                }
                if self.retired.contains(node_id) {
                    return Err(Rejection::Invalid(format!("node {node_id} was removed")));
                }
                let epoch = self.last_epoch(tunnel_id) + 1;
                self.epochs.insert(*tunnel_id, epoch);
                dirty.insert(RowKey::Epoch(*tunnel_id));
                let session = TunnelSession { tunnel_id: *tunnel_id, node_id: *node_id, epoch, since_ms: now };
                let superseded = self.sessions.insert(*tunnel_id, session.clone());
                dirty.insert(RowKey::Session(*tunnel_id));
                Ok(Response::Claimed { session, superseded })
            }
            Command::ReleaseTunnel { tunnel_id, node_id, epoch } => match self.sessions.get(tunnel_id) {
                Some(s) if s.node_id == *node_id && s.epoch == *epoch => {
                    let s = self.sessions.remove(tunnel_id).expect("checked above");
                    dirty.insert(RowKey::Session(*tunnel_id));
                    Ok(Response::Released(vec![s]))
                }
                Some(s) => Err(Rejection::Stale(format!(
                    "tunnel is held by node {} with epoch {}, not node {node_id} epoch {epoch}",
                    s.node_id, s.epoch
                ))),
                None => Err(Rejection::Stale("tunnel has no session".into())),
            },
        }
    }

    fn apply_acme(&mut self, change: &AcmeChange, now: u64, dirty: &mut Dirty) -> Result<Response, Rejection> {
        // A lease lapses at its time, or when its holder is marked dead or removed.
        let live = |id: &NodeId| self.nodes.get(id).is_some_and(|n| n.alive) && !self.retired.contains(id);
        let held_elsewhere = match (self.acme.lease, change) {
            (Some((holder, until)), AcmeChange::Lease { node_id, .. }) => {
                (holder != *node_id && until > now && live(&holder)).then_some(holder)
            }
            _ => None,
        };
        let a = &mut self.acme;
        match change {
            AcmeChange::Lease { node_id, until_ms } => match held_elsewhere {
                Some(holder) => return Err(Rejection::Conflict(format!("node {holder} holds the ACME lease"))),
                None => a.lease = Some((*node_id, *until_ms)),
            },
            AcmeChange::Account { directory, credentials } => {
                a.directory = Some(directory.clone());
                a.account = Some(credentials.clone());
            }
            AcmeChange::DnsChallenge { name, value, serve } => {
                let values = a.dns_challenges.entry(name.clone()).or_default();
                values.retain(|v| v != value);
                if *serve {
                    values.push(value.clone());
                }
                if values.is_empty() {
                    a.dns_challenges.remove(name);
                }
            }
            AcmeChange::HttpChallenge { token, key_authorization } => match key_authorization {
                Some(k) => {
                    a.http_challenges.insert(token.clone(), k.clone());
                }
                None => {
                    a.http_challenges.remove(token);
                }
            },
            AcmeChange::Issued { name, certificate } => {
                a.failures.remove(name);
                a.certificates.insert(name.clone(), certificate.clone());
            }
            AcmeChange::Failed { name, message } => {
                a.failures.insert(name.clone(), (now, message.clone()));
            }
        }
        dirty.insert(RowKey::Acme);
        Ok(Response::Done)
    }

    /// A custom domain may be claimed: by nobody else, and not a name of the cluster's.
    fn domain_free(&self, name: &str, by: Option<&Uuid>) -> Result<(), Rejection> {
        match self.custom_domains.get(name) {
            Some(id) if Some(id) != by => {
                return Err(Rejection::Conflict(format!("the domain {name} is claimed by another socket")))
            }
            _ => {}
        }
        let domain = self.config.as_ref().map(|c| c.domain.as_str()).unwrap_or_default();
        if name == domain || name.ends_with(&format!(".{domain}")) {
            return Err(Rejection::Invalid(format!("{name} is in the cluster's domain: choose a subdomain instead")));
        }
        Ok(())
    }

    fn owned_socket(&self, user_id: &Uuid, socket_id: &Uuid) -> Result<&Socket, Rejection> {
        match self.sockets.get(socket_id) {
            Some(s) if &s.user_id == user_id => Ok(s),
            // Another account's socket looks exactly like a missing one.
            _ => Err(Rejection::NotFound("socket not found".into())),
        }
    }

    fn create_socket(
        &mut self,
        user_id: &Uuid,
        new: &NewSocket,
        limits: &SocketLimits,
        first_tunnel: Option<&NewTunnel>,
        now: u64,
        dirty: &mut Dirty,
    ) -> Result<Response, Rejection> {
        if !self.accounts.contains_key(user_id) {
            return Err(Rejection::NotFound("account not found".into()));
        }
        if self.sockets.contains_key(&new.socket_id) {
            return Err(Rejection::Conflict("socket id already exists".into()));
        }
        if let Some(t) = first_tunnel {
            if self.tunnels.contains_key(&t.tunnel_id) {
                return Err(Rejection::Conflict("tunnel id already exists".into()));
            }
        }
        let Some(cfg) = &self.config else {
            return Err(Rejection::Invalid("the cluster is not bootstrapped yet".into()));
        };
        let domain = cfg.domain.clone();
        let (pmin, pmax) = (cfg.tcp_port_min, cfg.tcp_port_max);

        let tcp_kind = new.socket_type.needs_port();
        let owned = self.sockets_of(user_id).into_iter().filter(|s| s.socket_type.needs_port() == tcp_kind);
        let (count, max) = (owned.count() as u32, if tcp_kind { limits.max_tcp } else { limits.max_http });
        if count >= max {
            let kind = if tcp_kind { "tcp/tls" } else { "http/https" };
            return Err(Rejection::Limit(format!("an account may have at most {max} {kind} sockets")));
        }

        let dnsname = if new.label_chosen {
            let name = format!("{}.{domain}", new.dnsname_hint.to_ascii_lowercase());
            if self.dnsnames.contains_key(&name) {
                return Err(Rejection::Conflict(format!("the name {name} is taken")));
            }
            name
        } else {
            self.free_dnsname(&new.dnsname_hint, &domain)?
        };
        let port = match (tcp_kind, new.port_chosen) {
            (false, _) => None,
            (true, false) => Some(self.free_port(new.port_hint, pmin, pmax)?),
            (true, true) if !(pmin..=pmax).contains(&new.port_hint) => {
                return Err(Rejection::Invalid(format!(
                    "port {} is outside the cluster's range {pmin}-{pmax}",
                    new.port_hint
                )));
            }
            (true, true) if self.ports.contains_key(&new.port_hint) => {
                return Err(Rejection::Conflict(format!("port {} is taken", new.port_hint)));
            }
            (true, true) => Some(new.port_hint),
        };

        let socket = Socket {
            socket_id: new.socket_id,
            user_id: *user_id,
            name: new.name.clone(),
            dnsname: dnsname.clone(),
            socket_type: new.socket_type,
            port,
            access: new.access.clone(),
            created_at_ms: now,
            custom_domain: new.custom_domain.clone().map(|d| CustomDomain { verified: false, ..d }),
        };
        // The tunnel's relay port and the custom domain are checked before anything is
        // written, so a rejection changes nothing.
        if let Some(t) = first_tunnel {
            self.free_relay_port(user_id, t.local_port_hint)?;
        }
        if let Some(d) = &new.custom_domain {
            self.domain_free(&d.name, None)?;
            self.custom_domains.insert(d.name.clone(), new.socket_id);
        }
        self.dnsnames.insert(dnsname.to_ascii_lowercase(), new.socket_id);
        if let Some(p) = port {
            self.ports.insert(p, new.socket_id);
        }
        self.sockets.insert(new.socket_id, socket);
        self.user_sockets.insert((*user_id, new.socket_id));
        dirty.insert(RowKey::Socket(new.socket_id));
        if let Some(t) = first_tunnel {
            self.add_tunnel(user_id, &new.socket_id, t, now, dirty)?;
        }
        Ok(Response::Socket(self.socket_view(&new.socket_id).expect("just inserted")))
    }

    /// The hint's label if free, else the next free 4-digit suffix after it.
    fn free_dnsname(&self, hint: &str, domain: &str) -> Result<String, Rejection> {
        let hint = hint.to_ascii_lowercase();
        let (stem, digits) = match hint.rsplit_once('-') {
            Some((stem, d)) if d.len() == 4 && d.bytes().all(|b| b.is_ascii_digit()) => {
                (stem.to_string(), d.parse::<u32>().unwrap_or(0))
            }
            _ => (hint.clone(), 0),
        };
        for i in 0..10_000u32 {
            let name = format!("{stem}-{:04}.{domain}", (digits + i) % 10_000);
            if !self.dnsnames.contains_key(&name) {
                return Ok(name);
            }
        }
        Err(Rejection::Limit(format!("no free name left for {stem}")))
    }

    fn free_port(&self, hint: u16, min: u16, max: u16) -> Result<u16, Rejection> {
        let span = u32::from(max - min) + 1;
        let start = u32::from(hint.clamp(min, max) - min);
        for i in 0..span {
            let p = min + ((start + i) % span) as u16;
            if !self.ports.contains_key(&p) {
                return Ok(p);
            }
        }
        Err(Rejection::Limit("no free tcp port left in the cluster's range".into()))
    }

    fn free_relay_port(&self, user_id: &Uuid, hint: u16) -> Result<u16, Rejection> {
        let span = u32::from(RELAY_PORT_MAX - RELAY_PORT_MIN) + 1;
        let start = u32::from(hint.clamp(RELAY_PORT_MIN, RELAY_PORT_MAX) - RELAY_PORT_MIN);
        for i in 0..span {
            let p = RELAY_PORT_MIN + ((start + i) % span) as u16;
            if !self.relay_ports.contains_key(&(*user_id, p)) {
                return Ok(p);
            }
        }
        Err(Rejection::Limit("no free relay port left for this account".into()))
    }

    fn add_tunnel(
        &mut self,
        user_id: &Uuid,
        socket_id: &Uuid,
        new: &NewTunnel,
        now: u64,
        dirty: &mut Dirty,
    ) -> Result<Tunnel, Rejection> {
        if self.tunnels.contains_key(&new.tunnel_id) {
            return Err(Rejection::Conflict("tunnel id already exists".into()));
        }
        let local_port = self.free_relay_port(user_id, new.local_port_hint)?;
        let t = Tunnel {
            tunnel_id: new.tunnel_id,
            socket_id: *socket_id,
            user_id: *user_id,
            local_port,
            created_at_ms: now,
        };
        self.relay_ports.insert((*user_id, local_port), new.tunnel_id);
        self.tunnels.insert(new.tunnel_id, t.clone());
        self.socket_tunnels.insert((*socket_id, new.tunnel_id));
        dirty.insert(RowKey::Tunnel(new.tunnel_id));
        Ok(t)
    }

    /// Removes a tunnel and its session, if it had one: returned, for its node to close.
    fn remove_tunnel(&mut self, t: &Tunnel, dirty: &mut Dirty) -> Option<TunnelSession> {
        self.relay_ports.remove(&(t.user_id, t.local_port));
        self.tunnels.remove(&t.tunnel_id);
        self.socket_tunnels.remove(&(t.socket_id, t.tunnel_id));
        dirty.insert(RowKey::Tunnel(t.tunnel_id));
        let ended = self.sessions.remove(&t.tunnel_id);
        if ended.is_some() {
            dirty.insert(RowKey::Session(t.tunnel_id));
        }
        if self.epochs.remove(&t.tunnel_id).is_some() {
            dirty.insert(RowKey::Epoch(t.tunnel_id));
        }
        ended
    }

    fn issue_credential(&mut self, c: &Credential, now: u64, dirty: &mut Dirty) -> Result<Response, Rejection> {
        if !self.accounts.contains_key(&c.user_id) {
            return Err(Rejection::NotFound("account not found".into()));
        }
        if self.credentials.contains_key(&c.id) {
            return Err(Rejection::Conflict("credential id already exists".into()));
        }
        // Checked first, changing nothing: a refused issue leaves even the expired ones.
        let held: Vec<Credential> = self.credentials_of(&c.user_id).into_iter().cloned().collect();
        let live: Vec<&Credential> =
            held.iter().filter(|o| o.kind == c.kind && o.expires_at_ms.is_none_or(|e| e > now)).collect();
        if c.kind == CredentialKind::ApiKey {
            if live.iter().any(|o| o.name == c.name) {
                return Err(Rejection::Conflict(format!(
                    "you have an API key named {:?} already; revoke it first or choose another name",
                    c.name
                )));
            }
            if live.len() >= MAX_API_KEYS_PER_ACCOUNT {
                return Err(Rejection::Limit(format!(
                    "an account holds at most {MAX_API_KEYS_PER_ACCOUNT} API keys; revoke one first"
                )));
            }
        }
        for old in held.iter().filter(|o| o.expires_at_ms.is_some_and(|e| e <= now)) {
            self.drop_credential(&old.id, dirty);
        }
        if c.kind == CredentialKind::Token {
            let excess = (live.len() + 1).saturating_sub(MAX_TOKENS_PER_ACCOUNT);
            for old in live.iter().take(excess) {
                self.drop_credential(&old.id, dirty);
            }
        }
        let mut c = c.clone();
        c.created_at_ms = now;
        self.user_credentials.insert((c.user_id, c.id));
        self.credentials.insert(c.id, c.clone());
        dirty.insert(RowKey::Credential(c.id));
        Ok(Response::Credential(c))
    }

    fn drop_credential(&mut self, id: &Uuid, dirty: &mut Dirty) {
        if let Some(c) = self.credentials.remove(id) {
            self.user_credentials.remove(&(c.user_id, c.id));
            dirty.insert(RowKey::Credential(c.id));
        }
    }

    fn release_node(&mut self, node_id: NodeId, dirty: &mut Dirty) -> Vec<TunnelSession> {
        let held: Vec<Uuid> = self.sessions.values().filter(|s| s.node_id == node_id).map(|s| s.tunnel_id).collect();
        held.iter()
            .filter_map(|id| {
                dirty.insert(RowKey::Session(*id));
                self.sessions.remove(id)
            })
            .collect()
    }

    // ----- persistence -----

    /// The JSON value of one row, or `None` if the row no longer exists.
    pub fn row(&self, key: &RowKey) -> Option<String> {
        fn j<T: Serialize>(v: Option<&T>) -> Option<String> {
            v.map(|v| serde_json::to_string(v).expect("registry rows always serialize"))
        }
        match key {
            RowKey::Config => j(self.config.as_ref()),
            RowKey::Account(id) => j(self.accounts.get(id)),
            RowKey::Socket(id) => j(self.sockets.get(id)),
            RowKey::Tunnel(id) => j(self.tunnels.get(id)),
            RowKey::Session(id) => j(self.sessions.get(id)),
            RowKey::Epoch(id) => j(self.epochs.get(id)),
            RowKey::Node(id) => j(self.nodes.get(id)),
            RowKey::Retired(id) => self.retired.contains(id).then(|| "true".to_string()),
            RowKey::Request(id) => j(self.answered.get(id)),
            RowKey::Acme => (self.acme != AcmeState::default()).then(|| j(Some(&self.acme))).flatten(),
            RowKey::Credential(id) => j(self.credentials.get(id)),
        }
    }

    /// Every row, in key order.
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut keys: Vec<RowKey> = Vec::new();
        keys.extend(self.config.iter().map(|_| RowKey::Config));
        keys.extend(self.accounts.keys().map(|k| RowKey::Account(*k)));
        keys.extend(self.sockets.keys().map(|k| RowKey::Socket(*k)));
        keys.extend(self.tunnels.keys().map(|k| RowKey::Tunnel(*k)));
        keys.extend(self.sessions.keys().map(|k| RowKey::Session(*k)));
        keys.extend(self.epochs.keys().map(|k| RowKey::Epoch(*k)));
        keys.extend(self.nodes.keys().map(|k| RowKey::Node(*k)));
        keys.extend(self.retired.iter().map(|k| RowKey::Retired(*k)));
        keys.extend(self.answered.keys().map(|k| RowKey::Request(k.clone())));
        keys.push(RowKey::Acme);
        keys.extend(self.credentials.keys().map(|k| RowKey::Credential(*k)));
        let mut rows: Vec<(String, String)> =
            keys.iter().filter_map(|k| self.row(k).map(|v| (k.encode(), v))).collect();
        rows.sort();
        rows
    }

    /// Rebuilds a registry (tables and indexes) from persisted rows.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Registry, LoadError> {
        fn p<T: for<'de> Deserialize<'de>>(key: &str, v: &str) -> Result<T, LoadError> {
            serde_json::from_str(v).map_err(|source| LoadError::Corrupt { key: key.to_string(), source })
        }
        let mut r = Registry::default();
        for (k, v) in rows {
            match RowKey::decode(k).ok_or_else(|| LoadError::UnknownKey(k.to_string()))? {
                RowKey::Config => r.config = Some(p(k, v)?),
                RowKey::Account(id) => {
                    r.accounts.insert(id, p(k, v)?);
                }
                RowKey::Socket(id) => {
                    r.sockets.insert(id, p(k, v)?);
                }
                RowKey::Tunnel(id) => {
                    r.tunnels.insert(id, p(k, v)?);
                }
                RowKey::Session(id) => {
                    r.sessions.insert(id, p(k, v)?);
                }
                RowKey::Epoch(id) => {
                    r.epochs.insert(id, p(k, v)?);
                }
                RowKey::Node(id) => {
                    r.nodes.insert(id, p(k, v)?);
                }
                RowKey::Retired(id) => {
                    r.retired.insert(id);
                }
                RowKey::Request(id) => {
                    r.answered.insert(id, p(k, v)?);
                }
                RowKey::Acme => r.acme = p(k, v)?,
                RowKey::Credential(id) => {
                    r.credentials.insert(id, p(k, v)?);
                }
            }
        }
        r.reindex();
        Ok(r)
    }

    fn reindex(&mut self) {
        self.emails = self.accounts.values().map(|a| (email_key(&a.email), a.user_id)).collect();
        self.user_names = self.accounts.values().map(|a| (a.user_name.clone(), a.user_id)).collect();
        self.dnsnames = self.sockets.values().map(|s| (s.dnsname.to_ascii_lowercase(), s.socket_id)).collect();
        self.ports = self.sockets.values().filter_map(|s| s.port.map(|p| (p, s.socket_id))).collect();
        self.custom_domains = self
            .sockets
            .values()
            .filter_map(|s| s.custom_domain.as_ref().map(|d| (d.name.clone(), s.socket_id)))
            .collect();
        self.relay_ports = self.tunnels.values().map(|t| ((t.user_id, t.local_port), t.tunnel_id)).collect();
        self.user_sockets = self.sockets.values().map(|s| (s.user_id, s.socket_id)).collect();
        self.socket_tunnels = self.tunnels.values().map(|t| (t.socket_id, t.tunnel_id)).collect();
        self.user_credentials = self.credentials.values().map(|c| (c.user_id, c.id)).collect();
        self.answered_order = self.answered.iter().map(|(id, a)| (a.seq, id.clone())).collect();
        self.next_seq = self.answered.values().map(|a| a.seq + 1).max().unwrap_or(0);
    }

    /// SHA-256 over every row: equal digests at the same applied index mean equal state.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (k, v) in self.rows() {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }
}
