//! openraft's network over the internal gRPC service.
//!
//! Raft messages are serde JSON inside protobuf blobs. Connection failures and timeouts become
//! [`Unreachable`] so openraft backs off instead of hammering a dead peer; anything else the
//! transport reports is a [`NetworkError`] (retry at once).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use futures::Stream;
use futures::StreamExt;
use mysocket_api::internal::snapshot_chunk::Payload as ChunkPayload;
use mysocket_api::internal::Blob;
use mysocket_api::internal::SnapshotChunk;
use mysocket_raft_store::SnapshotData;
use mysocket_raft_store::TypeConfig;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::VoteOf;
use openraft::AnyError;
use openraft::BasicNode;
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::net::peers::PeerClient;
use crate::net::peers::Peers;

pub struct NetworkFactory {
    pub peers: Arc<Peers>,
    /// Snapshot data is streamed in chunks of this size.
    pub snapshot_chunk: usize,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConn {
        PeerConn {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            snapshot_chunk: self.snapshot_chunk,
            streams: true,
        }
    }
}

/// Connection to one peer, as openraft sees it.
pub struct PeerConn {
    target: u64,
    addr: String,
    peers: Arc<Peers>,
    snapshot_chunk: usize,
    /// Whether the peer takes `StreamAppend` (cleared for a node of an older version).
    streams: bool,
}

/// When each request on an append stream was sent, for those not answered yet, oldest first.
type Unanswered = Arc<std::sync::Mutex<std::collections::VecDeque<Instant>>>;

/// How a failed internal call is reported to openraft.
enum Failure {
    Unreachable(String),
    Network(String),
}

fn classify(s: &tonic::Status) -> Failure {
    use tonic::Code;
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Failure::Unreachable(format!("{}: {}", s.code(), s.message()))
        }
        _ => Failure::Network(format!("{}: {}", s.code(), s.message())),
    }
}

impl Failure {
    fn into_rpc(self) -> RPCError<TypeConfig> {
        match self {
            Failure::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&AnyError::error(m))),
            Failure::Network(m) => RPCError::Network(NetworkError::new(&AnyError::error(m))),
        }
    }

    fn into_streaming(self) -> StreamingError<TypeConfig> {
        match self {
            Failure::Unreachable(m) => StreamingError::Unreachable(Unreachable::new(&AnyError::error(m))),
            Failure::Network(m) => StreamingError::Network(NetworkError::new(&AnyError::error(m))),
        }
    }
}

pub fn to_blob<T: Serialize>(v: &T) -> Blob {
    Blob { json: serde_json::to_vec(v).expect("raft messages serialize") }
}

pub fn from_blob<T: DeserializeOwned>(b: &Blob) -> Result<T, tonic::Status> {
    serde_json::from_slice(&b.json).map_err(|e| tonic::Status::invalid_argument(format!("undecodable message: {e}")))
}

/// Least time an AppendEntries call may take before the follower counts as unreachable.
const APPEND_TTL: Duration = Duration::from_millis(500);

