//! A real Certifier Framework run (testdata/certifier-framework-run, see its
//! PROVENANCE.md): the requests the framework's own sample apps sent, the
//! responses its Go service gave. Our verifier must reach the same verdicts,
//! and our admission certificate must carry the same fields as the Go
//! service's. Verified at a fixed time inside the files' windows.

use attestation::certifier::admission::{certified_key, issue_framework_admission_certificate};
use attestation::certifier::claims::{parse_time, sign_claim, verify_claim};
use attestation::certifier::clause::{key_entity, same_clause, says, unary, verb};
use attestation::certifier::keys::{PublicKey, SigningKey};
use attestation::certifier::policy::{Policy, descriptor};
use attestation::certifier::proto::{
    AttestationUserData, KeyMessage, SignedClaimMessage, SignedClaimSequence, SignedReport,
    TrustRequestMessage, TrustResponseMessage, VseAttestationReportInfo, decode_bounded,
};
use attestation::certifier::vse::{Goal, VseRefusal, verify_package};
use x509_parser::prelude::*;

fn file(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/certifier-framework-run")
            .join(name),
    )
    .unwrap()
}

fn now() -> i64 {
    parse_time("2026-11-24T12:00:00Z").unwrap()
}

fn policy_key() -> (SigningKey, Vec<u8>) {
    let km: KeyMessage = decode_bounded(&file("policy_key_file.bin")).unwrap();
    (
        SigningKey::from_rsa_key_message(&km).unwrap(),
        SigningKey::rsa_pkcs8_from_key_message(&km).unwrap(),
    )
}

/// The framework's policy file, optionally with the owner's permission for
/// nonce-less evidence from its platform key (what `import-framework
/// --allow-no-freshness` adds).
fn policy(name: &str, allow_no_freshness: bool) -> Policy {
    let (key, _) = policy_key();
    let mut seq: SignedClaimSequence = decode_bounded(&file(name)).unwrap();
    let framework = Policy::load(&seq, &key.public_key(), now()).unwrap();
    assert_eq!(framework.vse_platforms().len(), 1);
    assert!(!framework.vse_platforms()[0].allow_no_freshness);
    if allow_no_freshness {
        let platform = framework.vse_platforms()[0].key.clone();
        let stmt = says(
            key_entity(&key.public_key(), "policyKey"),
            unary(
                key_entity(&platform, "platformKey"),
                verb::IS_TRUSTED_FOR_ATTESTATION,
            ),
        );
        let flags = format!("{};{}", descriptor::VSE_PLATFORM, descriptor::NO_FRESHNESS);
        seq.claims
            .push(sign_claim(&key, "policyKey", &stmt, &flags, now() - 60, now() + 60).unwrap());
    }
    Policy::load(&seq, &key.public_key(), now()).unwrap()
}

fn request(name: &str) -> TrustRequestMessage {
    decode_bounded(&file(name)).unwrap()
}

