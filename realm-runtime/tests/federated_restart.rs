//! A runtime killed (SIGKILL) in the middle of a federated task cannot roll
//! the task's model back: the provider keeps the newest global model version
//! (across its own restart too) and refuses an older deposit with
//! `deposit-version-not-newer`, and the restarted runtime resumes at the
//! round after the last deposited one, from that round's global model.
//! Real processes: certifier, provider, runtime, and a test device and a
//! test "runtime" speaking the protocol over attested TLS.

use std::path::Path;
use std::time::Duration;

use attestation::atls::Identity;
use attestation::certifier::policy::Role;
use protocol::sealed::ModelKey;
use protocol::{ErrorCode, Framed, KeyUsage, Message};
use testkit::{Certifier, Proc, TestDir, sibling_bin, spawn_server};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const RUNTIME: &str = env!("CARGO_BIN_EXE_realm-runtime");

type Conn = Framed<TlsStream<TcpStream>>;

async fn connect(addr: &str, certifier: &Certifier, who: &Identity, role: Role) -> Conn {
    testkit::connect(addr, certifier.anchor(), who, role, 16 << 20)
        .await
        .unwrap()
}

fn start_runtime(dir: &TestDir, certifier: &Certifier, provider: &str) -> (Proc, String) {
    let mut r = testkit::runtime_command(Path::new(RUNTIME), dir, certifier, provider);
    r.args(["--fl-task", "digits"]);
    r.args(["--fl-deadline-secs", "120"]);
    spawn_server(r)
}

fn start_provider(dir: &TestDir, certifier: &Certifier) -> (Proc, String) {
    // Defining again (after a restart) keeps the same terms.
    let terms = ["--min-clients", "1", "--max-clients", "1", "--rounds", "10"];
    let mut terms = terms.to_vec();
    terms.push("--allow-insecure-devices");
    testkit::define_task(
        &sibling_bin(RUNTIME, "model-provider"),
        dir,
        "digits",
        &terms,
    );
    testkit::start_provider_with(
        &sibling_bin(RUNTIME, "model-provider"),
        dir,
        certifier,
        &["--federated-task", "digits"],
    )
}

/// Join the task; the announced round and its global model.
async fn join(c: &mut Conn) -> (u64, Vec<u8>) {
    c.send(&Message::JoinRound {
        task: "digits".into(),
    })
    .await
    .unwrap();
    match c.recv().await.unwrap() {
        Message::RoundAnnouncement { round, .. } => {
            let model = c.recv_large(round).await.unwrap();
            (round, model)
        }
        other => panic!("expected a RoundAnnouncement, got {other:?}"),
    }
}

/// Send an update for `round` (the only one the round needs) and expect it accepted.
async fn train(c: &mut Conn, round: u64, model: &[u8]) {
    let n = fl::onnx_model::read_params(model).unwrap().len();
    c.send(&Message::ModelUpdate {
        round,
        num_samples: 100,
        delta: vec![0.01; n],
    })
    .await
    .unwrap();
    match c.recv().await.unwrap() {
        Message::RoundResult { accepted: true, .. } => {}
        other => panic!("round {round}: update not accepted: {other:?}"),
    }
}

/// The provider's current version of task "digits", asked as a runtime.
async fn provider_version(addr: &str, certifier: &Certifier, runtime: &Identity) -> Option<String> {
    let mut c = connect(addr, certifier, runtime, Role::provider()).await;
    c.send(&Message::BundleQuery {
        model_id: "digits".into(),
        usage: KeyUsage::FederatedRound,
    })
    .await
    .unwrap();
    match c.recv().await.unwrap() {
        Message::SealedModelAnnouncement { version, .. } => Some(version),
        Message::Error {
            code: ErrorCode::NotFound,
            ..
        } => None,
        other => panic!("unexpected answer to BundleQuery: {other:?}"),
    }
}

/// Poll until the provider holds version `want` (deposits happen in the
/// background after a round is aggregated).
async fn wait_for_version(addr: &str, certifier: &Certifier, runtime: &Identity, want: &str) {
    for _ in 0..300 {
        if provider_version(addr, certifier, runtime).await.as_deref() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the provider never reported version {want} (has {:?})",
        provider_version(addr, certifier, runtime).await
    );
}

