//! Tokens built here with real keys: every valid combination verifies, and
//! each single defect (the generator's CASES and a few more) is rejected for
//! exactly the stated reason. Ends with a round trip through the INSECURE
//! emulated platform.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use attestation::cca::build::{self, Signer};
use attestation::cca::cbor::CborError;
use attestation::cca::{
    self, Challenge, Curve, Envelope, HashAlgorithm, LABEL_PLATFORM_TOKEN, LABEL_REALM_TOKEN,
    LifecyclePolicy, Measurement, OtherClaim, PLATFORM_PROFILE_2023, PLATFORM_PROFILE_LEGACY,
    ParseError, Part, PlatformClaims, PlatformKey, REALM_PROFILE_2023, RakEncoding, RealmClaims,
    SignatureAlgorithm, SwComponent, VerifiedCcaToken, VerifyError, VerifyOptions, label,
};
use attestation::platform::EvidenceSource;
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};
use ciborium::value::Value;
use coset::{CborSerializable, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING,
    EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};

// ------------------------------------------------------------------ helpers

const SHA256: HashAlgorithm = HashAlgorithm::Sha256;
const SHA512: HashAlgorithm = HashAlgorithm::Sha512;
const HASHES: [HashAlgorithm; 2] = [SHA256, SHA512];

/// What kind of valid token to build.
#[derive(Debug, Clone, Copy)]
struct Spec {
    envelope: Envelope,
    realm_hash: HashAlgorithm,
    rak_hash: HashAlgorithm,
    platform_curve: Curve,
}

impl Spec {
    /// RMM 1.0: tag 399, raw-point RAK, legacy platform profile, no realm profile.
    fn rmm10(realm_hash: HashAlgorithm, rak_hash: HashAlgorithm) -> Self {
        Self {
            envelope: Envelope::Tag399,
            realm_hash,
            rak_hash,
            platform_curve: Curve::P384,
        }
    }

    /// CMW collection: tag 907, COSE_Key RAK, the 2023 profiles.
    fn cmw(realm_hash: HashAlgorithm, rak_hash: HashAlgorithm) -> Self {
        Self {
            envelope: Envelope::Tag907,
            ..Self::rmm10(realm_hash, rak_hash)
        }
    }

    fn default_399() -> Self {
        Self::rmm10(SHA256, SHA256)
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).unwrap();
    out
}

fn signing_alg(curve: Curve) -> &'static ring::signature::EcdsaSigningAlgorithm {
    match curve {
        Curve::P256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
        Curve::P384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
    }
}

fn keypair(curve: Curve) -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let alg = signing_alg(curve);
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap()
}

fn public_key(curve: Curve, pair: &EcdsaKeyPair) -> PlatformKey {
    PlatformKey::from_point(curve, pair.public_key().as_ref()).unwrap()
}

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

fn to_cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

fn flip_last(bytes: &mut [u8]) {
    *bytes.last_mut().unwrap() ^= 0x01;
}

/// Keys and claims of one valid token; the tests change one thing and sign.
struct Fixture {
    envelope: Envelope,
    cpak: EcdsaKeyPair,
    cpak_alg: SignatureAlgorithm,
    cpak_public: PlatformKey,
    rak: EcdsaKeyPair,
    realm: RealmClaims,
    platform: PlatformClaims,
}

