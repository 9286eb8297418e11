//! kill -9 of the manager while it uploads to S3 (moto) with multipart uploads: every
//! transaction of the application rewrites a 6 MiB incompressible blob, so every L0 file, and
//! every full-page L0 after a restart, is a multipart upload of two or more parts. After each
//! kill the S3 replica restores (ours, and every other round the real `litestream restore`) to a
//! committed state that never goes back; an incomplete multipart upload left by a kill is
//! counted (the kill landed inside one). At the end, after a restart, both restores equal the
//! source exactly and no level holds overlapping TXID ranges.
//!
//! Rounds: `CRASH_S3_ROUNDS` (default 6; the soak in bench/ runs more). The seed is fixed.

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Moto;
use engine::client::s3::S3Client;
use engine::client::Replica;
use engine::restore::{RestoreOptions, Target};
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

const ID: &str = "6c0ffee0-1d2e-4f3a-8b4c-5d6e7f8a9b0c";
/// Rows the application rewrites in turn: transaction k sets row `k % ROWS` to generation k.
const ROWS: i64 = 4;
/// Over S3's 5 MiB part size, so that each L0 is a multipart upload.
const BLOB: usize = 6 * 1024 * 1024;

/// The blob of generation `k`: deterministic, incompressible (LZ4 cannot shrink it below a part).
fn blob(k: i64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (k as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut out = Vec::with_capacity(BLOB);
    while out.len() < BLOB {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(BLOB);
    out
}

fn start(dir: &Path, moto: &Moto, bucket: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_litestream-manager"))
        .current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .args(["-watch-dir", "clients", "-state-dir", "state"])
        .args(["-bucket", bucket, "-endpoint", &moto.endpoint])
        .args(["-region", "us-east-1", "-port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start litestream-manager")
}

/// Checks that `db` is the state after the application's transaction n (every row holds the
/// newest generation ≤ n of its slot, byte for byte, and `meta` says n). Returns n.
fn check_state(db: &Path) -> i64 {
    let c = Connection::open(db).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let n: i64 = c.query_row("SELECT n FROM meta", [], |r| r.get(0)).unwrap();
    let mut st = c.prepare("SELECT id, gen, b FROM t ORDER BY id").unwrap();
    let rows: Vec<(i64, i64, Vec<u8>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len() as i64, ROWS, "after transaction {n}");
    for (id, generation, b) in rows {
        // The newest k <= n with k % ROWS == id (0 while the slot was never written).
        let expected = if n < id { 0 } else { n - (n - id) % ROWS };
        assert_eq!(
            generation, expected,
            "row {id} after transaction {n}: not a committed state"
        );
        assert!(
            b == blob(generation),
            "row {id}: a blob the app never wrote"
        );
    }
    n
}

async fn restore_ours(replica: &Replica, out: &Path) -> Result<(), engine::restore::RestoreError> {
    let _ = std::fs::remove_file(out);
    let opts = RestoreOptions {
        target: Target::default(),
        force: true,
        integrity_check: true,
    };
    engine::restore::restore(replica, out, &opts, &CancellationToken::new())
        .await
        .map(|_| ())
}

fn restore_litestream(url: &str, out: &Path) {
    common::litestream_restore_url(url, out, &[])
        .unwrap_or_else(|e| panic!("litestream restore {url}: {e}"));
}

/// Waits until two listings of the replica 500 ms apart agree.
async fn settle(replica: &Replica) {
    let list = || async {
        let mut v: Vec<_> = replica
            .list_all(&CancellationToken::new())
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.level, f.min, f.max, f.size))
            .collect();
        v.sort();
        v
    };
    let mut last = list().await;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = list().await;
        if now == last {
            return;
        }
        last = now;
    }
    panic!("the replica's listing kept changing after the manager was killed");
}

