//! Certifier Framework interoperability, against the real binary on a
//! loopback port: a service directory imported from framework-format files
//! (the framework's own 2022 policy key and 2025 attest key from
//! testdata/certifier; a policy signed with that key the way the framework's
//! `package_claims` writes it), framework apps admitted on
//! `vse-attestation-package` evidence, their certificates checked field by
//! field, two of them completing a mutual-TLS hello with the policy
//! certificate as the only root, and replay/tampering handled as the policy
//! says.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use attestation::certifier::admission::policy_certificate;
use attestation::certifier::claims::{sign_claim, verify_claim};
use attestation::certifier::clause::{
    key_entity, measurement_entity, same_clause, says, unary, verb,
};
use attestation::certifier::client::{Client, ClientError, unix_now};
use attestation::certifier::keys::{PublicKey, SigningKey};
use attestation::certifier::proto::{
    KeyMessage, SignedClaimMessage, SignedClaimSequence, TrustRequestMessage, TrustResponseMessage,
    decode_bounded,
};
use attestation::certifier::vse::{self, InsecureSimulatedEnclave};
use prost::Message;
use testkit::{Proc, TestDir, ok, run, spawn_server};
use x509_parser::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_certifier-service");
const MEASUREMENT: [u8; 32] = [0xa5; 32];

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../attestation/testdata/certifier")
            .join(name),
    )
    .unwrap()
}

fn cli(args: &[&str]) -> Output {
    run(Path::new(BIN), args)
}

/// The files a Certifier Framework deployment has, made here with its keys.
struct Deployment {
    dir: TestDir,
    policy_key: SigningKey,
    attest_key: KeyMessage,
    endorsement: Vec<u8>,
    /// policy_key_file.bin, policy_cert_file.bin, policy.bin
    files: [String; 3],
}

impl Deployment {
    /// `cert`: `Some(der)` for a given policy certificate, `None` for a fresh
    /// X.509 v3 one made from the framework's policy key.
    fn new(name: &str, cert: Option<Vec<u8>>) -> Self {
        let dir = TestDir::new("framework", name);
        let key_file = testdata("policy_key_file_2022.key_message.bin");
        let key_message: KeyMessage = decode_bounded(&key_file).unwrap();
        let policy_key = SigningKey::from_rsa_key_message(&key_message).unwrap();
        let now = unix_now();
        let cert = cert.unwrap_or_else(|| {
            let pkcs8 = SigningKey::rsa_pkcs8_from_key_message(&key_message).unwrap();
            policy_certificate(&pkcs8, now, 2).unwrap()
        });
        // The framework's platform endorsement of its 2025 attest key has
        // expired; a platform key made here endorses it afresh.
        let attest_key: KeyMessage =
            decode_bounded(&testdata("attest_key_file_2025.key_message.bin")).unwrap();
        let attest_pub = PublicKey::from_key_message(&attest_key).unwrap();
        let platform = SigningKey::generate_p256().unwrap().0;
        let endorsement = vse::sign_endorsement(&platform, &attest_pub, now - 60, now + 86_400)
            .unwrap()
            .encode_to_vec();
        let policy_says = |stmt| {
            sign_claim(
                &policy_key,
                "policyKey",
                &says(key_entity(&policy_key.public_key(), "policyKey"), stmt),
                "",
                now - 60,
                now + 365 * 86_400,
            )
            .unwrap()
        };
        let policy = SignedClaimSequence {
            claims: vec![
                policy_says(unary(
                    key_entity(&platform.public_key(), "platformKey"),
                    verb::IS_TRUSTED_FOR_ATTESTATION,
                )),
                policy_says(unary(measurement_entity(&MEASUREMENT), verb::IS_TRUSTED)),
                // A statement for SEV platforms, which this service does not handle.
                policy_says(unary(
                    measurement_entity(&[1; 48]),
                    "has-trusted-platform-property",
                )),
            ],
        };
        let files = [
            dir.p("policy_key_file.bin"),
            dir.p("policy_cert_file.bin"),
            dir.p("policy.bin"),
        ];
        std::fs::write(&files[0], key_file).unwrap();
        std::fs::write(&files[1], cert).unwrap();
        std::fs::write(&files[2], policy.encode_to_vec()).unwrap();
        Self {
            dir,
            policy_key,
            attest_key,
            endorsement,
            files,
        }
    }

