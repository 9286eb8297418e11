//! Hostile input to the API of the real binary: malformed and absurd query values, a 1 MB `q`,
//! ids with path tricks, and a WebSocket client that connects and never reads while more than a
//! thousand tenant changes happen. Every answer is a 4xx (never a 5xx, never a crash), the
//! server's memory stays bounded and the other clients are served as usual.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_litestream-manager");

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
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &Path) -> Server {
        std::fs::create_dir_all(dir.join("clients")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(BIN)
            .current_dir(dir)
            .args(["-watch-dir", "clients", "-replica-dir", "replica"])
            .args(["-state-dir", "state", "-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start litestream-manager");
        let s = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(port, "/readyz").map(|r| r.0) != Some(200) {
            assert!(Instant::now() < deadline, "server not ready within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// Panics if the process exited.
    fn assert_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("the server exited: {st}");
        }
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

/// Sends `GET <target>` exactly as given (no normalisation); (status, body), or `None` when the
/// server closed the connection without an answer.
fn get(port: u16, target: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    // A huge request may be refused before it is all sent: keep what was answered.
    let _ = s.write_all(req.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let code = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|b| b.1.to_string())?;
    Some((code, body))
}

fn make_db(path: &Path) -> rusqlite::Connection {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    c
}

fn uuid(i: usize) -> String {
    format!("7a1e0c3e-2f4b-4d8a-9c6e-{i:012x}")
}

/// `/api/status` with absurd query values: each a 400 with the JSON error body (or, for a
/// request too large to read, a 4xx or a closed connection), the server healthy afterwards.
#[test]
fn malformed_and_huge_query_values_are_400s() {
    let tmp = tempfile::tempdir().unwrap();
    let _c = make_db(&tmp.path().join("clients").join(format!("{}.db", uuid(1))));
    let mut server = Server::start(tmp.path());
    let port = server.port;
    let bad = [
        "limit=1000000000000",
        "limit=-1",
        "limit=1e3",
        "limit=NaN",
        "limit=0",
        "limit=10001",
        "limit=18446744073709551616",
        "limit=%20%201",
        "limit=1%00",
        "offset=-5",
        "offset=1.5",
        "offset=99999999999999999999999",
        "sort=nope",
        "sort=--id",
        "status=ERROR%00",
        "status=%E2%80%AEerror",
        "limit=1&limit=2",
        "nope=1",
        "%ZZ=1",
        "limit=%ZZ",
    ];
    let mut codes = Vec::new();
    for q in bad {
        let (code, body) =
            get(port, &format!("/api/status?{q}")).unwrap_or_else(|| panic!("?{q}: no answer"));
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("?{q}: {code}, not JSON ({e}): {body}"));
        assert_eq!(code, 400, "?{q}: {body}");
        assert_eq!(v["error"]["code"], "bad_request", "?{q}: {body}");
        codes.push(code);
    }
    // Fine but odd: still a 200.
    for q in [
        "limit=",
        "offset=18446744073709551615",
        "q=%00",
        "q=%F0%9F%92%A3",
        "limit=10000",
    ] {
        let (code, body) = get(port, &format!("/api/status?{q}")).unwrap();
        assert_eq!(code, 200, "?{q}: {body}");
    }
    // A long q (6 KB): read, matched against nothing, answered quickly.
    let t = Instant::now();
    let (code, body) = get(port, &format!("/api/status?q={}", "a".repeat(6_000))).unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["matchedClients"], 0);
    let long_q = t.elapsed();
    // 100 KB and 1 MB: more than the server takes in a URI; refused with a 4xx (or the
    // connection closed), never a 5xx or a crash.
    let mut refused = Vec::new();
    let t = Instant::now();
    for len in [100_000, 1 << 20] {
        let r = get(port, &format!("/api/status?q={}", "b".repeat(len)));
        if let Some((code, _)) = &r {
            assert!((400..500).contains(code), "q of {len} bytes: {code}");
        }
        refused.push((len, r.map(|r| r.0)));
    }
    let huge_took = t.elapsed();
    let huge = refused;
    server.assert_alive();
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    let (code, body) = get(port, "/api/status").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["totalClients"], 1, "{body}");
    eprintln!(
        "{} bad queries: all 400 JSON; q of 6 KB: 200 in {long_q:?}; (q bytes, answer): {huge:?} in {huge_took:?}",
        codes.len()
    );
}

/// Unknown and malicious ids: 404 or 400, never a 200 or 5xx, never a file outside the replica.
#[test]
fn ids_with_path_tricks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let id = uuid(2);
    let _c = make_db(&tmp.path().join("clients").join(format!("{id}.db")));
    let mut server = Server::start(tmp.path());
    let port = server.port;
    let tricks = [
        "..%2F..%2F..%2Fetc%2Fpasswd".to_string(),
        "..%2f".to_string(),
        "%2e%2e".to_string(),
        "%2e%2e%2f%2e%2e%2fstate".to_string(),
        "..".to_string(),
        ".".to_string(),
        format!("{id}%2F..%2F..%2F{id}"),
        format!("{id}%00"),
        format!("{id}.db"),
        format!("%20{id}"),
        "%C3%A9t%C3%A9".to_string(),
        "%E2%80%AE".to_string(),
        "%F0%9F%92%A3%F0%9F%92%A3".to_string(),
        "%FF%FE".to_string(),
        "%".to_string(),
        "a".repeat(10_000),
        "00000000-0000-0000-0000-000000000000".to_string(),
        "7a1e0c3e-2f4b-4d8a-9c6e-00000000000g".to_string(),
    ];
    let mut outcomes = Vec::new();
    let mut not_json = Vec::new();
    for t in &tricks {
        let path = format!("/api/clients/{t}");
        let (code, body) = get(port, &path).unwrap_or_else(|| panic!("{path}: no answer"));
        assert!(
            code == 400 || code == 404,
            "{path}: {code} {}",
            body.chars().take(300).collect::<String>()
        );
        assert!(!body.contains("root:"), "{path} served a file: {body}");
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v) => assert!(v["error"]["code"].is_string(), "{path}: {body}"),
            Err(_) => not_json.push(format!(
                "{} -> {code} {body:?}",
                &path[..path.len().min(60)]
            )),
        }
        outcomes.push(code);
    }
    // The real one still works, also in upper case (UUIDs are case-insensitive) and it is the
    // same tenant; the process is alive.
    for t in [id.clone(), id.to_uppercase()] {
        let (code, body) = get(port, &format!("/api/clients/{t}")).unwrap();
        assert_eq!(code, 200, "{t}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["clientId"], id.as_str());
    }
    server.assert_alive();
    assert!(
        not_json.is_empty(),
        "every bad id gets the JSON error shape: {not_json:#?}"
    );
    let n400 = outcomes.iter().filter(|&&c| c == 400).count();
    eprintln!(
        "{} tricks: {n400} x 400, {} x 404; answered with a non-JSON body: {not_json:#?}",
        outcomes.len(),
        outcomes.len() - n400
    );
}

