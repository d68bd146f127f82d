//! Claims, proof rules, policy and the admission decision, without sockets.
//! The framework's own signed claims and keys (testdata/certifier) are the
//! golden vectors for signing and verification.

use attestation::cca::Curve;
use attestation::certifier::admission::{
    CertError, issue_admission_certificate, verify_admission_certificate,
};
use attestation::certifier::claims::{ClaimError, parse_time, sign_claim, verify_claim};
use attestation::certifier::clause::{
    key_entity, measurement_entity, same_clause, says, simple, unary, verb,
};
use attestation::certifier::decide::{Admitted, Refusal, admission_challenge, decide};
use attestation::certifier::keys::{PublicKey, SigningKey};
use attestation::certifier::policy::{Policy, PolicyError, Role, descriptor};
use attestation::certifier::proof::{ProofError, ProofStep, check_step, verify_proof};
use attestation::certifier::proto::{
    ClaimMessage, KeyMessage, SignedClaimMessage, SignedClaimSequence, VseClause, decode_bounded,
};
use attestation::platform::EvidenceSource;
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};
use prost::Message;

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/certifier")
            .join(name),
    )
    .unwrap()
}

fn signed_claim_1() -> SignedClaimMessage {
    decode_bounded(&testdata(
        "signed_claim_1_policy_says_measurement.signed_claim_message.bin",
    ))
    .unwrap()
}

fn at(s: &str) -> i64 {
    parse_time(s).unwrap()
}

#[test]
fn framework_signed_claims_verify_inside_their_window_only() {
    let sc = signed_claim_1();
    let v = verify_claim(&sc, at("2023-01-01T00:00:00Z")).unwrap();
    assert_eq!(v.clause.verb.as_deref(), Some("says"));
    let inner = v.clause.clause.as_deref().unwrap();
    let ts1: VseClause =
        decode_bounded(&testdata("ts1_measurement_is_trusted.vse_clause.bin")).unwrap();
    assert!(same_clause(inner, &ts1), "signed_claim_1 says ts1");
    assert!(matches!(
        verify_claim(&sc, at("2024-01-01T00:00:00Z")),
        Err(ClaimError::Expired { .. })
    ));
    assert!(matches!(
        verify_claim(&sc, at("2022-01-01T00:00:00Z")),
        Err(ClaimError::Expired { .. })
    ));

    let endorsement: SignedClaimMessage = decode_bounded(&testdata(
        "platform_attest_endorsement_2025.signed_claim_message.bin",
    ))
    .unwrap();
    let v = verify_claim(&endorsement, at("2025-12-01T00:00:00Z")).unwrap();
    assert_eq!(
        v.clause.clause.as_deref().unwrap().verb.as_deref(),
        Some(verb::IS_TRUSTED_FOR_ATTESTATION)
    );
}

#[test]
fn any_change_to_the_signed_bytes_breaks_the_signature() {
    let sc = signed_claim_1();
    let bytes = sc.serialized_claim_message.clone().unwrap();
    for i in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        let mut t = sc.clone();
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        t.serialized_claim_message = Some(b);
        assert!(
            matches!(
                verify_claim(&t, at("2023-01-01T00:00:00Z")),
                Err(ClaimError::BadSignature { .. })
            ),
            "byte {i}"
        );
    }
    // An algorithm the key does not use is no escape hatch.
    let mut t = sc.clone();
    t.signing_algorithm = Some("ecc-384-sha384-pkcs-sign".into());
    assert!(matches!(
        verify_claim(&t, at("2023-01-01T00:00:00Z")),
        Err(ClaimError::BadSignature { .. })
    ));
}

