//! High-assurance mode over a [`Framed`] attested-TLS stream: both sides
//! demand and give fresh evidence bound to this session (see
//! `attestation::atls::fresh` for the construction and why it stops relays).
//!
//! Both sides run [`fresh_evidence_exchange`]; each first sends its nonce,
//! so neither waits on the other and the exchange cannot deadlock.

use attestation::atls::VerifiedPeer;
use attestation::atls::fresh::{FreshEvidenceError, fresh_challenge, verify_fresh_evidence};
use attestation::cca::{Challenge, VerifiedCcaToken};
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
}

impl<IO> TlsSession for tokio_rustls::server::TlsStream<IO> {
    fn fresh_challenge(
        &self,
        nonce: &[u8; 32],
        prover_spki: &[u8],
    ) -> Result<Challenge, FreshEvidenceError> {
        fresh_challenge(self.get_ref().1, nonce, prover_spki)
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
