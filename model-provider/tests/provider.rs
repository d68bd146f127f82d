//! The model provider as deployed: real `model-provider` and
//! `certifier-service` processes on loopback, a real blob store and
//! keystore, and peers admitted on (INSECURE emulated) CCA evidence asking
//! for keys over attested TLS. Only the allowed role, measurement and use
//! ever receives a key; the key it receives opens the bundle.
//!
//! `certifier-service` is taken from the same target directory; `cargo test
//! --workspace` builds it (run `cargo build -p certifier-service` first when
//! testing this crate alone). Processes, test directories, the certifier and
//! admission come from the shared `testkit` harness.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attestation::atls::{Identity, PolicyAnchor};
use attestation::certifier::client::Client;
use attestation::certifier::keys::SigningKey;
use attestation::certifier::policy::Role;
use blob_store::{BlobId, BlobStore, LocalStore};
use protocol::sealed::{ModelKey, open_to_vec};
use protocol::{ErrorCode, Framed, KeyUsage, Limits, Message};
use testkit::{
    Certifier, TestDir, keystore_args, ok, run, sibling_bin, start_provider_with, store_url,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const PROVIDER: &str = env!("CARGO_BIN_EXE_model-provider");

fn certifier_bin() -> PathBuf {
    sibling_bin(PROVIDER, "certifier-service")
}

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/digits_logreg.onnx")
        .display()
        .to_string()
}

/// `model-provider seal` the digits model as `id` into `dir`; the bundle hash.
fn seal(dir: &TestDir, id: &str, extra: &[&str]) -> String {
    testkit::seal(Path::new(PROVIDER), dir, id, &model(), extra)
}

