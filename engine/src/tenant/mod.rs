//! One tenant's lifecycle: hot while its WAL changes, cold (no task, no file, no connection, no
//! timer) while it does not.
//!
//! A hot tenant runs one task: sync (stage an L0 locally) → upload staged files in TXID order →
//! checkpoint when due → wait for the next change, a batching window long. After
//! `idle_timeout` without change it seals the WAL (see [`crate::db`]) and goes cold; the store
//! wakes it again when the directory watch reports a write to its `-wal` or db file.
//!
//! Invariant: `replicated <= staged`; staged files are uploaded strictly in TXID order and
//! removed locally only once the replica holds them (the newest one is kept: it anchors the chain
//! after a restart).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, LtxInfo, Replica};
use crate::compact::{CompactionConfig, Index};
use crate::db::{Db, DbConfig, Position, Proof, Staging, SyncError};
use crate::ltx::{LtxFileName, Txid};

mod maintenance;
pub(crate) use maintenance::maintain;
use maintenance::{intended, merge_and_write, remove_scratch, upload_permit};

/// After a quiet spell, wait this long after a change before syncing, so that the commits that
/// follow become one L0 (one S3 PUT); and start two syncs of one tenant at least
/// [`SYNC_SPACING`] windows apart. The default, 800 ms, spaces syncs 1 s apart: never more L0
/// files (S3 PUTs) than Litestream's 1 s monitor interval. A change reaches the replica within
/// 0.8 s plus the upload after a quiet spell, and within 1 s of the previous sync while busy.
pub const DEFAULT_SYNC_WINDOW: Duration = Duration::from_millis(800);
/// Least time between the starts of two syncs of one tenant, in sync windows.
pub const SYNC_SPACING: f64 = 1.25;
/// A tenant without changes for this long seals its WAL and goes cold.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound of local staging per tenant while the replica is unreachable.
pub const DEFAULT_MAX_STAGED_BYTES: u64 = 1 << 30;
/// Above this many hot tenants, an idle tenant goes cold after one batching window instead of
/// `idle_timeout`: each hot tenant holds two SQLite connections (about 6 file descriptors).
pub const HOT_SOFT_LIMIT: usize = 512;
/// The application may hold its write lock this long (one long transaction, or several in a
/// row) before the tenant shows an error; until then each attempt is retried quietly.
const BUSY_GRACE: Duration = Duration::from_secs(60);
const BUSY_RETRY: Duration = Duration::from_millis(250);
/// Retry failed syncs/uploads with exponential backoff up to this: an outage's end is noticed
/// within 15 s (the S3 client's own retries and retry quota keep a dead store from a storm).
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct TenantConfig {
    pub db: DbConfig,
    /// Most bytes of staged, not yet uploaded L0 files per tenant (see `step`).
    pub max_staged_bytes: u64,
    pub compaction: CompactionConfig,
    pub sync_window: Duration,
    pub idle_timeout: Duration,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            db: DbConfig::default(),
            max_staged_bytes: DEFAULT_MAX_STAGED_BYTES,
            compaction: CompactionConfig::default(),
            sync_window: DEFAULT_SYNC_WINDOW,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Snapshotting,
    Replicating,
    Idle,
    Error,
    Removed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Snapshotting => "snapshotting",
            State::Replicating => "replicating",
            State::Idle => "idle",
            State::Error => "error",
            State::Removed => "removed",
        }
    }
}

/// What the dashboard and the API show for one tenant.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TenantStatus {
    pub id: String,
    pub db_path: PathBuf,
    pub replica_url: String,
    pub state: State,
    pub created_at: SystemTime,
    pub local_txid: u64,
    pub replicated_txid: u64,
    pub last_sync: Option<SystemTime>,
    /// Commit time of the oldest change not yet in the replica (None: nothing pending).
    pub pending_since: Option<SystemTime>,
    pub bytes_uploaded: u64,
    pub objects_uploaded: u64,
    pub last_error: Option<String>,
}

