//! The detail panel of one tenant (`#client-detail`): its live state and positions from the
//! WebSocket, and what `GET /api/clients/{id}` adds: the restore window, a chart of the replica's
//! LTX files per level, and the two restore commands.
//!
//! The fetch is keyed on the tenant, whether it still exists, whether anything is replicated and
//! its state, not on every position change: listing a replica costs an S3 LIST, and a busy
//! tenant changes its positions every second. The Refresh button fetches again on demand. A
//! tenant that left the live state is not fetched (it would be a 404); a removed tenant, like a
//! 404, keeps the last answer on screen: the replica, and so its restore commands, outlive the
//! database file.

use leptos::prelude::*;

use super::format::{format_bytes, format_lag, format_time, NONE};
use crate::api::{ClientStatus, LevelFiles, RestoreCommands, RestoreWindow};
use crate::state::{parse_rfc3339, DashboardState, Detail, DetailError};

/// Geometry of the LTX chart, in SVG user units (the panel is ~500 px wide).
const CHART_WIDTH: f64 = 460.0;
const CHART_LABEL_WIDTH: f64 = 34.0;
const CHART_COUNT_WIDTH: f64 = 70.0;
const CHART_LANE_HEIGHT: f64 = 22.0;
const CHART_AXIS_HEIGHT: f64 = 18.0;
/// The narrowest time range the x axis spans, so files written a moment apart stay together.
const CHART_MIN_SPAN_SECS: f64 = 60.0;

#[component]
pub fn DetailPanel(
    state: RwSignal<DashboardState>,
    selected: RwSignal<Option<String>>,
    now: RwSignal<Option<f64>>,
) -> impl IntoView {
    // The selected tenant's lag at the clock's tick (`None` once it is gone).
    let lag = Signal::derive(move || {
        let id = selected.get()?;
        let browser_now = now.get();
        state.with(|s| {
            s.row(&id)
                .and_then(|r| r.lag_at(browser_now.map(|n| s.server_now(n))))
        })
    });
    let live = Memo::new(move |_| {
        selected.with(|id| {
            id.as_ref()
                .and_then(|id| state.with(|s| s.client(id).cloned()))
        })
    });
    let key = Memo::new(move |_| {
        let id = selected.get()?;
        let shape = live.with(|c| {
            c.as_ref()
                .map(|c| (c.replicated_txid.is_some(), c.status.clone()))
        });
        Some((id, shape))
    });
    let refresh = RwSignal::new(0u32);
    let last_good = RwSignal::new(None::<Detail>);
    let fetched = LocalResource::new(move || {
        let key = key.get();
        refresh.track();
        async move {
            let (id, shape) = key?;
            // Gone from the live state: the server would answer 404; don't ask.
            let result = match shape {
                Some(_) => load(&id).await,
                None => Err(DetailError::NotFound),
            };
            if let Ok(detail) = &result {
                last_good.set(Some(detail.clone()));
            }
            Some((id, result))
        }
    });
    // The last good answer for the selected tenant, if any.
    let previous = move || {
        let id = selected.get()?;
        last_good.with(|d| d.as_ref().filter(|d| d.client.client_id == id).cloned())
    };

    // Escape closes the panel.
    let escape = window_event_listener(leptos::ev::keydown, move |ev| {
        if ev.key() == "Escape" {
            selected.set(None);
        }
    });
    on_cleanup(move || escape.remove());

    let header = move || {
        let id = selected.get().unwrap_or_default();
        view! {
            <div class="detail-head">
                <h2>"Tenant"</h2>
                <code id="detail-id">{id}</code>
                <button
                    id="detail-refresh"
                    title="Fetch the replica's files again"
                    on:click=move |_| refresh.update(|n| *n += 1)
                >
                    "Refresh"
                </button>
                <button
                    id="detail-close"
                    title="Close"
                    aria-label="Close the detail panel"
                    on:click=move |_| selected.set(None)
                >
                    "×"
                </button>
            </div>
        }
    };

    let status = move || {
        let client = live.get().or_else(|| {
            // Gone from the live state: its last known positions, marked removed.
            previous().map(|d| ClientStatus {
                status: ClientStatus::REMOVED.into(),
                lag_seconds: None,
                pending_since: None,
                ..d.client
            })
        })?;
        Some(view! { <Positions client=client lag=lag /> })
    };

    let body = move || {
        let id = selected.get()?;
        let answer = fetched.get().flatten().filter(|(for_id, _)| *for_id == id);
        let view = match answer {
            None => view! {
                <p class="muted">"Loading…"</p>
                {previous().map(|d| view! { <Replica detail=d /> })}
            }
            .into_any(),
            Some((_, Ok(detail))) => view! { <Replica detail=detail /> }.into_any(),
            Some((_, Err(DetailError::NotFound))) => view! {
                <p id="detail-removed" class="notice">
                    "This tenant is gone: its database file was removed. Its replica stays, so "
                    "the restore commands below still work."
                </p>
                {previous().map(|d| view! { <Replica detail=d /> })}
            }
            .into_any(),
            Some((_, Err(DetailError::Other(err)))) => view! {
                <p id="detail-error" class="notice bad">{format!("Cannot load the detail: {err}")}</p>
                {previous().map(|d| view! { <Replica detail=d /> })}
            }
            .into_any(),
        };
        Some(view)
    };

    view! {
        <Show when=move || selected.with(Option::is_some)>
            <aside id="client-detail" class="detail" aria-label="Tenant detail">
                {header}
                {status}
                {body}
            </aside>
        </Show>
    }
}