impl Fixture {
    fn new(spec: Spec) -> Self {
        let cpak = keypair(spec.platform_curve);
        let cpak_public = public_key(spec.platform_curve, &cpak);
        let cpak_alg = match spec.platform_curve {
            Curve::P256 => SignatureAlgorithm::Es256,
            Curve::P384 => SignatureAlgorithm::Es384,
        };
        let rak = keypair(Curve::P384);
        let (rak_encoding, realm_profile, platform_profile) = match spec.envelope {
            Envelope::Tag399 => (RakEncoding::RawPoint, None, PLATFORM_PROFILE_LEGACY),
            Envelope::Tag907 => (
                RakEncoding::CoseKey,
                Some(REALM_PROFILE_2023.to_string()),
                PLATFORM_PROFILE_2023,
            ),
        };
        let rak_claim = build::realm_public_key(rak.public_key().as_ref(), rak_encoding).unwrap();
        let n = spec.realm_hash.digest_len();
        let rim = Measurement::new(spec.realm_hash, &random::<64>()[..n]).unwrap();
        let rems = [0u8, 1, 2, 3].map(|i| Measurement::new(spec.realm_hash, &vec![i; n]).unwrap());
        let platform_challenge = spec.rak_hash.digest(rak_claim.claim_bytes());
        let realm = RealmClaims {
            profile: realm_profile,
            challenge: Challenge(random()),
            personalization_value: random(),
            hash_algo: spec.realm_hash,
            public_key: rak_claim,
            rim,
            rems,
            public_key_hash_algo: spec.rak_hash,
            other: Vec::new(),
        };
        let mut instance_id = [0u8; 33];
        instance_id[0] = 0x01;
        instance_id[1..].copy_from_slice(&SHA256.digest(cpak_public.point()));
        let signer_id = SHA256.digest(b"negative-test signer");
        let sw_components = [("BL2", "2.10.0"), ("BL31", "2.10.0"), ("RMM", "0.5.0")]
            .into_iter()
            .map(|(name, version)| SwComponent {
                measurement_type: Some(name.into()),
                measurement_value: SHA256.digest(name.as_bytes()),
                version: Some(version.into()),
                signer_id: signer_id.clone(),
                measurement_description: Some("sha-256".into()),
                other: Vec::new(),
            })
            .collect();
        let platform = PlatformClaims {
            profile: platform_profile.to_string(),
            challenge: platform_challenge,
            implementation_id: SHA256
                .digest(b"negative-test implementation")
                .try_into()
                .unwrap(),
            instance_id,
            config: vec![0xcf; 4],
            lifecycle: 0x3003,
            sw_components,
            verification_service: Some("https://veraison.example/verify".into()),
            hash_algo: Some("sha-256".into()),
            other: Vec::new(),
        };
        Self {
            envelope: spec.envelope,
            cpak,
            cpak_alg,
            cpak_public,
            rak,
            realm,
            platform,
        }
    }

    fn realm_payload(&self) -> Vec<u8> {
        build::encode_realm_claims(&self.realm).unwrap()
    }

    fn platform_payload(&self) -> Vec<u8> {
        build::encode_platform_claims(&self.platform).unwrap()
    }

    /// The realm claims as an editable list of CBOR map entries.
    fn realm_map(&self) -> Vec<(Value, Value)> {
        match ciborium::de::from_reader(self.realm_payload().as_slice()).unwrap() {
            Value::Map(entries) => entries,
            other => panic!("realm claims are not a map: {other:?}"),
        }
    }

    fn sign_realm(&self, payload: Vec<u8>) -> Vec<u8> {
        let signer = Signer {
            algorithm: SignatureAlgorithm::Es384,
            key: &self.rak,
        };
        build::sign1(payload, &signer).unwrap()
    }

    fn sign_platform(&self, payload: Vec<u8>) -> Vec<u8> {
        let signer = Signer {
            algorithm: self.cpak_alg,
            key: &self.cpak,
        };
        build::sign1(payload, &signer).unwrap()
    }

    fn realm_sign1(&self) -> Vec<u8> {
        self.sign_realm(self.realm_payload())
    }

    fn platform_sign1(&self) -> Vec<u8> {
        self.sign_platform(self.platform_payload())
    }

    fn assemble(&self, platform_sign1: Vec<u8>, realm_sign1: Vec<u8>) -> Vec<u8> {
        build::collection(self.envelope, platform_sign1, realm_sign1).unwrap()
    }

    fn bytes(&self) -> Vec<u8> {
        self.assemble(self.platform_sign1(), self.realm_sign1())
    }

    /// A token whose realm claims are `entries`, signed by the RAK.
    fn with_realm_map(&self, entries: Vec<(Value, Value)>) -> Vec<u8> {
        let realm = self.sign_realm(to_cbor(&Value::Map(entries)));
        self.assemble(self.platform_sign1(), realm)
    }

    fn options(&self) -> VerifyOptions {
        VerifyOptions {
            expected_challenge: Some(self.realm.challenge),
            ..Default::default()
        }
    }

