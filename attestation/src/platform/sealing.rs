//! Sealing keys: a 32-byte key that only this realm image on this platform
//! can derive, for data a realm keeps at rest (the device agent's records
//! and re-sealed models). Rebuilding the image changes its RIM and so its key.
//!
//! Must never: derive a key from something an attacker knows and call it a
//! sealing key without saying INSECURE; or print one.

/// A sealing key. `Debug` is redacted; the bytes are overwritten on drop
/// (best effort: no `unsafe`, so no volatile write).
pub struct SealingKey([u8; 32]);

impl SealingKey {
    /// Wrap key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key. Derive purpose-specific keys from it; do not store it.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl Drop for SealingKey {
    fn drop(&mut self) {
        self.0 = [0; 32];
        std::hint::black_box(&self.0);
    }
}

/// HKDF salt of the emulated platform's sealing keys.
pub(crate) const EMULATED_SALT: &[u8] = b"cca-ml/insecure-emulated/sealing-key/v1";
