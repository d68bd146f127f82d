//! Where sealed model bundles live: a content-addressed blob store, either a
//! local directory (the default) or any S3-compatible object store, chosen by
//! URL (`file:///var/lib/cca-ml/blobs`, `s3://bucket/prefix`).
//!
//! Bundles are ciphertext, so the store is not trusted with secrets — but it
//! is not trusted with integrity either: every read is checked against the
//! SHA-256 the blob is named by, and a blob that does not hash to its name is
//! an error, never data. Writes are atomic: a crash never leaves a partial
//! blob under its final name.
//!
//! Must never: return bytes that do not match their id, or hold a whole blob
//! in memory when asked to stream it to a file.

mod id;
mod local;
mod s3;

use std::path::Path;

pub use id::BlobId;
pub use local::LocalStore;
pub use s3::S3Store;
use thiserror::Error;

/// Blob store errors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL names no store we support.
    #[error("unsupported store URL {0:?}: use file:///absolute/path or s3://bucket[/prefix]")]
    BadUrl(String),
    /// No blob with this id.
    #[error("blob {0} is not in the store")]
    NotFound(BlobId),
    /// The store returned bytes that do not hash to the id (tampering or corruption).
    #[error("blob {expected} is corrupt: its content hashes to {actual}")]
    Corrupt {
        /// The id asked for.
        expected: BlobId,
        /// What the content hashed to.
        actual: BlobId,
    },
    /// A blob larger than the caller allows.
    #[error("blob {id} is larger than the {limit}-byte limit")]
    TooLarge {
        /// The blob.
        id: BlobId,
        /// The limit.
        limit: u64,
    },
    /// Local I/O.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The object store failed.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// One stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its id (SHA-256 of the content).
    pub id: BlobId,
    /// Its size in bytes.
    pub size: u64,
}

/// What every store can do.
#[allow(async_fn_in_trait)] // used with concrete types and `AnyStore`, never as dyn
pub trait BlobStore {
    /// Store the file at `path`; returns its id. Storing an existing blob is a no-op.
    async fn put_file(&self, path: &Path) -> Result<BlobId, StoreError>;
    /// Write blob `id` to `dest` (atomically), verifying its hash.
    async fn get_to_file(&self, id: &BlobId, dest: &Path) -> Result<u64, StoreError>;
    /// Read blob `id` into memory (at most `limit` bytes), verifying its hash.
    async fn get_bytes(&self, id: &BlobId, limit: u64) -> Result<Vec<u8>, StoreError>;
    /// All blobs.
    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError>;
}

/// A store chosen at run time from a URL.
#[derive(Debug)]
pub enum AnyStore {
    /// `file:///...`
    Local(LocalStore),
    /// `s3://bucket/prefix`
    S3(S3Store),
}

impl AnyStore {
    /// Open the store a URL names. For `s3://`, credentials, region and
    /// endpoint come from the usual `AWS_*` environment variables
    /// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`; `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(StoreError::BadUrl(url.to_string()));
            }
            return Ok(AnyStore::Local(LocalStore::open(Path::new(path))?));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::BadUrl(url.to_string()));
            }
            return Ok(AnyStore::S3(S3Store::from_env(bucket, prefix)?));
        }
        Err(StoreError::BadUrl(url.to_string()))
    }
}

impl BlobStore for AnyStore {
    async fn put_file(&self, path: &Path) -> Result<BlobId, StoreError> {
        match self {
            AnyStore::Local(s) => s.put_file(path).await,
            AnyStore::S3(s) => s.put_file(path).await,
        }
    }
    async fn get_to_file(&self, id: &BlobId, dest: &Path) -> Result<u64, StoreError> {
        match self {
            AnyStore::Local(s) => s.get_to_file(id, dest).await,
            AnyStore::S3(s) => s.get_to_file(id, dest).await,
        }
    }
    async fn get_bytes(&self, id: &BlobId, limit: u64) -> Result<Vec<u8>, StoreError> {
        match self {
            AnyStore::Local(s) => s.get_bytes(id, limit).await,
            AnyStore::S3(s) => s.get_bytes(id, limit).await,
        }
    }
    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        match self {
            AnyStore::Local(s) => s.list().await,
            AnyStore::S3(s) => s.list().await,
        }
    }
}

/// SHA-256 of a file, streamed.
pub(crate) fn hash_file(path: &Path) -> Result<(BlobId, u64), StoreError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io_err("opening", path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        ctx.update(&buf[..n]);
    }
    Ok((BlobId::from_digest(ctx.finish()), total))
}
