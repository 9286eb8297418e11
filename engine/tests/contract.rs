//! The `Replica` contract, run against every backend (litestream's `RunWithReplicaClient`): the
//! file backend always, S3 against a real S3 HTTP server (moto, started per test; see
//! `common::Moto`). Each case is one function taking a [`Fixture`]; the `contract!` macro
//! instantiates every case once per backend, as `fs::<case>` and `s3::<case>`.

mod common;

use std::time::{Duration, SystemTime};

use common::Moto;
use engine::client::s3::S3Client;
use engine::client::{ClientError, LtxInfo, Replica, SNAPSHOT_LEVEL};
use engine::ltx::{LtxFileName, Txid};
use tokio_util::sync::CancellationToken;

const TENANT: &str = "databases/5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f";

/// One backend under test, with raw access for planting files the engine never writes.
struct Fixture {
    replica: Replica,
    raw: Raw,
}

enum Raw {
    Fs {
        _dir: tempfile::TempDir,
        /// The tenant's replica directory.
        root: std::path::PathBuf,
    },
    S3 {
        _moto: Moto,
        client: S3Client,
    },
}

impl Fixture {
    async fn fs() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(TENANT);
        Fixture {
            replica: Replica::Fs(engine::client::fs::FsReplica::new(&root)),
            raw: Raw::Fs { _dir: dir, root },
        }
    }

    async fn s3() -> Fixture {
        let moto = Moto::start();
        let (client, _bucket) = moto.new_bucket().await;
        Fixture {
            replica: Replica::S3(client.replica(TENANT)),
            raw: Raw::S3 {
                _moto: moto,
                client,
            },
        }
    }

    /// Stores `bytes` at `rel` (relative to the tenant's replica, or to its parent for paths
    /// starting with `../`), bypassing the replica API.
    async fn put_raw(&self, rel: &str, bytes: &[u8]) {
        match &self.raw {
            Raw::Fs { root, .. } => {
                let path = root.join(rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            Raw::S3 { client, .. } => {
                let key = match rel.strip_prefix("../") {
                    Some(sibling) => format!("databases/{sibling}"),
                    None => format!("{TENANT}/{rel}"),
                };
                client
                    .sdk()
                    .put_object()
                    .bucket(client.bucket())
                    .key(key)
                    .body(bytes.to_vec().into())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    /// Where a valid LTX file of `level` lives in this backend's layout, relative to the replica.
    fn level_dir(&self, level: u8) -> String {
        match self.raw {
            Raw::Fs { .. } => format!("ltx/{level}"),
            Raw::S3 { .. } => format!("{level:04x}"),
        }
    }
}

fn name(min: u64, max: u64) -> LtxFileName {
    LtxFileName {
        min: Txid(min),
        max: Txid(max),
    }
}

/// Deterministic bytes that do not compress or repeat (so a misplaced part shows).
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A whole-millisecond time, as LTX headers carry.
fn header_time(ms_ago: u64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    SystemTime::UNIX_EPOCH + Duration::from_millis(now - ms_ago)
}

fn names(files: &[LtxInfo]) -> Vec<(u8, u64, u64)> {
    files.iter().map(|f| (f.level, f.min.0, f.max.0)).collect()
}

async fn write_list_read_delete(f: &Fixture) {
    let c = CancellationToken::new();
    let r = &f.replica;
    let t = header_time(5_000);
    let files = [
        (0, name(1, 1), 700),
        (0, name(2, 2), 300),
        (0, name(3, 3), 0),
        (1, name(1, 3), 900),
        (SNAPSHOT_LEVEL, name(1, 3), 1200),
    ];
    for (i, (level, n, len)) in files.iter().enumerate() {
        let info = r
            .write(*level, *n, payload(i as u64, *len), t, &c)
            .await
            .unwrap();
        assert_eq!(
            (info.level, info.min, info.max, info.size),
            (*level, n.min, n.max, *len as u64)
        );
    }
    let l0 = r.list(0, &c).await.unwrap();
    assert_eq!(names(&l0), [(0, 1, 1), (0, 2, 2), (0, 3, 3)]);
    assert_eq!(l0.iter().map(|f| f.size).collect::<Vec<_>>(), [700, 300, 0]);
    assert_eq!(
        names(&r.list(SNAPSHOT_LEVEL, &c).await.unwrap()),
        [(9, 1, 3)]
    );
    assert!(r.list(2, &c).await.unwrap().is_empty());
    let all = r.list_all(&c).await.unwrap();
    assert_eq!(
        names(&all),
        [(0, 1, 1), (0, 2, 2), (0, 3, 3), (1, 1, 3), (9, 1, 3)]
    );
    for (i, (level, n, len)) in files.iter().enumerate() {
        let info = all
            .iter()
            .find(|f| f.level == *level && f.name() == *n)
            .unwrap();
        assert_eq!(
            r.read(info, &c).await.unwrap(),
            payload(i as u64, *len),
            "{level} {n}"
        );
    }
    // Overwrite replaces.
    r.write(0, name(2, 2), payload(99, 10), t, &c)
        .await
        .unwrap();
    let f2 = &r.list(0, &c).await.unwrap()[1];
    assert_eq!(r.read(f2, &c).await.unwrap(), payload(99, 10));

    r.delete(&[all[0].clone(), all[3].clone()], &c)
        .await
        .unwrap();
    assert_eq!(
        names(&r.list_all(&c).await.unwrap()),
        [(0, 2, 2), (0, 3, 3), (9, 1, 3)]
    );
    // Deleting what is gone, or nothing, is fine.
    r.delete(&[all[0].clone()], &c).await.unwrap();
    r.delete(&[], &c).await.unwrap();
}

async fn listing_ignores_junk_names(f: &Fixture) {
    let c = CancellationToken::new();
    let t = header_time(1_000);
    f.replica
        .write(0, name(1, 1), payload(1, 100), t, &c)
        .await
        .unwrap();
    let l0 = f.level_dir(0);
    for junk in [
        format!("{l0}/0000000000000002-0000000000000002.ltx.tmp"),
        format!("{l0}/0000000000000003-0000000000000003.LTX"),
        format!("{l0}/00000000000000AA-00000000000000AA.ltx"),
        format!("{l0}/0000000000000005-0000000000000004.ltx"),
        format!("{l0}/1-1.ltx"),
        format!("{l0}/notes.txt"),
        format!("{l0}/sub/0000000000000006-0000000000000006.ltx"),
        "lock.json".to_string(),
        "generations/0123456789abcdef/wal/00000000/00000000.wal.lz4".to_string(),
        // Not a level of either layout (S3: 10 as %04x; fs: hex level names).
        "000a/0000000000000007-0000000000000007.ltx".to_string(),
        "ltx/a/0000000000000008-0000000000000008.ltx".to_string(),
        "0000000000000009-0000000000000009.ltx".to_string(),
        // A neighbour whose id starts with ours is a different tenant.
        format!(
            "../5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2fx/{l0}/0000000000000001-0000000000000002.ltx"
        ),
    ] {
        f.put_raw(&junk, b"junk").await;
    }
    assert_eq!(names(&f.replica.list(0, &c).await.unwrap()), [(0, 1, 1)]);
    assert_eq!(names(&f.replica.list_all(&c).await.unwrap()), [(0, 1, 1)]);
    assert_eq!(
        names(&f.replica.list_with_timestamps(&c).await.unwrap()),
        [(0, 1, 1)]
    );
}

async fn created_at_is_the_header_timestamp(f: &Fixture) {
    let c = CancellationToken::new();
    // An hour ago, with a fraction: the upload time (LastModified) is clearly different.
    let t = header_time(3_600_000 - 250);
    f.replica
        .write(0, name(1, 1), payload(1, 64), t, &c)
        .await
        .unwrap();
    let t9 = header_time(1_800_000 - 7);
    f.replica
        .write(SNAPSHOT_LEVEL, name(1, 1), payload(2, 64), t9, &c)
        .await
        .unwrap();
    let exact = f.replica.list_with_timestamps(&c).await.unwrap();
    assert_eq!(
        exact.iter().map(|f| f.created_at).collect::<Vec<_>>(),
        [t, t9]
    );
    let precise = f.replica.clone().with_exact_timestamps();
    assert_eq!(
        precise.list(0, &c).await.unwrap()[0].created_at,
        t,
        "with_exact_timestamps().list()"
    );
    // The cheap listing: fs mtime is the header time; S3 reports upload time (LastModified).
    let fast = f.replica.list_all(&c).await.unwrap();
    match f.raw {
        Raw::Fs { .. } => assert_eq!(fast[0].created_at, t),
        Raw::S3 { .. } => {
            let age = SystemTime::now()
                .duration_since(fast[0].created_at)
                .unwrap_or_default();
            assert!(
                age < Duration::from_secs(300),
                "LastModified should be the upload time, got {age:?} ago"
            );
        }
    }
}

async fn large_file_roundtrips_via_multipart(f: &Fixture) {
    let c = CancellationToken::new();
    // Over two 5 MiB parts plus an odd tail.
    let data = payload(42, 12 * 1024 * 1024 + 12_345);
    let before = match &f.raw {
        Raw::S3 { client, .. } => Some(client.request_counts()),
        Raw::Fs { .. } => None,
    };
    let t = header_time(10);
    let info = f
        .replica
        .write(SNAPSHOT_LEVEL, name(1, 77), data.clone(), t, &c)
        .await
        .unwrap();
    assert_eq!(info.size, data.len() as u64);
    if let (Raw::S3 { client, .. }, Some(before)) = (&f.raw, before) {
        let n = client.request_counts().since(&before);
        assert_eq!(
            (
                n.put,
                n.create_multipart,
                n.upload_part,
                n.complete_multipart
            ),
            (0, 1, 3, 1),
            "{n:?}"
        );
    }
    let listed = f.replica.list(SNAPSHOT_LEVEL, &c).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, data.len() as u64);
    let back = f.replica.read(&listed[0], &c).await.unwrap();
    assert!(back == data, "multipart roundtrip differs");
    assert_eq!(
        f.replica.list_with_timestamps(&c).await.unwrap()[0].created_at,
        t
    );
}

/// The streaming paths the engine uses for large files: `write_file` from a local file (left in
/// place) and `fetch_local` (S3: a download in the scratch dir, removed on drop).
async fn streamed_file_roundtrips(f: &Fixture) {
    let c = CancellationToken::new();
    let tmp = tempfile::tempdir().unwrap();
    let data = payload(7, 11 * 1024 * 1024 + 999);
    let src = tmp.path().join("src.ltx");
    std::fs::write(&src, &data).unwrap();
    let before = match &f.raw {
        Raw::S3 { client, .. } => Some(client.request_counts()),
        Raw::Fs { .. } => None,
    };
    let t = header_time(20);
    let info = f
        .replica
        .write_file(1, name(3, 9), &src, t, &c)
        .await
        .unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert!(src.exists(), "the source file stays");
    if let (Raw::S3 { client, .. }, Some(before)) = (&f.raw, before) {
        let n = client.request_counts().since(&before);
        assert_eq!(
            (n.put, n.upload_part, n.complete_multipart),
            (0, 3, 1),
            "{n:?}"
        );
    }
    let listed = f.replica.list(1, &c).await.unwrap();
    assert_eq!(listed.len(), 1);
    let exact = f.replica.list_with_timestamps(&c).await.unwrap();
    assert_eq!(exact.iter().find(|i| i.level == 1).unwrap().created_at, t);
    let scratch = tmp.path().join("scratch");
    let local = f
        .replica
        .fetch_local(&listed[0], &scratch, &c)
        .await
        .unwrap();
    assert!(
        std::fs::read(&local.path).unwrap() == data,
        "streamed roundtrip differs"
    );
    let path = local.path.clone();
    drop(local);
    match &f.raw {
        Raw::S3 { .. } => assert!(!path.exists(), "the download is removed on drop"),
        Raw::Fs { .. } => assert!(path.exists(), "the replica's own file is never removed"),
    }
    // A small file takes one PutObject.
    std::fs::write(&src, b"small").unwrap();
    let info = f
        .replica
        .write_file(1, name(10, 10), &src, t, &c)
        .await
        .unwrap();
    assert_eq!(info.size, 5);
    let missing = f
        .replica
        .fetch_local(
            &LtxInfo {
                min: Txid(99),
                max: Txid(99),
                ..info.clone()
            },
            &scratch,
            &c,
        )
        .await;
    match (&f.raw, missing) {
        (Raw::S3 { .. }, Err(e)) => assert!(matches!(e, ClientError::NotFound(_)), "{e}"),
        // fs: the path is handed out as is; opening it reports the missing file.
        (Raw::Fs { .. }, Ok(l)) => assert!(l
            .open()
            .unwrap_err()
            .to_string()
            .contains("0000000000000063")),
        (_, other) => panic!("unexpected: {other:?}"),
    }
}

async fn missing_file_is_not_found(f: &Fixture) {
    let c = CancellationToken::new();
    let ghost = LtxInfo {
        level: 0,
        min: Txid(5),
        max: Txid(5),
        size: 1,
        created_at: SystemTime::now(),
    };
    match f.replica.read(&ghost, &c).await {
        Err(e @ ClientError::NotFound(_)) => {
            assert!(!e.is_permanent() && !e.is_retryable(), "{e}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(f.replica.list_all(&c).await.unwrap().is_empty());
    assert!(f.replica.list(0, &c).await.unwrap().is_empty());
}

async fn cancelled_calls_return_cancelled(f: &Fixture) {
    let c = CancellationToken::new();
    c.cancel();
    assert!(matches!(
        f.replica.list_all(&c).await,
        Err(ClientError::Cancelled)
    ));
    assert!(matches!(
        f.replica
            .write(0, name(1, 1), vec![1], SystemTime::now(), &c)
            .await,
        Err(ClientError::Cancelled)
    ));
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod fs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Fixture::fs().await).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Fixture::s3().await).await;
                }
            )*
        }
    };
}

contract!(
    write_list_read_delete,
    listing_ignores_junk_names,
    created_at_is_the_header_timestamp,
    large_file_roundtrips_via_multipart,
    streamed_file_roundtrips,
    missing_file_is_not_found,
    cancelled_calls_return_cancelled,
);