/// The live part: state, positions, error (from the WebSocket when the tenant still exists).
#[component]
fn Positions(client: ClientStatus, lag: Signal<Option<f64>>) -> impl IntoView {
    let ClientStatus {
        database_path,
        s3_path,
        status,
        created_at,
        local_txid,
        replicated_txid,
        last_sync_at,
        bytes_uploaded,
        objects_uploaded,
        last_error,
        ..
    } = client;
    let none = || NONE.to_string();
    let state_class = format!("state state-{status}");
    view! {
        <div class="detail-state">
            <span id="detail-state" class=state_class>{status}</span>
            {last_error.map(|e| view! { <p id="detail-last-error" class="last-error">{e}</p> })}
        </div>
        <dl class="facts">
            <dt>"Database"</dt>
            <dd class="mono">{database_path}</dd>
            <dt>"Replica"</dt>
            <dd class="mono">{if s3_path.is_empty() { none() } else { s3_path }}</dd>
            <dt>"Local TXID"</dt>
            <dd id="detail-local-txid" class="mono">{local_txid.unwrap_or_else(none)}</dd>
            <dt>"Replicated TXID"</dt>
            <dd id="detail-replicated-txid" class="mono">{replicated_txid.unwrap_or_else(none)}</dd>
            <dt>"Lag"</dt>
            <dd id="detail-lag">{move || format_lag(lag.get())}</dd>
            <dt>"Last sync"</dt>
            <dd>{format_time(last_sync_at.as_deref())}</dd>
            <dt>"Uploaded"</dt>
            <dd>{format!("{} in {objects_uploaded} objects", format_bytes(bytes_uploaded))}</dd>
            <dt>"Seen since"</dt>
            <dd>{format_time(Some(&created_at))}</dd>
        </dl>
    }
}

/// What `/api/clients/{id}` adds: restore window, LTX chart, restore commands.
#[component]
fn Replica(detail: Detail) -> impl IntoView {
    let Detail {
        restore_window,
        levels,
        restore_commands,
        commands_derived,
        ..
    } = detail;
    let chart = ltx_chart_svg(&levels);
    view! {
        <h3>"Restore window"</h3>
        {match restore_window {
            Some(w) => view! { <Window window=w /> }.into_any(),
            None => view! {
                <p id="restore-window-none" class="muted">
                    "Nothing replicated yet: the window opens with the first upload."
                </p>
            }
            .into_any(),
        }}
        <h3>"LTX files"</h3>
        {match chart {
            Some(svg) => view! { <div id="ltx-chart" class="chart" inner_html=svg></div> }.into_any(),
            None => view! { <p id="ltx-chart-none" class="muted">"No LTX files in the replica."</p> }
                .into_any(),
        }}
        <h3>"Restore"</h3>
        {match restore_commands {
            Some(RestoreCommands { litestream, manager }) => view! {
                <CommandBlock label="Litestream Manager" id="restore-manager" command=manager />
                <CommandBlock label="Stock Litestream 0.5" id="restore-litestream" command=litestream />
                {commands_derived.then(|| view! {
                    <p class="muted small">"Built from the replica URL (the server sent no commands)."</p>
                })}
            }
            .into_any(),
            None => view! { <p class="muted">"The server reported no replica URL."</p> }.into_any(),
        }}
    }
}

