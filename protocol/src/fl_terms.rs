//! The terms of a federated-learning task: what the model provider decides
//! about a task and a runtime's host must not change (aggregation rule,
//! clipping, differential-privacy noise, client bounds, rounds, which device
//! builds may take part, whether INSECURE devices may), with the two pure
//! checks every party applies to them.
//!
//! Where they travel: the provider answers a runtime's
//! [`Message::FlTaskQuery`](crate::Message::FlTaskQuery) with its terms over
//! attested TLS (as it sends a [`ServingPolicy`](crate::ServingPolicy) with a
//! model key), so they reach the runtime's realm without passing through its
//! host. The runtime may only narrow them with its host's flags
//! ([`FlTaskTerms::narrowed`]) and answers a device's `FlTaskQuery` with the
//! terms it enforces; the device checks those against its own floor
//! ([`FlTaskTerms::meets`]) before it trains. The device trusts the runtime's
//! answer because the runtime's code is measured and admitted; the host
//! between them sees only TLS records.
//!
//! Must never: let a narrowing widen anything (every field only moves
//! towards more privacy or fewer participants), or accept terms that do not
//! [`validate`](FlTaskTerms::validate).

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest task name, rule text and architecture name, in bytes.
pub const MAX_TERMS_TEXT: usize = 128;
/// Most device measurements one task may list.
pub const MAX_TASK_DEVICES: usize = 256;

/// What the model provider decides about a federated task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlTaskTerms {
    /// The task (its global models are deposited under this model id).
    pub task: String,
    /// Global model architecture, as `fl` names it: `softmax` or `mlp`.
    pub arch: String,
    /// Aggregation rule, as `fl::aggregate::Rule` writes it (`median`,
    /// `trimmed-mean:0.2`, `krum:1`, ...).
    pub rule: String,
    /// Per-update L2 clipping norm; 0: none (then `noise_multiplier` is 0).
    pub clip_norm: f32,
    /// Gaussian noise multiplier z of central differential privacy; 0: none.
    pub noise_multiplier: f64,
    /// Updates needed to aggregate a round.
    pub min_clients: u32,
    /// Updates that close a round early.
    pub max_clients: u32,
    /// Rounds the task runs.
    pub rounds: u64,
    /// Device measurements allowed to take part; empty: every device the
    /// certifier's policy trusts.
    pub devices: Vec<Vec<u8>>,
    /// Whether devices admitted on the INSECURE emulated platform may take
    /// part (for laptop demos; never for real users' data).
    pub allow_insecure_devices: bool,
}

/// Why terms are unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TermsError {
    /// A field is out of range or malformed.
    #[error("task terms: {field} {problem}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A host setting would weaken the provider's terms.
    #[error(
        "host setting {flag} = {asked} would weaken the provider's task terms ({field} = {signed}); host settings may only narrow them"
    )]
    Widens {
        /// The host flag.
        flag: &'static str,
        /// What the host asked for.
        asked: String,
        /// The field it would weaken.
        field: &'static str,
        /// The provider's value.
        signed: String,
    },
    /// The terms are weaker than a device's floor.
    #[error("the task's {field} = {offered} is below this device's floor ({floor})")]
    BelowFloor {
        /// The field.
        field: &'static str,
        /// The task's value.
        offered: String,
        /// The device's floor.
        floor: String,
    },
}

impl TermsError {
    /// A stable short code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "task-terms-invalid",
            Self::Widens { .. } => "task-terms-widened",
            Self::BelowFloor { .. } => "task-terms-below-floor",
        }
    }
}

/// What a runtime's host may ask for: each `Some` must be at least as
/// strict as the provider's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostNarrowing {
    /// Aggregation rule; must equal the provider's (rules are not ordered).
    pub rule: Option<String>,
    /// Architecture; must equal the provider's.
    pub arch: Option<String>,
    /// Clipping norm; may only be smaller (and not 0 where the terms clip).
    pub clip_norm: Option<f32>,
    /// Noise multiplier; may only be larger.
    pub noise_multiplier: Option<f64>,
    /// Minimum updates per round; may only be larger.
    pub min_clients: Option<u32>,
    /// Maximum updates per round; may only be smaller.
    pub max_clients: Option<u32>,
    /// Rounds; may only be fewer.
    pub rounds: Option<u64>,
    /// Device measurements; each must be allowed by the terms.
    pub devices: Vec<Vec<u8>>,
    /// Admit INSECURE devices; only where the terms allow them.
    pub allow_insecure_devices: Option<bool>,
}

