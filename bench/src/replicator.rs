//! The two replicators under test, started the same way on the same kind of directory: a watch
//! directory of `<uuid>.db` files replicated to a local file replica.
//!
//! | | ours | Litestream 0.5.17 |
//! |---|---|---|
//! | start | `litestream-manager -watch-dir W -replica-dir R -state-dir S -port P` | `litestream replicate -config C` with `dbs: [{dir: W, pattern: "*.db", watch: true, replica: {type: file, path: R}}]` |
//! | tenant replica | `R/databases/<uuid>/ltx/<level>/` | `R/<uuid>.db/ltx/<level>/` |
//! | "backed up" | `/api/status`: every client has `replicatedTxid` | every tenant has a file in `ltx/0/` |
//!
//! With [`Target::S3`] (scenario `s3-requests`) both replicate to `s3://B/databases/<uuid>` on an
//! S3-compatible endpoint instead: ours with `-bucket B -endpoint E -region R`, Litestream with a
//! `dbs:` list of every `<uuid>.db` in W at start, each with an `s3` replica (bucket, path
//! `databases/<uuid>`, endpoint, region, `force-path-style: true`).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{self, ChildGuard};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ours,
    Litestream,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ours => "litestream-manager",
            Kind::Litestream => "Litestream 0.5.17",
        }
    }
}

/// Paths of the two binaries.
#[derive(Clone, Debug)]
pub struct Bins {
    /// The copy we run.
    pub manager: PathBuf,
    /// Where the copy came from (reported).
    pub manager_source: PathBuf,
    pub litestream: PathBuf,
}

/// One run's directories, all under a fresh temp dir.
pub struct RunDirs {
    pub root: PathBuf,
    pub watch: PathBuf,
    pub replica: PathBuf,
    pub state: PathBuf,
}

impl RunDirs {
    pub fn create(root: &Path) -> Result<RunDirs> {
        let d = RunDirs {
            root: root.to_path_buf(),
            watch: root.join("clients"),
            replica: root.join("replica"),
            state: root.join("state"),
        };
        for p in [&d.watch, &d.replica, &d.state] {
            fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        Ok(d)
    }
}

pub struct Replicator {
    pub kind: Kind,
    pub child: ChildGuard,
    pub port: Option<u16>,
    pub replica: PathBuf,
}

/// Where the replicas go.
#[derive(Clone, Debug)]
pub enum Target {
    /// `RunDirs::replica` on the local disk.
    File,
    /// A bucket on an S3-compatible endpoint (path-style, static keys).
    S3 {
        bucket: String,
        endpoint: String,
        region: String,
        access_key: String,
        secret_key: String,
    },
}

impl Replicator {
    /// Starts the replicator on `dirs`. For ours, waits until its HTTP server answers.
    pub fn start(kind: Kind, bins: &Bins, dirs: &RunDirs) -> Result<Replicator> {
        Self::start_to(kind, bins, dirs, &Target::File)
    }

