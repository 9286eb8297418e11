//! What the dashboard shows and how each server message changes it.
//!
//! Pure data, no Leptos: the component keeps one [`DashboardState`] in a signal and calls
//! [`DashboardState::apply`] for every `/ws` message. Invariant: once a `/ws` snapshot has been
//! applied, the answer of the initial `GET /api/status` (which may have been computed earlier)
//! is ignored, so a slow fetch can never roll the page back.

use std::collections::BTreeMap;

use crate::api::{ClientStatus, StatusResponse, WsMessage};

/// State of the page's link to the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Connection {
    /// A WebSocket is being opened (first load or a reconnect attempt).
    #[default]
    Connecting,
    /// The WebSocket is open; messages are applied as they arrive.
    Live,
    /// The WebSocket closed; a reconnect is scheduled with backoff.
    Offline,
}

impl Connection {
    /// The text shown in `#connection` (the end-to-end tests read it).
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Connecting => "connecting",
            Connection::Live => "live",
            Connection::Offline => "offline",
        }
    }
}

/// One table row. `rev` changes whenever the row's content changes, so a keyed list
/// re-renders exactly the rows that changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub rev: u64,
    pub client: ClientStatus,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DashboardState {
    pub bucket: Option<String>,
    pub watch_dirs: Vec<String>,
    /// From the last snapshot or summary, adjusted by +1/-1 on added/removed clients in between.
    pub total_clients: u64,
    pub active_clients: u64,
    pub uptime: String,
    pub s3_status: String,
    /// Whether any status (HTTP or WebSocket) has arrived yet.
    pub loaded: bool,
    /// Whether a `/ws` snapshot has been applied: from then on HTTP answers are stale.
    ws_synced: bool,
    /// Sorted by client id, so the table order is stable.
    clients: BTreeMap<String, Row>,
    next_rev: u64,
}

impl DashboardState {
    /// The answer of `GET /api/status`; ignored once the WebSocket has delivered a snapshot.
    pub fn apply_http_status(&mut self, status: StatusResponse) {
        if !self.ws_synced {
            self.replace(status);
        }
    }

    /// One message from `/ws`.
    pub fn apply(&mut self, msg: WsMessage) {
        match msg {
            WsMessage::Snapshot { status } => {
                self.ws_synced = true;
                self.replace(status);
            }
            WsMessage::Added { client } | WsMessage::Changed { client } => {
                if self.upsert(client) {
                    self.total_clients += 1;
                }
            }
            WsMessage::Removed { client_id } => {
                if self.clients.remove(&client_id).is_some() {
                    self.total_clients = self.total_clients.saturating_sub(1);
                }
            }
            WsMessage::Summary {
                total_clients,
                active_clients,
                uptime,
                uptime_seconds: _,
                s3_status,
                ..
            } => {
                self.total_clients = total_clients;
                self.active_clients = active_clients;
                self.uptime = uptime;
                self.s3_status = s3_status;
            }
        }
    }

    /// The rows in table order.
    pub fn rows(&self) -> Vec<Row> {
        self.clients.values().cloned().collect()
    }

    pub fn client(&self, client_id: &str) -> Option<&ClientStatus> {
        self.clients.get(client_id).map(|row| &row.client)
    }

    fn replace(&mut self, status: StatusResponse) {
        self.loaded = true;
        self.bucket = status.bucket;
        self.watch_dirs = status.watch_dirs;
        self.total_clients = status.total_clients;
        self.active_clients = status.active_clients;
        self.uptime = status.uptime;
        self.s3_status = status.s3_status;
        let mut old = std::mem::take(&mut self.clients);
        for client in status.clients {
            // Keep the revision of unchanged rows so a resync does not redraw the whole table.
            let row = match old.remove(&client.client_id) {
                Some(row) if row.client == client => row,
                _ => self.new_row(client),
            };
            self.clients.insert(row.client.client_id.clone(), row);
        }
    }

