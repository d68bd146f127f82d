//! `certifier-service`: the policy-keyed Certifier Service.
//!
//! It holds the policy key, checks each party's CCA evidence against the
//! signed policy, and issues short-lived admission certificates. It speaks
//! the Certifier Framework's framing and messages. It must never admit a
//! measurement the policy does not list for the requested role, never reuse
//! a nonce, and never trust the emulated platform unless `init` was told to.

mod audit;
mod handler;
mod server;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use attestation::cca::PlatformKey;
use attestation::certifier::client::unix_now;
use attestation::certifier::keys::PublicKey;
use attestation::certifier::policy::Role;
use attestation::platform::danger::InsecureEmulatedPlatform;
use clap::{Parser, Subcommand};

use crate::handler::{Service, Settings};
use crate::server::{Limits, serve};
use crate::store::ServiceDir;

const EXAMPLES: &str = "\
Examples (a laptop demo with the INSECURE emulated platform):
  attest platform-key generate --out cpak.key.pem --public-out cpak.pub.pem
  certifier-service init --dir svc --insecure-emulated-platform cpak.pub.pem
  certifier-service policy trust --dir svc --role runtime --binary target/release/realm-runtime
  certifier-service policy show --dir svc
  certifier-service serve --dir svc --listen 127.0.0.1:8123

Taking over a Certifier Framework deployment (its apps keep their embedded policy key):
  certifier-service import-framework --dir svc --policy-key policy_key_file.bin \\
      --policy-cert policy_cert_file.bin --policy policy.bin --allow-no-freshness";