    /// [`Replicator::start`] with the replicas in `target`. For Litestream and S3, the tenants
    /// are the `*.db` files in the watch directory when it starts.
    pub fn start_to(
        kind: Kind,
        bins: &Bins,
        dirs: &RunDirs,
        target: &Target,
    ) -> Result<Replicator> {
        let log = dirs.root.join(match kind {
            Kind::Ours => "litestream-manager.log",
            Kind::Litestream => "litestream.log",
        });
        match kind {
            Kind::Ours => {
                let port = procs::free_port()?;
                let mut cmd = Command::new(&bins.manager);
                cmd.arg("-watch-dir").arg(&dirs.watch);
                match target {
                    Target::File => {
                        cmd.arg("-replica-dir").arg(&dirs.replica);
                    }
                    Target::S3 {
                        bucket,
                        endpoint,
                        region,
                        access_key,
                        secret_key,
                    } => {
                        cmd.args(["-bucket", bucket, "-endpoint", endpoint, "-region", region])
                            .env("AWS_ACCESS_KEY_ID", access_key)
                            .env("AWS_SECRET_ACCESS_KEY", secret_key);
                    }
                }
                cmd.arg("-state-dir")
                    .arg(&dirs.state)
                    .arg("-port")
                    .arg(port.to_string())
                    .current_dir(&dirs.root);
                let child = ChildGuard::spawn(cmd, kind.label(), &log)?;
                let mut r = Replicator {
                    kind,
                    child,
                    port: Some(port),
                    replica: dirs.replica.clone(),
                };
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    r.child.ensure_alive()?;
                    if let Ok((200, _)) = procs::http_get(port, "/healthz", Duration::from_secs(2))
                    {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "litestream-manager did not answer /healthz within 30 s; log:\n{}",
                            procs::tail(&log, 15)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(r)
            }
            Kind::Litestream => {
                let cfg = dirs.root.join("litestream.yml");
                let mut cmd = Command::new(&bins.litestream);
                let yaml = match target {
                    Target::File => format!(
                        "dbs:\n  - dir: {}\n    pattern: \"*.db\"\n    watch: true\n    replica:\n      type: file\n      path: {}\n",
                        dirs.watch.display(),
                        dirs.replica.display()
                    ),
                    Target::S3 {
                        bucket,
                        endpoint,
                        region,
                        access_key,
                        secret_key,
                    } => {
                        cmd.env("AWS_ACCESS_KEY_ID", access_key)
                            .env("AWS_SECRET_ACCESS_KEY", secret_key);
                        let mut dbs: Vec<PathBuf> = fs::read_dir(&dirs.watch)?
                            .flatten()
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|x| x == "db"))
                            .collect();
                        dbs.sort();
                        let mut y = String::from("dbs:\n");
                        for db in &dbs {
                            let id = db.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                            y.push_str(&format!(
                                "  - path: {}\n    replica:\n      type: s3\n      bucket: {bucket}\n      path: databases/{id}\n      endpoint: {endpoint}\n      region: {region}\n      force-path-style: true\n",
                                db.display()
                            ));
                        }
                        y
                    }
                };
                fs::write(&cfg, yaml)?;
                cmd.arg("replicate")
                    .arg("-config")
                    .arg(&cfg)
                    .current_dir(&dirs.root)
                    // Litestream 0.5.17 refuses every S3 replica while it is set (`unable to add custom RootCAs`).
                    .env_remove("AWS_CA_BUNDLE");
                let child = ChildGuard::spawn(cmd, kind.label(), &log)?;
                Ok(Replicator {
                    kind,
                    child,
                    port: None,
                    replica: dirs.replica.clone(),
                })
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The replica directory of one tenant (what `restore` takes).
    pub fn tenant_replica(&self, uuid: &str) -> PathBuf {
        match self.kind {
            Kind::Ours => self.replica.join("databases").join(uuid),
            Kind::Litestream => self.replica.join(format!("{uuid}.db")),
        }
    }

    pub fn tenant_l0(&self, uuid: &str) -> PathBuf {
        self.tenant_replica(uuid).join("ltx").join("0")
    }

    /// Waits until every tenant is backed up (see the module table); returns the time since the
    /// process started. With a deadline: on timeout, reports how many were done.
    pub fn wait_backed_up(&mut self, tenants: &[String], timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        let mut remaining: HashSet<&str> = tenants.iter().map(|s| s.as_str()).collect();
        let mut last_report = Instant::now();
        loop {
            self.child.ensure_alive()?;
            match self.kind {
                Kind::Ours => {
                    let port = self.port.expect("ours has a port");
                    match procs::http_get(port, "/api/status", Duration::from_secs(10)) {
                        Ok((200, body)) => {
                            let v: serde_json::Value =
                                serde_json::from_slice(&body).context("/api/status is not JSON")?;
                            let clients = v["clients"].as_array().cloned().unwrap_or_default();
                            for c in &clients {
                                if !c["replicatedTxid"].is_null() {
                                    if let Some(id) = c["clientId"].as_str() {
                                        remaining.remove(id);
                                    }
                                }
                            }
                        }
                        Ok((code, _)) => eprintln!("  /api/status answered {code}"),
                        Err(e) => eprintln!("  /api/status: {e:#}"),
                    }
                }
                Kind::Litestream => {
                    remaining.retain(|t| !has_ltx(&self.tenant_l0(t)));
                }
            }
            if remaining.is_empty() {
                return Ok(self.child.started.elapsed());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: only {} of {} tenants backed up after {:.0?}",
                    self.kind.label(),
                    tenants.len() - remaining.len(),
                    tenants.len(),
                    self.child.started.elapsed()
                );
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "  {}: {}/{} backed up after {:.0?}",
                    self.kind.label(),
                    tenants.len() - remaining.len(),
                    tenants.len(),
                    self.child.started.elapsed()
                );
                last_report = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(if tenants.len() > 1000 {
                1000
            } else {
                250
            }));
        }
    }

    /// Counts, for the record, the tenants whose replica holds at least one L0 file.
    pub fn count_with_l0(&self, tenants: &[String]) -> usize {
        tenants
            .iter()
            .filter(|t| has_ltx(&self.tenant_l0(t)))
            .count()
    }

    pub fn stop(&mut self) -> String {
        self.child.stop(Duration::from_secs(15))
    }
}

/// True if `dir` holds at least one complete LTX file (by name; temp files are ignored).
pub fn has_ltx(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(engine::ltx::LtxFileName::parse)
                    .is_some()
            })
        })
        .unwrap_or(false)
}

/// Number of LTX files per level in a tenant replica, e.g. "L0 12, L1 2, L9 1".
pub fn describe_replica(dir: &Path) -> String {
    let mut parts = Vec::new();
    let mut total_bytes = 0u64;
    for level in 0..=9 {
        let d = dir.join("ltx").join(level.to_string());
        let Ok(rd) = fs::read_dir(&d) else { continue };
        let mut n = 0;
        for e in rd.flatten() {
            if e.file_name()
                .to_str()
                .and_then(engine::ltx::LtxFileName::parse)
                .is_some()
            {
                n += 1;
                total_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        if n > 0 {
            parts.push(format!("L{level}: {n}"));
        }
    }
    format!(
        "{} ({:.1} MiB)",
        parts.join(", "),
        total_bytes as f64 / (1024.0 * 1024.0)
    )
}
