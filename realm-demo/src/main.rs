//! `realm-demo`: the whole system end to end on one machine. It starts
//! `certifier-service`, `model-provider`, `realm-runtime` and several
//! `device-agent`s as real processes on loopback with the INSECURE emulated
//! platform, provisions the bundled digits model, runs remote and on-device
//! inference and federated-learning rounds, then plays the attacks and says
//! what was refused and why. Exit status 0 only if every expected outcome
//! happened.
//!
//! Must never: present the emulated platform as anything but INSECURE, or
//! report an attack as refused without having seen the refusal.

mod attacks;
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use attestation::atls::PolicyAnchor;
use clap::Parser;
use serde_json::{Value, json};

use crate::procs::{Proc, last_error, ok, run, serve};

#[derive(Parser, Debug)]
#[command(
    name = "realm-demo",
    version,
    about = "Run every party as a real process on loopback (INSECURE emulated CCA platform): inference, federated learning, attacks",
    after_help = "Example: cargo run --release -p realm-demo -- --json"
)]
struct Cli {
    /// Print the summary as one JSON object (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Honest devices in federated learning.
    #[arg(long, default_value_t = 5)]
    devices: usize,
    /// Federated rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Working directory (default: a new one under the system temp dir, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the working directory (logs, stores) after the run.
    #[arg(long)]
    keep: bool,
    /// Directory with digits_cnn.onnx, digits_train.csv and digits_test.csv.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/models"))]
    data: PathBuf,
}

/// The demo's state: paths and running servers.
struct Demo {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    certifier: String,
    provider: String,
    runtime: String,
    bundle: String,
    _servers: Vec<Proc>,
}

impl Demo {
    /// The policy certificate as the trust anchor every party uses.
    fn anchor(&self) -> Result<PolicyAnchor> {
        Ok(PolicyAnchor::from_certificate_der(&std::fs::read(
            self.p("svc/policy_cert.der"),
        )?)?)
    }