#[derive(Parser, Debug)]
#[command(
    name = "certifier-service",
    version,
    about = "Admit parties by their CCA measurements and issue admission certificates",
    long_about = "Admit parties by their CCA measurements and issue admission certificates.\n\n\
        A party asks for a nonce, answers with a CCA attestation token whose realm challenge is\n\
        SHA-512(nonce || its TLS auth public key), and names the role it wants. The service\n\
        verifies the token against the platform keys in the signed policy and admits the party\n\
        only if its realm initial measurement (RIM) is trusted for that role. It then signs an\n\
        X.509 admission certificate for the auth key with the policy key.",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a service directory: policy key, policy certificate, empty policy.
    Init {
        /// Directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// Trust the INSECURE emulated platform with this key (its public PEM,
        /// or the private key file). The policy is then marked INSECURE.
        #[arg(long, value_name = "KEYFILE")]
        insecure_emulated_platform: Option<PathBuf>,
    },
    /// Create a service directory from a Certifier Framework deployment's
    /// files, so framework apps are admitted with the policy key they embed.
    ///
    /// Reads the framework's policy key (`policy_key_file.bin`, a private RSA
    /// key_message), policy certificate (`policy_cert_file.bin`, DER) and
    /// policy (`policy.bin`, a signed_claim_sequence). Every claim must verify
    /// with that key now; statements this service does not understand are
    /// left out and listed.
    ImportFramework {
        /// Directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// The framework's policy_key_file.bin.
        #[arg(long, value_name = "FILE")]
        policy_key: PathBuf,
        /// The framework's policy_cert_file.bin.
        #[arg(long, value_name = "FILE")]
        policy_cert: PathBuf,
        /// The framework's policy.bin.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Accept the framework's nonce-less evidence from the imported
        /// platform keys. Such evidence can be replayed byte for byte while its
        /// validity windows last; every admission on it is audited as
        /// `no-freshness`. Without this flag framework apps are refused.
        #[arg(long)]
        allow_no_freshness: bool,
    },
    /// Change or show the policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Serve admission requests.
    Serve {
        /// Service directory.
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on (port 0 picks a free port; the chosen address is printed).
        #[arg(long, default_value = "127.0.0.1:8123")]
        listen: String,
        /// Lifetime of admission certificates, in minutes.
        #[arg(long, default_value_t = 480)]
        cert_validity_minutes: i64,
        /// Lifetime of nonces, in seconds.
        #[arg(long, default_value_t = 60)]
        nonce_ttl_secs: i64,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Trust a realm measurement for a role (runtime, device, provider, or a custom name).
    Trust {
        /// Service directory.
        #[arg(long)]
        dir: PathBuf,
        /// Role the measurement is trusted for.
        #[arg(long)]
        role: String,
        /// The RIM in hex.
        #[arg(long, conflicts_with = "binary", required_unless_present = "binary")]
        measurement: Option<String>,
        /// Measure this file the way the emulated platform does (SHA-512).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Also require this realm personalization value (64 bytes, hex).
        #[arg(long)]
        personalization: Option<String>,
    },
    /// Revoke a measurement for every role, permanently.
    Revoke {
        /// Service directory.
        #[arg(long)]
        dir: PathBuf,
        /// The RIM in hex.
        #[arg(long)]
        measurement: String,
        /// Why (recorded in the policy).
        #[arg(long, default_value = "revoked by operator")]
        reason: String,
    },
    /// Trust a real CCA platform key (CPAK, PEM or JWK).
    ///
    /// Keys whose private half is public (the TF-M tools test CPAK that signs
    /// TF-A's QEMU/FVP sample platform token, Veraison's test IAK, Islet's
    /// HES dummy CPAK, ...) are refused: anyone can forge tokens with them.
    /// For a QEMU or FVP test setup, add --insecure-test-key; every admission
    /// through that key is then marked INSECURE, and peers refuse it unless
    /// they allow INSECURE peers. For real hardware, take the CPAK from the
    /// platform's endorsements (e.g. its vendor's CoRIM).
    TrustPlatform {
        /// Service directory.
        #[arg(long)]
        dir: PathBuf,
        /// The platform public key.
        #[arg(long)]
        cpak: PathBuf,
        /// Do not check firmware components against reference values.
        #[arg(long)]
        skip_sw_components: bool,
        /// Trust this key knowing that it is public test material (or that
        /// you consider it so): admissions through it are marked INSECURE.
        #[arg(long)]
        insecure_test_key: bool,
    },
    /// Add a firmware reference value for one platform's component.
    ///
    /// A token from that platform is then admitted only if every component it
    /// reports matches a reference value for its type, and every required
    /// type is present.
    TrustComponent {
        /// Service directory.
        #[arg(long)]
        dir: PathBuf,
        /// The platform key (CPAK, PEM or JWK) whose firmware this is.
        #[arg(long)]
        cpak: PathBuf,
        /// The component's measurement type as the token reports it (e.g.
        /// `BL2`, `RMM`), or `#N` for the N-th component when it is untyped.
        #[arg(long = "type")]
        slot: String,
        /// Component measurement in hex.
        #[arg(long)]
        measurement: String,
        /// A token may lack this component (default: it is required).
        #[arg(long)]
        optional: bool,
    },
    /// Print the policy as JSON.
    Show {
        /// Service directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn hex_arg(name: &str, value: &str) -> Result<Vec<u8>> {
    let bytes = hex::decode(value.trim()).with_context(|| format!("--{name} is not hex"))?;
    if !(16..=64).contains(&bytes.len()) {
        bail!(
            "--{name} must be 16 to 64 bytes (a SHA-256 or SHA-512 digest); got {}",
            bytes.len()
        );
    }
    Ok(bytes)
}

fn platform_public_key(path: &Path) -> Result<PublicKey> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let key = match PlatformKey::from_file_bytes(&bytes) {
        Ok(k) => k,
        // The emulator's private key file also names its public key.
        Err(_) => InsecureEmulatedPlatform::from_key_file(path)
            .with_context(|| {
                format!(
                    "{} is neither a public key nor an emulated platform key",
                    path.display()
                )
            })?
            .platform_public_key()
            .clone(),
    };
    Ok(match key.curve() {
        attestation::cca::Curve::P256 => PublicKey::P256(key.point().to_vec()),
        attestation::cca::Curve::P384 => PublicKey::P384(key.point().to_vec()),
    })
}