/// Upload ids of the multipart uploads open in the bucket.
async fn open_uploads(client: &S3Client, bucket: &str) -> Vec<String> {
    let r = client
        .sdk()
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .expect("ListMultipartUploads");
    r.uploads()
        .iter()
        .filter_map(|u| u.upload_id().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_multipart_uploads_to_s3_never_loses_or_forks_the_replica() {
    let rounds: usize = std::env::var("CRASH_S3_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let moto = Moto::start();
    let (client, bucket) = moto.new_bucket().await;
    let replica = Replica::S3(client.replica(&format!("databases/{ID}")));
    let url = moto.litestream_url(&bucket, &format!("databases/{ID}"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("clients")).unwrap();
    let db = dir.join("clients").join(format!("{ID}.db"));
    // The schema and generation 0 in one transaction, before the manager first starts.
    {
        let mut c = Connection::open(&db).unwrap();
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        let tx = c.transaction().unwrap();
        tx.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, gen INTEGER, b BLOB);
             CREATE TABLE meta(n INTEGER); INSERT INTO meta VALUES (0);",
        )
        .unwrap();
        for id in 0..ROWS {
            tx.execute(
                "INSERT INTO t VALUES (?1, 0, ?2)",
                rusqlite::params![id, blob(0)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    // The application: transaction k rewrites one row's blob and `meta`, default autocheckpoint.
    let committed = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let (db, committed, stop) = (db.clone(), committed.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut k = 0i64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let tx = c.unchecked_transaction().unwrap();
                tx.execute(
                    "UPDATE t SET gen = ?2, b = ?3 WHERE id = ?1",
                    rusqlite::params![k % ROWS, k, blob(k)],
                )
                .unwrap();
                tx.execute("UPDATE meta SET n = ?1", [k]).unwrap();
                tx.commit().unwrap();
                committed.store(k, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(150 + (k as u64 * 37) % 200));
            }
        })
    };

    let mut rng = 7u64;
    let mut restored = Vec::new();
    let mut inside_multipart = 0;
    let mut open_before = Vec::new();
    for round in 0..rounds {
        let mut child = start(dir, &moto, &bucket);
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = Duration::from_millis(1500 + (rng >> 33) % 2500);
        tokio::time::sleep(wait).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let at_kill = committed.load(Ordering::SeqCst);
        // moto may still be storing a request the manager sent in whole before it died (a
        // PUT or CompleteMultipartUpload of several MiB): wait until the listing is stable.
        settle(&replica).await;
        // A kill inside a multipart upload leaves it incomplete: no object is ever made of its
        // parts, and the next start aborts it.
        let open = open_uploads(&client, &bucket).await;
        if open.iter().any(|id| !open_before.contains(id)) {
            inside_multipart += 1;
        }
        open_before = open;
        let out = dir.join(format!("round-{round}.db"));
        match restore_ours(&replica, &out).await {
            Ok(()) => {
                let n = check_state(&out);
                assert!(
                    n <= at_kill,
                    "round {round}: restored {n}, committed {at_kill}"
                );
                assert!(
                    restored.last().is_none_or(|&prev| n >= prev),
                    "round {round}: the replica went back from {restored:?} to {n}"
                );
                restored.push(n);
                if round % 2 == 1 {
                    let theirs = dir.join(format!("round-{round}-litestream.db"));
                    restore_litestream(&url, &theirs);
                    let files = replica.list_all(&CancellationToken::new()).await.unwrap();
                    assert_eq!(
                        check_state(&theirs),
                        n,
                        "round {round}: litestream; replica: {:?}",
                        files
                            .iter()
                            .map(|f| format!("L{} {}-{}", f.level, f.min.0, f.max.0))
                            .collect::<Vec<_>>()
                    );
                }
            }
            // Killed before the first snapshot of the very first round was uploaded.
            Err(engine::restore::RestoreError::NoBackups(_)) if round == 0 => {}
            Err(e) => panic!("round {round}: restore failed: {e}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    app.join().unwrap();
    let total = committed.load(Ordering::SeqCst);

    // Final: restart, let it catch up; both restores equal the source.
    let mut child = start(dir, &moto, &bucket);
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = dir.join("final.db");
    loop {
        if restore_ours(&replica, &out).await.is_ok() && check_state(&out) == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica did not catch up to transaction {total}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let theirs = dir.join("final-litestream.db");
    restore_litestream(&url, &theirs);
    assert_eq!(check_state(&theirs), total);
    // No forked chain: per level, no two files overlap; the restore plan is contiguous.
    let files = replica.list_all(&CancellationToken::new()).await.unwrap();
    for level in 0..engine::client::SNAPSHOT_LEVEL {
        let mut v: Vec<_> = files.iter().filter(|f| f.level == level).collect();
        v.sort_by_key(|f| (f.min, f.max));
        for w in v.windows(2) {
            assert!(
                w[0].max < w[1].min,
                "level {level}: {:?} overlaps {:?}",
                w[0],
                w[1]
            );
        }
    }
    engine::restore::plan(&files, &Target::default(), "replica").expect("contiguous chain");
    // The restarts aborted what the kills left open (and the graceful stop aborts its own).
    assert!(
        open_uploads(&client, &bucket).await.is_empty(),
        "incomplete multipart uploads left in the bucket after a restart"
    );
    eprintln!(
        "rounds: {rounds}, kills inside a multipart upload: {inside_multipart}, transactions \
         restored after each kill: {restored:?}, final {total} ({} MiB of blobs per transaction)",
        BLOB >> 20
    );
}

/// What a kill -9 inside a multipart upload leaves behind (an open upload with a part) is aborted
/// by the next start; uploads that are not LTX files of a tenant under the prefix are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_aborts_the_multipart_uploads_a_killed_run_left_open() {
    let moto = Moto::start();
    let (client, bucket) = moto.new_bucket().await;
    let s3 = client.sdk();
    let open = |key: String| {
        let bucket = bucket.clone();
        async move {
            let id = s3
                .create_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .unwrap()
                .upload_id()
                .unwrap()
                .to_string();
            s3.upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&id)
                .part_number(1)
                .body(vec![7u8; BLOB].into())
                .send()
                .await
                .unwrap();
            id
        }
    };
    let left_by_a_kill = [
        open(format!(
            "databases/{ID}/0000/0000000000000007-0000000000000007.ltx"
        ))
        .await,
        open(format!(
            "databases/{ID}/0009/0000000000000001-0000000000000007.ltx"
        ))
        .await,
    ];
    let not_ours = [
        open("databases/notes.bin".to_string()).await,
        open(format!(
            "elsewhere/{ID}/0000/0000000000000001-0000000000000001.ltx"
        ))
        .await,
    ];
    assert_eq!(open_uploads(&client, &bucket).await.len(), 4);

    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("clients")).unwrap();
    let mut child = start(tmp.path(), &moto, &bucket);
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = loop {
        let left = open_uploads(&client, &bucket).await;
        if left_by_a_kill.iter().all(|id| !left.contains(id)) || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let mut left = left;
    left.sort();
    let mut expected = not_ours.to_vec();
    expected.sort();
    assert_eq!(
        left, expected,
        "after a start: the tenant's incomplete LTX uploads are aborted, the others remain"
    );
}
