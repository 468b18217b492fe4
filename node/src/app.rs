//! Wiring of one node and the order of its start and shutdown; it owns no logic.
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

use anyhow::Context;
use mysocket_api::internal::internal_server::InternalServer;
use openraft::BasicNode;
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::config::Membership;
use crate::control::Node;
use crate::control::NodeRef;
use crate::edge::Edge;
use crate::net::peers::Peers;
use crate::net::peers::MAX_MESSAGE;
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

/// Every listener, bound before any state is touched: a busy port fails first.
struct Listeners {
    api: TcpListener,
    internal: TcpListener,
    ssh: TcpListener,
    http: TcpListener,
    https: TcpListener,
    /// The authoritative DNS server's UDP socket and TCP listener, with `--dns-listen`.
    dns: Option<(tokio::net::UdpSocket, TcpListener)>,
}

impl Listeners {
    async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
        Ok(Listeners {
            api: bind(cfg.api_addr, "the API").await?,
            internal: bind(cfg.raft_addr, "Raft").await?,
            ssh: bind(cfg.ssh_addr, "SSH").await?,
            http: bind(cfg.http_addr, "public HTTP").await?,
            https: bind(cfg.https_addr, "public HTTPS").await?,
            dns: match &cfg.dns {
                Some(d) => Some(
                    crate::edge::dns::bind(d.listen)
                        .await
                        .with_context(|| format!("cannot listen for DNS on {} (UDP and TCP)", d.listen))?,
                ),
                None => None,
            },
        })
    }
}

/// Opens the storage and starts Raft: the node's handle on the registry.
async fn start_node(cfg: &Config) -> anyhow::Result<NodeRef> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    let (log_store, state_machine) = mysocket_raft_store::open(&cfg.data_dir)
        .with_context(|| format!("cannot open the data in {}", cfg.data_dir.display()))?;
    let registry = state_machine.registry();
    let peers = Peers::new(&cfg.cluster_secret.0, cfg.internal_tls.as_ref()).map_err(anyhow::Error::msg)?;
    let network = crate::net::raft::NetworkFactory { peers: peers.clone(), snapshot_chunk: cfg.snapshot_chunk };
    let raft = mysocket_raft_store::Raft::new(cfg.id, raft_config(cfg)?, network, log_store, state_machine.clone())
        .await
        .context("start raft")?;
    Ok(Arc::new_cyclic(|me| Node {
        id: cfg.id,
        config: cfg.clone(),
        raft,
        registry,
        state_machine,
        peers,
        batcher: crate::control::batch::Batcher::start(me.clone()),
        applied_cache: Default::default(),
        limits: crate::control::limits::Limits::new(&cfg.rate_limits),
        recent: Default::default(),
        history: Default::default(),
        oidc: cfg.oidc.clone().map(|o| Arc::new(crate::net::oidc::Provider::new(o))),
    }))
}

