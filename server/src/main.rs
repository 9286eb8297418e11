//! `litestream-manager`: parses the command line, sets up logging, wires the engine's store and
//! watcher to the HTTP server, and runs `restore`. It owns no replication logic.

mod assets;
mod cli;
mod detail;
mod http;
mod listing;
mod metrics;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use engine::store::{Store, StoreConfig, Target};
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command, LogFormat, RestoreArgs, ServeArgs};

/// Rust's allocations (tenant state: a few hundred bytes each, for as long as the process lives)
/// go to jemalloc; SQLite's (the connections of tenants being opened, freed when they go cold)
/// stay with glibc's malloc (see `limit_malloc_arenas`). Kept apart, a start-up or compaction
/// wave of thousands of connections leaves no free holes pinned between long-lived tenant
/// state. Measured with 10,000 idle tenants: 48–52 MiB RSS after the start-up wave, against
/// 69 MiB with glibc alone (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation: two arenas (as glibc's `M_ARENA_MAX` below;
/// the default is four per CPU), a background thread that returns freed pages after 5 s
/// instead of at the next allocation, and no "muzzy" second stage that would keep them counted.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 70] =
    b"narenas:2,background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:0\0";

const DEFAULT_WATCH_DIR: &str = "data/clients";
/// Bounded final sync on SIGTERM/SIGINT; a second signal aborts it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = parse_cli();
    init_tracing(cli.serve.log_format);
    raise_fd_limit();
    limit_malloc_arenas();
    // Blocking work (SQLite, file I/O) queues behind a bounded pool instead of growing to
    // tokio's 512 threads when thousands of tenants start or compact at once: each thread
    // costs a stack and allocator state, and the disk is the bottleneck anyway.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_keep_alive(Duration::from_secs(10))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Some(Command::Restore(args)) => restore(args).await,
            None => serve(cli.serve).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Hot tenants hold a few file descriptors each; the default soft limit (1024) is too low for a