    fn verify(&self, bytes: &[u8]) -> Result<VerifiedCcaToken, VerifyError> {
        cca::verify_bytes(bytes, &self.cpak_public, &self.options())
    }
}

/// A fresh valid token of the given kind and the CPAK that verifies it.
fn valid_token(spec: Spec) -> (Vec<u8>, PlatformKey, Fixture) {
    let fixture = Fixture::new(spec);
    let bytes = fixture.bytes();
    let cpak =
        PlatformKey::from_point(spec.platform_curve, fixture.cpak.public_key().as_ref()).unwrap();
    (bytes, cpak, fixture)
}

fn set(entries: &mut [(Value, Value)], label: i64, value: Value) {
    let slot = entries
        .iter_mut()
        .find(|(k, _)| *k == int(label))
        .unwrap_or_else(|| panic!("no claim {label}"));
    slot.1 = value;
}

/// Assert that `result` failed the check named `check`; return the error.
#[track_caller]
fn rejected(result: Result<VerifiedCcaToken, VerifyError>, check: &str) -> VerifyError {
    match result {
        Ok(t) => panic!("token was accepted; expected {check}: {:?}", t.realm()),
        Err(e) => {
            assert_eq!(e.check(), check, "wrong reason: {e}");
            e
        }
    }
}

#[track_caller]
fn assert_matches_fixture(token: &VerifiedCcaToken, f: &Fixture) {
    assert_eq!(token.envelope(), f.envelope);
    assert!(token.challenge_checked());
    assert_eq!(token.realm().challenge, f.realm.challenge);
    assert_eq!(token.realm().rim, f.realm.rim);
    assert_eq!(token.realm().rim.algorithm(), f.realm.hash_algo);
    assert_eq!(token.realm().rems, f.realm.rems);
    assert_eq!(
        token.realm().public_key_hash_algo,
        f.realm.public_key_hash_algo
    );
    assert_eq!(token.realm().public_key, f.realm.public_key);
    assert_eq!(token.realm().profile, f.realm.profile);
    assert_eq!(token.platform(), &f.platform);
    assert!(!token.is_insecure_emulated());
}

// ------------------------------------------------------------------ valid tokens

#[test]
fn valid_tag399_raw_rak_all_hash_combinations() {
    for realm_hash in HASHES {
        for rak_hash in HASHES {
            let (bytes, cpak, f) = valid_token(Spec::rmm10(realm_hash, rak_hash));
            let token = cca::verify_bytes(&bytes, &cpak, &f.options())
                .unwrap_or_else(|e| panic!("{realm_hash:?}/{rak_hash:?}: {e}"));
            assert_matches_fixture(&token, &f);
            assert_eq!(token.envelope(), Envelope::Tag399);
            assert_eq!(token.realm().public_key.encoding(), RakEncoding::RawPoint);
            assert_eq!(token.realm().profile, None);
            assert_eq!(token.platform().challenge.len(), rak_hash.digest_len());
            assert_eq!(token.realm().rim.as_bytes().len(), realm_hash.digest_len());
        }
    }
}

#[test]
fn valid_tag907_cose_key_rak_all_hash_combinations() {
    for realm_hash in HASHES {
        for rak_hash in HASHES {
            let (bytes, cpak, f) = valid_token(Spec::cmw(realm_hash, rak_hash));
            let token = cca::verify_bytes(&bytes, &cpak, &f.options())
                .unwrap_or_else(|e| panic!("{realm_hash:?}/{rak_hash:?}: {e}"));
            assert_matches_fixture(&token, &f);
            assert_eq!(token.envelope(), Envelope::Tag907);
            assert_eq!(token.realm().public_key.encoding(), RakEncoding::CoseKey);
            assert_eq!(
                token.realm().public_key.point(),
                f.rak.public_key().as_ref()
            );
            assert_eq!(token.realm().profile.as_deref(), Some(REALM_PROFILE_2023));
            assert_eq!(token.platform().profile, PLATFORM_PROFILE_2023);
        }
    }
}

