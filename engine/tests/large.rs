//! A database over 1 GiB, so the lock page (the page holding byte 0x40000000, never written by
//! SQLite nor stored in LTX) is crossed: replicated, restored by us and by the real Litestream,
//! byte-identical. About 4 GiB of temporary disk and a few tens of seconds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use engine::restore::Target;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_over_1_gib_crosses_the_lock_page() {
    let h = Harness::new();
    let app = rusqlite::Connection::open(&h.db).unwrap();
    app.execute_batch(
        "PRAGMA page_size=65536; PRAGMA journal_mode=WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, blob BLOB);",
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    store.register(ID, &h.db).unwrap();
    // 18 × 64 MiB of blobs: ~1.13 GiB, so pages past the lock page (16385 at 64 KiB) exist.
    for i in 0..18i64 {
        app.execute(
            "INSERT INTO t(v, blob) VALUES (?1, zeroblob(64 * 1024 * 1024))",
            [format!("blob {i}")],
        )
        .unwrap();
        store.wake(ID);
    }
    // A change on both sides of the lock page after the fact.
    app.execute_batch("UPDATE t SET v = v || ' updated' WHERE id IN (1, 18);")
        .unwrap();
    store.wake(ID);
    let expected = dump(&h.db);
    let size: i64 = app
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(size > 1 << 30, "database is only {size} bytes");

    // Wait until the replica holds the last local TXID and nothing is pending.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = store.status(ID).unwrap();
        if s.local_txid > 0 && s.replicated_txid == s.local_txid && s.pending_since.is_none() {
            if let Ok(out) = h.restore("large.db", Target::default()).await {
                if try_dump(&out).as_deref() == Some(&expected[..]) {
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "not replicated: {s:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ours = h.out("large.db");
    assert_eq!(dump(&ours), expected);
    let theirs = h.out("large-litestream.db");
    litestream_restore(&h.replica_dir(), &theirs, &[]).unwrap();
    let (a, b) = (
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap(),
    );
    assert_eq!(a.len() as i64, size);
    assert!(a == b, "our restore and litestream's differ");
    // The lock page is all zeros in the restore.
    let lock = (1usize << 30)..(1usize << 30) + 65536;
    assert!(a[lock].iter().all(|&x| x == 0));
    assert!(store.shutdown(Duration::from_secs(10)).await);
}