#[test]
fn rsa_signing_with_the_framework_policy_key_reproduces_its_signature() {
    // policy_key_file_2022 carries only n, e, d: the primes are recovered.
    let key_msg: KeyMessage =
        decode_bounded(&testdata("policy_key_file_2022.key_message.bin")).unwrap();
    let key = SigningKey::from_rsa_key_message(&key_msg).unwrap();
    let sc = signed_claim_1();
    assert_eq!(
        PublicKey::from_key_message(sc.signing_key.as_ref().unwrap()).unwrap(),
        key.public_key()
    );
    let sig = key
        .sign(sc.serialized_claim_message.as_deref().unwrap())
        .unwrap();
    assert_eq!(Some(sig), sc.signature, "PKCS#1 v1.5 is deterministic");

    // A key file with all CRT parameters signs claims that verify.
    let attest: KeyMessage =
        decode_bounded(&testdata("attest_key_file_2025.key_message.bin")).unwrap();
    let key = SigningKey::from_rsa_key_message(&attest).unwrap();
    let clause = unary(measurement_entity(&[1; 32]), verb::IS_TRUSTED);
    let now = 1_800_000_000;
    let signed = sign_claim(&key, "attestKey", &clause, "", now - 1, now + 1).unwrap();
    assert_eq!(
        signed.signing_algorithm.as_deref(),
        Some("rsa-2048-sha256-pkcs-sign")
    );
    assert!(same_clause(
        &verify_claim(&signed, now).unwrap().clause,
        &clause
    ));
}

#[test]
fn ecdsa_p256_and_p384_claims_round_trip() {
    let rng = ring::rand::SystemRandom::new();
    let p384 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        &rng,
    )
    .unwrap();
    let keys = [
        SigningKey::generate_p256().unwrap().0,
        SigningKey::from_pkcs8(p384.as_ref()).unwrap(),
    ];
    let now = 1_800_000_000;
    for key in &keys {
        let clause = says(
            key_entity(&key.public_key(), "k"),
            unary(measurement_entity(&[9; 64]), verb::IS_TRUSTED),
        );
        let signed = sign_claim(key, "k", &clause, "role:runtime", now - 10, now + 10).unwrap();
        let v = verify_claim(&signed, now).unwrap();
        assert_eq!(v.descriptor, "role:runtime");
        assert_eq!(v.signer, key.public_key());
        // The claim's own window is enforced.
        assert!(matches!(
            verify_claim(&signed, now + 11),
            Err(ClaimError::Expired { .. })
        ));
        // Claim format other than vse-clause is refused even when signed.
        let mut cm: ClaimMessage =
            decode_bounded(signed.serialized_claim_message.as_deref().unwrap()).unwrap();
        cm.claim_format = Some("vse-attestation-report".into());
        let bytes = cm.encode_to_vec();
        let other = SignedClaimMessage {
            signature: Some(key.sign(&bytes).unwrap()),
            serialized_claim_message: Some(bytes),
            ..signed.clone()
        };
        assert!(matches!(
            verify_claim(&other, now),
            Err(ClaimError::Format(_))
        ));
    }
}

fn fresh_key() -> PublicKey {
    SigningKey::generate_p256().unwrap().0.public_key()
}

