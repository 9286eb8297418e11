//! Scenario `dashboard`: the manager's HTTP side under load. N small tenants (default 10,000),
//! W of them committing every `interval_ms`; once every tenant is backed up, C WebSocket clients
//! stay connected to `/ws` while one client polls `GET /api/status` (the full listing and a
//! `?limit=100` page, alternately) for S seconds. Reports request latency percentiles, messages
//! (WebSocket frames; a `batch` frame carries one coalescing window's rows) and bytes per second
//! per WebSocket connection, the rows they carried (and how many resync snapshots they got), and
//! the manager's RSS and CPU. Ours only: Litestream has no dashboard.
//!
//! The WebSocket client is a minimal RFC 6455 reader on a blocking socket (server frames are
//! never masked; we send nothing after the handshake), so bytes are counted as on the wire.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::idle::sleep_alive;
use crate::procs;
use crate::replicator::{Kind, Replicator, RunDirs};
use crate::report::{mib, percentile, table};
use crate::{sqlite, Ctx};

#[derive(Clone, Debug, clap::Args)]
pub struct DashboardArgs {
    /// Number of tenant databases.
    #[arg(long, default_value_t = 10_000)]
    pub tenants: usize,
    /// How many of them commit during the window.
    #[arg(long, default_value_t = 100)]
    pub writing: usize,
    /// Each writing tenant commits once per this many milliseconds.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
    /// WebSocket clients connected to /ws during the window.
    #[arg(long, default_value_t = 20)]
    pub ws_clients: usize,
    /// Length of the measurement window, seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Give up waiting for the initial backups after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub backup_timeout: u64,
}

/// What one WebSocket connection saw during the window.
#[derive(Default)]
struct WsStats {
    /// The first message (the snapshot): bytes and time from connect.
    snapshot_bytes: u64,
    snapshot_s: f64,
    /// After the first message. `messages` counts frames; `changed` and `summaries` count the
    /// messages inside `batch` frames too.
    messages: u64,
    batches: u64,
    bytes: u64,
    resyncs: u64,
    changed: u64,
    summaries: u64,
    error: Option<String>,
}

