//! Typed claims of the Arm CCA attestation token.
//!
//! Labels and claim shapes follow the RMM specification (DEN0137, §A.7 "Realm
//! attestation token" and the CCA platform token it embeds) and the CCA EAT
//! profile (draft-ffm-rats-cca-token). Sizes that the profile fixes are types
//! here (`Challenge` is always 64 bytes), so code downstream cannot forget to
//! check them. Nothing in this module does I/O or cryptography.

use std::fmt;

use ciborium::value::Value;

/// CBOR tag of the RMM 1.0 token collection `{44234: platform, 44241: realm}`.
pub const TAG_CCA_TOKEN_399: u64 = 399;
/// CBOR tag of the newer CMW collection form emitted by current TF-RMM/TF-M.
pub const TAG_CCA_TOKEN_907: u64 = 907;
/// CoAP content format `application/eat+cwt`, used in tag-907 CMW records.
pub const CMW_CONTENT_FORMAT_EAT_CWT: u64 = 263;
/// Collection key of the platform token.
pub const LABEL_PLATFORM_TOKEN: i64 = 44234;
/// Collection key of the realm delegated token.
pub const LABEL_REALM_TOKEN: i64 = 44241;

/// Claim labels (RMM §A.7.2.3, CCA platform token profile).
pub mod label {
    /// EAT nonce: realm challenge or platform challenge.
    pub const CHALLENGE: i64 = 10;
    /// EAT profile.
    pub const PROFILE: i64 = 265;
    /// Realm personalization value.
    pub const REALM_PERSONALIZATION_VALUE: i64 = 44235;
    /// Realm hash algorithm id (of RIM and REMs).
    pub const REALM_HASH_ALGO_ID: i64 = 44236;
    /// Realm attestation public key (RAK).
    pub const REALM_PUBLIC_KEY: i64 = 44237;
    /// Realm initial measurement.
    pub const REALM_INITIAL_MEASUREMENT: i64 = 44238;
    /// Realm extensible measurements.
    pub const REALM_EXTENSIBLE_MEASUREMENTS: i64 = 44239;
    /// Hash algorithm used to bind the RAK into the platform challenge.
    pub const REALM_PUBLIC_KEY_HASH_ALGO_ID: i64 = 44240;
    /// Platform instance id (EAT UEID).
    pub const PLATFORM_INSTANCE_ID: i64 = 256;
    /// Platform security lifecycle.
    pub const PLATFORM_LIFECYCLE: i64 = 2395;
    /// Platform implementation id.
    pub const PLATFORM_IMPLEMENTATION_ID: i64 = 2396;
    /// Platform software components.
    pub const PLATFORM_SW_COMPONENTS: i64 = 2399;
    /// Platform verification service indicator.
    pub const PLATFORM_VERIFICATION_SERVICE: i64 = 2400;
    /// Platform configuration.
    pub const PLATFORM_CONFIG: i64 = 2401;
    /// Platform hash algorithm id.
    pub const PLATFORM_HASH_ALGO_ID: i64 = 2402;

    /// Software component: measurement type.
    pub const SWC_MEASUREMENT_TYPE: i64 = 1;
    /// Software component: measurement value.
    pub const SWC_MEASUREMENT_VALUE: i64 = 2;
    /// Software component: version.
    pub const SWC_VERSION: i64 = 4;
    /// Software component: signer id.
    pub const SWC_SIGNER_ID: i64 = 5;
    /// Software component: hash algorithm of the measurement (measurement description).
    pub const SWC_MEASUREMENT_DESCRIPTION: i64 = 6;
}

/// Platform profile of RMM 1.0-era tokens (tag 399).
pub const PLATFORM_PROFILE_LEGACY: &str = "http://arm.com/CCA-SSD/1.0.0";
/// Platform profile of current tokens (draft-ffm-rats-cca-token).
pub const PLATFORM_PROFILE_2023: &str = "tag:arm.com,2023:cca_platform#1.0.0";
/// Realm profile of current tokens.
pub const REALM_PROFILE_2023: &str = "tag:arm.com,2023:realm#1.0.0";

