//! JSON view of Certifier messages, for inspection tools and tests.
//!
//! The rendering follows proto2 presence: only fields present on the wire
//! appear (`Some` fields, non-empty repeated fields), a present-but-empty
//! string or bytes field appears as `""`. Keys are the proto field names,
//! sorted; bytes are lowercase hex; nested messages are objects; repeated
//! fields are arrays; integers and `bool` are JSON numbers / booleans. This is
//! the format of `testdata/certifier/expected/*.full.json`.

use serde_json::{Map, Value};

use super::proto::{
    AcceleratorGroup, AttestationUserData, BufferSequence, ClaimMessage, ClaimsSequence,
    EccMessage, EntityMessage, Environment, Evidence, EvidenceList, EvidencePackage,
    IsletAttestationMessage, KeyMessage, Platform, PointMessage, Properties, Property, ProtoError,
    RsaMessage, SignedClaimMessage, SignedClaimSequence, SignedReport, TrustRequestMessage,
    TrustResponseMessage, VseAttestationReportInfo, VseClause, VseClauses, decode_bounded,
};

/// Proto names of every message [`decode_to_json`] accepts.
pub const MESSAGE_NAMES: &[&str] = &[
    "rsa_message",
    "point_message",
    "ecc_message",
    "key_message",
    "property",
    "properties",
    "platform",
    "environment",
    "entity_message",
    "vse_clause",
    "vse_clauses",
    "claim_message",
    "attestation_user_data",
    "vse_attestation_report_info",
    "signed_report",
    "signed_claim_message",
    "evidence",
    "evidence_list",
    "islet_attestation_message",
    "evidence_package",
    "accelerator_group",
    "trust_request_message",
    "trust_response_message",
    "claims_sequence",
    "signed_claim_sequence",
    "buffer_sequence",
];

/// Key added by [`decode_to_json`] at the top level.
pub const REENCODES_KEY: &str = "reencodes_identically";

/// Decodes `bytes` as the message called `message_name` (proto name, e.g.
/// `"signed_claim_message"`) through [`decode_bounded`] and renders it as
/// JSON (see the module docs), adding `"reencodes_identically"`: whether
/// re-encoding the decoded message gives back exactly `bytes`. It is `false`
/// for unknown fields (dropped), non-canonical field order, repeated
/// occurrences of a non-repeated field, or over-long varints.
pub fn decode_to_json(message_name: &str, bytes: &[u8]) -> Result<Value, ProtoError> {
    match message_name {
        "rsa_message" => render::<RsaMessage>(bytes),
        "point_message" => render::<PointMessage>(bytes),
        "ecc_message" => render::<EccMessage>(bytes),
        "key_message" => render::<KeyMessage>(bytes),
        "property" => render::<Property>(bytes),
        "properties" => render::<Properties>(bytes),
        "platform" => render::<Platform>(bytes),
        "environment" => render::<Environment>(bytes),
        "entity_message" => render::<EntityMessage>(bytes),
        "vse_clause" => render::<VseClause>(bytes),
        "vse_clauses" => render::<VseClauses>(bytes),
        "claim_message" => render::<ClaimMessage>(bytes),
        "attestation_user_data" => render::<AttestationUserData>(bytes),
        "vse_attestation_report_info" => render::<VseAttestationReportInfo>(bytes),
        "signed_report" => render::<SignedReport>(bytes),
        "signed_claim_message" => render::<SignedClaimMessage>(bytes),
        "evidence" => render::<Evidence>(bytes),
        "evidence_list" => render::<EvidenceList>(bytes),
        "islet_attestation_message" => render::<IsletAttestationMessage>(bytes),
        "evidence_package" => render::<EvidencePackage>(bytes),
        "accelerator_group" => render::<AcceleratorGroup>(bytes),
        "trust_request_message" => render::<TrustRequestMessage>(bytes),
        "trust_response_message" => render::<TrustResponseMessage>(bytes),
        "claims_sequence" => render::<ClaimsSequence>(bytes),
        "signed_claim_sequence" => render::<SignedClaimSequence>(bytes),
        "buffer_sequence" => render::<BufferSequence>(bytes),
        other => Err(ProtoError::UnknownMessage(other.to_owned())),
    }
}

fn render<M: prost::Message + Default + ToJson>(bytes: &[u8]) -> Result<Value, ProtoError> {
    let msg: M = decode_bounded(bytes)?;
    let mut map = msg.to_json_map();
    map.insert(
        REENCODES_KEY.to_owned(),
        Value::Bool(msg.encode_to_vec() == bytes),
    );
    map.sort_keys();
    Ok(Value::Object(map))
}

