//! The S3 backend against a real S3 HTTP server (moto, one per test on a random port): the
//! store replicating a live SQLite database to S3, our restore and the real `litestream restore`
//! 0.5.17 reading it identically (latest and `-timestamp`), our restore reading what the real
//! `litestream replicate` wrote, object metadata, request counts, errors and TLS.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use engine::client::s3::{format_timestamp, S3Client, S3Config, S3Status, TIMESTAMP_METADATA};
use engine::client::{ClientError, Replica};
use engine::ltx::{LtxFileName, Txid};
use engine::restore::Target;
use engine::store::Target as StoreTarget;
use tokio_util::sync::CancellationToken;

const CATCH_UP: Duration = Duration::from_secs(30);

fn tenant_prefix() -> String {
    format!("databases/{ID}")
}

/// Waits until the tenant's status satisfies `done`.
async fn wait_status(
    store: &engine::store::Store,
    what: &str,
    done: impl Fn(&engine::tenant::TenantStatus) -> bool,
) -> engine::tenant::TenantStatus {
    let start = Instant::now();
    loop {
        let s = store.status(ID).expect("tenant registered");
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < CATCH_UP, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// (a) + (b): the store replicates to S3; our restore and `litestream restore` (latest and
/// `-timestamp`) reproduce the source; request counts of the start and of each sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_replicates_to_s3_and_litestream_restores_it_identically() {
    let moto = Moto::start();
    let (client, bucket) = moto.new_bucket().await;
    // Verification reads go through a second client, so the counts below are the store's own.
    let check = Replica::S3(moto.client(&bucket).await.replica(&tenant_prefix()));
    let h = Harness::new();
    let app = app_conn(&h.db);
    let mut seq = 0;
    for _ in 0..10 {
        write_txn(&app, &mut seq, 10);
    }
    let cancel = CancellationToken::new();
    let store = h.store_to(
        StoreTarget::S3 {
            client: client.clone(),
            prefix: "databases".into(),
        },
        &cancel,
    );
    assert_eq!(
        store.target().describe(),
        format!(
            "s3://{bucket}/databases?endpoint={}&region=us-east-1",
            moto.endpoint
        )
    );
    store.register(ID, &h.db).unwrap();
    let first = dump(&h.db);
    h.wait_replicated_from(&check, &first, CATCH_UP).await;
    let s = wait_status(&store, "first sync uploaded", |s| {
        s.replicated_txid >= 1 && s.pending_since.is_none()
    })
    .await;
    let start = client.request_counts();
    eprintln!(
        "requests for one tenant's start + first sync ({} objects, TXID {}): {start:?}",
        s.objects_uploaded, s.replicated_txid
    );
    assert_eq!(start.list, 1, "one listing per tenant at start: {start:?}");
    assert_eq!(start.head, 0, "no HEAD outside point-in-time restore");

    // Single syncs: each is one PUT and nothing else.
    for i in 0..5 {
        let before = client.request_counts();
        let txid = store.status(ID).unwrap().replicated_txid;
        write_txn(&app, &mut seq, 3 + i);
        store.wake(ID);
        wait_status(&store, "sync uploaded", |s| {
            s.replicated_txid > txid && s.pending_since.is_none()
        })
        .await;
        let per_sync = client.request_counts().since(&before);
        eprintln!("requests for one sync (maintenance included): {per_sync:?}");
        assert_eq!(
            (per_sync.list, per_sync.head),
            (0, 0),
            "a sync never lists: {per_sync:?}"
        );
        assert!(per_sync.put >= 1, "{per_sync:?}");
    }
    let mid = dump(&h.db);
    h.wait_replicated_from(&check, &mid, CATCH_UP).await;

    // A point in time between two bursts (LTX timestamps have millisecond precision, S3's
    // LastModified only seconds: the metadata must be what decides).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let between = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for i in 0..40u64 {
        write_txn(&app, &mut seq, 1 + (i % 17) as usize);
        if i % 5 == 0 {
            store.wake(ID);
        }
    }
    app.execute_batch("DELETE FROM t WHERE id % 4 = 0").unwrap();
    store.wake(ID);
    let all = dump(&h.db);
    let ours = h.wait_replicated_from(&check, &all, CATCH_UP).await;

    // Idle: the tenant goes cold. Compaction due after the last change may still run (it is
    // scheduled by that change, GET + PUT + DELETE); nothing may list or poll.
    wait_status(&store, "tenant idle", |s| {
        s.state == engine::tenant::State::Idle
    })
    .await;
    let idle_from = client.request_counts();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = client.request_counts().since(&idle_from);
    eprintln!(
        "requests in the 3 s after going idle: {idle:?}; total {:?}",
        client.request_counts()
    );
    assert_eq!(
        (idle.list, idle.head),
        (0, 0),
        "an idle tenant is never listed: {idle:?}"
    );
    // Snapshots and L1 compactions read the L0 files still staged locally: the store only
    // downloads inputs of higher levels (L1 files compacted into L2 and up).
    let listing = check.list_all(&cancel).await.unwrap();
    assert!(
        listing
            .iter()
            .any(|f| f.level == engine::client::SNAPSHOT_LEVEL),
        "the first snapshot was written: {listing:?}"
    );
    let downloadable = listing.iter().filter(|f| (1..9).contains(&f.level)).count() as u64;
    let gets = client.request_counts().get;
    assert!(
        gets <= downloadable,
        "{gets} GETs: staged L0 files were downloaded again ({downloadable} files at L1-L8)"
    );

    // (b) the real litestream restores the same bytes.
    let url = moto.litestream_url(&bucket, &tenant_prefix());
    let theirs = h.out("litestream.db");
    litestream_restore_url(&url, &theirs, &[]).unwrap();
    assert_eq!(
        dump(&theirs),
        all,
        "litestream restore differs from the source"
    );
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap(),
        "our restore and litestream's are not byte-identical"
    );

    // Point in time: litestream (HEAD + metadata) and ours (exact timestamps) agree.
    let ts = engine::restore::fmt_time(between);
    let theirs_pit = h.out("litestream-pit.db");
    litestream_restore_url(&url, &theirs_pit, &["-timestamp", &ts]).unwrap();
    assert_eq!(dump(&theirs_pit), mid, "litestream -timestamp {ts}");
    let exact = check.clone().with_exact_timestamps();
    let ours_pit = h
        .restore_from(
            &exact,
            "ours-pit.db",
            Target {
                timestamp: Some(between),
                txid: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(dump(&ours_pit), mid, "our -timestamp {ts}");
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// (c) our restore reads a replica that the real `litestream replicate` wrote to S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_restore_what_litestream_replicated_to_s3() {
    let moto = Moto::start();
    let (client, bucket) = moto.new_bucket().await;
    let h = Harness::new();
    let app = app_conn(&h.db);
    let mut seq = 0;
    write_txn(&app, &mut seq, 20);
    let mut child = litestream_s3_command()
        .arg("replicate")
        .arg(&h.db)
        .arg(moto.litestream_url(&bucket, "x/app"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start litestream replicate");
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = KillOnDrop(&mut child);
    for i in 0..30 {
        write_txn(&app, &mut seq, 1 + i % 25);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expected = dump(&h.db);
    let replica = Replica::S3(client.replica("x/app"));
    h.wait_replicated_from(&replica, &expected, CATCH_UP).await;

    // Litestream's metadata is read back as the file times (used for -timestamp).
    let c = CancellationToken::new();
    let exact = replica.list_with_timestamps(&c).await.unwrap();
    assert!(exact.iter().any(|f| f.level == 0));
    let now = SystemTime::now();
    for f in &exact {
        let age = now.duration_since(f.created_at).unwrap_or_default();
        assert!(age < Duration::from_secs(120), "{f:?}");
    }
    // And by TXID, ours and theirs agree.
    let l0 = replica.list(0, &c).await.unwrap();
    let mid = Txid(l0.iter().map(|f| f.max.0).max().unwrap() / 2).max(Txid(1));
    let ours = h
        .restore_from(
            &replica,
            "mid.db",
            Target {
                txid: Some(mid),
                timestamp: None,
            },
        )
        .await
        .unwrap();
    let theirs = h.out("mid-litestream.db");
    litestream_restore_url(
        &moto.litestream_url(&bucket, "x/app"),
        &theirs,
        &["-txid", &mid.to_string()],
    )
    .unwrap();
    assert_eq!(dump(&ours), dump(&theirs));
}

/// Every object carries `litestream-timestamp` in Go's RFC3339Nano form; small files are one
/// PutObject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_carry_the_litestream_timestamp_metadata() {
    let moto = Moto::start();
    let (client, bucket) = moto.new_bucket().await;
    let replica = client.replica(&tenant_prefix());
    // 2026-11-29T13:59:18.750Z, the example of litestream-format.md §1.3.
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_960_758_750);
    let name = LtxFileName {
        min: Txid(1),
        max: Txid(0x2a),
    };
    let before = client.request_counts();
    replica.write(1, name, vec![7; 1000], t).await.unwrap();
    let n = client.request_counts().since(&before);
    assert_eq!((n.put, n.total()), (1, 1), "{n:?}");
    let key = format!("databases/{ID}/0001/0000000000000001-000000000000002a.ltx");
    assert_eq!(replica.key(1, name), key);
    let head = client
        .sdk()
        .head_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get(TIMESTAMP_METADATA))
            .map(String::as_str),
        Some("2026-11-29T13:59:18.75Z")
    );
    assert_eq!(format_timestamp(t), "2026-11-29T13:59:18.75Z");
    assert_eq!(head.content_length(), Some(1000));
}

