//! Blob ids: the SHA-256 of the content.

use std::fmt;
use std::str::FromStr;

/// SHA-256 of a blob's bytes; its name in every store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// From a finished SHA-256 digest.
    pub fn from_digest(d: ring::digest::Digest) -> Self {
        let mut id = [0u8; 32];
        id.copy_from_slice(d.as_ref());
        BlobId(id)
    }

    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_digest(ring::digest::digest(&ring::digest::SHA256, bytes))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_hex())
    }
}

impl FromStr for BlobId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|_| format!("{s:?} is not a hex blob id"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("{s:?} is not 32 bytes (64 hex digits)"))?;
        Ok(BlobId(arr))
    }
}
