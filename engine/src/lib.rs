//! The replication engine of Litestream Manager: it turns live SQLite databases into Litestream 0.5
//! replicas (LTX files) and restores them. It knows nothing about HTTP.
//!
//! # Layout
//! Data flows top to bottom:
//! - [`watcher`]: one inotify watch per directory, read in batches; reports tenant files and
//!   changes to the store.
//! - [`store`]: the registry of tenants (hot/cold), the one maintenance timer, status events.
//! - [`tenant`]: one tenant's hot period: sync → stage → upload → checkpoint → seal and go cold.
//! - [`db`]: one database's replicator: the WAL → L0 LTX files, restart-safe continuity proofs.
//! - [`wal`]: reader for SQLite's `-wal` file: header, frames, checksums, commits, generations.
//! - [`ltx`]: the LTX v3 file codec (what Litestream 0.5.16+ writes; reads the older encoding too).
//! - [`compact`]: compaction levels, L9 snapshots and retention, on Litestream's schedule.
//! - [`client`]: the `Replica` seam and its backends (local directory, S3).
//! - [`restore`]: restore plans and the restore itself.
//!
//! # Invariants
//! - Replica = Litestream 0.5 LTX: TXIDs contiguous from 1, a snapshot first, NoChecksum files.
//! - An incremental L0 is written only when its continuity with the previous one is proven
//!   (see [`db`]); otherwise a full-page L0 follows. No committed transaction that was reported as
//!   replicated is ever lost, and no file restores to a state the application never committed.
//! - An idle tenant holds no file, connection, task or timer, and costs no replica request.
pub mod client;
pub mod compact;
pub mod db;
pub mod ltx;
pub mod restore;
pub mod store;
pub mod tenant;
pub mod wal;
pub mod watcher;