/// Renders a decoded message as a JSON object of its present fields.
pub trait ToJson {
    /// The present fields, keyed by proto field name, sorted.
    fn to_json_map(&self) -> Map<String, Value>;

    /// [`ToJson::to_json_map`] as a [`Value`].
    fn to_json(&self) -> Value {
        Value::Object(self.to_json_map())
    }
}

impl<T: ToJson + ?Sized> ToJson for Box<T> {
    fn to_json_map(&self) -> Map<String, Value> {
        (**self).to_json_map()
    }
}

/// Collects present fields; `done` sorts the keys.
struct Obj(Map<String, Value>);

impl Obj {
    fn new() -> Self {
        Obj(Map::new())
    }

    fn string(mut self, name: &str, v: &Option<String>) -> Self {
        if let Some(s) = v {
            self.0.insert(name.to_owned(), Value::String(s.clone()));
        }
        self
    }

    fn bytes(mut self, name: &str, v: &Option<Vec<u8>>) -> Self {
        if let Some(b) = v {
            self.0
                .insert(name.to_owned(), Value::String(hex::encode(b)));
        }
        self
    }

    fn uint64(mut self, name: &str, v: Option<u64>) -> Self {
        if let Some(n) = v {
            self.0.insert(name.to_owned(), Value::from(n));
        }
        self
    }

    fn boolean(mut self, name: &str, v: Option<bool>) -> Self {
        if let Some(b) = v {
            self.0.insert(name.to_owned(), Value::Bool(b));
        }
        self
    }

    fn message<M: ToJson>(mut self, name: &str, v: &Option<M>) -> Self {
        if let Some(m) = v {
            self.0.insert(name.to_owned(), m.to_json());
        }
        self
    }

    fn messages<M: ToJson>(mut self, name: &str, v: &[M]) -> Self {
        if !v.is_empty() {
            let items = v.iter().map(ToJson::to_json).collect();
            self.0.insert(name.to_owned(), Value::Array(items));
        }
        self
    }

    fn bytes_list(mut self, name: &str, v: &[Vec<u8>]) -> Self {
        if !v.is_empty() {
            let items = v.iter().map(|b| Value::String(hex::encode(b))).collect();
            self.0.insert(name.to_owned(), Value::Array(items));
        }
        self
    }

    fn done(mut self) -> Map<String, Value> {
        self.0.sort_keys();
        self.0
    }
}

impl ToJson for RsaMessage {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .bytes("public_modulus", &self.public_modulus)
            .bytes("public_exponent", &self.public_exponent)
            .bytes("private_exponent", &self.private_exponent)
            .bytes("private_p", &self.private_p)
            .bytes("private_q", &self.private_q)
            .bytes("private_dp", &self.private_dp)
            .bytes("private_dq", &self.private_dq)
            .bytes("private_iqmp", &self.private_iqmp)
            .done()
    }
}

impl ToJson for PointMessage {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new().bytes("x", &self.x).bytes("y", &self.y).done()
    }
}

impl ToJson for EccMessage {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("curve_name", &self.curve_name)
            .bytes("curve_p", &self.curve_p)
            .bytes("curve_a", &self.curve_a)
            .bytes("curve_b", &self.curve_b)
            .message("base_point", &self.base_point)
            .message("public_point", &self.public_point)
            .bytes("order_of_base_point", &self.order_of_base_point)
            .bytes("private_multiplier", &self.private_multiplier)
            .done()
    }
}

impl ToJson for KeyMessage {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("key_name", &self.key_name)
            .string("key_type", &self.key_type)
            .string("key_format", &self.key_format)
            .message("rsa_key", &self.rsa_key)
            .message("ecc_key", &self.ecc_key)
            .bytes("secret_key_bits", &self.secret_key_bits)
            .bytes("certificate", &self.certificate)
            .bytes("other_key_formats", &self.other_key_formats)
            .string("not_before", &self.not_before)
            .string("not_after", &self.not_after)
            .uint64("snp_tcb_version", self.snp_tcb_version)
            .bytes("snp_chipid", &self.snp_chipid)
            .done()
    }
}

impl ToJson for Property {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("property_name", &self.property_name)
            .string("value_type", &self.value_type)
            .string("comparator", &self.comparator)
            .string("string_value", &self.string_value)
            .uint64("int_value", self.int_value)
            .done()
    }
}