#[test]
fn valid_tag907_with_bare_bstr_entries_all_hash_combinations() {
    for realm_hash in HASHES {
        for rak_hash in HASHES {
            let f = Fixture::new(Spec::cmw(realm_hash, rak_hash));
            let bytes = to_cbor(&Value::Tag(
                907,
                Box::new(Value::Map(vec![
                    (int(LABEL_PLATFORM_TOKEN), Value::Bytes(f.platform_sign1())),
                    (int(LABEL_REALM_TOKEN), Value::Bytes(f.realm_sign1())),
                ])),
            ));
            assert_eq!(&bytes[..3], &[0xd9, 0x03, 0x8b], "tag 907 head");
            let token = f
                .verify(&bytes)
                .unwrap_or_else(|e| panic!("{realm_hash:?}/{rak_hash:?}: {e}"));
            assert_matches_fixture(&token, &f);
            assert_eq!(token.envelope(), Envelope::Tag907);
        }
    }
}

#[test]
fn valid_token_with_p256_platform_key() {
    for envelope in [Envelope::Tag399, Envelope::Tag907] {
        let spec = Spec {
            platform_curve: Curve::P256,
            envelope,
            ..Spec::rmm10(SHA512, SHA256)
        };
        let (bytes, cpak, f) = valid_token(spec);
        assert_eq!(cpak.curve(), Curve::P256);
        let token = cca::verify_bytes(&bytes, &cpak, &f.options()).unwrap();
        assert_matches_fixture(&token, &f);
        assert_eq!(
            token.token().platform().algorithm(),
            SignatureAlgorithm::Es256
        );
        assert_eq!(token.token().realm().algorithm(), SignatureAlgorithm::Es384);
    }
}

#[test]
fn valid_token_without_expected_challenge_is_marked_unchecked() {
    let (bytes, cpak, f) = valid_token(Spec::default_399());
    let token = cca::verify_bytes(&bytes, &cpak, &VerifyOptions::default()).unwrap();
    assert!(!token.challenge_checked());
    assert_eq!(token.realm().challenge, f.realm.challenge);
}

// ------------------------------------------------------------------ signatures and binding

#[test]
fn platform_signature_flipped() {
    let f = Fixture::new(Spec::default_399());
    let mut platform = f.platform_sign1();
    flip_last(&mut platform);
    let err = rejected(
        f.verify(&f.assemble(platform, f.realm_sign1())),
        "platform-signature",
    );
    assert_eq!(err, VerifyError::PlatformSignature);
}

#[test]
fn realm_signature_flipped() {
    for spec in [Spec::default_399(), Spec::cmw(SHA512, SHA512)] {
        let f = Fixture::new(spec);
        let mut realm = f.realm_sign1();
        flip_last(&mut realm);
        let err = rejected(
            f.verify(&f.assemble(f.platform_sign1(), realm)),
            "realm-signature",
        );
        assert_eq!(err, VerifyError::RealmSignature);
    }
}

#[test]
fn platform_challenge_is_hash_of_another_key() {
    for rak_hash in HASHES {
        let mut f = Fixture::new(Spec::rmm10(SHA256, rak_hash));
        let other = keypair(Curve::P384);
        f.platform.challenge = rak_hash.digest(other.public_key().as_ref());
        let err = rejected(f.verify(&f.bytes()), "platform-challenge-binds-rak");
        assert_eq!(
            err,
            VerifyError::RakBinding {
                alg: rak_hash.name()
            }
        );
    }
}

#[test]
fn platform_challenge_hashed_with_the_other_algorithm() {
    // sha-256 named in 44240 but the platform challenge is the sha-512 of the
    // RAK (a valid 64-byte length): still unbound.
    let mut f = Fixture::new(Spec::rmm10(SHA256, SHA256));
    f.platform.challenge = SHA512.digest(f.realm.public_key.claim_bytes());
    rejected(f.verify(&f.bytes()), "platform-challenge-binds-rak");
}

#[test]
fn platform_key_of_the_wrong_curve() {
    let (bytes, _, _) = valid_token(Spec::default_399());
    let p256 = public_key(Curve::P256, &keypair(Curve::P256));
    let err = rejected(
        cca::verify_bytes(&bytes, &p256, &VerifyOptions::default()),
        "platform-key-algorithm",
    );
    assert_eq!(
        err,
        VerifyError::PlatformKeyMismatch {
            token_alg: "ES384",
            key_alg: "ES256"
        }
    );
}

