//! Errors of the CCA token layer. Every variant names the check that failed,
//! so callers (and tests) can match on the reason instead of on text.

use thiserror::Error;

use super::cbor::CborError;

/// Which part of the token an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The outer collection (tag 399 / 907).
    Collection,
    /// The CCA platform token.
    Platform,
    /// The realm delegated token.
    Realm,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Collection => "token collection",
            Part::Platform => "platform token",
            Part::Realm => "realm token",
        })
    }
}

/// A token that cannot be decoded into typed claims.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The bytes are not acceptable CBOR.
    #[error("{part}: {source}")]
    Cbor {
        /// Where.
        part: Part,
        /// What was wrong with the encoding.
        #[source]
        source: CborError,
    },
    /// The input is larger than any token we accept.
    #[error("token is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Input size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The outer item is not tag 399 or 907.
    #[error(
        "outer CBOR item is {}; expected tag 399 (RMM 1.0) or 907 (CMW collection)",
        .found.map_or_else(|| "untagged".to_string(), |t| format!("tag {t}"))
    )]
    UnknownTag {
        /// The tag found, if any.
        found: Option<u64>,
    },
    /// The collection does not have the expected shape.
    #[error("token collection: {0}")]
    Collection(&'static str),
    /// The COSE_Sign1 envelope is malformed.
    #[error("{part}: malformed COSE_Sign1: {detail}")]
    CoseStructure {
        /// Where.
        part: Part,
        /// What.
        detail: String,
    },
    /// The signature algorithm is not in the protected header.
    #[error("{part}: signature algorithm is not in the protected header")]
    AlgorithmNotProtected {
        /// Where.
        part: Part,
    },
    /// The signature algorithm is not one we accept for this part.
    #[error("{part}: unsupported signature algorithm {alg}")]
    UnsupportedAlgorithm {
        /// Where.
        part: Part,
        /// The COSE algorithm, as text.
        alg: String,
    },
    /// The protected header marks parameters as critical (we understand none).
    #[error("{part}: COSE header lists critical parameters we do not understand: {labels}")]
    CriticalHeader {
        /// Where.
        part: Part,
        /// The critical labels.
        labels: String,
    },
    /// The payload is detached or missing.
    #[error("{part}: COSE_Sign1 has no payload")]
    MissingPayload {
        /// Where.
        part: Part,
    },
    /// A mandatory claim is absent.
    #[error("{part}: missing mandatory claim {label} ({name})")]
    MissingClaim {
        /// Where.
        part: Part,
        /// Claim label.
        label: i64,
        /// Veraison claim name.
        name: &'static str,
    },
    /// A claim has the wrong CBOR type.
    #[error("{part}: claim {label} ({name}) must be {expected}")]
    ClaimType {
        /// Where.
        part: Part,
        /// Claim label.
        label: i64,
        /// Veraison claim name.
        name: &'static str,
        /// Expected type.
        expected: &'static str,
    },
    /// A claim has the wrong length.
    #[error("{part}: claim {label} ({name}) has length {actual}; expected {expected}")]
    ClaimLength {
        /// Where.
        part: Part,
        /// Claim label.
        label: i64,
        /// Veraison claim name.
        name: &'static str,
        /// What the profile allows.
        expected: String,
        /// What the token had.
        actual: usize,
    },
    /// A hash algorithm id that the profile does not allow.
    #[error(
        "{part}: claim {label} names unsupported hash algorithm {found:?} (allowed: sha-256, sha-512)"
    )]
    UnsupportedHashAlgorithm {
        /// Where.
        part: Part,
        /// Claim label.
        label: i64,
        /// The name found.
        found: String,
    },
    /// The profile claim names a profile we do not implement.
    #[error("{part}: unknown profile {found:?}")]
    UnknownProfile {
        /// Where.
        part: Part,
        /// The profile found.
        found: String,
    },
    /// The realm attestation key cannot be decoded.
    #[error("realm token: realm public key (44237) is not a P-384 key: {0}")]
    BadRealmKey(&'static str),
}

