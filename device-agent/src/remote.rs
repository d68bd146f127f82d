//! Remote inference: the samples go, one request at a time, over attested
//! TLS to a runtime whose role (and, if pinned, measurement) the handshake
//! has already checked; the outputs come back on the same connection.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use indicatif::ProgressBar;
use protocol::{InferenceOutput, Message, Tensor};

use crate::connect::Conn;

/// Send every sample to `model` at the runtime; stop at the first refusal.
pub async fn infer(
    conn: &mut Conn,
    model: &str,
    samples: &[Tensor],
    progress: &ProgressBar,
) -> Result<(Vec<InferenceOutput>, Vec<Duration>)> {
    let mut outputs = Vec::with_capacity(samples.len());
    let mut latencies = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        let started = Instant::now();
        let request_id = i as u64;
        conn.send(&Message::InferenceRequest {
            request_id,
            model_id: model.to_string(),
            input: sample.clone(),
        })
        .await?;
        match conn.recv().await? {
            Message::InferenceResponse {
                request_id: r,
                output,
            } if r == request_id => {
                outputs.push(output);
                latencies.push(started.elapsed());
            }
            Message::Error { code, message } => {
                return Err(anyhow!(
                    "the runtime refused sample {i} ({code:?}): {message}"
                ));
            }
            other => {
                return Err(anyhow!(
                    "the runtime answered sample {i} with {}",
                    other.kind()
                ));
            }
        }
        progress.inc(1);
    }
    let _ = conn.shutdown().await;
    Ok((outputs, latencies))
}
