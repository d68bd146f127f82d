//! Native Rust versions of the Certifier Framework's protobuf messages.
//!
//! Hand-written `prost` structs (no `build.rs`, no `protoc`) that are
//! wire-compatible with the upstream `certifier.proto` (proto2, no package;
//! Apache-2.0 — provenance in `testdata/certifier/LICENSE-NOTE.md`). Only the
//! messages this crate needs are mirrored; tags and types match the proto
//! exactly, and proto2 explicit presence is kept: every `optional` field is an
//! [`Option`], so "absent" and "present but empty" stay distinct and re-encode
//! as they were received. Rust names are the proto names in CamelCase
//! (`key_message` → [`KeyMessage`]); field names are the proto field names.
//!
//! Unknown fields are skipped on decode and therefore not re-encoded.
//!
//! Bytes from outside the process (network, files) must be decoded with
//! [`decode_bounded`], which refuses inputs larger than [`MAX_MESSAGE_SIZE`]
//! before `prost` sees them and never panics. `prost` itself limits message
//! nesting (e.g. the recursive [`VseClause`]) to 100 levels.

use thiserror::Error;

/// Largest serialized message [`decode_bounded`] accepts (1 MiB). Real
/// Certifier messages are a few kilobytes; the upstream Go service would
/// accept up to 2^24 − 1 bytes per frame, which we do not need.
pub const MAX_MESSAGE_SIZE: usize = 1 << 20;

/// Why bytes could not be turned into a Certifier message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The input is longer than the allowed limit; nothing was decoded.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Length of the input in bytes.
        size: usize,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The bytes are not a valid encoding of the message.
    #[error("protobuf decode error: {0}")]
    Decode(String),
    /// The message name is not one this crate knows.
    #[error("unknown certifier message type {0:?}")]
    UnknownMessage(String),
}

impl From<prost::DecodeError> for ProtoError {
    fn from(e: prost::DecodeError) -> Self {
        ProtoError::Decode(e.to_string())
    }
}

/// Decodes `bytes` as `M`, refusing inputs longer than [`MAX_MESSAGE_SIZE`]
/// before any parsing. Use this for every byte string not produced by this
/// process.
pub fn decode_bounded<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, ProtoError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(ProtoError::TooLarge {
            size: bytes.len(),
            limit: MAX_MESSAGE_SIZE,
        });
    }
    Ok(M::decode(bytes)?)
}

/// `rsa_message`: RSA key material as unsigned big-endian integers without
/// leading zero padding.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RsaMessage {
    /// n.
    #[prost(bytes = "vec", optional, tag = "1")]
    pub public_modulus: Option<Vec<u8>>,
    /// e.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub public_exponent: Option<Vec<u8>>,
    /// d.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub private_exponent: Option<Vec<u8>>,
    /// p.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub private_p: Option<Vec<u8>>,
    /// q.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub private_q: Option<Vec<u8>>,
    /// d mod (p − 1).
    #[prost(bytes = "vec", optional, tag = "6")]
    pub private_dp: Option<Vec<u8>>,
    /// d mod (q − 1).
    #[prost(bytes = "vec", optional, tag = "7")]
    pub private_dq: Option<Vec<u8>>,
    /// q⁻¹ mod p.
    #[prost(bytes = "vec", optional, tag = "8")]
    pub private_iqmp: Option<Vec<u8>>,
}

/// `point_message`: an elliptic-curve point.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PointMessage {
    /// x coordinate.
    #[prost(bytes = "vec", optional, tag = "1")]
    pub x: Option<Vec<u8>>,
    /// y coordinate.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub y: Option<Vec<u8>>,
}

/// `ecc_message`: an elliptic-curve key with its curve parameters.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EccMessage {
    /// Curve name, e.g. `"P-384"`.
    #[prost(string, optional, tag = "1")]
    pub curve_name: Option<String>,
    /// Field prime.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub curve_p: Option<Vec<u8>>,
    /// Curve coefficient a.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub curve_a: Option<Vec<u8>>,
    /// Curve coefficient b.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub curve_b: Option<Vec<u8>>,
    /// Generator.
    #[prost(message, optional, tag = "5")]
    pub base_point: Option<PointMessage>,
    /// Public point.
    #[prost(message, optional, tag = "6")]
    pub public_point: Option<PointMessage>,
    /// Order of the generator.
    #[prost(bytes = "vec", optional, tag = "7")]
    pub order_of_base_point: Option<Vec<u8>>,
    /// Private scalar.
    #[prost(bytes = "vec", optional, tag = "8")]
    pub private_multiplier: Option<Vec<u8>>,
}

