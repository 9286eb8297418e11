//! Wire types of the dashboard: the JSON of `GET /api/status` and of every `/ws` message.
//!
//! The server serializes them and the browser deserializes them with the same definitions, so
//! the two sides cannot drift. Field names are camelCase on the wire (the seed's `/api/status`
//! shape); the exact JSON is pinned by the tests at the bottom of this file.

use serde::{Deserialize, Serialize};

/// `GET /api/status`, and the payload of [`WsMessage::Snapshot`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    /// S3 bucket of the replica target; `None` for a local (fs) replica.
    pub bucket: Option<String>,
    pub watch_dirs: Vec<String>,
    pub total_clients: u64,
    pub active_clients: u64,
    /// Human form of `uptime_seconds`, e.g. `"1h2m3s"`.
    pub uptime: String,
    pub uptime_seconds: u64,
    /// Health of the replica target as the server words it (e.g. `"ok"`, `"error: ..."`).
    pub s3_status: String,
    /// Files in the watch directories whose names are not tenant names (each reported once).
    #[serde(default)]
    pub ignored_files: u64,
    /// Tenants in state `error`.
    #[serde(default)]
    pub error_clients: u64,
    /// The largest `lagSeconds` among all tenants (not only the listed page); `None` = no tenant.
    #[serde(default)]
    pub worst_lag_seconds: Option<f64>,
    /// Sum of `bytesUploaded` over all tenants since start.
    #[serde(default)]
    pub bytes_uploaded: u64,
    /// How many tenants match `q` and `status` before `offset`/`limit` cut the page; equals
    /// `totalClients` without filters.
    #[serde(default)]
    pub matched_clients: u64,
    /// Tenant-named files not replicated because another file already owns their id (e.g.
    /// `<id>.db` beside `<id>.sqlite`, or one id in two watch directories): their paths, sorted.
    #[serde(default)]
    pub duplicate_files: Vec<String>,
    /// The page: all matching tenants when no `limit` is given (the seed's behaviour).
    pub clients: Vec<ClientStatus>,
}

/// Query of `GET /api/status`; every field optional. Bad values are a 400 [`ApiError`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusQuery {
    /// Rows to skip after filtering and sorting.
    pub offset: Option<u64>,
    /// Page size, 1..=10000 (absent: no limit).
    pub limit: Option<u64>,
    /// Case-insensitive substring of the client id or database path.
    pub q: Option<String>,
    /// One of the state names of [`ClientStatus`].
    pub status: Option<String>,
    /// `id` (default), `lag`, `lastSync`, `size` (bytes uploaded), `status`; a leading `-`
    /// reverses it.
    pub sort: Option<String>,
}

/// `GET /api/clients/{id}`: one tenant with what an operator needs to restore it. The
/// [`ClientStatus`] fields sit at the top level (flattened), as `/api/clients/{id}` always had.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientDetail {
    #[serde(flatten)]
    pub client: ClientStatus,
    /// What the replica can restore to; `None` while nothing is replicated (or not yet known).
    pub restore_window: Option<RestoreWindow>,
    /// The replica's LTX files, per level (0 = per sync, 1-3 compactions, 9 = snapshots).
    pub levels: Vec<LevelFiles>,
    pub restore_commands: RestoreCommands,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreWindow {
    /// RFC 3339: the earliest `-timestamp` that restores.
    pub earliest_at: String,
    /// RFC 3339: the time of the newest replicated transaction.
    pub latest_at: String,
    /// 16 hex digits.
    pub min_txid: String,
    pub max_txid: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LevelFiles {
    pub level: u32,
    pub files: Vec<LtxFile>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LtxFile {
    pub min_txid: String,
    pub max_txid: String,
    pub size: u64,
    /// RFC 3339 timestamp of the newest transaction in the file.
    pub created_at: String,
}

/// Copy-paste commands that restore this tenant (secrets never appear in them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreCommands {
    /// `litestream restore -o <out> <replica URL>` (with `env -u AWS_CA_BUNDLE` hints left out).
    pub litestream: String,
    /// `litestream-manager restore -o <out> <replica URL>`.
    pub manager: String,
}

/// Every API error: a JSON body with a stable shape, e.g.
/// `{"error":{"code":"bad_request","message":"limit must be 1..=10000"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: ApiErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorDetail {
    /// Machine-readable: `not_found`, `bad_request`, ...
    pub code: String,
    pub message: String,
}

