//! Federated learning with real processes: a `realm-runtime` coordinating a
//! task, three `device-agent` processes training on their own sealed share of
//! the digits data, and a test client sending the bad updates the round must
//! refuse while it goes on.

use std::process::Command;

use attestation::certifier::policy::Role;
use protocol::Message;
use testkit::{Certifier, TestDir, ok, sibling_bin, spawn_server};

const RUNTIME: &str = env!("CARGO_BIN_EXE_realm-runtime");

fn result(m: Message) -> (bool, String) {
    match m {
        Message::RoundResult {
            accepted, reason, ..
        } => (accepted, reason.unwrap_or_default()),
        other => panic!("expected a RoundResult, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_train_a_shared_model_and_bad_updates_are_refused() {
    let dir = TestDir::new("fl", "rounds");
    let agent = sibling_bin(RUNTIME, "device-agent");
    let provider_bin = sibling_bin(RUNTIME, "model-provider");
    let trusted = [
        ("provider", provider_bin.display().to_string()),
        ("runtime", RUNTIME.to_string()),
        ("device", agent.display().to_string()),
    ];
    let certifier = Certifier::start(&sibling_bin(RUNTIME, "certifier-service"), &dir, &trusted);
    let (_provider, provider_addr) = testkit::start_provider(&provider_bin, &dir, &certifier);
    let mut r = Command::new(RUNTIME);
    r.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    r.args(["--certifier", &certifier.addr, "--provider", &provider_addr]);
    r.arg("--policy-cert").arg(&certifier.policy_cert);
    r.args([
        "--store",
        &testkit::store_url(&dir),
        "--platform",
        "insecure-emulated",
    ]);
    r.arg("--platform-key").arg(&certifier.platform_key);
    r.arg("--allow-insecure-peers");
    r.args([
        "--fl-task",
        "digits",
        "--fl-rule",
        "median",
        "--fl-clip",
        "2",
    ]);
    r.args(["--fl-min-clients", "3", "--fl-max-clients", "4"]);
    r.args(["--fl-deadline-secs", "10", "--fl-rounds", "3"]);
    let (_runtime, addr) = spawn_server(r);

    // The test client: a device build the policy trusts.
    let me = certifier.admit(&agent, Role::device()).await;
    let mut c = testkit::connect(&addr, certifier.anchor(), &me, Role::runtime(), 16 << 20)
        .await
        .unwrap();
    c.send(&Message::JoinRound {
        task: "nope".into(),
    })
    .await
    .unwrap();
    assert!(matches!(c.recv().await.unwrap(), Message::Error { .. }));
    c.send(&Message::JoinRound {
        task: "digits".into(),
    })
    .await
    .unwrap();
    let Message::RoundAnnouncement {
        round, min_clients, ..
    } = c.recv().await.unwrap()
    else {
        panic!("no announcement")
    };
    assert_eq!((round, min_clients), (1, 3));
    let model = c.recv_large(round).await.unwrap();
    let params = fl::onnx_model::read_params(&model).unwrap();
    let n = params.len();
    let update = |round: u64, delta: Vec<f32>| Message::ModelUpdate {
        round,
        num_samples: 100,
        delta,
    };
    let cases = [
        (update(1, vec![0.0; n - 1]), "length check failed"),
        (
            update(1, [vec![f32::NAN], vec![0.0; n - 1]].concat()),
            "finiteness check failed",
        ),
        (update(1, vec![f32::INFINITY; n]), "finiteness check failed"),
        (update(0, vec![0.0; n]), "past round 0"),
        (update(7, vec![0.0; n]), "future round 7"),
    ];
    for (bad, why) in cases {
        c.send(&bad).await.unwrap();
        let (accepted, reason) = result(c.recv().await.unwrap());
        assert!(
            !accepted && reason.contains(why),
            "{reason:?} lacks {why:?}"
        );
    }
    c.send(&update(1, vec![0.0; n])).await.unwrap();
    assert!(
        result(c.recv().await.unwrap()).0,
        "a good update is accepted"
    );
    c.send(&update(1, vec![0.0; n])).await.unwrap();
    let (accepted, reason) = result(c.recv().await.unwrap());
    assert!(!accepted && reason.contains("already sent"), "{reason}");

    // Three devices, each with its own third of the training data, sealed.
    let train = std::fs::read_to_string(testkit::model_file("digits_train.csv")).unwrap();
    let rows: Vec<&str> = train.lines().collect();
    let mut devices = Vec::new();
    for d in 0..3 {
        let part: Vec<&str> = rows.iter().skip(d).step_by(3).copied().collect();
        let csv = dir.image(&format!("part{d}.csv"), part.join("\n").as_bytes());
        let state = dir.p(&format!("device{d}"));
        let realm = [
            "--state",
            &state,
            "--platform",
            "insecure-emulated",
            "--platform-key",
            &certifier.platform_key.display().to_string(),
        ]
        .map(String::from);
        let handle = ok(Command::new(&agent)
            .args(["import", "--csv", &csv, "--labels", "last"])
            .args(&realm)
            .output()
            .unwrap());
        let child = Command::new(&agent)
            .args([
                "train",
                "--runtime",
                &addr,
                "--task",
                "digits",
                "--rounds",
                "5",
                "--json",
            ])
            .args(["--handle", handle.trim()])
            .args([
                "--certifier",
                &certifier.addr,
                "--allow-insecure-peers",
                "--policy-cert",
            ])
            .arg(&certifier.policy_cert)
            .args(&realm)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        devices.push(child);
    }

    // The test client joins round 2 and drops out: the round must not wait for it.
    c.send(&Message::JoinRound {
        task: "digits".into(),
    })
    .await
    .unwrap();
    let next = c.recv().await.unwrap();
    assert!(
        matches!(next, Message::RoundAnnouncement { round: 2, .. }),
        "{next:?}"
    );
    drop(c);

    for child in devices {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let text = ok(out);
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let rounds = v["rounds"].as_array().unwrap();
        // Rounds 1-3 trained and accepted, then the final model.
        assert_eq!(rounds.len(), 4, "{text}");
        for r in &rounds[..3] {
            assert_eq!(r["accepted"], serde_json::Value::Bool(true), "{text}");
        }
        let first = rounds[0]["global_accuracy"].as_f64().unwrap();
        let last = rounds[3]["global_accuracy"].as_f64().unwrap();
        assert!(rounds[3]["accepted"].is_null());
        assert!(last > 0.85 && last > first + 0.5, "{first} -> {last}");
    }
}