/// `key_message`: a named key (`policyKey`, `platformKey`, `attestKey`, ...).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyMessage {
    /// Key name.
    #[prost(string, optional, tag = "1")]
    pub key_name: Option<String>,
    /// Key type, e.g. `"rsa-2048-public"`.
    #[prost(string, optional, tag = "2")]
    pub key_type: Option<String>,
    /// Key format, normally `"vse-key"`.
    #[prost(string, optional, tag = "3")]
    pub key_format: Option<String>,
    /// RSA material.
    #[prost(message, optional, tag = "4")]
    pub rsa_key: Option<RsaMessage>,
    /// ECC material.
    #[prost(message, optional, tag = "5")]
    pub ecc_key: Option<EccMessage>,
    /// Symmetric key bits.
    #[prost(bytes = "vec", optional, tag = "6")]
    pub secret_key_bits: Option<Vec<u8>>,
    /// DER X.509 certificate for the key.
    #[prost(bytes = "vec", optional, tag = "7")]
    pub certificate: Option<Vec<u8>>,
    /// Other encodings of the key.
    #[prost(bytes = "vec", optional, tag = "8")]
    pub other_key_formats: Option<Vec<u8>>,
    /// Validity start (time string).
    #[prost(string, optional, tag = "9")]
    pub not_before: Option<String>,
    /// Validity end (time string).
    #[prost(string, optional, tag = "10")]
    pub not_after: Option<String>,
    /// SEV-SNP VCEK TCB version.
    #[prost(uint64, optional, tag = "11")]
    pub snp_tcb_version: Option<u64>,
    /// SEV-SNP chip id.
    #[prost(bytes = "vec", optional, tag = "12")]
    pub snp_chipid: Option<Vec<u8>>,
}

/// `property`: one platform property or property requirement.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Property {
    /// Property name.
    #[prost(string, optional, tag = "1")]
    pub property_name: Option<String>,
    /// `"string"` or `"int"`.
    #[prost(string, optional, tag = "2")]
    pub value_type: Option<String>,
    /// Comparator, e.g. `"="` or `">="`.
    #[prost(string, optional, tag = "3")]
    pub comparator: Option<String>,
    /// String value.
    #[prost(string, optional, tag = "4")]
    pub string_value: Option<String>,
    /// Integer value.
    #[prost(uint64, optional, tag = "5")]
    pub int_value: Option<u64>,
}

/// `properties`: a list of [`Property`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Properties {
    /// The properties.
    #[prost(message, repeated, tag = "1")]
    pub props: Vec<Property>,
}

/// `platform`: a platform type with its attestation key and properties.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Platform {
    /// Platform type, e.g. `"amd-sev-snp"`.
    #[prost(string, optional, tag = "1")]
    pub platform_type: Option<String>,
    /// The platform's attestation key.
    #[prost(message, optional, tag = "2")]
    pub attest_key: Option<KeyMessage>,
    /// Platform properties.
    #[prost(message, optional, tag = "3")]
    pub props: Option<Properties>,
    /// Whether `attest_key` is meaningful.
    #[prost(bool, optional, tag = "4")]
    pub has_key: Option<bool>,
}

/// `environment`: a platform plus a measurement.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Environment {
    /// The platform.
    #[prost(message, optional, tag = "1")]
    pub the_platform: Option<Platform>,
    /// The measurement.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub the_measurement: Option<Vec<u8>>,
}

/// `entity_message`: the subject or object of a clause.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntityMessage {
    /// `"key"`, `"measurement"`, `"platform"` or `"environment"`.
    #[prost(string, optional, tag = "1")]
    pub entity_type: Option<String>,
    /// The key, for key entities.
    #[prost(message, optional, tag = "2")]
    pub key: Option<KeyMessage>,
    /// Raw measurement bytes, for measurement entities.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub measurement: Option<Vec<u8>>,
    /// The platform, for platform entities.
    #[prost(message, optional, tag = "4")]
    pub platform_ent: Option<Platform>,
    /// The environment, for environment entities.
    #[prost(message, optional, tag = "5")]
    pub environment_ent: Option<Environment>,
    /// Optional registers accompanying a measurement.
    #[prost(bytes = "vec", optional, tag = "6")]
    pub registers: Option<Vec<u8>>,
}

