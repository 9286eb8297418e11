//! What the dashboard shows and how each server message changes it.
//!
//! Pure data, no Leptos: the component keeps one [`DashboardState`] in a signal and calls
//! [`DashboardState::apply`] for every `/ws` message. Invariant: once a `/ws` snapshot has been
//! applied, the answer of the initial `GET /api/status` (which may have been computed earlier)
//! is ignored, so a slow fetch can never roll the page back.
//!
//! The table keeps every tenant in the page (the `/ws` snapshot carries all of them) and renders
//! one page: [`DashboardState::page`] filters, sorts and cuts it for a [`TableQuery`], touching
//! only references and cloning the [`PAGE_SIZE`] rows it returns, so 10,000 tenants cost a few
//! milliseconds per update. [`parse_detail`] reads `GET /api/clients/{id}` leniently, so a
//! server that still answers a bare [`ClientStatus`] shows what it has.
//!
//! Lags are shown live: a row whose changes are pending carries `pendingSince`, and the page
//! computes `now − pendingSince` on the server's clock (the offset to the browser's clock is
//! estimated from the rows, see [`DashboardState::apply_at`]), so a stuck tenant's lag keeps
//! growing on screen although the server sends no message for it.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::api::{
    ClientStatus, LevelFiles, RestoreCommands, RestoreWindow, StatusResponse, WsMessage,
};

/// Rows per table page: enough to scan, small enough that a page renders in one frame.
pub const PAGE_SIZE: usize = 100;

/// Every state a tenant can be in, in the order the state filter lists them.
pub const STATES: [&str; 6] = [
    ClientStatus::REPLICATING,
    ClientStatus::IDLE,
    ClientStatus::SNAPSHOTTING,
    ClientStatus::ERROR,
    ClientStatus::REMOVED,
    ClientStatus::STARTING,
];

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
    /// `client.pending_since` in seconds since the epoch (server clock), parsed once.
    pub pending_since: Option<f64>,
}

impl Row {
    /// The lag at `server_now` (seconds since the epoch on the server's clock): the time since
    /// `pendingSince`, never less than the `lagSeconds` the server sent; `lagSeconds` as sent
    /// when there is no time or nothing is pending.
    pub fn lag_at(&self, server_now: Option<f64>) -> Option<f64> {
        match (self.pending_since, server_now) {
            (Some(since), Some(now)) => {
                let live = (now - since).max(0.0);
                Some(self.client.lag_seconds.map_or(live, |l| l.max(live)))
            }
            _ => self.client.lag_seconds,
        }
    }
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
    /// The server's figures from the last snapshot or summary. The cards show [`Self::totals`]
    /// instead: computed from the rows, it is exact between summaries, which the server sends
    /// only when tenants come or go and every few seconds.
    pub error_clients: u64,
    pub worst_lag_seconds: Option<f64>,
    pub bytes_uploaded: u64,
    /// Files in the watch directories that are not tenants, and tenant files skipped because
    /// another file owns their id (their paths), from the last snapshot or summary.
    pub ignored_files: u64,
    pub duplicate_files: Vec<String>,
    /// Whether any status (HTTP or WebSocket) has arrived yet.
    pub loaded: bool,
    /// Whether a `/ws` snapshot has been applied: from then on HTTP answers are stale.
    ws_synced: bool,
    /// Sorted by client id, so the table order is stable.
    clients: BTreeMap<String, Row>,
    next_rev: u64,
    /// Server clock minus browser clock, seconds: the largest `pendingSince + lagSeconds −
    /// received` over the rows received since the last snapshot (transit only makes a sample
    /// smaller). `None` until a row with something pending arrived.
    clock_offset: Option<f64>,
    /// Browser time of the message being applied (set by [`Self::apply_at`]).
    received_at: Option<f64>,
}

impl DashboardState {
    /// The answer of `GET /api/status`; ignored once the WebSocket has delivered a snapshot.
    pub fn apply_http_status(&mut self, status: StatusResponse) {
        if !self.ws_synced {
            self.replace(status);
        }
    }

    /// One message from `/ws`, received at browser time `now` (seconds since the epoch): the
    /// rows it carries also refine the estimate of the server's clock for the live lags.
    pub fn apply_at(&mut self, msg: WsMessage, now: f64) {
        self.received_at = Some(now).filter(|t| t.is_finite());
        self.apply(msg);
        self.received_at = None;
    }

