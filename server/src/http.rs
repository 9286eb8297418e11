//! HTTP surface: `/api/status`, `/api/clients/{id}`, `/ws`, `/healthz`, `/readyz`, `/metrics`,
//! Leptos server functions and the embedded dashboard. Handlers only read engine status and map
//! it to the `app` wire types; every API error is the JSON [`ApiError`] shape.
//!
//! `/ws` fans out through one [`WsHub`] per router: a single task coalesces the store's events
//! per [`COALESCE`] window, reads the changed statuses once and serializes the window's batch
//! once; every connection forwards the same bytes. Invariant: a connection sends its snapshot
//! first, then every frame whose statuses were read after the snapshot started, so it misses
//! no change; at most one batch frame per window, plus a summary every [`SUMMARY_EVERY`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use app::{ClientStatus, StatusResponse, WsMessage};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use engine::store::{Store, StoreEvent, Target};
use engine::tenant::TenantStatus;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::listing::Listing;
use crate::{assets, detail, metrics};

/// Everything the handlers need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub started: Instant,
    pub bucket: Option<String>,
    pub watch_dirs: Vec<String>,
    /// `"ok"` or what the last S3 probe said (local replica: always `"ok"`).
    pub target_status: Arc<std::sync::RwLock<String>>,
    pub ignored: Arc<std::sync::Mutex<engine::watcher::IgnoredNames>>,
    pub readiness: Arc<Readiness>,
}

/// What `/readyz` waits for besides a reachable target.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Set by `main` once the watcher's initial scan has registered every existing tenant.
    pub scan_done: AtomicBool,
    /// When `/readyz` last probed an S3 target that was not `ok` (it probes at most every
    /// [`READYZ_REPROBE`], so a probe storm cannot hit the store).
    last_probe: std::sync::Mutex<Option<Instant>>,
}

/// A failed S3 probe is repeated by `/readyz` at most this often.
const READYZ_REPROBE: Duration = Duration::from_secs(10);

/// `/ws` gathers the store's events this long, then sends them as one frame: at most 4 batch
/// frames a second per connection however many tenants are busy, and a change shows within
/// ~0.3 s (well under the 2 s a new tenant may take to appear).
pub const COALESCE: Duration = Duration::from_millis(250);

/// The periodic `/ws` summary (uptime, a stuck tenant's growing lag in the worst-lag card).
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// Frames a `/ws` connection may fall behind before it is resynchronised with a snapshot:
/// 8 s of windows.
const FRAME_BACKLOG: usize = 32;

/// Aggregates over every tenant, whatever page or filter is asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub total: u64,
    pub errors: u64,
    /// Tenants per state name, in [`STATES`] order.
    pub by_state: [u64; STATES.len()],
    pub worst_lag_seconds: Option<f64>,
    pub bytes_uploaded: u64,
    pub objects_uploaded: u64,
}

/// Every state name a tenant can have (the `ClientStatus::*` constants).
pub const STATES: [&str; 6] = [
    ClientStatus::STARTING,
    ClientStatus::SNAPSHOTTING,
    ClientStatus::REPLICATING,
    ClientStatus::IDLE,
    ClientStatus::ERROR,
    ClientStatus::REMOVED,
];

impl Totals {
    pub fn of(statuses: &[TenantStatus]) -> Totals {
        let mut t = Totals {
            total: statuses.len() as u64,
            ..Totals::default()
        };
        let now = SystemTime::now();
        for s in statuses {
            let state = s.state.as_str();
            if let Some(i) = STATES.iter().position(|n| *n == state) {
                t.by_state[i] += 1;
            }
            if state == ClientStatus::ERROR {
                t.errors += 1;
            }
            let lag = lag_at(s, now).as_secs_f64();
            t.worst_lag_seconds = Some(t.worst_lag_seconds.map_or(lag, |w| w.max(lag)));
            t.bytes_uploaded += s.bytes_uploaded;
            t.objects_uploaded += s.objects_uploaded;
        }
        t
    }
}

/// [`TenantStatus::lag`] with one clock reading for a whole listing.
pub fn lag_at(s: &TenantStatus, now: SystemTime) -> Duration {
    s.pending_since
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or_default()
}

impl AppState {
    /// Every tenant, as `GET /api/status` without parameters and the WebSocket snapshot.
    pub fn status(&self) -> StatusResponse {
        self.status_page(&Listing::default())
    }

    /// One filtered, sorted page; the totals cover every tenant.
    pub fn status_page(&self, listing: &Listing) -> StatusResponse {
        let statuses = self.store.statuses();
        let totals = Totals::of(&statuses);
        let (matched, page) = listing.apply(statuses);
        let up = self.started.elapsed().as_secs();
        StatusResponse {
            bucket: self.bucket.clone(),
            watch_dirs: self.watch_dirs.clone(),
            total_clients: totals.total,
            active_clients: totals.total - totals.errors,
            uptime: fmt_uptime(up),
            uptime_seconds: up,
            s3_status: self.s3_status(),
            ignored_files: self.ignored.lock().map(|i| i.count() as u64).unwrap_or(0),
            error_clients: totals.errors,
            worst_lag_seconds: totals.worst_lag_seconds,
            bytes_uploaded: totals.bytes_uploaded,
            matched_clients: matched as u64,
            duplicate_files: self.duplicate_files(),
            clients: page.iter().map(client_dto).collect(),
        }
    }