/// `vse_clause`: a statement "subject verb [object]" or "subject says clause".
#[derive(Clone, PartialEq, prost::Message)]
pub struct VseClause {
    /// Subject.
    #[prost(message, optional, tag = "1")]
    pub subject: Option<EntityMessage>,
    /// Verb, e.g. `"is-trusted"`, `"says"`, `"speaks-for"`.
    #[prost(string, optional, tag = "2")]
    pub verb: Option<String>,
    /// Object, for binary clauses.
    #[prost(message, optional, tag = "3")]
    pub object: Option<EntityMessage>,
    /// Inner clause, for indirect ("says") clauses.
    #[prost(message, optional, boxed, tag = "4")]
    pub clause: Option<Box<VseClause>>,
}

/// `vse_clauses`: a list of [`VseClause`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct VseClauses {
    /// The clauses.
    #[prost(message, repeated, tag = "1")]
    pub clauses: Vec<VseClause>,
}

/// `claim_message`: a serialized clause with format and validity window.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClaimMessage {
    /// `"vse-clause"` (or `"vse-attestation"`).
    #[prost(string, optional, tag = "1")]
    pub claim_format: Option<String>,
    /// Free-form description.
    #[prost(string, optional, tag = "2")]
    pub claim_descriptor: Option<String>,
    /// Validity start (time string).
    #[prost(string, optional, tag = "3")]
    pub not_before: Option<String>,
    /// Validity end (time string).
    #[prost(string, optional, tag = "4")]
    pub not_after: Option<String>,
    /// Serialized [`VseClause`].
    #[prost(bytes = "vec", optional, tag = "5")]
    pub serialized_claim: Option<Vec<u8>>,
}

/// `attestation_user_data`: what an enclave attests to ("what_was_said").
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttestationUserData {
    /// Enclave type, e.g. `"simulated-enclave"`.
    #[prost(string, optional, tag = "1")]
    pub enclave_type: Option<String>,
    /// Time of the attestation (time string).
    #[prost(string, optional, tag = "2")]
    pub time: Option<String>,
    /// The enclave's public key.
    #[prost(message, optional, tag = "3")]
    pub enclave_key: Option<KeyMessage>,
    /// The policy key, if included.
    #[prost(message, optional, tag = "4")]
    pub policy_key: Option<KeyMessage>,
}

/// `vse_attestation_report_info`: body of a simulated-enclave report.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VseAttestationReportInfo {
    /// Enclave type.
    #[prost(string, optional, tag = "1")]
    pub enclave_type: Option<String>,
    /// The measurement the attester vouches for.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub verified_measurement: Option<Vec<u8>>,
    /// Validity start (time string).
    #[prost(string, optional, tag = "3")]
    pub not_before: Option<String>,
    /// Validity end (time string).
    #[prost(string, optional, tag = "4")]
    pub not_after: Option<String>,
    /// Serialized [`AttestationUserData`].
    #[prost(bytes = "vec", optional, tag = "5")]
    pub user_data: Option<Vec<u8>>,
}

/// `signed_report`: a report and the signature over its bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignedReport {
    /// `"vse-attestation-report"`.
    #[prost(string, optional, tag = "1")]
    pub report_format: Option<String>,
    /// Serialized [`VseAttestationReportInfo`].
    #[prost(bytes = "vec", optional, tag = "2")]
    pub report: Option<Vec<u8>>,
    /// The signer's public key.
    #[prost(message, optional, tag = "3")]
    pub signing_key: Option<KeyMessage>,
    /// Signature algorithm name.
    #[prost(string, optional, tag = "4")]
    pub signing_algorithm: Option<String>,
    /// Signature over `report`.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub signature: Option<Vec<u8>>,
}

/// `signed_claim_message`: a serialized [`ClaimMessage`] and the signature
/// over exactly those bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignedClaimMessage {
    /// Serialized [`ClaimMessage`] (the signed bytes).
    #[prost(bytes = "vec", optional, tag = "1")]
    pub serialized_claim_message: Option<Vec<u8>>,
    /// The signer's public key.
    #[prost(message, optional, tag = "2")]
    pub signing_key: Option<KeyMessage>,
    /// Signature algorithm name, e.g. `"rsa-2048-sha256-pkcs-sign"`.
    #[prost(string, optional, tag = "3")]
    pub signing_algorithm: Option<String>,
    /// Signature over `serialized_claim_message`.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub signature: Option<Vec<u8>>,
}

