//! Scenario `lag`: commit-to-replica latency measured from outside.
//!
//! N tenants each commit `rate` times a second (`UPDATE s SET v = k`, k = 1, 2, …; autocommit)
//! and record the instant each COMMIT returned. An observer gets inotify events (the `notify`
//! crate) for every tenant's `ltx/0/` and `ltx/1/` directories; for each new file it decodes the
//! file (full CRC check) and reads the marker page: a file whose marker is `v` holds every commit
//! k ≤ v. Lag of commit k = arrival of the first replica file with marker ≥ k − the instant
//! COMMIT returned. (Level 1 counts because our manager folds the batch that follows an L1
//! boundary into that L1 instead of uploading it as an L0; Litestream's L1 files only ever hold
//! what its L0 files already did.)
//! A slow directory sweep (1 s) catches files whose events were missed; they are counted.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use engine::ltx::LtxFileName;
use notify::Watcher;
use rand::{Rng, SeedableRng};

use crate::idle::{short, sleep_alive};
use crate::procs;
use crate::replicator::{Kind, Replicator, RunDirs};
use crate::report::{mib, percentile, table};
use crate::{ltxread, sqlite, Ctx};

#[derive(Clone, Debug, clap::Args)]
pub struct LagArgs {
    /// Number of tenants committing concurrently.
    #[arg(long, default_value_t = 100)]
    pub tenants: usize,
    /// Commits per second per tenant.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Length of the write phase, seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Writer threads (tenants are spread over them).
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// After the writes, wait at most this long for the last commits to reach the replica.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
}

struct Outcome {
    kind: Kind,
    commits: usize,
    lags: Vec<f64>,
    missing: usize,
    files: usize,
    l1_files: usize,
    swept: usize,
    swept_then_event: usize,
    swept_event_delay_max: f64,
    errors: Vec<String>,
    write_errors: usize,
    late_commits: usize,
    max_late_s: f64,
    /// How long each COMMIT took in the application (sorted).
    commit_durations: Vec<f64>,
    cpu_pct: f64,
    rss_kib: u64,
    hwm_kib: u64,
    end: String,
}

pub fn run(ctx: &Ctx, args: &LagArgs) -> Result<String> {
    let ids = ctx.tenant_ids(args.tenants);
    let mut outcomes = Vec::new();
    for &kind in &ctx.kinds {
        eprintln!(
            "== lag: {} — {} tenants × {}/s for {} s",
            kind.label(),
            args.tenants,
            args.rate,
            args.seconds
        );
        outcomes.push(run_one(ctx, kind, args, &ids)?);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Commit-to-replica lag: {} tenants, each committing {}×/s (one small UPDATE per \
         transaction) for {} s; time from COMMIT returning in the application to the first L0 \
         file in the replica that contains it (inotify on the replica directories, each file \
         decoded and its checksum verified).\n",
        args.tenants, args.rate, args.seconds
    );
    let header: Vec<&str> = std::iter::once("")
        .chain(outcomes.iter().map(|o| o.kind.label()))
        .collect();
    let row = |name: &str, f: &dyn Fn(&Outcome) -> String| -> Vec<String> {
        std::iter::once(name.to_string())
            .chain(outcomes.iter().map(f))
            .collect()
    };
    let pct = |p: f64| move |o: &Outcome| format!("{:.3} s", percentile(&o.lags, p));
    let rows = vec![
        row("commits (observed in the replica)", &|o| {
            format!("{} ({})", o.commits, o.lags.len())
        }),
        row("**p50**", &|o| format!("**{}**", pct(50.0)(o))),
        row("p90", &pct(90.0)),
        row("**p99**", &|o| format!("**{}**", pct(99.0)(o))),
        row("max", &pct(100.0)),
        row("mean", &|o| {
            format!(
                "{:.3} s",
                o.lags.iter().sum::<f64>() / o.lags.len().max(1) as f64
            )
        }),
        row("min", &|o| {
            format!("{:.3} s", o.lags.first().copied().unwrap_or(f64::NAN))
        }),
        row("commits never seen in the replica", &|o| {
            o.missing.to_string()
        }),
        row("replica files observed: L0 / L1", &|o| {
            format!("{} / {}", o.files, o.l1_files)
        }),
        row(
            "… seen by the 1 s sweep before their inotify event (event came later / max delay)",
            &|o| {
                format!(
                    "{} ({} / {:.0} ms)",
                    o.swept,
                    o.swept_then_event,
                    1e3 * o.swept_event_delay_max
                )
            },
        ),
        row("unreadable files", &|o| {
            if o.errors.is_empty() {
                "0".into()
            } else {
                format!("{}: {}", o.errors.len(), o.errors[0].replace('|', "\\|"))
            }
        }),
        row("app: COMMIT duration p50 / p99 / max", &|o| {
            let d = &o.commit_durations;
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                1e3 * percentile(d, 50.0),
                1e3 * percentile(d, 99.0),
                1e3 * percentile(d, 100.0)
            )
        }),
        row(
            "app: failed commits / commits started > 100 ms late (max)",
            &|o| {
                format!(
                    "{} / {} ({:.3} s)",
                    o.write_errors, o.late_commits, o.max_late_s
                )
            },
        ),
        row("replicator CPU during the writes", &|o| {
            format!("{:.1} % of one core", o.cpu_pct)
        }),
        row("replicator RSS at end (VmHWM)", &|o| {
            format!("{} ({})", mib(o.rss_kib), mib(o.hwm_kib))
        }),
        row("how the process ended", &|o| o.end.clone()),
    ];
    md.push_str(&table(&header, &rows));
    Ok(md)
}

