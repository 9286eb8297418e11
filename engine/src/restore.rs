//! Restore: rebuild a database file from a replica, at the latest state or at a point in time.
//!
//! The plan is Litestream's: the latest snapshot (L9) at or before the target, then repeatedly the
//! file (any level) that is contiguous with what we have and reaches furthest. Every file's
//! checksum is verified; the output is written to `<out>.tmp`, checked with
//! `PRAGMA integrity_check`, fsynced and renamed, so a failed restore never leaves a wrong
//! database at the output path.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, LtxInfo, Replica, SNAPSHOT_LEVEL};
use crate::ltx::{self, Txid};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("no backup files found in {0} (no LTX files under ltx/0..9)")]
    NoBackups(String),
    #[error("no snapshot to start from in {0}: the replica has no file starting at TXID 1 (missing snapshot)")]
    NoSnapshot(String),
    #[error("the replica's TXID chain has a gap: it reaches {have} but the next file starts at {next} ({file})")]
    Gap {
        have: Txid,
        next: Txid,
        file: String,
    },
    #[error(
        "no backup at or before the requested point in time: the earliest file is from {earliest}"
    )]
    TargetTooEarly { earliest: String },
    #[error("{file}: {source}")]
    Corrupt {
        file: String,
        #[source]
        source: ltx::LtxError,
    },
    #[error("{file}: page size {got} differs from the snapshot's {want}")]
    PageSize { file: String, got: u32, want: u32 },
    #[error("output {0} exists and is not empty; use -force to overwrite it")]
    OutputExists(PathBuf),
    #[error("{file}: its header says TXIDs {min}-{max}, which does not match its name")]
    NameMismatch { file: String, min: Txid, max: Txid },
    #[error("restored database failed integrity_check: {0}")]
    Integrity(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to restore to. Both bounds are inclusive of files *created strictly before* the
/// timestamp, as Litestream does.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub txid: Option<Txid>,
    pub timestamp: Option<SystemTime>,
}

impl Target {
    fn admits(&self, f: &LtxInfo) -> bool {
        self.txid.is_none_or(|t| f.max <= t) && self.timestamp.is_none_or(|ts| f.created_at < ts)
    }
}

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub target: Target,
    pub force: bool,
    pub integrity_check: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            target: Target::default(),
            force: false,
            integrity_check: true,
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub plan: Vec<LtxInfo>,
    pub txid: Txid,
    pub page_size: u32,
    pub pages: u32,
    pub bytes: u64,
}

/// Computes the restore plan from a listing of all levels.
pub fn plan(
    files: &[LtxInfo],
    target: &Target,
    location: &str,
) -> Result<Vec<LtxInfo>, RestoreError> {
    if files.is_empty() {
        return Err(RestoreError::NoBackups(location.to_string()));
    }
    let mut plan: Vec<LtxInfo> = Vec::new();
    let snapshot = files
        .iter()
        .filter(|f| f.level == SNAPSHOT_LEVEL && f.min == Txid(1) && target.admits(f))
        .max_by_key(|f| (f.max, f.created_at));
    let mut have = Txid(0);
    if let Some(s) = snapshot {
        have = s.max;
        plan.push(s.clone());
    }
    loop {
        // Among files contiguous with `have`, take the one reaching furthest; ties: smaller min,
        // then higher level.
        let next = files
            .iter()
            .filter(|f| f.level != SNAPSHOT_LEVEL && target.admits(f))
            .filter(|f| f.min.0 <= have.0 + 1 && f.max > have)
            .max_by(|a, b| {
                a.max
                    .cmp(&b.max)
                    .then(b.min.cmp(&a.min))
                    .then(a.level.cmp(&b.level))
            });
        match next {
            Some(f) => {
                have = f.max;
                plan.push(f.clone());
            }
            None => break,
        }
    }
    if plan.is_empty() {
        if let Some(earliest) = files.iter().map(|f| f.created_at).min() {
            if target.timestamp.is_some_and(|ts| ts <= earliest) {
                return Err(RestoreError::TargetTooEarly {
                    earliest: fmt_time(earliest),
                });
            }
        }
        return Err(RestoreError::NoSnapshot(location.to_string()));
    }
    // Without a target, the chain must reach the newest file: anything beyond a gap is lost data
    // the user must know about.
    if target.txid.is_none() && target.timestamp.is_none() {
        if let Some(after) = files.iter().filter(|f| f.max > have).min_by_key(|f| f.min) {
            return Err(RestoreError::Gap {
                have,
                next: after.min,
                file: format!("level {} {}", after.level, after.name()),
            });
        }
    }
    Ok(plan)
}

