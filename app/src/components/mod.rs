//! The dashboard page: header with version and connection state, the summary cards, the tenant
//! table and the detail panel of the selected tenant.
//!
//! All live data sits in signals owned by [`App`]: the [`DashboardState`], the [`Connection`],
//! the table's [`TableQuery`], the selected tenant and the browser's clock (`now`, seconds since
//! the epoch, ticking every second, from which the lags are shown live). In the browser (`csr`)
//! the `live` module feeds the state, the connection and the clock; on the server the component
//! renders with empty state and is only compiled, never mounted.
//!
//! # Layout
//! - [`summary`]: the cards above the table.
//! - [`table`]: toolbar (search, state filter, pages) and the rows of the current page.
//! - [`detail`]: the panel of one tenant (`GET /api/clients/{id}`), with its LTX chart.
//! - [`format`]: how lags, sizes and times read.

mod detail;
mod format;
mod summary;
mod table;

use leptos::prelude::*;

use crate::server_fns::server_info;
use crate::state::{Connection, DashboardState, TableQuery};

#[component]
pub fn App() -> impl IntoView {
    let state = RwSignal::new(DashboardState::default());
    let connection = RwSignal::new(Connection::default());
    let query = RwSignal::new(TableQuery::default());
    // The client id whose detail panel is open.
    let selected = RwSignal::new(None::<String>);
    // `None` on the server: lags are then shown as sent.
    let now = RwSignal::new(None::<f64>);
    #[cfg(feature = "csr")]
    {
        crate::live::start(state, connection);
        crate::live::start_clock(now);
    }

    view! {
        <Header connection=connection />
        <main
            class:with-detail=move || selected.with(Option::is_some)
            class:stale=move || connection.get() == Connection::Offline
        >
            <summary::Summary state=state now=now />
            <table::ClientTable state=state query=query selected=selected now=now />
        </main>
        <detail::DetailPanel state=state selected=selected now=now />
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
    let title = move || match connection.get() {
        Connection::Live => "WebSocket open: changes appear as they happen",
        Connection::Connecting => "Opening the WebSocket to the server…",
        Connection::Offline => {
            "Connection lost: reconnecting with backoff; the figures below may be stale"
        }
    };
    view! {
        <header class="topbar">
            <h1>"Litestream Manager"</h1>
            <span id="version" class="version">{version}</span>
            <span
                id="connection"
                class=move || format!("connection {}", connection.get().as_str())
                title=title
                role="status"
                aria-live="polite"
            >
                {move || connection.get().as_str()}
            </span>
        </header>
    }
}
