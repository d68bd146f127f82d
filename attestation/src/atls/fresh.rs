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
//! evidence meant for its counterpart.
//!
//! Fresh evidence is appraised exactly as admission appraises evidence — the
//! same function, `certifier::decide::appraise_platform`, against the current
//! signed policy (platform entry, emulated-evidence rule, firmware reference
//! values) — and then must match the peer's admission: the same RIM, the same
//! platform instance, not revoked, and not INSECURE unless the certificate
//! already says so. This module is sans-IO: the transport sends the nonce and
//! the token.

use thiserror::Error;

use super::peer::VerifiedPeer;
use crate::cca::{Challenge, VerifiedCcaToken, VerifyError, VerifyOptions};
use crate::certifier::decide::{Refusal, appraise_platform};
use crate::certifier::policy::Policy;

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
    /// The token verified but its appraisal refused it (firmware not a
    /// reference value, emulated evidence through an unmarked entry, ...).
    #[error("fresh evidence refused by the policy: {0}")]
    Appraisal(Refusal),
    /// The token's measurement differs from the one the peer was admitted with.
    #[error("fresh evidence measures {found}, but the peer was admitted as {admitted}")]
    MeasurementChanged {
        /// RIM in the fresh token.
        found: String,
        /// RIM in the admission certificate.
        admitted: String,
    },
    /// The token comes from another platform instance than the admission.
    #[error("fresh evidence comes from another platform instance than the peer's admission")]
    InstanceChanged,
    /// The measurement has been revoked since the peer was admitted.
    #[error("the peer's measurement {0} is revoked")]
    Revoked(String),
    /// The fresh evidence is INSECURE but the certificate does not say so.
    #[error("fresh evidence is INSECURE ({0}) but the peer's certificate is not marked INSECURE")]
    InsecureEvidence(String),
}

impl FreshEvidenceError {
    /// A stable short code for logs and the wire.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Exporter(_) => "fresh-exporter",
            Self::UntrustedPlatform => "untrusted-platform",
            Self::Evidence(e) => e.check(),
            Self::Appraisal(r) => r.code(),
            Self::MeasurementChanged { .. } => "fresh-measurement-changed",
            Self::InstanceChanged => "fresh-instance-changed",
            Self::Revoked(_) => "measurement-revoked",
            Self::InsecureEvidence(_) => "fresh-insecure-evidence",
        }
    }
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

/// Check the peer's fresh token against the current signed `policy` and the
/// challenge this connection expects, then against the peer's admission.
pub fn verify_fresh_evidence(
    token: &[u8],
    expected: &Challenge,
    peer: &VerifiedPeer,
    policy: &Policy,
) -> Result<VerifiedCcaToken, FreshEvidenceError> {
    let options = VerifyOptions {
        expected_challenge: Some(*expected),
        ..Default::default()
    };
    let appraised = appraise_platform(policy, token, &options).map_err(|r| match r {
        Refusal::UntrustedPlatform => FreshEvidenceError::UntrustedPlatform,
        Refusal::Evidence(e) => FreshEvidenceError::Evidence(e),
        other => FreshEvidenceError::Appraisal(other),
    })?;
    let insecure = appraised.insecure();
    let v = appraised.into_token();
    let rim = v.realm().rim.as_bytes();
    if rim != peer.measurement.as_slice() {
        return Err(FreshEvidenceError::MeasurementChanged {
            found: hex::encode(rim),
            admitted: hex::encode(&peer.measurement),
        });
    }
    if v.platform().instance_id != peer.platform_instance {
        return Err(FreshEvidenceError::InstanceChanged);
    }
    if policy.revocation(rim).is_some() {
        return Err(FreshEvidenceError::Revoked(hex::encode(rim)));
    }
    if let (Some(why), false) = (insecure, peer.insecure_platform) {
        return Err(FreshEvidenceError::InsecureEvidence(why.tag()));
    }
    Ok(v)
}
