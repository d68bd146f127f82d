//! The model provider as deployed: real `model-provider` and
//! `certifier-service` processes on loopback, a real blob store and
//! keystore, and peers admitted on (INSECURE emulated) CCA evidence asking
//! for keys over attested TLS. Only the allowed role, measurement and use
//! ever receives a key; the key it receives opens the bundle.
//!
//! `certifier-service` is taken from the same target directory; `cargo test
//! --workspace` builds it (run `cargo build -p certifier-service` first when
//! testing this crate alone).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use attestation::atls::{
    Identity, PeerRequirement, PolicyAnchor, RevocationList, client_config, server_name,
};
use attestation::cca::PlatformKey;
use attestation::certifier::client::Client;
use attestation::certifier::keys::SigningKey;
use attestation::certifier::policy::Role;
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};
use blob_store::{BlobId, BlobStore, LocalStore};
use protocol::sealed::{ModelKey, open_to_vec};
use protocol::{ErrorCode, Framed, KeyUsage, Message};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const PROVIDER: &str = env!("CARGO_BIN_EXE_model-provider");

fn certifier_bin() -> PathBuf {
    let p = Path::new(PROVIDER).with_file_name("certifier-service");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p certifier-service` (cargo test --workspace does)",
        p.display()
    );
    p
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a server process and read "... listening on ADDR" from its stdout.
fn spawn_server(mut cmd: Command) -> (Proc, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("listening on"),
        "unexpected first line {line:?}"
    );
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    (Proc(child), addr)
}

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("provider-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Env { dir }
    }
    fn p(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
    fn store_url(&self) -> String {
        format!("file://{}", self.p("blobs"))
    }
    fn ks(&self) -> [String; 4] {
        [
            "--keystore".into(),
            self.p("keys.json"),
            "--keystore-key".into(),
            self.p("kek.bin"),
        ]
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/digits_logreg.onnx")
        .display()
        .to_string()
}

fn seal(env: &Env, id: &str, extra: &[&str]) -> String {
    let mut args: Vec<String> = [
        "seal",
        "--model",
        &model(),
        "--id",
        id,
        "--store",
        &env.store_url(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(env.ks());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(run(Path::new(PROVIDER), &args)).trim().to_string()
}

#[test]
fn seal_verify_list_rotate_and_detect_tampering() {
    let env = Env::new("cli");
    let hash = seal(
        &env,
        "digits",
        &["--allow-role", "runtime", "--use", "remote-inference"],
    );
    assert_eq!(hash.len(), 64);
    let ks = env.ks();
    let mut verify: Vec<&str> = vec!["verify", "--store"];
    let url = env.store_url();
    verify.push(&url);
    verify.extend(["--bundle", &hash]);
    verify.extend(ks.iter().map(String::as_str));
    let out = ok(run(Path::new(PROVIDER), &verify));
    assert!(out.starts_with("OK digits version 1: 3719 bytes"), "{out}");

    // The keystore holds no key in clear, and the wrong keystore key fails.
    let text = std::fs::read_to_string(env.p("keys.json")).unwrap();
    assert!(text.contains("wrapped_key") && !text.contains("\"key\""));
    std::fs::write(env.p("other.bin"), [9u8; 32]).unwrap();
    let mut wrong = verify.clone();
    let last = wrong.len() - 1;
    let other = env.p("other.bin");
    wrong[last] = &other;
    let out = run(Path::new(PROVIDER), &wrong);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong"));

    // A file that is not runnable ONNX is refused before anything is sealed.
    std::fs::write(env.p("not-a-model.onnx"), b"this is not a protobuf").unwrap();
    let url2 = env.store_url();
    let mut bad: Vec<&str> = vec!["seal", "--model"];
    let bad_path = env.p("not-a-model.onnx");
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
        std::fs::read_dir(env.dir.join("blobs")).unwrap().count(),
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
    let blob = env.dir.join("blobs").join(&rotated);
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();
    let out = run(Path::new(PROVIDER), &verify2);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TAMPERED"));
}

async fn admitted_identity(
    certifier: &str,
    platform_key: &Path,
    image: &Path,
    role: Role,
) -> Identity {
    let platform = InsecureEmulatedPlatform::from_key_file(platform_key)
        .unwrap()
        .measuring(image)
        .unwrap();
    let (key, pkcs8) = SigningKey::generate_p256().unwrap();
    let cert = Client::new(certifier, Duration::from_secs(10))
        .admit(&platform, &key.public_key(), &role)
        .await
        .unwrap();
    Identity::new(cert, pkcs8)
}

async fn ask(
    provider: &str,
    anchor: &PolicyAnchor,
    who: &Identity,
    model_id: &str,
    bundle: &BlobId,
    usage: KeyUsage,
) -> Message {
    let req = PeerRequirement::roles([Role::provider()])
        .unwrap()
        .allow_insecure_emulated_platform();
    let cfg = client_config(who, anchor.clone(), req, RevocationList::new()).unwrap();
    let tls = TlsConnector::from(cfg)
        .connect(server_name(), TcpStream::connect(provider).await.unwrap())
        .await
        .unwrap();
    let mut framed = Framed::new(tls);
    framed
        .client_hello("runtime", "provider-test")
        .await
        .unwrap();
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

/// A certifier-service process with an INSECURE emulated platform key and
/// the given (role, binary) measurements trusted.
fn start_certifier(env: &Env, trusted: &[(&str, String)]) -> (Proc, String, PlatformKey) {
    let certifier = certifier_bin();
    let (pem, cpak) = generate_platform_key_pem(attestation::cca::Curve::P384).unwrap();
    std::fs::write(env.p("platform.key.pem"), pem).unwrap();
    let svc = env.p("svc");
    ok(run(
        &certifier,
        &[
            "init",
            "--dir",
            &svc,
            "--insecure-emulated-platform",
            &env.p("platform.key.pem"),
        ],
    ));
    for (role, bin) in trusted {
        ok(run(
            &certifier,
            &[
                "policy", "trust", "--dir", &svc, "--role", role, "--binary", bin,
            ],
        ));
    }
    let mut c = Command::new(&certifier);
    c.args(["serve", "--dir", &svc, "--listen", "127.0.0.1:0"]);
    let (proc, addr) = spawn_server(c);
    (proc, addr, cpak)
}

/// A `model-provider serve` process (emulated platform, emulated peers allowed).
fn start_provider(env: &Env, certifier_addr: &str, extra: &[&str]) -> (Proc, String) {
    let mut p = Command::new(PROVIDER);
    p.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--certifier",
        certifier_addr,
    ]);
    p.args([
        "--policy-cert",
        &env.p("svc/policy_cert.der"),
        "--platform",
        "insecure-emulated",
    ]);
    p.args([
        "--platform-key",
        &env.p("platform.key.pem"),
        "--allow-insecure-peers",
    ]);
    p.args(extra).args(env.ks());
    spawn_server(p)
}

fn anchor(env: &Env) -> PolicyAnchor {
    PolicyAnchor::from_certificate_der(&std::fs::read(env.dir.join("svc/policy_cert.der")).unwrap())
        .unwrap()
}

/// An emulated platform measuring the file `image` in the test directory.
fn platform_for(env: &Env, image: &str) -> InsecureEmulatedPlatform {
    InsecureEmulatedPlatform::from_key_file(&env.dir.join("platform.key.pem"))
        .unwrap()
        .measuring(&env.dir.join(image))
        .unwrap()
}

/// An image file whose SHA-512 is a party's measurement; returns its path.
fn image(env: &Env, name: &str, content: &[u8]) -> String {
    std::fs::write(env.dir.join(name), content).unwrap();
    env.p(name)
}

#[tokio::test]
async fn keys_reach_only_the_allowed_role_measurement_and_use() {
    let env = Env::new("serve");
    let trusted = [
        ("provider", PROVIDER.to_string()),
        ("runtime", image(&env, "runtime.img", b"runtime build 1")),
        ("runtime", image(&env, "runtime2.img", b"runtime build 2")),
        ("device", image(&env, "device.img", b"device build 1")),
    ];
    let (_certifier, certifier_addr, _) = start_certifier(&env, &trusted);

    // Two models: one for any runtime, one pinned to runtime build 1.
    let digits: BlobId = seal(
        &env,
        "digits",
        &["--allow-role", "runtime", "--use", "remote-inference"],
    )
    .parse()
    .unwrap();
    let runtime1 = platform_for(&env, "runtime.img").rim().to_hex();
    let pinned_args = [
        "--allow-role",
        "runtime",
        "--allow-measurement",
        &runtime1,
        "--use",
        "remote-inference",
    ];
    let pinned: BlobId = seal(&env, "pinned", &pinned_args).parse().unwrap();
    let (_provider, provider_addr) =
        start_provider(&env, &certifier_addr, &["--revocation-refresh-secs", "1"]);

    let anchor = anchor(&env);
    let pk = env.dir.join("platform.key.pem");
    let runtime = admitted_identity(
        &certifier_addr,
        &pk,
        &env.dir.join("runtime.img"),
        Role::runtime(),
    )
    .await;
    let runtime2 = admitted_identity(
        &certifier_addr,
        &pk,
        &env.dir.join("runtime2.img"),
        Role::runtime(),
    )
    .await;
    let device = admitted_identity(
        &certifier_addr,
        &pk,
        &env.dir.join("device.img"),
        Role::device(),
    )
    .await;
    let ask = |who, model: &'static str, bundle, usage| {
        ask(&provider_addr, &anchor, who, model, bundle, usage)
    };

    // The allowed runtime gets the key, and it opens the stored bundle.
    let reply = ask(&runtime, "digits", &digits, KeyUsage::RemoteInference).await;
    let Message::ModelKeyRelease { key, .. } = reply else {
        panic!("expected a key, got {}", reply.kind())
    };
    let key = ModelKey::from_slice(key.expose()).unwrap();
    let store = LocalStore::open(&env.dir.join("blobs")).unwrap();
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

    // Revoked at the certifier: the provider stops releasing within its
    // refresh interval (1 s here); the handshake itself is refused.
    ok(run(
        &certifier_bin(),
        &[
            "policy",
            "revoke",
            "--dir",
            &env.p("svc"),
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
    // The other runtime build is unaffected.
    assert!(key_released(&provider_addr, &anchor, &runtime2, "digits", &digits).await);
}

/// Whether a request completes with a key (false on any refusal, including
/// a refused handshake).
async fn key_released(
    provider: &str,
    anchor: &PolicyAnchor,
    who: &Identity,
    model_id: &str,
    bundle: &BlobId,
) -> bool {
    let req = PeerRequirement::roles([Role::provider()])
        .unwrap()
        .allow_insecure_emulated_platform();
    let cfg = client_config(who, anchor.clone(), req, RevocationList::new()).unwrap();
    let Ok(tls) = TlsConnector::from(cfg)
        .connect(server_name(), TcpStream::connect(provider).await.unwrap())
        .await
    else {
        return false;
    };
    let mut framed = Framed::new(tls);
    if framed
        .client_hello("runtime", "provider-test")
        .await
        .is_err()
    {
        return false;
    }
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

    let env = Env::new("fresh");
    let trusted = [
        ("provider", PROVIDER.to_string()),
        ("runtime", image(&env, "runtime.img", b"runtime build 1")),
    ];
    let (_certifier, certifier_addr, cpak) = start_certifier(&env, &trusted);
    let digits: BlobId = seal(
        &env,
        "digits",
        &["--allow-role", "runtime", "--use", "remote-inference"],
    )
    .parse()
    .unwrap();
    let (_provider, provider_addr) = start_provider(&env, &certifier_addr, &["--fresh-evidence"]);

    let anchor = anchor(&env);
    let platform = platform_for(&env, "runtime.img");
    let (key, pkcs8) = SigningKey::generate_p256().unwrap();
    let cert = Client::new(certifier_addr.clone(), Duration::from_secs(10))
        .admit(&platform, &key.public_key(), &Role::runtime())
        .await
        .unwrap();
    let identity = Identity::new(cert, pkcs8);
    let spki = key.public_key().ec_spki_der().unwrap();
    let connect = || async {
        let req = PeerRequirement::roles([Role::provider()])
            .unwrap()
            .allow_insecure_emulated_platform();
        let cfg = client_config(&identity, anchor.clone(), req, RevocationList::new()).unwrap();
        let tls = TlsConnector::from(cfg)
            .connect(
                server_name(),
                TcpStream::connect(&provider_addr).await.unwrap(),
            )
            .await
            .unwrap();
        let peer = VerifiedPeer::from_certificates(
            tls.get_ref().1.peer_certificates(),
            anchor.key(),
            unix_now(),
        )
        .unwrap();
        let mut framed = Framed::new(tls);
        framed
            .client_hello("runtime", "provider-test")
            .await
            .unwrap();
        (framed, peer)
    };
    let request = Message::ModelKeyRequest {
        model_id: "digits".into(),
        bundle_hash: digits.0,
        usage: KeyUsage::RemoteInference,
    };
    let platforms = std::slice::from_ref(&cpak);

    // With fresh evidence: the provider proves itself too, then releases the key.
    let (mut framed, provider_peer) = connect().await;
    let verified =
        fresh_evidence_exchange(&mut framed, &spki, &platform, &provider_peer, platforms)
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
    let (mut framed, _) = connect().await;
    framed.send(&request).await.unwrap();
    let answer = framed.recv().await;
    assert!(
        !matches!(answer, Ok(Message::ModelKeyRelease { .. })),
        "{answer:?}"
    );

    // Answering with evidence from another build (a different RIM): no key.
    image(&env, "rebuilt.img", b"runtime build 2");
    let rebuilt = platform_for(&env, "rebuilt.img");
    let (mut framed, provider_peer) = connect().await;
    let _ = fresh_evidence_exchange(&mut framed, &spki, &rebuilt, &provider_peer, platforms).await;
    let _ = framed.send(&request).await;
    let answer = framed.recv().await;
    assert!(
        !matches!(answer, Ok(Message::ModelKeyRelease { .. })),
        "{answer:?}"
    );
}
