//! The admission policy: which platforms may vouch for realms, which realm
//! measurements are trusted for which role, and which are revoked.
//!
//! On disk and on the wire it is a framework `signed_claim_sequence`: every
//! entry is a claim "policyKey says X" signed by the policy key, so the
//! framework's own tools can read it. Our extensions ride in fields the
//! framework already signs:
//!
//! | statement X | `claim_descriptor` | meaning |
//! |---|---|---|
//! | `Measurement[m] is-trusted` | `role:<name>` (+ `;rpv=<hex>`) | RIM m is admitted, only for that role (extension: roles), and only with that personalization value when one is given |
//! | `Key[cpak] is-trusted-for-attestation` | `cca-platform` (+ `;insecure-emulated`, `;insecure-test-key`, `;sw-components=any`) | this CCA platform key may vouch for realms; the flags mark it INSECURE (emulated, or public test material) |
//! | `Measurement[c] is-trusted-platform-component` | `cca-platform-component;cpak=<hex>;type=<name or #slot>` (+ `;optional`) | firmware reference value for the component of that type on the platform whose CPAK SPKI has SHA-256 `<hex>` (extension); required unless `optional`. Without `cpak=`/`type=` (older policies) it is loaded but grants nothing |
//! | `Measurement[m] is-revoked` | `revoked:<reason>` | never admit m again (extension) |
//! | `Measurement[m] is-trusted` | empty (as the framework writes it) | a Certifier Framework app with measurement m is admitted (no role) |
//! | `Key[k] is-trusted-for-attestation` | empty, or `vse-platform` (+ `;no-freshness`) | the framework's simulated-enclave platform key k may endorse attestation keys; `no-freshness` allows its nonce-less (replayable) evidence |
//!
//! A policy is loaded whole or not at all: one claim that fails to verify
//! with the policy key rejects the policy (as the framework does).

use std::fmt;

use thiserror::Error;

use super::claims::{ClaimError, VerifiedClaim, verify_claim};
use super::clause::{entity_key, entity_measurement, verb};
use super::insecure::Insecurity;
use super::keys::PublicKey;
use super::proto::{SignedClaimSequence, VseClause};
use crate::cca::test_material::{TestMaterial, known_key_spki};

/// A role a measurement can be trusted for: `runtime`, `device`, `provider`,
/// or a custom name (lowercase letters, digits, `-`, 1–32 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role(String);

impl Role {
    /// The cloud inference and aggregation runtime.
    pub fn runtime() -> Self {
        Role("runtime".into())
    }
    /// A device agent in a phone realm.
    pub fn device() -> Self {
        Role("device".into())
    }
    /// A model provider.
    pub fn provider() -> Self {
        Role("provider".into())
    }
    /// Validate a role name.
    pub fn new(name: &str) -> Result<Self, PolicyError> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Role(name.to_string()))
        } else {
            Err(PolicyError::BadRole(name.to_string()))
        }
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Descriptor prefixes and flags.
pub mod descriptor {
    /// `role:<name>` on "M is-trusted".
    pub const ROLE_PREFIX: &str = "role:";
    /// Flag `rpv=<hex>` on "M is-trusted": the realm personalization value must match.
    pub const RPV_PREFIX: &str = "rpv=";
    /// On "CPAK is-trusted-for-attestation".
    pub const CCA_PLATFORM: &str = "cca-platform";
    /// Flag: the platform is the INSECURE emulated one.
    pub const INSECURE_EMULATED: &str = "insecure-emulated";
    /// Flag: the operator trusts public test material on purpose (QEMU/FVP
    /// sample keys); everything admitted through it is INSECURE.
    pub const INSECURE_TEST_KEY: &str = "insecure-test-key";
    /// Flag: do not appraise firmware components (explicit skip).
    pub const SW_COMPONENTS_ANY: &str = "sw-components=any";
    /// On "C is-trusted-platform-component".
    pub const CCA_PLATFORM_COMPONENT: &str = "cca-platform-component";
    /// Flag `cpak=<hex>`: SHA-256 of the DER SPKI of the platform key the
    /// reference value belongs to.
    pub const CPAK_PREFIX: &str = "cpak=";
    /// Flag `type=<name>` (the component's measurement type) or `type=#N`
    /// (its position, for untyped components).
    pub const TYPE_PREFIX: &str = "type=";
    /// Flag: a token may lack this component.
    pub const OPTIONAL: &str = "optional";
    /// `revoked:<reason>` on "M is-revoked".
    pub const REVOKED_PREFIX: &str = "revoked:";
    /// On "K is-trusted-for-attestation" for a framework simulated-enclave
    /// platform key (the framework itself writes an empty descriptor).
    pub const VSE_PLATFORM: &str = "vse-platform";
    /// Flag on a `vse-platform` statement: evidence without a nonce is
    /// accepted from this platform (it can be replayed byte for byte).
    pub const NO_FRESHNESS: &str = "no-freshness";
}

