//! [`Framed`]: messages over any async byte stream (plain TCP, or a
//! `tokio_rustls` client/server stream for attested TLS), with frame and
//! message size limits and a timeout on every read and write.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use crate::error::ProtocolError;
use crate::frame::{DEFAULT_MAX_FRAME, FrameDecoder, encode_frame};
use crate::message::{ErrorCode, Message, PROTOCOL_VERSION};

/// Bytes read from the stream per `read` call.
const READ_BUF: usize = 64 << 10;

/// Size and time limits of one connection. Every field is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted or sent. Default 4 MiB.
    pub max_frame: usize,
    /// Time to finish a frame once its first byte has arrived; also the
    /// longest wait for the next chunk inside [`Framed::recv_large`].
    /// Default 10 s.
    pub read_timeout: Duration,
    /// Time to wait for the first byte of the next frame. Default 300 s.
    pub idle_timeout: Duration,
    /// Time for the peer to accept one whole frame we send. Default 30 s.
    pub write_timeout: Duration,
    /// Largest payload reassembled by [`Framed::recv_large`] (or sent by
    /// [`Framed::send_large`]). Default 256 MiB.
    pub max_message: usize,
    /// Payload bytes per [`Message::Chunk`] sent by [`Framed::send_large`];
    /// must leave room for the chunk header within `max_frame`. Default 1 MiB.
    pub chunk_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            max_message: 256 << 20,
            chunk_size: 1 << 20,
        }
    }
}

/// What the peer said in its [`Message::Hello`], returned by [`Framed::server_hello`].
///
/// `role` and `software` are the peer's *claims*, for logs only: authorize
/// by the role in the peer's attested certificate, never by these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHello {
    /// The peer's protocol version (equal to ours, or the hello failed).
    pub protocol_version: u16,
    /// The role the peer claims.
    pub role: String,
    /// The software the peer claims to run.
    pub software: String,
}

/// How long to wait for the first byte of a frame, and which error to
/// report if it does not come.
#[derive(Clone, Copy)]
enum FirstByte {
    /// Between messages: `idle_timeout`, then [`ProtocolError::IdleTimeout`].
    Idle,
    /// Inside a chunked message: `read_timeout`, then [`ProtocolError::ReadTimeout`].
    MidMessage,
}

/// A stream that carries [`Message`]s, one per length-prefixed frame.
///
/// `recv` and `recv_large` are cancel-safe with respect to framing: if the
/// future is dropped (e.g. in `tokio::select!`), bytes already read stay
/// buffered and the next call continues the same frame. `send` is not: a
/// dropped `send` may leave half a frame on the wire, so drop the connection.
pub struct Framed<S> {
    stream: S,
    limits: Limits,
    decoder: FrameDecoder,
    read_buf: Box<[u8]>,
    /// Read but not yet handed to the decoder: `read_buf[pending_start..pending_end]`.
    pending_start: usize,
    pending_end: usize,
}

impl<S: fmt::Debug> fmt::Debug for Framed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Framed")
            .field("stream", &self.stream)
            .field("limits", &self.limits)
            .field("buffered", &(self.decoder.buffered() + self.pending_len()))
            .finish()
    }
}

impl<S> Framed<S> {
    /// Wrap `stream` with [`Limits::default`].
    pub fn new(stream: S) -> Self {
        Self::with_limits(stream, Limits::default())
    }

