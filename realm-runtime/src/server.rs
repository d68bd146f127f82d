//! The runtime as a server: admission at start, then an attested TLS
//! listener where admitted devices ask for inference and an admitted
//! provider announces new bundles. Connections are admitted by the shared
//! bounded listener (`protocol::BoundedListener`): the handshake must finish
//! within its pre-auth deadline, and unauthenticated connections cannot take
//! the `--max-connections` slots of verified peers.
//!
//! Must never: answer a peer whose certificate the TLS verifier did not
//! accept, send one device's result on another device's connection (each
//! connection is served by its own task, request by request), log a tensor
//! or a key, or let one client's bad input end anyone else's session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use attestation::atls::{
    Admitted, PeerRequirement, RevocationList, VerifiedPeer, client_config, server_config,
};
use attestation::certifier::client::{Client, unix_now};
use attestation::certifier::keys::PublicKey;
use attestation::certifier::policy::Role;
use blob_store::{AnyStore, BlobId};
use protocol::{
    BoundedListener, ErrorCode, Framed, FreshParty, InferenceOutput, Limits, ListenEvent,
    ListenLimits, Message, ProtocolError, Tensor, accept_attested,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use crate::budget::Budgets;
use crate::config::Config;
use crate::federated::{Coordinator, FlConfig, Joined, Publisher};
use crate::metrics::{self, Metrics};
use crate::models::{ModelError, Models};
use crate::pool::{InferencePool, PoolError};
use crate::provider::ProviderClient;
use inference::{OutputError, RunError, apply, check_rows};

/// Updates accepted per federated round, so a device can be told whether a
/// round it took part in was aggregated (`RoundOutcomeQuery`). Every
/// accepted update goes through [`RoundTally::submit`], which holds the
/// tally's lock across the coordinator's submit; a reader takes the lock
/// only after the round has closed, so it sees every update the round
/// accepted. The coordinator aggregates exactly when a closed round holds at
/// least `min_clients` updates (`fl::round::Status`), which is the rule
/// [`RoundTally::outcome`] applies.
///
/// Must never: grow without bound (the newest [`RoundTally::KEPT`] rounds
/// are kept), or answer for a round it has forgotten.
#[derive(Debug, Default)]
struct RoundTally {
    inner: tokio::sync::Mutex<TallyState>,
}

#[derive(Debug, Default)]
struct TallyState {
    accepted: std::collections::BTreeMap<u64, u32>,
    /// Rounds at or below this were dropped from `accepted`.
    forgotten: Option<u64>,
}

impl RoundTally {
    const KEPT: usize = 256;

    async fn submit(
        &self,
        fl: &Coordinator,
        device: [u8; 32],
        round: u64,
        update: fl::aggregate::Update,
    ) -> Result<usize, fl::round::Rejected> {
        let mut t = self.inner.lock().await;
        let result = fl.submit(device, round, update).await;
        if let Ok(n) = result {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            let slot = t.accepted.entry(round).or_default();
            *slot = (*slot).max(n);
            while t.accepted.len() > Self::KEPT {
                if let Some((old, _)) = t.accepted.pop_first() {
                    t.forgotten = Some(old);
                }
            }
        }
        result
    }

    /// How the closed `round` ended, or `None` if it was forgotten.
    async fn outcome(&self, round: u64, min_clients: usize) -> Option<Message> {
        let t = self.inner.lock().await;
        if t.forgotten.is_some_and(|f| round <= f) {
            return None;
        }
        let updates = t.accepted.get(&round).copied().unwrap_or(0);
        let min_clients = u32::try_from(min_clients).unwrap_or(u32::MAX);
        Some(Message::RoundOutcome {
            round,
            aggregated: updates >= min_clients,
            updates,
            min_clients,
        })
    }
}

/// What the request handlers share.
#[derive(Debug)]
struct Runtime {
    models: Arc<Models>,
    fl: Option<Arc<Coordinator>>,
    fl_tally: RoundTally,
    pool: InferencePool,
    budgets: Budgets,
    metrics: Arc<Metrics>,
    /// Revocations, kept current from the signed policy: every request
    /// re-checks its session against them.
    revoked: RevocationList,
    /// High-assurance mode: device sessions start with fresh evidence both ways.
    fresh: Option<FreshParty>,
}

/// Why one inference request failed: each maps to one wire code, one
/// client-facing message and one metrics label.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Budget(#[from] crate::budget::BudgetExceeded),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{0}")]
    Run(String),
}

