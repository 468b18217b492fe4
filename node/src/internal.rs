//! The internal port: the gRPC server (Raft RPCs, forwarded writes and reads, membership
//! changes) and relayed public connections share it. After TLS, when the cluster runs it, a
//! connection's first bytes tell a relay's hello from a control connection's
//! (`peers::CONTROL_MAGIC`, then gRPC). Both carry the cluster credential, checked before the
//! connection is kept; anything else is closed at once, and every gRPC call carries the
//! credential too. A caller without it is refused and logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mysocket_api::internal::internal_server::Internal;
use mysocket_api::internal::snapshot_chunk::Payload as ChunkPayload;
use mysocket_api::internal::Blob;
use mysocket_api::internal::Empty;
use mysocket_api::internal::NodeStatusReply;
use mysocket_api::internal::ReadIndexReply;
use mysocket_api::internal::SnapshotChunk;
use mysocket_api::CLUSTER_CREDENTIAL_HEADER;
use mysocket_raft_store::Request as RegistryRequest;
use mysocket_raft_store::SnapshotData;
use mysocket_raft_store::TypeConfig;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::VoteOf;
use subtle::ConstantTimeEq;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::transport::server::TcpConnectInfo;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::cluster::ClusterError;
use crate::cluster::MembershipChange;
use crate::cluster::NodeRef;
use crate::cluster::Retry;
use crate::prefixed::Prefixed;
use crate::proxy::Io;
use crate::raft_net::from_blob;
use crate::raft_net::to_blob;
use crate::tunnels::Holdings;

/// Whether `given` is the cluster credential `secret`, compared in constant time (gRPC calls
/// and relays alike).
pub fn is_credential(secret: &[u8], given: &[u8]) -> bool {
    given.len() == secret.len() && bool::from(given.ct_eq(secret))
}

/// Server-side check of the cluster credential on every gRPC call.
#[derive(Clone)]
pub struct CheckCredential {
    pub secret: std::sync::Arc<Vec<u8>>,
}

impl tonic::service::Interceptor for CheckCredential {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let given = req.metadata().get(CLUSTER_CREDENTIAL_HEADER).map(|v| v.as_bytes()).unwrap_or(&[]);
        if is_credential(&self.secret, given) {
            return Ok(req);
        }
        tracing::warn!(peer = ?req.remote_addr(), "refused internal call without the cluster credential");
        Err(Status::unauthenticated("missing or wrong cluster credential"))
    }
}

pub struct InternalService {
    pub node: NodeRef,
}

fn raft_err<E: std::fmt::Display>(e: E) -> Status {
    Status::unavailable(e.to_string())
}

fn io_status(e: std::io::Error) -> Status {
    tracing::error!(error = %e, "writing a received snapshot failed");
    Status::unavailable(format!("cannot store the snapshot: {e}"))
}

#[tonic::async_trait]
impl Internal for InternalService {
    async fn append_entries(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc = from_blob(req.get_ref())?;
        let resp = self.node.raft.append_entries(rpc).await.map_err(raft_err)?;
        Ok(Response::new(to_blob(&resp)))
    }

    async fn vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc = from_blob(req.get_ref())?;
        let resp = self.node.raft.vote(rpc).await.map_err(raft_err)?;
        Ok(Response::new(to_blob(&resp)))
    }

    async fn pre_vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc = from_blob(req.get_ref())?;
        let resp = self.node.raft.pre_vote(rpc).await.map_err(raft_err)?;
        Ok(Response::new(to_blob(&resp)))
    }

    async fn transfer_leader(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc = from_blob(req.get_ref())?;
        let resp = self.node.raft.handle_transfer_leader(rpc).await.map_err(raft_err)?;
        Ok(Response::new(to_blob(&resp)))
    }

    async fn snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<Blob>, Status> {
        let mut stream = req.into_inner();
        let first = stream.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let Some(ChunkPayload::Meta(meta)) = first.payload else {
            return Err(Status::invalid_argument("a snapshot stream starts with its meta"));
        };
        let (vote, meta, len): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>, u64) = serde_json::from_slice(&meta)
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot meta: {e}")))?;
        // Straight to disk as it arrives: a node holds one chunk of a snapshot in memory.
        let most = self.node.config.snapshot_chunk;
        let mut incoming = self.node.state_machine.receive_snapshot().map_err(io_status)?;
        while let Some(chunk) = stream.next().await {
            match chunk?.payload {
                Some(ChunkPayload::Data(d)) => {
                    if d.len() > most {
                        return Err(Status::resource_exhausted(format!(
                            "a snapshot chunk of {} bytes; this node takes at most {most}",
                            d.len()
                        )));
                    }
                    if incoming.len() + d.len() as u64 > len {
                        return Err(Status::invalid_argument("the snapshot is longer than announced"));
                    }
                    let w = tokio::task::block_in_place(|| incoming.write(&d));
                    w.map_err(io_status)?;
                }
                _ => return Err(Status::invalid_argument("only data chunks may follow the meta")),
            }
        }
        if incoming.len() != len {
            return Err(Status::invalid_argument(format!(
                "the snapshot stream ended after {} of {len} bytes",
                incoming.len()
            )));
        }
        let data = tokio::task::block_in_place(|| incoming.finish()).map_err(io_status)?;
        tracing::info!(bytes = len, last = ?meta.last_log_id, "received snapshot");
        let snapshot = SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot: data };
        let resp = self.node.raft.install_full_snapshot(vote, snapshot).await.map_err(raft_err)?;
        Ok(Response::new(to_blob(&resp)))
    }

    async fn client_write(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let r: RegistryRequest = from_blob(req.get_ref())?;
        // No second hop: if leadership moved, the origin node retries with the new leader.
        // The answer and its log index, which the origin node waits to apply before answering.
        let answer = self.node.write_local(r).await.map_err(Status::unavailable)?;
        Ok(Response::new(to_blob(&answer)))
    }

    async fn read_index(&self, _req: Request<Empty>) -> Result<Response<ReadIndexReply>, Status> {
        let index = self.node.read_index_local().await.map_err(Status::unavailable)?;
        Ok(Response::new(ReadIndexReply { index }))
    }

    async fn change_membership(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let change: MembershipChange = from_blob(req.get_ref())?;
        let r: Result<(), Retry> = self.node.change_membership_local(&change).await;
        Ok(Response::new(to_blob(&r)))
    }

    async fn join(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let change: MembershipChange = from_blob(req.get_ref())?;
        if !matches!(change, MembershipChange::Add { .. }) {
            return Err(Status::invalid_argument("join carries an Add"));
        }
        let r: Result<(), Retry> = match self.node.change_membership(change).await {
            Ok(()) => Ok(()),
            Err(ClusterError::Membership(m)) => Err(Retry::Final(m)),
            Err(e) => Err(Retry::Again(e.to_string())),
        };
        Ok(Response::new(to_blob(&r)))
    }

    async fn failed_logins(&self, req: Request<Blob>) -> Result<Response<Empty>, Status> {
        let keys: Vec<String> = from_blob(req.get_ref())?;
        self.node.limits.failed_elsewhere(&keys);
        Ok(Response::new(Empty {}))
    }

    async fn node_status(&self, _req: Request<Empty>) -> Result<Response<NodeStatusReply>, Status> {
        let m = self.node.metrics();
        Ok(Response::new(NodeStatusReply {
            node_id: self.node.id,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            term: m.current_term,
            // Hashing the registry costs; /cluster/digest does it on demand.
            digest: String::new(),
        }))
    }
}

