//! Claims of a previous process of this node, which no session of this process holds.

use std::sync::Arc;
use std::time::Duration;

use mysocket_raft_store::Command;
use openraft::async_runtime::watch::WatchReceiver;
use tokio_util::sync::CancellationToken;

use crate::control::NodeRef;
use crate::tunnels::Holdings;

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

/// Releases orphaned claims (see [`release_orphans`]) after every change of Raft's state and
/// every second, until `stop`.
pub async fn release(node: NodeRef, holdings: Arc<Holdings>, started_ms: u64, stop: CancellationToken) {
    let mut metrics = node.raft.metrics();
    loop {
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
