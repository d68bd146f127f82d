//! Length-prefixed framing: a `u32` big-endian payload length, then the
//! payload. Pure and sans-IO: [`FrameDecoder`] takes bytes and yields frames,
//! [`encode_frame`] builds one; neither touches a socket.
//!
//! The decoder never buffers more than `max_frame + 4` bytes: it checks a
//! declared length against the limit as soon as the 4-byte header is
//! complete, before accepting a single payload byte, and it accepts bytes
//! only up to the end of the current frame.

use crate::error::FrameError;

/// Default maximum payload size of one frame: 4 MiB.
pub const DEFAULT_MAX_FRAME: usize = 4 << 20;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Build one frame: `payload.len()` as `u32` big-endian, then `payload`.
///
/// Fails with [`FrameError::Empty`] for an empty payload and
/// [`FrameError::TooLarge`] when the payload is longer than `max` (or than
/// `u32::MAX`).
pub fn encode_frame(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    let too_large = || FrameError::TooLarge {
        declared: payload.len() as u64,
        max,
    };
    if payload.len() > max {
        return Err(too_large());
    }
    let len = u32::try_from(payload.len()).map_err(|_| too_large())?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Incremental frame decoder.
///
/// Feed bytes with [`push`](Self::push), which takes only what belongs to
/// the current frame and returns how many bytes it took; then call
/// [`next_frame`](Self::next_frame). A typical loop:
///
/// ```
/// # use protocol::{FrameDecoder, encode_frame};
/// let mut input = encode_frame(b"one", 16).unwrap();
/// input.extend(encode_frame(b"two", 16).unwrap());
/// let mut decoder = FrameDecoder::new(16);
/// let mut rest = &input[..];
/// let mut frames = Vec::new();
/// loop {
///     let used = decoder.push(rest);
///     rest = &rest[used..];
///     match decoder.next_frame().unwrap() {
///         Some(frame) => frames.push(frame),
///         None if rest.is_empty() => break,
///         None => {}
///     }
/// }
/// assert_eq!(frames, [b"one".to_vec(), b"two".to_vec()]);
/// ```
///
/// After an error the decoder is poisoned: the stream is out of sync, so
/// `push` takes nothing and `next_frame` repeats the error.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Payload length from a complete, accepted header.
    declared: Option<usize>,
    payload: Vec<u8>,
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames whose payload is longer than `max_frame`.
    pub fn new(max_frame: usize) -> Self {
        Self {
            max_frame,
            header: [0; HEADER_LEN],
            header_len: 0,
            declared: None,
            payload: Vec::new(),
            failed: None,
        }
    }

    /// The configured maximum payload size.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Bytes of the current, unfinished frame held (header included).
    /// Never more than `max_frame + 4`.
    pub fn buffered(&self) -> usize {
        self.header_len + self.payload.len()
    }

    /// `true` when no partial frame is held: the next byte starts a new frame.
    pub fn is_between_frames(&self) -> bool {
        self.buffered() == 0
    }

    /// Take bytes of the current frame from the front of `bytes`; returns
    /// how many were taken. Takes nothing once a frame is complete (until
    /// [`next_frame`](Self::next_frame) hands it out) or after an error, and
    /// nothing past a header that declares a length over the limit.
    #[must_use = "bytes not taken must be pushed again after next_frame"]
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        let mut used = 0;
        if self.declared.is_none() {
            let want = HEADER_LEN - self.header_len;
            let take = want.min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            used = take;
            if self.header_len < HEADER_LEN {
                return used;
            }
            let declared = u32::from_be_bytes(self.header);
            if declared == 0 {
                self.failed = Some(FrameError::Empty);
                return used;
            }
            match usize::try_from(declared) {
                Ok(len) if len <= self.max_frame => self.declared = Some(len),
                _ => {
                    self.failed = Some(FrameError::TooLarge {
                        declared: u64::from(declared),
                        max: self.max_frame,
                    });
                    return used;
                }
            }
        }
        if let Some(declared) = self.declared {
            let rest = &bytes[used..];
            let take = (declared - self.payload.len()).min(rest.len());
            self.payload.extend_from_slice(&rest[..take]);
            used += take;
        }
        used
    }

    /// The next complete frame's payload, `Ok(None)` if more bytes are
    /// needed, or the framing error that poisoned this decoder.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.declared {
            Some(declared) if self.payload.len() == declared => {
                self.header_len = 0;
                self.declared = None;
                Ok(Some(std::mem::take(&mut self.payload)))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_oversized_header_before_payload() {
        let mut d = FrameDecoder::new(8);
        let mut input = 9u32.to_be_bytes().to_vec();
        input.extend_from_slice(&[0xAA; 9]);
        assert_eq!(d.push(&input), HEADER_LEN);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                declared: 9,
                max: 8
            })
        );
        assert_eq!(
            d.push(&input[HEADER_LEN..]),
            0,
            "poisoned decoder takes nothing"
        );
        assert!(d.next_frame().is_err(), "error is sticky");
    }

    #[test]
    fn rejects_empty_frame() {
        let mut d = FrameDecoder::new(8);
        assert_eq!(d.push(&[0, 0, 0, 0, 1]), HEADER_LEN);
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
    }

    #[test]
    fn exact_limit_is_accepted() {
        let frame = encode_frame(&[7; 8], 8).unwrap();
        let mut d = FrameDecoder::new(8);
        assert_eq!(d.push(&frame), frame.len());
        assert_eq!(d.next_frame(), Ok(Some(vec![7; 8])));
        assert!(d.is_between_frames());
    }

    #[test]
    fn byte_at_a_time() {
        let frame = encode_frame(b"hello", 8).unwrap();
        let mut d = FrameDecoder::new(8);
        for (i, b) in frame.iter().enumerate() {
            assert_eq!(d.next_frame(), Ok(None));
            assert_eq!(d.push(std::slice::from_ref(b)), 1);
            assert_eq!(d.buffered(), i + 1);
        }
        // The frame is complete but not yet handed out: buffered() counts it.
        assert_eq!(d.next_frame(), Ok(Some(b"hello".to_vec())));
    }

    #[test]
    fn stops_at_frame_boundary() {
        let mut input = encode_frame(b"ab", 8).unwrap();
        input.extend(encode_frame(b"cd", 8).unwrap());
        let mut d = FrameDecoder::new(8);
        assert_eq!(d.push(&input), 6);
        assert_eq!(d.push(&input[6..]), 0, "complete frame must be taken first");
        assert_eq!(d.next_frame(), Ok(Some(b"ab".to_vec())));
        assert_eq!(d.push(&input[6..]), 6);
        assert_eq!(d.next_frame(), Ok(Some(b"cd".to_vec())));
    }

    #[test]
    fn encode_checks_limits() {
        assert_eq!(encode_frame(&[], 8), Err(FrameError::Empty));
        assert_eq!(
            encode_frame(&[0; 9], 8),
            Err(FrameError::TooLarge {
                declared: 9,
                max: 8
            })
        );
        assert_eq!(encode_frame(&[1, 2], 8).unwrap(), [0, 0, 0, 2, 1, 2]);
    }
}