/// `evidence`: one typed piece of evidence.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Evidence {
    /// Evidence type, e.g. `"signed-claim"`, `"islet-attestation"`.
    #[prost(string, optional, tag = "1")]
    pub evidence_type: Option<String>,
    /// The serialized evidence.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub serialized_evidence: Option<Vec<u8>>,
}

/// `evidence_list`: a list of [`Evidence`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct EvidenceList {
    /// The evidence.
    #[prost(message, repeated, tag = "1")]
    pub assertion: Vec<Evidence>,
}

/// `islet_attestation_message`: Arm CCA (Islet) attestation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IsletAttestationMessage {
    /// Serialized [`AttestationUserData`].
    #[prost(bytes = "vec", optional, tag = "1")]
    pub what_was_said: Option<Vec<u8>>,
    /// The Islet/CCA report bytes.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub reported_attestation: Option<Vec<u8>>,
}

/// `evidence_package`: all evidence submitted with a trust request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EvidencePackage {
    /// `"vse-verifier"`.
    #[prost(string, optional, tag = "1")]
    pub prover_type: Option<String>,
    /// Attesting enclave type.
    #[prost(string, optional, tag = "2")]
    pub enclave_type: Option<String>,
    /// Evidence, platform evidence first, attestation last.
    #[prost(message, repeated, tag = "3")]
    pub fact_assertion: Vec<Evidence>,
}

/// `accelerator_group`: evidence for an accelerator (GPU).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AcceleratorGroup {
    /// Accelerator type (proto field `type`).
    #[prost(string, optional, tag = "1")]
    pub r#type: Option<String>,
    /// Its evidence.
    #[prost(message, optional, tag = "2")]
    pub support: Option<EvidencePackage>,
}

/// `trust_request_message`: client → Certifier Service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrustRequestMessage {
    /// Echoed back in the response.
    #[prost(string, optional, tag = "1")]
    pub requesting_enclave_tag: Option<String>,
    /// Echoed back in the response.
    #[prost(string, optional, tag = "2")]
    pub providing_enclave_tag: Option<String>,
    /// Selects the verifier, e.g. `"vse-attestation-package"`.
    #[prost(string, optional, tag = "3")]
    pub submitted_evidence_type: Option<String>,
    /// `"authentication"` or `"attestation"`.
    #[prost(string, optional, tag = "4")]
    pub purpose: Option<String>,
    /// The evidence.
    #[prost(message, optional, tag = "5")]
    pub support: Option<EvidencePackage>,
    /// Accelerator evidence.
    #[prost(message, repeated, tag = "6")]
    pub accels: Vec<AcceleratorGroup>,
}

/// `trust_response_message`: Certifier Service → client.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrustResponseMessage {
    /// `"succeeded"` or `"failed"`.
    #[prost(string, optional, tag = "1")]
    pub status: Option<String>,
    /// Copied from the request.
    #[prost(string, optional, tag = "2")]
    pub requesting_enclave_tag: Option<String>,
    /// Copied from the request.
    #[prost(string, optional, tag = "3")]
    pub providing_enclave_tag: Option<String>,
    /// Admission certificate (DER) or serialized platform rule.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub artifact: Option<Vec<u8>>,
}

/// `claims_sequence`: a list of [`ClaimMessage`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClaimsSequence {
    /// The claims.
    #[prost(message, repeated, tag = "1")]
    pub claims: Vec<ClaimMessage>,
}

/// `signed_claim_sequence`: a list of [`SignedClaimMessage`] (a policy file).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignedClaimSequence {
    /// The signed claims.
    #[prost(message, repeated, tag = "1")]
    pub claims: Vec<SignedClaimMessage>,
}

impl SignedClaimSequence {
    /// The wire encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}

/// `buffer_sequence`: a list of byte strings (same wire form as
/// [`SignedClaimSequence`] when the blocks are serialized signed claims).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BufferSequence {
    /// The blocks.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub block: Vec<Vec<u8>>,
}