    /// Wrap `stream` with explicit limits.
    pub fn with_limits(stream: S, limits: Limits) -> Self {
        Self {
            stream,
            limits,
            decoder: FrameDecoder::new(limits.max_frame),
            read_buf: vec![0; READ_BUF].into_boxed_slice(),
            pending_start: 0,
            pending_end: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The underlying stream (e.g. to read the peer's certificate or TLS
    /// exporter from a `tokio_rustls` stream).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Unwrap the stream. Bytes already read but not yet returned as a
    /// message are discarded.
    pub fn into_inner(self) -> S {
        self.stream
    }

    fn pending_len(&self) -> usize {
        self.pending_end - self.pending_start
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Send one message in one frame, within `write_timeout`.
    pub async fn send(&mut self, message: &Message) -> Result<(), ProtocolError> {
        let mut payload = message.encode()?;
        let max = self.limits.max_frame;
        let framed = encode_frame(&payload, max).map_err(|_| ProtocolError::OutgoingTooLarge {
            size: payload.len(),
            max,
        });
        wipe(&mut payload);
        let mut frame = framed?;
        let result = self.write_all(&frame).await;
        wipe(&mut frame);
        result
    }

    /// Receive one message. Waits up to `idle_timeout` for it to start and
    /// `read_timeout` for it to finish.
    ///
    /// An [`Message::Error`] from the peer is returned as a message; the
    /// typed helpers (`client_hello`, `recv_large`, ...) turn it into
    /// [`ProtocolError::Remote`].
    pub async fn recv(&mut self) -> Result<Message, ProtocolError> {
        self.recv_message(FirstByte::Idle).await
    }

    /// Send `data` as [`Message::Chunk`]s of `chunk_size` bytes, numbered
    /// from 0, the last one flagged. Empty data is one empty, last chunk.
    pub async fn send_large(&mut self, stream_id: u64, data: &[u8]) -> Result<(), ProtocolError> {
        let chunk_size = self.limits.chunk_size;
        if chunk_size == 0 {
            return Err(ProtocolError::InvalidLimits(
                "chunk_size must be at least 1",
            ));
        }
        if data.len() > self.limits.max_message {
            return Err(ProtocolError::MessageTooLarge {
                size: data.len() as u64,
                max: self.limits.max_message,
            });
        }
        let count = data.len().div_ceil(chunk_size).max(1);
        if u32::try_from(count).is_err() {
            return Err(ProtocolError::TooManyChunks);
        }
        for seq in 0..count {
            let start = seq * chunk_size;
            let end = data.len().min(start + chunk_size);
            let chunk = Message::Chunk {
                stream_id,
                // Checked above: count fits in u32.
                seq: seq as u32,
                last: seq + 1 == count,
                bytes: data[start..end].to_vec(),
            };
            self.send(&chunk).await?;
        }
        Ok(())
    }

    /// Receive the chunks of `stream_id` sent by [`send_large`](Self::send_large)
    /// and return the reassembled payload.
    ///
    /// Fails on a chunk of another stream, a sequence gap, an empty chunk
    /// that is not the last, a total over `max_message`, or any other
    /// message. After the first chunk, each next one must start within
    /// `read_timeout`.
    pub async fn recv_large(&mut self, stream_id: u64) -> Result<Vec<u8>, ProtocolError> {
        let mut payload = Vec::new();
        let mut expected = 0u32;
        loop {
            let wait = if expected == 0 {
                FirstByte::Idle
            } else {
                FirstByte::MidMessage
            };
            match self.recv_message(wait).await? {
                Message::Chunk {
                    stream_id: got,
                    seq,
                    last,
                    bytes,
                } => {
                    if got != stream_id {
                        return Err(ProtocolError::WrongStream {
                            expected: stream_id,
                            got,
                        });
                    }
                    if seq != expected {
                        return Err(ProtocolError::OutOfOrderChunk { expected, got: seq });
                    }
                    let size = payload.len() as u64 + bytes.len() as u64;
                    if size > self.limits.max_message as u64 {
                        return Err(ProtocolError::MessageTooLarge {
                            size,
                            max: self.limits.max_message,
                        });
                    }
                    if last {
                        payload.extend_from_slice(&bytes);
                        return Ok(payload);
                    }
                    // Every non-final chunk must make progress, so a peer
                    // cannot keep us looping without sending data.
                    if bytes.is_empty() {
                        return Err(ProtocolError::EmptyChunk { seq });
                    }
                    payload.extend_from_slice(&bytes);
                    expected = seq.checked_add(1).ok_or(ProtocolError::TooManyChunks)?;
                }
                other => return Err(unexpected("Chunk", other)),
            }
        }
    }

    /// Client side of the version handshake: send [`Message::Hello`] and
    /// expect [`Message::HelloAck`] with our version.
    ///
    /// A server that refuses our version answers with an `Error` whose code
    /// is [`ErrorCode::VersionMismatch`]; that comes back as
    /// [`ProtocolError::Remote`] with that code. An ack naming another
    /// version gives [`ProtocolError::VersionMismatch`].
    pub async fn client_hello(&mut self, role: &str, software: &str) -> Result<(), ProtocolError> {
        self.send(&Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: role.to_owned(),
            software: software.to_owned(),
        })
        .await?;
        match self.recv().await? {
            Message::HelloAck { protocol_version } if protocol_version == PROTOCOL_VERSION => {
                Ok(())
            }
            Message::HelloAck { protocol_version } => Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: protocol_version,
            }),
            other => Err(unexpected("HelloAck", other)),
        }
    }

    /// Server side of the version handshake: expect [`Message::Hello`];
    /// if its version is ours, reply [`Message::HelloAck`] and return what
    /// the peer said. Otherwise tell the peer
    /// `Error { VersionMismatch, "peer speaks protocol vX; this side speaks vY" }`
    /// and return [`ProtocolError::VersionMismatch`].
    pub async fn server_hello(&mut self) -> Result<PeerHello, ProtocolError> {
        match self.recv().await? {
            Message::Hello {
                protocol_version,
                role,
                software,
            } => {
                if protocol_version != PROTOCOL_VERSION {
                    let err = ProtocolError::VersionMismatch {
                        ours: PROTOCOL_VERSION,
                        theirs: protocol_version,
                    };
                    self.send_best_effort(err.wire_code(), err.to_string())
                        .await;
                    return Err(err);
                }
                self.send(&Message::HelloAck {
                    protocol_version: PROTOCOL_VERSION,
                })
                .await?;
                Ok(PeerHello {
                    protocol_version,
                    role,
                    software,
                })
            }
            other => {
                let err = unexpected("Hello", other);
                if !matches!(err, ProtocolError::Remote { .. }) {
                    self.send_best_effort(err.wire_code(), err.to_string())
                        .await;
                }
                Err(err)
            }
        }
    }

    /// Tell the peer why we are giving up; failures are only logged,
    /// because the caller is already returning an error.
    async fn send_best_effort(&mut self, code: ErrorCode, message: String) {
        if let Err(err) = self.send(&Message::Error { code, message }).await {
            tracing::debug!(%err, "could not send error to peer");
        }
    }

    /// Shut down the write side (sends TLS close_notify on TLS streams),
    /// within `write_timeout`.
    pub async fn shutdown(&mut self) -> Result<(), ProtocolError> {
        let after = self.limits.write_timeout;
        timeout(after, self.stream.shutdown())
            .await
            .map_err(|_| ProtocolError::WriteTimeout { after })??;
        Ok(())
    }

    async fn write_all(&mut self, frame: &[u8]) -> Result<(), ProtocolError> {
        let after = self.limits.write_timeout;
        let stream = &mut self.stream;
        timeout(after, async move {
            stream.write_all(frame).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| ProtocolError::WriteTimeout { after })??;
        Ok(())
    }

    async fn recv_message(&mut self, wait: FirstByte) -> Result<Message, ProtocolError> {
        let mut frame = self.read_frame(wait).await?;
        let message = Message::decode(&frame);
        // Frames may carry keys; clear our copy (best-effort, see SecretBytes).
        wipe(&mut frame);
        let message = message?;
        tracing::trace!(kind = message.kind(), "received message");
        Ok(message)
    }

    /// Read until one whole frame is buffered and return its payload.
    async fn read_frame(&mut self, wait: FirstByte) -> Result<Vec<u8>, ProtocolError> {
        // Set once the frame's first byte is here (or was already buffered).
        let mut deadline: Option<Instant> = None;
        loop {
            if self.pending_len() > 0 {
                deadline.get_or_insert_with(|| Instant::now() + self.limits.read_timeout);
                let used = self
                    .decoder
                    .push(&self.read_buf[self.pending_start..self.pending_end]);
                self.pending_start += used;
            }
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            if self.pending_len() > 0 {
                // The decoder takes every byte until its frame is complete or
                // it fails, both handled above; this cannot happen.
                return Err(ProtocolError::Io(std::io::Error::other(
                    "frame decoder made no progress",
                )));
            }
            let read = self.stream.read(&mut self.read_buf);
            let n = match (deadline, wait) {
                (Some(deadline), _) => {
                    let after = self.limits.read_timeout;
                    timeout_at(deadline, read)
                        .await
                        .map_err(|_| ProtocolError::ReadTimeout { after })??
                }
                (None, FirstByte::Idle) => {
                    let after = self.limits.idle_timeout;
                    timeout(after, read)
                        .await
                        .map_err(|_| ProtocolError::IdleTimeout { after })??
                }
                (None, FirstByte::MidMessage) => {
                    let after = self.limits.read_timeout;
                    timeout(after, read)
                        .await
                        .map_err(|_| ProtocolError::ReadTimeout { after })??
                }
            };
            if n == 0 {
                return Err(if self.decoder.is_between_frames() {
                    ProtocolError::Closed
                } else {
                    ProtocolError::Truncated {
                        received: self.decoder.buffered(),
                    }
                });
            }
            self.pending_start = 0;
            self.pending_end = n;
        }
    }
}

/// The error for receiving `got` where `expected` was due: the peer's own
/// error if it sent one, else [`ProtocolError::UnexpectedMessage`].
fn unexpected(expected: &'static str, got: Message) -> ProtocolError {
    got.as_remote_error()
        .unwrap_or_else(|| ProtocolError::UnexpectedMessage {
            expected,
            got: got.kind(),
        })
}

/// Overwrite a buffer that may have held secrets (best-effort).
fn wipe(buf: &mut [u8]) {
    buf.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(buf);
}
