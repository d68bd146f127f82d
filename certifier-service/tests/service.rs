//! The certifier service as deployed: the real binary on an OS-chosen loopback
//! port, a real policy directory, emulated (INSECURE) CCA evidence from the
//! library's platform, and real clients. Every bad input gets its own
//! rejection and the service keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use attestation::cca::Curve;
use attestation::certifier::admission::verify_admission_certificate;
use attestation::certifier::client::{Client, ClientError, unix_now};
use attestation::certifier::decide::admission_challenge;
use attestation::certifier::keys::{PublicKey, SigningKey};
use attestation::certifier::policy::Role;
use attestation::certifier::proto::{TrustRequestMessage, TrustResponseMessage};
use attestation::platform::EvidenceSource;
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};
use prost::Message;
use testkit::{Proc, TestDir, ok, run, spawn_server};

const BIN: &str = env!("CARGO_BIN_EXE_certifier-service");

/// `certifier-service serve` on `svc`; the process and its address.
fn start(svc: &str, extra: &[&str]) -> (Proc, String) {
    let mut c = Command::new(BIN);
    c.args(["serve", "--dir", svc, "--listen", "127.0.0.1:0"])
        .args(extra);
    spawn_server(c)
}

fn cli(args: &[&str]) -> Output {
    run(Path::new(BIN), args)
}

/// A test directory with an INSECURE emulated platform key and an
/// initialised (not yet serving) service dir.
struct World {
    dir: TestDir,
    svc: String,
    platform_key: PathBuf,
}

impl World {
    fn new(name: &str) -> Self {
        let dir = TestDir::new("certsvc", name);
        let (pem, _) = generate_platform_key_pem(Curve::P384).unwrap();
        let platform_key = dir.path().join("platform.key.pem");
        std::fs::write(&platform_key, pem).unwrap();
        let svc = dir.p("svc");
        let out = ok(cli(&[
            "init",
            "--dir",
            &svc,
            "--insecure-emulated-platform",
            platform_key.to_str().unwrap(),
        ]));
        assert!(out.contains("INSECURE"));
        World {
            dir,
            svc,
            platform_key,
        }
    }

    /// A "binary" for a party; its SHA-512 is the party's RIM.
    fn binary(&self, name: &str, content: &str) -> String {
        self.dir.image(name, content.as_bytes())
    }

    fn trust(&self, role: &str, binary: &str) -> Output {
        cli(&[
            "policy", "trust", "--dir", &self.svc, "--role", role, "--binary", binary,
        ])
    }

    fn party(&self, binary: &str) -> InsecureEmulatedPlatform {
        InsecureEmulatedPlatform::from_key_file(&self.platform_key)
            .unwrap()
            .measuring(Path::new(binary))
            .unwrap()
    }

    fn policy_key(&self) -> PublicKey {
        let pem = std::fs::read_to_string(Path::new(&self.svc).join("policy_key.pem")).unwrap();
        SigningKey::from_pkcs8(pem::parse(pem).unwrap().contents())
            .unwrap()
            .public_key()
    }
}

