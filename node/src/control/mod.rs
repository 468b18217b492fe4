//! The node's handle on the replicated registry: writes from any node (forwarded to the
//! leader inside the cluster, so callers never see "not leader"), linearizable reads
//! (ReadIndex, also from followers), and membership changes. Around it: [`batch`] (group
//! commit: a node's concurrent writes leave as one Raft entry), [`service`] (the internal gRPC
//! service other members call), [`duties`] (joining, registering this node's addresses,
//! bootstrapping the cluster's secrets, releasing silent nodes' tunnels as leader),
//! [`bootstrap`] (the secrets themselves), [`applied`] (each member's applied index),
//! [`auth`] (passwords, tokens, the operator credential) and [`limits`] (what a caller may make
//! the node do). It knows nothing of SSH, HTTP or relays' payloads.

pub mod applied;
pub mod auth;
pub mod batch;
pub mod bootstrap;
pub mod duties;
pub mod history;
pub mod limits;
pub mod recent;
pub mod service;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use mysocket_api::internal::Empty;
use mysocket_raft_store::Command;
use mysocket_raft_store::NodeId;
use mysocket_raft_store::Raft;
use mysocket_raft_store::Registry;
use mysocket_raft_store::Request;
use mysocket_raft_store::Response;
use mysocket_raft_store::SharedRegistry;
use mysocket_raft_store::StateMachine;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::BasicNode;
use openraft::ChangeMembers;
use openraft::ReadPolicy;
use openraft::ServerState;
use serde::Deserialize;
use serde::Serialize;

use crate::config::Config;
use crate::control::batch::Batcher;
use crate::net::peers::Peers;
use crate::net::raft::from_blob;
use crate::net::raft::to_blob;

/// How long a write or read waits for a leader before giving up with 503.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long a forwarded write waits for this node to apply it before answering.
const READ_YOUR_WRITES: Duration = Duration::from_secs(1);

/// Why a write or read could not be served; all map to 503 (try again).
#[derive(Debug, thiserror::Error, Clone, Serialize, Deserialize)]
pub enum ClusterError {
    #[error("the cluster has no leader right now; try again shortly")]
    NoLeader,
    #[error("the cluster did not confirm the operation in time; it may or may not have been applied")]
    Timeout,
    #[error("this node is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Membership(String),
}

/// Membership changes, carried to the leader over the internal port.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MembershipChange {
    Add { id: NodeId, raft_addr: String },
    Remove { id: NodeId },
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Everything a subsystem needs to reach the registry.
pub struct Node {
    pub id: NodeId,
    pub config: Config,
    pub raft: Raft,
    pub registry: SharedRegistry,
    pub state_machine: StateMachine,
    pub peers: Arc<Peers>,
    /// Every write of this node leaves through this queue, batched (group commit).
    pub batcher: Batcher,
    /// The members' applied indexes for `GET /cluster`, reused for a second.
    pub applied_cache: crate::control::applied::AppliedCache,
    /// What the API lets one caller cost: password hashing, rate limits.
    pub limits: crate::control::limits::Limits,
    /// The last log lines of the tunnels held here.
    pub recent: crate::control::recent::Recent,
    /// The last hour of this node's figures, for the operators' charts.
    pub history: crate::control::history::History,
    /// The cluster's identity provider, when the operator configured one.
    pub oidc: Option<Arc<crate::net::oidc::Provider>>,
}

pub type NodeRef = Arc<Node>;