/// What the observer saw of one tenant: (arrival, marker) per L0 file, in arrival order.
type Arrivals = Vec<Vec<(Instant, i64)>>;

fn run_one(ctx: &Ctx, kind: Kind, args: &LagArgs, ids: &[String]) -> Result<Outcome> {
    let tmp = ctx.tempdir(&format!("lag-{}-", short(kind)))?;
    let dirs = RunDirs::create(tmp.path())?;
    let template = dirs.root.join("template.db");
    let marker_pgno = sqlite::create_small_db(&template, 5, ctx.seed)?;
    let paths: Vec<PathBuf> = ids
        .iter()
        .map(|id| dirs.watch.join(format!("{id}.db")))
        .collect();
    for p in &paths {
        std::fs::copy(&template, p)?;
    }
    let mut rep = Replicator::start(kind, &ctx.bins, &dirs)?;
    let pid = rep.pid();
    let backed = rep.wait_backed_up(ids, Duration::from_secs(300))?;
    eprintln!("  all backed up after {:.1} s", backed.as_secs_f64());
    sleep_alive(&mut rep, Duration::from_secs(3))?;

    // Observer setup: one non-recursive watch per tenant L0 directory (they exist now).
    // Each tenant's L0 and L1 directories (the L1 one made now if the replicator has not yet:
    // both create their directories with mkdir -p).
    let mut l0_dirs: Vec<PathBuf> = Vec::new();
    let mut dir_index: HashMap<PathBuf, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let l0 = rep.tenant_l0(id);
        let l1 = l0.with_file_name("1");
        std::fs::create_dir_all(&l1).with_context(|| format!("create {}", l1.display()))?;
        for d in [l0, l1] {
            dir_index.insert(d.clone(), i);
            l0_dirs.push(d);
        }
    }
    let (tx, rx) = mpsc::channel::<(Instant, notify::Event)>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let at = Instant::now();
        if let Ok(ev) = res {
            let _ = tx.send((at, ev));
        }
    })
    .context("cannot create the inotify watcher")?;
    // Files already there (TXID 1, start-up files) are not commits of this run.
    let mut seen: HashSet<PathBuf> = HashSet::new();
    for d in &l0_dirs {
        watcher
            .watch(d, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watch {}", d.display()))?;
        for e in std::fs::read_dir(d)?.flatten() {
            seen.insert(e.path());
        }
    }

    // Writers' shared progress: last committed k per tenant.
    let committed: Arc<Vec<AtomicI64>> =
        Arc::new((0..ids.len()).map(|_| AtomicI64::new(0)).collect());
    let writers_done = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut rng = rand::rngs::StdRng::seed_from_u64(ctx.seed ^ 0x1a6);
    let phases: Vec<Duration> = (0..ids.len())
        .map(|_| period.mul_f64(rng.random::<f64>()))
        .collect();
    let n_writers = args.writers.clamp(1, ids.len().max(1));
    let start_at = Instant::now() + Duration::from_millis(500);
    let end_at = start_at + Duration::from_secs(args.seconds);
    let s0 = procs::sample(pid, false)?;

    let (commit_times, write_errors, late, mut commit_durations, arrivals, obs) =
        std::thread::scope(|scope| {
            // Observer.
            let obs_committed = committed.clone();
            let obs_done = writers_done.clone();
            let drain = Duration::from_secs(args.drain);
            let l0_dirs = &l0_dirs;
            let dir_index = &dir_index;
            let observer = scope.spawn(move || {
                observe(
                    rx,
                    l0_dirs,
                    dir_index,
                    seen,
                    marker_pgno,
                    &obs_committed,
                    &obs_done,
                    drain,
                    // Whatever happens to the writers, the observer stops by then.
                    end_at + drain + Duration::from_secs(60),
                )
            });
            // Writers: tenant i goes to writer i % n.
            let mut handles = Vec::new();
            for w in 0..n_writers {
                let mine: Vec<usize> = (w..ids.len()).step_by(n_writers).collect();
                let paths = &paths;
                let phases = &phases;
                let committed = committed.clone();
                handles.push(scope.spawn(move || {
                    write(mine, paths, phases, &committed, start_at, end_at, period)
                }));
            }
            let mut all_times: Vec<Vec<Instant>> = vec![Vec::new(); ids.len()];
            let mut errors = 0;
            let mut late = (0usize, 0f64);
            let mut durations = Vec::new();
            let mut first_err = None;
            for h in handles {
                match h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer thread panicked")))
                {
                    Ok(r) => {
                        for (i, t) in r.times {
                            all_times[i] = t;
                        }
                        errors += r.errors;
                        late.0 += r.late_n;
                        late.1 = late.1.max(r.late_max);
                        durations.extend(r.durations);
                    }
                    Err(e) => first_err = first_err.or(Some(e)),
                }
            }
            writers_done.store(true, Ordering::SeqCst);
            let observed = observer.join();
            match (first_err, observed) {
                (Some(e), _) => Err(e),
                (None, Err(_)) => Err(anyhow::anyhow!("the observer thread panicked")),
                (None, Ok((arrivals, obs))) => {
                    Ok((all_times, errors, late, durations, arrivals, obs))
                }
            }
        })?;
    drop(watcher);
    let s1 = procs::sample(pid, false)?;
    rep.child.ensure_alive()?;
    let end = rep.stop();

    // Join commits with arrivals.
    let mut lags = Vec::new();
    let mut missing = 0;
    let mut commits = 0;
    for (i, times) in commit_times.iter().enumerate() {
        commits += times.len();
        let mut arr = arrivals[i].clone();
        arr.sort_by_key(|a| a.0);
        let mut covered: i64 = 0;
        for (at, v) in arr {
            while covered < v && (covered as usize) < times.len() {
                let t_k = times[covered as usize];
                lags.push(signed_secs(at, t_k));
                covered += 1;
            }
        }
        missing += times.len().saturating_sub(covered.max(0) as usize);
    }
    lags.sort_by(f64::total_cmp);
    commit_durations.sort_by(f64::total_cmp);
    let window = (s1.cpu_s - s0.cpu_s, args.seconds as f64);
    let out = Outcome {
        kind,
        commits,
        missing,
        files: obs.files,
        l1_files: obs.l1_files,
        swept: obs.swept,
        swept_then_event: obs.swept_then_event,
        swept_event_delay_max: obs.swept_event_delay_max,
        errors: obs.errors,
        write_errors,
        late_commits: late.0,
        max_late_s: late.1,
        commit_durations,
        cpu_pct: 100.0 * window.0 / window.1,
        rss_kib: s1.rss_kib,
        hwm_kib: s1.hwm_kib,
        end,
        lags,
    };
    eprintln!(
        "  {} commits, p50 {:.3} s, p99 {:.3} s, max {:.3} s, missing {}",
        out.commits,
        percentile(&out.lags, 50.0),
        percentile(&out.lags, 99.0),
        percentile(&out.lags, 100.0),
        out.missing
    );
    ctx.finish_tempdir(tmp);
    Ok(out)
}

