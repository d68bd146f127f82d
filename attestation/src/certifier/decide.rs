//! The admission decision: CCA evidence + policy + requested role →
//! [`Admitted`] or a [`Refusal`] that names the reason. Pure: the caller
//! supplies the nonce it issued, the party's auth key and the time.
//!
//! Steps, each of which must pass:
//! 1. the token verifies (`cca::verify`) with one of the policy's platform
//!    keys, with realm challenge = SHA-512(nonce ‖ SPKI of the auth key);
//! 2. an emulated token is admitted only through a platform entry marked
//!    `insecure-emulated`; the admission is INSECURE when that entry is
//!    (emulated, or public test material) or when the token carries public
//!    test material, whatever the token says about itself;
//! 3. firmware components match the reference values bound to that platform
//!    entry's key, slot by slot, and every required slot is present, unless
//!    the platform entry explicitly skips them;
//! 4. the RIM is not revoked;
//! 5. the RIM (with the personalization value, where the policy pins one)
//!    is trusted for the requested role;
//! 6. the framework proof "authKey is-trusted-for-authentication" checks out
//!    from the policy statements and the statements derived from the token.

use thiserror::Error;

use super::clause::{key_entity, measurement_entity, says, simple, unary, verb};
use super::insecure::Insecurity;
use super::keys::PublicKey;
use super::policy::{
    ComponentReference, Policy, Role, TrustedMeasurement, TrustedPlatform, platform_fingerprint,
};
use super::proof::{ProofError, ProofStep, verify_proof};
use crate::cca::{
    self, Challenge, Curve, PlatformKey, VerifiedCcaToken, VerifyError, VerifyOptions,
};

/// What an admission certificate will say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The role granted.
    pub role: Role,
    /// The realm initial measurement.
    pub measurement: Vec<u8>,
    /// The party's TLS auth key, bound by the realm challenge.
    pub auth_key: PublicKey,
    /// The CCA platform instance id (claim 256) of the verified token.
    pub platform_instance: [u8; 33],
    /// Why the evidence could have been forged (the INSECURE emulated
    /// platform, or public test material); `None` for hardware evidence.
    pub insecure: Option<Insecurity>,
}

impl Admitted {
    /// Whether the admission certificate must carry the INSECURE mark.
    pub fn is_insecure(&self) -> bool {
        self.insecure.is_some()
    }
}

/// Why a party is not admitted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The token failed a check with a trusted platform key.
    #[error("evidence rejected: {0}")]
    Evidence(VerifyError),
    /// No platform key in the policy signed this token.
    #[error("the platform key that signed this token is not trusted by the policy")]
    UntrustedPlatform,
    /// Emulated evidence through a platform entry not marked insecure.
    #[error(
        "token comes from the INSECURE emulated platform but the policy does not mark that key insecure-emulated"
    )]
    EmulatedPlatformNotMarked,
    /// A firmware component without a reference value.
    #[error(
        "platform firmware component {kind} with measurement {value} is not a trusted reference value"
    )]
    PlatformComponentNotTrusted {
        /// Component type.
        kind: String,
        /// Its measurement, hex.
        value: String,
    },
    /// A component the policy requires for this platform is absent.
    #[error(
        "the platform token lacks firmware component {kind}, which the policy requires for this platform"
    )]
    PlatformComponentMissing {
        /// Component type (or `#N` slot).
        kind: String,
    },
    /// The platform entry appraises firmware but has no reference values.
    #[error(
        "the policy has no firmware reference values for this platform key: add them with `policy trust-component --cpak ... --type ... --measurement ...`, or trust the platform with --skip-sw-components"
    )]
    NoReferenceValues,
    /// The auth key is not an EC key we can bind.
    #[error("the auth key must be an EC P-256 or P-384 key")]
    BadAuthKey,
    /// The measurement is revoked.
    #[error("measurement {measurement} is revoked: {reason}")]
    Revoked {
        /// Hex RIM.
        measurement: String,
        /// Reason.
        reason: String,
    },
    /// The measurement is not in the policy at all.
    #[error("measurement {measurement} is not trusted for any role")]
    NotTrusted {
        /// Hex RIM.
        measurement: String,
    },
    /// The measurement is trusted, but for other roles.
    #[error(
        "measurement {measurement} is not trusted for role {role} (trusted for: {trusted_for})"
    )]
    WrongRole {
        /// Hex RIM.
        measurement: String,
        /// Requested role.
        role: String,
        /// Roles it is trusted for.
        trusted_for: String,
    },
    /// The proof did not check (an internal inconsistency; never expected).
    #[error("proof failed: {0}")]
    Proof(ProofError),
}