impl Node {
    /// A snapshot of this node's Raft metrics.
    pub fn metrics(&self) -> openraft::RaftMetrics<mysocket_raft_store::TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Reads the local replica. Callers that answer API calls go through
    /// [`Node::linearizable`] first.
    pub fn read<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&self.registry.read().expect("registry lock"))
    }

    /// The leader's id and raft address, if this node knows one. Borrows the metrics instead
    /// of cloning them: it runs on every write and read.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    async fn wait_for_leader(&self, deadline: Instant) -> Result<(NodeId, String), ClusterError> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClusterError::NoLeader);
            }
            // Wake on any metrics change or after a short while, whichever comes first.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
        }
    }

    /// Proposes a command with a fresh request id.
    pub async fn write(&self, cmd: Command) -> Result<Response, ClusterError> {
        self.write_as(cmd, None).await
    }

    /// Proposes a command under `request_id` (a fresh one if none): the registry applies a
    /// request id once, and answers a repeat with the first answer.
    pub async fn write_as(&self, cmd: Command, request_id: Option<String>) -> Result<Response, ClusterError> {
        let request_id = request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.write_request(Request { request_id: Some(request_id), at_ms: now_ms(), cmd }).await
    }

    /// Proposes a request and waits for it to be applied, batched with this node's other
    /// writes and forwarded to the leader as needed. Retries reuse the request id, so a write
    /// that landed before a failure is not applied twice.
    pub async fn write_request(&self, req: Request) -> Result<Response, ClusterError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            self.wait_for_leader(deadline).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = match tokio::time::timeout(left, self.batcher.submit(self, req.clone())).await {
                Ok(answer) => answer,
                Err(_) => Err("the write was not answered in time".to_string()),
            };
            match attempt {
                Ok(r) => return Ok(r),
                Err(e) if Instant::now() >= deadline => {
                    tracing::warn!(error = %e, "write gave up");
                    return Err(ClusterError::Timeout);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "write attempt failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Proposes on this node, which must be the leader: the answer, and the log index it was
    /// applied at.
    pub async fn write_local(&self, req: Request) -> Result<(Response, u64), String> {
        if crate::planted::on(crate::planted::Bug::EarlyAck) {
            // Planted bug: answer from a private copy of the registry at once and let Raft
            // catch up in the background, before any other node has the entry.
            let mut copy = self.registry.read().expect("registry lock").clone();
            let response = copy.apply(&req, &mut Default::default());
            let raft = self.raft.clone();
            tokio::spawn(async move {
                let _ = raft.client_write(req).await;
            });
            return Ok((response, 0));
        }
        match self.raft.client_write(req).await {
            Ok(r) => Ok((r.data, r.log_id.index)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Proposes through the leader at `addr`. Once it answers, waits (briefly) until this node
    /// has applied the write too, so whoever wrote through this node reads it back here — the
    /// public proxy routes from this node's replica.
    pub(crate) async fn forward_write(&self, addr: &str, req: &Request, deadline: Instant) -> Result<Response, String> {
        let mut client = self.peers.client(addr).map_err(|s| s.message().to_string())?;
        let left = deadline.saturating_duration_since(Instant::now());
        let fut = client.client_write(to_blob(req));
        let (response, index): (Response, u64) = match tokio::time::timeout(left, fut).await {
            Err(_) => return Err("forwarded write timed out".into()),
            Ok(Err(s)) => return Err(format!("leader at {addr}: {}", s.message())),
            Ok(Ok(r)) => from_blob(r.get_ref()).map_err(|s| s.message().to_string())?,
        };
        // A node cut off from the leader answers anyway: the write is committed.
        self.applied_at_least(index, READ_YOUR_WRITES).await;
        Ok(response)
    }

    /// Returns once this node's state machine reflects every write acknowledged before the call
    /// began (ReadIndex: the leader confirms it still leads, then we wait to apply its commit
    /// index).
    pub async fn linearizable(&self) -> Result<(), ClusterError> {
        if crate::planted::on(crate::planted::Bug::StaleRead) {
            return Ok(());
        }
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let (leader, addr) = self.wait_for_leader(deadline).await?;
            match self.read_index(leader, &addr, deadline).await {
                Ok(index) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    return match self.applied_at_least(index, left).await {
                        true => Ok(()),
                        false => Err(ClusterError::Timeout),
                    };
                }
                Err(e) if Instant::now() >= deadline => {
                    tracing::warn!(error = %e, "read index gave up");
                    return Err(ClusterError::Timeout);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "read index failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Whether this node's registry reflects the entry at `index` within `within` (waiting on
    /// the state machine itself: Raft's metrics learn of an apply a few task hops later).
    async fn applied_at_least(&self, index: u64, within: Duration) -> bool {
        let mut applied = self.state_machine.applied();
        let reached = tokio::time::timeout(within, applied.wait_for(|&i| i >= index)).await;
        reached.is_ok_and(|r| r.is_ok())
    }

    /// Whether a leader confirms, within `within`, that it still leads a quorum: the first half
    /// of a ReadIndex, without waiting for this node to apply (a node catching up is in touch).
    pub async fn leader_confirms(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let Ok((leader, addr)) = self.wait_for_leader(deadline).await else { return false };
        let left = deadline.saturating_duration_since(Instant::now());
        matches!(tokio::time::timeout(left, self.read_index(leader, &addr, deadline)).await, Ok(Ok(_)))
    }

    /// ReadIndex on `leader` (at `addr`), this node or another.
    async fn read_index(&self, leader: NodeId, addr: &str, deadline: Instant) -> Result<u64, String> {
        if leader == self.id {
            self.read_index_local().await
        } else {
            self.read_index_remote(addr, deadline).await
        }
    }

    /// ReadIndex on the leader: the log index a linearizable read must wait for.
    pub async fn read_index_local(&self) -> Result<u64, String> {
        let (read_log_id, _applied) =
            self.raft.get_read_log_id(ReadPolicy::ReadIndex).await.map_err(|e| e.to_string())?;
        Ok(read_log_id.log_id().index)
    }

    async fn read_index_remote(&self, addr: &str, deadline: Instant) -> Result<u64, String> {
        let mut client = self.peers.client(addr).map_err(|s| s.message().to_string())?;
        let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(3));
        match tokio::time::timeout(left, client.read_index(Empty {})).await {
            Err(_) => Err("read index timed out".into()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Ok(Ok(r)) => Ok(r.get_ref().index),
        }
    }

    /// Applies a membership change, on the leader (forwarding there if needed).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (leader, addr) = self.wait_for_leader(deadline).await?;
            let r = if leader == self.id {
                self.change_membership_local(&change).await
            } else {
                self.forward_membership(&addr, &change).await
            };
            match r {
                Ok(()) => return Ok(()),
                Err(Retry::Final(m)) => return Err(ClusterError::Membership(m)),
                Err(Retry::Again(m)) if Instant::now() >= deadline => {
                    tracing::warn!(error = %m, "membership change gave up");
                    return Err(ClusterError::Timeout);
                }
                Err(Retry::Again(m)) => {
                    tracing::info!(error = %m, "membership change failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn forward_membership(&self, addr: &str, change: &MembershipChange) -> Result<(), Retry> {
        let mut client = self.peers.client(addr).map_err(|s| Retry::Again(s.message().to_string()))?;
        match tokio::time::timeout(Duration::from_secs(60), client.change_membership(to_blob(change))).await {
            Err(_) => Err(Retry::Again("forwarded membership change timed out".into())),
            Ok(Err(s)) => Err(Retry::Again(s.message().to_string())),
            Ok(Ok(r)) => {
                from_blob::<Result<(), Retry>>(r.get_ref()).map_err(|s| Retry::Again(s.message().to_string()))?
            }
        }
    }

    /// Runs a membership change on this node (the leader).
    pub async fn change_membership_local(&self, change: &MembershipChange) -> Result<(), Retry> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Err(Retry::Again("not the leader any more".into()));
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let nodes: BTreeMap<NodeId, String> = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        match change {
            MembershipChange::Add { id, raft_addr } => {
                if self.read(|r| r.is_retired(*id)) {
                    return Err(Retry::Final(format!(
                        "node id {id} was removed from this cluster and cannot be reused"
                    )));
                }
                if let Some(existing) = nodes.get(id) {
                    if existing != raft_addr {
                        return Err(Retry::Final(format!("node id {id} is already a member at {existing}")));
                    }
                    if voters.contains(id) {
                        return Ok(());
                    }
                }
                if let Some((other, _)) = nodes.iter().find(|(i, a)| *a == raft_addr && *i != id) {
                    return Err(Retry::Final(format!("{raft_addr} already belongs to node {other}")));
                }
                tracing::info!(id, raft_addr, "adding node as learner");
                self.raft
                    .add_learner(*id, BasicNode { addr: raft_addr.clone() }, true)
                    .await
                    .map_err(|e| Retry::Again(e.to_string()))?;
                tracing::info!(id, "promoting node to voter");
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false)
                    .await
                    .map_err(|e| Retry::Again(e.to_string()))?;
                Ok(())
            }
            MembershipChange::Remove { id } => {
                if nodes.contains_key(id) {
                    if voters.contains(id) && voters.len() == 1 {
                        return Err(Retry::Final("cannot remove the last voter".into()));
                    }
                    tracing::info!(id, "removing node");
                    let change = if voters.contains(id) {
                        ChangeMembers::RemoveVoters(BTreeSet::from([*id]))
                    } else {
                        ChangeMembers::RemoveNodes(BTreeSet::from([*id]))
                    };
                    self.raft.change_membership(change, false).await.map_err(|e| Retry::Again(e.to_string()))?;
                } else if !self.read(|r| r.is_retired(*id) || r.node(*id).is_some()) {
                    return Err(Retry::Final(format!("node {id} is not a member")));
                }
                Ok(())
            }
        }
    }

    /// Whether this node is a voter or learner of the current membership.
    pub fn is_member(&self) -> bool {
        self.raft.metrics().borrow_watched().membership_config.membership().get_node(&self.id).is_some()
    }
}

/// The outcome of one membership-change attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Retry {
    /// Cannot succeed as asked (bad id, reused id...).
    Final(String),
    /// May succeed later (no leader, leader changed...).
    Again(String),
}

/// The public URLs of a socket, as shown in banners and listings.
pub fn public_urls(node: &NodeRef, s: &mysocket_raft_store::Socket) -> Vec<String> {
    match s.socket_type {
        mysocket_raft_store::SocketType::Http | mysocket_raft_store::SocketType::Https => vec![
            format!("http://{}:{}/", s.dnsname, node.config.http_addr.port()),
            format!("https://{}:{}/", s.dnsname, node.config.https_addr.port()),
        ],
        mysocket_raft_store::SocketType::Tcp => vec![format!("tcp://{}:{}", s.dnsname, s.port.unwrap_or(0))],
        mysocket_raft_store::SocketType::Tls => vec![format!("tls://{}:{}", s.dnsname, s.port.unwrap_or(0))],
    }
}