/// One tenant (= one database file) as the dashboard sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientStatus {
    /// The GUID from the file name; unique among the clients of one server.
    pub client_id: String,
    pub database_path: String,
    pub s3_path: String,
    /// One of the `ClientStatus::*` state names below. A string rather than an enum so that a
    /// newer server's state shows up as text instead of breaking an older page.
    pub status: String,
    /// RFC 3339.
    pub created_at: String,
    /// Last TXID committed locally, as Litestream prints it (16 hex digits).
    pub local_txid: Option<String>,
    /// Last TXID durable in the replica; never ahead of `local_txid`.
    pub replicated_txid: Option<String>,
    /// Seconds since the oldest committed change not yet durable in the replica, when the
    /// server serialized the row; `None` = unknown.
    pub lag_seconds: Option<f64>,
    /// RFC 3339: commit time of the oldest change not yet durable in the replica; `None` =
    /// nothing pending. The page computes the lag live from it (a stuck tenant's lag grows
    /// without any `changed` message); older servers omit it.
    #[serde(default)]
    pub pending_since: Option<String>,
    /// RFC 3339.
    pub last_sync_at: Option<String>,
    pub bytes_uploaded: u64,
    pub objects_uploaded: u64,
    pub last_error: Option<String>,
}

impl ClientStatus {
    pub const REPLICATING: &'static str = "replicating";
    pub const IDLE: &'static str = "idle";
    pub const SNAPSHOTTING: &'static str = "snapshotting";
    pub const ERROR: &'static str = "error";
    pub const REMOVED: &'static str = "removed";
    pub const STARTING: &'static str = "starting";
}

