//! Typed errors for framing ([`FrameError`]), tensors ([`TensorError`]) and
//! the message layer ([`ProtocolError`]), plus the one place where a local
//! error is mapped to a wire [`ErrorCode`].

use std::time::Duration;

use thiserror::Error;

use crate::message::ErrorCode;

/// A framing rule was broken: by the peer (decoding) or by the caller
/// (encoding). Once a [`crate::FrameDecoder`] has returned one of these the
/// byte stream is out of sync and the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame header declared (or a caller tried to send) more than the limit.
    #[error("frame of {declared} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Length from the header, or of the payload being encoded.
        declared: u64,
        /// The configured maximum frame size.
        max: usize,
    },
    /// A frame header declared a zero-length payload (or a caller tried to
    /// send one); no message encodes to zero bytes.
    #[error("zero-length frame (no message encodes to zero bytes)")]
    Empty,
}

/// A [`crate::Tensor`] whose shape and data disagree or that is too big.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TensorError {
    /// The product of the dimensions does not fit in a `u64`.
    #[error("tensor shape {shape:?} overflows: its element count does not fit in 64 bits")]
    ShapeOverflow {
        /// The offending shape.
        shape: Vec<u64>,
    },
    /// The shape implies a different number of elements than the data holds.
    #[error("tensor shape implies {expected} elements but the data holds {actual}")]
    LengthMismatch {
        /// Product of the dimensions.
        expected: u64,
        /// Number of elements in the data.
        actual: usize,
    },
    /// More elements than the caller allows.
    #[error("tensor of {elements} elements exceeds the {max}-element limit")]
    TooManyElements {
        /// Product of the dimensions.
        elements: u64,
        /// The caller's limit.
        max: u64,
    },
}

