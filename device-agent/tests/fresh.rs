//! Issue 17.5: high-assurance mode spoken by every party of ours. With
//! `--fresh-evidence` on the provider, the runtime and the device agent,
//! each session starts with fresh evidence both ways, bound to its TLS
//! session: the runtime gets its model key from such a provider, a device
//! gets remote inference from such a runtime and an on-device model from
//! such a provider. A device that does not give fresh evidence gets
//! nothing, and the runtime keeps serving.

use std::process::{Command, Output};

use testkit::{Certifier, TestDir, sibling_bin, spawn_server};

const AGENT: &str = env!("CARGO_BIN_EXE_device-agent");

fn model(name: &str) -> String {
    testkit::model_file(name).display().to_string()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout {}\nstderr {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn every_party_gives_and_demands_fresh_evidence() {
    let dir = TestDir::new("agent", "fresh");
    let provider_bin = sibling_bin(AGENT, "model-provider");
    let runtime_bin = sibling_bin(AGENT, "realm-runtime");
    let trusted = [
        ("provider", provider_bin.display().to_string()),
        ("runtime", runtime_bin.display().to_string()),
        ("device", AGENT.to_string()),
    ];
    let certifier = Certifier::start(&sibling_bin(AGENT, "certifier-service"), &dir, &trusted);
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
    let digits = testkit::seal(
        &provider_bin,
        &dir,
        "digits",
        &model("digits_logreg.onnx"),
        &both,
    );
    let (_provider, provider_addr) =
        testkit::start_provider_with(&provider_bin, &dir, &certifier, &["--fresh-evidence"]);
    let mut r = testkit::runtime_command(&runtime_bin, &dir, &certifier, &provider_addr);
    r.args(["--fresh-evidence", "--model", &format!("digits={digits}")]);
    let (_runtime, runtime_addr) = spawn_server(r);

    let key = certifier.platform_key.display().to_string();
    let state = dir.p("agent");
    let agent = |args: &[&str]| {
        Command::new(AGENT)
            .args(args)
            .args(["--state", &state, "--platform", "insecure-emulated"])
            .args(["--platform-key", &key])
            .output()
            .unwrap()
    };
    let policy = certifier.policy_cert.display().to_string();
    let admission = [
        "--certifier",
        &certifier.addr,
        "--policy-cert",
        &policy,
        "--allow-insecure-peers",
    ];
    let csv = model("digits_test.csv");
    let handle = ok(&agent(&["import", "--csv", &csv, "--labels", "last"]));
    let handle = handle.trim();
    let infer = |extra: &[&str]| {
        let mut args = vec!["infer", "--runtime", &runtime_addr, "--model", "digits"];
        args.extend(["--handle", handle]);
        args.extend(admission);
        args.extend(extra);
        agent(&args)
    };

    // Without fresh evidence the runtime ends the session before serving.
    let refused = infer(&[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("the runtime demands fresh evidence") && err.contains("add --fresh-evidence"),
        "the runtime asked for fresh evidence, and the agent says what to do: {err}"
    );

    // With it: the runtime fetched the key from a fresh-evidence provider
    // (or it could not serve), and the device is served: 324/360 correct.
    let out = ok(&infer(&["--fresh-evidence"]));
    assert!(out.contains("324 correct"), "{out}");

    // On-device: the provider releases the key after the exchange too.
    let url = testkit::store_url(&dir);
    let mut fetch = vec![
        "fetch-model",
        "--provider",
        &provider_addr,
        "--model",
        "digits",
    ];
    fetch.extend(["--store", &url]);
    fetch.extend(admission);
    fetch.push("--fresh-evidence");
    ok(&agent(&fetch));
}
