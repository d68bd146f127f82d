//! Sealing a model file into the blob store, checking and rotating bundles.

use std::fs::File;
use std::io::{BufWriter, Seek};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use blob_store::{AnyStore, BlobId, BlobStore};
use indicatif::{ProgressBar, ProgressStyle};
use protocol::sealed::{self, BundleMeta, DEFAULT_CHUNK_SIZE, ModelKey};

/// A second handle on a data key (ModelKey is deliberately not `Clone`).
pub fn copy_key(key: &ModelKey) -> ModelKey {
    ModelKey::from_bytes(*key.expose())
}

/// A private scratch directory, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Create one under the system temp dir.
    pub fn new(tag: &str) -> Result<Self> {
        let mut r = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r)
            .map_err(|_| anyhow::anyhow!("no system randomness"))?;
        let p = std::env::temp_dir().join(format!("model-provider-{tag}-{}", hex::encode(r)));
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
    /// A path inside.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    // Draws only on a terminal; in logs and CI it stays silent.
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb
}

/// Seal `model` with a fresh key into the store. Returns (bundle id, key).
pub async fn seal_into_store(
    store: &AnyStore,
    model: &Path,
    meta: &BundleMeta,
) -> Result<(BlobId, ModelKey)> {
    let key = ModelKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let scratch = Scratch::new("seal")?;
    let out_path = scratch.join("bundle");
    let (model, meta2, key2, out2) = (
        model.to_path_buf(),
        meta.clone(),
        copy_key(&key),
        out_path.clone(),
    );
    let summary = tokio::task::spawn_blocking(move || -> Result<sealed::SealSummary> {
        let input = File::open(&model).with_context(|| format!("opening {}", model.display()))?;
        let len = input.metadata()?.len();
        let pb = progress(len, "sealing");
        let mut reader = pb.wrap_read(input);
        reader.rewind()?;
        let out = BufWriter::new(File::create(&out2)?);
        let s = sealed::seal(reader, out, &key2, &meta2, DEFAULT_CHUNK_SIZE)
            .map_err(|e| anyhow::anyhow!("sealing failed: {e}"))?;
        pb.finish_and_clear();
        Ok(s)
    })
    .await??;
    let id = store
        .put_file(&out_path)
        .await
        .context("storing the bundle")?;
    if id.0 != summary.sealed_sha256 {
        bail!("the stored bundle hashes differently from what was sealed");
    }
    Ok((id, key))
}

/// Fetch a bundle and open it completely with `key`, discarding the
/// plaintext; succeeds only if every chunk and the plaintext hash verify.
pub async fn verify_bundle(
    store: &AnyStore,
    id: &BlobId,
    key: &ModelKey,
) -> Result<sealed::OpenSummary> {
    let scratch = Scratch::new("verify")?;
    let path = scratch.join("bundle");
    store
        .get_to_file(id, &path)
        .await
        .context("fetching the bundle")?;
    let key = copy_key(key);
    tokio::task::spawn_blocking(move || {
        let f = File::open(&path)?;
        let len = f.metadata()?.len();
        let pb = progress(len, "verifying");
        let r = sealed::open(pb.wrap_read(f), std::io::sink(), &key)
            .map_err(|e| anyhow::anyhow!("{e}"));
        pb.finish_and_clear();
        r
    })
    .await?
}

/// Open a bundle into a scratch file (only if it fully verifies) for resealing.
pub async fn open_to_scratch(
    store: &AnyStore,
    id: &BlobId,
    key: &ModelKey,
    scratch: &Scratch,
) -> Result<PathBuf> {
    let bundle = scratch.join("old-bundle");
    store
        .get_to_file(id, &bundle)
        .await
        .context("fetching the bundle")?;
    let plain = scratch.join("plaintext.partial");
    let done = scratch.join("plaintext");
    let key = copy_key(key);
    let (p2, d2) = (plain.clone(), done.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let out = BufWriter::new(File::create(&p2)?);
        sealed::open(File::open(&bundle)?, out, &key)
            .map_err(|e| anyhow::anyhow!("the current bundle does not open: {e}"))?;
        // Output of `open` is trusted only once it returned Ok.
        std::fs::rename(&p2, &d2)?;
        Ok(())
    })
    .await??;
    Ok(done)
}
