//! Signature, binding, freshness and lifecycle checks: `CcaToken` →
//! `VerifiedCcaToken`. The only constructor of `VerifiedCcaToken` lives here,
//! so holding one proves every check below ran and passed.
//!
//! Order: platform signature (the hardware root), realm signature, the binding
//! between the two, the realm challenge, the lifecycle. The first failure is
//! returned; nothing is "mostly verified".

use ring::signature::{self, UnparsedPublicKey};

use super::cpak::{Curve, PlatformKey};
use super::error::VerifyError;
use super::parse::{CcaToken, SignatureAlgorithm, parse};
use super::test_material::{self, TestMaterial};
use super::types::{Challenge, Envelope, PlatformClaims, RealmClaims, lifecycle};

/// Whether the platform must be in a secured lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LifecyclePolicy {
    /// Accept only 0x3000..=0x30ff (the default).
    #[default]
    RequireSecured,
    /// Accept debug and provisioning states too. INSECURE: a debug platform
    /// can be inspected and modified by whoever holds it.
    InsecureAcceptAny,
}

/// What the caller expects of the token beyond its signatures.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The realm challenge (nonce) the verifier issued. Protocol code must
    /// always set it; only offline inspection of a stored token leaves it out.
    pub expected_challenge: Option<Challenge>,
    /// Lifecycle rule.
    pub lifecycle: LifecyclePolicy,
}

/// A token whose signatures, RAK binding, challenge (when given) and lifecycle
/// all checked out against a given platform key.
#[derive(Debug, Clone)]
pub struct VerifiedCcaToken {
    token: CcaToken,
    challenge_checked: bool,
    /// The platform key whose signature verified (test material is
    /// recognised by it as well as by what the token carries).
    verified_with: PlatformKey,
}

impl VerifiedCcaToken {
    /// Realm claims (RIM, REMs, personalization value, RAK, challenge).
    pub fn realm(&self) -> &RealmClaims {
        &self.token.realm.claims
    }
    /// Platform claims (implementation id, instance id, sw components, ...).
    pub fn platform(&self) -> &PlatformClaims {
        &self.token.platform.claims
    }
    /// The outer token form.
    pub fn envelope(&self) -> Envelope {
        self.token.envelope
    }
    /// The whole token, e.g. for JSON rendering.
    pub fn token(&self) -> &CcaToken {
        &self.token
    }
    /// Whether the realm challenge was compared with an expected value.
    pub fn challenge_checked(&self) -> bool {
        self.challenge_checked
    }
    /// True when the implementation id is the INSECURE emulated platform's.
    pub fn is_insecure_emulated(&self) -> bool {
        self.token.platform.claims.implementation_id
            == crate::platform::INSECURE_EMULATED_IMPLEMENTATION_ID
    }
    /// The platform key that verified the platform token.
    pub fn verified_with(&self) -> &PlatformKey {
        &self.verified_with
    }
    /// Public test material behind this token, if any: the key that verified
    /// it is a published test key, its RAK is one, its platform token is a
    /// byte-identical sample, or its implementation id is the emulated
    /// platform's. Such a token proves nothing about hardware: whatever
    /// admits it must mark the result INSECURE.
    pub fn test_material(&self) -> Option<&'static TestMaterial> {
        test_material::known_key_spki(&self.verified_with.to_spki_der())
            .or_else(|| test_material::carried_by(&self.token))
    }
}

/// Parse and verify in one step.
pub fn verify_bytes(
    bytes: &[u8],
    cpak: &PlatformKey,
    options: &VerifyOptions,
) -> Result<VerifiedCcaToken, VerifyError> {
    verify(parse(bytes)?, cpak, options)
}

/// Verify a decoded token against a trusted platform key.
pub fn verify(
    token: CcaToken,
    cpak: &PlatformKey,
    options: &VerifyOptions,
) -> Result<VerifiedCcaToken, VerifyError> {
    // 1. Platform token signed by the CPAK.
    let key_alg = match cpak.curve() {
        Curve::P256 => SignatureAlgorithm::Es256,
        Curve::P384 => SignatureAlgorithm::Es384,
    };
    if token.platform.algorithm != key_alg {
        return Err(VerifyError::PlatformKeyMismatch {
            token_alg: token.platform.algorithm.name(),
            key_alg: key_alg.name(),
        });
    }
    if !ecdsa_verify(
        token.platform.algorithm,
        cpak.point(),
        &token.platform.to_be_signed(),
        token.platform.signature(),
    ) {
        return Err(VerifyError::PlatformSignature);
    }

    // 2. Realm token signed by the RAK it carries (ES384 enforced by the parser).
    let realm = &token.realm.claims;
    if !ecdsa_verify(
        token.realm.algorithm,
        realm.public_key.point(),
        &token.realm.to_be_signed(),
        token.realm.signature(),
    ) {
        return Err(VerifyError::RealmSignature);
    }

    // 3. The platform vouches for that RAK: its challenge is the hash of the
    //    RAK claim bytes exactly as encoded in the realm token.
    let alg = realm.public_key_hash_algo;
    let expected_binding = alg.digest(realm.public_key.claim_bytes());
    if !constant_time_eq(&expected_binding, &token.platform.claims.challenge) {
        return Err(VerifyError::RakBinding { alg: alg.name() });
    }

    // 4. Freshness: the realm challenge is the verifier's nonce.
    let challenge_checked = match &options.expected_challenge {
        Some(expected) => {
            if !constant_time_eq(expected.as_bytes(), realm.challenge.as_bytes()) {
                return Err(VerifyError::ChallengeMismatch);
            }
            true
        }
        None => false,
    };

    // 5. A debug or provisioning platform cannot vouch for anything.
    let state = token.platform.claims.lifecycle;
    if options.lifecycle == LifecyclePolicy::RequireSecured && !lifecycle::is_secured(state) {
        return Err(VerifyError::LifecycleNotSecured {
            state,
            name: lifecycle::name(state),
        });
    }

    Ok(VerifiedCcaToken {
        token,
        challenge_checked,
        verified_with: cpak.clone(),
    })
}

/// The published test key, if any, whose signature the platform token
/// carries. For offline inspection of an unverified token: it says who could
/// have made it, never that it is good.
pub fn known_test_signer(token: &CcaToken) -> Option<&'static TestMaterial> {
    test_material::KNOWN.iter().find(|entry| {
        entry.kind == test_material::MaterialKind::PublishedKey
            && entry
                .spki_der()
                .and_then(|der| PlatformKey::from_spki_der(&der).ok())
                .is_some_and(|key| {
                    let alg = match key.curve() {
                        Curve::P256 => SignatureAlgorithm::Es256,
                        Curve::P384 => SignatureAlgorithm::Es384,
                    };
                    token.platform.algorithm == alg
                        && ecdsa_verify(
                            alg,
                            key.point(),
                            &token.platform.to_be_signed(),
                            token.platform.signature(),
                        )
                })
    })
}

fn ecdsa_verify(alg: SignatureAlgorithm, point: &[u8], message: &[u8], sig: &[u8]) -> bool {
    let ring_alg = match alg {
        SignatureAlgorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
        SignatureAlgorithm::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
    };
    UnparsedPublicKey::new(ring_alg, point)
        .verify(message, sig)
        .is_ok()
}

/// Length-checked, constant-time (in the contents) comparison.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
