//! The local-directory store: one file per blob, named by its hex id.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{BlobId, BlobInfo, BlobStore, StoreError, io_err};

/// Blobs as files in one directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

fn temp_name(dir: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Copy `src` to a new temporary file beside `dest_dir`, hashing on the way;
/// fsync it. Returns the temp path, the id and the size.
fn copy_hashing(
    src: &mut impl Read,
    src_name: &Path,
    dest_dir: &Path,
) -> Result<(PathBuf, BlobId, u64), StoreError> {
    let tmp = temp_name(dest_dir);
    let mut out = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let result = (|| {
        loop {
            let n = src.read(&mut buf).map_err(io_err("reading", src_name))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err("writing", &tmp))?;
            total += n as u64;
        }
        out.sync_all().map_err(io_err("syncing", &tmp))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((tmp, BlobId::from_digest(ctx.finish()), total))
}

/// Rename `tmp` to `dest` and make the rename durable.
fn commit(tmp: &Path, dest: &Path) -> Result<(), StoreError> {
    fs::rename(tmp, dest).map_err(io_err("renaming into", dest))?;
    if let Some(dir) = dest.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", dir))?;
    }
    Ok(())
}

impl LocalStore {
    /// Use (and create if needed) `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    fn put_blocking(&self, path: &Path) -> Result<BlobId, StoreError> {
        let mut src = File::open(path).map_err(io_err("opening", path))?;
        let (tmp, id, _) = copy_hashing(&mut src, path, &self.dir)?;
        let dest = self.path(&id);
        if dest.exists() {
            let _ = fs::remove_file(&tmp);
            return Ok(id);
        }
        commit(&tmp, &dest)?;
        Ok(id)
    }

    fn get_to_file_blocking(&self, id: &BlobId, dest: &Path) -> Result<u64, StoreError> {
        let src_path = self.path(id);
        let mut src = match File::open(&src_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*id));
            }
            Err(e) => return Err(io_err("opening", &src_path)(e)),
        };
        let dest_dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let (tmp, actual, size) = copy_hashing(&mut src, &src_path, dest_dir)?;
        if actual != *id {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Corrupt {
                expected: *id,
                actual,
            });
        }
        commit(&tmp, dest)?;
        Ok(size)
    }

    fn get_bytes_blocking(&self, id: &BlobId, limit: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.path(id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*id));
            }
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let mut bytes = Vec::new();
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_err("reading", &path))?;
        if bytes.len() as u64 > limit {
            return Err(StoreError::TooLarge { id: *id, limit });
        }
        let actual = BlobId::of(&bytes);
        if actual != *id {
            return Err(StoreError::Corrupt {
                expected: *id,
                actual,
            });
        }
        Ok(bytes)
    }

    fn list_blocking(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            // Temporary files and anything else that is not a blob name are skipped.
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<BlobId>().ok())
            else {
                continue;
            };
            let size = entry
                .metadata()
                .map_err(io_err("reading", &entry.path()))?
                .len();
            out.push(BlobInfo { id, size });
        }
        out.sort_by_key(|b| b.id);
        Ok(out)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io {
            op: "running",
            path: String::new(),
            source: std::io::Error::other(e),
        })?
}

impl BlobStore for LocalStore {
    async fn put_file(&self, path: &Path) -> Result<BlobId, StoreError> {
        let (s, p) = (self.clone(), path.to_path_buf());
        blocking(move || s.put_blocking(&p)).await
    }
    async fn get_to_file(&self, id: &BlobId, dest: &Path) -> Result<u64, StoreError> {
        let (s, id, d) = (self.clone(), *id, dest.to_path_buf());
        blocking(move || s.get_to_file_blocking(&id, &d)).await
    }
    async fn get_bytes(&self, id: &BlobId, limit: u64) -> Result<Vec<u8>, StoreError> {
        let (s, id) = (self.clone(), *id);
        blocking(move || s.get_bytes_blocking(&id, limit)).await
    }
    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let s = self.clone();
        blocking(move || s.list_blocking()).await
    }
}
