//! Attested TLS against plain rustls mutual TLS, in one run on loopback.
//!
//! `cargo bench -p attestation --bench atls [-- --quick]`
//!
//! Both sides use P-256 certificates, TLS 1.3, the ring provider and no
//! resumption; the only difference is the certificate verifier (admission
//! certificate + role + revocation checks vs webpki chain building). Runs are
//! interleaved in batches so machine drift hits both equally, and results are
//! reported as ratios. Also: 64 KiB-record throughput over an established
//! session, and the extra cost of one fresh-evidence exchange.

use std::sync::Arc;
use std::time::{Duration, Instant};

use attestation::atls::fresh::{fresh_challenge, verify_fresh_evidence};
use attestation::atls::{
    Identity, PeerRequirement, PolicyAnchor, RevocationList, VerifiedPeer, client_config,
    server_config, server_name,
};
use attestation::cca::Curve;
use attestation::certifier::admission::{issue_admission_certificate, policy_certificate};
use attestation::certifier::client::unix_now;
use attestation::certifier::decide::Admitted;
use attestation::certifier::keys::SigningKey;
use attestation::certifier::policy::Role;
use attestation::platform::EvidenceSource;
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Configs {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn attested() -> (Configs, Vec<u8>) {
    let (_, pkcs8) = SigningKey::generate_p256().unwrap();
    let now = unix_now();
    let anchor =
        PolicyAnchor::from_certificate_der(&policy_certificate(&pkcs8, now, 1).unwrap()).unwrap();
    let party = |role: Role| {
        let (key, key_pkcs8) = SigningKey::generate_p256().unwrap();
        let admitted = Admitted {
            role,
            measurement: vec![0x42; 64],
            auth_key: key.public_key(),
            platform_instance: [1; 33],
            insecure: None,
        };
        let cert = issue_admission_certificate(&pkcs8, &admitted, now, 3600, None).unwrap();
        (
            Identity::new(cert, key_pkcs8),
            key.public_key().ec_spki_der().unwrap(),
        )
    };
    let (runtime, _) = party(Role::runtime());
    let (device, device_spki) = party(Role::device());
    let req = |r: Role| PeerRequirement::roles([r]).unwrap();
    let configs = Configs {
        client: client_config(
            &device,
            anchor.clone(),
            req(Role::runtime()),
            RevocationList::new(),
        )
        .unwrap(),
        server: server_config(&runtime, anchor, req(Role::device()), RevocationList::new())
            .unwrap(),
    };
    (configs, device_spki)
}

fn plain() -> Configs {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (
            CertificateDer::from(cert.der().to_vec()),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    };
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_cert.der().to_vec()))
        .unwrap();
    let roots = Arc::new(roots);
    let (scert, skey) = leaf(attestation::atls::SERVER_NAME);
    let (ccert, ckey) = leaf("client.invalid");
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(vec![scert], skey)
        .unwrap();
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![ccert], ckey)
        .unwrap();
    client.resumption = rustls::client::Resumption::disabled();
    Configs {
        client: Arc::new(client),
        server: Arc::new(server),
    }
}

/// One full handshake plus a 64-byte round trip.
async fn handshake_round_trip(listener: &TcpListener, c: &Configs) -> Duration {
    let addr = listener.local_addr().unwrap();
    let start = Instant::now();
    let connector = TlsConnector::from(c.client.clone());
    let client = tokio::spawn(async move {
        // Without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms to each
        // small exchange and hide the handshake cost entirely.
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut tls = connector.connect(server_name(), tcp).await.unwrap();
        tls.write_all(&[1u8; 64]).await.unwrap();
        tls.flush().await.unwrap();
        let mut b = [0u8; 64];
        tls.read_exact(&mut b).await.unwrap();
    });
    let (tcp, _) = listener.accept().await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut tls = TlsAcceptor::from(c.server.clone())
        .accept(tcp)
        .await
        .unwrap();
    let mut b = [0u8; 64];
    tls.read_exact(&mut b).await.unwrap();
    tls.write_all(&b).await.unwrap();
    tls.flush().await.unwrap();
    client.await.unwrap();
    start.elapsed()
}