#[component]
fn Window(window: RestoreWindow) -> impl IntoView {
    let RestoreWindow {
        earliest_at,
        latest_at,
        min_txid,
        max_txid,
    } = window;
    view! {
        <dl id="restore-window" class="facts">
            <dt>"Earliest"</dt>
            <dd id="restore-earliest" title=earliest_at.clone()>
                {format_time(Some(&earliest_at))}
            </dd>
            <dt>"Latest"</dt>
            <dd id="restore-latest" title=latest_at.clone()>{format_time(Some(&latest_at))}</dd>
            <dt>"TXIDs"</dt>
            <dd id="restore-txids" class="mono">{format!("{min_txid} … {max_txid}")}</dd>
        </dl>
    }
}

/// A command in a `<code>` block (one click selects all of it) and a Copy button.
#[component]
fn CommandBlock(label: &'static str, id: &'static str, command: String) -> impl IntoView {
    let copied = RwSignal::new(false);
    let text = command.clone();
    let copy = move |_| {
        if copy_text(&text) {
            copied.set(true);
            set_timeout(
                move || copied.set(false),
                std::time::Duration::from_millis(1500),
            );
        }
    };
    view! {
        <div class="command">
            <div class="command-head">
                <span class="label">{label}</span>
                <button class="copy" on:click=copy>
                    {move || if copied.get() { "Copied" } else { "Copy" }}
                </button>
            </div>
            <pre><code id=id class="restore-command">{command}</code></pre>
        </div>
    }
}

#[cfg(feature = "csr")]
async fn load(id: &str) -> Result<Detail, DetailError> {
    crate::live::fetch_client(id).await
}

#[cfg(not(feature = "csr"))]
async fn load(_id: &str) -> Result<Detail, DetailError> {
    Err(DetailError::Other("no browser".into()))
}

#[cfg(feature = "csr")]
fn copy_text(text: &str) -> bool {
    crate::live::copy_text(text)
}

#[cfg(not(feature = "csr"))]
fn copy_text(_text: &str) -> bool {
    false
}

/// An inline SVG of the replica's LTX files: x = `createdAt` (oldest file at the left, newest
/// at the right), one lane per level, one tick per file with its TXIDs and size as a tooltip.
/// `None` when no file has a readable time.
fn ltx_chart_svg(levels: &[LevelFiles]) -> Option<String> {
    let mut lanes: Vec<(u32, Vec<(f64, String)>)> = Vec::new();
    for level in levels {
        let marks: Vec<(f64, String)> = level
            .files
            .iter()
            .filter_map(|f| {
                let t = parse_rfc3339(&f.created_at)?;
                let title = format!(
                    "L{} {}–{}, {}, {}",
                    level.level,
                    f.min_txid,
                    f.max_txid,
                    format_bytes(f.size),
                    format_time(Some(&f.created_at))
                );
                Some((t, title))
            })
            .collect();
        if !marks.is_empty() {
            lanes.push((level.level, marks));
        }
    }
    if lanes.is_empty() {
        return None;
    }
    lanes.sort_by_key(|(level, _)| *level);
    let times = lanes.iter().flat_map(|(_, m)| m.iter().map(|(t, _)| *t));
    let (mut t0, mut t1) = (
        times.clone().fold(f64::INFINITY, f64::min),
        times.fold(f64::NEG_INFINITY, f64::max),
    );
    // Files a few milliseconds apart should not look a chart-width apart.
    if t1 - t0 < CHART_MIN_SPAN_SECS {
        let mid = (t0 + t1) / 2.0;
        (t0, t1) = (
            mid - CHART_MIN_SPAN_SECS / 2.0,
            mid + CHART_MIN_SPAN_SECS / 2.0,
        );
    }
    let plot_left = CHART_LABEL_WIDTH;
    let plot_width = CHART_WIDTH - CHART_LABEL_WIDTH - CHART_COUNT_WIDTH;
    let x_of = |t: f64| plot_left + (t - t0) / (t1 - t0) * plot_width;
    let height = lanes.len() as f64 * CHART_LANE_HEIGHT + CHART_AXIS_HEIGHT;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {CHART_WIDTH} {height}" width="{CHART_WIDTH}" height="{height}" role="img" aria-label="LTX files over time, one lane per level">"#
    );
    for (i, (level, marks)) in lanes.iter().enumerate() {
        let y = i as f64 * CHART_LANE_HEIGHT;
        let mid = y + CHART_LANE_HEIGHT / 2.0;
        svg += &format!(
            r#"<g class="lane lvl-{level}" data-level="{level}"><text class="lane-label" x="0" y="{:.1}">L{level}</text><line class="lane-line" x1="{plot_left}" x2="{:.1}" y1="{mid:.1}" y2="{mid:.1}"/>"#,
            mid + 4.0,
            plot_left + plot_width,
        );
        for (t, title) in marks {
            svg += &format!(
                r#"<rect class="ltx" x="{:.1}" y="{:.1}" width="3" height="{:.1}" rx="1"><title>{}</title></rect>"#,
                x_of(*t) - 1.5,
                y + 4.0,
                CHART_LANE_HEIGHT - 8.0,
                escape_xml(title)
            );
        }
        let n = marks.len();
        svg += &format!(
            r#"<text class="lane-count" x="{:.1}" y="{:.1}">{n} file{}</text></g>"#,
            plot_left + plot_width + 8.0,
            mid + 4.0,
            if n == 1 { "" } else { "s" }
        );
    }
    let axis_y = height - 4.0;
    svg += &format!(
        r#"<text class="axis" x="{plot_left}" y="{axis_y:.1}">{}</text>"#,
        escape_xml(&format_epoch(t0))
    );
    if format_epoch(t1) != format_epoch(t0) {
        svg += &format!(
            r#"<text class="axis" x="{:.1}" y="{axis_y:.1}" text-anchor="end">{}</text>"#,
            plot_left + plot_width,
            escape_xml(&format_epoch(t1))
        );
    }
    svg += "</svg>";
    Some(svg)
}

