//! The registry of tenants: the only place that decides a tenant's lifecycle.
//!
//! The watcher calls [`Store::register`], [`Store::unregister`] and [`Store::wake`]; the server
//! reads [`Store::statuses`] and subscribes to [`StoreEvent`]s. A cold tenant is one map entry
//! (its status and chain position); a hot tenant additionally has one task, tracked by a
//! `TaskTracker` so shutdown can wait for the final syncs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::fs::FsReplica;
use crate::client::Replica;
use crate::db::{Proof, Staging};
use crate::tenant::{
    self, Cold, RemoteState, Shared, State, TenantConfig, TenantCtx, TenantStatus,
};

/// Default cap on concurrent replica operations across all tenants (the seed's promise).
pub const DEFAULT_MAX_UPLOADS: usize = 50;
/// Default cap on databases being opened/snapshotted at once, so a start with 10,000 tenants
/// is a steady queue, not a thundering herd.
pub const DEFAULT_MAX_OPENING: usize = 8;
const EVENT_CAPACITY: usize = 4096;

/// Where replicas go.
#[derive(Clone, Debug)]
pub enum Target {
    /// `<root>/<id>/ltx/<level>/…` — `root` already includes the prefix (e.g. `data/replica/databases`).
    Fs { root: PathBuf },
    /// `s3://<bucket>/<prefix>/<id>/<%04x level>/…` — one client (pool, retry budget) shared by
    /// every tenant; `prefix` is e.g. `databases`.
    S3 {
        client: crate::client::s3::S3Client,
        prefix: String,
    },
}

impl Target {
    pub fn replica_for(&self, id: &str) -> Replica {
        match self {
            Target::Fs { root } => Replica::Fs(FsReplica::new(root.join(id))),
            Target::S3 { client, prefix } => Replica::S3(client.replica(&format!("{prefix}/{id}"))),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Fs { root } => {
                let abs = std::path::absolute(root).unwrap_or_else(|_| root.clone());
                format!("file://{}", abs.display())
            }
            Target::S3 { client, prefix } => client.url_for(prefix),
        }
    }
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Local staging (`<state_dir>/<id>/ltx/0/…`); must not be inside a watched directory.
    pub state_dir: PathBuf,
    pub target: Target,
    pub tenant: TenantConfig,
    pub max_uploads: usize,
    pub max_opening: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    Added(String),
    Changed(String),
    Removed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("tenant id {0:?} is not a safe replica path component")]
    BadId(String),
    #[error("{path} is already registered as {id}")]
    Duplicate { id: String, path: PathBuf },
}

/// Pushes status changes of one tenant to the store's subscribers.
#[derive(Clone)]
pub(crate) struct StatusHandle {
    id: String,
    status: Arc<Mutex<TenantStatus>>,
    events: broadcast::Sender<StoreEvent>,
}

impl StatusHandle {
    pub(crate) fn update(&self, f: impl FnOnce(&mut TenantStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
        let _ = self.events.send(StoreEvent::Changed(self.id.clone()));
    }
}

struct Entry {
    path: PathBuf,
    status: Arc<Mutex<TenantStatus>>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
    /// Present while cold; taken by the hot task.
    cold: Option<Cold>,
    hot: bool,
    /// A wake arrived while the hot task was finishing: start it again.
    rewake: bool,
    remote: RemoteState,
    /// When maintenance is scheduled for this tenant (None: nothing pending).
    maintenance_at: Option<SystemTime>,
    maintaining: bool,
}

struct Inner {
    config: StoreConfig,
    shared: Shared,
    tenants: Mutex<HashMap<String, Entry>>,
    events: broadcast::Sender<StoreEvent>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Maintenance queue: (due time, tenant id). One timer for all tenants.
    schedule: Mutex<BTreeSet<(SystemTime, String)>>,
    schedule_changed: Notify,
    /// Maintenance tasks running at once (see `start_maintenance`).
    maintenance_slots: Semaphore,
    /// Per-id lock held by the running hot task; present only while some task holds or awaits it.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    pub fn new(config: StoreConfig, cancel: CancellationToken) -> Self {
        let shared = Shared {
            config: config.tenant.clone(),
            hot: Arc::default(),
            uploads: Arc::new(Semaphore::new(config.max_uploads.max(1))),
            opens: Arc::new(Semaphore::new(config.max_opening.max(1))),
        };
        let maintenance_slots = config.max_uploads.max(1);
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let store = Store {
            inner: Arc::new(Inner {
                config,
                shared,
                tenants: Mutex::new(HashMap::new()),
                events,
                cancel,
                tracker: TaskTracker::new(),
                schedule: Mutex::new(BTreeSet::new()),
                schedule_changed: Notify::new(),
                maintenance_slots: Semaphore::new(maintenance_slots),
                gates: Mutex::new(HashMap::new()),
            }),
        };
        let s = store.clone();
        store
            .inner
            .tracker
            .spawn(async move { s.run_scheduler().await });
        store
    }

