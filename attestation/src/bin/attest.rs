//! `attest`: inspect, verify and produce Arm CCA attestation tokens.
//!
//! A thin shell over the `attestation` library: argument parsing, files, exit
//! codes. It never prints a token as verified unless every check passed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use attestation::cca::{
    self, Challenge, Curve, Envelope, LifecyclePolicy, PlatformKey, VerifiedCcaToken, VerifyError,
    VerifyOptions,
};
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};
use attestation::platform::{ConfigfsTsm, EvidenceSource, measure_file};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

const LONG_ABOUT: &str = "\
Inspect, verify and produce Arm CCA attestation tokens (RMM 1.0 tag-399 and CMW tag-907 forms).

A token proves which code a realm runs: the realm token (signed by the realm
attestation key, RAK) carries the realm initial measurement (RIM); the platform
token (signed by the platform key, CPAK) vouches for the RAK. `verify` checks
both signatures, that binding, the challenge and the platform lifecycle.";

const EXAMPLES: &str = "\
Examples:
  attest demo
  attest token inspect attestation/testdata/cca/real/tfrmm_cca_token.cbor
  attest token verify attestation/testdata/cca/real/tfrmm_cca_token.cbor \\
      --cpak attestation/testdata/cca/real/keys/cca_platform.pub.pem
  attest platform-key generate --out cpak.key.pem --public-out cpak.pub.pem
  attest emulate --platform-key cpak.key.pem --challenge $(head -c64 /dev/urandom | xxd -p -c64) \\
      --out token.cbor
  attest measure ./target/release/realm-runtime
  attest admit --certifier 127.0.0.1:8123 --role runtime --platform insecure-emulated \
      --platform-key cpak.key.pem --out-dir runtime-identity
  attest certifier decode --message signed_claim_message \
      attestation/testdata/certifier/signed_claim_1_policy_says_measurement.signed_claim_message.bin

Exit status: 0 success, 1 the token was rejected, 2 usage or I/O error.";

#[derive(Parser, Debug)]
#[command(name = "attest", version, about = "Inspect, verify and produce Arm CCA attestation tokens",
          long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Decode or verify a token file.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Write an INSECURE emulated token (real format, signed with a key from a file).
    Emulate(EmulateArgs),
    /// Print the emulated realm initial measurement of a file (SHA-512, hex).
    Measure {
        /// The executable or image to measure.
        path: PathBuf,
    },
    /// Manage INSECURE emulated platform keys.
    #[command(subcommand)]
    PlatformKey(PlatformKeyCommand),
    /// Get a real token from this realm's configfs-tsm (Linux CCA realms only).
    Evidence {
        /// Realm challenge: exactly 64 bytes as 128 hex digits.
        #[arg(long)]
        challenge: String,
        /// Where to write the token.
        #[arg(long)]
        out: PathBuf,
        /// configfs-tsm report directory.
        #[arg(long, default_value = ConfigfsTsm::DEFAULT_ROOT)]
        tsm_root: PathBuf,
    },
    /// Get admitted by a certifier service: new TLS auth key, fresh evidence,
    /// admission certificate.
    Admit(AdmitArgs),
    /// Walk through the evidence layer on bundled and emulated tokens.
    Demo,
    /// Certifier Framework messages.
    #[command(subcommand)]
    Certifier(CertifierCommand),
}