/// Everything that can go wrong exchanging [`crate::Message`]s.
///
/// Variants name who misbehaved (the peer, the network, or this side's
/// caller) so that a binary can log a useful line and decide whether to tell
/// the peer (see [`ProtocolError::wire_code`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The underlying stream failed (reset, broken pipe, TLS error, ...).
    #[error("I/O error on the connection: {0}")]
    Io(#[from] std::io::Error),

    /// Nothing arrived while waiting for the first byte of the next frame.
    #[error("peer sent nothing for {}s while a message was awaited", .after.as_secs_f32())]
    IdleTimeout {
        /// The idle limit that expired.
        after: Duration,
    },

    /// The peer started a frame (or a chunked message) and stalled.
    #[error("peer stalled mid-frame for {}s", .after.as_secs_f32())]
    ReadTimeout {
        /// The read limit that expired.
        after: Duration,
    },

    /// The peer did not accept our bytes in time (its receive window stayed full).
    #[error("peer did not accept data for {}s", .after.as_secs_f32())]
    WriteTimeout {
        /// The write limit that expired.
        after: Duration,
    },

    /// The peer closed the connection cleanly between frames.
    #[error("peer closed the connection")]
    Closed,

    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame after {received} bytes of the frame")]
    Truncated {
        /// Bytes of the unfinished frame (header included) that had arrived.
        received: usize,
    },

    /// The peer declared a frame longer than our limit; its payload was not read.
    #[error("peer declared a frame of {declared} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Length from the frame header.
        declared: u64,
        /// Our maximum frame size.
        max: usize,
    },

    /// The peer sent a zero-length frame.
    #[error("peer sent a zero-length frame")]
    EmptyFrame,

    /// A message we were asked to send does not fit in one frame.
    #[error(
        "message encodes to {size} bytes, over the {max}-byte frame limit (send it with send_large)"
    )]
    OutgoingTooLarge {
        /// Encoded size of the message.
        size: usize,
        /// Our maximum frame size.
        max: usize,
    },

    /// A chunked payload (sent or being reassembled) exceeds the message cap.
    #[error("chunked payload of at least {size} bytes exceeds the {max}-byte message limit")]
    MessageTooLarge {
        /// Size reached (or requested) so far.
        size: u64,
        /// The configured maximum reassembled size.
        max: usize,
    },

    /// A chunk arrived out of sequence.
    #[error("chunk {got} arrived where chunk {expected} was expected")]
    OutOfOrderChunk {
        /// Sequence number we were waiting for.
        expected: u32,
        /// Sequence number the peer sent.
        got: u32,
    },

    /// A chunk belonged to a different stream than the one being received.
    #[error("chunk for stream {got} arrived while receiving stream {expected}")]
    WrongStream {
        /// Stream being reassembled.
        expected: u64,
        /// Stream id the peer sent.
        got: u64,
    },

    /// A chunk other than the last carried no bytes (it would make no progress).
    #[error("chunk {seq} is empty but not the last")]
    EmptyChunk {
        /// Its sequence number.
        seq: u32,
    },

    /// A chunked payload needs more chunks than a `u32` sequence number counts.
    #[error("chunked payload needs more than 2^32 chunks")]
    TooManyChunks,

    /// The frame did not decode as a [`crate::Message`].
    #[error("message could not be decoded: {0}")]
    Decode(#[source] postcard::Error),

    /// The frame held a valid message followed by extra bytes.
    #[error("message is followed by {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Number of bytes left after the message.
        extra: usize,
    },

    /// A message could not be encoded (should not happen for well-formed values).
    #[error("message could not be encoded: {0}")]
    Encode(#[source] postcard::Error),

    /// The peer sent a valid message, but not one that fits this point of the exchange.
    #[error("expected a {expected} message but the peer sent {got}")]
    UnexpectedMessage {
        /// What this side was waiting for.
        expected: &'static str,
        /// [`crate::Message::kind`] of what arrived.
        got: &'static str,
    },

    /// The two sides speak different protocol versions.
    #[error("peer speaks protocol v{theirs}; this side speaks v{ours}")]
    VersionMismatch {
        /// [`crate::PROTOCOL_VERSION`].
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },

    /// The peer answered with an [`crate::Message::Error`].
    ///
    /// `message` is the peer's text, cut to [`crate::MAX_REMOTE_MESSAGE`]
    /// bytes; it is printed escaped because it is untrusted.
    #[error("peer reported {code:?}: {message:?}")]
    Remote {
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's explanation (untrusted, truncated).
        message: String,
    },

    /// The caller's [`crate::Limits`] cannot work (e.g. a zero chunk size).
    #[error("invalid limits: {0}")]
    InvalidLimits(&'static str),
}

impl From<FrameError> for ProtocolError {
    fn from(err: FrameError) -> Self {
        match err {
            FrameError::TooLarge { declared, max } => Self::TooLarge { declared, max },
            FrameError::Empty => Self::EmptyFrame,
        }
    }
}

impl ProtocolError {
    /// The code to send the peer when this error ends an exchange.
    ///
    /// This is the only mapping from local errors to wire codes. Errors on
    /// which nothing useful can be sent (the stream is gone) still map to a
    /// code, so callers need no special cases; sending may simply fail.
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            Self::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            Self::Remote { code, .. } => *code,
            Self::TooLarge { .. } | Self::MessageTooLarge { .. } => ErrorCode::BudgetExceeded,
            Self::EmptyFrame
            | Self::Decode(_)
            | Self::TrailingBytes { .. }
            | Self::UnexpectedMessage { .. }
            | Self::OutOfOrderChunk { .. }
            | Self::WrongStream { .. }
            | Self::EmptyChunk { .. }
            | Self::TooManyChunks
            | Self::Truncated { .. }
            | Self::IdleTimeout { .. }
            | Self::ReadTimeout { .. } => ErrorCode::BadRequest,
            Self::Io(_)
            | Self::WriteTimeout { .. }
            | Self::Closed
            | Self::OutgoingTooLarge { .. }
            | Self::Encode(_)
            | Self::InvalidLimits(_) => ErrorCode::Internal,
        }
    }
}