#[test]
fn proof_rules_hold_and_fail_where_the_framework_says() {
    let (pk, k1, k2) = (
        key_entity(&fresh_key(), "policy"),
        key_entity(&fresh_key(), "k1"),
        key_entity(&fresh_key(), "k2"),
    );
    let m = measurement_entity(&[5; 32]);
    let trusted = |e: &_| unary(Clone::clone(e), verb::IS_TRUSTED);
    let step = |s1: &VseClause, s2: &VseClause, rule, c: &VseClause| ProofStep {
        s1: s1.clone(),
        s2: s2.clone(),
        rule,
        conclusion: c.clone(),
    };
    // R3: K is-trusted, K says X ⊢ X; not for a narrower verb.
    let x = trusted(&m);
    assert!(check_step(&step(
        &trusted(&pk),
        &says(pk.clone(), x.clone()),
        3,
        &x
    )));
    let pk_att = unary(pk.clone(), verb::IS_TRUSTED_FOR_ATTESTATION);
    assert!(!check_step(&step(
        &pk_att,
        &says(pk.clone(), x.clone()),
        3,
        &x
    )));
    // R3 with the wrong speaker.
    assert!(!check_step(&step(
        &trusted(&pk),
        &says(k1.clone(), x.clone()),
        3,
        &x
    )));

    // R5: trust flows only to an equal or narrower verb.
    let k1_att = unary(k1.clone(), verb::IS_TRUSTED_FOR_ATTESTATION);
    assert!(check_step(&step(
        &trusted(&pk),
        &says(pk.clone(), k1_att.clone()),
        5,
        &k1_att
    )));
    let k2_trusted = trusted(&k2);
    assert!(!check_step(&step(
        &k1_att,
        &says(k1.clone(), k2_trusted.clone()),
        5,
        &k2_trusted
    )));

    // R6: an attestation key vouches for speaks-for; an authentication key cannot.
    let sf = simple(k2.clone(), verb::SPEAKS_FOR, m.clone());
    assert!(check_step(&step(
        &k1_att,
        &says(k1.clone(), sf.clone()),
        6,
        &sf
    )));
    let k1_auth = unary(k1.clone(), verb::IS_TRUSTED_FOR_AUTHENTICATION);
    assert!(!check_step(&step(
        &k1_auth,
        &says(k1.clone(), sf.clone()),
        6,
        &sf
    )));

    // R1 / R7 / R11 need the same measurement.
    let goal = unary(k2.clone(), verb::IS_TRUSTED_FOR_AUTHENTICATION);
    assert!(check_step(&step(&trusted(&m), &sf, 1, &goal)));
    let other_m = measurement_entity(&[6; 32]);
    assert!(!check_step(&step(&trusted(&other_m), &sf, 1, &goal)));
    assert!(check_step(&step(
        &trusted(&m),
        &sf,
        7,
        &unary(k2.clone(), verb::IS_TRUSTED_FOR_ATTESTATION)
    )));
    assert!(check_step(&step(
        &trusted(&m),
        &sf,
        11,
        &unary(k2.clone(), verb::IS_TRUSTED_FOR_KEY_PROVISION)
    )));
    assert!(
        !check_step(&step(&trusted(&m), &sf, 7, &goal)),
        "R7 does not conclude authentication"
    );
    // R2 and R4 are stubs in the framework: never valid.
    assert!(!check_step(&step(&trusted(&m), &sf, 2, &goal)));
    assert!(!check_step(&step(&trusted(&m), &sf, 4, &goal)));

    // verify_proof: unproved premises are skipped, a bad proved step aborts.
    let steps = [step(&trusted(&m), &sf, 1, &goal)];
    assert_eq!(
        verify_proof(&goal, &[trusted(&m)], &steps),
        Err(ProofError::GoalNotReached)
    );
    assert_eq!(
        verify_proof(&goal, &[trusted(&m), sf.clone()], &steps),
        Ok(())
    );
    let bad = [step(&trusted(&m), &sf, 7, &goal)];
    assert_eq!(
        verify_proof(&goal, &[trusted(&m), sf], &bad),
        Err(ProofError::InvalidStep { index: 0, rule: 7 })
    );
}

/// A policy built in memory, signed by a fresh P-256 policy key.
struct Fixture {
    policy_key: SigningKey,
    pkcs8: Vec<u8>,
    claims: Vec<SignedClaimMessage>,
    platform: InsecureEmulatedPlatform,
    cpak: PublicKey,
    now: i64,
}

impl Fixture {
    fn new() -> Self {
        let (policy_key, pkcs8) = SigningKey::generate_p256().unwrap();
        let (pem, public) = generate_platform_key_pem(Curve::P384).unwrap();
        let der = pem::parse(pem).unwrap().contents().to_vec();
        let platform = InsecureEmulatedPlatform::from_pkcs8(&der).unwrap();
        let cpak = PublicKey::P384(public.point().to_vec());
        Fixture {
            policy_key,
            pkcs8,
            claims: Vec::new(),
            platform,
            cpak,
            now: 1_800_000_000,
        }
    }

    fn add(&mut self, statement: VseClause, descriptor: &str) {
        let pk = key_entity(&self.policy_key.public_key(), "policyKey");
        let c = sign_claim(
            &self.policy_key,
            "policyKey",
            &says(pk, statement),
            descriptor,
            self.now - 10,
            self.now + 10,
        )
        .unwrap();
        self.claims.push(c);
    }

    /// A reference value for `slot` bound to this fixture's platform key.
    fn component(&mut self, slot: &str, value: &[u8], required: bool) {
        let fingerprint = attestation::certifier::policy::platform_fingerprint(&self.cpak).unwrap();
        let mut d = format!(
            "{};cpak={};type={slot}",
            descriptor::CCA_PLATFORM_COMPONENT,
            hex::encode(fingerprint)
        );
        if !required {
            d.push_str(";optional");
        }
        self.add(
            unary(
                measurement_entity(value),
                verb::IS_TRUSTED_PLATFORM_COMPONENT,
            ),
            &d,
        );
    }

    fn platform_entry(&mut self, flags: &str) {
        let cpak = key_entity(&self.cpak, "platformKey");
        self.add(unary(cpak, verb::IS_TRUSTED_FOR_ATTESTATION), flags);
    }

