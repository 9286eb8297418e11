//! The directory watches: one inotify instance, one watch per directory, read in batches.
//!
//! An application's every `write()` to its WAL is one `IN_MODIFY` event: about 262,000 per GiB
//! of WAL at SQLite's 4 KiB pages. Read one at a time, each costs a read, a path and a wake-up
//! (the `notify` crate did that: 17 % of the manager's CPU while it replicated 1 GiB). So
//! [`DirWatches::next`] drains whatever is queued and returns the distinct paths, and the caller
//! pauses [`COALESCE`] before it reads again: meanwhile the kernel folds every event identical
//! to the one queued last (same directory, same name, same kind) into it, so a busy tenant's
//! writes arrive as a handful of events per pause. A change is seen at most one pause late.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;

/// Pause after each batch (see the module doc). Short against the sync window (800 ms) and the
/// "a new file replicates within a second" promise.
pub(super) const COALESCE: Duration = Duration::from_millis(25);

/// What a directory watch reports: entries created, deleted, written or moved, and the directory
/// itself moved or deleted. Opens, closes, reads and attribute changes carry no data: reacting to
/// them would let the replicator's own reads wake its tenant forever.
const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

/// Room for a few hundred events per read (an event is 16 bytes plus its name, padded).
const READ_BUFFER: usize = 64 * 1024;

/// One batch of events.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// Each path named by an event, once, in the order first seen: an entry of a watched
    /// directory, or the directory itself (moved or deleted).
    pub paths: Vec<PathBuf>,
    /// Events were lost (the kernel's queue overflowed) or a watch ended: only a rescan of
    /// every directory knows what happened.
    pub rescan: bool,
    /// Events read, as the kernel queued them (after its own folding).
    pub events: usize,
}

pub(super) struct DirWatches {
    fd: AsyncFd<Inotify>,
    /// Watch → the directory as the caller named it (event paths are joined onto it).
    dirs: HashMap<WatchDescriptor, PathBuf>,
    buf: Vec<u8>,
}

impl DirWatches {
    pub fn new() -> io::Result<Self> {
        let inotify = Inotify::init()?;
        // SAFETY: `Inotify` owns its descriptor and closes it only when dropped, which happens
        // when the `AsyncFd` (and with it the registration) is dropped.
        let fd = unsafe { AsyncFd::register(inotify)? };
        Ok(DirWatches {
            fd,
            dirs: HashMap::new(),
            buf: vec![0; READ_BUFFER],
        })
    }

    pub fn watch(&mut self, dir: &Path) -> io::Result<()> {
        let wd = self.fd.get_ref().watches().add(dir, MASK)?;
        self.dirs.insert(wd, dir.to_path_buf());
        Ok(())
    }

    /// Ends the watches on `dir`, if any (a deleted directory's watch is already gone).
    pub fn unwatch(&mut self, dir: &Path) {
        let wds: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.as_path() == dir)
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in wds {
            self.dirs.remove(&wd);
            let _ = self.fd.get_ref().watches().remove(wd);
        }
    }

    /// Waits for events, then reads every event queued. Cancel-safe: nothing is read before
    /// the descriptor is ready, and after that nothing awaits.
    pub async fn next(&mut self) -> io::Result<Batch> {
        let mut batch = Batch::default();
        let mut seen = HashSet::new();
        loop {
            let mut guard = self.fd.readable_mut().await?;
            loop {
                let events = match guard.get_inner_mut().read_events(&mut self.buf) {
                    Ok(events) => events,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) => return Err(e),
                };
                for ev in events {
                    batch.events += 1;
                    if ev.mask.contains(EventMask::Q_OVERFLOW) {
                        batch.rescan = true;
                        continue;
                    }
                    if ev.mask.contains(EventMask::IGNORED) {
                        // The directory is gone or unmounted; the rescan watches it again.
                        self.dirs.remove(&ev.wd);
                        batch.rescan = true;
                        continue;
                    }
                    let Some(dir) = self.dirs.get(&ev.wd) else {
                        continue; // a watch we ended: its last events
                    };
                    let path = match ev.name {
                        Some(name) => dir.join(name),
                        None => dir.clone(),
                    };
                    if seen.insert(path.clone()) {
                        batch.paths.push(path);
                    }
                }
            }
            if !batch.paths.is_empty() || batch.rescan {
                return Ok(batch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[tokio::test]
    async fn a_burst_of_writes_is_a_few_events_and_each_path_is_named_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = DirWatches::new().unwrap();
        w.watch(dir.path()).unwrap();
        // 10,000 writes to a WAL, as an application makes them, then another file: nothing
        // is read meanwhile, as during the watcher's pause.
        let wal = dir.path().join("a.db-wal");
        let mut f = std::fs::File::create(&wal).unwrap();
        for _ in 0..10_000 {
            f.write_all(&[7u8; 64]).unwrap();
        }
        let db = dir.path().join("b.db");
        std::fs::write(&db, b"x").unwrap();
        let batch = w.next().await.unwrap();
        assert_eq!(batch.paths, [wal, db]);
        assert!(!batch.rescan);
        // CREATE and MODIFY of each: the kernel folded the 9,999 repeated MODIFY events.
        assert!(batch.events <= 4, "{} events", batch.events);
    }

    #[tokio::test]
    async fn a_deleted_watch_directory_asks_for_a_rescan() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("clients");
        std::fs::create_dir(&dir).unwrap();
        let mut w = DirWatches::new().unwrap();
        w.watch(&dir).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        let mut rescan = false;
        let mut paths = Vec::new();
        while !rescan {
            let batch = tokio::time::timeout(Duration::from_secs(5), w.next())
                .await
                .expect("events within 5 s")
                .unwrap();
            rescan = batch.rescan;
            paths.extend(batch.paths);
        }
        // The directory itself is named (its deletion), and its watch is gone.
        assert!(paths.contains(&dir), "{paths:?}");
        assert!(w.dirs.is_empty());
    }
}