    fn b(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
    fn p(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
    fn realm(&self, state: &str) -> Vec<String> {
        vec![
            "--state".into(),
            self.p(state),
            "--platform".into(),
            "insecure-emulated".into(),
            "--platform-key".into(),
            self.p("cpak.key.pem"),
        ]
    }
    fn admission(&self) -> Vec<String> {
        vec![
            "--certifier".into(),
            self.certifier.clone(),
            "--policy-cert".into(),
            self.p("svc/policy_cert.der"),
            "--allow-insecure-peers".into(),
        ]
    }
    fn agent(&self, bin: &Path, args: &[&str], state: &str) -> Result<std::process::Output> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.realm(state));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run(bin, &all)
    }
    fn agent_ok(&self, args: &[&str], state: &str) -> Result<String> {
        let out = self.agent(&self.b("device-agent"), args, state)?;
        if !out.status.success() {
            bail!("device-agent {}: {}", args.join(" "), last_error(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }
    /// A "rebuilt" copy of binary `name`: `marker` appended, so it runs the
    /// same but measures differently (as any modified build would).
    fn rebuild(&self, name: &str, marker: &[u8]) -> Result<PathBuf> {
        let copy = self.dir.join(format!("{name}-rebuilt"));
        let mut bytes = std::fs::read(self.b(name))?;
        bytes.push(b'\n');
        bytes.extend_from_slice(marker);
        std::fs::write(&copy, bytes)?;
        std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(copy)
    }
    fn data(&self, name: &str) -> String {
        self.data.join(name).display().to_string()
    }
}

fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Start everything and provision the model.
fn setup(bin: PathBuf, dir: PathBuf, data: PathBuf, devices: usize, rounds: usize) -> Result<Demo> {
    let cert = bin.join("certifier-service");
    let p = |n: &str| dir.join(n).display().to_string();
    ok(
        &bin.join("attest"),
        &[
            "platform-key",
            "generate",
            "--out",
            &p("cpak.key.pem"),
            "--public-out",
            &p("cpak.pub.pem"),
        ],
    )?;
    ok(
        &cert,
        &[
            "init",
            "--dir",
            &p("svc"),
            "--insecure-emulated-platform",
            &p("cpak.pub.pem"),
        ],
    )?;
    for (role, b) in [
        ("provider", "model-provider"),
        ("runtime", "realm-runtime"),
        ("device", "device-agent"),
    ] {
        let path = bin.join(b).display().to_string();
        ok(
            &cert,
            &[
                "policy",
                "trust",
                "--dir",
                &p("svc"),
                "--role",
                role,
                "--binary",
                &path,
            ],
        )?;
    }
    let mut servers = Vec::new();
    let mut c = Command::new(&cert);
    c.args(["serve", "--dir", &p("svc"), "--listen", "127.0.0.1:0"]);
    let (s, certifier) = serve(c, &dir.join("certifier.log"))?;
    servers.push(s);

    let model = data.join("digits_cnn.onnx").display().to_string();
    let ks = [
        "--keystore".to_string(),
        p("keys.json"),
        "--keystore-key".to_string(),
        p("kek.bin"),
    ];
    let store = format!("file://{}", p("blobs"));
    let mut seal: Vec<String> = [
        "seal", "--model", &model, "--id", "digits", "--store", &store,
    ]
    .map(String::from)
    .to_vec();
    seal.extend(ks.iter().cloned());
    seal.extend(
        [
            "--allow-role",
            "runtime",
            "--allow-role",
            "device",
            "--use",
            "remote-inference",
            "--use",
            "on-device",
            "--output",
            "label",
        ]
        .map(String::from),
    );
    let seal: Vec<&str> = seal.iter().map(String::as_str).collect();
    let bundle = ok(&bin.join("model-provider"), &seal)?.trim().to_string();

    // The federated task's terms are the provider's: the runtime's host
    // cannot change them (its `--fl-*` flags may only narrow them).
    let clients = (devices + 1).to_string();
    let rounds_text = rounds.to_string();
    let mut define: Vec<&str> = vec![
        "task",
        "define",
        "--id",
        "digits-fl",
        "--rule",
        "median",
        "--clip",
        "2",
        "--min-clients",
        &clients,
        "--max-clients",
        &clients,
        // The task ends after `rounds`: a device's join after the last round
        // gets the final global model instead of a round that nobody finishes.
        "--rounds",
        &rounds_text,
        // INSECURE: every device of the demo runs on the emulated platform.
        "--allow-insecure-devices",
    ];
    define.extend(ks.iter().map(String::as_str));
    ok(&bin.join("model-provider"), &define)?;

    let mut c = Command::new(bin.join("model-provider"));
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--certifier",
        &certifier,
    ]);
    c.args([
        "--policy-cert",
        &p("svc/policy_cert.der"),
        "--platform",
        "insecure-emulated",
    ]);
    c.args([
        "--platform-key",
        &p("cpak.key.pem"),
        "--allow-insecure-peers",
    ]);
    c.args(["--federated-task", "digits-fl"]).args(&ks);
    let (s, provider) = serve(c, &dir.join("provider.log"))?;
    servers.push(s);

    let mut c = Command::new(bin.join("realm-runtime"));
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    c.args(["--certifier", &certifier, "--provider", &provider]);
    c.args([
        "--policy-cert",
        &p("svc/policy_cert.der"),
        "--store",
        &store,
    ]);
    c.args([
        "--platform",
        "insecure-emulated",
        "--platform-key",
        &p("cpak.key.pem"),
    ]);
    c.args([
        "--allow-insecure-peers",
        "--model",
        &format!("digits={bundle}"),
    ]);
    c.args(["--fl-task", "digits-fl", "--fl-deadline-secs", "60"]);
    let (s, runtime) = serve(c, &dir.join("runtime.log"))?;
    servers.push(s);
    Ok(Demo {
        bin,
        dir,
        data,
        certifier,
        provider,
        runtime,
        bundle,
        _servers: servers,
    })
}

fn load_rows(path: &str) -> Result<(Vec<Vec<f32>>, Vec<u32>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Vec<f32> = line
            .split(',')
            .map(|c| c.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("{path}: not numbers"))?;
        anyhow::ensure!(v.len() == 65, "{path}: expected 65 columns");
        x.push(v[..64].to_vec());
        y.push(v[64] as u32);
    }
    Ok((x, y))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match demo(&cli).await {
        Ok((summary, all_ok)) => {
            if cli.json {
                println!("{summary}");
            }
            if all_ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("realm-demo: some expected outcome did NOT happen (see above)");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("realm-demo failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn demo(cli: &Cli) -> Result<(Value, bool)> {
    let started = Instant::now();
    let j = cli.json;
    say(
        j,
        "realm-demo — INSECURE emulated CCA platform: every token here is signed with a key file",
    );
    say(
        j,
        "anyone could copy; this shows the flow, not hardware protection.\n",
    );
    let bin = procs::binaries()?;
    let (dir, temporary) = match &cli.work_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("realm-demo-{}", std::process::id())),
            !cli.keep,
        ),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = stages(cli, bin, dir.clone()).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        say(j, &format!("working directory kept: {}", dir.display()));
    }
    let (mut summary, all_ok) = result?;
    summary["seconds"] = json!(started.elapsed().as_secs_f64());
    Ok((summary, all_ok))
}