fn app_key_of(req: &TrustRequestMessage) -> PublicKey {
    let package = req.support.as_ref().unwrap();
    let sr: SignedReport = decode_bounded(
        package.fact_assertion[1]
            .serialized_evidence
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    let info: VseAttestationReportInfo = decode_bounded(sr.report.as_deref().unwrap()).unwrap();
    let ud: AttestationUserData = decode_bounded(info.user_data.as_deref().unwrap()).unwrap();
    PublicKey::from_key_message(ud.enclave_key.as_ref().unwrap()).unwrap()
}

#[test]
fn the_sample_apps_requests_get_the_go_services_verdicts_once_freshness_is_waived() {
    let auth = request("trust_request.authentication.bin");
    assert_eq!(
        auth.submitted_evidence_type.as_deref(),
        Some("vse-attestation-package")
    );
    let package = auth.support.as_ref().unwrap();
    // Framework policy as is: nonce-less evidence is refused by default.
    assert_eq!(
        verify_package(
            &policy("policy.bin", false),
            package,
            Goal::Authentication,
            now()
        )
        .unwrap_err(),
        VseRefusal::FreshnessRequired
    );
    // With the owner's permission: admitted, as the Go service admitted it.
    let ok = verify_package(
        &policy("policy.bin", true),
        package,
        Goal::Authentication,
        now(),
    )
    .unwrap();
    assert_eq!(ok.measurement(), file("example_app.measurement"));
    assert_eq!(ok.app_key(), &app_key_of(&auth));
    let go: TrustResponseMessage =
        decode_bounded(&file("trust_response.authentication.bin")).unwrap();
    assert_eq!(go.status.as_deref(), Some("succeeded"));

    // app_service's purpose-attestation request: admitted where the policy
    // lists its measurement, refused where it does not — as the Go service did.
    let att = request("trust_request.attestation.bin");
    assert_eq!(att.purpose.as_deref(), Some("attestation"));
    let package = att.support.as_ref().unwrap();
    let ok = verify_package(
        &policy("policy_with_app_service.bin", true),
        package,
        Goal::Attestation,
        now(),
    )
    .unwrap();
    assert_eq!(ok.measurement(), file("app_service.measurement"));
    let err = verify_package(
        &policy("policy.bin", true),
        package,
        Goal::Attestation,
        now(),
    )
    .unwrap_err();
    assert_eq!(err.code(), "measurement-not-trusted");
    let go: TrustResponseMessage = decode_bounded(&file("trust_response.failed.bin")).unwrap();
    assert_eq!(go.status.as_deref(), Some("failed"));
    assert!(go.artifact.is_none());

    // Outside the report's window (it starts 2026-11-23T16:15:09).
    let before = parse_time("2026-11-23T16:00:00Z").unwrap();
    let err = verify_package(
        &policy("policy.bin", true),
        auth.support.as_ref().unwrap(),
        Goal::Authentication,
        before,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VseRefusal::ReportExpired { .. } | VseRefusal::Endorsement { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn our_admission_certificate_has_the_go_services_fields() {
    let (_, pkcs8) = policy_key();
    let policy_cert = file("policy_cert_file.bin");
    let auth = request("trust_request.authentication.bin");
    let app_key = app_key_of(&auth);
    let measurement = file("example_app.measurement");
    let ours = issue_framework_admission_certificate(
        &pkcs8,
        &policy_cert,
        &measurement,
        &app_key,
        now(),
        365 * 86_400,
        Some(std::net::Ipv4Addr::LOCALHOST.into()),
    )
    .unwrap();
    let theirs = file("admission_cert.authentication.der");
    let (_, a) = X509Certificate::from_der(&ours).unwrap();
    let (_, b) = X509Certificate::from_der(&theirs).unwrap();
    let (_, root) = X509Certificate::from_der(&policy_cert).unwrap();

    assert_eq!(a.version(), b.version());
    assert_eq!(
        a.signature_algorithm.algorithm,
        b.signature_algorithm.algorithm
    );
    // Subject byte for byte (O first, then CN, PrintableStrings); issuer =
    // the policy certificate's subject byte for byte.
    assert_eq!(a.subject().as_raw(), b.subject().as_raw());
    assert_eq!(a.issuer().as_raw(), b.issuer().as_raw());
    assert_eq!(a.issuer().as_raw(), root.subject().as_raw());
    // The same key, certified by the same policy key.
    assert_eq!(a.public_key().raw, b.public_key().raw);
    assert_eq!(certified_key(&ours).unwrap(), app_key);
    a.verify_signature(Some(root.public_key())).unwrap();
    b.verify_signature(Some(root.public_key())).unwrap();
    // The same extensions, with the same criticality and values.
    let exts = |c: &X509Certificate| {
        let mut v: Vec<(String, bool, Vec<u8>)> = c
            .extensions()
            .iter()
            .map(|e| (e.oid.to_id_string(), e.critical, e.value.to_vec()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(exts(&a), exts(&b));
    // The same validity length (the Go service's is a year; ours is set by
    // `serve --cert-validity-minutes`, eight hours unless changed).
    let len = |c: &X509Certificate| {
        c.validity().not_after.timestamp() - c.validity().not_before.timestamp()
    };
    assert_eq!(len(&b), 365 * 86_400);
    assert_eq!(
        len(&a),
        365 * 86_400 + 60,
        "ours starts a minute early for clock skew"
    );
}

#[test]
fn the_go_services_platform_rule_verifies_and_says_what_ours_would() {
    let (key, _) = policy_key();
    let rule: SignedClaimMessage =
        decode_bounded(&file("platform_rule.attestation.signed_claim_message.bin")).unwrap();
    // Written with the Go service's own time layout (YYYY:MM:DDTHH:MM:SSZ).
    let v = verify_claim(&rule, now()).unwrap();
    assert_eq!(v.signer, key.public_key());
    assert_eq!(v.descriptor, "platform-rule");
    let app_key = app_key_of(&request("trust_request.attestation.bin"));
    let ours = says(
        key_entity(&key.public_key(), "policyKey"),
        unary(
            key_entity(&app_key, "appKey"),
            verb::IS_TRUSTED_FOR_ATTESTATION,
        ),
    );
    assert!(same_clause(&v.clause, &ours));
}
