//! A tenant's maintenance: the compactions, snapshots and deletions [`crate::compact::plan`]
//! says are due, run against its replica while uploads go on.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::{RemoteState, StepError};
use crate::client::{ClientError, LocalLtx, LtxInfo, Replica, SNAPSHOT_LEVEL};
use crate::compact::{self, CompactionConfig, Job};
use crate::db::{Staging, SyncError};
use crate::ltx::{LtxFileName, Txid};

/// Runs the compactions, snapshots and deletions due now; returns when to run again.
///
/// The tenant's replica index is locked only to plan and to record results, never across
/// I/O: uploads of new L0 files go on while a large compaction runs. Jobs only ever touch
/// files that existed when they were planned, and new uploads only add files above them, so
/// the two never conflict. The one exception, a hot tenant's upload writing an L1 (see
/// [`crate::compact::Index::fold_l1`]), waits while a planned L1 compaction is in flight.
/// `scratch` holds downloads and merge outputs (emptied first: what a crash left there is
/// garbage).
pub(crate) async fn maintain(
    id: &str,
    replica: &Replica,
    remote: &RemoteState,
    cfg: &CompactionConfig,
    uploads: &Semaphore,
    staging: &Staging,
    cancel: &CancellationToken,
) -> Result<Option<SystemTime>, StepError> {
    let scratch = &staging.dir().join("scratch");
    // A compaction or snapshot whose upload failed may have landed anyway (the answer was
    // lost): delete it before planning, or a retry over a wider range would leave two
    // overlapping files at one level. Idempotent; on failure, retried with the next run.
    let uncertain = match remote.lock().await.as_ref() {
        Some(index) => index.uncertain(),
        None => return Ok(None),
    };
    if !uncertain.is_empty() {
        replica.delete(&uncertain, cancel).await?;
        if let Some(index) = remote.lock().await.as_mut() {
            index.clear_uncertain(&uncertain);
        }
    }
    let (jobs, next) = {
        let mut guard = remote.lock().await;
        let Some(index) = guard.as_mut() else {
            return Ok(None);
        };
        let planned = compact::plan(index, cfg, SystemTime::now());
        // The hot task writes L1 files too (`Index::fold_l1`): not while this one is pending.
        index.l1_in_flight = planned
            .0
            .iter()
            .any(|j| matches!(j, Job::Compact { level: 1, .. }));
        planned
    };
    if !jobs.is_empty() {
        remove_scratch(scratch).await?;
    }
    for job in jobs {
        let _permit = upload_permit(uploads).await?;
        match job {
            Job::Compact { level, inputs } => {
                let result =
                    merge_and_write(replica, &inputs, level, false, staging, scratch, cancel).await;
                if let Some(index) = remote.lock().await.as_mut() {
                    if level == 1 {
                        index.l1_in_flight = false;
                    }
                    match &result {
                        Ok(info) => {
                            index.insert(info.clone());
                            index.mark_compacted(level, SystemTime::now());
                        }
                        Err(_) => index.mark_uncertain(intended(level, &inputs, false)),
                    }
                }
                let covered = result?.max;
                tracing::debug!(client = %id, level, max = %covered, "compacted");
                if level == 1 {
                    remove_staged_through(staging, covered).await?;
                }
            }
            Job::Snapshot { inputs } => {
                let info = match merge_and_write(
                    replica,
                    &inputs,
                    SNAPSHOT_LEVEL,
                    true,
                    staging,
                    scratch,
                    cancel,
                )
                .await
                {
                    Ok(info) => info,
                    Err(e) => {
                        mark_uncertain(remote, SNAPSHOT_LEVEL, &inputs, true).await;
                        return Err(e);
                    }
                };
                tracing::debug!(client = %id, max = %info.max, "snapshot written");
                if let Some(index) = remote.lock().await.as_mut() {
                    index.insert(info);
                }
            }
            Job::Delete(files) => {
                replica.delete(&files, cancel).await?;
                if let Some(index) = remote.lock().await.as_mut() {
                    for f in &files {
                        index.remove(f);
                    }
                }
            }
        }
    }
    // Whatever the jobs produced may make more work due (e.g. retention after a snapshot).
    let guard = remote.lock().await;
    let Some(index) = guard.as_ref() else {
        return Ok(None);
    };
    let (more, later) = compact::plan(index, cfg, SystemTime::now());
    let again = if more.is_empty() {
        next.into_iter().chain(later).min()
    } else {
        Some(SystemTime::now())
    };
    Ok(again)
}

/// Removes a scratch directory and what a crash left in it, if anything.
pub(super) async fn remove_scratch(dir: &Path) -> Result<(), StepError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ClientError::io(dir, e).into()),
    }
}

