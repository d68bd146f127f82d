//! The protocol over attested TLS, as the binaries use it: hello, messages,
//! hostile peers after the handshake, and fresh evidence in both directions.

use std::time::Duration;

use attestation::atls::{
    Identity, PeerRequirement, PolicyAnchor, RevocationList, VerifiedPeer, client_config,
    server_config, server_name,
};
use attestation::cca::{Challenge, Curve};
use attestation::certifier::admission::{issue_admission_certificate, policy_certificate};
use attestation::certifier::claims::sign_claim;
use attestation::certifier::clause::{key_entity, says, unary, verb};
use attestation::certifier::client::unix_now;
use attestation::certifier::decide::Admitted;
use attestation::certifier::keys::{PublicKey, SigningKey};
use attestation::certifier::policy::{Policy, Role, descriptor};
use attestation::certifier::proto::SignedClaimSequence;
use attestation::platform::EvidenceSource;
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};
use protocol::{
    Framed, FreshExchangeError, Limits, Message, ProtocolError, Tensor, TensorData,
    fresh_evidence_exchange,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Party {
    identity: Identity,
    spki: Vec<u8>,
    platform: InsecureEmulatedPlatform,
}

struct World {
    anchor: PolicyAnchor,
    /// The signed policy: the emulated platform, marked INSECURE.
    policy: Policy,
    runtime: Party,
    device: Party,
}

fn world() -> World {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let tag = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (policy_key, policy_pkcs8) = SigningKey::generate_p256().unwrap();
    let now = unix_now();
    let anchor =
        PolicyAnchor::from_certificate_der(&policy_certificate(&policy_pkcs8, now, 1).unwrap())
            .unwrap();
    let (platform_pem, cpak) = generate_platform_key_pem(Curve::P384).unwrap();
    let der = pem::parse(platform_pem).unwrap().contents().to_vec();
    let party = |role: Role, image: &[u8]| {
        let path =
            std::env::temp_dir().join(format!("over-atls-{}-{tag}-{role}", std::process::id()));
        std::fs::write(&path, image).unwrap();
        let platform = InsecureEmulatedPlatform::from_pkcs8(&der)
            .unwrap()
            .measuring(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let (key, key_pkcs8) = SigningKey::generate_p256().unwrap();
        // The instance id its tokens carry, as the certifier would certify it.
        let sample = platform.attestation_token(&Challenge([0; 64])).unwrap();
        let platform_instance = attestation::cca::parse(&sample)
            .unwrap()
            .platform()
            .claims()
            .instance_id;
        let admitted = Admitted {
            role,
            measurement: platform.rim().as_bytes().to_vec(),
            auth_key: key.public_key(),
            platform_instance,
            insecure: Some(attestation::certifier::insecure::Insecurity::EmulatedPlatform),
        };
        let cert = issue_admission_certificate(&policy_pkcs8, &admitted, now, 3600, None).unwrap();
        Party {
            identity: Identity::new(cert, key_pkcs8),
            spki: key.public_key().ec_spki_der().unwrap(),
            platform,
        }
    };
    let pk = key_entity(&policy_key.public_key(), "policyKey");
    let entry = sign_claim(
        &policy_key,
        "policyKey",
        &says(
            pk,
            unary(
                key_entity(&PublicKey::P384(cpak.point().to_vec()), "platformKey"),
                verb::IS_TRUSTED_FOR_ATTESTATION,
            ),
        ),
        &format!(
            "{};{};{}",
            descriptor::CCA_PLATFORM,
            descriptor::INSECURE_EMULATED,
            descriptor::SW_COMPONENTS_ANY
        ),
        now - 60,
        now + 3600,
    )
    .unwrap();
    let policy = Policy::load(
        &SignedClaimSequence {
            claims: vec![entry],
        },
        &policy_key.public_key(),
        now,
    )
    .unwrap();
    World {
        anchor,
        policy,
        runtime: party(Role::runtime(), b"runtime image"),
        device: party(Role::device(), b"device image"),
    }
}

fn limits() -> Limits {
    Limits {
        read_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

fn req(role: Role) -> PeerRequirement {
    PeerRequirement::roles([role])
        .unwrap()
        .allow_insecure_emulated_platform()
}

/// A runtime-like server: hello, then echo inference requests; reports each
/// connection's outcome. Optionally demands fresh evidence first.
async fn serve(
    w: &'static World,
    fresh: bool,
) -> (String, mpsc::UnboundedReceiver<Result<(), String>>) {
    let config = server_config(
        &w.runtime.identity,
        w.anchor.clone(),
        req(Role::device()),
        RevocationList::new(),
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let outcome = async {
                    let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
                    let peer = VerifiedPeer::from_certificates(
                        tls.get_ref().1.peer_certificates(),
                        w.anchor.key(),
                        unix_now(),
                    )
                    .map_err(|e| e.to_string())?;
                    let mut framed = Framed::with_limits(tls, limits());
                    framed.server_hello().await.map_err(|e| e.to_string())?;
                    if fresh {
                        fresh_evidence_exchange(
                            &mut framed,
                            &w.runtime.spki,
                            &w.runtime.platform,
                            &peer,
                            &w.policy,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    }
                    loop {
                        match framed.recv().await {
                            Ok(Message::InferenceRequest { request_id, .. }) => framed
                                .send(&Message::InferenceResponse {
                                    request_id,
                                    output: protocol::InferenceOutput::Label(7),
                                })
                                .await
                                .map_err(|e| e.to_string())?,
                            Ok(other) => return Err(format!("unexpected {}", other.kind())),
                            Err(ProtocolError::Closed) => return Ok(()),
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                }
                .await;
                let _ = tx.send(outcome);
            });
        }
    });
    (addr, rx)
}

async fn dial(w: &World, addr: &str) -> Framed<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = client_config(
        &w.device.identity,
        w.anchor.clone(),
        req(Role::runtime()),
        RevocationList::new(),
    )
    .unwrap();
    let tls = TlsConnector::from(config)
        .connect(server_name(), TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    Framed::with_limits(tls, limits())
}

async fn infer(
    framed: &mut Framed<tokio_rustls::client::TlsStream<TcpStream>>,
    id: u64,
) -> Message {
    let input = Tensor {
        shape: vec![1, 4],
        data: TensorData::F32(vec![0.0, 1.0, 2.0, 3.0]),
    };
    framed
        .send(&Message::InferenceRequest {
            request_id: id,
            model_id: "digits".into(),
            input,
        })
        .await
        .unwrap();
    framed.recv().await.unwrap()
}

fn leak(w: World) -> &'static World {
    Box::leak(Box::new(w))
}

#[tokio::test]
async fn admitted_parties_exchange_messages_and_hostile_peers_do_not_stop_the_server() {
    let w = leak(world());
    let (addr, mut outcomes) = serve(w, false).await;

    let mut good = dial(w, &addr).await;
    good.client_hello("device", "test").await.unwrap();
    assert!(matches!(
        infer(&mut good, 1).await,
        Message::InferenceResponse { request_id: 1, .. }
    ));

    // Random bytes after the handshake: refused with a decode/frame error.
    let mut noisy = dial(w, &addr).await.into_inner();
    noisy
        .write_all(&[
            0, 0, 0, 9, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8, 0xf7,
        ])
        .await
        .unwrap();
    noisy.flush().await.unwrap();
    let e = outcomes.recv().await.unwrap().unwrap_err();
    assert!(
        e.contains("decode") || e.contains("malformed") || e.contains("unexpected"),
        "{e}"
    );

    // An oversized frame: refused before reading the payload.
    let mut big = dial(w, &addr).await.into_inner();
    big.write_all(&0x4000_0000u32.to_be_bytes()).await.unwrap();
    big.flush().await.unwrap();
    let e = outcomes.recv().await.unwrap().unwrap_err();
    assert!(e.contains("limit"), "{e}");

    // A client that stalls mid-frame times out, while the good one is served.
    let mut stalled = dial(w, &addr).await.into_inner();
    stalled.write_all(&[0, 0]).await.unwrap();
    stalled.flush().await.unwrap();
    assert!(matches!(
        infer(&mut good, 2).await,
        Message::InferenceResponse { request_id: 2, .. }
    ));
    let e = outcomes.recv().await.unwrap().unwrap_err();
    assert!(e.contains("stalled"), "{e}");

    // A peer on another protocol version is told so.
    let mut old = dial(w, &addr).await;
    old.send(&Message::Hello {
        protocol_version: 99,
        role: "device".into(),
        software: "old".into(),
    })
    .await
    .unwrap();
    match old.recv().await.unwrap() {
        Message::Error { code, message } => {
            assert_eq!(code, protocol::ErrorCode::VersionMismatch);
            assert!(message.contains("99"), "{message}");
        }
        other => panic!("expected an error, got {}", other.kind()),
    }
    assert!(outcomes.recv().await.unwrap().is_err());

    // Still serving.
    assert!(matches!(
        infer(&mut good, 3).await,
        Message::InferenceResponse { request_id: 3, .. }
    ));
    good.shutdown().await.unwrap();
    assert!(outcomes.recv().await.unwrap().is_ok());
}

#[tokio::test]
async fn fresh_evidence_runs_both_ways_over_the_session() {
    let w = leak(world());
    let (addr, mut outcomes) = serve(w, true).await;
    let mut framed = dial(w, &addr).await;
    framed.client_hello("device", "test").await.unwrap();
    let peer = VerifiedPeer::from_certificates(
        framed.get_ref().get_ref().1.peer_certificates(),
        w.anchor.key(),
        unix_now(),
    )
    .unwrap();
    let verified = fresh_evidence_exchange(
        &mut framed,
        &w.device.spki,
        &w.device.platform,
        &peer,
        &w.policy,
    )
    .await
    .unwrap();
    assert_eq!(
        verified.realm().rim.as_bytes(),
        w.runtime.platform.rim().as_bytes()
    );
    assert!(matches!(
        infer(&mut framed, 9).await,
        Message::InferenceResponse { request_id: 9, .. }
    ));
    framed.shutdown().await.unwrap();
    assert!(outcomes.recv().await.unwrap().is_ok());

    // A device that answers with evidence from a different build is refused
    // by the server (its RIM no longer matches its admission certificate).
    let mut framed = dial(w, &addr).await;
    framed.client_hello("device", "test").await.unwrap();
    let peer = VerifiedPeer::from_certificates(
        framed.get_ref().get_ref().1.peer_certificates(),
        w.anchor.key(),
        unix_now(),
    )
    .unwrap();
    let r = fresh_evidence_exchange(
        &mut framed,
        &w.device.spki,
        &w.runtime.platform,
        &peer,
        &w.policy,
    )
    .await;
    // Our side may or may not see the refusal before the server hangs up.
    let _ = r.map_err(|e: FreshExchangeError| e);
    let e = outcomes.recv().await.unwrap().unwrap_err();
    assert!(e.contains("admitted as"), "{e}");
}