/// Problems with a policy itself.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A claim failed verification.
    #[error("policy claim {index}: {source}")]
    Claim {
        /// Position in the sequence.
        index: usize,
        /// Why.
        #[source]
        source: ClaimError,
    },
    /// A claim is signed by some key other than the policy key.
    #[error("policy claim {0} is not signed by the policy key")]
    WrongSigner(usize),
    /// A claim is not "policyKey says X" or X is not a statement we know.
    #[error("policy claim {index} is not a statement this service understands: {detail}")]
    Unrecognised {
        /// Position.
        index: usize,
        /// What.
        detail: String,
    },
    /// An invalid role name.
    #[error("invalid role name {0:?}: use 1-32 lowercase letters, digits or '-'")]
    BadRole(String),
}

/// A CCA platform key the policy trusts.
#[derive(Debug, Clone)]
pub struct TrustedPlatform {
    /// The CPAK.
    pub cpak: PublicKey,
    /// The INSECURE emulated platform (anyone with its key file can forge evidence).
    pub insecure_emulated: bool,
    /// The operator marked this key `insecure-test-key`.
    pub declared_test_key: bool,
    /// The key is on the built-in list of public test material, whatever
    /// the statement says (an older or hand-edited policy cannot hide it).
    pub known_test_key: Option<&'static TestMaterial>,
    /// Firmware components are not appraised for this platform.
    pub skip_sw_components: bool,
    /// The signed statement "policyKey says CPAK is-trusted-for-attestation".
    pub statement: VseClause,
}

impl TrustedPlatform {
    /// Why evidence verified by this entry is INSECURE, if it is: the
    /// emulated flag first, then a listed test key, then the operator's flag.
    pub fn insecurity(&self) -> Option<Insecurity> {
        if self.insecure_emulated {
            Some(Insecurity::EmulatedPlatform)
        } else if let Some(m) = self.known_test_key {
            Some(Insecurity::TestMaterial(m))
        } else if self.declared_test_key {
            Some(Insecurity::DeclaredTestKey)
        } else {
            None
        }
    }
}

/// A measurement trusted for a role.
#[derive(Debug, Clone)]
pub struct TrustedMeasurement {
    /// The RIM.
    pub measurement: Vec<u8>,
    /// The role it is trusted for.
    pub role: Role,
    /// When set, the realm personalization value must equal it.
    pub personalization_value: Option<Vec<u8>>,
    /// The signed statement "policyKey says M is-trusted".
    pub statement: VseClause,
}

/// A Certifier Framework platform key for `vse-attestation-package`
/// evidence (the framework's simulated and application enclaves).
#[derive(Debug, Clone)]
pub struct VsePlatform {
    /// The platform key that endorses attestation keys.
    pub key: PublicKey,
    /// Nonce-less evidence from this platform is accepted (the policy owner
    /// asked for it explicitly; every such admission is audited as
    /// `no-freshness`).
    pub allow_no_freshness: bool,
    /// The signed statement "policyKey says K is-trusted-for-attestation".
    pub statement: VseClause,
}

/// A measurement trusted the framework's way: no role, admitted for
/// framework evidence only.
#[derive(Debug, Clone)]
pub struct FrameworkMeasurement {
    /// The measurement (SHA-256 of a simulated-enclave app, for instance).
    pub measurement: Vec<u8>,
    /// The signed statement "policyKey says M is-trusted".
    pub statement: VseClause,
}

/// A firmware reference value, bound to one platform key and one component
/// slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentReference {
    /// SHA-256 of the DER SubjectPublicKeyInfo of the platform key.
    pub platform: [u8; 32],
    /// The component's measurement type, or `#N` for the N-th component.
    pub slot: String,
    /// The trusted measurement value.
    pub measurement: Vec<u8>,
    /// A token from this platform must carry a component in this slot.
    pub required: bool,
}

/// The fingerprint reference values are bound to: SHA-256 of the key's DER
/// SubjectPublicKeyInfo (`None` for keys that are not EC).
pub fn platform_fingerprint(cpak: &PublicKey) -> Option<[u8; 32]> {
    let der = cpak.ec_spki_der()?;
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &der).as_ref());
    Some(out)
}

/// A revoked measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The RIM.
    pub measurement: Vec<u8>,
    /// Why.
    pub reason: String,
}

/// A loaded, verified policy.
#[derive(Debug, Clone)]
pub struct Policy {
    policy_key: PublicKey,
    platforms: Vec<TrustedPlatform>,
    measurements: Vec<TrustedMeasurement>,
    platform_components: Vec<ComponentReference>,
    unbound_components: Vec<Vec<u8>>,
    revoked: Vec<Revocation>,
    vse_platforms: Vec<VsePlatform>,
    framework_measurements: Vec<FrameworkMeasurement>,
    /// Version and issue time of the signed policy object it came from
    /// (0 and 0 for a bare framework claim sequence).
    version: u64,
    issued_at: i64,
    max_age_secs: u64,
}

