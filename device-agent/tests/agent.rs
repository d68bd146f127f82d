//! The device agent as a user runs it: the real `device-agent` binary against
//! real `certifier-service`, `model-provider` and `realm-runtime` processes on
//! loopback (INSECURE emulated platform), plus a fake runtime in this test
//! that counts every byte it receives.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use attestation::atls::{Identity, PeerRequirement, RevocationList, server_config};
use attestation::certifier::admission::issue_admission_certificate;
use attestation::certifier::client::unix_now;
use attestation::certifier::decide::Admitted;
use attestation::certifier::keys::SigningKey;
use attestation::certifier::policy::Role;
use attestation::platform::measure_file;
use testkit::{Certifier, Proc, TestDir, sibling_bin, spawn_server};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const AGENT: &str = env!("CARGO_BIN_EXE_device-agent");

struct World {
    dir: TestDir,
    certifier: Certifier,
    _provider: Proc,
    provider_addr: String,
    _runtime: Proc,
    runtime_addr: String,
}

fn model(name: &str) -> String {
    testkit::model_file(name).display().to_string()
}

impl World {
    fn realm(&self, state: &str) -> Vec<String> {
        vec![
            "--state".into(),
            self.dir.p(state),
            "--platform".into(),
            "insecure-emulated".into(),
            "--platform-key".into(),
            self.certifier.platform_key.display().to_string(),
        ]
    }

    fn admission(&self) -> Vec<String> {
        vec![
            "--certifier".into(),
            self.certifier.addr.clone(),
            "--policy-cert".into(),
            self.certifier.policy_cert.display().to_string(),
            "--allow-insecure-peers".into(),
        ]
    }

    /// Run `bin` (the agent or a rebuilt copy) with `args` and the realm args.
    fn agent_with(&self, bin: &Path, args: &[&str], state: &str) -> Output {
        let mut c = Command::new(bin);
        c.args(args).args(self.realm(state));
        c.output().unwrap()
    }

    fn agent(&self, args: &[&str]) -> Output {
        self.agent_with(Path::new(AGENT), args, "agent")
    }

    fn remote(&self, extra: &[&str]) -> Output {
        let mut args = vec!["infer", "--runtime", &self.runtime_addr];
        let adm = self.admission();
        args.extend(adm.iter().map(String::as_str));
        args.extend(extra);
        self.agent(&args)
    }
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "stdout {}\nstderr {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(o: Output, text: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected failure: {err}");
    assert!(err.contains(text), "stderr lacks {text:?}: {err}");
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap()
}

fn world(name: &str) -> World {
    let dir = TestDir::new("agent", name);
    let provider_bin = sibling_bin(AGENT, "model-provider");
    let runtime_bin = sibling_bin(AGENT, "realm-runtime");
    let trusted = [
        ("provider", provider_bin.display().to_string()),
        ("runtime", runtime_bin.display().to_string()),
        ("device", AGENT.to_string()),
        // Another trusted runtime build, for the fake runtime.
        (
            "runtime",
            dir.image("other-runtime.img", b"runtime build 2"),
        ),
    ];
    let certifier = Certifier::start(&sibling_bin(AGENT, "certifier-service"), &dir, &trusted);
    let remote = ["--allow-role", "runtime", "--use", "remote-inference"];
    let digits = testkit::seal(
        &provider_bin,
        &dir,
        "digits",
        &model("digits_logreg.onnx"),
        &remote,
    );
    let both = [
        "--allow-role",
        "runtime",
        "--allow-role",
        "device",
        "--use",
        "remote-inference",
        "--use",
        "on-device",
    ];
    let cnn = testkit::seal(&provider_bin, &dir, "cnn", &model("digits_cnn.onnx"), &both);
    testkit::seal(
        &provider_bin,
        &dir,
        "runtime-only",
        &model("digits_mlp.onnx"),
        &remote,
    );
    let (provider, provider_addr) = testkit::start_provider(&provider_bin, &dir, &certifier);
    let mut r = testkit::runtime_command(&runtime_bin, &dir, &certifier, &provider_addr);
    r.args([
        "--model",
        &format!("digits={digits}"),
        "--model",
        &format!("cnn={cnn}"),
    ]);
    let (runtime, runtime_addr) = spawn_server(r);
    World {
        dir,
        certifier,
        _provider: provider,
        provider_addr,
        _runtime: runtime,
        runtime_addr,
    }
}

