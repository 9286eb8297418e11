//! Markdown output: the machine, the binaries, and tables; plus percentile helpers.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use crate::replicator::Bins;

/// Markdown lines describing where and with what the run happened.
pub fn environment(bins: &Bins, command: &str) -> String {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let mut s = String::new();
    let _ = writeln!(s, "- command: `{command}`");
    let _ = writeln!(s, "- date (UTC): {now}");
    let _ = writeln!(
        s,
        "- machine: {nproc} CPUs ({cpu}), {:.1} GiB RAM, Linux {kernel}; load average at start: {load}",
        mem_kib as f64 / 1048576.0
    );
    let _ = writeln!(
        s,
        "- litestream-manager: `{}` ({}), built {}; work tree at bench start: {}",
        bins.manager_source.display(),
        crate::procs::version_of(&bins.manager, "--version"),
        mtime(&bins.manager_source),
        git_rev()
    );
    let _ = writeln!(
        s,
        "- Litestream: `{}` (version {})",
        bins.litestream.display(),
        crate::procs::version_of(&bins.litestream, "version")
    );
    s
}

fn mtime(p: &Path) -> String {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        })
        .unwrap_or_else(|| "?".into())
}

fn git_rev() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rev = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(dir)
        .output()
        .ok()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    match rev {
        Some(r) if dirty => format!("git {r} + uncommitted changes"),
        Some(r) => format!("git {r}"),
        None => "unknown (no git)".into(),
    }
}

/// A Markdown table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(s, "|{}", header.iter().map(|_| "---|").collect::<String>());
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