    fn policy(&self) -> Result<Policy, PolicyError> {
        Policy::load(
            &SignedClaimSequence {
                claims: self.claims.clone(),
            },
            &self.policy_key.public_key(),
            self.now,
        )
    }

    fn evidence(&self, auth: &PublicKey) -> (Vec<u8>, Vec<u8>) {
        let nonce = vec![3u8; 32];
        let token = self
            .platform
            .attestation_token(&admission_challenge(&nonce, &auth.ec_spki_der().unwrap()))
            .unwrap();
        (nonce, token)
    }
}

/// A fixture whose policy trusts its emulated platform with `platform_flags`
/// (none: no platform entry) and its RIM with `role_descriptor`; plus
/// evidence from that platform for `auth`.
fn scenario(
    platform_flags: Option<&str>,
    role_descriptor: &str,
    auth: &PublicKey,
) -> (Fixture, Evidence) {
    let mut f = Fixture::new();
    if let Some(flags) = platform_flags {
        f.platform_entry(flags);
    }
    let rim = f.platform.rim().as_bytes().to_vec();
    f.add(
        unary(measurement_entity(&rim), verb::IS_TRUSTED),
        role_descriptor,
    );
    let (nonce, token) = f.evidence(auth);
    (f, Evidence { rim, nonce, token })
}

struct Evidence {
    rim: Vec<u8>,
    nonce: Vec<u8>,
    token: Vec<u8>,
}

impl Fixture {
    fn decide(&self, e: &Evidence, auth: &PublicKey, role: &Role) -> Result<Admitted, Refusal> {
        decide(&self.policy().unwrap(), &e.token, &e.nonce, auth, role)
    }
}

fn flags(parts: &[&str]) -> String {
    parts.join(";")
}

#[test]
fn decide_admits_the_trusted_role_and_explains_every_refusal() {
    use descriptor::{CCA_PLATFORM, INSECURE_EMULATED, SW_COMPONENTS_ANY};
    let auth = fresh_key();
    let device = Role::device();

    // No platform at all.
    let (f, e) = scenario(None, "role:device", &auth);
    assert_eq!(
        f.decide(&e, &auth, &device),
        Err(Refusal::UntrustedPlatform)
    );

    // The emulated key trusted as if it were a real platform: refused.
    let (f, e) = scenario(
        Some(&flags(&[CCA_PLATFORM, SW_COMPONENTS_ANY])),
        "role:device",
        &auth,
    );
    assert_eq!(
        f.decide(&e, &auth, &device),
        Err(Refusal::EmulatedPlatformNotMarked)
    );

    // Marked insecure but firmware appraisal not skipped: components must match.
    let (mut f, e) = scenario(
        Some(&flags(&[CCA_PLATFORM, INSECURE_EMULATED])),
        "role:device",
        &auth,
    );
    let r = f.decide(&e, &auth, &device);
    assert_eq!(
        r,
        Err(Refusal::NoReferenceValues),
        "no reference values: refused"
    );
    let parsed = attestation::cca::parse(&e.token).unwrap();
    let component = parsed.platform().claims().sw_components[0].clone();
    // A reference value bound to no platform (older policies) grants nothing.
    f.add(
        unary(
            measurement_entity(&component.measurement_value),
            verb::IS_TRUSTED_PLATFORM_COMPONENT,
        ),
        descriptor::CCA_PLATFORM_COMPONENT,
    );
    assert_eq!(
        f.decide(&e, &auth, &device),
        Err(Refusal::NoReferenceValues)
    );
    let slot = component.measurement_type.clone().unwrap();
    f.component(&slot, &component.measurement_value, true);
    let admitted = f.decide(&e, &auth, &device).unwrap();
    assert_eq!(admitted.measurement, e.rim);
    assert!(admitted.is_insecure());

    // A personalization value pinned by the policy must match.
    let all = flags(&[CCA_PLATFORM, INSECURE_EMULATED, SW_COMPONENTS_ANY]);
    let (mut f4, e4) = scenario(
        Some(&all),
        &format!("role:device;rpv={}", "11".repeat(64)),
        &auth,
    );
    let r = f4.decide(&e4, &auth, &device);
    assert!(matches!(r, Err(Refusal::NotTrusted { .. })), "{r:?}");
    f4.add(
        unary(measurement_entity(&e4.rim), verb::IS_TRUSTED),
        &format!("role:device;rpv={}", "00".repeat(64)),
    );
    assert!(f4.decide(&e4, &auth, &device).is_ok());

    // Wrong role, other nonce, other auth key, revoked.
    assert!(matches!(
        f.decide(&e, &auth, &Role::runtime()),
        Err(Refusal::WrongRole { .. })
    ));
    let other_nonce = Evidence {
        rim: e.rim.clone(),
        nonce: vec![4u8; 32],
        token: e.token.clone(),
    };
    assert_eq!(
        f.decide(&other_nonce, &auth, &device).map_err(|e| e.code()),
        Err("realm-challenge")
    );
    assert_eq!(
        f.decide(&e, &fresh_key(), &device).map_err(|e| e.code()),
        Err("realm-challenge")
    );
    f.add(
        unary(measurement_entity(&e.rim), verb::IS_REVOKED),
        "revoked:test",
    );
    let r = f.decide(&e, &auth, &device);
    assert!(
        matches!(r, Err(Refusal::Revoked { ref reason, .. }) if reason == "test"),
        "{r:?}"
    );

    // Admission certificate: verifies with the policy key only, within its life.
    let cert = issue_admission_certificate(&f.pkcs8, &admitted, f.now, 3600, None).unwrap();
    let claims =
        verify_admission_certificate(&cert, &f.policy_key.public_key(), f.now + 10).unwrap();
    assert_eq!(claims.role, device);
    assert_eq!(claims.measurement, e.rim);
    assert_eq!(claims.auth_key, auth);
    assert!(claims.insecure_platform);
    assert_eq!(
        verify_admission_certificate(&cert, &fresh_key(), f.now),
        Err(CertError::BadSignature)
    );
    assert_eq!(
        verify_admission_certificate(&cert, &f.policy_key.public_key(), f.now + 3700),
        Err(CertError::Expired)
    );
    let parsed = x509_parser::parse_x509_certificate(&cert).unwrap().1;
    assert_eq!(
        parsed.subject().to_string(),
        format!("O=Measured-{}, CN=CertifierUsers", hex::encode(&e.rim))
    );
    assert_eq!(parsed.issuer().to_string(), "CN=policyAuthority, O=root");
}

