//! The policy as our peers fetch it: one object signed by the policy key
//! over *all* its statements, with a version that only grows and an issue
//! time.
//!
//! Each statement of the framework's `signed_claim_sequence` is signed on
//! its own, but the sequence is not: a network attacker between a peer and
//! the certifier could drop `revoked:` statements, or replay an older
//! sequence, and every remaining claim would still verify. Here the
//! signature covers the version, the issue time and the exact bytes of the
//! sequence, so nothing can be dropped, and a peer that remembers the newest
//! version it accepted ([`PolicyFloor`]) refuses an older one.
//!
//! Signed bytes: `"cca-ml signed policy v1\0" ‖ version (u64 BE) ‖
//! issued_at (i64 BE) ‖ max_age_secs (u64 BE) ‖ len(claims) (u64 BE) ‖
//! claims`, where `claims` is the serialized `signed_claim_sequence` (the
//! statements themselves stay framework-compatible; framework apps keep
//! fetching the bare sequence).
//!
//! Freshness: the service re-signs the object with the current time each
//! time it serves it (same version, same statements), and the policy owner
//! sets, signed inside it, how long a peer may keep using a copy when the
//! service cannot be reached (`max_age_secs`, [`check_age`]).
//!
//! Must never: return a policy whose object signature, or any of whose
//! claims, did not verify with the caller's policy key; accept a version
//! older than the floor.

use thiserror::Error;

use super::keys::{KeyError, PublicKey, SigningKey};
use super::policy::{Policy, PolicyError};
use super::proto::{SignedClaimSequence, decode_bounded};

/// Domain separation for the object signature.
const DOMAIN: &[u8] = b"cca-ml signed policy v1\0";

/// The signed policy object on the wire and on disk.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignedPolicyMessage {
    /// Grows by one with every change of the policy.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// When this version was signed, Unix seconds.
    #[prost(int64, tag = "2")]
    pub issued_at: i64,
    /// The serialized `signed_claim_sequence`.
    #[prost(bytes = "vec", tag = "3")]
    pub claims: Vec<u8>,
    /// The signing algorithm (framework names, e.g. `ecdsa-P256-SHA256`).
    #[prost(string, tag = "4")]
    pub algorithm: String,
    /// Signature over the bytes described in the module docs.
    #[prost(bytes = "vec", tag = "5")]
    pub signature: Vec<u8>,
    /// How long after `issued_at` a peer may still use this copy when the
    /// service cannot be reached.
    #[prost(uint64, tag = "6")]
    pub max_age_secs: u64,
}

/// The default for [`SignedPolicyMessage::max_age_secs`]: a day.
pub const DEFAULT_MAX_AGE_SECS: u64 = 86_400;

impl SignedPolicyMessage {
    /// The wire encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}

/// Why a policy object was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PolicyObjectError {
    /// Not a policy object, or its statements are not a claim sequence.
    #[error("malformed policy object: {0}")]
    Malformed(String),
    /// The object's signature does not verify with the policy key (or a
    /// statement was added, dropped or changed after signing).
    #[error(
        "the policy object's signature does not verify with the policy key: it was altered (statements dropped?) or signed by another key"
    )]
    BadSignature,
    /// A statement inside failed.
    #[error("{0}")]
    Policy(PolicyError),
    /// A kept copy is older than the policy lets it be used.
    #[error(
        "the kept policy was issued {age_secs} s ago and may be used for {max_age_secs} s only; reach the certifier to refresh it"
    )]
    TooOld {
        /// Seconds since it was issued.
        age_secs: i64,
        /// What the policy allows.
        max_age_secs: u64,
    },
    /// Older than a version this party has already accepted.
    #[error(
        "the certifier served policy version {offered}, older than version {newest} already accepted: refusing it (a replayed or rolled-back policy would un-revoke measurements)"
    )]
    Rollback {
        /// The newest version accepted before.
        newest: u64,
        /// The version offered now.
        offered: u64,
    },
}

impl PolicyObjectError {
    /// A stable short code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "policy-malformed",
            Self::BadSignature => "policy-signature",
            Self::Policy(_) => "policy-claim",
            Self::Rollback { .. } => "policy-rollback",
            Self::TooOld { .. } => "policy-too-old",
        }
    }
}

fn to_be_signed(version: u64, issued_at: i64, max_age_secs: u64, claims: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 32 + claims.len());
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&issued_at.to_be_bytes());
    out.extend_from_slice(&max_age_secs.to_be_bytes());
    out.extend_from_slice(&(claims.len() as u64).to_be_bytes());
    out.extend_from_slice(claims);
    out
}