    /// The server's clock at browser time `now`, as far as the rows tell; `now` itself before
    /// any row with something pending arrived.
    pub fn server_now(&self, now: f64) -> f64 {
        now + self.clock_offset.unwrap_or(0.0)
    }

    /// One message from `/ws`.
    pub fn apply(&mut self, msg: WsMessage) {
        match msg {
            WsMessage::Snapshot { status } => {
                self.ws_synced = true;
                self.clock_offset = None;
                self.replace(status);
            }
            WsMessage::Batch { messages } => {
                for m in messages {
                    self.apply(m);
                }
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
                error_clients,
                worst_lag_seconds,
                bytes_uploaded,
                ignored_files,
                duplicate_files,
            } => {
                self.total_clients = total_clients;
                self.active_clients = active_clients;
                self.uptime = uptime;
                self.s3_status = s3_status;
                self.error_clients = error_clients;
                self.worst_lag_seconds = worst_lag_seconds;
                self.bytes_uploaded = bytes_uploaded;
                self.ignored_files = ignored_files;
                self.duplicate_files = duplicate_files;
            }
        }
    }

    /// The rows in client-id order.
    pub fn rows(&self) -> Vec<Row> {
        self.clients.values().cloned().collect()
    }

    /// How many tenants the page knows.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// [`Self::totals_at`] with the lags as the server sent them.
    pub fn totals(&self) -> Totals {
        self.totals_at(None)
    }

    /// Errors, worst lag and bytes uploaded over every tenant the page holds (all of them: the
    /// `/ws` snapshot carries every tenant and the deltas keep them current). Lags are live at
    /// browser time `now` (see [`Row::lag_at`]). The worst lag is the larger of the rows' and
    /// the last summary's.
    pub fn totals_at(&self, now: Option<f64>) -> Totals {
        let server_now = now.map(|n| self.server_now(n));
        let mut totals = Totals {
            worst_lag_seconds: self.worst_lag_seconds.filter(|l| l.is_finite()),
            ..Totals::default()
        };
        for row in self.clients.values() {
            let c = &row.client;
            if c.status == ClientStatus::ERROR {
                totals.error_clients += 1;
            }
            if let Some(lag) = row.lag_at(server_now).filter(|l| l.is_finite()) {
                totals.worst_lag_seconds =
                    Some(totals.worst_lag_seconds.map_or(lag, |w| w.max(lag)));
            }
            totals.bytes_uploaded += c.bytes_uploaded;
        }
        totals
    }

    /// Tenants per state name (only states that occur).
    pub fn state_counts(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for row in self.clients.values() {
            *counts.entry(row.client.status.as_str()).or_insert(0) += 1;
        }
        counts
            .into_iter()
            .map(|(state, n)| (state.to_string(), n))
            .collect()
    }

    /// [`Self::page_at`] with the lags as the server sent them.
    pub fn page(&self, query: &TableQuery) -> TablePage {
        self.page_at(query, None)
    }

    /// The rows `query` selects: filtered, sorted (lags live at browser time `now`), and cut to
    /// its page (clamped to the last page, so a shrinking table never leaves the view past its
    /// end).
    pub fn page_at(&self, query: &TableQuery, now: Option<f64>) -> TablePage {
        let server_now = now.map(|n| self.server_now(n));
        let needle = query.search.trim().to_lowercase();
        let mut matched: Vec<&Row> = self
            .clients
            .values()
            .filter(|row| {
                query
                    .status
                    .as_deref()
                    .is_none_or(|s| row.client.status == s)
            })
            .filter(|row| {
                needle.is_empty()
                    || contains_ci(&row.client.client_id, &needle)
                    || contains_ci(&row.client.database_path, &needle)
            })
            .collect();
        // Rows arrive in id order; the sort is stable, so equal keys stay in id order.
        match query.sort {
            SortKey::Id => {
                if query.descending {
                    matched.reverse();
                }
            }
            SortKey::Lag => {
                sort_by_option(&mut matched, query.descending, |r| r.lag_at(server_now))
            }
            SortKey::LastSync => sort_by_option(&mut matched, query.descending, |r| {
                r.client.last_sync_at.as_deref().and_then(parse_rfc3339)
            }),
            SortKey::Bytes => sort_by_option(&mut matched, query.descending, |r| {
                Some(r.client.bytes_uploaded as f64)
            }),
        }
        let size = query.page_size.max(1);
        let pages = matched.len().div_ceil(size).max(1);
        let page = query.page.min(pages - 1);
        let start = (page * size).min(matched.len());
        let end = (start + size).min(matched.len());
        TablePage {
            rows: matched[start..end].iter().map(|r| (*r).clone()).collect(),
            matched: matched.len(),
            total: self.clients.len(),
            page,
            pages,
            first: if end > start { start + 1 } else { 0 },
            last: end,
        }
    }

