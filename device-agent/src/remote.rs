//! Remote inference: the samples go, one request at a time, over attested
//! TLS to a runtime whose role (and, if pinned, measurement) the handshake
//! has already checked; the outputs come back on the same connection.
//!
//! A batch is resumable: [`Batch`] holds the answers so far, and
//! [`Batch::run`] goes on from the first unanswered sample on whatever
//! (freshly checked) connection it is given, so a runtime restart costs a
//! reconnect, not the batch.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use indicatif::ProgressBar;
use protocol::{InferenceOutput, Message, Tensor};
use tracing::debug;

use crate::connect::Conn;
use crate::retry::Refusal;

/// The answers to a batch so far, in sample order.
#[derive(Debug, Default)]
pub struct Batch {
    /// One output per answered sample (a prefix of the samples).
    pub outputs: Vec<InferenceOutput>,
    /// Request-to-response time of each answered sample.
    pub latencies: Vec<Duration>,
}

impl Batch {
    /// The first sample not answered yet.
    pub fn next(&self) -> usize {
        self.outputs.len()
    }

    /// Send every unanswered sample to `model` over `conn`; stop at the
    /// first failure (the answers so far are kept).
    ///
    /// A sample in flight when the connection broke may have been run (and
    /// counted against this device's query budget) without its answer
    /// arriving; resending it costs one more query, never a wrong answer.
    pub async fn run(
        &mut self,
        conn: &mut Conn,
        model: &str,
        samples: &[Tensor],
        progress: &ProgressBar,
    ) -> Result<()> {
        for (i, sample) in samples.iter().enumerate().skip(self.next()) {
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
                    self.outputs.push(output);
                    self.latencies.push(started.elapsed());
                    debug!("sample {i} answered");
                }
                Message::Error { code, message } => {
                    return Err(Refusal {
                        peer: "runtime",
                        what: format!("sample {i}"),
                        code,
                        message,
                    }
                    .into());
                }
                Message::FreshNonce { .. } => {
                    return Err(anyhow!(
                        "the runtime demands fresh evidence bound to the session (it runs with --fresh-evidence): add --fresh-evidence"
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
        Ok(())
    }
}
