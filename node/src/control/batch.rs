//! Group commit for registry writes. Every write of this node goes through one queue; a
//! task drains it into batches and sends each batch as one request to the leader (proposed
//! there as one Raft entry), with a few batches in flight at once. Under load a batch fills
//! while the previous ones are being committed, so a thousand concurrent writers cost a handful
//! of log entries, AppendEntries and forwarded calls instead of a thousand. A write that finds
//! no other in progress on this node skips the queue and is proposed from its caller's own
//! task, unwrapped, so a lone writer waits for nothing and pays no hand-off.
//!
//! A failed batch fails each of its requests; their callers retry one by one with the same
//! request ids (see [`crate::control::Node::write_request`]), and the registry deduplicates
//! each request on its own, batched or not.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Instant;

use mysocket_raft_store::Command;
use mysocket_raft_store::Request;
use mysocket_raft_store::Response;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;

use crate::control::now_ms;
use crate::control::Node;
use crate::control::LEADER_WAIT;

/// Most requests in one batch (one log entry); bounds the entry's size (~0.5 KiB a request).
pub const MAX_BATCH: usize = 256;
/// Batches on their way to the leader at once.
const IN_FLIGHT: usize = 4;
/// Writes waiting for a batch; a full queue makes callers wait (backpressure).
const QUEUE: usize = 4 * MAX_BATCH;

type Reply = oneshot::Sender<Result<Response, String>>;

/// The queue into the batching task.
pub struct Batcher {
    tx: mpsc::Sender<(Request, Reply)>,
    /// Writes submitted on this node and not answered yet.
    active: AtomicUsize,
}

/// Counts a write as active until dropped (also when its caller gives up).
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Batcher {
    /// Starts the batching task. It holds the node weakly and ends when the node is dropped.
    pub fn start(node: Weak<Node>) -> Batcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(node, rx));
        Batcher { tx, active: AtomicUsize::new(0) }
    }

    /// Sends `req` to the leader, alone when no other write of `node` is in progress, else in
    /// the next batch, and returns its own answer.
    pub async fn submit(&self, node: &Node, req: Request) -> Result<Response, String> {
        let alone = self.active.fetch_add(1, Ordering::AcqRel) == 0;
        let _active = Active(&self.active);
        if alone {
            return propose(node, req).await;
        }
        let (reply, answer) = oneshot::channel();
        self.tx.send((req, reply)).await.map_err(|_| "this node is shutting down".to_string())?;
        answer.await.map_err(|_| "the write batch was dropped".to_string())?
    }
}

async fn run(node: Weak<Node>, mut rx: mpsc::Receiver<(Request, Reply)>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Take a slot before draining: while every slot is busy the queue keeps filling, and
        // the next batch leaves with all of it.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            send(&node, batch).await;
            drop(permit);
        });
    }
}

/// Proposes one request through the leader, on this node or forwarded to it.
async fn propose(node: &Node, req: Request) -> Result<Response, String> {
    let Some((leader, addr)) = node.leader() else { return Err("the cluster has no leader right now".into()) };
    if leader == node.id {
        node.write_local(req).await.map(|(response, _)| response)
    } else {
        node.forward_write(&addr, &req, Instant::now() + LEADER_WAIT).await
    }
}

/// Proposes one batch through the leader and hands every caller its answer.
async fn send(node: &Node, mut batch: Vec<(Request, Reply)>) {
    if batch.len() == 1 {
        let (req, reply) = batch.pop().expect("one request");
        let _ = reply.send(propose(node, req).await);
        return;
    }
    let (reqs, replies): (Vec<Request>, Vec<Reply>) = batch.into_iter().unzip();
    let n = reqs.len();
    let whole = Request { request_id: None, at_ms: now_ms(), cmd: Command::Batch(reqs) };
    match propose(node, whole).await {
        Ok(Response::Batch(answers)) if answers.len() == n => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(other) => {
            tracing::error!(answer = %other, "a write batch got an answer of the wrong shape");
            for reply in replies {
                let _ = reply.send(Err("the write batch got a malformed answer".into()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
