//! The registry state machine on RocksDB.
//!
//! Applied rows, `last_applied` and the membership are written in one batch, so a restart
//! never sees data without the index it belongs to. The batch shares the write-ahead log with
//! the Raft log, so it is durable no later than the next synced log write, and always before
//! any log entry it depends on is purged. Snapshots are a consistent
//! RocksDB view of those rows, written to one file a row per line and streamed to followers
//! in chunks; a received snapshot goes to disk as it arrives and is installed from there, so
//! no snapshot is ever held whole in memory.

use std::fs;
use std::io;
use std::io::BufRead;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
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
use tokio::sync::watch;

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

/// First line of a snapshot file (and of its wire form): the metadata. Each later line is one
/// registry row, `[key, value]`. (Files written before rows had lines of their own carry every
/// row in `rows` on this line; they are still read.)
#[derive(Serialize, Deserialize)]
struct SnapshotHead {
    meta: SnapshotMetaOf<TypeConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rows: Vec<(String, String)>,
}

/// A snapshot's bytes, on disk. The file is open, so a newer snapshot taking the path later
/// does not change what a reader of this one sees; reads are positional, so copies read
/// independently. A snapshot being received lives in a temporary file that is removed when
/// the snapshot is dropped without being installed.
#[derive(Debug)]
pub struct SnapshotData {
    file: Arc<fs::File>,
    len: u64,
    temp: Option<PathBuf>,
}

impl SnapshotData {
    fn open(path: &Path) -> io::Result<SnapshotData> {
        let file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        Ok(SnapshotData { file: Arc::new(file), len, temp: None })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Another handle on the same bytes (not owning a temporary file).
    pub fn share(&self) -> SnapshotData {
        SnapshotData { file: self.file.clone(), len: self.len, temp: None }
    }

    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn reader(&self) -> io::BufReader<Positional<'_>> {
        io::BufReader::with_capacity(256 * 1024, Positional { data: self, pos: 0 })
    }
}

impl Drop for SnapshotData {
    fn drop(&mut self) {
        if let Some(p) = self.temp.take() {
            let _ = fs::remove_file(p);
        }
    }
}

struct Positional<'a> {
    data: &'a SnapshotData,
    pos: u64,
}

impl io::Read for Positional<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A snapshot being received: its bytes are appended to a temporary file in the node's
/// snapshot directory as they arrive.
pub struct IncomingSnapshot {
    file: io::BufWriter<fs::File>,
    path: Option<PathBuf>,
    len: u64,
}