fn run(command: Command) -> Result<()> {
    let now = unix_now();
    match command {
        Command::Init {
            dir,
            insecure_emulated_platform,
        } => {
            let platform = insecure_emulated_platform
                .as_deref()
                .map(platform_public_key)
                .transpose()?;
            let insecure = platform.is_some();
            ServiceDir::init(&dir, platform, now)?;
            println!(
                "created {} (policy key, policy certificate, policy)",
                dir.display()
            );
            if insecure {
                println!(
                    "INSECURE: the policy trusts the emulated CCA platform; for tests and demos only"
                );
            }
        }
        Command::ImportFramework {
            dir,
            policy_key,
            policy_cert,
            policy,
            allow_no_freshness,
        } => {
            let read = |p: &Path| {
                // These files are a few kilobytes; refuse anything absurd before reading it.
                let len = std::fs::metadata(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .len();
                if len > 1 << 20 {
                    bail!(
                        "{} is {len} bytes; a framework file is a few KiB",
                        p.display()
                    );
                }
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))
            };
            let report = ServiceDir::import_framework(
                &dir,
                &read(&policy_key)?,
                &read(&policy_cert)?,
                &read(&policy)?,
                allow_no_freshness,
                now,
            )?;
            println!(
                "created {} from the framework's files: {} trusted measurement(s), {} platform key(s)",
                dir.display(),
                report.measurements,
                report.platforms
            );
            for s in &report.skipped {
                println!("left out (not understood by this service): {s}");
            }
            if allow_no_freshness {
                println!(
                    "nonce-less framework evidence is ACCEPTED from those platform keys: it can be replayed while its windows last; admissions are audited as no-freshness"
                );
            } else {
                println!(
                    "nonce-less framework evidence is refused (re-run with --allow-no-freshness to admit the framework's apps)"
                );
            }
        }
        Command::Policy(PolicyCommand::Trust {
            dir,
            role,
            measurement,
            binary,
            personalization,
        }) => {
            let role = Role::new(&role)?;
            let m = match (measurement, binary) {
                (Some(h), _) => hex_arg("measurement", &h)?,
                (None, Some(path)) => attestation::platform::measure_file(&path)?
                    .as_bytes()
                    .to_vec(),
                (None, None) => bail!("give --measurement HEX or --binary PATH"),
            };
            let rpv = match personalization {
                Some(h) => {
                    let b = hex::decode(h.trim()).context("--personalization is not hex")?;
                    if b.len() != 64 {
                        bail!(
                            "--personalization must be 64 bytes (128 hex digits); got {}",
                            b.len()
                        );
                    }
                    Some(b)
                }
                None => None,
            };
            let added = ServiceDir::open(&dir)?.trust(&role, &m, rpv.as_deref(), now)?;
            let verb = if added {
                "now trusted"
            } else {
                "was already trusted"
            };
            println!("measurement {} {verb} for role {role}", hex::encode(&m));
        }
        Command::Policy(PolicyCommand::Revoke {
            dir,
            measurement,
            reason,
        }) => {
            let m = hex_arg("measurement", &measurement)?;
            ServiceDir::open(&dir)?.revoke(&m, &reason, now)?;
            println!("measurement {} revoked: {reason}", hex::encode(&m));
        }
        Command::Policy(PolicyCommand::TrustPlatform {
            dir,
            cpak,
            skip_sw_components,
            insecure_test_key,
        }) => {
            let key = platform_public_key(&cpak)?;
            let known = ServiceDir::open(&dir)?
                .trust_platform(&key, skip_sw_components, insecure_test_key, now)
                .with_context(|| format!("trusting {}", cpak.display()))?;
            match (known, insecure_test_key) {
                (Some(m), _) => println!(
                    "INSECURE: platform key {} trusted as test material ({}); every admission through it is marked INSECURE",
                    cpak.display(),
                    m.name
                ),
                (None, true) => println!(
                    "INSECURE: platform key {} trusted as a test key; every admission through it is marked INSECURE",
                    cpak.display()
                ),
                (None, false) => println!("platform key {} trusted", cpak.display()),
            }
        }
        Command::Policy(PolicyCommand::TrustComponent {
            dir,
            cpak,
            slot,
            measurement,
            optional,
        }) => {
            let m = hex_arg("measurement", &measurement)?;
            let key = platform_public_key(&cpak)?;
            ServiceDir::open(&dir)?.trust_component(&key, &slot, &m, optional, now)?;
            println!(
                "platform component {slot} = {} trusted for {} ({})",
                hex::encode(&m),
                cpak.display(),
                if optional { "optional" } else { "required" }
            );
        }
        Command::Policy(PolicyCommand::Show { dir }) => {
            let policy = ServiceDir::open(&dir)?.policy(now)?;
            println!("{}", serde_json::to_string_pretty(&policy_json(&policy))?);
        }
        Command::Serve {
            dir,
            listen,
            cert_validity_minutes,
            nonce_ttl_secs,
        } => {
            if cert_validity_minutes <= 0 || nonce_ttl_secs <= 0 {
                bail!("--cert-validity-minutes and --nonce-ttl-secs must be positive");
            }
            let settings = Settings {
                cert_validity_secs: cert_validity_minutes * 60,
                nonce_ttl_secs,
                ..Settings::default()
            };
            let service = Service::open(ServiceDir::open(&dir)?, settings, now)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                let addr = listener.local_addr()?;
                // Scripts and tests read this line to learn the port.
                println!("certifier-service listening on {addr}");
                use std::io::Write;
                std::io::stdout().flush()?;
                serve(listener, Arc::new(service), Limits::default()).await?;
                Ok::<(), anyhow::Error>(())
            })?;
        }
    }
    Ok(())
}