impl TenantStatus {
    pub fn lag(&self) -> Duration {
        self.pending_since
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default()
    }
}

/// Everything a tenant keeps between hot periods: a few hundred bytes.
pub(crate) struct Cold {
    pub pos: Option<Position>,
    pub proof: Proof,
}

/// What the engine knows of a tenant's replica; shared by its hot task and its maintenance jobs,
/// whose steps it serializes. `None` until the replica was listed once in this process.
pub(crate) type RemoteState = Arc<tokio::sync::Mutex<Option<Index>>>;

/// Shared parts handed to every tenant task.
#[derive(Clone)]
pub struct Shared {
    pub config: TenantConfig,
    /// Number of hot tenants (with a task and open connections).
    pub hot: Arc<AtomicUsize>,
    /// Caps concurrent replica operations across all tenants.
    pub uploads: Arc<Semaphore>,
    /// Caps concurrently open (hot) databases during start-up storms.
    pub opens: Arc<Semaphore>,
}

pub(crate) struct TenantCtx {
    pub id: String,
    pub db_path: PathBuf,
    pub staging: Staging,
    pub replica: Replica,
    pub wake: Arc<Notify>,
    pub cancel: CancellationToken,
    pub shared: Shared,
    pub status: crate::store::StatusHandle,
    pub remote: RemoteState,
    /// Asks the store to run maintenance (compaction, snapshots, retention) for this tenant.
    pub maintain: Arc<dyn Fn() + Send + Sync>,
}

/// Runs one hot period of a tenant; returns its cold state.
pub(crate) async fn run_hot(ctx: &TenantCtx, cold: Cold) -> Cold {
    let cold = hot_period(ctx, cold).await;
    // Level 1 is maintenance's again (the uploads wrote it while hot: see `upload`); one that
    // fell due meanwhile runs now.
    let l1_left = match ctx.remote.lock().await.as_mut() {
        Some(index) => std::mem::replace(&mut index.hot, false) && index.l1_pending(),
        None => false,
    };
    if l1_left {
        (ctx.maintain)();
    }
    cold
}