/// What a device requires of a task before it trains on its data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceFloor {
    /// Smallest acceptable noise multiplier.
    pub min_noise: Option<f64>,
    /// Largest acceptable clipping norm (a clipped update bounds what one
    /// device's data can move the model).
    pub max_clip: Option<f32>,
    /// Smallest acceptable number of updates per round (this device's
    /// update is mixed with at least this many).
    pub min_clients: Option<u32>,
}

impl FlTaskTerms {
    /// Check ranges and lengths (terms arrive from the network or a file).
    pub fn validate(&self) -> Result<(), TermsError> {
        let bad = |field, problem: &str| {
            Err(TermsError::Invalid {
                field,
                problem: problem.to_string(),
            })
        };
        for (field, text) in [
            ("task", &self.task),
            ("arch", &self.arch),
            ("rule", &self.rule),
        ] {
            if text.is_empty() || text.len() > MAX_TERMS_TEXT {
                return bad(field, "must be 1 to 128 bytes");
            }
        }
        if !self.clip_norm.is_finite() || self.clip_norm < 0.0 {
            return bad("clip_norm", "must be a finite number ≥ 0");
        }
        if !self.noise_multiplier.is_finite() || self.noise_multiplier < 0.0 {
            return bad("noise_multiplier", "must be a finite number ≥ 0");
        }
        if self.noise_multiplier > 0.0 && self.clip_norm == 0.0 {
            return bad(
                "noise_multiplier",
                "needs clipping (noise is scaled to the clipping norm)",
            );
        }
        if self.min_clients == 0 || self.max_clients < self.min_clients {
            return bad("min_clients", "must be ≥ 1 and ≤ max_clients");
        }
        if self.rounds == 0 {
            return bad("rounds", "must be ≥ 1");
        }
        if self.devices.len() > MAX_TASK_DEVICES {
            return bad("devices", "lists more than 256 measurements");
        }
        if let Some(m) = self.devices.iter().find(|m| !(16..=64).contains(&m.len())) {
            return bad(
                "devices",
                &format!("holds a {}-byte value, not a measurement", m.len()),
            );
        }
        Ok(())
    }

