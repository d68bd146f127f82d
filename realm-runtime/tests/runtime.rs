//! The runtime as deployed: real `certifier-service`, `model-provider` and
//! `realm-runtime` processes on loopback, a real blob store, and devices
//! admitted on (INSECURE emulated) CCA evidence asking for inference over
//! attested TLS.
//!
//! The other binaries come from the same target directory; `cargo test
//! --workspace` builds them.

use std::collections::HashMap;
use std::process::Command;

use attestation::atls::Identity;
use attestation::certifier::policy::Role;
use protocol::{ErrorCode, Framed, InferenceOutput, Message, Tensor, TensorData, encode_frame};
use testkit::{Certifier, Proc, TestDir, sibling_bin, spawn_server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const RUNTIME: &str = env!("CARGO_BIN_EXE_realm-runtime");

fn testdata(name: &str) -> String {
    testkit::model_file(name).display().to_string()
}

/// The digits test set: 64 features (already /16) and the label.
fn digits() -> Vec<(Vec<f32>, u32)> {
    std::fs::read_to_string(testdata("digits_test.csv"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Vec<f32> = l.split(',').map(|x| x.parse().unwrap()).collect();
            (v[..64].to_vec(), v[64] as u32)
        })
        .collect()
}

fn f32_tensor(shape: &[u64], v: Vec<f32>) -> Tensor {
    Tensor {
        shape: shape.to_vec(),
        data: TensorData::F32(v),
    }
}

/// Everything a test needs running.
struct World {
    dir: TestDir,
    certifier: Certifier,
    provider_bin: std::path::PathBuf,
    _provider: Option<Proc>,
    provider_addr: String,
    runtime: Option<Proc>,
    addr: String,
    metrics: String,
    runtime_args: Vec<String>,
    bundles: HashMap<&'static str, String>,
}

impl World {
    fn seal(&self, id: &str, model: &str, extra: &[&str]) -> String {
        testkit::seal(&self.provider_bin, &self.dir, id, &testdata(model), extra)
    }

    fn start_runtime(&mut self) {
        let mut c = Command::new(RUNTIME);
        c.args(&self.runtime_args);
        let (mut proc, addr) = spawn_server(c);
        let line = proc.read_line();
        self.metrics = line
            .trim()
            .strip_prefix("realm-runtime metrics on http://")
            .and_then(|s| s.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
            .to_string();
        self.runtime = Some(proc);
        self.addr = addr;
    }

    /// A device admitted with evidence measuring `image`.
    async fn device(&self, image: &str) -> Identity {
        self.certifier
            .admit(&self.dir.path().join(image), Role::device())
            .await
    }

    async fn connect(&self, who: &Identity) -> std::io::Result<Framed<TlsStream<TcpStream>>> {
        testkit::connect(
            &self.addr,
            self.certifier.anchor(),
            who,
            Role::runtime(),
            16 << 20,
        )
        .await
    }

    /// A metric's value from the Prometheus endpoint.
    async fn metric(&self, name: &str) -> f64 {
        let mut s = TcpStream::connect(&self.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut text)
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }
}

async fn infer(framed: &mut Framed<TlsStream<TcpStream>>, model: &str, input: Tensor) -> Message {
    framed
        .send(&Message::InferenceRequest {
            request_id: 7,
            model_id: model.into(),
            input,
        })
        .await
        .unwrap();
    framed.recv().await.unwrap()
}

fn label(m: &Message) -> u32 {
    match m {
        Message::InferenceResponse {
            request_id: 7,
            output: InferenceOutput::Label(l),
        } => *l,
        other => panic!("expected a label, got {other:?}"),
    }
}

fn error(m: &Message) -> (ErrorCode, &str) {
    match m {
        Message::Error { code, message } => (*code, message.as_str()),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Certifier, provider with four sealed models, and a runtime serving them.
async fn world(name: &str) -> World {
    let dir = TestDir::new("runtime", name);
    let provider_bin = sibling_bin(RUNTIME, "model-provider");
    let certifier_bin = sibling_bin(RUNTIME, "certifier-service");
    dir.image("device.img", b"device build 1");
    let trusted = [
        ("provider", provider_bin.display().to_string()),
        ("runtime", RUNTIME.to_string()),
        ("device", dir.p("device.img")),
        // A trusted runtime build that is not this one (for the wrong-role test).
        (
            "runtime",
            dir.image("other-runtime.img", b"runtime build 2"),
        ),
    ];
    let certifier = Certifier::start(&certifier_bin, &dir, &trusted);
    let mut w = World {
        dir,
        certifier,
        provider_bin,
        _provider: None,
        provider_addr: String::new(),
        runtime: None,
        addr: String::new(),
        metrics: String::new(),
        runtime_args: Vec::new(),
        bundles: HashMap::new(),
    };
    let for_runtimes = ["--allow-role", "runtime", "--use", "remote-inference"];
    let digits = w.seal("digits", "digits_logreg.onnx", &for_runtimes);
    let mut topk = for_runtimes.to_vec();
    topk.extend(["--output", "top-k=3"]);
    let cnn = w.seal("cnn", "digits_cnn.onnx", &topk);
    let mut budget = for_runtimes.to_vec();
    budget.extend(["--query-budget", "3/3600"]);
    let limited = w.seal("limited", "digits_mlp.onnx", &budget);
    // Full scores answer batches: the budget must count their samples.
    let mut scores_budget = budget.clone();
    scores_budget.extend(["--output", "scores"]);
    let limited_scores = w.seal("limited-scores", "digits_mlp.onnx", &scores_budget);
    // Released only to devices: this runtime must be refused its key.
    let secret = w.seal(
        "secret",
        "digits_mlp.onnx",
        &["--allow-role", "device", "--use", "on-device"],
    );
    w.bundles = HashMap::from([
        ("digits", digits),
        ("cnn", cnn),
        ("limited", limited),
        ("limited-scores", limited_scores),
        ("secret", secret),
    ]);

    let (provider, provider_addr) = testkit::start_provider(&w.provider_bin, &w.dir, &w.certifier);
    w._provider = Some(provider);
    w.provider_addr = provider_addr;

    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--metrics".into(),
        "127.0.0.1:0".into(),
        "--certifier".into(),
        w.certifier.addr.clone(),
        "--policy-cert".into(),
        w.dir.p("svc/policy_cert.der"),
        "--provider".into(),
        w.provider_addr.clone(),
        "--store".into(),
        testkit::store_url(&w.dir),
        "--platform".into(),
        "insecure-emulated".into(),
        "--platform-key".into(),
        w.certifier.platform_key.display().to_string(),
        "--allow-insecure-peers".into(),
        "--workers".into(),
        "2".into(),
    ];
    for (id, hash) in &w.bundles {
        args.push("--model".into());
        args.push(format!("{id}={hash}"));
    }
    w.runtime_args = args;
    w.start_runtime();
    w
}

#[tokio::test]
async fn admitted_devices_get_the_expected_accuracy_within_the_output_policy() {
    let w = world("accuracy").await;
    let device = w.device("device.img").await;
    let mut c = w.connect(&device).await.unwrap();
    let data = digits();

    // Label-only logistic regression: 324/360, as onnxruntime gets.
    let mut correct = 0;
    for (x, y) in &data {
        let m = infer(&mut c, "digits", f32_tensor(&[1, 64], x.clone())).await;
        correct += u32::from(label(&m) == *y);
    }
    assert_eq!(correct, 324, "logreg accuracy");

    // Top-3 CNN on [1,1,8,8]: the first class is the prediction (340/360),
    // and only three scores come back.
    let mut correct = 0;
    for (x, y) in &data {
        match infer(&mut c, "cnn", f32_tensor(&[1, 1, 8, 8], x.clone())).await {
            Message::InferenceResponse {
                output: InferenceOutput::TopK(top),
                ..
            } => {
                assert_eq!(top.len(), 3);
                assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
                correct += u32::from(top[0].0 == *y);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(correct, 340, "cnn accuracy");

    // Warm requests never read the store: two bundles were read, once each.
    let reads = w.metric("realm_runtime_store_reads_total").await;
    for (x, _) in data.iter().take(20) {
        infer(&mut c, "digits", f32_tensor(&[1, 64], x.clone())).await;
    }
    assert_eq!(w.metric("realm_runtime_store_reads_total").await, reads);
    assert!(w.metric("realm_runtime_model_cache_hits_total").await >= 700.0);
    assert_eq!(
        w.metric("realm_runtime_requests_total").await,
        (2 * data.len() + 20) as f64
    );
}

#[tokio::test]
async fn bad_requests_get_specific_errors_and_the_session_goes_on() {
    let w = world("robust").await;
    let device = w.device("device.img").await;
    let mut c = w.connect(&device).await.unwrap();
    let good = || f32_tensor(&[1, 64], vec![0.25; 64]);
    label(&infer(&mut c, "digits", good()).await);

    let cases: Vec<(&str, Tensor, ErrorCode, &str)> = vec![
        (
            "digits",
            f32_tensor(&[1, 65], vec![0.0; 65]),
            ErrorCode::BadRequest,
            "dimension 1 must be 64",
        ),
        (
            "digits",
            f32_tensor(&[64], vec![0.0; 64]),
            ErrorCode::BadRequest,
            "rank-2",
        ),
        (
            "digits",
            f32_tensor(&[1, 64], vec![0.0; 10]),
            ErrorCode::BadRequest,
            "malformed tensor",
        ),
        (
            "digits",
            f32_tensor(&[u64::MAX, 64], vec![]),
            ErrorCode::BadRequest,
            "malformed tensor",
        ),
        (
            "digits",
            Tensor {
                shape: vec![1, 64],
                data: TensorData::I64(vec![1; 64]),
            },
            ErrorCode::BadRequest,
            "f32 input",
        ),
        (
            "no-such-model",
            good(),
            ErrorCode::NotFound,
            "unknown model",
        ),
        ("secret", good(), ErrorCode::Refused, "does not release"),
        // Label-only models answer one sample per request.
        (
            "digits",
            f32_tensor(&[2, 64], vec![0.0; 128]),
            ErrorCode::BadRequest,
            "one sample",
        ),
    ];
    for (model, input, code, text) in cases {
        let reply = infer(&mut c, model, input).await;
        let (got, message) = error(&reply);
        assert_eq!(got, code, "{model}: {message}");
        assert!(
            message.contains(text),
            "{model}: {message:?} lacks {text:?}"
        );
        // The same session still serves.
        label(&infer(&mut c, "digits", good()).await);
    }

    // A query budget of 3 samples per hour per device (platform instance).
    let mlp = || f32_tensor(&[1, 64], vec![0.5; 64]);
    // A batch larger than the budget is refused whole (issue 17 item 4: a
    // budget of 2 once returned 40,000 samples in two batched requests).
    let batch = |n: usize| f32_tensor(&[n as u64, 64], vec![0.5; n * 64]);
    let reply = infer(&mut c, "limited-scores", batch(1000)).await;
    assert_eq!(error(&reply).0, ErrorCode::BudgetExceeded, "{reply:?}");
    // It cost nothing: a batch of 2 fits, then the third sample, then no more.
    for n in [2, 1] {
        let reply = infer(&mut c, "limited-scores", batch(n)).await;
        assert!(
            matches!(&reply, Message::InferenceResponse { output: InferenceOutput::Scores(v), .. } if v.len() == n * 10),
            "{reply:?}"
        );
    }
    let reply = infer(&mut c, "limited-scores", batch(1)).await;
    assert_eq!(error(&reply).0, ErrorCode::BudgetExceeded, "{reply:?}");
    // A label-only model refuses a batch before charging it.
    let reply = infer(&mut c, "limited", batch(2)).await;
    assert_eq!(error(&reply).0, ErrorCode::BadRequest, "{reply:?}");
    for _ in 0..3 {
        label(&infer(&mut c, "limited", mlp()).await);
    }
    let reply = infer(&mut c, "limited", mlp()).await;
    assert_eq!(error(&reply).0, ErrorCode::BudgetExceeded, "{reply:?}");
    // Re-admitting the same phone (a new auth key, same platform instance)
    // does not reset its budget.
    let readmitted = w.device("device.img").await;
    let mut again = w.connect(&readmitted).await.unwrap();
    let reply = infer(&mut again, "limited", mlp()).await;
    assert_eq!(error(&reply).0, ErrorCode::BudgetExceeded, "{reply:?}");
    // Another phone (another platform instance) has its own budget.
    let other_phone = w
        .certifier
        .platform_measuring(&w.dir.path().join("device.img"))
        .with_instance_id([0x01; 33]);
    let other = w.certifier.admit_with(&other_phone, Role::device()).await;
    let mut c2 = w.connect(&other).await.unwrap();
    label(&infer(&mut c2, "limited", mlp()).await);

    // A frame that is not a message: an error reply, then the session ends.
    let mut raw = w.connect(&device).await.unwrap().into_inner();
    raw.write_all(&encode_frame(&[0xff; 40], 1 << 20).unwrap())
        .await
        .unwrap();
    let mut framed = Framed::new(raw);
    let (code, _) = error(&framed.recv().await.unwrap());
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(
        framed.recv().await.is_err(),
        "closed after a malformed frame"
    );

    // A client that sends a request and vanishes.
    let mut gone = w.connect(&device).await.unwrap();
    gone.send(&Message::InferenceRequest {
        request_id: 1,
        model_id: "cnn".into(),
        input: f32_tensor(&[1, 1, 8, 8], vec![0.1; 64]),
    })
    .await
    .unwrap();
    drop(gone);

    // A peer admitted for another role is refused in the handshake, and
    // counted as an attestation failure.
    let not_a_device = w
        .certifier
        .admit(&w.dir.path().join("other-runtime.img"), Role::runtime())
        .await;
    let refused = match w.connect(&not_a_device).await {
        Err(_) => true,
        // TLS 1.3 clients may finish before the server's verdict arrives.
        Ok(mut f) => f.recv().await.is_err(),
    };
    assert!(refused, "a runtime identity must not be served as a device");
    // A device build the policy does not trust is not admitted at all.
    w.dir.image("rogue.img", b"device build with a backdoor");
    let rogue = w
        .certifier
        .try_admit(&w.dir.path().join("rogue.img"), Role::device())
        .await;
    assert!(rogue.is_err(), "untrusted measurement admitted");

    // Everyone else is still served.
    label(&infer(&mut c, "digits", good()).await);
    assert!(w.metric("realm_runtime_attestation_failures_total").await >= 1.0);
    assert!(
        w.metric("realm_runtime_errors_total{kind=\"bad-input\"}")
            .await
            >= 6.0
    );
    assert_eq!(
        w.metric("realm_runtime_errors_total{kind=\"unknown-model\"}")
            .await,
        1.0
    );
    assert_eq!(
        w.metric("realm_runtime_errors_total{kind=\"key-refused\"}")
            .await,
        1.0
    );
    assert_eq!(
        w.metric("realm_runtime_errors_total{kind=\"budget\"}")
            .await,
        // The oversized batch, both spent budgets and the re-admitted phone.
        4.0
    );
}

#[tokio::test]
async fn bursts_restarts_and_announcements() {
    let mut w = world("burst").await;
    let device = w.device("device.img").await;

    // 200 devices at once: each gets an answer, a prediction or "busy".
    let x = digits()[0].0.clone();
    let mut tasks = Vec::new();
    let world = &w;
    for _ in 0..200 {
        let (x, who) = (x.clone(), &device);
        tasks.push(async move {
            let mut c = world.connect(who).await.unwrap();
            infer(&mut c, "digits", f32_tensor(&[1, 64], x)).await
        });
    }
    let replies = futures_util::future::join_all(tasks).await;
    let (mut served, mut busy) = (0, 0);
    for r in &replies {
        match r {
            Message::InferenceResponse { .. } => {
                assert_eq!(label(r), 2);
                served += 1;
            }
            Message::Error {
                code: ErrorCode::Busy,
                ..
            } => busy += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(served + busy, 200);
    assert!(served > 0);

    // Killed and restarted: it re-admits and serves the same models again.
    if let Some(r) = w.runtime.as_mut() {
        r.kill();
    }
    w.start_runtime();
    let mut c = w.connect(&device).await.unwrap();
    assert_eq!(
        label(&infer(&mut c, "digits", f32_tensor(&[1, 64], x.clone())).await),
        2
    );

    // A model sealed after start, announced by an admitted provider.
    let late = w.seal(
        "late",
        "digits_mlp.onnx",
        &["--allow-role", "runtime", "--use", "remote-inference"],
    );
    let provider_identity = w.certifier.admit(&w.provider_bin, Role::provider()).await;
    let mut p = w.connect(&provider_identity).await.unwrap();
    let hash: [u8; 32] = hex::decode(&late).unwrap().try_into().unwrap();
    let announcement = Message::SealedModelAnnouncement {
        model_id: "late".into(),
        version: "1".into(),
        bundle_hash: hash,
        size: 0,
    };
    p.send(&announcement).await.unwrap();
    assert_eq!(p.recv().await.unwrap(), announcement, "acknowledged");
    assert_eq!(
        label(&infer(&mut c, "late", f32_tensor(&[1, 64], x)).await),
        2
    );
    // A device cannot announce.
    c.send(&announcement).await.unwrap();
    assert_eq!(error(&c.recv().await.unwrap()).0, ErrorCode::BadRequest);

    // `model-provider serve --announce-to`: a model sealed while everything
    // runs reaches the runtime without anyone configuring it there.
    let announce_args = [
        "--announce-to",
        w.addr.as_str(),
        "--announce-every-secs",
        "1",
    ];
    let (_announcer, _) =
        testkit::start_provider_with(&w.provider_bin, &w.dir, &w.certifier, &announce_args);
    w.seal(
        "later",
        "digits_cnn.onnx",
        &["--allow-role", "runtime", "--use", "remote-inference"],
    );
    let mut c = w.connect(&device).await.unwrap();
    let x8 = f32_tensor(&[1, 1, 8, 8], digits()[0].0.clone());
    let mut reply = infer(&mut c, "later", x8.clone()).await;
    // Bounded wait for the next announcement round (not a timing assertion).
    for _ in 0..300 {
        if !matches!(
            &reply,
            Message::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        reply = infer(&mut c, "later", x8.clone()).await;
    }
    assert_eq!(label(&reply), 2, "the announced model is served");
}

/// Issue 17 item 3: a device session opened before its measurement was
/// revoked, and held open, is refused at its next request and ends (it used
/// to keep being served).
#[tokio::test]
async fn a_session_held_open_ends_when_its_device_is_revoked() {
    let mut w = world("held-session").await;
    if let Some(mut old) = w.runtime.take() {
        old.kill();
    }
    w.runtime_args
        .extend(["--revocation-refresh-secs".to_string(), "1".to_string()]);
    w.start_runtime();
    let input = || f32_tensor(&[1, 64], vec![0.25; 64]);
    let device = w.device("device.img").await;
    let mut held = w.connect(&device).await.unwrap();
    label(&infer(&mut held, "digits", input()).await);

    let measurement = w
        .certifier
        .platform_measuring(&w.dir.path().join("device.img"))
        .rim()
        .to_hex();
    testkit::ok(testkit::run(
        &sibling_bin(RUNTIME, "certifier-service"),
        &[
            "policy",
            "revoke",
            "--dir",
            &w.dir.p("svc"),
            "--measurement",
            &measurement,
        ],
    ));
    // Wait until the runtime has the revocation: a new session is then
    // refused in the handshake (bounded: 50 × 200 ms).
    let mut refused = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // The server may refuse the client certificate after the client's
        // side of the handshake is done: then the first read fails.
        let served = match w.connect(&device).await {
            Err(_) => false,
            Ok(mut probe) => {
                let request = Message::InferenceRequest {
                    request_id: 7,
                    model_id: "digits".into(),
                    input: input(),
                };
                probe.send(&request).await.is_ok()
                    && matches!(probe.recv().await, Ok(Message::InferenceResponse { .. }))
            }
        };
        if !served {
            refused = true;
            break;
        }
    }
    assert!(refused, "the runtime never applied the revocation");
    // The session held open since before the revocation is refused too.
    let reply = infer(&mut held, "digits", input()).await;
    let (code, message) = error(&reply);
    assert_eq!(code, ErrorCode::Refused, "{reply:?}");
    assert!(message.contains("revoked"), "{message}");
    assert!(held.recv().await.is_err(), "the session ended");
    assert_eq!(
        w.metric("realm_runtime_errors_total{kind=\"session-no-longer-trusted\"}")
            .await,
        1.0
    );
}
