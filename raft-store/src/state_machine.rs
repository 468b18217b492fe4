//! The registry state machine on RocksDB.
//!
//! Applied rows, `last_applied` and the membership are written in one batch, so a restart
//! never sees data without the index it belongs to. The batch shares the write-ahead log with
//! the Raft log, so it is durable no later than the next synced log write, and always before
//! any log entry it depends on is purged. Snapshots are a consistent
//! RocksDB view of those rows, stored in one file and streamed to followers in chunks.

use std::fs;
use std::io;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;

use futures::Stream;
use futures::TryStreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::StoredMembershipOf;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::Response;
use crate::registry::Dirty;
use crate::registry::Registry;
use crate::TypeConfig;
use crate::CF_SM_DATA;
use crate::CF_SM_META;

const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const SNAPSHOT_FILE: &str = "current.snapshot";

fn other<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

fn invalid<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// What one applied log entry did, for subscribers on this node (SSH sessions that must close
/// when superseded, listeners that follow sockets).
#[derive(Clone, Debug)]
pub struct Applied {
    pub index: u64,
    pub response: Response,
}

/// Snapshot file and wire format: the metadata plus every registry row.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMetaOf<TypeConfig>,
    rows: Vec<(String, String)>,
}

/// Shared read access to the applied registry, for the API, the proxy and the SSH server.
pub type SharedRegistry = Arc<RwLock<Registry>>;

#[derive(Clone)]
pub struct StateMachine {
    db: Arc<DB>,
    registry: SharedRegistry,
    snapshot_dir: PathBuf,
    events: broadcast::Sender<Applied>,
    /// Snapshots received from a leader and installed since start (for tests and reports).
    installed: Arc<std::sync::atomic::AtomicU64>,
    /// Serialises writes of the snapshot file (a build and an install may race) and remembers
    /// the last index written, so an older snapshot never replaces a newer one.
    snapshot_file: Arc<std::sync::Mutex<Option<u64>>>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateMachine")
    }
}

impl StateMachine {
    pub(crate) fn open(db: Arc<DB>, snapshot_dir: PathBuf) -> io::Result<StateMachine> {
        fs::create_dir_all(&snapshot_dir)?;
        let cf = db.cf_handle(CF_SM_DATA).expect("sm_data column family exists");
        let mut raw = Vec::new();
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(other)?;
            raw.push((
                String::from_utf8(k.to_vec()).map_err(invalid)?,
                String::from_utf8(v.to_vec()).map_err(invalid)?,
            ));
        }
        let mut registry = Registry::from_rows(raw.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(invalid)?;
        let (events, _) = broadcast::channel(4096);
        let mut sm = StateMachine {
            db,
            registry: Default::default(),
            snapshot_dir,
            events,
            installed: Default::default(),
            snapshot_file: Default::default(),
        };
        let (last, _) = sm.read_meta(None)?;
        registry.set_applied_index(last.map(|l| l.index()).unwrap_or(0));
        sm.registry = Arc::new(RwLock::new(registry));
        Ok(sm)
    }

    /// The registry as of the last applied entry.
    pub fn registry(&self) -> SharedRegistry {
        self.registry.clone()
    }

    /// Every applied entry's response, in log order. Lagging receivers miss events and are
    /// told so; they must resynchronise from [`StateMachine::registry`].
    pub fn subscribe(&self) -> broadcast::Receiver<Applied> {
        self.events.subscribe()
    }

    /// How many snapshots this node has installed from a leader since it started.
    pub fn snapshots_installed(&self) -> u64 {
        self.installed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn read_meta(
        &self,
        snap: Option<&rocksdb::Snapshot<'_>>,
    ) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        let cf = self.db.cf_handle(CF_SM_META).expect("sm_meta column family exists");
        let get = |k: &[u8]| match snap {
            Some(s) => s.get_cf(cf, k),
            None => self.db.get_cf(cf, k),
        };
        let last_applied = match get(KEY_LAST_APPLIED).map_err(other)? {
            Some(b) => serde_json::from_slice(&b).map_err(invalid)?,
            None => None,
        };
        let membership = match get(KEY_MEMBERSHIP).map_err(other)? {
            Some(b) => serde_json::from_slice(&b).map_err(invalid)?,
            None => StoredMembershipOf::<TypeConfig>::default(),
        };
        Ok((last_applied, membership))
    }

