//! The Certifier Framework's `vse-attestation-package` evidence, verified
//! without sockets. The framework's own platform endorsement and attest key
//! (testdata/certifier) are the vectors: the endorsement is used exactly as
//! the framework signed it; reports are freshly signed with the framework's
//! attest key.

use attestation::certifier::claims::{format_time, parse_time, sign_claim};
use attestation::certifier::clause::{key_entity, measurement_entity, says, unary, verb};
use attestation::certifier::keys::{PublicKey, SigningKey};
use attestation::certifier::policy::{Policy, descriptor};
use attestation::certifier::proto::{
    AttestationUserData, Evidence, EvidencePackage, KeyMessage, SignedClaimMessage,
    SignedClaimSequence, SignedReport, VseAttestationReportInfo, decode_bounded,
};
use attestation::certifier::vse::{
    self, Goal, InsecureSimulatedEnclave, VseRefusal, verify_package,
};
use proptest::prelude::*;
use prost::Message;

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/certifier")
            .join(name),
    )
    .unwrap()
}

/// Inside the window of the framework's 2025 platform endorsement.
fn now() -> i64 {
    parse_time("2026-01-15T12:00:00.00000Z").unwrap()
}

const MEASUREMENT: [u8; 32] = [0x5a; 32];

struct Fixture {
    policy_key: SigningKey,
    endorsement: Vec<u8>,
    platform_key: PublicKey,
    attest_key: KeyMessage,
    app_key: PublicKey,
    claims: Vec<SignedClaimMessage>,
}

impl Fixture {
    /// The framework's policy key (2022, n/e/d only), its platform
    /// endorsement and attest key (2025); a policy trusting that platform
    /// (with `descriptor`) and MEASUREMENT.
    fn new(platform_descriptor: &str) -> Self {
        let policy_key = SigningKey::from_rsa_key_message(
            &decode_bounded(&testdata("policy_key_file_2022.key_message.bin")).unwrap(),
        )
        .unwrap();
        let endorsement = testdata("platform_attest_endorsement_2025.signed_claim_message.bin");
        let scm: SignedClaimMessage = decode_bounded(&endorsement).unwrap();
        let platform_key = PublicKey::from_key_message(scm.signing_key.as_ref().unwrap()).unwrap();
        let attest_key = decode_bounded(&testdata("attest_key_file_2025.key_message.bin")).unwrap();
        let app_key = SigningKey::generate_p256().unwrap().0.public_key();
        let mut f = Self {
            policy_key,
            endorsement,
            platform_key: platform_key.clone(),
            attest_key,
            app_key,
            claims: Vec::new(),
        };
        f.add(
            unary(
                key_entity(&platform_key, "platformKey"),
                verb::IS_TRUSTED_FOR_ATTESTATION,
            ),
            platform_descriptor,
        );
        f.add(
            unary(measurement_entity(&MEASUREMENT), verb::IS_TRUSTED),
            "",
        );
        f
    }

    fn add(&mut self, statement: attestation::certifier::proto::VseClause, d: &str) {
        let clause = says(
            key_entity(&self.policy_key.public_key(), "policyKey"),
            statement,
        );
        self.claims.push(
            sign_claim(
                &self.policy_key,
                "policyKey",
                &clause,
                d,
                now() - 86_400,
                now() + 86_400,
            )
            .unwrap(),
        );
    }

    fn policy(&self) -> Policy {
        Policy::load(
            &SignedClaimSequence {
                claims: self.claims.clone(),
            },
            &self.policy_key.public_key(),
            now(),
        )
        .unwrap()
    }

    fn enclave(&self, measurement: &[u8]) -> InsecureSimulatedEnclave {
        InsecureSimulatedEnclave::new(
            &self.attest_key,
            self.endorsement.clone(),
            measurement.to_vec(),
        )
        .unwrap()
    }

    fn package(&self) -> EvidencePackage {
        self.enclave(&MEASUREMENT)
            .evidence_package(&self.app_key, now() - 60, 3600)
            .unwrap()
    }

    fn verify(&self, p: &EvidencePackage) -> Result<vse::VseAdmitted, VseRefusal> {
        verify_package(&self.policy(), p, Goal::Authentication, now())
    }
}

