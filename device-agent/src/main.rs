//! `device-agent`: the user's side, inside a CCA realm on the phone. It keeps
//! the user's records sealed to its own measurement and names them by opaque
//! handles; it sends them only to an admitted runtime (remote inference) or
//! runs the provider's model itself, kept re-sealed to its measurement
//! (on-device inference).
//!
//! Must never: send a byte of user data to a peer whose role and pinned
//! measurement were not verified in the handshake, write user data or model
//! plaintext anywhere but the sealed store, or derive a sealing key on a
//! platform that has none.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use attestation::atls::PolicyAnchor;
use attestation::certifier::policy::Role;
use attestation::platform::{Backend, EvidenceSource};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use device_agent::connect::{Expected, connect_with, parse_measurements};
use device_agent::dataset::{self, Dataset, LabelColumn};
use device_agent::results::Report;
use device_agent::retry::{Backoff, Retrier};
use device_agent::store::{Handle, LocalStore};
use device_agent::{federated, identity, on_device, remote};

const EXAMPLES: &str = "\
Examples (INSECURE emulated platform on a laptop; in a realm use --platform islet or tsm):
  P=\"--state agent --platform insecure-emulated --platform-key cpak.key.pem\"
  device-agent import $P --csv digits_test.csv --labels last --sample-shape 1,8,8  # prints a handle
  device-agent infer $P --certifier 127.0.0.1:8123 --policy-cert svc/policy_cert.der \\
      --allow-insecure-peers --runtime 127.0.0.1:8300 --model digits --handle <HANDLE>
  device-agent fetch-model $P --certifier 127.0.0.1:8123 --policy-cert svc/policy_cert.der \\
      --allow-insecure-peers --provider 127.0.0.1:8200 --store file:///var/lib/cca-ml/blobs --model cnn
  device-agent infer $P --local --model cnn --handle <HANDLE> --json

Exit status:
  0  done
  1  the command failed (the reason is on stderr)
  2  the agent could not start
  3  train: a round this device trained for was not aggregated with its update
     (discarded for too few updates by the deadline, or the update refused);
     the output names each such round
  4  infer: the batch stopped part-way (retries spent, or a refusal); the
     output holds the answered samples, stderr says how many and why";

/// `infer`'s exit status when only part of the batch was answered.
const EXIT_PARTIAL: u8 = 4;

/// `train`'s exit status when a round it took part in was not aggregated.
const EXIT_NOT_AGGREGATED: u8 = 3;

#[derive(Parser, Debug)]
#[command(name = "device-agent", version, about = "Keep user data sealed in the realm; infer remotely at an attested runtime or on-device", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the agent keeps its sealed state and gets its evidence.
#[derive(Args, Debug)]
struct Realm {
    /// State directory (sealed records, models, identity).
    #[arg(long)]
    state: PathBuf,
    /// Evidence and sealing-key source.
    #[arg(long, value_enum)]
    platform: Backend,
    /// Emulated platform key (with --platform insecure-emulated).
    #[arg(long)]
    platform_key: Option<PathBuf>,
}

impl Realm {
    fn platform(&self) -> Result<Arc<dyn EvidenceSource>> {
        Ok(self.platform.open(self.platform_key.as_deref())?)
    }

    /// The store; it writes only when a command stores something.
    fn store(&self, platform: &dyn EvidenceSource) -> Result<LocalStore> {
        let key = platform
            .sealing_key()
            .context("the local store needs this realm's sealing key")?;
        Ok(LocalStore::open(&self.state, &key)?)
    }

    /// The store for a command that only reads: every write is refused, so
    /// it works on a store this process may not write.
    fn store_read_only(&self, platform: &dyn EvidenceSource) -> Result<LocalStore> {
        let key = platform
            .sealing_key()
            .context("the local store needs this realm's sealing key")?;
        Ok(LocalStore::open_read_only(&self.state, &key)?)
    }
}