fn auth_key() -> PublicKey {
    SigningKey::generate_p256().unwrap().0.public_key()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client(addr: &str) -> Client {
    Client::new(addr, Duration::from_secs(10))
}

fn refused_code(r: Result<Vec<u8>, ClientError>) -> (String, String) {
    match r {
        Err(ClientError::Refused { code, reason }) => (code, reason),
        Err(e) => panic!("expected a refusal, got error {e}"),
        Ok(_) => panic!("expected a refusal, got a certificate"),
    }
}

/// The last audit record, as JSON.
fn last_audit(svc: &str) -> serde_json::Value {
    let log = std::fs::read_to_string(Path::new(svc).join("audit.log")).unwrap();
    serde_json::from_str(log.lines().last().unwrap()).unwrap()
}

/// TF-A's sample implementation id: what a forger writes to look real.
const TFA_SAMPLE_IMPLEMENTATION_ID: [u8; 32] = [
    0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0x3e, 0, 0x01, 0,
    0, 0, 0x50, 0x58, 0, 0, 0, 0, 0, 0,
];

fn public_test_material(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../attestation/testdata/cca/public-test-material")
        .join(name)
}

/// Issue 17 item 1, across the process boundary: evidence signed with the
/// emulated platform key but claiming TF-A's implementation id is admitted
/// only with the INSECURE mark (certificate and audit), so a peer that does
/// not allow INSECURE peers refuses the certificate.
#[test]
fn a_forged_implementation_id_under_the_emulated_key_is_marked_insecure() {
    let w = World::new("forged-impl-id");
    let bin = w.binary("realm-runtime", "runtime v1");
    assert!(w.trust("runtime", &bin).status.success());
    let (_server, addr) = start(&w.svc, &[]);
    let party = w
        .party(&bin)
        .with_implementation_id(TFA_SAMPLE_IMPLEMENTATION_ID);
    let key = auth_key();
    let cert = rt()
        .block_on(client(&addr).admit(&party, &key, &Role::runtime()))
        .unwrap();
    let claims = verify_admission_certificate(&cert, &w.policy_key(), unix_now()).unwrap();
    assert!(
        claims.insecure_platform,
        "the certificate is marked INSECURE"
    );
    let strict = attestation::atls::PeerRequirement::roles([Role::runtime()]).unwrap();
    assert_eq!(
        strict.check(&claims),
        Err(attestation::atls::PeerError::InsecurePlatform)
    );
    let record = last_audit(&w.svc);
    assert_eq!(record["verdict"], "admit");
    assert_eq!(record["insecure"], true);
    assert_eq!(record["insecure_reason"], "insecure-emulated-platform");
}

/// Issue 24: `policy trust-platform` refuses the TF-M tools test CPAK (the
/// key behind the TF-RMM QEMU tokens) unless told `--insecure-test-key`;
/// with it, an admission on evidence signed by that (published) key carries
/// the INSECURE extension and the audit names the material.
#[test]
fn the_public_test_cpak_is_refused_unless_marked_and_then_admits_insecure() {
    let w = World::new("test-cpak");
    let cpak = public_test_material("tf-m-tools_cca_platform.pub.pem");
    let cpak = cpak.to_str().unwrap();
    let out = cli(&["policy", "trust-platform", "--dir", &w.svc, "--cpak", cpak]);
    assert!(!out.status.success(), "refused without the flag");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("public test material") && stderr.contains("--insecure-test-key"),
        "{stderr}"
    );
    let show = ok(cli(&["policy", "show", "--dir", &w.svc]));
    let policy: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(
        policy["platforms"].as_array().unwrap().len(),
        1,
        "nothing was added: {policy}"
    );

    let out = ok(cli(&[
        "policy",
        "trust-platform",
        "--dir",
        &w.svc,
        "--cpak",
        cpak,
        "--skip-sw-components",
        "--insecure-test-key",
    ]));
    assert!(
        out.contains("INSECURE") && out.contains("tf-m-tools-cca-platform-cpak"),
        "{out}"
    );
    let show = ok(cli(&["policy", "show", "--dir", &w.svc]));
    let policy: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(
        policy["platforms"][1]["insecure"],
        "insecure-test-material: tf-m-tools-cca-platform-cpak"
    );

    // Anyone can sign platform tokens with the published private half.
    let bin = w.binary("realm-runtime", "runtime v1");
    assert!(w.trust("runtime", &bin).status.success());
    let (_server, addr) = start(&w.svc, &[]);
    let party = InsecureEmulatedPlatform::from_key_file(&public_test_material(
        "tf-m-tools_cca_platform.pkcs8.pem",
    ))
    .unwrap()
    .measuring(Path::new(&bin))
    .unwrap()
    .with_implementation_id(TFA_SAMPLE_IMPLEMENTATION_ID);
    let key = auth_key();
    let cert = rt()
        .block_on(client(&addr).admit(&party, &key, &Role::runtime()))
        .unwrap();
    let claims = verify_admission_certificate(&cert, &w.policy_key(), unix_now()).unwrap();
    assert!(claims.insecure_platform);
    let record = last_audit(&w.svc);
    assert_eq!(record["verdict"], "admit");
    assert_eq!(
        record["insecure_reason"],
        "insecure-test-material: tf-m-tools-cca-platform-cpak"
    );
}

