//! Issue 27 defect 5: the real `device-agent` retries what is worth another
//! try and nothing else. A batch survives a runtime restart (resumed at the
//! first unanswered sample, every sample answered once by the new runtime);
//! a runtime that stays down ends the batch with the answered part printed
//! and exit status 4; a runtime that fails verification is never tried
//! again.
//!
//! To kill the runtime mid-batch without a race, the agent logs a debug
//! line per answered sample to a pipe this test stops reading: once the
//! pipe is full the agent blocks between two samples (the runtime's request
//! count stops moving), and the test kills the runtime then.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Certifier, Proc, TestDir, sibling_bin, spawn_server};

const AGENT: &str = env!("CARGO_BIN_EXE_device-agent");
/// digits_test.csv ten times: 3,600 samples, 3,240 of them classified right.
const COPIES: usize = 10;

struct World {
    dir: TestDir,
    certifier: Certifier,
    _provider: Proc,
    provider_addr: String,
    runtime_bin: std::path::PathBuf,
    digits: String,
    csv: String,
}

impl World {
    fn new(name: &str) -> Self {
        let dir = TestDir::new("agentretry", name);
        let provider_bin = sibling_bin(AGENT, "model-provider");
        let runtime_bin = sibling_bin(AGENT, "realm-runtime");
        let trusted = [
            ("provider", provider_bin.display().to_string()),
            ("runtime", runtime_bin.display().to_string()),
            ("device", AGENT.to_string()),
        ];
        let certifier = Certifier::start(&sibling_bin(AGENT, "certifier-service"), &dir, &trusted);
        let model = testkit::model_file("digits_logreg.onnx");
        let digits = testkit::seal(
            &provider_bin,
            &dir,
            "digits",
            &model.display().to_string(),
            &["--allow-role", "runtime", "--use", "remote-inference"],
        );
        let (provider, provider_addr) = testkit::start_provider(&provider_bin, &dir, &certifier);
        let one = std::fs::read_to_string(testkit::model_file("digits_test.csv")).unwrap();
        let csv = dir.p("digits-x10.csv");
        std::fs::write(&csv, one.repeat(COPIES)).unwrap();
        World {
            dir,
            certifier,
            _provider: provider,
            provider_addr,
            runtime_bin,
            digits,
            csv,
        }
    }

    /// A runtime serving `digits` on `listen`, and its metrics address.
    fn runtime(&self, listen: &str) -> (Proc, String, String) {
        let mut r = testkit::runtime_command_on(
            &self.runtime_bin,
            &self.dir,
            &self.certifier,
            &self.provider_addr,
            listen,
        );
        r.args(["--model", &format!("digits={}", self.digits)]);
        let (mut proc, addr) = spawn_server(r);
        let line = proc.read_line();
        let metrics = line
            .trim()
            .strip_prefix("realm-runtime metrics on http://")
            .and_then(|s| s.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("no metrics line: {line:?}"))
            .to_string();
        (proc, addr, metrics)
    }

    /// `device-agent infer` of the 3,600 samples at `runtime`, its stderr
    /// piped (with a debug line per answered sample) and its stdout piped.
    fn infer(&self, runtime: &str, extra: &[&str]) -> Child {
        let mut c = Command::new(AGENT);
        c.args(["infer", "--runtime", runtime, "--model", "digits", "--json"]);
        c.args(["--csv", &self.csv]);
        c.args([
            "--state",
            &self.dir.p("agent"),
            "--platform",
            "insecure-emulated",
        ]);
        c.arg("--platform-key").arg(&self.certifier.platform_key);
        c.args(["--certifier", &self.certifier.addr, "--policy-cert"]);
        c.arg(&self.certifier.policy_cert)
            .arg("--allow-insecure-peers");
        c.args(extra);
        c.env("RUST_LOG", "device_agent=debug");
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    }
}

