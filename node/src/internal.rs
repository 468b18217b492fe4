//! The internal gRPC server: Raft RPCs, forwarded writes and reads, membership changes. Every
//! call must carry the cluster credential; a caller without it is refused and logged.

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
use mysocket_raft_store::TypeConfig;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::VoteOf;
use subtle::ConstantTimeEq;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::cluster::MembershipChange;
use crate::cluster::NodeRef;
use crate::cluster::Retry;
use crate::raft_net::from_blob;
use crate::raft_net::to_blob;

/// Largest snapshot a node accepts (the registry is far smaller).
const MAX_SNAPSHOT: usize = 1024 * 1024 * 1024;

/// Server-side check of the cluster credential, in constant time.
#[derive(Clone)]
pub struct CheckCredential {
    pub secret: std::sync::Arc<Vec<u8>>,
}

impl tonic::service::Interceptor for CheckCredential {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let given = req.metadata().get(CLUSTER_CREDENTIAL_HEADER).map(|v| v.as_bytes()).unwrap_or(&[]);
        if given.len() == self.secret.len() && bool::from(given.ct_eq(self.secret.as_slice())) {
            return Ok(req);
        }
        tracing::warn!(peer = ?req.remote_addr(), "refused internal call without the cluster credential");
        Err(Status::unauthenticated("missing or wrong cluster credential"))
    }
}

pub struct InternalService {
    pub node: NodeRef,
    pub holdings: std::sync::Arc<crate::tunnels::Holdings>,
}

fn raft_err<E: std::fmt::Display>(e: E) -> Status {
    Status::unavailable(e.to_string())
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
        let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) = serde_json::from_slice(&meta)
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot meta: {e}")))?;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk?.payload {
                Some(ChunkPayload::Data(d)) => {
                    if data.len() + d.len() > MAX_SNAPSHOT {
                        return Err(Status::resource_exhausted("snapshot too large"));
                    }
                    data.extend_from_slice(&d);
                }
                _ => return Err(Status::invalid_argument("only data chunks may follow the meta")),
            }
        }
        tracing::info!(bytes = data.len(), last = ?meta.last_log_id, "received snapshot");
        let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot: data };
        let resp = self.node.raft.install_full_snapshot(vote, snapshot).await.map_err(raft_err)?;
        Ok(Response::new(to_blob(&resp)))
    }

    async fn client_write(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let r: RegistryRequest = from_blob(req.get_ref())?;
        // No second hop: if leadership moved, the origin node retries with the new leader.
        let resp = self.node.write_local(r).await.map_err(Status::unavailable)?;
        Ok(Response::new(to_blob(&resp)))
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

    type RelayStream = crate::relay::RelayStream;

    async fn relay(
        &self,
        req: Request<Streaming<mysocket_api::internal::RelayFrame>>,
    ) -> Result<Response<Self::RelayStream>, Status> {
        #[cfg(feature = "planted-bugs")]
        let planted = self.node.planted("stale-holder");
        #[cfg(not(feature = "planted-bugs"))]
        let planted = false;
        let stream = crate::relay::accept(self.holdings.clone(), req.into_inner(), planted).await?;
        Ok(Response::new(stream))
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
