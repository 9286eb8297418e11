//! Hostile files: property tests (fixed seed, bounded cases) over what the engine reads from
//! disk that someone else may have damaged.
//!
//! - the LTX decoder over mutated real LTX files (Litestream 0.5.17's, in testdata, and ours):
//!   it never panics, and whatever it accepts decodes to exactly the original pages;
//! - the WAL reader over mutated and truncated real WALs (written by SQLite in the test): it never
//!   panics and never accepts a frame at or after the damage;
//! - restore of a replica with one file corrupted, truncated or deleted: an error naming the file
//!   (or the TXID gap), never a panic, never a file at the output path; or, when the damaged file
//!   is not needed, exactly the right database;
//! - thousands of random names in a watch directory: only strict-UUID names register.
//!
//! Cases per property: `PROPTEST_CASES` (default 256). The seed is fixed, so a failure reproduces.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use engine::client::fs::FsReplica;
use engine::client::Replica;
use engine::restore::{RestoreOptions, Target};
use engine::wal::{WalReader, WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio_util::sync::CancellationToken;

const SEED: [u8; 32] = *b"litestream-manager-hostile-seed!";

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

fn runner() -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &SEED),
    )
}

/// A damage to a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    /// XOR these bytes in (positions taken modulo the length; xor values are non-zero).
    Flip(Vec<(usize, u8)>),
    /// Keep only this many bytes (modulo the length).
    Truncate(usize),
    /// Insert a byte at a position.
    Insert(usize, u8),
    /// Remove the byte at a position.
    Remove(usize),
    /// XOR a byte among the first 128 (headers) or the last 64 (trailers).
    FlipHead(usize, u8),
    FlipTail(usize, u8),
    /// Overwrite a run with one value (a zeroed block, a run of 0xff).
    Fill(usize, usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4).prop_map(Mutation::Flip),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        2 => (0usize..128, 1u8..=255).prop_map(|(p, x)| Mutation::FlipHead(p, x)),
        1 => (0usize..64, 1u8..=255).prop_map(|(p, x)| Mutation::FlipTail(p, x)),
        1 => (any::<usize>(), 1usize..64, prop_oneof![Just(0u8), Just(0xff)])
            .prop_map(|(p, n, b)| Mutation::Fill(p, n, b)),
    ]
}

impl Mutation {
    /// Applies the mutation; returns the damaged bytes and the first offset that differs from
    /// the original (`None`: the mutation happened to change nothing).
    fn apply(&self, orig: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut b = orig.to_vec();
        if b.is_empty() {
            return (b, None);
        }
        let len = b.len();
        match self {
            Mutation::Flip(v) => {
                for &(p, x) in v {
                    b[p % len] ^= x;
                }
            }
            Mutation::FlipHead(p, x) => b[p % len] ^= x,
            Mutation::FlipTail(p, x) => b[len - 1 - p % len] ^= x,
            Mutation::Truncate(n) => b.truncate(n % len),
            Mutation::Insert(p, x) => b.insert(p % (len + 1), *x),
            Mutation::Remove(p) => {
                b.remove(p % len);
            }
            Mutation::Fill(p, n, x) => {
                let p = p % len;
                for y in &mut b[p..(p + n).min(len)] {
                    *y = *x;
                }
            }
        }
        let first = b
            .iter()
            .zip(orig)
            .position(|(a, o)| a != o)
            .or((b.len() != orig.len()).then(|| b.len().min(orig.len())));
        (b, first)
    }
}

// ---------------------------------------------------------------------------------------------
// LTX decoder

type Decoded = (engine::ltx::Header, Vec<(u32, Vec<u8>)>);

fn decode(data: &[u8]) -> Result<Decoded, engine::ltx::LtxError> {
    let mut dec = engine::ltx::Decoder::new(data)?;
    let hdr = dec.header().clone();
    let mut pages = Vec::new();
    let mut buf = Vec::new();
    while let Some(pgno) = dec.next_page(&mut buf)? {
        pages.push((pgno, buf.clone()));
    }
    dec.finish()?;
    Ok((hdr, pages))
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/ltx/litestream-0.5.17")
}