async fn stages(cli: &Cli, bin: PathBuf, dir: PathBuf) -> Result<(Value, bool)> {
    let j = cli.json;
    let mut all_ok = true;
    let mut check = |name: &str, passed: bool, detail: String| {
        all_ok &= passed;
        say(
            j,
            &format!(
                "  [{}] {name}: {detail}",
                if passed { " ok " } else { "FAIL" }
            ),
        );
        json!({ "check": name, "ok": passed, "detail": detail })
    };

    say(
        j,
        "1. starting certifier-service, model-provider (sealing digits_cnn), realm-runtime",
    );
    let d = setup(bin, dir, cli.data.clone(), cli.devices, cli.rounds)?;
    say(
        j,
        &format!(
            "   certifier {}, provider {}, runtime {}, bundle {}",
            d.certifier,
            d.provider,
            d.runtime,
            &d.bundle[..16]
        ),
    );

    say(
        j,
        "2. remote inference: a device sends the digits test set to the runtime",
    );
    let test_csv = d.data("digits_test.csv");
    let handle = d.agent_ok(
        &[
            "import",
            "--csv",
            &test_csv,
            "--labels",
            "last",
            "--sample-shape",
            "1,8,8",
        ],
        "device0",
    )?;
    let handle = handle.trim().to_string();
    let mut args = vec![
        "infer",
        "--runtime",
        &d.runtime,
        "--model",
        "digits",
        "--handle",
        &handle,
        "--json",
    ];
    let adm = d.admission();
    args.extend(adm.iter().map(String::as_str));
    let remote: Value = serde_json::from_str(d.agent_ok(&args, "device0")?.trim())?;
    let remote_acc = remote["accuracy"].as_f64().unwrap_or(0.0);
    let mut checks = vec![check(
        "remote inference accuracy",
        remote_acc >= 0.94,
        format!(
            "{}/360 = {remote_acc:.4} (expected 340/360); latency p50 {:.3} ms, p99 {:.3} ms",
            remote["correct"],
            remote["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            remote["latency_ms"]["p99"].as_f64().unwrap_or(0.0)
        ),
    )];

    say(
        j,
        "3. on-device inference: the device fetches the model, re-seals it to its realm, runs it",
    );
    let store = format!("file://{}", d.p("blobs"));
    let mut fetch = vec![
        "fetch-model",
        "--provider",
        &d.provider,
        "--store",
        &store,
        "--model",
        "digits",
    ];
    fetch.extend(adm.iter().map(String::as_str));
    d.agent_ok(&fetch, "device0")?;
    let local: Value = serde_json::from_str(
        d.agent_ok(
            &[
                "infer", "--local", "--model", "digits", "--handle", &handle, "--json",
            ],
            "device0",
        )?
        .trim(),
    )?;
    let local_acc = local["accuracy"].as_f64().unwrap_or(0.0);
    checks.push(check(
        "on-device inference accuracy",
        local_acc >= 0.94,
        format!(
            "{}/360 = {local_acc:.4}; latency p50 {:.3} ms",
            local["correct"],
            local["latency_ms"]["p50"].as_f64().unwrap_or(0.0)
        ),
    ));

    say(
        j,
        &format!(
            "4. federated learning: {} devices + 1 poisoning device, {} rounds, median rule",
            cli.devices, cli.rounds
        ),
    );
    let train = std::fs::read_to_string(d.data("digits_train.csv"))?;
    let lines: Vec<&str> = train.lines().collect();
    let shares = cli.devices + 1;
    let mut children = Vec::new();
    for i in 0..cli.devices {
        let part: Vec<&str> = lines.iter().skip(i).step_by(shares).copied().collect();
        let csv = d.p(&format!("share{i}.csv"));
        std::fs::write(&csv, part.join("\n"))?;
        let state = format!("fl-device{i}");
        let h = d.agent_ok(&["import", "--csv", &csv, "--labels", "last"], &state)?;
        let e = d.agent_ok(&["import", "--csv", &test_csv, "--labels", "last"], &state)?;
        let mut c = tokio::process::Command::new(d.b("device-agent"));
        c.args([
            "train",
            "--runtime",
            &d.runtime,
            "--task",
            "digits-fl",
            "--json",
        ]);
        c.args([
            "--rounds",
            &(cli.rounds + 1).to_string(),
            "--handle",
            h.trim(),
            "--eval-handle",
            e.trim(),
        ]);
        c.args(d.admission()).args(d.realm(&state));
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push(c.spawn()?);
    }
    let poison_rows: Vec<String> = lines
        .iter()
        .skip(cli.devices)
        .step_by(shares)
        .map(|s| s.to_string())
        .collect();
    let poison_csv = d.p("poison.csv");
    std::fs::write(&poison_csv, poison_rows.join("\n"))?;
    let anchor = d.anchor()?;
    let (cpak, agent_bin) = (d.p("cpak.key.pem"), d.b("device-agent"));
    let at = attacks::Where {
        runtime: &d.runtime,
        certifier: &d.certifier,
        anchor,
        platform_key: Path::new(&cpak),
        image: &agent_bin,
    };
    let poisoner = attacks::poison_rounds(at, "digits-fl", cli.rounds, load_rows(&poison_csv)?);
    let accepted_poison = poisoner.await?;
    let mut fl_acc = Vec::new();
    for child in children {
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "a federated device failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())?;
        fl_acc.push(v["eval_accuracy"].as_f64().unwrap_or(0.0));
    }
    let fl_final = fl_acc.first().copied().unwrap_or(0.0);
    checks.push(check(
        "federated learning under poisoning",
        fl_final >= 0.80,
        format!(
            "global model after {} rounds: test accuracy {fl_final:.4}; the poisoning device's {accepted_poison} updates (−10×, 10× claimed samples) were accepted and outvoted by the median",
            cli.rounds
        ),
    ));

    say(j, "5. attacks");
    // a. A rebuilt runtime (one byte appended: another measurement) asks to be admitted to get keys.
    let rebuilt = d.rebuild("realm-runtime", b"rebuilt with a backdoor")?;
    let out = tokio::process::Command::new(&rebuilt)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--certifier",
            &d.certifier,
        ])
        .args([
            "--provider",
            &d.provider,
            "--policy-cert",
            &d.p("svc/policy_cert.der"),
            "--store",
            &store,
        ])
        .args([
            "--platform",
            "insecure-emulated",
            "--platform-key",
            &d.p("cpak.key.pem"),
            "--allow-insecure-peers",
        ])
        .args(["--model", &format!("digits={}", d.bundle)])
        .output()
        .await?;
    let why = last_error(&out);
    checks.push(check(
        "rebuilt (unmeasured) runtime asks for the model key",
        !out.status.success() && why.contains("refused"),
        if out.status.success() {
            "it was ADMITTED".into()
        } else {
            format!("refused before any key request: {why}")
        },
    ));

    // b. A tampered bundle in the store.
    let tampered = d.dir.join("blobs-tampered");
    std::fs::create_dir_all(&tampered)?;
    let src = d.dir.join("blobs").join(&d.bundle);
    let mut sealed = std::fs::read(&src)?;
    let mid = sealed.len() / 2;
    sealed[mid] ^= 0x01;
    std::fs::write(tampered.join(&d.bundle), sealed)?;
    let tstore = format!("file://{}", tampered.display());
    let mut fetch = vec![
        "fetch-model",
        "--provider",
        &d.provider,
        "--store",
        &tstore,
        "--model",
        "digits",
    ];
    fetch.extend(adm.iter().map(String::as_str));
    let out = d.agent(&d.b("device-agent"), &fetch, "device-tamper")?;
    let why = last_error(&out);
    checks.push(check(
        "tampered bundle",
        !out.status.success(),
        if out.status.success() {
            "the tampered bundle was ACCEPTED".into()
        } else {
            format!("refused: {why}")
        },
    ));

    // c. Replayed evidence.
    let replay = attacks::replay_evidence(
        &d.certifier,
        Path::new(&d.p("cpak.key.pem")),
        &d.b("device-agent"),
    )
    .await;
    checks.push(match replay {
        Ok(code) => check(
            "replayed evidence token",
            true,
            format!("the second presentation was refused ({code})"),
        ),
        Err(e) => check("replayed evidence token", false, format!("{e:#}")),
    });

    // d. The emulated key claiming a real platform's implementation id.
    let forged = attacks::forged_platform(
        &d.certifier,
        &d.anchor()?,
        Path::new(&d.p("cpak.key.pem")),
        &d.b("device-agent"),
    )
    .await;
    checks.push(match forged {
        Ok(why) => check(
            "emulated key forging a real platform's implementation id",
            true,
            format!("admitted only as INSECURE; a strict peer refuses it: {why}"),
        ),
        Err(e) => check(
            "emulated key forging a real platform's implementation id",
            false,
            format!("{e:#}"),
        ),
    });

    // f. A network attacker cuts a revocation out of the signed policy, or
    //    replays the policy from before it. The revoked measurement is a
    //    throwaway build nobody runs.
    let revoked_build = d.rebuild("device-agent", b"a build revoked for the demo")?;
    let policy_attack = async {
        let client = attestation::certifier::client::Client::new(
            d.certifier.clone(),
            std::time::Duration::from_secs(10),
        );
        let before = client.policy_object_bytes().await?;
        let rim = attestation::platform::measure_file(&revoked_build)?.to_hex();
        ok(
            &d.b("certifier-service"),
            &[
                "policy",
                "revoke",
                "--dir",
                &d.p("svc"),
                "--measurement",
                &rim,
                "--reason",
                "demo: revoked build",
            ],
        )?;
        let after = client.policy_object_bytes().await?;
        attacks::tamper_with_policy(&d.anchor()?, &before, &after)
    }
    .await;
    match policy_attack {
        Ok((stripped, replayed)) => {
            checks.push(check(
                "signed policy with a revocation cut out in transit",
                true,
                format!("refused: {stripped}"),
            ));
            checks.push(check(
                "older signed policy replayed in transit",
                true,
                format!("refused: {replayed}"),
            ));
        }
        Err(e) => checks.push(check("tampered signed policy", false, format!("{e:#}"))),
    }

    // e. A device build the policy does not trust.
    let rogue = d.rebuild("device-agent", b"exfiltrating build")?;
    let mut args = vec![
        "infer",
        "--runtime",
        &d.runtime,
        "--model",
        "digits",
        "--csv",
        &test_csv,
        "--sample-shape",
        "1,8,8",
    ];
    args.extend(adm.iter().map(String::as_str));
    let out = d.agent(&rogue, &args, "device-rogue")?;
    let why = last_error(&out);
    checks.push(check(
        "untrusted device build asks for inference",
        !out.status.success() && why.contains("refused"),
        if out.status.success() {
            "it was SERVED".into()
        } else {
            format!("refused: {why}")
        },
    ));

    let summary = json!({
        "insecure_emulated_platform": true,
        "remote_inference": remote,
        "on_device_inference": { "accuracy": local_acc, "correct": local["correct"], "latency_ms": local["latency_ms"] },
        "federated": { "devices": cli.devices, "poisoning_devices": 1, "rounds": cli.rounds, "rule": "median",
                       "final_test_accuracy": fl_final, "poisoned_updates_accepted": accepted_poison },
        "checks": checks,
        "ok": all_ok,
    });
    let mut summary = summary;
    // Per-sample outputs are long; the summary keeps the figures.
    if let Some(r) = summary["remote_inference"].as_object_mut() {
        r.remove("outputs");
        r.remove("predictions");
    }
    say(
        j,
        &format!(
            "\n{}",
            if all_ok {
                "every stage ran and every attack was refused"
            } else {
                "SOME CHECKS FAILED"
            }
        ),
    );
    Ok((summary, all_ok))
}