async fn hot_period(ctx: &TenantCtx, mut cold: Cold) -> Cold {
    let cfg = &ctx.shared.config;
    let mut backoff = Duration::from_millis(500);
    let mut db: Option<Db> = None;
    let mut last_checkpoint = Instant::now();
    let mut synced_since_checkpoint = false;
    let mut shutdown = false;
    let _hot = HotGuard::new(&ctx.shared.hot);
    // Know the replica (and any seal on disk) before deciding whether to open the database; a
    // failure here is retried by the loop below.
    //
    // Thousands of tenants start at once: each waits for an open slot here, in this small
    // future, before its first listing and open (the step's state machine is tens of KiB).
    let mut slot: Option<OwnedSemaphorePermit> = None;
    let fresh = cold.pos.is_none();
    if ctx.remote.lock().await.is_none() {
        slot = open_slot(ctx).await;
        let _ = Box::pin(reconcile(ctx, &mut cold)).await;
    }
    // A wake that finds nothing new for a sealed tenant (the app only read, or a restart) closes
    // again at once, keeping the seal: no new TRUNCATE, no 30 s of open files.
    let sealed_before = matches!(cold.proof, Proof::Truncated { .. }).then(|| cold.proof.clone());
    // Cheaper still: a sealed tenant whose db file is untouched and whose WAL is empty has
    // nothing to ship (typically the event of our own seal's checkpoint): not even an open.
    if let Proof::Truncated { db_fingerprint } = &cold.proof {
        let wal_len = std::fs::metadata(crate::db::wal_path(&ctx.db_path))
            .map(|m| m.len())
            .unwrap_or(0);
        let same = crate::db::fingerprint(&ctx.db_path).is_ok_and(|f| f == *db_fingerprint);
        if same && wal_len == 0 && !ctx.cancel.is_cancelled() {
            tracing::debug!(client = %ctx.id, "woken, but sealed and untouched: stays cold");
            ctx.status.update(|s| {
                if s.state != State::Error {
                    s.state = State::Idle;
                }
            });
            return cold;
        }
    }
    let mut first = true;
    let mut busy_since: Option<Instant> = None;
    let mut step_started: Instant;
    loop {
        if db.is_none() && slot.is_none() {
            slot = open_slot(ctx).await;
        }
        // The step's state lives on the heap only while it runs.
        step_started = Instant::now();
        let result = Box::pin(step(
            ctx,
            &mut cold,
            &mut db,
            &mut slot,
            &mut last_checkpoint,
            &mut synced_since_checkpoint,
        ))
        .await;
        let was_first = std::mem::replace(&mut first, false);
        tracing::trace!(client = %ctx.id, ?result, txid = ?cold.pos.as_ref().map(|p| p.txid), proof = ?cold.proof, "step");
        match result {
            Ok(0) if was_first && !shutdown && sealed_before.is_some() => {
                drop(db.take());
                if let Some(p) = sealed_before {
                    cold.proof = p;
                }
                ctx.status.update(|s| {
                    s.last_error = None;
                    s.state = State::Idle;
                });
                return cold;
            }
            Ok(_) => {
                busy_since = None;
                if backoff > Duration::from_millis(500) {
                    tracing::info!(client = %ctx.id, "replication recovered");
                }
                backoff = Duration::from_millis(500);
                ctx.status.update(|s| {
                    s.last_error = None;
                    if s.state != State::Removed {
                        s.state = State::Replicating;
                    }
                });
            }
            Err(StepError::Sync(SyncError::Busy(_)))
                if busy_since.get_or_insert_with(Instant::now).elapsed() < BUSY_GRACE =>
            {
                // The application holds the write lock (a long transaction): not a failure.
                // Keep the connections and what we know about the WAL (dropping them would
                // cost a full snapshot) and try again shortly.
                tracing::debug!(client = %ctx.id, "database busy; retrying");
                slot = None;
                tokio::select! {
                    _ = tokio::time::sleep(cfg.sync_window.max(BUSY_RETRY)) => {}
                    _ = ctx.cancel.cancelled() => return cold,
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(client = %ctx.id, error = %e, "replication step failed; retrying in {:?}", backoff);
                slot = None;
                let msg = e.to_string();
                ctx.status.update(|s| {
                    s.state = State::Error;
                    s.last_error = Some(msg.clone());
                });
                if let StepError::Sync(SyncError::NotSqlite(_)) = e {
                    // Not a database: nothing will change that except a new file, which the
                    // watcher reports as a new registration.
                    drop(db.take());
                    return cold;
                }
                // A database error drops the connections (without our read mark the next attempt
                // re-verifies the WAL); a replica error leaves them: the database is fine.
                if !matches!(e, StepError::Client(_))
                    && db.take().is_some()
                    && cold.proof == Proof::ReadLock
                {
                    cold.proof = Proof::None;
                }
                if let StepError::Sync(SyncError::Replaced(_)) = e {
                    // Another file now: reopen at once (a full-page L0 follows).
                    continue;
                }
                // ±20 % jitter: tenants that failed together (a replica outage) do not all
                // retry in the same instant.
                let jitter = rand::random_range(0.8..1.2);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                    _ = ctx.cancel.cancelled() => return cold,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        if shutdown {
            return cold;
        }
        // Many tenants hot at once (a start with thousands of them): each one's hot period is
        // a single cycle — open, sync, seal, close — inside its open slot, so at most
        // `max_opening` databases are open and memory stays flat. A change arriving meanwhile
        // wakes it again.
        //
        // The same for a tenant's first hot period in this process (registration at start, or a
        // new file) when its first sync found the application quiet: no change was announced
        // while it ran, so waiting `idle_timeout` with open files would only cost memory.
        // (A change announced meanwhile is shipped by the seal, or by the next step below.)
        let woken = was_first && ctx.wake.notified().now_or_never().is_some();
        let quiet_start = fresh && was_first && !woken;
        if quiet_start || ctx.shared.hot.load(Ordering::Relaxed) > HOT_SOFT_LIMIT {
            if let Some(d) = db.take() {
                match Box::pin(go_cold(ctx, &mut cold, d)).await {
                    Ok(()) => {
                        ctx.status.update(|s| s.state = State::Idle);
                        return cold;
                    }
                    Err(e) => {
                        tracing::warn!(client = %ctx.id, error = %e, "could not seal WAL; staying hot");
                        cold.proof = Proof::None;
                    }
                }
            }
        }
        // Otherwise the open slot is only for opening: hot tenants keep their files open.
        slot = None;
        if woken {
            tokio::time::sleep(sync_delay(cfg.sync_window, step_started.elapsed())).await;
            continue;
        }
        let idle = cfg.idle_timeout;
        tokio::select! {
            _ = ctx.wake.notified() => {
                tokio::time::sleep(sync_delay(cfg.sync_window, step_started.elapsed())).await;
            }
            _ = tokio::time::sleep(idle) => {
                if let Some(d) = db.take() {
                    match Box::pin(go_cold(ctx, &mut cold, d)).await {
                        Ok(()) => {
                            ctx.status.update(|s| s.state = State::Idle);
                            return cold;
                        }
                        Err(e) => {
                            tracing::warn!(client = %ctx.id, error = %e, "could not seal WAL; staying hot");
                            cold.proof = Proof::None;
                        }
                    }
                }
            }
            _ = ctx.cancel.cancelled() => {
                // Final bounded sync, then stop.
                shutdown = true;
            }
        }
    }
}

/// How long a change seen now waits before its sync starts (`since_last`: since the last sync
/// started). While the tenant is busy (that sync started less than [`SYNC_SPACING`] windows
/// ago), until that spacing is over: the commits since it already make one file, and waiting a
/// whole window more would only add lag (a tenant committing twice a second would sync 1.3 s
/// after its last file's start, then on a 1 s grid shifted 0.3 s later than its commits). After
/// a quiet spell, one window, for the commits that follow the change.
fn sync_delay(window: Duration, since_last: Duration) -> Duration {
    let spacing = window.mul_f64(SYNC_SPACING);
    if since_last < spacing {
        spacing - since_last
    } else {
        window
    }
}

/// Counts a hot period in [`Shared::hot`].
struct HotGuard<'a>(&'a AtomicUsize);

impl<'a> HotGuard<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        HotGuard(n)
    }
}

