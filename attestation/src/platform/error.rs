//! Errors from evidence sources, phrased so that a user knows what to do.

use std::path::PathBuf;

use thiserror::Error;

/// Why no evidence could be produced.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// configfs-tsm is not there at all.
    #[error("configfs-tsm is not available at {path}: {hint}")]
    TsmUnavailable {
        /// The report directory we looked for.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
    /// The directory exists but is not a configfs-tsm report directory.
    #[error("{path} is not a configfs-tsm report directory ({detail})")]
    NotConfigfsTsm {
        /// The directory.
        path: PathBuf,
        /// What was missing.
        detail: String,
    },
    /// Not allowed to create a report.
    #[error("permission denied creating a TSM report under {path}: run as root inside the realm")]
    PermissionDenied {
        /// The report directory.
        path: PathBuf,
    },
    /// The TSM provider is not the Arm CCA guest driver.
    #[error(
        "the TSM provider is {found:?}, not \"arm_cca_guest\": this machine is not an Arm CCA realm"
    )]
    WrongProvider {
        /// The provider the kernel reported.
        found: String,
    },
    /// Another process wrote the same report concurrently.
    #[error("the TSM report changed while it was read (generation {before} -> {after}); retry")]
    Raced {
        /// Generation before the write.
        before: u64,
        /// Generation after the read.
        after: u64,
    },
    /// The kernel returned an empty or oversized token.
    #[error("the TSM report returned {size} bytes; expected 1..={limit}")]
    BadTokenSize {
        /// Bytes returned.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// This evidence source has no sealing-key interface.
    #[error(
        "{platform} has no sealing-key interface (Arm CCA RMM 1.0 defines none; Islet adds one: \
         use --platform islet in an Islet realm); no key was derived"
    )]
    NoSealingKey {
        /// The source.
        platform: String,
    },
    /// Islet's `/dev/rsi` failed.
    #[error("Islet /dev/rsi: {0}")]
    Islet(#[from] islet_rsi::RsiError),
    /// A key file is unusable.
    #[error("platform key {path}: {detail}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Building the emulated token failed.
    #[error("building the INSECURE emulated token failed: {0}")]
    Build(#[from] crate::cca::build::BuildError),
    /// Any other I/O failure.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl PlatformError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| PlatformError::Io { op, path, source }
    }
}