impl ToJson for Properties {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new().messages("props", &self.props).done()
    }
}

impl ToJson for Platform {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("platform_type", &self.platform_type)
            .message("attest_key", &self.attest_key)
            .message("props", &self.props)
            .boolean("has_key", self.has_key)
            .done()
    }
}

impl ToJson for Environment {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .message("the_platform", &self.the_platform)
            .bytes("the_measurement", &self.the_measurement)
            .done()
    }
}

impl ToJson for EntityMessage {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("entity_type", &self.entity_type)
            .message("key", &self.key)
            .bytes("measurement", &self.measurement)
            .message("platform_ent", &self.platform_ent)
            .message("environment_ent", &self.environment_ent)
            .bytes("registers", &self.registers)
            .done()
    }
}

impl ToJson for VseClause {
    fn to_json_map(&self) -> Map<String, Value> {
        // Recursion depth is bounded by prost's decode nesting limit (100).
        Obj::new()
            .message("subject", &self.subject)
            .string("verb", &self.verb)
            .message("object", &self.object)
            .message("clause", &self.clause)
            .done()
    }
}

impl ToJson for VseClauses {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new().messages("clauses", &self.clauses).done()
    }
}

impl ToJson for ClaimMessage {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("claim_format", &self.claim_format)
            .string("claim_descriptor", &self.claim_descriptor)
            .string("not_before", &self.not_before)
            .string("not_after", &self.not_after)
            .bytes("serialized_claim", &self.serialized_claim)
            .done()
    }
}

impl ToJson for AttestationUserData {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("enclave_type", &self.enclave_type)
            .string("time", &self.time)
            .message("enclave_key", &self.enclave_key)
            .message("policy_key", &self.policy_key)
            .done()
    }
}

impl ToJson for VseAttestationReportInfo {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("enclave_type", &self.enclave_type)
            .bytes("verified_measurement", &self.verified_measurement)
            .string("not_before", &self.not_before)
            .string("not_after", &self.not_after)
            .bytes("user_data", &self.user_data)
            .done()
    }
}

impl ToJson for SignedReport {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("report_format", &self.report_format)
            .bytes("report", &self.report)
            .message("signing_key", &self.signing_key)
            .string("signing_algorithm", &self.signing_algorithm)
            .bytes("signature", &self.signature)
            .done()
    }
}

impl ToJson for SignedClaimMessage {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .bytes("serialized_claim_message", &self.serialized_claim_message)
            .message("signing_key", &self.signing_key)
            .string("signing_algorithm", &self.signing_algorithm)
            .bytes("signature", &self.signature)
            .done()
    }
}

impl ToJson for Evidence {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("evidence_type", &self.evidence_type)
            .bytes("serialized_evidence", &self.serialized_evidence)
            .done()
    }
}

impl ToJson for EvidenceList {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new().messages("assertion", &self.assertion).done()
    }
}

impl ToJson for IsletAttestationMessage {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .bytes("what_was_said", &self.what_was_said)
            .bytes("reported_attestation", &self.reported_attestation)
            .done()
    }
}

impl ToJson for EvidencePackage {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("prover_type", &self.prover_type)
            .string("enclave_type", &self.enclave_type)
            .messages("fact_assertion", &self.fact_assertion)
            .done()
    }
}

impl ToJson for AcceleratorGroup {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("type", &self.r#type)
            .message("support", &self.support)
            .done()
    }
}

impl ToJson for TrustRequestMessage {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("requesting_enclave_tag", &self.requesting_enclave_tag)
            .string("providing_enclave_tag", &self.providing_enclave_tag)
            .string("submitted_evidence_type", &self.submitted_evidence_type)
            .string("purpose", &self.purpose)
            .message("support", &self.support)
            .messages("accels", &self.accels)
            .done()
    }
}

impl ToJson for TrustResponseMessage {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new()
            .string("status", &self.status)
            .string("requesting_enclave_tag", &self.requesting_enclave_tag)
            .string("providing_enclave_tag", &self.providing_enclave_tag)
            .bytes("artifact", &self.artifact)
            .done()
    }
}

impl ToJson for ClaimsSequence {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new().messages("claims", &self.claims).done()
    }
}

impl ToJson for SignedClaimSequence {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new().messages("claims", &self.claims).done()
    }
}

impl ToJson for BufferSequence {
    fn to_json_map(&self) -> Map<String, Value> {
        Obj::new().bytes_list("block", &self.block).done()
    }
}