#[test]
fn platform_key_of_another_platform() {
    let (bytes, _, _) = valid_token(Spec::default_399());
    let other = public_key(Curve::P384, &keypair(Curve::P384));
    let err = rejected(
        cca::verify_bytes(&bytes, &other, &VerifyOptions::default()),
        "platform-signature",
    );
    assert_eq!(err, VerifyError::PlatformSignature);
}

#[test]
fn expected_challenge_differs() {
    let f = Fixture::new(Spec::default_399());
    let mut options = f.options();
    options.expected_challenge = Some(Challenge(random()));
    let err = rejected(
        cca::verify_bytes(&f.bytes(), &f.cpak_public, &options),
        "realm-challenge",
    );
    assert_eq!(err, VerifyError::ChallengeMismatch);
}

#[test]
fn lifecycle_not_secured_unless_insecure_policy() {
    let mut f = Fixture::new(Spec::default_399());
    f.platform.lifecycle = 0x5000;
    let bytes = f.bytes();
    let err = rejected(f.verify(&bytes), "platform-lifecycle");
    assert_eq!(
        err,
        VerifyError::LifecycleNotSecured {
            state: 0x5000,
            name: "recoverable-psa-rot-debug"
        }
    );
    let options = VerifyOptions {
        lifecycle: LifecyclePolicy::InsecureAcceptAny,
        ..f.options()
    };
    let token = cca::verify_bytes(&bytes, &f.cpak_public, &options).unwrap();
    assert_eq!(token.platform().lifecycle, 0x5000);
    assert_eq!(token.realm().rim, f.realm.rim);
}

// ------------------------------------------------------------------ outer encoding

#[test]
fn outer_tag_400() {
    let f = Fixture::new(Spec::default_399());
    let mut bytes = f.bytes();
    assert_eq!(&bytes[..3], &[0xd9, 0x01, 0x8f]);
    bytes[2] = 0x90; // tag 400
    let err = rejected(f.verify(&bytes), "collection-tag");
    assert_eq!(
        err,
        VerifyError::Parse(ParseError::UnknownTag { found: Some(400) })
    );
}

#[test]
fn truncated_by_40_bytes() {
    let f = Fixture::new(Spec::default_399());
    let bytes = f.bytes();
    let err = rejected(
        f.verify(&bytes[..bytes.len() - 40]),
        "cbor-length-exceeds-input",
    );
    assert!(matches!(
        err,
        VerifyError::Parse(ParseError::Cbor {
            part: Part::Collection,
            source: CborError::LengthExceedsInput { .. }
        })
    ));
}

#[test]
fn six_trailing_bytes() {
    let f = Fixture::new(Spec::default_399());
    let mut bytes = f.bytes();
    bytes.extend_from_slice(&[0x00, 0xff, 0xde, 0xad, 0xbe, 0xef]);
    let err = rejected(f.verify(&bytes), "cbor-trailing-bytes");
    assert_eq!(
        err,
        VerifyError::Parse(ParseError::Cbor {
            part: Part::Collection,
            source: CborError::TrailingBytes { count: 6 }
        })
    );
}

#[test]
fn huge_bstr_length_prefix() {
    let mut bytes = vec![0xd9, 0x01, 0x8f, 0xa2, 0x19, 0xac, 0xca];
    bytes.extend_from_slice(&[0x5b, 0, 0, 0, 1, 0, 0, 0, 0]);
    bytes.extend_from_slice(&[0u8; 64]);
    let cpak = public_key(Curve::P384, &keypair(Curve::P384));
    let err = rejected(
        cca::verify_bytes(&bytes, &cpak, &VerifyOptions::default()),
        "cbor-length-exceeds-input",
    );
    assert_eq!(
        err,
        VerifyError::Parse(ParseError::Cbor {
            part: Part::Collection,
            source: CborError::LengthExceedsInput {
                offset: 7,
                declared: 1 << 32,
                available: 64
            }
        })
    );
}