struct WriterResult {
    /// (tenant index, instant each of its commits returned), commit k at index k-1.
    times: Vec<(usize, Vec<Instant>)>,
    errors: usize,
    late_n: usize,
    late_max: f64,
    durations: Vec<f64>,
}

/// One writer thread: commits for its tenants on their schedules until `end_at`.
fn write(
    mine: Vec<usize>,
    paths: &[PathBuf],
    phases: &[Duration],
    committed: &[AtomicI64],
    start_at: Instant,
    end_at: Instant,
    period: Duration,
) -> Result<WriterResult> {
    let conns: Vec<rusqlite::Connection> = mine
        .iter()
        .map(|&i| sqlite::open_app(&paths[i]))
        .collect::<Result<_>>()?;
    let mut next: Vec<Instant> = mine.iter().map(|&i| start_at + phases[i]).collect();
    let mut times: Vec<Vec<Instant>> = vec![Vec::new(); mine.len()];
    let mut r = WriterResult {
        times: Vec::new(),
        errors: 0,
        late_n: 0,
        late_max: 0.0,
        durations: Vec::new(),
    };
    while let Some((j, &due)) = next.iter().enumerate().min_by_key(|(_, t)| **t) {
        if due >= end_at {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let begun = Instant::now();
        let late_s = begun.saturating_duration_since(due).as_secs_f64();
        if late_s > 0.1 {
            r.late_n += 1;
        }
        r.late_max = r.late_max.max(late_s);
        let k = times[j].len() as i64 + 1;
        match conns[j].execute("UPDATE s SET v = ?1 WHERE id = 1", [k]) {
            Ok(_) => {
                let done = Instant::now();
                r.durations.push((done - begun).as_secs_f64());
                times[j].push(done);
                committed[mine[j]].store(k, Ordering::SeqCst);
            }
            Err(e) => {
                r.errors += 1;
                if r.errors <= 3 {
                    eprintln!("  commit failed: {e}");
                }
            }
        }
        next[j] += period;
    }
    r.times = mine.into_iter().zip(times).collect();
    Ok(r)
}

fn signed_secs(a: Instant, b: Instant) -> f64 {
    if a >= b {
        (a - b).as_secs_f64()
    } else {
        -(b - a).as_secs_f64()
    }
}

#[derive(Default)]
struct ObserverStats {
    files: usize,
    l1_files: usize,
    swept: usize,
    /// Of the swept files, how many got their inotify event afterwards, and the longest delay.
    swept_then_event: usize,
    swept_event_delay_max: f64,
    errors: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn observe(
    rx: mpsc::Receiver<(Instant, notify::Event)>,
    l0_dirs: &[PathBuf],
    dir_index: &HashMap<PathBuf, usize>,
    mut seen: HashSet<PathBuf>,
    marker_pgno: u32,
    committed: &[AtomicI64],
    writers_done: &AtomicBool,
    drain: Duration,
    hard_deadline: Instant,
) -> (Arrivals, ObserverStats) {
    let mut arrivals: Arrivals = vec![Vec::new(); committed.len()];
    let mut max_seen: Vec<i64> = vec![0; committed.len()];
    let mut stats = ObserverStats::default();
    // Files that failed to decode: (path, tenant, first arrival, attempts).
    let mut retry: Vec<(PathBuf, usize, Instant, u32)> = Vec::new();
    let mut last_sweep = Instant::now();
    let mut swept_at: HashMap<PathBuf, Instant> = HashMap::new();
    let mut late_events: Vec<f64> = Vec::new();
    let mut done_at: Option<Instant> = None;

    let handle = |path: PathBuf,
                  at: Instant,
                  attempt: u32,
                  seen: &mut HashSet<PathBuf>,
                  retry: &mut Vec<(PathBuf, usize, Instant, u32)>,
                  stats: &mut ObserverStats,
                  arrivals: &mut Arrivals,
                  max_seen: &mut [i64]|
     -> bool {
        if seen.contains(&path) {
            return false;
        }
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(LtxFileName::parse)
        else {
            return false;
        };
        let Some(&i) = path.parent().and_then(|p| dir_index.get(p)) else {
            return false;
        };
        let level1 = path.parent().and_then(|p| p.file_name()) == Some("1".as_ref());
        if name.min != name.max && !level1 {
            return false;
        }
        match ltxread::read_marker(&path, marker_pgno, true) {
            Ok(m) => {
                seen.insert(path);
                if level1 {
                    stats.l1_files += 1;
                } else {
                    stats.files += 1;
                }
                if let Some(v) = m.marker {
                    // A later arrival time if we had to retry: the file was not readable before.
                    let at = if attempt > 0 { Instant::now() } else { at };
                    arrivals[i].push((at, v));
                    max_seen[i] = max_seen[i].max(v);
                }
                true
            }
            Err(e) => {
                if attempt >= 5 {
                    seen.insert(path);
                    stats.errors.push(format!("{e:#}"));
                } else if !retry.iter().any(|r| r.0 == path) {
                    retry.push((path, i, at, attempt + 1));
                }
                false
            }
        }
    };

    loop {
        // Wait a little for the first event, then take everything already queued.
        let mut batch = Vec::new();
        if let Ok(x) = rx.recv_timeout(Duration::from_millis(20)) {
            batch.push(x);
            while let Ok(x) = rx.try_recv() {
                batch.push(x);
            }
        }
        for (at, ev) in batch {
            if !matches!(
                ev.kind,
                notify::EventKind::Remove(_) | notify::EventKind::Access(_)
            ) {
                for p in ev.paths {
                    if let Some(t) = swept_at.remove(&p) {
                        late_events.push(signed_secs(at, t));
                    }
                    handle(
                        p,
                        at,
                        0,
                        &mut seen,
                        &mut retry,
                        &mut stats,
                        &mut arrivals,
                        &mut max_seen,
                    );
                }
            }
        }
        if !retry.is_empty() {
            for (p, _, at, attempt) in std::mem::take(&mut retry) {
                seen.remove(&p);
                handle(
                    p,
                    at,
                    attempt,
                    &mut seen,
                    &mut retry,
                    &mut stats,
                    &mut arrivals,
                    &mut max_seen,
                );
            }
        }
        if last_sweep.elapsed() > Duration::from_secs(1) {
            for d in l0_dirs {
                let Ok(rd) = std::fs::read_dir(d) else {
                    continue;
                };
                for e in rd.flatten() {
                    let p = e.path();
                    if !seen.contains(&p)
                        && handle(
                            p,
                            Instant::now(),
                            0,
                            &mut seen,
                            &mut retry,
                            &mut stats,
                            &mut arrivals,
                            &mut max_seen,
                        )
                    {
                        stats.swept += 1;
                        swept_at.insert(e.path(), Instant::now());
                    }
                }
            }
            last_sweep = Instant::now();
        }
        if Instant::now() > hard_deadline {
            eprintln!("  observer: hard deadline reached");
            break;
        }
        if writers_done.load(Ordering::SeqCst) {
            let t = *done_at.get_or_insert_with(Instant::now);
            let all = committed
                .iter()
                .zip(&max_seen)
                .all(|(c, &m)| m >= c.load(Ordering::SeqCst));
            if all || t.elapsed() > drain {
                break;
            }
        }
    }
    // Files the sweep found first: did their inotify event arrive a moment later (a race between
    // the sweep and event delivery, harmless) or never (a missed event)?
    late_events.sort_by(f64::total_cmp);
    stats.swept_then_event = late_events.len();
    stats.swept_event_delay_max = late_events.last().copied().unwrap_or(0.0);
    (arrivals, stats)
}