/// start with thousands of tenants. Raise it to the hard limit, as servers commonly do.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // 1. Validate the directories.
    let default_dirs = args.watch_dir.is_empty() && args.dsn.is_none();
    let watch_dirs: Vec<PathBuf> = if default_dirs {
        let d = PathBuf::from(DEFAULT_WATCH_DIR);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        vec![d]
    } else {
        args.watch_dir.clone()
    };
    for d in &watch_dirs {
        if !d.is_dir() {
            bail!(
                "directory does not exist: {} (please create it first)",
                d.display()
            );
        }
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create state directory {}", args.state_dir.display()))?;
    let state_canon = std::fs::canonicalize(&args.state_dir)?;
    for d in &watch_dirs {
        if std::fs::canonicalize(d)? == state_canon {
            bail!(
                "-state-dir {} must not be a watched directory",
                args.state_dir.display()
            );
        }
    }
    let (target, target_status) = match &args.bucket {
        Some(bucket) => {
            use engine::client::s3::{S3Client, S3Config};
            let mut config = S3Config::new(bucket.as_str());
            config.endpoint = args.endpoint.clone();
            config.region = args.region.clone();
            let client = S3Client::connect(config)
                .await
                .with_context(|| format!("-bucket {bucket}"))?;
            let prefix = args.prefix.trim_matches('/').to_string();
            // One ListObjectsV2 (max 1 key): reachability, credentials and bucket, at once.
            // A failure is reported, not fatal: tenants stage locally and catch up later.
            let status = client.probe(&prefix).await;
            if status.is_ok() {
                tracing::info!(url = %client.url_for(&prefix), "S3 bucket reachable");
                abort_uploads_left_behind(&client, &prefix).await;
            } else {
                tracing::error!(url = %client.url_for(&prefix), "S3 bucket check failed: {status}");
            }
            (Target::S3 { client, prefix }, status.to_string())
        }
        None => {
            let root = args.replica_dir.join(&args.prefix);
            std::fs::create_dir_all(&root)
                .with_context(|| format!("cannot create replica directory {}", root.display()))?;
            (Target::Fs { root }, "ok".to_string())
        }
    };

    // 2. Bind before starting replication, so a busy port fails fast and loses nothing.
    let addr = format!("{}:{}", args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr}: {e} (choose another port with -port)")
    })?;

    // 3. Engine: store + watcher.
    let cancel = CancellationToken::new();
    let store = Store::new(
        StoreConfig {
            state_dir: args.state_dir.clone(),
            target: target.clone(),
            tenant: engine::tenant::TenantConfig {
                compaction: testing_compaction_config()?,
                sync_window: args.sync_window,
                ..Default::default()
            },
            max_uploads: args.max_uploads,
            max_opening: engine::store::DEFAULT_MAX_OPENING,
        },
        cancel.child_token(),
    );
    if let Some(dsn) = &args.dsn {
        register_dsn(&store, dsn, args.db_name.as_deref())?;
    }
    let ignored = Arc::new(std::sync::Mutex::new(
        engine::watcher::IgnoredNames::default(),
    ));
    let readiness = Arc::new(http::Readiness::default());
    let state = http::AppState {
        store: store.clone(),
        started: Instant::now(),
        bucket: args.bucket.clone(),
        watch_dirs: watch_dirs.iter().map(|d| d.display().to_string()).collect(),
        target_status: Arc::new(std::sync::RwLock::new(target_status)),
        ignored: ignored.clone(),
        readiness: readiness.clone(),
    };
    let watch_dirs_shown = state.watch_dirs.clone();

    // 4. Serve from now on: /healthz answers and /readyz says 503 during the initial scan,
    //    which takes a while with thousands of tenants.
    let shutdown = cancel.clone();
    let server = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await });
    let server = tokio::spawn(async move { server.await });

    // 5. The watcher returns once its initial scan registered every existing tenant.
    let watcher = engine::watcher::spawn(
        store.clone(),
        watch_dirs.clone(),
        engine::watcher::DEFAULT_RESCAN_INTERVAL,
        cancel.child_token(),
        ignored,
    )
    .await
    .context("cannot watch directories")?;
    readiness
        .scan_done
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(
        "🚀 litestream-manager {} on http://{addr} — watching {:?}, replicating to {}",
        env!("CARGO_PKG_VERSION"),
        watch_dirs_shown,
        target.describe()
    );

    // glibc keeps freed memory in its arenas; after a burst of hot tenants (start-up, a wave
    // of snapshots) that is most of the RSS of an idle manager. Hand it back periodically.
    tokio::spawn(release_freed_memory(cancel.child_token()));

    // 6. Serve until a signal; then a bounded final sync.
    wait_for_signal().await;
    tracing::info!(
        "shutting down: final sync (at most {SHUTDOWN_GRACE:?}; press Ctrl-C again to abort)"
    );
    cancel.cancel();
    tokio::select! {
        done = store.shutdown(SHUTDOWN_GRACE) => {
            if !done { tracing::warn!("final sync did not finish in time"); }
        }
        _ = wait_for_signal() => tracing::warn!("aborted final sync"),
    }
    watcher.abort();
    let _ = server.await;
    Ok(())
}

/// Environment knobs for tests only (server/tests/crash.rs aims kill -9 at compactions and
/// snapshots with them); listed under `--help`, never needed in production.
const TESTING_ENV_HELP: &str =
    "Testing only (environment; shortens Litestream's schedule so tests can \
crash the manager mid-compaction):\n  \
LSM_COMPACTION_INTERVALS=1s,3s,10s  intervals of levels 1, 2, 3... (default 30s,5m,1h)\n  \
LSM_SNAPSHOT_INTERVAL=5s            L9 snapshot interval (default 24h)\n  \
LSM_SNAPSHOT_RETENTION=20s          snapshot retention (default 24h)\n  \
LSM_L0_RETENTION=5s                 how long L0 files outlive the L1 covering them (default 5m)";

