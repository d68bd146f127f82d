//! `realm-runtime serve` settings: command-line flags over an optional TOML
//! file, resolved into one [`Config`]. Pure: tests drive it with strings.
//!
//! Must never: fall back to the INSECURE emulated platform, or to accepting
//! emulated peers, unless the operator asked for it by name.

use std::collections::HashMap;
use std::path::PathBuf;

use attestation::platform::Backend;
use blob_store::BlobId;
use clap::Args;
use serde::Deserialize;
use thiserror::Error;

use crate::models::ModelSpec;
use fl::aggregate::Rule;
use protocol::HostNarrowing;

/// Flags of `serve` (each overrides the same key in `--config`).
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Device-facing attested TLS listener [default: 127.0.0.1:8300; port 0 picks one].
    #[arg(long)]
    pub listen: Option<String>,
    /// Prometheus endpoint [default: 127.0.0.1:9300]; keep it on loopback.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Certifier service address.
    #[arg(long)]
    pub certifier: Option<String>,
    /// The policy certificate (DER), the only trust root.
    #[arg(long)]
    pub policy_cert: Option<PathBuf>,
    /// Model provider address (key release).
    #[arg(long)]
    pub provider: Option<String>,
    /// Blob store URL: file:///dir or s3://bucket/prefix.
    #[arg(long)]
    pub store: Option<String>,
    /// Evidence source.
    #[arg(long, value_enum)]
    pub platform: Option<Backend>,
    /// Emulated platform key (with --platform insecure-emulated).
    #[arg(long)]
    pub platform_key: Option<PathBuf>,
    /// Accept peers admitted on the INSECURE emulated platform.
    #[arg(long)]
    pub allow_insecure_peers: bool,
    /// High-assurance mode: every device session, and every session with
    /// the provider, starts with fresh evidence both ways (bound to the TLS
    /// session). Devices need `--fresh-evidence` too, the provider
    /// `serve --fresh-evidence`.
    #[arg(long)]
    pub fresh_evidence: bool,
    /// A model to serve, ID=BUNDLE_HASH (repeat). More can be announced by the provider.
    #[arg(long = "model", value_name = "ID=BUNDLE")]
    pub models: Vec<String>,
    /// Pin a model's input shape, ID=D,D,... (0 keeps an axis symbolic), for
    /// models tract cannot type with symbolic dimensions.
    #[arg(long = "input-shape", value_name = "ID=SHAPE")]
    pub input_shapes: Vec<String>,
    /// Memory for loaded models, MiB [default: 1024].
    #[arg(long)]
    pub cache_mb: Option<usize>,
    /// Concurrent inferences [default: number of cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Inferences that may wait for a worker before "busy" [default: 64].
    #[arg(long)]
    pub queue: Option<usize>,
    /// Open device connections at most [default: 512].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Largest message a device may send, MiB [default: 16].
    #[arg(long)]
    pub max_message_mb: Option<usize>,
    /// Seconds between fetches of the certifier's revocations [default: 60].
    #[arg(long)]
    pub revocation_refresh_secs: Option<u64>,
    /// Coordinate a federated-learning task of this name (devices join it).
    /// Its terms (rule, clipping, noise, client bounds, rounds, device
    /// builds) come from the model provider; the `--fl-*` flags below may
    /// only narrow them, and one that would weaken them stops the runtime.
    #[arg(long, help_heading = "Federated learning")]
    pub fl_task: Option<String>,
    /// Must equal the provider's architecture: softmax or mlp.
    #[arg(long, help_heading = "Federated learning")]
    pub fl_arch: Option<String>,
    /// Must equal the provider's aggregation rule (fedavg, median, trimmed-mean:B, krum:F, multi-krum:F:M).
    #[arg(long, help_heading = "Federated learning")]
    pub fl_rule: Option<String>,
    /// Lower the per-update L2 clipping norm below the provider's.
    #[arg(long, help_heading = "Federated learning")]
    pub fl_clip: Option<f32>,
    /// Raise the Gaussian noise multiplier z above the provider's.
    #[arg(long, help_heading = "Federated learning")]
    pub fl_noise: Option<f64>,
    /// Raise the updates needed to aggregate a round.
    #[arg(long, help_heading = "Federated learning")]
    pub fl_min_clients: Option<u32>,
    /// Lower the updates that close a round early.
    #[arg(long, help_heading = "Federated learning")]
    pub fl_max_clients: Option<u32>,
    /// Seconds a round accepts updates (stragglers after it are refused)
    /// [default: 60]. Not a privacy setting: the host chooses it.
    #[arg(long, help_heading = "Federated learning")]
    pub fl_deadline_secs: Option<u64>,
    /// Run fewer rounds than the provider's terms allow.
    #[arg(long, help_heading = "Federated learning")]
    pub fl_rounds: Option<u64>,
    /// Let only these of the provider's allowed device measurements join
    /// (hex; repeat).
    #[arg(
        long = "fl-device-measurement",
        value_name = "HEX",
        help_heading = "Federated learning"
    )]
    pub fl_device_measurements: Vec<String>,
}

