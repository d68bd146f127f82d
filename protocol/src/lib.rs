//! The wire protocol between the confidential-ML binaries (`model-provider`,
//! `realm-runtime`, `device-agent`): the [`Message`] enum they exchange over
//! attested TLS, its postcard encoding, and the length-prefixed framing they
//! all share.
//!
//! * [`Message`] and its parts ([`Tensor`], [`SecretBytes`], ...), with
//!   [`PROTOCOL_VERSION`] (module `message`).
//! * Pure, sans-IO framing: [`FrameDecoder`], [`encode_frame`] (`frame`).
//! * [`Framed`]: messages over any `AsyncRead + AsyncWrite` stream with
//!   [`Limits`], chunked large payloads and the version hello (`framed`).
//! * [`FlTaskTerms`]: a federated task's terms, set by the provider, only
//!   narrowed by a runtime's host, checked against a device's floor (`fl_terms`).
//! * [`fresh_evidence_exchange`]: high-assurance mode over attested TLS.
//! * [`BoundedListener`]: the accept loop of every server, with per-source
//!   and total caps on unauthenticated connections and a pre-auth deadline
//!   (`listen`).
//! * Typed errors: [`ProtocolError`], [`FrameError`], [`TensorError`] (`error`).
//! * [`sealed`]: sealed model bundles (STREAM over AES-256-GCM); its types stay in `sealed`.
//!
//! Every public type is exported from the crate root only.
//!
//! This crate must never allocate by a length a peer declared before
//! checking it against a limit, never block forever on a silent or stalled
//! peer (every read and write has a timeout), never panic on any input, and
//! never print secrets (keys are [`SecretBytes`], whose `Debug` is redacted).
//! It authenticates no one: who the peer is comes from the attested TLS
//! session (the `attestation` crate), never from what a message claims.

#![deny(missing_docs)]

mod attested;
mod error;
mod fl_terms;
mod frame;
mod framed;
mod fresh;
mod listen;
mod message;
pub mod sealed;
mod secret;
mod tensor;

pub use attested::{AcceptError, accept_attested};
pub use error::{FrameError, ProtocolError, TensorError};
pub use fl_terms::{
    DeviceFloor, FlTaskTerms, HostNarrowing, MAX_TASK_DEVICES, MAX_TERMS_TEXT, TermsError,
};
pub use frame::{DEFAULT_MAX_FRAME, FrameDecoder, HEADER_LEN, encode_frame};
pub use framed::{Framed, Limits, PeerHello};
pub use fresh::{FreshExchangeError, FreshParty, TlsSession, fresh_evidence_exchange};
pub use listen::{
    Admission, BoundedListener, ListenEvent, ListenLimits, REFUSAL_LOG_INTERVAL, Refusal, Source,
    closed_during_handshake,
};
pub use message::{
    ErrorCode, InferenceOutput, KeyUsage, MAX_REMOTE_MESSAGE, Message, OutputPolicy,
    PROTOCOL_VERSION, QueryBudget, ServingPolicy,
};
pub use secret::SecretBytes;
pub use tensor::{Tensor, TensorData};