impl RequestError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Model(ModelError::Unknown) => "unknown-model",
            Self::Model(ModelError::KeyRefused(_)) => "key-refused",
            Self::Model(ModelError::Unavailable { .. }) => "model-unavailable",
            Self::Budget(_) => "budget",
            Self::Input(_) | Self::Output(_) => "bad-input",
            Self::Pool(PoolError::Busy(_)) => "busy",
            Self::Pool(PoolError::Panicked) | Self::Run(_) => "internal",
        }
    }

    fn to_message(&self) -> Message {
        match self {
            Self::Model(ModelError::Unknown) => {
                Message::error(ErrorCode::NotFound, "unknown model")
            }
            Self::Model(ModelError::KeyRefused(_)) => Message::error(
                ErrorCode::Refused,
                "the model provider does not release this model to this runtime",
            ),
            Self::Model(ModelError::Unavailable { .. }) => Message::error(
                ErrorCode::Internal,
                "the model is unavailable at the moment; try again later",
            ),
            Self::Budget(e) => Message::error(ErrorCode::BudgetExceeded, e.to_string()),
            Self::Input(m) => Message::error(ErrorCode::BadRequest, m.clone()),
            Self::Output(e) => Message::error(ErrorCode::BadRequest, e.to_string()),
            Self::Pool(e @ PoolError::Busy(_)) => Message::error(ErrorCode::Busy, e.to_string()),
            Self::Pool(PoolError::Panicked) | Self::Run(_) => {
                Message::error(ErrorCode::Internal, "inference failed")
            }
        }
    }
}

impl Runtime {
    async fn infer(
        &self,
        device: &crate::budget::DeviceKey,
        model_id: &str,
        input: Tensor,
    ) -> Result<InferenceOutput, RequestError> {
        let served = self.models.get(model_id).await?;
        // Shape and type before budget: a malformed request costs nothing.
        let shape = served
            .model
            .input()
            .check(&input)
            .map_err(|e| RequestError::Input(e.to_string()))?;
        let policy = served.serving.output;
        // A batch the output policy will not answer is refused before it
        // costs budget or compute.
        let samples = served.model.input().samples(&shape);
        check_rows(policy, samples as usize)?;
        if let Some(b) = served.serving.budget {
            // Every sample of a batch counts (a budget of 2 is 2 samples).
            self.budgets
                .charge(device, model_id, b, samples, Instant::now())?;
        }
        let job = served.clone();
        self.metrics.queue_depth.set(self.pool.depth() as i64 + 1);
        let result = self.pool.run(move || job.model.run(input)).await;
        self.metrics.queue_depth.set(self.pool.depth() as i64);
        if let (Err(PoolError::Busy(_)), Some(_)) = (&result, served.serving.budget) {
            // Refused before it ran: the device will retry; charge it once.
            self.budgets.refund(device, model_id, samples);
        }
        let scores = result?.map_err(|e| match e {
            RunError::Input(e) => RequestError::Input(e.to_string()),
            RunError::Model(m) => RequestError::Run(m),
        })?;
        Ok(apply(policy, scores)?)
    }
}

/// The refusal for a device the task's terms do not admit (its
/// measurement, or its INSECURE platform), counted in the metrics.
fn not_in_task(rt: &Runtime) -> Message {
    rt.metrics.error("fl-device-not-allowed");
    Message::error(
        ErrorCode::Refused,
        "this device may not join this federated task (its measurement, or its INSECURE platform, is not allowed by the task's terms)",
    )
}