/// Issue 17 item 9, through the CLI and the wire: reference values are bound
/// to one platform key and one component type; a required type the token
/// lacks is refused (`platform-component-missing`) and the service keeps
/// serving.
#[test]
fn firmware_reference_values_bind_to_a_platform_and_a_component_type() {
    let w = World::new("components");
    // A "real" platform: a fresh key (not the emulated entry's).
    let (pem, public) = generate_platform_key_pem(Curve::P384).unwrap();
    let key_path = w.dir.path().join("platform2.key.pem");
    std::fs::write(&key_path, pem).unwrap();
    let cpak = w.dir.path().join("platform2.pub.pem");
    std::fs::write(&cpak, public.to_pem()).unwrap();
    let cpak = cpak.to_str().unwrap();
    ok(cli(&[
        "policy",
        "trust-platform",
        "--dir",
        &w.svc,
        "--cpak",
        cpak,
    ]));
    let bin = w.binary("realm-runtime", "runtime v1");
    assert!(w.trust("runtime", &bin).status.success());
    let party = InsecureEmulatedPlatform::from_key_file(&key_path)
        .unwrap()
        .measuring(Path::new(&bin))
        .unwrap()
        .with_implementation_id(TFA_SAMPLE_IMPLEMENTATION_ID);
    let token = attestation::cca::parse(
        &party
            .attestation_token(&attestation::cca::Challenge([0; 64]))
            .unwrap(),
    )
    .unwrap();
    let c = token.platform().claims().sw_components[0].clone();
    let (slot, value) = (
        c.measurement_type.unwrap(),
        hex::encode(&c.measurement_value),
    );
    let (_server, addr) = start(&w.svc, &[]);
    let admit = || rt().block_on(client(&addr).admit(&party, &auth_key(), &Role::runtime()));
    // No reference values for this platform yet.
    assert_eq!(refused_code(admit()).0, "no-reference-values");
    let trust_component = |ty: &str, m: &str| {
        ok(cli(&[
            "policy",
            "trust-component",
            "--dir",
            &w.svc,
            "--cpak",
            cpak,
            "--type",
            ty,
            "--measurement",
            m,
        ]))
    };
    trust_component(&slot, &value);
    admit().unwrap();
    // A second required component the token does not carry.
    trust_component("BL2", &"ab".repeat(32));
    let (code, reason) = refused_code(admit());
    assert_eq!(code, "platform-component-missing", "{reason}");
    assert!(reason.contains("BL2"), "{reason}");
    let show = ok(cli(&["policy", "show", "--dir", &w.svc]));
    let policy: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(policy["platform-components"].as_array().unwrap().len(), 2);
    assert_eq!(policy["platform-components"][1]["type"], "BL2");
    assert_eq!(policy["platform-components"][1]["required"], true);
}

