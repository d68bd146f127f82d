//! The [`Message`] enum every binary speaks, and its postcard encoding.
//!
//! **Wire compatibility.** From the first release on (version 1 is not
//! released yet and still changes), postcard encodes an enum variant by its index, so
//! the order of variants *is* the wire format. Only ever append variants;
//! never reorder, remove, or change the fields of an existing one. `Hello`,
//! `HelloAck` and `Error` in particular must stay decodable by every version,
//! because they carry the version negotiation and its failure.
//!
//! **Not canonical.** postcard accepts over-long varints (`80 00` decodes
//! as 0), so one message has many encodings. Never sign, hash or compare
//! encoded messages; sign the values inside them.

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;
use crate::fl_terms::FlTaskTerms;
use crate::secret::SecretBytes;
use crate::tensor::Tensor;

/// The protocol version this crate speaks (sent in [`Message::Hello`]).
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest peer error text kept in [`ProtocolError::Remote`], in bytes.
pub const MAX_REMOTE_MESSAGE: usize = 1024;

/// What a released model key may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyUsage {
    /// The runtime serves inference to devices; the model stays in the runtime's realm.
    RemoteInference,
    /// The device runs the model inside its own realm.
    OnDevice,
    /// The model is the global model of a federated-learning round.
    FederatedRound,
}

/// The output of one inference, shaped by the model's output policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InferenceOutput {
    /// All class scores.
    Scores(Vec<f32>),
    /// The best `k` classes as `(class index, score)`, best first.
    TopK(Vec<(u32, f32)>),
    /// Only the winning class index.
    Label(u32),
}

/// What a runtime may return from a model: set per model by the provider
/// and delivered with its key, so the runtime cannot be configured to leak
/// more than the model's owner allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputPolicy {
    /// All class scores.
    Scores,
    /// The best `k` classes with their scores.
    TopK(u32),
    /// Only the winning class (the least a client can learn per query).
    Label,
}

/// How many queries one device may make per time window (limits model
/// extraction and membership inference by repeated querying).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueryBudget {
    /// Queries allowed per window.
    pub queries: u32,
    /// Window length in seconds.
    pub window_secs: u32,
}

/// The provider's terms for serving a model, sent with its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServingPolicy {
    /// What a response may contain.
    pub output: OutputPolicy,
    /// Per-device query budget; `None`: unlimited.
    #[serde(default)]
    pub budget: Option<QueryBudget>,
}

impl Default for ServingPolicy {
    /// Label only, no budget: the least a response can reveal.
    fn default() -> Self {
        Self {
            output: OutputPolicy::Label,
            budget: None,
        }
    }
}

/// Why a peer refused or failed a request (carried in [`Message::Error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peers speak different protocol versions.
    VersionMismatch,
    /// Temporarily overloaded; try again later.
    Busy,
    /// The peer's attested identity is not admitted for this request.
    NotAdmitted,
    /// Admitted, but policy refuses this particular request.
    Refused,
    /// The named model, round or stream does not exist.
    NotFound,
    /// The request was malformed or out of sequence.
    BadRequest,
    /// A size, rate or query budget was exceeded.
    BudgetExceeded,
    /// The peer failed internally.
    Internal,
}

