//! Taking part in federated learning: join the runtime's task, receive the
//! global model, train on this device's sealed records inside the realm, and
//! send back only the parameter delta. The records never leave.
//!
//! Must never: send anything but the delta and the sample count, or train
//! on a model whose bytes do not match the hash the runtime announced.

use anyhow::{Context, Result, anyhow, bail};
use fl::onnx_model::{arch_of, read_params};
use fl::train::{TrainConfig, accuracy, train};
use protocol::{Message, TensorData};

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

/// Take part in up to `rounds` rounds of `task`; `log` is called after each.
/// Returns the logs and the last global model received (the final one if
/// the task completed).
pub async fn participate(
    conn: &mut Conn,
    task: &str,
    data: &Dataset,
    rounds: usize,
    cfg: &TrainConfig,
    mut log: impl FnMut(&RoundLog),
) -> Result<(Vec<RoundLog>, Option<fl::train::Params>)> {
    let (x, y) = features(data)?;
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
        let entry = RoundLog {
            round,
            global_accuracy,
            accepted: Some(accepted),
            reason,
        };
        log(&entry);
        logs.push(entry);
        last = Some(global);
    }
    let _ = conn.shutdown().await;
    Ok((logs, last))
}