/// The internal port: gRPC (Raft and control calls) and relays to tunnels held here.
fn serve_internal(
    node: &NodeRef,
    holdings: &Arc<Holdings>,
    listener: TcpListener,
    root: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    let cfg = &node.config;
    let secret = Arc::new(cfg.cluster_secret.0.as_bytes().to_vec());
    let svc = tonic::service::interceptor::InterceptedService::new(
        InternalServer::new(crate::control::service::InternalService { node: node.clone() })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        crate::net::credential::CheckCredential { secret: secret.clone() },
    );
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::net::peers::STREAM_WINDOW)
        .initial_connection_window_size(crate::net::peers::CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        // Peers are few; these bound what one connection can ask of the node.
        .max_concurrent_streams(1024)
        .http2_max_header_list_size(16 * 1024)
        .add_service(svc);
    let tls = match &cfg.internal_tls {
        Some(t) => Some(crate::net::tls::internal_acceptor(t).map_err(anyhow::Error::msg).context("internal TLS")?),
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
    let (h, s) = (holdings.clone(), secret.clone());
    let relay: crate::net::port::RelayHandler =
        Arc::new(move |io, peer| Box::pin(crate::edge::relay::serve(io, peer, h.clone(), s.clone())));
    let stop = root.child_token();
    tasks.spawn(async move { crate::net::port::serve_port(listener, tls, grpc_tx, relay, secret, stop).await });
    Ok(())
}

/// Forms a new cluster, joins a running one, or goes on with the membership in the log.
async fn enter_cluster(node: &NodeRef, root: &CancellationToken, tasks: &TaskTracker) -> anyhow::Result<()> {
    match &node.config.membership {
        Membership::Initial(members) => {
            if !node.raft.is_initialized().await.context("raft state")? {
                let nodes: BTreeMap<u64, BasicNode> =
                    members.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
                tracing::info!(?members, "initializing a new cluster");
                if let Err(e) = node.raft.initialize(nodes).await {
                    // Every initial member initializes with the same list; a peer may have
                    // already replicated it to us.
                    tracing::info!(error = %e, "initialize skipped");
                }
            }
        }
        Membership::Join(peers) => {
            let (node, peers, stop) = (node.clone(), peers.clone(), root.child_token());
            tasks.spawn(async move { crate::control::duties::join(node, peers, stop).await });
        }
        Membership::Existing => tracing::info!("restarting with existing state"),
    }
    Ok(())
}

/// The members' background duties.
fn spawn_duties(node: &NodeRef, root: &CancellationToken, tasks: &TaskTracker) {
    let (n, stop) = (node.clone(), root.child_token());
    tasks.spawn(async move { crate::control::duties::run(n, stop).await });
    // Failed logins go to the other members, so the limit per account is the cluster's.
    let (n, stop) = (node.clone(), root.child_token());
    tasks.spawn(crate::control::duties::every(Duration::from_millis(250), stop, move || {
        crate::control::duties::tell_failed_logins(&n)
    }));
    // The rate limits forget callers that went quiet.
    let (n, stop) = (node.clone(), root.child_token());
    tasks.spawn(crate::control::duties::every(Duration::from_secs(10), stop, move || n.limits.prune()));
    // The operators' charts.
    let (n, stop) = (node.clone(), root.child_token());
    n.history.push(crate::control::history::sample(&n));
    tasks.spawn(crate::control::duties::every(crate::control::history::INTERVAL, stop, move || {
        n.history.push(crate::control::history::sample(&n))
    }));
}

/// Data plane: SSH tunnels, the tunnels held here, public HTTP(S), tcp/tls sockets.
fn spawn_data_plane(
    edge: &Arc<Edge>,
    l: (TcpListener, TcpListener, TcpListener),
    started_ms: u64,
    root: &CancellationToken,
    tasks: &TaskTracker,
) {
    let (ssh, http, https) = l;
    let (node, holdings) = (&edge.node, &edge.holdings);
    let (n, h, stop) = (node.clone(), holdings.clone(), root.child_token());
    tasks.spawn(async move { crate::tunnels::ssh::serve(n, ssh, h, stop).await });
    let (n, h, stop) = (node.clone(), holdings.clone(), root.child_token());
    tasks.spawn(async move { crate::tunnels::watch(n, h, stop).await });
    let (n, h, stop) = (node.clone(), holdings.clone(), root.child_token());
    tasks.spawn(async move { crate::tunnels::fence(n, h, stop).await });
    let (n, h, stop) = (node.clone(), holdings.clone(), root.child_token());
    tasks.spawn(async move { crate::tunnels::orphans::release(n, h, started_ms, stop).await });
    let (e, stop) = (edge.clone(), root.child_token());
    tasks.spawn(async move { crate::edge::listen::serve_http(e, http, stop).await });
    let (https_tls, raw_tls): (crate::net::tls::Slot, crate::net::tls::Slot) = Default::default();
    let (n, a, b, stop) = (node.clone(), https_tls.clone(), raw_tls.clone(), root.child_token());
    tasks.spawn(async move { crate::edge::certs::load_when_ready(n, a, b, stop).await });
    let (e, stop) = (edge.clone(), root.child_token());
    tasks.spawn(async move { crate::edge::listen::serve_https(e, https_tls, https, stop).await });
    let (e, stop) = (edge.clone(), root.child_token());
    tasks.spawn(async move { crate::edge::tcp::reconcile(e, raw_tls, stop).await });
}

/// The REST API, over HTTPS once its certificate is ready when it is configured.
fn spawn_api(node: &NodeRef, listener: TcpListener, root: &CancellationToken, tasks: &TaskTracker) {
    let api_tls: crate::net::tls::Slot = Default::default();
    let (n, t, stop) = (node.clone(), api_tls.clone(), root.child_token());
    tasks.spawn(async move { crate::api::tls::load_api(n, t, stop).await });
    let (n, stop) = (node.clone(), root.child_token());
    tasks.spawn(async move { crate::api::serve(n, listener, api_tls, stop).await });
}

/// Runs a node until `shutdown` resolves, then shuts it down gracefully.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    crate::planted::plant(cfg.planted_bug.as_deref().and_then(crate::planted::Bug::named));
    // Before the SSH port opens: every claim this process makes is stamped later than this.
    let started_ms = crate::control::now_ms();
    let listeners = Listeners::bind(&cfg).await?;
    let node = start_node(&cfg).await?;
    let (root, tasks) = (CancellationToken::new(), TaskTracker::new());
    let edge = Edge::new(node.clone(), Arc::new(Holdings::default()));
    serve_internal(&node, &edge.holdings, listeners.internal, &root, &tasks)?;
    enter_cluster(&node, &root, &tasks).await?;
    spawn_duties(&node, &root, &tasks);
    spawn_data_plane(&edge, (listeners.ssh, listeners.http, listeners.https), started_ms, &root, &tasks);
    spawn_api(&node, listeners.api, &root, &tasks);
    let (n, stop) = (node.clone(), root.child_token());
    tasks.spawn(async move { crate::edge::acme::run(n, stop).await });
    let (n, stop) = (node.clone(), root.child_token());
    tasks.spawn(async move { crate::edge::domains::verify(n, stop).await });
    if let Some((udp, tcp)) = listeners.dns {
        let (n, stop) = (node.clone(), root.child_token());
        tasks.spawn(async move { crate::edge::dns::serve(n, udp, tcp, stop).await });
    }
    drop(edge);

    tracing::info!(id = cfg.id, api = %cfg.api_addr, raft = %cfg.raft_addr, "node started");
    shutdown.await;

    tracing::info!("shutting down: no new connections, draining");
    root.cancel();
    tasks.close();
    if tokio::time::timeout(DRAIN_GRACE, tasks.wait()).await.is_err() {
        tracing::warn!("some requests did not finish within {DRAIN_GRACE:?}");
    }
    tracing::info!("stopping raft");
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    drop(node);
    tracing::info!("stopped");
    Ok(())
}