/// How the agent is admitted and checks peers (needed to talk to anyone).
#[derive(Args, Debug)]
struct Admission {
    /// Certifier service address.
    #[arg(long)]
    certifier: Option<String>,
    /// The policy certificate (DER), the only trust root.
    #[arg(long)]
    policy_cert: Option<PathBuf>,
    /// Accept peers admitted on the INSECURE emulated platform.
    #[arg(long)]
    allow_insecure_peers: bool,
    /// High-assurance mode: after the handshake, give and demand fresh
    /// evidence bound to this TLS session (for a runtime or provider run
    /// with `--fresh-evidence`).
    #[arg(long)]
    fresh_evidence: bool,
    /// Tries after the first when the certifier, runtime or provider is
    /// unreachable, busy or drops the connection (never after a peer failed
    /// verification or refused on policy); 0 disables retrying.
    #[arg(long, default_value_t = 4, value_name = "N")]
    retries: u32,
    /// Longest pause between tries, in seconds (pauses grow from 0.25 s,
    /// doubling, with random jitter).
    #[arg(long, default_value_t = 8.0, value_name = "SECS", value_parser = retry_secs)]
    retry_max_secs: f64,
}

/// A pause cap between 0 and one hour.
fn retry_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be between 0 and 3600 seconds".into())
    }
}

impl Admission {
    /// Admitted (reusing a stored certificate when `store` is given), then
    /// connected to `addr`, which must hold `role` (and a pinned measurement).
    async fn connect(
        &self,
        store: Option<&LocalStore>,
        platform: &dyn EvidenceSource,
        addr: &str,
        role: Role,
        pinned: &[String],
    ) -> Result<device_agent::connect::Conn> {
        let (certifier, anchor) = self.require()?;
        let expected = Expected {
            role,
            measurements: parse_measurements(pinned)?,
            allow_insecure: self.allow_insecure_peers,
        };
        let fresh = self.fresh_evidence.then_some(platform);
        let mut retrier = self.retrier(format!("connecting to the {} at {addr}", expected.role));
        loop {
            let attempt = async {
                let identity =
                    identity::device_identity(store, platform, &certifier, &anchor).await?;
                connect_with(
                    addr, &identity, &anchor, &certifier, &expected, store, fresh,
                )
                .await
            };
            match attempt.await {
                Ok(conn) => return Ok(conn),
                Err(e) => retrier.after(e).await?,
            }
        }
    }

    /// Retries for `what` under `--retries` and `--retry-max-secs`.
    fn retrier(&self, what: String) -> Retrier {
        let backoff = Backoff {
            retries: self.retries,
            base: Duration::from_millis(250),
            max: Duration::from_secs_f64(self.retry_max_secs),
        };
        Retrier::new(backoff, what)
    }

    /// The certifier address and the policy anchor, or what is missing.
    fn require(&self) -> Result<(String, PolicyAnchor)> {
        let (Some(certifier), Some(cert)) = (&self.certifier, &self.policy_cert) else {
            bail!("talking to a runtime or provider needs --certifier ADDR and --policy-cert FILE");
        };
        let der = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        let anchor = PolicyAnchor::from_certificate_der(&der).context("the policy certificate")?;
        Ok((certifier.clone(), anchor))
    }
}

