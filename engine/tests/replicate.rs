//! End-to-end replication against real parts: a SQLite writer on its own connection, the store
//! replicating to a file replica, our restore, and the real `litestream restore` 0.5.17.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use engine::restore::Target;
use tokio_util::sync::CancellationToken;

const CATCH_UP: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_restores_identically_with_ours_and_litestream() {
    let h = Harness::new();
    let app = app_conn(&h.db);
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    store.register(ID, &h.db).unwrap();
    let mut seq = 0;
    for round in 0..6u64 {
        for i in 0..150u64 {
            write_txn(&app, &mut seq, 1 + ((i * 13 + round) % 40) as usize);
            if i % 10 == 0 {
                store.wake(ID);
            }
        }
        store.wake(ID);
        match round {
            // The application checkpoints itself, as SQLite apps do.
            1 => app.execute_batch("PRAGMA wal_checkpoint(PASSIVE)").unwrap(),
            2 => {
                let _ = app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
            // Pause past the idle timeout: the tenant seals its WAL and goes cold.
            3 => tokio::time::sleep(Duration::from_millis(1500)).await,
            4 => app
                .execute_batch("DELETE FROM t WHERE id % 3 = 0; VACUUM;")
                .unwrap(),
            _ => {}
        }
        store.wake(ID);
    }
    let expected = dump(&h.db);
    let ours = h.wait_replicated(&expected, CATCH_UP).await;

    let theirs = h.out("litestream.db");
    litestream_restore(&h.replica_dir(), &theirs, &[]).unwrap();
    assert_eq!(
        dump(&theirs),
        expected,
        "litestream restore differs from the source"
    );
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap(),
        "our restore and litestream's are not byte-identical"
    );
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restore_returns_exactly_the_first_burst() {
    let h = Harness::new();
    let app = app_conn(&h.db);
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    store.register(ID, &h.db).unwrap();
    let mut seq = 0;
    for _ in 0..10 {
        write_txn(&app, &mut seq, 10);
    }
    store.wake(ID);
    let first = dump(&h.db);
    h.wait_replicated(&first, CATCH_UP).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let between = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..10 {
        write_txn(&app, &mut seq, 10);
        store.wake(ID);
    }
    let all = dump(&h.db);
    h.wait_replicated(&all, CATCH_UP).await;
    assert!(all.len() > first.len());

    let ours = h
        .restore(
            "pit.db",
            Target {
                timestamp: Some(between),
                txid: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(dump(&ours), first);

    let ts = engine::restore::fmt_time(between);
    let theirs = h.out("pit-litestream.db");
    litestream_restore(&h.replica_dir(), &theirs, &["-timestamp", &ts]).unwrap();
    assert_eq!(dump(&theirs), first, "litestream -timestamp {ts}");
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// The regression of `shared/docs/restart-safety.md`: while the replicator is down the app
/// commits, checkpoints (so the WAL restarts) and commits again. Litestream 0.5.17 loses the
/// rows committed before the checkpoint; we must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_app_checkpoint_loses_no_rows() {
    for mode in ["PASSIVE", "TRUNCATE", "RESTART"] {
        let h = Harness::new();
        let app = app_conn(&h.db);
        let mut seq = 0;
        for round in 0..3 {
            let cancel = CancellationToken::new();
            let store = h.store(&cancel);
            store.register(ID, &h.db).unwrap();
            for _ in 0..20 {
                write_txn(&app, &mut seq, 5);
                store.wake(ID);
            }
            let expected = dump(&h.db);
            h.wait_replicated(&expected, CATCH_UP).await;
            assert!(store.shutdown(Duration::from_secs(5)).await);
            drop(store);

            // Replicator down: commit, checkpoint, commit (the WAL restarts). The first commits
            // update rows all over the table, so pages that the later commits do not touch carry
            // them: a replica that skipped them restores stale rows.
            for _ in 0..5 {
                write_txn(&app, &mut seq, 7);
            }
            app.execute(
                &format!("UPDATE t SET v = v || '-r{round}' WHERE id % 4 = 1"),
                [],
            )
            .unwrap();
            app.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
                .unwrap();
            for _ in 0..3 {
                write_txn(&app, &mut seq, 2);
            }

            let cancel = CancellationToken::new();
            let store = h.store(&cancel);
            store.register(ID, &h.db).unwrap();
            let expected = dump(&h.db);
            let ours = h.wait_replicated(&expected, CATCH_UP).await;
            assert_eq!(dump(&ours).len(), seq as usize, "{mode} round {round}");
            let theirs = h.out("theirs.db");
            let _ = std::fs::remove_file(&theirs);
            litestream_restore(&h.replica_dir(), &theirs, &[]).unwrap();
            assert_eq!(
                dump(&theirs),
                expected,
                "{mode} round {round}: litestream restore"
            );
            assert!(store.shutdown(Duration::from_secs(5)).await);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_byte_file_is_a_new_empty_database() {
    let h = Harness::new();
    std::fs::File::create(&h.db).unwrap();
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    store.register(ID, &h.db).unwrap();
    let start = std::time::Instant::now();
    loop {
        let s = store.status(ID).unwrap();
        if s.replicated_txid >= 1 {
            break;
        }
        assert!(
            start.elapsed() < CATCH_UP,
            "no snapshot of the empty database: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ours = h.restore("empty.db", Target::default()).await.unwrap();
    let c = rusqlite::Connection::open(&ours).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    // Then the app starts using it.
    let app = app_conn(&h.db);
    let mut seq = 0;
    write_txn(&app, &mut seq, 3);
    store.wake(ID);
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_sqlite_is_refused_with_a_reason() {
    let h = Harness::new();
    std::fs::write(
        &h.db,
        b"this is not a database, just text that is long enough",
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    store.register(ID, &h.db).unwrap();
    let start = std::time::Instant::now();
    loop {
        let s = store.status(ID).unwrap();
        if s.state == engine::tenant::State::Error {
            let err = s.last_error.unwrap();
            assert!(err.contains("not a SQLite database"), "{err}");
            break;
        }
        assert!(start.elapsed() < CATCH_UP, "{s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !h.replica_dir().join("ltx").exists(),
        "nothing may be replicated"
    );
    assert_eq!(
        std::fs::read(&h.db).unwrap(),
        b"this is not a database, just text that is long enough",
        "the file must be left untouched"
    );
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_snapshots_and_retention_keep_the_replica_restorable() {
    let h = Harness::new();
    let app = app_conn(&h.db);
    let cancel = CancellationToken::new();
    let mut cfg = fast_tenant_config();
    cfg.compaction = engine::compact::CompactionConfig {
        level_intervals: vec![
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4),
        ],
        snapshot_interval: Duration::from_secs(3),
        snapshot_retention: Duration::from_secs(5),
        l0_retention: Duration::from_secs(1),
        l0_retention_check: Duration::from_secs(1),
    };
    let store = h.store_with(&cancel, cfg);
    store.register(ID, &h.db).unwrap();
    let mut seq = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(9) {
        write_txn(&app, &mut seq, 3);
        app.execute(
            &format!("UPDATE t SET v = 'u{seq}' WHERE id % 7 = {}", seq % 7),
            [],
        )
        .unwrap();
        store.wake(ID);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected = dump(&h.db);
    h.wait_replicated(&expected, CATCH_UP).await;
    // Let the last compactions and retention run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let files = h
        .replica()
        .list_all(&CancellationToken::new())
        .await
        .unwrap();
    let count = |level: u8| files.iter().filter(|f| f.level == level).count();
    assert!(
        count(1) >= 1 && count(2) >= 1 && count(3) >= 1,
        "levels: {files:?}"
    );
    assert!(count(9) >= 1, "no snapshot: {files:?}");
    let l0 = count(0);
    let txids = files.iter().map(|f| f.max.0).max().unwrap();
    assert!(
        l0 < txids as usize / 2,
        "L0 not pruned: {l0} files for {txids} TXIDs"
    );
    assert!(
        !files.iter().any(|f| f.level == 0 && f.min.0 == 1),
        "the first L0 should be pruned by now"
    );

    let plan = engine::restore::plan(&files, &Target::default(), "replica").unwrap();
    assert!(
        plan.len() < 10,
        "restore plan should be short after compaction: {plan:?}"
    );
    let ours = h.restore("compacted.db", Target::default()).await.unwrap();
    assert_eq!(dump(&ours), expected);
    let theirs = h.out("compacted-litestream.db");
    litestream_restore(&h.replica_dir(), &theirs, &[]).unwrap();
    assert_eq!(dump(&theirs), expected);
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// A tenant that stays hot through its writes, with an L1 boundary every 2 s (so its uploads
/// fold batches into L1 files) and every L0 kept (to see which batch has none).
fn folding_config() -> engine::tenant::TenantConfig {
    let mut cfg = fast_tenant_config();
    cfg.idle_timeout = Duration::from_secs(60);
    cfg.compaction = engine::compact::CompactionConfig {
        level_intervals: vec![Duration::from_secs(2), Duration::from_secs(3600)],
        l0_retention: Duration::from_secs(3600),
        ..Default::default()
    };
    cfg
}

/// A busy tenant's L1 compaction carries the batch that follows its boundary (one upload where
/// an L0 and an L1 were two): that batch has no L0 file, the L1 files chain without overlap, and
/// both restores reach every commit, the latest and exactly at each folded TXID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_tenant_folds_its_next_batch_into_the_l1_and_stays_restorable() {
    let h = Harness::new();
    let app = app_conn(&h.db);
    let cancel = CancellationToken::new();
    let store = h.store_with(&cancel, folding_config());
    store.register(ID, &h.db).unwrap();
    let mut seq = 0;
    // The state after each commit, to check the restore at a folded TXID exactly.
    let mut states = vec![];
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        write_txn(&app, &mut seq, 2);
        states.push(dump(&h.db));
        store.wake(ID);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let expected = dump(&h.db);
    h.wait_replicated(&expected, CATCH_UP).await;
    let files = h
        .replica()
        .list_all(&CancellationToken::new())
        .await
        .unwrap();
    let l0: std::collections::BTreeSet<u64> = files
        .iter()
        .filter(|f| f.level == 0)
        .map(|f| f.max.0)
        .collect();
    let l1: Vec<(u64, u64)> = files
        .iter()
        .filter(|f| f.level == 1)
        .map(|f| (f.min.0, f.max.0))
        .collect();
    assert!(l1.len() >= 2, "L1 files: {l1:?}");
    for w in l1.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "L1 files must chain: {l1:?}");
    }
    // Every TXID is in some file (the start file's may be only in the snapshot by now).
    let max = files.iter().map(|f| f.max.0).max().unwrap();
    for txid in 1..=max {
        assert!(
            files.iter().any(|f| (f.min.0..=f.max.0).contains(&txid)),
            "TXID {txid} is in no file: L0 {l0:?}, L1 {l1:?}"
        );
    }
    let folded: Vec<u64> = l1
        .iter()
        .map(|&(_, b)| b)
        .filter(|b| !l0.contains(b))
        .collect();
    assert!(
        !folded.is_empty(),
        "no L1 carried a batch of its own: L0 {l0:?}, L1 {l1:?}"
    );

    let ours = h.restore("folded.db", Target::default()).await.unwrap();
    assert_eq!(dump(&ours), expected);
    let theirs = h.out("folded-litestream.db");
    litestream_restore(&h.replica_dir(), &theirs, &[]).unwrap();
    assert_eq!(dump(&theirs), expected);
    for txid in folded {
        let target = engine::ltx::Txid(txid);
        let ours = h
            .restore(
                "at-fold.db",
                Target {
                    txid: Some(target),
                    timestamp: None,
                },
            )
            .await
            .unwrap();
        let at = dump(&ours);
        assert!(states.contains(&at), "TXID {txid}: not a committed state");
        let theirs = h.out(&format!("at-fold-{txid}-litestream.db"));
        litestream_restore(&h.replica_dir(), &theirs, &["-txid", &target.to_string()]).unwrap();
        assert_eq!(dump(&theirs), at, "litestream restore -txid {target}");
    }
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// `litestream restore -f` (follow mode: restore, then keep applying new files) keeps up with a
/// busy tenant whose L0 chain has gaps where its L1 files carry folded batches, and ends
/// identical to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litestream_follow_mode_keeps_up_with_folded_batches() {
    let h = Harness::new();
    let app = app_conn(&h.db);
    let cancel = CancellationToken::new();
    let store = h.store_with(&cancel, folding_config());
    store.register(ID, &h.db).unwrap();
    let mut seq = 0;
    write_txn(&app, &mut seq, 2);
    store.wake(ID);
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    let out = h.out("follower.db");
    let url = format!(
        "file://{}",
        std::fs::canonicalize(h.replica_dir()).unwrap().display()
    );
    let mut follower = std::process::Command::new(litestream_bin())
        .args(["restore", "-f", "-follow-interval", "200ms", "-o"])
        .arg(&out)
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("litestream restore -f starts");
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        write_txn(&app, &mut seq, 2);
        store.wake(ID);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let expected = dump(&h.db);
    h.wait_replicated(&expected, CATCH_UP).await;
    let files = h
        .replica()
        .list_all(&CancellationToken::new())
        .await
        .unwrap();
    let max = files.iter().map(|f| f.max.0).max().unwrap();
    let folded = files.iter().filter(|f| f.level == 1).any(|l1| {
        !files
            .iter()
            .any(|f| f.level == 0 && f.max == l1.max && f.min == l1.max)
    });
    assert!(folded, "no folded batch in the replica: {files:?}");
    // The follower records the TXID it applied in `<out>-txid`.
    let txid_file = h.out("follower.db-txid");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let applied = loop {
        let applied = std::fs::read_to_string(&txid_file)
            .ok()
            .and_then(|t| u64::from_str_radix(t.trim(), 16).ok())
            .unwrap_or(0);
        if applied >= max || std::time::Instant::now() > deadline {
            break applied;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = follower.kill();
    let output = follower.wait_with_output().unwrap();
    assert_eq!(
        applied,
        max,
        "the follower stopped at TXID {applied:#x} of {max:#x}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(dump(&out), expected);
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// The replica goes away for a while: the tenant shows an error, staging stays bounded, the app
/// keeps writing, and everything is replicated once the replica is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_outage_stages_boundedly_and_catches_up() {
    let h = Harness::new();
    let app = app_conn(&h.db);
    let cancel = CancellationToken::new();
    let mut cfg = fast_tenant_config();
    cfg.max_staged_bytes = 256 * 1024;
    let store = h.store_with(&cancel, cfg);
    store.register(ID, &h.db).unwrap();
    let mut seq = 0;
    write_txn(&app, &mut seq, 10);
    store.wake(ID);
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;

    // Outage: the replica directory is replaced by a file, so every write to it fails.
    let replica = h.replica_dir();
    let parked = h.out("replica-parked");
    std::fs::rename(&replica, &parked).unwrap();
    std::fs::write(&replica, b"not a directory").unwrap();
    let mut max_staged = 0u64;
    for _ in 0..60 {
        write_txn(&app, &mut seq, 20); // the application is never blocked
        store.wake(ID);
        tokio::time::sleep(Duration::from_millis(30)).await;
        max_staged = max_staged.max(dir_size(&h.state));
    }
    let s = store.status(ID).unwrap();
    assert_eq!(s.state, engine::tenant::State::Error, "{s:?}");
    assert!(s.last_error.is_some());
    // Bound + one full-page L0 of this small database + the anchor file.
    let db_size = std::fs::metadata(&h.db).unwrap().len()
        + std::fs::metadata(engine::db::wal_path(&h.db))
            .unwrap()
            .len();
    assert!(
        max_staged <= 256 * 1024 + 2 * db_size,
        "staging grew to {max_staged} bytes"
    );

    // Back: everything arrives.
    std::fs::remove_file(&replica).unwrap();
    std::fs::rename(&parked, &replica).unwrap();
    let expected = dump(&h.db);
    h.wait_replicated(&expected, Duration::from_secs(90)).await;
    let theirs = h.out("after-outage.db");
    litestream_restore(&h.replica_dir(), &theirs, &[]).unwrap();
    assert_eq!(dump(&theirs), expected);
    let start = std::time::Instant::now();
    while store.status(ID).unwrap().state == engine::tenant::State::Error {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "error state never cleared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}

/// A manager restart must not cost a full snapshot per tenant: a sealed (cold) tenant ships
/// nothing on start, and its next commit is an incremental L0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_with_sealed_tenants_ships_nothing_and_stays_incremental() {
    let h = Harness::new();
    let app = app_conn(&h.db);
    let mut seq = 0;
    for _ in 0..30 {
        write_txn(&app, &mut seq, 10);
    }
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    store.register(ID, &h.db).unwrap();
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    // Wait until it sealed and went cold (idle timeout 700 ms in tests).
    let start = std::time::Instant::now();
    while store.status(ID).unwrap().state != engine::tenant::State::Idle {
        assert!(start.elapsed() < CATCH_UP, "never went idle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = store.status(ID).unwrap().replicated_txid;
    assert!(store.shutdown(Duration::from_secs(5)).await);
    drop(store);

    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    store.register(ID, &h.db).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let l0 = |files: &[engine::client::LtxInfo]| {
        files.iter().filter(|f| f.level == 0).map(|f| f.max.0).max()
    };
    let files = h
        .replica()
        .list_all(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        l0(&files),
        Some(before),
        "a restart shipped something for an unchanged tenant"
    );

    write_txn(&app, &mut seq, 1);
    store.wake(ID);
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    let files = h
        .replica()
        .list_all(&CancellationToken::new())
        .await
        .unwrap();
    let newest = files
        .iter()
        .filter(|f| f.level == 0)
        .max_by_key(|f| f.max)
        .unwrap();
    let data = h
        .replica()
        .read(newest, &CancellationToken::new())
        .await
        .unwrap();
    let mut dec = engine::ltx::Decoder::new(&data[..]).unwrap();
    let commit = dec.header().commit;
    let mut buf = Vec::new();
    let mut pages = 0;
    while dec.next_page(&mut buf).unwrap().is_some() {
        pages += 1;
    }
    assert!(
        pages < commit / 2,
        "the first commit after a restart shipped {pages} of {commit} pages"
    );
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// A commit that only the seal finds (no wake: the tenant goes idle on its own) is shipped, and
/// the status the dashboard shows agrees: local and replicated positions equal, nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_found_while_going_idle_is_shipped_and_reported() {
    let h = Harness::new();
    let app = app_conn(&h.db);
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    let mut seq = 0;
    write_txn(&app, &mut seq, 5);
    store.register(ID, &h.db).unwrap();
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    // An announced change: the tenant is hot (past its first, start-up period, which closes at
    // once when the app is quiet).
    write_txn(&app, &mut seq, 5);
    store.wake(ID);
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    // Written while hot, never announced: only going cold (the seal) picks it up.
    write_txn(&app, &mut seq, 5);
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    let start = std::time::Instant::now();
    loop {
        let s = store.status(ID).unwrap();
        if s.state == engine::tenant::State::Idle && s.pending_since.is_none() {
            assert_eq!(s.local_txid, s.replicated_txid, "{s:?}");
            assert!(s.local_txid >= 2, "{s:?}");
            break;
        }
        assert!(start.elapsed() < CATCH_UP, "never idle: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// A crash mid-write leaves `*.tmp` files in a file replica; the next start removes them (and
/// only them) before writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_files_a_crash_left_in_the_replica_are_removed() {
    let h = Harness::new();
    let app = app_conn(&h.db);
    let mut seq = 0;
    write_txn(&app, &mut seq, 5);
    let level0 = h.replica_dir().join("ltx").join("0");
    std::fs::create_dir_all(&level0).unwrap();
    let stray = level0.join("0000000000000001-0000000000000001.ltx.tmp");
    std::fs::write(&stray, b"half a file").unwrap();
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    store.register(ID, &h.db).unwrap();
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    assert!(!stray.exists(), "the crash's temporary file is still there");
    assert!(
        std::fs::read_dir(&level0).unwrap().count() >= 1,
        "the replica's own files stay"
    );
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// The commonest application of all opens the database, commits and closes it again (a CLI, a
/// script, a request handler without a pool). SQLite's last connection to close checkpoints and
/// deletes the WAL if it can lock the database file exclusively; a hot tenant's connections must
/// keep that from happening, or commits it has not shipped vanish into the database file.
/// (Regression: reading pages through a second descriptor of the file dropped our POSIX locks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_closes_after_every_commit_loses_nothing() {
    let h = Harness::new();
    let mut seq = 0;
    write_txn(&app_conn(&h.db), &mut seq, 5);
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    store.register(ID, &h.db).unwrap();
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    for round in 0..30 {
        // Every 100 ms (the tenant stays hot: its idle timeout here is 700 ms), from another
        // process: within one process SQLite sees our connections and never thinks it is last.
        commit_and_close_in_another_process(&h.db, round);
        store.wake(ID);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if round >= 5 {
            // Hot since a few rounds: our connections are open, so the app's close must not
            // have checkpointed the WAL away.
            assert!(
                engine::db::wal_path(&h.db).exists(),
                "round {round}: the app's close deleted the WAL under a hot tenant"
            );
        }
    }
    let out = h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    assert_integrity(&out);
    litestream_restore(&h.replica_dir(), &h.out("theirs.db"), &[]).unwrap();
    assert_eq!(dump(&h.out("theirs.db")), dump(&h.db));
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// One transaction of 3 rows (one with overflow pages) by a `python3` process that opens the
/// database, commits and closes it, as most applications do.
fn commit_and_close_in_another_process(db: &std::path::Path, round: u32) {
    let script = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=5)
r = int(sys.argv[2])
with c:
    for i in range(3):
        c.execute("INSERT INTO t(v, blob) VALUES (?, zeroblob(?))", (f"py-{r}-{i}", 500 + 2500 * (i == 2)))
c.close()
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .arg(round.to_string())
        .output()
        .expect("python3 (the machine's, for a second process) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
