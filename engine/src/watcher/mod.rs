//! Directory watcher: finds tenant databases in the watch directories and reports them to the
//! [`Store`]. It never decides a lifecycle itself.
//!
//! One inotify watch per directory (not per file), read in batches a short pause apart so the
//! kernel folds a busy WAL's writes into a few events (see `events`); an initial scan; every event
//! re-examines the one path it names; a slow periodic rescan (and a rescan after an event-queue
//! overflow, or when a watched directory is itself moved or deleted) catches anything missed. A watch directory that
//! was replaced is watched again; while one is missing it is looked for every second. A file is a
//! tenant when its name is `<uuid>.db|.sqlite|.sqlite3` with a strictly formatted UUID; a change
//! to its `-wal`/`-journal` sibling wakes it; hidden and temporary files are skipped silently;
//! every other name is reported once.
//!
//! Invariants: one path per tenant id and one tenant per database file — a second path for either
//! is reported as a duplicate and never registered, so two files never write into one replica; the
//! store is given the file's canonical path, so that we read the WAL SQLite writes (SQLite resolves
//! symlinks too); only a change wakes a tenant: opens and reads (our replicator's own) and rescans
//! of unchanged files do not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

mod events;
use events::{DirWatches, COALESCE};

/// Full rescan interval: the safety net for missed events.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(60);
/// While a watch directory is missing (moved or deleted), look for it this often, so that a
/// directory replaced by another is watched again within about a second.
const MISSING_DIR_RETRY: Duration = Duration::from_secs(1);

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

const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

