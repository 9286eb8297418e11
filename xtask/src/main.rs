//! `cargo xtask`: the build driver of Litestream Manager.
//!
//! The single binary `litestream-manager` embeds a client-side-rendered Leptos dashboard. Plain
//! cargo cannot express "build a wasm32 crate, post-process it, then embed the result into a host
//! binary", so this program does it in visible steps, each printed with its duration:
//!
//! - `dist`: frontend → wasm32 (`wasm-release` profile) → wasm-bindgen (linked as a library, same
//!   version as the `wasm-bindgen` crate) → optional wasm-opt → `dist/`.
//! - `build`: `dist`, then `cargo build --release -p server` (whose build script embeds `dist/`).
//! - `run`: `build`, then runs `target/release/litestream-manager` with the remaining arguments.
//! - `test`: installs what the tests need, builds, runs every cargo test and the Playwright suite.

mod dist;
mod test;
mod util;

use std::process::ExitCode;

use anyhow::{bail, Result};

use util::Ctx;

const USAGE: &str = "\
usage: cargo xtask <command> [--no-wasm-opt] [-- args]

commands:
  dist    build the dashboard (wasm32 + wasm-bindgen + wasm-opt) into dist/
  build   dist, then `cargo build --release -p server` (one self-contained binary)
  run     build, then run target/release/litestream-manager with the remaining arguments
  test    install what is missing (wasm target, npm packages, .venv, chromium), build,
          `cargo test` the workspace, then the Playwright end-to-end tests

options:
  --no-wasm-opt   skip wasm-opt (faster, ~2x larger wasm)

env:
  WASM_OPT        wasm-opt to use (else end2end/node_modules/.bin/wasm-opt, else PATH; >= 120)
  CHROMIUM_PATH   browser for the end-to-end tests (default /usr/bin/chromium)";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nxtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        bail!("missing command");
    };
    // Options are read up to `--`; for `run`, every other argument goes to the server.
    let mut no_wasm_opt = false;
    let mut passthrough = Vec::new();
    let mut iter = rest.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--no-wasm-opt" => no_wasm_opt = true,
            "--" => {
                passthrough.extend(iter.by_ref().cloned());
            }
            _ if command == "run" => passthrough.push(arg.clone()),
            other => bail!("unknown argument `{other}` for `{command}`\n\n{USAGE}"),
        }
    }
    let ctx = Ctx::new(no_wasm_opt)?;
    match command.as_str() {
        "dist" => ctx.timed("dist", || dist::dist(&ctx)),
        "build" => ctx.timed("build", || dist::build(&ctx)),
        "run" => dist::run(&ctx, &passthrough),
        "test" => test::test(&ctx),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}