    fn write_snapshot_file(&self, file: &SnapshotFile) -> io::Result<Vec<u8>> {
        let bytes = serde_json::to_vec(file).map_err(other)?;
        let index = file.meta.last_log_id.as_ref().map(|l| l.index());
        let mut current = self.snapshot_file.lock().expect("snapshot file lock");
        if let (Some(cur), Some(new)) = (*current, index) {
            if new < cur {
                return Ok(bytes);
            }
        }
        let tmp = self.snapshot_dir.join(format!("{SNAPSHOT_FILE}.{}.tmp", uuid::Uuid::new_v4().simple()));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.snapshot_dir.join(SNAPSHOT_FILE))?;
        if let Ok(d) = fs::File::open(&self.snapshot_dir) {
            let _ = d.sync_all();
        }
        *current = index.or(*current);
        Ok(bytes)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            // One RocksDB snapshot for rows and metadata: a consistent point even while
            // entries keep being applied.
            let snap = this.db.snapshot();
            let (last_applied, membership) = this.read_meta(Some(&snap))?;
            let cf = this.db.cf_handle(CF_SM_DATA).expect("sm_data column family exists");
            let mut rows = Vec::new();
            for item in snap.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                let (k, v) = item.map_err(other)?;
                rows.push((
                    String::from_utf8(k.to_vec()).map_err(invalid)?,
                    String::from_utf8(v.to_vec()).map_err(invalid)?,
                ));
            }
            let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: last_applied, last_membership: membership };
            let file = SnapshotFile { meta: meta.clone(), rows };
            let bytes = this.write_snapshot_file(&file)?;
            tracing::info!(last = ?meta.last_log_id, bytes = bytes.len(), "built snapshot");
            Ok(SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot: bytes })
        })
        .await
        .map_err(other)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        self.read_meta(None)
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut dirty = Dirty::new();
        let mut last_applied = None;
        let mut membership = None;
        let mut replies = Vec::new();
        let mut applied = Vec::new();
        // Committed entries are applied straight to the shared registry: they are durable in
        // the log, so a crash before the batch below is written only replays them.
        let mut batch_entries = Vec::new();
        while let Some(er) = entries.try_next().await? {
            batch_entries.push(er);
        }
        let mut batch = WriteBatch::default();
        {
            let mut reg = self.registry.write().expect("registry lock");
            for (entry, responder) in batch_entries {
                let log_id = entry.log_id();
                let response = match &entry.payload {
                    EntryPayload::Blank => Response::Done,
                    EntryPayload::Normal(req) => reg.apply(req, &mut dirty),
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembershipOf::<TypeConfig>::new(Some(log_id), m.clone()));
                        Response::Done
                    }
                };
                reg.set_applied_index(log_id.index());
                applied.push(Applied { index: log_id.index(), response: response.clone() });
                last_applied = Some(log_id);
                if let Some(r) = responder {
                    replies.push((r, response));
                }
            }
            let cf_data = self.db.cf_handle(CF_SM_DATA).expect("sm_data column family exists");
            for key in &dirty {
                match reg.row(key) {
                    Some(v) => batch.put_cf(cf_data, key.encode(), v),
                    None => batch.delete_cf(cf_data, key.encode()),
                }
            }
        }
        let cf_meta = self.db.cf_handle(CF_SM_META).expect("sm_meta column family exists");
        if let Some(l) = &last_applied {
            batch.put_cf(cf_meta, KEY_LAST_APPLIED, serde_json::to_vec(&Some(l)).map_err(other)?);
        }
        if let Some(m) = &membership {
            batch.put_cf(cf_meta, KEY_MEMBERSHIP, serde_json::to_vec(m).map_err(other)?);
        }
        // Not synced on its own: it shares the WAL with the log, and every later synced write
        // (the next log append, and `last_purged` before any log is purged) makes it durable
        // first. Until then the log still holds these entries and a restart re-applies them.
        self.db.write_opt(batch, &WriteOptions::default()).map_err(other)?;
        // Subscribers see one event per answer: a batch's answers one by one.
        for a in applied {
            for response in a.response.each() {
                let _ = self.events.send(Applied { index: a.index, response: response.clone() });
            }
        }
        for (r, resp) in replies {
            r.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let file: SnapshotFile = serde_json::from_slice(&snapshot).map_err(invalid)?;
        let mut registry =
            Registry::from_rows(file.rows.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(invalid)?;
        registry.set_applied_index(meta.last_log_id.as_ref().map(|l| l.index()).unwrap_or(0));
        let cf_data = self.db.cf_handle(CF_SM_DATA).expect("sm_data column family exists");
        let cf_meta = self.db.cf_handle(CF_SM_META).expect("sm_meta column family exists");
        let mut batch = WriteBatch::default();
        for item in self.db.iterator_cf(cf_data, rocksdb::IteratorMode::Start) {
            let (k, _) = item.map_err(other)?;
            batch.delete_cf(cf_data, k);
        }
        for (k, v) in &file.rows {
            batch.put_cf(cf_data, k, v);
        }
        batch.put_cf(cf_meta, KEY_LAST_APPLIED, serde_json::to_vec(&meta.last_log_id).map_err(other)?);
        batch.put_cf(cf_meta, KEY_MEMBERSHIP, serde_json::to_vec(&meta.last_membership).map_err(other)?);
        let mut o = WriteOptions::default();
        o.set_sync(true);
        self.db.write_opt(batch, &o).map_err(other)?;
        self.write_snapshot_file(&SnapshotFile { meta: meta.clone(), rows: file.rows })?;
        *self.registry.write().expect("registry lock") = registry;
        self.installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(last = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let path = self.snapshot_dir.join(SNAPSHOT_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(invalid)?;
        Ok(Some(SnapshotOf::<TypeConfig, Vec<u8>> { meta: file.meta, snapshot: bytes }))
    }
}