/// One text frame on `/ws`, JSON with a `"type"` tag (`"snapshot"`, `"batch"`, `"summary"`, and
/// inside a batch `"added"`, `"changed"`, `"removed"`, `"summary"`); fields are camelCase.
///
/// Contract: the server sends a `Snapshot` first on every connection, so a reconnecting page
/// resynchronises without another `GET /api/status`. After that it sends one `Batch` per
/// coalescing window (at most a few a second, however many tenants changed) holding the deltas
/// in the order they are to be applied, plus a periodic `Summary`. A `Summary` is authoritative
/// for the totals it carries. A connection that falls behind gets a fresh `Snapshot`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum WsMessage {
    /// The whole state; replaces whatever the page had.
    Snapshot { status: StatusResponse },
    /// A new client appeared.
    Added { client: ClientStatus },
    /// A known client changed (state, positions, lag, error...). Carries the whole row.
    Changed { client: ClientStatus },
    /// A client is gone (its database file was removed).
    Removed { client_id: String },
    /// Server-wide numbers, sent when tenants come or go (inside that window's batch) and
    /// periodically (uptime, lag growth).
    Summary {
        total_clients: u64,
        active_clients: u64,
        uptime: String,
        uptime_seconds: u64,
        s3_status: String,
        #[serde(default)]
        error_clients: u64,
        #[serde(default)]
        worst_lag_seconds: Option<f64>,
        #[serde(default)]
        bytes_uploaded: u64,
        /// As in [`StatusResponse`]: skipped non-tenant names and duplicate tenant files.
        #[serde(default)]
        ignored_files: u64,
        #[serde(default)]
        duplicate_files: Vec<String>,
    },
    /// Everything one coalescing window changed, as one frame: `added`, `changed`, `removed`
    /// and `summary` messages, applied in order. The server never nests a `Batch` or a
    /// `Snapshot` in it (a page applies them anyway).
    Batch { messages: Vec<WsMessage> },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client() -> ClientStatus {
        ClientStatus {
            client_id: "0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11".into(),
            database_path: "/data/clients/0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11.db".into(),
            s3_path: "s3://bucket/databases/0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11".into(),
            status: ClientStatus::REPLICATING.into(),
            created_at: "2026-11-29T15:00:00Z".into(),
            local_txid: Some("0000000000000003".into()),
            replicated_txid: Some("0000000000000002".into()),
            lag_seconds: Some(0.5),
            pending_since: Some("2026-11-29T14:59:59.5Z".into()),
            last_sync_at: None,
            bytes_uploaded: 4096,
            objects_uploaded: 2,
            last_error: None,
        }
    }

    #[test]
    fn status_response_uses_seed_field_names() {
        let status = StatusResponse {
            bucket: Some("bucket".into()),
            watch_dirs: vec!["/data/clients".into()],
            total_clients: 1,
            active_clients: 1,
            uptime: "1h2m3s".into(),
            uptime_seconds: 3723,
            s3_status: "ok".into(),
            ignored_files: 2,
            error_clients: 0,
            worst_lag_seconds: Some(0.5),
            bytes_uploaded: 4096,
            matched_clients: 1,
            duplicate_files: vec![
                "/data/clients/0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11.sqlite".into()
            ],
            clients: vec![client()],
        };
        let value = serde_json::to_value(&status).unwrap();
        assert_eq!(
            value,
            json!({
                "bucket": "bucket",
                "watchDirs": ["/data/clients"],
                "totalClients": 1,
                "activeClients": 1,
                "uptime": "1h2m3s",
                "uptimeSeconds": 3723,
                "s3Status": "ok",
                "ignoredFiles": 2,
                "errorClients": 0,
                "worstLagSeconds": 0.5,
                "bytesUploaded": 4096,
                "matchedClients": 1,
                "duplicateFiles": ["/data/clients/0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11.sqlite"],
                "clients": [{
                    "clientId": "0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11",
                    "databasePath": "/data/clients/0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11.db",
                    "s3Path": "s3://bucket/databases/0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11",
                    "status": "replicating",
                    "createdAt": "2026-11-29T15:00:00Z",
                    "localTxid": "0000000000000003",
                    "replicatedTxid": "0000000000000002",
                    "lagSeconds": 0.5,
                    "pendingSince": "2026-11-29T14:59:59.5Z",
                    "lastSyncAt": null,
                    "bytesUploaded": 4096,
                    "objectsUploaded": 2,
                    "lastError": null
                }]
            })
        );
        let back: StatusResponse = serde_json::from_value(value).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn missing_optional_fields_read_as_none() {
        let c: ClientStatus = serde_json::from_value(json!({
            "clientId": "a", "databasePath": "/a.db", "s3Path": "", "status": "idle",
            "createdAt": "2026-11-29T15:00:00Z", "bytesUploaded": 0, "objectsUploaded": 0
        }))
        .unwrap();
        assert_eq!(c.local_txid, None);
        assert_eq!(c.lag_seconds, None);
        assert_eq!(c.pending_since, None);
        assert_eq!(c.last_error, None);
    }

    #[test]
    fn ws_messages_are_tagged_by_type_with_camel_case_fields() {
        let cases = [
            (
                WsMessage::Removed {
                    client_id: "a".into(),
                },
                json!({"type": "removed", "clientId": "a"}),
            ),
            (
                WsMessage::Summary {
                    total_clients: 2,
                    active_clients: 1,
                    uptime: "3s".into(),
                    uptime_seconds: 3,
                    s3_status: "ok".into(),
                    error_clients: 1,
                    worst_lag_seconds: Some(0.5),
                    bytes_uploaded: 10,
                    ignored_files: 3,
                    duplicate_files: vec!["/c/a.sqlite".into()],
                },
                json!({"type": "summary", "totalClients": 2, "activeClients": 1,
                       "uptime": "3s", "uptimeSeconds": 3, "s3Status": "ok",
                       "errorClients": 1, "worstLagSeconds": 0.5, "bytesUploaded": 10,
                       "ignoredFiles": 3, "duplicateFiles": ["/c/a.sqlite"]}),
            ),
            (
                WsMessage::Batch {
                    messages: vec![
                        WsMessage::Removed {
                            client_id: "a".into(),
                        },
                        WsMessage::Removed {
                            client_id: "b".into(),
                        },
                    ],
                },
                json!({"type": "batch", "messages": [
                    {"type": "removed", "clientId": "a"},
                    {"type": "removed", "clientId": "b"}
                ]}),
            ),
            (
                WsMessage::Batch { messages: vec![] },
                json!({"type": "batch", "messages": []}),
            ),
        ];
        for (msg, expected) in cases {
            assert_eq!(serde_json::to_value(&msg).unwrap(), expected);
            assert_eq!(serde_json::from_value::<WsMessage>(expected).unwrap(), msg);
        }

        let added = serde_json::to_value(WsMessage::Added { client: client() }).unwrap();
        assert_eq!(added["type"], "added");
        assert_eq!(added["client"]["clientId"], client().client_id);
        let changed = serde_json::to_value(WsMessage::Changed { client: client() }).unwrap();
        assert_eq!(changed["type"], "changed");
        let snapshot = serde_json::to_value(WsMessage::Snapshot {
            status: StatusResponse::default(),
        })
        .unwrap();
        assert_eq!(snapshot["type"], "snapshot");
        assert_eq!(snapshot["status"]["totalClients"], 0);

        let batch = serde_json::to_value(WsMessage::Batch {
            messages: vec![
                WsMessage::Added { client: client() },
                WsMessage::Changed { client: client() },
            ],
        })
        .unwrap();
        assert_eq!(batch["type"], "batch");
        assert_eq!(batch["messages"][0]["type"], "added");
        assert_eq!(batch["messages"][1]["type"], "changed");
        assert_eq!(
            batch["messages"][1]["client"]["pendingSince"],
            "2026-11-29T14:59:59.5Z"
        );
    }

    #[test]
    fn summary_of_an_older_server_reads_without_the_file_counts() {
        let m: WsMessage = serde_json::from_value(json!({"type": "summary", "totalClients": 1,
            "activeClients": 1, "uptime": "1s", "uptimeSeconds": 1, "s3Status": "ok"}))
        .unwrap();
        match m {
            WsMessage::Summary {
                ignored_files,
                duplicate_files,
                ..
            } => assert_eq!((ignored_files, duplicate_files.len()), (0, 0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_message_type_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<WsMessage>(r#"{"type":"nope"}"#).is_err());
    }
}