impl PeerConn {
    /// One unary call with a deadline; the deadline expiring counts as unreachable.
    async fn unary<Req, Resp, F, Fut>(&self, req: &Req, ttl: Duration, call: F) -> Result<Resp, Failure>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(PeerClient, Blob) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Blob>, tonic::Status>>,
    {
        let client = self.peers.client(&self.addr).map_err(|s| Failure::Network(s.message().to_string()))?;
        let fut = call(client, to_blob(req));
        match tokio::time::timeout(ttl, fut).await {
            Err(_) => Err(Failure::Unreachable(format!("node {} did not answer within {ttl:?}", self.target))),
            Ok(Err(s)) => Err(classify(&s)),
            Ok(Ok(r)) => from_blob(r.get_ref()).map_err(|s| Failure::Network(s.message().to_string())),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft offers three quarters of a heartbeat (75 ms by default). A follower that is
        // merely busy (a large batch on a loaded machine) can take longer; giving up then only
        // resends the same entries to an even busier node. A dead or cut-off follower costs
        // this long per attempt, and the other followers carry the quorum meanwhile.
        self.unary(&rpc, option.soft_ttl().max(APPEND_TTL), |mut c, b| async move { c.append_entries(b).await })
            .await
            .map_err(Failure::into_rpc)
    }

    /// Replication to this peer as one gRPC stream (`StreamAppend`), several requests in flight:
    /// openraft's default sends one request and waits for its answer before the next, so a new
    /// entry waited behind the message carrying the last commit. A stream that has requests
    /// unanswered and no answer for the append deadline makes the peer unreachable, as a single
    /// call that long would.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        if !self.streams {
            return openraft::network::stream_append_sequential(self, input, option);
        }
        let ttl = option.soft_ttl().max(APPEND_TTL);
        Box::pin(async move {
            // The first request is taken before the call is opened: openraft waits out its
            // backoff while making a request, so a peer refusing connections is retried at
            // that pace instead of in a tight loop.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>);
            };
            let mut client =
                self.peers.client(&self.addr).map_err(|s| Failure::Network(s.message().to_string()).into_rpc())?;
            let unanswered = Unanswered::default();
            let sent = unanswered.clone();
            let requests = futures::stream::once(async { first }).chain(input).map(move |rpc| {
                sent.lock().expect("unanswered lock").push_back(Instant::now());
                to_blob(&rpc)
            });
            let responses = match tokio::time::timeout(ttl, client.stream_append(requests)).await {
                Err(_) => {
                    let m = format!("node {} did not open an append stream within {ttl:?}", self.target);
                    return Err(Failure::Unreachable(m).into_rpc());
                }
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                    tracing::warn!(
                        target_node = self.target,
                        "the node has no append stream (an older version); replicating to it one request at a time"
                    );
                    self.streams = false;
                    return Err(Failure::Network(s.message().to_string()).into_rpc());
                }
                Ok(Err(s)) => return Err(classify(&s).into_rpc()),
                Ok(Ok(r)) => r.into_inner(),
            };
            let target = self.target;
            let started = Instant::now();
            let answers = futures::stream::unfold(Some((responses, unanswered, started)), move |state| async move {
                let (mut responses, unanswered, last_answer) = state?;
                loop {
                    // Due: the deadline after the oldest unanswered request was sent or the last
                    // answer came, whichever is later (requests queued behind others at a busy
                    // follower wait their turn without counting against it).
                    let oldest = unanswered.lock().expect("unanswered lock").front().copied();
                    // With nothing asked, wake now and then to see whether something was.
                    let wait =
                        oldest.map_or(ttl, |t| (t.max(last_answer) + ttl).saturating_duration_since(Instant::now()));
                    match tokio::time::timeout(wait, responses.message()).await {
                        Ok(Ok(Some(blob))) => {
                            unanswered.lock().expect("unanswered lock").pop_front();
                            let answer = from_blob::<StreamAppendResult<TypeConfig>>(&blob)
                                .map_err(|s| Failure::Network(s.message().to_string()).into_rpc());
                            let more = answer.is_ok().then_some((responses, unanswered, Instant::now()));
                            return Some((answer, more));
                        }
                        Ok(Ok(None)) => return None,
                        Ok(Err(s)) => return Some((Err(classify(&s).into_rpc()), None)),
                        Err(_) if oldest.is_some() => {
                            let m = format!("node {target} did not answer an append within {ttl:?}");
                            return Some((Err(Failure::Unreachable(m).into_rpc()), None));
                        }
                        Err(_) => continue,
                    }
                }
            });
            Ok(Box::pin(answers) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, option.soft_ttl(), |mut c, b| async move { c.vote(b).await }).await.map_err(Failure::into_rpc)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, option.soft_ttl(), |mut c, b| async move { c.pre_vote(b).await })
            .await
            .map_err(Failure::into_rpc)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&req, option.soft_ttl(), |mut c, b| async move { c.transfer_leader(b).await })
            .await
            .map_err(Failure::into_rpc)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client =
            self.peers.client(&self.addr).map_err(|s| Failure::Network(s.message().to_string()).into_streaming())?;
        let data = snapshot.snapshot;
        let len = data.len();
        let meta = serde_json::to_vec(&(&vote, &snapshot.meta, len)).expect("snapshot meta serializes");
        tracing::info!(target_node = self.target, bytes = len, "sending snapshot");
        // Read from the file a chunk at a time as the stream is polled, so at most a couple
        // are in memory. A read error ends the stream early, and the receiver, told the
        // length up front, refuses what it got.
        let chunk = self.snapshot_chunk;
        let target = self.target;
        let rest = futures::stream::unfold((data, 0u64), move |(data, offset)| async move {
            if offset >= data.len() {
                return None;
            }
            let (data, read) = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; chunk.min((data.len() - offset) as usize)];
                let r = data.read_at(&mut buf, offset).map(|n| {
                    buf.truncate(n);
                    buf
                });
                (data, r)
            })
            .await
            .ok()?;
            match read {
                Ok(buf) if !buf.is_empty() => {
                    let next = offset + buf.len() as u64;
                    Some((SnapshotChunk { payload: Some(ChunkPayload::Data(buf)) }, (data, next)))
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::error!(target_node = target, error = %e, "reading the snapshot file failed");
                    None
                }
            }
        });
        let chunks =
            futures::stream::once(async { SnapshotChunk { payload: Some(ChunkPayload::Meta(meta)) } }).chain(rest);
        // Long enough for the whole file at 10 MB/s.
        let ttl = option.hard_ttl().max(Duration::from_secs(10 + len / 10_000_000));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(ttl, client.snapshot(chunks)) => match r {
                Err(_) => Err(Failure::Unreachable(format!("snapshot to node {} timed out", self.target)).into_streaming()),
                Ok(Err(s)) => Err(classify(&s).into_streaming()),
                Ok(Ok(resp)) => from_blob(resp.get_ref()).map_err(|s| Failure::Network(s.message().to_string()).into_streaming()),
            }
        }
    }
}