    pub fn s3_status(&self) -> String {
        self.target_status
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub fn duplicate_files(&self) -> Vec<String> {
        self.ignored
            .lock()
            .map(|i| {
                i.duplicates()
                    .map(|(p, _)| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The server-wide numbers only: no row is converted.
    fn summary(&self) -> WsMessage {
        let totals = Totals::of(&self.store.statuses());
        let up = self.started.elapsed().as_secs();
        let (ignored_files, duplicate_files) = self
            .ignored
            .lock()
            .map(|i| {
                (
                    i.count() as u64,
                    i.duplicates()
                        .map(|(p, _)| p.display().to_string())
                        .collect(),
                )
            })
            .unwrap_or_default();
        WsMessage::Summary {
            total_clients: totals.total,
            active_clients: totals.total - totals.errors,
            uptime: fmt_uptime(up),
            uptime_seconds: up,
            s3_status: self.s3_status(),
            error_clients: totals.errors,
            worst_lag_seconds: totals.worst_lag_seconds,
            bytes_uploaded: totals.bytes_uploaded,
            ignored_files,
            duplicate_files,
        }
    }
}

impl app::DashboardBackend for AppState {
    fn server_info(&self) -> app::ServerInfo {
        let up = self.started.elapsed().as_secs();
        app::ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime: fmt_uptime(up),
            uptime_seconds: up,
        }
    }
}

pub fn router(state: AppState) -> Router {
    let hub = Arc::new(WsHub::new(state.clone()));
    Router::new()
        .route("/api/status", get(api_status))
        .route("/api/clients/{id}", get(api_client))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::handler))
        .route(
            "/ws",
            get(move |State(state): State<AppState>, ws: WebSocketUpgrade| {
                ws_handler(state, hub.clone(), ws)
            }),
        )
        .route(
            &format!("{}/{{*fn_name}}", app::SERVER_FN_PREFIX),
            any(server_fn_handler),
        )
        .route("/api/{*rest}", any(api_not_found))
        .fallback(assets::static_handler)
        .with_state(state)
}

/// `GET /api/status?offset=&limit=&q=&status=&sort=` (see [`app::StatusQuery`]). Any bad or
/// unknown parameter is a 400 with the JSON error body, never axum's plain-text rejection.
async fn api_status(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<StatusResponse>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let listing = Listing::parse(&pairs).map_err(ApiError::bad_request)?;
    // Converting 10,000 statuses takes milliseconds: keep it off the async worker threads.
    let page = tokio::task::spawn_blocking(move || state.status_page(&listing))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "status listing failed",
            )
            .with_source(e.to_string())
        })?;
    Ok(Json(page))
}

async fn api_client(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    // An id that is not even UTF-8 (`%FF`) gets the same JSON error as any other bad id.
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => return ApiError::bad_request(format!("bad client id: {e}")).into_response(),
    };
    match detail::client_detail(&state, &id).await {
        Ok(d) => Json(d).into_response(),
        Err(e) => e.into_response(),
    }
}

/// 200 `{"status":"ready"}` once the initial scan registered every existing tenant and the
/// replica target is usable; 503 `{"status":"not ready","reason":"..."}` otherwise.
async fn readyz(State(state): State<AppState>) -> Response {
    match not_ready_reason(&state).await {
        None => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "not ready", "reason": reason })),
        )
            .into_response(),
    }
}

