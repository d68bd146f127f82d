//! The Certifier Service framing: one request and one response per TCP
//! connection, each a 4-byte little-endian length and that many bytes of
//! protobuf (as the framework's C++ client and Go service do).
//!
//! The framework reads any length; we refuse frames above a limit before
//! allocating, and bound every read with a timeout.

use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame we read or write (the Go service's own ceiling is 16 MiB − 1).
pub const MAX_FRAME: usize = 1 << 20;

/// Framing errors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The peer announced a frame above the limit.
    #[error("frame of {announced} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Announced size.
        announced: u64,
        /// Limit.
        limit: usize,
    },
    /// The peer closed the connection mid-frame (or before one).
    #[error("connection closed before a complete frame arrived")]
    Truncated,
    /// The read or write did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Other I/O failure.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Read one frame within `timeout`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, WireError> {
    let read = async {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await.map_err(eof_is_truncated)?;
        let announced = u32::from_le_bytes(len);
        let size = usize::try_from(announced).unwrap_or(usize::MAX);
        if size > limit {
            return Err(WireError::TooLarge {
                announced: u64::from(announced),
                limit,
            });
        }
        let mut buf = vec![0u8; size];
        r.read_exact(&mut buf).await.map_err(eof_is_truncated)?;
        Ok(buf)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| WireError::Timeout(timeout))?
}

/// Write one frame within `timeout`.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    timeout: Duration,
) -> Result<(), WireError> {
    if payload.len() > MAX_FRAME {
        return Err(WireError::TooLarge {
            announced: payload.len() as u64,
            limit: MAX_FRAME,
        });
    }
    let write = async {
        // The length fits in u32 because MAX_FRAME does.
        w.write_all(&(payload.len() as u32).to_le_bytes()).await?;
        w.write_all(payload).await?;
        w.flush().await?;
        Ok(())
    };
    tokio::time::timeout(timeout, write)
        .await
        .map_err(|_| WireError::Timeout(timeout))?
}

fn eof_is_truncated(e: std::io::Error) -> WireError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        WireError::Truncated
    } else {
        WireError::Io(e)
    }
}