/// Restores the replica into `out`.
pub async fn restore(
    replica: &Replica,
    out: &Path,
    opts: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<RestoreReport, RestoreError> {
    check_output(out, opts.force)?;
    // Point in time needs each file's exact creation time (S3: the litestream-timestamp metadata,
    // one HEAD per file); a plain restore does with one listing.
    let files = if opts.target.timestamp.is_some() {
        replica.list_with_timestamps(cancel).await?
    } else {
        replica.list_all(cancel).await?
    };
    let plan = plan(&files, &opts.target, &replica.url())?;
    let tmp = sibling(out, ".tmp");
    let result = apply(replica, &plan, &tmp, cancel).await;
    let _ = fs::remove_dir(sibling(&tmp, ".download"));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if opts.integrity_check {
        let tmp2 = tmp.clone();
        let checked = tokio::task::spawn_blocking(move || integrity_check(&tmp2))
            .await
            .map_err(|e| RestoreError::Integrity(e.to_string()))?;
        if let Err(e) = checked {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    }
    fs::rename(&tmp, out).map_err(|e| io(out, e))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))?;
    }
    Ok(report)
}

async fn apply(
    replica: &Replica,
    plan: &[LtxInfo],
    tmp: &Path,
    cancel: &CancellationToken,
) -> Result<RestoreReport, RestoreError> {
    let out = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| io(tmp, e))?;
    let mut page_size = 0u32;
    let mut commit = 0u32;
    let mut txid = Txid(0);
    let mut bytes = 0u64;
    // Files are streamed from disk (fs: the replica's own files; S3: one download at a time
    // next to the output), so memory does not grow with the database.
    let scratch = sibling(tmp, ".download");
    for info in plan {
        let local = replica.fetch_local(info, &scratch, cancel).await?;
        let input = local.open()?;
        bytes += input.metadata().map(|m| m.len()).unwrap_or(0);
        let file = format!("level {} {}", info.level, info.name());
        let corrupt = |source| RestoreError::Corrupt {
            file: file.clone(),
            source,
        };
        let mut dec = ltx::Decoder::new(std::io::BufReader::with_capacity(256 * 1024, input))
            .map_err(corrupt)?;
        let hdr = dec.header().clone();
        if page_size == 0 {
            page_size = hdr.page_size;
        } else if hdr.page_size != page_size {
            return Err(RestoreError::PageSize {
                file,
                got: hdr.page_size,
                want: page_size,
            });
        }
        if (hdr.min_txid, hdr.max_txid) != (info.min, info.max) {
            return Err(RestoreError::NameMismatch {
                file,
                min: hdr.min_txid,
                max: hdr.max_txid,
            });
        }
        let mut buf = Vec::new();
        while let Some(pgno) = dec.next_page(&mut buf).map_err(corrupt)? {
            let off = (pgno as u64 - 1) * page_size as u64;
            out.write_all_at(&buf, off).map_err(|e| io(tmp, e))?;
        }
        dec.finish().map_err(corrupt)?;
        drop(local);
        commit = hdr.commit;
        txid = hdr.max_txid;
    }
    out.set_len(commit as u64 * page_size as u64)
        .map_err(|e| io(tmp, e))?;
    out.sync_all().map_err(|e| io(tmp, e))?;
    Ok(RestoreReport {
        plan: plan.to_vec(),
        txid,
        page_size,
        pages: commit,
        bytes,
    })
}

fn check_output(out: &Path, force: bool) -> Result<(), RestoreError> {
    if force {
        for suffix in ["-wal", "-shm", "-journal"] {
            let _ = fs::remove_file(sibling(out, suffix));
        }
        return Ok(());
    }
    let non_empty = |p: &Path| fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false);
    if non_empty(out) {
        return Err(RestoreError::OutputExists(out.to_path_buf()));
    }
    // A leftover WAL would be applied to the restored file by the next SQLite open: name it.
    let sidecars = ["-wal", "-shm", "-journal"].map(|s| sibling(out, s));
    if let Some(side) = sidecars.into_iter().find(|p| p.exists()) {
        return Err(RestoreError::OutputExists(side));
    }
    Ok(())
}

fn integrity_check(path: &Path) -> Result<(), RestoreError> {
    let result = (|| -> rusqlite::Result<String> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let rows: Vec<String> = conn
            .prepare("PRAGMA integrity_check")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows.join("; "))
    })();
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(sibling(path, suffix));
    }
    match result {
        Ok(s) if s == "ok" => Ok(()),
        Ok(s) => Err(RestoreError::Integrity(s)),
        Err(e) => Err(RestoreError::Integrity(e.to_string())),
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn io(path: &Path, source: std::io::Error) -> RestoreError {
    RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn fmt_time(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}