impl Policy {
    /// Verify every claim with the policy key and index the statements.
    pub fn load(
        seq: &SignedClaimSequence,
        policy_key: &PublicKey,
        now: i64,
    ) -> Result<Self, PolicyError> {
        let mut p = Policy {
            policy_key: policy_key.clone(),
            platforms: Vec::new(),
            measurements: Vec::new(),
            platform_components: Vec::new(),
            unbound_components: Vec::new(),
            revoked: Vec::new(),
            vse_platforms: Vec::new(),
            framework_measurements: Vec::new(),
            version: 0,
            issued_at: 0,
            max_age_secs: 0,
        };
        for (index, scm) in seq.claims.iter().enumerate() {
            let vc =
                verify_claim(scm, now).map_err(|source| PolicyError::Claim { index, source })?;
            if &vc.signer != policy_key {
                return Err(PolicyError::WrongSigner(index));
            }
            p.add(index, vc)?;
        }
        Ok(p)
    }

    fn add(&mut self, index: usize, vc: VerifiedClaim) -> Result<(), PolicyError> {
        let unrecognised = |detail: &str| PolicyError::Unrecognised {
            index,
            detail: detail.into(),
        };
        let says_subject = vc.clause.subject.as_ref().and_then(entity_key);
        if vc.clause.verb.as_deref() != Some(verb::SAYS)
            || says_subject.as_ref() != Some(&self.policy_key)
        {
            return Err(unrecognised("not of the form 'policyKey says X'"));
        }
        let inner = vc
            .clause
            .clause
            .as_deref()
            .ok_or_else(|| unrecognised("'says' without a clause"))?;
        let subject = inner
            .subject
            .as_ref()
            .ok_or_else(|| unrecognised("no subject"))?;
        let mut flags = vc.descriptor.split(';');
        let head = flags.next().unwrap_or_default();
        let flags: Vec<&str> = flags.collect();
        match (
            inner.verb.as_deref().unwrap_or_default(),
            inner.object.is_none() && inner.clause.is_none(),
        ) {
            (verb::IS_TRUSTED, true) if vc.descriptor.is_empty() => {
                let m = entity_measurement(subject)
                    .ok_or_else(|| unrecognised("is-trusted subject is not a measurement"))?;
                self.framework_measurements.push(FrameworkMeasurement {
                    measurement: m.to_vec(),
                    statement: vc.clause.clone(),
                });
            }
            (verb::IS_TRUSTED, true) => {
                let m = entity_measurement(subject)
                    .ok_or_else(|| unrecognised("is-trusted subject is not a measurement"))?;
                let role = head.strip_prefix(descriptor::ROLE_PREFIX).ok_or_else(|| {
                    unrecognised("trusted measurement without a role:<name> descriptor")
                })?;
                let personalization_value = match flags
                    .iter()
                    .find_map(|f| f.strip_prefix(descriptor::RPV_PREFIX))
                {
                    Some(h) => Some(hex::decode(h).map_err(|_| unrecognised("rpv= is not hex"))?),
                    None => None,
                };
                self.measurements.push(TrustedMeasurement {
                    measurement: m.to_vec(),
                    role: Role::new(role)?,
                    personalization_value,
                    statement: vc.clause.clone(),
                });
            }
            (verb::IS_TRUSTED_FOR_ATTESTATION, true) if head == descriptor::CCA_PLATFORM => {
                let cpak = entity_key(subject)
                    .ok_or_else(|| unrecognised("platform subject is not a key"))?;
                let known_test_key = cpak.ec_spki_der().and_then(|d| known_key_spki(&d));
                self.platforms.push(TrustedPlatform {
                    cpak,
                    insecure_emulated: flags.contains(&descriptor::INSECURE_EMULATED),
                    declared_test_key: flags.contains(&descriptor::INSECURE_TEST_KEY),
                    known_test_key,
                    skip_sw_components: flags.contains(&descriptor::SW_COMPONENTS_ANY),
                    statement: vc.clause.clone(),
                });
            }
            (verb::IS_TRUSTED_FOR_ATTESTATION, true)
                if head.is_empty() || head == descriptor::VSE_PLATFORM =>
            {
                let key = entity_key(subject)
                    .ok_or_else(|| unrecognised("platform subject is not a key"))?;
                let allow_no_freshness =
                    head == descriptor::VSE_PLATFORM && flags.contains(&descriptor::NO_FRESHNESS);
                // One entry per key: a later statement for the same key (the
                // freshness permission import adds) widens it.
                match self.vse_platforms.iter_mut().find(|p| p.key == key) {
                    Some(p) => p.allow_no_freshness |= allow_no_freshness,
                    None => self.vse_platforms.push(VsePlatform {
                        key,
                        allow_no_freshness,
                        statement: vc.clause.clone(),
                    }),
                }
            }
            (verb::IS_TRUSTED_PLATFORM_COMPONENT, true) => {
                let m = entity_measurement(subject)
                    .ok_or_else(|| unrecognised("component is not a measurement"))?;
                let flag = |prefix: &str| flags.iter().find_map(|f| f.strip_prefix(prefix));
                match (flag(descriptor::CPAK_PREFIX), flag(descriptor::TYPE_PREFIX)) {
                    (Some(cpak), Some(slot)) if !slot.is_empty() => {
                        let platform = hex::decode(cpak)
                            .ok()
                            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                            .ok_or_else(|| unrecognised("cpak= is not a 32-byte hex digest"))?;
                        self.platform_components.push(ComponentReference {
                            platform,
                            slot: slot.to_string(),
                            measurement: m.to_vec(),
                            required: !flags.contains(&descriptor::OPTIONAL),
                        });
                    }
                    // Written before reference values were bound to a
                    // platform and a slot: kept for `policy show`, never
                    // matched (a value that fits any slot on any platform
                    // lets one platform's firmware pass for another's).
                    (None, None) => self.unbound_components.push(m.to_vec()),
                    _ => return Err(unrecognised("a component needs both cpak= and type=")),
                }
            }
            (verb::IS_REVOKED, true) => {
                let m = entity_measurement(subject)
                    .ok_or_else(|| unrecognised("revoked subject is not a measurement"))?;
                let reason = head
                    .strip_prefix(descriptor::REVOKED_PREFIX)
                    .unwrap_or(head);
                self.revoked.push(Revocation {
                    measurement: m.to_vec(),
                    reason: reason.to_string(),
                });
            }
            (other, _) => return Err(unrecognised(&format!("verb {other:?}"))),
        }
        Ok(())
    }