impl Refusal {
    /// A stable short code for logs and the wire.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Evidence(e) => e.check(),
            Refusal::UntrustedPlatform => "untrusted-platform",
            Refusal::EmulatedPlatformNotMarked => "emulated-platform-not-marked",
            Refusal::PlatformComponentNotTrusted { .. } => "platform-component-not-trusted",
            Refusal::PlatformComponentMissing { .. } => "platform-component-missing",
            Refusal::NoReferenceValues => "no-reference-values",
            Refusal::BadAuthKey => "bad-auth-key",
            Refusal::Revoked { .. } => "measurement-revoked",
            Refusal::NotTrusted { .. } => "measurement-not-trusted",
            Refusal::WrongRole { .. } => "measurement-wrong-role",
            Refusal::Proof(_) => "proof-failed",
        }
    }
}

/// The realm challenge a party must use: SHA-512(nonce ‖ SPKI DER of its auth key).
pub fn admission_challenge(nonce: &[u8], auth_key_spki_der: &[u8]) -> Challenge {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    ctx.update(nonce);
    ctx.update(auth_key_spki_der);
    let mut c = [0u8; 64];
    c.copy_from_slice(ctx.finish().as_ref());
    Challenge(c)
}

fn platform_key(k: &PublicKey) -> Option<PlatformKey> {
    match k {
        PublicKey::P256(p) => PlatformKey::from_point(Curve::P256, p).ok(),
        PublicKey::P384(p) => PlatformKey::from_point(Curve::P384, p).ok(),
        PublicKey::Rsa { .. } => None,
    }
}

/// Platform evidence that verified with a policy platform key and passed
/// that entry's appraisal (emulated-evidence rule, firmware reference
/// values): steps 1–3, shared by admission ([`decide`]) and by fresh
/// evidence on attested-TLS sessions (`atls::fresh`), so the two cannot
/// drift. Built only by [`appraise_platform`].
#[derive(Debug)]
pub struct AppraisedEvidence<'p> {
    token: VerifiedCcaToken,
    platform: &'p TrustedPlatform,
    insecure: Option<Insecurity>,
}

impl<'p> AppraisedEvidence<'p> {
    /// The verified token.
    pub fn token(&self) -> &VerifiedCcaToken {
        &self.token
    }
    /// The policy entry whose key verified it.
    pub fn platform(&self) -> &'p TrustedPlatform {
        self.platform
    }
    /// Why the evidence could have been forged, if it could.
    pub fn insecure(&self) -> Option<Insecurity> {
        self.insecure
    }
    /// The verified token, consumed.
    pub fn into_token(self) -> VerifiedCcaToken {
        self.token
    }
}