/// A counter from the runtime's metrics endpoint.
fn metric(metrics: &str, name: &str) -> u64 {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

/// Read the agent's stderr until `sample {n} answered`, then stop reading
/// and wait until the runtime's request count stands still: the agent is
/// blocked on its full stderr pipe between two samples. The count then.
fn hold_mid_batch(stderr: &mut BufReader<ChildStderr>, n: usize, metrics: &str) -> u64 {
    let mut seen = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the agent ended before sample {n}: {seen}"
        );
        if line.contains(&format!("sample {n} answered")) {
            break;
        }
        seen.push_str(&line);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = metric(metrics, "realm_runtime_requests_total");
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = metric(metrics, "realm_runtime_requests_total");
        if now == last {
            assert!(
                now < (360 * COPIES) as u64,
                "the agent finished the batch before it could be held ({now} requests)"
            );
            return now;
        }
        assert!(Instant::now() < deadline, "the agent never blocked");
        last = now;
    }
}

/// The rest of the agent's stderr, read on a thread (so it never blocks).
fn drain(stderr: BufReader<ChildStderr>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut rest = String::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_string(&mut rest);
        // The per-sample debug lines are noise in a failure message.
        rest.lines()
            .filter(|l| !(l.contains("DEBUG") && l.ends_with(" answered")))
            .map(|l| format!("{l}\n"))
            .collect()
    })
}

#[test]
fn a_batch_survives_a_runtime_restart_and_a_runtime_that_stays_down_gives_partial_results() {
    let w = World::new("restart");
    let (mut runtime, addr, metrics) = w.runtime("127.0.0.1:0");

    // 1. The runtime is killed mid-batch and restarted on the same address.
    let mut agent = w.infer(&addr, &["--retries", "6", "--retry-max-secs", "1"]);
    let mut stderr = BufReader::new(agent.stderr.take().unwrap());
    let answered_before = hold_mid_batch(&mut stderr, 1000, &metrics);
    runtime.kill();
    let (runtime2, addr2, metrics2) = w.runtime(&addr);
    assert_eq!(addr2, addr);
    let rest = drain(stderr);
    let out = agent.wait_with_output().unwrap();
    let err = rest.join().unwrap();
    assert!(out.status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["samples"].as_u64(), Some(3600), "{err}");
    assert_eq!(report["correct"].as_u64(), Some(3240), "{err}");
    let resumed_at: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("resuming the batch at sample "))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line in {err}"));
    // Every sample the first runtime answered was kept; the new runtime
    // answered each of the others exactly once.
    assert_eq!(resumed_at, answered_before, "{err}");
    assert_eq!(
        metric(&metrics2, "realm_runtime_requests_total"),
        3600 - resumed_at,
        "{err}"
    );

    // 2. The runtime is killed mid-batch and stays down: the answered part
    // is printed, exit status 4, and stderr says how far it got and why.
    let mut agent = w.infer(&addr, &["--retries", "2", "--retry-max-secs", "0.2"]);
    let mut stderr = BufReader::new(agent.stderr.take().unwrap());
    let answered = hold_mid_batch(&mut stderr, 500, &metrics2);
    drop(runtime2);
    let rest = drain(stderr);
    let out = agent.wait_with_output().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(out.status.code(), Some(4), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let already = 3600 - resumed_at;
    assert_eq!(
        report["samples"].as_u64(),
        Some(answered - already),
        "{err}"
    );
    assert!(
        err.contains(&format!("answered {} of 3600 samples", answered - already)),
        "{err}"
    );
    assert!(err.contains("retry 2 of 2"), "{err}");
    assert!(err.contains("giving up"), "{err}");
}

#[test]
fn a_runtime_that_fails_verification_is_not_tried_again() {
    let w = World::new("unverified");
    let (_runtime, addr, metrics) = w.runtime("127.0.0.1:0");
    let other = hex::encode([7u8; 32]);
    let agent = w.infer(
        &addr,
        &[
            "--runtime-measurement",
            &other,
            "--retries",
            "5",
            "--retry-max-secs",
            "0.1",
        ],
    );
    let out = agent.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not an acceptable runtime"), "{err}");
    assert!(
        !err.contains("retry"),
        "a refused runtime was retried: {err}"
    );
    assert!(out.stdout.is_empty(), "nothing was answered");
    // The runtime saw exactly one handshake fail (our alert), no second try.
    assert_eq!(
        metric(&metrics, "realm_runtime_attestation_failures_total"),
        1
    );
    assert_eq!(metric(&metrics, "realm_runtime_requests_total"), 0);
}