/// Sign `claims` (a serialized `signed_claim_sequence`) as `version`, usable
/// for [`DEFAULT_MAX_AGE_SECS`] after `issued_at` when the service is away.
pub fn sign_policy(
    key: &SigningKey,
    version: u64,
    issued_at: i64,
    claims: Vec<u8>,
) -> Result<SignedPolicyMessage, KeyError> {
    sign_policy_with_max_age(key, version, issued_at, DEFAULT_MAX_AGE_SECS, claims)
}

/// [`sign_policy`] with an explicit `max_age_secs`.
pub fn sign_policy_with_max_age(
    key: &SigningKey,
    version: u64,
    issued_at: i64,
    max_age_secs: u64,
    claims: Vec<u8>,
) -> Result<SignedPolicyMessage, KeyError> {
    let signature = key.sign(&to_be_signed(version, issued_at, max_age_secs, &claims))?;
    Ok(SignedPolicyMessage {
        version,
        issued_at,
        claims,
        algorithm: key.algorithm().to_string(),
        signature,
        max_age_secs,
    })
}

/// The same object re-signed as issued at `now` (the service does this each
/// time it serves it, so a peer can tell how fresh its copy is).
pub fn reissue(
    key: &SigningKey,
    object: SignedPolicyMessage,
    now: i64,
) -> Result<SignedPolicyMessage, KeyError> {
    let issued_at = object.issued_at.max(now);
    sign_policy_with_max_age(
        key,
        object.version,
        issued_at,
        object.max_age_secs,
        object.claims,
    )
}

/// Whether a kept copy of `policy` may still be used at `now` (only when the
/// service cannot be reached; a fetched policy is current by definition).
pub fn check_age(policy: &Policy, now: i64) -> Result<(), PolicyObjectError> {
    let age_secs = now.saturating_sub(policy.issued_at());
    let max = i64::try_from(policy.max_age_secs()).unwrap_or(i64::MAX);
    if age_secs > max {
        return Err(PolicyObjectError::TooOld {
            age_secs,
            max_age_secs: policy.max_age_secs(),
        });
    }
    Ok(())
}

/// Verify a policy object (hostile bytes) with `policy_key` and load its
/// statements at `now`. The returned policy carries the object's version
/// and issue time.
pub fn verify_policy(
    bytes: &[u8],
    policy_key: &PublicKey,
    now: i64,
) -> Result<Policy, PolicyObjectError> {
    let msg: SignedPolicyMessage =
        decode_bounded(bytes).map_err(|e| PolicyObjectError::Malformed(e.to_string()))?;
    let tbs = to_be_signed(msg.version, msg.issued_at, msg.max_age_secs, &msg.claims);
    if !policy_key.verify(&msg.algorithm, &tbs, &msg.signature) {
        return Err(PolicyObjectError::BadSignature);
    }
    let seq: SignedClaimSequence =
        decode_bounded(&msg.claims).map_err(|e| PolicyObjectError::Malformed(e.to_string()))?;
    let policy = Policy::load(&seq, policy_key, now).map_err(PolicyObjectError::Policy)?;
    Ok(policy.with_version(msg.version, msg.issued_at, msg.max_age_secs))
}

/// The newest policy version a party has accepted. Pure: the caller keeps
/// it (in memory, or sealed on a device) and asks before using a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyFloor(u64);