/// What the runtime's host says about a federated task: its name, how it
/// narrows the provider's terms, and the round deadline.
#[derive(Debug, Clone)]
pub struct FlHost {
    /// The task.
    pub task: String,
    /// Narrowings of the provider's terms.
    pub narrowing: HostNarrowing,
    /// Round deadline.
    pub deadline: std::time::Duration,
}

impl ServeArgs {
    fn federated(&self) -> Result<Option<FlHost>, ConfigError> {
        let Some(task) = &self.fl_task else {
            return Ok(None);
        };
        let bad = |m: String| ConfigError::Invalid(m);
        // In fl's canonical text, as the provider writes it, so equal rules compare equal.
        let rule = self
            .fl_rule
            .as_deref()
            .map(|r| r.parse::<Rule>().map(|r| r.to_string()))
            .transpose()
            .map_err(|e| bad(format!("--fl-rule: {e}")))?;
        let devices = self
            .fl_device_measurements
            .iter()
            .map(|h| match hex::decode(h.trim()) {
                Ok(m) if (16..=64).contains(&m.len()) => Ok(m),
                _ => Err(bad(format!(
                    "--fl-device-measurement {h:?}: a measurement is 16 to 64 bytes of hex"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(FlHost {
            task: task.clone(),
            narrowing: HostNarrowing {
                rule,
                arch: self.fl_arch.clone(),
                clip_norm: self.fl_clip,
                noise_multiplier: self.fl_noise,
                min_clients: self.fl_min_clients,
                max_clients: self.fl_max_clients,
                rounds: self.fl_rounds,
                devices,
                allow_insecure_devices: None,
            },
            deadline: std::time::Duration::from_secs(self.fl_deadline_secs.unwrap_or(60).max(1)),
        }))
    }
}

/// The TOML file (same names as the flags, with underscores).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    metrics: Option<String>,
    certifier: Option<String>,
    policy_cert: Option<PathBuf>,
    provider: Option<String>,
    store: Option<String>,
    platform: Option<String>,
    platform_key: Option<PathBuf>,
    allow_insecure_peers: Option<bool>,
    fresh_evidence: Option<bool>,
    cache_mb: Option<usize>,
    workers: Option<usize>,
    queue: Option<usize>,
    max_connections: Option<usize>,
    max_message_mb: Option<usize>,
    revocation_refresh_secs: Option<u64>,
    #[serde(default)]
    model: Vec<FileModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    id: String,
    bundle: String,
    input_shape: Option<Vec<usize>>,
}

/// A setting is missing or wrong.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Required and given nowhere.
    #[error("--{flag} is required (or `{key} = ...` in the --config file)")]
    Missing {
        /// Flag name.
        flag: &'static str,
        /// TOML key.
        key: &'static str,
    },
    /// A value does not parse.
    #[error("{0}")]
    Invalid(String),
    /// The TOML file.
    #[error("config file {path}: {reason}")]
    File {
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Everything `serve` needs, resolved.
#[derive(Debug)]
pub struct Config {
    /// Device listener.
    pub listen: String,
    /// Metrics listener.
    pub metrics: String,
    /// Certifier address.
    pub certifier: String,
    /// Policy certificate file.
    pub policy_cert: PathBuf,
    /// Provider address.
    pub provider: String,
    /// Blob store URL.
    pub store: String,
    /// Evidence source.
    pub platform: Backend,
    /// Emulated platform key file.
    pub platform_key: Option<PathBuf>,
    /// Accept emulated peers.
    pub allow_insecure_peers: bool,
    /// High-assurance mode.
    pub fresh_evidence: bool,
    /// Models by id.
    pub models: HashMap<String, ModelSpec>,
    /// Cache size in bytes.
    pub cache_bytes: usize,
    /// Inference workers.
    pub workers: usize,
    /// Queue length.
    pub queue: usize,
    /// Connection limit.
    pub max_connections: usize,
    /// Frame limit in bytes.
    pub max_message: usize,
    /// Revocation refresh period, seconds.
    pub revocation_refresh_secs: u64,
    /// Federated-learning coordination, if enabled (the terms come from
    /// the provider at start).
    pub federated: Option<FlHost>,
}

fn bundle_id(id: &str, hex: &str) -> Result<BlobId, ConfigError> {
    hex.parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "model {id}: {hex:?} is not a 64-hex-digit bundle hash"
        ))
    })
}