#[derive(Subcommand, Debug)]
enum CertifierCommand {
    /// Print a serialized certifier.proto message as JSON (proto field names,
    /// bytes as lowercase hex) with "reencodes_identically".
    Decode {
        /// Message type, e.g. signed_claim_message, key_message, vse_clause.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(attestation::certifier::json::MESSAGE_NAMES))]
        message: String,
        /// The serialized message.
        file: PathBuf,
    },
    /// INSECURE: get admitted as a Certifier Framework simulated-enclave app
    /// (`vse-attestation-package` evidence, no nonce), by this project's
    /// certifier-service or by the framework's own Go service.
    ///
    /// The evidence is signed with the attest key from the framework's
    /// provisioning files: anyone holding them can claim any measurement.
    /// For interoperability tests only.
    AdmitFrameworkApp {
        /// Certifier service address (host:port).
        #[arg(long)]
        certifier: String,
        /// The framework's attest key (`attest_key_file.bin`, a private key_message).
        #[arg(long, value_name = "FILE")]
        attest_key: PathBuf,
        /// The platform's endorsement of it (`platform_attest_endorsement.bin`).
        #[arg(long, value_name = "FILE")]
        platform_endorsement: PathBuf,
        /// The measurement to claim: a file of raw bytes, as the framework's
        /// `measurement_utility.exe` writes it (e.g. `example_app.measurement`).
        #[arg(long, value_name = "FILE")]
        measurement_file: PathBuf,
        /// The app's key, PKCS#8 (PEM or DER): RSA for the framework's Go
        /// service, which certifies RSA keys only
        /// (`openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out app.key.pem`).
        #[arg(long, value_name = "FILE")]
        auth_key: PathBuf,
        /// Where to write the admission certificate (DER).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Print the claims as JSON (Veraison claim names). Does NOT verify anything.
    Inspect {
        /// Token file (CBOR).
        file: PathBuf,
    },
    /// Verify signatures, RAK binding, challenge and lifecycle; print the claims.
    Verify {
        /// Token file (CBOR).
        file: PathBuf,
        /// Trusted platform key (CPAK): PEM SubjectPublicKeyInfo or EC JWK.
        #[arg(long)]
        cpak: PathBuf,
        /// Expected realm challenge, 128 hex digits. Without it the token is
        /// checked for authenticity but not freshness.
        #[arg(long)]
        challenge: Option<String>,
        /// Accept platforms in debug or provisioning lifecycle states. INSECURE.
        #[arg(long)]
        insecure_any_lifecycle: bool,
    },
}

#[derive(clap::Args, Debug)]
struct EmulateArgs {
    /// Emulated platform private key (PKCS#8 PEM; see `attest platform-key generate`).
    #[arg(long)]
    platform_key: PathBuf,
    /// Realm challenge: exactly 64 bytes as 128 hex digits.
    #[arg(long)]
    challenge: String,
    /// Where to write the token.
    #[arg(long)]
    out: PathBuf,
    /// File whose SHA-512 becomes the RIM [default: this attest binary].
    #[arg(long)]
    measure: Option<PathBuf>,
    /// Token form.
    #[arg(long, value_enum, default_value_t = Format::Rmm10)]
    format: Format,
    /// Realm personalization value, 128 hex digits [default: zeros].
    #[arg(long)]
    personalization: Option<String>,
}

#[derive(clap::Args, Debug)]
struct AdmitArgs {
    /// Certifier service address (host:port).
    #[arg(long)]
    certifier: String,
    /// Role to ask for: runtime, device, provider or a custom role.
    #[arg(long)]
    role: String,
    /// Evidence source.
    #[arg(long, value_enum)]
    platform: attestation::platform::Backend,
    /// Emulated platform private key (with --platform insecure-emulated).
    #[arg(long)]
    platform_key: Option<PathBuf>,
    /// File the emulated platform measures [default: this attest binary].
    #[arg(long)]
    measure: Option<PathBuf>,
    /// Directory for auth.key.pem (mode 0600) and admission.der.
    #[arg(long)]
    out_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum PlatformKeyCommand {
    /// Create a new INSECURE emulated platform key pair.
    Generate {
        /// Private key output (PKCS#8 PEM, created with mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Public key output (SPKI PEM), the CPAK verifiers are given.
        #[arg(long)]
        public_out: PathBuf,
        /// Curve.
        #[arg(long, value_enum, default_value_t = CurveArg::P384)]
        curve: CurveArg,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    /// Tag 399, raw-point RAK, RMM 1.0 profile (what Islet emits).
    #[value(name = "rmm-1.0")]
    Rmm10,
    /// Tag 907 CMW collection, COSE_Key RAK, 2023 profiles (current TF-RMM).
    #[value(name = "cmw-907")]
    Cmw907,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum CurveArg {
    /// P-384 / ES384 (what CCA platforms use).
    P384,
    /// P-256 / ES256.
    P256,
}

/// Exit code for "the token was rejected", distinct from usage errors (2).
const REJECTED: u8 = 1;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Token(TokenCommand::Inspect { file }) => {
            let bytes = read_token(&file)?;
            match cca::parse(&bytes) {
                Ok(token) => {
                    eprintln!("note: inspect decodes only; nothing has been verified");
                    let material = cca::test_material::carried_by(&token)
                        .or_else(|| cca::known_test_signer(&token));
                    if let Some(m) = material {
                        eprintln!("INSECURE test material: {m}");
                    }
                    print_json(&cca::json::token_to_json(&token))?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("REJECTED ({}): {e}", e.check());
                    Ok(ExitCode::from(REJECTED))
                }
            }
        }
        Command::Token(TokenCommand::Verify {
            file,
            cpak,
            challenge,
            insecure_any_lifecycle,
        }) => {
            let bytes = read_token(&file)?;
            let cpak = load_cpak(&cpak)?;
            let options = VerifyOptions {
                expected_challenge: challenge.as_deref().map(parse_challenge).transpose()?,
                lifecycle: if insecure_any_lifecycle {
                    eprintln!("WARNING: INSECURE: accepting any platform lifecycle state");
                    LifecyclePolicy::InsecureAcceptAny
                } else {
                    LifecyclePolicy::RequireSecured
                },
            };
            match cca::verify_bytes(&bytes, &cpak, &options) {
                Ok(token) => {
                    report_verified(&token);
                    print_json(&verified_json(&token))?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("REJECTED ({}): {e}", e.check());
                    Ok(ExitCode::from(REJECTED))
                }
            }
        }
        Command::Emulate(args) => emulate(args),
        Command::Measure { path } => {
            let rim = measure_file(&path)?;
            println!("{}", rim.to_hex());
            Ok(ExitCode::SUCCESS)
        }
        Command::PlatformKey(PlatformKeyCommand::Generate {
            out,
            public_out,
            curve,
        }) => {
            let curve = match curve {
                CurveArg::P384 => Curve::P384,
                CurveArg::P256 => Curve::P256,
            };
            let (private_pem, public) = generate_platform_key_pem(curve)?;
            write_private(&out, private_pem.as_bytes())?;
            std::fs::write(&public_out, public.to_pem())
                .with_context(|| format!("writing {}", public_out.display()))?;
            eprintln!(
                "wrote INSECURE emulated platform key {} (private) and {} (public CPAK)",
                out.display(),
                public_out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Evidence {
            challenge,
            out,
            tsm_root,
        } => {
            let challenge = parse_challenge(&challenge)?;
            let tsm = ConfigfsTsm::with_root(tsm_root);
            let token = tsm.attestation_token(&challenge)?;
            std::fs::write(&out, &token).with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "wrote {} bytes of evidence from {} to {}",
                token.len(),
                tsm.describe(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Admit(args) => admit(args),
        Command::Demo => demo(),
        Command::Certifier(CertifierCommand::AdmitFrameworkApp {
            certifier,
            attest_key,
            platform_endorsement,
            measurement_file,
            auth_key,
            out,
        }) => admit_framework_app(
            &certifier,
            &attest_key,
            &platform_endorsement,
            &measurement_file,
            &auth_key,
            &out,
        ),
        Command::Certifier(CertifierCommand::Decode { message, file }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let json = attestation::certifier::json::decode_to_json(&message, &bytes)
                .with_context(|| format!("decoding {} as {message}", file.display()))?;
            print_json(&json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads a small input file, refusing anything over `limit` bytes before reading it.
fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > limit {
        bail!(
            "{} is {} bytes; expected at most {limit}",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn admit_framework_app(
    certifier: &str,
    attest_key: &Path,
    endorsement: &Path,
    measurement_file: &Path,
    auth_key: &Path,
    out: &Path,
) -> Result<ExitCode> {
    use attestation::certifier::client::Client;
    use attestation::certifier::keys::SigningKey;
    use attestation::certifier::proto::{KeyMessage, decode_bounded};
    use attestation::certifier::vse::InsecureSimulatedEnclave;

    let key_message: KeyMessage = decode_bounded(&read_small(attest_key, 1 << 16)?)
        .with_context(|| format!("{} is not a key_message", attest_key.display()))?;
    let measurement = read_small(measurement_file, 64)?;
    let enclave = InsecureSimulatedEnclave::new(
        &key_message,
        read_small(endorsement, 1 << 16)?,
        measurement.clone(),
    )
    .with_context(|| format!("the attest key in {}", attest_key.display()))?;
    let key_bytes = read_small(auth_key, 1 << 16)?;
    let pkcs8 = match std::str::from_utf8(&key_bytes)
        .ok()
        .and_then(|t| pem::parse(t).ok())
    {
        Some(block) => block.contents().to_vec(),
        None => key_bytes,
    };
    let app_key = SigningKey::from_pkcs8(&pkcs8)
        .with_context(|| format!("{} is not a PKCS#8 RSA or EC key", auth_key.display()))?
        .public_key();
    eprintln!(
        "WARNING: INSECURE simulated enclave (measurement {}): its evidence is signed with a key from a file",
        hex::encode(&measurement)
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(certifier.to_string(), std::time::Duration::from_secs(15));
    let cert = rt
        .block_on(client.admit_framework_app(&enclave, &app_key))
        .with_context(|| format!("admission by {certifier}"))?;
    std::fs::write(out, &cert).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "admitted: admission certificate for the app key written to {}",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn read_token(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > cca::MAX_TOKEN_SIZE as u64 {
        bail!(
            "{} is {} bytes; tokens are at most {}",
            path.display(),
            meta.len(),
            cca::MAX_TOKEN_SIZE
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn load_cpak(path: &Path) -> Result<PlatformKey> {
    let bytes = std::fs::read(path).with_context(|| format!("reading CPAK {}", path.display()))?;
    PlatformKey::from_file_bytes(&bytes).with_context(|| format!("CPAK {}", path.display()))
}

fn parse_challenge(hex: &str) -> Result<Challenge> {
    Challenge::from_hex(hex).map_err(anyhow::Error::msg)
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn verified_json(token: &VerifiedCcaToken) -> serde_json::Value {
    let claims = cca::json::token_to_json(token.token());
    json!({
        "verified": true,
        "challenge-checked": token.challenge_checked(),
        "insecure-emulated-platform": token.is_insecure_emulated(),
        "insecure-test-material": token.test_material().map(|m| m.name),
        "envelope-tag": claims["envelope-tag"],
        "platform": claims["platform"],
        "realm": claims["realm"],
    })
}

fn report_verified(token: &VerifiedCcaToken) {
    let mut checks = vec![
        "platform-signature",
        "realm-signature",
        "platform-challenge-binds-rak",
    ];
    if token.challenge_checked() {
        checks.push("realm-challenge");
    }
    checks.push("platform-lifecycle");
    eprintln!("verified: {}", checks.join(", "));
    if !token.challenge_checked() {
        eprintln!(
            "note: no --challenge given: the token is authentic, but nothing shows it is fresh"
        );
    }
    if token.is_insecure_emulated() {
        eprintln!(
            "WARNING: INSECURE emulated platform: anyone with its key file can forge this token"
        );
    }
    if let Some(m) = token.test_material() {
        eprintln!("INSECURE test material: {m}");
        eprintln!("WARNING: anyone can forge this token; it proves the format, not the hardware");
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn emulate(args: EmulateArgs) -> Result<ExitCode> {
    let challenge = parse_challenge(&args.challenge)?;
    let mut platform = InsecureEmulatedPlatform::from_key_file(&args.platform_key)?;
    if let Some(path) = &args.measure {
        platform = platform.measuring(path)?;
    }
    if let Some(hex) = &args.personalization {
        let bytes = hex::decode(hex.trim()).context("--personalization is not hex")?;
        let rpv: [u8; 64] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("--personalization must be 64 bytes (128 hex digits)"))?;
        platform = platform.with_personalization_value(rpv);
    }
    platform = platform.with_envelope(match args.format {
        Format::Rmm10 => Envelope::Tag399,
        Format::Cmw907 => Envelope::Tag907,
    });
    let token = platform.attestation_token(&challenge)?;
    std::fs::write(&args.out, &token).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote INSECURE emulated token ({} bytes) to {}; RIM {}",
        token.len(),
        args.out.display(),
        platform.rim().to_hex()
    );
    Ok(ExitCode::SUCCESS)
}

fn admit(args: AdmitArgs) -> Result<ExitCode> {
    use attestation::certifier::client::{Client, ClientError};
    use attestation::certifier::keys::SigningKey;
    use attestation::certifier::policy::Role;

    let role = Role::new(&args.role)?;
    use attestation::platform::Backend;
    let platform: Box<dyn EvidenceSource> = match args.platform {
        Backend::Tsm => Box::new(ConfigfsTsm::new()),
        Backend::Islet => Box::new(attestation::platform::IsletRsi::new()),
        Backend::InsecureEmulated => {
            let key = args
                .platform_key
                .as_deref()
                .context("--platform insecure-emulated needs --platform-key")?;
            let mut p = InsecureEmulatedPlatform::from_key_file(key)?;
            if let Some(path) = &args.measure {
                p = p.measuring(path)?;
            }
            eprintln!(
                "WARNING: INSECURE emulated platform (RIM {})",
                p.rim().to_hex()
            );
            Box::new(p)
        }
    };
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let (auth, pkcs8) = SigningKey::generate_p256().context("generating the auth key")?;
    let client = Client::new(args.certifier.clone(), std::time::Duration::from_secs(15));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(client.admit(platform.as_ref(), &auth.public_key(), &role)) {
        Ok(cert) => {
            let key_path = args.out_dir.join("auth.key.pem");
            let _ = std::fs::remove_file(&key_path);
            let pem = pem::encode_config(
                &pem::Pem::new("PRIVATE KEY", pkcs8),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            );
            write_private(&key_path, pem.as_bytes())?;
            let cert_path = args.out_dir.join("admission.der");
            std::fs::write(&cert_path, &cert)
                .with_context(|| format!("writing {}", cert_path.display()))?;
            println!(
                "admitted as {role}: {} (certificate), {} (auth key)",
                cert_path.display(),
                key_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::Refused { code, reason }) => {
            eprintln!("REFUSED ({code}): {reason}");
            Ok(ExitCode::from(REJECTED))
        }
        Err(e) => Err(e.into()),
    }
}

const DEMO_TOKEN: &[u8] = include_bytes!("../../testdata/cca/real/tfrmm_cca_token.cbor");
const DEMO_CPAK: &[u8] = include_bytes!("../../testdata/cca/real/keys/cca_platform.pub.pem");

/// Tally of demo steps: each says what it expects and what happened.
struct Demo {
    steps: u32,
    unexpected: u32,
}

impl Demo {
    fn expect_ok(
        &mut self,
        what: &str,
        r: Result<VerifiedCcaToken, VerifyError>,
    ) -> Option<VerifiedCcaToken> {
        self.steps += 1;
        match r {
            Ok(t) => {
                let insecure = match t.test_material() {
                    Some(m) => format!(" (INSECURE test material: {})", m.name),
                    None => String::new(),
                };
                println!("  {what}: VERIFIED{insecure}");
                Some(t)
            }
            Err(e) => {
                self.unexpected += 1;
                println!("  {what}: REJECTED ({}) -- UNEXPECTED: {e}", e.check());
                None
            }
        }
    }

    fn expect_reject(&mut self, what: &str, check: &str, r: Result<VerifiedCcaToken, VerifyError>) {
        self.steps += 1;
        match r {
            Err(e) if e.check() == check => {
                println!("  {what}: REJECTED as expected ({check}): {e}")
            }
            Err(e) => {
                self.unexpected += 1;
                println!(
                    "  {what}: REJECTED for the wrong reason ({}), expected {check}: {e}",
                    e.check()
                );
            }
            Ok(_) => {
                self.unexpected += 1;
                println!("  {what}: VERIFIED -- UNEXPECTED, should fail {check}");
            }
        }
    }
}

fn demo() -> Result<ExitCode> {
    let mut d = Demo {
        steps: 0,
        unexpected: 0,
    };
    let real_cpak = PlatformKey::from_file_bytes(DEMO_CPAK)?;
    let real_challenge = Challenge([0xab; 64]);
    let opts = |c: Challenge| VerifyOptions {
        expected_challenge: Some(c),
        ..Default::default()
    };

    println!(
        "[1] Public TF-RMM test token ({} bytes; test keys, not hardware)",
        DEMO_TOKEN.len()
    );
    if let Some(t) = d.expect_ok(
        "verify with its CPAK and challenge abab..ab",
        cca::verify_bytes(DEMO_TOKEN, &real_cpak, &opts(real_challenge)),
    ) {
        let p = t.platform();
        println!(
            "      RIM {}  lifecycle {:#06x} ({})  {} software components",
            t.realm().rim.to_hex(),
            p.lifecycle,
            cca::lifecycle::name(p.lifecycle),
            p.sw_components.len()
        );
    }
    let mut tampered = DEMO_TOKEN.to_vec();
    if let Some(last) = tampered.last_mut() {
        *last ^= 1;
    }
    d.expect_reject(
        "same token, last signature byte flipped",
        "realm-signature",
        cca::verify_bytes(&tampered, &real_cpak, &opts(real_challenge)),
    );
    d.expect_reject(
        "same token, a different expected challenge",
        "realm-challenge",
        cca::verify_bytes(DEMO_TOKEN, &real_cpak, &opts(Challenge([0xcd; 64]))),
    );

    println!("[2] INSECURE emulated platform (a fresh key; RIM = SHA-512 of this attest binary)");
    let (private_pem, _) = generate_platform_key_pem(Curve::P384)?;
    let dir = std::env::temp_dir().join(format!("attest-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key_path = dir.join("platform.key.pem");
    let _ = std::fs::remove_file(&key_path);
    write_private(&key_path, private_pem.as_bytes())?;
    let loaded = InsecureEmulatedPlatform::from_key_file(&key_path);
    let _ = std::fs::remove_dir_all(&dir);
    let mut platform = loaded?;
    let cpak = platform.platform_public_key().clone();
    let mut nonce = [0u8; 64];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let nonce = Challenge(nonce);
    for (name, envelope) in [
        ("tag 399, raw RAK", Envelope::Tag399),
        ("tag 907, COSE_Key RAK", Envelope::Tag907),
    ] {
        platform = platform.with_envelope(envelope);
        let token = platform.attestation_token(&nonce)?;
        let verified = d.expect_ok(
            &format!("emulated token ({name}, {} bytes)", token.len()),
            cca::verify_bytes(&token, &cpak, &opts(nonce)),
        );
        if verified.is_some_and(|t| t.realm().rim != platform.rim()) {
            d.unexpected += 1;
            println!("      RIM differs from the measurement of this binary -- UNEXPECTED");
        }
        d.expect_reject(
            "the same token against the TF-RMM platform key",
            "platform-signature",
            cca::verify_bytes(&token, &real_cpak, &opts(nonce)),
        );
    }
    println!("      RIM of this binary: {}", platform.rim().to_hex());
    println!(
        "demo: {} of {} outcomes as expected",
        d.steps - d.unexpected,
        d.steps
    );
    Ok(if d.unexpected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(REJECTED)
    })
}