/// Say what `--allow-insecure-peers` did: accepted only where the signed
/// policy trusts an INSECURE platform.
fn insecure_peers_note(asked: bool, granted: bool) {
    if granted {
        warn!(
            "INSECURE: accepting peers admitted on the emulated platform or public test material"
        );
    } else if asked {
        warn!(
            "--allow-insecure-peers has no effect: the signed policy trusts no INSECURE platform, so INSECURE peers are refused"
        );
    }
}

/// Largest bundle fetched, when the cache is smaller.
const MIN_MAX_BUNDLE: u64 = 64 << 20;

/// Run until stopped.
pub async fn serve(cfg: Config) -> Result<()> {
    let platform = cfg.platform.open(cfg.platform_key.as_deref())?;
    let policy_cert = std::fs::read(&cfg.policy_cert).with_context(|| {
        format!(
            "reading the policy certificate {}",
            cfg.policy_cert.display()
        )
    })?;
    let certifier = Client::new(cfg.certifier.clone(), Duration::from_secs(15));
    let admitted =
        Admitted::obtain(certifier, &policy_cert, platform.as_ref(), &Role::runtime()).await?;
    info!("admitted as runtime");
    admitted.keep_revocations_current(Duration::from_secs(cfg.revocation_refresh_secs));

    let mut peers = PeerRequirement::roles([Role::device(), Role::provider()])?;
    let mut provider = PeerRequirement::roles([Role::provider()])?;
    let policy = admitted.policy.get();
    let insecure = peers.allow_insecure_if_policy_does(cfg.allow_insecure_peers, &policy);
    provider.allow_insecure_if_policy_does(cfg.allow_insecure_peers, &policy);
    insecure_peers_note(cfg.allow_insecure_peers, insecure);
    let server_tls = server_config(
        &admitted.identity,
        admitted.anchor.clone(),
        peers,
        admitted.revoked.clone(),
    )?;
    let provider_tls = client_config(
        &admitted.identity,
        admitted.anchor.clone(),
        provider,
        admitted.revoked.clone(),
    )?;

    // High-assurance mode: this runtime gives and demands fresh evidence,
    // bound to the TLS session, on every device session and on its own
    // sessions with the provider.
    let fresh = cfg.fresh_evidence.then(|| FreshParty {
        own_spki: admitted.own_spki.clone(),
        platform: platform.clone(),
        policy: admitted.policy.clone(),
    });
    if fresh.is_some() {
        info!(
            "high-assurance mode: device and provider sessions start with fresh evidence both ways"
        );
    }
    let provider_client = {
        let c = ProviderClient::new(cfg.provider.clone(), provider_tls.clone());
        match &fresh {
            Some(f) => c.with_fresh_evidence(f.clone(), admitted.anchor.key().clone()),
            None => c,
        }
    };
    let store = AnyStore::open(&cfg.store).context("opening the blob store")?;
    let metrics = Metrics::new();
    let models = Arc::new(Models::new(
        cfg.models,
        store,
        provider_client.clone(),
        metrics.clone(),
        cfg.cache_bytes,
        (cfg.cache_bytes as u64).max(MIN_MAX_BUNDLE),
    ));
    let fl = match cfg.federated.clone() {
        Some(host) => {
            let publisher = Publisher {
                store: AnyStore::open(&cfg.store).context("opening the blob store")?,
                provider: provider_client.clone(),
            };
            // The task's terms come from the provider, over attested TLS into
            // this realm; the host's flags may only narrow them.
            let signed = publisher.provider.task_terms(&host.task).await?;
            let terms = signed.narrowed(&host.narrowing).with_context(|| {
                format!(
                    "federated task {:?}: the provider's terms are {}",
                    host.task,
                    signed.summary()
                )
            })?;
            if terms != signed {
                info!("federated task narrowed by this host: {}", terms.summary());
            }
            info!("federated task terms: {}", terms.summary());
            if terms.allow_insecure_devices {
                warn!("INSECURE: the task's terms let devices on the emulated platform take part");
            }
            let c = FlConfig::from_terms(terms, host.deadline)?;
            // Resume from the last deposited round: starting over would
            // roll the task's model back.
            let resume = publisher.last_deposited(&c.task, &c.arch).await?;
            Some(Coordinator::start(c, Some(Arc::new(publisher)), resume)?)
        }
        None => None,
    };
    let rt = Arc::new(Runtime {
        models: models.clone(),
        fl,
        fl_tally: RoundTally::default(),
        pool: InferencePool::new(cfg.workers, cfg.queue),
        budgets: Budgets::default(),
        metrics: metrics.clone(),
        revoked: admitted.revoked.clone(),
        fresh: fresh.clone(),
    });
    let limits = Limits {
        max_frame: cfg.max_message,
        max_message: cfg.max_message,
        ..Limits::default()
    };

    let listener = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let metrics_listener = TcpListener::bind(&cfg.metrics)
        .await
        .with_context(|| format!("metrics endpoint on {}", cfg.metrics))?;
    let addr = listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;
    if !metrics_addr.ip().is_loopback() {
        warn!(%metrics_addr, "the metrics endpoint is not on loopback; it needs no authentication");
    }
    println!("realm-runtime listening on {addr}");
    println!("realm-runtime metrics on http://{metrics_addr}/metrics");
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::spawn(metrics::serve(metrics_listener, metrics.clone()));
    for id in models.ids() {
        models.prefetch(id);
    }

    let acceptor = TlsAcceptor::from(server_tls);
    let policy_key = admitted.anchor.key().clone();
    let listen = ListenLimits {
        established_total: cfg.max_connections,
        ..ListenLimits::default()
    };
    let observed = metrics.clone();
    let session_rt = rt.clone();
    BoundedListener::new(listener, "runtime", listen)
        .observe(move |e| match e {
            ListenEvent::Refused(_) => observed.error("connection-limit"),
            ListenEvent::DeadlineExpired => {
                observed.attestation_failures.inc();
                observed.error("handshake-timeout");
            }
            ListenEvent::Established => {
                observed.connections.inc();
            }
            ListenEvent::Closed => {
                observed.connections.dec();
            }
            _ => {}
        })
        .serve(
            move |tcp, peer_addr| {
                let (rt, acceptor, policy_key) = (rt.clone(), acceptor.clone(), policy_key.clone());
                async move { handshake(&rt, acceptor, tcp, peer_addr, &policy_key).await }
            },
            move |(tls, peer), peer_addr| {
                let rt = session_rt.clone();
                async move { session(&rt, tls, peer, peer_addr, limits).await }
            },
        )
        .await;
    Ok(())
}