impl Drop for HotGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("replica: {0}")]
    Client(#[from] crate::client::ClientError),
    #[error("internal: {0}")]
    Join(String),
    #[error("{0} bytes staged locally and not uploaded (the replica is unreachable): dropped them; a full snapshot follows when it is back")]
    StagingFull(u64),
}

/// One of the `max_opening` slots for listing or opening a database; `None` only if the store
/// is shutting down (the semaphore is never closed otherwise).
async fn open_slot(ctx: &TenantCtx) -> Option<OwnedSemaphorePermit> {
    ctx.shared.opens.clone().acquire_owned().await.ok()
}

/// `slot`: the caller's open slot (see [`open_slot`]); acquired here if the database must be
/// opened and the caller holds none. The caller decides when to release it.
async fn step(
    ctx: &TenantCtx,
    cold: &mut Cold,
    db: &mut Option<Db>,
    slot: &mut Option<OwnedSemaphorePermit>,
    last_checkpoint: &mut Instant,
    synced_since_checkpoint: &mut bool,
) -> Result<usize, StepError> {
    // 1. Know where the replica stands (once per process).
    if ctx.remote.lock().await.is_none() {
        reconcile(ctx, cold).await?;
    }
    // 2. Bounded staging: while the replica is unreachable, staged files pile up. Past the
    //    bound, drop what was not uploaded and continue later with one full-page L0 instead
    //    (the database itself still holds every change; the application is never blocked).
    let replicated = ctx
        .remote
        .lock()
        .await
        .as_ref()
        .map(|ix| ix.max_txid())
        .unwrap_or(0);
    let staging = ctx.staging.clone();
    let pending_bytes = tokio::task::spawn_blocking(move || staging.pending_bytes(replicated))
        .await
        .map_err(|e| StepError::Join(e.to_string()))??;
    if pending_bytes > ctx.shared.config.max_staged_bytes {
        let staging = ctx.staging.clone();
        tokio::task::spawn_blocking(move || staging.discard_after(replicated))
            .await
            .map_err(|e| StepError::Join(e.to_string()))??;
        drop(db.take());
        cold.pos = Some(Position {
            txid: replicated,
            ..Position::default()
        });
        cold.proof = Proof::None;
        return Err(StepError::StagingFull(pending_bytes));
    }
    // 3. Open and sync, in the blocking pool.
    let cfg = ctx.shared.config.clone();
    let path = ctx.db_path.clone();
    let staging = ctx.staging.clone();
    let mut pos = cold.pos.clone().unwrap_or_default();
    let mut proof = cold.proof.clone();
    let taken = db.take();
    let full_expected = pos.txid == 0 || proof == Proof::None;
    if full_expected && pos.txid == 0 {
        ctx.status.update(|s| s.state = State::Snapshotting);
    }
    if taken.is_none() && slot.is_none() {
        *slot = Some(
            ctx.shared
                .opens
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| StepError::Join(e.to_string()))?,
        );
    }
    let since = *last_checkpoint;
    let dirty = *synced_since_checkpoint;
    let (handle, res) = tokio::task::spawn_blocking(move || {
        let mut d = match taken {
            Some(d) => d,
            None => match Db::open(&path, cfg.db.clone()) {
                Ok(d) => d,
                Err(e) => return (None, Err(e)),
            },
        };
        let r = (|| {
            // Everything committed so far, one L0 per `max_sync_bytes` of WAL: a backlog
            // (a large transaction, a long busy spell) is shipped now, not at the next change.
            let mut staged = Vec::new();
            while let Some(s) = d.sync(&mut pos, &mut proof, &staging)? {
                staged.push(s);
                if pos.at_chain_end {
                    break;
                }
            }
            let wal_pages = d.wal_pages(pos.page_size.max(512));
            let due = wal_pages >= cfg.db.min_checkpoint_pages
                || ((dirty || !staged.is_empty())
                    && since.elapsed() >= cfg.db.checkpoint_interval
                    && wal_pages > 0);
            let mut checkpointed = false;
            let ckpt = if wal_pages >= cfg.db.truncate_pages {
                Some(d.checkpoint_truncate(&mut pos, &mut proof, &staging))
            } else if due {
                Some(d.checkpoint_passive(&mut pos, &mut proof, &staging))
            } else {
                None
            };
            match ckpt {
                Some(Ok(s)) => {
                    staged.extend(s);
                    checkpointed = true;
                }
                // The application holds the write lock: checkpoint at the next step; what this
                // one synced is staged and goes up now.
                Some(Err(SyncError::Busy(_))) => {}
                Some(Err(e)) => return Err(e),
                None => {}
            }
            Ok((staged, pos, proof, checkpointed))
        })();
        (Some(d), r)
    })
    .await
    .map_err(|e| StepError::Join(e.to_string()))?;
    *db = handle;
    let (staged, pos, proof, checkpointed) = res?;
    if checkpointed {
        *last_checkpoint = Instant::now();
        *synced_since_checkpoint = false;
    } else if !staged.is_empty() {
        *synced_since_checkpoint = true;
    }
    cold.pos = Some(pos.clone());
    cold.proof = proof;
    if !staged.is_empty() {
        note_staged(ctx, pos.txid);
    }
    // 4. Upload whatever is staged beyond the replica position.
    upload(ctx, cold).await?;
    Ok(staged.len())
}