async fn not_ready_reason(state: &AppState) -> Option<String> {
    if !state.readiness.scan_done.load(Ordering::Acquire) {
        return Some("initial scan of the watch directories in progress".into());
    }
    match state.store.target() {
        Target::Fs { root } => {
            let root = root.clone();
            tokio::task::spawn_blocking(move || dir_writable(&root))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
                .err()
        }
        Target::S3 { client, prefix } => {
            let status = state.s3_status();
            if status == "ok" {
                return None;
            }
            // The start-up probe failed: probe again (rate-limited) so that readiness follows
            // the store's recovery.
            let due = {
                let mut last = state
                    .readiness
                    .last_probe
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let due = last.is_none_or(|t| t.elapsed() >= READYZ_REPROBE);
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            if !due {
                return Some(format!("replica target: {status}"));
            }
            let now = client.probe(prefix).await.to_string();
            if let Ok(mut s) = state.target_status.write() {
                s.clone_from(&now);
            }
            (now != "ok").then(|| format!("replica target: {now}"))
        }
    }
}

/// The local replica root exists and this process may create files in it.
fn dir_writable(root: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    if !root.is_dir() {
        return Err(format!(
            "replica directory {} does not exist",
            root.display()
        ));
    }
    let c = std::ffi::CString::new(root.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: access only reads the NUL-terminated path we pass.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(format!(
            "replica directory {} is not writable: {}",
            root.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

async fn api_not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint").into_response()
}

async fn server_fn_handler(State(state): State<AppState>, req: Request) -> Response {
    let backend: Arc<dyn app::DashboardBackend> = Arc::new(state);
    leptos_axum::handle_server_fns_with_context(
        move || leptos::prelude::provide_context(backend.clone()),
        req,
    )
    .await
    .into_response()
}

async fn ws_handler(state: AppState, hub: Arc<WsHub>, ws: WebSocketUpgrade) -> Response {
    // Subscribed before the snapshot is read: no frame after it can be missed.
    let frames = hub.subscribe();
    ws.on_upgrade(move |socket| ws_session(state, frames, socket))
}

/// The `/ws` fan-out of one router: one [`pump`] task coalesces the store's events and
/// broadcasts each window's frame, serialized once, to every connection.
pub struct WsHub {
    state: AppState,
    frames: broadcast::Sender<Frame>,
    /// The pump starts with the first connection (it needs a runtime; `router` does not).
    started: std::sync::Once,
    /// Jobs for the hub's own thread, see [`WsHub::off_thread`]; set when the pump starts.
    jobs: std::sync::OnceLock<std::sync::mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// What the pump broadcasts to the connections.
#[derive(Clone, Debug)]
enum Frame {
    /// A `batch` or a `summary`, as sent on the wire (the bytes are shared, not copied).
    /// Every status in it was read before `read_at`.
    Text { text: Utf8Bytes, read_at: Instant },
    /// The pump lost store events (it fell behind the store's channel): every connection
    /// sends a fresh snapshot instead.
    Resync,
}

impl WsHub {
    fn new(state: AppState) -> WsHub {
        let (frames, _) = broadcast::channel(FRAME_BACKLOG);
        WsHub {
            state,
            frames,
            started: std::sync::Once::new(),
            jobs: std::sync::OnceLock::new(),
        }
    }

    /// Runs `f` on the hub's own thread: off the async workers (a window of 10,000 rows is
    /// milliseconds of CPU and megabytes of JSON), and not queued behind the engine's SQLite
    /// work on the blocking pool, which busy tenants can keep full for seconds. `None` if the
    /// thread is gone.
    async fn off_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.get()?.send(job).ok()?;
        rx.await.ok()
    }

    /// The frames from now on; the first call starts the pump.
    fn subscribe(self: &Arc<Self>) -> broadcast::Receiver<Frame> {
        let frames = self.frames.subscribe();
        self.started.call_once(|| {
            let (jobs, queue) = std::sync::mpsc::channel::<Job>();
            // Ends when the hub, and so the sender, is dropped.
            let spawned = std::thread::Builder::new()
                .name("ws-frames".into())
                .spawn(move || queue.into_iter().for_each(|job| job()));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the /ws frame thread");
                return;
            }
            let _ = self.jobs.set(jobs);
            let events = self.state.store.subscribe();
            tokio::spawn(pump(Arc::downgrade(self), events));
        });
        frames
    }
}

/// The one task behind every `/ws` connection of a router. A window opens at the first store
/// event and gathers events for [`COALESCE`]; then the changed statuses are read once and the
/// window becomes one `batch` frame (on the hub's thread, see [`WsHub::off_thread`]). Every
/// [`SUMMARY_EVERY`] it also broadcasts a `summary`. With no connection it only drains events;
/// it ends when the store or the router is gone.
async fn pump(hub: std::sync::Weak<WsHub>, mut events: broadcast::Receiver<StoreEvent>) {
    let mut summary_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + SUMMARY_EVERY, SUMMARY_EVERY);
    summary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut window = Window::default();
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(e) => window.push(e),
                Err(RecvError::Lagged(_)) => window.lost = true,
                Err(RecvError::Closed) => return,
            },
            _ = summary_tick.tick() => {
                let Some(hub) = hub.upgrade() else { return };
                if hub.frames.receiver_count() > 0 {
                    let state = hub.state.clone();
                    let frame = hub.off_thread(move || {
                        let summary = state.summary();
                        text_frame(&summary, Instant::now())
                    });
                    if let Some(Some(frame)) = frame.await {
                        let _ = hub.frames.send(frame);
                    }
                }
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + COALESCE;
        while !window.lost {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(e)) => window.push(e),
                Ok(Err(RecvError::Lagged(_))) => window.lost = true,
                Ok(Err(RecvError::Closed)) => return,
                Err(_) => break,
            }
        }
        if window.lost {
            // One resync per window at most, however fast events come; the snapshots cover
            // whatever is still queued.
            tokio::time::sleep_until(deadline).await;
            events = events.resubscribe();
        }
        let Some(hub) = hub.upgrade() else { return };
        if hub.frames.receiver_count() == 0 {
            // Nobody listens; a later connection starts from a snapshot read after now.
            continue;
        }
        if window.lost {
            let _ = hub.frames.send(Frame::Resync);
            continue;
        }
        let state = hub.state.clone();
        if let Some(Some(frame)) = hub.off_thread(move || window.frame(&state)).await {
            let _ = hub.frames.send(frame);
        }
    }
}

