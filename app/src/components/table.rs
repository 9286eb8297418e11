//! The tenant table: a toolbar (search, state filter, page controls) and the rows of one page.
//!
//! Every tenant stays in [`DashboardState`]; a [`Memo`] turns it and the [`TableQuery`] into the
//! current [`TablePage`], so only up to [`PAGE_SIZE`](crate::state::PAGE_SIZE) rows exist in the
//! DOM and a keyed `<For>` redraws just the rows whose revision changed. The lag cells follow
//! the clock (`now`) on their own; the page is re-sorted on each tick only when sorted by lag.

use leptos::prelude::*;

use super::format::{format_bytes, format_lag, format_time, NONE};
use crate::api::ClientStatus;
use crate::state::{DashboardState, Row, SortKey, TablePage, TableQuery, STATES};

#[component]
pub fn ClientTable(
    state: RwSignal<DashboardState>,
    query: RwSignal<TableQuery>,
    selected: RwSignal<Option<String>>,
    now: RwSignal<Option<f64>>,
) -> impl IntoView {
    let page = Memo::new(move |_| {
        state.with(|s| {
            query.with(|q| {
                let now = if q.sort == SortKey::Lag {
                    now.get()
                } else {
                    now.get_untracked()
                };
                s.page_at(q, now)
            })
        })
    });
    let no_clients = move || state.with(|s| s.loaded && s.client_count() == 0);
    let no_matches = move || page.with(|p| p.total > 0 && p.matched == 0);
    view! {
        <section class="clients" aria-label="Tenants">
            <Toolbar state=state query=query page=page />
            <div class="table-wrap">
                <table id="clients">
                    <thead>
                        <tr>
                            <SortHeader label="Tenant" key=SortKey::Id query=query class="" />
                            <th>"State"</th>
                            <th class="num">"Local TXID"</th>
                            <th class="num">"Replicated TXID"</th>
                            <SortHeader label="Lag" key=SortKey::Lag query=query class="num" />
                            <SortHeader
                                label="Last sync"
                                key=SortKey::LastSync
                                query=query
                                class="num"
                            />
                            <SortHeader
                                label="Uploaded"
                                key=SortKey::Bytes
                                query=query
                                class="num"
                            />
                        </tr>
                    </thead>
                    <tbody>
                        <For
                            each=move || page.with(|p| p.rows.clone())
                            key=|row| (row.client.client_id.clone(), row.rev)
                            children=move |row: Row| {
                                view! { <ClientRow row=row state=state selected=selected now=now /> }
                            }
                        />
                    </tbody>
                </table>
            </div>
            <Show when=no_clients>
                <p id="no-clients" class="empty">
                    "No client databases in the watched directories yet."
                </p>
            </Show>
            <Show when=no_matches>
                <p id="no-matches" class="empty">"No tenant matches the search and filter."</p>
            </Show>
        </section>
    }
}

#[component]
fn Toolbar(
    state: RwSignal<DashboardState>,
    query: RwSignal<TableQuery>,
    page: Memo<TablePage>,
) -> impl IntoView {
    let counts = Memo::new(move |_| state.with(DashboardState::state_counts));
    let go = move |to: fn(&TablePage) -> usize| {
        move |_| {
            let target = page.with_untracked(to);
            query.update(|q| q.page = target);
        }
    };
    view! {
        <div class="toolbar">
            <input
                id="client-search"
                type="search"
                placeholder="Search id or path"
                aria-label="Search tenants by id or path"
                autocomplete="off"
                spellcheck="false"
                prop:value=move || query.with(|q| q.search.clone())
                on:input=move |ev| query.update(|q| q.set_search(event_target_value(&ev)))
            />
            <select
                id="state-filter"
                aria-label="Filter by state"
                prop:value=move || query.with(|q| q.status.clone().unwrap_or_default())
                on:change=move |ev| query.update(|q| q.set_status(&event_target_value(&ev)))
            >
                <option value="">
                    {move || state.with(|s| format!("All states ({})", s.client_count()))}
                </option>
                {STATES
                    .iter()
                    .map(|name| {
                        let label = move || {
                            let n = counts.with(|c| c.get(*name).copied().unwrap_or(0));
                            format!("{name} ({n})")
                        };
                        view! { <option value=*name>{label}</option> }
                    })
                    .collect_view()}
            </select>
            <nav class="pager" aria-label="Pages">
                <span id="page-range" class="range">{move || page.with(TablePage::range_text)}</span>
                <button
                    id="page-first"
                    title="First page"
                    disabled=move || !page.with(TablePage::has_prev)
                    on:click=go(|_| 0)
                >
                    "«"
                </button>
                <button
                    id="page-prev"
                    title="Previous page"
                    disabled=move || !page.with(TablePage::has_prev)
                    on:click=go(|p| p.page.saturating_sub(1))
                >
                    "‹ Prev"
                </button>
                <span id="page-number" class="page-number">
                    {move || page.with(|p| format!("Page {} / {}", p.page + 1, p.pages))}
                </span>
                <button
                    id="page-next"
                    title="Next page"
                    disabled=move || !page.with(TablePage::has_next)
                    on:click=go(|p| (p.page + 1).min(p.pages - 1))
                >
                    "Next ›"
                </button>
                <button
                    id="page-last"
                    title="Last page"
                    disabled=move || !page.with(TablePage::has_next)
                    on:click=go(|p| p.pages - 1)
                >
                    "»"
                </button>
            </nav>
        </div>
    }
}

