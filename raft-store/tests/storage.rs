//! The RocksDB store against openraft's own conformance suite, and durability across reopen.

use std::io;

use futures::stream;
use mysocket_raft_store::*;
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::TypeConfigExt;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use openraft::StorageError;
use tempfile::TempDir;
use uuid::Uuid;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = open(dir.path()).expect("open store");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_conformance_suite() {
    Suite::test_all(Builder).await.expect("storage conformance");
}

type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;

fn entry(index: u64, cmd: Command) -> Entry {
    Entry::new_normal(
        openraft::testing::log_id::<TypeConfig>(1, 1, index),
        Request { request_id: Some(format!("r{index}")), at_ms: index, cmd },
    )
}

fn account(n: u32) -> Command {
    Command::CreateAccount {
        user_id: Uuid::from_u128(n as u128 + 1),
        name: format!("user {n}"),
        email: format!("u{n}@example.com"),
        password_hash: "$argon2id$fake".into(),
        sshkey: "ssh-ed25519 AAAA".into(),
        max_accounts: None,
    }
}

/// Appends and waits until the store reports the entries durable.
async fn append_durably(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, openraft::storage::IOFlushed::<TypeConfig>::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
}

async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) {
    let items: Vec<Result<openraft::storage::EntryResponder<TypeConfig>, io::Error>> =
        entries.into_iter().map(|e| Ok((e, None))).collect();
    sm.apply(stream::iter(items)).await.expect("apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_close_keeps_everything() {
    let dir = TempDir::new().unwrap();
    let (digest, vote) = {
        let (mut log, mut sm) = open(dir.path()).unwrap();
        let vote = openraft::impls::Vote::new_committed(3, 1);
        log.save_vote(&vote).await.unwrap();
        let entries: Vec<Entry> = (1..=20).map(|i| entry(i, account(i as u32))).collect();
        append_durably(&mut log, entries.clone()).await;
        apply(&mut sm, entries[..15].to_vec()).await;
        let digest = sm.registry().read().unwrap().digest();
        (digest, vote)
    };
    let (mut log, mut sm) = open(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index()), Some(20));
    assert_eq!(log.try_get_log_entries(1..=20).await.unwrap().len(), 20);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index()), Some(15));
    let reg = sm.registry();
    assert_eq!(reg.read().unwrap().digest(), digest);
    assert_eq!(reg.read().unwrap().counts().0, 15);
    assert_eq!(reg.read().unwrap().applied_index(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_installs_the_same_state_elsewhere() {
    let a = TempDir::new().unwrap();
    let (_, mut sm_a) = open(a.path()).unwrap();
    apply(&mut sm_a, (1..=30).map(|i| entry(i, account(i as u32))).collect()).await;
    let snap = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.as_ref().map(|l| l.index()), Some(30));

    let b = TempDir::new().unwrap();
    let (_, mut sm_b) = open(b.path()).unwrap();
    apply(&mut sm_b, vec![entry(1, account(999))]).await;
    sm_b.install_snapshot(&snap.meta, snap.snapshot.share()).await.unwrap();
    assert_eq!(sm_b.registry().read().unwrap().digest(), sm_a.registry().read().unwrap().digest());
    assert_eq!(sm_b.snapshots_installed(), 1);
    drop(sm_b);
    // The installed state and the snapshot itself survive a restart.
    let (_, mut sm_b) = open(b.path()).unwrap();
    assert_eq!(sm_b.registry().read().unwrap().digest(), sm_a.registry().read().unwrap().digest());
    let cur = sm_b.get_current_snapshot().await.unwrap().expect("snapshot kept");
    assert_eq!(cur.meta, snap.meta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_truncate_leave_no_hole() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _) = open(dir.path()).unwrap();
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, account(i as u32))).collect();
        append_durably(&mut log, entries).await;
        log.purge(openraft::testing::log_id::<TypeConfig>(1, 1, 4)).await.unwrap();
        log.truncate_after(Some(openraft::testing::log_id::<TypeConfig>(1, 1, 8))).await.unwrap();
    }
    let (mut log, _) = open(dir.path()).unwrap();
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id.map(|l| l.index()), Some(4));
    assert_eq!(st.last_log_id.map(|l| l.index()), Some(8));
    let got: Vec<u64> = log.try_get_log_entries(0..100).await.unwrap().iter().map(|e| e.index()).collect();
    assert_eq!(got, vec![5, 6, 7, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_build_racing_an_install_fails_neither() {
    let a = TempDir::new().unwrap();
    let (_, mut sm_a) = open(a.path()).unwrap();
    apply(&mut sm_a, (1..=30).map(|i| entry(i, account(i as u32))).collect()).await;
    let snap = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let b = TempDir::new().unwrap();
    let (_, mut sm_b) = open(b.path()).unwrap();
    apply(&mut sm_b, (1..=10).map(|i| entry(i, account(i as u32))).collect()).await;
    for _ in 0..20 {
        let mut builder = sm_b.get_snapshot_builder().await;
        let mut installer = sm_b.clone();
        let (built, installed) =
            tokio::join!(builder.build_snapshot(), installer.install_snapshot(&snap.meta, snap.snapshot.share()));
        built.expect("build");
        installed.expect("install");
    }
    // The newest snapshot is the one kept.
    let cur = sm_b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta.last_log_id, snap.meta.last_log_id);
}

async fn indexes(log: &mut LogStore, from: u64) -> Vec<u64> {
    log.try_get_log_entries(from..100).await.unwrap().iter().map(|e| e.index()).collect()
}

/// The newest entries are served from memory: whatever appends, truncations and purges did,
/// reads must match what the disk holds (a reopened store reads only the disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_read_from_memory_match_the_disk() {
    let dir = TempDir::new().unwrap();
    let at = |term: u64, index: u64| {
        Entry::new_normal(
            openraft::testing::log_id::<TypeConfig>(term, 1, index),
            Request { request_id: Some(format!("t{term}-{index}")), at_ms: index, cmd: account(index as u32) },
        )
    };
    let encoded = |entries: Vec<Entry>| entries.iter().map(|e| serde_json::to_string(e).unwrap()).collect::<Vec<_>>();
    let live = {
        let (mut log, _) = open(dir.path()).unwrap();
        append_durably(&mut log, (1..=10).map(|i| at(1, i)).collect()).await;
        assert_eq!(
            encoded(log.try_get_log_entries(3..=10).await.unwrap()),
            encoded((3..=10).map(|i| at(1, i)).collect())
        );
        // A new leader's entries replace the tail from 7 on.
        log.truncate_after(Some(openraft::testing::log_id::<TypeConfig>(1, 1, 6))).await.unwrap();
        assert_eq!(indexes(&mut log, 3).await, (3..=6).collect::<Vec<_>>());
        append_durably(&mut log, (7..=12).map(|i| at(2, i)).collect()).await;
        log.purge(openraft::testing::log_id::<TypeConfig>(1, 1, 4)).await.unwrap();
        assert_eq!(indexes(&mut log, 1).await, (5..=12).collect::<Vec<_>>());
        assert_eq!(indexes(&mut log, 5).await, (5..=12).collect::<Vec<_>>());
        // The tail replaced again, from 12 on.
        log.truncate_after(Some(openraft::testing::log_id::<TypeConfig>(2, 1, 11))).await.unwrap();
        assert_eq!(indexes(&mut log, 5).await, (5..=11).collect::<Vec<_>>());
        append_durably(&mut log, vec![at(3, 12), at(3, 13)]).await;
        let mut reads = Vec::new();
        for (a, b) in [(0, 100), (5, 9), (7, 13), (12, 14), (13, 13), (20, 30)] {
            reads.push(encoded(log.try_get_log_entries(a..b).await.unwrap()));
        }
        reads
    };
    let (mut log, _) = open(dir.path()).unwrap();
    let mut reads = Vec::new();
    for (a, b) in [(0, 100), (5, 9), (7, 13), (12, 14), (13, 13), (20, 30)] {
        reads.push(encoded(log.try_get_log_entries(a..b).await.unwrap()));
    }
    assert_eq!(live, reads);
    assert_eq!(indexes(&mut log, 0).await, (5..=13).collect::<Vec<_>>());
    let terms: Vec<u64> =
        log.try_get_log_entries(0..100).await.unwrap().iter().map(|e| e.log_id().leader_id.term).collect();
    assert_eq!(terms, vec![1, 1, 2, 2, 2, 2, 2, 3, 3]);
}