/// Which data to run.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Input {
    /// A handle from `import`.
    #[arg(long)]
    handle: Option<String>,
    /// A tensor file: {"shape": [...], "dtype": "f32"|"i64"|"u8", "data": [...]}.
    #[arg(long)]
    input: Option<PathBuf>,
    /// A CSV file, one sample per row (batch mode).
    #[arg(long)]
    csv: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Labels {
    /// No label column.
    None,
    /// The last column is the true label (accuracy is reported).
    Last,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Import a CSV or tensor file into the sealed store; prints its handle.
    Import {
        #[command(flatten)]
        realm: Realm,
        /// CSV file (no header), one sample per row.
        #[arg(long, conflicts_with = "tensor", required_unless_present = "tensor")]
        csv: Option<PathBuf>,
        /// Tensor JSON file (one sample).
        #[arg(long)]
        tensor: Option<PathBuf>,
        /// CSV label column.
        #[arg(long, value_enum, default_value = "none")]
        labels: Labels,
        /// Shape of one CSV sample without the batch axis, e.g. 1,8,8 [default: the columns].
        #[arg(long)]
        sample_shape: Option<String>,
    },
    /// List stored handles.
    List {
        #[command(flatten)]
        realm: Realm,
    },
    /// Erase a handle's data.
    Delete {
        #[command(flatten)]
        realm: Realm,
        /// The handle.
        #[arg(long)]
        handle: String,
    },
    /// Run a model on data: at an attested runtime, or with --local on this device.
    Infer {
        #[command(flatten)]
        realm: Realm,
        /// Model id.
        #[arg(long)]
        model: String,
        #[command(flatten)]
        input: Input,
        /// CSV label column (with --csv).
        #[arg(long, value_enum, default_value = "last")]
        labels: Labels,
        /// Shape of one CSV sample without the batch axis (with --csv; a
        /// handle keeps the shape it was imported with).
        #[arg(long, requires = "csv")]
        sample_shape: Option<String>,
        /// Run the model fetched with `fetch-model` here, in the realm.
        #[arg(long)]
        local: bool,
        /// Runtime address (remote inference).
        #[arg(long, required_unless_present = "local", conflicts_with = "local")]
        runtime: Option<String>,
        /// Accept only a runtime with this measurement (hex; repeat) [default: any the policy trusts].
        #[arg(long = "runtime-measurement")]
        runtime_measurements: Vec<String>,
        #[command(flatten)]
        admission: Admission,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Take part in a runtime's federated-learning task with a labelled handle.
    ///
    /// Says for each round whether it was aggregated or discarded, and exits
    /// with status 3 if any round this device trained for was not aggregated
    /// with its update.
    Train {
        #[command(flatten)]
        realm: Realm,
        #[command(flatten)]
        admission: Admission,
        /// Runtime address.
        #[arg(long)]
        runtime: String,
        /// Accept only a runtime with this measurement (hex; repeat).
        #[arg(long = "runtime-measurement")]
        runtime_measurements: Vec<String>,
        /// The federated task.
        #[arg(long)]
        task: String,
        /// A labelled handle from `import` (64 features per sample).
        #[arg(long)]
        handle: String,
        /// Rounds to take part in (stops earlier when the task completes).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Local epochs per round.
        #[arg(long, default_value_t = 2)]
        epochs: usize,
        /// SGD learning rate.
        #[arg(long, default_value_t = 0.5)]
        learning_rate: f32,
        /// A labelled handle to evaluate the last global model on (e.g. a test set).
        #[arg(long)]
        eval_handle: Option<String>,
        /// Refuse a task whose differential-privacy noise multiplier is below Z.
        #[arg(
            long,
            value_name = "Z",
            help_heading = "This device's floor for the task's terms"
        )]
        min_noise: Option<f64>,
        /// Refuse a task that does not clip updates to at most this L2 norm.
        #[arg(
            long,
            value_name = "C",
            help_heading = "This device's floor for the task's terms"
        )]
        max_clip: Option<f32>,
        /// Refuse a task that aggregates rounds of fewer than N updates.
        #[arg(
            long,
            value_name = "N",
            help_heading = "This device's floor for the task's terms"
        )]
        min_clients: Option<u32>,
        /// Print one JSON object at the end.
        #[arg(long)]
        json: bool,
    },
    /// Get a model for on-device use and keep it sealed to this realm.
    FetchModel {
        #[command(flatten)]
        realm: Realm,
        #[command(flatten)]
        admission: Admission,
        /// Model provider address.
        #[arg(long)]
        provider: String,
        /// Accept only a provider with this measurement (hex; repeat).
        #[arg(long = "provider-measurement")]
        provider_measurements: Vec<String>,
        /// Blob store URL holding the sealed bundles.
        #[arg(long)]
        store: String,
        /// Model id.
        #[arg(long)]
        model: String,
        /// Pin the model's input shape, D,D,... (as sealed with `model-provider seal --input-shape`).
        #[arg(long)]
        input_shape: Option<String>,
    },
}

fn shape(s: &Option<String>) -> Result<Option<Vec<u64>>> {
    s.as_deref()
        .map(|s| {
            s.split(',')
                .map(|d| d.trim().parse::<u64>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("shape {s:?} is not D,D,..."))
        })
        .transpose()
}

fn read_csv(path: &Path, labels: Labels, sample_shape: &Option<String>) -> Result<Dataset> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let labels = match labels {
        Labels::None => LabelColumn::None,
        Labels::Last => LabelColumn::Last,
    };
    let shape = shape(sample_shape)?;
    dataset::parse_csv(&text, labels, shape.as_deref())
        .with_context(|| format!("{} is not usable", path.display()))
}

fn read_tensor(path: &Path) -> Result<Dataset> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    dataset::parse_tensor_json(&text).with_context(|| format!("{} is not usable", path.display()))
}