/// The pre-auth phase (bounded by the listener's deadline): the attested
/// TLS handshake and the peer's identity.
async fn handshake(
    rt: &Runtime,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer_addr: std::net::SocketAddr,
    policy_key: &PublicKey,
) -> Option<(TlsStream<TcpStream>, VerifiedPeer)> {
    accept_attested(&acceptor, tcp, policy_key)
        .await
        .map_err(|e| {
            rt.metrics.attestation_failures.inc();
            warn!(%peer_addr, "{e}");
        })
        .ok()
}

async fn session(
    rt: &Runtime,
    tls: TlsStream<TcpStream>,
    peer: VerifiedPeer,
    peer_addr: std::net::SocketAddr,
    limits: Limits,
) {
    let framed = Framed::with_limits(tls, limits);
    let result = if peer.role == Role::provider() {
        provider_session(rt, framed).await
    } else {
        device_session(rt, framed, &peer).await
    };
    match result {
        Ok(()) | Err(ProtocolError::Closed) | Err(ProtocolError::IdleTimeout { .. }) => {
            debug!(%peer_addr, role = %peer.role, "session ended")
        }
        Err(e) => info!(%peer_addr, role = %peer.role, "session ended: {e}"),
    }
}

/// Tell the peer why its session ends (best effort), then end it.
async fn fail<S>(framed: &mut Framed<S>, e: ProtocolError) -> Result<(), ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !matches!(
        e,
        ProtocolError::Closed | ProtocolError::Io(_) | ProtocolError::IdleTimeout { .. }
    ) {
        let _ = framed
            .send(&Message::error(e.wire_code(), e.to_string()))
            .await;
    }
    Err(e)
}