/// A bucket that does not exist is a permanent, clearly worded error (client, probe and the
/// tenant's status), never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_a_clear_permanent_error() {
    let moto = Moto::start();
    let bucket = random_bucket();
    let client = moto.client(&bucket).await;
    let replica = Replica::S3(client.replica(&tenant_prefix()));
    let c = CancellationToken::new();
    let err = replica.list_all(&c).await.unwrap_err();
    assert!(matches!(err, ClientError::NoSuchBucket(_)), "{err:?}");
    assert!(err.is_permanent() && !err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains(&bucket) && msg.contains("does not exist"),
        "{msg}"
    );
    let err = replica
        .write(
            0,
            LtxFileName {
                min: Txid(1),
                max: Txid(1),
            },
            vec![1; 10],
            SystemTime::now(),
            &c,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NoSuchBucket(_)), "{err:?}");

    let status = client.probe("databases").await;
    assert!(matches!(status, S3Status::NoSuchBucket(_)), "{status:?}");
    assert_eq!(status.as_str(), "no such bucket");

    // The store shows it on the tenant and keeps running.
    let h = Harness::new();
    let app = app_conn(&h.db);
    write_txn(&app, &mut 0, 5);
    let cancel = CancellationToken::new();
    let store = h.store_to(
        StoreTarget::S3 {
            client,
            prefix: "databases".into(),
        },
        &cancel,
    );
    store.register(ID, &h.db).unwrap();
    let s = wait_status(&store, "error state", |s| {
        s.state == engine::tenant::State::Error && s.last_error.is_some()
    })
    .await;
    let e = s.last_error.unwrap();
    assert!(e.contains("does not exist") && e.contains(&bucket), "{e}");
    assert!(store.shutdown(Duration::from_secs(5)).await);
}