#[test]
fn a_policy_is_rejected_whole_if_any_claim_is_not_the_policy_keys() {
    let mut f = Fixture::new();
    f.add(
        unary(measurement_entity(&[1; 32]), verb::IS_TRUSTED),
        "role:runtime",
    );
    assert!(f.policy().is_ok());
    // A claim signed by another key slipped in.
    let other = SigningKey::generate_p256().unwrap().0;
    let stmt = says(
        key_entity(&other.public_key(), "x"),
        unary(measurement_entity(&[2; 32]), verb::IS_TRUSTED),
    );
    f.claims
        .push(sign_claim(&other, "x", &stmt, "role:runtime", f.now - 1, f.now + 1).unwrap());
    assert_eq!(f.policy().unwrap_err(), PolicyError::WrongSigner(1));
    f.claims.pop();
    // A measurement trusted the framework's way (empty descriptor) is a
    // framework app: it grants no role.
    f.add(unary(measurement_entity(&[3; 32]), verb::IS_TRUSTED), "");
    let p = f.policy().unwrap();
    assert_eq!(p.framework_measurements().len(), 1);
    assert_eq!(p.framework_measurements()[0].measurement, vec![3; 32]);
    assert!(
        p.measurements()
            .iter()
            .all(|m| m.measurement != vec![3; 32])
    );
    f.claims.pop();
    // A trusted measurement with a descriptor we do not know, or a verb we do not know.
    f.add(
        unary(measurement_entity(&[3; 32]), verb::IS_TRUSTED),
        "owner:alice",
    );
    assert!(matches!(
        f.policy(),
        Err(PolicyError::Unrecognised { index: 1, .. })
    ));
    f.claims.pop();
    f.add(unary(measurement_entity(&[3; 32]), "is-fabulous"), "");
    assert!(matches!(
        f.policy(),
        Err(PolicyError::Unrecognised { index: 1, .. })
    ));
    f.claims.pop();
    // A tampered signature.
    let mut bad = f.claims[0].clone();
    if let Some(s) = bad.signature.as_mut() {
        let last = s.len() - 1;
        s[last] ^= 1;
    }
    f.claims[0] = bad;
    assert!(matches!(
        f.policy(),
        Err(PolicyError::Claim { index: 0, .. })
    ));
    assert!(Role::new("Bad Role").is_err());
    assert!(Role::new(&"a".repeat(33)).is_err());
    assert_eq!(Role::new("analytics-2").unwrap().as_str(), "analytics-2");
}