/// Most connections the internal port holds at once (relays and gRPC).
const MAX_CONNECTIONS: usize = 20_000;
/// Time a new connection gets for its TLS handshake and first bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection for the gRPC server: the bytes read to tell it from a relay, then the rest.
pub type GrpcConn = Prefixed<Box<dyn Io>, GrpcInfo>;

/// What the gRPC server learns of a connection, and the handle that keeps it counted against
/// the port's cap: the accept loop's task waits until the server drops the connection.
pub struct GrpcInfo {
    tcp: TcpConnectInfo,
    _open: tokio::sync::oneshot::Sender<()>,
}

impl Connected for GrpcConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.tcp.clone()
    }
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the stream.
async fn read_up_to(io: &mut Box<dyn Io>, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match io.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Accepts on the internal port until `stop`: relays are served here, gRPC connections go to
/// `grpc` (the gRPC server's incoming stream).
pub async fn serve_port(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    grpc: tokio::sync::mpsc::Sender<std::io::Result<GrpcConn>>,
    holdings: Arc<Holdings>,
    secret: Arc<Vec<u8>>,
    stop: CancellationToken,
) {
    crate::accept::serve(
        listener,
        MAX_CONNECTIONS,
        // Peers are few, and each opens a connection per relayed public connection.
        MAX_CONNECTIONS,
        crate::metrics::Listener::Internal,
        stop,
        |tcp, peer: SocketAddr| {
            let (tls, grpc, holdings, secret) = (tls.clone(), grpc.clone(), holdings.clone(), secret.clone());
            async move {
                let info = TcpConnectInfo { local_addr: tcp.local_addr().ok(), remote_addr: Some(peer) };
                crate::relay::keep_alive(&tcp);
                let start = async {
                    let mut io: Box<dyn Io> = match &tls {
                        Some(acceptor) => Box::new(acceptor.accept(tcp).await?),
                        None => Box::new(tcp),
                    };
                    let mut first = vec![0u8; crate::relay::MAGIC.len()];
                    let n = read_up_to(&mut io, &mut first).await?;
                    first.truncate(n);
                    Ok::<_, std::io::Error>((io, first))
                };
                let (io, first) = match tokio::time::timeout(FIRST_BYTES_TIMEOUT, start).await {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "internal connection failed at its start");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "internal connection sent nothing in time");
                        return;
                    }
                };
                if first == crate::relay::MAGIC {
                    crate::relay::serve(io, peer, holdings, secret).await;
                    return;
                }
                if first != crate::peers::CONTROL_MAGIC {
                    crate::metrics::get().refused(crate::metrics::Refusal::Unauthenticated);
                    tracing::info!(%peer, "closed an internal connection that is neither a relay nor a control connection");
                    return;
                }
                let mut io = io;
                let given = tokio::time::timeout(FIRST_BYTES_TIMEOUT, crate::relay::read_part(&mut io)).await;
                if !matches!(&given, Ok(Ok(g)) if is_credential(&secret, g)) {
                    crate::metrics::get().refused(crate::metrics::Refusal::Unauthenticated);
                    tracing::warn!(%peer, "refused an internal connection without the cluster credential");
                    return;
                }
                // gRPC's to serve. It holds its place in the port's count (and its address's)
                // for as long as the server keeps it.
                let (open, closed) = tokio::sync::oneshot::channel::<()>();
                let conn = GrpcConn::new(Vec::new(), io, GrpcInfo { tcp: info, _open: open });
                if grpc.send(Ok(conn)).await.is_ok() {
                    let _ = closed.await;
                }
            }
        },
    )
    .await
}
