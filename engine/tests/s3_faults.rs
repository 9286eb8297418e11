//! S3 that misbehaves the ways real stores and networks do, while several tenants write: a
//! seeded share of the responses are 503 `SlowDown`, 500 `InternalError`, connection resets,
//! TRUNCATED bodies (the head promises N bytes, fewer arrive, the connection closes) and SLOW
//! answers (2-3 s before the store is even asked). While it lasts, no commit waits on the
//! replicator, tenants show `error` when the retries give up, and a restore through the faulty
//! store either fails cleanly or yields a committed state; once it stops, every tenant catches
//! up by itself, its error clears, our restore and `litestream restore` equal the source, and no
//! level of any replica holds overlapping TXID ranges (the L0 chain runs from the snapshot to the
//! newest file, its only gaps the batches a busy tenant's L1 carried instead of an L0).
//!
//! `S3_FAULT_SECONDS` (default 20) sets the length of the faulty period; the seed is fixed.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use engine::client::s3::{S3Client, S3Config};
use engine::client::{LtxInfo, Replica, SNAPSHOT_LEVEL};
use engine::compact::CompactionConfig;
use engine::restore::Target;
use engine::store::{Store, StoreConfig, Target as StoreTarget};
use engine::tenant::{State, TenantConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const SEED: u64 = 0x5eed_f417_0000_0001;
const TENANTS: usize = 5;
/// Once the faults stop: the tenant's backoff (at most `tenant::MAX_BACKOFF`, 15 s) plus the
/// SDK's, plus the uploads themselves.
const RECOVERY: Duration = Duration::from_secs(45);
/// The listing and the tenant's position agree within this once it is idle.
const CHAIN_SETTLE: Duration = Duration::from_secs(5);
/// A commit slower than this waited on the replicator.
const SLOW_COMMIT: Duration = Duration::from_secs(1);

/// What the proxy does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    None,
    SlowDown,
    Internal,
    Reset,
    Truncated,
    Slow,
}

/// The fault for the `n`-th request (splitmix64 of the seed and `n`): ~8 % 503 SlowDown,
/// ~7 % 500, ~7 % resets, ~12 % truncated responses, ~10 % delayed 2-3 s; the rest pass.
fn fault_for(n: u64) -> (Fault, Duration) {
    let mut z = SEED ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let fault = match z % 100 {
        0..=7 => Fault::SlowDown,
        8..=14 => Fault::Internal,
        15..=21 => Fault::Reset,
        22..=33 => Fault::Truncated,
        34..=43 => Fault::Slow,
        _ => Fault::None,
    };
    (fault, Duration::from_millis(2000 + (z >> 32) % 1000))
}

/// An HTTP/1.1 proxy in front of moto (one request per connection, as the other proxies of the
/// S3 tests) that injects [`fault_for`] while `active` is set.
struct ChaosProxy {
    endpoint: String,
    active: Arc<AtomicBool>,
    counts: Arc<std::sync::Mutex<BTreeMap<Fault, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Reads one HTTP message (head, then Content-Length bytes of body, or up to EOF without one).
/// Returns (bytes, head length, body length announced).
async fn read_message(
    conn: &mut tokio::net::TcpStream,
    to_eof: bool,
) -> Option<(Vec<u8>, usize, Option<usize>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: Option<usize> = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let want = match (len, to_eof) {
        (Some(n), _) => head_end + n,
        (None, true) => usize::MAX,
        (None, false) => head_end,
    };
    while buf.len() < want {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) if want == usize::MAX => break,
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((buf, head_end, len))
}

impl ChaosProxy {
    async fn start(upstream_port: u16) -> ChaosProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let active = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let seen = Arc::new(AtomicU64::new(0));
        let (active2, counts2) = (active.clone(), counts.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (active, counts, seen) = (active2.clone(), counts2.clone(), seen.clone());
                tokio::spawn(async move {
                    let Some((request, _, _)) = read_message(&mut conn, false).await else {
                        return;
                    };
                    let (fault, delay) = if active.load(Ordering::SeqCst) {
                        fault_for(seen.fetch_add(1, Ordering::Relaxed))
                    } else {
                        (Fault::None, Duration::ZERO)
                    };
                    *counts.lock().unwrap().entry(fault).or_default() += 1;
                    let error = |status: &str, code: &str| {
                        let body = format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected</Message></Error>"
                        );
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    match fault {
                        Fault::SlowDown => {
                            let _ = conn
                                .write_all(error("503 Slow Down", "SlowDown").as_bytes())
                                .await;
                            return;
                        }
                        Fault::Internal => {
                            let _ = conn
                                .write_all(
                                    error("500 Internal Server Error", "InternalError").as_bytes(),
                                )
                                .await;
                            return;
                        }
                        Fault::Reset => {
                            let _ = conn.set_zero_linger();
                            return;
                        }
                        Fault::Slow => tokio::time::sleep(delay).await,
                        Fault::None | Fault::Truncated => {}
                    }
                    let Ok(mut up) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    if up.write_all(&request).await.is_err() {
                        return;
                    }
                    if fault == Fault::Truncated {
                        // The store did the work; the answer is cut: half the body the head
                        // announces (half the head when there is no body), then a close.
                        let Some((resp, head_end, len)) = read_message(&mut up, true).await else {
                            return;
                        };
                        let cut = match len {
                            Some(n) if n > 0 => head_end + n / 2,
                            _ => head_end / 2,
                        };
                        let _ = conn.write_all(&resp[..cut.min(resp.len())]).await;
                        let _ = conn.shutdown().await;
                        return;
                    }
                    let _ = tokio::io::copy(&mut up, &mut conn).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        ChaosProxy {
            endpoint,
            active,
            counts,
            task,
        }
    }

    fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::SeqCst);
    }

