//! A tenant's local staging area: L0 files written tmp → fsync → rename before they are
//! uploaded, the seal a clean going-cold leaves, and the position recovered from them after a
//! restart.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::files::{io_err, open_optional, read_frame_page, wal_path};
use super::{Position, Proof, Result, StagedLtx, SyncError};
use crate::ltx::{self, Header, LtxFileName, Txid};
use crate::wal::{self, WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE};

/// The local staging area of one tenant: `<dir>/ltx/0/<txid>-<txid>.ltx`. Files appear here
/// atomically (tmp → fsync → rename) before they are uploaded, in TXID order.
#[derive(Clone, Debug)]
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn l0_dir(&self) -> PathBuf {
        self.dir.join("ltx").join("0")
    }

    pub fn path_of(&self, txid: Txid) -> PathBuf {
        self.l0_dir().join(
            LtxFileName {
                min: txid,
                max: txid,
            }
            .to_string(),
        )
    }

    pub(super) fn create(&self, txid: Txid) -> Result<Pending> {
        let dir = self.l0_dir();
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let path = self.path_of(txid);
        let tmp = dir.join(format!(
            "{}.tmp",
            LtxFileName {
                min: txid,
                max: txid
            }
        ));
        let file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        Ok(Pending {
            tmp,
            path,
            file: Some(file),
            staged: None,
            next: None,
        })
    }

    fn seal_path(&self) -> PathBuf {
        self.dir.join("seal")
    }

    /// Persists a [`Proof::Truncated`] for the L0 `txid`, so that a restart (even after kill -9)
    /// can continue incrementally instead of writing a full-page L0 for every sealed tenant.
    pub fn write_seal(&self, txid: u64, proof: &Proof) -> Result<()> {
        let Proof::Truncated {
            db_fingerprint: (mtime, size),
        } = proof
        else {
            return self.clear_seal();
        };
        let text = format!("{txid} {mtime} {size}\n");
        crate::client::fs::write_durably(&self.seal_path(), text.as_bytes())?;
        Ok(())
    }

    pub fn clear_seal(&self) -> Result<()> {
        match std::fs::remove_file(self.seal_path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.seal_path(), e)),
        }
    }

    /// The seal written for `txid`, if that is the one on disk.
    pub fn read_seal(&self, txid: u64) -> Proof {
        let Ok(text) = std::fs::read_to_string(self.seal_path()) else {
            return Proof::None;
        };
        let mut it = text.split_whitespace();
        let parsed = (|| {
            let t: u64 = it.next()?.parse().ok()?;
            let m: i128 = it.next()?.parse().ok()?;
            let s: u64 = it.next()?.parse().ok()?;
            Some((t, m, s))
        })();
        match parsed {
            Some((t, m, s)) if t == txid => Proof::Truncated {
                db_fingerprint: (m, s),
            },
            _ => Proof::None,
        }
    }

    /// L0 files staged locally, sorted by TXID.
    pub fn list(&self) -> Result<Vec<Txid>> {
        let dir = self.l0_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            if let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<LtxFileName>().ok())
            {
                if name.min == name.max {
                    out.push(name.min);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes `*.tmp` files a crash left mid-write (never complete, never uploaded). Only
    /// before this tenant's first sync in the process: later, a `.tmp` may be a sync in progress
    /// (maintenance lists staging concurrently, so [`Staging::list`] never removes anything).
    pub fn remove_leftovers(&self) -> Result<()> {
        let dir = self.l0_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&dir, e)),
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Bytes of staged files after `txid` (not yet in the replica).
    pub fn pending_bytes(&self, txid: u64) -> Result<u64> {
        let mut total = 0;
        for t in self.list()?.into_iter().filter(|t| t.0 > txid) {
            total += std::fs::metadata(self.path_of(t))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Removes staged files after `txid`.
    pub fn discard_after(&self, txid: u64) -> Result<()> {
        for t in self.list()?.into_iter().filter(|t| t.0 > txid) {
            self.remove(t)?;
        }
        self.clear_seal()
    }

    pub fn remove(&self, txid: Txid) -> Result<()> {
        let path = self.path_of(txid);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// Removes every staged file (a new history starts).
    pub fn clear(&self) -> Result<()> {
        for txid in self.list()? {
            self.remove(txid)?;
        }
        Ok(())
    }

    /// Rebuilds the chain position from the newest staged L0 and the current WAL (after a
    /// restart). Continuity is then re-proven by [`Db::sync`] under the write lock.
    pub fn recover_position(&self, db_path: &Path) -> Result<Option<Position>> {
        loop {
            let Some(&last) = self.list()?.last() else {
                return Ok(None);
            };
            let path = self.path_of(last);
            match recover_from(&path, db_path) {
                Ok(pos) => return Ok(Some(pos)),
                // A corrupt staged file cannot be trusted as a position: drop it; the next sync
                // then starts with a full-page L0 at this TXID.
                Err(SyncError::Ltx(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "dropping corrupt staged LTX file");
                    self.remove(last)?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Position after the staged L0 at `ltx_path`. The WAL chain checksum is not stored in LTX files:
/// it is taken from the WAL frame that ends at the file's WAL offset, but only if that frame still
/// carries the file's salts and the page image the file shipped. Otherwise the salts are cleared,
/// which forces the next sync to write a full-page L0.
fn recover_from(ltx_path: &Path, db_path: &Path) -> Result<Position> {
    let f = File::open(ltx_path).map_err(|e| io_err(ltx_path, e))?;
    let mut dec = ltx::Decoder::new(std::io::BufReader::new(f))?;
    let hdr = dec.header().clone();
    let mut pos = Position {
        txid: hdr.max_txid.0,
        page_size: hdr.page_size,
        commit: hdr.commit,
        salts: (hdr.wal_salt1, hdr.wal_salt2),
        wal_end: (hdr.wal_offset + hdr.wal_size) as u64,
        checksum: (0, 0),
        at_chain_end: false,
    };
    let frame_size = WAL_FRAME_HEADER_SIZE + pos.page_size as u64;
    let wal_path = wal_path(db_path);
    let frame = match open_optional(&wal_path)? {
        Some(wal) if pos.wal_end >= WAL_HEADER_SIZE + frame_size => {
            let off = pos.wal_end - frame_size;
            wal::read_frame_header(&wal, off)?
                .filter(|fh| (fh.salt1, fh.salt2) == pos.salts)
                .map(|fh| (wal, off, fh))
        }
        _ => None,
    };
    // Decode the whole file (verifies its checksum) keeping only the page we compare.
    let want = frame.as_ref().map(|(_, _, fh)| fh.pgno);
    let mut buf = Vec::new();
    let mut shipped = None;
    while let Some(pgno) = dec.next_page(&mut buf)? {
        if Some(pgno) == want {
            shipped = Some(buf.clone());
        }
    }
    dec.finish()?;
    pos.salts = (0, 0);
    if let (Some((wal, off, fh)), Some(image)) = (frame, shipped) {
        let mut cur = vec![0u8; hdr.page_size as usize];
        read_frame_page(&wal, off, &mut cur, &wal_path)?;
        if cur == image {
            pos.salts = (fh.salt1, fh.salt2);
            pos.checksum = (fh.checksum1, fh.checksum2);
        }
    }
    if pos.wal_end == 0 {
        // Written from the db file alone (no WAL then): nothing to compare.
        pos.salts = (hdr.wal_salt1, hdr.wal_salt2);
    }
    Ok(pos)
}

/// An L0 being written; becomes visible only on [`Pending::commit`].
pub(super) struct Pending {
    tmp: PathBuf,
    path: PathBuf,
    file: Option<File>,
    staged: Option<StagedLtx>,
    pub(super) next: Option<Position>,
}

impl Pending {
    pub(super) fn file(&mut self) -> Result<File> {
        self.file.take().ok_or_else(|| SyncError::Raced)
    }

    /// An encoder error while staging: an I/O error names the staging file (a full state disk
    /// must say where), anything else stays an LTX error.
    pub(super) fn ltx_err(&self, e: ltx::LtxError) -> SyncError {
        match e {
            ltx::LtxError::Io(source) => io_err(&self.tmp, source),
            e => SyncError::Ltx(e),
        }
    }

    pub(super) fn finish(&mut self, w: BufWriter<File>, hdr: Header, full: bool) -> Result<()> {
        let f = w
            .into_inner()
            .map_err(|e| io_err(&self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io_err(&self.tmp, e))?;
        let size = f.metadata().map_err(|e| io_err(&self.tmp, e))?.len();
        self.staged = Some(StagedLtx {
            path: self.path.clone(),
            txid: hdr.min_txid,
            size,
            timestamp: UNIX_EPOCH + Duration::from_millis(hdr.timestamp_ms.max(0) as u64),
            full,
        });
        Ok(())
    }

    pub(super) fn commit(mut self, pos: &mut Position) -> Result<StagedLtx> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io_err(&self.path, e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(dir, e))?;
        }
        if let Some(next) = self.next.take() {
            *pos = next;
        }
        self.staged.take().ok_or(SyncError::Raced)
    }

    pub(super) fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maintenance lists staging while a sync may be writing its next file: listing must never
    /// remove a `.tmp` (it may be in progress); only the start-up sweep does.
    #[test]
    fn listing_staging_leaves_temporary_files_to_the_start_up_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::new(dir.path());
        std::fs::create_dir_all(staging.l0_dir()).unwrap();
        std::fs::write(staging.path_of(Txid(3)), b"x").unwrap();
        let tmp = staging
            .l0_dir()
            .join("0000000000000004-0000000000000004.ltx.tmp");
        std::fs::write(&tmp, b"in progress").unwrap();
        assert_eq!(staging.list().unwrap(), vec![Txid(3)]);
        assert!(tmp.exists(), "list() removed a file being written");
        staging.remove_leftovers().unwrap();
        assert!(!tmp.exists());
        assert_eq!(staging.list().unwrap(), vec![Txid(3)]);
    }
}
