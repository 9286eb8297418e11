//! The application side: creating tenant databases, writing WAL, checksumming content, and
//! reading the marker value out of a raw SQLite page (so an LTX file can be checked for a commit
//! without restoring it).
//!
//! Every benchmark database has the marker table `s(id INTEGER PRIMARY KEY, v INTEGER)` created
//! first (so its root page is fixed, normally 2) with one row; every benchmark transaction sets
//! `v` to its own sequence number k. An L0 file that contains that page with `v >= k` holds
//! commit k — whatever else the replicator merged into it.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::{Rng, RngCore, SeedableRng};
use rusqlite::{params, Connection, OpenFlags};

pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates a small WAL-mode database: the marker table (v = 0) and `t` with `rows` small rows.
/// Closes it cleanly (checkpointed, no -wal left). Returns the marker table's root page.
pub fn create_small_db(path: &Path, rows: usize, seed: u64) -> Result<u32> {
    let conn = Connection::open(path).with_context(|| format!("create {}", path.display()))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!("{}: journal_mode is {mode}, not wal", path.display());
    }
    conn.execute_batch(
        "CREATE TABLE s(id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT INTO s VALUES (1, 0);
         CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, value REAL NOT NULL);",
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tx = conn.unchecked_transaction()?;
    for i in 0..rows {
        tx.execute(
            "INSERT INTO t(name, value) VALUES (?1, ?2)",
            params![
                format!("row-{i}-{}", rng.random::<u32>()),
                rng.random::<f64>()
            ],
        )?;
    }
    tx.commit()?;
    marker_root(&conn)
}

/// Creates the throughput database: marker table + `t(id, data BLOB)`, empty, WAL mode.
pub fn create_blob_db(path: &Path) -> Result<u32> {
    let conn = Connection::open(path).with_context(|| format!("create {}", path.display()))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!("{}: journal_mode is {mode}, not wal", path.display());
    }
    conn.execute_batch(
        "CREATE TABLE s(id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT INTO s VALUES (1, 0);
         CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB NOT NULL);",
    )?;
    marker_root(&conn)
}

pub fn marker_root(conn: &Connection) -> Result<u32> {
    let root: i64 = conn.query_row(
        "SELECT rootpage FROM sqlite_master WHERE type='table' AND name='s'",
        [],
        |r| r.get(0),
    )?;
    Ok(root as u32)
}

/// Opens an application connection with SQLite's defaults (autocheckpoint 1000 pages,
/// synchronous FULL) and a busy timeout: the replicators take the write lock to checkpoint.
pub fn open_app(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Pages this connection has written (to the WAL, in WAL mode) since the last call; resets the
/// counter. `SQLITE_DBSTATUS_CACHE_WRITE` is incremented by the number of frames of each commit.
pub fn take_pages_written(conn: &Connection) -> Result<u64> {
    let mut cur: std::os::raw::c_int = 0;
    let mut hi: std::os::raw::c_int = 0;
    // SAFETY: a valid connection handle and out-pointers to locals.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBSTATUS_CACHE_WRITE,
            &mut cur,
            &mut hi,
            1,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        bail!("sqlite3_db_status failed: {rc}");
    }
    Ok(cur.max(0) as u64)
}

pub fn page_size(conn: &Connection) -> Result<u32> {
    Ok(conn.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))? as u32)
}

/// Writes transactions of `txn_bytes` of random blobs (rows of `blob_bytes`), each also setting
/// the marker to its sequence number, until `target_wal_bytes` of WAL have been written.
pub struct BlobWriter {
    pub conn: Connection,
    rng: rand::rngs::StdRng,
    pub blob_bytes: usize,
    pub rows_per_txn: usize,
    pub seq: i64,
    pub rows: u64,
    pub pages_written: u64,
    pub page_size: u32,
}

impl BlobWriter {
    pub fn new(path: &Path, seed: u64, txn_bytes: usize, blob_bytes: usize) -> Result<BlobWriter> {
        let conn = open_app(path)?;
        let page_size = page_size(&conn)?;
        take_pages_written(&conn)?;
        let seq: i64 = conn.query_row("SELECT v FROM s WHERE id = 1", [], |r| r.get(0))?;
        Ok(BlobWriter {
            conn,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            blob_bytes,
            rows_per_txn: (txn_bytes / blob_bytes).max(1),
            seq,
            rows: 0,
            pages_written: 0,
            page_size,
        })
    }

    /// WAL bytes written so far (frames × (24 + page size)).
    pub fn wal_bytes(&self) -> u64 {
        self.pages_written * (24 + self.page_size as u64)
    }

    /// One transaction. `BEGIN IMMEDIATE` so that a concurrent checkpointer's write lock is waited
    /// for with the busy timeout instead of failing with SQLITE_BUSY_SNAPSHOT.
    pub fn commit_one(&mut self) -> Result<()> {
        let mut blob = vec![0u8; self.blob_bytes];
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        self.seq += 1;
        tx.execute("UPDATE s SET v = ?1 WHERE id = 1", params![self.seq])?;
        {
            let mut ins = tx.prepare_cached("INSERT INTO t(data) VALUES (?1)")?;
            for _ in 0..self.rows_per_txn {
                self.rng.fill_bytes(&mut blob);
                ins.execute(params![blob])?;
            }
        }
        tx.commit()?;
        self.rows += self.rows_per_txn as u64;
        self.pages_written += take_pages_written(&self.conn)?;
        Ok(())
    }
}