#[test]
fn parties_are_admitted_only_for_their_roles_and_rebuilds_need_new_trust() {
    let w = World::new("roles");
    let runtime_bin = w.binary("realm-runtime", "runtime v1");
    let device_bin = w.binary("device-agent", "device v1");
    let provider_bin = w.binary("model-provider", "provider v1");
    for (role, bin) in [
        ("runtime", &runtime_bin),
        ("device", &device_bin),
        ("provider", &provider_bin),
    ] {
        assert!(w.trust(role, bin).status.success());
    }
    let (server, addr) = start(&w.svc, &[]);
    let c = client(&addr);
    let rt = rt();
    let policy_key = w.policy_key();

    for (role, bin) in [
        ("runtime", &runtime_bin),
        ("device", &device_bin),
        ("provider", &provider_bin),
    ] {
        let party = w.party(bin);
        let key = auth_key();
        let role = Role::new(role).unwrap();
        let cert = rt
            .block_on(c.admit(&party, &key, &role))
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        let claims = verify_admission_certificate(&cert, &policy_key, unix_now()).unwrap();
        assert_eq!(claims.role, role);
        assert_eq!(claims.measurement, party.rim().as_bytes());
        assert_eq!(claims.auth_key, key);
        assert!(claims.insecure_platform);
        assert!(
            claims.not_after <= unix_now() + 8 * 3600 + 5,
            "short validity"
        );

        // The same party asking for another role is refused, and told why.
        let other = if role.as_str() == "runtime" {
            Role::device()
        } else {
            Role::runtime()
        };
        let (code, reason) = refused_code(rt.block_on(c.admit(&party, &key, &other)));
        assert_eq!(code, "measurement-wrong-role");
        assert!(
            reason.contains(&format!("is not trusted for role {other}")),
            "{reason}"
        );
    }

    // A rebuilt runtime has a new measurement: refused until trusted.
    let rebuilt = w.binary("realm-runtime", "runtime v2");
    let party = w.party(&rebuilt);
    let (code, _) = refused_code(rt.block_on(c.admit(&party, &auth_key(), &Role::runtime())));
    assert_eq!(code, "measurement-not-trusted");
    assert!(w.trust("runtime", &rebuilt).status.success());
    rt.block_on(c.admit(&party, &auth_key(), &Role::runtime()))
        .expect("trusted after policy update");

    // Peers fetch the signed policy: it verifies with the policy key only.
    let served = rt.block_on(c.policy(&policy_key)).unwrap();
    assert!(served.measurements().len() >= 4);
    assert!(
        rt.block_on(c.policy(&auth_key())).is_err(),
        "not signed by that key"
    );

    // Revocation wins, and a revoked measurement cannot be trusted again.
    let device = w.party(&device_bin);
    let hexm = device.rim().to_hex();
    let out = cli(&[
        "policy",
        "revoke",
        "--dir",
        &w.svc,
        "--measurement",
        &hexm,
        "--reason",
        "CVE-2026-0001",
    ]);
    assert!(out.status.success());
    let (code, reason) = refused_code(rt.block_on(c.admit(&device, &auth_key(), &Role::device())));
    assert_eq!(code, "measurement-revoked");
    assert!(reason.contains("CVE-2026-0001"));
    let again = w.trust("device", &device_bin);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("revoked"));
    let served = rt.block_on(c.policy(&policy_key)).unwrap();
    assert!(
        served.revocation(device.rim().as_bytes()).is_some(),
        "peers see the revocation"
    );

    // The audit log has one parseable line per decision.
    drop(server);
    let log = std::fs::read_to_string(Path::new(&w.svc).join("audit.log")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3 * 2 + 2 + 1);
    assert_eq!(
        records.iter().filter(|r| r["verdict"] == "admit").count(),
        4
    );
    assert!(
        records
            .iter()
            .any(|r| r["code"] == "measurement-revoked" && r["role"] == "device")
    );
}