    /// Set by `policy_object::verify_policy` only: the object's version and
    /// issue time.
    pub(crate) fn with_version(mut self, version: u64, issued_at: i64, max_age: u64) -> Self {
        self.version = version;
        self.issued_at = issued_at;
        self.max_age_secs = max_age;
        self
    }
    /// How long after issue a kept copy may be used without the service.
    pub fn max_age_secs(&self) -> u64 {
        self.max_age_secs
    }
    /// The signed object's version (0 when loaded from a bare sequence).
    pub fn version(&self) -> u64 {
        self.version
    }
    /// When the signed object was issued, Unix seconds (0 for a bare sequence).
    pub fn issued_at(&self) -> i64 {
        self.issued_at
    }

    /// The key every claim is signed with.
    pub fn policy_key(&self) -> &PublicKey {
        &self.policy_key
    }
    /// Trusted platform keys.
    pub fn platforms(&self) -> &[TrustedPlatform] {
        &self.platforms
    }
    /// Trusted measurements with their roles.
    pub fn measurements(&self) -> &[TrustedMeasurement] {
        &self.measurements
    }
    /// Firmware reference values, each bound to a platform and a slot.
    pub fn platform_components(&self) -> &[ComponentReference] {
        &self.platform_components
    }
    /// The reference values of the platform with this fingerprint.
    pub fn components_of(&self, platform: &[u8; 32]) -> Vec<&ComponentReference> {
        self.platform_components
            .iter()
            .filter(|c| &c.platform == platform)
            .collect()
    }
    /// Reference values from older policies, bound to no platform; they
    /// grant nothing.
    pub fn unbound_components(&self) -> &[Vec<u8>] {
        &self.unbound_components
    }
    /// Revoked measurements.
    pub fn revocations(&self) -> &[Revocation] {
        &self.revoked
    }
    /// Whether `m` is revoked, and why.
    pub fn revocation(&self, m: &[u8]) -> Option<&Revocation> {
        self.revoked.iter().find(|r| r.measurement == m)
    }
    /// Framework simulated-enclave platform keys, one entry per key;
    /// nonce-less evidence is allowed if any statement for the key allows it.
    pub fn vse_platforms(&self) -> &[VsePlatform] {
        &self.vse_platforms
    }
    /// The entry for framework platform key `key`.
    pub fn vse_platform(&self, key: &PublicKey) -> Option<&VsePlatform> {
        self.vse_platforms.iter().find(|p| &p.key == key)
    }
    /// Measurements trusted the framework's way (no role).
    pub fn framework_measurements(&self) -> &[FrameworkMeasurement] {
        &self.framework_measurements
    }
    /// Does any platform entry make admissions INSECURE?
    pub fn is_insecure(&self) -> bool {
        self.platforms.iter().any(|p| p.insecurity().is_some())
    }
}
