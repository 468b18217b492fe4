//! # mysocket-raft-store
//!
//! The replicated registry: the domain model (accounts, sockets, tunnels, tunnel sessions,
//! nodes, cluster config), the commands that change it, their deterministic application, and
//! the RocksDB storage openraft runs on (log store, state machine, snapshots).
//!
//! This crate knows nothing of the network: no sockets, no gRPC, no HTTP. The node crate wires
//! it to Raft's transport and to the public services.
//!
//! # Layout
//! - [`model`]: plain data and commands.
//! - [`registry`]: the in-memory state and `apply`, a pure function.
//! - [`log_store`]: Raft log and vote (synced before openraft is told they are durable).
//! - [`state_machine`]: applied rows + `last_applied` + membership in one batch; snapshots.

pub mod log_store;
pub mod model;
pub mod registry;
pub mod state_machine;

use std::io;
use std::path::Path;
use std::sync::Arc;

pub use log_store::LogStore;
pub use model::*;
pub use registry::Registry;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;
pub use state_machine::Applied;
pub use state_machine::IncomingSnapshot;
pub use state_machine::SharedRegistry;
pub use state_machine::SnapshotData;
pub use state_machine::StateMachine;

openraft::declare_raft_types!(
    /// The Raft types of the mysocket registry.
    pub TypeConfig:
        D = Request,
        R = Response,
);

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

pub(crate) const CF_LOGS: &str = "logs";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_SM_DATA: &str = "sm_data";
pub(crate) const CF_SM_META: &str = "sm_meta";

/// Opens (creating if needed) the node's RocksDB and returns its log store and state machine,
/// which share the database and its write-ahead log.
pub fn open(dir: &Path) -> io::Result<(LogStore, StateMachine)> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // We decide when the WAL is synced (group commit in the log store); RocksDB must not
    // silently drop it either.
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    let cfs = [CF_LOGS, CF_META, CF_SM_DATA, CF_SM_META].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs).map_err(|e| io::Error::other(e.to_string()))?;
    let db = Arc::new(db);
    let sm = StateMachine::open(db.clone(), dir.join("snapshots"))?;
    Ok((LogStore::new(db), sm))
}
