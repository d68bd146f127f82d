//! `serve`: get admitted, then answer key requests over attested TLS.
//!
//! Connections are admitted by the shared bounded listener
//! (`protocol::BoundedListener`): the attested TLS handshake must finish
//! within the pre-auth deadline (3 s by default), unauthenticated
//! connections are capped per source and in total, and verified peers get
//! their own pool of `limits.established_total` (512) slots.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use attestation::atls::{
    Admitted, PeerRequirement, RevocationList, VerifiedPeer, client_config, server_config,
};
use attestation::certifier::client::{Client, unix_now};
use attestation::certifier::keys::PublicKey;
use attestation::certifier::policy::Role;
use attestation::platform::EvidenceSource;
use protocol::{
    BoundedListener, ErrorCode, Framed, FreshExchangeError, FreshParty, Limits, ListenLimits,
    Message, ProtocolError, TlsSession, accept_attested,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

use crate::keystore::Keystore;
use crate::release::{Denial, allowed, decide, usage_name};

/// What `serve` needs.
pub struct ServeConfig {
    /// Listen address.
    pub listen: String,
    /// Certifier service address.
    pub certifier: String,
    /// The policy certificate (the only trust root).
    pub policy_cert: PathBuf,
    /// Where this provider's evidence comes from.
    pub platform: Arc<dyn EvidenceSource>,
    /// High-assurance mode: after the hello, both sides exchange fresh
    /// evidence bound to the TLS session before any key request.
    pub fresh_evidence: bool,
    /// Accept peers admitted on the INSECURE emulated platform.
    pub allow_insecure_peers: bool,
    /// The keystore (already unlocked).
    pub keystore: Keystore,
    /// How often revocations are fetched again from the certifier.
    pub revocation_refresh: Duration,
    /// Runtimes to announce current models to.
    pub announce_to: Vec<String>,
    /// How often to announce.
    pub announce_every: Duration,
    /// Which federated global models runtimes may deposit.
    pub intake: crate::deposit::Intake,
    /// Connection admission: pre-auth deadline and caps, established cap.
    pub limits: ListenLimits,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Fresh(#[from] FreshExchangeError),
}

/// Run until stopped.
pub async fn serve(cfg: ServeConfig) -> Result<()> {
    let policy_cert = std::fs::read(&cfg.policy_cert)
        .with_context(|| format!("reading {}", cfg.policy_cert.display()))?;
    // Our own admission (fresh auth key), the signed policy, and revocations
    // kept current: a measurement revoked at the certifier stops receiving
    // keys within one refresh interval.
    let client = Client::new(cfg.certifier.clone(), Duration::from_secs(15));
    let admitted = Admitted::obtain(
        client,
        &policy_cert,
        cfg.platform.as_ref(),
        &Role::provider(),
    )
    .await?;
    admitted.keep_revocations_current(cfg.revocation_refresh);
    let Admitted {
        identity,
        own_spki,
        anchor,
        revoked,
        policy,
        ..
    } = admitted;
    if cfg.fresh_evidence {
        info!("high-assurance mode: every session starts with fresh evidence both ways");
    }

    let mut requirement = PeerRequirement::roles([Role::runtime(), Role::device()])?;
    // The host's flag, as far as the signed policy allows INSECURE peers.
    let insecure =
        requirement.allow_insecure_if_policy_does(cfg.allow_insecure_peers, &policy.get());
    if insecure {
        warn!(
            "INSECURE: accepting peers admitted on the emulated platform or public test material"
        );
    } else if cfg.allow_insecure_peers {
        warn!(
            "--allow-insecure-peers has no effect: the signed policy trusts no INSECURE platform, so INSECURE peers are refused"
        );
    }
    let tls = server_config(&identity, anchor.clone(), requirement, revoked.clone())?;
    let acceptor = TlsAcceptor::from(tls);
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    println!("model-provider listening on {addr}");
    use std::io::Write;
    std::io::stdout().flush()?;

    // Shared by all sessions; re-read when `seal` or `rotate` changes the file.
    let keystore = Arc::new(std::sync::Mutex::new(cfg.keystore));
    let intake = Arc::new(cfg.intake.clone());
    if !cfg.announce_to.is_empty() {
        let mut runtimes = PeerRequirement::roles([Role::runtime()])?;
        runtimes.allow_insecure_if_policy_does(cfg.allow_insecure_peers, &policy.get());
        let tls = client_config(&identity, anchor.clone(), runtimes, revoked.clone())?;
        crate::announce::spawn(
            cfg.announce_to.clone(),
            tls,
            keystore.clone(),
            cfg.announce_every,
        );
    }
    let fresh = cfg.fresh_evidence.then(|| {
        Arc::new(FreshParty {
            own_spki,
            platform: cfg.platform.clone(),
            policy: policy.clone(),
        })
    });
    let policy_key = anchor.key().clone();
    BoundedListener::new(listener, "provider", cfg.limits)
        .serve(
            move |tcp, peer_addr| {
                let (acceptor, policy_key) = (acceptor.clone(), policy_key.clone());
                async move { handshake(acceptor, tcp, peer_addr, &policy_key).await }
            },
            move |(tls, peer), peer_addr| {
                let (keystore, intake, fresh, revoked) = (
                    keystore.clone(),
                    intake.clone(),
                    fresh.clone(),
                    revoked.clone(),
                );
                async move {
                    if let Err(e) = session(
                        Framed::with_limits(tls, Limits::default()),
                        &peer,
                        &keystore,
                        fresh.as_deref(),
                        &intake,
                        &revoked,
                    )
                    .await
                    {
                        info!(%peer_addr, "session ended: {e}");
                    }
                }
            },
        )
        .await;
    Ok(())
}

/// The pre-auth phase (bounded by the listener's deadline): the attested
/// TLS handshake and the peer's identity.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer_addr: SocketAddr,
    policy_key: &PublicKey,
) -> Option<(TlsStream<TcpStream>, VerifiedPeer)> {
    accept_attested(&acceptor, tcp, policy_key)
        .await
        .map_err(|e| warn!(%peer_addr, "{e}"))
        .ok()
}

async fn session<S>(
    mut framed: Framed<S>,
    peer: &VerifiedPeer,
    keystore: &std::sync::Mutex<Keystore>,
    fresh: Option<&FreshParty>,
    intake: &crate::deposit::Intake,
    revoked: &RevocationList,
) -> Result<(), SessionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + TlsSession,
{
    framed.server_hello().await?;
    if let Some(f) = fresh {
        f.exchange(&mut framed, peer).await?;
        info!(role = %peer.role, measurement = %hex::encode(&peer.measurement), "fresh evidence verified");
    }
    loop {
        let message = framed.recv().await?;
        // Every request re-checks the session: a peer revoked since it
        // connected, or past its certificate's end, gets no more keys.
        if let Err(e) = peer.still_trusted(revoked, unix_now()) {
            warn!(role = %peer.role, measurement = %hex::encode(&peer.measurement), "ending a session: {e}");
            let _ = framed
                .send(&Message::error(
                    ErrorCode::Refused,
                    format!("session ended: {e}"),
                ))
                .await;
            return Ok(());
        }
        match message {
            Message::ModelKeyRequest {
                model_id,
                bundle_hash,
                usage,
            } => {
                // The lock is released before the reply is sent.
                let reply = {
                    let mut keystore = keystore.lock().unwrap_or_else(|p| p.into_inner());
                    match keystore.refresh() {
                        Ok(true) => info!("keystore changed on disk; re-read it"),
                        Ok(false) => {}
                        Err(e) => warn!(
                            "keystore changed on disk but cannot be re-read (keeping the last entries): {e:#}"
                        ),
                    }
                    let entry = keystore.current(&model_id);
                    match decide(entry, &bundle_hash, peer, &usage) {
                        Ok(()) => match entry.map(|e| (e, keystore.unwrap_key(e))) {
                            Some((e, Ok(key))) => {
                                info!(model = %model_id, role = %peer.role, measurement = %hex::encode(&peer.measurement),
                                  usage = usage_name(&usage), "key released");
                                Message::ModelKeyRelease {
                                    model_id,
                                    key_id: *key.key_id().as_bytes(),
                                    key: key.to_secret_bytes(),
                                    serving: e.release.serving,
                                }
                            }
                            _ => Message::error(ErrorCode::Internal, "key unavailable"),
                        },
                        Err(denial) => {
                            let detail = match &denial {
                                // The model id is only logged, never echoed, for unknown models.
                                Denial::UnknownModel => "unknown model".to_string(),
                                other => other.to_string(),
                            };
                            warn!(model = %model_id, role = %peer.role, measurement = %hex::encode(&peer.measurement),
                              usage = usage_name(&usage), "key refused: {detail}");
                            Message::error(ErrorCode::Refused, "key not released")
                        }
                    }
                };
                framed.send(&reply).await?;
            }
            Message::BundleQuery { model_id, usage } => {
                let reply = {
                    let mut keystore = keystore.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = keystore.refresh() {
                        warn!("keystore changed on disk but cannot be re-read: {e:#}");
                    }
                    let answer = keystore
                        .current(&model_id)
                        .ok_or(Denial::UnknownModel)
                        .and_then(|e| allowed(e, peer, &usage).map(|()| e));
                    match answer {
                        Err(Denial::UnknownModel)
                            if crate::deposit::nothing_deposited(intake, peer, &model_id) =>
                        {
                            Message::error(
                                ErrorCode::NotFound,
                                "no global model of this federated task has been deposited yet",
                            )
                        }
                        Ok(e) => {
                            match hex::decode(&e.bundle).ok().and_then(|h| h.try_into().ok()) {
                                Some(bundle_hash) => Message::SealedModelAnnouncement {
                                    model_id,
                                    version: e.version.clone(),
                                    bundle_hash,
                                    size: 0,
                                },
                                None => {
                                    Message::error(ErrorCode::Internal, "keystore entry is damaged")
                                }
                            }
                        }
                        Err(denial) => {
                            warn!(model = %model_id, role = %peer.role, measurement = %hex::encode(&peer.measurement),
                                  usage = usage_name(&usage), "bundle query refused: {denial}");
                            Message::error(ErrorCode::Refused, "key not released")
                        }
                    }
                };
                framed.send(&reply).await?;
            }
            Message::ModelKeyDeposit {
                model_id,
                version,
                bundle_hash,
                key_id,
                key,
            } => {
                let reply = deposit_reply(
                    intake,
                    peer,
                    keystore,
                    model_id,
                    version,
                    bundle_hash,
                    &key_id,
                    key.expose(),
                );
                framed.send(&reply).await?;
            }
            Message::FlTaskQuery { task } => {
                let reply = {
                    let mut keystore = keystore.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = keystore.refresh() {
                        warn!("keystore changed on disk but cannot be re-read: {e:#}");
                    }
                    task_terms_reply(intake, peer, &keystore, &task)
                };
                framed.send(&reply).await?;
            }
            other => {
                framed
                    .send(&Message::error(
                        ErrorCode::BadRequest,
                        "this service answers ModelKeyRequest, BundleQuery, ModelKeyDeposit and FlTaskQuery only",
                    ))
                    .await?;
                return Err(ProtocolError::UnexpectedMessage {
                    expected: "ModelKeyRequest",
                    got: other.kind(),
                }
                .into());
            }
        }
    }
}

/// The answer to a runtime's `FlTaskQuery`: the task's terms, only to a
/// runtime that may deposit the task's models (the terms say who may train
/// and how; a device learns them from the runtime that enforces them).
fn task_terms_reply(
    intake: &crate::deposit::Intake,
    peer: &VerifiedPeer,
    keystore: &Keystore,
    task: &str,
) -> Message {
    if let Err(why) = crate::deposit::may_coordinate(intake, peer, task) {
        warn!(task, role = %peer.role, measurement = %hex::encode(&peer.measurement), "task terms refused: {why}");
        return Message::error(ErrorCode::Refused, "task terms not released");
    }
    match keystore.task(task) {
        Ok(Some(terms)) => {
            info!(task, measurement = %hex::encode(&peer.measurement), "task terms sent: {}", terms.summary());
            Message::FlTaskTerms { terms }
        }
        Ok(None) => Message::error(ErrorCode::NotFound, "this federated task has no terms"),
        Err(e) => {
            warn!(task, "task terms unusable: {e:#}");
            Message::error(ErrorCode::Internal, "the task's stored terms are unusable")
        }
    }
}

/// Check and store a runtime's deposit of a federated global model; the
/// reply to send. The version check runs under the keystore lock, so two
/// deposits cannot both pass as newer than the same current version.
#[allow(clippy::too_many_arguments)]
fn deposit_reply(
    intake: &crate::deposit::Intake,
    peer: &VerifiedPeer,
    keystore: &std::sync::Mutex<Keystore>,
    model_id: String,
    version: String,
    bundle_hash: [u8; 32],
    key_id: &[u8; 16],
    key: &[u8],
) -> Message {
    let key = match crate::deposit::check(intake, peer, &model_id, key_id, key) {
        Ok(key) => key,
        Err(why) => {
            warn!(model = %model_id, role = %peer.role, measurement = %hex::encode(&peer.measurement),
                  "deposit refused: {why}");
            return Message::error(ErrorCode::Refused, "deposit not accepted");
        }
    };
    let mut ks = keystore.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(why) = crate::deposit::check_version(&version, ks.highest_version(&model_id)) {
        warn!(model = %model_id, measurement = %hex::encode(&peer.measurement),
              code = why.code(), "deposit refused: {why}");
        // The runtime needs the versions to resume; they are no secret to
        // a runtime allowed to deposit.
        return Message::error(ErrorCode::Refused, format!("{}: {why}", why.code()));
    }
    let bundle = hex::encode(bundle_hash);
    let created = unix_now().max(0) as u64;
    match ks
        .add(
            &model_id,
            &version,
            &bundle,
            &key,
            created,
            crate::deposit::release_rule(),
        )
        .and_then(|()| ks.retire(&model_id, &bundle))
    {
        Ok(()) => {
            info!(model = %model_id, %version, %bundle, measurement = %hex::encode(&peer.measurement),
                  "federated global model deposited");
            Message::SealedModelAnnouncement {
                model_id,
                version,
                bundle_hash,
                size: 0,
            }
        }
        Err(e) => {
            warn!(model = %model_id, "deposit could not be stored: {e:#}");
            Message::error(ErrorCode::Internal, "deposit not stored")
        }
    }
}
