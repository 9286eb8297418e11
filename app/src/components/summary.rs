//! The summary cards: tenants, active, in error, worst lag, bytes uploaded, replica target,
//! skipped files and uptime. Element ids are stable (`#total-clients` etc.): the end-to-end tests
//! read them. Errors, worst lag (live, see [`DashboardState::totals_at`]) and bytes come from the
//! rows, always current; the tenant counts, target, skipped files and uptime from the server's
//! snapshot and summaries.

use leptos::prelude::*;

use super::format::{format_bytes, format_lag, NONE};
use crate::state::{DashboardState, Totals};

#[component]
pub fn Summary(state: RwSignal<DashboardState>, now: RwSignal<Option<f64>>) -> impl IntoView {
    // Every card shows "—" until the first status arrives.
    let show = move |f: fn(&DashboardState) -> String| {
        move || state.with(|s| if s.loaded { f(s) } else { NONE.to_string() })
    };
    let target = show(|s| match &s.bucket {
        Some(bucket) => format!("{} ({bucket})", s.s3_status),
        None => s.s3_status.clone(),
    });
    let target_bad = move || {
        state.with(|s| s.loaded && !s.s3_status.is_empty() && !s.s3_status.starts_with("ok"))
    };
    let target_kind = move || {
        state.with(|s| {
            if s.bucket.is_some() {
                "S3 replica"
            } else {
                "Local replica"
            }
        })
    };
    // Once per batch of messages and clock tick, not once per card.
    let totals = Memo::new(move |_| state.with(|s| s.totals_at(now.get())));
    let loaded = move || state.with(|s| s.loaded);
    let total = move |f: fn(&Totals) -> String| {
        move || {
            if loaded() {
                totals.with(f)
            } else {
                NONE.to_string()
            }
        }
    };
    let errors_bad = move || totals.with(|t| t.error_clients > 0);
    let duplicates = move || state.with(|s| s.duplicate_files.len());
    let has_duplicates = move || duplicates() > 0;
    let skipped = show(|s| s.ignored_files.to_string());
    let skipped_detail = move || {
        state.with(|s| match s.duplicate_files.len() {
            0 => String::new(),
            1 => "+ 1 duplicate".to_string(),
            n => format!("+ {n} duplicates"),
        })
    };
    // The tooltip names every duplicate: they are what an operator has to act on.
    let skipped_title = move || {
        state.with(|s| {
            let mut t = format!(
                "{} file name(s) in the watch directories that are not tenant databases \
                 (<uuid>.db, .sqlite, .sqlite3), each logged once.",
                s.ignored_files
            );
            if !s.duplicate_files.is_empty() {
                t.push_str("\nNot replicated because another file already owns their tenant id:");
                for p in &s.duplicate_files {
                    t.push_str("\n  ");
                    t.push_str(p);
                }
            }
            t
        })
    };
    view! {
        <section class="summary" aria-label="Summary">
            <div class="card">
                <span class="label">"Tenants"</span>
                <span id="total-clients" class="value">{show(|s| s.total_clients.to_string())}</span>
            </div>
            <div class="card">
                <span class="label">"Active"</span>
                <span id="active-clients" class="value">{show(|s| s.active_clients.to_string())}</span>
            </div>
            <div class="card" class:bad=errors_bad>
                <span class="label">"In error"</span>
                <span id="error-clients" class="value">{total(|t| t.error_clients.to_string())}</span>
            </div>
            <div class="card">
                <span class="label">"Worst lag"</span>
                <span id="worst-lag" class="value">{total(|t| format_lag(t.worst_lag_seconds))}</span>
            </div>
            <div class="card">
                <span class="label">"Uploaded"</span>
                <span
                    id="bytes-uploaded"
                    class="value"
                    title=move || totals.with(|t| format!("{} bytes", t.bytes_uploaded))
                >
                    {total(|t| format_bytes(t.bytes_uploaded))}
                </span>
            </div>
            <div class="card" class:warn=has_duplicates title=skipped_title>
                <span class="label">"Ignored files"</span>
                <span id="ignored-files" class="value">{skipped}</span>
                <span id="duplicate-files" class="sub" data-count=move || duplicates().to_string()>
                    {skipped_detail}
                </span>
            </div>
            <div class="card wide" class:bad=target_bad>
                <span class="label">{target_kind}</span>
                <span id="target-status" class="value small">{target}</span>
            </div>
            <div class="card">
                <span class="label">"Uptime"</span>
                <span id="uptime" class="value">{show(|s| s.uptime.clone())}</span>
            </div>
        </section>
    }
}
