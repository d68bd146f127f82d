//! Attested TLS over real loopback sockets: who gets in, who does not and
//! why, on both sides, with one server that keeps serving throughout; and the
//! high-assurance fresh-evidence exchange, including a relayed answer.

use attestation::atls::fresh::{FreshEvidenceError, fresh_challenge, verify_fresh_evidence};
use attestation::atls::{
    Identity, PeerError, PeerRequirement, PolicyAnchor, RevocationList, VerifiedPeer,
    client_config, peer_error, server_config, server_name,
};
use attestation::cca::{Curve, PlatformKey, VerifyError};
use attestation::certifier::admission::{
    CertError, issue_admission_certificate, policy_certificate,
};
use attestation::certifier::claims::sign_claim;
use attestation::certifier::clause::{key_entity, measurement_entity, says, unary, verb};
use attestation::certifier::client::unix_now;
use attestation::certifier::decide::Admitted;
use attestation::certifier::keys::{PublicKey, SigningKey};
use attestation::certifier::policy::{Policy, Role};
use attestation::certifier::proto::{SignedClaimSequence, VseClause};
use attestation::platform::EvidenceSource;
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Pki {
    pkcs8: Vec<u8>,
    anchor: PolicyAnchor,
}

impl Pki {
    fn new() -> Self {
        let (_, pkcs8) = SigningKey::generate_p256().unwrap();
        let cert = policy_certificate(&pkcs8, unix_now(), 1).unwrap();
        Pki {
            anchor: PolicyAnchor::from_certificate_der(&cert).unwrap(),
            pkcs8,
        }
    }

    /// An admitted party: (identity, its auth key SPKI).
    fn party(
        &self,
        role: &str,
        measurement: &[u8],
        issued: i64,
        validity: i64,
        insecure: bool,
    ) -> (Identity, Vec<u8>) {
        self.party_on([1; 33], role, measurement, issued, validity, insecure)
    }

    /// The same, admitted from platform instance `instance`.
    fn party_on(
        &self,
        instance: [u8; 33],
        role: &str,
        measurement: &[u8],
        issued: i64,
        validity: i64,
        insecure: bool,
    ) -> (Identity, Vec<u8>) {
        let (key, pkcs8) = SigningKey::generate_p256().unwrap();
        let admitted = Admitted {
            role: Role::new(role).unwrap(),
            measurement: measurement.to_vec(),
            auth_key: key.public_key(),
            platform_instance: instance,
            insecure: insecure
                .then_some(attestation::certifier::insecure::Insecurity::EmulatedPlatform),
        };
        let cert =
            issue_admission_certificate(&self.pkcs8, &admitted, issued, validity, None).unwrap();
        (
            Identity::new(cert, pkcs8),
            key.public_key().ec_spki_der().unwrap(),
        )
    }

    /// A policy signed by this PKI's key: `cpak` trusted with `flags`, plus
    /// `extra` statements (descriptor, statement).
    fn policy(&self, cpak: &PlatformKey, flags: &str, extra: &[(String, VseClause)]) -> Policy {
        let key = SigningKey::from_pkcs8(&self.pkcs8).unwrap();
        let now = unix_now();
        let pk = key_entity(&key.public_key(), "policyKey");
        let sign = |stmt: VseClause, d: &str| {
            sign_claim(
                &key,
                "policyKey",
                &says(pk.clone(), stmt),
                d,
                now - 60,
                now + 3600,
            )
            .unwrap()
        };
        let mut claims = vec![sign(
            unary(
                key_entity(&PublicKey::P384(cpak.point().to_vec()), "platformKey"),
                verb::IS_TRUSTED_FOR_ATTESTATION,
            ),
            flags,
        )];
        for (d, stmt) in extra {
            claims.push(sign(stmt.clone(), d));
        }
        Policy::load(&SignedClaimSequence { claims }, &key.public_key(), now).unwrap()
    }
}

