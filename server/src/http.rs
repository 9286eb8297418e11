//! HTTP surface: `/api/status`, `/api/clients/{id}`, `/ws`, health, Leptos server functions and
//! the embedded dashboard. Handlers only read engine status and map it to the `app` wire types.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use app::{ClientStatus, StatusResponse, WsMessage};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use engine::store::{Store, StoreEvent};
use engine::tenant::TenantStatus;
use tokio::sync::broadcast::error::RecvError;

use crate::assets;

/// Everything the handlers need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub started: Instant,
    pub bucket: Option<String>,
    pub watch_dirs: Vec<String>,
    pub target_status: Arc<std::sync::RwLock<String>>,
    pub ignored: Arc<std::sync::Mutex<engine::watcher::IgnoredNames>>,
}

impl AppState {
    pub fn status(&self) -> StatusResponse {
        let clients: Vec<ClientStatus> = self.store.statuses().iter().map(client_dto).collect();
        let errors = clients
            .iter()
            .filter(|c| c.status == ClientStatus::ERROR)
            .count() as u64;
        let active = clients.len() as u64 - errors;
        let worst_lag_seconds = clients
            .iter()
            .filter_map(|c| c.lag_seconds)
            .max_by(f64::total_cmp);
        let bytes_uploaded = clients.iter().map(|c| c.bytes_uploaded).sum();
        let up = self.started.elapsed().as_secs();
        StatusResponse {
            bucket: self.bucket.clone(),
            watch_dirs: self.watch_dirs.clone(),
            total_clients: clients.len() as u64,
            active_clients: active,
            uptime: fmt_uptime(up),
            uptime_seconds: up,
            s3_status: self
                .target_status
                .read()
                .map(|s| s.clone())
                .unwrap_or_default(),
            ignored_files: self.ignored.lock().map(|i| i.count() as u64).unwrap_or(0),
            error_clients: errors,
            worst_lag_seconds,
            bytes_uploaded,
            matched_clients: clients.len() as u64,
            clients,
        }
    }

    fn summary(&self) -> WsMessage {
        let s = self.status();
        WsMessage::Summary {
            total_clients: s.total_clients,
            active_clients: s.active_clients,
            uptime: s.uptime,
            uptime_seconds: s.uptime_seconds,
            s3_status: s.s3_status,
            error_clients: s.error_clients,
            worst_lag_seconds: s.worst_lag_seconds,
            bytes_uploaded: s.bytes_uploaded,
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
        .route("/ws", get(ws_handler))
        .route(
            &format!("{}/{{*fn_name}}", app::SERVER_FN_PREFIX),
            any(server_fn_handler),
        )
        .route("/api/{*rest}", any(api_not_found))
        .fallback(assets::static_handler)
        .with_state(state)
}

async fn api_status(State(state): State<AppState>) -> Json<StatusResponse> {
    Json(state.status())
}

async fn api_client(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.store.status(&id) {
        Some(s) => Json(client_dto(&s)).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no client {id:?}"),
        )
        .into_response(),
    }
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
    if send(
        &mut socket,
        &WsMessage::Snapshot {
            status: state.status(),
        },
    )
    .await
    .is_err()
    {
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
            out.push(WsMessage::Snapshot {
                status: state.status(),
            });
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
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use engine::store::{StoreConfig, Target};
    use futures::StreamExt;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    const ID: &str = "0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11";

    fn state(dir: &std::path::Path) -> AppState {
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
        }
    }

    async fn get(router: Router, uri: &str) -> (StatusCode, serde_json::Value) {
        let res = router
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
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
        for uri in ["/api/clients/nope", "/api/nope"] {
            let (code, body) = get(router(st.clone()), uri).await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(body["error"]["code"], "not_found", "{uri}: {body}");
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
}
