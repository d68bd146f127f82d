//! Connection floods against the real `realm-runtime` and its `/metrics`
//! endpoint: 3,000 idle TCP connections, and a flood that keeps
//! reconnecting, from 127.0.0.2 while an admitted device on 127.0.0.1 is
//! still served (before, ~512 idle connections held every slot for 10 s and
//! devices were dropped), and served again afterwards.
//!
//! The other binaries come from the same target directory; `cargo test
//! --workspace` builds them.

use std::time::Duration;

use attestation::atls::Identity;
use attestation::certifier::policy::Role;
use protocol::{InferenceOutput, Message, Tensor, TensorData};
use testkit::flood::{self, FLOOD_SOURCE, Reconnecting};
use testkit::{Certifier, Proc, TestDir, sibling_bin, spawn_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RUNTIME: &str = env!("CARGO_BIN_EXE_realm-runtime");

/// The most pre-auth connections one source may hold: half the server's
/// pre-auth pool (`protocol::ListenLimits`).
const PER_SOURCE: usize = 256;
/// The metrics endpoint's (half of 32, `metrics::METRICS_LIMITS`).
const METRICS_PER_SOURCE: usize = 16;

struct World {
    dir: TestDir,
    certifier: Certifier,
    _provider: Proc,
    _runtime: Proc,
    addr: String,
    metrics: String,
}

async fn world(name: &str) -> World {
    let dir = TestDir::new("rtflood", name);
    let provider_bin = sibling_bin(RUNTIME, "model-provider");
    dir.image("device.img", b"device build 1");
    let trusted = [
        ("provider", provider_bin.display().to_string()),
        ("runtime", RUNTIME.to_string()),
        ("device", dir.p("device.img")),
    ];
    let certifier = Certifier::start(&sibling_bin(RUNTIME, "certifier-service"), &dir, &trusted);
    let model = testkit::model_file("digits_logreg.onnx");
    let hash = testkit::seal(
        &provider_bin,
        &dir,
        "digits",
        &model.display().to_string(),
        &["--allow-role", "runtime", "--use", "remote-inference"],
    );
    let (provider, provider_addr) = testkit::start_provider(&provider_bin, &dir, &certifier);
    let mut cmd = testkit::runtime_command(
        std::path::Path::new(RUNTIME),
        &dir,
        &certifier,
        &provider_addr,
    );
    cmd.args(["--workers", "1", "--model", &format!("digits={hash}")]);
    let (mut runtime, addr) = spawn_server(cmd);
    let line = runtime.read_line();
    let metrics = line
        .trim()
        .strip_prefix("realm-runtime metrics on http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
        .to_string();
    World {
        dir,
        certifier,
        _provider: provider,
        _runtime: runtime,
        addr,
        metrics,
    }
}

impl World {
    async fn device(&self) -> Identity {
        self.certifier
            .admit(&self.dir.path().join("device.img"), Role::device())
            .await
    }

    /// Whether `device` connects and gets a label for a digit.
    async fn served(&self, device: &Identity) -> bool {
        let Ok(mut c) = testkit::connect(
            &self.addr,
            self.certifier.anchor(),
            device,
            Role::runtime(),
            16 << 20,
        )
        .await
        else {
            return false;
        };
        let input = Tensor {
            shape: vec![1, 64],
            data: TensorData::F32(vec![0.25; 64]),
        };
        let request = Message::InferenceRequest {
            request_id: 1,
            model_id: "digits".into(),
            input,
        };
        c.send(&request).await.is_ok()
            && matches!(
                c.recv().await,
                Ok(Message::InferenceResponse {
                    request_id: 1,
                    output: InferenceOutput::Label(_),
                })
            )
    }

    /// `GET /metrics` from 127.0.0.1; the response.
    async fn scrape(&self) -> String {
        let mut s = TcpStream::connect(&self.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut text = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text)).await;
        text
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_source_do_not_lock_devices_out() {
    let w = world("idle").await;
    let device = w.device().await;
    let idle = flood::idle(flood::socket_addr(&w.addr), FLOOD_SOURCE, 3000).await;
    assert!(
        idle.len() > 2500,
        "only {} flood connections opened",
        idle.len()
    );
    assert!(w.served(&device).await, "device served during the flood");
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
    // The refusals are counted.
    let text = w.scrape().await;
    assert!(
        text.contains("realm_runtime_errors_total{kind=\"connection-limit\"}"),
        "{text}"
    );
    drop(idle);
    assert!(w.served(&device).await, "still serving after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_flood_does_not_lock_devices_out() {
    let w = world("reconnect").await;
    let device = w.device().await;
    let flood = Reconnecting::start(
        flood::socket_addr(&w.addr),
        FLOOD_SOURCE,
        600,
        Duration::from_secs(20),
    );
    // Let it fill whatever it can.
    flood::wait_for(&flood, 600, Duration::from_secs(5)).await;
    for _ in 0..3 {
        assert!(w.served(&device).await, "device served during the flood");
    }
    // The server closes what it will not hold at once, so the flood keeps
    // reconnecting (the listeners used to sit on its connections for 10 s).
    flood::wait_for(&flood, 1200, Duration::from_secs(5)).await;
    let made = flood.stop().await;
    assert!(made >= 1200, "the flood reconnected only {made} times");
    assert!(w.served(&device).await, "still serving after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_the_metrics_endpoint_do_not_stop_scrapes() {
    let w = world("metrics").await;
    let idle = flood::idle(flood::socket_addr(&w.metrics), FLOOD_SOURCE, 3000).await;
    assert!(
        idle.len() > 2500,
        "only {} flood connections opened",
        idle.len()
    );
    let text = w.scrape().await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("realm_runtime_requests_total"), "{text}");
    // Most were closed by the time the legitimate party was served (the
    // listeners used to hold every one for 5-10 s)...
    let now_open = flood::still_open(&idle);
    assert!(
        now_open < idle.len() / 2,
        "{now_open} idle connections held"
    );
    // ...and all but the source's pre-auth share soon after (the rest sat
    // in the kernel's queue).
    let open = flood::settle(&idle, METRICS_PER_SOURCE, flood::SETTLE).await;
    assert!(
        open <= METRICS_PER_SOURCE,
        "{open} idle connections still held"
    );
    drop(idle);
    assert!(
        w.scrape().await.starts_with("HTTP/1.1 200"),
        "still serving"
    );
}
