//! [`ModelKey`], the 32-byte data-encryption key of a bundle, and its public
//! [`KeyId`].
//!
//! The key must never be printed (its `Debug` is redacted) and is wiped when
//! dropped, best effort. The key id is not secret: it is written into every
//! bundle header so that a wrong key is refused before any decryption.

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use super::error::SealError;
use crate::SecretBytes;

/// Length of a [`ModelKey`] in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Domain-separation prefix hashed in front of the key to derive its id.
const KEY_ID_CONTEXT: &[u8] = b"cca-ml key id";

/// A bundle's AES-256-GCM data-encryption key.
///
/// * `Debug` prints only the (public) key id: `ModelKey(<redacted>, id 0a1b..)`.
/// * On drop the bytes are overwritten with zeros. This is **best effort**:
///   the workspace forbids `unsafe`, so no volatile write is used, and the
///   AES key schedule ring expands from it is not wiped by ring.
/// * Not `Clone`: copies are explicit ([`ModelKey::expose`] + [`ModelKey::from_bytes`]).
pub struct ModelKey([u8; KEY_LEN]);

impl ModelKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, SealError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SealError::Random)?;
        Ok(Self(bytes))
    }

    /// Wrap existing key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Wrap key bytes of unchecked length (e.g. from a key-release message);
    /// `None` unless there are exactly [`KEY_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; KEY_LEN]>::try_from(bytes).ok().map(Self)
    }

    /// The key itself. Do not log or copy it further than needed.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key as [`SecretBytes`], e.g. for a `ModelKeyRelease` message.
    pub fn to_secret_bytes(&self) -> SecretBytes {
        SecretBytes::new(self.0.to_vec())
    }

    /// The key's public id: the first 16 bytes of
    /// SHA-256(`"cca-ml key id"` ‖ key).
    pub fn key_id(&self) -> KeyId {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(KEY_ID_CONTEXT);
        ctx.update(&self.0);
        let mut id = [0u8; 16];
        id.copy_from_slice(&ctx.finish().as_ref()[..16]);
        KeyId(id)
    }
}

impl std::fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelKey(<redacted>, id {})", self.key_id())
    }
}

impl Drop for ModelKey {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&mut self.0);
    }
}

/// The public identifier of a [`ModelKey`], as written in bundle headers.
///
/// It reveals which bundles share a key, nothing about the key itself.
/// `Debug` and `Display` print lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// The 16 id bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl From<[u8; 16]> for KeyId {
    fn from(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let key = ModelKey::from_bytes([0x41; KEY_LEN]);
        let shown = format!("{key:?} {key:#?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains("65, 65"), "{shown}");
        assert!(!shown.to_lowercase().contains("4141"), "{shown}");
    }

    #[test]
    fn key_id_is_domain_separated_sha256_prefix() {
        let key = ModelKey::from_bytes([7; KEY_LEN]);
        let mut input = b"cca-ml key id".to_vec();
        input.extend_from_slice(&[7; KEY_LEN]);
        let full = digest::digest(&digest::SHA256, &input);
        assert_eq!(key.key_id().as_bytes(), &full.as_ref()[..16]);
        assert_ne!(key.key_id(), ModelKey::from_bytes([8; KEY_LEN]).key_id());
        assert_eq!(key.key_id().to_string().len(), 32);
    }

    #[test]
    fn generate_and_from_slice() {
        let a = ModelKey::generate().unwrap();
        let b = ModelKey::generate().unwrap();
        assert_ne!(a.key_id(), b.key_id());
        assert!(ModelKey::from_slice(&[0; 31]).is_none());
        assert!(ModelKey::from_slice(&[0; 33]).is_none());
        let c = ModelKey::from_slice(a.expose()).unwrap();
        assert_eq!(c.key_id(), a.key_id());
        assert_eq!(a.to_secret_bytes().expose(), a.expose());
    }
}