#[test]
fn deeply_nested_arrays_as_platform_token() {
    let f = Fixture::new(Spec::default_399());
    let mut bytes = vec![0xd9, 0x01, 0x8f, 0xa2, 0x19, 0xac, 0xca];
    bytes.extend(std::iter::repeat_n(0x81, 10_000));
    bytes.push(0x40);
    bytes.extend(to_cbor(&int(LABEL_REALM_TOKEN)));
    bytes.extend(to_cbor(&Value::Bytes(f.realm_sign1())));
    let err = rejected(f.verify(&bytes), "cbor-nesting-too-deep");
    assert!(matches!(
        err,
        VerifyError::Parse(ParseError::Cbor {
            part: Part::Collection,
            source: CborError::TooDeep { .. }
        })
    ));
}

#[test]
fn collection_with_a_third_key() {
    let f = Fixture::new(Spec::default_399());
    let bytes = to_cbor(&Value::Tag(
        399,
        Box::new(Value::Map(vec![
            (int(LABEL_PLATFORM_TOKEN), Value::Bytes(f.platform_sign1())),
            (int(LABEL_REALM_TOKEN), Value::Bytes(f.realm_sign1())),
            (int(44242), Value::Bytes(vec![1, 2, 3])),
        ])),
    ));
    let err = rejected(f.verify(&bytes), "collection-shape");
    assert!(matches!(err, VerifyError::Parse(ParseError::Collection(_))));
}

#[test]
fn tag907_entry_with_wrong_content_format() {
    let f = Fixture::new(Spec::cmw(SHA256, SHA256));
    let record =
        |cf: u64, b: Vec<u8>| Value::Array(vec![Value::Integer(cf.into()), Value::Bytes(b)]);
    let bytes = to_cbor(&Value::Tag(
        907,
        Box::new(Value::Map(vec![
            (int(LABEL_PLATFORM_TOKEN), record(264, f.platform_sign1())),
            (int(LABEL_REALM_TOKEN), record(263, f.realm_sign1())),
        ])),
    ));
    let err = rejected(f.verify(&bytes), "collection-shape");
    assert!(matches!(err, VerifyError::Parse(ParseError::Collection(_))));
}

// ------------------------------------------------------------------ COSE headers

#[test]
fn alg_only_in_unprotected_header() {
    let f = Fixture::new(Spec::default_399());
    let rng = SystemRandom::new();
    let sign1 = CoseSign1Builder::new()
        .unprotected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES384)
                .build(),
        )
        .payload(f.realm_payload())
        .create_signature(b"", |tbs| f.rak.sign(&rng, tbs).unwrap().as_ref().to_vec())
        .build();
    // The signature is valid over the Sig_structure with an empty protected
    // header: only the header rule can reject it.
    let tbs = sign1.tbs_data(b"");
    assert_eq!(
        tbs[..13],
        [
            0x84, 0x6a, b'S', b'i', b'g', b'n', b'a', b't', b'u', b'r', b'e', b'1', 0x40
        ]
    );
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, f.rak.public_key().as_ref())
        .verify(&tbs, &sign1.signature)
        .expect("hand-made signature verifies");
    let realm = sign1.to_tagged_vec().unwrap();
    let err = rejected(
        f.verify(&f.assemble(f.platform_sign1(), realm)),
        "cose-alg-not-protected",
    );
    assert_eq!(
        err,
        VerifyError::Parse(ParseError::AlgorithmNotProtected { part: Part::Realm })
    );
}

#[test]
fn critical_header_in_protected_header() {
    let f = Fixture::new(Spec::default_399());
    let rng = SystemRandom::new();
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES384)
        .content_format(iana::CoapContentFormat::EatCwt)
        .add_critical(iana::HeaderParameter::ContentType)
        .build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(f.realm_payload())
        .create_signature(b"", |tbs| f.rak.sign(&rng, tbs).unwrap().as_ref().to_vec())
        .build();
    let realm = sign1.to_tagged_vec().unwrap();
    let err = rejected(
        f.verify(&f.assemble(f.platform_sign1(), realm)),
        "cose-critical-header",
    );
    assert!(matches!(
        err,
        VerifyError::Parse(ParseError::CriticalHeader {
            part: Part::Realm,
            ..
        })
    ));
}