fn allowed() -> String {
    format!("{};{}", descriptor::VSE_PLATFORM, descriptor::NO_FRESHNESS)
}

/// The report of a package, decoded, and a way to put a changed one back
/// signed with the framework's attest key over exactly `bytes`.
fn signed_report(p: &EvidencePackage) -> SignedReport {
    decode_bounded(p.fact_assertion[1].serialized_evidence.as_deref().unwrap()).unwrap()
}

fn resign(f: &Fixture, p: &mut EvidencePackage, report_bytes: Vec<u8>) {
    let key = SigningKey::from_rsa_key_message(&f.attest_key).unwrap();
    let mut sr = signed_report(p);
    sr.signature = Some(key.sign(&report_bytes).unwrap());
    sr.report = Some(report_bytes);
    p.fact_assertion[1].serialized_evidence = Some(sr.encode_to_vec());
}

fn report_info(p: &EvidencePackage) -> VseAttestationReportInfo {
    decode_bounded(signed_report(p).report.as_deref().unwrap()).unwrap()
}

#[test]
fn the_frameworks_endorsement_and_a_fresh_report_prove_authentication_and_attestation() {
    let f = Fixture::new(&allowed());
    let ok = f.verify(&f.package()).unwrap();
    assert_eq!(ok.measurement(), MEASUREMENT);
    assert_eq!(ok.app_key(), &f.app_key);
    assert_eq!(ok.platform_key(), &f.platform_key);
    assert_eq!(ok.goal(), Goal::Authentication);
    let ok = verify_package(&f.policy(), &f.package(), Goal::Attestation, now()).unwrap();
    assert_eq!(ok.goal(), Goal::Attestation);
}

#[test]
fn a_framework_policy_without_the_freshness_permission_refuses_nonce_less_evidence() {
    // The framework writes an empty descriptor: the platform is trusted, but
    // its replayable evidence is not accepted until the owner says so.
    let f = Fixture::new("");
    let err = f.verify(&f.package()).unwrap_err();
    assert_eq!(err, VseRefusal::FreshnessRequired);
    assert_eq!(err.code(), "no-freshness-refused");
    assert!(err.to_string().contains("--allow-no-freshness"));
    // The permission as a second statement for the same key is enough.
    let mut f = f;
    let platform = f.platform_key.clone();
    f.add(
        unary(
            key_entity(&platform, "platformKey"),
            verb::IS_TRUSTED_FOR_ATTESTATION,
        ),
        &allowed(),
    );
    assert!(f.verify(&f.package()).is_ok());
}

#[test]
fn signatures_cover_the_received_bytes_not_a_re_encoding() {
    let f = Fixture::new(&allowed());
    // A report with an extra (unknown) field, signed over those bytes: a
    // verifier that re-encoded the decoded report would drop the field and
    // fail the signature; ours checks the bytes it received.
    let mut p = f.package();
    let mut bytes = signed_report(&p).report.unwrap();
    bytes.extend_from_slice(&[0x78, 0x01]); // field 15, varint 1
    resign(&f, &mut p, bytes);
    assert!(f.verify(&p).is_ok());
    // Any change to the signed bytes after signing breaks it.
    let mut p = f.package();
    let mut sr = signed_report(&p);
    let mut bytes = sr.report.clone().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    sr.report = Some(bytes);
    p.fact_assertion[1].serialized_evidence = Some(sr.encode_to_vec());
    assert!(matches!(f.verify(&p), Err(VseRefusal::ReportSignature(_))));
    // So does a change to the endorsement's signed claim.
    let mut p = f.package();
    let mut scm: SignedClaimMessage =
        decode_bounded(p.fact_assertion[0].serialized_evidence.as_deref().unwrap()).unwrap();
    let mut b = scm.serialized_claim_message.clone().unwrap();
    b[20] ^= 1;
    scm.serialized_claim_message = Some(b);
    p.fact_assertion[0].serialized_evidence = Some(scm.encode_to_vec());
    assert!(matches!(
        f.verify(&p),
        Err(VseRefusal::Endorsement { index: 0, .. })
    ));
}

