//! A runtime at its connection limit is reported as busy, not as an
//! untrusted runtime: the real `realm-runtime` (one connection allowed)
//! and a bounded listener past its pre-auth deadline, against the agent's
//! connect code and the real `device-agent` binary.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use attestation::certifier::policy::Role;
use device_agent::connect::{ConnectError, Expected, connect};
use protocol::{BoundedListener, ListenLimits};
use testkit::{Certifier, TestDir, sibling_bin, spawn_server};
use tokio::net::TcpListener;

const AGENT: &str = env!("CARGO_BIN_EXE_device-agent");

fn expected_runtime() -> Expected {
    Expected {
        role: Role::runtime(),
        measurements: Vec::new(),
        allow_insecure: true,
    }
}

fn busy(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ConnectError>(),
        Some(ConnectError::Busy { .. })
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_at_its_connection_limit_is_reported_busy() {
    let dir = TestDir::new("agentbusy", "limit");
    let runtime_bin = sibling_bin(AGENT, "realm-runtime");
    let device_img = dir.image("device.img", b"device build 1");
    let trusted = [
        ("runtime", runtime_bin.display().to_string()),
        ("device", device_img.clone()),
        ("device", AGENT.to_string()),
    ];
    let certifier = Certifier::start(&sibling_bin(AGENT, "certifier-service"), &dir, &trusted);
    // No provider is needed: no model is served.
    let mut cmd = testkit::runtime_command(&runtime_bin, &dir, &certifier, "127.0.0.1:9");
    cmd.args(["--max-connections", "1"]);
    let (_runtime, addr) = spawn_server(cmd);
    let anchor = certifier.anchor();
    let a = certifier
        .admit(Path::new(&device_img), Role::device())
        .await;
    let b = certifier
        .admit(Path::new(&device_img), Role::device())
        .await;

    // A holds the one connection.
    let held = connect(
        &addr,
        &a,
        &anchor,
        &certifier.addr,
        &expected_runtime(),
        None,
    )
    .await
    .expect("the first device connects");
    // B is closed at once, and told the runtime is busy.
    let e = connect(
        &addr,
        &b,
        &anchor,
        &certifier.addr,
        &expected_runtime(),
        None,
    )
    .await
    .expect_err("the second device is refused");
    assert!(busy(&e), "expected ConnectError::Busy, got {e:#}");
    let code = e.downcast_ref::<ConnectError>().map(ConnectError::code);
    assert_eq!(code, Some("peer-busy"));

    // The binary says so too (and does not blame the runtime's identity).
    let out = Command::new(AGENT)
        .args(["infer", "--runtime", &addr, "--model", "digits", "--csv"])
        .arg(testkit::model_file("digits_test.csv"))
        .args(["--certifier", &certifier.addr, "--policy-cert"])
        .arg(&certifier.policy_cert)
        .args(["--allow-insecure-peers", "--state", &dir.p("agent")])
        .args(["--platform", "insecure-emulated", "--platform-key"])
        .arg(&certifier.platform_key)
        .args(["--retries", "1", "--retry-max-secs", "0.1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("busy or at its connection limit") && !stderr.contains("not an acceptable"),
        "{stderr}"
    );
    // Busy is worth another try (issue 27 defect 5); then it gives up.
    assert!(
        stderr.contains("retry 1 of 1") && stderr.contains("giving up"),
        "{stderr}"
    );

    // Once A leaves, B is served: the runtime kept serving.
    drop(held);
    let mut connected = false;
    for _ in 0..50 {
        match connect(
            &addr,
            &b,
            &anchor,
            &certifier.addr,
            &expected_runtime(),
            None,
        )
        .await
        {
            Ok(_) => {
                connected = true;
                break;
            }
            Err(e) if busy(&e) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("unexpected {e:#}"),
        }
    }
    assert!(connected, "the runtime admits again once a slot is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_cut_at_the_pre_auth_deadline_is_reported_busy() {
    let dir = TestDir::new("agentbusy", "deadline");
    let device_img = dir.image("device.img", b"device build 1");
    let certifier = Certifier::start(
        &sibling_bin(AGENT, "certifier-service"),
        &dir,
        &[("device", device_img.clone())],
    );
    // A listener whose peers never authenticate in time (it never answers
    // the ClientHello): each connection is closed at the deadline.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let limits = ListenLimits {
        pre_auth_deadline: Duration::from_millis(300),
        ..ListenLimits::default()
    };
    tokio::spawn(BoundedListener::new(listener, "silent", limits).serve(
        |tcp, _| async move {
            std::future::pending::<()>().await;
            Some(tcp)
        },
        |_tcp, _| async {},
    ));
    let device = certifier
        .admit(Path::new(&device_img), Role::device())
        .await;
    let e = connect(
        &addr,
        &device,
        &certifier.anchor(),
        &certifier.addr,
        &expected_runtime(),
        None,
    )
    .await
    .expect_err("refused");
    assert!(busy(&e), "expected ConnectError::Busy, got {e:#}");
}