async fn device_session<S>(
    rt: &Runtime,
    mut framed: Framed<S>,
    peer: &VerifiedPeer,
) -> Result<(), ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin + protocol::TlsSession,
{
    // Budgets are per CCA platform instance, not per admitted key: a phone
    // that re-admits keeps its budget.
    let device = crate::budget::device_key(&peer.platform_instance);
    // Federated rounds still take one update per admitted identity (its TLS
    // auth key): the laptop demo runs many devices on one emulated platform.
    let fl_device: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &peer.auth_key_spki)
        .as_ref()
        .try_into()
        .unwrap_or([0; 32]);
    framed.server_hello().await?;
    if let Some(f) = &rt.fresh {
        match f.exchange(&mut framed, peer).await {
            Ok(_) => {
                debug!(measurement = %hex::encode(&peer.measurement), "fresh evidence verified")
            }
            Err(e) => {
                rt.metrics.attestation_failures.inc();
                rt.metrics.error("fresh-evidence-refused");
                warn!(measurement = %hex::encode(&peer.measurement), code = e.code(), "ending a device session: {e}");
                return Ok(());
            }
        }
    }
    // The last federated round this device sent an update to.
    let mut submitted: Option<u64> = None;
    loop {
        let message = match framed.recv().await {
            Ok(m) => m,
            Err(e) => {
                if matches!(
                    e,
                    ProtocolError::Decode(_)
                        | ProtocolError::TooLarge { .. }
                        | ProtocolError::TrailingBytes { .. }
                ) {
                    rt.metrics.error("malformed-message");
                }
                return fail(&mut framed, e).await;
            }
        };
        // A session held open does not outlive its trust: revoked since it
        // was opened, or past its certificate's end, it is refused and ends.
        if let Err(e) = peer.still_trusted(&rt.revoked, unix_now()) {
            rt.metrics.error("session-no-longer-trusted");
            warn!(measurement = %hex::encode(&peer.measurement), "ending a device session: {e}");
            let _ = framed
                .send(&Message::error(
                    ErrorCode::Refused,
                    format!("session ended: {e}"),
                ))
                .await;
            return Ok(());
        }
        let reply = match message {
            Message::InferenceRequest {
                request_id,
                model_id,
                input,
            } => {
                rt.metrics.requests.inc();
                let started = Instant::now();
                let reply = match rt.infer(&device, &model_id, input).await {
                    Ok(output) => Message::InferenceResponse { request_id, output },
                    Err(e) => {
                        rt.metrics.error(e.kind());
                        debug!(error = %e, kind = e.kind(), "request refused");
                        e.to_message()
                    }
                };
                rt.metrics.latency.observe(started.elapsed().as_secs_f64());
                reply
            }
            Message::FlTaskQuery { task } => match &rt.fl {
                Some(fl)
                    if fl.task() == task
                        && !fl.admits(&peer.measurement, peer.insecure_platform) =>
                {
                    not_in_task(rt)
                }
                Some(fl) if fl.task() == task => Message::FlTaskTerms {
                    terms: fl.terms().clone(),
                },
                _ => Message::error(ErrorCode::NotFound, "no such federated task here"),
            },
            Message::JoinRound { task } => match &rt.fl {
                Some(fl)
                    if fl.task() == task
                        && !fl.admits(&peer.measurement, peer.insecure_platform) =>
                {
                    not_in_task(rt)
                }
                Some(fl) if fl.task() == task => {
                    let (info, done) = match fl.join(submitted).await {
                        Joined::Train(info) => (info, false),
                        Joined::Done(info) => (info, true),
                    };
                    let head = if done {
                        Message::RoundResult {
                            round: info.number,
                            accepted: true,
                            new_model_hash: Some(info.model_hash),
                            reason: Some("task complete: final global model follows".into()),
                        }
                    } else {
                        let left = info.closes.saturating_duration_since(Instant::now());
                        Message::RoundAnnouncement {
                            round: info.number,
                            model_hash: info.model_hash,
                            deadline_secs: u32::try_from(left.as_secs()).unwrap_or(u32::MAX),
                            min_clients: u32::try_from(fl.min_clients()).unwrap_or(u32::MAX),
                        }
                    };
                    framed.send(&head).await?;
                    framed.send_large(info.number, &info.model).await?;
                    continue;
                }
                _ => Message::error(ErrorCode::NotFound, "no such federated task here"),
            },
            Message::ModelUpdate {
                round,
                num_samples,
                delta,
            } => match &rt.fl {
                Some(fl) if !fl.admits(&peer.measurement, peer.insecure_platform) => {
                    not_in_task(rt)
                }
                Some(fl) => {
                    let update = fl::aggregate::Update { delta, num_samples };
                    match rt.fl_tally.submit(fl, fl_device, round, update).await {
                        Ok(n) => {
                            submitted = Some(round);
                            info!(round, updates = n, "federated update accepted");
                            Message::RoundResult {
                                round,
                                accepted: true,
                                new_model_hash: None,
                                reason: None,
                            }
                        }
                        Err(e) => {
                            rt.metrics.error("fl-update-refused");
                            info!(round, "federated update refused: {e}");
                            Message::RoundResult {
                                round,
                                accepted: false,
                                new_model_hash: None,
                                reason: Some(e.to_string()),
                            }
                        }
                    }
                }
                None => Message::error(ErrorCode::NotFound, "no federated task here"),
            },
            Message::RoundOutcomeQuery { task, round } => match &rt.fl {
                Some(fl)
                    if fl.task() == task
                        && !fl.admits(&peer.measurement, peer.insecure_platform) =>
                {
                    not_in_task(rt)
                }
                Some(fl) if fl.task() == task => {
                    // Returns at once unless `round` is the open round, in
                    // which case it waits for the round to close.
                    let current = match fl.join(Some(round)).await {
                        Joined::Train(info) | Joined::Done(info) => info.number,
                    };
                    if current <= round {
                        Message::error(
                            ErrorCode::BadRequest,
                            format!("round {round} has not run; the current round is {current}"),
                        )
                    } else {
                        match rt.fl_tally.outcome(round, fl.min_clients()).await {
                            Some(outcome) => outcome,
                            None => Message::error(
                                ErrorCode::NotFound,
                                format!("round {round} is too old: its outcome is no longer kept"),
                            ),
                        }
                    }
                }
                _ => Message::error(ErrorCode::NotFound, "no such federated task here"),
            },
            other => {
                rt.metrics.error("bad-request");
                Message::error(
                    ErrorCode::BadRequest,
                    format!("devices send InferenceRequest here, not {}", other.kind()),
                )
            }
        };
        framed.send(&reply).await?;
    }
}

async fn provider_session<S>(rt: &Runtime, mut framed: Framed<S>) -> Result<(), ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    framed.server_hello().await?;
    loop {
        match framed.recv().await {
            Ok(Message::SealedModelAnnouncement {
                model_id,
                version,
                bundle_hash,
                size,
            }) => {
                let bundle = BlobId(bundle_hash);
                if rt.models.announce(&model_id, bundle) {
                    info!(model = %model_id, %version, %bundle, "announced; prefetching");
                    rt.models.prefetch(model_id.clone());
                } else {
                    debug!(model = %model_id, %bundle, "announced again; unchanged");
                }
                // The echo is the acknowledgement.
                framed
                    .send(&Message::SealedModelAnnouncement {
                        model_id,
                        version,
                        bundle_hash,
                        size,
                    })
                    .await?;
            }
            Ok(other) => {
                let e = ProtocolError::UnexpectedMessage {
                    expected: "SealedModelAnnouncement",
                    got: other.kind(),
                };
                return fail(&mut framed, e).await;
            }
            Err(e) => return fail(&mut framed, e).await,
        }
    }
}