#[test]
fn seal_verify_list_rotate_and_detect_tampering() {
    let dir = TestDir::new("provider", "cli");
    let hash = seal(
        &dir,
        "digits",
        &["--allow-role", "runtime", "--use", "remote-inference"],
    );
    assert_eq!(hash.len(), 64);
    let ks = keystore_args(&dir);
    let mut verify: Vec<&str> = vec!["verify", "--store"];
    let url = store_url(&dir);
    verify.push(&url);
    verify.extend(["--bundle", &hash]);
    verify.extend(ks.iter().map(String::as_str));
    let out = ok(run(Path::new(PROVIDER), &verify));
    assert!(out.starts_with("OK digits version 1: 3719 bytes"), "{out}");

    // The keystore holds no key in clear, and the wrong keystore key fails.
    let text = std::fs::read_to_string(dir.p("keys.json")).unwrap();
    assert!(text.contains("wrapped_key") && !text.contains("\"key\""));
    std::fs::write(dir.p("other.bin"), [9u8; 32]).unwrap();
    let mut wrong = verify.clone();
    let last = wrong.len() - 1;
    let other = dir.p("other.bin");
    wrong[last] = &other;
    let out = run(Path::new(PROVIDER), &wrong);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong"));

    // A file that is not runnable ONNX is refused before anything is sealed.
    std::fs::write(dir.p("not-a-model.onnx"), b"this is not a protobuf").unwrap();
    let url2 = store_url(&dir);
    let mut bad: Vec<&str> = vec!["seal", "--model"];
    let bad_path = dir.p("not-a-model.onnx");
    bad.extend([
        bad_path.as_str(),
        "--id",
        "bad",
        "--store",
        &url2,
        "--allow-role",
        "runtime",
        "--use",
        "on-device",
    ]);
    bad.extend(ks.iter().map(String::as_str));
    let out = run(Path::new(PROVIDER), &bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loadable ONNX model"));
    let unknown = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/unknown_op.onnx")
        .display()
        .to_string();
    bad[2] = &unknown;
    let out = run(Path::new(PROVIDER), &bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FancyUnknownOp"),
        "names the operator"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
        1,
        "nothing new stored"
    );

    // Listing names the bundle.
    let mut list = vec!["list", "--store", &url];
    list.extend(ks.iter().map(String::as_str));
    assert!(ok(run(Path::new(PROVIDER), &list)).contains("digits v1"));

    // Rotation: a new bundle under a new key; the old one is retired.
    let mut rotate = vec!["rotate", "--id", "digits", "--store", &url];
    rotate.extend(ks.iter().map(String::as_str));
    let rotated = ok(run(Path::new(PROVIDER), &rotate)).trim().to_string();
    assert_ne!(rotated, hash);
    let listing = ok(run(Path::new(PROVIDER), &list));
    assert!(listing.contains("(retired)"), "{listing}");
    let mut verify2 = verify.clone();
    verify2[4] = &rotated;
    ok(run(Path::new(PROVIDER), &verify2));

    // A bundle altered in the store is reported, with a non-zero exit.
    let blob = dir.path().join("blobs").join(&rotated);
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();
    let out = run(Path::new(PROVIDER), &verify2);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TAMPERED"));
}

/// An attested connection to the provider as `who`, after the hello.
async fn connect(
    provider: &str,
    anchor: &PolicyAnchor,
    who: &Identity,
) -> std::io::Result<Framed<TlsStream<TcpStream>>> {
    let max_frame = Limits::default().max_frame;
    testkit::connect(provider, anchor.clone(), who, Role::provider(), max_frame).await
}

async fn ask(
    provider: &str,
    anchor: &PolicyAnchor,
    who: &Identity,
    model_id: &str,
    bundle: &BlobId,
    usage: KeyUsage,
) -> Message {
    let mut framed = connect(provider, anchor, who).await.unwrap();
    framed
        .send(&Message::ModelKeyRequest {
            model_id: model_id.into(),
            bundle_hash: bundle.0,
            usage,
        })
        .await
        .unwrap();
    framed.recv().await.unwrap()
}

fn refused(m: &Message) -> bool {
    matches!(m, Message::Error { code: ErrorCode::Refused, message } if message == "key not released")
}

#[tokio::test]
async fn keys_reach_only_the_allowed_role_measurement_and_use() {
    let dir = TestDir::new("provider", "serve");
    let trusted = [
        ("provider", PROVIDER.to_string()),
        ("runtime", dir.image("runtime.img", b"runtime build 1")),
        ("runtime", dir.image("runtime2.img", b"runtime build 2")),
        ("device", dir.image("device.img", b"device build 1")),
    ];
    let certifier_bin = certifier_bin();
    let certifier = Certifier::start(&certifier_bin, &dir, &trusted);

    // Two models: one for any runtime, one pinned to runtime build 1.
    let digits: BlobId = seal(
        &dir,
        "digits",
        &["--allow-role", "runtime", "--use", "remote-inference"],
    )
    .parse()
    .unwrap();
    let image = |name: &str| dir.path().join(name);
    let runtime1 = certifier
        .platform_measuring(&image("runtime.img"))
        .rim()
        .to_hex();
    let pinned_args = [
        "--allow-role",
        "runtime",
        "--allow-measurement",
        &runtime1,
        "--use",
        "remote-inference",
    ];
    let pinned: BlobId = seal(&dir, "pinned", &pinned_args).parse().unwrap();
    let (_provider, provider_addr) = start_provider_with(
        Path::new(PROVIDER),
        &dir,
        &certifier,
        &["--revocation-refresh-secs", "1"],
    );

    let anchor = certifier.anchor();
    let runtime = certifier
        .admit(&image("runtime.img"), Role::runtime())
        .await;
    let runtime2 = certifier
        .admit(&image("runtime2.img"), Role::runtime())
        .await;
    let device = certifier.admit(&image("device.img"), Role::device()).await;
    let ask = |who, model: &'static str, bundle, usage| {
        ask(&provider_addr, &anchor, who, model, bundle, usage)
    };

    // The allowed runtime gets the key, and it opens the stored bundle.
    let reply = ask(&runtime, "digits", &digits, KeyUsage::RemoteInference).await;
    let Message::ModelKeyRelease { key, .. } = reply else {
        panic!("expected a key, got {}", reply.kind())
    };
    let key = ModelKey::from_slice(key.expose()).unwrap();
    let store = LocalStore::open(&dir.path().join("blobs")).unwrap();
    let sealed = store.get_bytes(&digits, 1 << 20).await.unwrap();
    let (plain, _) = open_to_vec(sealed.as_slice(), &key, 1 << 20).unwrap();
    assert_eq!(plain, std::fs::read(model()).unwrap());

    // Wrong role, wrong use, wrong measurement, unknown model, stale bundle:
    // all refused with the same words.
    assert!(refused(
        &ask(&device, "digits", &digits, KeyUsage::RemoteInference).await
    ));
    assert!(refused(
        &ask(&runtime, "digits", &digits, KeyUsage::OnDevice).await
    ));
    assert!(refused(
        &ask(&runtime2, "pinned", &pinned, KeyUsage::RemoteInference).await
    ));
    assert!(matches!(
        ask(&runtime, "pinned", &pinned, KeyUsage::RemoteInference).await,
        Message::ModelKeyRelease { .. }
    ));
    assert!(refused(
        &ask(
            &runtime,
            "no-such-model",
            &digits,
            KeyUsage::RemoteInference
        )
        .await
    ));
    assert!(refused(
        &ask(&runtime, "digits", &pinned, KeyUsage::RemoteInference).await
    ));

    // A session opened before the revocation and held open (issue 17 item
    // 3: such a session kept receiving keys 10 s after revocation).
    let key_request = Message::ModelKeyRequest {
        model_id: "digits".into(),
        bundle_hash: digits.0,
        usage: KeyUsage::RemoteInference,
    };
    let mut held = connect(&provider_addr, &anchor, &runtime).await.unwrap();
    held.send(&key_request).await.unwrap();
    assert!(matches!(
        held.recv().await.unwrap(),
        Message::ModelKeyRelease { .. }
    ));

    // Revoked at the certifier: the provider stops releasing within its
    // refresh interval (1 s here); the handshake itself is refused.
    ok(run(
        &certifier_bin,
        &[
            "policy",
            "revoke",
            "--dir",
            &dir.p("svc"),
            "--measurement",
            &runtime1,
        ],
    ));
    let mut released = true;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        released = key_released(&provider_addr, &anchor, &runtime, "digits", &digits).await;
        if !released {
            break;
        }
    }
    assert!(
        !released,
        "the revoked runtime still received keys after 10 s"
    );
    // The session held open across the revocation is refused and ended.
    held.send(&key_request).await.unwrap();
    match held.recv().await.unwrap() {
        Message::Error {
            code: ErrorCode::Refused,
            message,
        } => assert!(message.contains("revoked"), "{message}"),
        other => panic!("a revoked session got {}", other.kind()),
    }
    assert!(held.recv().await.is_err(), "the session ended");
    // The other runtime build is unaffected.
    assert!(key_released(&provider_addr, &anchor, &runtime2, "digits", &digits).await);
}

