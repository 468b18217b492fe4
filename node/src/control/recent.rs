//! The last log lines of each tunnel held on this node — the lines its SSH session gets, one per
//! HTTP request or tcp/tls connection, whichever node took it — for `GET /socket/{id}/log`
//! (asked of the holder by any node over the internal port). Each holding keeps a [`Ring`] of
//! its last [`KEPT`] lines (nothing for a tunnel nobody uses); this index finds it by tunnel
//! and forgets it once the holding is gone.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Weak;

use uuid::Uuid;

use crate::control::NodeRef;

/// Lines kept per tunnel: at most ~300 bytes each (paths are cut at 256 characters).
pub const KEPT: usize = 50;
/// Tunnels one call may ask a node for (a socket has at most a few).
pub const MAX_ASKED: usize = 64;
/// How long the holder has to answer.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// One holding's last lines.
#[derive(Default)]
pub struct Ring(Mutex<VecDeque<String>>);

impl Ring {
    pub fn push(&self, line: &str) {
        let mut q = self.0.lock().expect("recent lines");
        if q.len() == KEPT {
            q.pop_front();
        }
        q.push_back(line.trim_end().to_string());
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().expect("recent lines").iter().cloned().collect()
    }
}

/// The rings of the tunnels held here, by tunnel.
#[derive(Default)]
pub struct Recent(Mutex<HashMap<Uuid, Weak<Ring>>>);

impl Recent {
    /// A new ring for a new holding of `tunnel_id` (the previous holding's lines are not its).
    pub fn start(&self, tunnel_id: Uuid) -> Arc<Ring> {
        let ring = Arc::new(Ring::default());
        let mut map = self.0.lock().expect("recent index");
        map.insert(tunnel_id, Arc::downgrade(&ring));
        // Holdings that ended leave dead entries behind: swept when they could be half.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        ring
    }

    /// The lines of `tunnel_id`, while a holding of it lives on this node.
    pub fn lines(&self, tunnel_id: &Uuid) -> Option<Vec<String>> {
        let ring = self.0.lock().expect("recent index").get(tunnel_id)?.upgrade()?;
        Some(ring.lines())
    }
}

/// The lines of `tunnels`, all held by node `holder`: read here when it is this node, asked of
/// it over the internal port otherwise; `None` for a tunnel it does not hold or when it does
/// not answer in time.
pub async fn lines_at(node: &NodeRef, holder: u64, tunnels: &[Uuid]) -> Vec<Option<Vec<String>>> {
    if holder == node.id {
        return tunnels.iter().map(|t| node.recent.lines(t)).collect();
    }
    let addr = node.metrics().membership_config.membership().get_node(&holder).map(|n| n.addr.clone());
    let ask = async {
        let mut c = node.peers.client(&addr?).ok()?;
        let call = c.recent_log(crate::net::raft::to_blob(&tunnels));
        let reply = tokio::time::timeout(ASK_TIMEOUT, call).await.ok()?.ok()?;
        let lines: Vec<Option<Vec<String>>> = crate::net::raft::from_blob(reply.get_ref()).ok()?;
        (lines.len() == tunnels.len()).then_some(lines)
    };
    ask.await.unwrap_or_else(|| vec![None; tunnels.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_last_lines_of_the_live_holding_only() {
        let recent = Recent::default();
        let t = Uuid::new_v4();
        let ring = recent.start(t);
        for i in 0..(KEPT + 7) {
            ring.push(&format!("line {i}\r\n"));
        }
        let lines = recent.lines(&t).unwrap();
        assert_eq!(lines.len(), KEPT);
        assert_eq!(lines.first().map(String::as_str), Some("line 7"));
        assert_eq!(lines.last().map(String::as_str), Some(format!("line {}", KEPT + 6).as_str()));
        // A new holding starts empty; the old one's lines are gone with it.
        let newer = recent.start(t);
        drop(ring);
        assert_eq!(recent.lines(&t), Some(vec![]));
        drop(newer);
        assert_eq!(recent.lines(&t), None);
    }
}