/// Steps 1–3 of the admission decision: find the policy platform key that
/// verifies `token` (with `options`' challenge), refuse emulated evidence
/// through an entry not marked so, derive the INSECURE mark, and appraise
/// firmware against that entry's reference values.
pub fn appraise_platform<'p>(
    policy: &'p Policy,
    token: &[u8],
    options: &VerifyOptions,
) -> Result<AppraisedEvidence<'p>, Refusal> {
    let parsed = cca::parse(token).map_err(|e| Refusal::Evidence(e.into()))?;

    // 1. Find the trusted platform key that signed the platform token.
    let mut verified: Option<(VerifiedCcaToken, &TrustedPlatform)> = None;
    for platform in policy.platforms() {
        let Some(cpak) = platform_key(&platform.cpak) else {
            continue;
        };
        match cca::verify(parsed.clone(), &cpak, options) {
            Ok(v) => {
                verified = Some((v, platform));
                break;
            }
            Err(VerifyError::PlatformSignature | VerifyError::PlatformKeyMismatch { .. }) => {
                continue;
            }
            Err(e) => return Err(Refusal::Evidence(e)),
        }
    }
    let (token, platform) = verified.ok_or(Refusal::UntrustedPlatform)?;

    // 2. Emulated evidence only where the policy says so, loudly.
    if token.is_insecure_emulated() && !platform.insecure_emulated {
        return Err(Refusal::EmulatedPlatformNotMarked);
    }
    // The mark follows the entry whose key verified the token, then what the
    // token carries: a token signed by the emulated key that claims another
    // implementation id is still INSECURE.
    let insecure = platform
        .insecurity()
        .or_else(|| token.test_material().map(Insecurity::TestMaterial));

    // 3. Firmware reference values, this platform's own, slot by slot.
    if !platform.skip_sw_components {
        appraise_components(policy, platform, &token)?;
    }
    Ok(AppraisedEvidence {
        token,
        platform,
        insecure,
    })
}

/// Decide whether the holder of `auth_key` who sent `token` in answer to
/// `nonce` is admitted for `role`.
pub fn decide(
    policy: &Policy,
    token: &[u8],
    nonce: &[u8],
    auth_key: &PublicKey,
    role: &Role,
) -> Result<Admitted, Refusal> {
    let spki = auth_key.ec_spki_der().ok_or(Refusal::BadAuthKey)?;
    let options = VerifyOptions {
        expected_challenge: Some(admission_challenge(nonce, &spki)),
        ..Default::default()
    };
    let AppraisedEvidence {
        token,
        platform,
        insecure,
    } = appraise_platform(policy, token, &options)?;

    // 4 and 5. Revocation, then the role.
    let rim = token.realm().rim.as_bytes().to_vec();
    let rim_hex = hex::encode(&rim);
    if let Some(r) = policy.revocation(&rim) {
        return Err(Refusal::Revoked {
            measurement: rim_hex,
            reason: r.reason.clone(),
        });
    }
    let rpv = token.realm().personalization_value;
    let entries: Vec<&TrustedMeasurement> = policy
        .measurements()
        .iter()
        .filter(|m| m.measurement == rim)
        .filter(|m| {
            m.personalization_value
                .as_ref()
                .is_none_or(|p| p.as_slice() == rpv.as_slice())
        })
        .collect();
    if entries.is_empty() {
        return Err(Refusal::NotTrusted {
            measurement: rim_hex,
        });
    }
    let Some(entry) = entries.iter().find(|m| &m.role == role) else {
        let mut roles: Vec<&str> = entries.iter().map(|m| m.role.as_str()).collect();
        roles.sort_unstable();
        roles.dedup();
        return Err(Refusal::WrongRole {
            measurement: rim_hex,
            role: role.to_string(),
            trusted_for: roles.join(", "),
        });
    };

    // 6. The framework's proof, from statements the policy signed and
    //    statements this function derived from the verified token.
    let rak = PublicKey::P384(token.realm().public_key.point().to_vec());
    prove_authentication(policy, platform, entry, &rak, auth_key, &rim).map_err(Refusal::Proof)?;

    Ok(Admitted {
        role: role.clone(),
        measurement: rim,
        auth_key: auth_key.clone(),
        platform_instance: token.platform().instance_id,
        insecure,
    })
}

