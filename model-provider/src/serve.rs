//! `serve`: get admitted, then answer key requests over attested TLS.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use attestation::atls::{
    Identity, PeerRequirement, PolicyAnchor, RevocationList, VerifiedPeer, server_config,
};
use attestation::cca::{Curve, PlatformKey};
use attestation::certifier::client::{Client, unix_now};
use attestation::certifier::keys::PublicKey;
use attestation::certifier::keys::SigningKey;
use attestation::certifier::policy::Role;
use attestation::platform::EvidenceSource;
use protocol::{
    ErrorCode, Framed, FreshExchangeError, Limits, Message, ProtocolError, TlsSession,
    fresh_evidence_exchange,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::keystore::Keystore;
use crate::release::{Denial, decide, usage_name};

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
    let anchor =
        PolicyAnchor::from_certificate_der(&policy_cert).context("the policy certificate")?;

    // 1. Our own admission, with a fresh auth key generated here.
    let (auth, auth_pkcs8) = SigningKey::generate_p256().context("generating the TLS auth key")?;
    let client = Client::new(cfg.certifier.clone(), Duration::from_secs(15));
    info!(platform = %cfg.platform.describe(), "requesting admission as provider");
    let cert = client
        .admit(cfg.platform.as_ref(), &auth.public_key(), &Role::provider())
        .await
        .context("admission as provider was refused")?;
    let identity = Identity::new(cert, auth_pkcs8);
    let own_spki = auth.public_key().ec_spki_der().context("auth key")?;

    // 2. Revocations and platform keys from the signed policy.
    let revoked = RevocationList::new();
    let policy = client
        .policy(anchor.key())
        .await
        .context("fetching the signed policy")?;
    revoked.update_from_policy(&policy);
    {
        // Keep revocations current: a measurement revoked at the certifier
        // stops receiving keys within one refresh interval.
        let (revoked, client, key, refresh) = (
            revoked.clone(),
            client.clone(),
            anchor.key().clone(),
            cfg.revocation_refresh,
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(refresh).await;
                match client.policy(&key).await {
                    Ok(p) => revoked.update_from_policy(&p),
                    Err(e) => warn!("could not refresh revocations (keeping the last list): {e}"),
                }
            }
        });
    }

    // Platform keys for checking peers' fresh evidence.
    let platform_keys: Arc<Vec<PlatformKey>> = Arc::new(
        policy
            .platforms()
            .iter()
            .filter_map(|p| match &p.cpak {
                PublicKey::P256(x) => PlatformKey::from_point(Curve::P256, x).ok(),
                PublicKey::P384(x) => PlatformKey::from_point(Curve::P384, x).ok(),
                PublicKey::Rsa { .. } => None,
            })
            .collect(),
    );
    if cfg.fresh_evidence {
        info!("high-assurance mode: every session starts with fresh evidence both ways");
    }

    let mut requirement = PeerRequirement::roles([Role::runtime(), Role::device()])?;
    if cfg.allow_insecure_peers {
        warn!("INSECURE: accepting peers admitted on the emulated platform");
        requirement = requirement.allow_insecure_emulated_platform();
    }
    let tls = server_config(&identity, anchor.clone(), requirement, revoked)?;
    let acceptor = TlsAcceptor::from(tls);
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    println!("model-provider listening on {addr}");
    use std::io::Write;
    std::io::stdout().flush()?;

    let keystore = Arc::new(cfg.keystore);
    loop {
        let (tcp, peer_addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, keystore, policy_key) =
            (acceptor.clone(), keystore.clone(), anchor.key().clone());
        let fresh = cfg.fresh_evidence.then(|| Fresh {
            own_spki: own_spki.clone(),
            platform: cfg.platform.clone(),
            platform_keys: platform_keys.clone(),
        });
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        warn!(%peer_addr, "handshake refused: {e}");
                        return;
                    }
                    Err(_) => {
                        warn!(%peer_addr, "handshake timed out");
                        return;
                    }
                };
            let peer = match VerifiedPeer::from_certificates(
                tls.get_ref().1.peer_certificates(),
                &policy_key,
                unix_now(),
            ) {
                Ok(p) => p,
                Err(e) => {
                    warn!(%peer_addr, "peer identity: {e}");
                    return;
                }
            };
            if let Err(e) = session(
                Framed::with_limits(tls, Limits::default()),
                &peer,
                &keystore,
                fresh.as_ref(),
            )
            .await
            {
                info!(%peer_addr, "session ended: {e}");
            }
        });
    }
}

/// What high-assurance sessions need.
struct Fresh {
    own_spki: Vec<u8>,
    platform: Arc<dyn EvidenceSource>,
    platform_keys: Arc<Vec<PlatformKey>>,
}

async fn session<S>(
    mut framed: Framed<S>,
    peer: &VerifiedPeer,
    keystore: &Keystore,
    fresh: Option<&Fresh>,
) -> Result<(), SessionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + TlsSession,
{
    framed.server_hello().await?;
    if let Some(f) = fresh {
        fresh_evidence_exchange(
            &mut framed,
            &f.own_spki,
            f.platform.as_ref(),
            peer,
            &f.platform_keys,
        )
        .await?;
        info!(role = %peer.role, measurement = %hex::encode(&peer.measurement), "fresh evidence verified");
    }
    loop {
        match framed.recv().await? {
            Message::ModelKeyRequest {
                model_id,
                bundle_hash,
                usage,
            } => {
                let entry = keystore.current(&model_id);
                let reply = match decide(entry, &bundle_hash, peer, &usage) {
                    Ok(()) => match entry.map(|e| keystore.unwrap_key(e)) {
                        Some(Ok(key)) => {
                            info!(model = %model_id, role = %peer.role, measurement = %hex::encode(&peer.measurement),
                                  usage = usage_name(&usage), "key released");
                            Message::ModelKeyRelease {
                                model_id,
                                key_id: *key.key_id().as_bytes(),
                                key: key.to_secret_bytes(),
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
                };
                framed.send(&reply).await?;
            }
            other => {
                framed
                    .send(&Message::error(
                        ErrorCode::BadRequest,
                        "this service answers ModelKeyRequest only",
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
