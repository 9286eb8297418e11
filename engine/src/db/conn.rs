//! Our SQLite connections: process-wide settings, per-connection tuning, read transactions,
//! and how SQLite errors map to [`SyncError`].

use std::path::Path;

use rusqlite::Connection;

use super::{Result, SyncError, DEFAULT_BUSY_TIMEOUT};

/// Begins a read transaction on `conn` and takes its WAL read mark (any read does;
/// `sqlite_master` always exists).
pub(super) fn begin_read(conn: &Connection, path: &Path) -> Result<()> {
    conn.execute_batch("BEGIN")
        .map_err(|e| sqlite_err(path, e))?;
    let r = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    });
    if let Err(e) = r {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(classify(path, e));
    }
    Ok(())
}

pub(super) fn data_version(conn: &Connection, path: &Path) -> Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
        .map_err(|e| sqlite_err(path, e))
}

/// Process-wide SQLite settings, applied once before the first connection (SQLite accepts them
/// only before it initializes; later calls are refused harmlessly): no initial bulk page-cache
/// allocation per connection (20 pages ≈ 86 KiB each, ×2 per hot tenant); our connections read
/// a handful of pages, and the page cache still grows on demand up to `cache_size`.
pub(super) fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_PAGECACHE takes (void*, int, int); a null buffer with N = 0
        // disables the bulk allocation. Called before any connection of ours is opened.
        unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
                std::ptr::null_mut::<libc::c_void>(),
                0 as libc::c_int,
                0 as libc::c_int,
            );
        }
    });
}

/// SQLite gives every connection a 120 KiB lookaside pool for small allocations; ours run a
/// handful of statements, and hundreds of tenants may be hot at once (≈ 100 MiB of pools).
pub(super) fn disable_lookaside(conn: &Connection) {
    // SAFETY: the handle is valid; SQLITE_DBCONFIG_LOOKASIDE takes (void*, int, int), and a null
    // buffer with zero sizes turns lookaside off. Right after open no lookaside memory is in
    // use, so the call takes effect (otherwise SQLite ignores it with SQLITE_BUSY).
    unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<libc::c_void>(),
            0 as libc::c_int,
            0 as libc::c_int,
        );
    }
}

pub(super) fn set_persist_wal(conn: &Connection) {
    // Keep the -wal file when our connections close, so the WAL header (and with it the chain
    // position) survives; SQLite would otherwise delete it after a final checkpoint.
    let mut on: libc::c_int = 1;
    // SAFETY: the handle is valid for the connection's lifetime; SQLITE_FCNTL_PERSIST_WAL takes a
    // pointer to an int that SQLite reads and writes during the call only.
    unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut libc::c_int).cast(),
        );
    }
}

pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked)
    )
}

pub(super) fn classify(path: &Path, e: rusqlite::Error) -> SyncError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            SyncError::NotSqlite(format!("{}: {e}", path.display()))
        }
        _ if is_busy(&e) => SyncError::Busy(DEFAULT_BUSY_TIMEOUT),
        _ => sqlite_err(path, e),
    }
}

pub(super) fn sqlite_err(path: &Path, source: rusqlite::Error) -> SyncError {
    SyncError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}
