//! The internal gRPC service: Raft's RPCs, writes and reads forwarded by other members,
//! membership changes, joins, and failed logins told by other members. Every call carries
//! the cluster credential (checked by [`crate::net::credential::CheckCredential`]).

use futures::StreamExt;
use mysocket_api::internal::internal_server::Internal;
use mysocket_api::internal::snapshot_chunk::Payload as ChunkPayload;
use mysocket_api::internal::Blob;
use mysocket_api::internal::Empty;
use mysocket_api::internal::NodeStatusReply;
use mysocket_api::internal::ReadIndexReply;
use mysocket_api::internal::SnapshotChunk;
use mysocket_raft_store::Request as RegistryRequest;
use mysocket_raft_store::SnapshotData;
use mysocket_raft_store::TypeConfig;
use openraft::raft::AppendEntriesRequest;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::VoteOf;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::control::ClusterError;
use crate::control::MembershipChange;
use crate::control::NodeRef;
use crate::control::Retry;
use crate::net::raft::from_blob;
use crate::net::raft::to_blob;

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

    type StreamAppendStream = futures::stream::BoxStream<'static, Result<Blob, Status>>;

    async fn stream_append(&self, req: Request<Streaming<Blob>>) -> Result<Response<Self::StreamAppendStream>, Status> {
        // A message that does not decode ends the input, and with it the stream once the ones
        // before it are answered; the leader opens another.
        let input = futures::stream::unfold(req.into_inner(), |mut incoming| async move {
            match incoming.message().await {
                Ok(Some(blob)) => match from_blob::<AppendEntriesRequest<TypeConfig>>(&blob) {
                    Ok(rpc) => Some((rpc, incoming)),
                    Err(s) => {
                        tracing::warn!(error = %s.message(), "an append stream sent an undecodable message");
                        None
                    }
                },
                Ok(None) => None,
                Err(s) => {
                    tracing::debug!(error = %s.message(), "an append stream broke");
                    None
                }
            }
        });
        let output = self.node.raft.stream_append(input).map(|r| r.map(|res| to_blob(&res)).map_err(raft_err));
        Ok(Response::new(Box::pin(output)))
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

    async fn recent_log(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let ids: Vec<uuid::Uuid> = from_blob(req.get_ref())?;
        if ids.len() > crate::control::recent::MAX_ASKED {
            return Err(Status::invalid_argument("too many tunnels in one call"));
        }
        let lines: Vec<Option<Vec<String>>> = ids.iter().map(|id| self.node.recent.lines(id)).collect();
        Ok(Response::new(to_blob(&lines)))
    }

    async fn history(&self, _req: Request<Empty>) -> Result<Response<Blob>, Status> {
        Ok(Response::new(to_blob(&self.node.history.samples())))
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