/// Every component the token reports must match a reference value bound to
/// this platform entry's key for its slot (its measurement type, or `#N`),
/// and every required slot must be present. An entry with no reference
/// values at all refuses (an empty "all of" admits nothing).
fn appraise_components(
    policy: &Policy,
    platform: &TrustedPlatform,
    token: &VerifiedCcaToken,
) -> Result<(), Refusal> {
    let refs = platform_fingerprint(&platform.cpak)
        .map(|f| policy.components_of(&f))
        .unwrap_or_default();
    if refs.is_empty() {
        return Err(Refusal::NoReferenceValues);
    }
    let components = &token.platform().sw_components;
    // A component's slot is its measurement type; an untyped one is `#N`,
    // its position. A reference value names one slot or the other.
    let slot_of = |i: usize, c: &crate::cca::SwComponent| {
        c.measurement_type
            .clone()
            .unwrap_or_else(|| format!("#{i}"))
    };
    let fits =
        |r: &ComponentReference, i: usize, slot: &str| r.slot == slot || r.slot == format!("#{i}");
    for (i, c) in components.iter().enumerate() {
        let slot = slot_of(i, c);
        let trusted = refs
            .iter()
            .any(|r| fits(r, i, &slot) && r.measurement == c.measurement_value);
        if !trusted {
            return Err(Refusal::PlatformComponentNotTrusted {
                kind: slot,
                value: hex::encode(&c.measurement_value),
            });
        }
    }
    for r in refs.iter().filter(|r| r.required) {
        let present = components
            .iter()
            .enumerate()
            .any(|(i, c)| fits(r, i, &slot_of(i, c)));
        if !present {
            return Err(Refusal::PlatformComponentMissing {
                kind: r.slot.clone(),
            });
        }
    }
    Ok(())
}

fn prove_authentication(
    policy: &Policy,
    platform: &TrustedPlatform,
    entry: &TrustedMeasurement,
    rak: &PublicKey,
    auth_key: &PublicKey,
    rim: &[u8],
) -> Result<(), ProofError> {
    let policy_key = key_entity(policy.policy_key(), "policyKey");
    let cpak = key_entity(&platform.cpak, "platformKey");
    let rak = key_entity(rak, "realmAttestationKey");
    let auth = key_entity(auth_key, "authKey");
    let m = measurement_entity(rim);

    let axiom = unary(policy_key, verb::IS_TRUSTED);
    // Derived from the verified token: the platform token binds the RAK, and
    // the realm token, signed by the RAK, binds the auth key (through the
    // challenge) to the RIM.
    let platform_says = says(
        cpak.clone(),
        unary(rak.clone(), verb::IS_TRUSTED_FOR_ATTESTATION),
    );
    let realm_says = says(
        rak.clone(),
        simple(auth.clone(), verb::SPEAKS_FOR, m.clone()),
    );

    let c1 = unary(cpak, verb::IS_TRUSTED_FOR_ATTESTATION);
    let c2 = unary(rak, verb::IS_TRUSTED_FOR_ATTESTATION);
    let c3 = simple(auth.clone(), verb::SPEAKS_FOR, m.clone());
    let c4 = unary(m, verb::IS_TRUSTED);
    let goal = unary(auth, verb::IS_TRUSTED_FOR_AUTHENTICATION);
    let step = |s1: &_, s2: &_, rule, conclusion: &_| ProofStep {
        s1: Clone::clone(s1),
        s2: Clone::clone(s2),
        rule,
        conclusion: Clone::clone(conclusion),
    };
    let steps = [
        step(&axiom, &platform.statement, 5, &c1),
        step(&c1, &platform_says, 5, &c2),
        step(&c2, &realm_says, 6, &c3),
        step(&axiom, &entry.statement, 3, &c4),
        step(&c4, &c3, 1, &goal),
    ];
    let proved = [
        axiom.clone(),
        platform.statement.clone(),
        entry.statement.clone(),
        platform_says,
        realm_says,
    ];
    verify_proof(&goal, &proved, &steps)
}