    /// Inserts or replaces a row; returns whether the client was new.
    fn upsert(&mut self, client: ClientStatus) -> bool {
        self.loaded = true;
        if self.client(&client.client_id) == Some(&client) {
            return false;
        }
        let row = self.new_row(client);
        self.clients
            .insert(row.client.client_id.clone(), row)
            .is_none()
    }

    fn new_row(&mut self, client: ClientStatus) -> Row {
        self.next_rev += 1;
        Row {
            rev: self.next_rev,
            client,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, status: &str) -> ClientStatus {
        ClientStatus {
            client_id: id.into(),
            status: status.into(),
            ..ClientStatus::default()
        }
    }

    fn snapshot(clients: Vec<ClientStatus>) -> StatusResponse {
        StatusResponse {
            total_clients: clients.len() as u64,
            uptime: "1s".into(),
            s3_status: "ok".into(),
            clients,
            ..StatusResponse::default()
        }
    }

    fn ids(state: &DashboardState) -> Vec<String> {
        state
            .rows()
            .into_iter()
            .map(|r| r.client.client_id)
            .collect()
    }

    #[test]
    fn added_and_removed_clients_update_rows_and_total() {
        let mut state = DashboardState::default();
        state.apply(WsMessage::Snapshot {
            status: snapshot(vec![client("b", "idle")]),
        });
        state.apply(WsMessage::Added {
            client: client("a", "starting"),
        });
        assert_eq!(ids(&state), ["a", "b"]);
        assert_eq!(state.total_clients, 2);

        state.apply(WsMessage::Removed {
            client_id: "b".into(),
        });
        assert_eq!(ids(&state), ["a"]);
        assert_eq!(state.total_clients, 1);

        // Removing an unknown client changes nothing.
        state.apply(WsMessage::Removed {
            client_id: "zz".into(),
        });
        assert_eq!(state.total_clients, 1);
    }

    #[test]
    fn changed_row_gets_a_new_revision_and_unchanged_rows_keep_theirs() {
        let mut state = DashboardState::default();
        state.apply(WsMessage::Snapshot {
            status: snapshot(vec![client("a", "idle"), client("b", "idle")]),
        });
        let before = state.rows();
        state.apply(WsMessage::Changed {
            client: client("a", "replicating"),
        });
        let after = state.rows();
        assert_ne!(before[0].rev, after[0].rev);
        assert_eq!(after[0].client.status, "replicating");
        assert_eq!(before[1], after[1]);
        assert_eq!(state.total_clients, 2, "a change is not an addition");

        // A resync with identical content keeps every revision.
        state.apply(WsMessage::Snapshot {
            status: snapshot(vec![client("a", "replicating"), client("b", "idle")]),
        });
        assert_eq!(state.rows(), after);
    }

    #[test]
    fn late_http_status_does_not_roll_back_a_websocket_snapshot() {
        let mut state = DashboardState::default();
        state.apply(WsMessage::Snapshot {
            status: snapshot(vec![client("new", "starting")]),
        });
        state.apply_http_status(snapshot(vec![]));
        assert_eq!(ids(&state), ["new"]);

        let mut fresh = DashboardState::default();
        assert!(!fresh.loaded);
        fresh.apply_http_status(snapshot(vec![client("x", "idle")]));
        assert!(fresh.loaded);
        assert_eq!(ids(&fresh), ["x"]);
    }

    #[test]
    fn summary_overrides_totals() {
        let mut state = DashboardState::default();
        state.apply(WsMessage::Added {
            client: client("a", "idle"),
        });
        state.apply(WsMessage::Summary {
            total_clients: 7,
            active_clients: 3,
            uptime: "2m0s".into(),
            uptime_seconds: 120,
            s3_status: "ok".into(),
            error_clients: 0,
            worst_lag_seconds: None,
            bytes_uploaded: 0,
        });
        assert_eq!((state.total_clients, state.active_clients), (7, 3));
        assert_eq!(state.uptime, "2m0s");
    }

    #[test]
    fn connection_texts_are_what_the_tests_read() {
        assert_eq!(Connection::Connecting.as_str(), "connecting");
        assert_eq!(Connection::Live.as_str(), "live");
        assert_eq!(Connection::Offline.as_str(), "offline");
    }
}
