//! One database's replicator: turns the SQLite WAL into a contiguous chain of L0 LTX files.
//!
//! Invariant (see `shared/docs/restart-safety.md`): the L0 chain describes committed database
//! states in order, and an incremental L0 is written only when we can *prove* that it continues
//! exactly where the previous one ended. The proof is one of:
//! - [`Proof::ReadLock`]: our read transaction has been held since the scan that produced the
//!   position. While a reader holds a WAL read mark SQLite can neither backfill past it nor
//!   restart the WAL; a reader on mark 0 blocks every backfill, so at most one restart can
//!   happen, right after the end of the generation we scanned. Hence: same salts ⇒ continue at
//!   our offset; other salts, or a WAL emptied by a `TRUNCATE`, ⇒ the new generation follows our
//!   end directly (when our scan reached the chain end). [`Db::advance_read`] moves the mark to
//!   the end after each sync without ever letting go of it, so that the application's own
//!   checkpoints are not kept waiting.
//! - [`Proof::Truncated`]: we synced to the end under the write lock and then truncated the WAL
//!   ourselves with no commit in between (checked with `PRAGMA data_version`); the next
//!   generation (`salt1 + 1`) can only follow our end.
//! - otherwise the WAL is re-verified under the write lock: the frame before our offset must
//!   still carry our salts and the page image we shipped. Anything else is unknown history and
//!   gets a full-page L0 (all pages, read inside one consistent view).
//!
//! Nothing here writes to the application's tables; the only changes to the database are
//! `journal_mode=WAL` (required for replication) and checkpoints.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags};

use crate::ltx::{self, Encoder, Header, Txid};
use crate::wal::{self, FrameScan, WalHeader, WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE};

mod conn;
mod files;
mod staging;

use conn::{
    begin_read, classify, configure_sqlite, data_version, disable_lookaside, is_busy,
    set_persist_wal, sqlite_err,
};
pub(crate) use files::fingerprint;
pub use files::{check_sqlite_header, wal_path};
use files::{
    db_page_size, file_identity, io_err, now_ms, open_optional, read_db_page, read_frame_page,
};
use staging::Pending;
pub use staging::Staging;

/// PASSIVE checkpoint once the WAL holds this many pages (Litestream's `min-checkpoint-page-count`).
pub const DEFAULT_MIN_CHECKPOINT_PAGES: u64 = 1000;
/// PASSIVE checkpoint this long after the last one if anything was synced since.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
/// TRUNCATE checkpoint (blocks writers briefly) once the WAL holds this many pages:
/// ~500 MB at 4 KiB pages, as Litestream's `truncate-page-n`.
pub const DEFAULT_TRUNCATE_PAGES: u64 = 121_359;
/// One sync reads at most this much WAL, cut at a commit; the rest goes in the next L0.
pub const DEFAULT_MAX_SYNC_BYTES: u64 = 64 * 1024 * 1024;
/// How long we wait for SQLite locks held by the application before giving up on this attempt.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// A TRUNCATE checkpoint waits at most this long for readers and writers: it is an optimisation
/// (the WAL is reset), never worth making the application wait.
const TRUNCATE_BUSY_TIMEOUT: Duration = Duration::from_millis(200);
/// How long our own checkpoint first waits for the write lock before it moves its read mark
/// once more (see [`Db::lock_for_checkpoint`]): an application checkpoint that holds the lock
/// is waiting for us, and SQLite's busy handler polls every few milliseconds.
const YIELD_WAIT: Duration = Duration::from_millis(100);
/// Wait after a TRUNCATE before checking that no commit raced it (see [`Db::truncate`]):
/// longer than a kernel tick, the granularity of file times.
const FINGERPRINT_SETTLE: Duration = Duration::from_millis(25);
/// Our connections need almost no page cache: we read pages from the files ourselves.
const CACHE_SIZE_KIB: i64 = 64;

#[derive(Clone, Debug)]
pub struct DbConfig {
    pub min_checkpoint_pages: u64,
    pub checkpoint_interval: Duration,
    pub truncate_pages: u64,
    pub max_sync_bytes: u64,
    pub busy_timeout: Duration,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            min_checkpoint_pages: DEFAULT_MIN_CHECKPOINT_PAGES,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            truncate_pages: DEFAULT_TRUNCATE_PAGES,
            max_sync_bytes: DEFAULT_MAX_SYNC_BYTES,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("not a SQLite database: {0}")]
    NotSqlite(String),
    #[error("database is busy (locked by the application longer than {0:?})")]
    Busy(Duration),
    #[error("SQLite error on {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WAL: {0}")]
    Wal(#[from] wal::WalError),
    #[error("LTX: {0}")]
    Ltx(#[from] ltx::LtxError),
    #[error("staging: {0}")]
    Staging(#[from] crate::client::ClientError),
    #[error("the database changed while it was being read; retrying")]
    Raced,
    #[error("{0} was replaced by another file; reopening")]
    Replaced(PathBuf),
}

impl SyncError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SyncError::NotSqlite(_))
    }
    pub fn is_permanent(&self) -> bool {
        !self.is_retryable()
    }
}

