//! Reading a tenant's files directly: the database header and pages, WAL frames, file
//! identities and fingerprints. Nothing here takes a SQLite lock; the callers hold whichever
//! lock makes what they read consistent.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Result, SyncError};
use crate::wal::WAL_FRAME_HEADER_SIZE;

pub(super) fn file_identity(path: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    Ok((m.dev(), m.ino()))
}

/// `<db>-wal`.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push("-wal");
    PathBuf::from(s)
}

/// Refuses files that are not SQLite databases. A zero-byte file is a valid new database.
pub fn check_sqlite_header(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        return Err(SyncError::NotSqlite(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    if meta.len() == 0 {
        return Ok(());
    }
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut magic = [0u8; 16];
    let n = f.read_at(&mut magic, 0).map_err(|e| io_err(path, e))?;
    if n < 16 || &magic != b"SQLite format 3\0" {
        return Err(SyncError::NotSqlite(format!(
            "{}: file does not start with the SQLite header",
            path.display()
        )));
    }
    Ok(())
}

pub(super) fn db_page_size(db: &File, path: &Path) -> Result<u32> {
    let mut b = [0u8; 2];
    match db.read_at(&mut b, 16) {
        Ok(2) => {}
        Ok(_) => return Ok(4096),
        Err(e) => return Err(io_err(path, e)),
    }
    let v = u16::from_be_bytes(b) as u32;
    Ok(if v == 1 {
        65536
    } else if v >= 512 {
        v
    } else {
        4096
    })
}

pub(super) fn read_db_page(
    db: &File,
    pgno: u32,
    buf: &mut [u8],
    db_len: u64,
    path: &Path,
) -> Result<()> {
    let off = (pgno as u64 - 1) * buf.len() as u64;
    buf.fill(0);
    if off >= db_len {
        return Ok(());
    }
    let mut read = 0;
    while read < buf.len() {
        let n = db
            .read_at(&mut buf[read..], off + read as u64)
            .map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        read += n;
    }
    Ok(())
}

pub(super) fn read_frame_page(
    wal: &File,
    frame_off: u64,
    buf: &mut [u8],
    path: &Path,
) -> Result<()> {
    wal.read_exact_at(buf, frame_off + WAL_FRAME_HEADER_SIZE)
        .map_err(|e| io_err(path, e))
}

/// `(mtime in ns, size)` of the db file: changes whenever a checkpoint writes to it.
pub(crate) fn fingerprint(path: &Path) -> Result<(i128, u64)> {
    let m = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    Ok((mtime, m.len()))
}

pub(super) fn open_optional(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) fn io_err(path: &Path, source: std::io::Error) -> SyncError {
    SyncError::Io {
        path: path.to_path_buf(),
        source,
    }
}
