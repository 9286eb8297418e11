//! The dashboard page: header with version and connection state, the summary cards and the
//! client table.
//!
//! All live data sits in two signals owned by [`App`]: the [`DashboardState`] and the
//! [`Connection`]. In the browser (`csr`) the `live` module feeds them; on the server the
//! component renders with empty state and is only compiled, never mounted.

use leptos::prelude::*;

use crate::api::ClientStatus;
use crate::server_fns::server_info;
use crate::state::{Connection, DashboardState, Row};

/// Placeholder for a value the server has not reported.
const NONE: &str = "—";

#[component]
pub fn App() -> impl IntoView {
    let state = RwSignal::new(DashboardState::default());
    let connection = RwSignal::new(Connection::default());
    #[cfg(feature = "csr")]
    crate::live::start(state, connection);

    view! {
        <Header connection=connection />
        <main>
            <Summary state=state />
            <ClientTable state=state />
        </main>
    }
}

#[component]
fn Header(connection: RwSignal<Connection>) -> impl IntoView {
    let info = LocalResource::new(server_info);
    let version = move || match info.get() {
        Some(Ok(info)) => format!("v{}", info.version),
        Some(Err(_)) => "version unknown".to_string(),
        None => String::new(),
    };
    view! {
        <header class="topbar">
            <h1>"Litestream Manager"</h1>
            <span id="version" class="version">{version}</span>
            <span
                id="connection"
                class=move || format!("connection {}", connection.get().as_str())
                title="WebSocket link to the server"
            >
                {move || connection.get().as_str()}
            </span>
        </header>
    }
}

#[component]
fn Summary(state: RwSignal<DashboardState>) -> impl IntoView {
    let loaded = move || state.with(|s| s.loaded);
    let number = move |n: u64| {
        if loaded() {
            n.to_string()
        } else {
            NONE.to_string()
        }
    };
    let target = move || {
        state.with(|s| {
            if !s.loaded {
                return NONE.to_string();
            }
            match &s.bucket {
                Some(bucket) => format!("{} ({bucket})", s.s3_status),
                None => s.s3_status.clone(),
            }
        })
    };
    let uptime = move || {
        state.with(|s| {
            if s.loaded {
                s.uptime.clone()
            } else {
                NONE.into()
            }
        })
    };
    view! {
        <section class="summary" aria-label="Summary">
            <div class="card">
                <span class="label">"Clients"</span>
                <span id="total-clients" class="value">
                    {move || number(state.with(|s| s.total_clients))}
                </span>
            </div>
            <div class="card">
                <span class="label">"Active"</span>
                <span id="active-clients" class="value">
                    {move || number(state.with(|s| s.active_clients))}
                </span>
            </div>
            <div class="card">
                <span class="label">"Target"</span>
                <span id="target-status" class="value">{target}</span>
            </div>
            <div class="card">
                <span class="label">"Uptime"</span>
                <span id="uptime" class="value">{uptime}</span>
            </div>
        </section>
    }
}

#[component]
fn ClientTable(state: RwSignal<DashboardState>) -> impl IntoView {
    let empty = move || state.with(|s| s.loaded && s.rows().is_empty());
    view! {
        <section class="clients" aria-label="Clients">
            <table id="clients">
                <thead>
                    <tr>
                        <th>"Client"</th>
                        <th>"State"</th>
                        <th class="num">"Local TXID"</th>
                        <th class="num">"Replicated TXID"</th>
                        <th class="num">"Lag"</th>
                        <th>"Last error"</th>
                    </tr>
                </thead>
                <tbody>
                    <For
                        each=move || state.with(DashboardState::rows)
                        key=|row| (row.client.client_id.clone(), row.rev)
                        children=|row: Row| view! { <ClientRow client=row.client /> }
                    />
                </tbody>
            </table>
            <Show when=empty>
                <p id="no-clients" class="empty">"No client databases in the watched directories yet."</p>
            </Show>
        </section>
    }
}

#[component]
fn ClientRow(client: ClientStatus) -> impl IntoView {
    let ClientStatus {
        client_id,
        database_path,
        status,
        local_txid,
        replicated_txid,
        lag_seconds,
        last_error,
        ..
    } = client;
    let state_class = format!("state state-{status}");
    view! {
        <tr class="client-row" data-client-id=client_id.clone() data-state=status.clone()>
            <td class="client-id">
                <code>{client_id.clone()}</code>
                <div class="path">{database_path}</div>
            </td>
            <td>
                <span class=state_class>{status.clone()}</span>
            </td>
            <td class="num txid local-txid">{local_txid.unwrap_or_else(|| NONE.into())}</td>
            <td class="num txid replicated-txid">
                {replicated_txid.unwrap_or_else(|| NONE.into())}
            </td>
            <td class="num lag">{format_lag(lag_seconds)}</td>
            <td class="last-error">{last_error.unwrap_or_default()}</td>
        </tr>
    }
}

/// `0.25` → `"250 ms"`, `12.3` → `"12.3 s"`, `None` → `"—"`.
fn format_lag(lag_seconds: Option<f64>) -> String {
    match lag_seconds {
        None => NONE.into(),
        Some(s) if !s.is_finite() || s < 0.0 => NONE.into(),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) if s < 60.0 => format!("{s:.1} s"),
        Some(s) => format!("{:.0} min", s / 60.0),
    }
}

#[cfg(test)]
mod tests {
    use super::format_lag;

    #[test]
    fn lag_is_shown_in_a_readable_unit() {
        assert_eq!(format_lag(None), "—");
        assert_eq!(format_lag(Some(0.25)), "250 ms");
        assert_eq!(format_lag(Some(12.34)), "12.3 s");
        assert_eq!(format_lag(Some(600.0)), "10 min");
        assert_eq!(format_lag(Some(f64::NAN)), "—");
    }
}