type Result<T, E = SyncError> = std::result::Result<T, E>;

/// Where the L0 chain stands: enough to continue it without re-reading any file.
/// Small on purpose: one of these is kept in memory for every tenant, hot or cold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Last L0 TXID staged locally (0: no chain yet, the next L0 is the TXID-1 snapshot).
    pub txid: u64,
    pub page_size: u32,
    /// Database size in pages at `txid`.
    pub commit: u32,
    /// Salts of the WAL generation the last L0 came from ((0, 0): read from the db file only).
    pub salts: (u32, u32),
    /// WAL offset just past the last frame covered (0 when no WAL was read).
    pub wal_end: u64,
    /// Cumulative WAL checksum of the frame ending at `wal_end`.
    pub checksum: (u32, u32),
    /// The scan that produced this position reached the end of the WAL's valid chain.
    pub at_chain_end: bool,
}

/// Why we may trust that the WAL still continues [`Position`]; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proof {
    None,
    ReadLock,
    Truncated { db_fingerprint: (i128, u64) },
}

/// A staged L0 file, durable on local disk.
#[derive(Clone, Debug)]
pub struct StagedLtx {
    pub path: PathBuf,
    pub txid: Txid,
    pub size: u64,
    pub timestamp: SystemTime,
    pub full: bool,
}

/// An open (hot) database: our read transaction pins the WAL; the writer connection is used only
/// to take SQLite's write lock and to checkpoint.
pub struct Db {
    path: PathBuf,
    wal_path: PathBuf,
    reader: Connection,
    writer: Connection,
    /// Our read transaction is open (the WAL read mark is held).
    read_tx: std::cell::Cell<bool>,
    config: DbConfig,
    /// (device, inode) of the file we opened: a different file at the path is another database.
    identity: (u64, u64),
    /// The database file, for reading pages. POSIX advisory locks belong to the process and the
    /// inode: closing *any* descriptor of the file drops every lock our connections hold on it
    /// (SQLite's own VFS defers such closes; a `std::fs::File` does not). Without our SHARED
    /// lock an application connection that closes believes it is the last one: it checkpoints
    /// ignoring our read mark and deletes the WAL, and commits we had not shipped vanish from
    /// under the proof. So the file is opened once and, being the last field, closed only after
    /// both connections.
    db_file: File,
}