/// What a restore must reproduce: the marker, the row count and a CRC-64 over `t` in id order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub marker: i64,
    pub rows: u64,
    pub crc: u64,
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "marker {} / {} rows / crc64 {:016x}",
            self.marker, self.rows, self.crc
        )
    }
}

pub fn digest(path: &Path) -> Result<Digest> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("open {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);
    let mut d = crc.digest();
    let mut rows = 0u64;
    let marker: i64 = conn.query_row("SELECT v FROM s WHERE id = 1", [], |r| r.get(0))?;
    let mut stmt = conn.prepare("SELECT id, data FROM t ORDER BY id")?;
    let mut q = stmt.query([])?;
    while let Some(r) = q.next()? {
        let id: i64 = r.get(0)?;
        let data = r.get_ref(1)?;
        d.update(&id.to_be_bytes());
        let bytes: Vec<u8> = match data {
            rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b.to_vec(),
            rusqlite::types::ValueRef::Integer(i) => i.to_be_bytes().to_vec(),
            rusqlite::types::ValueRef::Real(x) => x.to_be_bytes().to_vec(),
            rusqlite::types::ValueRef::Null => Vec::new(),
        };
        d.update(&(bytes.len() as u64).to_be_bytes());
        d.update(&bytes);
        rows += 1;
    }
    Ok(Digest {
        marker,
        rows,
        crc: d.finalize(),
    })
}

/// Reads the marker value out of the raw image of the marker table's root page (a table b-tree
/// leaf holding the single row `(1, v)`). `pgno == 1` would have the 100-byte file header first.
pub fn marker_from_page(page: &[u8], pgno: u32) -> Result<i64> {
    let base = if pgno == 1 { 100 } else { 0 };
    let h = page.get(base..base + 8).context("page too short")?;
    if h[0] != 0x0d {
        bail!("page {pgno} is not a table leaf (type {:#x})", h[0]);
    }
    let ncells = u16::from_be_bytes([h[3], h[4]]) as usize;
    let mut best: Option<i64> = None;
    for i in 0..ncells {
        let p = base + 8 + 2 * i;
        let off = u16::from_be_bytes([page[p], page[p + 1]]) as usize;
        let mut pos = off;
        let (_payload_len, n) = varint(&page[pos..])?;
        pos += n;
        let (_rowid, n) = varint(&page[pos..])?;
        pos += n;
        // Record: header size, serial types, then the values. Column 0 (INTEGER PRIMARY KEY) is
        // stored as NULL; column 1 is v.
        let rec = pos;
        let (hdr_len, n) = varint(&page[pos..])?;
        let mut hp = pos + n;
        let mut types = Vec::new();
        while hp < rec + hdr_len as usize {
            let (t, n) = varint(&page[hp..])?;
            types.push(t);
            hp += n;
        }
        let mut vp = rec + hdr_len as usize;
        for (col, &t) in types.iter().enumerate() {
            let len = serial_len(t);
            if col == 1 {
                let v = serial_int(t, &page[vp..vp + len])?;
                best = Some(best.map_or(v, |b: i64| b.max(v)));
            }
            vp += len;
        }
    }
    best.context("marker row not found in page")
}

fn varint(b: &[u8]) -> Result<(u64, usize)> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let c = *b.get(i).context("truncated varint")?;
        if i == 8 {
            return Ok(((v << 8) | c as u64, 9));
        }
        v = (v << 7) | (c & 0x7f) as u64;
        if c & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    unreachable!()
}

fn serial_len(t: u64) -> usize {
    match t {
        0 | 8 | 9 => 0,
        1 => 1,
        2 => 2,
        3 => 3,
        4 => 4,
        5 => 6,
        6 | 7 => 8,
        n if n >= 12 => ((n - 12) / 2) as usize,
        _ => 0,
    }
}

fn serial_int(t: u64, b: &[u8]) -> Result<i64> {
    Ok(match t {
        8 => 0,
        9 => 1,
        1..=6 => {
            let mut v: i64 = if b[0] & 0x80 != 0 { -1 } else { 0 };
            for &x in b {
                v = (v << 8) | x as i64;
            }
            v
        }
        _ => bail!("marker has serial type {t}, not an integer"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_read_from_the_raw_page() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.db");
        let root = create_small_db(&p, 3, 1).unwrap();
        let conn = open_app(&p).unwrap();
        for v in [0i64, 1, 127, 128, 70000, 1 << 40] {
            conn.execute("UPDATE s SET v = ?1", params![v]).unwrap();
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
            let bytes = std::fs::read(&p).unwrap();
            let ps = 4096usize;
            let page = &bytes[(root as usize - 1) * ps..root as usize * ps];
            assert_eq!(marker_from_page(page, root).unwrap(), v);
        }
    }
}
