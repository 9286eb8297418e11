//! Directory watcher: finds tenant databases in the watch directories and reports them to the
//! [`Store`]. It never decides a lifecycle itself.
//!
//! One inotify watch per directory (not per file); an initial scan; every event re-examines the
//! one path it names; a slow periodic rescan (and a rescan after an event-queue overflow) catches
//! anything missed. A file is a tenant when its name is `<uuid>.db|.sqlite|.sqlite3` with a
//! strictly formatted UUID; `-wal`/`-shm`/`-journal` siblings wake their tenant; hidden and
//! temporary files are skipped silently; every other name is reported once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Full rescan interval: the safety net for missed events.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(60);
const EVENT_QUEUE: usize = 65_536;

/// What a file name means to us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A tenant database; the id is the lowercase UUID.
    Tenant(String),
    /// `<uuid>.db-wal` etc.: activity of that tenant.
    Sidecar(String),
    /// Hidden or temporary: not ours to report.
    Skip,
    /// Anything else: ignored and reported.
    Ignored,
}

pub fn classify_name(name: &str) -> NameKind {
    if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with('~') {
        return NameKind::Skip;
    }
    for sidecar in ["-wal", "-shm", "-journal"] {
        if let Some(base) = name.strip_suffix(sidecar) {
            return match classify_name(base) {
                NameKind::Tenant(id) => NameKind::Sidecar(id),
                _ => NameKind::Skip,
            };
        }
    }
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return NameKind::Ignored;
    };
    if !matches!(ext, "db" | "sqlite" | "sqlite3") {
        return NameKind::Ignored;
    }
    match strict_uuid(stem) {
        Some(id) => NameKind::Tenant(id),
        None => NameKind::Ignored,
    }
}

/// `8-4-4-4-12` hex digits, nothing else (the uuid crate alone also accepts braces, URNs and
/// unhyphenated forms).
fn strict_uuid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    for (i, c) in b.iter().enumerate() {
        let ok = if matches!(i, 8 | 13 | 18 | 23) {
            *c == b'-'
        } else {
            c.is_ascii_hexdigit()
        };
        if !ok {
            return None;
        }
    }
    uuid::Uuid::try_parse(s)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// Why a tenant-named path is refused.
pub fn check_path(dir_canon: &Path, path: &Path) -> Result<PathBuf, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
    let canon = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve path: {e}"))?;
    if !canon.starts_with(dir_canon) {
        return Err(format!(
            "refused: resolves to {} outside the watch directory {}",
            canon.display(),
            dir_canon.display()
        ));
    }
    let target = if meta.file_type().is_symlink() {
        std::fs::metadata(&canon).map_err(|e| format!("cannot stat target: {e}"))?
    } else {
        meta
    };
    if target.is_dir() {
        return Err("refused: is a directory, not a database file".into());
    }
    if !target.is_file() {
        return Err("refused: not a regular file (FIFO, socket or device)".into());
    }
    Ok(canon)
}

/// Reports ignored names once each.
#[derive(Default)]
pub struct IgnoredNames {
    seen: HashSet<PathBuf>,
}

impl IgnoredNames {
    pub fn count(&self) -> usize {
        self.seen.len()
    }
}

/// Watches `dirs` until `cancel`; returns once the watches are set up and the initial scan is
/// done, leaving a background task running.
pub async fn spawn(
    store: Store,
    dirs: Vec<PathBuf>,
    rescan: Duration,
    cancel: CancellationToken,
    ignored: Arc<std::sync::Mutex<IgnoredNames>>,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (tx, mut rx) = mpsc::channel::<Option<PathBuf>>(EVENT_QUEUE);
    let overflow_tx = tx.clone();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                if ev.need_rescan() {
                    let _ = overflow_tx.try_send(None);
                }
                for p in ev.paths {
                    if tx.try_send(Some(p)).is_err() {
                        // Queue full: fall back to a rescan.
                        let _ = overflow_tx.try_send(None);
                    }
                }
            }
            Err(_) => {
                let _ = overflow_tx.try_send(None);
            }
        })?;
    let mut canon_dirs = Vec::new();
    for d in &dirs {
        watcher.watch(d, RecursiveMode::NonRecursive)?;
        canon_dirs.push(std::fs::canonicalize(d).map_err(|e| notify::Error::io(e))?);
    }
    let mut w = Scanner {
        store,
        dirs: canon_dirs,
        ignored,
        known: HashMap::new(),
    };
    w.scan_all();
    Ok(tokio::spawn(async move {
        let _watcher = watcher; // dropping it stops the watches
        let mut tick = tokio::time::interval(rescan);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => w.scan_all(),
                ev = rx.recv() => match ev {
                    Some(Some(path)) => w.examine(&path),
                    Some(None) => w.scan_all(),
                    None => break,
                },
            }
        }
    }))
}

struct Scanner {
    store: Store,
    dirs: Vec<PathBuf>,
    ignored: Arc<std::sync::Mutex<IgnoredNames>>,
    /// Registered tenant paths → id (to unregister on delete/rename).
    known: HashMap<PathBuf, String>,
}

impl Scanner {
    fn scan_all(&mut self) {
        let mut present = HashSet::new();
        for dir in self.dirs.clone() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                tracing::warn!(dir = %dir.display(), "cannot read watch directory");
                continue;
            };
            for e in entries.flatten() {
                let p = dir.join(e.file_name());
                self.examine(&p);
                present.insert(p);
            }
        }
        let gone: Vec<PathBuf> = self
            .known
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            self.examine(&p);
        }
    }

    fn examine(&mut self, path: &Path) {
        let Some(dir) = self
            .dirs
            .iter()
            .find(|d| path.parent() == Some(d.as_path()))
            .cloned()
        else {
            return;
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        match classify_name(name) {
            NameKind::Skip => {}
            NameKind::Sidecar(id) => self.store.wake(&id),
            NameKind::Ignored => {
                if path.exists() {
                    let mut ig = self.ignored.lock().unwrap_or_else(|p| p.into_inner());
                    if ig.seen.insert(path.to_path_buf()) {
                        tracing::warn!(path = %path.display(), "ignored: not a <uuid>.db|.sqlite|.sqlite3 file name");
                    }
                }
            }
            NameKind::Tenant(id) => {
                if std::fs::symlink_metadata(path).is_err() {
                    if self.known.remove(path).is_some() {
                        self.store.unregister(&id);
                    }
                    return;
                }
                match check_path(&dir, path) {
                    Ok(_) => {
                        if let Some(old) = self.known.get(path) {
                            if old == &id {
                                self.store.wake(&id);
                                return;
                            }
                        }
                        match self.store.register(&id, path) {
                            Ok(()) => {
                                self.known.insert(path.to_path_buf(), id.clone());
                                self.store.wake(&id);
                            }
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error = %e, "not registered")
                            }
                        }
                    }
                    Err(reason) => {
                        if !self.known.contains_key(path) {
                            self.known.insert(path.to_path_buf(), id.clone());
                            self.store.register_refused(&id, path, &reason);
                        }
                    }
                }
            }
        }
    }
}