impl Db {
    /// Opens the database (it must exist; a zero-byte file is a valid empty database), switches
    /// it to WAL mode and takes the read lock.
    pub fn open(path: &Path, config: DbConfig) -> Result<Self> {
        configure_sqlite();
        check_sqlite_header(path)?;
        let open = |p: &Path| -> Result<Connection> {
            let c = Connection::open_with_flags(
                p,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| sqlite_err(p, e))?;
            disable_lookaside(&c);
            c.busy_timeout(config.busy_timeout)
                .map_err(|e| sqlite_err(p, e))?;
            c.execute_batch(&format!(
                "PRAGMA cache_size = -{CACHE_SIZE_KIB}; PRAGMA wal_autocheckpoint = 0;"
            ))
            .map_err(|e| sqlite_err(p, e))?;
            set_persist_wal(&c);
            Ok(c)
        };
        let writer = open(path)?;
        let mode: String = writer
            .query_row("PRAGMA journal_mode = wal", [], |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SyncError::NotSqlite(format!(
                "{}: cannot switch to WAL mode (journal_mode is {mode})",
                path.display()
            )));
        }
        let reader = open(path)?;
        let identity = file_identity(path)?;
        let db_file = File::open(path).map_err(|e| io_err(path, e))?;
        let db = Db {
            wal_path: wal_path(path),
            path: path.to_path_buf(),
            reader,
            writer,
            read_tx: std::cell::Cell::new(false),
            config,
            identity,
            db_file,
        };
        db.acquire_read()?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fails when the path now names another file (deleted and re-created, or replaced by a
    /// rename): our connections would otherwise keep replicating the old, unlinked file.
    fn check_identity(&self) -> Result<()> {
        match file_identity(&self.path) {
            Ok(id) if id == self.identity => Ok(()),
            _ => Err(SyncError::Replaced(self.path.clone())),
        }
    }

    fn acquire_read(&self) -> Result<()> {
        if self.read_tx.get() {
            return Ok(());
        }
        begin_read(&self.reader, &self.path)?;
        self.read_tx.set(true);
        Ok(())
    }

    /// Moves our read mark up to the WAL's current end without a moment in which we hold none:
    /// the writer connection begins a read transaction (the bridge), the reader ends its own and
    /// begins a new one, the bridge ends.
    ///
    /// A read mark at the end lets the application's checkpoints copy every frame into the
    /// database instead of waiting for us; and once a checkpoint has copied them all, the new
    /// mark is SQLite's mark 0 (read from the db file alone), which lets a `RESTART` or
    /// `TRUNCATE` checkpoint of the application reset the WAL instead of waiting its whole busy
    /// timeout for us while it holds the write lock (RELIABILITY.md, finding 1).
    ///
    /// The proof (see the module docs) survives the hop. Let `E` be our position and `m` the old
    /// mark; `m <= E` because the caller's scan reached the end of the WAL. While the old mark is held, nothing is copied past `m` and the WAL cannot
    /// restart. So the bridge gets mark 0 only if every frame is copied, i.e. the WAL ends at
    /// `m = E`; otherwise it gets a mark at the end, `>= E`. Either way, from then on the WAL
    /// still continues `E` (a mark `>= E` pins it; under mark 0 nothing more is copied, so the one
    /// restart SQLite may still make follows `E` directly). The same holds from the bridge to the
    /// reader's new mark.
    fn advance_read(&self) -> Result<()> {
        if !self.read_tx.get() {
            return Ok(());
        }
        if let Err(e) = begin_read(&self.writer, &self.path) {
            // Nothing changed: we still hold the old mark.
            tracing::debug!(path = %self.path.display(), error = %e, "no bridge for the read mark");
            return Ok(());
        }
        self.read_tx.set(false);
        let hopped = self
            .reader
            .execute_batch("ROLLBACK")
            .map_err(|e| sqlite_err(&self.path, e))
            .and_then(|()| begin_read(&self.reader, &self.path));
        let ended = self
            .writer
            .execute_batch("ROLLBACK")
            .map_err(|e| sqlite_err(&self.path, e));
        hopped?;
        self.read_tx.set(true);
        ended
    }

    fn release_read(&self) -> Result<()> {
        if self.read_tx.get() {
            self.read_tx.set(false);
            self.reader
                .execute_batch("ROLLBACK")
                .map_err(|e| sqlite_err(&self.path, e))?;
        }
        Ok(())
    }

    fn begin_write(&self) -> Result<WriteLock<'_>> {
        match self.writer.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => Ok(WriteLock { conn: &self.writer }),
            Err(e) if is_busy(&e) => Err(SyncError::Busy(self.config.busy_timeout)),
            Err(e) => Err(sqlite_err(&self.path, e)),
        }
    }

    /// The write lock for our own checkpoint or seal. The application's `RESTART`/`TRUNCATE`
    /// checkpoint takes that lock and then waits for our read mark: first for a mark at the end
    /// (before it copies frames), then for no mark but SQLite's mark 0 (before it resets the
    /// WAL). So we move our mark before we wait ([`Db::advance_read`]), and once more if the
    /// lock is still held after [`YIELD_WAIT`], instead of the two of us waiting for each
    /// other's timeouts. Without a proof that rests on our mark, we simply let go of it.
    fn lock_for_checkpoint(&self, pos: &Position, proof: &mut Proof) -> Result<WriteLock<'_>> {
        if *proof != Proof::ReadLock {
            self.release_read()?;
            return self.begin_write();
        }
        if !pos.at_chain_end {
            return self.begin_write();
        }
        let hop = |proof: &mut Proof| {
            if let Err(e) = self.advance_read() {
                tracing::debug!(path = %self.path.display(), error = %e, "could not advance the read mark");
            }
            if !self.read_tx.get() {
                *proof = Proof::None;
            }
        };
        hop(proof);
        let set_timeout = |d| {
            self.writer
                .busy_timeout(d)
                .map_err(|e| sqlite_err(&self.path, e))
        };
        set_timeout(YIELD_WAIT)?;
        let first = self.begin_write();
        set_timeout(self.config.busy_timeout)?;
        match first {
            Err(SyncError::Busy(_)) => {
                hop(proof);
                self.begin_write()
            }
            r => r,
        }
    }

    /// Ships everything committed since `pos` as the next L0 in `staging`, if anything was.
    /// `proof` says what we know about the WAL since `pos` was taken; after the call the proof is
    /// [`Proof::ReadLock`] (we hold the read lock and verified continuity).
    pub fn sync(
        &mut self,
        pos: &mut Position,
        proof: &mut Proof,
        staging: &Staging,
    ) -> Result<Option<StagedLtx>> {
        self.check_identity()?;
        if *proof == Proof::ReadLock && self.read_tx.get() {
            // Fast path: no lock needed, the read mark pins what we compare against.
            let out = self.plan_and_ship(pos, proof, staging)?;
            if !pos.at_chain_end {
                return Ok(out);
            }
            if let Err(e) = self.advance_read() {
                // Our read mark may be gone: the next sync re-verifies under the write lock.
                tracing::debug!(path = %self.path.display(), error = %e, "could not advance the read mark");
                *proof = Proof::None;
            }
            return Ok(out);
        }
        // Unproven history: verify under the write lock so the WAL cannot move while we look.
        // The proof does not rest on our read mark, so let go of it first: an application
        // checkpoint holding the write lock may be waiting for it.
        self.release_read()?;
        let lock = self.begin_write()?;
        self.acquire_read()?;
        let out = self.plan_and_ship(pos, proof, staging)?;
        drop(lock);
        *proof = Proof::ReadLock;
        Ok(out)
    }

    /// Under the write lock (the WAL cannot grow): ships everything up to the WAL's end, one L0
    /// per [`DbConfig::max_sync_bytes`]. A checkpoint may follow only this: what it copies into
    /// the database (and a `TRUNCATE` then deletes from the WAL) must be in the chain first.
    fn ship_to_end(
        &self,
        _lock: &WriteLock<'_>,
        pos: &mut Position,
        proof: &Proof,
        staging: &Staging,
    ) -> Result<Vec<StagedLtx>> {
        let mut staged = Vec::new();
        while let Some(s) = self.plan_and_ship(pos, proof, staging)? {
            staged.push(s);
            if pos.at_chain_end {
                break;
            }
        }
        Ok(staged)
    }

    /// Ships whatever [`Db::plan`] says the next L0 must contain, if anything.
    fn plan_and_ship(
        &self,
        pos: &mut Position,
        proof: &Proof,
        staging: &Staging,
    ) -> Result<Option<StagedLtx>> {
        match self.plan(pos, proof)? {
            Some(plan) => self.ship(plan, pos, staging),
            None => Ok(None),
        }
    }

    /// Decides what the next L0 must contain.
    fn plan(&self, pos: &Position, proof: &Proof) -> Result<Option<Plan>> {
        if pos.txid == 0 {
            return Ok(Some(Plan::Full));
        }
        let wal = open_optional(&self.wal_path)?;
        let header = match &wal {
            Some(f) => WalHeader::read(f)?,
            None => None,
        };
        let Some(header) = header else {
            // No valid WAL: every committed page is in the db file. With our read mark held
            // since a scan that reached the end, it was emptied right after that end (a
            // `TRUNCATE` checkpoint of the application; see `advance_read`): nothing new.
            return Ok(match proof {
                Proof::ReadLock if pos.wal_end == 0 || pos.at_chain_end => None,
                Proof::Truncated { db_fingerprint }
                    if *db_fingerprint == fingerprint(&self.path)? =>
                {
                    None
                }
                _ => Some(Plan::Full),
            });
        };
        let Some(wal) = wal else {
            return Ok(Some(Plan::Full));
        };
        if header.page_size != pos.page_size && pos.page_size != 0 {
            return Ok(Some(Plan::Full));
        }
        if let Proof::Truncated { db_fingerprint } = proof {
            // We emptied the WAL with nothing unshipped. Every restart of the WAL since would
            // have needed a checkpoint that wrote to the db file; if the file is untouched, the
            // WAL holds every commit since, from its start (whatever its salts: a connection
            // that never checkpointed itself writes random ones).
            return Ok(Some(if *db_fingerprint == fingerprint(&self.path)? {
                Plan::Incremental {
                    from: WAL_HEADER_SIZE,
                    seed: (header.checksum1, header.checksum2),
                    header,
                }
            } else {
                Plan::Full
            }));
        }
        let same_gen = (header.salt1, header.salt2) == pos.salts;
        if same_gen && pos.wal_end >= WAL_HEADER_SIZE {
            let trusted = *proof == Proof::ReadLock || self.frame_matches(&wal, pos)?;
            if trusted {
                return Ok(Some(Plan::Incremental {
                    header,
                    from: pos.wal_end,
                    seed: pos.checksum,
                }));
            }
            return Ok(Some(Plan::Full));
        }
        let follows = match proof {
            // Whatever its salts: `salt1 + 1` when the connection that reset the WAL writes
            // first, random ones when another connection does.
            Proof::ReadLock => pos.at_chain_end || pos.wal_end == 0,
            Proof::Truncated { .. } | Proof::None => false,
        };
        if follows {
            return Ok(Some(Plan::Incremental {
                from: WAL_HEADER_SIZE,
                seed: (header.checksum1, header.checksum2),
                header,
            }));
        }
        Ok(Some(Plan::Full))
    }

    /// Rule 1 of restart safety: the frame just before our offset still has our salts, our
    /// checksum and the page image we shipped.
    fn frame_matches(&self, wal: &File, pos: &Position) -> Result<bool> {
        let frame_size = WAL_FRAME_HEADER_SIZE + pos.page_size as u64;
        if pos.wal_end < WAL_HEADER_SIZE + frame_size {
            return Ok(false);
        }
        let off = pos.wal_end - frame_size;
        let Some(fh) = wal::read_frame_header(wal, off)? else {
            return Ok(false);
        };
        Ok((fh.salt1, fh.salt2) == pos.salts && (fh.checksum1, fh.checksum2) == pos.checksum)
    }

    fn ship(&self, plan: Plan, pos: &mut Position, staging: &Staging) -> Result<Option<StagedLtx>> {
        match plan {
            Plan::Full => self.ship_full(pos, staging).map(Some),
            Plan::Incremental { header, from, seed } => {
                let wal = File::open(&self.wal_path).map_err(|e| io_err(&self.wal_path, e))?;
                let scan = wal::scan(&wal, &header, from, seed, self.config.max_sync_bytes)?;
                if scan.commit.is_none() {
                    // Nothing committed past our offset. If the generation changed, adopt it so
                    // that later frames are read from its start.
                    if (header.salt1, header.salt2) != pos.salts {
                        pos.salts = (header.salt1, header.salt2);
                        pos.wal_end = WAL_HEADER_SIZE;
                        pos.checksum = seed;
                    }
                    pos.at_chain_end = true;
                    return Ok(None);
                }
                let staged = self.write_l0(pos, staging, &wal, &scan)?;
                Ok(Some(staged))
            }
        }
    }

    /// A full-page L0: every page `1..=commit`, read from the db file overlaid with the WAL up to
    /// its last commit, checked afterwards against a concurrent WAL restart.
    fn ship_full(&self, pos: &mut Position, staging: &Staging) -> Result<StagedLtx> {
        for _ in 0..3 {
            let wal = open_optional(&self.wal_path)?;
            let header = match &wal {
                Some(f) => WalHeader::read(f)?,
                None => None,
            };
            let scan = match (&wal, &header) {
                (Some(f), Some(h)) => Some(wal::scan(
                    f,
                    h,
                    WAL_HEADER_SIZE,
                    (h.checksum1, h.checksum2),
                    u64::MAX,
                )?),
                _ => None,
            };
            let staged =
                self.write_full(pos, staging, wal.as_ref(), header.as_ref(), scan.as_ref())?;
            // A WAL restart rewrites the header before any frame, so an unchanged header means no
            // frame we read was overwritten.
            let after = match &wal {
                Some(f) => WalHeader::read(f)?,
                None => open_optional(&self.wal_path)?
                    .map(|f| WalHeader::read(&f))
                    .transpose()?
                    .flatten(),
            };
            let stable = match (&header, &after) {
                (Some(a), Some(b)) => (a.salt1, a.salt2) == (b.salt1, b.salt2),
                (None, None) => true,
                (None, Some(_)) => true, // the db file alone was consistent under our read lock
                (Some(_), None) => false,
            };
            if stable {
                return staged.commit(pos);
            }
            staged.discard();
        }
        Err(SyncError::Raced)
    }

    fn write_full(
        &self,
        pos: &Position,
        staging: &Staging,
        wal: Option<&File>,
        header: Option<&WalHeader>,
        scan: Option<&FrameScan>,
    ) -> Result<Pending> {
        let db = &self.db_file;
        let db_len = db.metadata().map_err(|e| io_err(&self.path, e))?.len();
        let page_size = match header {
            Some(h) => h.page_size,
            None => db_page_size(db, &self.path)?,
        };
        let commit = match scan.and_then(|s| s.commit) {
            Some(c) => c,
            None => db_len.div_ceil(page_size as u64).max(1) as u32,
        };
        let empty = BTreeMap::new();
        let pages = scan.map(|s| &s.pages).unwrap_or(&empty);
        let txid = Txid(pos.txid + 1);
        let (wal_offset, wal_size, salts, end, checksum) = match (header, scan) {
            (Some(h), Some(s)) if s.commit.is_some() => (
                WAL_HEADER_SIZE,
                s.end - WAL_HEADER_SIZE,
                (h.salt1, h.salt2),
                s.end,
                s.checksum,
            ),
            (Some(h), Some(s)) => (0, 0, (h.salt1, h.salt2), s.start, s.checksum),
            _ => (0, 0, (0, 0), 0, (0, 0)),
        };
        // LTX headers carry salts only together with a WAL offset.
        let hdr_salts = if wal_offset == 0 { (0, 0) } else { salts };
        let hdr = self.ltx_header(page_size, commit, txid, wal_offset, wal_size, hdr_salts);
        let lock = ltx::lock_page(page_size);
        let mut pending = staging.create(txid)?;
        let mut enc = Encoder::new(BufWriter::new(pending.file()?), hdr.clone())
            .map_err(|e| pending.ltx_err(e))?;
        let mut buf = vec![0u8; page_size as usize];
        for pgno in 1..=commit {
            if pgno == lock {
                continue;
            }
            match (pages.get(&pgno), wal) {
                (Some(&off), Some(w)) => read_frame_page(w, off, &mut buf, &self.wal_path)?,
                _ => read_db_page(db, pgno, &mut buf, db_len, &self.path)?,
            }
            enc.encode_page(pgno, &buf)
                .map_err(|e| pending.ltx_err(e))?;
        }
        let (w, _) = enc.finish().map_err(|e| pending.ltx_err(e))?;
        pending.finish(w, hdr, true)?;
        pending.next = Some(Position {
            txid: txid.0,
            page_size,
            commit,
            salts,
            wal_end: end,
            checksum,
            at_chain_end: true,
        });
        Ok(pending)
    }

    fn write_l0(
        &self,
        pos: &mut Position,
        staging: &Staging,
        wal: &File,
        scan: &FrameScan,
    ) -> Result<StagedLtx> {
        let commit = scan.commit.unwrap_or(pos.commit);
        let page_size = pos.page_size;
        let txid = Txid(pos.txid + 1);
        let hdr = self.ltx_header(
            page_size,
            commit,
            txid,
            scan.start,
            scan.end - scan.start,
            scan.salts,
        );
        let lock = ltx::lock_page(page_size);
        // Pages in the WAL, plus pages of a grown database that are not in the WAL.
        let mut pgnos: Vec<u32> = scan
            .pages
            .keys()
            .copied()
            .filter(|&p| p <= commit)
            .collect();
        let db = &self.db_file;
        let db_len = db.metadata().map_err(|e| io_err(&self.path, e))?.len();
        if commit > pos.commit {
            pgnos.extend((pos.commit + 1..=commit).filter(|p| !scan.pages.contains_key(p)));
            pgnos.sort_unstable();
        }
        let mut pending = staging.create(txid)?;
        let mut enc = Encoder::new(BufWriter::new(pending.file()?), hdr.clone())
            .map_err(|e| pending.ltx_err(e))?;
        let mut buf = vec![0u8; page_size as usize];
        for pgno in pgnos {
            if pgno == lock {
                continue;
            }
            match scan.pages.get(&pgno) {
                Some(&off) => read_frame_page(wal, off, &mut buf, &self.wal_path)?,
                None => read_db_page(db, pgno, &mut buf, db_len, &self.path)?,
            }
            enc.encode_page(pgno, &buf)
                .map_err(|e| pending.ltx_err(e))?;
        }
        let (w, _) = enc.finish().map_err(|e| pending.ltx_err(e))?;
        pending.finish(w, hdr, false)?;
        pending.next = Some(Position {
            txid: txid.0,
            page_size,
            commit,
            salts: scan.salts,
            wal_end: scan.end,
            checksum: scan.checksum,
            at_chain_end: scan.reached_end,
        });
        pending.commit(pos)
    }

    fn ltx_header(
        &self,
        page_size: u32,
        commit: u32,
        txid: Txid,
        wal_offset: u64,
        wal_size: u64,
        salts: (u32, u32),
    ) -> Header {
        Header {
            flags: ltx::HEADER_FLAG_NO_CHECKSUM,
            page_size,
            commit,
            min_txid: txid,
            max_txid: txid,
            timestamp_ms: now_ms(),
            pre_apply_checksum: 0,
            wal_offset: wal_offset as i64,
            wal_size: wal_size as i64,
            wal_salt1: salts.0,
            wal_salt2: salts.1,
            node_id: 0,
        }
    }

    /// Current WAL size in pages (frames), from the file length.
    pub fn wal_pages(&self, page_size: u32) -> u64 {
        let len = std::fs::metadata(&self.wal_path)
            .map(|m| m.len())
            .unwrap_or(0);
        len.saturating_sub(WAL_HEADER_SIZE) / (WAL_FRAME_HEADER_SIZE + page_size as u64)
    }

    /// Litestream-style PASSIVE checkpoint: under the write lock, sync to the end, release our
    /// read mark, checkpoint, take the read mark again. The proof stays [`Proof::ReadLock`]: the
    /// WAL could not change (other than being backfilled) while we held the write lock.
    pub fn checkpoint_passive(
        &mut self,
        pos: &mut Position,
        proof: &mut Proof,
        staging: &Staging,
    ) -> Result<Vec<StagedLtx>> {
        self.check_identity()?;
        let lock = self.lock_for_checkpoint(pos, proof)?;
        self.acquire_read()?;
        let staged = self.ship_to_end(&lock, pos, proof, staging)?;
        self.release_read()?;
        let r: Result<(i64, i64, i64)> = self
            .reader
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| sqlite_err(&self.path, e));
        let reacquired = self.acquire_read();
        drop(lock);
        r?;
        reacquired?;
        *proof = Proof::ReadLock;
        Ok(staged)
    }

    /// Seals the WAL before we let go of the database: sync to the end under the write lock, then
    /// TRUNCATE the WAL. The proof left behind is what the next wake-up can rely on.
    pub fn seal_and_close(
        mut self,
        pos: &mut Position,
        proof: &mut Proof,
        staging: &Staging,
    ) -> Result<Vec<StagedLtx>> {
        self.truncate(pos, proof, staging)
    }

    /// TRUNCATE checkpoint for a WAL past `truncate_pages`; stays open (read lock taken again).
    pub fn checkpoint_truncate(
        &mut self,
        pos: &mut Position,
        proof: &mut Proof,
        staging: &Staging,
    ) -> Result<Vec<StagedLtx>> {
        let staged = self.truncate(pos, proof, staging)?;
        // The proof stays `Truncated` until the next sync has read the new generation.
        self.acquire_read()?;
        Ok(staged)
    }

    /// 1. Under the write lock, ship everything up to the WAL's end and note `data_version`.
    /// 2. Release our read mark and the write lock; TRUNCATE (it takes the write lock itself).
    /// 3. If `data_version` is unchanged no other connection committed in between, so nothing
    ///    was checkpointed away unshipped: [`Proof::Truncated`]. Otherwise [`Proof::None`] and the
    ///    next sync re-verifies (a full-page L0 if frames were lost).
    fn truncate(
        &mut self,
        pos: &mut Position,
        proof: &mut Proof,
        staging: &Staging,
    ) -> Result<Vec<StagedLtx>> {
        self.check_identity()?;
        let lock = self.lock_for_checkpoint(pos, proof)?;
        self.acquire_read()?;
        let staged = self.ship_to_end(&lock, pos, proof, staging)?;
        let before = data_version(&self.writer, &self.path)?;
        self.release_read()?;
        drop(lock);
        let set_timeout =
            |c: &Connection, d| c.busy_timeout(d).map_err(|e| sqlite_err(&self.path, e));
        set_timeout(&self.writer, TRUNCATE_BUSY_TIMEOUT)?;
        let ck: rusqlite::Result<(i64, i64, i64)> =
            self.writer
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                });
        set_timeout(&self.writer, self.config.busy_timeout)?;
        let db_fingerprint = fingerprint(&self.path)?;
        // File times are coarse (one kernel tick): make sure no commit lands in the tick of our
        // own last write to the db file, or a later checkpoint could leave the same mtime.
        std::thread::sleep(FINGERPRINT_SETTLE);
        let after = data_version(&self.writer, &self.path)?;
        *proof = match ck {
            Ok((0, _, _)) if before == after => Proof::Truncated { db_fingerprint },
            _ => Proof::None,
        };
        Ok(staged)
    }
}