#[test]
fn remote_and_on_device_inference_give_the_expected_accuracy() {
    let w = world("accuracy");
    let csv = model("digits_test.csv");
    let flat = ok(w.agent(&["import", "--csv", &csv, "--labels", "last"]));
    let flat = flat.trim();
    let image = ok(w.agent(&[
        "import",
        "--csv",
        &csv,
        "--labels",
        "last",
        "--sample-shape",
        "1,8,8",
    ]));
    let image = image.trim();
    assert_eq!(flat.len(), 32);
    let listing = ok(w.agent(&["list"]));
    assert!(
        listing.contains(flat) && listing.contains(image),
        "{listing}"
    );

    // Remote, by handle: 324/360 (logreg) and 340/360 (cnn), as onnxruntime.
    let r = json(&ok(
        w.remote(&["--model", "digits", "--handle", flat, "--json"])
    ));
    assert_eq!(
        (r["correct"].as_u64(), r["where"].as_str()),
        (Some(324), Some("remote"))
    );
    let r = json(&ok(
        w.remote(&["--model", "cnn", "--handle", image, "--json"])
    ));
    assert_eq!(r["correct"].as_u64(), Some(340));
    // Batch mode straight from a CSV file, without importing.
    let text = ok(w.remote(&["--model", "digits", "--csv", &csv]));
    assert!(
        text.contains("360 samples, 324 correct, accuracy 0.9000"),
        "{text}"
    );

    // On-device: fetch for use on-device, re-sealed here, run in-process.
    let adm = w.admission();
    let mut fetch = vec![
        "fetch-model",
        "--provider",
        &w.provider_addr,
        "--model",
        "cnn",
    ];
    let url = testkit::store_url(&w.dir);
    fetch.extend(["--store", &url]);
    fetch.extend(adm.iter().map(String::as_str));
    ok(w.agent(&fetch));
    let r = json(&ok(w.agent(&[
        "infer", "--local", "--model", "cnn", "--handle", image, "--json",
    ])));
    assert_eq!(
        (r["correct"].as_u64(), r["where"].as_str()),
        (Some(340), Some("on-device"))
    );

    // A model released only to runtimes is not released for on-device use.
    let mut refused = fetch.clone();
    refused[4] = "runtime-only";
    fails(
        w.agent(&refused),
        "does not release \"runtime-only\" for on-device use",
    );

    // A rebuilt agent (another measurement) cannot open the re-sealed model,
    // nor the user's records: the sealing key follows the measurement.
    let rebuilt = w.dir.path().join("device-agent-rebuilt");
    let mut bytes = std::fs::read(AGENT).unwrap();
    bytes.extend_from_slice(b"\nrebuilt");
    std::fs::write(&rebuilt, bytes).unwrap();
    std::fs::set_permissions(
        &rebuilt,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = w.agent_with(
        &rebuilt,
        &[
            "infer",
            "--local",
            "--model",
            "cnn",
            "--csv",
            &csv,
            "--sample-shape",
            "1,8,8",
        ],
        "agent",
    );
    fails(out, "does not open with this realm's sealing key");
    let out = w.agent_with(
        &rebuilt,
        &["infer", "--local", "--model", "cnn", "--handle", image],
        "agent",
    );
    fails(out, "does not open with this realm's sealing key");

    // Data that does not fit the model: refused, with the dimension named.
    fails(
        w.agent(&["infer", "--local", "--model", "cnn", "--handle", flat]),
        "rank-4",
    );
    fails(
        w.remote(&["--model", "cnn", "--handle", flat]),
        "the runtime refused sample 0 (BadRequest)",
    );

    // A corrupted record fails on its own; the others still open.
    let victim = ok(w.agent(&["import", "--csv", &csv, "--labels", "last"]));
    let victim = victim.trim();
    let path = w
        .dir
        .path()
        .join("agent/data")
        .join(format!("{victim}.sealed"));
    let mut b = std::fs::read(&path).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&path, b).unwrap();
    let out = w.agent(&["infer", "--local", "--model", "cnn", "--handle", victim]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&ok(w.agent(&[
        "infer", "--local", "--model", "cnn", "--handle", image, "--json",
    ])));
    assert_eq!(r["correct"].as_u64(), Some(340));

    // A read-only store (files 0444, directories 0555) is listed and read.
    // Root ignores permission bits, so the test also proves the read paths
    // never write: every entry's mode, size, mtime and content (and so
    // every directory's file list) is the same afterwards.
    let state = w.dir.path().join("agent");
    set_tree_mode(&state, 0o444, 0o555);
    let before = tree(&state);
    let listing = ok(w.agent(&["list"]));
    assert!(
        listing.contains(image) && listing.contains(flat),
        "{listing}"
    );
    let r = json(&ok(w.agent(&[
        "infer", "--local", "--model", "cnn", "--handle", image, "--json",
    ])));
    assert_eq!(r["correct"].as_u64(), Some(340));
    let r = json(&ok(
        w.remote(&["--model", "digits", "--handle", flat, "--json"])
    ));
    assert_eq!(r["correct"].as_u64(), Some(324));
    assert_eq!(tree(&state), before, "reading changed the store");
    set_tree_mode(&state, 0o600, 0o700);

    // Deleting a handle erases it.
    ok(w.agent(&["delete", "--handle", flat]));
    assert!(!ok(w.agent(&["list"])).contains(flat));
    assert_eq!(
        w.agent(&["infer", "--local", "--model", "cnn", "--handle", flat])
            .status
            .code(),
        Some(1)
    );
    // Handles are names, never paths.
    fails(
        w.agent(&[
            "infer",
            "--local",
            "--model",
            "cnn",
            "--handle",
            "../../etc/passwd",
        ]),
        "handle",
    );
}