/// Parses the command line; `--help` also lists [`TESTING_ENV_HELP`].
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let cmd = Cli::command();
    let after = match cmd.get_after_help() {
        Some(examples) => format!("{examples}\n\n{TESTING_ENV_HELP}"),
        None => TESTING_ENV_HELP.to_string(),
    };
    let matches = cmd
        .after_long_help(after)
        .get_matches_from(cli::normalize_args(std::env::args_os()));
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Litestream's compaction schedule, or the shorter one the `LSM_*` variables of
/// [`TESTING_ENV_HELP`] ask for (durations like `500ms`, `3s`, `2m`, `1h`).
fn testing_compaction_config() -> anyhow::Result<engine::compact::CompactionConfig> {
    fn duration(var: &str, v: &str) -> anyhow::Result<Duration> {
        cli::parse_duration(v).map_err(|e| anyhow::anyhow!("{var}={e}"))
    }
    let get = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    let mut cfg = engine::compact::CompactionConfig::default();
    if let Some(v) = get("LSM_COMPACTION_INTERVALS") {
        cfg.level_intervals = v
            .split(',')
            .map(|d| duration("LSM_COMPACTION_INTERVALS", d))
            .collect::<anyhow::Result<_>>()?;
        if !(1..=8).contains(&cfg.level_intervals.len()) {
            bail!("LSM_COMPACTION_INTERVALS={v:?}: 1 to 8 levels");
        }
    }
    if let Some(v) = get("LSM_SNAPSHOT_INTERVAL") {
        cfg.snapshot_interval = duration("LSM_SNAPSHOT_INTERVAL", &v)?;
    }
    if let Some(v) = get("LSM_SNAPSHOT_RETENTION") {
        cfg.snapshot_retention = duration("LSM_SNAPSHOT_RETENTION", &v)?;
    }
    if let Some(v) = get("LSM_L0_RETENTION") {
        cfg.l0_retention = duration("LSM_L0_RETENTION", &v)?;
    }
    if cfg.level_intervals != engine::compact::DEFAULT_LEVEL_INTERVALS
        || cfg.snapshot_interval != engine::compact::DEFAULT_SNAPSHOT_INTERVAL
        || cfg.snapshot_retention != engine::compact::DEFAULT_SNAPSHOT_RETENTION
        || cfg.l0_retention != engine::compact::DEFAULT_L0_RETENTION
    {
        tracing::warn!(
            ?cfg,
            "testing-only compaction schedule from LSM_* environment"
        );
    }
    Ok(cfg)
}

/// Threads of the blocking pool (SQLite connections, file I/O, merges).
const MAX_BLOCKING_THREADS: usize = 32;

/// glibc gives each thread that allocates its own arena (up to 8 per core), and memory freed in
/// one arena is not reused by another: with bursts of blocking threads that fragments into
/// hundreds of MiB. Two arenas keep the footprint near what is live. No-op elsewhere.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // A fixed threshold: buffers of 128 KiB and more (compaction and upload I/O) are
        // mapped and unmapped on their own. glibc otherwise raises the threshold each time such
        // a buffer is freed, and later ones land in the heap between long-lived tenant state,
        // where they pin pages after a compaction wave of thousands of tenants.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Returns memory freed by the allocator to the OS every 30 s (glibc only; a no-op elsewhere).
