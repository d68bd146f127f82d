//! The native Certifier messages against the upstream reference files in
//! testdata/certifier: every file decodes, re-encodes byte-identically and
//! renders to exactly the expected JSON; hostile bytes never panic and fail
//! with the right error.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use attestation::certifier::json::{MESSAGE_NAMES, REENCODES_KEY, decode_to_json};
use attestation::certifier::proto::{
    BufferSequence, ClaimMessage, KeyMessage, MAX_MESSAGE_SIZE, ProtoError, SignedClaimMessage,
    VseClause, decode_bounded,
};
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use serde_json::Value as Json;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/certifier")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// One reference file: (file name, message_type, bytes, expected JSON).
struct Sample {
    file: String,
    message_type: String,
    bytes: Vec<u8>,
    expected: Json,
}

fn samples() -> &'static [Sample] {
    static SAMPLES: OnceLock<Vec<Sample>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let manifest: Json = serde_json::from_slice(&read("manifest.json")).unwrap();
        let files = manifest["files"].as_array().expect("manifest.files");
        files
            .iter()
            .map(|f| {
                let file = f["file"].as_str().unwrap().to_owned();
                let stem = file.strip_suffix(".bin").expect(".bin file");
                let bytes = read(&file);
                assert_eq!(
                    bytes.len() as u64,
                    f["size_bytes"].as_u64().unwrap(),
                    "{file}: size differs from manifest"
                );
                let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
                assert_eq!(
                    hex::encode(digest.as_ref()),
                    f["sha256"].as_str().unwrap(),
                    "{file}: sha256 differs from manifest"
                );
                let expected: Json =
                    serde_json::from_slice(&read(&format!("expected/{stem}.full.json"))).unwrap();
                Sample {
                    message_type: f["message_type"].as_str().unwrap().to_owned(),
                    file,
                    bytes,
                    expected,
                }
            })
            .collect()
    })
}

fn sample(prefix: &str) -> &'static Sample {
    samples()
        .iter()
        .find(|s| s.file.starts_with(prefix))
        .unwrap_or_else(|| panic!("no sample {prefix}"))
}

/// Typed decode + prost re-encode for the message types of the samples.
fn reencode(message_type: &str, bytes: &[u8]) -> Vec<u8> {
    match message_type {
        "vse_clause" => decode_bounded::<VseClause>(bytes).unwrap().encode_to_vec(),
        "key_message" => decode_bounded::<KeyMessage>(bytes).unwrap().encode_to_vec(),
        "signed_claim_message" => decode_bounded::<SignedClaimMessage>(bytes)
            .unwrap()
            .encode_to_vec(),
        other => panic!("no typed decoder for {other} in this test"),
    }
}

/// `decode_to_json` output without the re-encode flag, and the flag.
fn json_and_flag(message_type: &str, bytes: &[u8]) -> (Json, bool) {
    let mut v = decode_to_json(message_type, bytes).unwrap();
    let flag = v
        .as_object_mut()
        .expect("top level is an object")
        .shift_remove(REENCODES_KEY)
        .and_then(|f| f.as_bool())
        .expect("reencodes_identically is a bool");
    (v, flag)
}

#[test]
fn all_six_reference_files_are_listed() {
    let s = samples();
    assert_eq!(s.len(), 6);
    for t in ["vse_clause", "signed_claim_message", "key_message"] {
        assert_eq!(s.iter().filter(|x| x.message_type == t).count(), 2, "{t}");
        assert!(MESSAGE_NAMES.contains(&t));
    }
}

#[test]
fn reference_files_reencode_byte_identically() {
    for s in samples() {
        assert!(
            reencode(&s.message_type, &s.bytes) == s.bytes,
            "{}: prost re-encoding differs from the file",
            s.file
        );
    }
}

#[test]
fn reference_files_render_to_expected_json() {
    for s in samples() {
        let (json, flag) = json_and_flag(&s.message_type, &s.bytes);
        assert_eq!(json, s.expected, "{}: JSON differs", s.file);
        assert!(flag, "{}: reencodes_identically is false", s.file);
        // Same key order as the expected files (sorted), not only equal.
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            serde_json::to_string(&s.expected).unwrap(),
            "{}: key order differs",
            s.file
        );
    }
}

#[test]
fn nested_serialized_messages_decode_and_match_cross_file_facts() {
    // signed_claim_1 → claim_message → vse_clause "policyKey says <ts1>".
    let sc: SignedClaimMessage =
        decode_bounded(&sample("signed_claim_1").bytes).expect("signed claim");
    let claim: ClaimMessage =
        decode_bounded(sc.serialized_claim_message.as_deref().unwrap()).expect("claim_message");
    assert_eq!(claim.claim_format.as_deref(), Some("vse-clause"));
    // Present but empty: proto2 presence is kept.
    assert_eq!(claim.claim_descriptor.as_deref(), Some(""));
    assert_eq!(
        claim.not_before.as_deref(),
        Some("2022-08-29T17:55:50.00000Z")
    );
    let clause: VseClause = decode_bounded(claim.serialized_claim.as_deref().unwrap()).unwrap();
    assert_eq!(clause.verb.as_deref(), Some("says"));
    let inner = clause.clause.as_deref().expect("inner clause");
    assert_eq!(inner.encode_to_vec(), sample("ts1").bytes);
    assert!(inner.clause.is_none() && inner.object.is_none());

    // Its signing key is the public half of policy_key_file_2022.
    let policy: KeyMessage = decode_bounded(&sample("policy_key_file_2022").bytes).unwrap();
    let signer = sc.signing_key.as_ref().unwrap();
    assert_eq!(
        signer.rsa_key.as_ref().unwrap().public_modulus,
        policy.rsa_key.as_ref().unwrap().public_modulus
    );
    assert!(signer.rsa_key.as_ref().unwrap().private_exponent.is_none());
    assert!(policy.rsa_key.as_ref().unwrap().private_p.is_none());

    // The 2025 endorsement's inner clause is vse_policy3-shaped and endorses
    // the key of attest_key_file_2025.
    let end: SignedClaimMessage =
        decode_bounded(&sample("platform_attest_endorsement_2025").bytes).unwrap();
    let signer = end.signing_key.as_ref().unwrap();
    assert_eq!(signer.certificate.as_deref(), Some(&[][..]));
    assert_eq!(signer.not_before.as_deref(), Some(""));
    assert!(signer.ecc_key.is_none() && signer.snp_tcb_version.is_none());
    let claim: ClaimMessage =
        decode_bounded(end.serialized_claim_message.as_deref().unwrap()).unwrap();
    let clause: VseClause = decode_bounded(claim.serialized_claim.as_deref().unwrap()).unwrap();
    let inner = clause.clause.as_deref().unwrap();
    assert_eq!(inner.verb.as_deref(), Some("is-trusted-for-attestation"));
    let attest: KeyMessage = decode_bounded(&sample("attest_key_file_2025").bytes).unwrap();
    let endorsed = inner.subject.as_ref().unwrap().key.as_ref().unwrap();
    assert_eq!(endorsed.key_name.as_deref(), Some("attestKey"));
    assert_eq!(
        endorsed.rsa_key.as_ref().unwrap().public_modulus,
        attest.rsa_key.as_ref().unwrap().public_modulus
    );
}

