//! Evidence sources: where a party gets its CCA attestation token.
//!
//! One trait, [`EvidenceSource`], with three implementations today:
//! * [`ConfigfsTsm`] — a real Linux realm (`/sys/kernel/config/tsm/report`);
//! * [`IsletRsi`] — Islet's `/dev/rsi` (rsi.ko), for realm kernels without it;
//! * [`danger::InsecureEmulatedPlatform`] — tests and laptops only. It signs
//!   real-format tokens with a platform key from a file, so anyone holding that
//!   file can forge evidence. It lives under `danger` and is never a default.
//!
//! Must never: pick the emulated platform on its own, or log a line about the
//! emulated platform without the word INSECURE.

mod emulated;
mod error;
mod islet;
mod sealing;
mod tsm;

pub use error::PlatformError;
pub use islet::IsletRsi;
pub use sealing::SealingKey;
pub use tsm::ConfigfsTsm;

use crate::cca::Challenge;

/// Implementation id (claim 2396) of every token the emulated platform signs.
/// Verifiers use it to say INSECURE loudly; policies must name it to admit it.
pub const INSECURE_EMULATED_IMPLEMENTATION_ID: [u8; 32] = *b"INSECURE-EMULATED-CCA-PLATFORM-1";

/// Dangerous evidence sources, named so that every use is greppable.
pub mod danger {
    pub use super::emulated::{InsecureEmulatedPlatform, generate_platform_key_pem};
}

pub use emulated::measure_file;

/// Something that can produce a CCA attestation token for a challenge.
pub trait EvidenceSource: Send + Sync + std::fmt::Debug {
    /// A one-line description for logs ("configfs-tsm at ...").
    fn describe(&self) -> String;
    /// True only for sources whose evidence anyone could forge.
    fn is_insecure(&self) -> bool;
    /// A token whose realm challenge (claim 10) is `challenge`.
    fn attestation_token(&self, challenge: &Challenge) -> Result<Vec<u8>, PlatformError>;
    /// This realm's sealing key, bound to its measurement. Sources without
    /// a sealing interface refuse: nothing is derived in its place.
    fn sealing_key(&self) -> Result<SealingKey, PlatformError> {
        Err(PlatformError::NoSealingKey {
            platform: self.describe(),
        })
    }
}

/// Which evidence source a binary uses (its `--platform` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// configfs-tsm in a Linux CCA realm (`/sys/kernel/config/tsm/report`).
    Tsm,
    /// Islet's `/dev/rsi` (load `rsi.ko` in the realm first).
    Islet,
    /// INSECURE emulated platform (tests, laptops): tokens signed with a
    /// platform key from a file; RIM = SHA-512 of the running binary.
    InsecureEmulated,
}

impl Backend {
    /// Open the chosen source. The emulated one needs its platform key file
    /// and announces itself as INSECURE on stderr, whatever the log level.
    pub fn open(
        self,
        emulated_platform_key: Option<&std::path::Path>,
    ) -> Result<std::sync::Arc<dyn EvidenceSource>, PlatformError> {
        match self {
            Backend::Tsm => Ok(std::sync::Arc::new(ConfigfsTsm::new())),
            Backend::Islet => Ok(std::sync::Arc::new(IsletRsi::new())),
            Backend::InsecureEmulated => {
                let key = emulated_platform_key.ok_or_else(|| PlatformError::Key {
                    path: "(none)".into(),
                    detail: "--platform insecure-emulated needs --platform-key FILE \
                             (create one with `attest platform-key generate`)"
                        .into(),
                })?;
                eprintln!("WARNING: INSECURE emulated platform: evidence from it can be forged");
                Ok(std::sync::Arc::new(
                    danger::InsecureEmulatedPlatform::from_key_file(key)?,
                ))
            }
        }
    }
}
