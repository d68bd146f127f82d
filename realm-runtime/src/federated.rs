//! Federated-learning mode: the runtime coordinates rounds of one task.
//! Admitted devices join, receive the global model (ONNX, parameters as
//! initializers), train on their own data in their realm and send a delta;
//! the round state machine (`fl::round`) accepts or refuses each update;
//! when a round is ready the configured rule aggregates (clipping, optional
//! noise) and the next round starts from the new global model.
//!
//! A task (re)starts from the last global model it deposited with the
//! provider: that round's sealed bundle from the blob store, opened with its
//! key from the provider, continuing at the next round; so a runtime crash
//! loses at most the round in progress, never acknowledged ones.
//!
//! Must never: let one device's refused update stop the round, wait beyond
//! the deadline for a device that dropped out, aggregate an update the
//! round refused, or start a task over from round 1 when the provider holds
//! a global model of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fl::aggregate::{Aggregator, Rule, Update};
use fl::onnx_model;
use fl::round::{Rejected, Round, RoundConfig, Status};
use fl::train::{Arch, Params, init};
use rand::SeedableRng;
use rand::rngs::{StdRng, SysRng};
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use blob_store::{AnyStore, BlobId, BlobStore};
use protocol::sealed::{BundleMeta, DEFAULT_CHUNK_SIZE, ModelKey, open_to_vec, seal_bytes};
use protocol::{FlTaskTerms, KeyUsage};

use crate::provider::ProviderClient;

/// A task's settings as the coordinator runs it: the provider's terms,
/// narrowed by the host (see `protocol::FlTaskTerms`), plus the deadline.
#[derive(Debug, Clone)]
pub struct FlConfig {
    /// Task name devices join.
    pub task: String,
    /// The terms enforced, as devices are shown them.
    pub terms: FlTaskTerms,
    /// Device measurements allowed to join; empty: every device the policy
    /// admits. Joining gives a device the global model and a say in it.
    pub devices: Vec<Vec<u8>>,
    /// Model architecture of the global model.
    pub arch: Arch,
    /// Aggregation (rule, clipping, noise).
    pub aggregator: Aggregator,
    /// Updates needed per round.
    pub min_clients: usize,
    /// Updates that end a round early.
    pub max_clients: usize,
    /// Round deadline.
    pub deadline: Duration,
    /// Rounds to run (then JoinRound is refused).
    pub rounds: u64,
}

impl FlConfig {
    /// Run `terms` (already narrowed by the host) with round `deadline`.
    pub fn from_terms(terms: FlTaskTerms, deadline: Duration) -> anyhow::Result<Self> {
        terms.validate()?;
        let arch = match terms.arch.as_str() {
            "softmax" => Arch::SoftmaxRegression,
            "mlp" => Arch::Mlp { hidden: 32 },
            other => anyhow::bail!("the task's architecture {other:?} is not softmax or mlp"),
        };
        let rule: Rule = terms
            .rule
            .parse()
            .map_err(|e| anyhow::anyhow!("the task's aggregation rule: {e}"))?;
        Ok(Self {
            task: terms.task.clone(),
            devices: terms.devices.clone(),
            arch,
            aggregator: Aggregator {
                rule,
                clip_norm: (terms.clip_norm > 0.0).then_some(terms.clip_norm),
                noise_multiplier: (terms.noise_multiplier > 0.0).then_some(terms.noise_multiplier),
            },
            min_clients: usize::try_from(terms.min_clients)?,
            max_clients: usize::try_from(terms.max_clients)?,
            deadline,
            rounds: terms.rounds,
            terms,
        })
    }
}

/// Where new global models go: sealed into the blob store under a fresh
/// key, and the key deposited with the provider, whose release policy then
/// governs the model like any other.
#[derive(Debug)]
pub struct Publisher {
    /// The blob store.
    pub store: AnyStore,
    /// The provider.
    pub provider: ProviderClient,
}

impl Publisher {
    async fn publish(&self, task: &str, round: u64, onnx: &[u8]) -> anyhow::Result<BlobId> {
        let key = ModelKey::generate()?;
        let meta = BundleMeta {
            model_id: task.to_string(),
            version: round.to_string(),
            created: u64::try_from(attestation::certifier::client::unix_now()).unwrap_or(0),
        };
        let sealed = seal_bytes(onnx, &key, &meta, DEFAULT_CHUNK_SIZE)?;
        // The store takes files; the sealed bytes are ciphertext, so a temp
        // file outside the realm's memory reveals nothing.
        let tmp = std::env::temp_dir().join(format!(
            "realm-runtime-{}-{task}-{round}.sealed",
            std::process::id()
        ));
        std::fs::write(&tmp, &sealed)?;
        let stored = self.store.put_file(&tmp).await;
        let _ = std::fs::remove_file(&tmp);
        let bundle = stored?;
        self.provider
            .deposit(task, &meta.version, &bundle, &key)
            .await?;
        Ok(bundle)
    }
}

