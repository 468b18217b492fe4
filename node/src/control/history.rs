//! The last hour of this node's figures, for the operators' charts on `GET /`: a sample every
//! [`INTERVAL`] of the HTTP answers and visitor bytes so far, the connections open on each
//! port, the tunnels held here, the applied Raft index, the term and the leader. Kept in memory
//! only ([`KEPT`] samples, ~75 KiB); any node gathers the others' over the internal port
//! ([`gather`]) to draw the whole cluster.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::control::NodeRef;

/// Between two samples.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: an hour.
pub const KEPT: usize = 720;

/// One sample; counters are totals since the process started (a restart starts them over).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// HTTP answers to visitors (every status).
    pub requests: u64,
    /// Bytes to and from visitors.
    pub bytes: u64,
    /// Connections open per port, in the order of [`crate::metrics::Listener::ALL`].
    pub open: [i64; crate::metrics::Listener::ALL.len()],
    /// Tunnels held here.
    pub tunnels: u64,
    /// Raft index applied here.
    pub applied: u64,
    pub term: u64,
    /// The leader this node knew (0: none).
    pub leader: u64,
}

#[derive(Default)]
pub struct History(Mutex<VecDeque<Sample>>);

impl History {
    pub fn push(&self, s: Sample) {
        let mut q = self.0.lock().expect("history");
        if q.len() == KEPT {
            q.pop_front();
        }
        q.push_back(s);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.0.lock().expect("history").iter().cloned().collect()
    }
}

/// Takes this node's sample now.
pub fn sample(node: &NodeRef) -> Sample {
    let traffic = crate::metrics::get().summary();
    let m = node.metrics();
    Sample {
        at_ms: crate::control::now_ms(),
        requests: traffic.responses.iter().sum(),
        bytes: traffic.public_bytes,
        open: traffic.ports.map(|(_, open, _)| open),
        tunnels: node.read(|r| r.sessions_on(node.id)) as u64,
        applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        term: m.current_term,
        leader: m.current_leader.unwrap_or(0),
    }
}

/// How long another node has to send its history.
const ASK_TIMEOUT: Duration = Duration::from_millis(700);

/// Every member's history (its id, its samples; none when it did not answer in time).
pub async fn gather(node: &NodeRef) -> Vec<(u64, Option<Vec<Sample>>)> {
    let members: Vec<(u64, String)> =
        node.metrics().membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    let asks = members.into_iter().map(|(id, addr)| {
        let node = node.clone();
        async move {
            if id == node.id {
                return (id, Some(node.history.samples()));
            }
            let ask = async {
                let mut c = node.peers.client(&addr).ok()?;
                let call = c.history(mysocket_api::internal::Empty {});
                let reply = tokio::time::timeout(ASK_TIMEOUT, call).await.ok()?.ok()?;
                crate::net::raft::from_blob::<Vec<Sample>>(reply.get_ref()).ok()
            };
            (id, ask.await)
        }
    });
    futures::future::join_all(asks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_small() {
        assert_eq!(std::mem::size_of::<Sample>(), 112, "the history is KEPT of these, no more on the heap");
    }

    #[test]
    fn an_hour_is_kept_and_no_more() {
        let h = History::default();
        for i in 0..(KEPT as u64 + 10) {
            h.push(Sample { at_ms: i, ..Sample::default() });
        }
        let s = h.samples();
        assert_eq!(s.len(), KEPT);
        assert_eq!((s[0].at_ms, s[KEPT - 1].at_ms), (10, KEPT as u64 + 9));
    }
}