/// Lists the replica once and makes local staging agree with it.
async fn reconcile(ctx: &TenantCtx, cold: &mut Cold) -> Result<(), StepError> {
    let mut remote_guard = ctx.remote.lock().await;
    if let Replica::Fs(fs) = &ctx.replica {
        // Half-written files of a crashed predecessor (S3 has none: writes are atomic).
        let n = fs.remove_leftovers().await?;
        if n > 0 {
            tracing::info!(client = %ctx.id, files = n, "removed temporary files a crash left in the replica");
        }
    }
    let listing = ctx.replica.list_all(&ctx.cancel).await?;
    let index = Index::from_listing(listing);
    let remote_max = index.max_txid();
    let staging = ctx.staging.clone();
    let path = ctx.db_path.clone();
    let (list, recovered) = tokio::task::spawn_blocking(move || -> Result<_, SyncError> {
        staging.remove_leftovers()?;
        let list = staging.list()?;
        let pos = if list.is_empty() {
            None
        } else {
            staging.recover_position(&path)?
        };
        Ok((list, pos))
    })
    .await
    .map_err(|e| StepError::Join(e.to_string()))??;
    if cold.pos.is_none() {
        // A seal on disk for exactly this position survives restarts (see `Db::truncate`).
        cold.proof = match &recovered {
            Some(p) => ctx.staging.read_seal(p.txid),
            None => Proof::None,
        };
        cold.pos = recovered;
    }
    let local_max = list.last().map(|t| t.0).unwrap_or(0);
    let local_min = list.first().map(|t| t.0).unwrap_or(0);
    let pos_txid = cold.pos.as_ref().map(|p| p.txid).unwrap_or(0);
    // Staged files must continue the replica's chain exactly; otherwise (local state lost, the
    // replica wiped or restored elsewhere, a new database under the same id) continue the
    // replica's chain with a full-page L0.
    let continues = if local_max == 0 {
        pos_txid == remote_max
    } else {
        local_max >= remote_max && local_min <= remote_max + 1 && (remote_max > 0 || local_min == 1)
    };
    if !continues {
        ctx.staging.clear()?;
        cold.pos = Some(Position {
            txid: remote_max,
            ..Position::default()
        });
        cold.proof = Proof::None;
        tracing::info!(client = %ctx.id, remote_max, local_max, "continuing the replica's chain with a full snapshot");
    }
    *remote_guard = Some(index);
    drop(remote_guard);
    let pos_txid = cold.pos.as_ref().map(|p| p.txid).unwrap_or(0);
    ctx.status.update(|s| {
        s.replicated_txid = remote_max;
        s.local_txid = pos_txid;
    });
    Ok(())
}