/// Largest sealed global model a restarting task loads (FL models are small).
const MAX_GLOBAL_MODEL: u64 = 64 << 20;

/// Where a task starts: the last round it completed and that round's global
/// model, as deposited with the provider.
#[derive(Debug)]
pub struct Resume {
    /// The last completed round (the deposited version).
    pub completed: u64,
    /// Its global model.
    pub global: Params,
}

impl Publisher {
    /// The last global model of `task` deposited with the provider, if
    /// any. An error (provider unreachable, key refused, bundle missing or
    /// not this task's) means the task must not start: starting over would
    /// roll the model back.
    pub async fn last_deposited(&self, task: &str, arch: &Arch) -> anyhow::Result<Option<Resume>> {
        use anyhow::Context;
        let Some((version, bundle)) = self
            .provider
            .current_global(task)
            .await
            .context("asking the model provider for the task's current global model")?
        else {
            return Ok(None);
        };
        let completed: u64 = version.parse().map_err(|_| {
            anyhow::anyhow!(
                "the provider's current model of task {task:?} has version {version:?}, not a round number"
            )
        })?;
        let (key, _) = self
            .provider
            .key_for(task, &bundle, KeyUsage::FederatedRound)
            .await
            .context("getting the key of the task's current global model")?;
        let sealed = self
            .store
            .get_bytes(&bundle, MAX_GLOBAL_MODEL)
            .await
            .with_context(|| format!("fetching global model bundle {}", bundle.to_hex()))?;
        let (onnx, summary) = open_to_vec(&sealed[..], &key, MAX_GLOBAL_MODEL)
            .map_err(|e| anyhow::anyhow!("opening global model bundle {}: {e}", bundle.to_hex()))?;
        if summary.header.model_id() != task || summary.header.model_version() != version {
            anyhow::bail!(
                "bundle {} holds {:?} version {:?}, not task {task:?} version {version:?}",
                bundle.to_hex(),
                summary.header.model_id(),
                summary.header.model_version()
            );
        }
        let global = onnx_model::read_params(&onnx)
            .map_err(|e| anyhow::anyhow!("the deposited global model: {e}"))?;
        global.check_matches(arch).map_err(|e| {
            anyhow::anyhow!("the deposited global model does not fit the task's architecture: {e}")
        })?;
        Ok(Some(Resume { completed, global }))
    }
}

/// The current round's public facts.
#[derive(Debug, Clone)]
pub struct RoundInfo {
    /// Round number (from 1).
    pub number: u64,
    /// The global model devices start from.
    pub model: Arc<Vec<u8>>,
    /// SHA-256 of `model`.
    pub model_hash: [u8; 32],
    /// When updates stop being accepted.
    pub closes: Instant,
}

/// What a joining device gets.
#[derive(Debug, Clone)]
pub enum Joined {
    /// Train from this round's global model.
    Train(RoundInfo),
    /// The task is complete; this is the final global model.
    Done(RoundInfo),
}

struct State {
    global: Params,
    round: Round<[u8; 32]>,
    info: RoundInfo,
    /// Draws the clipping-and-noise randomness. It must be unpredictable:
    /// noise an observer can regenerate can be subtracted from the published
    /// model, and the privacy guarantee is gone.
    rng: StdRng,
    completed: u64,
}

/// The coordinator, shared by the device sessions and its ticking task.
pub struct Coordinator {
    config: FlConfig,
    publisher: Option<Arc<Publisher>>,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("task", &self.config.task)
            .finish_non_exhaustive()
    }
}

fn round_info(
    number: u64,
    global: &Params,
    arch: &Arch,
    closes: Instant,
) -> anyhow::Result<RoundInfo> {
    let model = onnx_model::build(arch, global)?;
    let hash = ring::digest::digest(&ring::digest::SHA256, &model);
    let mut model_hash = [0u8; 32];
    model_hash.copy_from_slice(hash.as_ref());
    Ok(RoundInfo {
        number,
        model: Arc::new(model),
        model_hash,
        closes,
    })
}

