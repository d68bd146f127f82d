//! Any S3-compatible store, through the `object_store` crate. Blobs are
//! objects named `<prefix>/<hex id>`. Uploads stream in parts; S3 makes an
//! object visible only when its upload completes, so readers never see a
//! partial blob under its final name.

use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use crate::{BlobId, BlobInfo, BlobStore, StoreError, hash_file, io_err};

/// Blobs in an S3 bucket under a prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl S3Store {
    /// Configure from `AWS_*` environment variables for `bucket`.
    pub fn from_env(bucket: &str, prefix: &str) -> Result<Self, StoreError> {
        Self::with_builder(AmazonS3Builder::from_env().with_bucket_name(bucket), prefix)
    }

    /// Configure explicitly (endpoint, credentials, region, bucket).
    pub fn with_builder(builder: AmazonS3Builder, prefix: &str) -> Result<Self, StoreError> {
        Ok(Self {
            store: Arc::new(builder.build()?),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    fn path(&self, id: &BlobId) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(id.to_hex())
        } else {
            ObjectPath::from(format!("{}/{}", self.prefix, id.to_hex()))
        }
    }

    fn not_found(e: object_store::Error, id: &BlobId) -> StoreError {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound(*id),
            other => StoreError::ObjectStore(other),
        }
    }
}

impl BlobStore for S3Store {
    async fn put_file(&self, path: &Path) -> Result<BlobId, StoreError> {
        let p = path.to_path_buf();
        let (id, _) = tokio::task::spawn_blocking(move || hash_file(&p))
            .await
            .map_err(|e| StoreError::Io {
                op: "hashing",
                path: path.display().to_string(),
                source: std::io::Error::other(e),
            })??;
        let dest = self.path(&id);
        if self.store.head(&dest).await.is_ok() {
            return Ok(id);
        }
        let mut src = tokio::fs::File::open(path)
            .await
            .map_err(io_err("opening", path))?;
        let mut writer = BufWriter::new(self.store.clone(), dest);
        tokio::io::copy(&mut src, &mut writer)
            .await
            .map_err(io_err("uploading", path))?;
        writer.shutdown().await.map_err(io_err("uploading", path))?;
        Ok(id)
    }

    async fn get_to_file(&self, id: &BlobId, dest: &Path) -> Result<u64, StoreError> {
        let result = self
            .store
            .get(&self.path(id))
            .await
            .map_err(|e| Self::not_found(e, id))?;
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".tmp-s3-{}-{}", std::process::id(), id.to_hex()));
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(io_err("creating", &tmp))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size = 0u64;
        let mut stream = result.into_stream();
        let outcome = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                ctx.update(&chunk);
                size += chunk.len() as u64;
                out.write_all(&chunk)
                    .await
                    .map_err(io_err("writing", &tmp))?;
            }
            out.sync_all().await.map_err(io_err("syncing", &tmp))?;
            Ok::<(), StoreError>(())
        }
        .await;
        let actual = BlobId::from_digest(ctx.finish());
        if let Err(e) = outcome {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        if actual != *id {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(StoreError::Corrupt {
                expected: *id,
                actual,
            });
        }
        tokio::fs::rename(&tmp, dest)
            .await
            .map_err(io_err("renaming into", dest))?;
        Ok(size)
    }

    async fn get_bytes(&self, id: &BlobId, limit: u64) -> Result<Vec<u8>, StoreError> {
        let result = self
            .store
            .get(&self.path(id))
            .await
            .map_err(|e| Self::not_found(e, id))?;
        if result.meta.size > limit {
            return Err(StoreError::TooLarge { id: *id, limit });
        }
        let bytes = result.bytes().await?.to_vec();
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

    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let mut stream = self.store.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta?;
            if let Some(id) = meta
                .location
                .filename()
                .and_then(|n| n.parse::<BlobId>().ok())
            {
                out.push(BlobInfo {
                    id,
                    size: meta.size,
                });
            }
        }
        out.sort_by_key(|b| b.id);
        Ok(out)
    }
}
