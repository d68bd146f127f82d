//! Strings that select behaviour on the wire. Framework values are used
//! where the framework has one; ours are marked as extensions.

/// `trust_request_message.submitted_evidence_type` for CCA tokens (extension;
/// the framework's only CCA path is `islet-evidence`, which we do not accept
/// because it never checks the platform token).
pub const EVIDENCE_TYPE_CCA: &str = "cca-evidence";
/// `purpose` asking for a fresh nonce (extension). The artifact is the nonce.
pub const PURPOSE_NONCE: &str = "nonce";
/// `purpose` asking for the current signed policy (extension). The artifact
/// is the `signed_claim_sequence`; peers verify it with the policy key and
/// take revocations and platform keys from it.
pub const PURPOSE_POLICY: &str = "policy";
/// `purpose` asking for the signed, versioned policy object (extension;
/// `policy_object`). Peers of ours use this one: the bare sequence can be
/// cut or replayed in transit without any claim failing.
pub const PURPOSE_SIGNED_POLICY: &str = "signed-policy";
/// `purpose` asking for an admission certificate (framework).
pub const PURPOSE_AUTHENTICATION: &str = "authentication";
/// `purpose` asking for the platform rule "policyKey says appKey
/// is-trusted-for-attestation" (framework; framework evidence only).
pub const PURPOSE_ATTESTATION: &str = "attestation";
/// `claim_descriptor` of the platform rule (framework).
pub const PLATFORM_RULE: &str = "platform-rule";
/// `evidence_package.prover_type` (framework).
pub const PROVER_TYPE: &str = "vse-verifier";
/// `evidence_package.enclave_type` for CCA realms (extension).
pub const ENCLAVE_TYPE_CCA_REALM: &str = "cca-realm";
/// Evidence entry holding the nonce the service issued (extension).
pub const FACT_NONCE: &str = "cca-nonce";
/// Evidence entry holding a serialized `attestation_user_data` whose
/// `enclave_key` is the party's auth key (framework's "what was said").
pub const FACT_USER_DATA: &str = "attestation-user-data";
/// Evidence entry holding the CCA token (extension).
pub const FACT_CCA_TOKEN: &str = "cca-token";
/// Evidence entry holding the requested role as UTF-8 (extension).
pub const FACT_ROLE: &str = "requested-role";
/// `trust_response_message.status` on success (framework).
pub const STATUS_SUCCEEDED: &str = "succeeded";
/// `trust_response_message.status` on failure (framework). Our failures
/// carry `<code>: <reason>` as the artifact, which framework clients ignore.
pub const STATUS_FAILED: &str = "failed";
