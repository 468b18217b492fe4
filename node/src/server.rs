//! Start-up, background duties and graceful shutdown of one node.
//!
//! Order on start: bind listeners (a busy port fails before any state is touched), open
//! storage, start Raft and the internal server, form or join the cluster, serve the API.
//! Order on shutdown: stop accepting, drain in-flight requests (bounded), stop Raft, close
//! storage.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use mysocket_api::internal::internal_server::InternalServer;
use mysocket_raft_store::Command;
use mysocket_raft_store::NodeRecord;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::BasicNode;
use openraft::Instant as _;
use openraft::ServerState;
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::now_ms;
use crate::cluster::MembershipChange;
use crate::cluster::Node;
use crate::cluster::NodeRef;
use crate::cluster::Retry;
use crate::config::Config;
use crate::config::Membership;
use crate::internal::CheckCredential;
use crate::internal::InternalService;
use crate::peers::Peers;
use crate::peers::MAX_MESSAGE;
use crate::raft_net::from_blob;
use crate::raft_net::to_blob;
use crate::raft_net::NetworkFactory;
use crate::tunnels::Holdings;

/// How long in-flight requests get to finish after SIGTERM.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen for {what} on {addr}"))
}

fn raft_config(cfg: &Config) -> anyhow::Result<Arc<openraft::Config>> {
    let election = cfg.election_timeout.as_millis() as u64;
    let c = openraft::Config {
        cluster_name: "mysocket".into(),
        heartbeat_interval: cfg.heartbeat.as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_threshold),
        // Keep some log after a snapshot so a briefly lagging follower catches up from the log,
        // but never more than the threshold, so a long-gone one needs the snapshot.
        max_in_snapshot_log_to_keep: (cfg.snapshot_threshold / 5).min(1000),
        install_snapshot_timeout: 10_000,
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    Ok(Arc::new(c.validate().context("raft configuration")?))
}