/// Which outer form the token used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// `#6.399({44234: bstr, 44241: bstr})` (RMM 1.0).
    Tag399,
    /// `#6.907({44234: [263, bstr] / bstr, 44241: ...})` (CMW collection).
    Tag907,
}

impl Envelope {
    /// The CBOR tag number.
    pub fn tag(self) -> u64 {
        match self {
            Envelope::Tag399 => TAG_CCA_TOKEN_399,
            Envelope::Tag907 => TAG_CCA_TOKEN_907,
        }
    }
}

/// Hash algorithms a CCA token may name. Anything else is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    /// `"sha-256"`
    Sha256,
    /// `"sha-512"`
    Sha512,
}

impl HashAlgorithm {
    /// Parse the text form used in tokens (`"sha-256"`, `"sha-512"`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha-256" => Some(Self::Sha256),
            "sha-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The text form used in tokens.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha-256",
            Self::Sha512 => "sha-512",
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// Hash `data` with this algorithm.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            Self::Sha256 => &ring::digest::SHA256,
            Self::Sha512 => &ring::digest::SHA512,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }
}

/// The 64-byte realm challenge (claim 10 of the realm token).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Challenge(pub [u8; 64]);

impl Challenge {
    /// Length of every realm challenge.
    pub const LEN: usize = 64;

    /// The challenge bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    /// Parse exactly 128 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("challenge is not hex: {e}"))?;
        let arr: [u8; 64] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "challenge must be exactly 64 bytes (128 hex digits); got {} bytes",
                bytes.len()
            )
        })?;
        Ok(Self(arr))
    }
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Challenge({})", hex::encode(self.0))
    }
}

/// A realm measurement (RIM or REM): a digest whose length the realm hash
/// algorithm fixes (32 bytes for SHA-256, 64 for SHA-512).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Measurement {
    algorithm: HashAlgorithm,
    value: [u8; 64],
}

impl Measurement {
    /// Build a measurement; `None` if `bytes` is not exactly the digest length.
    pub fn new(algorithm: HashAlgorithm, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != algorithm.digest_len() {
            return None;
        }
        let mut value = [0u8; 64];
        value[..bytes.len()].copy_from_slice(bytes);
        Some(Self { algorithm, value })
    }

    /// The digest bytes (32 or 64 of them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.value[..self.algorithm.digest_len()]
    }

    /// The hash algorithm that produced it.
    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    /// Lowercase hex of the digest.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }
}

impl fmt::Debug for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Measurement({}:{})",
            self.algorithm.name(),
            self.to_hex()
        )
    }
}

/// How claim 44237 encoded the realm attestation key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RakEncoding {
    /// Raw SEC1 uncompressed point (RMM 1.0 tokens).
    RawPoint,
    /// A CBOR-encoded COSE_Key (current TF-RMM, Islet).
    CoseKey,
}

/// The realm attestation key (RAK), P-384.
#[derive(Clone, PartialEq, Eq)]
pub struct RealmPublicKey {
    /// The claim bytes exactly as they appear in the token; the platform
    /// challenge is the hash of these bytes.
    pub(crate) claim_bytes: Vec<u8>,
    /// The key as a SEC1 uncompressed P-384 point (97 bytes).
    pub(crate) point: Vec<u8>,
    pub(crate) encoding: RakEncoding,
}

impl RealmPublicKey {
    /// Claim 44237 as it appears in the token.
    pub fn claim_bytes(&self) -> &[u8] {
        &self.claim_bytes
    }
    /// The key as an uncompressed SEC1 point.
    pub fn point(&self) -> &[u8] {
        &self.point
    }
    /// How the token encoded it.
    pub fn encoding(&self) -> RakEncoding {
        self.encoding
    }
}

