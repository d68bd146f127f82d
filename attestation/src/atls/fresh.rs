//! High-assurance mode: fresh evidence bound to this TLS session.
//!
//! After the handshake each side sends a random nonce; the other answers with
//! a new CCA token whose realm challenge is
//!
//! ```text
//! TLS-Exporter(label = "EXPORTER-cca-ml-fresh-evidence",
//!              context = nonce ‖ SHA-256(SPKI of the prover's certificate key),
//!              length = 64)
//! ```
//!
//! The exporter value is unique to this session's keys, so a token produced
//! for another connection (a relay) or earlier (a replay) has the wrong
//! challenge; hashing the prover's own key in stops a peer from answering with
//! evidence meant for its counterpart. The verifier also requires the fresh
//! token's RIM to equal the measurement in the peer's admission certificate.
//! This module is sans-IO: the transport sends the nonce and the token.

use thiserror::Error;

use super::peer::VerifiedPeer;
use crate::cca::{self, Challenge, PlatformKey, VerifiedCcaToken, VerifyError, VerifyOptions};

/// The exporter label.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-cca-ml-fresh-evidence";

/// Fresh-evidence failures.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FreshEvidenceError {
    /// The TLS exporter is not available (handshake not complete).
    #[error("TLS keying material is not available: {0}")]
    Exporter(String),
    /// No trusted platform key verifies the token.
    #[error("fresh evidence is not signed by a trusted platform")]
    UntrustedPlatform,
    /// The token failed a check (a relayed or replayed token fails `realm-challenge`).
    #[error("fresh evidence rejected: {0}")]
    Evidence(VerifyError),
    /// The token's measurement differs from the one the peer was admitted with.
    #[error("fresh evidence measures {found}, but the peer was admitted as {admitted}")]
    MeasurementChanged {
        /// RIM in the fresh token.
        found: String,
        /// RIM in the admission certificate.
        admitted: String,
    },
}

/// The challenge the prover (whose certificate key is `prover_spki`) must put
/// in its fresh token for `nonce` on this connection.
pub fn fresh_challenge<D>(
    conn: &rustls::ConnectionCommon<D>,
    nonce: &[u8; 32],
    prover_spki: &[u8],
) -> Result<Challenge, FreshEvidenceError> {
    let mut context = nonce.to_vec();
    context.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, prover_spki).as_ref());
    let out = conn
        .export_keying_material([0u8; 64], EXPORTER_LABEL, Some(&context))
        .map_err(|e| FreshEvidenceError::Exporter(e.to_string()))?;
    Ok(Challenge(out))
}

/// Check the peer's fresh token against `platforms` (the policy's platform
/// keys) and the challenge this connection expects.
pub fn verify_fresh_evidence(
    token: &[u8],
    expected: &Challenge,
    peer: &VerifiedPeer,
    platforms: &[PlatformKey],
) -> Result<VerifiedCcaToken, FreshEvidenceError> {
    let parsed = cca::parse(token).map_err(|e| FreshEvidenceError::Evidence(e.into()))?;
    let options = VerifyOptions {
        expected_challenge: Some(*expected),
        ..Default::default()
    };
    for cpak in platforms {
        match cca::verify(parsed.clone(), cpak, &options) {
            Ok(v) => {
                let rim = v.realm().rim.as_bytes();
                if rim != peer.measurement.as_slice() {
                    return Err(FreshEvidenceError::MeasurementChanged {
                        found: hex::encode(rim),
                        admitted: hex::encode(&peer.measurement),
                    });
                }
                return Ok(v);
            }
            Err(VerifyError::PlatformSignature | VerifyError::PlatformKeyMismatch { .. }) => {
                continue;
            }
            Err(e) => return Err(FreshEvidenceError::Evidence(e)),
        }
    }
    Err(FreshEvidenceError::UntrustedPlatform)
}