    pub fn client(&self, client_id: &str) -> Option<&ClientStatus> {
        self.clients.get(client_id).map(|row| &row.client)
    }

    pub fn row(&self, client_id: &str) -> Option<&Row> {
        self.clients.get(client_id)
    }

    fn replace(&mut self, status: StatusResponse) {
        self.loaded = true;
        self.bucket = status.bucket;
        self.watch_dirs = status.watch_dirs;
        self.total_clients = status.total_clients;
        self.active_clients = status.active_clients;
        self.uptime = status.uptime;
        self.s3_status = status.s3_status;
        self.error_clients = status.error_clients;
        self.worst_lag_seconds = status.worst_lag_seconds;
        self.bytes_uploaded = status.bytes_uploaded;
        self.ignored_files = status.ignored_files;
        self.duplicate_files = status.duplicate_files;
        let mut old = std::mem::take(&mut self.clients);
        for client in status.clients {
            // Keep the revision of unchanged rows so a resync does not redraw the whole table.
            let row = match old.remove(&client.client_id) {
                Some(row) if row.client == client => {
                    self.observe_clock(&row);
                    row
                }
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
        let row = Row {
            rev: self.next_rev,
            pending_since: client.pending_since.as_deref().and_then(parse_rfc3339),
            client,
        };
        self.observe_clock(&row);
        row
    }

    /// A row just received says what the server's clock read when it serialized the row:
    /// `pendingSince + lagSeconds`.
    fn observe_clock(&mut self, row: &Row) {
        if let (Some(at), Some(since), Some(lag)) =
            (self.received_at, row.pending_since, row.client.lag_seconds)
        {
            let sample = since + lag - at;
            if sample.is_finite() {
                self.clock_offset = Some(self.clock_offset.map_or(sample, |o| o.max(sample)));
            }
        }
    }
}

/// Server-wide figures of the summary cards, see [`DashboardState::totals`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub error_clients: u64,
    /// `None` when no tenant reports a lag.
    pub worst_lag_seconds: Option<f64>,
    pub bytes_uploaded: u64,
}

/// A sortable column of the tenant table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Id,
    Lag,
    LastSync,
    /// Bytes uploaded since start.
    Bytes,
}

impl SortKey {
    /// The direction a first click on the column picks: ids A→Z, the rest largest/newest first
    /// (the worst lag is what an operator looks for).
    pub fn default_descending(self) -> bool {
        !matches!(self, SortKey::Id)
    }
}

/// What the operator asked the table for: search, state filter, sort and page.
#[derive(Clone, Debug, PartialEq)]
pub struct TableQuery {
    /// Case-insensitive substring of the client id or the database path; blank = all.
    pub search: String,
    /// A state name of [`STATES`]; `None` = every state.
    pub status: Option<String>,
    pub sort: SortKey,
    pub descending: bool,
    /// 0-based; [`DashboardState::page`] clamps it to the last page.
    pub page: usize,
    pub page_size: usize,
}

impl Default for TableQuery {
    fn default() -> Self {
        TableQuery {
            search: String::new(),
            status: None,
            sort: SortKey::Id,
            descending: false,
            page: 0,
            page_size: PAGE_SIZE,
        }
    }
}

impl TableQuery {
    /// A new search starts on the first page.
    pub fn set_search(&mut self, search: String) {
        self.search = search;
        self.page = 0;
    }

    /// `""` or an unknown name = every state. A new filter starts on the first page.
    pub fn set_status(&mut self, status: &str) {
        self.status = STATES.iter().find(|s| **s == status).map(|s| s.to_string());
        self.page = 0;
    }

