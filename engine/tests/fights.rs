//! The application fights back: five things real applications do to their own database while
//! the manager replicates it (the real store, driven by the real directory watcher).
//!
//! Each scenario asserts the promises of the reliability issue: the application never gets an
//! error from SQLite (SQLITE_BUSY above all) with its 5 s busy timeout, the source passes
//! `PRAGMA integrity_check`, and at the end our restore and the real `litestream restore` equal
//! the source row for row and blob byte for blob byte. Each prints what the app saw (statements,
//! the longest wait, checkpoints SQLite reported as blocked) for RELIABILITY.md.
//!
//! Sizes: `FIGHT_BIG_TXN_MB` (default 200) for the one-transaction scenario,
//! `FIGHT_SECONDS` (default 6) for the loops. The workload is deterministic (fixed sizes and
//! order); only thread interleaving varies.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

const CATCH_UP: Duration = Duration::from_secs(60);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn loop_time() -> Duration {
    Duration::from_secs(env_u64("FIGHT_SECONDS", 6))
}

fn report(name: &str, app: &AppStats, took: Duration, caught_up: Duration, rows: usize) {
    eprintln!(
        "RESULT {name}: {rows} rows, {} commits, {} statements, longest app wait {:?}, \
         {} checkpoints by the app ({} reported busy), replica caught up {:?} after the last \
         commit, scenario took {:?}",
        app.commits,
        app.statements,
        app.max_wait,
        app.checkpoints,
        app.checkpoints_blocked,
        caught_up,
        took
    );
}

/// A writer thread: transactions of 1..=20 rows, a few ms apart, until `stop`.
fn spawn_writer(
    db: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    seq_start: u64,
) -> std::thread::JoinHandle<(AppStats, u64)> {
    std::thread::spawn(move || {
        let c = app_conn_timed(&db);
        let mut stats = AppStats::default();
        let mut seq = seq_start;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            write_txn_timed(&c, &mut stats, &mut seq, 1 + (i % 20) as usize);
            i += 1;
            std::thread::sleep(Duration::from_millis(2 + i % 5));
        }
        (stats, seq)
    })
}

/// 1. The app runs `PRAGMA wal_checkpoint(TRUNCATE)` in a loop between its writes (one
///    connection). Our read mark moves to the end after each sync and to SQLite's mark 0 once
///    the app's checkpoint has copied everything, so those checkpoints reset the WAL instead of
///    waiting for us; no call may fail, and continuity stays proven: no full-page L0 follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_truncate_checkpoint_loop() {
    truncate_loop(false).await;
}

/// 1b. The same with a second application connection writing meanwhile: the app's TRUNCATE
///    holds SQLite's write lock while it waits for readers, so the other writer (same 5 s busy
///    timeout) waits behind it. It failed with SQLITE_BUSY while our read mark stayed where it
///    was taken (RELIABILITY.md, finding 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_truncate_checkpoint_loop_with_a_second_writer() {
    truncate_loop(true).await;
}