fn progress(n: usize) -> ProgressBar {
    let bar = ProgressBar::new(n as u64);
    if n < 2 || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} samples {eta}") {
        bar.set_style(style);
    }
    bar
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Import {
            realm,
            csv,
            tensor,
            labels,
            sample_shape,
        } => {
            let platform = realm.platform()?;
            let store = realm.store(platform.as_ref())?;
            let data = match (csv, tensor) {
                (Some(csv), _) => read_csv(&csv, labels, &sample_shape)?,
                (None, Some(t)) => read_tensor(&t)?,
                (None, None) => bail!("give --csv or --tensor"),
            };
            let handle = store.import(&data)?;
            eprintln!(
                "imported {} samples{}",
                data.samples.len(),
                if data.labels.is_some() {
                    " with labels"
                } else {
                    ""
                }
            );
            println!("{handle}");
        }
        Command::List { realm } => {
            let platform = realm.platform()?;
            let store = realm.store_read_only(platform.as_ref())?;
            for (handle, size) in store.list()? {
                println!("{handle} {size:>10}");
            }
        }
        Command::Delete { realm, handle } => {
            let platform = realm.platform()?;
            let store = realm.store(platform.as_ref())?;
            let h: Handle = handle.parse()?;
            store.delete(&h)?;
            eprintln!("erased {h}");
        }
        Command::Infer {
            realm,
            model,
            input,
            labels,
            sample_shape,
            local,
            runtime,
            runtime_measurements,
            admission,
            json,
        } => {
            let platform = realm.platform()?;
            // The store is needed for handles, local models and identity
            // reuse. On-device inference only reads it; remote inference
            // may keep a renewed admission certificate in it.
            let opened = if local {
                realm.store_read_only(platform.as_ref())
            } else {
                realm.store(platform.as_ref())
            };
            let store = match opened {
                Ok(s) => Some(s),
                Err(e) if local || input.handle.is_some() => return Err(e),
                Err(e) => {
                    eprintln!("note: no sealed store, admitting afresh ({e:#})");
                    None
                }
            };
            let data = match (&input.handle, &input.input, &input.csv) {
                (Some(h), _, _) => {
                    let h: Handle = h.parse()?;
                    store
                        .as_ref()
                        .context("the sealed store is unavailable")?
                        .load(&h)?
                }
                (None, Some(f), _) => read_tensor(f)?,
                (None, None, Some(c)) => read_csv(c, labels, &sample_shape)?,
                (None, None, None) => bail!("give --handle, --input or --csv"),
            };
            let bar = progress(data.samples.len());
            let ((outputs, latencies), place, stopped) = if local {
                let store = store.as_ref().context("the sealed store is unavailable")?;
                (
                    on_device::infer(store, &model, &data.samples, &bar)?,
                    "on-device",
                    None,
                )
            } else {
                let runtime = runtime.context("--runtime ADDR is required without --local")?;
                let mut batch = remote::Batch::default();
                let mut retrier =
                    admission.retrier(format!("inference at the runtime at {runtime}"));
                let stopped = loop {
                    let connected = admission
                        .connect(
                            store.as_ref(),
                            platform.as_ref(),
                            &runtime,
                            Role::runtime(),
                            &runtime_measurements,
                        )
                        .await;
                    // The connect retried on its own; what failed there is final.
                    let mut conn = match connected {
                        Ok(conn) => conn,
                        Err(e) => break Some(e),
                    };
                    let before = batch.next();
                    match batch.run(&mut conn, &model, &data.samples, &bar).await {
                        Ok(()) => break None,
                        Err(e) => {
                            if batch.next() > before {
                                retrier.progressed();
                            }
                            if let Err(e) = retrier.after(e).await {
                                break Some(e);
                            }
                            eprintln!(
                                "resuming the batch at sample {} of {}",
                                batch.next(),
                                data.samples.len()
                            );
                        }
                    }
                };
                match stopped {
                    Some(e) if batch.next() == 0 => return Err(e),
                    stopped => ((batch.outputs, batch.latencies), "remote", stopped),
                }
            };
            bar.finish_and_clear();
            let answered = outputs.len();
            Report {
                model: &model,
                place,
                outputs,
                labels: data.labels.as_deref().map(|l| &l[..answered.min(l.len())]),
                latencies,
            }
            .print(json);
            if let Some(e) = stopped {
                eprintln!(
                    "error: answered {answered} of {} samples (the results above are for those); stopped: {e:#}",
                    data.samples.len()
                );
                return Ok(ExitCode::from(EXIT_PARTIAL));
            }
        }
        Command::Train {
            realm,
            admission,
            runtime,
            runtime_measurements,
            task,
            handle,
            rounds,
            epochs,
            learning_rate,
            eval_handle,
            min_noise,
            max_clip,
            min_clients,
            json,
        } => {
            let floor = protocol::DeviceFloor {
                min_noise,
                max_clip,
                min_clients,
            };
            let platform = realm.platform()?;
            let store = realm.store(platform.as_ref())?;
            let data = store.load(&handle.parse()?)?;
            let mut conn = admission
                .connect(
                    Some(&store),
                    platform.as_ref(),
                    &runtime,
                    Role::runtime(),
                    &runtime_measurements,
                )
                .await?;
            let cfg = fl::train::TrainConfig {
                epochs,
                batch_size: 32,
                learning_rate,
                optimizer: fl::train::Optimizer::Sgd,
                seed: 1,
            };
            let eval = match &eval_handle {
                Some(h) => Some(federated::features(&store.load(&h.parse()?)?)?),
                None => None,
            };
            let mut shown_terms = None;
            let shown = |t: &protocol::FlTaskTerms| {
                eprintln!("{}", t.summary());
                shown_terms = Some(t.clone());
            };
            let (logs, last) = federated::participate(&mut conn, &task, &floor, &data, rounds, &cfg, shown, |l| {
                if !json {
                    match (l.accepted, &l.reason) {
                        (None, _) => println!(
                            "final global model (after round {}): accuracy on this device's data {:.4}",
                            l.round.saturating_sub(1),
                            l.global_accuracy
                        ),
                        (Some(true), _) if l.aggregated == Some(true) => println!(
                            "round {}: global model accuracy on this device's data {:.4}; update accepted, round aggregated ({} updates)",
                            l.round,
                            l.global_accuracy,
                            l.updates.unwrap_or_default()
                        ),
                        (Some(true), _) => println!(
                            "round {}: global model accuracy on this device's data {:.4}; update accepted, round DISCARDED (not enough updates: {} of {} by the deadline)",
                            l.round,
                            l.global_accuracy,
                            l.updates.unwrap_or_default(),
                            l.min_clients.unwrap_or_default()
                        ),
                        (Some(false), r) => println!(
                            "round {}: global model accuracy {:.4}; update REFUSED: {}",
                            l.round,
                            l.global_accuracy,
                            r.as_deref().unwrap_or("no reason given")
                        ),
                    }
                }
            })
            .await?;
            let eval_accuracy = match (&eval, &last) {
                (Some((x, y)), Some(global)) => {
                    let arch = fl::onnx_model::arch_of(global)?;
                    Some(fl::train::accuracy(&arch, global, x, y)?)
                }
                _ => None,
            };
            let summary = federated::Summary::of(&logs);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "task": task,
                        "terms": shown_terms,
                        "rounds": logs,
                        "eval_accuracy": eval_accuracy,
                        "summary": summary,
                    })
                );
            } else {
                if let Some(a) = eval_accuracy {
                    println!("last global model: accuracy {a:.4} on the evaluation handle");
                }
                println!("{}", summary.line());
            }
            if !summary.all_aggregated() {
                eprintln!(
                    "not every round this device trained for was aggregated: {}",
                    summary.line()
                );
                return Ok(ExitCode::from(EXIT_NOT_AGGREGATED));
            }
        }
        Command::FetchModel {
            realm,
            admission,
            provider,
            provider_measurements,
            store,
            model,
            input_shape,
        } => {
            let platform = realm.platform()?;
            let local = realm.store(platform.as_ref())?;
            let mut conn = admission
                .connect(
                    Some(&local),
                    platform.as_ref(),
                    &provider,
                    Role::provider(),
                    &provider_measurements,
                )
                .await?;
            let input_shape =
                shape(&input_shape)?.map(|v| v.into_iter().map(|d| d as usize).collect());
            let (version, size) =
                on_device::fetch_model(&mut conn, &store, &model, input_shape, &local).await?;
            eprintln!("model {model} version {version} ({size} bytes) is sealed to this realm");
        }
    }
    Ok(ExitCode::SUCCESS)
}
