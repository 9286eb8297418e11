//! Scenario `soak`: the reliability suite (RELIABILITY.md) in its long form. CI runs each of
//! these tests in a short form; the soak runs the same tests with more rounds, longer fault
//! periods and more fuzz cases, one after the other, and tabulates what each one printed.
//!
//! The tests themselves are the ones in `server/tests` and `engine/tests` (the assertions live
//! there, once); this only sets their knobs (`CRASH_ROUNDS`, `CRASH_S3_ROUNDS`,
//! `S3_FAULT_SECONDS`, `OUTAGE_SECONDS`, `PROPTEST_CASES`) and repeats the short ones.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::report::table;

#[derive(Clone, Debug, clap::Args)]
pub struct SoakArgs {
    /// kill -9 rounds of each crash scenario (local replica: random moments, and aimed at
    /// compactions).
    #[arg(long, default_value_t = 50)]
    pub crash_rounds: u32,
    /// kill -9 rounds while uploading to S3 with multipart uploads.
    #[arg(long, default_value_t = 30)]
    pub crash_s3_rounds: u32,
    /// Seconds of injected S3 faults (500, 503 SlowDown, resets, truncated and slow answers).
    #[arg(long, default_value_t = 120)]
    pub fault_seconds: u32,
    /// Seconds of a full S3 outage.
    #[arg(long, default_value_t = 120)]
    pub outage_seconds: u32,
    /// Cases of each property test over hostile LTX, WAL and replica files.
    #[arg(long, default_value_t = 4096)]
    pub proptest_cases: u32,
    /// Runs of each "the application fights back" test and of the full-disk test.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
}

struct Step {
    name: &'static str,
    package: &'static str,
    test: &'static str,
    filter: &'static str,
    env: Vec<(&'static str, String)>,
    runs: u32,
}

pub fn run(args: &SoakArgs) -> Result<String> {
    let root = repo_root()?;
    let steps = [
        Step {
            name: "kill -9 at random moments (local replica)",
            package: "server",
            test: "crash",
            filter: "kill_9_at_random_moments",
            env: vec![("CRASH_ROUNDS", args.crash_rounds.to_string())],
            runs: 1,
        },
        Step {
            name: "kill -9 aimed at compactions and snapshots",
            package: "server",
            test: "crash",
            filter: "kill_9_during",
            env: vec![("CRASH_ROUNDS", args.crash_rounds.to_string())],
            runs: 1,
        },
        Step {
            name: "kill -9 during multipart uploads to S3",
            package: "server",
            test: "crash_s3",
            filter: "",
            env: vec![("CRASH_S3_ROUNDS", args.crash_s3_rounds.to_string())],
            runs: 1,
        },
        Step {
            name: "S3 faults while 5 tenants write",
            package: "engine",
            test: "s3_faults",
            filter: "",
            env: vec![("S3_FAULT_SECONDS", args.fault_seconds.to_string())],
            runs: 1,
        },
        Step {
            name: "full S3 outage",
            package: "engine",
            test: "s3",
            filter: "full_s3_outage",
            env: vec![("OUTAGE_SECONDS", args.outage_seconds.to_string())],
            runs: 1,
        },
        Step {
            name: "the application fights back",
            package: "engine",
            test: "fights",
            filter: "",
            env: vec![],
            runs: args.repeat,
        },
        Step {
            name: "full state disk (tmpfs; root only)",
            package: "engine",
            test: "disk",
            filter: "",
            env: vec![],
            runs: args.repeat,
        },
        Step {
            name: "hostile LTX, WAL, replicas and names",
            package: "engine",
            test: "hostile",
            filter: "",
            env: vec![("PROPTEST_CASES", args.proptest_cases.to_string())],
            runs: 1,
        },
        Step {
            name: "API input and stalled WebSocket clients",
            package: "server",
            test: "api_input",
            filter: "",
            env: vec![],
            runs: args.repeat,
        },
    ];
    let mut rows = Vec::new();
    let mut failed = 0;
    for step in &steps {
        for run in 1..=step.runs {
            eprintln!("== soak: {} (run {run} of {})", step.name, step.runs);
            let started = Instant::now();
            let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            cmd.current_dir(&root)
                .args(["test", "-p", step.package, "--test", step.test, "--"])
                .args((!step.filter.is_empty()).then_some(step.filter))
                .args(["--nocapture", "--test-threads", "1"])
                .envs(step.env.iter().map(|(k, v)| (k, v.as_str())));
            with_venv(&root, &mut cmd);
            let out = cmd.output().context("cannot run cargo test")?;
            let secs = started.elapsed().as_secs_f64();
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            let ok = out.status.success();
            failed += usize::from(!ok);
            let knobs = step
                .env
                .iter()
                .map(|(k, v)| format!("`{k}={v}`"))
                .collect::<Vec<_>>()
                .join(" ");
            rows.push(vec![
                step.name.to_string(),
                format!(
                    "`cargo test -p {} --test {} {}` {knobs}",
                    step.package, step.test, step.filter
                ),
                format!("{run}/{}", step.runs),
                if ok { "pass".into() } else { "**FAIL**".into() },
                format!("{secs:.0} s"),
                summary(&text, ok),
            ]);
        }
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Soak: the reliability suite's long form ({} steps, {failed} failed).\n",
        rows.len()
    );
    md.push_str(&table(
        &[
            "scenario",
            "command",
            "run",
            "outcome",
            "time",
            "what the test printed",
        ],
        &rows,
    ));
    if failed > 0 {
        eprintln!("{md}");
        anyhow::bail!("{failed} soak steps failed");
    }
    Ok(md)
}

/// The lines the tests print as their result (`RESULT`, `rounds:`, tallies), or on failure
/// the panic message: one table cell.
fn summary(text: &str, ok: bool) -> String {
    let keep = |l: &&str| {
        let l = l.trim_start();
        if ok {
            [
                "RESULT",
                "rounds:",
                "compaction crash:",
                "L0 files",
                "faults for",
                "all ",
                "outage of",
                "caught up",
            ]
            .iter()
            .any(|p| l.starts_with(p))
                || l.contains(" tricks:")
                || l.contains("changes seen")
        } else {
            l.contains("panicked at") || l.starts_with("assertion") || l.contains("left:")
        }
    };
    let lines: Vec<&str> = text.lines().filter(keep).take(12).collect();
    lines
        .iter()
        .map(|l| {
            let l: String = l.trim().chars().take(400).collect();
            l.replace('|', "\\|")
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

fn repo_root() -> Result<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map(Path::to_path_buf)
        .context("bench/ has no parent directory")
}

/// `.venv/bin` (moto, litestream) first on PATH, as `cargo xtask test` does.
fn with_venv(root: &Path, cmd: &mut Command) {
    let bin = root.join(".venv/bin");
    if !bin.exists() {
        return;
    }
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    if let Ok(path) = std::env::join_paths(paths) {
        cmd.env("PATH", path);
    }
    cmd.env("LITESTREAM_BIN", bin.join("litestream"))
        .env("MOTO_SERVER", bin.join("moto_server"));
}