impl fmt::Debug for RealmPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RealmPublicKey({:?}, {})",
            self.encoding,
            hex::encode(&self.point)
        )
    }
}

/// A claim the parser does not know. CWT requires unknown claims to be
/// ignored for appraisal; we keep them so `inspect` can show them.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherClaim {
    /// The label (an integer or a text string).
    pub label: Value,
    /// The raw CBOR value.
    pub value: Value,
}

/// Claims of the realm delegated token.
#[derive(Debug, Clone, PartialEq)]
pub struct RealmClaims {
    /// Realm profile (265); absent in RMM 1.0 tokens.
    pub profile: Option<String>,
    /// Realm challenge (10).
    pub challenge: Challenge,
    /// Realm personalization value (44235).
    pub personalization_value: [u8; 64],
    /// Hash algorithm of RIM and REMs (44236).
    pub hash_algo: HashAlgorithm,
    /// Realm attestation key (44237).
    pub public_key: RealmPublicKey,
    /// Realm initial measurement (44238).
    pub rim: Measurement,
    /// Realm extensible measurements (44239).
    pub rems: [Measurement; 4],
    /// Hash algorithm that binds the RAK to the platform token (44240).
    pub public_key_hash_algo: HashAlgorithm,
    /// Claims not in the profile.
    pub other: Vec<OtherClaim>,
}

/// One entry of the platform software-components claim (2399).
#[derive(Debug, Clone, PartialEq)]
pub struct SwComponent {
    /// Component type, e.g. "BL", "RMM" (1).
    pub measurement_type: Option<String>,
    /// Measurement of the component (2), mandatory.
    pub measurement_value: Vec<u8>,
    /// Version string (4).
    pub version: Option<String>,
    /// Signer id (5), mandatory.
    pub signer_id: Vec<u8>,
    /// Hash algorithm of the measurement (6).
    pub measurement_description: Option<String>,
    /// Entries not in the profile.
    pub other: Vec<OtherClaim>,
}

/// Claims of the CCA platform token.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformClaims {
    /// Platform profile (265).
    pub profile: String,
    /// Platform challenge (10): hash of the RAK claim bytes.
    pub challenge: Vec<u8>,
    /// Implementation id (2396), 32 bytes.
    pub implementation_id: [u8; 32],
    /// Instance id (256): UEID, type byte 0x01 + 32 bytes.
    pub instance_id: [u8; 33],
    /// Platform configuration (2401).
    pub config: Vec<u8>,
    /// Security lifecycle (2395).
    pub lifecycle: u16,
    /// Software components (2399).
    pub sw_components: Vec<SwComponent>,
    /// Verification service indicator (2400).
    pub verification_service: Option<String>,
    /// Platform hash algorithm id (2402).
    pub hash_algo: Option<String>,
    /// Claims not in the profile.
    pub other: Vec<OtherClaim>,
}

/// PSA/CCA security lifecycle states. Only "secured" is trustworthy.
pub mod lifecycle {
    /// First value of the "secured" range.
    pub const SECURED_MIN: u16 = 0x3000;
    /// Last value of the "secured" range.
    pub const SECURED_MAX: u16 = 0x30ff;

    /// Is `state` in the secured range (0x3000..=0x30ff)?
    pub fn is_secured(state: u16) -> bool {
        (SECURED_MIN..=SECURED_MAX).contains(&state)
    }

    /// Human name of the lifecycle range `state` falls in.
    pub fn name(state: u16) -> &'static str {
        match state >> 8 {
            0x00 => "unknown",
            0x10 => "assembly-and-test",
            0x20 => "psa-rot-provisioning",
            0x30 => "secured",
            0x40 => "non-psa-rot-debug",
            0x50 => "recoverable-psa-rot-debug",
            0x60 => "decommissioned",
            _ => "invalid",
        }
    }
}