/// One WebSocket client connects (small receive buffer), completes the handshake and never
/// reads; a normal one reads and mirrors the tenant table from the frames, as the dashboard
/// does. Over 1,000 tenant changes follow (100 tenants appear, are written to in 12 rounds, 20
/// are deleted). The stalled client costs bounded memory, the normal one ends up with exactly
/// what `/api/status` says (ids and replicated positions), HTTP stays fast, nothing crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_never_reads_costs_bounded_memory() {
    use futures::StreamExt;
    const TENANTS: usize = 100;
    const ROUNDS: usize = 12;
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path());
    let port = server.port;

    // The normal client: counts the changes it is told about.
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .expect("ws connect");
    let changes = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let snapshots = Arc::new(AtomicU64::new(0));
    let last_frame = Arc::new(std::sync::Mutex::new(Instant::now()));
    // The reader's view: client id -> replicated TXID, as the frames left it.
    let view = Arc::new(std::sync::Mutex::new(Table::new()));
    let reader = {
        let (changes, frames, bytes, snapshots, last_frame, view) = (
            changes.clone(),
            frames.clone(),
            bytes.clone(),
            snapshots.clone(),
            last_frame.clone(),
            view.clone(),
        );
        tokio::spawn(async move {
            let (_, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                let Ok(text) = msg.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                    continue;
                };
                frames.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
                *last_frame.lock().unwrap() = Instant::now();
                let mut view = view.lock().unwrap();
                match v["type"].as_str() {
                    Some("batch") => {
                        for m in v["messages"].as_array().into_iter().flatten() {
                            match m["type"].as_str() {
                                Some("added" | "changed") => {
                                    let (id, txid) = row(&m["client"]);
                                    view.insert(id, txid);
                                }
                                Some("removed") => {
                                    view.remove(m["clientId"].as_str().unwrap_or_default());
                                }
                                _ => continue,
                            }
                            changes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some("snapshot") => {
                        snapshots.fetch_add(1, Ordering::Relaxed);
                        *view = table(&v["status"]);
                    }
                    _ => {}
                }
            }
        })
    };

    // The stalled client: a 4 KiB receive buffer, the upgrade, then silence.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stalled = sock
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stalled
            .write_all(
                format!(
                    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stalled.read(&mut b).await.unwrap(), 1, "handshake cut");
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = server.rss_kib();

    // 1,000+ changes: tenants appear, are written to round after round, some are deleted.
    let dir = tmp.path().join("clients");
    let started = Instant::now();
    // Each database is made outside the watch directory and renamed in whole, so the manager
    // never opens a half-created file (the app's WAL switch would race its open).
    let outside = tmp.path().join("making");
    let mut conns: Vec<_> = (0..TENANTS)
        .map(|i| {
            let name = format!("{}.db", uuid(100 + i));
            drop(make_db(&outside.join(&name)));
            std::fs::rename(outside.join(&name), dir.join(&name)).unwrap();
            let c = rusqlite::Connection::open(dir.join(&name)).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            c
        })
        .collect();
    let mut slowest_http = Duration::ZERO;
    let mut probe = |port: u16| {
        let t = Instant::now();
        assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
        let (code, _) = get(port, "/api/status?limit=5").unwrap();
        assert_eq!(code, 200);
        slowest_http = slowest_http.max(t.elapsed());
    };
    for round in 0..ROUNDS {
        for (i, c) in conns.iter().enumerate() {
            c.execute(
                "INSERT INTO t(v) VALUES (?1)",
                [format!("{round}-{i}-{}", "x".repeat(200))],
            )
            .unwrap();
        }
        probe(port);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for i in 0..20 {
        drop(conns.remove(0));
        let p = dir.join(format!("{}.db", uuid(100 + i)));
        for f in [
            p.clone(),
            p.with_extension("db-wal"),
            p.with_extension("db-shm"),
        ] {
            let _ = std::fs::remove_file(f);
        }
    }
    // The reader must end up with the server's table: the 80 tenants left, each at the
    // position /api/status reports once every one of them is replicated.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let (code, body) = get(port, "/api/status").unwrap();
        assert_eq!(code, 200);
        let truth = table(&serde_json::from_str(&body).unwrap());
        let settled = truth.len() == TENANTS - 20 && truth.values().all(|t| t.is_some());
        if settled && *view.lock().unwrap() == truth {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reading client's table differs from /api/status after {} changes:\n  ws:  \
             {:?}\n  api: {truth:?}",
            changes.load(Ordering::Relaxed),
            view.lock().unwrap()
        );
        probe(port);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(6)).await; // a periodic summary at least
    probe(port);
    server.assert_alive();
    let rss_after = server.rss_kib();
    let since_frame = last_frame.lock().unwrap().elapsed();
    let (code, body) = get(port, "/api/status").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    eprintln!(
        "{} changes seen by the reading client in {seen_at:?} ({} frames, {} bytes, {} snapshots; last \
         frame {since_frame:?} ago); slowest /healthz + /api/status {slowest_http:?}; RSS {} -> \
         {} MiB; totalClients {}",
        changes.load(Ordering::Relaxed),
        frames.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        snapshots.load(Ordering::Relaxed),
        rss_before / 1024,
        rss_after / 1024,
        v["totalClients"]
    );
    assert!(
        changes.load(Ordering::Relaxed) >= (TENANTS * 2) as u64,
        "each tenant appears and changes at least once"
    );
    assert!(
        rss_after < rss_before + 100 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        since_frame < Duration::from_secs(6),
        "the reading client starved"
    );
    assert!(
        slowest_http < Duration::from_secs(2),
        "HTTP took {slowest_http:?}"
    );
    drop(stalled);
    reader.abort();
}

/// A tenant table as the dashboard keeps it: client id -> replicated TXID.
type Table = std::collections::BTreeMap<String, Option<String>>;

fn row(c: &serde_json::Value) -> (String, Option<String>) {
    (
        c["clientId"].as_str().unwrap_or_default().to_string(),
        c["replicatedTxid"].as_str().map(str::to_string),
    )
}

/// The table of an `/api/status` body (also a WebSocket snapshot's `status`).
fn table(status: &serde_json::Value) -> Table {
    status["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .map(row)
        .collect()
}