// ------------------------------------------- INSECURE marking (issues 17, 24)

/// TF-A's sample implementation id (the one in TF-A's QEMU sample platform
/// token): what a forger would write to look like a real platform.
const TFA_SAMPLE_IMPLEMENTATION_ID: [u8; 32] = [
    0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0x3e, 0, 0x01, 0,
    0, 0, 0x50, 0x58, 0, 0, 0, 0, 0, 0,
];

fn public_test_material(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/cca/public-test-material")
            .join(name),
    )
    .unwrap()
}

/// The TF-M tools test CPAK as an emulated platform: anyone can sign
/// platform tokens with it, since its private half is published.
fn tf_m_test_key_platform() -> (InsecureEmulatedPlatform, PublicKey) {
    let pem = public_test_material("tf-m-tools_cca_platform.pkcs8.pem");
    let der = pem::parse(pem).unwrap().contents().to_vec();
    let platform = InsecureEmulatedPlatform::from_pkcs8(&der)
        .unwrap()
        .with_implementation_id(TFA_SAMPLE_IMPLEMENTATION_ID);
    let cpak = PublicKey::P384(platform.platform_public_key().point().to_vec());
    (platform, cpak)
}

/// Issue 17 item 1: a token signed with the emulated platform key but
/// claiming another implementation id used to be admitted without the
/// INSECURE mark (so peers that refuse INSECURE peers accepted it). The mark
/// now comes from the policy entry whose key verified the token.
#[test]
fn a_forged_implementation_id_under_the_emulated_key_is_still_insecure() {
    use attestation::certifier::insecure::Insecurity;
    use descriptor::{CCA_PLATFORM, INSECURE_EMULATED, SW_COMPONENTS_ANY};
    let auth = fresh_key();
    let (mut f, _) = scenario(
        Some(&flags(&[
            CCA_PLATFORM,
            INSECURE_EMULATED,
            SW_COMPONENTS_ANY,
        ])),
        "role:device",
        &auth,
    );
    let rim = f.platform.rim().as_bytes().to_vec();
    let forged = std::mem::replace(&mut f.platform, Fixture::new().platform)
        .with_implementation_id(TFA_SAMPLE_IMPLEMENTATION_ID);
    f.platform = forged;
    let (nonce, token) = f.evidence(&auth);
    let parsed = attestation::cca::parse(&token).unwrap();
    assert_eq!(
        parsed.platform().claims().implementation_id,
        TFA_SAMPLE_IMPLEMENTATION_ID,
        "the token does not say it is emulated"
    );
    let admitted = f
        .decide(&Evidence { rim, nonce, token }, &auth, &Role::device())
        .unwrap();
    assert_eq!(admitted.insecure, Some(Insecurity::EmulatedPlatform));
    let cert = issue_admission_certificate(&f.pkcs8, &admitted, f.now, 3600, None).unwrap();
    let claims = verify_admission_certificate(&cert, &f.policy_key.public_key(), f.now).unwrap();
    assert!(claims.insecure_platform, "the certificate carries the mark");
    // A peer that does not accept INSECURE peers refuses it.
    let requirement = attestation::atls::PeerRequirement::roles([Role::device()]).unwrap();
    assert_eq!(
        requirement.check(&claims),
        Err(attestation::atls::PeerError::InsecurePlatform)
    );
}