#[test]
fn untagged_sign1_is_accepted() {
    // Tag 18 is optional; stripping it keeps the token valid.
    let f = Fixture::new(Spec::default_399());
    let strip = |b: Vec<u8>| {
        let sign1 = coset::CoseSign1::from_tagged_slice(&b).unwrap();
        sign1.to_vec().unwrap()
    };
    let bytes = f.assemble(strip(f.platform_sign1()), strip(f.realm_sign1()));
    let token = f.verify(&bytes).unwrap();
    assert!(!token.token().platform().is_tagged());
    assert!(!token.token().realm().is_tagged());
    assert_matches_fixture(&token, &f);
}

// ------------------------------------------------------------------ claims

#[test]
fn duplicate_challenge_key_in_realm_claims() {
    let f = Fixture::new(Spec::default_399());
    let mut entries = f.realm_map();
    entries.insert(
        1,
        (int(label::CHALLENGE), Value::Bytes(random::<64>().to_vec())),
    );
    let err = rejected(f.verify(&f.with_realm_map(entries)), "cbor-duplicate-key");
    assert_eq!(
        err,
        VerifyError::Parse(ParseError::Cbor {
            part: Part::Realm,
            source: CborError::DuplicateKey { key: "10".into() }
        })
    );
}

#[test]
fn realm_challenge_of_32_bytes() {
    let f = Fixture::new(Spec::default_399());
    let mut entries = f.realm_map();
    set(
        &mut entries,
        label::CHALLENGE,
        Value::Bytes(f.realm.challenge.0[..32].to_vec()),
    );
    let err = rejected(f.verify(&f.with_realm_map(entries)), "claim-length");
    assert!(matches!(
        err,
        VerifyError::Parse(ParseError::ClaimLength {
            part: Part::Realm,
            label: label::CHALLENGE,
            actual: 32,
            ..
        })
    ));
}

#[test]
fn rim_missing() {
    let f = Fixture::new(Spec::default_399());
    let mut entries = f.realm_map();
    entries.retain(|(k, _)| *k != int(label::REALM_INITIAL_MEASUREMENT));
    let err = rejected(f.verify(&f.with_realm_map(entries)), "claim-missing");
    assert_eq!(
        err,
        VerifyError::Parse(ParseError::MissingClaim {
            part: Part::Realm,
            label: label::REALM_INITIAL_MEASUREMENT,
            name: "cca-realm-initial-measurement"
        })
    );
}

#[test]
fn realm_hash_algorithm_md5() {
    let f = Fixture::new(Spec::default_399());
    let mut entries = f.realm_map();
    set(
        &mut entries,
        label::REALM_HASH_ALGO_ID,
        Value::Text("md5".into()),
    );
    let err = rejected(f.verify(&f.with_realm_map(entries)), "claim-hash-algorithm");
    assert_eq!(
        err,
        VerifyError::Parse(ParseError::UnsupportedHashAlgorithm {
            part: Part::Realm,
            label: label::REALM_HASH_ALGO_ID,
            found: "md5".into()
        })
    );
}

#[test]
fn rems_array_of_three() {
    let f = Fixture::new(Spec::default_399());
    let mut entries = f.realm_map();
    let three = f.realm.rems[..3]
        .iter()
        .map(|m| Value::Bytes(m.as_bytes().to_vec()))
        .collect();
    set(
        &mut entries,
        label::REALM_EXTENSIBLE_MEASUREMENTS,
        Value::Array(three),
    );
    let err = rejected(f.verify(&f.with_realm_map(entries)), "claim-length");
    assert!(matches!(
        err,
        VerifyError::Parse(ParseError::ClaimLength {
            part: Part::Realm,
            label: label::REALM_EXTENSIBLE_MEASUREMENTS,
            actual: 3,
            ..
        })
    ));
}

#[test]
fn unknown_platform_profile() {
    let mut f = Fixture::new(Spec::default_399());
    f.platform.profile = "tag:example.com,2099:cca_platform#9.9.9".into();
    let err = rejected(f.verify(&f.bytes()), "claim-profile");
    assert_eq!(
        err,
        VerifyError::Parse(ParseError::UnknownProfile {
            part: Part::Platform,
            found: "tag:example.com,2099:cca_platform#9.9.9".into()
        })
    );
}

