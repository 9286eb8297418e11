//! Scenario `idle`: N small tenant databases, the replicator started on them, time until every
//! tenant has its first replica file, then RSS / CPU / threads / fds over an idle window.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::procs::{self, ProcSample};
use crate::replicator::{Kind, Replicator, RunDirs};
use crate::report::{mib, table};
use crate::{sqlite, Ctx};

#[derive(Clone, Debug, clap::Args)]
pub struct IdleArgs {
    /// Number of tenant databases.
    #[arg(long, default_value_t = 1000)]
    pub tenants: usize,
    /// Length of the idle measurement window, seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Pause between "all backed up" and the start of the window, seconds.
    #[arg(long, default_value_t = 5)]
    pub settle: u64,
    /// Give up waiting for the initial backups after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub backup_timeout: u64,
}

struct Outcome {
    kind: Kind,
    create_s: f64,
    /// Time from process start until all tenants were backed up; Err = what happened instead.
    backed_up: Result<Duration, String>,
    /// Cross-check for ours: tenants with an L0 file when the API said all were done.
    l0_count: Option<usize>,
    startup_cpu_s: f64,
    window: Option<Window>,
    end: String,
    last_sample: Option<ProcSample>,
}

struct Window {
    secs: f64,
    cpu_s: f64,
    start: ProcSample,
    end: ProcSample,
    /// The sample nearest the middle of the window (for the second-half CPU figure).
    mid: ProcSample,
    mid_t: f64,
    max_rss_kib: u64,
    max_threads: u64,
    max_fds: u64,
}

pub fn run(ctx: &Ctx, args: &IdleArgs) -> Result<String> {
    let ids = ctx.tenant_ids(args.tenants);
    let mut outcomes = Vec::new();
    for &kind in &ctx.kinds {
        eprintln!("== idle: {} with {} tenants", kind.label(), args.tenants);
        outcomes.push(run_one(ctx, kind, args, &ids)?);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Idle: {} tenants ({}-second window after all were backed up and {} s of settling)\n",
        args.tenants, args.seconds, args.settle
    );
    let header: Vec<&str> = std::iter::once("")
        .chain(outcomes.iter().map(|o| o.kind.label()))
        .collect();
    let row = |name: &str, f: &dyn Fn(&Outcome) -> String| -> Vec<String> {
        std::iter::once(name.to_string())
            .chain(outcomes.iter().map(f))
            .collect()
    };
    let w = |o: &Outcome, f: &dyn Fn(&Window) -> String| {
        o.window.as_ref().map(f).unwrap_or_else(|| "—".into())
    };
    let rows = vec![
        row(
            "all backed up after (from process start)",
            &|o| match &o.backed_up {
                Ok(d) => format!("{:.1} s", d.as_secs_f64()),
                Err(e) => format!(
                    "**failed**: {}",
                    e.lines().next().unwrap_or("").replace('|', "\\|")
                ),
            },
        ),
        row("CPU used until then", &|o| {
            if o.startup_cpu_s.is_nan() {
                "—".to_string()
            } else {
                format!("{:.1} CPU-s", o.startup_cpu_s)
            }
        }),
        row("RSS (VmRSS): window start → end", &|o| {
            w(o, &|w| {
                format!("{} → **{}**", mib(w.start.rss_kib), mib(w.end.rss_kib))
            })
        }),
        row("max RSS during window", &|o| w(o, &|w| mib(w.max_rss_kib))),
        row(
            "peak RSS since start (VmHWM)",
            &|o| match (&o.window, &o.last_sample) {
                (Some(w), _) => mib(w.end.hwm_kib),
                (None, Some(s)) => mib(s.hwm_kib),
                _ => "—".into(),
            },
        ),
        row("CPU, whole window (% of one core)", &|o| {
            w(o, &|w| {
                format!(
                    "{:.2} % ({:.2} CPU-s / {:.0} s)",
                    100.0 * w.cpu_s / w.secs,
                    w.cpu_s,
                    w.secs
                )
            })
        }),
        row("**CPU, second half of window**", &|o| {
            w(o, &|w| {
                let (c, t) = (w.end.cpu_s - w.mid.cpu_s, w.secs - w.mid_t);
                format!("**{:.2} %** ({:.2} CPU-s / {:.0} s)", 100.0 * c / t, c, t)
            })
        }),
        row(
            "threads: window start → end (max)",
            &|o| match (&o.window, &o.last_sample) {
                (Some(w), _) => format!(
                    "{} → {} ({})",
                    w.start.threads, w.end.threads, w.max_threads
                ),
                (None, Some(s)) => format!("{} (last seen)", s.threads),
                _ => "—".into(),
            },
        ),
        row(
            "open fds: window start → end (max)",
            &|o| match (&o.window, &o.last_sample) {
                (Some(w), _) => format!("{} → {} ({})", w.start.fds, w.end.fds, w.max_fds),
                (None, Some(s)) => format!("{} (last seen)", s.fds),
                _ => "—".into(),
            },
        ),
        row("how the process ended", &|o| o.end.clone()),
    ];
    md.push_str(&table(&header, &rows));
    for o in &outcomes {
        if let Some(n) = o.l0_count {
            let _ = writeln!(
                md,
                "\n{}: when `/api/status` reported every tenant replicated, {n} of {} tenant replicas had an L0 file.",
                o.kind.label(),
                args.tenants
            );
        }
        let _ = writeln!(
            md,
            "{}: creating the {} databases took {:.1} s (template copied).",
            o.kind.label(),
            args.tenants,
            o.create_s
        );
    }
    Ok(md)
}