impl Coordinator {
    /// Start the round after `resume` from its global model, or round 1
    /// from a freshly initialised one.
    pub fn start(
        config: FlConfig,
        publisher: Option<Arc<Publisher>>,
        resume: Option<Resume>,
    ) -> anyhow::Result<Arc<Self>> {
        let rng = StdRng::try_from_rng(&mut SysRng)
            .map_err(|e| anyhow::anyhow!("the system random source failed: {e}"))?;
        let (completed, global) = match resume {
            Some(r) => (r.completed, r.global),
            None => (0, init(&config.arch, 1)?),
        };
        let first = completed + 1;
        let now = Instant::now();
        let info = round_info(first, &global, &config.arch, now + config.deadline)?;
        let round = Round::new(first, round_config(&config, &global), now);
        let (changed, _) = watch::channel(first);
        let this = Arc::new(Self {
            state: Mutex::new(State {
                global,
                round,
                info,
                rng,
                completed,
            }),
            config,
            publisher,
            changed,
        });
        let ticker = this.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !ticker.tick(Instant::now()).await {
                    break;
                }
            }
        });
        if completed > 0 {
            info!(task = %this.config.task, completed, "federated learning: resumed from the provider's global model version {completed}; round {first} open");
        } else {
            info!(task = %this.config.task, "federated learning: round 1 open");
        }
        Ok(this)
    }

    /// The task name.
    pub fn task(&self) -> &str {
        &self.config.task
    }

    /// May this device join the task? Its measurement must be one the
    /// terms allow, and a device on the INSECURE emulated platform only
    /// where the terms allow those.
    pub fn admits(&self, measurement: &[u8], insecure_platform: bool) -> bool {
        (self.config.devices.is_empty() || self.config.devices.iter().any(|m| m == measurement))
            && (!insecure_platform || self.config.terms.allow_insecure_devices)
    }

    /// The terms devices are shown.
    pub fn terms(&self) -> &FlTaskTerms {
        &self.config.terms
    }

    /// The round a device should train in: the current one, unless the
    /// device already sent an update to it, in which case wait for the next;
    /// or, once every round is done, the final model.
    pub async fn join(&self, already_in: Option<u64>) -> Joined {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let s = self.state.lock().await;
                if s.completed >= self.config.rounds {
                    return Joined::Done(s.info.clone());
                }
                if already_in != Some(s.info.number) {
                    return Joined::Train(s.info.clone());
                }
            }
            if rx.changed().await.is_err() {
                let s = self.state.lock().await;
                return Joined::Done(s.info.clone());
            }
        }
    }

    /// Updates needed per round.
    pub fn min_clients(&self) -> usize {
        self.config.min_clients
    }

    /// Offer a device's update.
    pub async fn submit(
        &self,
        device: [u8; 32],
        round: u64,
        update: Update,
    ) -> Result<usize, Rejected> {
        let mut s = self.state.lock().await;
        s.round.submit(device, round, update, Instant::now())
    }

    /// Aggregate or restart the round if it is due. Returns false when done.
    async fn tick(&self, now: Instant) -> bool {
        let mut s = self.state.lock().await;
        if s.completed >= self.config.rounds {
            return false;
        }
        let status = s.round.status(now);
        if status == Status::Collecting {
            return true;
        }
        let number = s.round.number();
        let fresh = Round::new(number + 1, round_config(&self.config, &s.global), now);
        let finished = std::mem::replace(&mut s.round, fresh);
        let aggregated = status == Status::Ready;
        if aggregated {
            let updates = finished.into_updates();
            let n = updates.len();
            let len = s.global.len();
            let state = &mut *s;
            match self.config.aggregator.run(updates, len, &mut state.rng) {
                Ok(agg) => match state.global.apply_delta(&agg.delta) {
                    Ok(()) => info!(
                        round = number,
                        updates = n,
                        clipped = agg.clipped,
                        "round aggregated"
                    ),
                    Err(e) => warn!(round = number, "aggregate not applied: {e}"),
                },
                Err(e) => warn!(
                    round = number,
                    "aggregation failed, global model unchanged: {e}"
                ),
            }
            s.completed += 1;
        } else {
            warn!(
                round = number,
                "round failed: fewer than {} updates by the deadline; retrying",
                self.config.min_clients
            );
        }
        match round_info(
            number + 1,
            &s.global,
            &self.config.arch,
            now + self.config.deadline,
        ) {
            Ok(info) => {
                if let (true, Some(p)) = (aggregated, &self.publisher) {
                    let (p, model, task) =
                        (p.clone(), info.model.clone(), self.config.task.clone());
                    tokio::spawn(async move {
                        match p.publish(&task, number, &model).await {
                            Ok(bundle) => {
                                info!(round = number, %bundle, "global model sealed, stored and deposited with the provider")
                            }
                            Err(e) => {
                                warn!(round = number, "publishing the global model failed: {e:#}")
                            }
                        }
                    });
                }
                s.info = info;
            }
            Err(e) => warn!("cannot encode the global model: {e}"),
        }
        let _ = self.changed.send(number + 1);
        s.completed < self.config.rounds
    }
}

fn round_config(c: &FlConfig, global: &Params) -> RoundConfig {
    RoundConfig {
        min_clients: c.min_clients,
        max_clients: c.max_clients,
        deadline: c.deadline,
        parameters: global.len(),
    }
}