    /// Runs maintenance for `id` at `at` (or earlier, if already scheduled earlier).
    pub fn schedule(&self, id: &str, at: SystemTime) {
        let mut tenants = self.lock();
        let Some(entry) = tenants.get_mut(id) else {
            return;
        };
        if entry.maintenance_at.is_some_and(|t| t <= at) {
            return;
        }
        let mut q = self
            .inner
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(old) = entry.maintenance_at.take() {
            q.remove(&(old, id.to_string()));
        }
        entry.maintenance_at = Some(at);
        q.insert((at, id.to_string()));
        drop(q);
        drop(tenants);
        self.inner.schedule_changed.notify_one();
    }

    /// The one timer behind every tenant's maintenance.
    async fn run_scheduler(&self) {
        loop {
            let now = SystemTime::now();
            let (due, next): (Vec<String>, Option<SystemTime>) = {
                let mut q = self
                    .inner
                    .schedule
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let mut due = Vec::new();
                while let Some((t, _)) = q.first() {
                    if *t > now {
                        break;
                    }
                    if let Some((_, id)) = q.pop_first() {
                        due.push(id);
                    }
                }
                (due, q.first().map(|(t, _)| *t))
            };
            for id in due {
                self.start_maintenance(&id);
            }
            let sleep = next
                .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = self.inner.schedule_changed.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    fn start_maintenance(&self, id: &str) {
        let mut tenants = self.lock();
        let Some(entry) = tenants.get_mut(id) else {
            return;
        };
        entry.maintenance_at = None;
        if entry.maintaining {
            // Running already: it reschedules itself from its own plan.
            return;
        }
        entry.maintaining = true;
        let remote = entry.remote.clone();
        let cancel = entry.cancel.clone();
        drop(tenants);
        let replica = self.inner.config.target.replica_for(id);
        let store = self.clone();
        let id = id.to_string();
        self.inner.tracker.spawn(async move {
            // Thousands of tenants fall due at one boundary: each waits here, in a small future,
            // for one of a bounded number of maintenance slots before its (much larger) job
            // state exists.
            let Ok(_slot) = store.inner.maintenance_slots.acquire().await else {
                return;
            };
            let cfg = &store.inner.shared.config.compaction;
            let result = Box::pin(tenant::maintain(
                &id,
                &replica,
                &remote,
                cfg,
                &store.inner.shared.uploads,
                &Staging::new(store.inner.config.state_dir.join(&id)),
                &cancel,
            ))
            .await;
            let next = match result {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(client = %id, error = %e, "maintenance failed; retrying in 30s");
                    Some(SystemTime::now() + Duration::from_secs(30))
                }
            };
            if let Some(e) = store.lock().get_mut(&id) {
                e.maintaining = false;
            }
            if let Some(at) = next.filter(|_| !cancel.is_cancelled()) {
                store.schedule(&id, at);
            }
        });
    }

    pub fn target(&self) -> &Target {
        &self.inner.config.target
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    /// Starts replicating `path` as tenant `id`. Registering the same id and path again is a
    /// no-op; the same id with another path is refused.
    pub fn register(&self, id: &str, path: &Path) -> Result<(), RegisterError> {
        if !is_safe_id(id) {
            return Err(RegisterError::BadId(id.to_string()));
        }
        let mut tenants = self.lock();
        if let Some(e) = tenants.get(id) {
            if e.path == path {
                return Ok(());
            }
            return Err(RegisterError::Duplicate {
                id: id.to_string(),
                path: e.path.clone(),
            });
        }
        let replica = self.inner.config.target.replica_for(id);
        let status = Arc::new(Mutex::new(TenantStatus {
            id: id.to_string(),
            db_path: path.to_path_buf(),
            replica_url: replica.url(),
            state: State::Starting,
            created_at: SystemTime::now(),
            local_txid: 0,
            replicated_txid: 0,
            last_sync: None,
            pending_since: None,
            bytes_uploaded: 0,
            objects_uploaded: 0,
            last_error: None,
        }));
        tenants.insert(
            id.to_string(),
            Entry {
                path: path.to_path_buf(),
                status,
                wake: Arc::new(Notify::new()),
                cancel: self.inner.cancel.child_token(),
                cold: Some(Cold {
                    pos: None,
                    proof: Proof::None,
                }),
                hot: false,
                rewake: false,
                remote: RemoteState::default(),
                maintenance_at: None,
                maintaining: false,
            },
        );
        drop(tenants);
        tracing::info!(client = %id, path = %path.display(), "✅ client registered: {id}");
        let _ = self.inner.events.send(StoreEvent::Added(id.to_string()));
        self.wake(id);
        Ok(())
    }

    /// Records a tenant-named file that must not be replicated (symlink escape, directory, FIFO):
    /// visible on the status as an error with its reason, never opened.
    pub fn register_refused(&self, id: &str, path: &Path, reason: &str) {
        if !is_safe_id(id) {
            return;
        }
        let mut tenants = self.lock();
        if tenants.contains_key(id) {
            return;
        }
        let status = Arc::new(Mutex::new(TenantStatus {
            id: id.to_string(),
            db_path: path.to_path_buf(),
            replica_url: self.inner.config.target.replica_for(id).url(),
            state: State::Error,
            created_at: SystemTime::now(),
            local_txid: 0,
            replicated_txid: 0,
            last_sync: None,
            pending_since: None,
            bytes_uploaded: 0,
            objects_uploaded: 0,
            last_error: Some(reason.to_string()),
        }));
        tenants.insert(
            id.to_string(),
            Entry {
                path: path.to_path_buf(),
                status,
                wake: Arc::new(Notify::new()),
                cancel: self.inner.cancel.child_token(),
                cold: None, // never woken
                hot: false,
                rewake: false,
                remote: RemoteState::default(),
                maintenance_at: None,
                maintaining: false,
            },
        );
        drop(tenants);
        tracing::warn!(client = %id, path = %path.display(), reason, "client refused");
        let _ = self.inner.events.send(StoreEvent::Added(id.to_string()));
    }

    /// Stops replicating `id`; its replica stays.
    pub fn unregister(&self, id: &str) -> bool {
        let Some(entry) = self.lock().remove(id) else {
            return false;
        };
        entry.cancel.cancel();
        if let Ok(mut s) = entry.status.lock() {
            s.state = State::Removed;
        }
        tracing::info!(client = %id, "🗑️ client removed: {id}");
        let _ = self.inner.events.send(StoreEvent::Removed(id.to_string()));
        true
    }

    /// The tenant's database or WAL changed: make it hot (or tell its hot task).
    pub fn wake(&self, id: &str) {
        let mut tenants = self.lock();
        let Some(entry) = tenants.get_mut(id) else {
            return;
        };
        if entry.hot {
            entry.rewake = true;
            entry.wake.notify_one();
            return;
        }
        let Some(cold) = entry.cold.take() else {
            return;
        };
        entry.hot = true;
        entry.rewake = false;
        let ctx = TenantCtx {
            id: id.to_string(),
            db_path: entry.path.clone(),
            staging: Staging::new(self.inner.config.state_dir.join(id)),
            replica: self.inner.config.target.replica_for(id),
            wake: entry.wake.clone(),
            cancel: entry.cancel.clone(),
            shared: self.inner.shared.clone(),
            status: StatusHandle {
                id: id.to_string(),
                status: entry.status.clone(),
                events: self.inner.events.clone(),
            },
            remote: entry.remote.clone(),
            maintain: {
                let store = self.clone();
                let id = id.to_string();
                Arc::new(move || store.schedule(&id, SystemTime::now()))
            },
        };
        drop(tenants);
        let store = self.clone();
        let gate = self.gate(id);
        self.inner.tracker.spawn(async move {
            // A task of an earlier registration of this id (its file was deleted and created
            // again) may still be finishing: never run two on one staging area and replica.
            let running = gate.clone().lock_owned().await;
            let cold = tenant::run_hot(&ctx, cold).await;
            drop(running);
            store.release_gate(&ctx.id, gate);
            store.parked(&ctx.id, &ctx.wake, cold);
        });
    }

    /// The lock held by the hot task of `id`, across registrations.
    fn gate(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.inner.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.entry(id.to_string()).or_default().clone()
    }

    fn release_gate(&self, id: &str, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut gates = self.inner.gates.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&gate) == 2 {
            gates.remove(id);
        }
    }

    /// A hot task finished: keep its cold state, restart it if a wake raced with its exit. A
    /// task of an unregistered entry leaves a new registration of the same id alone.
    fn parked(&self, id: &str, wake: &Arc<Notify>, cold: Cold) {
        let mut tenants = self.lock();
        let Some(entry) = tenants.get_mut(id).filter(|e| Arc::ptr_eq(&e.wake, wake)) else {
            return;
        };
        entry.cold = Some(cold);
        entry.hot = false;
        let again = entry.rewake && !entry.cancel.is_cancelled();
        entry.rewake = false;
        drop(tenants);
        if again {
            self.wake(id);
        }
    }

    pub fn status(&self, id: &str) -> Option<TenantStatus> {
        let tenants = self.lock();
        let e = tenants.get(id)?;
        let s = e.status.lock().ok()?.clone();
        Some(s)
    }

    pub fn statuses(&self) -> Vec<TenantStatus> {
        let tenants = self.lock();
        let mut out: Vec<TenantStatus> = tenants
            .values()
            .filter_map(|e| e.status.lock().ok().map(|s| s.clone()))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The replica's LTX files of `id` as this process knows them: listed once when the tenant
    /// first went hot, then kept up to date by its own uploads, compactions and deletions. Sends
    /// no request. `None`: no such tenant, or its replica was not listed yet (it has not been hot
    /// since start). Waits while the tenant's upload or maintenance step holds the index.
    pub async fn replica_files(&self, id: &str) -> Option<Vec<crate::client::LtxInfo>> {
        let remote = self.lock().get(id)?.remote.clone();
        let index = remote.lock().await;
        index.as_ref().map(|ix| ix.all().cloned().collect())
    }

    pub fn ids(&self) -> Vec<(String, PathBuf)> {
        self.lock()
            .iter()
            .map(|(k, e)| (k.clone(), e.path.clone()))
            .collect()
    }

    /// Number of tenants with a running task.
    pub fn hot_count(&self) -> usize {
        self.inner
            .shared
            .hot
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Cancels every tenant (each does a final local sync) and waits at most `deadline`.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        tokio::time::timeout(deadline, self.inner.tracker.wait())
            .await
            .is_ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned map means a panic while holding it; the data is still consistent (every
        // mutation is a single insert/remove/field write), so keep going.
        self.inner.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tenant ids become one path component of the replica: only `[a-z0-9._-]`, not `.`/`..`.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}