pub fn run(ctx: &Ctx, args: &DashboardArgs) -> Result<String> {
    if !ctx.kinds.contains(&Kind::Ours) {
        bail!("the dashboard scenario measures litestream-manager only (use --only ours)");
    }
    if args.writing > args.tenants {
        bail!("--writing {} > --tenants {}", args.writing, args.tenants);
    }
    eprintln!(
        "== dashboard: {} tenants, {} committing every {} ms, {} WebSocket clients, {} s",
        args.tenants, args.writing, args.interval_ms, args.ws_clients, args.seconds
    );
    let ids = ctx.tenant_ids(args.tenants);
    let tmp = ctx.tempdir("dashboard-")?;
    let dirs = RunDirs::create(tmp.path())?;
    let template = dirs.root.join("template.db");
    sqlite::create_small_db(&template, 5, ctx.seed)?;
    let t = Instant::now();
    for id in &ids {
        std::fs::copy(&template, dirs.watch.join(format!("{id}.db")))?;
    }
    eprintln!(
        "  created {} databases in {:.1} s",
        ids.len(),
        t.elapsed().as_secs_f64()
    );

    let mut rep = Replicator::start(Kind::Ours, &ctx.bins, &dirs)?;
    let port = rep.port.context("ours has a port")?;
    let pid = rep.pid();
    let backed_up = rep.wait_backed_up(&ids, Duration::from_secs(args.backup_timeout))?;
    eprintln!("  all backed up after {:.1} s", backed_up.as_secs_f64());
    sleep_alive(&mut rep, Duration::from_secs(2))?;

    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let write_errors = Arc::new(AtomicU64::new(0));
    // 1. Writers: 4 threads share the writing tenants.
    let writers: Vec<_> = ids[..args.writing]
        .chunks(args.writing.div_ceil(4).max(1))
        .map(|chunk| {
            let paths: Vec<_> = chunk
                .iter()
                .map(|id| dirs.watch.join(format!("{id}.db")))
                .collect();
            let (stop, commits, errors) = (stop.clone(), commits.clone(), write_errors.clone());
            let interval = Duration::from_millis(args.interval_ms);
            std::thread::spawn(move || -> Result<()> {
                let conns = paths
                    .iter()
                    .map(|p| sqlite::open_app(p))
                    .collect::<Result<Vec<_>>>()?;
                let mut k: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let tick = Instant::now();
                    k += 1;
                    for c in &conns {
                        match c.execute("UPDATE s SET v = ?1 WHERE id = 1", [k]) {
                            Ok(_) => commits.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    std::thread::sleep(interval.saturating_sub(tick.elapsed()));
                }
                Ok(())
            })
        })
        .collect();
    // 2. WebSocket clients.
    let measuring = Arc::new(AtomicBool::new(false));
    let ws: Vec<_> = (0..args.ws_clients)
        .map(|i| {
            let (stop, measuring) = (stop.clone(), measuring.clone());
            std::thread::spawn(move || ws_client(port, i, &stop, &measuring))
        })
        .collect();
    // Let every connection get its snapshot before the window starts.
    sleep_alive(&mut rep, Duration::from_secs(2))?;

    // 3. The window: poll /api/status, sample the process.
    let start = procs::sample(pid, false)?;
    let commits0 = commits.load(Ordering::Relaxed);
    measuring.store(true, Ordering::Release);
    let t0 = Instant::now();
    let window = Duration::from_secs(args.seconds);
    let (mut full, mut paged) = (Vec::new(), Vec::new());
    let (mut full_bytes, mut paged_bytes, mut http_errors) = (0usize, 0usize, 0usize);
    let mut max_rss = start.rss_kib;
    let mut last_sample = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < window {
        rep.child.ensure_alive()?;
        let (path, lat, bytes) = if n.is_multiple_of(2) {
            ("/api/status", &mut full, &mut full_bytes)
        } else {
            ("/api/status?limit=100", &mut paged, &mut paged_bytes)
        };
        n += 1;
        let t = Instant::now();
        match procs::http_get(port, path, Duration::from_secs(30)) {
            Ok((200, body)) => {
                lat.push(t.elapsed().as_secs_f64());
                *bytes = body.len();
            }
            Ok((code, _)) => {
                http_errors += 1;
                eprintln!("  {path}: HTTP {code}");
            }
            Err(e) => {
                http_errors += 1;
                eprintln!("  {path}: {e:#}");
            }
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            max_rss = max_rss.max(procs::sample(pid, false)?.rss_kib);
            last_sample = Instant::now();
        }
        // A dashboard user does not hammer: at most ~20 requests a second.
        std::thread::sleep(Duration::from_millis(50).saturating_sub(t.elapsed()));
    }
    let secs = t0.elapsed().as_secs_f64();
    let end = procs::sample(pid, false)?;
    let window_commits = commits.load(Ordering::Relaxed) - commits0;
    stop.store(true, Ordering::Release);
    let mut writer_failures = Vec::new();
    for w in writers {
        if let Err(e) = w.join().map_err(|_| anyhow!("writer panicked"))? {
            writer_failures.push(format!("{e:#}"));
        }
    }
    let stats: Vec<WsStats> = ws
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| WsStats {
                error: Some("panicked".into()),
                ..WsStats::default()
            })
        })
        .collect();
    let ended = rep.stop();
    ctx.finish_tempdir(tmp);

    // 4. Report.
    full.sort_by(f64::total_cmp);
    paged.sort_by(f64::total_cmp);
    let ms = |v: &[f64], p: f64| format!("{:.1} ms", 1e3 * percentile(v, p));
    let per_conn = |f: &dyn Fn(&WsStats) -> f64| -> String {
        let mut v: Vec<f64> = stats.iter().filter(|s| s.error.is_none()).map(f).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return "—".into();
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        format!("{mean:.1} (min {:.1}, max {:.1})", v[0], v[v.len() - 1])
    };
    let ws_errors: Vec<String> = stats.iter().filter_map(|s| s.error.clone()).collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Dashboard: {} tenants, {} of them committing every {} ms ({:.0} commits/s observed), \
         {} WebSocket clients on `/ws`, one client polling `GET /api/status` (full listing and \
         `?limit=100` alternately, at most 20 requests/s), {:.0}-second window after every tenant \
         was backed up ({:.1} s from start).\n",
        args.tenants,
        args.writing,
        args.interval_ms,
        window_commits as f64 / secs,
        args.ws_clients,
        secs,
        backed_up.as_secs_f64()
    );
    let rows = vec![
        vec![
            format!(
                "`GET /api/status` ({} rows, {:.0} KiB)",
                args.tenants,
                full_bytes as f64 / 1024.0
            ),
            format!(
                "{} / **{}** / {}",
                ms(&full, 50.0),
                ms(&full, 99.0),
                ms(&full, 100.0)
            ),
            full.len().to_string(),
        ],
        vec![
            format!(
                "`GET /api/status?limit=100` ({:.0} KiB)",
                paged_bytes as f64 / 1024.0
            ),
            format!(
                "{} / **{}** / {}",
                ms(&paged, 50.0),
                ms(&paged, 99.0),
                ms(&paged, 100.0)
            ),
            paged.len().to_string(),
        ],
    ];
    md.push_str(&table(&["request", "p50 / p99 / max", "requests"], &rows));
    md.push('\n');
    let rows = vec![
        vec![
            "messages (frames)/s per connection, mean".into(),
            per_conn(&|s| s.messages as f64 / secs),
        ],
        vec![
            "of which `batch` frames/s".into(),
            per_conn(&|s| s.batches as f64 / secs),
        ],
        vec![
            "KiB/s per connection, mean".into(),
            per_conn(&|s| s.bytes as f64 / 1024.0 / secs),
        ],
        vec![
            "`changed` rows/s per connection".into(),
            per_conn(&|s| s.changed as f64 / secs),
        ],
        vec![
            "summaries per connection".into(),
            per_conn(&|s| s.summaries as f64),
        ],
        vec![
            "resync snapshots (a lagging connection), all connections".into(),
            stats.iter().map(|s| s.resyncs).sum::<u64>().to_string(),
        ],
        vec![
            "first snapshot: KiB, ms after connect (mean, max)".into(),
            {
                let max_ms = stats.iter().map(|s| s.snapshot_s).fold(0.0, f64::max) * 1e3;
                let mean_ms = 1e3 * stats.iter().map(|s| s.snapshot_s).sum::<f64>()
                    / stats.len().max(1) as f64;
                let kib = stats.iter().map(|s| s.snapshot_bytes).max().unwrap_or(0) as f64 / 1024.0;
                format!("{kib:.0} KiB, {mean_ms:.0} ms / {max_ms:.0} ms")
            },
        ],
        vec![
            "RSS (VmRSS): window start → end (max)".into(),
            format!(
                "{} → **{}** ({})",
                mib(start.rss_kib),
                mib(end.rss_kib),
                mib(max_rss.max(end.rss_kib))
            ),
        ],
        vec![
            "CPU during the window (% of one core)".into(),
            format!("{:.1} %", 100.0 * (end.cpu_s - start.cpu_s) / secs),
        ],
        vec![
            "errors: HTTP / WebSocket / commits".into(),
            format!(
                "{http_errors} / {} / {}",
                ws_errors.len(),
                write_errors.load(Ordering::Relaxed)
            ),
        ],
        vec!["how the process ended".into(), ended],
    ];
    md.push_str(&table(&["WebSocket and process", "value"], &rows));
    for e in ws_errors.iter().chain(&writer_failures).take(3) {
        let _ = writeln!(md, "\nerror: {e}");
    }
    Ok(md)
}

