//! Harness for the binaries' integration tests (and benches): start real
//! processes on loopback ports the OS picks, give each test its own
//! directory, set up a `certifier-service` with an INSECURE emulated platform
//! key and trusted measurements, and get identities admitted by it.
//!
//! Test-only: it panics on any setup failure (a failed setup is a failed
//! test), and it must never be a dependency of a shipped binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod flood;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

use attestation::atls::{Identity, PolicyAnchor};
use attestation::cca::{Curve, PlatformKey};
use attestation::certifier::client::Client;
use attestation::certifier::keys::SigningKey;
use attestation::certifier::policy::Role;
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    /// The next line the process printed on stdout (empty at end of output).
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        if let Some(out) = self.stdout.as_mut() {
            out.read_line(&mut line).unwrap();
        }
        line
    }

    /// Kill the process now and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `Some(exit code)` if the process has ended.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().unwrap().map(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start a server and read its "... listening on ADDR" line from stdout.
/// stderr goes to this process's stderr when `TESTKIT_SHOW_LOGS` is set.
pub fn spawn_server(mut cmd: Command) -> (Proc, String) {
    let stderr = if std::env::var_os("TESTKIT_SHOW_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
    let stdout = child.stdout.take().map(BufReader::new);
    let mut proc = Proc { child, stdout };
    let line = proc.read_line();
    assert!(
        line.contains("listening on"),
        "unexpected first line {line:?} from {cmd:?}"
    );
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    (proc, addr)
}

/// Run a command to completion.
pub fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

/// Its stdout, after asserting it succeeded (stderr in the panic message).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Another binary of the workspace, from the same target directory as
/// `this_bin` (a test's `env!("CARGO_BIN_EXE_...")`).
pub fn sibling_bin(this_bin: &str, name: &str) -> PathBuf {
    let p = Path::new(this_bin).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p {name}` (cargo test --workspace does)",
        p.display()
    );
    p
}

/// A fresh directory for one test, removed when dropped.
#[derive(Debug)]
pub struct TestDir {
    dir: PathBuf,
}

impl TestDir {
    /// `$TMP/<prefix>-<pid>-<name>`, emptied.
    pub fn new(prefix: &str, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A path inside it, as a string (for command lines).
    pub fn p(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Write `content` to `name` (an "image" whose SHA-512 is a party's
    /// measurement); returns its path.
    pub fn image(&self, name: &str, content: &[u8]) -> String {
        std::fs::write(self.dir.join(name), content).unwrap();
        self.p(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `certifier-service` with an INSECURE emulated platform key
/// (in `<dir>/platform.key.pem`) and its service dir in `<dir>/svc`.
#[derive(Debug)]
pub struct Certifier {
    /// The process.
    pub proc: Proc,
    /// Its address.
    pub addr: String,
    /// The emulated platform's public key.
    pub cpak: PlatformKey,
    /// `<dir>/platform.key.pem`.
    pub platform_key: PathBuf,
    /// `<dir>/svc/policy_cert.der`.
    pub policy_cert: PathBuf,
}

impl Certifier {
    /// Initialise a service dir trusting `(role, binary)` measurements and start it.
    pub fn start(certifier_bin: &Path, dir: &TestDir, trusted: &[(&str, String)]) -> Self {
        let (pem, cpak) = generate_platform_key_pem(Curve::P384).unwrap();
        let platform_key = dir.path().join("platform.key.pem");
        std::fs::write(&platform_key, pem).unwrap();
        let svc = dir.p("svc");
        ok(run(
            certifier_bin,
            &[
                "init",
                "--dir",
                &svc,
                "--insecure-emulated-platform",
                &platform_key.display().to_string(),
            ],
        ));
        for (role, bin) in trusted {
            ok(run(
                certifier_bin,
                &[
                    "policy", "trust", "--dir", &svc, "--role", role, "--binary", bin,
                ],
            ));
        }
        let mut c = Command::new(certifier_bin);
        c.args(["serve", "--dir", &svc, "--listen", "127.0.0.1:0"]);
        let (proc, addr) = spawn_server(c);
        Certifier {
            proc,
            addr,
            cpak,
            platform_key,
            policy_cert: dir.path().join("svc/policy_cert.der"),
        }
    }

    /// The policy certificate as a trust anchor.
    pub fn anchor(&self) -> PolicyAnchor {
        PolicyAnchor::from_certificate_der(&std::fs::read(&self.policy_cert).unwrap()).unwrap()
    }

    /// The signed policy the service serves, verified with its policy key.
    pub async fn policy(&self) -> attestation::certifier::policy::Policy {
        Client::new(self.addr.clone(), Duration::from_secs(10))
            .policy(self.anchor().key())
            .await
            .unwrap()
    }

    /// An emulated platform whose RIM is the SHA-512 of `image`.
    pub fn platform_measuring(&self, image: &Path) -> InsecureEmulatedPlatform {
        InsecureEmulatedPlatform::from_key_file(&self.platform_key)
            .unwrap()
            .measuring(image)
            .unwrap()
    }

    /// Get admitted as `role` with evidence measuring `image`.
    pub async fn admit(&self, image: &Path, role: Role) -> Identity {
        self.try_admit(image, role).await.unwrap()
    }

    /// Like [`Certifier::admit`], returning the refusal instead of panicking.
    pub async fn try_admit(
        &self,
        image: &Path,
        role: Role,
    ) -> Result<Identity, attestation::certifier::client::ClientError> {
        self.try_admit_with(&self.platform_measuring(image), role)
            .await
    }

    /// Get admitted as `role` with evidence from `platform` (e.g. one with
    /// its own instance id, to stand for another phone).
    pub async fn admit_with(&self, platform: &InsecureEmulatedPlatform, role: Role) -> Identity {
        self.try_admit_with(platform, role).await.unwrap()
    }

    async fn try_admit_with(
        &self,
        platform: &InsecureEmulatedPlatform,
        role: Role,
    ) -> Result<Identity, attestation::certifier::client::ClientError> {
        let (key, pkcs8) = SigningKey::generate_p256().unwrap();
        let cert = Client::new(self.addr.clone(), Duration::from_secs(10))
            .admit(platform, &key.public_key(), &role)
            .await?;
        Ok(Identity::new(cert, pkcs8))
    }
}

/// The `--keystore`/`--keystore-key` arguments for the provider keystore in `dir`.
pub fn keystore_args(dir: &TestDir) -> Vec<String> {
    vec![
        "--keystore".into(),
        dir.p("keys.json"),
        "--keystore-key".into(),
        dir.p("kek.bin"),
    ]
}

/// `model-provider task define --id TASK TERMS...` into `dir`'s keystore
/// (what `--federated-task TASK` needs before `serve` starts). Panics with
/// the tool's output if it fails.
pub fn define_task(provider_bin: &Path, dir: &TestDir, task: &str, terms: &[&str]) {
    let out = Command::new(provider_bin)
        .args(["task", "define", "--id", task])
        .args(terms)
        .args(keystore_args(dir))
        .output()
        .expect("running model-provider task define");
    assert!(
        out.status.success(),
        "model-provider task define failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The blob store URL of `dir`.
pub fn store_url(dir: &TestDir) -> String {
    format!("file://{}", dir.p("blobs"))
}

/// `model-provider seal` `model` as `id` into `dir`'s store and keystore,
/// with `extra` arguments (release rule, output policy); returns the bundle hash.
pub fn seal(provider_bin: &Path, dir: &TestDir, id: &str, model: &str, extra: &[&str]) -> String {
    let url = store_url(dir);
    let mut args: Vec<String> = ["seal", "--model", model, "--id", id, "--store", &url]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(keystore_args(dir));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(run(provider_bin, &args)).trim().to_string()
}

/// `model-provider serve` on the emulated platform, accepting emulated peers.
pub fn start_provider(provider_bin: &Path, dir: &TestDir, certifier: &Certifier) -> (Proc, String) {
    start_provider_with(provider_bin, dir, certifier, &[])
}

/// Like [`start_provider`], with `extra` arguments for `serve` (e.g.
/// `--fresh-evidence`, `--revocation-refresh-secs 1`) after the others.
pub fn start_provider_with(
    provider_bin: &Path,
    dir: &TestDir,
    certifier: &Certifier,
    extra: &[&str],
) -> (Proc, String) {
    let mut p = Command::new(provider_bin);
    p.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--certifier",
        &certifier.addr,
    ]);
    p.arg("--policy-cert").arg(&certifier.policy_cert);
    p.args(["--platform", "insecure-emulated", "--platform-key"]);
    p.arg(&certifier.platform_key).arg("--allow-insecure-peers");
    p.args(keystore_args(dir)).args(extra);
    spawn_server(p)
}

/// `realm-runtime serve` on OS-chosen loopback ports (service and metrics),
/// admitted through `certifier` on the emulated platform, fetching keys from
/// the provider at `provider_addr` and bundles from `dir`'s store, accepting
/// emulated peers. Add models or federated flags, then [`spawn_server`].
pub fn runtime_command(
    runtime_bin: &Path,
    dir: &TestDir,
    certifier: &Certifier,
    provider_addr: &str,
) -> Command {
    runtime_command_on(runtime_bin, dir, certifier, provider_addr, "127.0.0.1:0")
}

/// [`runtime_command`] listening on `listen` (to restart a runtime on the
/// address its clients know).
pub fn runtime_command_on(
    runtime_bin: &Path,
    dir: &TestDir,
    certifier: &Certifier,
    provider_addr: &str,
    listen: &str,
) -> Command {
    let mut r = Command::new(runtime_bin);
    r.args(["serve", "--listen", listen, "--metrics", "127.0.0.1:0"]);
    r.args(["--certifier", &certifier.addr, "--provider", provider_addr]);
    r.arg("--policy-cert").arg(&certifier.policy_cert);
    r.args([
        "--store",
        &store_url(dir),
        "--platform",
        "insecure-emulated",
    ]);
    r.arg("--platform-key").arg(&certifier.platform_key);
    r.arg("--allow-insecure-peers");
    r
}

/// An attested TLS connection to `addr` as `who`, requiring the server to
/// hold `server_role` (emulated platforms accepted), after the hello.
pub async fn connect(
    addr: &str,
    anchor: PolicyAnchor,
    who: &Identity,
    server_role: Role,
    max_frame: usize,
) -> std::io::Result<protocol::Framed<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    use attestation::atls::{PeerRequirement, RevocationList, client_config, server_name};
    let req = PeerRequirement::roles([server_role])
        .map_err(std::io::Error::other)?
        .allow_insecure_emulated_platform();
    let cfg =
        client_config(who, anchor, req, RevocationList::new()).map_err(std::io::Error::other)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(server_name(), tcp)
        .await?;
    let mut framed = protocol::Framed::with_limits(
        tls,
        protocol::Limits {
            max_frame,
            max_message: max_frame,
            ..protocol::Limits::default()
        },
    );
    framed
        .client_hello("device", "testkit")
        .await
        .map_err(std::io::Error::other)?;
    Ok(framed)
}

/// A file in the workspace's shared `testdata/models/` (ONNX models and the
/// digits data; provenance in its `PROVENANCE.md`).
pub fn model_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/models")
        .join(name)
}