async fn upload(ctx: &TenantCtx, cold: &mut Cold) -> Result<(), StepError> {
    let staging = ctx.staging.clone();
    let list = tokio::task::spawn_blocking(move || staging.list())
        .await
        .map_err(|e| StepError::Join(e.to_string()))??;
    let mut guard = ctx.remote.lock().await;
    let Some(index) = guard.as_mut() else {
        return Ok(());
    };
    // Only the hot task uploads: while it runs, level 1 is written here (`fold`).
    index.hot = true;
    let mut replicated = index.max_txid();
    let mut pending = Vec::new();
    for txid in list.iter().copied().filter(|t| t.0 > replicated) {
        pending.push(staged_info(&ctx.staging.path_of(txid), txid).await?);
    }
    let uploaded_any = !pending.is_empty();
    if uploaded_any && fold(ctx, index, &pending).await? {
        replicated = index.max_txid();
    }
    let first = replicated;
    for staged in pending.into_iter().filter(|f| f.max.0 > first) {
        let txid = staged.max;
        if txid.0 != replicated + 1 {
            // Should not happen: staging is contiguous by construction. Start over from the
            // replica's position rather than uploading a gap.
            ctx.staging.clear()?;
            cold.pos = Some(Position {
                txid: replicated,
                ..Position::default()
            });
            cold.proof = Proof::None;
            return Err(
                SyncError::Staging(crate::client::ClientError::Other(format!(
                    "staged TXID {txid} does not follow replicated {}",
                    Txid(replicated)
                )))
                .into(),
            );
        }
        let path = ctx.staging.path_of(txid);
        let permit = upload_permit(&ctx.shared.uploads).await?;
        // Streamed from the staged file: a full snapshot of a large database never sits in
        // memory.
        let info: LtxInfo = ctx
            .replica
            .write_file(
                0,
                LtxFileName {
                    min: txid,
                    max: txid,
                },
                &path,
                staged.created_at,
                &ctx.cancel,
            )
            .await?;
        let size = info.size;
        drop(permit);
        replicated = info.max.0;
        index.insert(info);
        let done_all = list.last() == Some(&txid);
        ctx.status.update(|s| {
            s.replicated_txid = replicated;
            s.bytes_uploaded += size;
            s.objects_uploaded += 1;
            if done_all {
                s.pending_since = None;
            }
        });
    }
    // Staged files stay until an L1 file covers them (compaction reads them from here instead
    // of downloading them again), and the newest stays: it anchors the chain after a restart.
    let keep_after = covered_by_l1(index, &ctx.shared.config.compaction).min(replicated);
    drop(guard);
    if let Some((_, older)) = list.split_last() {
        for t in older.iter().filter(|t| t.0 <= keep_after) {
            ctx.staging.remove(*t)?;
        }
    }
    if uploaded_any {
        (ctx.maintain)();
    }
    Ok(())
}