fn run_one(ctx: &Ctx, kind: Kind, args: &IdleArgs, ids: &[String]) -> Result<Outcome> {
    let tmp = ctx.tempdir(&format!("idle-{}-", short(kind)))?;
    let dirs = RunDirs::create(tmp.path())?;
    let t = Instant::now();
    let template = dirs.root.join("template.db");
    sqlite::create_small_db(&template, 5, ctx.seed)?;
    for id in ids {
        std::fs::copy(&template, dirs.watch.join(format!("{id}.db")))?;
    }
    let create_s = t.elapsed().as_secs_f64();
    eprintln!("  created {} databases in {create_s:.1} s", ids.len());

    let mut rep = Replicator::start(kind, &ctx.bins, &dirs)?;
    let pid = rep.pid();
    let backed_up = rep
        .wait_backed_up(ids, Duration::from_secs(args.backup_timeout))
        .map_err(|e| format!("{e:#}"));
    let startup_cpu_s = procs::cpu_seconds(pid).unwrap_or(f64::NAN);
    let last_sample = procs::sample(pid, true).ok();
    let mut outcome = Outcome {
        kind,
        create_s,
        backed_up,
        l0_count: None,
        startup_cpu_s,
        window: None,
        end: String::new(),
        last_sample,
    };
    match &outcome.backed_up {
        Ok(d) => eprintln!("  all backed up after {:.1} s", d.as_secs_f64()),
        Err(e) => {
            eprintln!("  {e}");
            outcome.end = match rep.child.try_wait()? {
                Some(st) => format!(
                    "exited by itself ({st}); last log line: `{}`",
                    last_interesting_line(&rep.child.log)
                ),
                None => format!(
                    "{}; last telling log line: `{}`",
                    rep.stop(),
                    last_interesting_line(&rep.child.log)
                ),
            };
            return Ok(outcome);
        }
    }
    if kind == Kind::Ours {
        outcome.l0_count = Some(rep.count_with_l0(ids));
    }
    sleep_alive(&mut rep, Duration::from_secs(args.settle))?;

    let start = procs::sample(pid, true)?;
    let t0 = Instant::now();
    let mut w = Window {
        secs: 0.0,
        cpu_s: 0.0,
        start,
        end: start,
        mid: start,
        mid_t: 0.0,
        max_rss_kib: start.rss_kib,
        max_threads: start.threads,
        max_fds: start.fds,
    };
    let window = Duration::from_secs(args.seconds);
    let mut last_print = Instant::now();
    while t0.elapsed() < window {
        let left = window.saturating_sub(t0.elapsed());
        sleep_alive(&mut rep, left.min(Duration::from_secs(1)))?;
        let s = procs::sample(pid, true)?;
        if w.mid_t == 0.0 && t0.elapsed() >= window / 2 {
            w.mid = s;
            w.mid_t = t0.elapsed().as_secs_f64();
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "  t={:>4.0} s: RSS {}, CPU {:.2} s, {} threads, {} fds",
                t0.elapsed().as_secs_f64(),
                mib(s.rss_kib),
                s.cpu_s - start.cpu_s,
                s.threads,
                s.fds
            );
            last_print = Instant::now();
        }
        w.max_rss_kib = w.max_rss_kib.max(s.rss_kib);
        w.max_threads = w.max_threads.max(s.threads);
        w.max_fds = w.max_fds.max(s.fds);
        w.end = s;
    }
    w.secs = t0.elapsed().as_secs_f64();
    w.cpu_s = w.end.cpu_s - w.start.cpu_s;
    eprintln!(
        "  idle: RSS {} (HWM {}), CPU {:.2} % of a core, {} threads, {} fds",
        mib(w.end.rss_kib),
        mib(w.end.hwm_kib),
        100.0 * w.cpu_s / w.secs,
        w.max_threads,
        w.max_fds
    );
    outcome.window = Some(w);
    outcome.end = rep.stop();
    ctx.finish_tempdir(tmp);
    Ok(outcome)
}

pub fn short(kind: Kind) -> &'static str {
    match kind {
        Kind::Ours => "ours",
        Kind::Litestream => "litestream",
    }
}

/// Sleeps in small steps, failing if the replicator dies meanwhile.
pub fn sleep_alive(rep: &mut Replicator, d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        rep.child.ensure_alive()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(200)));
    }
}

/// The most telling line of a crashed process's log: a Go `fatal error`/panic line if any,
/// otherwise the last non-empty one.
fn last_interesting_line(log: &std::path::Path) -> String {
    let s = std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let pick = s
        .lines()
        .find(|l| {
            l.contains("fatal error")
                || l.starts_with("panic:")
                || l.contains("too many open files")
                || l.contains("thread limit")
                || l.contains("shutting down")
        })
        .or_else(|| s.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("");
    pick.chars()
        .take(200)
        .collect::<String>()
        .replace('|', "\\|")
}