    /// These terms narrowed by `host`; an error names the first host
    /// setting that would widen them.
    pub fn narrowed(&self, host: &HostNarrowing) -> Result<FlTaskTerms, TermsError> {
        let mut t = self.clone();
        let widens = |flag, asked: String, field, signed: String| {
            Err(TermsError::Widens {
                flag,
                asked,
                field,
                signed,
            })
        };
        if let Some(r) = &host.rule
            && r != &self.rule
        {
            return widens("--fl-rule", r.clone(), "rule", self.rule.clone());
        }
        if let Some(a) = &host.arch
            && a != &self.arch
        {
            return widens("--fl-arch", a.clone(), "arch", self.arch.clone());
        }
        if let Some(c) = host.clip_norm {
            // 0 means "no clipping": only acceptable where the terms do not clip.
            let weaker = self.clip_norm > 0.0 && (c == 0.0 || c > self.clip_norm);
            if weaker || !c.is_finite() || c < 0.0 {
                return widens(
                    "--fl-clip",
                    c.to_string(),
                    "clip_norm",
                    self.clip_norm.to_string(),
                );
            }
            t.clip_norm = c;
        }
        if let Some(z) = host.noise_multiplier {
            if !z.is_finite() || z < self.noise_multiplier {
                return widens(
                    "--fl-noise",
                    z.to_string(),
                    "noise_multiplier",
                    self.noise_multiplier.to_string(),
                );
            }
            t.noise_multiplier = z;
        }
        if let Some(n) = host.min_clients {
            if n < self.min_clients {
                return widens(
                    "--fl-min-clients",
                    n.to_string(),
                    "min_clients",
                    self.min_clients.to_string(),
                );
            }
            t.min_clients = n;
        }
        if let Some(n) = host.max_clients {
            if n > self.max_clients {
                return widens(
                    "--fl-max-clients",
                    n.to_string(),
                    "max_clients",
                    self.max_clients.to_string(),
                );
            }
            t.max_clients = n;
        }
        if let Some(n) = host.rounds {
            if n > self.rounds {
                return widens(
                    "--fl-rounds",
                    n.to_string(),
                    "rounds",
                    self.rounds.to_string(),
                );
            }
            t.rounds = n;
        }
        if !host.devices.is_empty() {
            if let Some(m) = host
                .devices
                .iter()
                .find(|m| !self.devices.is_empty() && !self.devices.contains(m))
            {
                return widens(
                    "--fl-device-measurement",
                    hex(m),
                    "devices",
                    self.devices
                        .iter()
                        .map(|d| hex(d))
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
            t.devices = host.devices.clone();
        }
        if let Some(allow) = host.allow_insecure_devices {
            if allow && !self.allow_insecure_devices {
                return widens(
                    "--allow-insecure-peers",
                    "true".into(),
                    "allow_insecure_devices",
                    "false".into(),
                );
            }
            t.allow_insecure_devices = allow;
        }
        // Narrowing two bounds separately can cross them (min raised above max).
        t.validate()?;
        Ok(t)
    }

    /// Whether these terms meet a device's `floor`.
    pub fn meets(&self, floor: &DeviceFloor) -> Result<(), TermsError> {
        if let Some(z) = floor.min_noise
            && (z.is_nan() || self.noise_multiplier < z)
        {
            return Err(TermsError::BelowFloor {
                field: "noise_multiplier",
                offered: self.noise_multiplier.to_string(),
                floor: format!("--min-noise {z}"),
            });
        }
        if let Some(c) = floor.max_clip
            && (self.clip_norm == 0.0 || self.clip_norm > c)
        {
            return Err(TermsError::BelowFloor {
                field: "clip_norm",
                offered: if self.clip_norm == 0.0 {
                    "none".into()
                } else {
                    self.clip_norm.to_string()
                },
                floor: format!("--max-clip {c}"),
            });
        }
        if let Some(n) = floor.min_clients
            && self.min_clients < n
        {
            return Err(TermsError::BelowFloor {
                field: "min_clients",
                offered: self.min_clients.to_string(),
                floor: format!("--min-clients {n}"),
            });
        }
        Ok(())
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let clip = if self.clip_norm > 0.0 {
            self.clip_norm.to_string()
        } else {
            "none".into()
        };
        let devices = if self.devices.is_empty() {
            "any trusted device".to_string()
        } else {
            format!("{} device build(s)", self.devices.len())
        };
        format!(
            "task {}: {} model, rule {}, clip {clip}, noise z={}, {}..{} updates per round, {} rounds, {devices}{}",
            self.task,
            self.arch,
            self.rule,
            self.noise_multiplier,
            self.min_clients,
            self.max_clients,
            self.rounds,
            if self.allow_insecure_devices {
                ", INSECURE devices allowed"
            } else {
                ""
            }
        )
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn terms() -> FlTaskTerms {
        FlTaskTerms {
            task: "digits-fl".into(),
            arch: "softmax".into(),
            rule: "median".into(),
            clip_norm: 2.0,
            noise_multiplier: 0.5,
            min_clients: 2,
            max_clients: 10,
            rounds: 5,
            devices: vec![vec![7; 32]],
            allow_insecure_devices: false,
        }
    }

    #[test]
    fn valid_terms_and_each_invalid_field() {
        assert_eq!(terms().validate(), Ok(()));
        type Spoil = fn(&mut FlTaskTerms);
        let cases: [(&str, Spoil); 8] = [
            ("task", |t| t.task.clear()),
            ("rule", |t| t.rule = "x".repeat(200)),
            ("clip_norm", |t| t.clip_norm = f32::NAN),
            ("noise_multiplier", |t| t.noise_multiplier = -1.0),
            ("noise_multiplier", |t| t.clip_norm = 0.0),
            ("min_clients", |t| t.min_clients = 0),
            ("rounds", |t| t.rounds = 0),
            ("devices", |t| t.devices = vec![vec![1; 3]]),
        ];
        for (field, spoil) in cases {
            let mut t = terms();
            spoil(&mut t);
            match t.validate() {
                Err(TermsError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn host_settings_narrow_but_never_widen() {
        let t = terms();
        let narrower = HostNarrowing {
            clip_norm: Some(1.0),
            noise_multiplier: Some(1.5),
            min_clients: Some(3),
            max_clients: Some(5),
            rounds: Some(2),
            devices: vec![vec![7; 32]],
            ..HostNarrowing::default()
        };
        let n = t.narrowed(&narrower).unwrap();
        assert_eq!(
            (
                n.clip_norm,
                n.noise_multiplier,
                n.min_clients,
                n.max_clients,
                n.rounds
            ),
            (1.0, 1.5, 3, 5, 2)
        );
        let widen: [(&str, HostNarrowing); 9] = [
            (
                "--fl-noise",
                HostNarrowing {
                    noise_multiplier: Some(0.0),
                    ..Default::default()
                },
            ),
            (
                "--fl-clip",
                HostNarrowing {
                    clip_norm: Some(0.0),
                    ..Default::default()
                },
            ),
            (
                "--fl-clip",
                HostNarrowing {
                    clip_norm: Some(3.0),
                    ..Default::default()
                },
            ),
            (
                "--fl-min-clients",
                HostNarrowing {
                    min_clients: Some(1),
                    ..Default::default()
                },
            ),
            (
                "--fl-max-clients",
                HostNarrowing {
                    max_clients: Some(11),
                    ..Default::default()
                },
            ),
            (
                "--fl-rounds",
                HostNarrowing {
                    rounds: Some(6),
                    ..Default::default()
                },
            ),
            (
                "--fl-rule",
                HostNarrowing {
                    rule: Some("fedavg".into()),
                    ..Default::default()
                },
            ),
            (
                "--fl-device-measurement",
                HostNarrowing {
                    devices: vec![vec![8; 32]],
                    ..Default::default()
                },
            ),
            (
                "--allow-insecure-peers",
                HostNarrowing {
                    allow_insecure_devices: Some(true),
                    ..Default::default()
                },
            ),
        ];
        for (flag, host) in widen {
            match t.narrowed(&host) {
                Err(e @ TermsError::Widens { flag: f, .. }) => {
                    assert_eq!(f, flag);
                    assert_eq!(e.code(), "task-terms-widened");
                }
                other => panic!("{flag}: {other:?}"),
            }
        }
        // Raising the minimum above the maximum is refused, not applied.
        let crossed = HostNarrowing {
            min_clients: Some(10),
            max_clients: Some(4),
            ..Default::default()
        };
        assert!(matches!(
            t.narrowed(&crossed),
            Err(TermsError::Invalid { .. })
        ));
    }

    #[test]
    fn a_device_floor_refuses_weaker_terms() {
        let t = terms();
        let ok = DeviceFloor {
            min_noise: Some(0.5),
            max_clip: Some(2.0),
            min_clients: Some(2),
        };
        assert_eq!(t.meets(&ok), Ok(()));
        for (field, floor) in [
            (
                "noise_multiplier",
                DeviceFloor {
                    min_noise: Some(1.0),
                    ..Default::default()
                },
            ),
            (
                "clip_norm",
                DeviceFloor {
                    max_clip: Some(1.0),
                    ..Default::default()
                },
            ),
            (
                "min_clients",
                DeviceFloor {
                    min_clients: Some(3),
                    ..Default::default()
                },
            ),
        ] {
            match t.meets(&floor) {
                Err(e @ TermsError::BelowFloor { field: f, .. }) => {
                    assert_eq!(f, field);
                    assert_eq!(e.code(), "task-terms-below-floor");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        let unclipped = FlTaskTerms {
            clip_norm: 0.0,
            noise_multiplier: 0.0,
            ..terms()
        };
        assert!(
            unclipped
                .meets(&DeviceFloor {
                    max_clip: Some(5.0),
                    ..Default::default()
                })
                .is_err()
        );
    }

    proptest! {
        /// Whatever a host asks, accepted narrowed terms are valid and no
        /// weaker than the provider's in any field.
        #[test]
        fn narrowing_never_weakens(
            clip in proptest::option::of(-1.0f32..5.0),
            noise in proptest::option::of(-1.0f64..3.0),
            min in proptest::option::of(0u32..20),
            max in proptest::option::of(0u32..20),
            rounds in proptest::option::of(0u64..10),
            insecure in proptest::option::of(any::<bool>()),
        ) {
            let t = terms();
            let host = HostNarrowing {
                clip_norm: clip,
                noise_multiplier: noise,
                min_clients: min,
                max_clients: max,
                rounds,
                allow_insecure_devices: insecure,
                ..Default::default()
            };
            if let Ok(n) = t.narrowed(&host) {
                prop_assert!(n.validate().is_ok());
                prop_assert!(n.clip_norm > 0.0 && n.clip_norm <= t.clip_norm);
                prop_assert!(n.noise_multiplier >= t.noise_multiplier);
                prop_assert!(n.min_clients >= t.min_clients);
                prop_assert!(n.max_clients <= t.max_clients);
                prop_assert!(n.rounds <= t.rounds);
                prop_assert!(!n.allow_insecure_devices);
                prop_assert_eq!(&n.rule, &t.rule);
            }
        }
    }
}