/// Issue 24: the TF-M tools test CPAK trusted on purpose (`insecure-test-key`)
/// admits, but every certificate is INSECURE; trusted *without* the flag (an
/// older or hand-edited policy) it is recognised by its bytes and the
/// admission is INSECURE all the same.
#[test]
fn a_public_test_cpak_makes_every_admission_insecure() {
    use attestation::certifier::insecure::Insecurity;
    use descriptor::{CCA_PLATFORM, INSECURE_TEST_KEY, SW_COMPONENTS_ANY};
    let auth = fresh_key();
    for platform_flags in [
        flags(&[CCA_PLATFORM, INSECURE_TEST_KEY, SW_COMPONENTS_ANY]),
        flags(&[CCA_PLATFORM, SW_COMPONENTS_ANY]),
    ] {
        let mut f = Fixture::new();
        let (platform, cpak) = tf_m_test_key_platform();
        f.platform = platform;
        f.cpak = cpak;
        f.platform_entry(&platform_flags);
        let rim = f.platform.rim().as_bytes().to_vec();
        f.add(
            unary(measurement_entity(&rim), verb::IS_TRUSTED),
            "role:runtime",
        );
        let policy = f.policy().unwrap();
        assert!(policy.is_insecure(), "{platform_flags}");
        let (nonce, token) = f.evidence(&auth);
        let admitted = f
            .decide(&Evidence { rim, nonce, token }, &auth, &Role::runtime())
            .unwrap();
        match admitted.insecure {
            Some(Insecurity::TestMaterial(m)) => {
                assert_eq!(m.name, "tf-m-tools-cca-platform-cpak")
            }
            other => panic!("{platform_flags}: {other:?}"),
        }
        let cert = issue_admission_certificate(&f.pkcs8, &admitted, f.now, 3600, None).unwrap();
        let claims =
            verify_admission_certificate(&cert, &f.policy_key.public_key(), f.now).unwrap();
        assert!(claims.insecure_platform);
    }
}

/// An operator may declare a key test material that is not on the list.
#[test]
fn a_declared_test_key_marks_admissions_insecure() {
    use attestation::certifier::insecure::Insecurity;
    use descriptor::{CCA_PLATFORM, INSECURE_TEST_KEY, SW_COMPONENTS_ANY};
    let auth = fresh_key();
    let mut f = Fixture::new();
    f.platform = std::mem::replace(&mut f.platform, Fixture::new().platform)
        .with_implementation_id(TFA_SAMPLE_IMPLEMENTATION_ID);
    f.platform_entry(&flags(&[
        CCA_PLATFORM,
        INSECURE_TEST_KEY,
        SW_COMPONENTS_ANY,
    ]));
    let rim = f.platform.rim().as_bytes().to_vec();
    f.add(
        unary(measurement_entity(&rim), verb::IS_TRUSTED),
        "role:runtime",
    );
    let (nonce, token) = f.evidence(&auth);
    let admitted = f
        .decide(&Evidence { rim, nonce, token }, &auth, &Role::runtime())
        .unwrap();
    assert_eq!(admitted.insecure, Some(Insecurity::DeclaredTestKey));

    // The same key and token without the flag: hardware as far as anyone
    // can tell, so no mark (the control for the test above).
    let mut g = Fixture::new();
    g.platform = std::mem::replace(&mut f.platform, Fixture::new().platform);
    g.cpak = f.cpak.clone();
    g.platform_entry(&flags(&[CCA_PLATFORM, SW_COMPONENTS_ANY]));
    let rim = g.platform.rim().as_bytes().to_vec();
    g.add(
        unary(measurement_entity(&rim), verb::IS_TRUSTED),
        "role:runtime",
    );
    let (nonce, token) = g.evidence(&auth);
    let admitted = g
        .decide(&Evidence { rim, nonce, token }, &auth, &Role::runtime())
        .unwrap();
    assert_eq!(admitted.insecure, None);
}

// ------------------------------------ firmware appraisal per platform (17.9)