/// One of the replica operations allowed in flight (`-max-uploads`), for every tenant together.
pub(super) async fn upload_permit(uploads: &Semaphore) -> Result<SemaphorePermit<'_>, StepError> {
    uploads
        .acquire()
        .await
        .map_err(|e| StepError::Join(e.to_string()))
}

/// Records the file a failed merge-and-write meant to create as uncertain (see
/// [`crate::compact::Index::mark_uncertain`]).
async fn mark_uncertain(remote: &RemoteState, level: u8, inputs: &[LtxInfo], snapshot: bool) {
    if let Some(index) = remote.lock().await.as_mut() {
        index.mark_uncertain(intended(level, inputs, snapshot));
    }
}

/// The file a merge of `inputs` (non-empty, in TXID order) into `level` writes: a snapshot
/// starts at TXID 1.
pub(super) fn intended(level: u8, inputs: &[LtxInfo], snapshot: bool) -> LtxInfo {
    let (min, max) = match (inputs.first(), inputs.last()) {
        (Some(first), Some(last)) => (first.min, last.max),
        _ => (Txid(0), Txid(0)),
    };
    LtxInfo {
        level,
        min: if snapshot { Txid(1) } else { min },
        max,
        size: 0,
        created_at: SystemTime::UNIX_EPOCH,
    }
}

/// Merges `inputs` into one file of `level` and stores it. Streams from disk to disk: the
/// inputs are read from staging, the replica's files (fs) or downloads in `scratch` (S3), the
/// output is written to `scratch` and uploaded from there, so memory stays at a few buffers
/// whatever the sizes.
pub(super) async fn merge_and_write(
    replica: &Replica,
    inputs: &[LtxInfo],
    level: u8,
    snapshot: bool,
    staging: &Staging,
    scratch: &Path,
    cancel: &CancellationToken,
) -> Result<LtxInfo, StepError> {
    let mut locals = Vec::with_capacity(inputs.len());
    for f in inputs {
        // An L0 file still staged locally is the very file that was uploaded: no download.
        let staged = staging.path_of(f.min);
        if f.level == 0 && f.min == f.max && staged.exists() {
            locals.push(LocalLtx::existing(staged));
        } else {
            locals.push(replica.fetch_local(f, scratch, cancel).await?);
        }
    }
    let (first, last) = (inputs.first(), inputs.last());
    let out = LocalLtx::temporary(scratch.join(format!(
        "{level:04x}-{}-{}.merge",
        first.map(|f| f.min).unwrap_or_default(),
        last.map(|f| f.max).unwrap_or_default()
    )));
    let out_path = out.path.clone();
    let header = tokio::task::spawn_blocking(move || -> Result<_, StepError> {
        let mut readers: Vec<Box<dyn std::io::Read + Send>> = Vec::with_capacity(locals.len());
        for l in &locals {
            readers.push(Box::new(std::io::BufReader::with_capacity(
                IO_BUFFER,
                l.open()?,
            )));
        }
        std::fs::create_dir_all(scratch_of(&out_path))
            .map_err(|e| ClientError::io(&out_path, e))?;
        let file = std::fs::File::create(&out_path).map_err(|e| ClientError::io(&out_path, e))?;
        let writer = std::io::BufWriter::with_capacity(IO_BUFFER, file);
        let (writer, header) = compact::merge(readers, writer, snapshot).map_err(SyncError::Ltx)?;
        writer
            .into_inner()
            .map_err(|e| ClientError::io(&out_path, e.into_error()))?;
        Ok(header)
    })
    .await
    .map_err(|e| StepError::Join(e.to_string()))??;
    let ts = SystemTime::UNIX_EPOCH + Duration::from_millis(header.timestamp_ms.max(0) as u64);
    let name = LtxFileName {
        min: header.min_txid,
        max: header.max_txid,
    };
    Ok(replica
        .write_file(level, name, &out.path, ts, cancel)
        .await?)
}

/// Removes staged L0 files up to `txid`, except the newest staged file (the chain's anchor).
async fn remove_staged_through(staging: &Staging, txid: Txid) -> Result<(), StepError> {
    let staging = staging.clone();
    tokio::task::spawn_blocking(move || -> Result<(), SyncError> {
        let list = staging.list()?;
        if let Some((_, older)) = list.split_last() {
            for t in older.iter().filter(|t| **t <= txid) {
                staging.remove(*t)?;
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| StepError::Join(e.to_string()))??;
    Ok(())
}

/// Buffer size of streamed LTX reads and writes.
const IO_BUFFER: usize = 256 * 1024;

fn scratch_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}