/// The instance id an emulated platform's tokens carry.
fn instance_of(platform: &InsecureEmulatedPlatform) -> [u8; 33] {
    let token = platform
        .attestation_token(&attestation::cca::Challenge([0; 64]))
        .unwrap();
    attestation::cca::parse(&token)
        .unwrap()
        .platform()
        .claims()
        .instance_id
}

const EMULATED_FLAGS: &str = "cca-platform;insecure-emulated;sw-components=any";

const RUNTIME_M: [u8; 64] = [0x11; 64];
const DEVICE_M: [u8; 64] = [0x22; 64];

/// What the server saw for one connection.
type Seen = Result<VerifiedPeer, Option<PeerError>>;

async fn start_server(
    pki: &Pki,
    identity: Identity,
    require: PeerRequirement,
    revoked: RevocationList,
) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let config = server_config(&identity, pki.anchor.clone(), require, revoked).unwrap();
    let acceptor = TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let policy_key = pki.anchor.key().clone();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let policy_key = policy_key.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let peer = VerifiedPeer::from_certificates(
                            tls.get_ref().1.peer_certificates(),
                            &policy_key,
                            unix_now(),
                        );
                        let _ = tx.send(peer.map_err(|_| None));
                        let mut buf = [0u8; 64];
                        if tls.read_exact(&mut buf).await.is_ok() {
                            let _ = tls.write_all(&buf).await;
                            let _ = tls.flush().await;
                        }
                    }
                    Err(e) => {
                        let reason = e
                            .get_ref()
                            .and_then(|i| i.downcast_ref::<rustls::Error>())
                            .and_then(peer_error);
                        let _ = tx.send(Err(reason));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(
    pki: &Pki,
    addr: &str,
    identity: &Identity,
    require: PeerRequirement,
) -> Result<VerifiedPeer, Option<PeerError>> {
    let config =
        client_config(identity, pki.anchor.clone(), require, RevocationList::new()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = match TlsConnector::from(config).connect(server_name(), tcp).await {
        Ok(t) => t,
        Err(e) => {
            return Err(e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .and_then(peer_error));
        }
    };
    let peer = VerifiedPeer::from_certificates(
        tls.get_ref().1.peer_certificates(),
        pki.anchor.key(),
        unix_now(),
    )
    .unwrap();
    // In TLS 1.3 the server's verdict on the client certificate arrives after
    // the client's handshake completes: a round trip shows whether we are in.
    let msg = [7u8; 64];
    tls.write_all(&msg).await.map_err(|_| None)?;
    let mut back = [0u8; 64];
    tls.read_exact(&mut back).await.map_err(|_| None)?;
    assert_eq!(back, msg);
    Ok(peer)
}

fn requires(role: &str) -> PeerRequirement {
    PeerRequirement::roles([Role::new(role).unwrap()]).unwrap()
}

#[tokio::test]
async fn only_admitted_peers_with_the_right_role_get_through_and_the_server_keeps_serving() {
    let pki = Pki::new();
    let now = unix_now();
    let (runtime, _) = pki.party("runtime", &RUNTIME_M, now, 3600, false);
    let revoked = RevocationList::new();
    let (addr, mut seen) = start_server(&pki, runtime, requires("device"), revoked.clone()).await;
    let (device, _) = pki.party("device", &DEVICE_M, now, 3600, false);

    // Happy path, identities visible on both sides.
    let server_peer = connect(&pki, &addr, &device, requires("runtime"))
        .await
        .expect("admitted device connects");
    assert_eq!(server_peer.role, Role::runtime());
    assert_eq!(server_peer.measurement, RUNTIME_M);
    let client_peer = seen.recv().await.unwrap().unwrap();
    assert_eq!(client_peer.role, Role::device());
    assert_eq!(client_peer.measurement, DEVICE_M);

    // The client refuses a server that is not what this connection needs.
    let err = connect(&pki, &addr, &device, requires("provider"))
        .await
        .unwrap_err();
    assert!(matches!(err, Some(PeerError::WrongRole { .. })), "{err:?}");
    assert!(
        seen.recv().await.unwrap().is_err(),
        "server sees the client's alert"
    );
    let err = connect(
        &pki,
        &addr,
        &device,
        requires("runtime").with_measurements([vec![0x99; 64]]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Some(PeerError::WrongMeasurement(_))),
        "{err:?}"
    );
    let _ = seen.recv().await;

    // A certificate from another policy root.
    let other = Pki::new();
    let (stranger, _) = other.party("device", &DEVICE_M, now, 3600, false);
    assert!(
        connect(&pki, &addr, &stranger, requires("runtime"))
            .await
            .is_err()
    );
    assert_eq!(
        seen.recv().await.unwrap().unwrap_err(),
        Some(PeerError::Certificate(CertError::BadSignature))
    );

    // An expired certificate.
    let (old, _) = pki.party("device", &DEVICE_M, now - 7200, 3600, false);
    assert!(
        connect(&pki, &addr, &old, requires("runtime"))
            .await
            .is_err()
    );
    assert_eq!(
        seen.recv().await.unwrap().unwrap_err(),
        Some(PeerError::Certificate(CertError::Expired))
    );

    // A peer whose role is wrong for this connection.
    let (provider, _) = pki.party("provider", &DEVICE_M, now, 3600, false);
    assert!(
        connect(&pki, &addr, &provider, requires("runtime"))
            .await
            .is_err()
    );
    assert!(matches!(
        seen.recv().await.unwrap().unwrap_err(),
        Some(PeerError::WrongRole { .. })
    ));

    // Emulated-platform admissions are refused unless the requirement allows them.
    let (emulated, _) = pki.party("device", &DEVICE_M, now, 3600, true);
    assert!(
        connect(&pki, &addr, &emulated, requires("runtime"))
            .await
            .is_err()
    );
    assert_eq!(
        seen.recv().await.unwrap().unwrap_err(),
        Some(PeerError::InsecurePlatform)
    );

    // A revoked measurement, revoked while the server runs.
    revoked.revoke(DEVICE_M.to_vec());
    assert!(
        connect(&pki, &addr, &device, requires("runtime"))
            .await
            .is_err()
    );
    assert!(matches!(
        seen.recv().await.unwrap().unwrap_err(),
        Some(PeerError::Revoked(_))
    ));

    // A plain-TCP client speaking something else.
    let mut plain = TcpStream::connect(&addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink).await;
    assert_eq!(
        seen.recv().await.unwrap().unwrap_err(),
        None,
        "not TLS: refused, no peer error"
    );

    // Still serving: another admitted device gets in.
    let (device2, _) = pki.party("device", &[0x33; 64], now, 3600, false);
    connect(&pki, &addr, &device2, requires("runtime"))
        .await
        .expect("server still serving");
    assert!(seen.recv().await.unwrap().is_ok());
}

#[test]
fn a_requirement_without_roles_is_not_built() {
    assert!(PeerRequirement::roles(Vec::<Role>::new()).is_err());
}

/// Fresh evidence: the client proves, on this session, that it still runs
/// the admitted code; an answer computed on another session is refused.
#[tokio::test]
async fn fresh_evidence_is_bound_to_the_session_and_relays_fail() {
    let pki = Pki::new();
    let now = unix_now();
    let (pem, cpak) = generate_platform_key_pem(Curve::P384).unwrap();
    let platform =
        InsecureEmulatedPlatform::from_pkcs8(pem::parse(pem).unwrap().contents()).unwrap();
    let rim = platform.rim().as_bytes().to_vec();
    let platforms = pki.policy(&cpak, EMULATED_FLAGS, &[]);
    let (runtime, _) = pki.party("runtime", &RUNTIME_M, now, 3600, false);
    let (device, device_spki) =
        pki.party_on(instance_of(&platform), "device", &rim, now, 3600, true);

    let server_cfg = server_config(
        &runtime,
        pki.anchor.clone(),
        requires("device").allow_insecure_emulated_platform(),
        RevocationList::new(),
    )
    .unwrap();
    let client_cfg = client_config(
        &device,
        pki.anchor.clone(),
        requires("runtime"),
        RevocationList::new(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_cfg);
    let connector = TlsConnector::from(client_cfg);

    // Two sessions from the same device.
    let c1 = tokio::spawn({
        let connector = connector.clone();
        async move {
            connector
                .connect(server_name(), TcpStream::connect(addr).await.unwrap())
                .await
                .unwrap()
        }
    });
    let s1 = acceptor
        .accept(listener.accept().await.unwrap().0)
        .await
        .unwrap();
    let mut c1 = c1.await.unwrap();
    let c2 = tokio::spawn(async move {
        connector
            .connect(server_name(), TcpStream::connect(addr).await.unwrap())
            .await
            .unwrap()
    });
    let s2 = acceptor
        .accept(listener.accept().await.unwrap().0)
        .await
        .unwrap();
    let c2 = c2.await.unwrap();
    // Let the client read the server's session tickets/finished flight.
    c1.flush().await.unwrap();

    let peer = VerifiedPeer::from_certificates(
        s1.get_ref().1.peer_certificates(),
        pki.anchor.key(),
        unix_now(),
    )
    .unwrap();
    assert_eq!(peer.auth_key_spki, device_spki);

    // Session 1: honest answer verifies.
    let nonce1 = [1u8; 32];
    let answer1 = platform
        .attestation_token(&fresh_challenge(c1.get_ref().1, &nonce1, &device_spki).unwrap())
        .unwrap();
    let expect1 = fresh_challenge(s1.get_ref().1, &nonce1, &peer.auth_key_spki).unwrap();
    let verified = verify_fresh_evidence(&answer1, &expect1, &peer, &platforms).unwrap();
    assert_eq!(verified.realm().rim.as_bytes(), rim.as_slice());

    // Session 2 asks with its own nonce; relaying session 1's answer fails,
    // and so does an answer to session 2's nonce computed on session 1's keys.
    let nonce2 = [2u8; 32];
    let expect2 = fresh_challenge(s2.get_ref().1, &nonce2, &peer.auth_key_spki).unwrap();
    let err = verify_fresh_evidence(&answer1, &expect2, &peer, &platforms).unwrap_err();
    assert_eq!(
        err,
        FreshEvidenceError::Evidence(VerifyError::ChallengeMismatch)
    );
    let relayed = platform
        .attestation_token(&fresh_challenge(c1.get_ref().1, &nonce2, &device_spki).unwrap())
        .unwrap();
    let err = verify_fresh_evidence(&relayed, &expect2, &peer, &platforms).unwrap_err();
    assert_eq!(
        err,
        FreshEvidenceError::Evidence(VerifyError::ChallengeMismatch)
    );
    // The honest answer on session 2 works.
    let answer2 = platform
        .attestation_token(&fresh_challenge(c2.get_ref().1, &nonce2, &device_spki).unwrap())
        .unwrap();
    verify_fresh_evidence(&answer2, &expect2, &peer, &platforms).unwrap();

    // A rebuilt binary cannot answer for the admitted measurement.
    let other = InsecureEmulatedPlatform::from_pkcs8(
        pem::parse(generate_platform_key_pem(Curve::P384).unwrap().0)
            .unwrap()
            .contents(),
    )
    .unwrap();
    let wrong_platform = other.attestation_token(&expect1).unwrap();
    assert_eq!(
        verify_fresh_evidence(&wrong_platform, &expect1, &peer, &platforms).unwrap_err(),
        FreshEvidenceError::UntrustedPlatform
    );
    let tmp = std::env::temp_dir().join(format!("atls-rebuilt-{}", std::process::id()));
    std::fs::write(&tmp, b"rebuilt").unwrap();
    let rebuilt = platform.with_rim(attestation::platform::measure_file(&tmp).unwrap());
    std::fs::remove_file(&tmp).unwrap();
    let changed = rebuilt.attestation_token(&expect1).unwrap();
    assert!(matches!(
        verify_fresh_evidence(&changed, &expect1, &peer, &platforms),
        Err(FreshEvidenceError::MeasurementChanged { .. })
    ));
}

/// Issue 17 item 5: fresh evidence is appraised like admission (the same
/// function, against the current policy) and must match the admission: an
/// emulated token for a certificate that is not INSECURE, a firmware value
/// that is not this platform's reference value, a measurement revoked since
/// admission and a token from another platform instance are each refused.
#[test]
fn fresh_evidence_is_appraised_like_admission() {
    use attestation::certifier::decide::Refusal;
    let pki = Pki::new();
    let now = unix_now();
    let (pem, cpak) = generate_platform_key_pem(Curve::P384).unwrap();
    let platform =
        InsecureEmulatedPlatform::from_pkcs8(pem::parse(pem).unwrap().contents()).unwrap();
    let rim = platform.rim().as_bytes().to_vec();
    let instance = instance_of(&platform);
    let challenge = attestation::cca::Challenge([9; 64]);
    let token = platform.attestation_token(&challenge).unwrap();
    let peer_of = |identity: &Identity| {
        VerifiedPeer::from_certificates(
            Some(&[rustls::pki_types::CertificateDer::from(
                identity.certificate().to_vec(),
            )]),
            pki.anchor.key(),
            now,
        )
        .unwrap()
    };
    let policy = pki.policy(&cpak, EMULATED_FLAGS, &[]);

    // Baseline: an INSECURE certificate for this platform and RIM passes.
    let (insecure_cert, _) = pki.party_on(instance, "device", &rim, now, 3600, true);
    verify_fresh_evidence(&token, &challenge, &peer_of(&insecure_cert), &policy).unwrap();

    // Emulated evidence behind a certificate that does not say INSECURE.
    let (secure_cert, _) = pki.party_on(instance, "device", &rim, now, 3600, false);
    assert!(matches!(
        verify_fresh_evidence(&token, &challenge, &peer_of(&secure_cert), &policy),
        Err(FreshEvidenceError::InsecureEvidence(ref why)) if why == "insecure-emulated-platform"
    ));

    // Another platform instance than the admission's.
    let (other_phone, _) = pki.party_on([7; 33], "device", &rim, now, 3600, true);
    assert_eq!(
        verify_fresh_evidence(&token, &challenge, &peer_of(&other_phone), &policy).unwrap_err(),
        FreshEvidenceError::InstanceChanged
    );

    // Revoked since admission.
    let revoked = pki.policy(
        &cpak,
        EMULATED_FLAGS,
        &[(
            "revoked:test".into(),
            unary(measurement_entity(&rim), verb::IS_REVOKED),
        )],
    );
    assert!(matches!(
        verify_fresh_evidence(&token, &challenge, &peer_of(&insecure_cert), &revoked),
        Err(FreshEvidenceError::Revoked(_))
    ));

    // Downgraded firmware: the platform's reference value for the slot is
    // another measurement (the policy appraises components for this entry).
    let fingerprint = attestation::certifier::policy::platform_fingerprint(&PublicKey::P384(
        cpak.point().to_vec(),
    ))
    .unwrap();
    let slot = attestation::cca::parse(&token)
        .unwrap()
        .platform()
        .claims()
        .sw_components[0]
        .measurement_type
        .clone()
        .unwrap();
    let appraising = pki.policy(
        &cpak,
        "cca-platform;insecure-emulated",
        &[(
            format!(
                "cca-platform-component;cpak={};type={slot}",
                hex::encode(fingerprint)
            ),
            unary(
                measurement_entity(&[0x42; 32]),
                verb::IS_TRUSTED_PLATFORM_COMPONENT,
            ),
        )],
    );
    let err = verify_fresh_evidence(&token, &challenge, &peer_of(&insecure_cert), &appraising)
        .unwrap_err();
    assert!(
        matches!(
            err,
            FreshEvidenceError::Appraisal(Refusal::PlatformComponentNotTrusted { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "platform-component-not-trusted");
}
