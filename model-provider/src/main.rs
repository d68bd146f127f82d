//! `model-provider`: an AI company's side. It seals ONNX models into a blob
//! store and releases each model's data key, over attested TLS, only to peers
//! whose role, measurement and intended use its release policy allows.
//!
//! Must never: put a data key anywhere but the encrypted keystore and an
//! attested session to an allowed peer, log or print a key, or tell a refused
//! peer which model ids exist.

mod announce;
mod bundle;
mod deposit;
mod keystore;
mod onnx_scan;
mod release;
mod serve;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use attestation::certifier::client::unix_now;
use attestation::platform::Backend;
use blob_store::{AnyStore, BlobId, BlobStore};
use clap::{Args, Parser, Subcommand};
use protocol::sealed::BundleMeta;
use protocol::{OutputPolicy, QueryBudget, ServingPolicy};

use crate::keystore::{KekSource, Keystore};
use crate::release::{ReleaseRule, parse_budget, parse_output, parse_shape, parse_usage};

const EXAMPLES: &str = "\
Examples:
  model-provider seal --model digits.onnx --id digits --store file:///var/lib/cca-ml/blobs \\
      --keystore keys.json --keystore-key kek.bin --allow-role runtime --use remote-inference
  model-provider verify --store file:///var/lib/cca-ml/blobs --bundle <HASH> --keystore keys.json --keystore-key kek.bin
  model-provider list --store file:///var/lib/cca-ml/blobs --keystore keys.json --keystore-key kek.bin
  model-provider rotate --id digits --store file:///var/lib/cca-ml/blobs --keystore keys.json --keystore-key kek.bin
  model-provider task define --id digits-fl --rule median --clip 2 --noise 1.0 --min-clients 3 \\
      --rounds 20 --keystore keys.json --keystore-key kek.bin
  model-provider serve --listen 127.0.0.1:8200 --certifier 127.0.0.1:8123 --policy-cert svc/policy_cert.der \\
      --platform tsm --keystore keys.json --keystore-key kek.bin

The keystore key can instead come from a passphrase in MODEL_PROVIDER_PASSPHRASE.";

#[derive(Parser, Debug)]
#[command(name = "model-provider", version, about = "Seal models and release their keys only to attested peers", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct KeystoreArgs {
    /// Keystore file (JSON; data keys inside are encrypted).
    #[arg(long)]
    keystore: PathBuf,
    /// File with the 32-byte keystore key (created, mode 0600, if missing).
    /// Without it the key is derived from MODEL_PROVIDER_PASSPHRASE.
    #[arg(long)]
    keystore_key: Option<PathBuf>,
}