/// Whether a request completes with a key (false on any refusal, including
/// a refused handshake; a provider that does not accept TCP connections at
/// all is a failure, not a refusal).
async fn key_released(
    provider: &str,
    anchor: &PolicyAnchor,
    who: &Identity,
    model_id: &str,
    bundle: &BlobId,
) -> bool {
    let mut framed = match connect(provider, anchor, who).await {
        Ok(framed) => framed,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => panic!("{provider}: {e}"),
        Err(_) => return false,
    };
    let request = Message::ModelKeyRequest {
        model_id: model_id.into(),
        bundle_hash: bundle.0,
        usage: KeyUsage::RemoteInference,
    };
    framed.send(&request).await.is_ok()
        && matches!(framed.recv().await, Ok(Message::ModelKeyRelease { .. }))
}

/// `serve --fresh-evidence`: a peer must prove, on this session, that it
/// still runs its admitted code before it may ask for a key.
#[tokio::test]
async fn fresh_evidence_mode_demands_session_bound_evidence() {
    use attestation::atls::VerifiedPeer;
    use attestation::certifier::client::unix_now;
    use protocol::fresh_evidence_exchange;

    let dir = TestDir::new("provider", "fresh");
    let trusted = [
        ("provider", PROVIDER.to_string()),
        ("runtime", dir.image("runtime.img", b"runtime build 1")),
    ];
    let certifier = Certifier::start(&certifier_bin(), &dir, &trusted);
    let digits: BlobId = seal(
        &dir,
        "digits",
        &["--allow-role", "runtime", "--use", "remote-inference"],
    )
    .parse()
    .unwrap();
    let (_provider, provider_addr) =
        start_provider_with(Path::new(PROVIDER), &dir, &certifier, &["--fresh-evidence"]);

    // Admitted by hand: the test needs the platform and the auth key's SPKI.
    let anchor = certifier.anchor();
    let platform = certifier.platform_measuring(&dir.path().join("runtime.img"));
    let (key, pkcs8) = SigningKey::generate_p256().unwrap();
    let cert = Client::new(certifier.addr.clone(), Duration::from_secs(10))
        .admit(&platform, &key.public_key(), &Role::runtime())
        .await
        .unwrap();
    let identity = Identity::new(cert, pkcs8);
    let spki = key.public_key().ec_spki_der().unwrap();
    let session = || async {
        let framed = connect(&provider_addr, &anchor, &identity).await.unwrap();
        let peer = VerifiedPeer::from_certificates(
            framed.get_ref().get_ref().1.peer_certificates(),
            anchor.key(),
            unix_now(),
        )
        .unwrap();
        (framed, peer)
    };
    let request = Message::ModelKeyRequest {
        model_id: "digits".into(),
        bundle_hash: digits.0,
        usage: KeyUsage::RemoteInference,
    };
    let policy = certifier.policy().await;

    // With fresh evidence: the provider proves itself too, then releases the key.
    let (mut framed, provider_peer) = session().await;
    let verified = fresh_evidence_exchange(&mut framed, &spki, &platform, &provider_peer, &policy)
        .await
        .unwrap();
    assert_eq!(
        verified.realm().rim.as_bytes(),
        provider_peer.measurement.as_slice()
    );
    framed.send(&request).await.unwrap();
    assert!(matches!(
        framed.recv().await.unwrap(),
        Message::ModelKeyRelease { .. }
    ));

    // Skipping it: no key.
    let (mut framed, _) = session().await;
    framed.send(&request).await.unwrap();
    let answer = framed.recv().await;
    assert!(
        !matches!(answer, Ok(Message::ModelKeyRelease { .. })),
        "{answer:?}"
    );

    // Answering with evidence from another build (a different RIM): no key.
    let rebuilt =
        certifier.platform_measuring(Path::new(&dir.image("rebuilt.img", b"runtime build 2")));
    let (mut framed, provider_peer) = session().await;
    let _ = fresh_evidence_exchange(&mut framed, &spki, &rebuilt, &provider_peer, &policy).await;
    let _ = framed.send(&request).await;
    let answer = framed.recv().await;
    assert!(
        !matches!(answer, Ok(Message::ModelKeyRelease { .. })),
        "{answer:?}"
    );
}