/// Reference values belong to one platform key and one component type: a
/// value trusted for another platform, or for another slot, does not admit;
/// a required component missing from the token refuses.
#[test]
fn firmware_reference_values_are_per_platform_and_per_component() {
    use descriptor::{CCA_PLATFORM, INSECURE_EMULATED};
    let auth = fresh_key();
    let device = Role::device();
    let (mut f, e) = scenario(
        Some(&flags(&[CCA_PLATFORM, INSECURE_EMULATED])),
        "role:device",
        &auth,
    );
    let parsed = attestation::cca::parse(&e.token).unwrap();
    let c = parsed.platform().claims().sw_components[0].clone();
    let slot = c.measurement_type.clone().unwrap();

    // The right value bound to ANOTHER platform's key: refused.
    let other = Fixture::new();
    let other_fp = attestation::certifier::policy::platform_fingerprint(&other.cpak).unwrap();
    f.add(
        unary(
            measurement_entity(&c.measurement_value),
            verb::IS_TRUSTED_PLATFORM_COMPONENT,
        ),
        &format!(
            "{};cpak={};type={slot}",
            descriptor::CCA_PLATFORM_COMPONENT,
            hex::encode(other_fp)
        ),
    );
    assert_eq!(
        f.decide(&e, &auth, &device),
        Err(Refusal::NoReferenceValues)
    );

    // The right value for another SLOT of this platform: refused, naming the slot.
    f.component("RMM", &c.measurement_value, false);
    let r = f.decide(&e, &auth, &device);
    assert!(
        matches!(&r, Err(Refusal::PlatformComponentNotTrusted { kind, .. }) if kind == &slot),
        "{r:?}"
    );
    assert_eq!(r.unwrap_err().code(), "platform-component-not-trusted");

    // Bound to this platform and slot: admitted.
    f.component(&slot, &c.measurement_value, true);
    f.decide(&e, &auth, &device).unwrap();

    // A required component the token lacks: refused.
    f.component("BL2", &[9u8; 32], true);
    let r = f.decide(&e, &auth, &device);
    assert_eq!(
        r,
        Err(Refusal::PlatformComponentMissing { kind: "BL2".into() })
    );
    assert_eq!(r.unwrap_err().code(), "platform-component-missing");
}

/// A downgraded firmware (a measurement that is not the reference value for
/// its slot) is refused even when the old value is trusted for another slot.
#[test]
fn a_component_value_from_another_slot_does_not_pass() {
    use descriptor::{CCA_PLATFORM, INSECURE_EMULATED};
    let auth = fresh_key();
    let (mut f, e) = scenario(
        Some(&flags(&[CCA_PLATFORM, INSECURE_EMULATED])),
        "role:device",
        &auth,
    );
    let parsed = attestation::cca::parse(&e.token).unwrap();
    let c = parsed.platform().claims().sw_components[0].clone();
    let slot = c.measurement_type.clone().unwrap();
    f.component(&slot, &[1u8; 32], true);
    f.component("OTHER", &c.measurement_value, false);
    let r = f.decide(&e, &auth, &Role::device());
    assert!(
        matches!(&r, Err(Refusal::PlatformComponentNotTrusted { kind, value }) if kind == &slot && value == &hex::encode(&c.measurement_value)),
        "{r:?}"
    );
}

/// Issue 17.6: whether INSECURE peers are accepted is the signed policy's
/// decision. A host's `--allow-insecure-peers` only takes effect while the
/// policy trusts an INSECURE platform; under a policy that trusts none, an
/// INSECURE certificate (issued under an older policy) is refused.
#[test]
fn insecure_peers_are_accepted_only_while_the_policy_trusts_an_insecure_platform() {
    use attestation::atls::{PeerError, PeerRequirement};
    use attestation::certifier::admission::AdmissionClaims;
    use descriptor::{CCA_PLATFORM, INSECURE_EMULATED, SW_COMPONENTS_ANY};
    let claims = AdmissionClaims {
        role: Role::runtime(),
        measurement: vec![5; 64],
        insecure_platform: true,
        platform_instance: [1; 33],
        auth_key: fresh_key(),
        not_after: i64::MAX,
    };
    for (platform_flags, policy_insecure) in [
        (
            flags(&[CCA_PLATFORM, INSECURE_EMULATED, SW_COMPONENTS_ANY]),
            true,
        ),
        (flags(&[CCA_PLATFORM, SW_COMPONENTS_ANY]), false),
    ] {
        let mut f = Fixture::new();
        f.platform_entry(&platform_flags);
        let policy = f.policy().unwrap();
        assert_eq!(policy.is_insecure(), policy_insecure);
        for host_flag in [true, false] {
            let mut req = PeerRequirement::roles([Role::runtime()]).unwrap();
            let granted = req.allow_insecure_if_policy_does(host_flag, &policy);
            assert_eq!(
                granted,
                host_flag && policy_insecure,
                "{platform_flags} {host_flag}"
            );
            match req.check(&claims) {
                Ok(()) => assert!(granted),
                Err(PeerError::InsecurePlatform) => assert!(!granted),
                Err(other) => panic!("{other:?}"),
            }
            // A secure peer is accepted either way.
            let secure = AdmissionClaims {
                insecure_platform: false,
                ..claims.clone()
            };
            assert_eq!(req.check(&secure), Ok(()));
        }
    }
}