/// A column header that sorts the table; a second click reverses the order.
#[component]
fn SortHeader(
    label: &'static str,
    key: SortKey,
    query: RwSignal<TableQuery>,
    class: &'static str,
) -> impl IntoView {
    let aria_sort = move || {
        query.with(|q| match (q.sort == key, q.descending) {
            (false, _) => "none",
            (true, false) => "ascending",
            (true, true) => "descending",
        })
    };
    let arrow = move || {
        query.with(|q| match (q.sort == key, q.descending) {
            (false, _) => "",
            (true, false) => " ▲",
            (true, true) => " ▼",
        })
    };
    view! {
        <th class=class aria-sort=aria_sort>
            <button
                class="sort"
                data-sort=format!("{key:?}")
                on:click=move |_| query.update(|q| q.toggle_sort(key))
            >
                {label}
                <span class="arrow" aria-hidden="true">{arrow}</span>
            </button>
        </th>
    }
}

#[component]
fn ClientRow(
    row: Row,
    state: RwSignal<DashboardState>,
    selected: RwSignal<Option<String>>,
    now: RwSignal<Option<f64>>,
) -> impl IntoView {
    // The only cell that changes between revisions: redrawn every clock tick.
    let lag = {
        let row = row.clone();
        move || {
            let server_now = now.get().map(|n| state.with_untracked(|s| s.server_now(n)));
            format_lag(row.lag_at(server_now))
        }
    };
    let pending_title = row
        .client
        .pending_since
        .as_ref()
        .map(|t| format!("changes pending since {t}"))
        .unwrap_or_default();
    let ClientStatus {
        client_id,
        database_path,
        status,
        local_txid,
        replicated_txid,
        last_sync_at,
        bytes_uploaded,
        objects_uploaded,
        last_error,
        ..
    } = row.client;
    let is_selected = {
        let id = client_id.clone();
        move || selected.with(|s| s.as_deref() == Some(id.as_str()))
    };
    let open = {
        let id = client_id.clone();
        move |_| selected.set(Some(id.clone()))
    };
    let state_class = format!("state state-{status}");
    let sync_title = last_sync_at.clone().unwrap_or_default();
    let (row_id, row_state) = (client_id.clone(), status.clone());
    let has_error = last_error.is_some();
    view! {
        <tr
            class="client-row"
            class:selected=is_selected
            class:has-error=has_error
            data-client-id=row_id
            data-state=row_state
            on:click=open
        >
            <td class="client-id">
                <button class="link open-detail" title="Show details and restore commands">
                    <code>{client_id}</code>
                </button>
                <div class="path">{database_path}</div>
            </td>
            <td class="state-cell">
                <span class=state_class>{status}</span>
                {last_error.map(|e| view! { <div class="last-error">{e}</div> })}
            </td>
            <td class="num txid local-txid">{local_txid.unwrap_or_else(|| NONE.into())}</td>
            <td class="num txid replicated-txid">
                {replicated_txid.unwrap_or_else(|| NONE.into())}
            </td>
            <td class="num lag" title=pending_title>{lag}</td>
            <td class="num last-sync" title=sync_title>
                {format_time(last_sync_at.as_deref())}
            </td>
            <td class="num bytes" title=format!("{bytes_uploaded} bytes in {objects_uploaded} objects")>
                {format_bytes(bytes_uploaded)}
            </td>
        </tr>
    }
}