fn policy_json(p: &attestation::certifier::policy::Policy) -> serde_json::Value {
    let key_hex = |k: &PublicKey| match k {
        PublicKey::P256(x) | PublicKey::P384(x) => hex::encode(x),
        PublicKey::Rsa { n, .. } => format!("rsa:{}", hex::encode(n)),
    };
    serde_json::json!({
        "insecure": p.is_insecure(),
        "policy-key": key_hex(p.policy_key()),
        "platforms": p.platforms().iter().map(|t| serde_json::json!({
            "cpak": key_hex(&t.cpak),
            "insecure-emulated": t.insecure_emulated,
            "insecure": t.insecurity().map(|i| i.tag()),
            "fingerprint": attestation::certifier::policy::platform_fingerprint(&t.cpak).map(hex::encode),
            "sw-components": if t.skip_sw_components { "not appraised" } else { "must match reference values" },
        })).collect::<Vec<_>>(),
        "platform-components": p.platform_components().iter().map(|c| serde_json::json!({
            "platform": hex::encode(c.platform),
            "type": c.slot,
            "measurement": hex::encode(&c.measurement),
            "required": c.required,
        })).collect::<Vec<_>>(),
        "ignored-platform-components": p.unbound_components().iter().map(hex::encode).collect::<Vec<_>>(),
        "measurements": p.measurements().iter().map(|m| serde_json::json!({
            "measurement": hex::encode(&m.measurement),
            "role": m.role.as_str(),
            "personalization-value": m.personalization_value.as_ref().map(hex::encode),
            "revoked": p.revocation(&m.measurement).is_some(),
        })).collect::<Vec<_>>(),
        "framework-platforms": p.vse_platforms().iter().map(|v| serde_json::json!({
            "key": key_hex(&v.key),
            "no-freshness-allowed": v.allow_no_freshness,
        })).collect::<Vec<_>>(),
        "framework-measurements": p.framework_measurements().iter().map(|m| serde_json::json!({
            "measurement": hex::encode(&m.measurement),
            "revoked": p.revocation(&m.measurement).is_some(),
        })).collect::<Vec<_>>(),
        "revoked": p.revocations().iter().map(|r| serde_json::json!({
            "measurement": hex::encode(&r.measurement),
            "reason": r.reason,
        })).collect::<Vec<_>>(),
    })
}