    /// A click on a column header: the same column flips its direction, another one sorts by
    /// it in its default direction. Either way the view goes back to the first page.
    pub fn toggle_sort(&mut self, key: SortKey) {
        if self.sort == key {
            self.descending = !self.descending;
        } else {
            self.sort = key;
            self.descending = key.default_descending();
        }
        self.page = 0;
    }
}

/// One rendered page of the table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TablePage {
    pub rows: Vec<Row>,
    /// Tenants that pass the search and the state filter.
    pub matched: usize,
    /// All tenants the page knows.
    pub total: usize,
    /// 0-based, already clamped: `page < pages`.
    pub page: usize,
    /// At least 1, even when nothing matches.
    pub pages: usize,
    /// 1-based position of the first row shown; 0 when the page is empty.
    pub first: usize,
    /// 1-based position of the last row shown; 0 when the page is empty.
    pub last: usize,
}

impl TablePage {
    /// `"101–150 of 150"`, `"0 of 0"`; says how many tenants a filter hides.
    pub fn range_text(&self) -> String {
        let range = if self.matched == 0 {
            "0".to_string()
        } else {
            format!("{}–{}", self.first, self.last)
        };
        if self.matched == self.total {
            format!("{range} of {}", self.matched)
        } else {
            format!("{range} of {} (filtered from {})", self.matched, self.total)
        }
    }

    pub fn has_prev(&self) -> bool {
        self.page > 0
    }

    pub fn has_next(&self) -> bool {
        self.page + 1 < self.pages
    }
}

/// Whether `hay` contains `needle_lower` (already lowercase), ignoring case; allocation-free
/// for ASCII, which every client id and almost every path is.
fn contains_ci(hay: &str, needle_lower: &str) -> bool {
    if hay.is_ascii() && needle_lower.is_ascii() {
        let (h, n) = (hay.as_bytes(), needle_lower.as_bytes());
        n.len() <= h.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
    } else {
        hay.to_lowercase().contains(needle_lower)
    }
}

