//! Our restore reads what the real Litestream 0.5.17 writes.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use engine::ltx::Txid;
use engine::restore::Target;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_restore_a_replica_written_by_litestream() {
    let h = Harness::new();
    let app = app_conn(&h.db);
    let mut seq = 0;
    write_txn(&app, &mut seq, 10);
    let replica = h.replica_dir();
    std::fs::create_dir_all(&replica).unwrap();
    let url = format!("file://{}", replica.display());
    let mut child = Command::new(litestream_bin())
        .env_remove("AWS_CA_BUNDLE")
        .arg("replicate")
        .arg(&h.db)
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start litestream replicate");
    let result = std::panic::AssertUnwindSafe(async {
        for i in 0..40 {
            write_txn(&app, &mut seq, 1 + i % 25);
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        let expected = dump(&h.db);
        // Litestream syncs every second; wait until its replica has everything.
        let start = Instant::now();
        loop {
            if let Ok(out) = h.restore("ours.db", Target::default()).await {
                if dump(&out) == expected {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "litestream replica never caught up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Point in time by TXID: ours and theirs agree.
        let listing = h.replica().list(0, &Default::default()).await.unwrap();
        let mid = Txid(listing.iter().map(|f| f.max.0).max().unwrap() / 2);
        let ours = h
            .restore(
                "mid.db",
                Target {
                    txid: Some(mid),
                    timestamp: None,
                },
            )
            .await
            .unwrap();
        let theirs = h.out("mid-litestream.db");
        litestream_restore(&replica, &theirs, &["-txid", &mid.to_string()]).unwrap();
        assert_eq!(dump(&ours), dump(&theirs));
        assert!(dump(&ours).len() < expected.len());
    })
    .catch_unwind_compat()
    .await;
    let _ = child.kill();
    let _ = child.wait();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

/// Minimal catch_unwind for a future without pulling extra crates into the test.
trait CatchUnwindCompat: std::future::Future + Sized {
    fn catch_unwind_compat(self) -> futures::future::CatchUnwind<Self>
    where
        Self: std::panic::UnwindSafe,
    {
        futures::FutureExt::catch_unwind(self)
    }
}
impl<F: std::future::Future> CatchUnwindCompat for F {}