/// Holds SQLite's write lock (an open `BEGIN IMMEDIATE`) until dropped.
struct WriteLock<'a> {
    conn: &'a Connection,
}

impl Drop for WriteLock<'_> {
    fn drop(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }
}

enum Plan {
    Full,
    Incremental {
        header: WalHeader,
        from: u64,
        seed: (u32, u32),
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ltx::LtxFileName;

    struct Fixture {
        dir: tempfile::TempDir,
        db: PathBuf,
        app: Connection,
        staging: Staging,
        seq: i64,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("app.db");
            let app = Connection::open(&db).unwrap();
            app.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
                .unwrap();
            app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
                .unwrap();
            let staging = Staging::new(dir.path().join("state"));
            Fixture {
                dir,
                db,
                app,
                staging,
                seq: 0,
            }
        }

        fn write(&mut self, rows: usize) {
            for _ in 0..rows {
                self.seq += 1;
                self.app
                    .execute(
                        "INSERT INTO t(v) VALUES (?1)",
                        [format!("row {} {}", self.seq, "x".repeat(300))],
                    )
                    .unwrap();
            }
        }

        /// Restores the staged chain and returns its row count.
        fn restored_rows(&self) -> i64 {
            let replica = self.dir.path().join("replica");
            let l0 = replica.join("ltx/0");
            std::fs::create_dir_all(&l0).unwrap();
            for t in self.staging.list().unwrap() {
                std::fs::copy(
                    self.staging.path_of(t),
                    l0.join(LtxFileName { min: t, max: t }.to_string()),
                )
                .unwrap();
            }
            let out = self.dir.path().join("restored.db");
            let r = crate::client::Replica::Fs(crate::client::fs::FsReplica::new(&replica));
            let opts = crate::restore::RestoreOptions {
                force: true,
                ..Default::default()
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(crate::restore::restore(
                &r,
                &out,
                &opts,
                &Default::default(),
            ))
            .unwrap();
            let c = Connection::open(&out).unwrap();
            c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap()
        }
    }

    #[test]
    fn a_sealed_wal_continues_incrementally_after_wake() {
        let mut f = Fixture::new();
        f.write(5);
        let (mut pos, mut proof) = (Position::default(), Proof::None);
        let mut db = Db::open(&f.db, DbConfig::default()).unwrap();
        assert!(
            db.sync(&mut pos, &mut proof, &f.staging)
                .unwrap()
                .unwrap()
                .full
        );
        f.write(3);
        let s = db.sync(&mut pos, &mut proof, &f.staging).unwrap().unwrap();
        assert!(!s.full, "steady-state sync must be incremental");
        f.write(2);
        db.seal_and_close(&mut pos, &mut proof, &f.staging).unwrap();
        assert!(
            matches!(proof, Proof::Truncated { .. }),
            "quiet seal must prove continuity: {proof:?}"
        );
        // Cold: the app writes into the next WAL generation.
        f.write(4);
        let mut db = Db::open(&f.db, DbConfig::default()).unwrap();
        let s = db.sync(&mut pos, &mut proof, &f.staging).unwrap().unwrap();
        assert!(
            !s.full,
            "the generation after our own TRUNCATE continues incrementally"
        );
        assert_eq!(proof, Proof::ReadLock);
        assert_eq!(f.restored_rows(), 14);
    }

    /// A seal or checkpoint copies the WAL into the database (and a seal then empties it), so
    /// it must first ship all of it, however many `max_sync_bytes` chunks that takes.
    #[test]
    fn sealing_and_checkpointing_ship_the_whole_wal_first() {
        let mut f = Fixture::new();
        let config = DbConfig {
            max_sync_bytes: 16 * 1024,
            ..DbConfig::default()
        };
        f.write(10);
        let (mut pos, mut proof) = (Position::default(), Proof::None);
        let mut db = Db::open(&f.db, config.clone()).unwrap();
        db.sync(&mut pos, &mut proof, &f.staging).unwrap();
        f.write(200);
        db.sync(&mut pos, &mut proof, &f.staging).unwrap().unwrap();
        assert!(!pos.at_chain_end, "one sync ships one chunk");
        let staged = db
            .checkpoint_passive(&mut pos, &mut proof, &f.staging)
            .unwrap();
        assert!(staged.len() > 1, "{} files", staged.len());
        assert!(pos.at_chain_end);
        assert_eq!(f.restored_rows(), 210);
        f.write(200);
        db.sync(&mut pos, &mut proof, &f.staging).unwrap().unwrap();
        assert!(!pos.at_chain_end);
        db.seal_and_close(&mut pos, &mut proof, &f.staging).unwrap();
        assert!(matches!(proof, Proof::Truncated { .. }), "{proof:?}");
        assert_eq!(f.restored_rows(), 410);
    }

    /// The application's own `TRUNCATE` checkpoint resets the WAL under our (moved) read mark:
    /// not kept waiting, and the generation after it continues incrementally, whichever
    /// connection writes it first (`salt1 + 1` from the one that reset it, random salts from
    /// another).
    #[test]
    fn an_app_truncate_checkpoint_neither_waits_for_us_nor_breaks_the_chain() {
        for other_writer in [false, true] {
            let mut f = Fixture::new();
            f.write(5);
            let (mut pos, mut proof) = (Position::default(), Proof::None);
            let mut db = Db::open(&f.db, DbConfig::default()).unwrap();
            db.sync(&mut pos, &mut proof, &f.staging).unwrap();
            f.write(3);
            db.sync(&mut pos, &mut proof, &f.staging).unwrap().unwrap();
            // The app's checkpoint copies everything (our mark is at the end); the next sync
            // finds nothing new and moves the mark to SQLite's mark 0.
            let busy = |f: &Fixture, mode: &str| -> i64 {
                f.app
                    .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(0))
                    .unwrap()
            };
            assert_eq!(busy(&f, "PASSIVE"), 0);
            assert!(db.sync(&mut pos, &mut proof, &f.staging).unwrap().is_none());
            assert_eq!(busy(&f, "TRUNCATE"), 0, "the app's TRUNCATE waited for us");
            assert_eq!(std::fs::metadata(wal_path(&f.db)).unwrap().len(), 0);
            assert!(db.sync(&mut pos, &mut proof, &f.staging).unwrap().is_none());
            if other_writer {
                let c = Connection::open(&f.db).unwrap();
                c.execute("INSERT INTO t(v) VALUES ('from another connection')", [])
                    .unwrap();
                f.seq += 1;
            }
            f.write(4);
            let s = db.sync(&mut pos, &mut proof, &f.staging).unwrap().unwrap();
            assert!(!s.full, "other writer {other_writer}: full-page L0");
            assert_eq!(proof, Proof::ReadLock);
            assert_eq!(f.restored_rows(), f.seq);
        }
    }