fn parse_shape(id: &str, s: &str) -> Result<Vec<usize>, ConfigError> {
    s.split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| ConfigError::Invalid(format!("input shape of {id}: {s:?} is not D,D,...")))
}

fn platform_name(s: &str) -> Result<Backend, ConfigError> {
    match s {
        "tsm" => Ok(Backend::Tsm),
        "islet" => Ok(Backend::Islet),
        "insecure-emulated" => Ok(Backend::InsecureEmulated),
        _ => Err(ConfigError::Invalid(format!(
            "platform {s:?}: tsm, islet or insecure-emulated"
        ))),
    }
}

impl Config {
    /// Read `args.config` (if any) and apply the flags over it.
    pub fn load(args: ServeArgs) -> Result<Self, ConfigError> {
        let text = match &args.config {
            Some(path) => Some(
                std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
            ),
            None => None,
        };
        Self::resolve(args, text.as_deref())
    }

    /// Resolve flags over the TOML `file` text.
    pub fn resolve(args: ServeArgs, file: Option<&str>) -> Result<Self, ConfigError> {
        let path = args.config.clone().unwrap_or_default();
        let f: FileConfig = match file {
            Some(text) => toml::from_str(text).map_err(|e| ConfigError::File {
                path,
                reason: e.to_string(),
            })?,
            None => FileConfig::default(),
        };
        let need = |v: Option<String>, flag, key| v.ok_or(ConfigError::Missing { flag, key });
        let platform = match (args.platform, f.platform.as_deref()) {
            (Some(p), _) => p,
            (None, Some(name)) => platform_name(name)?,
            (None, None) => {
                return Err(ConfigError::Missing {
                    flag: "platform",
                    key: "platform",
                });
            }
        };
        let mut models = HashMap::new();
        for m in f.model {
            let spec = ModelSpec {
                bundle: bundle_id(&m.id, &m.bundle)?,
                input_shape: m.input_shape,
            };
            models.insert(m.id, spec);
        }
        for m in &args.models {
            let (id, hex) = m.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!("--model {m:?}: expected ID=BUNDLE_HASH"))
            })?;
            let bundle = bundle_id(id, hex)?;
            let input_shape = models
                .get(id)
                .and_then(|s: &ModelSpec| s.input_shape.clone());
            models.insert(
                id.to_string(),
                ModelSpec {
                    bundle,
                    input_shape,
                },
            );
        }
        for s in &args.input_shapes {
            let (id, shape) = s.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!("--input-shape {s:?}: expected ID=D,D,..."))
            })?;
            let spec = models.get_mut(id).ok_or_else(|| {
                ConfigError::Invalid(format!("--input-shape {id}: no --model {id}=... given"))
            })?;
            spec.input_shape = Some(parse_shape(id, shape)?);
        }
        let federated = args.federated()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let max_message = args.max_message_mb.or(f.max_message_mb).unwrap_or(16);
        if !(1..=1024).contains(&max_message) {
            return Err(ConfigError::Invalid(
                "max_message_mb must be 1..=1024".into(),
            ));
        }
        Ok(Config {
            listen: args
                .listen
                .or(f.listen)
                .unwrap_or_else(|| "127.0.0.1:8300".into()),
            metrics: args
                .metrics
                .or(f.metrics)
                .unwrap_or_else(|| "127.0.0.1:9300".into()),
            certifier: need(args.certifier.or(f.certifier), "certifier", "certifier")?,
            policy_cert: args
                .policy_cert
                .or(f.policy_cert)
                .ok_or(ConfigError::Missing {
                    flag: "policy-cert",
                    key: "policy_cert",
                })?,
            provider: need(args.provider.or(f.provider), "provider", "provider")?,
            store: need(args.store.or(f.store), "store", "store")?,
            platform,
            platform_key: args.platform_key.or(f.platform_key),
            allow_insecure_peers: args.allow_insecure_peers
                || f.allow_insecure_peers.unwrap_or(false),
            fresh_evidence: args.fresh_evidence || f.fresh_evidence.unwrap_or(false),
            models,
            cache_bytes: args
                .cache_mb
                .or(f.cache_mb)
                .unwrap_or(1024)
                .saturating_mul(1 << 20),
            workers: args.workers.or(f.workers).unwrap_or(cores).max(1),
            queue: args.queue.or(f.queue).unwrap_or(64),
            max_connections: args
                .max_connections
                .or(f.max_connections)
                .unwrap_or(512)
                .max(1),
            max_message: max_message << 20,
            revocation_refresh_secs: args
                .revocation_refresh_secs
                .or(f.revocation_refresh_secs)
                .unwrap_or(60)
                .max(1),
            federated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "5a830ab5e1a1968f829ecb81fec359fb8fef0cd7d50f6741ec18b4b136dd4ecb";

    fn file() -> String {
        format!(
            r#"
certifier = "127.0.0.1:8123"
policy_cert = "svc/policy_cert.der"
provider = "127.0.0.1:8200"
store = "file:///var/lib/cca-ml/blobs"
platform = "tsm"
queue = 8

[[model]]
id = "ocr"
bundle = "{HASH}"
input_shape = [0, 3, 640, 640]
"#
        )
    }

    #[test]
    fn a_task_lists_the_device_measurements_it_admits() {
        let args = |m: &str| ServeArgs {
            fl_task: Some("digits".into()),
            fl_rule: Some("trimmed-mean:0.20".into()),
            fl_noise: Some(1.5),
            fl_device_measurements: vec![m.to_string()],
            ..Default::default()
        };
        let m = "ab".repeat(64);
        let fl = Config::resolve(args(&m), Some(&file()))
            .unwrap()
            .federated
            .unwrap();
        assert_eq!(fl.narrowing.devices, vec![vec![0xab; 64]]);
        // The rule is kept in fl's canonical text, as the provider writes it.
        assert_eq!(fl.narrowing.rule.as_deref(), Some("trimmed-mean:0.2"));
        assert_eq!(fl.narrowing.noise_multiplier, Some(1.5));
        assert_eq!(fl.narrowing.clip_norm, None);
        assert_eq!(fl.deadline, std::time::Duration::from_secs(60));
        for bad in ["zz", "abcd", &"ab".repeat(65)] {
            let e = Config::resolve(args(bad), Some(&file())).unwrap_err();
            assert!(e.to_string().contains("--fl-device-measurement"), "{e}");
        }
        let e = Config::resolve(
            ServeArgs {
                fl_task: Some("digits".into()),
                fl_rule: Some("mean".into()),
                ..Default::default()
            },
            Some(&file()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--fl-rule"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let args = ServeArgs {
            listen: Some("0.0.0.0:1".into()),
            queue: Some(3),
            models: vec![format!("digits={HASH}")],
            ..Default::default()
        };
        let c = Config::resolve(args, Some(&file())).unwrap();
        assert_eq!(c.listen, "0.0.0.0:1");
        assert_eq!(c.queue, 3);
        assert_eq!(c.platform, Backend::Tsm);
        assert!(!c.allow_insecure_peers);
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.models["ocr"].input_shape, Some(vec![0, 3, 640, 640]));
        assert_eq!(c.metrics, "127.0.0.1:9300");
    }

    proptest::proptest! {
        // Any flag values and any file text: an error or a config, no panic.
        #[test]
        fn arbitrary_input_never_panics(
            models in proptest::collection::vec(".{0,80}", 0..3),
            shapes in proptest::collection::vec(".{0,40}", 0..3),
            text in ".{0,200}",
        ) {
            let args = ServeArgs { models, input_shapes: shapes, ..Default::default() };
            let _ = Config::resolve(args, Some(&text));
        }
    }

    #[test]
    fn missing_and_bad_values_say_what_to_do() {
        let e = Config::resolve(ServeArgs::default(), None).unwrap_err();
        assert!(e.to_string().contains("--platform is required"), "{e}");
        let e = Config::resolve(ServeArgs::default(), Some("platform = \"tsm\"")).unwrap_err();
        assert!(e.to_string().contains("--certifier is required"), "{e}");
        let e = Config::resolve(ServeArgs::default(), Some("platfrom = \"tsm\"")).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = Config::resolve(ServeArgs::default(), Some("platform = \"emulated\"")).unwrap_err();
        assert!(
            e.to_string().contains("tsm, islet or insecure-emulated"),
            "{e}"
        );
        let args = ServeArgs {
            models: vec!["digits=abc".into()],
            ..Default::default()
        };
        let e = Config::resolve(args, Some(&file())).unwrap_err();
        assert!(e.to_string().contains("64-hex-digit"), "{e}");
        let args = ServeArgs {
            input_shapes: vec!["nope=1,2".into()],
            ..Default::default()
        };
        let e = Config::resolve(args, Some(&file())).unwrap_err();
        assert!(e.to_string().contains("no --model nope"), "{e}");
    }
}