impl ParseError {
    /// A short stable name of the failed check, e.g. `cbor-duplicate-key`.
    pub fn check(&self) -> &'static str {
        match self {
            ParseError::Cbor { source, .. } => match source {
                CborError::Truncated { .. } => "cbor-truncated",
                CborError::LengthExceedsInput { .. } => "cbor-length-exceeds-input",
                CborError::IndefiniteLength { .. } => "cbor-indefinite-length",
                CborError::Malformed { .. } => "cbor-malformed",
                CborError::TooDeep { .. } => "cbor-nesting-too-deep",
                CborError::TrailingBytes { .. } => "cbor-trailing-bytes",
                CborError::DuplicateKey { .. } => "cbor-duplicate-key",
                CborError::UnexpectedTag { .. } => "cbor-unexpected-tag",
                _ => "cbor-decode",
            },
            ParseError::TooLarge { .. } => "token-too-large",
            ParseError::UnknownTag { .. } => "collection-tag",
            ParseError::Collection(_) => "collection-shape",
            ParseError::CoseStructure { .. } => "cose-structure",
            ParseError::AlgorithmNotProtected { .. } => "cose-alg-not-protected",
            ParseError::UnsupportedAlgorithm { .. } => "cose-unsupported-alg",
            ParseError::CriticalHeader { .. } => "cose-critical-header",
            ParseError::MissingPayload { .. } => "cose-missing-payload",
            ParseError::MissingClaim { .. } => "claim-missing",
            ParseError::ClaimType { .. } => "claim-type",
            ParseError::ClaimLength { .. } => "claim-length",
            ParseError::UnsupportedHashAlgorithm { .. } => "claim-hash-algorithm",
            ParseError::UnknownProfile { .. } => "claim-profile",
            ParseError::BadRealmKey(_) => "claim-realm-public-key",
        }
    }
}

/// A token that decoded but does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token could not be decoded.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The realm token signature does not verify with the RAK it carries.
    #[error("realm token signature does not verify with the realm public key (44237)")]
    RealmSignature,
    /// The platform token signature does not verify with the given CPAK.
    #[error("platform token signature does not verify with the given platform key (CPAK)")]
    PlatformSignature,
    /// The platform signature algorithm does not match the CPAK's curve.
    #[error("platform token is signed with {token_alg} but the given platform key is {key_alg}")]
    PlatformKeyMismatch {
        /// Algorithm in the token.
        token_alg: &'static str,
        /// Algorithm of the key.
        key_alg: &'static str,
    },
    /// The platform challenge is not the hash of the RAK claim bytes.
    #[error(
        "platform challenge (10) is not the {alg} hash of the realm public key (44237): the realm token is not bound to this platform token"
    )]
    RakBinding {
        /// The hash algorithm named by 44240.
        alg: &'static str,
    },
    /// The realm challenge differs from the one the verifier expected.
    #[error("realm challenge (10) does not match the expected challenge")]
    ChallengeMismatch,
    /// The platform is not in a secured lifecycle state.
    #[error("platform lifecycle {state:#06x} ({name}) is not a secured state (0x3000-0x30ff)")]
    LifecycleNotSecured {
        /// The lifecycle claim.
        state: u16,
        /// Its range name.
        name: &'static str,
    },
}

impl VerifyError {
    /// A short stable name of the failed check, e.g. `realm-signature`.
    pub fn check(&self) -> &'static str {
        match self {
            VerifyError::Parse(p) => p.check(),
            VerifyError::RealmSignature => "realm-signature",
            VerifyError::PlatformSignature => "platform-signature",
            VerifyError::PlatformKeyMismatch { .. } => "platform-key-algorithm",
            VerifyError::RakBinding { .. } => "platform-challenge-binds-rak",
            VerifyError::ChallengeMismatch => "realm-challenge",
            VerifyError::LifecycleNotSecured { .. } => "platform-lifecycle",
        }
    }
}