/// One message between the binaries. Encoded with postcard, one per frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message from the connecting side.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        protocol_version: u16,
        /// The sender's role, e.g. `"device"`, `"runtime"`, `"provider"`.
        role: String,
        /// Software name and version, for logs.
        software: String,
    },
    /// The accepting side agrees to speak `protocol_version`.
    HelloAck {
        /// [`PROTOCOL_VERSION`] of the sender.
        protocol_version: u16,
    },
    /// Ask the model provider for a model's data-encryption key.
    ModelKeyRequest {
        /// Which model.
        model_id: String,
        /// SHA-256 of the sealed bundle the requester holds.
        bundle_hash: [u8; 32],
        /// What the key will be used for (policy decides per usage).
        usage: KeyUsage,
    },
    /// The provider releases a model key to an admitted peer.
    ModelKeyRelease {
        /// Which model.
        model_id: String,
        /// Key id as written in the sealed bundle's header.
        key_id: [u8; 16],
        /// The data-encryption key (redacted in `Debug`, wiped on drop).
        key: SecretBytes,
        /// What a runtime may return from this model, and how often.
        serving: ServingPolicy,
    },
    /// A new sealed model bundle is available in the blob store.
    SealedModelAnnouncement {
        /// Which model.
        model_id: String,
        /// Model version.
        version: String,
        /// SHA-256 of the sealed bundle (its blob-store address).
        bundle_hash: [u8; 32],
        /// Size of the sealed bundle in bytes.
        size: u64,
    },
    /// Run one inference.
    InferenceRequest {
        /// Chosen by the requester; echoed in the response.
        request_id: u64,
        /// Which model.
        model_id: String,
        /// The input (call [`Tensor::validate`] before use).
        input: Tensor,
    },
    /// The result of an [`Message::InferenceRequest`].
    InferenceResponse {
        /// The request's id.
        request_id: u64,
        /// The output, as the model's output policy allows.
        output: InferenceOutput,
    },
    /// The aggregator opens a federated-learning round.
    RoundAnnouncement {
        /// Round number.
        round: u64,
        /// SHA-256 of the global model to train from.
        model_hash: [u8; 32],
        /// Seconds until updates are no longer accepted.
        deadline_secs: u32,
        /// Updates needed before the round is aggregated.
        min_clients: u32,
    },
    /// A device's parameter delta for a round.
    ModelUpdate {
        /// Round number.
        round: u64,
        /// Training samples behind this update (for weighting).
        num_samples: u64,
        /// Parameter deltas, in the model's parameter order.
        delta: Vec<f32>,
    },
    /// The outcome of a round (or of one device's update).
    RoundResult {
        /// Round number.
        round: u64,
        /// Whether the update or round was accepted.
        accepted: bool,
        /// SHA-256 of the new global model, if one was produced.
        new_model_hash: Option<[u8; 32]>,
        /// Why not, if not accepted.
        reason: Option<String>,
    },
    /// High-assurance attested TLS: a fresh challenge for this connection.
    FreshNonce {
        /// Random nonce.
        nonce: [u8; 32],
    },
    /// High-assurance attested TLS: evidence bound to the nonce and the TLS exporter.
    FreshEvidence {
        /// The attestation token.
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
    },
    /// One piece of a payload too large for one frame (see `Framed::send_large`).
    Chunk {
        /// Identifies the payload; chosen by the sender.
        stream_id: u64,
        /// Position of this chunk, from 0.
        seq: u32,
        /// `true` on the final chunk.
        last: bool,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The request failed or was refused.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable explanation (never secrets).
        message: String,
    },
    /// Ask the provider for the current bundle of a model, for `usage`;
    /// answered with a [`Message::SealedModelAnnouncement`] if this peer
    /// may have its key, otherwise with the same refusal as a key request.
    BundleQuery {
        /// Which model.
        model_id: String,
        /// What it would be used for.
        usage: KeyUsage,
    },
    /// A device asks to take part in the next round of a federated task; the
    /// aggregator answers with a [`Message::RoundAnnouncement`] followed by
    /// the global model (ONNX) as chunks with `stream_id` = the round number.
    JoinRound {
        /// The federated task.
        task: String,
    },
    /// A runtime hands the provider the key of a global model it produced by
    /// federated learning and sealed into the blob store, so the provider's
    /// release policy governs it like any other model. Acknowledged with the
    /// matching [`Message::SealedModelAnnouncement`].
    ModelKeyDeposit {
        /// The model (the federated task's name).
        model_id: String,
        /// Its version (the round that produced it).
        version: String,
        /// SHA-256 of the sealed bundle in the blob store.
        bundle_hash: [u8; 32],
        /// Key id as written in the bundle header.
        key_id: [u8; 16],
        /// The data-encryption key (redacted in `Debug`, wiped on drop).
        key: SecretBytes,
    },
    /// A device asks how a round of `task` ended (normally one it sent an
    /// update to: [`Message::RoundResult`] says only whether the *update*
    /// was accepted). The aggregator answers with a
    /// [`Message::RoundOutcome`] once the round has closed, waiting for
    /// its deadline if it is still open; a round that has not started is
    /// a `BadRequest`.
    RoundOutcomeQuery {
        /// The federated task.
        task: String,
        /// The round.
        round: u64,
    },
    /// How a closed round ended.
    RoundOutcome {
        /// The round.
        round: u64,
        /// `true`: the round's updates were aggregated into a new global
        /// model. `false`: the round closed with fewer than `min_clients`
        /// updates; they were discarded and the round was run again.
        aggregated: bool,
        /// Updates the round accepted.
        updates: u32,
        /// Updates it needed to be aggregated.
        min_clients: u32,
    },
    /// Ask for the terms of federated task `task`: a runtime asks the
    /// provider (which defines them), a device asks the runtime (which
    /// enforces them, possibly narrowed). Answered with
    /// [`Message::FlTaskTerms`] or a refusal.
    FlTaskQuery {
        /// The federated task.
        task: String,
    },
    /// The terms of a federated task (call [`FlTaskTerms::validate`] before use).
    FlTaskTerms {
        /// The terms.
        terms: FlTaskTerms,
    },
}

