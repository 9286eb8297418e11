//! Chooses the folder the server embeds as its dashboard and hands it to rust-embed as
//! `DASH_DIST`.
//!
//! `<workspace>/dist` (written by `cargo xtask dist`) when it has an `index.html`; otherwise a
//! one-page placeholder generated in `OUT_DIR`, with a cargo warning. So `cargo build`,
//! `cargo test` and clippy never need a wasm build, and a release binary without a dashboard says
//! how to get one instead of failing.
//!
//! It also writes a tiny fixed site to `OUT_DIR` (`DASH_TEST_ASSETS`) that the unit tests of
//! `assets.rs` embed, so they do not depend on whether the real dashboard was built.

use std::path::{Path, PathBuf};
use std::time::SystemTime;
use std::{env, fs};

const PLACEHOLDER: &str = "<!doctype html>
<html lang=\"en\">
<head><meta charset=\"utf-8\"><title>Litestream Manager</title></head>
<body style=\"font-family: system-ui, sans-serif; margin: 3em\">
<h1>Litestream Manager</h1>
<p>dashboard not built: run <code>cargo xtask dist</code> (or <code>cargo xtask build</code>),
then rebuild the server.</p>
<p>The API is available: <a href=\"/api/status\">/api/status</a>.</p>
</body>
</html>
";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let dist = manifest_dir
        .parent()
        .expect("server/ lives in the workspace")
        .join("dist");

    // Cargo scans a watched directory recursively, so `cargo xtask dist` writing into it re-runs
    // this script. A *missing* watched path would instead re-run it, and recompile the server, on
    // every build; hence an empty (gitignored) `dist/` is created when there is none. If that
    // fails (read-only tree), the missing path is watched anyway: slower, still correct.
    // Its mtime is set back to the epoch, or cargo would see it as changed after this very run.
    if !dist.exists() && fs::create_dir_all(&dist).is_ok() {
        let _ = fs::File::open(&dist).and_then(|dir| dir.set_modified(SystemTime::UNIX_EPOCH));
    }
    println!("cargo::rerun-if-changed={}", dist.display());

    let folder = if dist.join("index.html").is_file() {
        dist
    } else {
        println!(
            "cargo::warning=dashboard not built ({} is missing): embedding a placeholder page; \
             run `cargo xtask dist` or `cargo xtask build`",
            dist.join("index.html").display()
        );
        let placeholder = out_dir.join("dashboard-placeholder");
        write(&placeholder.join("index.html"), PLACEHOLDER);
        placeholder
    };
    println!("cargo::rustc-env=DASH_DIST={}", folder.display());

    let fixture = out_dir.join("assets-test-fixture");
    write(
        &fixture.join("index.html"),
        "<!doctype html><title>fixture</title>",
    );
    write(&fixture.join("main.css"), "body{}");
    write(&fixture.join("favicon.svg"), "<svg/>");
    write(&fixture.join("pkg/frontend.js"), "export default 1;");
    write(&fixture.join("pkg/frontend_bg.wasm"), "\0asm\x01\0\0\0");
    println!("cargo::rustc-env=DASH_TEST_ASSETS={}", fixture.display());
}

/// Writes only when the content differs, so rust-embed's inputs keep their mtimes.
fn write(path: &Path, content: &str) {
    if fs::read(path).ok().as_deref() == Some(content.as_bytes()) {
        return;
    }
    fs::create_dir_all(path.parent().expect("file in a directory")).expect("create dir in OUT_DIR");
    fs::write(path, content).expect("write to OUT_DIR");
}
