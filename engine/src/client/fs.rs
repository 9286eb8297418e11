//! Local-directory replica, laid out exactly as Litestream's file replica:
//! `<root>/<id>/ltx/<level>/<min>-<max>.ltx` (level in decimal).
//!
//! Invariant: a listed file is always complete. Files are written as `<name>.tmp`, fsynced,
//! renamed, and the directory is fsynced; the file's mtime is then set to the LTX header
//! timestamp, which is what Litestream's point-in-time restore reads.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{ClientError, LtxInfo};
use crate::ltx::LtxFileName;

#[derive(Clone, Debug)]
pub struct FsReplica {
    /// The tenant's replica directory, e.g. `/data/replica/databases/<id>`.
    dir: PathBuf,
}

impl FsReplica {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn url(&self) -> String {
        let abs = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        format!("file://{}", abs.display())
    }

    fn level_dir(&self, level: u8) -> PathBuf {
        self.dir.join("ltx").join(level.to_string())
    }

    pub async fn list(&self, level: u8) -> Result<Vec<LtxInfo>, ClientError> {
        let dir = self.level_dir(level);
        blocking(move || list_dir(&dir, level)).await
    }

    pub async fn read(&self, level: u8, name: LtxFileName) -> Result<Vec<u8>, ClientError> {
        let path = self.level_dir(level).join(name.to_string());
        blocking(move || fs::read(&path).map_err(|e| ClientError::io(&path, e))).await
    }

    pub async fn write(
        &self,
        level: u8,
        name: LtxFileName,
        data: Vec<u8>,
        created_at: SystemTime,
    ) -> Result<LtxInfo, ClientError> {
        let dir = self.level_dir(level);
        blocking(move || {
            let path = dir.join(name.to_string());
            write_durably(&path, &data)?;
            let mtime = filetime::FileTime::from_system_time(created_at);
            filetime::set_file_times(&path, mtime, mtime).map_err(|e| ClientError::io(&path, e))?;
            Ok(LtxInfo {
                level,
                min: name.min,
                max: name.max,
                size: data.len() as u64,
                created_at,
            })
        })
        .await
    }

    /// Like [`FsReplica::write`] with the content of the file at `src` (which stays in place),
    /// never holding it in memory: a hard link when `src` is on the same filesystem (LTX files
    /// are immutable once complete, so the replica and the staging area can share the inode:
    /// no byte is copied), else a kernel-side copy.
    pub async fn write_file(
        &self,
        level: u8,
        name: LtxFileName,
        src: &Path,
        created_at: SystemTime,
    ) -> Result<LtxInfo, ClientError> {
        let dir = self.level_dir(level);
        let src = src.to_path_buf();
        blocking(move || {
            let path = dir.join(name.to_string());
            let size = match link_durably(&src, &path) {
                Ok(size) => size,
                Err(_) => copy_durably(&src, &path)?,
            };
            let mtime = filetime::FileTime::from_system_time(created_at);
            filetime::set_file_times(&path, mtime, mtime).map_err(|e| ClientError::io(&path, e))?;
            Ok(LtxInfo {
                level,
                min: name.min,
                max: name.max,
                size,
                created_at,
            })
        })
        .await
    }

    /// Removes `*.tmp` files a crash left behind in this replica's level directories (see
    /// [`write_durably`]). Only for the one process writing this replica, before it writes.
    pub async fn remove_leftovers(&self) -> Result<usize, ClientError> {
        let dirs: Vec<PathBuf> = (0..=crate::client::SNAPSHOT_LEVEL)
            .map(|l| self.level_dir(l))
            .collect();
        blocking(move || {
            let mut removed = 0;
            for dir in dirs {
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ClientError::io(&dir, e)),
                };
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().ends_with(".tmp") {
                        match fs::remove_file(entry.path()) {
                            Ok(()) => removed += 1,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(ClientError::io(entry.path(), e)),
                        }
                    }
                }
            }
            Ok(removed)
        })
        .await
    }

    /// Where the file of `level`/`name` lives (it may not exist).
    pub fn path_of(&self, level: u8, name: LtxFileName) -> PathBuf {
        self.level_dir(level).join(name.to_string())
    }

    pub async fn delete(&self, files: &[LtxInfo]) -> Result<(), ClientError> {
        let paths: Vec<PathBuf> = files
            .iter()
            .map(|f| self.level_dir(f.level).join(f.name().to_string()))
            .collect();
        blocking(move || {
            for path in paths {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ClientError::io(&path, e)),
                }
            }
            Ok(())
        })
        .await
    }
}

fn list_dir(dir: &Path, level: u8) -> Result<Vec<LtxInfo>, ClientError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ClientError::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ClientError::io(dir, e))?;
        let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<LtxFileName>().ok())
        else {
            continue;
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Deleted between readdir and stat (retention running): not listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ClientError::io(entry.path(), e)),
        };
        if !meta.is_file() {
            continue;
        }
        out.push(LtxInfo {
            level,
            min: name.min,
            max: name.max,
            size: meta.len(),
            created_at: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    out.sort_by_key(|f| (f.min, f.max));
    Ok(out)
}

/// Writes `data` to `path` so that after a crash the file is either absent or complete:
/// temp file in the same directory, fsync, rename, fsync of the directory.
pub fn write_durably(path: &Path, data: &[u8]) -> Result<(), ClientError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| ClientError::io(dir, e))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(ClientError::io(path, e));
    }
    Ok(())
}

/// Makes `path` a hard link of `src` (made durable first), atomically: link to a temporary
/// name, rename over `path`, fsync the directory. Fails (and the caller copies) across
/// filesystems or where links are not supported.
fn link_durably(src: &Path, path: &Path) -> std::io::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let file = fs::File::open(src)?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let _ = fs::remove_file(&tmp);
    fs::hard_link(src, &tmp)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::File::open(dir)?.sync_all()?;
    Ok(size)
}

/// [`write_durably`] with the content of the file `src`, copied by the kernel; returns its size.
fn copy_durably(src: &Path, path: &Path) -> Result<u64, ClientError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| ClientError::io(dir, e))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut input = fs::File::open(src).map_err(|e| ClientError::io(src, e))?;
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        let n = std::io::copy(&mut input, &mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()?;
        Ok(n)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ClientError::io(path, e)
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClientError::Other(format!("replica task failed: {e}")))?
}
