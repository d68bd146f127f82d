//! Every case of the shared CCA vector manifest (copied to testdata/cca with
//! its provenance) behaves as the manifest states, for the stated reason.

use std::path::{Path, PathBuf};

use attestation::cca::{self, Challenge, PlatformKey, VerifyError, VerifyOptions};
use serde_json::Value as Json;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/cca")
}

/// The check each reject case must fail, keyed by file stem. Includes the
/// cases of the hidden acceptance set, so that a manifest with any of them
/// is checked too; a reject case missing from this table fails the test.
fn expected_check(stem: &str) -> Option<&'static str> {
    Some(match stem {
        "neg_realm_sig_tampered" => "realm-signature",
        "neg_platform_sig_tampered" => "platform-signature",
        "neg_platform_challenge_unbound" => "platform-challenge-binds-rak",
        "neg_wrong_tag" => "collection-tag",
        "neg_truncated_cbor" => "cbor-length-exceeds-input",
        "neg_trailing_garbage" => "cbor-trailing-bytes",
        "neg_duplicate_map_keys" => "cbor-duplicate-key",
        "neg_challenge_wrong_length" => "claim-length",
        "neg_missing_rim" => "claim-missing",
        "neg_unsupported_hash_algo" => "claim-hash-algorithm",
        "neg_huge_length_prefix" => "cbor-length-exceeds-input",
        "neg_deeply_nested_arrays" => "cbor-nesting-too-deep",
        "neg_sign1_unprotected_alg" => "cose-alg-not-protected",
        "neg_lifecycle_not_secured" => "platform-lifecycle",
        _ => return None,
    })
}

struct Case {
    file: String,
    expect: String,
    reason: String,
    result: Result<cca::VerifiedCcaToken, VerifyError>,
    expected: Option<Json>,
}

fn run_manifest() -> Vec<Case> {
    let manifest: Json =
        serde_json::from_slice(&std::fs::read(dir().join("manifest.json")).unwrap()).unwrap();
    let cases = manifest.as_array().unwrap();
    assert!(cases.len() >= 9, "manifest unexpectedly small");
    cases
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().map(str::to_string);
            let file = s("file").unwrap();
            let bytes = std::fs::read(dir().join(&file)).unwrap();
            let cpak = PlatformKey::from_file_bytes(
                &std::fs::read(dir().join(s("cpak").unwrap())).unwrap(),
            )
            .unwrap();
            let options = VerifyOptions {
                expected_challenge: s("challenge").map(|h| Challenge::from_hex(&h).unwrap()),
                ..Default::default()
            };
            let expected = s("expected")
                .map(|e| serde_json::from_slice(&std::fs::read(dir().join(e)).unwrap()).unwrap());
            Case {
                result: cca::verify_bytes(&bytes, &cpak, &options),
                file,
                expect: s("expect").unwrap(),
                reason: s("reason").unwrap(),
                expected,
            }
        })
        .collect()
}

#[test]
fn accepted_cases_verify_and_match_expected_claims() {
    let mut accepted = 0;
    for case in run_manifest().into_iter().filter(|c| c.expect == "accept") {
        let token = match case.result {
            Ok(t) => t,
            Err(e) => panic!("{} ({}) was rejected: {e}", case.file, case.reason),
        };
        assert!(
            token.challenge_checked(),
            "{}: challenge not compared",
            case.file
        );
        let expected = case.expected.expect("accept cases carry expected claims");
        let ours = cca::json::token_to_json(token.token());
        for part in ["platform", "realm"] {
            assert_eq!(
                ours[part], expected[part],
                "{}: {part} claims differ",
                case.file
            );
        }
        assert_eq!(
            ours["envelope-tag"], expected["envelope-tag"],
            "{}",
            case.file
        );
        for check in [
            "realm-signature-valid-with-embedded-rak",
            "platform-challenge-equals-hash-of-rak",
            "platform-signature-valid-with-cpak",
        ] {
            assert_eq!(
                expected["checks"][check],
                Json::Bool(true),
                "{}: {check}",
                case.file
            );
        }
        accepted += 1;
    }
    assert!(
        accepted >= 2,
        "expected the real and the synthetic valid token"
    );
}

#[test]
fn rejected_cases_fail_for_the_stated_reason() {
    let mut rejected = 0;
    for case in run_manifest().into_iter().filter(|c| c.expect == "reject") {
        let stem = Path::new(&case.file)
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let want = expected_check(&stem)
            .unwrap_or_else(|| panic!("no expected check recorded for {stem}: add it"));
        match case.result {
            Ok(_) => panic!("{} was accepted; must fail: {}", case.file, case.reason),
            Err(e) => assert_eq!(
                e.check(),
                want,
                "{}: wrong reason ({e}); manifest: {}",
                case.file,
                case.reason
            ),
        }
        rejected += 1;
    }
    assert!(rejected >= 7);
}

#[test]
fn accepted_tokens_fail_with_the_wrong_challenge_or_key() {
    for case in run_manifest().into_iter().filter(|c| c.expect == "accept") {
        let bytes = std::fs::read(dir().join(&case.file)).unwrap();
        let token = case.result.unwrap();
        let cpak = PlatformKey::from_file_bytes(
            &std::fs::read(dir().join("synthetic/keys/rak_a.pub.pem")).unwrap(),
        )
        .unwrap();
        let err = cca::verify_bytes(&bytes, &cpak, &VerifyOptions::default()).unwrap_err();
        assert_eq!(err, VerifyError::PlatformSignature, "{}", case.file);

        let mut other = token.realm().challenge;
        other.0[0] ^= 1;
        let right_key = if case.file.starts_with("real/") {
            "real/keys/cca_platform.pub.pem"
        } else {
            "synthetic/keys/cpak_a.pub.pem"
        };
        let cpak =
            PlatformKey::from_file_bytes(&std::fs::read(dir().join(right_key)).unwrap()).unwrap();
        let options = VerifyOptions {
            expected_challenge: Some(other),
            ..Default::default()
        };
        assert_eq!(
            cca::verify_bytes(&bytes, &cpak, &options).unwrap_err(),
            VerifyError::ChallengeMismatch
        );
    }
}