impl KeystoreArgs {
    fn open(&self) -> Result<Keystore> {
        let source = match &self.keystore_key {
            Some(p) => KekSource::KeyFile(p.clone()),
            None => KekSource::Passphrase,
        };
        Keystore::open(&self.keystore, &source)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Seal a model with a new key into the store; prints the bundle hash.
    Seal {
        /// The ONNX model.
        #[arg(long)]
        model: PathBuf,
        /// Model id (what peers ask for).
        #[arg(long)]
        id: String,
        /// Model version.
        #[arg(long, default_value = "1")]
        version: String,
        /// Blob store URL: file:///dir or s3://bucket/prefix.
        #[arg(long)]
        store: String,
        #[command(flatten)]
        keystore: KeystoreArgs,
        /// Role that may receive the key (repeat): runtime, device, ...
        #[arg(long = "allow-role", required = true)]
        roles: Vec<String>,
        /// Measurement (hex) that may receive the key (repeat); default: any
        /// measurement the certifier trusts for those roles.
        #[arg(long = "allow-measurement")]
        measurements: Vec<String>,
        /// Allowed use (repeat): remote-inference, on-device, fl-aggregate.
        #[arg(long = "use", required = true, value_parser = parse_usage)]
        uses: Vec<String>,
        /// What a runtime may return: `label` (only the winning class),
        /// `top-k=K`, or `scores` (all class scores).
        #[arg(long, default_value = "label", value_parser = parse_output)]
        output: OutputPolicy,
        /// Per-device query budget at a runtime, QUERIES/SECONDS (e.g. 1000/3600).
        #[arg(long, value_parser = parse_budget)]
        query_budget: Option<QueryBudget>,
        /// Validate with the first input pinned to this shape, D,D,... (0 keeps
        /// an axis symbolic), for models tract cannot type with symbolic
        /// dimensions; runtimes serve it with the same `--input-shape`.
        #[arg(long, value_name = "SHAPE")]
        input_shape: Option<String>,
    },
    /// Open a stored bundle in memory with its key; non-zero exit on any tampering.
    Verify {
        /// Blob store URL.
        #[arg(long)]
        store: String,
        /// Bundle hash (hex).
        #[arg(long)]
        bundle: String,
        #[command(flatten)]
        keystore: KeystoreArgs,
    },
    /// List bundles in the store (with model ids from the keystore when given).
    List {
        /// Blob store URL.
        #[arg(long)]
        store: String,
        /// Keystore file, to name the bundles.
        #[arg(long)]
        keystore: Option<PathBuf>,
        /// Keystore key file.
        #[arg(long)]
        keystore_key: Option<PathBuf>,
    },
    /// Re-seal a model's current bundle under a new key; the old key is retired.
    Rotate {
        /// Model id.
        #[arg(long)]
        id: String,
        /// Blob store URL.
        #[arg(long)]
        store: String,
        #[command(flatten)]
        keystore: KeystoreArgs,
    },
    /// Define the terms of a federated-learning task (runtimes enforce them;
    /// their hosts may only narrow them), or show them.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Get admitted as `provider`, then answer key requests over attested TLS.
    Serve {
        /// Listen address (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8200")]
        listen: String,
        /// Certifier service address.
        #[arg(long)]
        certifier: String,
        /// The policy certificate (DER), the only trust root.
        #[arg(long)]
        policy_cert: PathBuf,
        /// Evidence source.
        #[arg(long, value_enum)]
        platform: Backend,
        /// Emulated platform key (with --platform insecure-emulated).
        #[arg(long)]
        platform_key: Option<PathBuf>,
        /// Accept peers admitted on the INSECURE emulated platform.
        #[arg(long)]
        allow_insecure_peers: bool,
        /// High-assurance mode: each session starts with fresh evidence, bound
        /// to the TLS session, from both sides.
        #[arg(long)]
        fresh_evidence: bool,
        /// Seconds between fetches of the certifier's revocations.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        revocation_refresh_secs: u64,
        /// A runtime to announce current models to (repeat), so it prefetches
        /// them; only models released to role runtime for remote-inference.
        #[arg(long = "announce-to", value_name = "ADDR")]
        announce_to: Vec<String>,
        /// A federated task whose global models runtimes may deposit (repeat).
        #[arg(long = "federated-task", value_name = "ID")]
        federated_tasks: Vec<String>,
        /// Only this runtime measurement (hex) may deposit (repeat) [default: any trusted runtime].
        #[arg(long = "federated-runtime", value_name = "HEX")]
        federated_runtimes: Vec<String>,
        /// Seconds between announcements (they also reach restarted runtimes).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        announce_every_secs: u64,
        #[command(flatten)]
        keystore: KeystoreArgs,
    },
}

#[derive(Subcommand, Debug)]
enum TaskCommand {
    /// Define (or redefine) a task's terms; `serve --federated-task ID` serves them.
    Define {
        /// Task id (its global models are deposited under this model id).
        #[arg(long)]
        id: String,
        /// Global model: softmax (64→10) or mlp (64→32→10).
        #[arg(long, default_value = "softmax", value_parser = ["softmax", "mlp"])]
        arch: String,
        /// Aggregation rule: fedavg, median, trimmed-mean:BETA, krum:F, multi-krum:F:M.
        #[arg(long, default_value = "median")]
        rule: String,
        /// Per-update L2 clipping norm (0 = none; then --noise must be 0).
        #[arg(long, default_value_t = 2.0)]
        clip: f32,
        /// Gaussian noise multiplier z of central differential privacy (0 = none).
        #[arg(long, default_value_t = 0.0)]
        noise: f64,
        /// Updates needed to aggregate a round.
        #[arg(long, default_value_t = 2)]
        min_clients: u32,
        /// Updates that close a round early.
        #[arg(long, default_value_t = 10)]
        max_clients: u32,
        /// Rounds the task runs.
        #[arg(long, default_value_t = 10)]
        rounds: u64,
        /// Only devices with this measurement (hex) may take part (repeat)
        /// [default: every device the certifier's policy trusts].
        #[arg(long = "device-measurement", value_name = "HEX")]
        device_measurements: Vec<String>,
        /// Let devices admitted on the INSECURE emulated platform take part (demos only).
        #[arg(long)]
        allow_insecure_devices: bool,
        #[command(flatten)]
        keystore: KeystoreArgs,
    },
    /// Print a task's terms.
    Show {
        /// Task id.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        keystore: KeystoreArgs,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn bundle_id(hex: &str) -> Result<BlobId> {
    hex.parse::<BlobId>().map_err(anyhow::Error::msg)
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Seal {
            model,
            id,
            version,
            store,
            keystore,
            roles,
            measurements,
            uses,
            output,
            query_budget,
            input_shape,
        } => {
            let input_shape = input_shape
                .as_deref()
                .map(parse_shape)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            for m in &measurements {
                if hex::decode(m).map(|b| b.len()).unwrap_or(0) < 16 {
                    bail!("--allow-measurement {m:?} is not a hex digest");
                }
            }
            let mut ks = keystore.open()?;
            let store = AnyStore::open(&store)?;
            let m = model.clone();
            let summary =
                tokio::task::spawn_blocking(move || validate::validate(&m, input_shape.as_deref()))
                    .await??;
            eprintln!(
                "model {} runs: {} nodes, inputs {}, outputs {}",
                model.display(),
                summary.nodes,
                summary.inputs.join("; "),
                summary.outputs.join("; ")
            );
            let meta = BundleMeta {
                model_id: id.clone(),
                version: version.clone(),
                created: unix_now().max(0) as u64,
            };
            let (bundle, key) = bundle::seal_into_store(&store, &model, &meta).await?;
            let rule = ReleaseRule {
                roles,
                measurements: measurements.iter().map(|m| m.to_lowercase()).collect(),
                uses,
                serving: ServingPolicy {
                    output,
                    budget: query_budget,
                },
            };
            ks.add(&id, &version, &bundle.to_hex(), &key, meta.created, rule)?;
            ks.retire(&id, &bundle.to_hex())?;
            println!("{bundle}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            store,
            bundle,
            keystore,
        } => {
            let id = bundle_id(&bundle)?;
            let ks = keystore.open()?;
            let entry = ks
                .entries()
                .iter()
                .rev()
                .find(|e| e.bundle == id.to_hex())
                .with_context(|| format!("bundle {id} is not in this keystore"))?;
            let key = ks.unwrap_key(entry)?;
            let store = AnyStore::open(&store)?;
            match bundle::verify_bundle(&store, &id, &key).await {
                Ok(s) => {
                    println!(
                        "OK {} version {}: {} bytes, plaintext sha256 {}",
                        s.header.model_id(),
                        s.header.model_version(),
                        s.plaintext_len,
                        hex::encode(s.plaintext_sha256)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("TAMPERED or unreadable bundle {id}: {e:#}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::List {
            store,
            keystore,
            keystore_key,
        } => {
            let store = AnyStore::open(&store)?;
            let ks = match keystore {
                Some(path) => Some(
                    KeystoreArgs {
                        keystore: path,
                        keystore_key,
                    }
                    .open()?,
                ),
                None => None,
            };
            for blob in store.list().await? {
                let hex = blob.id.to_hex();
                let name = ks
                    .as_ref()
                    .and_then(|k| k.entries().iter().find(|e| e.bundle == hex))
                    .map(|e| {
                        format!(
                            "{} v{}{} roles={} uses={}",
                            e.model_id,
                            e.version,
                            if e.retired { " (retired)" } else { "" },
                            e.release.roles.join(","),
                            e.release.uses.join(",")
                        )
                    })
                    .unwrap_or_default();
                println!("{hex} {:>12} {name}", blob.size);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rotate {
            id,
            store,
            keystore,
        } => {
            let mut ks = keystore.open()?;
            let entry = ks
                .current(&id)
                .cloned()
                .with_context(|| format!("no current bundle for model {id:?}"))?;
            let old_key = ks.unwrap_key(&entry)?;
            let store = AnyStore::open(&store)?;
            let scratch = bundle::Scratch::new("rotate")?;
            let plain =
                bundle::open_to_scratch(&store, &bundle_id(&entry.bundle)?, &old_key, &scratch)
                    .await?;
            let meta = BundleMeta {
                model_id: id.clone(),
                version: entry.version.clone(),
                created: unix_now().max(0) as u64,
            };
            let (new_bundle, key) = bundle::seal_into_store(&store, &plain, &meta).await?;
            drop(scratch);
            ks.add(
                &id,
                &entry.version,
                &new_bundle.to_hex(),
                &key,
                meta.created,
                entry.release.clone(),
            )?;
            ks.retire(&id, &new_bundle.to_hex())?;
            println!("{new_bundle}");
            eprintln!(
                "model {id}: new key {}, bundle {}; the old key is retired",
                hex::encode(key.key_id().as_bytes()),
                new_bundle
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Task(TaskCommand::Define {
            id,
            arch,
            rule,
            clip,
            noise,
            min_clients,
            max_clients,
            rounds,
            device_measurements,
            allow_insecure_devices,
            keystore,
        }) => {
            let rule: fl::aggregate::Rule =
                rule.parse().map_err(|e| anyhow::anyhow!("--rule: {e}"))?;
            let devices = device_measurements
                .iter()
                .map(|h| {
                    hex::decode(h.trim())
                        .ok()
                        .filter(|m| matches!(m.len(), 32 | 48 | 64))
                        .with_context(|| {
                            format!(
                                "--device-measurement {h:?} is not a SHA-256/384/512 digest in hex"
                            )
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            let terms = protocol::FlTaskTerms {
                task: id.clone(),
                arch,
                rule: rule.to_string(),
                clip_norm: clip,
                noise_multiplier: noise,
                min_clients,
                max_clients,
                rounds,
                devices,
                allow_insecure_devices,
            };
            let mut ks = keystore.open()?;
            ks.define_task(terms.clone())?;
            eprintln!("defined {}", terms.summary());
            if allow_insecure_devices {
                eprintln!(
                    "WARNING: INSECURE emulated-platform devices may take part in task {id}: demos only"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Task(TaskCommand::Show { id, keystore }) => {
            let ks = keystore.open()?;
            match ks.task(&id)? {
                Some(terms) => {
                    println!("{}", serde_json::to_string_pretty(&terms)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => bail!(
                    "no task {id:?} is defined; define it with `model-provider task define --id {id} ...`"
                ),
            }
        }
        Command::Serve {
            listen,
            certifier,
            policy_cert,
            platform,
            platform_key,
            allow_insecure_peers,
            revocation_refresh_secs,
            announce_to,
            announce_every_secs,
            federated_tasks,
            federated_runtimes,
            fresh_evidence,
            keystore,
        } => {
            let keystore = keystore.open()?;
            for task in &federated_tasks {
                if keystore.task(task)?.is_none() {
                    bail!(
                        "--federated-task {task}: the task has no terms; define them first with `model-provider task define --id {task} ...`"
                    );
                }
            }
            let platform = platform.open(platform_key.as_deref())?;
            serve::serve(serve::ServeConfig {
                listen,
                certifier,
                policy_cert,
                platform,
                allow_insecure_peers,
                keystore,
                revocation_refresh: std::time::Duration::from_secs(revocation_refresh_secs),
                fresh_evidence,
                announce_to,
                announce_every: std::time::Duration::from_secs(announce_every_secs),
                intake: deposit::Intake {
                    tasks: federated_tasks,
                    runtimes: federated_runtimes,
                },
                limits: protocol::ListenLimits::default(),
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