/// The tenants one window saw come, change and go. Sets, so that a window with thousands of
/// busy tenants stays linear.
#[derive(Default)]
struct Window {
    added: std::collections::BTreeSet<String>,
    changed: std::collections::BTreeSet<String>,
    removed: std::collections::BTreeSet<String>,
    /// Events were dropped: only a snapshot can tell what changed.
    lost: bool,
}

impl Window {
    fn push(&mut self, e: StoreEvent) {
        match e {
            StoreEvent::Added(id) => {
                self.removed.remove(&id);
                self.added.insert(id);
            }
            StoreEvent::Changed(id) => {
                self.changed.insert(id);
            }
            StoreEvent::Removed(id) => {
                self.added.remove(&id);
                self.removed.insert(id);
            }
        }
    }

    /// The window's `batch`: removals, additions and changes with the statuses as they are
    /// now, and a summary when tenants came or went. `None` when nothing is left to say.
    fn frame(self, state: &AppState) -> Option<Frame> {
        let mut messages: Vec<WsMessage> = self
            .removed
            .iter()
            .map(|id| WsMessage::Removed {
                client_id: id.clone(),
            })
            .collect();
        let comings_and_goings = !self.added.is_empty() || !self.removed.is_empty();
        for id in &self.added {
            if let Some(s) = state.store.status(id) {
                messages.push(WsMessage::Added {
                    client: client_dto(&s),
                });
            }
        }
        for id in &self.changed {
            if self.added.contains(id) || self.removed.contains(id) {
                continue;
            }
            if let Some(s) = state.store.status(id) {
                messages.push(WsMessage::Changed {
                    client: client_dto(&s),
                });
            }
        }
        if comings_and_goings {
            messages.push(state.summary());
        }
        let read_at = Instant::now();
        if messages.is_empty() {
            return None;
        }
        text_frame(&WsMessage::Batch { messages }, read_at)
    }
}

fn text_frame(msg: &WsMessage, read_at: Instant) -> Option<Frame> {
    let text = serde_json::to_string(msg).ok()?;
    Some(Frame::Text {
        text: text.into(),
        read_at,
    })
}

/// Sends a snapshot, then forwards the hub's frames: at most one `batch` per [`COALESCE`]
/// window and a periodic `summary`. Frames whose statuses were read before the snapshot
/// started are older than it and skipped. A connection that falls [`FRAME_BACKLOG`] frames
/// behind (or a pump that lost events) gets a fresh snapshot.
async fn ws_session(
    state: AppState,
    mut frames: broadcast::Receiver<Frame>,
    mut socket: WebSocket,
) {
    let Ok(mut synced) = send_snapshot(&state, &mut socket).await else {
        return;
    };
    loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Ok(Frame::Text { text, read_at }) => {
                    if read_at < synced {
                        continue;
                    }
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Ok(Frame::Resync) | Err(RecvError::Lagged(_)) => {
                    frames = frames.resubscribe();
                    match send_snapshot(&state, &mut socket).await {
                        Ok(at) => synced = at,
                        Err(_) => return,
                    }
                }
                Err(RecvError::Closed) => return,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => continue,
            },
        }
    }
}

/// The whole state as one message, built and serialized on the blocking pool: with 10,000
/// tenants that is milliseconds of CPU and megabytes of JSON, which must not stall the async
/// workers (20 dashboards connecting at once would).
/// Returns when the statuses started to be read: frames read before that are older than it.
async fn send_snapshot(state: &AppState, socket: &mut WebSocket) -> Result<Instant, axum::Error> {
    let state = state.clone();
    let (text, started) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let text = serde_json::to_string(&WsMessage::Snapshot {
            status: state.status(),
        })
        .unwrap_or_default();
        (text, started)
    })
    .await
    .map_err(axum::Error::new)?;
    socket.send(Message::Text(text.into())).await?;
    Ok(started)
}

