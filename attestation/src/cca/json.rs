//! Claims as JSON, with the claim names of the CCA EAT profile as Veraison
//! writes them, grouped under "platform" and "realm"; binary values as
//! lowercase hex. Claims outside the profile appear under "other-claims",
//! keyed by their label.

use ciborium::value::Value;
use serde_json::{Map, Value as Json, json};

use super::parse::CcaToken;
use super::types::{OtherClaim, PlatformClaims, RealmClaims, SwComponent};

/// The whole token: envelope tag, platform claims, realm claims.
pub fn token_to_json(token: &CcaToken) -> Json {
    json!({
        "envelope-tag": token.envelope().tag(),
        "platform": platform_to_json(token.platform().claims()),
        "realm": realm_to_json(token.realm().claims()),
    })
}

/// Realm claims.
pub fn realm_to_json(c: &RealmClaims) -> Json {
    let mut m = Map::new();
    if let Some(p) = &c.profile {
        m.insert("cca-realm-profile".into(), json!(p));
    }
    m.insert(
        "cca-realm-challenge".into(),
        json!(hex::encode(c.challenge.as_bytes())),
    );
    m.insert(
        "cca-realm-personalization-value".into(),
        json!(hex::encode(c.personalization_value)),
    );
    m.insert("cca-realm-hash-algo-id".into(), json!(c.hash_algo.name()));
    m.insert(
        "cca-realm-public-key".into(),
        json!(hex::encode(c.public_key.claim_bytes())),
    );
    m.insert(
        "cca-realm-initial-measurement".into(),
        json!(c.rim.to_hex()),
    );
    m.insert(
        "cca-realm-extensible-measurements".into(),
        Json::Array(c.rems.iter().map(|r| json!(r.to_hex())).collect()),
    );
    m.insert(
        "cca-realm-public-key-hash-algo-id".into(),
        json!(c.public_key_hash_algo.name()),
    );
    insert_other(&mut m, &c.other);
    Json::Object(m)
}

/// Platform claims.
pub fn platform_to_json(c: &PlatformClaims) -> Json {
    let mut m = Map::new();
    m.insert("cca-platform-profile".into(), json!(c.profile));
    m.insert(
        "cca-platform-challenge".into(),
        json!(hex::encode(&c.challenge)),
    );
    m.insert(
        "cca-platform-implementation-id".into(),
        json!(hex::encode(c.implementation_id)),
    );
    m.insert(
        "cca-platform-instance-id".into(),
        json!(hex::encode(c.instance_id)),
    );
    m.insert("cca-platform-config".into(), json!(hex::encode(&c.config)));
    m.insert("cca-platform-lifecycle".into(), json!(c.lifecycle));
    if let Some(h) = &c.hash_algo {
        m.insert("cca-platform-hash-algo-id".into(), json!(h));
    }
    m.insert(
        "cca-platform-sw-components".into(),
        Json::Array(c.sw_components.iter().map(sw_component_to_json).collect()),
    );
    if let Some(v) = &c.verification_service {
        m.insert("cca-platform-service-indicator".into(), json!(v));
    }
    insert_other(&mut m, &c.other);
    Json::Object(m)
}

fn sw_component_to_json(c: &SwComponent) -> Json {
    let mut m = Map::new();
    if let Some(t) = &c.measurement_type {
        m.insert("measurement-type".into(), json!(t));
    }
    m.insert(
        "measurement-value".into(),
        json!(hex::encode(&c.measurement_value)),
    );
    if let Some(v) = &c.version {
        m.insert("version".into(), json!(v));
    }
    m.insert("signer-id".into(), json!(hex::encode(&c.signer_id)));
    if let Some(d) = &c.measurement_description {
        m.insert("measurement-description".into(), json!(d));
    }
    for o in &c.other {
        m.insert(label_key(&o.label), cbor_to_json(&o.value));
    }
    Json::Object(m)
}

fn insert_other(m: &mut Map<String, Json>, other: &[OtherClaim]) {
    if other.is_empty() {
        return;
    }
    let o: Map<String, Json> = other
        .iter()
        .map(|c| (label_key(&c.label), cbor_to_json(&c.value)))
        .collect();
    m.insert("other-claims".into(), Json::Object(o));
}

fn label_key(label: &Value) -> String {
    match label {
        Value::Integer(i) => i128::from(*i).to_string(),
        Value::Text(t) => t.clone(),
        other => cbor_to_json(other).to_string(),
    }
}

/// Any CBOR value as JSON: bytes as hex, tags as `{"tag": n, "value": v}`.
pub fn cbor_to_json(v: &Value) -> Json {
    match v {
        Value::Integer(i) => {
            let n = i128::from(*i);
            i64::try_from(n)
                .map(Json::from)
                .or_else(|_| u64::try_from(n).map(Json::from))
                .unwrap_or_else(|_| json!(n.to_string()))
        }
        Value::Bytes(b) => json!(hex::encode(b)),
        Value::Float(f) => json!(f),
        Value::Text(t) => json!(t),
        Value::Bool(b) => json!(b),
        Value::Null => Json::Null,
        Value::Tag(t, inner) => json!({"tag": t, "value": cbor_to_json(inner)}),
        Value::Array(items) => Json::Array(items.iter().map(cbor_to_json).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (label_key(k), cbor_to_json(v)))
                .collect(),
        ),
        _ => json!("(unsupported CBOR simple value)"),
    }
}
