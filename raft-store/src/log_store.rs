//! The Raft log and vote in RocksDB.
//!
//! Durability rule: openraft is told an append is flushed only after the WAL holding it has
//! been synced. Appends are written (readable at once) on the caller's task and their
//! callbacks handed to one flusher thread, which syncs the WAL once for every callback it has
//! queued: group commit, so 1,000 concurrent writers cost a handful of fsyncs, not 1,000.
//!
//! The newest entries are also kept in memory ([`Recent`]): replication reads an entry right
//! after it is appended, and the state machine right after it commits; served from memory,
//! neither reads it back from RocksDB nor decodes its JSON.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::alias::EntryOf;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::VoteOf;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;

use crate::TypeConfig;
use crate::CF_LOGS;
use crate::CF_META;

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

fn other<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

/// Log indexes as big-endian keys so RocksDB's order is numeric order.
fn index_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn key_index(k: &[u8]) -> io::Result<u64> {
    let b: [u8; 8] = k.try_into().map_err(|_| other("log key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(b))
}

/// Most entries kept in memory, and most bytes (as encoded): a batch entry can hold 256 requests.
const RECENT_ENTRIES: usize = 1024;
const RECENT_BYTES: usize = 4 << 20;

/// The newest entries of the log, as appended: always a run of consecutive indexes ending at the
/// log's last entry, or empty. Every change to the log changes it the same way, after the
/// database.
#[derive(Default)]
struct Recent {
    entries: VecDeque<(EntryOf<TypeConfig>, usize)>,
    bytes: usize,
}

impl Recent {
    fn append(&mut self, new: Vec<(EntryOf<TypeConfig>, usize)>) {
        let Some((first, _)) = new.first() else { return };
        if self.entries.back().is_some_and(|(last, _)| last.index() + 1 != first.index()) {
            self.clear();
        }
        for (e, size) in new {
            self.bytes += size;
            self.entries.push_back((e, size));
        }
        while self.entries.len() > RECENT_ENTRIES || (self.bytes > RECENT_BYTES && self.entries.len() > 1) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Drops the entries after index `last` (all of them for `None`).
    fn truncate_after(&mut self, last: Option<u64>) {
        while let Some((e, size)) = self.entries.back() {
            if last.is_some_and(|l| e.index() <= l) {
                break;
            }
            self.bytes -= size;
            self.entries.pop_back();
        }
    }

    /// Drops the entries up to index `upto`.
    fn purge(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.index() <= upto) {
            self.pop_front();
        }
    }

    /// The entries from `start` to `end` (exclusive), if the first of them is here (the run
    /// reaches the log's end, so none after it is missing).
    fn get(&self, start: u64, end: u64) -> Option<Vec<EntryOf<TypeConfig>>> {
        let first = self.entries.front()?.0.index();
        if start < first {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let take = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX);
        Some(self.entries.iter().skip(skip).take(take).map(|(e, _)| e.clone()).collect())
    }
}

/// RocksDB-backed [`RaftLogStorage`].
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: mpsc::Sender<IOFlushed<TypeConfig>>,
    recent: Arc<Mutex<Recent>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> LogStore {
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        // A weak handle, so closing the store closes the database at once.
        let fdb = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || {
                // Ends when every LogStore clone (every sender) is dropped.
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let res = match fdb.upgrade() {
                        Some(db) => db.flush_wal(true).map_err(other),
                        None => Err(other("the log store is closed")),
                    };
                    for cb in waiting {
                        cb.io_completed(res.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string())));
                    }
                }
            })
            .expect("spawn log sync thread");
        LogStore { db, flusher: tx, recent: Default::default() }
    }

    fn cf_logs(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_LOGS).expect("logs column family exists")
    }

    fn cf_meta(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_META).expect("meta column family exists")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.db.get_cf(self.cf_meta(), key).map_err(other)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T, sync: bool) -> io::Result<()> {
        let bytes = serde_json::to_vec(v).map_err(other)?;
        let opts = if sync { synced() } else { WriteOptions::default() };
        self.db.put_cf_opt(self.cf_meta(), key, bytes, &opts).map_err(other)
    }

    fn decode(bytes: &[u8]) -> io::Result<EntryOf<TypeConfig>> {
        serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(entries) = self.recent.lock().expect("recent entries lock").get(start, end) {
            return Ok(entries);
        }
        let mut out = Vec::new();
        let it = self
            .db
            .iterator_cf(self.cf_logs(), rocksdb::IteratorMode::From(&index_key(start), rocksdb::Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(other)?;
            let idx = key_index(&k)?;
            if !range.contains(&idx) {
                break;
            }
            let entry = Self::decode(&v)?;
            if entry.index() != idx {
                return Err(other(format!("log entry at key {idx} has index {}", entry.index())));
            }
            out.push(entry);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last = match self.db.iterator_cf(self.cf_logs(), rocksdb::IteratorMode::End).next() {
            None => None,
            Some(item) => {
                let (_, v) = item.map_err(other)?;
                Some(Self::decode(&v)?.log_id())
            }
        };
        let last_purged: Option<LogIdOf<TypeConfig>> = self.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = last.or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        // Synced: a vote that is forgotten after a crash could be given twice in one term.
        let db = self.db.clone();
        let bytes = serde_json::to_vec(vote).map_err(other)?;
        tokio::task::spawn_blocking(move || {
            let cf = db.cf_handle(CF_META).expect("meta column family exists");
            db.put_cf_opt(cf, KEY_VOTE, bytes, &synced()).map_err(other)
        })
        .await
        .map_err(other)?
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        // Not synced: it only lets a restarted node apply what it already had sooner.
        self.put_meta(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.get_meta::<Option<LogIdOf<TypeConfig>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + Send,
    {
        let mut batch = WriteBatch::default();
        let mut kept = Vec::new();
        for e in entries {
            let v = serde_json::to_vec(&e).map_err(other)?;
            batch.put_cf(self.cf_logs(), index_key(e.index()), &v);
            kept.push((e, v.len()));
        }
        // Written here so the entries are readable when this returns; made durable by the
        // flusher before openraft hears they are.
        self.db.write(batch).map_err(other)?;
        self.recent.lock().expect("recent entries lock").append(kept);
        self.flusher.send(callback).map_err(|_| other("log sync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let keep = last_log_id.as_ref().map(|l| l.index());
        let from = keep.map(|l| l + 1).unwrap_or(0);
        tracing::debug!(from, "truncate log");
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf_logs(), index_key(from), index_key(u64::MAX));
        // Delete the last key too: delete_range's end is exclusive.
        batch.delete_cf(self.cf_logs(), index_key(u64::MAX));
        self.db.write_opt(batch, &synced()).map_err(other)?;
        self.recent.lock().expect("recent entries lock").truncate_after(keep);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        tracing::debug!(upto = log_id.index(), "purge log");
        // last_purged first (synced): if we crash between the two writes, the log still
        // starts right after last_purged and has no hole.
        self.put_meta(KEY_LAST_PURGED, &log_id, true)?;
        self.db.delete_range_cf(self.cf_logs(), index_key(0), index_key(log_id.index() + 1)).map_err(other)?;
        self.recent.lock().expect("recent entries lock").purge(log_id.index());
        Ok(())
    }
}