/// When a level-1 compaction is due, writes the staged files `pending` (contiguous, following
/// the replica) into it instead of uploading them as L0 files: one PUT instead of two, see
/// [`Index::fold_l1`]. True if it did; the index then holds the new L1.
async fn fold(ctx: &TenantCtx, index: &mut Index, pending: &[LtxInfo]) -> Result<bool, StepError> {
    let cfg = &ctx.shared.config.compaction;
    let Some(inputs) = index.fold_l1(cfg, pending, SystemTime::now()) else {
        return Ok(false);
    };
    // Its own scratch directory: maintenance empties its own whenever it starts jobs. Only
    // this task folds, so anything here is what a crash left.
    let scratch = ctx.staging.dir().join("fold");
    remove_scratch(&scratch).await?;
    let permit = upload_permit(&ctx.shared.uploads).await?;
    let written = merge_and_write(
        &ctx.replica,
        &inputs,
        1,
        false,
        &ctx.staging,
        &scratch,
        &ctx.cancel,
    )
    .await;
    let info = match written {
        Ok(info) => info,
        Err(e) => {
            // It may have landed: maintenance deletes it before anything else is planned.
            index.mark_uncertain(intended(1, &inputs, false));
            return Err(e);
        }
    };
    drop(permit);
    tracing::debug!(client = %ctx.id, min = %info.min, max = %info.max, "pending files written as L1");
    let (size, replicated) = (info.size, info.max.0);
    index.insert(info);
    index.mark_compacted(1, SystemTime::now());
    ctx.status.update(|s| {
        s.replicated_txid = replicated;
        s.bytes_uploaded += size;
        s.objects_uploaded += 1;
        if s.local_txid <= replicated {
            s.pending_since = None;
        }
    });
    Ok(true)
}

/// The last TXID an L1 file holds: staged L0 files up to it are no longer compaction inputs.
/// Without compaction levels, every uploaded file is done with.
fn covered_by_l1(index: &Index, cfg: &CompactionConfig) -> u64 {
    if cfg.max_level() == 0 {
        return u64::MAX;
    }
    index.last(1).map(|f| f.max.0).unwrap_or(0)
}

