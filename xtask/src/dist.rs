//! `dist`, `build` and `run`: from the `frontend` crate to `dist/`, and from `dist/` to the
//! single server binary.
//!
//! Invariant: `dist/` is only touched when its content changes (files are compared before they
//! are written), so an unchanged dashboard does not make cargo re-embed it into the server.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use wasm_bindgen_cli_support::Bindgen;

use crate::util::{self, Ctx};

pub const WASM_TARGET: &str = "wasm32-unknown-unknown";
const WASM_PROFILE: &str = "wasm-release";
/// Output name of wasm-bindgen: `pkg/frontend.js` and `pkg/frontend_bg.wasm`.
const OUT_NAME: &str = "frontend";
/// Oldest wasm-opt accepted. Debian's binaryen 108 produces a wasm that fails at run time
/// (`WebAssembly.Table.set(): Argument 1 is invalid`); 132 (npm `binaryen`) is known good;
/// 120-131 are untested but postdate the reference-types fixes.
const MIN_WASM_OPT: u32 = 120;
/// The wasm features rustc 1.82+ enables by default for wasm32-unknown-unknown; wasm-opt must
/// accept all of them or it rejects the module.
const WASM_OPT_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-reference-types",
    "--enable-multivalue",
];
/// Bumped when the post-processing changes, to invalidate `target/xtask/pkg`.
const PIPELINE_VERSION: &str = "1";
/// Replaced in `frontend/index.html` by a hash of the js+wasm, so `/pkg/*` can be cached forever.
const BUILD_ID_PLACEHOLDER: &str = "__BUILD_ID__";

pub fn dist(ctx: &Ctx) -> Result<()> {
    ctx.timed("wasm32 target", ensure_wasm_target)?;
    ctx.timed("wasm-bindgen version check", || {
        check_wasm_bindgen_lock(ctx)
    })?;
    ctx.timed("cargo build -p frontend (wasm32, wasm-release)", || {
        util::run(ctx.cargo().args([
            "build",
            "-p",
            "frontend",
            "--target",
            WASM_TARGET,
            "--profile",
            WASM_PROFILE,
        ]))
    })?;
    let wasm = ctx
        .target_dir
        .join(WASM_TARGET)
        .join(WASM_PROFILE)
        .join("frontend.wasm");
    let wasm_bytes =
        fs::read(&wasm).with_context(|| format!("cargo did not produce {}", wasm.display()))?;

    let wasm_opt = if ctx.no_wasm_opt {
        println!("    wasm-opt: skipped (--no-wasm-opt)");
        None
    } else {
        find_wasm_opt(ctx)
    };

    let pkg = ctx.target_dir.join("xtask").join("pkg");
    let stamp = ctx.target_dir.join("xtask").join("pkg.stamp");
    let key = format!(
        "{:016x} {} {}",
        util::fnv1a(&[&wasm_bytes]),
        wasm_opt
            .as_ref()
            .map_or("no-wasm-opt".to_string(), |(path, v)| format!(
                "wasm-opt-{v}:{}",
                path.display()
            )),
        PIPELINE_VERSION,
    );
    let fresh = fs::read_to_string(&stamp).is_ok_and(|old| old == key)
        && pkg.join(format!("{OUT_NAME}.js")).is_file()
        && pkg.join(format!("{OUT_NAME}_bg.wasm")).is_file();
    if fresh {
        println!(
            "==> wasm-bindgen, wasm-opt: frontend.wasm unchanged, reusing {}",
            pkg.display()
        );
    } else {
        let _ = fs::remove_file(&stamp);
        ctx.timed("wasm-bindgen (library, --target web)", || {
            bindgen(&wasm, &pkg)
        })?;
        if let Some((path, _)) = &wasm_opt {
            ctx.timed("wasm-opt -Oz", || {
                optimize(path, &pkg.join(format!("{OUT_NAME}_bg.wasm")))
            })?;
        }
        fs::write(&stamp, &key)?;
    }

    ctx.timed("assemble dist/", || assemble(ctx, &pkg))?;
    for file in ["index.html", "pkg/frontend.js", "pkg/frontend_bg.wasm"] {
        let path = ctx.root.join("dist").join(file);
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("    dist/{file}: {len} bytes");
    }
    Ok(())
}

pub fn build(ctx: &Ctx) -> Result<()> {
    dist(ctx)?;
    ctx.timed("cargo build --release -p server", || {
        util::run(ctx.cargo().args(["build", "--release", "-p", "server"]))
    })?;
    let bin = server_binary(ctx);
    let len = fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!("    {}: {len} bytes", bin.display());
    Ok(())
}

