//! `GET /metrics`: the node's counters, and gauges of Raft and the registry read at scrape time.

use crate::control::NodeRef;

fn index(v: Option<u64>) -> i64 {
    v.map_or(-1, |i| i64::try_from(i).unwrap_or(i64::MAX))
}

/// The metrics in the Prometheus text format, the state gauges read now.
pub fn render(node: &NodeRef) -> String {
    let m = crate::metrics::get();
    let raft = node.metrics();
    let s = m.state();
    let membership = raft.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    s.term.set(index(Some(raft.current_term)));
    s.leader.set(raft.current_leader.map_or(0, |l| index(Some(l))));
    s.is_leader.set(i64::from(raft.current_leader == Some(node.id)));
    s.voters.set(voters.len() as i64);
    s.learners.set(membership.nodes().filter(|(id, _)| !voters.contains(id)).count() as i64);
    s.last_log_index.set(index(raft.last_log_index));
    s.committed_index.set(index(raft.local_committed.map(|l| l.index)));
    s.applied_index.set(index(raft.last_applied.map(|l| l.index)));
    s.snapshot_index.set(index(raft.snapshot.map(|l| l.index)));
    s.lag.clear();
    if let (Some(replication), Some(last)) = (&raft.replication, raft.last_log_index) {
        for (id, matched) in replication.iter().filter(|(id, _)| **id != node.id) {
            let behind = last.saturating_sub(matched.map_or(0, |l| l.index));
            s.lag.get_or_create(&[("follower", id.to_string())]).set(index(Some(behind)));
        }
    }
    let (accounts, sockets, tunnels, sessions, here) = node.read(|r| {
        let (a, so, t, se) = r.counts();
        (a, so, t, se, r.sessions_on(node.id))
    });
    s.accounts.set(accounts as i64);
    s.sockets.set(sockets as i64);
    s.tunnels.set(tunnels as i64);
    s.tunnels_connected.set(sessions as i64);
    s.tunnels_here.set(here as i64);
    s.snapshots_installed.set(node.state_machine.snapshots_installed() as i64);
    m.encode()
}
