//! Taking part in federated learning: join the runtime's task, receive the
//! global model, train on this device's sealed records inside the realm, and
//! send back only the parameter delta. The records never leave.
//!
//! After each accepted update the device asks how the round ended
//! (`RoundOutcomeQuery`): a round that closes with too few updates is
//! discarded by the runtime, and the device must not report it as done.
//!
//! Must never: train before the task's terms met this device's floor
//! (`task_terms`), send anything but the delta and the sample count, train
//! on a model whose bytes do not match the hash the runtime announced, or
//! report a round as aggregated without the runtime's `RoundOutcome`.

use anyhow::{Context, Result, anyhow, bail};
use fl::onnx_model::{arch_of, read_params};
use fl::train::{TrainConfig, accuracy, train};
use protocol::{DeviceFloor, FlTaskTerms, Message, TensorData};

use crate::connect::Conn;
use crate::dataset::Dataset;

/// What happened in one round, from this device's side.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoundLog {
    /// Round number.
    pub round: u64,
    /// Accuracy of the round's global model on this device's data.
    pub global_accuracy: f64,
    /// Whether the runtime accepted this device's update (None: final model).
    pub accepted: Option<bool>,
    /// The runtime's reason for refusing, if it did.
    pub reason: Option<String>,
    /// For an accepted update: whether the round was aggregated into a new
    /// global model (`false`: discarded, too few updates by the deadline).
    pub aggregated: Option<bool>,
    /// For an accepted update: updates the round accepted in all.
    pub updates: Option<u32>,
    /// For an accepted update: updates the round needed.
    pub min_clients: Option<u32>,
}

/// The rounds this device trained for and how they ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Rounds this device sent an update to.
    pub took_part: usize,
    /// Of those, rounds aggregated with this device's update.
    pub aggregated: usize,
    /// Rounds whose update was accepted but which were discarded.
    pub discarded: Vec<u64>,
    /// Rounds whose update the runtime refused.
    pub refused: Vec<u64>,
}

impl Summary {
    /// Tally `logs` (the final-model entry does not count).
    pub fn of(logs: &[RoundLog]) -> Self {
        let mut s = Self::default();
        for l in logs {
            match (l.accepted, l.aggregated) {
                (None, _) => continue,
                (Some(true), Some(true)) => s.aggregated += 1,
                (Some(true), _) => s.discarded.push(l.round),
                (Some(false), _) => s.refused.push(l.round),
            }
            s.took_part += 1;
        }
        s
    }

    /// Every round this device trained for was aggregated with its update.
    pub fn all_aggregated(&self) -> bool {
        self.discarded.is_empty() && self.refused.is_empty()
    }

    /// One line for people, e.g. "aggregated 2 of 5 rounds ...".
    pub fn line(&self) -> String {
        let mut line = format!(
            "aggregated {} of {} rounds this device took part in",
            self.aggregated, self.took_part
        );
        let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        if !self.discarded.is_empty() {
            line += &format!(
                "; discarded for too few updates: round {}",
                list(&self.discarded)
            );
        }
        if !self.refused.is_empty() {
            line += &format!("; update refused: round {}", list(&self.refused));
        }
        line
    }
}

/// Features and labels of a labelled dataset of 64-feature f32 samples.
pub fn features(data: &Dataset) -> Result<(Vec<Vec<f32>>, Vec<u32>)> {
    let labels = data
        .labels
        .as_ref()
        .context("training needs labelled data (import with --labels last)")?;
    let mut x = Vec::with_capacity(data.samples.len());
    for (i, s) in data.samples.iter().enumerate() {
        match &s.data {
            TensorData::F32(v) if v.len() == fl::train::INPUT_FEATURES => x.push(v.clone()),
            _ => bail!(
                "sample {i}: federated models take {} f32 features",
                fl::train::INPUT_FEATURES
            ),
        }
    }
    let y = labels
        .iter()
        .map(|&l| u32::try_from(l).map_err(|_| anyhow!("label {l} is not a class")))
        .collect::<Result<Vec<_>>>()?;
    Ok((x, y))
}

