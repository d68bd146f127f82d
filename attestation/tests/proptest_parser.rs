//! Properties of the CCA parser and the strict CBOR decoder: hostile bytes
//! never panic, no single mutation of a valid token verifies, and the decoder
//! insists on exactly one item with unique map keys.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use attestation::cca::cbor::{self, CborError};
use attestation::cca::{self, Challenge, Envelope, PlatformKey, VerifyOptions};
use attestation::platform::EvidenceSource;
use attestation::platform::danger::InsecureEmulatedPlatform;
use ciborium::value::Value;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};

/// Every name `ParseError::check` can return.
const PARSE_CHECKS: &[&str] = &[
    "cbor-truncated",
    "cbor-length-exceeds-input",
    "cbor-indefinite-length",
    "cbor-malformed",
    "cbor-nesting-too-deep",
    "cbor-trailing-bytes",
    "cbor-duplicate-key",
    "cbor-unexpected-tag",
    "cbor-decode",
    "token-too-large",
    "collection-tag",
    "collection-shape",
    "cose-structure",
    "cose-alg-not-protected",
    "cose-unsupported-alg",
    "cose-critical-header",
    "cose-missing-payload",
    "claim-missing",
    "claim-type",
    "claim-length",
    "claim-hash-algorithm",
    "claim-profile",
    "claim-realm-public-key",
];

fn config() -> ProptestConfig {
    ProptestConfig {
        // Failures are reported with their minimal input; nothing is written
        // into the source tree.
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    }
}

// ------------------------------------------------------------------ fixtures

fn testdata(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/cca/synthetic")
        .join(rel)
}

/// `valid_a.cbor` and the CPAK that verifies it.
fn valid_a() -> &'static (Vec<u8>, PlatformKey) {
    static FIXTURE: OnceLock<(Vec<u8>, PlatformKey)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let bytes = std::fs::read(testdata("valid_a.cbor")).unwrap();
        let cpak =
            PlatformKey::from_file_bytes(&std::fs::read(testdata("keys/cpak_a.pub.pem")).unwrap())
                .unwrap();
        (bytes, cpak)
    })
}

/// A tag-907 token (COSE_Key RAK, CMW records) from the INSECURE emulated
/// platform, its platform key and its challenge.
fn emulated_907() -> &'static (Vec<u8>, PlatformKey, Challenge) {
    static FIXTURE: OnceLock<(Vec<u8>, PlatformKey, Challenge)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let platform = InsecureEmulatedPlatform::from_pkcs8(pkcs8.as_ref())
            .unwrap()
            .with_envelope(Envelope::Tag907);
        let challenge = Challenge([0x5a; 64]);
        let bytes = platform.attestation_token(&challenge).unwrap();
        (bytes, platform.platform_public_key().clone(), challenge)
    })
}

/// Verify with no expected challenge: only the signatures and the binding
/// stand between a mutation and acceptance.
fn verify_valid_a(bytes: &[u8]) -> Result<cca::VerifiedCcaToken, cca::VerifyError> {
    cca::verify_bytes(bytes, &valid_a().1, &VerifyOptions::default())
}

#[test]
fn fixtures_verify_unmodified() {
    let (bytes, _) = valid_a();
    let token = verify_valid_a(bytes).unwrap();
    assert_eq!(token.envelope(), Envelope::Tag399);

    let (bytes, cpak, challenge) = emulated_907();
    let options = VerifyOptions {
        expected_challenge: Some(*challenge),
        ..Default::default()
    };
    let token = cca::verify_bytes(bytes, cpak, &options).unwrap();
    assert_eq!(token.envelope(), Envelope::Tag907);
    assert!(token.is_insecure_emulated());
}

/// Every byte of `valid_a`, flipped in its lowest bit, its highest bit and
/// all bits: not one of these tokens verifies.
#[test]
fn every_single_byte_flip_of_valid_a_is_rejected() {
    let (bytes, _) = valid_a();
    let mut copy = bytes.clone();
    for pos in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            copy[pos] ^= mask;
            if let Ok(t) = verify_valid_a(&copy) {
                panic!("flip {mask:#04x} at {pos} verified: {:?}", t.realm());
            }
            copy[pos] ^= mask;
        }
    }
    assert_eq!(&copy, bytes);
}

// ------------------------------------------------------------------ CBOR value strategies

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Int(i64),
    Text(String),
}

impl From<Key> for Value {
    fn from(k: Key) -> Value {
        match k {
            Key::Int(i) => Value::Integer(i.into()),
            Key::Text(t) => Value::Text(t),
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..8).prop_map(String::from_iter)
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![any::<i64>().prop_map(Key::Int), text().prop_map(Key::Text)]
}

fn map_of(entries: BTreeMap<Key, Value>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// Small CBOR values: ints, byte and text strings, bools, null, and arrays,
/// maps (unique keys) and tags of them. No floats (NaN != NaN) and no tags 2
/// and 3 (bignums, which the decoder folds into integers).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|i| Value::Integer(i.into())),
        any::<u64>().prop_map(|i| Value::Integer(i.into())),
        vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
        text().prop_map(Value::Text),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key(), inner.clone(), 0..6).prop_map(map_of),
            (4u64..100_000, inner).prop_map(|(t, v)| Value::Tag(t, Box::new(v))),
        ]
    })
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