/// Deposit a (fake) global model of `version` as `runtime`; the reply.
async fn deposit(addr: &str, certifier: &Certifier, runtime: &Identity, version: &str) -> Message {
    let key = ModelKey::generate().unwrap();
    let mut c = connect(addr, certifier, runtime, Role::provider()).await;
    c.send(&Message::ModelKeyDeposit {
        model_id: "digits".into(),
        version: version.into(),
        bundle_hash: [7; 32],
        key_id: *key.key_id().as_bytes(),
        key: key.to_secret_bytes(),
    })
    .await
    .unwrap();
    c.recv().await.unwrap()
}

fn assert_not_newer(reply: Message) {
    match reply {
        Message::Error {
            code: ErrorCode::Refused,
            message,
        } => assert!(
            message.starts_with("deposit-version-not-newer: "),
            "refused, but not for its version: {message}"
        ),
        other => panic!("a stale deposit was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runtime_resumes_from_the_newest_model_and_stale_deposits_are_refused() {
    let dir = TestDir::new("fl", "restart");
    let agent = sibling_bin(RUNTIME, "device-agent");
    let trusted = [
        (
            "provider",
            sibling_bin(RUNTIME, "model-provider").display().to_string(),
        ),
        ("runtime", RUNTIME.to_string()),
        ("device", agent.display().to_string()),
    ];
    let certifier = Certifier::start(&sibling_bin(RUNTIME, "certifier-service"), &dir, &trusted);
    let (mut provider, provider_addr) = start_provider(&dir, &certifier);
    let device = certifier.admit(&agent, Role::device()).await;
    let runtime_id = certifier.admit(Path::new(RUNTIME), Role::runtime()).await;
    assert_eq!(
        provider_version(&provider_addr, &certifier, &runtime_id).await,
        None,
        "nothing deposited yet"
    );

    // Three rounds, each aggregated and deposited as versions 1..3.
    let (mut runtime, addr) = start_runtime(&dir, &certifier, &provider_addr);
    let mut c = connect(&addr, &certifier, &device, Role::runtime()).await;
    let (_, first_model) = join(&mut c).await;
    let mut model = first_model.clone();
    for round in 1..=3 {
        if round > 1 {
            let (r, m) = join(&mut c).await;
            assert_eq!(r, round);
            model = m;
        }
        train(&mut c, round, &model).await;
    }
    wait_for_version(&provider_addr, &certifier, &runtime_id, "3").await;
    // Round 4 is open and this device holds its model when the runtime dies.
    let (r, round4_model) = join(&mut c).await;
    assert_eq!(r, 4);
    drop(c);
    runtime.kill();

    // A restarted runtime that started over would deposit version 1: refused,
    // and so is the current version itself.
    assert_not_newer(deposit(&provider_addr, &certifier, &runtime_id, "1").await);
    assert_not_newer(deposit(&provider_addr, &certifier, &runtime_id, "3").await);
    // The provider still serves and still reports the newest version.
    assert_eq!(
        provider_version(&provider_addr, &certifier, &runtime_id)
            .await
            .as_deref(),
        Some("3")
    );

    // The provider restarts too: the version is remembered (keystore).
    provider.kill();
    let (_provider, provider_addr) = start_provider(&dir, &certifier);
    assert_not_newer(deposit(&provider_addr, &certifier, &runtime_id, "2").await);
    assert_eq!(
        provider_version(&provider_addr, &certifier, &runtime_id)
            .await
            .as_deref(),
        Some("3")
    );

    // The restarted runtime resumes at round 4 from version 3's model.
    let (_runtime, addr) = start_runtime(&dir, &certifier, &provider_addr);
    let mut c = connect(&addr, &certifier, &device, Role::runtime()).await;
    let (r, resumed_model) = join(&mut c).await;
    assert_eq!(r, 4, "the task restarted at round {r}, not at round 4");
    assert_eq!(
        resumed_model, round4_model,
        "round 4 starts from the global model of round 3"
    );
    assert_ne!(resumed_model, first_model, "not a fresh model");
    // ... and goes on: round 4 is aggregated and deposited as version 4.
    train(&mut c, 4, &resumed_model).await;
    wait_for_version(&provider_addr, &certifier, &runtime_id, "4").await;
}
