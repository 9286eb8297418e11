//! The replication engine of Litestream Manager: it turns live SQLite databases into Litestream 0.5
//! replicas (LTX files) and restores them.
//!
//! # Layout
//! - [`ltx`]: the LTX v3 file codec (what Litestream 0.5.16+ writes; reads the older page encoding too).
//! - [`wal`]: reader for SQLite's `-wal` file: header, frames, checksums, commits, generations.
pub mod client;
pub mod compact;
pub mod db;
pub mod ltx;
pub mod restore;
pub mod store;
pub mod tenant;
pub mod wal;
pub mod watcher;
