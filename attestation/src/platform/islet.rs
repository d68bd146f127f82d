//! Islet's own evidence path: `/dev/rsi` from the `rsi.ko` module, for Islet
//! realm kernels without configfs-tsm (ISLET.md §1.2). The ioctls live in the
//! `islet-rsi` crate, the one place `unsafe` is allowed.
//!
//! Not run here: no realm on this machine. Same token format as configfs-tsm
//! (tag 399), verified by the same code.

use std::path::PathBuf;

use super::{EvidenceSource, PlatformError, SealingKey};
use crate::cca::{Challenge, MAX_TOKEN_SIZE};

/// Evidence from Islet's `/dev/rsi`.
#[derive(Debug, Clone)]
pub struct IsletRsi {
    device: PathBuf,
}

impl Default for IsletRsi {
    fn default() -> Self {
        Self::new()
    }
}

impl IsletRsi {
    /// Use `/dev/rsi`.
    pub fn new() -> Self {
        Self {
            device: PathBuf::from(islet_rsi::DEFAULT_DEVICE),
        }
    }
}

impl EvidenceSource for IsletRsi {
    fn describe(&self) -> String {
        format!("Islet RSI device {}", self.device.display())
    }

    fn is_insecure(&self) -> bool {
        false
    }

    fn attestation_token(&self, challenge: &Challenge) -> Result<Vec<u8>, PlatformError> {
        // The module admits one opener at a time: open per token, not for
        // the life of the process, so other tools can still attest.
        let rsi = islet_rsi::Rsi::open(&self.device)?;
        let token = rsi.attestation_token(&challenge.0)?;
        if token.len() > MAX_TOKEN_SIZE {
            return Err(PlatformError::BadTokenSize {
                size: token.len(),
                limit: MAX_TOKEN_SIZE,
            });
        }
        Ok(token)
    }

    /// Islet's vendor sealing key bound to the firmware measurements (VHUK_M)
    /// and this realm's RIM. Without Islet HES its root is a public constant
    /// (ISLET.md §2): demo-grade on FVP.
    fn sealing_key(&self) -> Result<SealingKey, PlatformError> {
        let rsi = islet_rsi::Rsi::open(&self.device)?;
        let key = rsi.sealing_key(
            islet_rsi::SEALING_KEY_FLAG_KEY | islet_rsi::SEALING_KEY_FLAG_RIM,
            0,
        )?;
        Ok(SealingKey::new(key))
    }
}
