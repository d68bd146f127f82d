//! Which models this runtime serves, and getting each one ready: the
//! sealed bundle from the blob store, its key from the provider, opened and
//! loaded in memory, then kept in the LRU cache. A warm request is served
//! from the cache and touches neither the store nor the provider.
//!
//! Must never: write a model's plaintext anywhere but this process's memory
//! (the opened ONNX bytes are wiped once tract has parsed them; tract's own
//! weight tensors are freed, not wiped, when a model is evicted), or serve a
//! bundle whose header names another model than the one asked for.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use blob_store::{AnyStore, BlobId, BlobStore};
use protocol::sealed::{open_to_vec, read_header};
use protocol::{SecretBytes, ServingPolicy};
use thiserror::Error;
use tracing::{info, warn};

use crate::cache::{Lookup, ModelCache, Weighted};
use crate::metrics::Metrics;
use crate::provider::{KeyError, ProviderClient};
use inference::LoadedModel;

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Its sealed bundle in the store.
    pub bundle: BlobId,
    /// Input shape to pin (see [`LoadedModel::load`]).
    pub input_shape: Option<Vec<usize>>,
}

/// A model ready to serve, with the provider's terms.
#[derive(Debug)]
pub struct Served {
    /// The model.
    pub model: LoadedModel,
    /// What responses may contain, and how often.
    pub serving: ServingPolicy,
}

impl Weighted for Served {
    fn weight(&self) -> usize {
        self.model.bytes
    }
}

/// Why a model is not available.
#[derive(Debug, Error)]
pub enum ModelError {
    /// No such model id here.
    #[error("unknown model")]
    Unknown,
    /// The provider refused its key.
    #[error(transparent)]
    KeyRefused(KeyError),
    /// Anything else on the way (store, provider down, bundle tampered, tract).
    #[error("model {id:?} is unavailable: {reason}")]
    Unavailable {
        /// The model.
        id: String,
        /// Why (for logs; clients get a short message).
        reason: String,
    },
}

/// The registry and its cache.
#[derive(Debug)]
pub struct Models {
    specs: RwLock<HashMap<String, ModelSpec>>,
    cache: ModelCache<Served>,
    store: AnyStore,
    provider: ProviderClient,
    metrics: Arc<Metrics>,
    max_bundle: u64,
}

impl Models {
    /// A registry of `specs`, caching up to `cache_bytes` of models and
    /// refusing bundles larger than `max_bundle` bytes.
    pub fn new(
        specs: HashMap<String, ModelSpec>,
        store: AnyStore,
        provider: ProviderClient,
        metrics: Arc<Metrics>,
        cache_bytes: usize,
        max_bundle: u64,
    ) -> Self {
        Self {
            specs: RwLock::new(specs),
            cache: ModelCache::new(cache_bytes),
            store,
            provider,
            metrics,
            max_bundle,
        }
    }

    fn spec(&self, id: &str) -> Option<ModelSpec> {
        self.specs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Model ids known here.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .specs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// A bundle for `id` (an announcement). A pinned input shape from the
    /// configuration is kept. Returns whether this changed anything.
    pub fn announce(&self, id: &str, bundle: BlobId) -> bool {
        let mut specs = self.specs.write().unwrap_or_else(|p| p.into_inner());
        let input_shape = specs.get(id).and_then(|s| s.input_shape.clone());
        let spec = ModelSpec {
            bundle,
            input_shape,
        };
        specs.insert(id.to_string(), spec.clone()) != Some(spec)
    }

    /// The model `id`, loading it if it is not in the cache.
    pub async fn get(&self, id: &str) -> Result<Arc<Served>, ModelError> {
        let spec = self.spec(id).ok_or(ModelError::Unknown)?;
        let (served, lookup) = self
            .cache
            .get_or_load(spec.bundle.0, || self.load(id, spec.clone()))
            .await?;
        match lookup {
            Lookup::Hit => {
                self.metrics.cache_hits.inc();
            }
            Lookup::Miss => {
                self.metrics.cache_misses.inc();
                self.metrics
                    .cache_bytes
                    .set(i64::try_from(self.cache.used()).unwrap_or(i64::MAX));
            }
        };
        Ok(served)
    }

    /// Load `id` in the background (announcements, start-up).
    pub fn prefetch(self: &Arc<Self>, id: String) {
        let this = self.clone();
        tokio::spawn(async move {
            match this.get(&id).await {
                Ok(_) => info!(model = %id, "model ready"),
                Err(e) => warn!(model = %id, "prefetch failed: {e}"),
            }
        });
    }

    async fn load(&self, id: &str, spec: ModelSpec) -> Result<Served, ModelError> {
        let unavailable = |reason: String| ModelError::Unavailable {
            id: id.to_string(),
            reason,
        };
        // The key first: it is cheap, and a refusal should not cost a download.
        let (key, serving) =
            self.provider
                .model_key(id, &spec.bundle)
                .await
                .map_err(|e| match e {
                    KeyError::Refused(_) => ModelError::KeyRefused(e),
                    other => unavailable(other.to_string()),
                })?;
        self.metrics.store_reads.inc();
        let sealed = self
            .store
            .get_bytes(&spec.bundle, self.max_bundle)
            .await
            .map_err(|e| unavailable(format!("blob store: {e}")))?;
        let header = read_header(&sealed[..]).map_err(|e| unavailable(format!("bundle: {e}")))?;
        if header.model_id() != id {
            return Err(unavailable(format!(
                "bundle {} holds model {:?}",
                spec.bundle,
                header.model_id()
            )));
        }
        let max = self.max_bundle;
        let pinned = spec.input_shape.clone();
        let model = tokio::task::spawn_blocking(move || {
            let (plain, _) = open_to_vec(&sealed[..], &key, max).map_err(|e| e.to_string())?;
            // Wiped when dropped, right after tract has parsed it.
            let plain = SecretBytes::new(plain);
            LoadedModel::load(plain.expose(), pinned.as_deref()).map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| unavailable("loading panicked".into()))?
        .map_err(unavailable)?;
        info!(model = %id, bundle = %spec.bundle, bytes = model.bytes, input = %model.input().shape_text(), "model loaded");
        Ok(Served { model, serving })
    }
}
