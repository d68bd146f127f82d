//! configfs-tsm: the Linux interface for attestation reports (Linux 6.7+; the
//! Arm CCA guest driver `arm-cca-guest` provides it in realms since 6.13).
//!
//! Protocol, per report: `mkdir <root>/<name>`; check `provider` is
//! `arm_cca_guest`; note `generation`; write the 64-byte challenge to `inblob`;
//! read the CCA token from `outblob`; check `generation` advanced by exactly one
//! (otherwise another writer raced us and the token may answer *their*
//! challenge); `rmdir`.

use std::fs;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{EvidenceSource, PlatformError};
use crate::cca::{Challenge, MAX_TOKEN_SIZE};

/// The provider name the Arm CCA guest driver registers.
pub const ARM_CCA_PROVIDER: &str = "arm_cca_guest";

/// Evidence from configfs-tsm in a Linux realm.
#[derive(Debug, Clone)]
pub struct ConfigfsTsm {
    root: PathBuf,
}

impl Default for ConfigfsTsm {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigfsTsm {
    /// Where the kernel exposes TSM reports.
    pub const DEFAULT_ROOT: &'static str = "/sys/kernel/config/tsm/report";

    /// Use the standard location.
    pub fn new() -> Self {
        Self {
            root: PathBuf::from(Self::DEFAULT_ROOT),
        }
    }

    /// Use another report root (tests, unusual mounts).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn unavailable(&self) -> PlatformError {
        // Distinguish "configfs not mounted" from "kernel without TSM reports".
        let configfs = self.root.parent().and_then(Path::parent);
        let mounted = configfs
            .and_then(|p| fs::read_dir(p).ok())
            .is_some_and(|mut entries| entries.next().is_some());
        let hint = if mounted {
            "this kernel has no TSM reports; a CCA realm needs Linux >= 6.13 with \
             CONFIG_TSM_REPORTS and CONFIG_ARM_CCA_GUEST (on Islet without them, use the \
             islet backend)"
        } else {
            "configfs is not mounted: run `mount -t configfs none /sys/kernel/config` as root \
             (and check this is a CCA realm with CONFIG_ARM_CCA_GUEST)"
        };
        PlatformError::TsmUnavailable {
            path: self.root.clone(),
            hint,
        }
    }
}

/// Removes the report directory however the attempt ends.
struct ReportDir(PathBuf);

impl Drop for ReportDir {
    fn drop(&mut self) {
        // Best effort: configfs removes the files with the directory.
        let _ = fs::remove_dir(&self.0);
    }
}

fn read_small(path: &Path) -> Result<String, PlatformError> {
    let mut out = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(256).read_to_string(&mut out))
        .map_err(PlatformError::io("reading", path))?;
    Ok(out.trim().to_string())
}

fn read_generation(dir: &Path) -> Result<u64, PlatformError> {
    let path = dir.join("generation");
    let text = read_small(&path)?;
    text.parse().map_err(|_| PlatformError::NotConfigfsTsm {
        path: dir.to_path_buf(),
        detail: format!("generation is {text:?}, not a number"),
    })
}

impl EvidenceSource for ConfigfsTsm {
    fn describe(&self) -> String {
        format!("configfs-tsm at {}", self.root.display())
    }

    fn is_insecure(&self) -> bool {
        false
    }

    fn attestation_token(&self, challenge: &Challenge) -> Result<Vec<u8>, PlatformError> {
        if !self.root.is_dir() {
            return Err(self.unavailable());
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "cca-ml-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.root.join(name);
        fs::create_dir(&dir).map_err(|e| match e.kind() {
            ErrorKind::PermissionDenied => PlatformError::PermissionDenied {
                path: self.root.clone(),
            },
            _ => PlatformError::io("creating report directory", &dir)(e),
        })?;
        let dir = ReportDir(dir);

        let provider_path = dir.0.join("provider");
        if !provider_path.exists() {
            return Err(PlatformError::NotConfigfsTsm {
                path: self.root.clone(),
                detail: "a new report has no 'provider' attribute".into(),
            });
        }
        let provider = read_small(&provider_path)?;
        if provider != ARM_CCA_PROVIDER {
            return Err(PlatformError::WrongProvider { found: provider });
        }
        let before = read_generation(&dir.0)?;
        let inblob = dir.0.join("inblob");
        fs::write(&inblob, challenge.as_bytes()).map_err(PlatformError::io("writing", &inblob))?;

        let outblob = dir.0.join("outblob");
        let mut token = Vec::new();
        fs::File::open(&outblob)
            .and_then(|f| f.take(MAX_TOKEN_SIZE as u64 + 1).read_to_end(&mut token))
            .map_err(PlatformError::io("reading", &outblob))?;
        if token.is_empty() || token.len() > MAX_TOKEN_SIZE {
            return Err(PlatformError::BadTokenSize {
                size: token.len(),
                limit: MAX_TOKEN_SIZE,
            });
        }
        let after = read_generation(&dir.0)?;
        if after != before.wrapping_add(1) {
            return Err(PlatformError::Raced { before, after });
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge() -> Challenge {
        Challenge([7; 64])
    }

    #[test]
    fn missing_root_says_what_to_do() {
        let tmp = std::env::temp_dir().join(format!("tsm-missing-{}", std::process::id()));
        let tsm = ConfigfsTsm::with_root(tmp.join("config/tsm/report"));
        let err = tsm.attestation_token(&challenge()).unwrap_err();
        assert!(matches!(err, PlatformError::TsmUnavailable { .. }), "{err}");
        assert!(err.to_string().contains("mount -t configfs"), "{err}");
    }

    #[test]
    fn plain_directory_is_not_configfs_and_is_cleaned_up() {
        let root = std::env::temp_dir().join(format!("tsm-plain-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let err = ConfigfsTsm::with_root(&root)
            .attestation_token(&challenge())
            .unwrap_err();
        assert!(matches!(err, PlatformError::NotConfigfsTsm { .. }), "{err}");
        // The report directory we created is gone again.
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
        fs::remove_dir(&root).unwrap();
    }
}
