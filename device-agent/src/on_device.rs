//! On-device inference: get the provider's model for use `on-device`, open
//! it, and keep it re-sealed under this realm's sealing key; later, run it
//! in-process with tract. A copy of the re-sealed file is useless to any
//! other build of the agent: its sealing key differs with its measurement.
//!
//! Must never: write the model's plaintext outside the sealed store, or run
//! it with looser output rules than the provider set.

use anyhow::{Context, Result, anyhow, bail};
use blob_store::{AnyStore, BlobId, BlobStore};
use indicatif::ProgressBar;
use inference::{LoadedModel, apply};
use protocol::sealed::{ModelKey, open_to_vec, read_header};
use protocol::{InferenceOutput, KeyUsage, Message, SecretBytes, Tensor};

use crate::connect::Conn;
use crate::store::{LocalStore, StoredModel};

/// Largest bundle fetched (the phone keeps the plaintext in memory while re-sealing).
const MAX_BUNDLE: u64 = 2 << 30;

/// Fetch `model` from the provider on `conn` and the store at `store_url`,
/// and re-seal it into `local`. Returns (version, plaintext size).
pub async fn fetch_model(
    conn: &mut Conn,
    store_url: &str,
    model: &str,
    input_shape: Option<Vec<usize>>,
    local: &LocalStore,
) -> Result<(String, usize)> {
    conn.send(&Message::BundleQuery {
        model_id: model.to_string(),
        usage: KeyUsage::OnDevice,
    })
    .await?;
    let (version, bundle) = match conn.recv().await? {
        Message::SealedModelAnnouncement {
            model_id,
            version,
            bundle_hash,
            ..
        } if model_id == model => (version, BlobId(bundle_hash)),
        Message::Error { message, .. } => {
            bail!("the provider does not release {model:?} for on-device use: {message}")
        }
        other => bail!("the provider answered {}", other.kind()),
    };
    conn.send(&Message::ModelKeyRequest {
        model_id: model.to_string(),
        bundle_hash: bundle.0,
        usage: KeyUsage::OnDevice,
    })
    .await?;
    let (key, serving) = match conn.recv().await? {
        Message::ModelKeyRelease {
            model_id,
            key,
            serving,
            ..
        } if model_id == model => (
            ModelKey::from_slice(key.expose())
                .ok_or_else(|| anyhow!("the key has the wrong length"))?,
            serving,
        ),
        Message::Error { message, .. } => {
            bail!("the provider does not release {model:?} for on-device use: {message}")
        }
        other => bail!("the provider answered {}", other.kind()),
    };
    let _ = conn.shutdown().await;

    let store = AnyStore::open(store_url).context("opening the blob store")?;
    let sealed = store
        .get_bytes(&bundle, MAX_BUNDLE)
        .await
        .with_context(|| format!("fetching bundle {bundle}"))?;
    let header = read_header(&sealed[..]).context("reading the bundle header")?;
    if header.model_id() != model {
        bail!(
            "bundle {bundle} holds model {:?}, not {model:?}",
            header.model_id()
        );
    }
    let (plain, _) = open_to_vec(&sealed[..], &key, MAX_BUNDLE)
        .with_context(|| format!("opening bundle {bundle}"))?;
    let onnx = SecretBytes::new(plain);
    // Refuse to keep a model this agent could not run.
    LoadedModel::load(onnx.expose(), input_shape.as_deref())
        .with_context(|| format!("model {model:?} does not load here"))?;
    let size = onnx.len();
    local.put_model(&StoredModel {
        model_id: model.to_string(),
        version: version.clone(),
        serving,
        input_shape,
        onnx,
    })?;
    Ok((version, size))
}

/// Run `model` from the sealed store on every sample.
pub fn infer(
    local: &LocalStore,
    model: &str,
    samples: &[Tensor],
    progress: &ProgressBar,
) -> Result<(Vec<InferenceOutput>, Vec<std::time::Duration>)> {
    let stored = local.get_model(model)?;
    let loaded = LoadedModel::load(stored.onnx.expose(), stored.input_shape.as_deref())
        .with_context(|| format!("loading model {model:?}"))?;
    drop(stored.onnx);
    let mut outputs = Vec::with_capacity(samples.len());
    let mut latencies = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        let started = std::time::Instant::now();
        let scores = loaded
            .run(sample.clone())
            .map_err(|e| anyhow!("sample {i}: {e}"))?;
        outputs.push(apply(stored.serving.output, scores).map_err(|e| anyhow!("sample {i}: {e}"))?);
        latencies.push(started.elapsed());
        progress.inc(1);
    }
    Ok((outputs, latencies))
}
