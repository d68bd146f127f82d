//! High-assurance mode over a [`Framed`] attested-TLS stream: both sides
//! demand and give fresh evidence bound to this session (see
//! `attestation::atls::fresh` for the construction and why it stops relays).
//!
//! Both sides run [`fresh_evidence_exchange`]; each first sends its nonce,
//! so neither waits on the other and the exchange cannot deadlock.

use attestation::atls::fresh::{FreshEvidenceError, fresh_challenge, verify_fresh_evidence};
use attestation::atls::{CurrentPolicy, VerifiedPeer};
use attestation::cca::{Challenge, VerifiedCcaToken};
use attestation::certifier::admission::CertError;
use attestation::certifier::client::unix_now;
use attestation::certifier::keys::PublicKey;
use attestation::certifier::policy::Policy;
use attestation::platform::{EvidenceSource, PlatformError};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{Framed, Message, ProtocolError};

/// A TLS stream whose session can derive fresh-evidence challenges.
pub trait TlsSession {
    /// The challenge the prover with `prover_spki` must answer for `nonce` on this session.
    fn fresh_challenge(
        &self,
        nonce: &[u8; 32],
        prover_spki: &[u8],
    ) -> Result<Challenge, FreshEvidenceError>;

    /// The peer as its verified admission certificate says (the handshake
    /// checked it; this reads it back under `policy_key`).
    fn verified_peer(&self, policy_key: &PublicKey) -> Result<VerifiedPeer, CertError>;
}

impl<IO> TlsSession for tokio_rustls::server::TlsStream<IO> {
    fn fresh_challenge(
        &self,
        nonce: &[u8; 32],
        prover_spki: &[u8],
    ) -> Result<Challenge, FreshEvidenceError> {
        fresh_challenge(self.get_ref().1, nonce, prover_spki)
    }

    fn verified_peer(&self, policy_key: &PublicKey) -> Result<VerifiedPeer, CertError> {
        VerifiedPeer::from_certificates(
            self.get_ref().1.peer_certificates(),
            policy_key,
            unix_now(),
        )
    }
}

impl<IO> TlsSession for tokio_rustls::client::TlsStream<IO> {
    fn fresh_challenge(
        &self,
        nonce: &[u8; 32],
        prover_spki: &[u8],
    ) -> Result<Challenge, FreshEvidenceError> {
        fresh_challenge(self.get_ref().1, nonce, prover_spki)
    }

    fn verified_peer(&self, policy_key: &PublicKey) -> Result<VerifiedPeer, CertError> {
        VerifiedPeer::from_certificates(
            self.get_ref().1.peer_certificates(),
            policy_key,
            unix_now(),
        )
    }
}

/// One side of high-assurance sessions: what it needs to give fresh
/// evidence (its certificate key's SPKI, its platform) and to appraise the
/// other side's (the current verified policy). Every party of ours — the
/// provider, the runtime (towards devices and towards the provider) and the
/// device agent — runs the exchange through this one type.
#[derive(Clone)]
pub struct FreshParty {
    /// DER SPKI of this side's admission-certificate key.
    pub own_spki: Vec<u8>,
    /// This side's evidence source.
    pub platform: std::sync::Arc<dyn EvidenceSource>,
    /// The policy the peer's evidence is appraised under.
    pub policy: CurrentPolicy,
}

impl std::fmt::Debug for FreshParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshParty").finish_non_exhaustive()
    }
}

impl FreshParty {
    /// Run [`fresh_evidence_exchange`] with `peer` on `framed`.
    pub async fn exchange<S>(
        &self,
        framed: &mut Framed<S>,
        peer: &VerifiedPeer,
    ) -> Result<VerifiedCcaToken, FreshExchangeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + TlsSession,
    {
        fresh_evidence_exchange(
            framed,
            &self.own_spki,
            self.platform.as_ref(),
            peer,
            &self.policy.get(),
        )
        .await
    }

    /// As a client: read the server's identity back from the session, then
    /// run the exchange.
    pub async fn exchange_as_client<S>(
        &self,
        framed: &mut Framed<S>,
        policy_key: &PublicKey,
    ) -> Result<VerifiedCcaToken, FreshExchangeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + TlsSession,
    {
        let peer = framed
            .get_ref()
            .verified_peer(policy_key)
            .map_err(FreshExchangeError::PeerIdentity)?;
        self.exchange(framed, &peer).await
    }
}

/// Why the exchange failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FreshExchangeError {
    /// Transport or protocol failure.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The peer's evidence did not verify (relayed, replayed, other code).
    #[error("the peer's fresh evidence was refused: {0}")]
    Refused(#[from] FreshEvidenceError),
    /// Our own platform could not produce evidence.
    #[error("could not produce fresh evidence: {0}")]
    Platform(#[from] PlatformError),
    /// The peer sent something else.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What we waited for.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// No randomness for the nonce.
    #[error("no system randomness for the nonce")]
    Random,
    /// The peer's certificate could not be read back from the session.
    #[error("the peer's admission certificate: {0}")]
    PeerIdentity(#[source] CertError),
}

impl FreshExchangeError {
    /// A stable short code (the failed check, for logs and metrics).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Protocol(_) => "fresh-evidence-protocol",
            Self::Refused(e) => e.code(),
            Self::Platform(_) => "fresh-evidence-platform",
            Self::Unexpected { .. } => "fresh-evidence-unexpected-message",
            Self::Random => "fresh-evidence-random",
            Self::PeerIdentity(_) => "fresh-evidence-peer-identity",
        }
    }
}

/// Give and demand fresh evidence on this session. `own_spki` is the SPKI of
/// this side's certificate key; `peer` and `policy` (the current verified
/// policy, appraised as admission appraises) verify the other side.
pub async fn fresh_evidence_exchange<S>(
    framed: &mut Framed<S>,
    own_spki: &[u8],
    platform: &dyn EvidenceSource,
    peer: &VerifiedPeer,
    policy: &Policy,
) -> Result<VerifiedCcaToken, FreshExchangeError>
where
    S: AsyncRead + AsyncWrite + Unpin + TlsSession,
{
    let mut ours = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut ours)
        .map_err(|_| FreshExchangeError::Random)?;
    framed.send(&Message::FreshNonce { nonce: ours }).await?;

    let theirs = match framed.recv().await? {
        Message::FreshNonce { nonce } => nonce,
        other => return Err(unexpected("FreshNonce", &other)),
    };
    let challenge = framed.get_ref().fresh_challenge(&theirs, own_spki)?;
    let token = platform.attestation_token(&challenge)?;
    framed.send(&Message::FreshEvidence { token }).await?;

    let token = match framed.recv().await? {
        Message::FreshEvidence { token } => token,
        other => return Err(unexpected("FreshEvidence", &other)),
    };
    let expected = framed
        .get_ref()
        .fresh_challenge(&ours, &peer.auth_key_spki)?;
    Ok(verify_fresh_evidence(&token, &expected, peer, policy)?)
}

fn unexpected(expected: &'static str, got: &Message) -> FreshExchangeError {
    if let Some(remote) = got.as_remote_error() {
        return FreshExchangeError::Protocol(remote);
    }
    FreshExchangeError::Unexpected {
        expected,
        got: got.kind(),
    }
}