/// MB/s of 64 KiB writes over one established session (or plain TCP).
async fn throughput(listener: &TcpListener, c: Option<&Configs>, total: usize) -> f64 {
    let addr = listener.local_addr().unwrap();
    let connector = c.map(|c| TlsConnector::from(c.client.clone()));
    let sender = tokio::spawn(async move {
        let chunk = vec![0x5au8; 64 * 1024];
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        match connector {
            Some(conn) => {
                let mut tls = conn.connect(server_name(), tcp).await.unwrap();
                for _ in 0..total / chunk.len() {
                    tls.write_all(&chunk).await.unwrap();
                }
                tls.flush().await.unwrap();
                let mut ack = [0u8; 1];
                tls.read_exact(&mut ack).await.unwrap();
            }
            None => {
                let mut tcp = tcp;
                for _ in 0..total / chunk.len() {
                    tcp.write_all(&chunk).await.unwrap();
                }
                let mut ack = [0u8; 1];
                tcp.read_exact(&mut ack).await.unwrap();
            }
        }
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let elapsed = match c {
        Some(c) => {
            let mut tls = TlsAcceptor::from(c.server.clone())
                .accept(tcp)
                .await
                .unwrap();
            let start = Instant::now();
            let mut got = 0;
            while got < total {
                got += tls.read(&mut buf).await.unwrap();
            }
            let e = start.elapsed();
            tls.write_all(&[1]).await.unwrap();
            tls.flush().await.unwrap();
            e
        }
        None => {
            let mut tcp = tcp;
            let start = Instant::now();
            let mut got = 0;
            while got < total {
                got += tcp.read(&mut buf).await.unwrap();
            }
            let e = start.elapsed();
            tcp.write_all(&[1]).await.unwrap();
            e
        }
    };
    sender.await.unwrap();
    total as f64 / elapsed.as_secs_f64() / 1e6
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, batch) = if quick { (5, 20) } else { (20, 50) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (att, device_spki) = attested();
        let pl = plain();
        // Warm up both paths.
        for _ in 0..20 {
            handshake_round_trip(&listener, &att).await;
            handshake_round_trip(&listener, &pl).await;
        }
        let (mut a, mut p) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for _ in 0..batch {
                a.push(handshake_round_trip(&listener, &att).await);
            }
            for _ in 0..batch {
                p.push(handshake_round_trip(&listener, &pl).await);
            }
        }
        let (a50, p50) = (pct(&mut a, 0.5), pct(&mut p, 0.5));
        let (a90, p90) = (pct(&mut a, 0.9), pct(&mut p, 0.9));
        println!("handshake + 64 B round trip, {} each, interleaved batches of {batch}:", a.len());
        println!("  plain rustls mTLS (webpki)  p50 {:>8.3} ms  p90 {:>8.3} ms", p50.as_secs_f64() * 1e3, p90.as_secs_f64() * 1e3);
        println!("  attested TLS                p50 {:>8.3} ms  p90 {:>8.3} ms", a50.as_secs_f64() * 1e3, a90.as_secs_f64() * 1e3);
        println!("  ratio attested / plain      p50 {:>8.2} x   p90 {:>8.2} x", a50.as_secs_f64() / p50.as_secs_f64(), a90.as_secs_f64() / p90.as_secs_f64());

        let total = if quick { 64 << 20 } else { 256 << 20 };
        let mut tcp = Vec::new();
        let mut tls_plain = Vec::new();
        let mut tls_att = Vec::new();
        for _ in 0..3 {
            tcp.push(throughput(&listener, None, total).await);
            tls_plain.push(throughput(&listener, Some(&pl), total).await);
            tls_att.push(throughput(&listener, Some(&att), total).await);
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (t, tp, ta) = (med(&mut tcp), med(&mut tls_plain), med(&mut tls_att));
        println!("throughput, 64 KiB writes, {} MiB per run, median of 3:", total >> 20);
        println!("  plain TCP                   {t:>8.0} MB/s");
        println!("  plain rustls                {tp:>8.0} MB/s");
        println!("  attested TLS                {ta:>8.0} MB/s   ratio attested / plain rustls {:.2} x", ta / tp);

        // One fresh-evidence exchange (emulated platform: P-384 RAK + CPAK
        // signatures to make, three P-384 verifications).
        let (pem, cpak) = generate_platform_key_pem(Curve::P384).unwrap();
        let platform = InsecureEmulatedPlatform::from_pkcs8(pem::parse(pem).unwrap().contents()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connector = TlsConnector::from(att.client.clone());
        let client = tokio::spawn(async move { connector.connect(server_name(), TcpStream::connect(addr).await.unwrap()).await.unwrap() });
        let server = TlsAcceptor::from(att.server.clone()).accept(listener.accept().await.unwrap().0).await.unwrap();
        let client = client.await.unwrap();
        // The policy fresh evidence is appraised against: the emulated key, INSECURE.
        let policy = {
            use attestation::certifier::claims::sign_claim;
            use attestation::certifier::clause::{key_entity, says, unary, verb};
            use attestation::certifier::keys::PublicKey;
            use attestation::certifier::policy::Policy;
            use attestation::certifier::proto::SignedClaimSequence;
            let (key, _) = SigningKey::generate_p256().unwrap();
            let now = unix_now();
            let stmt = unary(key_entity(&PublicKey::P384(cpak.point().to_vec()), "platformKey"), verb::IS_TRUSTED_FOR_ATTESTATION);
            let claim = sign_claim(&key, "policyKey", &says(key_entity(&key.public_key(), "policyKey"), stmt), "cca-platform;insecure-emulated;sw-components=any", now - 60, now + 3600).unwrap();
            Policy::load(&SignedClaimSequence { claims: vec![claim] }, &key.public_key(), now).unwrap()
        };
        let sample = platform.attestation_token(&attestation::cca::Challenge([0; 64])).unwrap();
        let peer_claims = VerifiedPeer {
            role: Role::device(),
            measurement: platform.rim().as_bytes().to_vec(),
            insecure_platform: true,
            platform_instance: attestation::cca::parse(&sample).unwrap().platform().claims().instance_id,
            auth_key: attestation::certifier::keys::PublicKey::P256(vec![]),
            auth_key_spki: device_spki.clone(),
            not_after: i64::MAX,
        };
        let n = if quick { 20 } else { 100 };
        let start = Instant::now();
        for i in 0..n {
            let nonce = [i as u8; 32];
            let token = platform.attestation_token(&fresh_challenge(client.get_ref().1, &nonce, &device_spki).unwrap()).unwrap();
            let expected = fresh_challenge(server.get_ref().1, &nonce, &device_spki).unwrap();
            verify_fresh_evidence(&token, &expected, &peer_claims, &policy).unwrap();
        }
        let per = start.elapsed() / n;
        println!("fresh evidence (emulated platform), produce + verify, mean of {n}: {:.3} ms = {:.2} x the plain handshake p50", per.as_secs_f64() * 1e3, per.as_secs_f64() / p50.as_secs_f64());
    });
}
