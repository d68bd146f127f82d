//! Two processes, each admitted by the real decision path on (INSECURE
//! emulated) CCA evidence, exchange framed messages over attested TLS and
//! prove fresh evidence to each other.
//!
//! The second process is this test binary re-executed to run the ignored
//! test `child_process_server` (which does nothing unless
//! `PROTOCOL_TEST_CHILD_DIR` is set), so no other binary has to be built.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use attestation::atls::{
    Identity, PeerRequirement, PolicyAnchor, RevocationList, VerifiedPeer, client_config,
    server_config, server_name,
};
use attestation::cca::Curve;
use attestation::certifier::admission::{issue_admission_certificate, policy_certificate};
use attestation::certifier::claims::sign_claim;
use attestation::certifier::clause::{key_entity, measurement_entity, says, unary, verb};
use attestation::certifier::client::unix_now;
use attestation::certifier::decide::{admission_challenge, decide};
use attestation::certifier::keys::{PublicKey, SigningKey};
use attestation::certifier::policy::{Policy, Role, descriptor};
use attestation::certifier::proto::SignedClaimSequence;
use attestation::platform::EvidenceSource;
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};
use protocol::{Framed, InferenceOutput, Message, Tensor, TensorData, fresh_evidence_exchange};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const CHILD_ENV: &str = "PROTOCOL_TEST_CHILD_DIR";

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

fn emulated(dir: &Path, image: &str) -> InsecureEmulatedPlatform {
    InsecureEmulatedPlatform::from_key_file(&dir.join("platform.key.pem"))
        .unwrap()
        .measuring(&dir.join(image))
        .unwrap()
}

/// The signed policy `setup` wrote, verified with the policy certificate's key.
fn policy(dir: &Path) -> Policy {
    use prost::Message as _;
    let anchor = PolicyAnchor::from_certificate_der(&read(dir, "policy.cert.der")).unwrap();
    let seq = SignedClaimSequence::decode(read(dir, "policy.bin").as_slice()).unwrap();
    Policy::load(&seq, anchor.key(), unix_now()).unwrap()
}

fn requirement(role: Role) -> PeerRequirement {
    PeerRequirement::roles([role])
        .unwrap()
        .allow_insecure_emulated_platform()
}

/// Admit a party the way the certifier service does: fresh nonce, evidence
/// bound to a new auth key, `decide` against the signed policy, certificate.
fn admit(dir: &Path, policy: &Policy, policy_pkcs8: &[u8], image: &str, role: Role, prefix: &str) {
    let platform = emulated(dir, image);
    let (key, key_pkcs8) = SigningKey::generate_p256().unwrap();
    let nonce = [0x5au8; 32];
    let spki = key.public_key().ec_spki_der().unwrap();
    let token = platform
        .attestation_token(&admission_challenge(&nonce, &spki))
        .unwrap();
    let admitted = decide(policy, &token, &nonce, &key.public_key(), &role).unwrap();
    let cert = issue_admission_certificate(policy_pkcs8, &admitted, unix_now(), 600, None).unwrap();
    std::fs::write(dir.join(format!("{prefix}.cert.der")), cert).unwrap();
    std::fs::write(dir.join(format!("{prefix}.key.pk8")), key_pkcs8).unwrap();
}

fn setup() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("two-processes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (platform_pem, cpak) = generate_platform_key_pem(Curve::P384).unwrap();
    std::fs::write(dir.join("platform.key.pem"), platform_pem).unwrap();
    std::fs::write(dir.join("platform.pub.pem"), cpak.to_pem()).unwrap();
    std::fs::write(dir.join("runtime.img"), b"realm-runtime build 1").unwrap();
    std::fs::write(dir.join("device.img"), b"device-agent build 1").unwrap();

    // The policy: the emulated platform (marked INSECURE), and one
    // measurement per role.
    let (policy_key, policy_pkcs8) = SigningKey::generate_p256().unwrap();
    let now = unix_now();
    std::fs::write(
        dir.join("policy.cert.der"),
        policy_certificate(&policy_pkcs8, now, 1).unwrap(),
    )
    .unwrap();
    let pk = key_entity(&policy_key.public_key(), "policyKey");
    let sign = |stmt, d: &str| {
        sign_claim(
            &policy_key,
            "policyKey",
            &says(pk.clone(), stmt),
            d,
            now - 60,
            now + 600,
        )
        .unwrap()
    };
    let cpak_key = PublicKey::P384(cpak.point().to_vec());
    let mut claims = vec![sign(
        unary(
            key_entity(&cpak_key, "platformKey"),
            verb::IS_TRUSTED_FOR_ATTESTATION,
        ),
        &format!(
            "{};{};{}",
            descriptor::CCA_PLATFORM,
            descriptor::INSECURE_EMULATED,
            descriptor::SW_COMPONENTS_ANY
        ),
    )];
    for (image, role) in [("runtime.img", "runtime"), ("device.img", "device")] {
        let rim = emulated(&dir, image).rim().as_bytes().to_vec();
        claims.push(sign(
            unary(measurement_entity(&rim), verb::IS_TRUSTED),
            &format!("role:{role}"),
        ));
    }
    let seq = SignedClaimSequence { claims };
    std::fs::write(dir.join("policy.bin"), prost::Message::encode_to_vec(&seq)).unwrap();
    let policy = Policy::load(&seq, &policy_key.public_key(), now).unwrap();
    admit(
        &dir,
        &policy,
        &policy_pkcs8,
        "runtime.img",
        Role::runtime(),
        "runtime",
    );
    admit(
        &dir,
        &policy,
        &policy_pkcs8,
        "device.img",
        Role::device(),
        "device",
    );
    // The device is not admitted as a runtime.
    let (key, _) = SigningKey::generate_p256().unwrap();
    let token = emulated(&dir, "device.img")
        .attestation_token(&admission_challenge(
            &[1; 32],
            &key.public_key().ec_spki_der().unwrap(),
        ))
        .unwrap();
    assert!(
        decide(
            &policy,
            &token,
            &[1; 32],
            &key.public_key(),
            &Role::runtime()
        )
        .is_err()
    );
    dir
}