#[test]
fn every_message_name_accepts_the_empty_message() {
    let mut names = MESSAGE_NAMES.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), MESSAGE_NAMES.len(), "duplicate names");
    assert_eq!(MESSAGE_NAMES.len(), 26);
    for name in MESSAGE_NAMES {
        let v = decode_to_json(name, &[]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({ "reencodes_identically": true }),
            "{name}"
        );
    }
}

#[test]
fn present_empty_fields_and_repeated_fields_render() {
    let key = KeyMessage {
        key_name: Some(String::new()),
        certificate: Some(Vec::new()),
        snp_tcb_version: Some(u64::MAX),
        ..Default::default()
    };
    let (json, flag) = json_and_flag("key_message", &key.encode_to_vec());
    assert!(flag);
    assert_eq!(
        json,
        serde_json::json!({ "certificate": "", "key_name": "", "snp_tcb_version": u64::MAX })
    );

    let seq = BufferSequence {
        block: vec![vec![0xAB, 0x01], Vec::new()],
    };
    let (json, flag) = json_and_flag("buffer_sequence", &seq.encode_to_vec());
    assert!(flag);
    assert_eq!(json, serde_json::json!({ "block": ["ab01", ""] }));
}

#[test]
fn unknown_fields_are_dropped_and_flagged() {
    let s = sample("attest_key_file_2025");
    let mut bytes = s.bytes.clone();
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]); // field 99, varint 1
    let (json, flag) = json_and_flag("key_message", &bytes);
    assert_eq!(json, s.expected);
    assert!(!flag, "an unknown field cannot survive re-encoding");
}

#[test]
fn errors_have_the_right_kind() {
    let too_big = vec![0u8; MAX_MESSAGE_SIZE + 1];
    assert_eq!(
        decode_to_json("key_message", &too_big),
        Err(ProtoError::TooLarge {
            size: MAX_MESSAGE_SIZE + 1,
            limit: MAX_MESSAGE_SIZE
        })
    );
    assert!(matches!(
        decode_bounded::<VseClause>(&too_big),
        Err(ProtoError::TooLarge { .. })
    ));
    // Exactly at the limit is parsed (and fails for its content, not size).
    assert!(matches!(
        decode_to_json("key_message", &too_big[..MAX_MESSAGE_SIZE]),
        Err(ProtoError::Decode(_))
    ));

    for name in ["time_point", "KeyMessage", "", "key_message "] {
        assert_eq!(
            decode_to_json(name, &[]),
            Err(ProtoError::UnknownMessage(name.to_owned()))
        );
    }

    for name in MESSAGE_NAMES {
        assert!(
            matches!(
                decode_to_json(name, &[0xff; 10]),
                Err(ProtoError::Decode(_))
            ),
            "{name}"
        );
    }
    // Truncated reference file.
    let s = sample("signed_claim_1");
    assert!(matches!(
        decode_to_json("signed_claim_message", &s.bytes[..s.bytes.len() - 1]),
        Err(ProtoError::Decode(_))
    ));
}

/// `depth` vse_clauses, each the `clause` (field 4) of the previous one.
fn nested_clauses(depth: usize) -> Vec<u8> {
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut outer = vec![0x22];
        prost::encoding::encode_varint(inner.len() as u64, &mut outer);
        outer.extend_from_slice(&inner);
        inner = outer;
    }
    inner
}

#[test]
fn clause_nesting_is_bounded() {
    let (json, flag) = json_and_flag("vse_clause", &nested_clauses(50));
    assert!(flag);
    assert!(json.get("clause").is_some());
    assert!(matches!(
        decode_to_json("vse_clause", &nested_clauses(10_000)),
        Err(ProtoError::Decode(_))
    ));
}

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
        for name in MESSAGE_NAMES {
            let _ = decode_to_json(name, &bytes);
        }
    }

    #[test]
    fn mutated_reference_files_never_panic(
        which in 0usize..6,
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let s = &samples()[which];
        let mut bytes = s.bytes.clone();
        for (i, b) in &edits {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        for name in MESSAGE_NAMES {
            if let Ok(v) = decode_to_json(name, &bytes) {
                prop_assert!(v.get(REENCODES_KEY).and_then(Json::as_bool).is_some());
            }
        }
    }
}