impl Message {
    /// Encode with postcard (no framing).
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        postcard::to_stdvec(self).map_err(ProtocolError::Encode)
    }

    /// Decode exactly one message from `bytes`; trailing bytes are an error.
    ///
    /// Allocation is bounded by `bytes.len()`: callers pass one frame, which
    /// the framing layer has already held to its maximum size. Every length
    /// inside the message (strings, vectors) is checked by postcard against
    /// the input that remains before the bytes are taken, and its sequence
    /// size hint is withheld when the declared count exceeds the remaining
    /// input, so a forged huge count fails with an error instead of
    /// preallocating (see the `huge_declared_vec` test).
    pub fn decode(bytes: &[u8]) -> Result<Message, ProtocolError> {
        let (message, rest) = postcard::take_from_bytes(bytes).map_err(ProtocolError::Decode)?;
        if !rest.is_empty() {
            return Err(ProtocolError::TrailingBytes { extra: rest.len() });
        }
        Ok(message)
    }

    /// A short name of the variant, safe to log (no contents).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::HelloAck { .. } => "HelloAck",
            Self::ModelKeyRequest { .. } => "ModelKeyRequest",
            Self::ModelKeyRelease { .. } => "ModelKeyRelease",
            Self::SealedModelAnnouncement { .. } => "SealedModelAnnouncement",
            Self::InferenceRequest { .. } => "InferenceRequest",
            Self::InferenceResponse { .. } => "InferenceResponse",
            Self::RoundAnnouncement { .. } => "RoundAnnouncement",
            Self::ModelUpdate { .. } => "ModelUpdate",
            Self::RoundResult { .. } => "RoundResult",
            Self::FreshNonce { .. } => "FreshNonce",
            Self::FreshEvidence { .. } => "FreshEvidence",
            Self::Chunk { .. } => "Chunk",
            Self::Error { .. } => "Error",
            Self::BundleQuery { .. } => "BundleQuery",
            Self::JoinRound { .. } => "JoinRound",
            Self::ModelKeyDeposit { .. } => "ModelKeyDeposit",
            Self::RoundOutcomeQuery { .. } => "RoundOutcomeQuery",
            Self::RoundOutcome { .. } => "RoundOutcome",
            Self::FlTaskQuery { .. } => "FlTaskQuery",
            Self::FlTaskTerms { .. } => "FlTaskTerms",
        }
    }

    /// Shorthand for [`Message::Error`].
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
        }
    }

    /// If this is an [`Message::Error`], the matching [`ProtocolError::Remote`]
    /// (its text cut to [`MAX_REMOTE_MESSAGE`] bytes); otherwise `None`.
    pub fn as_remote_error(&self) -> Option<ProtocolError> {
        match self {
            Self::Error { code, message } => Some(ProtocolError::Remote {
                code: *code,
                message: truncate(message, MAX_REMOTE_MESSAGE).to_owned(),
            }),
            _ => None,
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn remote_error_is_truncated() {
        let m = Message::error(ErrorCode::Busy, "x".repeat(5000));
        match m.as_remote_error() {
            Some(ProtocolError::Remote { code, message }) => {
                assert_eq!(code, ErrorCode::Busy);
                assert_eq!(message.len(), MAX_REMOTE_MESSAGE);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Message::HelloAck {
                protocol_version: 1
            }
            .as_remote_error()
            .is_none()
        );
    }
}