#[test]
fn both_framework_time_layouts_are_read_in_report_windows() {
    let f = Fixture::new(&allowed());
    // The Go side's layout, and the C++ side's with a space-padded second.
    for (nb, na) in [
        ("2026:01:15T11:00:00Z", "2026:01:15T13:00:00Z"),
        ("2026-01-15T11:00: 5.00000Z", "2026-01-15T13:00: 5.00000Z"),
    ] {
        let mut p = f.package();
        let mut info = report_info(&p);
        info.not_before = Some(nb.into());
        info.not_after = Some(na.into());
        resign(&f, &mut p, info.encode_to_vec());
        assert!(f.verify(&p).is_ok(), "{nb} .. {na}");
    }
    // Outside the window.
    let mut p = f.package();
    let mut info = report_info(&p);
    info.not_after = Some(format_time(now() - 1));
    resign(&f, &mut p, info.encode_to_vec());
    assert!(matches!(
        f.verify(&p),
        Err(VseRefusal::ReportExpired { .. })
    ));
    // The framework's endorsement outside its own window (it ends 2026-06-07).
    let late = parse_time("2026-07-01T00:00:00Z").unwrap();
    let err = verify_package(&f.policy(), &f.package(), Goal::Authentication, late).unwrap_err();
    assert!(
        matches!(
            err,
            VseRefusal::Endorsement {
                index: 0,
                source: attestation::certifier::claims::ClaimError::Expired { .. }
            }
        ),
        "{err:?}"
    );
}

#[test]
fn untrusted_keys_and_measurements_are_refused_with_their_reason() {
    let f = Fixture::new(&allowed());
    // A report signed by a key no platform endorsed.
    let stranger = SigningKey::generate_p256().unwrap().0;
    let mut p = f.package();
    let bytes = signed_report(&p).report.unwrap();
    let mut sr = signed_report(&p);
    sr.signing_key = Some(stranger.public_key().to_key_message("attestKey"));
    sr.signing_algorithm = Some(stranger.algorithm().into());
    sr.signature = Some(stranger.sign(&bytes).unwrap());
    p.fact_assertion[1].serialized_evidence = Some(sr.encode_to_vec());
    assert_eq!(f.verify(&p).unwrap_err(), VseRefusal::UntrustedPlatform);

    // An endorsement by a platform key the policy does not list.
    let other_platform = SigningKey::generate_p256().unwrap().0;
    let attest_pub = SigningKey::from_rsa_key_message(&f.attest_key)
        .unwrap()
        .public_key();
    let rogue =
        vse::sign_endorsement(&other_platform, &attest_pub, now() - 60, now() + 60).unwrap();
    let mut p = f.package();
    p.fact_assertion[0].serialized_evidence = Some(rogue.encode_to_vec());
    assert_eq!(f.verify(&p).unwrap_err(), VseRefusal::UntrustedPlatform);

    // An endorsement whose signer is not the key that "says" it.
    let liar = sign_claim(
        &other_platform,
        "platformKey",
        &says(
            key_entity(&f.platform_key, "platformKey"),
            unary(
                key_entity(&attest_pub, "attestKey"),
                verb::IS_TRUSTED_FOR_ATTESTATION,
            ),
        ),
        "",
        now() - 60,
        now() + 60,
    )
    .unwrap();
    let mut p = f.package();
    p.fact_assertion[0].serialized_evidence = Some(liar.encode_to_vec());
    assert_eq!(f.verify(&p).unwrap_err(), VseRefusal::NotAnEndorsement(0));

    // A measurement the policy does not list, and a revoked one.
    let p = f
        .enclave(&[0x11; 32])
        .evidence_package(&f.app_key, now() - 60, 3600)
        .unwrap();
    let err = f.verify(&p).unwrap_err();
    assert_eq!(err.code(), "measurement-not-trusted");
    assert!(err.to_string().contains(&hex::encode([0x11; 32])));
    let mut f = f;
    f.add(
        unary(measurement_entity(&MEASUREMENT), verb::IS_REVOKED),
        "revoked:CVE-2026-0001",
    );
    let err = f.verify(&f.package()).unwrap_err();
    assert_eq!(err.code(), "measurement-revoked");
    assert!(err.to_string().contains("CVE-2026-0001"));
}

