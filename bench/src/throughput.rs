//! Scenarios `throughput` and `restore`: one tenant, an application writing M MiB of WAL as fast
//! as it can (≈100 KiB transactions of random blobs, SQLite's default autocheckpoint); the
//! replicator's CPU-seconds from the first write until the replica holds the last commit. Then
//! (restore) each restorer on each replica: wall time → MB/s, output verified against the source.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use engine::ltx::LtxFileName;

use crate::idle::{short, sleep_alive};
use crate::procs::{self, ProcSample};
use crate::replicator::{describe_replica, Kind, Replicator, RunDirs};
use crate::report::{mib, table};
use crate::sqlite::{self, BlobWriter, Digest};
use crate::{ltxread, Ctx};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[derive(Clone, Debug, clap::Args)]
pub struct WriteArgs {
    /// MiB of WAL the application writes.
    #[arg(long, default_value_t = 64)]
    pub mb: u64,
    /// Transaction size in KiB.
    #[arg(long, default_value_t = 100)]
    pub txn_kb: usize,
    /// Size of one random blob row in bytes (fits one 4 KiB page).
    #[arg(long, default_value_t = 4000)]
    pub blob: usize,
    /// Give up if the replica does not hold the last commit this many seconds after the writes.
    #[arg(long, default_value_t = 600)]
    pub catchup_timeout: u64,
    /// Keep measuring CPU this many seconds after the last commit, so that follow-up work
    /// (L1 compaction at the next 30 s boundary) is counted for both tools alike.
    #[arg(long, default_value_t = 35)]
    pub tail: u64,
    /// Give up if the application's writes take longer than this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub write_timeout: u64,
    /// Restore runs per (restorer, replica) pair; the median is reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// (throughput only) skip the restore timings.
    #[arg(long)]
    pub no_restore: bool,
}

/// One replicator's run over the write workload; keeps its temp dir for the restore stage.
struct Run {
    kind: Kind,
    tmp: crate::WorkDir,
    replica: PathBuf,
    wal_bytes: u64,
    txns: i64,
    rows: u64,
    write_s: f64,
    catchup_s: f64,
    cpu_s: f64,
    tail_cpu_s: f64,
    after: ProcSample,
    source_digest: Digest,
    verify: String,
    replica_desc: String,
    end: String,
}

pub fn run(
    ctx: &Ctx,
    args: &WriteArgs,
    with_throughput: bool,
    with_restore: bool,
) -> Result<String> {
    let uuid = ctx.tenant_ids(1).remove(0);
    let mut runs = Vec::new();
    for &kind in &ctx.kinds {
        eprintln!("== write {} MiB of WAL: {}", args.mb, kind.label());
        runs.push(replicate(ctx, kind, args, &uuid)?);
    }
    let mut md = String::new();
    if with_throughput {
        let _ = writeln!(
            md,
            "Throughput: one tenant, the application writes {} MiB of WAL as fast as it can \
             ({} KiB transactions of {}-byte random blobs, default autocheckpoint, synchronous FULL); \
             CPU of the replicator process from the first write until a file in the replica (L0, or an L1 \
             that carries a folded batch) holds \
             the last commit.\n",
            args.mb, args.txn_kb, args.blob
        );
        let header: Vec<&str> = std::iter::once("")
            .chain(runs.iter().map(|r| r.kind.label()))
            .collect();
        let row = |name: &str, f: &dyn Fn(&Run) -> String| -> Vec<String> {
            std::iter::once(name.to_string())
                .chain(runs.iter().map(f))
                .collect()
        };
        let rows = vec![
            row("**CPU-seconds per GiB of WAL**", &|r| {
                format!("**{:.2}**", r.cpu_s / (r.wal_bytes as f64 / GIB))
            }),
            row(
                "replicator CPU (first write → replica has last commit)",
                &|r| format!("{:.2} CPU-s", r.cpu_s),
            ),
            row(
                &format!(
                    "CPU-seconds per GiB, counting until {} s after the last commit (incl. L1 compaction)",
                    args.tail
                ),
                &|r| {
                    format!(
                        "{:.2} ({:.2} CPU-s)",
                        r.tail_cpu_s / (r.wal_bytes as f64 / GIB),
                        r.tail_cpu_s
                    )
                },
            ),
            row("WAL written by the app", &|r| {
                format!(
                    "{:.0} MiB ({} transactions, {} rows)",
                    r.wal_bytes as f64 / MIB,
                    r.txns,
                    r.rows
                )
            }),
            row("app write time / rate", &|r| {
                format!(
                    "{:.1} s / {:.1} MiB/s",
                    r.write_s,
                    r.wal_bytes as f64 / MIB / r.write_s
                )
            }),
            row("last commit → in the replica", &|r| {
                format!("{:.2} s", r.catchup_s)
            }),
            row("replicator peak RSS (VmHWM)", &|r| mib(r.after.hwm_kib)),
            row("replicator threads at end", &|r| {
                r.after.threads.to_string()
            }),
            row("replica at end", &|r| r.replica_desc.clone()),
            row("restore by the same tool = source?", &|r| r.verify.clone()),
            row("how the process ended", &|r| r.end.clone()),
        ];
        md.push_str(&table(&header, &rows));
        if let Some(r) = runs.first() {
            let _ = writeln!(md, "\nSource content: {}.", r.source_digest);
        }
    }
    if with_restore {
        if !md.is_empty() {
            md.push('\n');
        }
        md.push_str(&restore_stage(ctx, args, &runs)?);
    }
    for r in runs {
        ctx.finish_tempdir(r.tmp);
    }
    Ok(md)
}

