//! The `attest` binary as a user runs it: real process, real files, exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn attest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attest"))
        .args(args)
        .output()
        .expect("attest runs")
}

fn testdata(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/cca")
        .join(rel)
        .display()
        .to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attest-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const CHALLENGE_A: &str = "4b5fb73f38355cce5bf1a3afad95a690e8f66d7ee3c77bab6c6393b181c31ec6ea52a034a964c245a122d6bae59962820876fe5777e57497f3f14ccad1a82af8";

#[test]
fn verify_accepts_a_valid_token_and_prints_its_claims() {
    let out = attest(&[
        "token",
        "verify",
        &testdata("synthetic/valid_a.cbor"),
        "--cpak",
        &testdata("synthetic/keys/cpak_a.pub.pem"),
        "--challenge",
        CHALLENGE_A,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verified"], true);
    assert_eq!(json["challenge-checked"], true);
    assert_eq!(json["realm"]["cca-realm-challenge"], CHALLENGE_A);
}

#[test]
fn verify_rejects_with_one_line_naming_the_check_and_never_says_ok() {
    let out = attest(&[
        "token",
        "verify",
        &testdata("synthetic/neg_realm_sig_tampered.cbor"),
        "--cpak",
        &testdata("synthetic/keys/cpak_a.pub.pem"),
        "--challenge",
        CHALLENGE_A,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for a rejected token"
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("REJECTED (realm-signature)"), "{err}");
    let words: Vec<String> = err
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .collect();
    assert!(!words.iter().any(|w| w == "ok" || w == "verified"), "{err}");
}

#[test]
fn verify_without_challenge_warns_that_freshness_is_unchecked() {
    let out = attest(&[
        "token",
        "verify",
        &testdata("real/tfrmm_cca_token.cbor"),
        "--cpak",
        &testdata("real/keys/cpak.jwk.json"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing shows it is fresh"));
}

#[test]
fn inspect_prints_claims_and_rejects_garbage() {
    let out = attest(&["token", "inspect", &testdata("real/tfrmm_cca_token.cbor")]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["platform"]["cca-platform-lifecycle"], 12291);
    assert_eq!(
        json["platform"]["cca-platform-service-indicator"],
        "whatever.com"
    );
    assert!(stderr(&out).contains("nothing has been verified"));

    let out = attest(&[
        "token",
        "inspect",
        &testdata("synthetic/neg_huge_length_prefix.cbor"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cbor-length-exceeds-input"));
}

#[test]
fn emulate_then_verify_round_trips_through_files() {
    let dir = scratch("emulate");
    let key = dir.join("cpak.key.pem");
    let public = dir.join("cpak.pub.pem");
    let token = dir.join("token.cbor");
    let measured = dir.join("image.bin");
    std::fs::write(&measured, b"a realm image").unwrap();
    let (key_s, public_s, token_s, measured_s) = (
        key.display().to_string(),
        public.display().to_string(),
        token.display().to_string(),
        measured.display().to_string(),
    );
    let out = attest(&[
        "platform-key",
        "generate",
        "--out",
        &key_s,
        "--public-out",
        &public_s,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("INSECURE"));
    // Refuses to overwrite an existing private key.
    let again = attest(&[
        "platform-key",
        "generate",
        "--out",
        &key_s,
        "--public-out",
        &public_s,
    ]);
    assert_eq!(again.status.code(), Some(2));

    let challenge = "11".repeat(64);
    for format in ["rmm-1.0", "cmw-907"] {
        let out = attest(&[
            "emulate",
            "--platform-key",
            &key_s,
            "--challenge",
            &challenge,
            "--out",
            &token_s,
            "--measure",
            &measured_s,
            "--format",
            format,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("INSECURE"),
            "every emulator line says INSECURE"
        );

        let out = attest(&[
            "token",
            "verify",
            &token_s,
            "--cpak",
            &public_s,
            "--challenge",
            &challenge,
        ]);
        assert!(out.status.success(), "{format}: {}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["insecure-emulated-platform"], true);
        let rim = attest(&["measure", &measured_s]);
        let rim = String::from_utf8(rim.stdout).unwrap();
        assert_eq!(json["realm"]["cca-realm-initial-measurement"], rim.trim());
        assert!(stderr(&out).contains("WARNING: INSECURE emulated platform"));

        let wrong = attest(&[
            "token",
            "verify",
            &token_s,
            "--cpak",
            &testdata("real/keys/cca_platform.pub.pem"),
        ]);
        assert_eq!(wrong.status.code(), Some(1));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn measure_is_sha512_of_the_file() {
    let dir = scratch("measure");
    let f = dir.join("x");
    std::fs::write(&f, b"abc").unwrap();
    let out = attest(&["measure", &f.display().to_string()]);
    // SHA-512("abc"), FIPS 180-2 appendix C.1.
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn usage_errors_exit_2_with_advice() {
    let out = attest(&[
        "emulate",
        "--platform-key",
        "/nonexistent",
        "--challenge",
        "00",
        "--out",
        "/tmp/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("64 bytes"), "{}", stderr(&out));

    let out = attest(&[
        "evidence",
        "--challenge",
        &"00".repeat(64),
        "--out",
        "/tmp/never",
        "--tsm-root",
        "/nonexistent/config/tsm/report",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("configfs"), "{}", stderr(&out));

    let out = attest(&[
        "token",
        "verify",
        &testdata("real/tfrmm_cca_token.cbor"),
        "--cpak",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn demo_runs_and_every_outcome_is_as_expected() {
    let out = attest(&["demo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("7 of 7 outcomes as expected"), "{text}");
    assert!(text.contains("INSECURE"));
}

#[test]
fn certifier_decode_prints_fields_and_reencoding_check() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/certifier/signed_claim_1_policy_says_measurement.signed_claim_message.bin");
    let out = attest(&[
        "certifier",
        "decode",
        "--message",
        "signed_claim_message",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["reencodes_identically"], true);
    assert_eq!(json["signing_algorithm"], "rsa-2048-sha256-pkcs-sign");
    assert_eq!(json["signing_key"]["key_name"], "policyKey");

    let out = attest(&[
        "certifier",
        "decode",
        "--message",
        "vse_clause",
        file.to_str().unwrap(),
    ]);
    let wrong: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    // Either it fails to decode, or it decodes as something that does not re-encode identically.
    assert!(
        !out.status.success()
            || wrong
                .as_ref()
                .is_some_and(|j| j["reencodes_identically"] == false),
        "{wrong:?}"
    );
}

/// Issue 24: the tokens a real TF-RMM made on QEMU verify, but `verify` and
/// `inspect` say they are public test material; a hardware-like synthetic
/// token (its keys are not public) is not flagged.
#[test]
fn verify_and_inspect_flag_public_test_material() {
    let token = testdata("public-test-material/rmm2-A.cbor");
    let challenge =
        std::fs::read_to_string(testdata("public-test-material/rmm2-A.challenge.hex")).unwrap();
    let out = attest(&[
        "token",
        "verify",
        &token,
        "--cpak",
        &testdata("public-test-material/tf-m-tools_cca_platform.pub.pem"),
        "--challenge",
        challenge.trim(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("INSECURE test material: tf-m-tools-cca-platform-cpak"),
        "{}",
        stderr(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["insecure-test-material"],
        "tf-m-tools-cca-platform-cpak"
    );

    let out = attest(&["token", "inspect", &token]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("INSECURE test material: tf-a-sample-rak"),
        "{}",
        stderr(&out)
    );

    let out = attest(&[
        "token",
        "verify",
        &testdata("synthetic/valid_a.cbor"),
        "--cpak",
        &testdata("synthetic/keys/cpak_a.pub.pem"),
        "--challenge",
        CHALLENGE_A,
    ]);
    assert!(!stderr(&out).contains("test material"), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["insecure-test-material"], serde_json::Value::Null);
}
