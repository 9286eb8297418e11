//! `GET /metrics`: Prometheus text exposition (format 0.0.4), written by hand. Aggregate series
//! only: a label per tenant would make 10,000 series per scrape, so per-tenant detail stays in
//! `/api/status`. Every series is emitted on every scrape (zeros included), so none vanishes.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use engine::store::Target;

use crate::http::{AppState, Totals, STATES};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn handler(State(state): State<AppState>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || render(&state))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body)
}

/// One metric family: `# HELP`, `# TYPE`, then its samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v
                    .replace('\\', r"\\")
                    .replace('"', "\\\"")
                    .replace('\n', r"\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

pub fn render(state: &AppState) -> String {
    let totals = Totals::of(&state.store.statuses());
    let mut o = Out(String::with_capacity(4096));

    o.family(
        "litestream_manager_tenants",
        "gauge",
        "Tenants (database files) by state.",
    );
    for (name, n) in STATES.iter().zip(totals.by_state) {
        o.sample("litestream_manager_tenants", &[("state", name)], n as f64);
    }
    o.single(
        "litestream_manager_hot_tenants",
        "gauge",
        "Tenants with a running task and open database connections.",
        state.store.hot_count() as f64,
    );
    // Sums over the current tenants: they drop when a tenant is removed, hence gauges.
    o.single(
        "litestream_manager_uploaded_bytes",
        "gauge",
        "Bytes of LTX files uploaded since start, summed over the current tenants.",
        totals.bytes_uploaded as f64,
    );
    o.single(
        "litestream_manager_uploaded_objects",
        "gauge",
        "LTX files uploaded since start, summed over the current tenants.",
        totals.objects_uploaded as f64,
    );
    o.single(
        "litestream_manager_worst_lag_seconds",
        "gauge",
        "Largest replication lag among all tenants (0 without tenants).",
        totals.worst_lag_seconds.unwrap_or(0.0),
    );
    let (ignored, duplicates) = state
        .ignored
        .lock()
        .map(|i| (i.count(), i.duplicate_count()))
        .unwrap_or_default();
    o.single(
        "litestream_manager_ignored_files",
        "gauge",
        "Files in the watch directories whose names are not tenant names (each counted once).",
        ignored as f64,
    );
    o.single(
        "litestream_manager_duplicate_files",
        "gauge",
        "Tenant-named files not replicated because another file owns their id.",
        duplicates as f64,
    );
    o.single(
        "litestream_manager_target_up",
        "gauge",
        "1 when the replica target answered the last probe (local replica: always 1).",
        if state.s3_status() == "ok" { 1.0 } else { 0.0 },
    );
    if let Target::S3 { client, .. } = state.store.target() {
        let c = client.request_counts();
        o.family(
            "litestream_manager_s3_requests_total",
            "counter",
            "HTTP requests sent to the S3 store by operation, retries included.",
        );
        for (op, n) in [
            ("list", c.list),
            ("get", c.get),
            ("head", c.head),
            ("put", c.put),
            ("create_multipart", c.create_multipart),
            ("upload_part", c.upload_part),
            ("complete_multipart", c.complete_multipart),
            ("abort_multipart", c.abort_multipart),
            ("delete", c.delete),
            ("other", c.other),
        ] {
            o.sample(
                "litestream_manager_s3_requests_total",
                &[("operation", op)],
                n as f64,
            );
        }
    }
    o.single(
        "litestream_manager_uptime_seconds",
        "gauge",
        "Seconds since the manager started.",
        state.started.elapsed().as_secs_f64(),
    );
    if let Some(rss) = resident_bytes() {
        o.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss as f64,
        );
    }
    o.0
}

/// Resident set size from `/proc/self/statm` (its second field, in pages); Linux only.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::http::tests::state;

    /// Parses the exposition format strictly: every sample belongs to the family announced by
    /// the `# HELP` and `# TYPE` lines just before it; names and label values are well-formed.
    fn parse(text: &str) -> HashMap<String, f64> {
        let mut samples = HashMap::new();
        let mut family: Option<String> = None;
        let mut lines = text.lines().peekable();
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !n.starts_with(|c: char| c.is_ascii_digit())
        };
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(valid_name(name), "{line}");
                let ty = lines.next().unwrap_or_default();
                assert_eq!(
                    ty.split(' ').take(3).collect::<Vec<_>>(),
                    ["#", "TYPE", name],
                    "HELP without TYPE: {line}"
                );
                assert!(
                    ["gauge", "counter"].contains(&ty.split(' ').nth(3).unwrap_or("")),
                    "{ty}"
                );
                family = Some(name.to_string());
                continue;
            }
            assert!(!line.starts_with('#'), "stray comment {line}");
            let (series, value) = line.rsplit_once(' ').expect(line);
            let name = series.split('{').next().unwrap();
            assert_eq!(
                Some(name),
                family.as_deref(),
                "sample outside its family: {line}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                    for pair in inner.expect(line).split(',') {
                        let (k, v) = pair.split_once('=').expect(line);
                        assert!(valid_name(k), "{line}");
                        assert!(
                            v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                            "{line}"
                        );
                    }
                }
            }
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            assert!(v.is_finite(), "{line}");
            assert!(
                samples.insert(series.to_string(), v).is_none(),
                "duplicate {line}"
            );
        }
        samples
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_with_aggregates_only() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        for i in 0..3 {
            let id = format!("00000000-0000-4000-8000-{i:012x}");
            st.store
                .register_refused(&id, &dir.path().join(format!("{id}.db")), "test");
        }
        let res = tower::ServiceExt::oneshot(
            crate::http::router(st),
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), axum::http::StatusCode::OK);
        assert_eq!(res.headers()["content-type"], super::CONTENT_TYPE);
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let m = parse(&text);
        assert_eq!(
            m[r#"litestream_manager_tenants{state="error"}"#], 3.0,
            "{text}"
        );
        assert_eq!(
            m[r#"litestream_manager_tenants{state="idle"}"#], 0.0,
            "{text}"
        );
        assert_eq!(
            text.matches("litestream_manager_tenants{").count(),
            6,
            "one series per state: {text}"
        );
        for name in [
            "litestream_manager_uploaded_bytes",
            "litestream_manager_uploaded_objects",
            "litestream_manager_worst_lag_seconds",
            "litestream_manager_ignored_files",
            "litestream_manager_duplicate_files",
            "litestream_manager_hot_tenants",
            "litestream_manager_uptime_seconds",
            "litestream_manager_target_up",
        ] {
            assert!(m.contains_key(name), "{name} missing: {text}");
        }
        assert_eq!(m["litestream_manager_target_up"], 1.0);
        assert!(m["process_resident_memory_bytes"] > 1e6, "{text}");
        // No per-tenant series; no S3 family for a local replica.
        assert!(!text.contains("00000000-0000"), "{text}");
        assert!(!text.contains("s3_requests"), "{text}");
    }
}
