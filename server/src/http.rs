//! HTTP surface: `/api/status`, `/api/clients/{id}`, `/ws`, `/healthz`, `/readyz`, `/metrics`,
//! Leptos server functions and the embedded dashboard. Handlers only read engine status and map
//! it to the `app` wire types; every API error is the JSON [`ApiError`] shape.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use app::{ClientStatus, StatusResponse, WsMessage};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use engine::store::{Store, StoreEvent, Target};
use engine::tenant::TenantStatus;
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
        WsMessage::Summary {
            total_clients: totals.total,
            active_clients: totals.total - totals.errors,
            uptime: fmt_uptime(up),
            uptime_seconds: up,
            s3_status: self.s3_status(),
            error_clients: totals.errors,
            worst_lag_seconds: totals.worst_lag_seconds,
            bytes_uploaded: totals.bytes_uploaded,
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
    Router::new()
        .route("/api/status", get(api_status))
        .route("/api/clients/{id}", get(api_client))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::handler))
        .route("/ws", get(ws_handler))
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

async fn api_client(State(state): State<AppState>, Path(id): Path<String>) -> Response {
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

async fn ws_handler(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| ws_session(state, socket))
}

/// Sends a snapshot, then coalesced deltas: changes are gathered for a short window so that many
/// busy tenants produce a few messages a second, not one per sync. A receiver that lagged behind
/// gets a fresh snapshot.
async fn ws_session(state: AppState, mut socket: WebSocket) {
    const COALESCE: Duration = Duration::from_millis(250);
    let mut events = state.store.subscribe();
    if send_snapshot(&state, &mut socket).await.is_err() {
        return;
    }
    let mut summary_tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let mut changed: Vec<String> = Vec::new();
        let mut added: Vec<String> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        let mut resync = false;
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(e) => push(e, &mut added, &mut changed, &mut removed),
                Err(RecvError::Lagged(_)) => resync = true,
                Err(RecvError::Closed) => return,
            },
            _ = summary_tick.tick() => {
                if send(&mut socket, &state.summary()).await.is_err() { return; }
                continue;
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => continue,
            },
        }
        // Gather what else happens within the window.
        let deadline = tokio::time::Instant::now() + COALESCE;
        while !resync {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(e)) => push(e, &mut added, &mut changed, &mut removed),
                Ok(Err(RecvError::Lagged(_))) => resync = true,
                Ok(Err(RecvError::Closed)) => return,
                Err(_) => break,
            }
        }
        let mut out = Vec::new();
        if resync {
            if send_snapshot(&state, &mut socket).await.is_err() {
                return;
            }
        } else {
            for id in &removed {
                out.push(WsMessage::Removed {
                    client_id: id.clone(),
                });
            }
            for id in added.iter().filter(|id| !removed.contains(id)) {
                if let Some(s) = state.store.status(id) {
                    out.push(WsMessage::Added {
                        client: client_dto(&s),
                    });
                }
            }
            for id in changed
                .iter()
                .filter(|id| !removed.contains(id) && !added.contains(id))
            {
                if let Some(s) = state.store.status(id) {
                    out.push(WsMessage::Changed {
                        client: client_dto(&s),
                    });
                }
            }
            if !added.is_empty() || !removed.is_empty() {
                out.push(state.summary());
            }
        }
        for m in &out {
            if send(&mut socket, m).await.is_err() {
                return;
            }
        }
    }
}

fn push(
    e: StoreEvent,
    added: &mut Vec<String>,
    changed: &mut Vec<String>,
    removed: &mut Vec<String>,
) {
    match e {
        StoreEvent::Added(id) => {
            removed.retain(|r| r != &id);
            if !added.contains(&id) {
                added.push(id);
            }
        }
        StoreEvent::Changed(id) => {
            if !changed.contains(&id) {
                changed.push(id);
            }
        }
        StoreEvent::Removed(id) => {
            added.retain(|a| a != &id);
            if !removed.contains(&id) {
                removed.push(id);
            }
        }
    }
}

/// The whole state as one message, built and serialized on the blocking pool: with 10,000
/// tenants that is milliseconds of CPU and megabytes of JSON, which must not stall the async
/// workers (20 dashboards connecting at once would).
async fn send_snapshot(state: &AppState, socket: &mut WebSocket) -> Result<(), axum::Error> {
    let state = state.clone();
    let text = tokio::task::spawn_blocking(move || {
        serde_json::to_string(&WsMessage::Snapshot {
            status: state.status(),
        })
        .unwrap_or_default()
    })
    .await
    .map_err(axum::Error::new)?;
    socket.send(Message::Text(text.into())).await
}

async fn send(socket: &mut WebSocket, msg: &WsMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(msg).unwrap_or_default();
    socket.send(Message::Text(text.into())).await
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

    /// The next message that is not a summary or a change of a row.
    async fn next(ws: &mut Ws) -> WsMessage {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("no message within 10 s")
                .unwrap()
                .unwrap();
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                let m: WsMessage = serde_json::from_str(&t).unwrap();
                if !matches!(m, WsMessage::Summary { .. } | WsMessage::Changed { .. }) {
                    return m;
                }
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

    /// The next text frame as raw JSON.
    async fn next_json(ws: &mut Ws) -> serde_json::Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("no message within 10 s")
                .unwrap()
                .unwrap();
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                return serde_json::from_str(&t).unwrap();
            }
        }
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
        loop {
            let v = next_json(&mut ws).await;
            if v["type"] == "summary" && v["totalClients"] == 2 {
                assert_eq!(v["errorClients"], 2, "{v}");
                assert_eq!(v["activeClients"], 0, "{v}");
                assert!(v["worstLagSeconds"].is_number(), "{v}");
                assert_eq!(v["bytesUploaded"], 0, "{v}");
                break;
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