impl IncomingSnapshot {
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The complete snapshot, synced to disk, ready to install.
    pub fn finish(mut self) -> io::Result<SnapshotData> {
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        let path = self.path.take().expect("an incoming snapshot finishes once");
        let file = fs::File::open(&path)?;
        Ok(SnapshotData { file: Arc::new(file), len: self.len, temp: Some(path) })
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Shared read access to the applied registry, for the API, the proxy and the SSH server.
pub type SharedRegistry = Arc<RwLock<Registry>>;

#[derive(Clone)]
pub struct StateMachine {
    db: Arc<DB>,
    registry: SharedRegistry,
    snapshot_dir: PathBuf,
    events: broadcast::Sender<Applied>,
    /// The index of the last entry the registry reflects, published as soon as it does.
    applied: Arc<watch::Sender<u64>>,
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
        // Snapshots whose receiving a crash interrupted.
        for e in fs::read_dir(&snapshot_dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
        let (events, _) = broadcast::channel(4096);
        let mut sm = StateMachine {
            db,
            registry: Default::default(),
            snapshot_dir,
            events,
            applied: Arc::new(watch::channel(0).0),
            installed: Default::default(),
            snapshot_file: Default::default(),
        };
        let registry = sm.load_registry()?;
        sm.applied.send_replace(registry.applied_index());
        sm.registry = Arc::new(RwLock::new(registry));
        Ok(sm)
    }

    /// The registry as the database holds it.
    fn load_registry(&self) -> io::Result<Registry> {
        let cf = self.db.cf_handle(CF_SM_DATA).expect("sm_data column family exists");
        let mut raw = Vec::new();
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(other)?;
            raw.push((
                String::from_utf8(k.to_vec()).map_err(invalid)?,
                String::from_utf8(v.to_vec()).map_err(invalid)?,
            ));
        }
        let mut registry = Registry::from_rows(raw.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(invalid)?;
        let (last, _) = self.read_meta(None)?;
        registry.set_applied_index(last.map(|l| l.index()).unwrap_or(0));
        Ok(registry)
    }

    fn temp_path(&self) -> PathBuf {
        self.snapshot_dir.join(format!("{SNAPSHOT_FILE}.{}.tmp", uuid::Uuid::new_v4().simple()))
    }

    /// Starts receiving a snapshot from a leader into a temporary file.
    pub fn receive_snapshot(&self) -> io::Result<IncomingSnapshot> {
        let path = self.temp_path();
        let file = fs::File::create(&path)?;
        Ok(IncomingSnapshot { file: io::BufWriter::with_capacity(256 * 1024, file), path: Some(path), len: 0 })
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

    /// The index of the last entry applied to the registry, changed the moment the registry
    /// reflects a newer one (without waiting for Raft's metrics to catch up): what a reader
    /// that must see a given write waits on.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
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

    /// Makes the complete, synced file at `tmp` (holding the snapshot up to `index`) the
    /// current snapshot, unless a newer one already is; in that case `tmp` is removed.
    fn keep_snapshot_file(&self, tmp: &Path, index: Option<u64>) -> io::Result<()> {
        let mut current = self.snapshot_file.lock().expect("snapshot file lock");
        if let (Some(cur), Some(new)) = (*current, index) {
            if new < cur {
                let _ = fs::remove_file(tmp);
                return Ok(());
            }
        }
        fs::rename(tmp, self.snapshot_dir.join(SNAPSHOT_FILE))?;
        if let Ok(d) = fs::File::open(&self.snapshot_dir) {
            let _ = d.sync_all();
        }
        *current = index.or(*current);
        Ok(())
    }

    /// Keeps `data` as the current snapshot: a file received into this node's snapshot
    /// directory is renamed, anything else is copied first.
    fn keep_snapshot(&self, data: &mut SnapshotData, index: Option<u64>) -> io::Result<()> {
        let tmp = match data.temp.take() {
            Some(p) if p.parent() == Some(self.snapshot_dir.as_path()) => p,
            other => {
                data.temp = other;
                let tmp = self.temp_path();
                let mut out = fs::File::create(&tmp)?;
                io::copy(&mut data.reader(), &mut out)?;
                out.sync_all()?;
                tmp
            }
        };
        self.keep_snapshot_file(&tmp, index)
    }
}

fn encode_line<T: Serialize>(out: &mut impl Write, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(other)?;
    out.write_all(b"\n")
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            // One RocksDB snapshot for rows and metadata: a consistent point even while
            // entries keep being applied. Rows go straight from it to the file.
            let snap = this.db.snapshot();
            let (last_applied, membership) = this.read_meta(Some(&snap))?;
            let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: last_applied, last_membership: membership };
            let tmp = this.temp_path();
            let written = (|| {
                let mut out = io::BufWriter::with_capacity(256 * 1024, fs::File::create(&tmp)?);
                encode_line(&mut out, &SnapshotHead { meta: meta.clone(), rows: Vec::new() })?;
                let cf = this.db.cf_handle(CF_SM_DATA).expect("sm_data column family exists");
                for item in snap.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                    let (k, v) = item.map_err(other)?;
                    let row = (std::str::from_utf8(&k).map_err(invalid)?, std::str::from_utf8(&v).map_err(invalid)?);
                    encode_line(&mut out, &row)?;
                }
                let file = out.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                io::Result::Ok(())
            })();
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            let data = SnapshotData::open(&tmp)?;
            this.keep_snapshot_file(&tmp, meta.last_log_id.as_ref().map(|l| l.index()))?;
            tracing::info!(last = ?meta.last_log_id, bytes = data.len(), "built snapshot");
            Ok(SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot: data })
        })
        .await
        .map_err(other)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
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
        if let Some(l) = &last_applied {
            self.applied.send_replace(l.index());
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
        mut snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let cf_data = self.db.cf_handle(CF_SM_DATA).expect("sm_data column family exists");
        let cf_meta = self.db.cf_handle(CF_SM_META).expect("sm_meta column family exists");
        // One batch replaces every row and the metadata, so a crash leaves the old state or
        // the new one. The file is read a line at a time.
        let mut batch = WriteBatch::default();
        for item in self.db.iterator_cf(cf_data, rocksdb::IteratorMode::Start) {
            let (k, _) = item.map_err(other)?;
            batch.delete_cf(cf_data, k);
        }
        let mut lines = snapshot.reader().lines();
        let head: SnapshotHead =
            serde_json::from_str(&lines.next().ok_or_else(|| invalid("empty snapshot"))??).map_err(invalid)?;
        if head.meta.last_log_id != meta.last_log_id {
            return Err(invalid(format!(
                "snapshot file holds {:?}, not the announced {:?}",
                head.meta.last_log_id, meta.last_log_id
            )));
        }
        for (k, v) in &head.rows {
            batch.put_cf(cf_data, k, v);
        }
        for line in lines {
            let (k, v): (String, String) = serde_json::from_str(&line?).map_err(invalid)?;
            batch.put_cf(cf_data, k, v);
        }
        batch.put_cf(cf_meta, KEY_LAST_APPLIED, serde_json::to_vec(&meta.last_log_id).map_err(other)?);
        batch.put_cf(cf_meta, KEY_MEMBERSHIP, serde_json::to_vec(&meta.last_membership).map_err(other)?);
        let mut o = WriteOptions::default();
        o.set_sync(true);
        self.db.write_opt(batch, &o).map_err(other)?;
        let registry = self.load_registry()?;
        self.keep_snapshot(&mut snapshot, meta.last_log_id.as_ref().map(|l| l.index()))?;
        let index = registry.applied_index();
        *self.registry.write().expect("registry lock") = registry;
        self.applied.send_replace(index);
        self.installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(last = ?meta.last_log_id, bytes = snapshot.len(), "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        let data = match SnapshotData::open(&self.snapshot_dir.join(SNAPSHOT_FILE)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let head: SnapshotHead = match data.reader().lines().next() {
            Some(line) => serde_json::from_str(&line?).map_err(invalid)?,
            None => return Err(invalid("empty snapshot file")),
        };
        Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> { meta: head.meta, snapshot: data }))
    }
}