fn replicate(ctx: &Ctx, kind: Kind, args: &WriteArgs, uuid: &str) -> Result<Run> {
    let tmp = ctx.tempdir(&format!("write-{}-", short(kind)))?;
    let dirs = RunDirs::create(tmp.path())?;
    let source = dirs.watch.join(format!("{uuid}.db"));
    let marker_pgno = sqlite::create_blob_db(&source)?;
    let mut rep = Replicator::start(kind, &ctx.bins, &dirs)?;
    let pid = rep.pid();
    let backed = rep.wait_backed_up(&[uuid.to_string()], Duration::from_secs(120))?;
    eprintln!("  initial backup after {:.1} s", backed.as_secs_f64());
    // Let the start-up work (Litestream's first L9 snapshot ~1 s after start) finish first.
    sleep_alive(&mut rep, Duration::from_secs(3))?;

    let mut w = BlobWriter::new(&source, ctx.seed, args.txn_kb * 1024, args.blob)?;
    let target = args.mb * 1024 * 1024;
    let c0 = procs::cpu_seconds(pid)?;
    let t0 = Instant::now();
    let mut last_check = Instant::now();
    let mut last_print = Instant::now();
    let write_deadline = Duration::from_secs(args.write_timeout);
    while w.wal_bytes() < target {
        w.commit_one()?;
        if t0.elapsed() > write_deadline {
            bail!(
                "{}: writing {} MiB took longer than {} s (at {:.0} MiB)",
                kind.label(),
                args.mb,
                args.write_timeout,
                w.wal_bytes() as f64 / MIB
            );
        }
        if last_check.elapsed() > Duration::from_secs(1) {
            rep.child.ensure_alive()?;
            last_check = Instant::now();
        }
        if last_print.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  {:.0}/{} MiB of WAL written ({:.0} s)",
                w.wal_bytes() as f64 / MIB,
                args.mb,
                t0.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
    }
    let write_s = t0.elapsed().as_secs_f64();
    let t_last = Instant::now();
    let last = w.seq;
    eprintln!(
        "  wrote {:.0} MiB of WAL in {write_s:.1} s; waiting for commit {last} in the replica",
        w.wal_bytes() as f64 / MIB
    );

    // Wait until a replica file carries the marker page with v >= last: an L0, or the L1 our
    // manager folds the batch after an L1 boundary into (see `engine::compact::Index::fold_l1`).
    let l0 = rep.tenant_l0(uuid);
    let l1 = l0.with_file_name("1");
    let deadline = Instant::now() + Duration::from_secs(args.catchup_timeout);
    let mut checked_max: u64 = 0;
    let (catchup_s, c1) = loop {
        rep.child.ensure_alive()?;
        let mut names: Vec<(LtxFileName, PathBuf)> = Vec::new();
        for dir in [&l0, &l1] {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == &l1 => continue,
                Err(e) => return Err(e).with_context(|| format!("list {}", dir.display())),
            };
            names.extend(entries.flatten().filter_map(|e| {
                let name = e.file_name().to_str().and_then(LtxFileName::parse)?;
                (name.max.0 > checked_max).then(|| (name, e.path()))
            }));
        }
        names.sort_by_key(|(n, _)| (n.max, n.min));
        let mut found = false;
        for (n, path) in names {
            let m = ltxread::read_marker(&path, marker_pgno, false)?;
            checked_max = n.max.0;
            if m.marker.is_some_and(|v| v >= last) {
                found = true;
                break;
            }
        }
        if found {
            break (t_last.elapsed().as_secs_f64(), procs::cpu_seconds(pid)?);
        }
        if Instant::now() > deadline {
            bail!(
                "{}: commit {last} not in the replica {} s after the writes (checked up to TXID {checked_max:#x})",
                kind.label(),
                args.catchup_timeout
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let cpu_s = c1 - c0;
    eprintln!(
        "  in the replica {catchup_s:.2} s after the last commit; replicator CPU {cpu_s:.2} s \
         = {:.2} CPU-s/GiB",
        cpu_s / (w.wal_bytes() as f64 / GIB)
    );
    let tail_end = t_last + Duration::from_secs(args.tail);
    sleep_alive(&mut rep, tail_end.saturating_duration_since(Instant::now()))?;
    let tail_cpu_s = procs::cpu_seconds(pid)? - c0;
    let after = procs::sample(pid, false)?;
    eprintln!(
        "  including the {} s after the last commit: {tail_cpu_s:.2} CPU-s = {:.2} CPU-s/GiB",
        args.tail,
        tail_cpu_s / (w.wal_bytes() as f64 / GIB)
    );
    let (wal_bytes, txns, rows) = (w.wal_bytes(), w.seq, w.rows);
    drop(w);
    let end = rep.stop();
    let replica = rep.tenant_replica(uuid);
    let replica_desc = describe_replica(&replica);
    let source_digest = sqlite::digest(&source)?;
    // The same tool restores its own replica: must equal the source.
    let out = dirs.root.join("verify.db");
    let restorer = match kind {
        Kind::Ours => Restorer::Ours,
        Kind::Litestream => Restorer::Litestream { check: false },
    };
    let verify = match restore_once(ctx, restorer, &replica, &out, &dirs.root) {
        Ok((_, d)) if d == source_digest => format!("yes ({})", d),
        Ok((_, d)) => format!("**NO**: restored {d}, source {source_digest}"),
        Err(e) => format!("**restore failed**: {e:#}"),
    };
    remove_db(&out);
    eprintln!("  verify: {verify}");
    Ok(Run {
        kind,
        tmp,
        replica,
        wal_bytes,
        txns,
        rows,
        write_s,
        catchup_s,
        cpu_s,
        tail_cpu_s,
        after,
        source_digest,
        verify,
        replica_desc,
        end,
    })
}

#[derive(Clone, Copy, Debug)]
enum Restorer {
    Ours,
    /// `check`: with `-integrity-check full` (ours always runs `PRAGMA integrity_check`).
    Litestream {
        check: bool,
    },
}

impl Restorer {
    fn label(self) -> &'static str {
        match self {
            Restorer::Ours => "`litestream-manager restore` (always runs integrity_check)",
            Restorer::Litestream { check: false } => "`litestream restore` (default: no check)",
            Restorer::Litestream { check: true } => "`litestream restore -integrity-check full`",
        }
    }
}

/// Runs one restore into `out` (removed first); returns its wall time and the restored digest.
fn restore_once(
    ctx: &Ctx,
    r: Restorer,
    replica: &Path,
    out: &Path,
    logdir: &Path,
) -> Result<(Duration, Digest)> {
    remove_db(out);
    let url = format!("file://{}", replica.display());
    let mut cmd;
    match r {
        Restorer::Ours => {
            cmd = Command::new(&ctx.bins.manager);
            cmd.arg("restore").arg("-o").arg(out).arg(&url);
        }
        Restorer::Litestream { check } => {
            cmd = Command::new(&ctx.bins.litestream);
            cmd.arg("restore").arg("-o").arg(out);
            if check {
                cmd.args(["-integrity-check", "full"]);
            }
            cmd.arg(&url);
        }
    }
    let log = logdir.join("restore.log");
    let _ = std::fs::remove_file(&log);
    let (st, took) = procs::run_timed(cmd, Duration::from_secs(1800), &log)?;
    if !st.success() {
        bail!("{} failed ({st}):\n{}", r.label(), procs::tail(&log, 10));
    }
    let d = sqlite::digest(out)?;
    Ok((took, d))
}

/// Removes a database file and its sidecars (reading a restored WAL-mode database leaves `-shm`
/// and `-wal` behind, and both restorers refuse an output with sidecars).
fn remove_db(p: &Path) {
    let _ = std::fs::remove_file(p);
    for ext in ["-wal", "-shm", "-journal"] {
        let mut s = p.as_os_str().to_owned();
        s.push(ext);
        let _ = std::fs::remove_file(PathBuf::from(s));
    }
}

fn restore_stage(ctx: &Ctx, args: &WriteArgs, runs: &[Run]) -> Result<String> {
    let restorers = [
        Restorer::Ours,
        Restorer::Litestream { check: false },
        Restorer::Litestream { check: true },
    ];
    let mut rows = Vec::new();
    let mut sizes = Vec::new();
    for run in runs {
        let out = run.tmp.path().join("restored.db");
        for &r in &restorers {
            let mut times = Vec::new();
            let mut note = String::new();
            let mut size = 0u64;
            for i in 0..args.repeat.max(1) {
                eprintln!(
                    "== restore {} replica with {} (run {})",
                    run.kind.label(),
                    r.label(),
                    i + 1
                );
                match restore_once(ctx, r, &run.replica, &out, run.tmp.path()) {
                    Ok((took, d)) => {
                        size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
                        if d != run.source_digest {
                            note = format!("**restored content differs**: {d}");
                        }
                        times.push(took.as_secs_f64());
                        eprintln!(
                            "  {:.2} s, {:.0} MB/s",
                            took.as_secs_f64(),
                            size as f64 / 1e6 / took.as_secs_f64()
                        );
                    }
                    Err(e) => {
                        note = format!(
                            "**failed**: {}",
                            format!("{e:#}")
                                .lines()
                                .next()
                                .unwrap_or("")
                                .replace('|', "\\|")
                        );
                        eprintln!("  {e:#}");
                        break;
                    }
                }
            }
            remove_db(&out);
            times.sort_by(f64::total_cmp);
            let (t, rate) = if times.is_empty() {
                ("—".to_string(), "—".to_string())
            } else {
                let med = times[times.len() / 2];
                (
                    format!("{med:.2} s"),
                    format!("**{:.0} MB/s**", size as f64 / 1e6 / med),
                )
            };
            let ok = if note.is_empty() {
                "identical".to_string()
            } else {
                note
            };
            rows.push(vec![
                format!("{}'s replica", run.kind.label()),
                r.label().to_string(),
                t,
                rate,
                ok,
            ]);
            sizes.push(size);
        }
    }
    let mut md = String::new();
    let db_mb = sizes.iter().copied().max().unwrap_or(0) as f64 / 1e6;
    let _ = writeln!(
        md,
        "Restore: the {db_mb:.0} MB database of the throughput run (file replicas on local disk, \
         warm page cache), each restorer on each replica; MB/s = restored file size / wall time{}. \
         \"identical\" = marker, row count and CRC-64 of every row equal the source.\n",
        if args.repeat > 1 {
            format!(" (median of {})", args.repeat)
        } else {
            String::new()
        }
    );
    md.push_str(&table(
        &["replica", "restorer", "wall time", "rate", "content"],
        &rows,
    ));
    let _ = writeln!(md);
    for run in runs {
        let _ = writeln!(md, "- {}'s replica: {}", run.kind.label(), run.replica_desc);
    }
    Ok(md)
}
