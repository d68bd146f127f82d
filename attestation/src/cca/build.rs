//! Typed claims → signed token bytes. The inverse of `parse`, used by the
//! INSECURE emulated platform and by tests that need well-formed tokens with
//! one thing changed. Producing a token proves nothing: only `verify` does.

use ciborium::value::Value;
use coset::{CborSerializable, CoseKeyBuilder, CoseSign1Builder, HeaderBuilder, iana};
use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;

use super::parse::SignatureAlgorithm;
use super::types::*;

/// Errors while producing a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The signing key refused to sign (should not happen with a valid key).
    #[error("signing failed")]
    Signing,
    /// CBOR encoding failed.
    #[error("CBOR encoding failed: {0}")]
    Encoding(String),
    /// The point is not an uncompressed P-384 point.
    #[error("realm public key must be a 97-byte uncompressed P-384 point")]
    BadPoint,
}

/// A key that signs one half of a token.
#[derive(Debug)]
pub struct Signer<'a> {
    /// ES256 or ES384; must match the key.
    pub algorithm: SignatureAlgorithm,
    /// The private key.
    pub key: &'a EcdsaKeyPair,
}

/// Build a `RealmPublicKey` claim from a P-384 point in the given encoding.
pub fn realm_public_key(point: &[u8], encoding: RakEncoding) -> Result<RealmPublicKey, BuildError> {
    if point.len() != 97 || point[0] != 0x04 {
        return Err(BuildError::BadPoint);
    }
    let claim_bytes = match encoding {
        RakEncoding::RawPoint => point.to_vec(),
        RakEncoding::CoseKey => CoseKeyBuilder::new_ec2_pub_key(
            iana::EllipticCurve::P_384,
            point[1..49].to_vec(),
            point[49..].to_vec(),
        )
        .build()
        .to_vec()
        .map_err(|e| BuildError::Encoding(e.to_string()))?,
    };
    Ok(RealmPublicKey {
        claim_bytes,
        point: point.to_vec(),
        encoding,
    })
}

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

fn push_other(map: &mut Vec<(Value, Value)>, other: &[OtherClaim]) {
    map.extend(other.iter().map(|o| (o.label.clone(), o.value.clone())));
}

/// CBOR claims map of a realm token.
pub fn encode_realm_claims(c: &RealmClaims) -> Result<Vec<u8>, BuildError> {
    let mut m = Vec::new();
    if let Some(p) = &c.profile {
        m.push((int(label::PROFILE), Value::Text(p.clone())));
    }
    m.push((int(label::CHALLENGE), Value::Bytes(c.challenge.0.to_vec())));
    m.push((
        int(label::REALM_PERSONALIZATION_VALUE),
        Value::Bytes(c.personalization_value.to_vec()),
    ));
    m.push((
        int(label::REALM_HASH_ALGO_ID),
        Value::Text(c.hash_algo.name().into()),
    ));
    m.push((
        int(label::REALM_PUBLIC_KEY),
        Value::Bytes(c.public_key.claim_bytes.clone()),
    ));
    m.push((
        int(label::REALM_INITIAL_MEASUREMENT),
        Value::Bytes(c.rim.as_bytes().to_vec()),
    ));
    m.push((
        int(label::REALM_EXTENSIBLE_MEASUREMENTS),
        Value::Array(
            c.rems
                .iter()
                .map(|r| Value::Bytes(r.as_bytes().to_vec()))
                .collect(),
        ),
    ));
    m.push((
        int(label::REALM_PUBLIC_KEY_HASH_ALGO_ID),
        Value::Text(c.public_key_hash_algo.name().into()),
    ));
    push_other(&mut m, &c.other);
    to_vec(&Value::Map(m))
}