pub fn client_dto(s: &TenantStatus) -> ClientStatus {
    let txid = |t: u64| (t > 0).then(|| format!("{t:016x}"));
    ClientStatus {
        client_id: s.id.clone(),
        database_path: s.db_path.display().to_string(),
        s3_path: s.replica_url.clone(),
        status: s.state.as_str().to_string(),
        created_at: rfc3339(s.created_at),
        local_txid: txid(s.local_txid),
        replicated_txid: txid(s.replicated_txid),
        lag_seconds: Some(s.lag().as_secs_f64()),
        pending_since: s.pending_since.map(rfc3339),
        last_sync_at: s.last_sync.map(rfc3339),
        bytes_uploaded: s.bytes_uploaded,
        objects_uploaded: s.objects_uploaded,
        last_error: s.last_error.clone(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    engine::restore::fmt_time(t)
}

pub fn fmt_uptime(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// JSON error with a stable shape: `{"error": {"code": "...", "message": "..."}}`.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    source: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            source: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The internal cause: logged, never sent to the client.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(source) = &self.source {
            tracing::warn!(code = self.code, error = %source, "{}", self.message);
        }
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use engine::store::{StoreConfig, Target};
    use futures::StreamExt;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    const ID: &str = "0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11";

    pub(crate) fn state(dir: &std::path::Path) -> AppState {
        let store = Store::new(
            StoreConfig {
                state_dir: dir.join("state"),
                target: Target::Fs {
                    root: dir.join("replica"),
                },
                tenant: Default::default(),
                max_uploads: 2,
                max_opening: 2,
            },
            CancellationToken::new(),
        );
        AppState {
            store,
            started: Instant::now(),
            bucket: None,
            watch_dirs: vec!["clients".into()],
            target_status: Arc::new(std::sync::RwLock::new("ok".into())),
            ignored: Default::default(),
            readiness: Arc::new(Readiness {
                scan_done: AtomicBool::new(true),
                ..Readiness::default()
            }),
        }
    }

    pub(crate) async fn get(router: Router, uri: &str) -> (StatusCode, serde_json::Value) {
        let res = router
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 64 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn status_lists_registered_clients_with_the_seed_fields() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let db = dir.path().join(format!("{ID}.db"));
        std::fs::File::create(&db).unwrap();
        st.store.register(ID, &db).unwrap();
        let (code, body) = get(router(st.clone()), "/api/status").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["totalClients"], 1);
        assert_eq!(body["watchDirs"][0], "clients");
        assert_eq!(body["clients"][0]["clientId"], ID);
        for field in ["databasePath", "s3Path", "status", "createdAt"] {
            assert!(
                body["clients"][0][field].is_string(),
                "{field} missing: {body}"
            );
        }
        let (code, one) = get(router(st), &format!("/api/clients/{ID}")).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(one["clientId"], ID);
    }

    #[tokio::test]
    async fn unknown_ids_and_endpoints_are_json_404s() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        for uri in [
            "/api/clients/1b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11",
            "/api/nope",
        ] {
            let (code, body) = get(router(st.clone()), uri).await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(body["error"]["code"], "not_found", "{uri}: {body}");
        }
        for uri in ["/api/clients/nope", "/api/clients/..%2Fetc"] {
            let (code, body) = get(router(st.clone()), uri).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(body["error"]["code"], "bad_request", "{uri}: {body}");
        }
        let res = router(st)
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// The next text frame, as sent.
    async fn next_text(ws: &mut Ws) -> String {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("no message within 10 s")
                .unwrap()
                .unwrap();
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                return t.to_string();
            }
        }
    }

    /// The next message that is not a summary or a change of a row (a batch's items count one
    /// by one; the rest of that batch is dropped).
    async fn next(ws: &mut Ws) -> WsMessage {
        loop {
            let m: WsMessage = serde_json::from_str(&next_text(ws).await).unwrap();
            let items = match m {
                WsMessage::Batch { messages } => messages,
                m => vec![m],
            };
            if let Some(m) = items
                .into_iter()
                .find(|m| !matches!(m, WsMessage::Summary { .. } | WsMessage::Changed { .. }))
            {
                return m;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn websocket_sends_a_snapshot_then_added_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(st.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        assert!(matches!(next(&mut ws).await, WsMessage::Snapshot { .. }));
        let db = dir.path().join(format!("{ID}.db"));
        std::fs::File::create(&db).unwrap();
        st.store.register(ID, &db).unwrap();
        match next(&mut ws).await {
            WsMessage::Added { client } => assert_eq!(client.client_id, ID),
            other => panic!("expected added, got {other:?}"),
        }
        st.store.unregister(ID);
        match next(&mut ws).await {
            WsMessage::Removed { client_id } => assert_eq!(client_id, ID),
            other => panic!("expected removed, got {other:?}"),
        }
        let _ = ws.close(None).await;
    }

    /// `n` ids that sort in creation order (`00000000-...-000000000000`, `...01`, ...).
    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("00000000-0000-4000-8000-{i:012x}"))
            .collect()
    }

    #[tokio::test]
    async fn status_filters_sorts_and_pages_with_matched_count() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let ids = ids(6);
        // Refused tenants stay in state `error` and run no task: a fixed fixture.
        for (i, id) in ids.iter().enumerate() {
            let sub = if i % 2 == 0 { "Archive" } else { "clients" };
            st.store
                .register_refused(id, &dir.path().join(sub).join(format!("{id}.db")), "test");
        }
        let page = |uri: &str| {
            let r = router(st.clone());
            let uri = uri.to_string();
            async move {
                let (code, body) = get(r, &uri).await;
                assert_eq!(code, StatusCode::OK, "{uri}: {body}");
                let got: Vec<String> = body["clients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["clientId"].as_str().unwrap().to_string())
                    .collect();
                (body, got)
            }
        };
        let (all, got) = page("/api/status").await;
        assert_eq!(got, ids);
        assert_eq!(all["totalClients"], 6);
        assert_eq!(all["matchedClients"], 6);

        let (b, got) = page("/api/status?q=ARCHIVE&sort=-id").await;
        assert_eq!(got, [ids[4].clone(), ids[2].clone(), ids[0].clone()]);
        assert_eq!(b["matchedClients"], 3);
        assert_eq!(b["totalClients"], 6);

        let (b, got) = page("/api/status?offset=1&limit=2").await;
        assert_eq!(got, [ids[1].clone(), ids[2].clone()]);
        assert_eq!(b["matchedClients"], 6);
        let (b, got) = page("/api/status?offset=10&limit=2").await;
        assert!(got.is_empty());
        assert_eq!(b["matchedClients"], 6);

        // Substring of the id, case-insensitive.
        let (_, got) = page("/api/status?q=000000000005").await;
        assert_eq!(got, [ids[5].clone()]);
        let (_, got) = page("/api/status?q=4000-8000-00000000000").await;
        assert_eq!(got.len(), 6);

        let (b, got) = page("/api/status?status=error").await;
        assert_eq!(got.len(), 6);
        assert_eq!(b["errorClients"], 6);
        let (b, got) = page("/api/status?status=idle&limit=10000").await;
        assert!(got.is_empty());
        assert_eq!(b["matchedClients"], 0);
        assert_eq!(b["totalClients"], 6);

        // Every sort key is accepted both ways; equal keys keep the id order.
        for key in ["id", "lag", "lastSync", "size", "status"] {
            let (_, got) = page(&format!("/api/status?sort={key}")).await;
            assert_eq!(got, ids, "sort={key}");
            let (_, got) = page(&format!("/api/status?sort=-{key}")).await;
            let want: Vec<String> = if key == "id" {
                ids.iter().rev().cloned().collect()
            } else {
                ids.clone()
            };
            assert_eq!(got, want, "sort=-{key}");
        }
        // Blank form fields count as absent.
        let (_, got) = page("/api/status?q=&status=&sort=").await;
        assert_eq!(got, ids);
    }

    #[tokio::test]
    async fn status_sorts_by_the_values_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let ids = ids(3);
        st.store
            .register_refused(&ids[0], &dir.path().join("a.db"), "test");
        // Two live tenants (states starting/idle/replicating as they progress).
        for id in &ids[1..] {
            let db = dir.path().join(format!("{id}.db"));
            std::fs::File::create(&db).unwrap();
            st.store.register(id, &db).unwrap();
        }
        let (_, b) = get(router(st.clone()), "/api/status?sort=status").await;
        let states: Vec<&str> = b["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["status"].as_str().unwrap())
            .collect();
        let mut sorted = states.clone();
        sorted.sort();
        assert_eq!(states, sorted);
        let (_, b) = get(router(st.clone()), "/api/status?sort=-lag").await;
        let lags: Vec<f64> = b["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["lagSeconds"].as_f64().unwrap())
            .collect();
        assert_eq!(lags.len(), 3);
        // Rows are converted after sorting, so a later row may have aged a little more.
        assert!(lags.windows(2).all(|w| w[0] + 0.5 >= w[1]), "{lags:?}");
    }

    #[tokio::test]
    async fn bad_status_queries_are_json_400s() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        for (uri, needle) in [
            ("/api/status?limit=0", "limit"),
            ("/api/status?limit=10001", "limit"),
            ("/api/status?limit=ten", "limit"),
            ("/api/status?offset=-1", "offset"),
            ("/api/status?offset=1.5", "offset"),
            ("/api/status?status=sleeping", "status"),
            ("/api/status?sort=name", "sort"),
            ("/api/status?sort=--id", "sort"),
            ("/api/status?page=2", "page"),
            ("/api/status?limit=1&limit=2", "twice"),
        ] {
            let res = router(st.clone())
                .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(res.headers()["content-type"], "application/json", "{uri}");
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap();
            let body: app::ApiErrorBody = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{uri}: {e}: {}", String::from_utf8_lossy(&bytes)));
            assert_eq!(body.error.code, "bad_request", "{uri}");
            assert!(
                body.error.message.contains(needle),
                "{uri}: {}",
                body.error.message
            );
        }
    }

    #[tokio::test]
    async fn status_lists_duplicate_files_found_by_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let paths = [
            a.join(format!("{ID}.db")),
            a.join(format!("{ID}.sqlite")),
            b.join(format!("{ID}.db")),
        ];
        for p in &paths {
            rusqlite::Connection::open(p)
                .unwrap()
                .execute_batch("CREATE TABLE t(x);")
                .unwrap();
        }
        let cancel = CancellationToken::new();
        let watcher = engine::watcher::spawn(
            st.store.clone(),
            vec![a.clone(), b.clone()],
            Duration::from_secs(3600),
            cancel.clone(),
            st.ignored.clone(),
        )
        .await
        .unwrap();
        let (code, body) = get(router(st.clone()), "/api/status").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["totalClients"], 1, "{body}");
        let owner = body["clients"][0]["databasePath"]
            .as_str()
            .unwrap()
            .to_string();
        let mut dups: Vec<String> = body["duplicateFiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        dups.push(owner);
        dups.sort();
        let mut want: Vec<String> = paths
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap().display().to_string())
            .collect();
        want.sort();
        let canon = |v: Vec<String>| -> Vec<String> {
            let mut v: Vec<String> = v
                .iter()
                .map(|p| std::fs::canonicalize(p).unwrap().display().to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(canon(dups), want, "{body}");
        let text = metrics::render(&st);
        assert!(
            text.contains("\nlitestream_manager_duplicate_files 2\n"),
            "{text}"
        );
        cancel.cancel();
        watcher.abort();
    }

    #[tokio::test]
    async fn readyz_waits_for_the_initial_scan_and_a_writable_replica() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        st.readiness.scan_done.store(false, Ordering::Release);
        std::fs::create_dir_all(dir.path().join("replica")).unwrap();
        let (code, body) = get(router(st.clone()), "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "not ready");
        assert!(body["reason"].as_str().unwrap().contains("scan"), "{body}");

        st.readiness.scan_done.store(true, Ordering::Release);
        let (code, body) = get(router(st.clone()), "/readyz").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body, serde_json::json!({ "status": "ready" }));

        std::fs::remove_dir(dir.path().join("replica")).unwrap();
        let (code, body) = get(router(st.clone()), "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body["reason"].as_str().unwrap().contains("does not exist"),
            "{body}"
        );
        // Liveness does not depend on readiness.
        let res = router(st)
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    /// The messages of the next text frame as raw JSON: a batch's items, or the one message.
    async fn next_json(ws: &mut Ws) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&next_text(ws).await).unwrap();
        if v["type"] == "batch" {
            v["messages"].as_array().unwrap().clone()
        } else {
            vec![v]
        }
    }

    async fn connect(st: &AppState) -> (Ws, Ws) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(st.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut pair = Vec::new();
        for _ in 0..2 {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
                .await
                .unwrap();
            assert!(matches!(next(&mut ws).await, WsMessage::Snapshot { .. }));
            pair.push(ws);
        }
        let b = pair.pop().unwrap();
        (pair.pop().unwrap(), b)
    }

    /// A single-threaded runtime: the 500 registrations run without yielding, so they all fall
    /// into one coalescing window, and both connections get that window as the same one frame.
    #[tokio::test(flavor = "current_thread")]
    async fn websocket_sends_a_window_of_changes_as_one_shared_frame() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let (mut a, mut b) = connect(&st).await;
        let ids = ids(500);
        for id in &ids {
            st.store
                .register_refused(id, &dir.path().join(format!("{id}.db")), "test");
        }
        let text = next_text(&mut a).await;
        assert_eq!(next_text(&mut b).await, text, "one serialization, shared");
        let WsMessage::Batch { messages } = serde_json::from_str(&text).unwrap() else {
            panic!("expected a batch: {}", &text[..text.len().min(200)]);
        };
        assert_eq!(messages.len(), 501, "500 added and one summary");
        let added: Vec<String> = messages
            .iter()
            .filter_map(|m| match m {
                WsMessage::Added { client } => Some(client.client_id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(added, ids);
        match messages.last() {
            Some(WsMessage::Summary {
                total_clients,
                error_clients,
                ..
            }) => assert_eq!((*total_clients, *error_clients), (500, 500)),
            other => panic!("expected the summary last, got {other:?}"),
        }
        let _ = a.close(None).await;
        let _ = b.close(None).await;
    }

    /// 1,000 tenant events spread over about a second arrive in at most one batch frame per
    /// coalescing window (a window lasts at least [`COALESCE`]; windows do not overlap), not one
    /// frame per event, and nothing is lost or repeated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn websocket_frames_per_second_stay_bounded_under_a_stream_of_changes() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let (mut ws, other) = connect(&st).await;
        drop(other);
        let ids = ids(1000);
        let t = Instant::now();
        for chunk in ids.chunks(10) {
            for id in chunk {
                st.store
                    .register_refused(id, &dir.path().join(format!("{id}.db")), "test");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let spread = t.elapsed();
        let mut seen = std::collections::BTreeSet::new();
        let mut batches = 0u32;
        while seen.len() < ids.len() {
            let text = next_text(&mut ws).await;
            match serde_json::from_str::<WsMessage>(&text).unwrap() {
                WsMessage::Batch { messages } => {
                    batches += 1;
                    for m in messages {
                        if let WsMessage::Added { client } = m {
                            assert!(seen.insert(client.client_id), "added twice");
                        }
                    }
                }
                WsMessage::Summary { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let bound = (spread.as_secs_f64() / COALESCE.as_secs_f64()).floor() as u32 + 1;
        eprintln!("1,000 events over {spread:?}: {batches} batch frames (bound {bound})");
        assert!(batches <= bound, "{batches} frames for {spread:?}");
        assert!(batches <= 20, "{batches} frames for {spread:?}");
        let _ = ws.close(None).await;
    }

    /// A single-threaded runtime: the burst of events below runs without yielding, so the
    /// session's receiver must fall behind the broadcast channel's capacity.
    #[tokio::test(flavor = "current_thread")]
    async fn websocket_resyncs_a_lagging_client_with_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(st.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        assert!(matches!(next(&mut ws).await, WsMessage::Snapshot { .. }));
        let id2 = "2b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11";
        let path = dir.path().join("x.db");
        for _ in 0..3000 {
            st.store.register_refused(ID, &path, "churn");
            st.store.unregister(ID);
        }
        st.store.register_refused(id2, &path, "stays");
        match next(&mut ws).await {
            WsMessage::Snapshot { status } => {
                assert_eq!(status.total_clients, 1);
                assert_eq!(status.clients.len(), 1);
                assert_eq!(status.clients[0].client_id, id2);
            }
            other => panic!("expected a resync snapshot, got {other:?}"),
        }
        // After the resync, deltas flow again, followed by a summary with the new totals.
        st.store.register_refused(ID, &path, "back");
        'frames: loop {
            for v in next_json(&mut ws).await {
                if v["type"] == "summary" && v["totalClients"] == 2 {
                    assert_eq!(v["errorClients"], 2, "{v}");
                    assert_eq!(v["activeClients"], 0, "{v}");
                    assert!(v["worstLagSeconds"].is_number(), "{v}");
                    assert_eq!(v["bytesUploaded"], 0, "{v}");
                    break 'frames;
                }
            }
        }
        let _ = ws.close(None).await;
    }

    #[tokio::test]
    async fn status_of_ten_thousand_tenants_pages_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        for id in ids(10_000) {
            st.store
                .register_refused(&id, &dir.path().join(format!("{id}.db")), "test");
        }
        let t = Instant::now();
        let (code, body) = get(router(st.clone()), "/api/status?limit=100&sort=-lag").await;
        let paged = t.elapsed();
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["clients"].as_array().unwrap().len(), 100);
        assert_eq!(body["matchedClients"], 10_000);
        let t = Instant::now();
        let (code, body) = get(router(st), "/api/status").await;
        let full = t.elapsed();
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["clients"].as_array().unwrap().len(), 10_000);
        eprintln!("10,000 tenants: page of 100 in {paged:?}, full listing in {full:?}");
        // Debug build, shared 2-core machine: generous bounds that still catch a quadratic.
        assert!(paged < Duration::from_secs(2), "{paged:?}");
    }

    /// An S3 target, built without sending a request (nothing listens on the endpoint): the
    /// detail's commands carry the endpoint and region but no credentials, `/metrics` has the
    /// request counters, and `/readyz` reports the failed probe (and probes again).
    #[tokio::test]
    async fn s3_target_commands_metrics_and_readiness() {
        use engine::client::s3::{S3Client, S3Config, StaticCredentials};
        let dir = tempfile::tempdir().unwrap();
        let mut config = S3Config::new("backups");
        config.endpoint = Some("http://127.0.0.1:9".into());
        config.region = Some("eu-west-3".into());
        config.max_attempts = 1;
        config.credentials = Some(StaticCredentials {
            access_key_id: "AKIDSECRETID".into(),
            secret_access_key: "VERYSECRETKEY".into(),
        });
        let client = S3Client::connect(config).await.unwrap();
        let mut st = state(dir.path());
        st.store = Store::new(
            StoreConfig {
                state_dir: dir.path().join("state"),
                target: Target::S3 {
                    client,
                    prefix: "prod/databases".into(),
                },
                tenant: Default::default(),
                max_uploads: 2,
                max_opening: 2,
            },
            CancellationToken::new(),
        );
        st.bucket = Some("backups".into());
        *st.target_status.write().unwrap() = "unreachable: connection refused".into();
        st.store
            .register_refused(ID, &dir.path().join("x.db"), "test");

        let (code, body) = get(router(st.clone()), &format!("/api/clients/{ID}")).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let url = format!(
            "s3://backups/prod/databases/{ID}?endpoint=http://127.0.0.1:9&region=eu-west-3"
        );
        assert_eq!(
            body["restoreCommands"]["litestream"],
            format!("litestream restore -o {ID}.db '{url}'")
        );
        assert_eq!(
            body["restoreCommands"]["manager"],
            format!("litestream-manager restore -o {ID}.db '{url}'")
        );
        let text = body.to_string();
        assert!(!text.contains("SECRET"), "{text}");

        let metrics = metrics::render(&st);
        assert!(
            metrics.contains("litestream_manager_s3_requests_total{operation=\"put\"} 0"),
            "{metrics}"
        );
        assert!(
            metrics.contains("\nlitestream_manager_target_up 0\n"),
            "{metrics}"
        );
        assert!(!metrics.contains("SECRET"));

        let (code, body) = get(router(st.clone()), "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.starts_with("replica target: "), "{reason}");
        assert!(!reason.contains("SECRET"), "{reason}");
        // The re-probe was sent (and counted: one probe, at most 2 attempts) and its verdict
        // replaced the start-up one; a second /readyz within 10 s does not probe again.
        let lists = |st: &AppState| -> u64 {
            let m = metrics::render(st);
            let line = m
                .lines()
                .find(|l| l.starts_with("litestream_manager_s3_requests_total{operation=\"list\"}"))
                .unwrap()
                .to_string();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let sent = lists(&st);
        assert!((1..=2).contains(&sent), "{sent}");
        assert_ne!(st.s3_status(), "unreachable: connection refused");
        let (code, _) = get(router(st.clone()), "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(lists(&st), sent);
    }
}