/// With authentication enforced, an unknown access key is `Denied` with advice, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_access_key_is_denied() {
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let client = moto.client("any-bucket").await;
    let before = client.request_counts();
    let err = Replica::S3(client.replica("databases/x"))
        .list_all(&CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Denied(_)), "{err:?}");
    assert!(err.is_permanent());
    assert!(err.to_string().contains("InvalidAccessKeyId"), "{err}");
    assert!(
        !err.to_string().contains("test"),
        "no key material in messages: {err}"
    );
    assert_eq!(
        client.request_counts().since(&before).total(),
        1,
        "permanent errors are not retried"
    );
    let status = client.probe("databases").await;
    assert!(matches!(status, S3Status::AccessDenied(_)), "{status:?}");
}

/// Nothing listening: retryable `Unavailable`, and the probe says `unreachable` quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = S3Client::connect(S3Config {
        bucket: "b".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        credentials: Some(test_credentials()),
        max_attempts: 3,
        ..S3Config::default()
    })
    .await
    .unwrap();
    let before = client.request_counts();
    let err = Replica::S3(client.replica("databases/x"))
        .list_all(&CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable() && !err.is_permanent());
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(
        client.request_counts().since(&before).total(),
        3,
        "the SDK retried (3 attempts)"
    );
    let start = Instant::now();
    let status = client.probe("databases").await;
    assert!(matches!(status, S3Status::Unreachable(_)), "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// A multipart upload that is cancelled half-way is aborted: no parts are left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_multipart_upload_is_aborted() {
    let moto = Moto::start();
    let (client, bucket) = moto.new_bucket().await;
    let replica = Replica::S3(client.replica(&tenant_prefix()));
    let cancel = CancellationToken::new();
    let name = LtxFileName {
        min: Txid(1),
        max: Txid(9),
    };
    let data = vec![0x5a; 40 * 1024 * 1024];
    let r2 = replica.clone();
    let c2 = cancel.clone();
    let write = tokio::spawn(async move { r2.write(9, name, data, SystemTime::now(), &c2).await });
    // Cancel once the upload has started.
    let start = Instant::now();
    while client.request_counts().upload_part == 0 && start.elapsed() < CATCH_UP {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    match write.await.unwrap() {
        Err(ClientError::Cancelled) => {}
        other => panic!("expected Cancelled, got {other:?}"),
    }
    let start = Instant::now();
    loop {
        let uploads = client
            .sdk()
            .list_multipart_uploads()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        if uploads.uploads().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "multipart upload not aborted: {:?}",
            uploads.uploads()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(client.request_counts().abort_multipart >= 1);
    let listed = replica.list_all(&CancellationToken::new()).await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

/// `AWS_CA_BUNDLE` (S3Config::ca_bundle) is honoured: an HTTPS store with a private CA works
/// with the bundle and is refused without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_bundle_is_honoured_for_https_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl is needed to make a test CA");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509", "-days", "2", "-subj", "/CN=lsm test CA"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-subj", "/CN=127.0.0.1"][..],
            &ec,
            &["-keyout", "srv.key", "-out", "srv.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "srv.pem",
        "-extfile",
        "ext.cnf",
    ]);
    // A bundle as found on real systems: other certificates and text around ours.
    let mut bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    bundle.extend_from_slice(b"\n# test CA\n");
    bundle.extend_from_slice(&std::fs::read(p("ca.pem")).unwrap());
    std::fs::write(p("bundle.pem"), bundle).unwrap();

    let moto = Moto::start_tls(&p("srv.pem"), &p("srv.key"));
    let bucket = random_bucket();
    let config = |ca: Option<std::path::PathBuf>| S3Config {
        bucket: bucket.clone(),
        endpoint: Some(moto.endpoint.clone()),
        region: Some("us-east-1".into()),
        credentials: Some(test_credentials()),
        ca_bundle: ca,
        max_attempts: 2,
        ..S3Config::default()
    };
    let trusted = S3Client::connect(config(Some(p("bundle.pem"))))
        .await
        .unwrap();
    trusted
        .sdk()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}", aws_sdk_s3::error::DisplayErrorContext(&e)));
    assert_eq!(trusted.probe("databases").await, S3Status::Ok);
    let replica = trusted.replica("databases/x");
    let name = LtxFileName {
        min: Txid(1),
        max: Txid(1),
    };
    replica
        .write(0, name, vec![3; 100], SystemTime::now())
        .await
        .unwrap();
    assert_eq!(replica.read(0, name).await.unwrap(), vec![3; 100]);

    let untrusted = S3Client::connect(config(None)).await.unwrap();
    let status = untrusted.probe("databases").await;
    assert!(matches!(status, S3Status::Unreachable(_)), "{status:?}");
    assert!(
        status.to_string().to_lowercase().contains("certificate"),
        "{status}"
    );

    std::fs::write(p("junk.pem"), "not a certificate").unwrap();
    let err = S3Client::connect(config(Some(p("junk.pem"))))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Config(_)), "{err:?}");
    let err = S3Client::connect(config(Some(p("missing.pem"))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AWS_CA_BUNDLE"), "{err}");
}

/// A fault-injecting HTTP proxy in front of moto: every `every`-th request gets, in turn, a 503
/// `SlowDown`, a 500 `InternalError` or a connection reset; the others are forwarded (one
/// request per connection, as moto closes connections after each response).
struct FaultProxy {
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
    pub faults: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FaultProxy {
    async fn start(upstream_port: u16, every: u64) -> FaultProxy {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(AtomicU64::new(0));
        let faults2 = faults.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                let faults = faults2.clone();
                tokio::spawn(async move {
                    // Read the head, then Content-Length bytes of body.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 64 * 1024];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(every) {
                        let kind = faults.fetch_add(1, Ordering::Relaxed) % 3;
                        let (status, code) = match kind {
                            0 => ("503 Slow Down", "SlowDown"),
                            1 => ("500 Internal Server Error", "InternalError"),
                            _ => {
                                // Reset: close without answering.
                                let _ = conn.set_zero_linger();
                                return;
                            }
                        };
                        let body = format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected</Message></Error>"
                        );
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = conn.write_all(resp.as_bytes()).await;
                        return;
                    }
                    let Ok(mut up) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    if up.write_all(&buf).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy(&mut up, &mut conn).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        FaultProxy {
            endpoint,
            task,
            faults,
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// With a third of all requests failing (503 SlowDown, 500, connection resets), every
/// operation still succeeds through the SDK's retries, and the data is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_ride_out_throttling_5xx_and_resets() {
    let moto = Moto::start();
    let (_, bucket) = moto.new_bucket().await;
    let proxy = FaultProxy::start(moto.port, 3).await;
    let mut config = moto.config(&bucket);
    config.endpoint = Some(proxy.endpoint.clone());
    let client = S3Client::connect(config).await.unwrap();
    let replica = Replica::S3(client.replica(&tenant_prefix()));
    let c = CancellationToken::new();
    let t = SystemTime::now();
    for i in 1..=20u64 {
        let name = LtxFileName {
            min: Txid(i),
            max: Txid(i),
        };
        replica
            .write(0, name, vec![i as u8; 100 + i as usize], t, &c)
            .await
            .unwrap();
    }
    let big: Vec<u8> = (0..11 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let snap = LtxFileName {
        min: Txid(1),
        max: Txid(20),
    };
    replica.write(9, snap, big.clone(), t, &c).await.unwrap();
    let all = replica.list_all(&c).await.unwrap();
    assert_eq!(all.len(), 21);
    for f in &all {
        let data = replica.read(f, &c).await.unwrap();
        if f.level == 9 {
            assert!(data == big);
        } else {
            assert_eq!(data, vec![f.min.0 as u8; 100 + f.min.0 as usize]);
        }
    }
    let exact = replica.list_with_timestamps(&c).await.unwrap();
    assert_eq!(exact.len(), 21);
    replica.delete(&all[..10], &c).await.unwrap();
    assert_eq!(replica.list_all(&c).await.unwrap().len(), 11);
    let n = client.request_counts();
    let injected = proxy.faults.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{injected} faults injected; requests {n:?}");
    assert!(injected >= 20, "{injected}");
}

/// A proxy in front of moto that can take S3 down completely: while `down` is set, every
/// connection is accepted and reset without an answer (what a dead load balancer or a cut
/// network looks like); otherwise each request is forwarded (one per connection, as
/// [`FaultProxy`] does).
struct OutageProxy {
    endpoint: String,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections refused while down.
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl OutageProxy {
    async fn start(upstream_port: u16) -> OutageProxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let down = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let (down2, refused2) = (down.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                if down2.load(Ordering::SeqCst) {
                    refused2.fetch_add(1, Ordering::Relaxed);
                    let _ = conn.set_zero_linger();
                    continue;
                }
                let (down, refused) = (down2.clone(), refused2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 64 * 1024];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    // The outage may have begun while the request was arriving.
                    if down.load(Ordering::SeqCst) {
                        refused.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.set_zero_linger();
                        return;
                    }
                    let Ok(mut up) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    if up.write_all(&buf).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy(&mut up, &mut conn).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        OutageProxy {
            endpoint,
            down,
            refused,
            task,
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Staged L0 files of the harness's tenant, by TXID (`<state>/<id>/ltx/0/<min>-<max>.ltx`).
fn staged_txids(h: &Harness) -> Vec<u64> {
    let dir = h.state.join(ID).join("ltx").join("0");
    let mut v: Vec<u64> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| LtxFileName::parse(e.file_name().to_str()?))
                .map(|n| n.max.0)
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Total size of the tenant's staged L0 files.
fn staged_bytes(h: &Harness) -> u64 {
    let dir = h.state.join(ID).join("ltx").join("0");
    std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// S3 down for `OUTAGE_SECONDS` (default 120) while the application keeps committing: no commit
/// fails or waits on the replicator, the tenant shows `Error` with a `last_error` for as long as
/// it lasts, every change waits in local staging, and once S3 is back the replica catches up
/// by itself: our restore and `litestream restore` equal the source row for row, and the error
/// clears. Takes about OUTAGE_SECONDS + 30 s (the tenant retries with backoff up to 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_s3_outage_blocks_no_write_and_the_replica_catches_up() {
    let outage = Duration::from_secs(
        std::env::var("OUTAGE_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    );
    // Commit every 250 ms; a commit slower than this has waited on something (the replicator).
    const WRITE_EVERY: Duration = Duration::from_millis(250);
    const SLOW_COMMIT: Duration = Duration::from_secs(1);
    // The tenant backs off up to tenant::MAX_BACKOFF (60 s) between attempts while S3 is down,
    // and a wake does not cut a backoff short: recovery can take that long.
    const RECOVERY: Duration = Duration::from_secs(90);

    let moto = Moto::start();
    let (_, bucket) = moto.new_bucket().await;
    let proxy = OutageProxy::start(moto.port).await;
    let mut config = moto.config(&bucket);
    config.endpoint = Some(proxy.endpoint.clone());
    let client = S3Client::connect(config).await.unwrap();
    // Checks read straight from moto, never through the proxy.
    let check = Replica::S3(moto.client(&bucket).await.replica(&tenant_prefix()));
    let h = Harness::new();
    let app = app_conn(&h.db);
    let mut seq = 0;
    for _ in 0..5 {
        write_txn(&app, &mut seq, 10);
    }
    let cancel = CancellationToken::new();
    let store = h.store_to(
        StoreTarget::S3 {
            client,
            prefix: "databases".into(),
        },
        &cancel,
    );
    store.register(ID, &h.db).unwrap();
    h.wait_replicated_from(&check, &dump(&h.db), CATCH_UP).await;
    let before = wait_status(&store, "first sync uploaded", |s| {
        s.replicated_txid >= 1 && s.pending_since.is_none() && s.last_error.is_none()
    })
    .await;

    // 1. The outage: the app keeps writing; nothing reaches S3.
    proxy.set_down(true);
    let start = Instant::now();
    let mut commits = 0u64;
    let mut slowest = Duration::ZERO;
    let mut first_error: Option<Duration> = None;
    let mut error_samples = 0u64;
    let mut last_error = String::new();
    let mut max_staged = 0usize;
    while start.elapsed() < outage {
        let t = Instant::now();
        write_txn(&app, &mut seq, 2); // panics if the commit fails
        slowest = slowest.max(t.elapsed());
        commits += 1;
        store.wake(ID);
        let s = store.status(ID).unwrap();
        assert_eq!(
            s.replicated_txid, before.replicated_txid,
            "nothing can be replicated while S3 is down: {s:?}"
        );
        if first_error.is_none() && s.state == engine::tenant::State::Error {
            first_error = Some(start.elapsed());
        }
        if first_error.is_some() {
            // Once in error, it stays there until S3 answers again.
            assert_eq!(s.state, engine::tenant::State::Error, "{s:?}");
            last_error = s
                .last_error
                .clone()
                .expect("an Error state carries last_error");
            error_samples += 1;
        }
        max_staged = max_staged.max(staged_txids(&h).len());
        tokio::time::sleep(WRITE_EVERY.saturating_sub(t.elapsed())).await;
    }
    let during = store.status(ID).unwrap();
    let staged = staged_txids(&h);
    eprintln!(
        "outage of {outage:?}: {commits} commits, slowest {slowest:?}; Error after {first_error:?}, \
         {error_samples} samples in Error; {} connections refused; staged {staged:?} ({} bytes; max {max_staged} \
         files); db {} bytes; status {during:?}",
        proxy.refused(),
        staged_bytes(&h),
        std::fs::metadata(&h.db).map(|m| m.len()).unwrap_or(0)
    );
    let first_error = first_error.expect("the tenant never showed the outage as an error");
    assert!(
        first_error < Duration::from_secs(60).min(outage),
        "Error state only after {first_error:?}"
    );
    assert!(
        last_error.contains("replica") || last_error.contains("127.0.0.1"),
        "last_error should say what failed: {last_error}"
    );
    assert!(
        slowest < SLOW_COMMIT,
        "a commit took {slowest:?} during the outage"
    );
    assert!(proxy.refused() > 0);
    // Every change since the last upload is staged locally, contiguously, beyond the replica.
    assert!(
        during.local_txid > before.replicated_txid,
        "changes staged locally: {during:?}"
    );
    assert!(
        staged.contains(&during.local_txid),
        "the newest local TXID {} is staged: {staged:?}",
        during.local_txid
    );
    let pending: Vec<u64> = staged
        .iter()
        .copied()
        .filter(|t| *t > before.replicated_txid)
        .collect();
    assert_eq!(
        pending,
        (before.replicated_txid + 1..=during.local_txid).collect::<Vec<_>>(),
        "staging holds every TXID after the replica's, without a gap"
    );

    // 2. S3 is back: a few more commits, then the replica must catch up by itself.
    proxy.set_down(false);
    let back = Instant::now();
    for _ in 0..3 {
        write_txn(&app, &mut seq, 2);
        store.wake(ID);
        tokio::time::sleep(WRITE_EVERY).await;
    }
    let expected = dump(&h.db);
    let ours = h.wait_replicated_from(&check, &expected, RECOVERY).await;
    let caught_up = back.elapsed();
    let after = wait_status(&store, "error cleared", |s| {
        s.state != engine::tenant::State::Error
            && s.last_error.is_none()
            && s.pending_since.is_none()
    })
    .await;
    eprintln!("caught up {caught_up:?} after S3 came back; status {after:?}");
    assert!(after.replicated_txid >= during.local_txid, "{after:?}");
    assert_eq!(dump(&ours), expected, "our restore");
    let theirs = h.out("litestream.db");
    litestream_restore_url(
        &moto.litestream_url(&bucket, &tenant_prefix()),
        &theirs,
        &[],
    )
    .unwrap();
    assert_eq!(
        dump(&theirs),
        expected,
        "litestream restore differs from the source"
    );
    let t = Instant::now();
    let stopped = store.shutdown(Duration::from_secs(5)).await;
    assert!(
        stopped,
        "shutdown did not finish within 5 s ({:?})",
        t.elapsed()
    );
}