#[test]
fn unknown_realm_claim_is_kept_and_rendered() {
    for spec in [Spec::default_399(), Spec::cmw(SHA512, SHA256)] {
        let mut f = Fixture::new(spec);
        f.realm.other.push(OtherClaim {
            label: int(99999),
            value: Value::Text("unexpected but harmless".into()),
        });
        let token = f.verify(&f.bytes()).unwrap();
        assert_matches_fixture(&token, &f);
        assert_eq!(token.realm().other, f.realm.other);
        let json = cca::json::token_to_json(token.token());
        assert_eq!(
            json["realm"]["other-claims"]["99999"],
            serde_json::json!("unexpected but harmless")
        );
        assert_eq!(
            json["realm"]["cca-realm-initial-measurement"],
            serde_json::json!(f.realm.rim.to_hex())
        );
    }
}

// ------------------------------------------------------------------ INSECURE emulated platform

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &[u8]) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "attestation-negative-{}-{nanos}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sha512(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA512, data)
        .as_ref()
        .to_vec()
}

fn emulated_round_trip(curve: Curve) {
    let (pem, public) = generate_platform_key_pem(curve).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(public.curve(), curve);
    let key_file = TempFile::new("platform-key.pem", pem.as_bytes());
    let measured = TempFile::new(
        "measured.bin",
        b"a realm image, as far as this test cares\n",
    );

    for envelope in [Envelope::Tag399, Envelope::Tag907] {
        let platform = InsecureEmulatedPlatform::from_key_file(key_file.path())
            .unwrap()
            .with_envelope(envelope);
        assert_eq!(platform.platform_public_key(), &public);
        // By default the RIM is the SHA-512 of the running executable.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(platform.rim().as_bytes(), sha512(&exe).as_slice());

        let source: &dyn EvidenceSource = &platform;
        assert!(source.is_insecure());
        assert!(source.describe().contains("INSECURE"));
        let challenge = Challenge(random());
        let bytes = source.attestation_token(&challenge).unwrap();
        let options = VerifyOptions {
            expected_challenge: Some(challenge),
            ..Default::default()
        };
        let token = cca::verify_bytes(&bytes, &public, &options).unwrap();
        assert!(token.is_insecure_emulated());
        assert!(token.challenge_checked());
        assert_eq!(token.envelope(), envelope);
        assert_eq!(token.realm().challenge, challenge);
        assert_eq!(token.realm().rim, platform.rim());
        let expected_encoding = match envelope {
            Envelope::Tag399 => RakEncoding::RawPoint,
            Envelope::Tag907 => RakEncoding::CoseKey,
        };
        assert_eq!(token.realm().public_key.encoding(), expected_encoding);
        let expected_alg = match curve {
            Curve::P256 => SignatureAlgorithm::Es256,
            Curve::P384 => SignatureAlgorithm::Es384,
        };
        assert_eq!(token.token().platform().algorithm(), expected_alg);

        // A different challenge, or another platform's key, fails.
        let wrong = VerifyOptions {
            expected_challenge: Some(Challenge(random())),
            ..Default::default()
        };
        rejected(
            cca::verify_bytes(&bytes, &public, &wrong),
            "realm-challenge",
        );
        let (_, other) = generate_platform_key_pem(curve).unwrap();
        rejected(
            cca::verify_bytes(&bytes, &other, &options),
            "platform-signature",
        );

        // measuring(path): the RIM becomes the SHA-512 of that file.
        let platform = platform.measuring(measured.path()).unwrap();
        let content = std::fs::read(measured.path()).unwrap();
        assert_eq!(platform.rim().algorithm(), HashAlgorithm::Sha512);
        assert_eq!(platform.rim().as_bytes(), sha512(&content).as_slice());
        let bytes = platform.attestation_token(&challenge).unwrap();
        let token = cca::verify_bytes(&bytes, &public, &options).unwrap();
        assert_eq!(token.realm().rim, platform.rim());
        assert!(token.is_insecure_emulated());
    }

    let key_path = key_file.path().to_path_buf();
    let measured_path = measured.path().to_path_buf();
    drop(key_file);
    drop(measured);
    assert!(
        !key_path.exists() && !measured_path.exists(),
        "temp files removed"
    );
}

#[test]
fn emulated_platform_round_trip_p384() {
    emulated_round_trip(Curve::P384);
}

#[test]
fn emulated_platform_round_trip_p256() {
    emulated_round_trip(Curve::P256);
}