// ------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_and_decode_never_panic_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..4096)) {
        match cbor::decode(&bytes) {
            // Whatever decodes is exactly one well-formed item.
            Ok(_) => prop_assert_eq!(cbor::check_well_formed(&bytes), Ok(bytes.len())),
            Err(CborError::TrailingBytes { count }) => {
                prop_assert!(count > 0);
                prop_assert_eq!(cbor::check_well_formed(&bytes), Ok(bytes.len() - count));
            }
            Err(_) => {}
        }
        if let Err(e) = cca::parse(&bytes) {
            prop_assert!(PARSE_CHECKS.contains(&e.check()), "unknown check {}", e.check());
        }
    }

    #[test]
    fn parse_never_panics_behind_tag_399(tail in vec(any::<u8>(), 0..4096)) {
        let mut bytes = vec![0xd9, 0x01, 0x8f];
        bytes.extend_from_slice(&tail);
        let err = cca::parse(&bytes).expect_err("random bytes are not a token");
        // The outer tag is always 399, so it is never the reason.
        prop_assert_ne!(err.check(), "collection-tag");
        prop_assert!(PARSE_CHECKS.contains(&err.check()));
    }

    #[test]
    fn parse_never_panics_on_random_sign1_bodies(
        platform in vec(any::<u8>(), 0..1024),
        realm in vec(any::<u8>(), 0..1024),
        tag_sign1 in any::<bool>(),
    ) {
        // A well-shaped collection whose two tokens are `[` + random bytes,
        // optionally behind tag 18: every failure is inside a token.
        let body = |b: &[u8]| {
            let mut out = if tag_sign1 { vec![0xd2, 0x84] } else { vec![0x84] };
            out.extend_from_slice(b);
            Value::Bytes(out)
        };
        let bytes = encode(&Value::Tag(399, Box::new(Value::Map(vec![
            (Value::Integer(44234.into()), body(&platform)),
            (Value::Integer(44241.into()), body(&realm)),
        ]))));
        let err = cca::parse(&bytes).expect_err("random bytes are not a COSE_Sign1");
        prop_assert!(PARSE_CHECKS.contains(&err.check()));
        prop_assert!(
            !["collection-tag", "collection-shape", "token-too-large"].contains(&err.check()),
            "collection stage rejected a well-shaped collection: {}", err
        );
    }

    #[test]
    fn no_single_byte_xor_of_valid_a_verifies(pos in any::<Index>(), mask in 1u8..=255) {
        let (bytes, _) = valid_a();
        let mut bytes = bytes.clone();
        let pos = pos.index(bytes.len());
        bytes[pos] ^= mask;
        prop_assert!(verify_valid_a(&bytes).is_err(), "xor {:#04x} at {} verified", mask, pos);
    }

    #[test]
    fn no_truncation_of_valid_a_verifies(len in any::<Index>()) {
        let (bytes, _) = valid_a();
        let len = len.index(bytes.len());
        let err = verify_valid_a(&bytes[..len]).expect_err("a truncated token verified");
        // A prefix is always cut inside the single top-level item.
        prop_assert!(
            ["cbor-truncated", "cbor-length-exceeds-input"].contains(&err.check()),
            "prefix of {} bytes: {}", len, err
        );
    }

    #[test]
    fn no_insertion_into_valid_a_verifies(
        pos in any::<Index>(),
        insert in vec(any::<u8>(), 1..=8),
    ) {
        let (bytes, _) = valid_a();
        let pos = pos.index(bytes.len() + 1);
        let mut mutated = bytes[..pos].to_vec();
        mutated.extend_from_slice(&insert);
        mutated.extend_from_slice(&bytes[pos..]);
        prop_assert_eq!(mutated.len(), bytes.len() + insert.len());
        prop_assert!(
            verify_valid_a(&mutated).is_err(),
            "inserting {:02x?} at {} verified", insert, pos
        );
    }

    #[test]
    fn no_single_byte_xor_of_emulated_907_token_verifies(
        pos in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let (bytes, cpak, _) = emulated_907();
        let mut bytes = bytes.clone();
        let pos = pos.index(bytes.len());
        bytes[pos] ^= mask;
        prop_assert!(
            cca::verify_bytes(&bytes, cpak, &VerifyOptions::default()).is_err(),
            "xor {:#04x} at {} verified", mask, pos
        );
    }

    #[test]
    fn decode_rejects_trailing_bytes(v in value(), extra in vec(any::<u8>(), 1..=8)) {
        let mut bytes = encode(&v);
        let item_len = bytes.len();
        prop_assert_eq!(cbor::decode(&bytes), Ok(v));
        bytes.extend_from_slice(&extra);
        prop_assert_eq!(cbor::check_well_formed(&bytes), Ok(item_len));
        prop_assert_eq!(
            cbor::decode(&bytes),
            Err(CborError::TrailingBytes { count: extra.len() })
        );
    }

    #[test]
    fn maps_with_unique_keys_round_trip(entries in btree_map(key(), value(), 0..10)) {
        let map = map_of(entries);
        prop_assert_eq!(cbor::decode(&encode(&map)), Ok(map));
    }

    #[test]
    fn maps_with_a_repeated_key_are_rejected(
        entries in btree_map(key(), value(), 1..10),
        which in any::<Index>(),
        other in value(),
    ) {
        let Value::Map(mut pairs) = map_of(entries) else { unreachable!() };
        let repeated = pairs[which.index(pairs.len())].0.clone();
        pairs.push((repeated, other));
        let err = cbor::decode(&encode(&Value::Map(pairs))).unwrap_err();
        prop_assert!(matches!(err, CborError::DuplicateKey { .. }), "{:?}", err);
    }
}