#[test]
fn evidence_attacks_are_refused_for_the_right_reason() {
    let w = World::new("attacks");
    let bin = w.binary("realm-runtime", "runtime");
    assert!(w.trust("runtime", &bin).status.success());
    let (_server, addr) = start(&w.svc, &[]);
    let c = client(&addr);
    let rt = rt();
    let party = w.party(&bin);
    let role = Role::runtime();
    let key = auth_key();
    let spki = key.ec_spki_der().unwrap();

    // A token made for another nonce.
    let n1 = rt.block_on(c.nonce()).unwrap();
    let n2 = rt.block_on(c.nonce()).unwrap();
    let token = party
        .attestation_token(&admission_challenge(&n1, &spki))
        .unwrap();
    let (code, _) = refused_code(rt.block_on(c.present(&n2, token.clone(), &key, &role)));
    assert_eq!(code, "realm-challenge");

    // The right token, but with n1 replayed after a successful use.
    rt.block_on(c.present(&n1, token.clone(), &key, &role))
        .expect("fresh nonce, right token");
    let (code, _) = refused_code(rt.block_on(c.present(&n1, token.clone(), &key, &role)));
    assert_eq!(code, "nonce-replayed");

    // A nonce the service never issued.
    let (code, _) = refused_code(rt.block_on(c.present(&[7u8; 32], token, &key, &role)));
    assert_eq!(code, "nonce-unknown");

    // A token bound to a different auth key than the one presented.
    let n = rt.block_on(c.nonce()).unwrap();
    let token = party
        .attestation_token(&admission_challenge(&n, &spki))
        .unwrap();
    let (code, _) = refused_code(rt.block_on(c.present(&n, token, &auth_key(), &role)));
    assert_eq!(code, "realm-challenge");

    // A platform key the policy does not trust.
    let other_key = w.dir.path().join("other.key.pem");
    std::fs::write(
        &other_key,
        generate_platform_key_pem(Curve::P384).unwrap().0,
    )
    .unwrap();
    let stranger = InsecureEmulatedPlatform::from_key_file(&other_key)
        .unwrap()
        .measuring(Path::new(&bin))
        .unwrap();
    let (code, _) = refused_code(rt.block_on(c.admit(&stranger, &key, &role)));
    assert_eq!(code, "untrusted-platform");

    // A tampered token (one flipped bit in the realm signature).
    let n = rt.block_on(c.nonce()).unwrap();
    let mut token = party
        .attestation_token(&admission_challenge(&n, &spki))
        .unwrap();
    let last = token.len() - 1;
    token[last] ^= 1;
    let (code, _) = refused_code(rt.block_on(c.present(&n, token, &key, &role)));
    assert_eq!(code, "realm-signature");

    // Garbage where the token should be.
    let n = rt.block_on(c.nonce()).unwrap();
    let (code, _) =
        refused_code(rt.block_on(c.present(&n, vec![0xd9, 0x01, 0x8f, 0xff], &key, &role)));
    assert!(code.starts_with("cbor-"), "{code}");

    // After all that, an honest party is still served.
    rt.block_on(c.admit(&party, &key, &role))
        .expect("service still serving");
}