/// Every entry under `dir`: path, mode, size, mtime, and a file's bytes.
fn tree(dir: &Path) -> Vec<(std::path::PathBuf, u32, u64, std::time::SystemTime, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::metadata(&d).unwrap();
        out.push((
            d.clone(),
            meta.permissions().mode(),
            0,
            meta.modified().unwrap(),
            Vec::new(),
        ));
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push((
                    p,
                    meta.permissions().mode(),
                    meta.len(),
                    meta.modified().unwrap(),
                    bytes,
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// chmod every file under `dir` to `file` and every directory to `dir_mode`.
fn set_tree_mode(dir: &Path, file: u32, dir_mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            set_tree_mode(&p, file, dir_mode);
        } else {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(file)).unwrap();
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
}

/// A fake runtime admitted as `runtime` with another trusted build.
async fn fake_runtime(w: &World) -> (String, tokio::sync::oneshot::Receiver<usize>) {
    let image = w.dir.path().join("other-runtime.img");
    serve_fake(w, w.certifier.admit(&image, Role::runtime()).await).await
}

/// Serve one connection as `identity`; report how many application bytes
/// arrived on it.
async fn serve_fake(
    w: &World,
    identity: Identity,
) -> (String, tokio::sync::oneshot::Receiver<usize>) {
    let req = PeerRequirement::roles([Role::device()])
        .unwrap()
        .allow_insecure_emulated_platform();
    let cfg = server_config(&identity, w.certifier.anchor(), req, RevocationList::new()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut received = 0;
        if let Ok(mut tls) = TlsAcceptor::from(cfg).accept(tcp).await {
            let mut buf = [0u8; 4096];
            // Read what arrives, then hang up (a fake has nothing to answer).
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await
            {
                received = n;
            }
        }
        let _ = tx.send(received);
    });
    (addr, rx)
}

/// An admission certificate for a new key, signed by the real policy key,
/// valid from two hours ago for one hour.
fn expired_runtime_identity(w: &World) -> Identity {
    let pem = std::fs::read_to_string(w.dir.path().join("svc/policy_key.pem")).unwrap();
    let policy_key = pem::parse(pem).unwrap();
    let (auth, pkcs8) = SigningKey::generate_p256().unwrap();
    let admitted = Admitted {
        role: Role::runtime(),
        measurement: measure_file(&sibling_bin(AGENT, "realm-runtime"))
            .unwrap()
            .as_bytes()
            .to_vec(),
        auth_key: auth.public_key(),
        platform_instance: [1; 33],
        insecure: Some(attestation::certifier::insecure::Insecurity::EmulatedPlatform),
    };
    let cert = issue_admission_certificate(
        policy_key.contents(),
        &admitted,
        unix_now() - 7200,
        3600,
        None,
    )
    .unwrap();
    Identity::new(cert, pkcs8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_byte_of_user_data_reaches_an_unexpected_runtime() {
    let w = world("refusals");
    let csv = model("digits_test.csv");
    let real_runtime = measure_file(&sibling_bin(AGENT, "realm-runtime"))
        .unwrap()
        .to_hex();
    let run = |addr: String, extra: Vec<String>| {
        let adm = w.admission();
        let realm = w.realm("agent");
        let csv = csv.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(AGENT)
                .args([
                    "infer",
                    "--runtime",
                    &addr,
                    "--model",
                    "digits",
                    "--csv",
                    &csv,
                ])
                .args(adm)
                .args(realm)
                .args(extra)
                .output()
                .unwrap()
        })
    };

    // A trusted runtime build, but not the one pinned: refused in the
    // handshake, and the fake saw no application byte.
    let (addr, seen) = fake_runtime(&w).await;
    let out = run(
        addr,
        vec!["--runtime-measurement".into(), real_runtime.clone()],
    )
    .await
    .unwrap();
    fails(out, "is not an acceptable runtime (nothing was sent)");
    assert_eq!(
        seen.await.unwrap(),
        0,
        "no application data reached the peer"
    );

    // The same fake without pinning is a trusted runtime, and the agent
    // talks to it: the counter does count (positive control).
    let (addr, seen) = fake_runtime(&w).await;
    let out = run(addr, vec![]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(seen.await.unwrap() > 0, "the fake counts what it receives");

    // A runtime whose admission certificate has expired: refused, nothing sent.
    let (addr, seen) = serve_fake(&w, expired_runtime_identity(&w)).await;
    let out = run(addr, vec![]).await.unwrap();
    fails(out, "not valid at this time");
    assert_eq!(seen.await.unwrap(), 0);

    // A real provider is not a runtime: refused by role, nothing sent.
    let out = run(w.provider_addr.clone(), vec![]).await.unwrap();
    fails(out, "is not an acceptable runtime");

    // And the real runtime, pinned, serves.
    let out = run(
        w.runtime_addr.clone(),
        vec!["--runtime-measurement".into(), real_runtime],
    )
    .await
    .unwrap();
    assert!(ok(out).contains("324 correct"));
}

/// Issue 27 defect 6: with the certifier down, a device with a valid kept
/// admission certificate keeps working on the signed policy it kept, within
/// the age that policy allows, and says so; a device that never kept one is
/// refused with what is missing.
#[test]
fn a_device_keeps_working_on_its_kept_policy_while_the_certifier_is_down() {
    let mut w = world("certifier-down");
    let csv = model("digits_test.csv");
    let flat = ok(w.agent(&["import", "--csv", &csv, "--labels", "last"]));
    let flat = flat.trim();
    // Online: admitted, the certificate and the signed policy are kept.
    let r = json(&ok(
        w.remote(&["--model", "digits", "--handle", flat, "--json"])
    ));
    assert_eq!(r["correct"].as_u64(), Some(324));

    w.certifier.proc.kill();
    let out = w.remote(&["--model", "digits", "--handle", flat, "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let r = json(&ok(out));
    assert_eq!(r["correct"].as_u64(), Some(324), "{stderr}");
    assert!(
        stderr.contains("using the kept signed policy version"),
        "{stderr}"
    );

    // Another device state that never kept a policy: refused, and told why.
    let mut args = vec!["infer", "--runtime", &w.runtime_addr];
    let adm = w.admission();
    args.extend(adm.iter().map(String::as_str));
    args.extend(["--model", "digits", "--csv", &csv]);
    let fresh = w.agent_with(Path::new(AGENT), &args, "fresh-state");
    assert!(!fresh.status.success());
    let err = String::from_utf8_lossy(&fresh.stderr);
    assert!(err.contains("certifier"), "{err}");
}
