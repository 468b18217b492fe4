//! Each member's applied index, asked of the member itself: what `GET /cluster` shows.

use std::collections::BTreeMap;
use std::time::Duration;

use mysocket_api::internal::Empty;

use crate::control::NodeRef;

/// How long the members' applied indexes (one RPC to each) are reused for `GET /cluster`.
const APPLIED_TTL: Duration = Duration::from_secs(1);

/// Each member's applied index, asked of the member itself, at most once per [`APPLIED_TTL`]
/// however often it is wanted: callers while an ask is on its way wait for its answer.
#[derive(Default)]
pub struct AppliedCache(tokio::sync::Mutex<Option<(std::time::Instant, Applied)>>);

/// Each member's applied index; `None` when it did not answer.
type Applied = BTreeMap<u64, Option<u64>>;

pub async fn applied_indexes(node: &NodeRef, members: &[(u64, String)]) -> Applied {
    let mut cached = node.applied_cache.0.lock().await;
    if let Some((at, map)) = &*cached {
        if at.elapsed() < APPLIED_TTL && members.iter().all(|(id, _)| map.contains_key(id)) {
            return map.clone();
        }
    }
    let asks = members.iter().map(|(id, addr)| {
        let node = node.clone();
        let (id, addr) = (*id, addr.clone());
        async move {
            if id == node.id {
                return (id, node.metrics().last_applied.map(|l| l.index));
            }
            let ask = async {
                let mut c = node.peers.client(&addr).ok()?;
                let r = tokio::time::timeout(Duration::from_millis(500), c.node_status(Empty {})).await.ok()?.ok()?;
                Some(r.get_ref().last_applied)
            };
            (id, ask.await)
        }
    });
    let map: Applied = futures::future::join_all(asks).await.into_iter().collect();
    *cached = Some((std::time::Instant::now(), map.clone()));
    map
}