/// CBOR claims map of a platform token.
pub fn encode_platform_claims(c: &PlatformClaims) -> Result<Vec<u8>, BuildError> {
    let mut m = vec![
        (int(label::PROFILE), Value::Text(c.profile.clone())),
        (int(label::CHALLENGE), Value::Bytes(c.challenge.clone())),
        (
            int(label::PLATFORM_IMPLEMENTATION_ID),
            Value::Bytes(c.implementation_id.to_vec()),
        ),
        (
            int(label::PLATFORM_INSTANCE_ID),
            Value::Bytes(c.instance_id.to_vec()),
        ),
        (int(label::PLATFORM_CONFIG), Value::Bytes(c.config.clone())),
        (int(label::PLATFORM_LIFECYCLE), int(i64::from(c.lifecycle))),
    ];
    let components = c
        .sw_components
        .iter()
        .map(|s| {
            let mut e = Vec::new();
            if let Some(t) = &s.measurement_type {
                e.push((int(label::SWC_MEASUREMENT_TYPE), Value::Text(t.clone())));
            }
            e.push((
                int(label::SWC_MEASUREMENT_VALUE),
                Value::Bytes(s.measurement_value.clone()),
            ));
            if let Some(v) = &s.version {
                e.push((int(label::SWC_VERSION), Value::Text(v.clone())));
            }
            e.push((int(label::SWC_SIGNER_ID), Value::Bytes(s.signer_id.clone())));
            if let Some(d) = &s.measurement_description {
                e.push((
                    int(label::SWC_MEASUREMENT_DESCRIPTION),
                    Value::Text(d.clone()),
                ));
            }
            push_other(&mut e, &s.other);
            Value::Map(e)
        })
        .collect();
    m.push((int(label::PLATFORM_SW_COMPONENTS), Value::Array(components)));
    if let Some(v) = &c.verification_service {
        m.push((
            int(label::PLATFORM_VERIFICATION_SERVICE),
            Value::Text(v.clone()),
        ));
    }
    if let Some(h) = &c.hash_algo {
        m.push((int(label::PLATFORM_HASH_ALGO_ID), Value::Text(h.clone())));
    }
    push_other(&mut m, &c.other);
    to_vec(&Value::Map(m))
}

/// A tagged (18) COSE_Sign1 over `payload` with `{1: alg}` protected.
pub fn sign1(payload: Vec<u8>, signer: &Signer<'_>) -> Result<Vec<u8>, BuildError> {
    let alg = match signer.algorithm {
        SignatureAlgorithm::Es256 => iana::Algorithm::ES256,
        SignatureAlgorithm::Es384 => iana::Algorithm::ES384,
    };
    let rng = SystemRandom::new();
    let mut failed = false;
    let sign1 = CoseSign1Builder::new()
        .protected(HeaderBuilder::new().algorithm(alg).build())
        .payload(payload)
        .create_signature(b"", |tbs| match signer.key.sign(&rng, tbs) {
            Ok(sig) => sig.as_ref().to_vec(),
            Err(_) => {
                failed = true;
                Vec::new()
            }
        })
        .build();
    if failed {
        return Err(BuildError::Signing);
    }
    use coset::TaggedCborSerializable;
    sign1
        .to_tagged_vec()
        .map_err(|e| BuildError::Encoding(e.to_string()))
}

/// The outer collection around two signed tokens.
pub fn collection(
    envelope: Envelope,
    platform_sign1: Vec<u8>,
    realm_sign1: Vec<u8>,
) -> Result<Vec<u8>, BuildError> {
    let wrap = |b: Vec<u8>| match envelope {
        Envelope::Tag399 => Value::Bytes(b),
        Envelope::Tag907 => Value::Array(vec![
            Value::Integer(CMW_CONTENT_FORMAT_EAT_CWT.into()),
            Value::Bytes(b),
        ]),
    };
    let map = Value::Map(vec![
        (int(LABEL_PLATFORM_TOKEN), wrap(platform_sign1)),
        (int(LABEL_REALM_TOKEN), wrap(realm_sign1)),
    ]);
    to_vec(&Value::Tag(envelope.tag(), Box::new(map)))
}

fn to_vec(v: &Value) -> Result<Vec<u8>, BuildError> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).map_err(|e| BuildError::Encoding(e.to_string()))?;
    Ok(out)
}