async fn truncate_loop(second_writer: bool) {
    let t0 = Instant::now();
    let h = Harness::new();
    let c = app_conn_timed(&h.db);
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    let _w = h.watch(&store, &cancel).await;
    let mut seq = 0;
    let mut app = AppStats::default();
    write_txn_timed(&c, &mut app, &mut seq, 10);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = second_writer.then(|| spawn_writer(h.db.clone(), stop.clone(), 1_000_000));
    let until = Instant::now() + loop_time();
    while Instant::now() < until {
        write_txn_timed(&c, &mut app, &mut seq, 5);
        let busy: i64 = app.run("PRAGMA wal_checkpoint(TRUNCATE)", || {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        });
        app.checkpoints += 1;
        app.checkpoints_blocked += busy as u64;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = writer {
        app.merge(&w.join().unwrap().0);
    }
    let caught_up = h.assert_replica_equals_source(CATCH_UP).await;
    assert!(
        app.max_wait < APP_BUSY_TIMEOUT + Duration::from_secs(1),
        "{app:?}"
    );
    // The WAL was reset ~100 times under us; each reset must be proven to follow the last L0
    // (at most the first snapshot is a full-page L0, if retention has not removed it yet).
    let (full, l0) = h.l0_files();
    eprintln!("L0 files: {l0}, of them full-page: {full}");
    assert!(full <= 1, "{full} of {l0} L0 files are full-page snapshots");
    report(
        if second_writer {
            "truncate_loop_two_connections"
        } else {
            "truncate_loop"
        },
        &app,
        t0.elapsed(),
        caught_up,
        dump(&h.db).len(),
    );
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// 2. The app created its database in rollback-journal mode (DELETE) and writes in it; the
///    manager switches it to WAL. While the tenant is cold (no connection of ours) the app
///    switches back to DELETE and writes straight into the db file, then to WAL again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_journal_mode_delete_then_wal() {
    let t0 = Instant::now();
    let h = Harness::new();
    let mut app = AppStats::default();
    let c = Connection::open(&h.db).unwrap();
    c.busy_timeout(APP_BUSY_TIMEOUT).unwrap();
    let mode: String = app.run("PRAGMA journal_mode=DELETE", || {
        c.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
    });
    assert_eq!(mode, "delete");
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, blob BLOB)")
        .unwrap();
    let mut seq = 0;
    for _ in 0..20 {
        write_txn_timed(&c, &mut app, &mut seq, 10);
    }
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    let _w = h.watch(&store, &cancel).await;
    // The manager switches the file to WAL; the app's connection follows.
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    for _ in 0..20 {
        write_txn_timed(&c, &mut app, &mut seq, 10);
    }
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal", "the manager switches the database to WAL");
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;

    let mut hot_switch_refused = 0;
    for round in 0..3 {
        // Wait until the tenant is cold (sealed, no connection), then leave WAL mode.
        let start = Instant::now();
        loop {
            let s = store.status(ID).unwrap();
            if s.state == engine::tenant::State::Idle {
                break;
            }
            assert!(start.elapsed() < CATCH_UP, "never went idle: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mode: String = match c.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0)) {
            Ok(m) => m,
            // A write of ours (the watcher's wake) may hold the database right now: SQLite
            // refuses to leave WAL mode while another connection is open. Not an app write.
            Err(_) => {
                hot_switch_refused += 1;
                continue;
            }
        };
        if mode != "delete" {
            hot_switch_refused += 1;
            continue;
        }
        for _ in 0..10 {
            // In DELETE mode a write needs every reader gone: the manager may be opening the
            // file because of the previous write.
            write_txn_timed(&c, &mut app, &mut seq, 10);
        }
        // Back to WAL, as the app's next start would do.
        let mode: String = app.run("PRAGMA journal_mode=WAL", || {
            c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        });
        assert_eq!(mode, "wal");
        for _ in 0..10 {
            write_txn_timed(&c, &mut app, &mut seq, 10);
        }
        eprintln!("round {round}: {} rows", seq);
    }
    let caught_up = h.assert_replica_equals_source(CATCH_UP).await;
    eprintln!("journal_mode=DELETE refused while the manager had the file open: {hot_switch_refused} of 3");
    report(
        "journal_mode_delete_then_wal",
        &app,
        t0.elapsed(),
        caught_up,
        dump(&h.db).len(),
    );
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// 3. The app deletes most rows and runs VACUUM (the whole file is rewritten and shrinks),
///    several times, with writes in between and a concurrent writer thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_vacuum() {
    let t0 = Instant::now();
    let h = Harness::new();
    let c = app_conn_timed(&h.db);
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    let _w = h.watch(&store, &cancel).await;
    let mut app = AppStats::default();
    let mut seq = 0;
    for round in 0..4u64 {
        for i in 0..60u64 {
            write_txn_timed(&c, &mut app, &mut seq, 1 + (i % 30) as usize);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(h.db.clone(), stop.clone(), 1_000_000 * (round + 1));
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.run("DELETE", || {
            c.execute(&format!("DELETE FROM t WHERE id % 5 != {round}"), [])
        });
        app.run("VACUUM", || c.execute_batch("VACUUM"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        let (ws, _) = writer.join().unwrap();
        app.merge(&ws);
        if round == 2 {
            // And once while the tenant is cold.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            app.run("VACUUM", || c.execute_batch("VACUUM"));
        }
    }
    let caught_up = h.assert_replica_equals_source(CATCH_UP).await;
    report("vacuum", &app, t0.elapsed(), caught_up, dump(&h.db).len());
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// 4. One transaction of `FIGHT_BIG_TXN_MB` (default 200 MB) of random blobs, with small
///    transactions before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_one_huge_transaction() {
    let t0 = Instant::now();
    let mb = env_u64("FIGHT_BIG_TXN_MB", 200);
    let h = Harness::new();
    let c = app_conn_timed(&h.db);
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    let _w = h.watch(&store, &cancel).await;
    let mut app = AppStats::default();
    let mut seq = 0;
    for _ in 0..20 {
        write_txn_timed(&c, &mut app, &mut seq, 5);
    }
    h.wait_replicated(&dump(&h.db), CATCH_UP).await;
    let blob = 256 * 1024;
    let rows = mb * 1024 * 1024 / blob;
    let big = Instant::now();
    app.run("BEGIN IMMEDIATE", || c.execute_batch("BEGIN IMMEDIATE"));
    for _ in 0..rows {
        seq += 1;
        let v = format!("big-{seq}");
        app.run("INSERT big", || {
            c.execute(
                "INSERT INTO t(v, blob) VALUES (?1, randomblob(?2))",
                rusqlite::params![v, blob as i64],
            )
        });
    }
    app.run("COMMIT big", || c.execute_batch("COMMIT"));
    app.commits += 1;
    let big_took = big.elapsed();
    for _ in 0..20 {
        write_txn_timed(&c, &mut app, &mut seq, 5);
    }
    let caught_up = h
        .assert_replica_equals_source(Duration::from_secs(180))
        .await;
    eprintln!(
        "one transaction of {mb} MB ({rows} rows of {blob} B) took {big_took:?} to write; WAL {} MB",
        std::fs::metadata(engine::db::wal_path(&h.db)).map(|m| m.len() >> 20).unwrap_or(0)
    );
    report(
        "huge_transaction",
        &app,
        t0.elapsed(),
        caught_up,
        dump(&h.db).len(),
    );
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// 5. The app holds a write transaction for `FIGHT_SECONDS` (longer than the manager's own
///    2 s busy timeout and its idle timeout, so its checkpoints and its seal fail meanwhile),
///    while another app connection keeps reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_long_write_transaction() {
    let t0 = Instant::now();
    let h = Harness::new();
    let c = app_conn_timed(&h.db);
    let cancel = CancellationToken::new();
    let mut cfg = fast_tenant_config();
    // Checkpoint as often as possible, so that the manager wants the write lock while the app
    // holds it.
    cfg.db.min_checkpoint_pages = 1;
    let store = h.store_with(&cancel, cfg);
    let _w = h.watch(&store, &cancel).await;
    let mut app = AppStats::default();
    let mut seq = 0;
    for _ in 0..50 {
        write_txn_timed(&c, &mut app, &mut seq, 5);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (db, stop) = (h.db.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = app_conn_timed(&db);
            let mut stats = AppStats::default();
            while !stop.load(Ordering::Relaxed) {
                let _: i64 = stats.run("SELECT count(*)", || {
                    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                });
                std::thread::sleep(Duration::from_millis(20));
            }
            stats
        })
    };
    let mut errors_seen = 0;
    for round in 0..2 {
        app.run("BEGIN IMMEDIATE", || c.execute_batch("BEGIN IMMEDIATE"));
        let until = Instant::now() + loop_time();
        while Instant::now() < until {
            seq += 1;
            let v = format!("long-{seq}");
            app.run("INSERT", || {
                c.execute(
                    "INSERT INTO t(v, blob) VALUES (?1, randomblob(3000))",
                    rusqlite::params![v],
                )
            });
            if store
                .status(ID)
                .is_some_and(|s| s.state == engine::tenant::State::Error)
            {
                errors_seen += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        app.run("COMMIT", || c.execute_batch("COMMIT"));
        app.commits += 1;
        for _ in 0..10 {
            write_txn_timed(&c, &mut app, &mut seq, 5);
        }
        eprintln!("round {round}: {seq} rows");
    }
    stop.store(true, Ordering::Relaxed);
    app.merge(&reader.join().unwrap());
    let caught_up = h.assert_replica_equals_source(CATCH_UP).await;
    eprintln!("tenant status seen in state error while the app held the lock: {errors_seen} polls");
    // A transaction of a few seconds is the application's right, not a replication failure.
    assert_eq!(
        errors_seen, 0,
        "the tenant showed state error while the app merely held a write transaction"
    );
    report(
        "long_write_transaction",
        &app,
        t0.elapsed(),
        caught_up,
        dump(&h.db).len(),
    );
    assert!(store.shutdown(Duration::from_secs(5)).await);
}