/// Seconds since the epoch → `"2026-11-29 13:59:18"` (UTC).
fn format_epoch(secs: f64) -> String {
    let secs = secs.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn escape_xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LtxFile;

    fn file(created_at: &str) -> LtxFile {
        LtxFile {
            min_txid: "0000000000000001".into(),
            max_txid: "0000000000000002".into(),
            size: 4096,
            created_at: created_at.into(),
        }
    }

    #[test]
    fn chart_has_one_lane_per_level_and_one_mark_per_file() {
        let svg = ltx_chart_svg(&[
            LevelFiles {
                level: 9,
                files: vec![file("2026-11-29T10:00:00Z")],
            },
            LevelFiles {
                level: 0,
                files: vec![file("2026-11-29T10:00:00Z"), file("2026-11-29T10:01:00Z")],
            },
            LevelFiles {
                level: 1,
                files: vec![],
            },
        ])
        .unwrap();
        assert_eq!(
            svg.matches("<g class=\"lane").count(),
            2,
            "empty levels have no lane"
        );
        assert_eq!(svg.matches("<rect class=\"ltx\"").count(), 3);
        assert!(svg.find("data-level=\"0\"").unwrap() < svg.find("data-level=\"9\"").unwrap());
        assert!(svg.contains("2 files") && svg.contains("1 file<"));
        assert!(svg.contains("2026-11-29 10:00:00") && svg.contains("2026-11-29 10:01:00"));
        // The oldest file sits at the left edge of the plot, the newest at the right.
        assert!(svg.contains(&format!("x=\"{:.1}\"", CHART_LABEL_WIDTH - 1.5)));
        let right = CHART_WIDTH - CHART_COUNT_WIDTH - 1.5;
        assert!(svg.contains(&format!("x=\"{right:.1}\"")));
    }

    #[test]
    fn files_close_in_time_sit_together_in_the_middle() {
        let svg = ltx_chart_svg(&[LevelFiles {
            level: 0,
            files: vec![file("2026-11-29T10:00:00Z"), file("2026-11-29T10:00:00.5Z")],
        }])
        .unwrap();
        let middle =
            CHART_LABEL_WIDTH + (CHART_WIDTH - CHART_LABEL_WIDTH - CHART_COUNT_WIDTH) / 2.0;
        for x in svg
            .split("<rect class=\"ltx\" x=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap().parse::<f64>().unwrap())
        {
            assert!((x + 1.5 - middle).abs() < 5.0, "{x} far from {middle}");
        }
        assert!(svg.contains("2026-11-29 09:59:30") && svg.contains("2026-11-29 10:00:30"));
    }

    #[test]
    fn chart_is_absent_without_readable_files() {
        assert_eq!(ltx_chart_svg(&[]), None);
        let bad = LevelFiles {
            level: 0,
            files: vec![file("not a time")],
        };
        assert_eq!(ltx_chart_svg(&[bad]), None);
    }

    #[test]
    fn epoch_formats_as_utc() {
        assert_eq!(format_epoch(0.0), "1970-01-01 00:00:00");
        assert_eq!(format_epoch(1_795_960_758.9), "2026-11-29 13:59:18");
        assert_eq!(format_epoch(951_782_400.0), "2000-02-29 00:00:00");
        assert_eq!(escape_xml("a<b&\"c\">"), "a&lt;b&amp;&quot;c&quot;&gt;");
    }
}