    #[test]
    fn an_unproven_generation_change_gets_a_full_page_l0() {
        let mut f = Fixture::new();
        f.write(5);
        let (mut pos, mut proof) = (Position::default(), Proof::None);
        let mut db = Db::open(&f.db, DbConfig::default()).unwrap();
        db.sync(&mut pos, &mut proof, &f.staging).unwrap();
        db.seal_and_close(&mut pos, &mut proof, &f.staging).unwrap();
        // While we are away the app writes, truncates (a second restart) and writes again.
        f.write(3);
        f.app
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        f.write(2);
        let mut db = Db::open(&f.db, DbConfig::default()).unwrap();
        let s = db.sync(&mut pos, &mut proof, &f.staging).unwrap().unwrap();
        assert!(
            s.full,
            "two generations later nothing proves continuity: full-page L0"
        );
        assert_eq!(f.restored_rows(), 10);
    }

    #[test]
    fn a_replaced_file_is_detected() {
        let mut f = Fixture::new();
        f.write(1);
        let (mut pos, mut proof) = (Position::default(), Proof::None);
        let mut db = Db::open(&f.db, DbConfig::default()).unwrap();
        db.sync(&mut pos, &mut proof, &f.staging).unwrap();
        let other = f.dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE x(a)")
            .unwrap();
        std::fs::rename(&other, &f.db).unwrap();
        assert!(matches!(
            db.sync(&mut pos, &mut proof, &f.staging),
            Err(SyncError::Replaced(_))
        ));
    }
}