#[test]
fn expired_nonces_are_refused() {
    let w = World::new("expiry");
    let bin = w.binary("realm-runtime", "runtime");
    assert!(w.trust("runtime", &bin).status.success());
    let (_server, addr) = start(&w.svc, &["--nonce-ttl-secs", "1"]);
    let c = client(&addr);
    let rt = rt();
    let key = auth_key();
    let n = rt.block_on(c.nonce()).unwrap();
    let token = w
        .party(&bin)
        .attestation_token(&admission_challenge(&n, &key.ec_spki_der().unwrap()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let (code, _) = refused_code(rt.block_on(c.present(&n, token, &key, &Role::runtime())));
    assert_eq!(code, "nonce-expired");
}

fn raw_exchange(addr: &str, bytes: &[u8]) -> Option<TrustResponseMessage> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Some(TrustResponseMessage::decode(buf.as_slice()).unwrap())
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn failure_code(r: &TrustResponseMessage) -> String {
    assert_eq!(r.status.as_deref(), Some("failed"));
    let text = String::from_utf8(r.artifact.clone().unwrap()).unwrap();
    text.split(": ").next().unwrap().to_string()
}

#[test]
fn hostile_frames_get_clear_errors_and_the_service_keeps_serving() {
    let w = World::new("frames");
    let bin = w.binary("realm-runtime", "runtime");
    assert!(w.trust("runtime", &bin).status.success());
    let (_server, addr) = start(&w.svc, &[]);
    let party = w.party(&bin);
    let rt = rt();

    // A client that stalls mid-frame holds a connection open throughout.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled.write_all(&[100, 0]).unwrap();

    // Oversized: 2 GiB announced.
    let r = raw_exchange(&addr, &0x7fff_ffffu32.to_le_bytes()).expect("an answer");
    assert_eq!(failure_code(&r), "frame-too-large");

    // Garbage protobuf.
    let r = raw_exchange(&addr, &frame(&[0xff; 10])).expect("an answer");
    assert_eq!(failure_code(&r), "malformed-request");

    // The framework's Islet path is not accepted.
    let req = TrustRequestMessage {
        submitted_evidence_type: Some("islet-evidence".into()),
        purpose: Some("authentication".into()),
        requesting_enclave_tag: Some("req".into()),
        ..Default::default()
    };
    let r = raw_exchange(&addr, &frame(&req.encode_to_vec())).expect("an answer");
    assert_eq!(failure_code(&r), "unsupported-evidence-type");
    assert_eq!(
        r.requesting_enclave_tag.as_deref(),
        Some("req"),
        "tags are echoed"
    );

    // An authentication request without evidence.
    let req = TrustRequestMessage {
        submitted_evidence_type: Some("cca-evidence".into()),
        purpose: Some("authentication".into()),
        ..Default::default()
    };
    let r = raw_exchange(&addr, &frame(&req.encode_to_vec())).expect("an answer");
    assert_eq!(failure_code(&r), "malformed-evidence");

    // Truncated: announce 100 bytes, send 10, close. No answer, no harm.
    let mut t = TcpStream::connect(&addr).unwrap();
    t.write_all(&frame(&[0u8; 100])[..14]).unwrap();
    t.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = t.read_to_end(&mut rest);
    assert!(rest.is_empty());

    // With the stalled client still connected, an honest party is admitted.
    let c = client(&addr);
    rt.block_on(c.admit(&party, &auth_key(), &Role::runtime()))
        .expect("served despite hostile peers");
    drop(stalled);
}

#[test]
fn cli_reports_what_to_do() {
    let missing = std::env::temp_dir().join(format!("certsvc-none-{}", std::process::id()));
    let out = cli(&["policy", "show", "--dir", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("certifier-service init"));

    let w = World::new("cli");
    let out = cli(&[
        "policy",
        "trust",
        "--dir",
        &w.svc,
        "--role",
        "Bad Role",
        "--measurement",
        &"00".repeat(32),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid role name"));
    let out = cli(&[
        "policy",
        "trust",
        "--dir",
        &w.svc,
        "--role",
        "runtime",
        "--measurement",
        "abcd",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&[
        "policy",
        "trust",
        "--dir",
        &w.svc,
        "--role",
        "analytics",
        "--measurement",
        &"11".repeat(64),
    ]);
    assert!(out.status.success(), "custom role names work");
    let out = cli(&["policy", "show", "--dir", &w.svc]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["insecure"], true);
    assert_eq!(json["measurements"][0]["role"], "analytics");
    let out = cli(&["init", "--dir", &w.svc]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "init never overwrites a policy key"
    );
}

/// `attest admit`, the command-line client, against the real service.
#[test]
fn attest_admit_writes_an_identity_or_says_why_not() {
    let attest = std::path::Path::new(BIN).with_file_name("attest");
    assert!(
        attest.exists(),
        "build attest first (cargo test --workspace does)"
    );
    let w = World::new("admit-cli");
    let image = w.binary("realm-runtime", "runtime build 1");
    assert!(w.trust("runtime", &image).status.success());
    let (_server, addr) = start(&w.svc, &[]);
    let out_dir = w.dir.path().join("identity");
    let args = |role: &str| {
        vec![
            "admit".to_string(),
            "--certifier".into(),
            addr.clone(),
            "--role".into(),
            role.into(),
            "--platform".into(),
            "insecure-emulated".into(),
            "--platform-key".into(),
            w.platform_key.display().to_string(),
            "--measure".into(),
            image.clone(),
            "--out-dir".into(),
            out_dir.display().to_string(),
        ]
    };
    ok(Command::new(&attest)
        .args(args("runtime"))
        .output()
        .unwrap());
    let cert = std::fs::read(out_dir.join("admission.der")).unwrap();
    let claims = verify_admission_certificate(&cert, &w.policy_key(), unix_now()).unwrap();
    assert_eq!(claims.role, Role::runtime());
    let key_pem = std::fs::read_to_string(out_dir.join("auth.key.pem")).unwrap();
    let key = SigningKey::from_pkcs8(pem::parse(key_pem).unwrap().contents()).unwrap();
    assert_eq!(
        key.public_key(),
        claims.auth_key,
        "the certificate is for the written key"
    );

    let out = Command::new(&attest).args(args("device")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("REFUSED (measurement-wrong-role)") && err.contains("role device"),
        "{err}"
    );
}
