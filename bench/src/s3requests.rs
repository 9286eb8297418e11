//! Scenario `s3-requests`: what each replicator costs in S3 requests, idle and busy.
//!
//! Per replicator, one after the other: a fresh moto server and bucket, and a counting proxy in
//! front of it (the replicator's `-endpoint`). The proxy forwards bytes untouched and parses the
//! client's side of each connection (request line, headers, `Content-Length` or chunked body), so
//! every request is counted, keep-alive and retries included, classified as S3 bills it. The
//! bench's own reads of the bucket (has every tenant been backed up?) go to moto directly and are
//! not counted.
//!
//! Phases, on the same N tenants and the same replicator process:
//! 1. start, wait until every tenant has an LTX object under `databases/<uuid>/`, settle;
//! 2. **idle**: reset the counters, count for S seconds with no writes;
//! 3. **busy**: reset, every tenant commits one small UPDATE `rate` times a second (random phase,
//!    a few writer threads) for S seconds; count for those S seconds.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::idle::{short, sleep_alive};
use crate::procs::{self, ChildGuard};
use crate::replicator::{Kind, Replicator, RunDirs, Target};
use crate::report::table;
use crate::{sqlite, Ctx};

const REGION: &str = "us-east-1";
/// moto accepts any key unless authentication is switched on.
const ACCESS_KEY: &str = "test";
/// AWS S3 Standard, us-east-1 (2026 list price): PUT, COPY, POST, LIST per 1,000 requests.
const USD_PER_1000_WRITE: f64 = 0.005;
/// GET, HEAD (and every other read) per 1,000 requests; DELETE is free.
const USD_PER_1000_READ: f64 = 0.0004;

