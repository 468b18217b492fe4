//! Known bugs the fault-injection suite must catch (`jepsen-tests/tests/planted.rs`). A bug is
//! planted only in a build with the `planted-bugs` feature and only by `--planted-bug NAME`,
//! which a normal build refuses; every switch is asked here, and in a normal build [`on`] is
//! false at compile time, so the bug's code is not even there.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Linearizable reads answer from the local replica without ReadIndex.
    StaleRead,
    /// The leader answers a write before the entry is committed.
    EarlyAck,
    /// A node serves and keeps tunnel sessions the cluster superseded or released (no fencing).
    StaleHolder,
    /// The edge takes a cloud-authentication cookie without checking its signature.
    ForgedSession,
    /// The cluster's DNS lists every registered node, dead or alive.
    DeadNodesAnswered,
}

impl Bug {
    pub const ALL: [Bug; 5] =
        [Bug::StaleRead, Bug::EarlyAck, Bug::StaleHolder, Bug::ForgedSession, Bug::DeadNodesAnswered];

    pub fn name(self) -> &'static str {
        match self {
            Bug::StaleRead => "stale-read",
            Bug::EarlyAck => "early-ack",
            Bug::StaleHolder => "stale-holder",
            Bug::ForgedSession => "forged-session",
            Bug::DeadNodesAnswered => "dead-nodes-answered",
        }
    }

    pub fn named(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

static PLANTED: OnceLock<Option<Bug>> = OnceLock::new();

/// Plants `bug` in this process (once, at start; the configuration has checked the name and
/// the build).
pub fn plant(bug: Option<Bug>) {
    let _ = PLANTED.set(bug);
}

/// Whether `bug` is planted in this process.
#[inline]
pub fn on(bug: Bug) -> bool {
    cfg!(feature = "planted-bugs") && PLANTED.get().copied().flatten() == Some(bug)
}