/// Runs a node until `shutdown` resolves, then shuts it down gracefully.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    crate::planted::plant(cfg.planted_bug.as_deref().and_then(crate::planted::Bug::named));
    // Before the SSH port opens: every claim this process makes is stamped later than this.
    let started_ms = now_ms();
    let api_listener = bind(cfg.api_addr, "the API").await?;
    let raft_listener = bind(cfg.raft_addr, "Raft").await?;
    let ssh_listener = bind(cfg.ssh_addr, "SSH").await?;
    let http_listener = bind(cfg.http_addr, "public HTTP").await?;
    let https_listener = bind(cfg.https_addr, "public HTTPS").await?;
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;

    let (log_store, state_machine) = mysocket_raft_store::open(&cfg.data_dir)
        .with_context(|| format!("cannot open the data in {}", cfg.data_dir.display()))?;
    let registry = state_machine.registry();
    let peers = Peers::new(&cfg.cluster_secret.0, cfg.internal_tls.as_ref()).map_err(anyhow::Error::msg)?;
    let network = NetworkFactory { peers: peers.clone(), snapshot_chunk: cfg.snapshot_chunk };
    let raft = mysocket_raft_store::Raft::new(cfg.id, raft_config(&cfg)?, network, log_store, state_machine.clone())
        .await
        .context("start raft")?;
    let node: NodeRef = Arc::new_cyclic(|me| Node {
        id: cfg.id,
        config: cfg.clone(),
        raft: raft.clone(),
        registry,
        state_machine,
        peers,
        batcher: crate::batch::Batcher::start(me.clone()),
        applied_cache: Default::default(),
        limits: crate::limits::Limits::new(&cfg.rate_limits),
    });

    let root = CancellationToken::new();
    let tasks = TaskTracker::new();

    let holdings = Arc::new(crate::tunnels::Holdings::default());

    // The internal port: gRPC (Raft and control calls) and relays.
    {
        let secret = Arc::new(cfg.cluster_secret.0.as_bytes().to_vec());
        let svc = tonic::service::interceptor::InterceptedService::new(
            InternalServer::new(InternalService { node: node.clone() })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            CheckCredential { secret: secret.clone() },
        );
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(crate::peers::STREAM_WINDOW)
            .initial_connection_window_size(crate::peers::CONNECTION_WINDOW)
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            // Peers are few; these bound what one connection can ask of the node.
            .max_concurrent_streams(1024)
            .http2_max_header_list_size(16 * 1024)
            .add_service(svc);
        let tls = match &cfg.internal_tls {
            Some(t) => Some(crate::tls::internal_acceptor(t).map_err(anyhow::Error::msg).context("internal TLS")?),
            None => None,
        };
        let (grpc_tx, grpc_rx) = tokio::sync::mpsc::channel(64);
        let stop = root.child_token();
        tasks.spawn(async move {
            let incoming = tokio_stream::wrappers::ReceiverStream::new(grpc_rx);
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop.cancelled()).await {
                tracing::error!(error = %e, "internal server failed");
            }
        });
        let (h, stop) = (holdings.clone(), root.child_token());
        tasks.spawn(async move { crate::internal::serve_port(raft_listener, tls, grpc_tx, h, secret, stop).await });
    }

    match &cfg.membership {
        Membership::Initial(members) => {
            if !raft.is_initialized().await.context("raft state")? {
                let nodes: BTreeMap<u64, BasicNode> =
                    members.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
                tracing::info!(?members, "initializing a new cluster");
                if let Err(e) = raft.initialize(nodes).await {
                    // Every initial member initializes with the same list; a peer may have
                    // already replicated it to us.
                    tracing::info!(error = %e, "initialize skipped");
                }
            }
        }
        Membership::Join(peers) => {
            let (node, peers, stop) = (node.clone(), peers.clone(), root.child_token());
            tasks.spawn(async move { join(node, peers, stop).await });
        }
        Membership::Existing => tracing::info!("restarting with existing state"),
    }

    {
        let (node, h, stop) = (node.clone(), holdings.clone(), root.child_token());
        tasks.spawn(async move { duties(node, h, started_ms, stop).await });
    }
    {
        // Failed logins go to the other members, so the limit per account is the cluster's.
        let (n, stop) = (node.clone(), root.child_token());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => tell_failed_logins(&n),
                }
            }
        });
    }
    {
        // The rate limits forget callers that went quiet.
        let (n, stop) = (node.clone(), root.child_token());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => n.limits.prune(),
                }
            }
        });
    }

    // Data plane: SSH tunnels, the tunnels held here, public HTTP(S), tcp/tls sockets.
    {
        let (n, h, stop) = (node.clone(), holdings.clone(), root.child_token());
        tasks.spawn(async move { crate::ssh::serve(n, ssh_listener, h, stop).await });
        let (n, h, stop) = (node.clone(), holdings.clone(), root.child_token());
        tasks.spawn(async move { crate::tunnels::watch(n, h, stop).await });
        let (n, h, stop) = (node.clone(), holdings.clone(), root.child_token());
        tasks.spawn(async move { crate::tunnels::fence(n, h, stop).await });
        let (n, h, stop) = (node.clone(), holdings.clone(), root.child_token());
        tasks.spawn(async move { crate::proxy::serve_http(n, h, http_listener, stop).await });
        let (https_tls, raw_tls): (crate::tls::Slot, crate::tls::Slot) = Default::default();
        let (n, a, b, stop) = (node.clone(), https_tls.clone(), raw_tls.clone(), root.child_token());
        tasks.spawn(async move { crate::tls::load_when_ready(n, a, b, stop).await });
        let (n, h, t, stop) = (node.clone(), holdings.clone(), https_tls, root.child_token());
        tasks.spawn(async move { crate::proxy::serve_https(n, h, t, https_listener, stop).await });
        let (n, h, t, stop) = (node.clone(), holdings, raw_tls, root.child_token());
        tasks.spawn(async move { crate::tcp::reconcile(n, h, t, stop).await });
    }

    // REST API.
    {
        let api_tls: crate::tls::Slot = Default::default();
        let (n, t, stop) = (node.clone(), api_tls.clone(), root.child_token());
        tasks.spawn(async move { crate::tls::load_api(n, t, stop).await });
        let (n, stop) = (node.clone(), root.child_token());
        tasks.spawn(async move { crate::http::serve(n, api_listener, api_tls, stop).await });
    }

    tracing::info!(id = cfg.id, api = %cfg.api_addr, raft = %cfg.raft_addr, "node started");
    shutdown.await;

    tracing::info!("shutting down: no new connections, draining");
    root.cancel();
    tasks.close();
    if tokio::time::timeout(DRAIN_GRACE, tasks.wait()).await.is_err() {
        tracing::warn!("some requests did not finish within {DRAIN_GRACE:?}");
    }
    tracing::info!("stopping raft");
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    drop(node);
    tracing::info!("stopped");
    Ok(())
}