/// One `/ws` connection until `stop`; counts what arrives while `measuring`.
fn ws_client(port: u16, i: usize, stop: &AtomicBool, measuring: &AtomicBool) -> WsStats {
    let mut st = WsStats::default();
    if let Err(e) = ws_read(port, stop, measuring, &mut st) {
        if !stop.load(Ordering::Acquire) {
            st.error = Some(format!("connection {i}: {e:#}"));
        }
    }
    st
}

fn ws_read(port: u16, stop: &AtomicBool, measuring: &AtomicBool, st: &mut WsStats) -> Result<()> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    // Any 16 bytes, base64: the server does not care which.
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: ZGFzaGJvYXJkLWJlbmNoLXtpfQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut r = BufReader::with_capacity(1 << 16, s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if !line.starts_with("HTTP/1.1 101") {
        bail!("handshake: {}", line.trim());
    }
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut first = true;
    let mut payload = Vec::new();
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut h = [0u8; 2];
        match r.read_exact(&mut h[..1]) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        }
        // Once a frame has started, read it whole (a timeout mid-frame just retries).
        let mut more = |buf: &mut [u8]| -> Result<()> {
            let mut got = 0;
            while got < buf.len() {
                match r.read(&mut buf[got..]) {
                    Ok(0) => bail!("closed mid-frame"),
                    Ok(n) => got += n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        };
        more(&mut h[1..])?;
        let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
        if h[1] & 0x80 != 0 {
            bail!("masked server frame");
        }
        let mut header = 2u64;
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                more(&mut b)?;
                header += 2;
                u16::from_be_bytes(b) as u64
            }
            127 => {
                let mut b = [0u8; 8];
                more(&mut b)?;
                header += 8;
                u64::from_be_bytes(b)
            }
            n => n as u64,
        };
        let start = payload.len();
        payload.resize(start + len as usize, 0);
        more(&mut payload[start..])?;
        if opcode == 0x8 {
            bail!("server closed the connection");
        }
        if opcode >= 0x8 {
            payload.truncate(start);
            continue; // ping/pong
        }
        let bytes = header + len;
        if !fin {
            if measuring.load(Ordering::Relaxed) {
                st.bytes += bytes;
            }
            continue;
        }
        let msg = std::mem::take(&mut payload);
        let kind = message_type(&msg);
        if first {
            first = false;
            st.snapshot_bytes = msg.len() as u64;
            st.snapshot_s = t.elapsed().as_secs_f64();
            continue;
        }
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        st.messages += 1;
        st.bytes += bytes;
        match kind {
            "snapshot" => st.resyncs += 1,
            "batch" => st.batches += 1,
            _ => {}
        }
        if kind != "snapshot" {
            st.changed += count(&msg, br#"{"type":"changed""#);
            st.summaries += count(&msg, br#"{"type":"summary""#);
        }
    }
}

