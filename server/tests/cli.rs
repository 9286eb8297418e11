//! The binary as a user runs it: flags in both spellings, the embedded default, clear errors.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_litestream-manager");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Starts the server and waits for its HTTP port; returns the child and the port.
fn serve(dir: &Path, args: &[&str]) -> (Child, u16) {
    let port = free_port();
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .args(["-port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            for line in BufReader::new(child.stderr.take().unwrap()).lines() {
                err.push_str(&line.unwrap());
                err.push('\n');
            }
            panic!("server exited with {status}: {err}");
        }
        assert!(Instant::now() < deadline, "server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn missing_watch_dir_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(tmp.path(), &["-watch-dir", "nope"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("directory does not exist: nope (please create it first)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unknown_flag_is_rejected_by_clap() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(tmp.path(), &["-frobnicate"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unexpected argument"), "{}", stderr(&o));
}

#[test]
fn help_and_version() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(tmp.path(), &["--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--watch-dir",
        "--bucket",
        "--port",
        "--dsn",
        "--db-name",
        "--replica-dir",
        "--endpoint",
        "--region",
        "--prefix",
        "--bind",
        "--log-format",
        "Example",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let o = run(tmp.path(), &["-version"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn single_and_double_dash_both_start_it() {
    for flag in ["-watch-dir", "--watch-dir"] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("data/clients")).unwrap();
        let (child, port) = serve(tmp.path(), &[flag, "data/clients"]);
        let status = get(port, "/api/status");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(
            status.contains("\"watchDirs\":[\"data/clients\"]"),
            "{status}"
        );
        stop(child);
    }
}

#[test]
fn no_arguments_runs_the_embedded_default() {
    let tmp = tempfile::tempdir().unwrap();
    let (child, port) = serve(tmp.path(), &[]);
    assert!(
        tmp.path().join("data/clients").is_dir(),
        "data/clients must be created"
    );
    let id = "0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11";
    std::fs::File::create(tmp.path().join(format!("data/clients/{id}.db"))).unwrap();
    let replica = tmp
        .path()
        .join(format!("data/replica/databases/{id}/ltx/0"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&replica).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "no replica file in {}",
            replica.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(get(port, "/api/status").contains(id));
    stop(child);
}

#[test]
fn busy_port_says_so_and_suggests_port() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let o = run(tmp.path(), &["-port", &port]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("Address already in use") || err.contains("address already in use"),
        "{err}"
    );
    assert!(err.contains("-port"), "{err}");
}

#[test]
fn legacy_dsn_mode_uses_the_sanitized_db_name() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("w")).unwrap();
    let db = tmp.path().join("My App.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE x(a); INSERT INTO x VALUES (42);")
        .unwrap();
    drop(c);
    for (args, name) in [
        (
            vec![
                "-watch-dir",
                "w",
                "-dsn",
                "My App.db",
                "-db-name",
                "Analytics Dashboard",
            ],
            "analytics_dashboard",
        ),
        (vec!["-watch-dir", "w", "-dsn", "My App.db"], "my_app"),
    ] {
        let (child, _port) = serve(tmp.path(), &args);
        let replica = tmp.path().join(format!("data/replica/databases/{name}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !replica.join("ltx/0").is_dir() {
            assert!(
                Instant::now() < deadline,
                "no replica at {}",
                replica.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stop(child);
        let out = tmp.path().join(format!("{name}.restored.db"));
        let o = run(
            tmp.path(),
            &[
                "restore",
                "-o",
                out.to_str().unwrap(),
                replica.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let c = rusqlite::Connection::open(&out).unwrap();
        let v: i64 = c.query_row("SELECT a FROM x", [], |r| r.get(0)).unwrap();
        assert_eq!(v, 42);
    }
    let o = run(
        tmp.path(),
        &["-watch-dir", "w", "-dsn", "My App.db", "-db-name", ".."],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid -db-name"), "{}", stderr(&o));
}

#[test]
fn restore_refuses_to_overwrite_and_explains_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty-replica");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run(
        tmp.path(),
        &["restore", "-o", "out.db", empty.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no backup files found"),
        "{}",
        stderr(&o)
    );
    let o = run(
        tmp.path(),
        &[
            "restore",
            "-o",
            "out.db",
            "-txid",
            "7",
            empty.to_str().unwrap(),
        ],
    );
    assert!(
        stderr(&o).contains("exactly 16 hex digits"),
        "{}",
        stderr(&o)
    );
    let o = run(
        tmp.path(),
        &[
            "restore",
            "-o",
            "out.db",
            "-timestamp",
            "yesterday",
            empty.to_str().unwrap(),
        ],
    );
    assert!(stderr(&o).contains("not RFC 3339"), "{}", stderr(&o));
    let o = run(tmp.path(), &["restore", "-o", "out.db", "/does/not/exist"]);
    assert!(
        stderr(&o).contains("replica directory does not exist"),
        "{}",
        stderr(&o)
    );
}