/// Asks a running cluster to add this node, over the internal port of one of `peers` (with
/// the cluster credential; any member forwards it to the leader), until it is a member, the
/// cluster refuses for good, or we are stopped.
async fn join(node: NodeRef, peers: Vec<String>, stop: CancellationToken) {
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
/// own addresses registered and releases the claims of its previous process.
async fn duties(node: NodeRef, holdings: Arc<Holdings>, started_ms: u64, stop: CancellationToken) {
    let mut metrics = node.raft.metrics();
    let mut leading = None;
    let mut token_checked = false;
    loop {
        if !token_checked {
            token_checked = check_operator_token(&node);
        }
        if let Err(e) = duty_pass(&node, &mut leading).await {
            tracing::debug!(error = %e, "duty pass");
        }
        if let Err(e) = release_orphans(&node, &holdings, started_ms).await {
            tracing::debug!(error = %e, "releasing the claims of a previous process");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = metrics.changed() => {}
        }
    }
}

/// Warns when this node's operator token file holds a token that is not the cluster's (the
/// cluster keeps the one it was bootstrapped with). Returns whether the check could be made.
fn check_operator_token(node: &NodeRef) -> bool {
    let Some(hash) = node.read(|r| r.config().map(|c| c.operator_token_hash.clone())) else { return false };
    let file = node.config.operator_token_file.display();
    match &node.config.operator_token {
        Some(t) if !crate::auth::is_operator_token(&hash, &t.0) => tracing::warn!(
            %file,
            "the operator token in this file is not the cluster's; operator calls need the token the cluster was \
             bootstrapped with"
        ),
        _ => {}
    }
    true
}

/// Releases the tunnels the registry says this node holds that no session of this process
/// holds: claims of its previous process, which no client can use any more. A node restarted
/// within the leader's liveness timeout, or a whole cluster restarted, is never taken for
/// silent, and without this its old claims would stay until their clients came back — for an
/// `ssh -R` that does not come back, forever, and every node would relay to a session that is
/// gone (502) instead of answering that the socket has no live tunnel (503). Only claims
/// stamped before this process started count (claims carry the claiming node's clock), so a
/// claim of ours whose answer is still on its way is never taken for an orphan; the release
/// names the epoch, so a newer claim is never undone.
async fn release_orphans(node: &NodeRef, holdings: &Holdings, started_ms: u64) -> anyhow::Result<()> {
    if node.metrics().current_leader.is_none() || !node.is_member() {
        return Ok(());
    }
    let orphans: Vec<(uuid::Uuid, u64)> = node.read(|r| {
        r.sessions()
            .filter(|s| s.node_id == node.id && s.since_ms < started_ms)
            .map(|s| (s.tunnel_id, s.epoch))
            .collect()
    });
    for (tunnel_id, epoch) in orphans {
        if holdings.get(&tunnel_id).is_some_and(|h| h.epoch == epoch) {
            continue;
        }
        node.write(Command::ReleaseTunnel { tunnel_id, node_id: node.id, epoch }).await?;
        crate::metrics::get().orphan_released();
        tracing::info!(%tunnel_id, epoch, "released a tunnel claimed by this node's previous process");
    }
    Ok(())
}

/// The operator token the leader gives a cluster that has none: the one in the operator token
/// file if there is one, else a fresh token written there (readable by the node's user only).
/// Also whether this call wrote the file.
fn operator_token_to_give(cfg: &Config) -> anyhow::Result<(String, bool)> {
    let path = &cfg.operator_token_file;
    if let Some(t) = crate::config::read_operator_token(path, &cfg.cluster_secret.0)? {
        return Ok((t, false));
    }
    let t = crate::auth::new_operator_token();
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
    let hash = crate::auth::operator_token_hash(&token);
    let material =
        crate::bootstrap::generate(&cfg.domain, cfg.tcp_ports, now_ms(), &hash).map_err(anyhow::Error::msg)?;
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

/// `leading`: the term this node leads and since when (kept between passes by the caller).
async fn duty_pass(node: &NodeRef, leading: &mut Option<(u64, Instant)>) -> anyhow::Result<()> {
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
    if let (ServerState::Leader, Some((_, since))) = (m.state, *leading) {
        if let Some(heartbeats) = &m.heartbeat {
            for (id, last) in heartbeats.iter() {
                let silent = match last {
                    Some(t) => t.elapsed() > LIVENESS_TIMEOUT,
                    None => since.elapsed() > LIVENESS_TIMEOUT,
                };
                let holds = node.read(|r| r.sessions_on(*id) > 0);
                if *id != node.id && silent && holds {
                    // Proposed here, never forwarded: a leader that lost its term meanwhile
                    // (paused, then resumed to find a new leader) must not have the new leader
                    // release a node that is alive; its proposal fails or never commits.
                    tracing::warn!(node = id, "node stopped answering; releasing its tunnels");
                    let cmd = Command::SetNodeAlive { node_id: *id, alive: false };
                    let req = mysocket_raft_store::Request {
                        request_id: Some(uuid::Uuid::new_v4().to_string()),
                        at_ms: crate::cluster::now_ms(),
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
                let hash = crate::auth::operator_token_hash(&token);
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
fn tell_failed_logins(node: &NodeRef) {
    let keys = node.limits.take_failed_logins();
    if keys.is_empty() {
        return;
    }
    let blob = crate::raft_net::to_blob(&keys);
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