/// Occurrences of `needle` in `hay`. A message's `{"type":"..."` cannot occur inside a JSON
/// string (its quotes would be escaped), so this counts the messages of a batch exactly.
fn count(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

/// The `type` tag, which serde writes first: `{"type":"changed",...}`.
fn message_type(msg: &[u8]) -> &str {
    msg.strip_prefix(br#"{"type":""#)
        .and_then(|rest| rest.iter().position(|&b| b == b'"').map(|end| &rest[..end]))
        .and_then(|t| std::str::from_utf8(t).ok())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    #[test]
    fn message_type_reads_the_tag() {
        assert_eq!(
            super::message_type(br#"{"type":"changed","client":{}}"#),
            "changed"
        );
        assert_eq!(super::message_type(b"nope"), "");
    }

    #[test]
    fn count_finds_the_messages_of_a_batch() {
        // As serde_json writes it: quotes inside a string are escaped, so an error text that
        // quotes a message is not counted.
        let batch = br#"{"type":"batch","messages":[{"type":"changed","client":{"lastError":"{\"type\":\"changed\""}},{"type":"changed","client":{}},{"type":"summary"}]}"#;
        assert_eq!(super::count(batch, br#"{"type":"changed""#), 2);
        assert_eq!(super::count(batch, br#"{"type":"summary""#), 1);
    }
}