pub fn classify_name(name: &str) -> NameKind {
    if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with('~') {
        return NameKind::Skip;
    }
    for sidecar in SIDECARS {
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

/// The canonical path of a tenant-named file, or why it is refused. Never opens the file (a FIFO
/// would block).
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

/// What the watcher reports besides tenants: names it ignores (each once) and tenant-named files
/// it does not register because their id or their database file already belongs to another path.
#[derive(Default)]
pub struct IgnoredNames {
    seen: HashSet<PathBuf>,
    /// Path → why it is not registered. Left when the path goes away or takes the id over.
    duplicates: BTreeMap<PathBuf, String>,
}

impl IgnoredNames {
    /// Names ignored since start (each counted once).
    pub fn count(&self) -> usize {
        self.seen.len()
    }

    /// Tenant-named files currently not replicated because another path owns their id or file.
    pub fn duplicates(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.duplicates
            .iter()
            .map(|(p, why)| (p.as_path(), why.as_str()))
    }

    pub fn duplicate_count(&self) -> usize {
        self.duplicates.len()
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
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut watches = DirWatches::new()?;
    let mut watch_dirs = Vec::new();
    for d in &dirs {
        let given = if d.is_absolute() {
            d.clone()
        } else {
            std::env::current_dir()?.join(d)
        };
        watches.watch(&given)?;
        let canon = std::fs::canonicalize(d)?;
        watch_dirs.push(WatchDir {
            identity: dir_identity(&given),
            given,
            canon,
            unreadable: false,
        });
    }
    let mut w = Scanner {
        store,
        dirs: watch_dirs,
        ignored,
        tracked: HashMap::new(),
        owners: HashMap::new(),
        targets: HashMap::new(),
        waiting: BTreeMap::new(),
        rescan_soon: false,
    };
    w.scan_all(Cause::InitialScan);
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(rescan);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut retry = tokio::time::interval(MISSING_DIR_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let missing = w.dirs.iter().any(|d| d.identity.is_none());
            let mut read_events = false;
            let scan = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => true,
                _ = retry.tick(), if missing => true,
                batch = watches.next() => {
                    read_events = true;
                    match batch {
                        Ok(batch) => {
                            for path in &batch.paths {
                                w.examine(path, Cause::Event);
                            }
                            batch.rescan | std::mem::take(&mut w.rescan_soon)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read directory events; rescanning");
                            true
                        }
                    }
                }
            };
            if scan {
                w.rewatch(&mut watches);
                w.scan_all(Cause::Rescan);
            }
            if read_events {
                // Let the kernel fold the events that follow (see `events`).
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(COALESCE) => {}
                }
            }
        }
        // Dropping `watches` closes the inotify descriptor and with it every watch.
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    InitialScan,
    Event,
    Rescan,
}

struct WatchDir {
    /// The absolute path as watched: event paths are named with it.
    given: PathBuf,
    /// Its canonical form: tenant paths are `canon/<name>`, symlink targets must stay under it.
    canon: PathBuf,
    /// (dev, inode) of the directory the watch is on; a different one at `given` means the
    /// directory was replaced and must be watched again.
    identity: Option<(u64, u64)>,
    /// Already warned that it cannot be read.
    unreadable: bool,
}

/// A tenant-named path that this watcher registered (or registered as refused).
struct Tracked {
    id: String,
    /// The canonical database path the store replicates; `None`: refused.
    canon: Option<PathBuf>,
    /// Sizes and times of the database and its WAL at the last look: a rescan wakes the tenant
    /// only when they changed, so idle tenants stay cold.
    stamp: Stamp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stamp {
    /// (inode, length, mtime ns) of the database.
    db: Option<(u64, u64, i64)>,
    /// (length, mtime ns) of a non-empty WAL. An empty WAL holds nothing: its times are left
    /// out, because truncating it (our own seal does) changes them.
    wal: Option<(u64, i64)>,
}

impl Stamp {
    fn of(db: &Path) -> Stamp {
        let db_meta = std::fs::metadata(db).ok();
        let wal = std::fs::metadata(crate::db::wal_path(db))
            .ok()
            .filter(|m| m.len() > 0)
            .map(|m| (m.len(), mtime_ns(&m)));
        Stamp {
            db: db_meta.map(|m| (m.ino(), m.len(), mtime_ns(&m))),
            wal,
        }
    }
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec()
}

fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// `x.db-wal` → (`x.db`, `-wal`).
fn split_sidecar(path: &Path) -> Option<(PathBuf, &'static str)> {
    let name = path.file_name()?.to_str()?;
    SIDECARS.iter().find_map(|sfx| {
        name.strip_suffix(sfx)
            .filter(|base| !base.is_empty())
            .map(|base| (path.with_file_name(base), *sfx))
    })
}

struct Scanner {
    store: Store,
    dirs: Vec<WatchDir>,
    ignored: Arc<std::sync::Mutex<IgnoredNames>>,
    /// Tenant paths (`<dir canon>/<name>`) this watcher registered or refused.
    tracked: HashMap<PathBuf, Tracked>,
    /// Tenant id → the tracked path that owns it.
    owners: HashMap<String, PathBuf>,
    /// Canonical database path → the tracked path replicating it (the same path unless it is a
    /// symlink). Maps WAL events to tenants and keeps one file from being two tenants.
    targets: HashMap<PathBuf, PathBuf>,
    /// Tenant-named paths not registered because of a duplicate: path → id. Retried whenever a
    /// tracked path goes away.
    waiting: BTreeMap<PathBuf, String>,
    /// A watched directory itself was moved or deleted: rescan (and watch it again) now.
    rescan_soon: bool,
}

impl Scanner {
    fn ignored(&self) -> std::sync::MutexGuard<'_, IgnoredNames> {
        self.ignored.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scan_all(&mut self, cause: Cause) {
        let mut present = HashSet::new();
        for i in 0..self.dirs.len() {
            let dir = self.dirs[i].canon.clone();
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => {
                    if std::mem::take(&mut self.dirs[i].unreadable) {
                        tracing::info!(dir = %dir.display(), "watch directory readable again");
                    }
                    entries
                }
                Err(e) => {
                    if !std::mem::replace(&mut self.dirs[i].unreadable, true) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot read watch directory");
                    }
                    continue;
                }
            };
            for e in entries.flatten() {
                let p = dir.join(e.file_name());
                self.examine(&p, cause);
                present.insert(p);
            }
        }
        let gone: Vec<PathBuf> = self
            .tracked
            .keys()
            .chain(self.waiting.keys())
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            if self.locate(&p).is_some() {
                self.examine(&p, cause);
            } else if self.forget(&p) {
                self.retry_waiting();
            }
        }
    }

    /// Watches again every directory that was replaced since it was watched.
    fn rewatch(&mut self, watches: &mut DirWatches) {
        for d in &mut self.dirs {
            let now = dir_identity(&d.given);
            if now == d.identity {
                continue;
            }
            // The old watch may already be gone (a deleted directory); nothing to undo then.
            watches.unwatch(&d.given);
            d.identity = None;
            if now.is_none() {
                continue;
            }
            match watches.watch(&d.given) {
                Ok(()) => {
                    d.identity = now;
                    if let Ok(c) = std::fs::canonicalize(&d.given) {
                        d.canon = c;
                    }
                    tracing::info!(dir = %d.given.display(), "watch directory was replaced; watching the new one");
                }
                Err(e) => {
                    tracing::warn!(dir = %d.given.display(), error = %e, "cannot watch directory again; relying on the rescan");
                }
            }
        }
    }

    /// The watch directory of `path` and the path under its canonical form.
    fn locate(&self, path: &Path) -> Option<(usize, PathBuf)> {
        let parent = path.parent()?;
        let name = path.file_name()?;
        let i = self
            .dirs
            .iter()
            .position(|d| d.canon == parent || d.given == parent)?;
        Some((i, self.dirs[i].canon.join(name)))
    }

    fn examine(&mut self, path: &Path, cause: Cause) {
        if self.dirs.iter().any(|d| d.given == path || d.canon == path) {
            // The directory itself was moved or deleted.
            self.rescan_soon = true;
            return;
        }
        let Some((dir, path)) = self.locate(path) else {
            return;
        };
        let path = path.as_path();
        if let Some((base, sfx)) = split_sidecar(path) {
            // A scan compares stamps of the database instead (see `examine_tenant`).
            let tracked = self.targets.get(&base).filter(|_| cause == Cause::Event);
            if let Some(tracked) = tracked {
                if let Some(t) = self.tracked.get(tracked) {
                    // A WAL emptied by a checkpoint holds nothing new (a checkpoint that moved
                    // frames into the database also changed the database file).
                    let changed = match sfx {
                        "-wal" => std::fs::metadata(path).is_ok_and(|m| m.len() > 0),
                        "-journal" => true,
                        _ => false,
                    };
                    if changed {
                        self.store.wake(&t.id);
                    }
                }
            }
            // Sidecars are never tenants nor reported names.
            return;
        }
        // A change to the file behind a symlinked tenant (whatever its own name means).
        if cause == Cause::Event {
            self.wake_by_target(path);
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match classify_name(name.as_deref().unwrap_or_default()) {
            NameKind::Skip | NameKind::Sidecar(_) => {}
            NameKind::Ignored => {
                if std::fs::symlink_metadata(path).is_ok() {
                    let mut ig = self.ignored();
                    if ig.seen.insert(path.to_path_buf()) {
                        tracing::warn!(path = %path.display(), "ignored: not a <uuid>.db|.sqlite|.sqlite3 file name");
                    }
                }
            }
            NameKind::Tenant(id) => self.examine_tenant(dir, path, id, cause),
        }
    }

    /// Wakes the tenant whose symlink resolves to `path` (its database or WAL).
    fn wake_by_target(&self, path: &Path) {
        let (base, sfx) = split_sidecar(path).unwrap_or_else(|| (path.to_path_buf(), ""));
        let Some(tracked) = self.targets.get(&base).filter(|t| **t != base) else {
            return;
        };
        let changed = match sfx {
            "" | "-journal" => true,
            "-wal" => std::fs::metadata(path).is_ok_and(|m| m.len() > 0),
            _ => false,
        };
        if let (true, Some(t)) = (changed, self.tracked.get(tracked)) {
            self.store.wake(&t.id);
        }
    }

    fn examine_tenant(&mut self, dir: usize, path: &Path, id: String, cause: Cause) {
        if std::fs::symlink_metadata(path).is_err() {
            // Deleted or moved away: replication stops, the replica stays.
            if self.forget(path) {
                self.retry_waiting();
            }
            return;
        }
        let verdict = check_path(&self.dirs[dir].canon, path);
        if let Some(t) = self.tracked.get_mut(path) {
            match &verdict {
                Ok(canon) if t.canon.as_ref() == Some(canon) => {
                    let stamp = Stamp::of(canon);
                    let changed = stamp != t.stamp;
                    t.stamp = stamp;
                    // An event is a change; a rescan looks for one the events missed.
                    if cause == Cause::Event || changed {
                        self.store.wake(&t.id);
                    }
                    return;
                }
                Err(_) if t.canon.is_none() => return, // still refused
                _ => {}
            }
            // Refused and now fine, fine and now refused, or a symlink pointing elsewhere: the
            // old registration ends and a new one starts.
            self.forget(path);
            self.add(path, id, verdict, cause);
            self.retry_waiting();
            return;
        }
        self.add(path, id, verdict, cause);
    }

    /// Registers (or refuses) a tenant path that is not tracked yet, unless another path owns
    /// its id or its file: then it waits, reported once as a duplicate.
    fn add(&mut self, path: &Path, id: String, verdict: Result<PathBuf, String>, cause: Cause) {
        let conflict = if let Some(owner) = self.owners.get(&id) {
            Some(format!(
                "not replicated: client {id} is already {}",
                owner.display()
            ))
        } else if let Some(other) = verdict
            .as_ref()
            .ok()
            .and_then(|canon| self.targets.get(canon))
        {
            Some(format!(
                "not replicated: the same database file as {}",
                other.display()
            ))
        } else {
            // Registered by someone else (e.g. `-dsn`).
            self.store.status(&id).map(|s| {
                format!(
                    "not replicated: client {id} is already {}",
                    s.db_path.display()
                )
            })
        };
        if let Some(why) = conflict {
            if self
                .waiting
                .insert(path.to_path_buf(), id.clone())
                .is_none()
            {
                tracing::warn!(client = %id, path = %path.display(), "{why}");
                self.ignored().duplicates.insert(path.to_path_buf(), why);
            }
            return;
        }
        if self.waiting.remove(path).is_some() {
            self.ignored().duplicates.remove(path);
        }
        match verdict {
            Ok(canon) => {
                if cause != Cause::InitialScan {
                    tracing::info!(client = %id, path = %path.display(), "📁 database created: {}", path.display());
                }
                let stamp = Stamp::of(&canon);
                if let Err(e) = self.store.register(&id, &canon) {
                    // Only a race with another registration of the id gets here.
                    let why = format!("not replicated: {e}");
                    tracing::warn!(client = %id, path = %path.display(), "{why}");
                    self.waiting.insert(path.to_path_buf(), id);
                    self.ignored().duplicates.insert(path.to_path_buf(), why);
                    return;
                }
                self.targets.insert(canon.clone(), path.to_path_buf());
                self.owners.insert(id.clone(), path.to_path_buf());
                self.tracked.insert(
                    path.to_path_buf(),
                    Tracked {
                        id,
                        canon: Some(canon),
                        stamp,
                    },
                );
            }
            Err(reason) => {
                self.store.register_refused(&id, path, &reason);
                self.owners.insert(id.clone(), path.to_path_buf());
                self.tracked.insert(
                    path.to_path_buf(),
                    Tracked {
                        id,
                        canon: None,
                        stamp: Stamp::default(),
                    },
                );
            }
        }
    }

    /// Stops tracking `path`; unregisters its tenant if it had one. True if an id or a file was
    /// freed (a waiting duplicate may take it now).
    fn forget(&mut self, path: &Path) -> bool {
        if self.waiting.remove(path).is_some() {
            self.ignored().duplicates.remove(path);
            return false;
        }
        let Some(t) = self.tracked.remove(path) else {
            return false;
        };
        self.owners.remove(&t.id);
        if let Some(canon) = &t.canon {
            self.targets.remove(canon);
        }
        self.store.unregister(&t.id);
        true
    }

    /// Gives waiting duplicates another chance, in path order.
    fn retry_waiting(&mut self) {
        let waiting: Vec<PathBuf> = self.waiting.keys().cloned().collect();
        for p in waiting {
            self.examine(&p, Cause::Event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11";

    #[test]
    fn name_rule_accepts_only_strict_uuids_with_known_extensions() {
        for ext in ["db", "sqlite", "sqlite3"] {
            assert_eq!(
                classify_name(&format!("{ID}.{ext}")),
                NameKind::Tenant(ID.into())
            );
        }
        assert_eq!(
            classify_name(&format!("{}.db", ID.to_uppercase())),
            NameKind::Tenant(ID.into())
        );
        for bad in [
            "notauuid.db".to_string(),
            "0b6f1c1e6a7d4c439a532f1f3c1c9e11.db".into(),
            format!("{{{ID}}}.db"),
            format!("urn:uuid:{ID}.db"),
            format!("{ID}.txt"),
            format!("{ID}.db.bak"),
            format!("{ID}.DB"),
            ID.to_string(),
        ] {
            assert_eq!(classify_name(&bad), NameKind::Ignored, "{bad}");
        }
    }

    #[test]
    fn sidecars_hidden_and_temporary_files_are_not_tenants() {
        for sfx in SIDECARS {
            assert_eq!(
                classify_name(&format!("{ID}.db{sfx}")),
                NameKind::Sidecar(ID.into())
            );
            assert_eq!(classify_name(&format!("notes.txt{sfx}")), NameKind::Skip);
        }
        for skip in [
            format!(".{ID}.db"),
            format!("{ID}.db.tmp"),
            format!("{ID}.db~"),
        ] {
            assert_eq!(classify_name(&skip), NameKind::Skip, "{skip}");
        }
    }

    #[test]
    fn split_sidecar_names_the_database() {
        let p = Path::new("/d").join(format!("{ID}.db-wal"));
        assert_eq!(
            split_sidecar(&p),
            Some((Path::new("/d").join(format!("{ID}.db")), "-wal"))
        );
        assert_eq!(split_sidecar(Path::new("/d/-wal")), None);
        assert_eq!(split_sidecar(Path::new("/d/x.db")), None);
    }
}