/// A staged L0 file as the replica will list it: its size, and its header's timestamp (one open
/// and one read, as for the timestamp alone).
async fn staged_info(path: &Path, txid: Txid) -> Result<LtxInfo, StepError> {
    use tokio::io::AsyncReadExt as _;
    let io = |e| ClientError::io(path, e);
    let mut buf = [0u8; crate::ltx::HEADER_SIZE];
    let mut f = tokio::fs::File::open(path).await.map_err(io)?;
    f.read_exact(&mut buf).await.map_err(io)?;
    let size = f.metadata().await.map_err(io)?.len();
    let hdr = crate::ltx::Header::decode(&buf).map_err(SyncError::Ltx)?;
    Ok(LtxInfo {
        level: 0,
        min: txid,
        max: txid,
        size,
        created_at: SystemTime::UNIX_EPOCH + Duration::from_millis(hdr.timestamp_ms.max(0) as u64),
    })
}

async fn go_cold(ctx: &TenantCtx, cold: &mut Cold, db: Db) -> Result<(), StepError> {
    let mut pos = cold.pos.clone().unwrap_or_default();
    let mut proof = cold.proof.clone();
    let staging = ctx.staging.clone();
    let res = tokio::task::spawn_blocking(move || {
        let r = db.seal_and_close(&mut pos, &mut proof, &staging);
        r.map(|s| (s, pos, proof))
    })
    .await
    .map_err(|e| StepError::Join(e.to_string()))?;
    let (staged, pos, proof) = res?;
    let txid = pos.txid;
    cold.pos = Some(pos);
    cold.proof = proof.clone();
    let staging = ctx.staging.clone();
    tokio::task::spawn_blocking(move || staging.write_seal(txid, &proof))
        .await
        .map_err(|e| StepError::Join(e.to_string()))??;
    if !staged.is_empty() {
        note_staged(ctx, txid);
        upload(ctx, cold).await?;
    }
    Ok(())
}

/// Records that local staging now ends at `txid`, not yet all uploaded.
fn note_staged(ctx: &TenantCtx, txid: u64) {
    let now = SystemTime::now();
    ctx.status.update(|s| {
        s.local_txid = txid;
        s.last_sync = Some(now);
        if s.pending_since.is_none() {
            s.pending_since = Some(now);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_change_after_a_quiet_spell_waits_one_window() {
        assert_eq!(sync_delay(800 * MS, 5000 * MS), 800 * MS);
        assert_eq!(sync_delay(800 * MS, 1000 * MS), 800 * MS);
    }

    #[test]
    fn a_change_while_busy_waits_only_for_the_spacing() {
        // The last sync started 0.2 s / 0.6 s / 0.99 s ago: sync 1 s after it.
        assert_eq!(sync_delay(800 * MS, 200 * MS), 800 * MS);
        assert_eq!(sync_delay(800 * MS, 600 * MS), 400 * MS);
        assert_eq!(sync_delay(800 * MS, 990 * MS), 10 * MS);
    }

    #[test]
    fn syncs_start_at_least_a_second_apart_by_default() {
        let w = DEFAULT_SYNC_WINDOW;
        // A change right after a sync started waits until 1 s after that start.
        assert_eq!(sync_delay(w, Duration::ZERO), 1000 * MS);
        assert_eq!(sync_delay(w, 50 * MS), 950 * MS);
        // Under continuous commits (a change seen the moment a sync ends), one file a second.
        for sync_takes in [0, 5, 120, 199] {
            let since = sync_takes * MS;
            assert_eq!(since + sync_delay(w, since), 1000 * MS, "{sync_takes} ms");
        }
    }

    #[test]
    fn a_shorter_window_keeps_its_proportion() {
        assert_eq!(sync_delay(200 * MS, Duration::ZERO), 250 * MS);
        assert_eq!(sync_delay(200 * MS, 100 * MS), 150 * MS);
        assert_eq!(sync_delay(200 * MS, 300 * MS), 200 * MS);
    }
}