/// Take part in up to `rounds` rounds of `task`, once its terms met
/// `floor` (`shown` is called with them first); `log` is called after each
/// round. Returns the logs and the last global model received (the final
/// one if the task completed).
#[allow(clippy::too_many_arguments)]
pub async fn participate(
    conn: &mut Conn,
    task: &str,
    floor: &DeviceFloor,
    data: &Dataset,
    rounds: usize,
    cfg: &TrainConfig,
    shown: impl FnOnce(&FlTaskTerms),
    mut log: impl FnMut(&RoundLog),
) -> Result<(Vec<RoundLog>, Option<fl::train::Params>)> {
    let (x, y) = features(data)?;
    let terms = crate::task_terms::agree(conn, task, floor).await?;
    shown(&terms);
    let mut logs = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        conn.send(&Message::JoinRound {
            task: task.to_string(),
        })
        .await?;
        let (round, hash, done) = match conn.recv().await? {
            Message::RoundAnnouncement {
                round, model_hash, ..
            } => (round, model_hash, false),
            Message::RoundResult {
                round,
                new_model_hash: Some(h),
                ..
            } => (round, h, true),
            Message::Error { message, .. } => {
                bail!("the runtime refused to join {task:?}: {message}")
            }
            other => bail!("the runtime answered JoinRound with {}", other.kind()),
        };
        let model = conn.recv_large(round).await?;
        let got = ring::digest::digest(&ring::digest::SHA256, &model);
        if got.as_ref() != hash {
            bail!("round {round}: the global model does not match its announced hash");
        }
        let global = read_params(&model).context("the global model")?;
        let arch = arch_of(&global)?;
        let global_accuracy = accuracy(&arch, &global, &x, &y)?;
        if done {
            let entry = RoundLog {
                round,
                global_accuracy,
                accepted: None,
                reason: None,
                aggregated: None,
                updates: None,
                min_clients: None,
            };
            log(&entry);
            logs.push(entry);
            last = Some(global);
            break;
        }
        let mut local = global.clone();
        let cfg = TrainConfig {
            seed: cfg.seed ^ round,
            ..cfg.clone()
        };
        train(&arch, &mut local, &x, &y, &cfg)?;
        let delta = local.delta_from(&global)?;
        conn.send(&Message::ModelUpdate {
            round,
            num_samples: x.len() as u64,
            delta,
        })
        .await?;
        let (accepted, reason) = match conn.recv().await? {
            Message::RoundResult {
                accepted, reason, ..
            } => (accepted, reason),
            Message::Error { message, .. } => (false, Some(message)),
            other => bail!("the runtime answered ModelUpdate with {}", other.kind()),
        };
        let (aggregated, updates, min_clients) = if accepted {
            let (a, u, m) = outcome(conn, task, round).await?;
            (Some(a), Some(u), Some(m))
        } else {
            (None, None, None)
        };
        let entry = RoundLog {
            round,
            global_accuracy,
            accepted: Some(accepted),
            reason,
            aggregated,
            updates,
            min_clients,
        };
        log(&entry);
        logs.push(entry);
        last = Some(global);
    }
    let _ = conn.shutdown().await;
    Ok((logs, last))
}

/// Ask how `round` ended (the runtime answers once it has closed): whether
/// it was aggregated, its update count and the count it needed.
async fn outcome(conn: &mut Conn, task: &str, round: u64) -> Result<(bool, u32, u32)> {
    conn.send(&Message::RoundOutcomeQuery {
        task: task.to_string(),
        round,
    })
    .await?;
    match conn.recv().await? {
        Message::RoundOutcome {
            round: r,
            aggregated,
            updates,
            min_clients,
        } if r == round => Ok((aggregated, updates, min_clients)),
        Message::RoundOutcome { round: r, .. } => {
            bail!("asked how round {round} ended, the runtime answered for round {r}")
        }
        Message::Error { message, .. } => {
            bail!("the runtime did not say how round {round} ended: {message}")
        }
        other => bail!(
            "the runtime answered RoundOutcomeQuery with {}",
            other.kind()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(round: u64, accepted: Option<bool>, aggregated: Option<bool>) -> RoundLog {
        RoundLog {
            round,
            global_accuracy: 0.5,
            accepted,
            reason: None,
            aggregated,
            updates: None,
            min_clients: None,
        }
    }

    #[test]
    fn summary_counts_only_rounds_aggregated_with_this_update() {
        let logs = [
            log(1, Some(true), Some(true)),
            log(2, Some(true), Some(false)),
            log(3, Some(false), None),
            log(4, Some(true), Some(true)),
            log(5, Some(true), Some(false)),
            log(6, None, None),
        ];
        let s = Summary::of(&logs);
        assert_eq!(
            s,
            Summary {
                took_part: 5,
                aggregated: 2,
                discarded: vec![2, 5],
                refused: vec![3],
            }
        );
        assert!(!s.all_aggregated());
        assert_eq!(
            s.line(),
            "aggregated 2 of 5 rounds this device took part in; discarded for too few updates: round 2, 5; update refused: round 3"
        );
        let ok = Summary::of(&logs[..1]);
        assert!(ok.all_aggregated());
        assert!(Summary::of(&[]).all_aggregated());
    }
}
