//! The storage seam: where one tenant's LTX files live (a local directory or S3).
//!
//! The engine alone decides object names, ordering and retention; a backend only stores, lists,
//! reads and deletes whole LTX files by `(level, min, max)`. Backends are chosen with the
//! [`Replica`] enum, not a registry. Every call takes a cancellation token so that shutdown never
//! waits on a slow store.

pub mod fs;
pub mod s3;

use std::path::{Path, PathBuf};
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
    /// Creation time as the replica reports it: the file's mtime (fs, equal to the LTX header
    /// timestamp when we wrote it), or S3's `LastModified` (upload time, whole seconds on some
    /// stores); [`Replica::list_with_timestamps`] gives S3's `litestream-timestamp` metadata
    /// (= the header timestamp) instead.
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
    /// The bucket does not exist (S3 `NoSuchBucket`): an operator must create it or fix the flags.
    #[error("no such bucket: {0}")]
    NoSuchBucket(String),
    /// The store did not answer usefully: throttling (`SlowDown`), 5xx, timeouts, connection
    /// refused/reset, DNS. Retrying later succeeds once the store recovers.
    #[error("replica unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request for a reason retrying will not fix (an unexpected 4xx).
    #[error("replica rejected the request: {0}")]
    Rejected(String),
    /// The replica is misconfigured (region, endpoint, CA bundle, no region at all).
    #[error("replica configuration: {0}")]
    Config(String),
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
            ClientError::Io { .. }
                | ClientError::NoSpace { .. }
                | ClientError::Other(_)
                | ClientError::Unavailable(_)
        )
    }

    /// Retrying will not help until an operator acts.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ClientError::Denied(_)
                | ClientError::NoSuchBucket(_)
                | ClientError::Rejected(_)
                | ClientError::Config(_)
        )
    }
}

/// A replica target for one tenant. Cloning is cheap.
#[derive(Clone, Debug)]
pub enum Replica {
    Fs(fs::FsReplica),
    S3(s3::S3Replica),
}

impl Replica {
    /// Human-readable location, e.g. `file:///abs/replica/databases/<id>`; never contains secrets.
    pub fn url(&self) -> String {
        match self {
            Replica::Fs(c) => c.url(),
            Replica::S3(c) => c.url(),
        }
    }

    pub async fn list(
        &self,
        level: u8,
        cancel: &CancellationToken,
    ) -> Result<Vec<LtxInfo>, ClientError> {
        match self {
            Replica::Fs(c) => guard(cancel, c.list(level)).await,
            Replica::S3(c) => guard(cancel, c.list(level)).await,
        }
    }

    /// All levels 0..=9, sorted by (level, min). S3: one paginated listing of the whole prefix.
    pub async fn list_all(&self, cancel: &CancellationToken) -> Result<Vec<LtxInfo>, ClientError> {
        if let Replica::S3(c) = self {
            return guard(cancel, c.list_all()).await;
        }
        let mut all = Vec::new();
        for level in 0..=SNAPSHOT_LEVEL {
            all.extend(self.list(level, cancel).await?);
        }
        Ok(all)
    }

    /// Like [`Replica::list_all`], but `created_at` is exactly the LTX header timestamp as the
    /// replica recorded it (fs: the mtime, free; S3: the `litestream-timestamp` metadata, one
    /// `HeadObject` per file). For point-in-time restore.
    pub async fn list_with_timestamps(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Vec<LtxInfo>, ClientError> {
        match self {
            Replica::S3(c) => guard(cancel, c.list_with_timestamps()).await,
            _ => self.list_all(cancel).await,
        }
    }

    /// This replica with every listing reporting exact timestamps (see
    /// [`Replica::list_with_timestamps`]), for callers that only call `list_all`, such as
    /// [`crate::restore::restore`] with a `-timestamp` target. No-op for fs.
    pub fn with_exact_timestamps(self) -> Replica {
        match self {
            Replica::S3(c) => Replica::S3(c.with_metadata_timestamps(true)),
            other => other,
        }
    }

    /// Reads a whole LTX file.
    pub async fn read(
        &self,
        info: &LtxInfo,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, ClientError> {
        match self {
            Replica::Fs(c) => guard(cancel, c.read(info.level, info.name())).await,
            Replica::S3(c) => guard(cancel, c.read(info.level, info.name())).await,
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
            Replica::S3(c) => guard(cancel, c.write(level, name, data, created_at)).await,
        }
    }

    /// Stores the LTX file at `path` (left in place) without reading it into memory.
    pub async fn write_file(
        &self,
        level: u8,
        name: LtxFileName,
        path: &Path,
        created_at: SystemTime,
        cancel: &CancellationToken,
    ) -> Result<LtxInfo, ClientError> {
        match self {
            Replica::Fs(c) => guard(cancel, c.write_file(level, name, path, created_at)).await,
            Replica::S3(c) => guard(cancel, c.write_file(level, name, path, created_at)).await,
        }
    }

    /// The LTX file as a local file, for streaming reads: the replica's own file (fs), or a
    /// download into `scratch` (S3), removed when the [`LocalLtx`] is dropped.
    pub async fn fetch_local(
        &self,
        info: &LtxInfo,
        scratch: &Path,
        cancel: &CancellationToken,
    ) -> Result<LocalLtx, ClientError> {
        match self {
            Replica::Fs(c) => Ok(LocalLtx {
                path: c.path_of(info.level, info.name()),
                temporary: false,
            }),
            Replica::S3(c) => {
                std::fs::create_dir_all(scratch).map_err(|e| ClientError::io(scratch, e))?;
                let local = LocalLtx {
                    path: scratch.join(format!("{:04x}-{}.download", info.level, info.name())),
                    temporary: true,
                };
                guard(cancel, c.read_to_file(info.level, info.name(), &local.path)).await?;
                Ok(local)
            }
        }
    }

    pub async fn delete(
        &self,
        files: &[LtxInfo],
        cancel: &CancellationToken,
    ) -> Result<(), ClientError> {
        match self {
            Replica::Fs(c) => guard(cancel, c.delete(files)).await,
            Replica::S3(c) => guard(cancel, c.delete(files)).await,
        }
    }
}

/// A replica file readable on the local disk; see [`Replica::fetch_local`].
#[derive(Debug)]
pub struct LocalLtx {
    pub path: PathBuf,
    temporary: bool,
}

impl LocalLtx {
    /// A local file of ours, removed when dropped.
    pub fn temporary(path: PathBuf) -> Self {
        LocalLtx {
            path,
            temporary: true,
        }
    }

    /// A file that stays where it is after use.
    pub fn existing(path: PathBuf) -> Self {
        LocalLtx {
            path,
            temporary: false,
        }
    }

    pub fn open(&self) -> Result<std::fs::File, ClientError> {
        std::fs::File::open(&self.path).map_err(|e| ClientError::io(&self.path, e))
    }
}

impl Drop for LocalLtx {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
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