async fn release_freed_memory(cancel: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(30);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only inspects and releases the allocator's own free memory.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Lists the multipart uploads a killed predecessor left open under `prefix` (before any tenant
/// of this process uploads, so none is ours) and aborts them in the background: their parts are
/// billed storage that no object is ever made of. Best effort; a bucket lifecycle rule
/// (`AbortIncompleteMultipartUpload`) remains the backstop.
async fn abort_uploads_left_behind(client: &engine::client::s3::S3Client, prefix: &str) {
    let uploads = match client.open_ltx_uploads(prefix).await {
        Ok(u) if u.is_empty() => return,
        Ok(u) => u,
        Err(e) => {
            tracing::warn!("cannot list incomplete multipart uploads: {e}");
            return;
        }
    };
    let client = client.clone();
    tokio::spawn(async move {
        let mut aborted = 0usize;
        for u in &uploads {
            match client.abort_upload(u).await {
                Ok(()) => aborted += 1,
                Err(e) => {
                    tracing::warn!(key = %u.key, "cannot abort an incomplete multipart upload: {e}")
                }
            }
        }
        tracing::info!(
            aborted,
            found = uploads.len(),
            "aborted the multipart uploads an earlier run left incomplete"
        );
    });
}

fn register_dsn(store: &Store, dsn: &Path, db_name: Option<&str>) -> anyhow::Result<()> {
    if !dsn.is_file() {
        bail!("-dsn {}: file does not exist", dsn.display());
    }
    let name = match db_name {
        Some(n) => n.to_string(),
        None => dsn
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string(),
    };
    let id = cli::sanitize_db_name(&name).map_err(anyhow::Error::msg)?;
    store
        .register(&id, &std::fs::canonicalize(dsn)?)
        .map_err(|e| anyhow::anyhow!("-dsn {}: {e}", dsn.display()))?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    use engine::restore::{RestoreOptions, Target as RestoreTarget};
    let (replica, id) = parse_replica_url(&args.url)?;
    let mut target = RestoreTarget::default();
    if let Some(t) = &args.txid {
        target.txid = Some(t.parse().map_err(|_| {
            anyhow::anyhow!("-txid {t:?}: expected exactly 16 hex digits, e.g. 0000000000000007")
        })?);
    }
    if let Some(ts) = &args.timestamp {
        let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            .map_err(|e| {
                anyhow::anyhow!("-timestamp {ts:?}: not RFC 3339 ({e}); e.g. 2026-11-29T13:59:18Z")
            })?;
        target.timestamp = Some(t.into());
    }
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{id}.db")));
    let opts = RestoreOptions {
        target,
        force: args.force,
        integrity_check: true,
    };
    let started = Instant::now();
    let report = engine::restore::restore(&replica, &out, &opts, &CancellationToken::new()).await?;
    eprintln!(
        "restored {} to TXID {} ({} pages of {} bytes) from {} files in {:.2?}",
        out.display(),
        report.txid,
        report.pages,
        report.page_size,
        report.plan.len(),
        started.elapsed()
    );
    Ok(())
}

/// `file:///abs/dir`, a plain directory path, or Litestream's S3 form
/// `s3://bucket/path[?endpoint=URL&region=R&forcePathStyle=true]` (credentials from the AWS chain).
fn parse_replica_url(url: &str) -> anyhow::Result<(engine::client::Replica, String)> {
    if let Some(rest) = url.strip_prefix("s3://") {
        use engine::client::s3::{S3Client, S3Config};
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, path) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            bail!(
                "{url}: no bucket; expected s3://BUCKET/PATH, e.g. s3://my-backups/databases/<id>"
            );
        }
        let mut config = S3Config::new(bucket);
        let decode = |v: &str| -> String {
            let b = v.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                    (b'%', Some(c)) => {
                        out.push(c);
                        i += 3;
                    }
                    (c, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v);
            let v = v.as_str();
            match k {
                "endpoint" => config.endpoint = Some(v.to_string()),
                "region" => config.region = Some(v.to_string()),
                "forcePathStyle" => {
                    config.force_path_style = Some(matches!(v, "" | "true" | "1"));
                }
                // Litestream tunables that do not change what is read.
                "skipVerify" | "signPayload" | "requireContentMD5" | "partSize" | "concurrency" => {}
                _ => bail!("{url}: unknown query parameter {k:?} (known: endpoint, region, forcePathStyle)"),
            }
        }
        let prefix: Vec<&str> = path
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        let Some(id) = prefix.last().map(|s| s.to_string()) else {
            bail!("{url}: no path; expected s3://{bucket}/PATH, e.g. s3://{bucket}/databases/<id>");
        };
        // Building the client reads the AWS config files; restore runs on the multi-threaded
        // runtime, so blocking this thread briefly is fine.
        let client = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(S3Client::connect(config))
        })
        .with_context(|| url.to_string())?;
        let replica = client.replica(&prefix.join("/"));
        return Ok((engine::client::Replica::S3(replica), id));
    }
    let path = match url.strip_prefix("file://") {
        Some(p) if p.starts_with('/') => PathBuf::from(p),
        Some(_) => bail!(
            "{url}: a file URL needs an absolute path, e.g. file:///srv/replica/databases/<id>"
        ),
        None if url.contains("://") => {
            bail!("{url}: unsupported URL scheme (use file:// or a directory)")
        }
        None => PathBuf::from(url),
    };
    if !path.is_dir() {
        bail!("replica directory does not exist: {}", path.display());
    }
    let id = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("restored")
        .to_string();
    Ok((
        engine::client::Replica::Fs(engine::client::fs::FsReplica::new(path)),
        id,
    ))
}
