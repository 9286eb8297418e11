//! The dashboard's API as the binary serves it: `/readyz` after the initial scan, duplicates and
//! paging on `/api/status`, `/metrics`, and a tenant's detail whose restore command, run as
//! printed, restores the database.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_litestream-manager");
const A: &str = "0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11";
const B: &str = "1b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11";

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

fn serve(dir: &Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(BIN)
        .current_dir(dir)
        .args(["-watch-dir", "data/clients", "-port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server { child, port }
}

/// (status code, body) of a GET; `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

fn json(port: u16, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = get(port, path).unwrap_or_else(|| panic!("GET {path} failed"));
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (code, v)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn make_db(path: &Path, value: i64) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE t(x);").unwrap();
    c.execute("INSERT INTO t VALUES (?1)", [value]).unwrap();
}

#[test]
fn ready_after_scan_then_status_metrics_and_a_restorable_detail() {
    let tmp = tempfile::tempdir().unwrap();
    let clients = tmp.path().join("data/clients");
    std::fs::create_dir_all(&clients).unwrap();
    make_db(&clients.join(format!("{A}.db")), 1);
    make_db(&clients.join(format!("{B}.db")), 2);
    // Same id as A under another extension: a duplicate, never replicated.
    make_db(&clients.join(format!("{A}.sqlite")), 3);
    std::fs::write(clients.join("notes.txt"), "not a tenant").unwrap();

    let server = serve(tmp.path());
    let port = server.port;
    wait_for(
        "/readyz 200",
        || matches!(get(port, "/readyz"), Some((200, b)) if b == r#"{"status":"ready"}"#),
    );
    // Ready means scanned: both tenants are there at once.
    let (code, status) = json(port, "/api/status");
    assert_eq!(code, 200);
    assert_eq!(status["totalClients"], 2, "{status}");
    assert_eq!(status["ignoredFiles"], 1, "{status}");
    let dups = status["duplicateFiles"].as_array().unwrap();
    assert_eq!(dups.len(), 1, "{status}");
    assert!(
        dups[0].as_str().unwrap().ends_with(&format!("{A}.sqlite")),
        "{status}"
    );

    let (code, page) = json(port, "/api/status?limit=1&sort=-id");
    assert_eq!(code, 200);
    assert_eq!(page["matchedClients"], 2);
    assert_eq!(page["clients"].as_array().unwrap().len(), 1);
    assert_eq!(page["clients"][0]["clientId"], B);
    let (code, err) = json(port, "/api/status?limit=0");
    assert_eq!(code, 400);
    assert_eq!(err["error"]["code"], "bad_request");

    let (code, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("\nlitestream_manager_duplicate_files 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nlitestream_manager_ignored_files 1\n"),
        "{metrics}"
    );
    assert!(!metrics.contains(A), "no per-tenant series: {metrics}");

    wait_for("A replicated", || {
        let (_, d) = json(port, &format!("/api/clients/{A}"));
        d["restoreWindow"].is_object()
    });
    let (code, detail) = json(port, &format!("/api/clients/{A}"));
    assert_eq!(code, 200);
    assert_eq!(detail["levels"][0]["level"], 0, "{detail}");
    let cmd = detail["restoreCommands"]["manager"].as_str().unwrap();
    let replica = std::fs::canonicalize(tmp.path())
        .unwrap()
        .join(format!("data/replica/databases/{A}"));
    assert_eq!(
        cmd,
        format!(
            "litestream-manager restore -o {A}.db file://{}",
            replica.display()
        )
    );

    // Run the command exactly as printed (no shell quoting needed for this URL).
    let out_dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = cmd.split(' ').collect();
    assert_eq!(args[0], "litestream-manager");
    let o = Command::new(BIN)
        .current_dir(out_dir.path())
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let restored = rusqlite::Connection::open(out_dir.path().join(format!("{A}.db"))).unwrap();
    let x: i64 = restored
        .query_row("SELECT x FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(x, 1);
    drop(server);
}
