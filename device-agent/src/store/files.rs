//! File-system edges of the store: bounded reads, atomic durable writes,
//! erasure, the writers' lock and the temp-file sweep. No format and no
//! cryptography here.
//!
//! Must never: read more than the caller's bound into memory, leave a
//! half-written file under a final name, or write through a planted symlink
//! when erasing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::rand::{SecureRandom, SystemRandom};

use super::{StoreError, TEMP_PREFIX, io_err};

/// The whole of `path` if it is at most `max` bytes; `None` if it does not
/// exist. The size is checked before reading and the read is capped, so a
/// planted or growing file cannot exhaust memory.
pub(super) fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening", path)(e)),
    };
    let too_large = |size| StoreError::TooLarge {
        path: path.to_path_buf(),
        size,
        max,
    };
    let size = file.metadata().map_err(io_err("inspecting", path))?.len();
    if size > max {
        return Err(too_large(size));
    }
    let capacity = usize::try_from(size).map_err(|_| too_large(size))?;
    let mut buf = Vec::with_capacity(capacity);
    (&mut file)
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(io_err("reading", path))?;
    if buf.len() as u64 > max {
        // Wipe what was read: it may be a (sealed) secret.
        buf.iter_mut().for_each(|b| *b = 0);
        return Err(too_large(buf.len() as u64));
    }
    Ok(Some(buf))
}

/// The first `head` and the last 16 bytes of `path` (a sealed file's header
/// and tag), without reading the rest; `None` if missing or too short.
pub(super) fn read_head_and_tail(path: &Path, head: usize) -> Option<(Vec<u8>, [u8; 16])> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len < head as u64 + 16 {
        return None;
    }
    let mut h = vec![0u8; head];
    f.read_exact(&mut h).ok()?;
    f.seek(SeekFrom::End(-16)).ok()?;
    let mut tag = [0u8; 16];
    f.read_exact(&mut tag).ok()?;
    Some((h, tag))
}

/// Write `bytes` to `dest` atomically: temp file (0600) in the same
/// directory, fsync, rename, fsync the directory.
pub(super) fn write_atomic(
    dest: &Path,
    bytes: &[u8],
    rng: &SystemRandom,
) -> Result<(), StoreError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = dest.parent().ok_or_else(|| StoreError::Io {
        op: "finding the directory of",
        path: dest.to_path_buf(),
        source: io::ErrorKind::InvalidInput.into(),
    })?;
    let mut salt = [0u8; 4];
    rng.fill(&mut salt)
        .map_err(|_| StoreError::Crypto("random generator"))?;
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        hex::encode(salt)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        f.write_all(bytes).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, dest).map_err(io_err("renaming into", dest))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

/// Overwrite a regular file with zeros, sync it and remove it; `false` if
/// there was nothing there. A symlink is removed without writing through it.
pub(super) fn erase(path: &Path) -> Result<bool, StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("inspecting", path)(e)),
    };
    if meta.is_file() {
        overwrite_with_zeros(path, meta.len())?;
    }
    fs::remove_file(path).map_err(io_err("removing", path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(true)
}

fn overwrite_with_zeros(path: &Path, len: u64) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("opening for erasure", path))?;
    let zeros = [0u8; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        f.write_all(zeros.get(..n).unwrap_or(&zeros))
            .map_err(io_err("erasing", path))?;
        left -= n as u64;
    }
    f.sync_all().map_err(io_err("syncing", path))
}

/// Take the writers' lock (`flock` on `path`, created 0600), blocking until
/// other writers are done. Released when the file is dropped. Readers never
/// take it: the manifest and records are replaced by rename, so a reader
/// sees a whole old or a whole new file.
pub(super) fn lock(path: &Path) -> Result<File, StoreError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err("opening the lock file", path))?;
    f.lock().map_err(io_err("locking", path))?;
    Ok(f)
}

/// Remove temp files left by a crashed write of another process. This
/// process's own are left alone: another store in it may be writing.
/// Best effort: they hold only ciphertext, so failing costs only space.
pub(super) fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let own = format!("{TEMP_PREFIX}{}-", std::process::id());
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with(TEMP_PREFIX) && !name.starts_with(&own) {
            let _ = fs::remove_file(entry.path());
        }
    }
}
