//! [`SecretBytes`]: key material that must not be logged and is wiped when dropped.

use serde::{Deserialize, Serialize};

/// Secret bytes (e.g. a model's data-encryption key).
///
/// * `Debug` prints only the length: `SecretBytes(<32 bytes redacted>)`.
/// * On drop the bytes are overwritten with zeros. This is **best-effort**:
///   the workspace forbids `unsafe`, so no volatile write is used (a
///   [`std::hint::black_box`] discourages the compiler from eliding the
///   stores), and copies made elsewhere (TLS buffers, the frame the key was
///   decoded from, a `Vec` that grew before being wrapped) are not covered.
/// * Equality is checked without an early exit on the first differing byte.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretBytes(#[serde(with = "serde_bytes")] Vec<u8>);

impl SecretBytes {
    /// Wrap `bytes`; from here on they are redacted and wiped on drop.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret itself. Do not log or copy it further than needed.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `true` when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl Eq for SecretBytes {}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::new(vec![0x41; 32]);
        assert_eq!(format!("{s:?}"), "SecretBytes(<32 bytes redacted>)");
        assert!(!format!("{s:#?}").contains("65"));
    }

    #[test]
    fn equality() {
        assert_eq!(SecretBytes::new(vec![1, 2]), SecretBytes::new(vec![1, 2]));
        assert_ne!(SecretBytes::new(vec![1, 2]), SecretBytes::new(vec![1, 3]));
        assert_ne!(SecretBytes::new(vec![1, 2]), SecretBytes::new(vec![1]));
    }
}