pub fn run(ctx: &Ctx, args: &[String]) -> Result<()> {
    ctx.timed("build", || build(ctx))?;
    let mut cmd = Command::new(server_binary(ctx));
    cmd.args(args).current_dir(&ctx.root);
    println!("==> {}", util::display(&cmd));
    #[cfg(unix)]
    {
        // Replace this process, so Ctrl-C and exit codes belong to the server alone.
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        Err(err).context("cannot start the server")
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().context("cannot start the server")?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

pub fn server_binary(ctx: &Ctx) -> PathBuf {
    ctx.target_dir.join("release").join(format!(
        "litestream-manager{}",
        std::env::consts::EXE_SUFFIX
    ))
}

/// Adds the wasm32 target through rustup when it is missing.
pub fn ensure_wasm_target() -> Result<()> {
    match util::output("rustup", &["target", "list", "--installed"]) {
        Some(list) if list.lines().any(|l| l.trim() == WASM_TARGET) => {
            println!("    {WASM_TARGET} is installed");
            Ok(())
        }
        Some(_) => util::run(Command::new("rustup").args(["target", "add", WASM_TARGET])),
        None => {
            println!("    rustup not found: assuming the toolchain has {WASM_TARGET}");
            Ok(())
        }
    }
}

/// The wasm-bindgen library linked into xtask must be the version of the `wasm-bindgen` crate
/// the frontend is built with: the wasm carries a schema version that must match exactly.
fn check_wasm_bindgen_lock(ctx: &Ctx) -> Result<()> {
    let lock_path = ctx.root.join("Cargo.lock");
    let lock = fs::read_to_string(&lock_path)
        .with_context(|| format!("cannot read {}", lock_path.display()))?;
    let versions = |name: &str| -> Vec<String> {
        let header = format!("name = \"{name}\"");
        let mut lines = lock.lines();
        let mut found = Vec::new();
        while let Some(line) = lines.next() {
            if line.trim() == header {
                if let Some(v) = lines
                    .next()
                    .and_then(|l| l.trim().strip_prefix("version = "))
                {
                    found.push(v.trim_matches('"').to_string());
                }
            }
        }
        found
    };
    let lib = versions("wasm-bindgen");
    let cli = versions("wasm-bindgen-cli-support");
    match (lib.as_slice(), cli.as_slice()) {
        ([lib], [cli]) if lib == cli => {
            println!("    wasm-bindgen {lib} = wasm-bindgen-cli-support {cli}");
            Ok(())
        }
        _ => bail!(
            "Cargo.lock has wasm-bindgen {lib:?} but wasm-bindgen-cli-support {cli:?}; they must be \
             one and the same version. Pin both to the same `=x.y.z` in the root Cargo.toml \
             [workspace.dependencies] and run `cargo update -p wasm-bindgen -p wasm-bindgen-cli-support`."
        ),
    }
}

fn bindgen(wasm: &Path, pkg: &Path) -> Result<()> {
    if pkg.exists() {
        fs::remove_dir_all(pkg)?;
    }
    fs::create_dir_all(pkg)?;
    Bindgen::new()
        .input_path(wasm)
        .out_name(OUT_NAME)
        .web(true)?
        .typescript(false)
        // The library defaults to `true` (the CLI to `false`): without the default path
        // `init()` does not know where the .wasm is.
        .omit_default_module_path(false)
        .generate(pkg)
        .context("wasm-bindgen failed")
}

/// `$WASM_OPT`, else npm binaryen in end2end/, else PATH; `None` (with the reason printed) when
/// none is usable.
fn find_wasm_opt(ctx: &Ctx) -> Option<(PathBuf, u32)> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("WASM_OPT") {
        candidates.push(path.into());
    }
    candidates.push(ctx.root.join("end2end/node_modules/.bin/wasm-opt"));
    candidates.push("wasm-opt".into());
    for path in candidates {
        let Some(out) = util::output(&path, &["--version"]) else {
            continue;
        };
        match parse_wasm_opt_version(&out) {
            Some(v) if v >= MIN_WASM_OPT => {
                println!("    wasm-opt: {} (version {v})", path.display());
                return Some((path, v));
            }
            Some(v) => println!(
                "    wasm-opt: ignoring {} (version {v} < {MIN_WASM_OPT}: known to break the wasm)",
                path.display()
            ),
            None => println!(
                "    wasm-opt: ignoring {} (unreadable version {out:?})",
                path.display()
            ),
        }
    }
    println!(
        "    wasm-opt: none found, skipping (the wasm stays ~2x larger). \
         `cd end2end && npm ci` installs binaryen 132."
    );
    None
}

/// `"wasm-opt version 132 (version_132)"` → 132.
fn parse_wasm_opt_version(out: &str) -> Option<u32> {
    let rest = &out[out.find("version")? + "version".len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn optimize(wasm_opt: &Path, wasm: &Path) -> Result<()> {
    let before = fs::metadata(wasm)?.len();
    let tmp = wasm.with_extension("opt.wasm");
    let mut cmd = Command::new(wasm_opt);
    cmd.arg("-Oz")
        .args(WASM_OPT_FEATURES)
        .arg(wasm)
        .arg("-o")
        .arg(&tmp);
    util::run(&mut cmd)?;
    fs::rename(&tmp, wasm)?;
    println!("    {before} -> {} bytes", fs::metadata(wasm)?.len());
    Ok(())
}

/// Builds the complete site in `target/xtask/dist`, then syncs it into `<root>/dist`.
fn assemble(ctx: &Ctx, pkg: &Path) -> Result<()> {
    let stage = ctx.target_dir.join("xtask").join("dist");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(&stage)?;

    let public = ctx.root.join("public");
    if public.is_dir() {
        copy_dir(&public, &stage)?;
    }
    copy_dir(pkg, &stage.join("pkg"))?;
    fs::copy(ctx.root.join("style/main.css"), stage.join("main.css"))
        .context("cannot copy style/main.css")?;

    let js = fs::read(pkg.join(format!("{OUT_NAME}.js")))?;
    let wasm = fs::read(pkg.join(format!("{OUT_NAME}_bg.wasm")))?;
    let css = fs::read(stage.join("main.css"))?;
    let build_id = format!("{:016x}", util::fnv1a(&[&js, &wasm, &css]));
    let template = fs::read_to_string(ctx.root.join("frontend/index.html"))
        .context("cannot read frontend/index.html")?;
    if !template.contains(BUILD_ID_PLACEHOLDER) {
        bail!("frontend/index.html lacks {BUILD_ID_PLACEHOLDER}: the /pkg/* URLs would not change between builds");
    }
    fs::write(
        stage.join("index.html"),
        template.replace(BUILD_ID_PLACEHOLDER, &build_id),
    )?;

    let changed = sync_dir(&stage, &ctx.root.join("dist"))?;
    println!("    dist/ build id {build_id}, {changed} file(s) changed");
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".gitkeep" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type()?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(())
}

/// Makes `to` equal to `from`, writing only files whose content differs; returns how many
/// files were written or removed.
fn sync_dir(from: &Path, to: &Path) -> Result<usize> {
    let mut changed = 0;
    fs::create_dir_all(to)?;
    let mut wanted = std::collections::HashSet::new();
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let (src, dst) = (entry.path(), to.join(&name));
        wanted.insert(name.clone());
        if entry.file_type()?.is_dir() {
            if dst.is_file() {
                fs::remove_file(&dst)?;
            }
            changed += sync_dir(&src, &dst)?;
        } else {
            let content = fs::read(&src)?;
            if fs::read(&dst).ok().as_deref() != Some(&content[..]) {
                if dst.is_dir() {
                    fs::remove_dir_all(&dst)?;
                }
                let tmp = to.join(format!(".{}.tmp", name.to_string_lossy()));
                fs::write(&tmp, &content)?;
                fs::rename(&tmp, &dst)?;
                changed += 1;
            }
        }
    }
    for entry in fs::read_dir(to)? {
        let entry = entry?;
        if !wanted.contains(&entry.file_name()) {
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
            changed += 1;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wasm_opt_versions() {
        assert_eq!(
            parse_wasm_opt_version("wasm-opt version 132 (version_132)\n"),
            Some(132)
        );
        assert_eq!(parse_wasm_opt_version("wasm-opt version 108\n"), Some(108));
        assert_eq!(parse_wasm_opt_version("something else"), None);
    }

    #[test]
    fn sync_dir_writes_only_differences() {
        let base = std::env::temp_dir().join(format!("xtask-sync-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        fs::create_dir_all(from.join("pkg")).unwrap();
        fs::write(from.join("index.html"), "a").unwrap();
        fs::write(from.join("pkg/x.js"), "x").unwrap();
        assert_eq!(sync_dir(&from, &to).unwrap(), 2);
        assert_eq!(sync_dir(&from, &to).unwrap(), 0);
        fs::write(from.join("index.html"), "b").unwrap();
        fs::write(to.join("stale.txt"), "old").unwrap();
        assert_eq!(sync_dir(&from, &to).unwrap(), 2);
        assert_eq!(fs::read_to_string(to.join("index.html")).unwrap(), "b");
        assert!(!to.join("stale.txt").exists());
        fs::remove_dir_all(base).unwrap();
    }
}