    fn import(&self, svc: &str, allow_no_freshness: bool) -> Output {
        let mut args = vec![
            "import-framework",
            "--dir",
            svc,
            "--policy-key",
            &self.files[0],
            "--policy-cert",
            &self.files[1],
            "--policy",
            &self.files[2],
        ];
        if allow_no_freshness {
            args.push("--allow-no-freshness");
        }
        cli(&args)
    }

    fn serve(&self, svc: &str) -> (Proc, String) {
        let mut c = Command::new(BIN);
        c.args(["serve", "--dir", svc, "--listen", "127.0.0.1:0"]);
        spawn_server(c)
    }

    fn enclave(&self, measurement: &[u8]) -> InsecureSimulatedEnclave {
        InsecureSimulatedEnclave::new(
            &self.attest_key,
            self.endorsement.clone(),
            measurement.to_vec(),
        )
        .unwrap()
    }

    fn request(&self, measurement: &[u8], app_key: &PublicKey, purpose: &str) -> Vec<u8> {
        TrustRequestMessage {
            requesting_enclave_tag: Some("requesting-enclave".into()),
            providing_enclave_tag: Some("providing-enclave".into()),
            submitted_evidence_type: Some(vse::EVIDENCE_TYPE.into()),
            purpose: Some(purpose.into()),
            support: Some(
                self.enclave(measurement)
                    .evidence_package(app_key, unix_now() - 60, 3600)
                    .unwrap(),
            ),
            accels: Vec::new(),
        }
        .encode_to_vec()
    }