/// Child mode: a runtime serving one device connection. Ignored in normal
/// runs; `two_admitted_processes_talk_over_attested_tls` starts it.
#[tokio::test]
#[ignore = "the child half of two_admitted_processes_talk_over_attested_tls, which runs it"]
async fn child_process_server() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let anchor = PolicyAnchor::from_certificate_der(&read(&dir, "policy.cert.der")).unwrap();
    let identity = Identity::new(
        read(&dir, "runtime.cert.der"),
        read(&dir, "runtime.key.pk8"),
    );
    let config = server_config(
        &identity,
        anchor.clone(),
        requirement(Role::device()),
        RevocationList::new(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("LISTENING {}", listener.local_addr().unwrap());
    let (tcp, _) = listener.accept().await.unwrap();
    let tls = TlsAcceptor::from(config).accept(tcp).await.unwrap();
    let peer = VerifiedPeer::from_certificates(
        tls.get_ref().1.peer_certificates(),
        anchor.key(),
        unix_now(),
    )
    .unwrap();
    assert_eq!(peer.role, Role::device());
    let mut framed = Framed::new(tls);
    let hello = framed.server_hello().await.unwrap();
    assert_eq!(hello.role, "device");
    let own_spki = SigningKey::from_pkcs8(&read(&dir, "runtime.key.pk8"))
        .unwrap()
        .public_key()
        .ec_spki_der()
        .unwrap();
    fresh_evidence_exchange(
        &mut framed,
        &own_spki,
        &emulated(&dir, "runtime.img"),
        &peer,
        &policy(&dir),
    )
    .await
    .unwrap();
    while let Ok(Message::InferenceRequest {
        request_id, input, ..
    }) = framed.recv().await
    {
        let TensorData::F32(values) = input.data else {
            panic!("expected f32")
        };
        let argmax = values
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap();
        framed
            .send(&Message::InferenceResponse {
                request_id,
                output: InferenceOutput::Label(argmax),
            })
            .await
            .unwrap();
    }
    println!("CHILD DONE");
}

#[tokio::test]
async fn two_admitted_processes_talk_over_attested_tls() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = setup();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_server",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("child printed its address").unwrap();
        // libtest prints "test child_process_server ... " on the same line.
        if let Some(i) = line.find("LISTENING ") {
            break line[i + "LISTENING ".len()..].trim().to_string();
        }
    };

    let anchor = PolicyAnchor::from_certificate_der(&read(&dir, "policy.cert.der")).unwrap();
    let identity = Identity::new(read(&dir, "device.cert.der"), read(&dir, "device.key.pk8"));
    let config = client_config(
        &identity,
        anchor.clone(),
        requirement(Role::runtime()),
        RevocationList::new(),
    )
    .unwrap();
    let tls = TlsConnector::from(config)
        .connect(server_name(), TcpStream::connect(&addr).await.unwrap())
        .await
        .unwrap();
    let peer = VerifiedPeer::from_certificates(
        tls.get_ref().1.peer_certificates(),
        anchor.key(),
        unix_now(),
    )
    .unwrap();
    assert_eq!(peer.role, Role::runtime());
    assert_eq!(
        peer.measurement,
        emulated(&dir, "runtime.img").rim().as_bytes()
    );
    let mut framed = Framed::new(tls);
    framed
        .client_hello("device", "two-processes-test")
        .await
        .unwrap();
    let own_spki = SigningKey::from_pkcs8(&read(&dir, "device.key.pk8"))
        .unwrap()
        .public_key()
        .ec_spki_der()
        .unwrap();
    let fresh = fresh_evidence_exchange(
        &mut framed,
        &own_spki,
        &emulated(&dir, "device.img"),
        &peer,
        &policy(&dir),
    )
    .await
    .unwrap();
    assert_eq!(fresh.realm().rim.as_bytes(), peer.measurement.as_slice());

    for (id, hot) in [(1u64, 3usize), (2, 0), (3, 9)] {
        let mut v = vec![0.0f32; 10];
        v[hot] = 1.0;
        let input = Tensor {
            shape: vec![1, 10],
            data: TensorData::F32(v),
        };
        framed
            .send(&Message::InferenceRequest {
                request_id: id,
                model_id: "argmax".into(),
                input,
            })
            .await
            .unwrap();
        match framed.recv().await.unwrap() {
            Message::InferenceResponse {
                request_id,
                output: InferenceOutput::Label(l),
            } => {
                assert_eq!((request_id, l as usize), (id, hot));
            }
            other => panic!("unexpected {}", other.kind()),
        }
    }
    framed.shutdown().await.unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("CHILD DONE")), "{rest:?}");
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}