    fn counts(&self) -> BTreeMap<Fault, u64> {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tenant_id(i: usize) -> String {
    format!("0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e{:02}", 20 + i)
}

/// Rows 1..=n of `source` (the app only inserts): a restore that is a committed state of it.
fn is_prefix_of(restored: &[(i64, String, usize)], source: &[(i64, String, usize)]) -> bool {
    restored.len() <= source.len() && source[..restored.len()] == *restored
}

/// The L0 chain starts at or before the newest snapshot's end + 1 (or at 1), is contiguous but
/// where an L1 file carries the missing TXIDs (a hot tenant folds the batch after an L1
/// boundary into that L1: `engine::compact::Index::fold_l1`), and L0 and L1 end at `txid`
/// (panics otherwise). Returns (L0 files, compacted files, snapshots) and the
/// overlapping pairs found at any level (forks or duplicates), for the caller to assert once
/// every tenant was checked.
fn assert_chain(id: &str, files: &[LtxInfo], txid: u64) -> ((usize, usize, usize), Vec<String>) {
    let mut forks = Vec::new();
    let mut by_level: BTreeMap<u8, Vec<&LtxInfo>> = BTreeMap::new();
    for f in files {
        by_level.entry(f.level).or_default().push(f);
    }
    for (level, v) in by_level.iter_mut() {
        v.sort_by_key(|f| (f.min, f.max));
        for w in v.windows(2) {
            let overlap = if *level == SNAPSHOT_LEVEL {
                w[0].max >= w[1].max
            } else {
                w[1].min <= w[0].max
            };
            if overlap {
                forks.push(format!(
                    "{id}: level {level}: {}-{} and {}-{}",
                    w[0].min, w[0].max, w[1].min, w[1].max
                ));
            }
        }
    }
    let l0 = by_level.get(&0).cloned().unwrap_or_default();
    let snap_max = by_level
        .get(&SNAPSHOT_LEVEL)
        .and_then(|v| v.last())
        .map(|s| s.max.0)
        .unwrap_or(0);
    let (Some(first), Some(last)) = (l0.first(), l0.last()) else {
        panic!("{id}: no L0 file: {files:?}");
    };
    assert!(
        first.min.0 <= snap_max + 1,
        "{id}: L0 starts at {} after the snapshot ending at {snap_max}",
        first.min
    );
    let l1 = by_level.get(&1).cloned().unwrap_or_default();
    let in_l1 = |t: u64| l1.iter().any(|f| (f.min.0..=f.max.0).contains(&t));
    for w in l0.windows(2) {
        assert!(w[1].min.0 > w[0].max.0, "{id}: L0 forks: {w:?}");
        for t in w[0].max.0 + 1..w[1].min.0 {
            assert!(in_l1(t), "{id}: L0 gap at {t} that no L1 file holds: {w:?}");
        }
    }
    let newest = l1.last().map_or(last.max.0, |f| f.max.0.max(last.max.0));
    for t in last.max.0 + 1..=newest {
        assert!(in_l1(t), "{id}: TXID {t} after the newest L0 in no L1 file");
    }
    assert_eq!(
        newest, txid,
        "{id}: the newest L0 or L1 is not the replicated TXID"
    );
    engine::restore::plan(files, &Target::default(), id).expect("restore plan");
    let compacted = files
        .iter()
        .filter(|f| f.level != 0 && f.level != SNAPSHOT_LEVEL)
        .count();
    let snaps = by_level.get(&SNAPSHOT_LEVEL).map_or(0, |v| v.len());
    ((l0.len(), compacted, snaps), forks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_slow_and_failing_s3_responses_with_five_writing_tenants() {
    let fault_period = Duration::from_secs(
        std::env::var("S3_FAULT_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let started = Instant::now();
    let moto = Moto::start();
    let (_, bucket) = moto.new_bucket().await;
    let proxy = ChaosProxy::start(moto.port).await;
    // The store's client goes through the proxy. Two attempts per request (default 8) so that
    // failures reach the tenants' own retry loop and their status, not only the SDK's.
    let mut config: S3Config = moto.config(&bucket);
    config.endpoint = Some(proxy.endpoint.clone());
    config.max_attempts = 2;
    let client = S3Client::connect(config.clone()).await.unwrap();
    // A restore client through the proxy (default attempts), and checks straight from moto.
    config.max_attempts = 0;
    let faulty_reader = S3Client::connect(config).await.unwrap();
    let direct = moto.client(&bucket).await;

    let h = Harness::new();
    let ids: Vec<String> = (0..TENANTS).map(tenant_id).collect();
    let dbs: Vec<_> = ids
        .iter()
        .map(|id| h.dir.path().join("clients").join(format!("{id}.db")))
        .collect();
    let apps: Vec<_> = dbs.iter().map(|p| app_conn(p)).collect();
    let mut seqs = [0u64; TENANTS];
    for (app, seq) in apps.iter().zip(seqs.iter_mut()) {
        write_txn(app, seq, 10);
    }
    // Compaction and snapshots on a short schedule, so that they (and their downloads of L1
    // files, whose bodies get truncated) run during the faults too.
    let cancel = CancellationToken::new();
    let store = Store::new(
        StoreConfig {
            state_dir: h.state.clone(),
            target: StoreTarget::S3 {
                client,
                prefix: "databases".into(),
            },
            tenant: TenantConfig {
                compaction: CompactionConfig {
                    level_intervals: vec![Duration::from_secs(2), Duration::from_secs(6)],
                    snapshot_interval: Duration::from_secs(8),
                    ..CompactionConfig::default()
                },
                ..fast_tenant_config()
            },
            max_uploads: 8,
            max_opening: 4,
        },
        cancel.clone(),
    );
    for (id, db) in ids.iter().zip(&dbs) {
        store.register(id, db).unwrap();
    }
    let replica = |c: &S3Client, id: &str| Replica::S3(c.replica(&format!("databases/{id}")));
    let wait_clean = |what: &'static str, timeout: Duration| {
        let store = store.clone();
        let ids = ids.clone();
        async move {
            let start = Instant::now();
            loop {
                let all: Vec<_> = ids.iter().map(|id| store.status(id).unwrap()).collect();
                if all.iter().all(|s| {
                    s.state != State::Error
                        && s.last_error.is_none()
                        && s.pending_since.is_none()
                        && s.replicated_txid >= 1
                        && s.replicated_txid == s.local_txid
                }) {
                    return (start.elapsed(), all);
                }
                assert!(start.elapsed() < timeout, "{what}: {all:#?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_clean("first sync", Duration::from_secs(30)).await;

    // 1. Faults on; the apps keep committing round-robin, one commit every 40 ms.
    proxy.set_active(true);
    let faults_from = Instant::now();
    let mut commits = 0u64;
    let mut slowest = Duration::ZERO;
    let mut error_samples = vec![0u64; TENANTS];
    let mut errors_seen = std::collections::BTreeSet::new();
    let (mut restores_ok, mut restores_failed) = (0u64, 0u64);
    let mut next_restore = Instant::now() + Duration::from_secs(2);
    let mut i = 0usize;
    while faults_from.elapsed() < fault_period {
        let t = Instant::now();
        let k = i % TENANTS;
        write_txn(&apps[k], &mut seqs[k], 1 + i % 7);
        slowest = slowest.max(t.elapsed());
        commits += 1;
        store.wake(&ids[k]);
        for (j, id) in ids.iter().enumerate() {
            let s = store.status(id).unwrap();
            if s.state == State::Error {
                error_samples[j] += 1;
                if let Some(e) = s.last_error {
                    errors_seen.insert(e);
                }
            }
        }
        // Now and then, our restore through the faulty store: a clean error or a committed
        // state, never a wrong database.
        if Instant::now() >= next_restore {
            let k = (i / 3) % TENANTS;
            let source = dump(&dbs[k]);
            let r = replica(&faulty_reader, &ids[k]);
            match h
                .restore_from(&r, "under-faults.db", Target::default())
                .await
            {
                Ok(out) => {
                    let got = dump(&out);
                    assert!(
                        is_prefix_of(&got, &source),
                        "{}: restore under faults gave {} rows that are not a prefix of the source",
                        ids[k],
                        got.len()
                    );
                    restores_ok += 1;
                }
                Err(e) => {
                    assert!(
                        !h.out("under-faults.db").exists(),
                        "a failed restore left its output: {e}"
                    );
                    restores_failed += 1;
                }
            }
            next_restore = Instant::now() + Duration::from_secs(2);
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(40).saturating_sub(t.elapsed())).await;
    }
    proxy.set_active(false);
    let counts = proxy.counts();
    eprintln!(
        "faults for {:?}: {commits} commits (slowest {slowest:?}); injected {counts:?}; samples in \
         Error per tenant {error_samples:?}; errors {errors_seen:#?}; restores through the faults: \
         {restores_ok} ok, {restores_failed} failed cleanly",
        faults_from.elapsed()
    );
    assert!(slowest < SLOW_COMMIT, "a commit took {slowest:?}");
    for f in [
        Fault::SlowDown,
        Fault::Internal,
        Fault::Reset,
        Fault::Truncated,
        Fault::Slow,
    ] {
        assert!(
            counts.get(&f).copied().unwrap_or(0) >= 3,
            "too few {f:?} injected: {counts:?}"
        );
    }
    // Finding (RELIABILITY.md): a staged L0 vanishing under the uploader shows up as a local
    // I/O error on the staging path; counted here, not (yet) a failure.
    let staging_errors = errors_seen
        .iter()
        .filter(|e| e.contains("No such file"))
        .count();
    eprintln!("distinct 'No such file' staging errors: {staging_errors}");
    let tenants_in_error = error_samples.iter().filter(|&&n| n > 0).count();
    assert!(
        tenants_in_error >= 1,
        "no tenant ever showed the faults as an error: {error_samples:?}"
    );

    // 2. Faults off: a last commit each, then everything catches up by itself.
    let back = Instant::now();
    for (app, seq) in apps.iter().zip(seqs.iter_mut()) {
        write_txn(app, seq, 3);
    }
    for id in &ids {
        store.wake(id);
    }
    wait_clean("catch up and clear the error", RECOVERY).await;
    let caught_up = back.elapsed();
    // Then cold (sealed): nothing more is uploaded while the replicas are checked.
    let start = Instant::now();
    let statuses = loop {
        let all: Vec<_> = ids.iter().map(|id| store.status(id).unwrap()).collect();
        if all
            .iter()
            .all(|s| s.state == State::Idle && s.replicated_txid == s.local_txid)
        {
            break all;
        }
        assert!(
            start.elapsed() < RECOVERY,
            "tenants did not go idle: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut chains = Vec::new();
    let mut forks = Vec::new();
    for ((id, db), s) in ids.iter().zip(&dbs).zip(&statuses) {
        let expected = dump(db);
        let check = replica(&direct, id);
        let ours = h.wait_replicated_from(&check, &expected, RECOVERY).await;
        assert_eq!(dump(&ours), expected, "{id}: our restore");
        let theirs = h.out(&format!("{id}-litestream.db"));
        litestream_restore_url(
            &moto.litestream_url(&bucket, &format!("databases/{id}")),
            &theirs,
            &[],
        )
        .unwrap();
        assert_eq!(dump(&theirs), expected, "{id}: litestream restore");
        // The listing against the tenant's own position, read after it (a seal may still have
        // uploaded one more L0 after the tenant turned idle).
        let mut files = check.list_all(&cancel).await.unwrap();
        let mut txid = store.status(id).unwrap().replicated_txid;
        let start = Instant::now();
        while files.iter().map(|f| f.max.0).max() != Some(txid) && start.elapsed() < CHAIN_SETTLE {
            tokio::time::sleep(Duration::from_millis(100)).await;
            files = check.list_all(&cancel).await.unwrap();
            txid = store.status(id).unwrap().replicated_txid;
        }
        assert!(txid >= s.replicated_txid, "{id}: position went back: {s:?}");
        let (chain, f) = assert_chain(id, &files, txid);
        chains.push(chain);
        forks.extend(f);
    }
    eprintln!(
        "all {TENANTS} tenants caught up and cleared {caught_up:?} after the faults stopped; \
         (L0, compacted, snapshots) per tenant {chains:?}; total {:?}",
        started.elapsed()
    );
    assert!(store.shutdown(Duration::from_secs(5)).await);
    // Last, so that everything above is known when it fails: a compaction whose PUT reached the
    // store but whose answer was lost is not in the tenant's index, and the next compaction of
    // that level writes an overlapping file beside it (RELIABILITY.md, finding 5).
    assert!(
        forks.is_empty(),
        "overlapping TXID ranges in the replicas: {forks:#?}"
    );
}
