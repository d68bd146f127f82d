//! Public test material (issue 24): the two tokens a real TF-RMM made on QEMU
//! (RMM 1.0 tag 399, RMM 2.0 tag 907) verify with the TF-M tools test CPAK and
//! their challenge, and are flagged INSECURE test material three ways: the
//! key that verified them, their RAK (TF-A's sample key) and their platform
//! token (TF-A's byte-for-byte sample). Vectors: testdata/cca/public-test-material/.

use std::path::{Path, PathBuf};

use attestation::cca::test_material::{self, MaterialKind};
use attestation::cca::{self, Challenge, Envelope, PlatformKey, VerifyError, VerifyOptions};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/cca/public-test-material")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap()
}

fn test_cpak() -> PlatformKey {
    PlatformKey::from_file_bytes(&read("tf-m-tools_cca_platform.pub.pem")).unwrap()
}

fn challenge(name: &str) -> Challenge {
    let text = String::from_utf8(read(name)).unwrap();
    Challenge::from_hex(text.trim()).unwrap()
}

const RMM_TOKENS: [(&str, &str, Envelope); 2] = [
    ("rmm1-A.cbor", "rmm1-A.challenge.hex", Envelope::Tag399),
    ("rmm2-A.cbor", "rmm2-A.challenge.hex", Envelope::Tag907),
];

#[test]
fn real_rmm_tokens_verify_and_are_flagged_as_test_material() {
    for (token, chal, envelope) in RMM_TOKENS {
        let options = VerifyOptions {
            expected_challenge: Some(challenge(chal)),
            ..Default::default()
        };
        let verified = cca::verify_bytes(&read(token), &test_cpak(), &options)
            .unwrap_or_else(|e| panic!("{token}: {e}"));
        assert_eq!(verified.envelope(), envelope, "{token}");
        assert!(verified.challenge_checked());
        assert!(!verified.is_insecure_emulated(), "{token} is not ours");
        // The verifying key is checked first.
        let m = verified.test_material().expect(token);
        assert_eq!(m.name, "tf-m-tools-cca-platform-cpak", "{token}");
        assert_eq!(m.kind, MaterialKind::PublishedKey);

        // Without the key: what the token itself carries.
        let parsed = cca::parse(&read(token)).unwrap();
        assert_eq!(
            test_material::carried_by(&parsed).map(|m| m.name),
            Some("tf-a-sample-rak"),
            "{token}: the RAK is TF-A's sample key (as a COSE_Key)"
        );
        // And the platform token alone is TF-A's sample, byte for byte.
        assert_eq!(
            hex::encode(parsed.platform().sha256()),
            "32092756c683cac952cba72d8fc4e174521ffbd9c7619222805074dd2c029a50"
        );
        // Offline inspection names who could have signed it.
        assert_eq!(
            cca::known_test_signer(&parsed).map(|m| m.name),
            Some("tf-m-tools-cca-platform-cpak")
        );
    }
}

#[test]
fn the_sample_platform_token_is_recognised_without_the_rak() {
    // TF-A's sample platform token spliced next to a realm token of ours
    // (fresh RAK): the platform token alone, byte for byte, marks it.
    use attestation::cca::build::{self, Signer};
    use attestation::cca::{
        HashAlgorithm, Measurement, RakEncoding, RealmClaims, SignatureAlgorithm,
    };
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    let sample = cca::parse(&read("rmm1-A.cbor")).unwrap();
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let rak =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let rem = Measurement::new(HashAlgorithm::Sha512, &[0; 64]).unwrap();
    let realm = RealmClaims {
        profile: None,
        challenge: Challenge([7; 64]),
        personalization_value: [0; 64],
        hash_algo: HashAlgorithm::Sha512,
        public_key: build::realm_public_key(rak.public_key().as_ref(), RakEncoding::RawPoint)
            .unwrap(),
        rim: rem,
        rems: [rem; 4],
        public_key_hash_algo: HashAlgorithm::Sha256,
        other: Vec::new(),
    };
    let realm_sign1 = build::sign1(
        build::encode_realm_claims(&realm).unwrap(),
        &Signer {
            algorithm: SignatureAlgorithm::Es384,
            key: &rak,
        },
    )
    .unwrap();
    // The platform token's bytes, as carried in the sample collection.
    let platform_bytes = platform_token_bytes(&read("rmm1-A.cbor"));
    let spliced =
        cca::parse(&build::collection(Envelope::Tag399, platform_bytes, realm_sign1).unwrap())
            .unwrap();
    assert_eq!(spliced.platform().sha256(), sample.platform().sha256());
    assert_eq!(
        test_material::carried_by(&spliced).map(|m| m.name),
        Some("tf-a-qemu-sample-platform-token")
    );
}

/// The platform COSE_Sign1 bytes of a tag-399 collection.
fn platform_token_bytes(token: &[u8]) -> Vec<u8> {
    use ciborium::value::Value;
    let Value::Tag(399, inner) = ciborium::de::from_reader(token).unwrap() else {
        panic!("not tag 399")
    };
    let Value::Map(entries) = *inner else {
        panic!("not a map")
    };
    entries
        .into_iter()
        .find_map(|(k, v)| match (k, v) {
            (Value::Integer(k), Value::Bytes(b)) if i128::from(k) == 44234 => Some(b),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_wrong_challenge_is_still_refused() {
    let options = VerifyOptions {
        expected_challenge: Some(Challenge([0u8; 64])),
        ..Default::default()
    };
    for (token, _, _) in RMM_TOKENS {
        assert!(matches!(
            cca::verify_bytes(&read(token), &test_cpak(), &options),
            Err(VerifyError::ChallengeMismatch)
        ));
    }
}

#[test]
fn the_old_public_tf_rmm_token_is_test_material_too() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/cca/real");
    let bytes = std::fs::read(root.join("tfrmm_cca_token.cbor")).unwrap();
    let key = PlatformKey::from_file_bytes(
        &std::fs::read(root.join("keys/cca_platform.pub.pem")).unwrap(),
    )
    .unwrap();
    let verified = cca::verify_bytes(&bytes, &key, &VerifyOptions::default()).unwrap();
    assert_eq!(
        verified.test_material().map(|m| m.name),
        Some("tf-m-tools-cca-platform-cpak")
    );
    let parsed = cca::parse(&bytes).unwrap();
    assert_eq!(
        test_material::carried_by(&parsed).map(|m| m.name),
        Some("tf-a-sample-rak"),
        "the raw-point RAK is the same key"
    );
}