#[derive(Clone, Debug, clap::Args)]
pub struct S3RequestsArgs {
    /// Number of tenant databases.
    #[arg(long, default_value_t = 100)]
    pub tenants: usize,
    /// Length of each counting window (idle, then busy), seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Commits per second per tenant in the busy phase.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Writer threads in the busy phase (tenants are spread over them).
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Pause between "all backed up" and the idle window, seconds.
    #[arg(long, default_value_t = 5)]
    pub settle: u64,
    /// Give up waiting for the initial backups after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub backup_timeout: u64,
    /// moto_server [default: $MOTO_SERVER, .venv/bin/moto_server, or PATH].
    #[arg(long)]
    pub moto_bin: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Request classification.

/// Requests by S3 operation (what S3 bills), plus PUT bytes and PUTs by LTX level.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub put: u64,
    pub put_bytes: u64,
    /// PutObject by the level directory of the key (`0000`…`0009`, or Litestream's `ltx/<n>`).
    pub put_by_level: BTreeMap<u8, u64>,
    pub mp_create: u64,
    pub mp_part: u64,
    pub mp_complete: u64,
    pub mp_abort: u64,
    pub get: u64,
    pub list: u64,
    pub head: u64,
    /// DeleteObject and DeleteObjects (`POST ?delete`), one per request.
    pub delete: u64,
    pub other: u64,
    /// The first few "other" request lines, to say what they were.
    pub other_examples: Vec<String>,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.put
            + self.mp_create
            + self.mp_part
            + self.mp_complete
            + self.mp_abort
            + self.get
            + self.list
            + self.head
            + self.delete
            + self.other
    }

    /// AWS list price of these requests, USD.
    pub fn cost_usd(&self) -> f64 {
        let writes = self.put + self.mp_create + self.mp_part + self.mp_complete + self.list;
        let reads = self.get + self.head + self.other;
        writes as f64 * USD_PER_1000_WRITE / 1000.0 + reads as f64 * USD_PER_1000_READ / 1000.0
    }

    fn record(&mut self, method: &str, target: &str, headers: &[(String, String)]) {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
        let has = |name: &str| params.iter().any(|p| p.split('=').next() == Some(name));
        // Path-style: /bucket or /bucket/key.
        let key = path.trim_start_matches('/').split_once('/').map(|(_, k)| k);
        let key = key.filter(|k| !k.is_empty());
        match (method, key.is_some()) {
            ("PUT", true) if has("uploadId") => self.mp_part += 1,
            ("PUT", true) if header("x-amz-copy-source").is_none() => {
                self.put += 1;
                let len = header("x-amz-decoded-content-length")
                    .or_else(|| header("content-length"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                self.put_bytes += len;
                if let Some(level) = key.and_then(level_of) {
                    *self.put_by_level.entry(level).or_default() += 1;
                }
            }
            ("POST", true) if has("uploads") => self.mp_create += 1,
            ("POST", true) if has("uploadId") => self.mp_complete += 1,
            ("DELETE", true) if has("uploadId") => self.mp_abort += 1,
            ("DELETE", true) => self.delete += 1,
            ("POST", false) if has("delete") => self.delete += 1,
            ("GET", true) => self.get += 1,
            ("GET", false)
                if params.is_empty()
                    || has("list-type")
                    || has("prefix")
                    || has("delimiter")
                    || has("continuation-token")
                    || has("marker") =>
            {
                self.list += 1
            }
            ("HEAD", _) => self.head += 1,
            _ => {
                self.other += 1;
                if self.other_examples.len() < 5 {
                    self.other_examples.push(format!("{method} {target}"));
                }
            }
        }
    }
}

/// The LTX level of an object key: its parent directory, `%04x` (ours) or decimal (Litestream's
/// `ltx/<level>/`).
fn level_of(key: &str) -> Option<u8> {
    let mut parts = key.rsplit('/');
    let file = parts.next()?;
    if !file.ends_with(".ltx") {
        return None;
    }
    let dir = parts.next()?;
    u8::from_str_radix(dir, 16).ok().filter(|l| *l <= 9)
}

/// Parses the client→server byte stream of one connection into requests (heads and bodies).
#[derive(Default)]
struct Sniffer {
    state: SniffState,
    buf: Vec<u8>,
}

#[derive(Default)]
enum SniffState {
    #[default]
    Head,
    /// Bytes of body left.
    Body(u64),
    /// Chunked body: waiting for a chunk-size line.
    ChunkSize,
    /// Chunk data left, plus its CRLF.
    ChunkData(u64),
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
}

impl Sniffer {
    fn feed(&mut self, mut data: &[u8], counts: &Mutex<Counts>) {
        while !data.is_empty() {
            match self.state {
                SniffState::Body(left) | SniffState::ChunkData(left) => {
                    let n = (left as usize).min(data.len());
                    data = &data[n..];
                    let left = left - n as u64;
                    self.state = match (&self.state, left) {
                        (SniffState::Body(_), 0) => SniffState::Head,
                        (SniffState::Body(_), l) => SniffState::Body(l),
                        (_, 0) => SniffState::ChunkSize,
                        (_, l) => SniffState::ChunkData(l),
                    };
                }
                SniffState::Head => {
                    self.buf.extend_from_slice(data);
                    data = &[];
                    // Tolerate stray CRLFs between requests.
                    while self.buf.starts_with(b"\r\n") {
                        self.buf.drain(..2);
                    }
                    let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    let rest = self.buf.split_off(end + 4);
                    self.buf.clear();
                    self.state = on_head(&head, counts);
                    // Re-feed what followed the head.
                    self.feed(&rest, counts);
                    return;
                }
                SniffState::ChunkSize | SniffState::Trailer => {
                    self.buf.extend_from_slice(data);
                    data = &[];
                    while let Some(eol) = find(&self.buf, b"\r\n") {
                        let line = String::from_utf8_lossy(&self.buf[..eol]).into_owned();
                        self.buf.drain(..eol + 2);
                        match self.state {
                            SniffState::ChunkSize => {
                                let size = u64::from_str_radix(
                                    line.split(';').next().unwrap_or("").trim(),
                                    16,
                                )
                                .unwrap_or(0);
                                self.state = if size == 0 {
                                    SniffState::Trailer
                                } else {
                                    SniffState::ChunkData(size + 2)
                                };
                            }
                            _ if line.is_empty() => self.state = SniffState::Head,
                            _ => {}
                        }
                        if !matches!(self.state, SniffState::ChunkSize | SniffState::Trailer) {
                            let rest = std::mem::take(&mut self.buf);
                            self.feed(&rest, counts);
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Counts one request head; returns how its body is framed.
fn on_head(head: &str, counts: &Mutex<Counts>) -> SniffState {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if let Ok(mut c) = counts.lock() {
        c.record(&method, &target, &headers);
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return SniffState::ChunkSize;
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(0);
    if len > 0 {
        SniffState::Body(len)
    } else {
        SniffState::Head
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The counting proxy.

/// A TCP proxy on 127.0.0.1 in front of `upstream`, counting the requests that pass.
pub struct CountingProxy {
    pub port: u16,
    counts: Arc<Mutex<Counts>>,
    /// Dropping the runtime stops the proxy and closes its connections.
    _rt: tokio::runtime::Runtime,
}

impl CountingProxy {
    pub fn start(upstream_port: u16) -> Result<CountingProxy> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-proxy")
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let c = counts.clone();
        rt.spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(proxy_connection(conn, upstream_port, c.clone()));
            }
        });
        Ok(CountingProxy {
            port,
            counts,
            _rt: rt,
        })
    }

    /// The counts so far, and zero them.
    pub fn take(&self) -> Counts {
        self.counts
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    pub fn peek_total(&self) -> u64 {
        self.counts.lock().map(|c| c.total()).unwrap_or(0)
    }
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    upstream: u16,
    counts: Arc<Mutex<Counts>>,
) {
    let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let to_upstream = async move {
        let mut sniffer = Sniffer::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sniffer.feed(&buf[..n], &counts);
                    if uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = uw.shutdown().await;
    };
    let to_client = async move {
        let _ = tokio::io::copy(&mut ur, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(to_upstream, to_client);
}

// ---------------------------------------------------------------------------------------------
// moto and the bucket.

fn moto_bin(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("MOTO_SERVER").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.is_file() {
        return Ok(venv);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("moto_server").is_file() {
                return Ok(d.join("moto_server"));
            }
        }
    }
    bail!(
        "moto_server not found: pip install 'moto[server]' (or pass --moto-bin / set MOTO_SERVER)"
    )
}

fn start_moto(bin: &Path, dir: &Path) -> Result<(ChildGuard, u16)> {
    let port = procs::free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let mut g = ChildGuard::spawn(cmd, "moto_server", &dir.join("moto.log"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        g.ensure_alive()?;
        if Instant::now() > deadline {
            bail!("moto_server did not listen on 127.0.0.1:{port} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((g, port))
}

/// One unsigned HTTP/1.1 request to 127.0.0.1 (moto without auth); returns (status, body).
fn request(port: u16, method: &str, target: &str) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = find(&raw, b"\r\n\r\n").ok_or_else(|| anyhow!("{method} {target}: bad response"))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{method} {target}: bad status line"))?;
    let mut body = raw[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut b = &body[..];
        while let Some(eol) = find(b, b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16)?;
            if size == 0 || b.len() < eol + 2 + size {
                break;
            }
            out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
            b = &b[(eol + 4 + size).min(b.len())..];
        }
        body = out;
    }
    Ok((code, body))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn xml_values<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(&rest[..j]);
        rest = &rest[j + close.len()..];
    }
    out
}

/// Every key under `prefix` (ListObjectsV2, straight to moto: not counted).
fn list_keys(port: u16, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut target = format!("/{bucket}?list-type=2&prefix={}", percent_encode(prefix));
        if let Some(t) = &token {
            target.push_str(&format!("&continuation-token={}", percent_encode(t)));
        }
        let (code, body) = request(port, "GET", &target)?;
        let xml = String::from_utf8_lossy(&body);
        if code != 200 {
            bail!("ListObjectsV2 {bucket}: HTTP {code}: {xml}");
        }
        keys.extend(xml_values(&xml, "Key").into_iter().map(str::to_string));
        token = xml_values(&xml, "NextContinuationToken")
            .first()
            .map(|t| t.to_string());
        if xml_values(&xml, "IsTruncated").first() != Some(&"true") || token.is_none() {
            return Ok(keys);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario.

struct Outcome {
    kind: Kind,
    backed_up_s: f64,
    idle: Counts,
    /// Idle requests in the second half of the idle window (the steady state).
    idle_second_half: u64,
    idle_secs: f64,
    busy: Counts,
    busy_secs: f64,
    commits: u64,
    failed_commits: u64,
    max_commit_ms: f64,
    objects_at_end: usize,
    end: String,
}

pub fn run(ctx: &Ctx, args: &S3RequestsArgs) -> Result<String> {
    let ids = ctx.tenant_ids(args.tenants);
    let moto = moto_bin(args.moto_bin.as_deref())?;
    let mut outcomes = Vec::new();
    for &kind in &ctx.kinds {
        eprintln!(
            "== s3-requests: {} with {} tenants ({} s idle, {} s at {}/s per tenant)",
            kind.label(),
            args.tenants,
            args.seconds,
            args.seconds,
            args.rate
        );
        outcomes.push(run_one(ctx, kind, args, &ids, &moto)?);
    }
    Ok(render(args, &outcomes))
}

fn render(args: &S3RequestsArgs, outcomes: &[Outcome]) -> String {
    let n = args.tenants as f64;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "S3 requests: {} tenants, each replicator with a fresh moto bucket behind a counting proxy \
         (every HTTP request, retries included). **Idle**: {} s with no writes, starting {} s after \
         every tenant had its first LTX object in the bucket. **Busy**: then {} s in which every \
         tenant commits one small UPDATE {}×/s. Cells: requests in the window (per tenant per \
         minute).\n",
        args.tenants, args.seconds, args.settle, args.seconds, args.rate
    );
    let mut header = vec!["requests"];
    for o in outcomes {
        header.push(match o.kind {
            Kind::Ours => "idle: litestream-manager",
            Kind::Litestream => "idle: Litestream 0.5.17",
        });
    }
    for o in outcomes {
        header.push(match o.kind {
            Kind::Ours => "busy: litestream-manager",
            Kind::Litestream => "busy: Litestream 0.5.17",
        });
    }
    let cell = |v: u64, secs: f64| {
        if v == 0 {
            "0".to_string()
        } else {
            format!("{v} ({:.2})", v as f64 / n / (secs / 60.0))
        }
    };
    let row = |name: &str, f: &dyn Fn(&Counts) -> u64, bold: bool| -> Vec<String> {
        let b = |s: String| if bold { format!("**{s}**") } else { s };
        std::iter::once(b(name.to_string()))
            .chain(outcomes.iter().map(|o| b(cell(f(&o.idle), o.idle_secs))))
            .chain(outcomes.iter().map(|o| b(cell(f(&o.busy), o.busy_secs))))
            .collect()
    };
    let mut rows = vec![
        row("PUT object (PutObject)", &|c| c.put, true),
        row("multipart: parts (UploadPart)", &|c| c.mp_part, false),
        row(
            "multipart: create + complete + abort",
            &|c| c.mp_create + c.mp_complete + c.mp_abort,
            false,
        ),
        row("GET object", &|c| c.get, false),
        row("LIST (ListObjectsV2)", &|c| c.list, false),
        row("HEAD", &|c| c.head, false),
        row("DELETE (DeleteObject, POST ?delete)", &|c| c.delete, false),
        row("other", &|c| c.other, false),
        row("total", &|c| c.total(), true),
    ];
    let text_row = |name: &str, f: &dyn Fn(&Outcome, bool) -> String| -> Vec<String> {
        std::iter::once(name.to_string())
            .chain(outcomes.iter().map(|o| f(o, false)))
            .chain(outcomes.iter().map(|o| f(o, true)))
            .collect()
    };
    rows.push(text_row("PUT object by LTX level", &|o, busy| {
        let c = if busy { &o.busy } else { &o.idle };
        if c.put_by_level.is_empty() {
            "—".into()
        } else {
            c.put_by_level
                .iter()
                .map(|(l, v)| format!("L{l}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }));
    rows.push(text_row("bytes uploaded by PUT object", &|o, busy| {
        let c = if busy { &o.busy } else { &o.idle };
        format!("{:.1} KiB", c.put_bytes as f64 / 1024.0)
    }));
    rows.push(text_row(
        "requests in the second half of the window",
        &|o, busy| {
            if busy {
                "".into()
            } else {
                o.idle_second_half.to_string()
            }
        },
    ));
    rows.push(text_row(
        "AWS request price per tenant per 30-day month, if the busy rate lasted",
        &|o, busy| {
            if !busy {
                // The idle window mostly holds one-time compaction of the start-up files.
                return "—".into();
            }
            let month = 30.0 * 86400.0 / o.busy_secs;
            format!("${:.2}", o.busy.cost_usd() * month / n)
        },
    ));
    rows.push(text_row(
        "commits in the window (failed; max COMMIT time)",
        &|o, busy| {
            if busy {
                format!(
                    "{} ({}; {:.0} ms)",
                    o.commits, o.failed_commits, o.max_commit_ms
                )
            } else {
                "0".into()
            }
        },
    ));
    md.push_str(&table(&header, &rows));
    let _ = writeln!(md);
    for o in outcomes {
        let _ = writeln!(
            md,
            "- {}: every tenant had an LTX object {:.1} s after start; {} objects in the bucket at the end; {}.",
            o.kind.label(),
            o.backed_up_s,
            o.objects_at_end,
            o.end
        );
        for (phase, c) in [("idle", &o.idle), ("busy", &o.busy)] {
            if !c.other_examples.is_empty() {
                let _ = writeln!(
                    md,
                    "  - {phase} \"other\" requests, e.g.: {}",
                    c.other_examples
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\nPrices: AWS S3 Standard us-east-1 list prices, ${USD_PER_1000_WRITE} per 1,000 PUT/POST/LIST, \
         ${USD_PER_1000_READ} per 1,000 GET/HEAD, DELETE free; storage and transfer not included."
    );
    md
}

fn run_one(
    ctx: &Ctx,
    kind: Kind,
    args: &S3RequestsArgs,
    ids: &[String],
    moto_bin: &Path,
) -> Result<Outcome> {
    let tmp = ctx.tempdir(&format!("s3req-{}-", short(kind)))?;
    let dirs = RunDirs::create(tmp.path())?;
    let template = dirs.root.join("template.db");
    sqlite::create_small_db(&template, 5, ctx.seed)?;
    let paths: Vec<PathBuf> = ids
        .iter()
        .map(|id| dirs.watch.join(format!("{id}.db")))
        .collect();
    for p in &paths {
        std::fs::copy(&template, p)?;
    }
    let (mut moto, moto_port) = start_moto(moto_bin, &dirs.root)?;
    let bucket = format!("lsm-bench-{}-{:08x}", short(kind), rand::random::<u32>());
    let (code, body) = request(moto_port, "PUT", &format!("/{bucket}"))?;
    if code != 200 {
        bail!(
            "create bucket {bucket}: HTTP {code}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let proxy = CountingProxy::start(moto_port)?;
    let target = Target::S3 {
        bucket: bucket.clone(),
        endpoint: format!("http://127.0.0.1:{}", proxy.port),
        region: REGION.into(),
        access_key: ACCESS_KEY.into(),
        secret_key: ACCESS_KEY.into(),
    };
    let mut rep = Replicator::start_to(kind, &ctx.bins, &dirs, &target)?;

    // 1. Every tenant backed up: an LTX object under databases/<uuid>/.
    let deadline = Instant::now() + Duration::from_secs(args.backup_timeout);
    let mut last_report = Instant::now();
    loop {
        rep.child.ensure_alive()?;
        moto.ensure_alive()?;
        let keys = list_keys(moto_port, &bucket, "databases/")?;
        let done: HashSet<&str> = keys
            .iter()
            .filter(|k| k.ends_with(".ltx"))
            .filter_map(|k| k.strip_prefix("databases/")?.split('/').next())
            .collect();
        let n = ids.iter().filter(|id| done.contains(id.as_str())).count();
        if n == ids.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{}: only {n} of {} tenants backed up after {:.0?}; log:\n{}",
                kind.label(),
                ids.len(),
                rep.child.started.elapsed(),
                procs::tail(&rep.child.log, 15)
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("  {n}/{} backed up", ids.len());
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let backed_up_s = rep.child.started.elapsed().as_secs_f64();
    eprintln!(
        "  all backed up after {backed_up_s:.1} s ({} requests so far)",
        proxy.peek_total()
    );
    sleep_alive(&mut rep, Duration::from_secs(args.settle))?;

    // 2. Idle window.
    let window = Duration::from_secs(args.seconds);
    proxy.take();
    let t0 = Instant::now();
    let mut at_half = None;
    let mut last_print = Instant::now();
    while t0.elapsed() < window {
        sleep_alive(
            &mut rep,
            window
                .saturating_sub(t0.elapsed())
                .min(Duration::from_secs(1)),
        )?;
        if at_half.is_none() && t0.elapsed() >= window / 2 {
            at_half = Some(proxy.peek_total());
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "  idle t={:>3.0} s: {} requests",
                t0.elapsed().as_secs_f64(),
                proxy.peek_total()
            );
            last_print = Instant::now();
        }
    }
    let idle_secs = t0.elapsed().as_secs_f64();
    let idle = proxy.take();
    let idle_second_half = idle.total() - at_half.unwrap_or(0);
    eprintln!("  idle: {} requests in {idle_secs:.0} s", idle.total());

    // 3. Busy window.
    let busy_start = Instant::now();
    let writes = write_load(&paths, args, ctx.seed, &proxy)?;
    let busy_secs = busy_start.elapsed().as_secs_f64();
    let busy = proxy.take();
    eprintln!(
        "  busy: {} requests in {busy_secs:.0} s ({} commits, {} failed)",
        busy.total(),
        writes.commits,
        writes.failed
    );
    rep.child.ensure_alive()?;
    let end = rep.stop();
    let objects_at_end = list_keys(moto_port, &bucket, "databases/")
        .map(|k| k.len())
        .unwrap_or(0);
    drop(proxy);
    moto.stop(Duration::from_secs(5));
    ctx.finish_tempdir(tmp);
    Ok(Outcome {
        kind,
        backed_up_s,
        idle,
        idle_second_half,
        idle_secs,
        busy,
        busy_secs,
        commits: writes.commits,
        failed_commits: writes.failed,
        max_commit_ms: writes.max_commit_ms,
        objects_at_end,
        end,
    })
}

struct Writes {
    commits: u64,
    failed: u64,
    max_commit_ms: f64,
}

/// Every tenant commits `UPDATE s SET v = k` `rate` times a second (random phase) for
/// `seconds`, on `writers` threads; returns when the window is over.
fn write_load(
    paths: &[PathBuf],
    args: &S3RequestsArgs,
    seed: u64,
    proxy: &CountingProxy,
) -> Result<Writes> {
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x53);
    let phases: Vec<Duration> = paths
        .iter()
        .map(|_| period.mul_f64(rng.random::<f64>()))
        .collect();
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let n_writers = args.writers.clamp(1, paths.len().max(1));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n_writers)
            .map(|w| {
                let mine: Vec<usize> = (w..paths.len()).step_by(n_writers).collect();
                let phases = &phases;
                scope.spawn(move || -> Result<Writes> {
                    let conns: Vec<rusqlite::Connection> = mine
                        .iter()
                        .map(|&i| sqlite::open_app(&paths[i]))
                        .collect::<Result<_>>()?;
                    let mut next: Vec<Instant> = mine.iter().map(|&i| start + phases[i]).collect();
                    let mut k = vec![0i64; mine.len()];
                    let mut r = Writes {
                        commits: 0,
                        failed: 0,
                        max_commit_ms: 0.0,
                    };
                    while let Some((j, &due)) = next.iter().enumerate().min_by_key(|(_, t)| **t) {
                        if due >= end {
                            break;
                        }
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let t = Instant::now();
                        k[j] += 1;
                        match conns[j].execute("UPDATE s SET v = ?1 WHERE id = 1", [k[j]]) {
                            Ok(_) => r.commits += 1,
                            Err(e) => {
                                r.failed += 1;
                                if r.failed <= 3 {
                                    eprintln!("  commit failed: {e}");
                                }
                            }
                        }
                        r.max_commit_ms = r.max_commit_ms.max(t.elapsed().as_secs_f64() * 1e3);
                        next[j] += period;
                    }
                    Ok(r)
                })
            })
            .collect();
        let mut last_print = Instant::now();
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(200));
            if last_print.elapsed() >= Duration::from_secs(10) {
                eprintln!(
                    "  busy t={:>3.0} s: {} requests",
                    start.elapsed().as_secs_f64(),
                    proxy.peek_total()
                );
                last_print = Instant::now();
            }
        }
        let mut total = Writes {
            commits: 0,
            failed: 0,
            max_commit_ms: 0.0,
        };
        for h in handles {
            let r = h
                .join()
                .map_err(|_| anyhow!("a writer thread panicked"))?
                .context("writer")?;
            total.commits += r.commits;
            total.failed += r.failed;
            total.max_commit_ms = total.max_commit_ms.max(r.max_commit_ms);
        }
        Ok(total)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff(chunks: &[&[u8]]) -> Counts {
        let counts = Mutex::new(Counts::default());
        let mut s = Sniffer::default();
        for c in chunks {
            s.feed(c, &counts);
        }
        counts.into_inner().unwrap()
    }

    #[test]
    fn requests_are_classified_as_s3_bills_them() {
        let stream = b"PUT /b/databases/x/0000/0000000000000001-0000000000000001.ltx HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b?list-type=2&prefix=databases%2Fx%2F HTTP/1.1\r\n\r\nPOST /b?delete HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPUT /b/k/ltx/1/0000000000000001-0000000000000002.ltx?partNumber=1&uploadId=u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHEAD /b/k HTTP/1.1\r\n\r\nGET /b/k HTTP/1.1\r\n\r\nPUT /b HTTP/1.1\r\n\r\n";
        // Split at every byte boundary: framing must not depend on how reads arrive.
        let c = sniff(&stream.iter().map(std::slice::from_ref).collect::<Vec<_>>());
        assert_eq!(
            (
                c.put,
                c.put_bytes,
                c.list,
                c.delete,
                c.mp_part,
                c.head,
                c.get,
                c.other
            ),
            (1, 5, 1, 1, 1, 1, 1, 1),
            "{c:?}"
        );
        assert_eq!(c.put_by_level.get(&0), Some(&1));
        let whole = sniff(&[stream]);
        assert_eq!(whole.total(), c.total());
    }
}
