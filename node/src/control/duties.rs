//! What a member does in the background: join a running cluster, keep its addresses
//! registered, tell the others of failed logins; and, as leader, generate the cluster's
//! secrets and release the tunnels of nodes that stopped answering.

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use mysocket_raft_store::Command;
use mysocket_raft_store::NodeRecord;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::Instant as _;
use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::now_ms;
use crate::control::MembershipChange;
use crate::control::NodeRef;
use crate::control::Retry;
use crate::net::raft::from_blob;
use crate::net::raft::to_blob;

/// Asks a running cluster to add this node, over the internal port of one of `peers` (with
/// the cluster credential; any member forwards it to the leader), until it is a member, the
/// cluster refuses for good, or we are stopped.
pub async fn join(node: NodeRef, peers: Vec<String>, stop: CancellationToken) {
    let ask = MembershipChange::Add { id: node.id, raft_addr: node.config.advertise_raft_addr.clone() };
    let mut delay = Duration::from_millis(200);
    loop {
        if node.is_member() {
            tracing::info!("joined the cluster");
            return;
        }
        for addr in &peers {
            let answer = match node.peers.client(addr) {
                Ok(mut c) => match tokio::time::timeout(Duration::from_secs(70), c.join(to_blob(&ask))).await {
                    Ok(Ok(r)) => from_blob::<Result<(), Retry>>(r.get_ref())
                        .unwrap_or_else(|s| Err(Retry::Again(s.message().to_string()))),
                    Ok(Err(s)) => Err(Retry::Again(s.message().to_string())),
                    Err(_) => Err(Retry::Again("no answer within 70 s".into())),
                },
                Err(s) => Err(Retry::Again(s.message().to_string())),
            };
            match answer {
                Ok(()) => {
                    tracing::info!(via = %addr, "joined the cluster");
                    return;
                }
                Err(Retry::Final(m)) => {
                    tracing::error!(via = %addr, error = %m, "the cluster refused to add this node");
                    return;
                }
                Err(Retry::Again(m)) => tracing::warn!(via = %addr, error = %m, "join failed; retrying"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Background duties: the first leader generates the cluster secrets, every member keeps its
/// own addresses registered; run after every change of Raft's state and every second.
pub async fn run(node: NodeRef, stop: CancellationToken) {
    let mut metrics = node.raft.metrics();
    let mut leading = None;
    let mut released_at = None;
    let mut token_checked = false;
    loop {
        if !token_checked {
            token_checked = check_operator_token(&node);
        }
        if let Err(e) = duty_pass(&node, &mut leading, &mut released_at).await {
            tracing::debug!(error = %e, "duty pass");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = metrics.changed() => {}
        }
    }
}

/// Every `period` until `stop`: `f`.
pub async fn every(period: Duration, stop: CancellationToken, mut f: impl FnMut()) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => f(),
        }
    }
}

/// Warns when this node's operator token file holds a token that is not the cluster's (the
/// cluster keeps the one it was bootstrapped with). Returns whether the check could be made.
fn check_operator_token(node: &NodeRef) -> bool {
    let Some(hash) = node.read(|r| r.config().map(|c| c.operator_token_hash.clone())) else { return false };
    let file = node.config.operator_token_file.display();
    match &node.config.operator_token {
        Some(t) if !crate::control::auth::is_operator_token(&hash, &t.0) => tracing::warn!(
            %file,
            "the operator token in this file is not the cluster's; operator calls need the token the cluster was \
             bootstrapped with"
        ),
        _ => {}
    }
    true
}

/// The operator token the leader gives a cluster that has none: the one in the operator token
/// file if there is one, else a fresh token written there (readable by the node's user only).
/// Also whether this call wrote the file.
fn operator_token_to_give(cfg: &Config) -> anyhow::Result<(String, bool)> {
    let path = &cfg.operator_token_file;
    if let Some(t) = crate::config::read_operator_token(path, &cfg.cluster_secret.0)? {
        return Ok((t, false));
    }
    let t = crate::control::auth::new_operator_token();
    write_private(path, &t).with_context(|| format!("cannot write the operator token to {}", path.display()))?;
    Ok((t, true))
}

/// Proposes `cmd`, which carries the hash of the operator token `written` (if this node just
/// wrote it) holds; the file goes again if the cluster took another token meanwhile.
async fn give_operator_token(node: &NodeRef, cmd: Command, hash: &str, written: bool) -> anyhow::Result<()> {
    let path = &node.config.operator_token_file;
    let answer = node.write(cmd).await;
    let ours = node.read(|r| r.config().map(|c| c.operator_token_hash == hash));
    if written && ours != Some(true) {
        let _ = std::fs::remove_file(path);
    } else if written {
        tracing::info!(file = %path.display(), "wrote the cluster's operator token; keep it safe");
    }
    answer?;
    Ok(())
}

/// The first leader generates the cluster's secrets, the operator credential among them.
async fn bootstrap(node: &NodeRef) -> anyhow::Result<()> {
    let cfg = &node.config;
    let (token, written) = operator_token_to_give(cfg)?;
    let hash = crate::control::auth::operator_token_hash(&token);
    let material =
        crate::control::bootstrap::generate(&cfg.domain, cfg.tcp_ports, now_ms(), &hash).map_err(anyhow::Error::msg)?;
    tracing::info!(domain = %cfg.domain, "bootstrapping cluster secrets");
    give_operator_token(node, Command::Bootstrap(material), &hash, written).await
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// How long the leader waits without an answer from a node before releasing its tunnels.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(3);

/// Between two attempts to release a silent node's tunnels: a pass runs on every change of
/// Raft's metrics, and a leader that has lost its quorum but not yet stepped down would
/// otherwise propose (and fail, and log) in a tight loop.
const RELEASE_RETRY: Duration = Duration::from_secs(1);

/// `leading`: the term this node leads and since when; `released_at`: when this node last
/// proposed to release a silent node (both kept between passes by the caller).
async fn duty_pass(
    node: &NodeRef,
    leading: &mut Option<(u64, Instant)>,
    released_at: &mut Option<Instant>,
) -> anyhow::Result<()> {
    let m = node.metrics();
    *leading = match *leading {
        _ if m.state != ServerState::Leader => None,
        Some((term, since)) if term == m.current_term => Some((term, since)),
        _ => Some((m.current_term, Instant::now())),
    };
    if m.current_leader.is_none() || !node.is_member() {
        return Ok(());
    }
    // Leader-driven release: a node that stopped answering Raft (dead, paused, cut off from
    // the majority) loses its tunnel sessions, so clients reconnecting elsewhere take over.
    // A leader has heard from nobody when it starts: a node it has no answer from yet is
    // silent only once the leader has led that long (an election, or a leader restarted in
    // its term, must not release the tunnels of every live node).
    let may_release = released_at.is_none_or(|at| at.elapsed() >= RELEASE_RETRY);
    if let (ServerState::Leader, Some((_, since)), true) = (m.state, *leading, may_release) {
        if let Some(heartbeats) = &m.heartbeat {
            for (id, last) in heartbeats.iter() {
                let silent = match last {
                    Some(t) => t.elapsed() > LIVENESS_TIMEOUT,
                    None => since.elapsed() > LIVENESS_TIMEOUT,
                };
                // Released once: holding sessions, or still listed as alive (which the
                // cluster's DNS answers with).
                let holds = node.read(|r| r.sessions_on(*id) > 0 || r.node(*id).is_some_and(|n| n.alive));
                if *id != node.id && silent && holds {
                    // Proposed here, never forwarded: a leader that lost its term meanwhile
                    // (paused, then resumed to find a new leader) must not have the new leader
                    // release a node that is alive; its proposal fails or never commits.
                    tracing::warn!(node = id, "node stopped answering; releasing its tunnels");
                    *released_at = Some(Instant::now());
                    let cmd = Command::SetNodeAlive { node_id: *id, alive: false };
                    let req = mysocket_raft_store::Request {
                        request_id: Some(uuid::Uuid::new_v4().to_string()),
                        at_ms: crate::control::now_ms(),
                        cmd,
                    };
                    if let Err(e) = node.write_local(req).await {
                        tracing::info!(node = id, error = %e, "not released: this node no longer leads");
                        return Ok(());
                    }
                }
            }
        }
    }
    if m.state == ServerState::Leader {
        match node.read(|r| r.config().map(|c| c.operator_token_hash.is_empty())) {
            None => bootstrap(node).await?,
            // A cluster bootstrapped before operator tokens existed gets one.
            Some(true) => {
                let (token, written) = operator_token_to_give(&node.config)?;
                let hash = crate::control::auth::operator_token_hash(&token);
                give_operator_token(node, Command::SetOperatorToken { hash: hash.clone() }, &hash, written).await?;
            }
            Some(false) => {}
        }
    }
    let cfg = &node.config;
    let me = NodeRecord {
        node_id: node.id,
        raft_addr: cfg.advertise_raft_addr.clone(),
        api_addr: cfg.advertised(cfg.api_addr),
        ssh_addr: cfg.advertised(cfg.ssh_addr),
        http_addr: cfg.advertised(cfg.http_addr),
        https_addr: cfg.advertised(cfg.https_addr),
        public_ips: cfg.public_ips.clone(),
        alive: true,
        changed_at_ms: 0,
    };
    let registered = node.read(|r| {
        r.node(node.id).map(|n| {
            n.alive
                && n.raft_addr == me.raft_addr
                && n.api_addr == me.api_addr
                && n.ssh_addr == me.ssh_addr
                && n.http_addr == me.http_addr
                && n.https_addr == me.https_addr
                && n.public_ips == me.public_ips
        })
    });
    if registered != Some(true) && !node.read(|r| r.is_retired(node.id)) {
        node.write(Command::RegisterNode(me)).await?;
        tracing::info!("registered node addresses");
    }
    Ok(())
}

/// Sends the failed logins seen here since the last call to every other member, best effort:
/// a member that misses a batch only allows a few more guesses.
pub fn tell_failed_logins(node: &NodeRef) {
    let keys = node.limits.take_failed_logins();
    if keys.is_empty() {
        return;
    }
    let blob = crate::net::raft::to_blob(&keys);
    let members: Vec<String> = {
        let m = node.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != node.id)
            .map(|(_, n)| n.addr.clone())
            .collect()
    };
    for addr in members {
        let Ok(mut client) = node.peers.client(&addr) else { continue };
        let blob = blob.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.failed_logins(blob)).await;
        });
    }
}