impl PolicyFloor {
    /// Start from a remembered version (0: none yet).
    pub fn new(newest: u64) -> Self {
        Self(newest)
    }
    /// The newest version accepted.
    pub fn newest(&self) -> u64 {
        self.0
    }
    /// Accept `policy` if it is not older than the floor, and raise the floor.
    pub fn accept(&mut self, policy: &Policy) -> Result<(), PolicyObjectError> {
        if policy.version() < self.0 {
            return Err(PolicyObjectError::Rollback {
                newest: self.0,
                offered: policy.version(),
            });
        }
        self.0 = policy.version();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certifier::claims::sign_claim;
    use crate::certifier::clause::{key_entity, measurement_entity, says, unary, verb};
    use prost::Message;

    const NOW: i64 = 1_800_000_000;

    fn claims(key: &SigningKey, revoked: &[u8]) -> SignedClaimSequence {
        let pk = key_entity(&key.public_key(), "policyKey");
        let sign = |stmt, d: &str| {
            sign_claim(
                key,
                "policyKey",
                &says(pk.clone(), stmt),
                d,
                NOW - 60,
                NOW + 60,
            )
            .unwrap()
        };
        SignedClaimSequence {
            claims: vec![
                sign(
                    unary(measurement_entity(&[1; 64]), verb::IS_TRUSTED),
                    "role:device",
                ),
                sign(
                    unary(measurement_entity(revoked), verb::IS_REVOKED),
                    "revoked:test",
                ),
            ],
        }
    }

    fn object(key: &SigningKey, version: u64) -> SignedPolicyMessage {
        sign_policy(key, version, NOW, claims(key, &[2; 64]).encode_to_vec()).unwrap()
    }

    #[test]
    fn a_signed_policy_verifies_with_its_key_only() {
        let (key, _) = SigningKey::generate_p256().unwrap();
        let bytes = object(&key, 7).encode_to_vec();
        let p = verify_policy(&bytes, &key.public_key(), NOW).unwrap();
        assert_eq!((p.version(), p.issued_at()), (7, NOW));
        assert!(p.revocation(&[2; 64]).is_some());
        let (other, _) = SigningKey::generate_p256().unwrap();
        assert_eq!(
            verify_policy(&bytes, &other.public_key(), NOW).unwrap_err(),
            PolicyObjectError::BadSignature
        );
    }

    /// The attack of issue 17 item 2: every remaining statement still
    /// verifies on its own, but the object does not.
    #[test]
    fn stripping_a_revocation_breaks_the_object_signature() {
        let (key, _) = SigningKey::generate_p256().unwrap();
        let mut msg = object(&key, 3);
        let mut seq: SignedClaimSequence = decode_bounded(&msg.claims).unwrap();
        seq.claims.pop();
        msg.claims = seq.encode_to_vec();
        let err = verify_policy(&msg.encode_to_vec(), &key.public_key(), NOW).unwrap_err();
        assert_eq!(err, PolicyObjectError::BadSignature);
        assert_eq!(err.code(), "policy-signature");
        // And the version cannot be raised to pass a floor.
        let mut msg = object(&key, 3);
        msg.version = 9;
        assert_eq!(
            verify_policy(&msg.encode_to_vec(), &key.public_key(), NOW).unwrap_err(),
            PolicyObjectError::BadSignature
        );
    }

    #[test]
    fn the_floor_refuses_older_versions_and_rises() {
        let (key, _) = SigningKey::generate_p256().unwrap();
        let load = |v| verify_policy(&object(&key, v).encode_to_vec(), &key.public_key(), NOW);
        let mut floor = PolicyFloor::new(0);
        floor.accept(&load(4).unwrap()).unwrap();
        floor.accept(&load(4).unwrap()).unwrap();
        let err = floor.accept(&load(3).unwrap()).unwrap_err();
        assert_eq!(
            err,
            PolicyObjectError::Rollback {
                newest: 4,
                offered: 3
            }
        );
        assert_eq!(err.code(), "policy-rollback");
        floor.accept(&load(5).unwrap()).unwrap();
        assert_eq!(floor.newest(), 5);
    }

    #[test]
    fn a_kept_copy_is_usable_for_its_signed_max_age_only() {
        let (key, _) = SigningKey::generate_p256().unwrap();
        let msg = sign_policy_with_max_age(&key, 1, NOW, 600, Vec::new()).unwrap();
        let p = verify_policy(&msg.to_bytes(), &key.public_key(), NOW).unwrap();
        check_age(&p, NOW + 600).unwrap();
        let err = check_age(&p, NOW + 601).unwrap_err();
        assert_eq!(err.code(), "policy-too-old");
        // Re-issued later: same version and statements, fresh time.
        let later = reissue(&key, msg.clone(), NOW + 1000).unwrap();
        let q = verify_policy(&later.to_bytes(), &key.public_key(), NOW + 1000).unwrap();
        assert_eq!((q.version(), q.issued_at()), (1, NOW + 1000));
        check_age(&q, NOW + 1500).unwrap();
        // The max age is signed: raising it breaks the signature.
        let mut forged = msg;
        forged.max_age_secs = u64::MAX;
        assert_eq!(
            verify_policy(&forged.to_bytes(), &key.public_key(), NOW).unwrap_err(),
            PolicyObjectError::BadSignature
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let (key, _) = SigningKey::generate_p256().unwrap();
        for bytes in [&b""[..], b"\xff\xff\xff", &[0x1a; 64]] {
            assert!(verify_policy(bytes, &key.public_key(), NOW).is_err());
        }
    }
}