fn ltx_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for level in std::fs::read_dir(root.join("ltx")).unwrap() {
        for f in std::fs::read_dir(level.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

/// A replica written by our own store: one L0 per burst of commits (the watcher drives it).
async fn our_replica() -> (Harness, PathBuf) {
    let h = Harness::new();
    let app = app_conn(&h.db);
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    let _w = h.watch(&store, &cancel).await;
    let mut seq = 0;
    for i in 0..8 {
        write_txn(&app, &mut seq, 3 + i * 7);
        h.wait_replicated(&dump(&h.db), Duration::from_secs(30))
            .await;
    }
    assert!(store.shutdown(Duration::from_secs(5)).await);
    let dir = h.replica_dir();
    (h, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ltx_decoder_survives_mutated_real_files() {
    let t0 = Instant::now();
    let (_h, ours) = our_replica().await;
    let mut corpus: Vec<(PathBuf, Vec<u8>, Decoded)> = Vec::new();
    for p in ltx_files(&testdata()).into_iter().chain(ltx_files(&ours)) {
        let data = std::fs::read(&p).unwrap();
        let d = decode(&data).unwrap_or_else(|e| panic!("pristine {}: {e}", p.display()));
        corpus.push((p, data, d));
    }
    let (rejected, accepted) = (Cell::new(0u64), Cell::new(0u64));
    runner()
        .run(&(0..corpus.len(), mutation()), |(i, m)| {
            let (path, data, want) = &corpus[i];
            let (bad, first) = m.apply(data);
            let got = std::panic::catch_unwind(|| decode(&bad));
            let got = got.map_err(|_| {
                TestCaseError::fail(format!("decoder panicked on {} {m:?}", path.display()))
            })?;
            match got {
                Ok(d) => {
                    accepted.set(accepted.get() + 1);
                    // Accepted: must be the original content (the damage changed nothing
                    // that matters, e.g. nothing at all).
                    prop_assert!(
                        first.is_none() || (d.1 == want.1 && d.0.commit == want.0.commit),
                        "{}: {m:?} (first difference at {first:?}) decoded to different pages",
                        path.display()
                    );
                }
                Err(_) => rejected.set(rejected.get() + 1),
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "RESULT ltx_decoder: corpus {} files, {} cases: {} rejected, {} accepted \
         (identical content), {:?}",
        corpus.len(),
        cases(),
        rejected.get(),
        accepted.get(),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// WAL reader

/// A real WAL: SQLite in WAL mode without checkpoints, a few hundred frames of commits of
/// varied sizes; copied while the connection is still open.
fn real_wal(dir: &Path) -> Vec<u8> {
    let db = dir.join("walsrc.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; PRAGMA page_size=1024;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, blob BLOB)",
    )
    .unwrap();
    let mut seq = 0;
    for i in 0..40 {
        write_txn(&c, &mut seq, 1 + (i % 9));
    }
    let wal = std::fs::read(engine::db::wal_path(&db)).unwrap();
    drop(c);
    wal
}

fn commit_ends(wal: &[u8], frame_size: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut off = WAL_HEADER_SIZE as usize;
    while off + frame_size <= wal.len() {
        if u32::from_be_bytes(wal[off + 4..off + 8].try_into().unwrap()) != 0 {
            ends.push(off + frame_size);
        }
        off += frame_size;
    }
    ends
}

#[test]
fn wal_reader_never_accepts_damaged_frames() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let wal = real_wal(tmp.path());
    let page_size = u32::from_be_bytes(wal[8..12].try_into().unwrap()) as usize;
    let fs = WAL_FRAME_HEADER_SIZE as usize + page_size;
    let ends = commit_ends(&wal, fs);
    assert!(ends.len() >= 40, "{} commits", ends.len());
    let path = tmp.path().join("mutated-wal");
    std::fs::write(&path, &wal).unwrap();
    let orig = WalReader::open(&path).unwrap().unwrap();
    let full = orig.scan_from_start(0).unwrap();
    assert_eq!(full.end as usize, *ends.last().unwrap());
    let (headers_refused, frames_cut) = (Cell::new(0u64), Cell::new(0u64));
    runner()
        .run(&(mutation(), 0u64..4), |(m, chunk)| {
            let (bad, first) = m.apply(&wal);
            std::fs::write(&path, &bad).unwrap();
            // Scans in chunks too: 0 = unlimited, else a few frames' worth per scan.
            let max = chunk * 3 * fs as u64;
            let r = std::panic::catch_unwind(|| -> Result<_, engine::wal::WalError> {
                let Some(rd) = WalReader::open(&path)? else {
                    return Ok(None);
                };
                let mut scans = vec![rd.scan_from_start(max)?];
                while !scans.last().unwrap().reached_end {
                    let last = scans.last().unwrap();
                    scans.push(rd.scan_from(last.end, last.checksum, last.salts, max)?);
                }
                Ok(Some(scans))
            })
            .map_err(|_| TestCaseError::fail(format!("WAL reader panicked on {m:?}")))?;
            let Some(first) = first else { return Ok(()) };
            let scans = match r {
                Ok(Some(s)) => s,
                _ => {
                    // No valid WAL any more: only the header can cause that.
                    prop_assert!(
                        first < WAL_HEADER_SIZE as usize,
                        "{m:?}: refused at {first}"
                    );
                    headers_refused.set(headers_refused.get() + 1);
                    return Ok(());
                }
            };
            let end = scans.last().unwrap().end as usize;
            if first < WAL_HEADER_SIZE as usize {
                // A damaged header that still parses (e.g. its checkpoint counter) changes
                // the checksum seed or the salts: no frame may chain from it, unless the
                // damage was in a byte the header checksum does not cover.
                prop_assert!(
                    end == WAL_HEADER_SIZE as usize || end == full.end as usize,
                    "{m:?}: accepted up to {end}"
                );
                return Ok(());
            }
            // Only whole commits entirely before the damaged frame may be accepted.
            let damaged_frame =
                WAL_HEADER_SIZE as usize + (first - WAL_HEADER_SIZE as usize) / fs * fs;
            let allowed = ends
                .iter()
                .copied()
                .filter(|&e| e <= damaged_frame)
                .max()
                .unwrap_or(WAL_HEADER_SIZE as usize);
            prop_assert_eq!(end, allowed, "{:?}: first difference at {}", m, first);
            // Pages reported are at offsets inside the accepted range.
            for s in &scans {
                prop_assert!(s.pages.values().all(|&o| (o as usize) + fs <= end));
            }
            frames_cut.set(frames_cut.get() + 1);
            Ok(())
        })
        .unwrap();
    eprintln!(
        "RESULT wal_reader: {} commits / {} bytes of real WAL, {} cases: {} \
         refused at the header, {} cut exactly before the damage, {:?}",
        ends.len(),
        wal.len(),
        cases(),
        headers_refused.get(),
        frames_cut.get(),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Restore of a damaged replica

#[derive(Clone, Debug)]
enum Damage {
    Corrupt(Mutation),
    Delete,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

async fn restore_to(replica: &Path, out: &Path) -> Result<(), engine::restore::RestoreError> {
    restore_at(replica, out, Target::default()).await
}

async fn restore_at(
    replica: &Path,
    out: &Path,
    target: Target,
) -> Result<(), engine::restore::RestoreError> {
    let opts = RestoreOptions {
        target,
        force: false,
        integrity_check: true,
    };
    let r = Replica::Fs(FsReplica::new(replica));
    engine::restore::restore(&r, out, &opts, &CancellationToken::new())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_a_damaged_replica_names_the_file_or_restores_exactly() {
    let t0 = Instant::now();
    let (h, ours) = our_replica().await;
    let work = h.out("hostile");
    let mut replicas = Vec::new();
    for (name, src) in [("litestream", testdata()), ("ours", ours)] {
        let good = work.join(format!("{name}-good.db"));
        std::fs::create_dir_all(&work).unwrap();
        restore_to(&src, &good).await.unwrap();
        replicas.push((
            name,
            src.clone(),
            ltx_files(&src),
            std::fs::read(&good).unwrap(),
        ));
    }
    let rt = tokio::runtime::Handle::current();
    let outcome = RefCell::new(std::collections::BTreeMap::<String, u64>::new());
    let case = Cell::new(0u64);
    let strategy = (
        0..replicas.len(),
        any::<prop::sample::Index>(),
        prop_oneof![3 => mutation().prop_map(Damage::Corrupt), 1 => Just(Damage::Delete)],
    );
    tokio::task::block_in_place(|| {
        runner()
            .run(&strategy, |(r, file, damage)| {
                let (name, src, files, good) = &replicas[r];
                let victim = file.get(files);
                let rel = victim.strip_prefix(src).unwrap();
                let fname = victim.file_name().unwrap().to_string_lossy().to_string();
                case.set(case.get() + 1);
                let dir = work.join(format!("case-{}", case.get()));
                copy_dir(src, &dir);
                let target = dir.join(rel);
                match &damage {
                    Damage::Corrupt(m) => {
                        let (bad, _) = m.apply(&std::fs::read(&target).unwrap());
                        std::fs::write(&target, bad).unwrap();
                    }
                    Damage::Delete => std::fs::remove_file(&target).unwrap(),
                }
                let out = dir.join("restored.db");
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    rt.block_on(restore_to(&dir, &out))
                }))
                .map_err(|_| {
                    TestCaseError::fail(format!("restore panicked: {rel:?} {damage:?}"))
                })?;
                let tmp_left = dir.join("restored.db.tmp").exists();
                prop_assert!(!tmp_left, "restore left restored.db.tmp behind");
                match result {
                    Ok(()) => {
                        // The damaged file was not needed (e.g. an L0 covered by an L1):
                        // the database must be exactly the right one.
                        let got = std::fs::read(&out).unwrap();
                        // Except when the newest file was deleted: nothing records that it
                        // existed, so the replica now ends one TXID earlier, and the restore
                        // must be exactly that earlier committed state.
                        let remaining_max = ltx_files(&dir)
                            .iter()
                            .filter_map(|p| {
                                engine::ltx::LtxFileName::parse(
                                    &p.file_name().unwrap().to_string_lossy(),
                                )
                            })
                            .map(|n| n.max)
                            .max();
                        let want = if matches!(damage, Damage::Delete)
                            && files.iter().filter_map(|p| engine::ltx::LtxFileName::parse(&p.file_name().unwrap().to_string_lossy())).map(|n| n.max).max() > remaining_max
                        {
                            let earlier = dir.join("earlier.db");
                            rt.block_on(restore_at(
                                src,
                                &earlier,
                                Target { txid: remaining_max, timestamp: None },
                            ))
                            .unwrap();
                            *outcome
                                .borrow_mut()
                                .entry(format!("{name}: newest file deleted: restored the previous TXID exactly"))
                                .or_default() += 1;
                            std::fs::read(&earlier).unwrap()
                        } else {
                            good.clone()
                        };
                        if std::env::var_os("HOSTILE_DEBUG").is_some() {
                            eprintln!("ok: {name} {rel:?} {damage:?}");
                        }
                        prop_assert!(
                            got == want,
                            "{name}: {rel:?} {damage:?}: restored a WRONG database"
                        );
                        *outcome
                            .borrow_mut()
                            .entry(format!("{name}: restored exactly (file not needed, or newest deleted)"))
                            .or_default() += 1;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        prop_assert!(
                            !out.exists(),
                            "{name}: failed restore left {}",
                            out.display()
                        );
                        match damage {
                            Damage::Corrupt(_) => prop_assert!(
                                msg.contains(&fname),
                                "{name}: {rel:?} damaged, but the error does not name it: {msg}"
                            ),
                            Damage::Delete => prop_assert!(
                                msg.contains("gap") || msg.contains("snapshot"),
                                "{name}: {rel:?} deleted: {msg}"
                            ),
                        }
                        let kind = msg
                            .split(": ")
                            .nth(1)
                            .map(|s| s.split(|c: char| c.is_ascii_digit()).next().unwrap_or(s))
                            .unwrap_or(&msg)
                            .chars()
                            .take(40)
                            .collect::<String>();
                        *outcome
                            .borrow_mut()
                            .entry(format!(
                                "{name}: error: {}",
                                if matches!(damage, Damage::Delete) {
                                    msg.chars().take(60).collect()
                                } else {
                                    kind
                                }
                            ))
                            .or_default() += 1;
                    }
                }
                let _ = std::fs::remove_dir_all(&dir);
                Ok(())
            })
            .unwrap();
    });
    eprintln!(
        "RESULT restore_damaged: {} cases, {:?}",
        cases(),
        t0.elapsed()
    );
    for (k, n) in outcome.borrow().iter() {
        eprintln!("  {n:5}  {k}");
    }
}

// ---------------------------------------------------------------------------------------------
// Random names in a watch directory

/// The rule, written independently of the watcher: `<8-4-4-4-12 hex>.(db|sqlite|sqlite3)`.
fn strict_tenant_id(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    if !["db", "sqlite", "sqlite3"].contains(&ext) {
        return None;
    }
    let groups: Vec<&str> = stem.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12]
        || !groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(stem.to_ascii_lowercase())
}

fn name_strategy() -> impl Strategy<Value = String> {
    let hex = |n: usize| {
        proptest::collection::vec(prop::sample::select(b"0123456789abcdefABCDEF".to_vec()), n)
            .prop_map(|v| String::from_utf8(v).unwrap())
    };
    let near_uuid =
        (hex(8), hex(4), hex(4), hex(4), hex(12), 0usize..12).prop_map(|(a, b, c, d, e, how)| {
            let u = format!("{a}-{b}-{c}-{d}-{e}");
            match how {
                0 => format!("{{{u}}}"),
                1 => format!("urn:uuid:{u}"),
                2 => u.replace('-', ""),
                3 => format!("{u}0"),
                4 => u[1..].to_string(),
                5 => u.replacen('-', "_", 1),
                6 => format!(" {u}"),
                7 => format!("{u} "),
                8 => u.replacen('a', "g", 1),
                9 => format!("{}{}", &u[..35], "\u{e9}"),
                _ => u,
            }
        });
    let ext = prop::sample::select(vec![
        ".db",
        ".sqlite",
        ".sqlite3",
        ".DB",
        ".db-wal",
        ".db-shm",
        ".db-journal",
        ".db.tmp",
        ".db~",
        ".sqlite4",
        "",
        ".db.db",
        ".txt",
        ".",
    ]);
    let junk = "[a-zA-Z0-9 _.,;:!@#$%^&()+=\\-\u{e9}\u{4e2d}]{1,60}";
    prop_oneof![
        6 => (near_uuid, ext.clone()).prop_map(|(u, e)| format!("{u}{e}")),
        2 => (junk, ext.clone()).prop_map(|(j, e)| format!("{j}{e}")),
        1 => (prop::sample::select(vec![".", "..", "._", "~"]), hex(8)).prop_map(|(p, h)| format!("{p}{h}.db")),
    ]
    .prop_filter("a file name", |n| {
        !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('\0') && n.len() < 250
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_random_names_register_only_strict_uuids() {
    let t0 = Instant::now();
    let total: usize = std::env::var("HOSTILE_NAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let mut rng = runner();
    let strategy = name_strategy();
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    let mut valid = 0;
    while names.len() < total {
        let n = strategy.new_tree(&mut rng).unwrap().current();
        // Keep tenants few (each one is a real replication): at most 40 valid names.
        if strict_tenant_id(&n).is_some() {
            if valid >= 40 {
                continue;
            }
            valid += 1;
        }
        if seen.insert(n.clone()) {
            names.push(n);
        }
    }
    let h = Harness::new();
    let clients = h.dir.path().join("clients");
    // Half before the watcher starts (initial scan), half after (inotify, queue overflow).
    let (before, after) = names.split_at(names.len() / 2);
    for n in before {
        std::fs::write(clients.join(n), b"").unwrap();
    }
    let cancel = CancellationToken::new();
    let store = h.store(&cancel);
    let _w = h.watch(&store, &cancel).await;
    for n in after {
        std::fs::write(clients.join(n), b"").unwrap();
    }
    // Duplicates by case (A.db and a.db are one tenant): the expected set is of lowercase ids.
    let want: HashSet<String> = names.iter().filter_map(|n| strict_tenant_id(n)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got: HashSet<String> = store.ids().into_iter().map(|(id, _)| id).collect();
        for id in &got {
            assert!(
                want.contains(id),
                "registered a name that is not a strict UUID: {id}"
            );
        }
        if got == want || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got, want, "every strict-UUID name registers");
    for (id, path) in store.ids() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            strict_tenant_id(&name).as_deref(),
            Some(id.as_str()),
            "{}",
            path.display()
        );
    }
    eprintln!(
        "RESULT watch_names: {} names ({} strict-UUID names, {} distinct tenants), \
         registered exactly those, {:?}",
        names.len(),
        valid,
        want.len(),
        t0.elapsed()
    );
    cancel.cancel();
    let _ = store.shutdown(Duration::from_secs(5)).await;
}
