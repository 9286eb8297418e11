//! The storage seam: where one tenant's LTX files live (a local directory or S3).
//!
//! The engine alone decides object names, ordering and retention; a backend only stores, lists,
//! reads and deletes whole LTX files by `(level, min, max)`. Backends are chosen with the
//! [`Replica`] enum, not a registry. Every call takes a cancellation token so that shutdown never
//! waits on a slow store.

pub mod fs;

use std::path::PathBuf;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::ltx::{LtxFileName, Txid};

/// Number of levels Litestream 0.5 knows: 0..=8 compaction levels plus the snapshot level 9.
pub const SNAPSHOT_LEVEL: u8 = 9;

/// One LTX file as a replica lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LtxInfo {
    pub level: u8,
    pub min: Txid,
    pub max: Txid,
    pub size: u64,
    /// Creation time as the replica reports it: the file's mtime (fs), or the
    /// `litestream-timestamp` metadata (S3); both equal the LTX header timestamp when we wrote them.
    pub created_at: SystemTime,
}

impl LtxInfo {
    pub fn name(&self) -> LtxFileName {
        LtxFileName {
            min: self.min,
            max: self.max,
        }
    }
}

/// What went wrong talking to a replica.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("cancelled")]
    Cancelled,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storage full while writing {path}: {source}")]
    NoSpace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("replica error: {0}")]
    Other(String),
}

impl ClientError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ClientError::NoSpace { path, source },
            _ if source.kind() == std::io::ErrorKind::NotFound => {
                ClientError::NotFound(path.display().to_string())
            }
            _ if source.kind() == std::io::ErrorKind::PermissionDenied => {
                ClientError::Denied(format!("{}: {source}", path.display()))
            }
            _ => ClientError::Io { path, source },
        }
    }

    /// A retry may succeed (network blips, full disk that may be freed, throttling).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Io { .. } | ClientError::NoSpace { .. } | ClientError::Other(_)
        )
    }

    /// Retrying will not help until an operator acts.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Denied(_))
    }
}

/// A replica target for one tenant. Cloning is cheap.
#[derive(Clone, Debug)]
pub enum Replica {
    Fs(fs::FsReplica),
}

impl Replica {
    /// Human-readable location, e.g. `file:///abs/replica/databases/<id>`; never contains secrets.
    pub fn url(&self) -> String {
        match self {
            Replica::Fs(c) => c.url(),
        }
    }

    pub async fn list(
        &self,
        level: u8,
        cancel: &CancellationToken,
    ) -> Result<Vec<LtxInfo>, ClientError> {
        match self {
            Replica::Fs(c) => guard(cancel, c.list(level)).await,
        }
    }

    /// All levels 0..=9, each sorted by min TXID.
    pub async fn list_all(&self, cancel: &CancellationToken) -> Result<Vec<LtxInfo>, ClientError> {
        let mut all = Vec::new();
        for level in 0..=SNAPSHOT_LEVEL {
            all.extend(self.list(level, cancel).await?);
        }
        Ok(all)
    }

    /// Reads a whole LTX file.
    pub async fn read(
        &self,
        info: &LtxInfo,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, ClientError> {
        match self {
            Replica::Fs(c) => guard(cancel, c.read(info.level, info.name())).await,
        }
    }

    /// Stores a whole LTX file; `created_at` is the LTX header timestamp.
    pub async fn write(
        &self,
        level: u8,
        name: LtxFileName,
        data: Vec<u8>,
        created_at: SystemTime,
        cancel: &CancellationToken,
    ) -> Result<LtxInfo, ClientError> {
        match self {
            Replica::Fs(c) => guard(cancel, c.write(level, name, data, created_at)).await,
        }
    }

    pub async fn delete(
        &self,
        files: &[LtxInfo],
        cancel: &CancellationToken,
    ) -> Result<(), ClientError> {
        match self {
            Replica::Fs(c) => guard(cancel, c.delete(files)).await,
        }
    }
}

async fn guard<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(ClientError::Cancelled),
        r = fut => r,
    }
}