/// Stable sort by a numeric key; rows without a value go last in either direction.
fn sort_by_option(rows: &mut Vec<&Row>, descending: bool, key: impl Fn(&Row) -> Option<f64>) {
    let mut keyed: Vec<(Option<f64>, &Row)> = rows.iter().map(|r| (key(r), *r)).collect();
    keyed.sort_by(|(a, _), (b, _)| match (a, b) {
        (Some(a), Some(b)) => {
            let ord = a.partial_cmp(b).unwrap_or(Ordering::Equal);
            if descending {
                ord.reverse()
            } else {
                ord
            }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
    *rows = keyed.into_iter().map(|(_, r)| r).collect();
}

/// Seconds since the Unix epoch of an RFC 3339 time (`2026-11-29T13:59:18.123Z`,
/// `...+02:00`); `None` when it is not one. Enough of RFC 3339 for the server's timestamps,
/// without a date crate in the wasm.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(after_dot) = rest.strip_prefix('.') {
        let digits = after_dot.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        frac = format!("0.{}", &after_dot[..digits]).parse().ok()?;
        rest = &after_dot[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || ob[3] != b':' || !matches!(ob[0], b'+' | b'-') {
                return None;
            }
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let sign = if ob[0] == b'-' { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(secs as f64 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `GET /api/clients/{id}` as the detail panel shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detail {
    pub client: ClientStatus,
    /// `None` while nothing is replicated, or when the server does not report it.
    pub restore_window: Option<RestoreWindow>,
    /// Empty when nothing is replicated or the server does not report the files.
    pub levels: Vec<LevelFiles>,
    /// `None` when the server sent none and no replica URL is known to derive them from.
    pub restore_commands: Option<RestoreCommands>,
    /// The commands were built here from `s3Path` because the server did not send them.
    pub commands_derived: bool,
}

/// Why the detail could not be shown.
#[derive(Clone, Debug, PartialEq)]
pub enum DetailError {
    /// 404: the tenant is gone (its database file was removed; its replica stays).
    NotFound,
    Other(String),
}

/// Reads a [`crate::api::ClientDetail`] body field by field: the tenant's [`ClientStatus`] is
/// required, every other part is optional, so an older server that answers only the status
/// still gets a panel (with restore commands derived from its replica URL).
pub fn parse_detail(text: &str) -> Result<Detail, DetailError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DetailError::Other(e.to_string()))?;
    let client =
        ClientStatus::deserialize(&value).map_err(|e| DetailError::Other(e.to_string()))?;
    fn field<T: for<'de> Deserialize<'de>>(value: &serde_json::Value, name: &str) -> Option<T> {
        value.get(name).and_then(|v| T::deserialize(v).ok())
    }
    let restore_window = field::<Option<RestoreWindow>>(&value, "restoreWindow").flatten();
    let levels = field::<Vec<LevelFiles>>(&value, "levels").unwrap_or_default();
    let mut commands_derived = false;
    let restore_commands = field::<RestoreCommands>(&value, "restoreCommands")
        .filter(|c| !c.litestream.is_empty() || !c.manager.is_empty())
        .or_else(|| {
            (!client.s3_path.is_empty()).then(|| {
                commands_derived = true;
                RestoreCommands {
                    litestream: format!("litestream restore -o restored.db {}", client.s3_path),
                    manager: format!(
                        "litestream-manager restore -o restored.db {}",
                        client.s3_path
                    ),
                }
            })
        });
    Ok(Detail {
        client,
        restore_window,
        levels,
        restore_commands,
        commands_derived,
    })
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
            ignored_files: 0,
            duplicate_files: vec![],
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
    fn tenant(id: &str, path: &str, status: &str, lag: Option<f64>, bytes: u64) -> ClientStatus {
        ClientStatus {
            client_id: id.into(),
            database_path: path.into(),
            status: status.into(),
            lag_seconds: lag,
            bytes_uploaded: bytes,
            ..ClientStatus::default()
        }
    }

    fn state_with(clients: Vec<ClientStatus>) -> DashboardState {
        let mut state = DashboardState::default();
        state.apply(WsMessage::Snapshot {
            status: snapshot(clients),
        });
        state
    }

    fn page_ids(page: &TablePage) -> Vec<&str> {
        page.rows
            .iter()
            .map(|r| r.client.client_id.as_str())
            .collect()
    }

    #[test]
    fn search_matches_id_or_path_case_insensitively() {
        let state = state_with(vec![
            tenant("aaaa-1111", "/data/clients/aaaa-1111.db", "idle", None, 0),
            tenant("bbbb-2222", "/data/Archive/bbbb-2222.db", "idle", None, 0),
            tenant("cccc-3333", "/data/clients/cccc-3333.db", "error", None, 0),
        ]);
        let mut q = TableQuery::default();
        q.set_search("BBBB".into());
        assert_eq!(page_ids(&state.page(&q)), ["bbbb-2222"]);
        q.set_search("  archive ".into());
        assert_eq!(page_ids(&state.page(&q)), ["bbbb-2222"]);
        q.set_search("clients/".into());
        assert_eq!(page_ids(&state.page(&q)), ["aaaa-1111", "cccc-3333"]);
        q.set_search("zzz".into());
        let page = state.page(&q);
        assert!(page.rows.is_empty());
        assert_eq!(page.range_text(), "0 of 0 (filtered from 3)");
        // Non-ASCII paths fold case too.
        let state = state_with(vec![tenant("d", "/DATA/Ärger.db", "idle", None, 0)]);
        q.set_search("ärger".into());
        assert_eq!(page_ids(&state.page(&q)), ["d"]);
    }

    #[test]
    fn state_filter_keeps_only_that_state_and_unknown_names_mean_all() {
        let state = state_with(vec![
            tenant("a", "", "idle", None, 0),
            tenant("b", "", "error", None, 0),
            tenant("c", "", "idle", None, 0),
        ]);
        let mut q = TableQuery::default();
        q.set_status("error");
        assert_eq!(page_ids(&state.page(&q)), ["b"]);
        q.set_status("idle");
        assert_eq!(page_ids(&state.page(&q)), ["a", "c"]);
        q.set_status("");
        assert_eq!(q.status, None);
        assert_eq!(page_ids(&state.page(&q)), ["a", "b", "c"]);
        q.set_status("bogus");
        assert_eq!(q.status, None);
        assert_eq!(state.state_counts().get("idle"), Some(&2));
    }

    #[test]
    fn sorting_puts_missing_values_last_in_both_directions() {
        let mut last_synced = tenant("c", "", "idle", Some(0.2), 30);
        last_synced.last_sync_at = Some("2026-11-29T10:00:02Z".into());
        let mut early = tenant("a", "", "idle", Some(5.0), 10);
        early.last_sync_at = Some("2026-11-29T10:00:01.5Z".into());
        let state = state_with(vec![
            early,
            tenant("b", "", "starting", None, 20),
            last_synced,
        ]);
        let mut q = TableQuery::default();
        assert_eq!(page_ids(&state.page(&q)), ["a", "b", "c"]);
        q.toggle_sort(SortKey::Id);
        assert!(q.descending);
        assert_eq!(page_ids(&state.page(&q)), ["c", "b", "a"]);

        q.toggle_sort(SortKey::Lag);
        assert!(q.descending, "worst lag first");
        assert_eq!(page_ids(&state.page(&q)), ["a", "c", "b"]);
        q.toggle_sort(SortKey::Lag);
        assert_eq!(page_ids(&state.page(&q)), ["c", "a", "b"]);

        q.toggle_sort(SortKey::LastSync);
        assert_eq!(page_ids(&state.page(&q)), ["c", "a", "b"]);
        q.toggle_sort(SortKey::Bytes);
        assert_eq!(page_ids(&state.page(&q)), ["c", "b", "a"]);
    }

    #[test]
    fn pages_cut_the_filtered_rows_and_clamp_past_the_end() {
        let clients = (0..250)
            .map(|i| tenant(&format!("id-{i:04}"), "", "idle", None, 0))
            .collect();
        let mut state = state_with(clients);
        let mut q = TableQuery::default();
        let first = state.page(&q);
        assert_eq!(
            (first.rows.len(), first.pages, first.matched),
            (100, 3, 250)
        );
        assert_eq!(first.range_text(), "1–100 of 250");
        assert!(!first.has_prev() && first.has_next());

        q.page = 2;
        let last = state.page(&q);
        assert_eq!(last.rows.len(), 50);
        assert_eq!(last.rows[0].client.client_id, "id-0200");
        assert_eq!(last.range_text(), "201–250 of 250");
        assert!(last.has_prev() && !last.has_next());

        // The table shrinks under the view: the page clamps to the new last page.
        for i in 100..250 {
            state.apply(WsMessage::Removed {
                client_id: format!("id-{i:04}"),
            });
        }
        let clamped = state.page(&q);
        assert_eq!(
            (clamped.page, clamped.pages, clamped.rows.len()),
            (0, 1, 100)
        );

        // A new search goes back to the first page.
        q.page = 5;
        q.set_search("id-00".into());
        assert_eq!(q.page, 0);
        assert_eq!(state.page(&q).matched, 100);

        let empty = DashboardState::default().page(&TableQuery::default());
        assert_eq!((empty.pages, empty.first, empty.last), (1, 0, 0));
        assert_eq!(empty.range_text(), "0 of 0");
    }

    #[test]
    fn snapshot_and_summary_carry_the_new_totals() {
        let mut status = snapshot(vec![]);
        status.error_clients = 2;
        status.worst_lag_seconds = Some(3.5);
        status.bytes_uploaded = 1234;
        let mut state = DashboardState::default();
        state.apply(WsMessage::Snapshot { status });
        assert_eq!(state.error_clients, 2);
        assert_eq!(state.worst_lag_seconds, Some(3.5));
        assert_eq!(state.bytes_uploaded, 1234);
        state.apply(WsMessage::Summary {
            total_clients: 0,
            active_clients: 0,
            uptime: "1s".into(),
            uptime_seconds: 1,
            s3_status: "ok".into(),
            error_clients: 0,
            worst_lag_seconds: None,
            bytes_uploaded: 2000,
            ignored_files: 4,
            duplicate_files: vec!["/c/x.sqlite".into()],
        });
        assert_eq!(
            (
                state.error_clients,
                state.worst_lag_seconds,
                state.bytes_uploaded
            ),
            (0, None, 2000)
        );
    }

    #[test]
    fn snapshot_and_summary_carry_ignored_and_duplicate_files() {
        let mut status = snapshot(vec![]);
        status.ignored_files = 2;
        status.duplicate_files = vec!["/c/a.sqlite".into()];
        let mut state = state_with(vec![]);
        state.apply(WsMessage::Snapshot { status });
        assert_eq!(state.ignored_files, 2);
        assert_eq!(state.duplicate_files, ["/c/a.sqlite"]);
        state.apply(WsMessage::Batch {
            messages: vec![WsMessage::Summary {
                total_clients: 0,
                active_clients: 0,
                uptime: "1s".into(),
                uptime_seconds: 1,
                s3_status: "ok".into(),
                error_clients: 0,
                worst_lag_seconds: None,
                bytes_uploaded: 0,
                ignored_files: 3,
                duplicate_files: vec![],
            }],
        });
        assert_eq!((state.ignored_files, state.duplicate_files.len()), (3, 0));
    }

    #[test]
    fn a_batch_applies_its_messages_in_order() {
        let mut state = state_with(vec![tenant("a", "", "idle", None, 0)]);
        state.apply(WsMessage::Batch {
            messages: vec![
                WsMessage::Added {
                    client: tenant("b", "", "starting", None, 0),
                },
                WsMessage::Changed {
                    client: tenant("a", "", "replicating", Some(1.0), 10),
                },
                WsMessage::Removed {
                    client_id: "b".into(),
                },
                WsMessage::Added {
                    client: tenant("c", "", "idle", None, 0),
                },
            ],
        });
        assert_eq!(ids(&state), ["a", "c"]);
        assert_eq!(state.total_clients, 2);
        assert_eq!(state.client("a").unwrap().status, "replicating");
        // An empty batch changes nothing; a nested one is applied like any other message.
        let before = state.clone();
        state.apply(WsMessage::Batch { messages: vec![] });
        assert_eq!(state, before);
        state.apply(WsMessage::Batch {
            messages: vec![WsMessage::Batch {
                messages: vec![WsMessage::Removed {
                    client_id: "c".into(),
                }],
            }],
        });
        assert_eq!(ids(&state), ["a"]);
    }

    fn pending(id: &str, lag: f64, since: &str) -> ClientStatus {
        ClientStatus {
            pending_since: Some(since.into()),
            ..tenant(id, "", "replicating", Some(lag), 0)
        }
    }

    #[test]
    fn lag_grows_live_from_pending_since_on_the_servers_clock() {
        // 2026-11-29T13:59:18Z = 1_795_960_758. The server serialized the row at :20 (lag 2 s);
        // the browser's clock is 100 s behind and received it at (server) :20.
        let t0 = 1_795_960_758.0;
        let browser = |server: f64| server - 100.0;
        let mut state = DashboardState::default();
        state.apply_at(
            WsMessage::Snapshot {
                status: snapshot(vec![
                    pending("stuck", 2.0, "2026-11-29T13:59:18Z"),
                    tenant("quiet", "", "idle", Some(0.0), 0),
                ]),
            },
            browser(t0 + 2.0),
        );
        let now = browser(t0 + 12.0);
        assert_eq!(state.server_now(now), t0 + 12.0);
        let stuck = state.row("stuck").unwrap();
        assert_eq!(stuck.lag_at(Some(state.server_now(now))), Some(12.0));
        assert_eq!(stuck.lag_at(None), Some(2.0), "no clock: as sent");
        let quiet = state.row("quiet").unwrap();
        assert_eq!(quiet.lag_at(Some(state.server_now(now))), Some(0.0));
        assert_eq!(state.totals_at(Some(now)).worst_lag_seconds, Some(12.0));
        assert_eq!(state.totals().worst_lag_seconds, Some(2.0));

        // Sorting by lag uses the live values: "late" was sent with the larger lag, but "stuck"
        // has been pending longer by now.
        state.apply_at(
            WsMessage::Batch {
                messages: vec![WsMessage::Added {
                    client: pending("late", 5.0, "2026-11-29T13:59:21Z"),
                }],
            },
            browser(t0 + 8.0),
        );
        let mut q = TableQuery::default();
        q.toggle_sort(SortKey::Lag);
        assert_eq!(
            page_ids(&state.page_at(&q, Some(now))),
            ["stuck", "late", "quiet"]
        );
        assert_eq!(page_ids(&state.page(&q)), ["late", "stuck", "quiet"]);

        // A row received late (transit) does not pull the clock estimate back.
        state.apply_at(
            WsMessage::Changed {
                client: pending("late", 5.0, "2026-11-29T13:59:21Z"),
            },
            browser(t0 + 30.0),
        );
        assert_eq!(state.server_now(now), t0 + 12.0);
        // A row without pendingSince (an older server) shows its lag as sent.
        let old = state_with(vec![tenant("o", "", "idle", Some(3.0), 0)]);
        assert_eq!(
            old.row("o").unwrap().lag_at(Some(old.server_now(now))),
            Some(3.0)
        );
    }

    #[test]
    fn totals_follow_the_rows_between_summaries() {
        let mut state = state_with(vec![tenant("a", "", "idle", Some(0.5), 100)]);
        assert_eq!(
            state.totals(),
            Totals {
                error_clients: 0,
                worst_lag_seconds: Some(0.5),
                bytes_uploaded: 100
            }
        );
        state.apply(WsMessage::Added {
            client: tenant("b", "", "error", None, 0),
        });
        state.apply(WsMessage::Changed {
            client: tenant("a", "", "replicating", Some(2.0), 300),
        });
        assert_eq!(
            state.totals(),
            Totals {
                error_clients: 1,
                worst_lag_seconds: Some(2.0),
                bytes_uploaded: 300
            }
        );
        assert_eq!(DashboardState::default().totals(), Totals::default());

        // A summary reporting a larger lag (one that grew without a row change) wins.
        state.apply(WsMessage::Summary {
            total_clients: 2,
            active_clients: 1,
            uptime: "5s".into(),
            uptime_seconds: 5,
            s3_status: "ok".into(),
            error_clients: 1,
            worst_lag_seconds: Some(9.0),
            bytes_uploaded: 300,
            ignored_files: 0,
            duplicate_files: vec![],
        });
        assert_eq!(state.totals().worst_lag_seconds, Some(9.0));
    }

    #[test]
    fn rfc3339_parses_the_servers_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("2026-11-29T13:59:18Z"), Some(1_795_960_758.0));
        assert_eq!(
            parse_rfc3339("2026-11-29T13:59:18.5Z"),
            Some(1_795_960_758.5)
        );
        assert_eq!(
            parse_rfc3339("2026-11-29T15:59:18+02:00"),
            Some(1_795_960_758.0)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400.0));
        for bad in [
            "",
            "yesterday",
            "2026-11-29",
            "2026-13-01T00:00:00Z",
            "2026-11-29T13:59:18",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn detail_reads_the_full_shape() {
        let detail = parse_detail(
            r#"{"clientId":"a","databasePath":"/c/a.db","s3Path":"file:///r/a","status":"idle",
                "createdAt":"2026-11-29T15:00:00Z","bytesUploaded":1,"objectsUploaded":1,
                "restoreWindow":{"earliestAt":"2026-11-29T15:00:00Z","latestAt":"2026-11-29T15:01:00Z",
                                 "minTxid":"0000000000000001","maxTxid":"0000000000000002"},
                "levels":[{"level":0,"files":[{"minTxid":"0000000000000001","maxTxid":"0000000000000002",
                           "size":10,"createdAt":"2026-11-29T15:01:00Z"}]}],
                "restoreCommands":{"litestream":"litestream restore -o a.db file:///r/a",
                                   "manager":"litestream-manager restore -o a.db file:///r/a"}}"#,
        )
        .unwrap();
        assert_eq!(detail.client.client_id, "a");
        assert_eq!(detail.restore_window.unwrap().max_txid, "0000000000000002");
        assert_eq!(detail.levels[0].files.len(), 1);
        assert!(!detail.commands_derived);
        assert_eq!(
            detail.restore_commands.unwrap().manager,
            "litestream-manager restore -o a.db file:///r/a"
        );
    }

    #[test]
    fn detail_of_an_older_server_is_the_status_with_derived_commands() {
        let detail = parse_detail(
            r#"{"clientId":"a","databasePath":"/c/a.db","s3Path":"file:///r/a","status":"idle",
                "createdAt":"2026-11-29T15:00:00Z","bytesUploaded":0,"objectsUploaded":0,
                "restoreWindow":null}"#,
        )
        .unwrap();
        assert_eq!(detail.restore_window, None);
        assert!(detail.levels.is_empty());
        assert!(detail.commands_derived);
        let commands = detail.restore_commands.unwrap();
        assert_eq!(
            commands.litestream,
            "litestream restore -o restored.db file:///r/a"
        );
        assert!(matches!(
            parse_detail("not json"),
            Err(DetailError::Other(_))
        ));
        assert!(matches!(
            parse_detail(r#"{"levels":[]}"#),
            Err(DetailError::Other(_))
        ));
    }
}
