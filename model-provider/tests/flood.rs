//! Connection floods against the real `model-provider serve` (it used to
//! accept any number of idle connections): 3,000 idle TCP connections, and
//! a flood that keeps reconnecting, from 127.0.0.2, while an admitted
//! runtime on 127.0.0.1 still gets its key, and keeps getting it afterwards.
//!
//! `certifier-service` comes from the same target directory (`cargo build
//! -p certifier-service` first when testing this crate alone).

use std::path::Path;
use std::time::Duration;

use attestation::atls::Identity;
use attestation::certifier::policy::Role;
use blob_store::BlobId;
use protocol::{KeyUsage, Limits, Message};
use testkit::flood::{self, FLOOD_SOURCE, Reconnecting};
use testkit::{Certifier, Proc, TestDir, sibling_bin, start_provider};

const PROVIDER: &str = env!("CARGO_BIN_EXE_model-provider");

/// The most pre-auth connections one source may hold: half the server's
/// pre-auth pool (`protocol::ListenLimits`).
const PER_SOURCE: usize = 256;

struct World {
    _dir: TestDir,
    certifier: Certifier,
    _provider: Proc,
    addr: String,
    runtime: Identity,
    bundle: BlobId,
}

async fn world(name: &str) -> World {
    let dir = TestDir::new("provflood", name);
    let runtime_img = dir.image("runtime.img", b"runtime build 1");
    let trusted = [("provider", PROVIDER.to_string()), ("runtime", runtime_img)];
    let certifier = Certifier::start(&sibling_bin(PROVIDER, "certifier-service"), &dir, &trusted);
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/digits_logreg.onnx");
    let bundle = testkit::seal(
        Path::new(PROVIDER),
        &dir,
        "digits",
        &model.display().to_string(),
        &["--allow-role", "runtime", "--use", "remote-inference"],
    )
    .parse()
    .unwrap();
    let (provider, addr) = start_provider(Path::new(PROVIDER), &dir, &certifier);
    let runtime = certifier
        .admit(&dir.path().join("runtime.img"), Role::runtime())
        .await;
    World {
        _dir: dir,
        certifier,
        _provider: provider,
        addr,
        runtime,
        bundle,
    }
}

impl World {
    /// The admitted runtime asks for the key; whether it was released.
    async fn key_released(&self) -> bool {
        let max_frame = Limits::default().max_frame;
        let Ok(mut framed) = testkit::connect(
            &self.addr,
            self.certifier.anchor(),
            &self.runtime,
            Role::provider(),
            max_frame,
        )
        .await
        else {
            return false;
        };
        let request = Message::ModelKeyRequest {
            model_id: "digits".into(),
            bundle_hash: self.bundle.0,
            usage: KeyUsage::RemoteInference,
        };
        framed.send(&request).await.is_ok()
            && matches!(framed.recv().await, Ok(Message::ModelKeyRelease { .. }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_source_are_closed_and_keys_are_still_released() {
    let w = world("idle").await;
    let idle = flood::idle(flood::socket_addr(&w.addr), FLOOD_SOURCE, 3000).await;
    assert!(
        idle.len() > 2500,
        "only {} flood connections opened",
        idle.len()
    );
    assert!(w.key_released().await, "key released during the flood");
    // All but the source's pre-auth share were closed at once (before, the
    // provider kept every one of them for 10 s).
    // Most were closed by the time the legitimate party was served (the
    // listeners used to hold every one for 5-10 s)...
    let now_open = flood::still_open(&idle);
    assert!(
        now_open < idle.len() / 2,
        "{now_open} idle connections held"
    );
    // ...and all but the source's pre-auth share soon after (the rest sat
    // in the kernel's queue).
    let open = flood::settle(&idle, PER_SOURCE, flood::SETTLE).await;
    assert!(open <= PER_SOURCE, "{open} idle connections still held");
    drop(idle);
    assert!(w.key_released().await, "still serving after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_flood_does_not_keep_a_runtime_from_its_key() {
    let w = world("reconnect").await;
    let flood = Reconnecting::start(
        flood::socket_addr(&w.addr),
        FLOOD_SOURCE,
        600,
        Duration::from_secs(20),
    );
    // Let it fill whatever it can.
    flood::wait_for(&flood, 600, Duration::from_secs(5)).await;
    for _ in 0..3 {
        assert!(w.key_released().await, "key released during the flood");
    }
    // The server closes what it will not hold at once, so the flood keeps
    // reconnecting (the listeners used to sit on its connections for 10 s).
    flood::wait_for(&flood, 1200, Duration::from_secs(5)).await;
    let made = flood.stop().await;
    assert!(made >= 1200, "the flood reconnected only {made} times");
    assert!(w.key_released().await, "still serving after the flood");
}