#[test]
fn a_measurement_trusted_for_a_cca_role_does_not_admit_a_framework_app() {
    let mut f = Fixture::new(&allowed());
    f.claims.pop();
    f.add(
        unary(measurement_entity(&MEASUREMENT), verb::IS_TRUSTED),
        "role:runtime",
    );
    assert_eq!(
        f.verify(&f.package()).unwrap_err().code(),
        "measurement-not-trusted"
    );
}

#[test]
fn packages_not_shaped_as_the_framework_sends_them_are_malformed() {
    let f = Fixture::new(&allowed());
    let mut p = f.package();
    p.prover_type = Some("cca-verifier".into());
    assert_eq!(f.verify(&p).unwrap_err().code(), "unsupported-enclave-type");
    let mut p = f.package();
    p.enclave_type = Some("sev-enclave".into());
    assert_eq!(f.verify(&p).unwrap_err().code(), "unsupported-enclave-type");
    let mut p = f.package();
    p.fact_assertion.reverse();
    assert_eq!(f.verify(&p).unwrap_err().code(), "malformed-evidence");
    let mut p = f.package();
    p.fact_assertion.insert(
        0,
        Evidence {
            evidence_type: Some("cert".into()),
            serialized_evidence: Some(vec![0x30, 0x00]),
        },
    );
    assert_eq!(f.verify(&p).unwrap_err().code(), "malformed-evidence");
    let mut p = f.package();
    p.fact_assertion.clear();
    assert_eq!(f.verify(&p).unwrap_err().code(), "malformed-evidence");
    let mut p = f.package();
    let first = p.fact_assertion[0].clone();
    p.fact_assertion.splice(0..0, std::iter::repeat_n(first, 9));
    assert_eq!(f.verify(&p).unwrap_err().code(), "malformed-evidence");
    // A report without user data or with an empty measurement.
    for change in [
        |i: &mut VseAttestationReportInfo| i.user_data = None,
        |i: &mut VseAttestationReportInfo| i.verified_measurement = Some(Vec::new()),
        |i: &mut VseAttestationReportInfo| i.verified_measurement = Some(vec![1; 65]),
        |i: &mut VseAttestationReportInfo| {
            i.user_data = Some(
                AttestationUserData {
                    enclave_key: None,
                    ..Default::default()
                }
                .encode_to_vec(),
            )
        },
    ] {
        let mut p = f.package();
        let mut info = report_info(&p);
        change(&mut info);
        resign(&f, &mut p, info.encode_to_vec());
        assert_eq!(f.verify(&p).unwrap_err().code(), "malformed-evidence");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Flipping any bit of a valid package's encoding never panics, and
    /// whatever still verifies names the same measurement and app key.
    #[test]
    fn bit_flips_never_panic_nor_change_what_is_admitted(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let f = Fixture::new(&allowed());
        let mut bytes = f.package().encode_to_vec();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        if let Ok(p) = decode_bounded::<EvidencePackage>(&bytes)
            && let Ok(ok) = f.verify(&p)
        {
            prop_assert_eq!(ok.measurement(), MEASUREMENT);
            prop_assert_eq!(ok.app_key(), &f.app_key);
        }
    }

    /// Arbitrary evidence entries are refused, never a panic.
    #[test]
    fn arbitrary_entries_are_refused(
        entries in prop::collection::vec(
            (prop::sample::select(vec![vse::FACT_SIGNED_CLAIM, vse::FACT_SIGNED_REPORT, "x"]),
             prop::collection::vec(any::<u8>(), 0..300)),
            0..4)
    ) {
        let f = Fixture::new(&allowed());
        let p = EvidencePackage {
            prover_type: Some("vse-verifier".into()),
            enclave_type: Some(vse::SIMULATED_ENCLAVE.into()),
            fact_assertion: entries
                .into_iter()
                .map(|(t, b)| Evidence { evidence_type: Some(t.into()), serialized_evidence: Some(b) })
                .collect(),
        };
        prop_assert!(f.verify(&p).is_err());
    }
}