    fn audit(&self, svc: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(Path::new(svc).join("audit.log"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Send one framed request as the framework's apps do, read one framed response.
fn exchange(addr: &str, request: &[u8]) -> TrustResponseMessage {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&(request.len() as u32).to_le_bytes()).unwrap();
    s.write_all(request).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    TrustResponseMessage::decode(buf.as_slice()).unwrap()
}

fn status(r: &TrustResponseMessage) -> (&str, String) {
    (
        r.status.as_deref().unwrap_or_default(),
        String::from_utf8_lossy(r.artifact.as_deref().unwrap_or_default()).into_owned(),
    )
}

fn rsa_app_key() -> (PublicKey, Vec<u8>) {
    // A framework test key (published upstream; public) as an app's RSA key.
    let km: KeyMessage = decode_bounded(&testdata("attest_key_file_2025.key_message.bin")).unwrap();
    (
        PublicKey::from_key_message(&km).unwrap(),
        SigningKey::rsa_pkcs8_from_key_message(&km).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framework_app_is_admitted_and_its_certificate_matches_the_frameworks_layout() {
    let d = Deployment::new("admit", None);
    let svc = d.dir.p("svc");
    let out = ok(d.import(&svc, true));
    assert!(
        out.contains("1 trusted measurement(s), 1 platform key(s)"),
        "{out}"
    );
    assert!(out.contains("left out"), "{out}");
    assert!(out.contains("has-trusted-platform-property"), "{out}");
    assert!(out.contains("ACCEPTED"), "{out}");
    let shown = ok(cli(&["policy", "show", "--dir", &svc]));
    assert!(shown.contains("\"no-freshness-allowed\": true"), "{shown}");
    assert!(shown.contains(&hex::encode(MEASUREMENT)), "{shown}");
    let (_svc, addr) = d.serve(&svc);

    let (app_key, _) = rsa_app_key();
    let client = Client::new(&addr, Duration::from_secs(10));
    let der = client
        .admit_framework_app(&d.enclave(&MEASUREMENT), &app_key)
        .await
        .unwrap();

    // Field by field, against the framework's ProduceAdmissionCert.
    let policy_cert_der = std::fs::read(&d.files[1]).unwrap();
    let (_, policy_cert) = X509Certificate::from_der(&policy_cert_der).unwrap();
    let (rest, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(rest.is_empty());
    assert_eq!(cert.version(), X509Version::V3);
    assert_eq!(
        cert.issuer().as_raw(),
        policy_cert.subject().as_raw(),
        "issuer = the policy certificate's subject, byte for byte"
    );
    cert.verify_signature(Some(policy_cert.public_key()))
        .expect("signed by the framework's policy key");
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["CertifierUsers"]);
    let o: Vec<_> = cert
        .subject()
        .iter_organization()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(o, [format!("Measured-{}", hex::encode(MEASUREMENT))]);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_cert_sign());
    assert!(!ku.key_encipherment() && !ku.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && eku.server_auth);
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca);
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names, [GeneralName::IPAddress(&[127, 0, 0, 1])]);
    assert_eq!(
        attestation::certifier::admission::certified_key(&der).unwrap(),
        app_key
    );
    let now = unix_now();
    assert!(cert.validity().not_before.timestamp() <= now);
    assert!(cert.validity().not_after.timestamp() > now + 3600);

    // Purpose attestation: the platform rule, signed by the policy key.
    let r = exchange(&addr, &d.request(&MEASUREMENT, &app_key, "attestation"));
    assert_eq!(status(&r).0, "succeeded", "{}", status(&r).1);
    assert_eq!(
        r.requesting_enclave_tag.as_deref(),
        Some("requesting-enclave")
    );
    let rule: SignedClaimMessage = decode_bounded(r.artifact.as_deref().unwrap()).unwrap();
    let v = verify_claim(&rule, unix_now()).unwrap();
    assert_eq!(v.signer, d.policy_key.public_key());
    assert_eq!(v.descriptor, "platform-rule");
    let expected = says(
        key_entity(&d.policy_key.public_key(), "policyKey"),
        unary(key_entity(&app_key, "x"), verb::IS_TRUSTED_FOR_ATTESTATION),
    );
    assert!(same_clause(&v.clause, &expected));

    // Every admission on this evidence is audited as no-freshness.
    let audit = d.audit(&svc);
    assert_eq!(audit.len(), 2);
    for rec in &audit {
        assert_eq!(rec["verdict"], "admit");
        assert_eq!(rec["evidence"], "vse-attestation-package");
        assert_eq!(rec["freshness"], "no-freshness");
        assert_eq!(rec["measurement"], hex::encode(MEASUREMENT));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_tampering_are_handled_as_the_policy_says_and_the_service_keeps_serving() {
    // Without the permission: refused, with the reason and what to do.
    let d = Deployment::new("strict", None);
    let svc = d.dir.p("svc");
    let out = ok(d.import(&svc, false));
    assert!(out.contains("refused"), "{out}");
    let (_strict, addr) = d.serve(&svc);
    let (app_key, _) = rsa_app_key();
    let err = Client::new(&addr, Duration::from_secs(10))
        .admit_framework_app(&d.enclave(&MEASUREMENT), &app_key)
        .await
        .unwrap_err();
    match err {
        ClientError::Refused { code, reason } => {
            assert_eq!(code, "no-freshness-refused");
            assert!(reason.contains("--allow-no-freshness"), "{reason}");
        }
        other => panic!("{other}"),
    }
    let audit = d.audit(&svc);
    assert_eq!(audit[0]["verdict"], "refuse");
    assert_eq!(audit[0]["code"], "no-freshness-refused");
    assert_eq!(audit[0]["freshness"], "no-freshness");
    assert_eq!(audit[0]["measurement"], hex::encode(MEASUREMENT));

    // With it: a byte-exact replay is admitted again — that is what
    // nonce-less evidence means — and each admission is audited as such.
    let d = Deployment::new("lenient", None);
    let svc = d.dir.p("svc");
    ok(d.import(&svc, true));
    let (_lenient, addr) = d.serve(&svc);
    let request = d.request(&MEASUREMENT, &app_key, "authentication");
    for _ in 0..2 {
        let r = exchange(&addr, &request);
        assert_eq!(status(&r).0, "succeeded", "{}", status(&r).1);
    }
    // Tampered and untrusted requests: each refused with its own code.
    let mut tampered = TrustRequestMessage::decode(request.as_slice()).unwrap();
    let fact = &mut tampered.support.as_mut().unwrap().fact_assertion[1];
    let bytes = fact.serialized_evidence.as_mut().unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let cases = [
        (tampered.encode_to_vec(), "report-signature"),
        (
            d.request(&[0x11; 32], &app_key, "authentication"),
            "measurement-not-trusted",
        ),
        (
            d.request(&MEASUREMENT, &app_key, "key-provision"),
            "unsupported-purpose",
        ),
        (b"\x0a\xff\xff".to_vec(), "malformed-request"),
    ];
    for (req, code) in &cases {
        let r = exchange(&addr, req);
        let (st, text) = status(&r);
        assert_eq!(st, "failed");
        assert!(text.starts_with(code), "{code}: {text}");
    }
    // Still serving, and nothing was lost from the audit log.
    let r = exchange(&addr, &request);
    assert_eq!(status(&r).0, "succeeded");
    let audit = d.audit(&svc);
    let verdicts: Vec<_> = audit
        .iter()
        .map(|r| (r["verdict"].as_str().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("admit", "admitted"),
            ("admit", "admitted"),
            ("refuse", "report-signature"),
            ("refuse", "measurement-not-trusted"),
            ("admit", "admitted"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_what_it_cannot_stand_behind() {
    let d = Deployment::new("import", None);
    // A policy certificate for another key.
    let other = d.dir.p("other_cert.der");
    let (_, pkcs8) = SigningKey::generate_p256().unwrap();
    std::fs::write(&other, policy_certificate(&pkcs8, unix_now(), 1).unwrap()).unwrap();
    let out = cli(&[
        "import-framework",
        "--dir",
        &d.dir.p("a"),
        "--policy-key",
        &d.files[0],
        "--policy-cert",
        &other,
        "--policy",
        &d.files[2],
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not for the key"));
    // A policy with a claim whose signature is broken: rejected whole.
    let mut seq: SignedClaimSequence =
        decode_bounded(&std::fs::read(&d.files[2]).unwrap()).unwrap();
    let sig = seq.claims[1].signature.as_mut().unwrap();
    sig[0] ^= 1;
    let bad = d.dir.p("bad_policy.bin");
    std::fs::write(&bad, seq.encode_to_vec()).unwrap();
    let out = cli(&[
        "import-framework",
        "--dir",
        &d.dir.p("b"),
        "--policy-key",
        &d.files[0],
        "--policy-cert",
        &d.files[1],
        "--policy",
        &bad,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy claim 1 does not verify"), "{err}");
    assert!(!Path::new(&d.dir.p("b")).join("policy_key.pem").exists());
    // Garbage as the key file; a public key where the private one belongs.
    std::fs::write(d.dir.p("junk"), b"\xff\xff\xff").unwrap();
    let out = cli(&[
        "import-framework",
        "--dir",
        &d.dir.p("c"),
        "--policy-key",
        &d.dir.p("junk"),
        "--policy-cert",
        &d.files[1],
        "--policy",
        &d.files[2],
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a key_message"));
    let public = d.policy_key.public_key().to_key_message("policyKey");
    std::fs::write(d.dir.p("public"), public.encode_to_vec()).unwrap();
    let out = cli(&[
        "import-framework",
        "--dir",
        &d.dir.p("d"),
        "--policy-key",
        &d.dir.p("public"),
        "--policy-cert",
        &d.files[1],
        "--policy",
        &d.files[2],
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("private RSA policy key"));
    // The framework's own 2022 policy certificate (X.509 v1 with
    // extensions, as older cert_utility wrote it) imports too.
    let km: KeyMessage = decode_bounded(&testdata("policy_key_file_2022.key_message.bin")).unwrap();
    let old = Deployment::new("import-v1", km.certificate.clone());
    let svc = old.dir.p("svc");
    ok(old.import(&svc, true));
    let (_svc, addr) = old.serve(&svc);
    let (app_key, _) = rsa_app_key();
    let der = Client::new(&addr, Duration::from_secs(10))
        .admit_framework_app(&old.enclave(&MEASUREMENT), &app_key)
        .await
        .unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let (_, root) = X509Certificate::from_der(km.certificate.as_deref().unwrap()).unwrap();
    assert_eq!(root.version(), X509Version::V1);
    assert_eq!(cert.issuer().as_raw(), root.subject().as_raw());
    cert.verify_signature(Some(root.public_key())).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_refuses_a_certificate_for_someone_elses_key_and_never_waits_for_eof() {
    // A service that answers like the framework's Go service (length's top
    // byte zero, connection left open) but certifies another key.
    let d = Deployment::new("wrong-key", None);
    let svc = d.dir.p("svc");
    ok(d.import(&svc, true));
    let (_real, real_addr) = d.serve(&svc);
    let someone_else = SigningKey::generate_p256().unwrap().0.public_key();
    let their_cert = Client::new(&real_addr, Duration::from_secs(10))
        .admit_framework_app(&d.enclave(&MEASUREMENT), &someone_else)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut req = vec![0u8; u32::from_le_bytes(len) as usize];
        s.read_exact(&mut req).await.unwrap();
        let resp = TrustResponseMessage {
            status: Some("succeeded".into()),
            requesting_enclave_tag: Some("requesting-enclave".into()),
            providing_enclave_tag: Some("providing-enclave".into()),
            artifact: Some(their_cert),
        }
        .encode_to_vec();
        let n = resp.len();
        s.write_all(&[n as u8, (n >> 8) as u8, (n >> 16) as u8, 0])
            .await
            .unwrap();
        s.write_all(&resp).await.unwrap();
        // Keep the connection open, as the Go service does.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    });
    let (app_key, _) = rsa_app_key();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        Client::new(&fake, Duration::from_secs(10))
            .admit_framework_app(&d.enclave(&MEASUREMENT), &app_key),
    )
    .await
    .expect("the client returns after one frame, without waiting for EOF")
    .unwrap_err();
    assert!(matches!(err, ClientError::NotOurCertificate(_)), "{err}");
    server.abort();
}

/// The framework apps' hello: mutual TLS with admission certificates as
/// leaves and the policy certificate as the only trust root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admitted_framework_apps_complete_a_mutual_tls_hello() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let d = Deployment::new("hello", None);
    let svc = d.dir.p("svc");
    ok(d.import(&svc, true));
    let (_svc, addr) = d.serve(&svc);
    let client = Client::new(&addr, Duration::from_secs(10));
    // App A (server side) has an RSA key, as framework apps do by default;
    // app B (client side) an EC P-256 key.
    let (a_pub, a_pkcs8) = rsa_app_key();
    let (b_signing, b_pkcs8) = SigningKey::generate_p256().unwrap();
    let a_cert = client
        .admit_framework_app(&d.enclave(&MEASUREMENT), &a_pub)
        .await
        .unwrap();
    let b_cert = client
        .admit_framework_app(&d.enclave(&MEASUREMENT), &b_signing.public_key())
        .await
        .unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(std::fs::read(&d.files[1]).unwrap()))
        .unwrap();
    let roots = Arc::new(roots);
    let roots_for_c = roots.clone();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(a_cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(a_pkcs8)),
        )
        .unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(b_cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(b_pkcs8)),
        )
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let first_acceptor = acceptor.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = first_acceptor.accept(tcp).await.unwrap();
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let mut hello = [0u8; 5];
        tls.read_exact(&mut hello).await.unwrap();
        tls.write_all(b"hi, app B").await.unwrap();
        tls.shutdown().await.unwrap();
        (hello, peer)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(server_addr).await.unwrap();
    // The admission certificate names the app's address (127.0.0.1) as SAN.
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"hi, app B");
    let (hello, peer) = server.await.unwrap();
    assert_eq!(&hello, b"hello");
    let peer_key = attestation::certifier::admission::certified_key(&peer).unwrap();
    assert_eq!(peer_key, b_signing.public_key());

    // An app certified under another policy key does not get through.
    let (_, foreign_pkcs8) = SigningKey::generate_p256().unwrap();
    let foreign_root = policy_certificate(&foreign_pkcs8, unix_now(), 1).unwrap();
    let (c_signing, c_pkcs8) = SigningKey::generate_p256().unwrap();
    let c_cert = attestation::certifier::admission::issue_framework_admission_certificate(
        &foreign_pkcs8,
        &foreign_root,
        &MEASUREMENT,
        &c_signing.public_key(),
        unix_now(),
        3600,
        Some(std::net::Ipv4Addr::LOCALHOST.into()),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.map(|_| ())
    });
    let c_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots_for_c)
    .with_client_auth_cert(
        vec![CertificateDer::from(c_cert)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c_pkcs8)),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(server_addr).await.unwrap();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    // TLS 1.3: the client may finish before the server judges its
    // certificate; the server's verdict is what counts.
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(c_config))
        .connect(name, tcp)
        .await
    {
        let _ = tls.write_all(b"hello").await;
        let mut sink = Vec::new();
        let _ = tls.read_to_end(&mut sink).await;
        assert!(sink.is_empty());
    }
    let err = server.await.unwrap().unwrap_err();
    // Same issuer name (every framework policy certificate is
    // CN=policyAuthority, O=root), other key: the signature check refuses it.
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
}
