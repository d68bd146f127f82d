//! Islet's realm interface as a Linux character device: the out-of-tree
//! `rsi.ko` module creates `/dev/rsi`, and these ioctls reach the RMM's
//! Realm Services Interface — attestation tokens, realm measurements and
//! Islet's vendor sealing-key call (`../shared/reference/islet/ISLET.md`
//! §1.2, §2; ABI from `islet-project/linux-rsi` `rsi.h`).
//!
//! This is the only crate in the workspace that uses `unsafe`: four ioctl
//! calls on structures laid out exactly as the kernel module declares them.
//! Each call passes a pointer to a live, correctly sized `repr(C)` value (and,
//! for the token, a buffer whose length is the one declared), and nothing
//! else. The layouts and request numbers are checked against the values in
//! the reference by unit tests.
//!
//! Must never: read more token bytes than the buffer it allocated, allocate
//! by a length the kernel reported without a bound, or hide `EBUSY` (the
//! module admits one opener at a time) behind a generic error.
//!
//! Not run here: this machine has no realm and no `/dev/rsi`. Only the
//! layouts, request numbers and error paths are tested.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where `rsi.ko` puts its device.
pub const DEFAULT_DEVICE: &str = "/dev/rsi";
/// Challenge length of `ATTESTATION_TOKEN`.
pub const CHALLENGE_LEN: usize = 64;
/// Measurement slot size.
pub const MAX_MEASUREMENT_LEN: usize = 64;
/// Largest token accepted (Islet's RMM caps CCA tokens at 4 KiB; room to spare).
pub const MAX_TOKEN_LEN: usize = 64 << 10;

/// Sealing-key flag: use VHUK_M (measurement-based) instead of VHUK_A.
pub const SEALING_KEY_FLAG_KEY: u64 = 1 << 0;
/// Sealing-key flag: bind to the realm's RIM.
pub const SEALING_KEY_FLAG_RIM: u64 = 1 << 1;
/// Sealing-key flag: bind to the realm id from its metadata.
pub const SEALING_KEY_FLAG_REALM_ID: u64 = 1 << 2;
/// Sealing-key flag: bind to the given SVN.
pub const SEALING_KEY_FLAG_SVN: u64 = 1 << 3;

#[repr(C)]
struct RsiMeasurement {
    index: u32,
    len: u32,
    data: [u8; MAX_MEASUREMENT_LEN],
}

#[repr(C)]
struct RsiAttestation {
    challenge: [u8; CHALLENGE_LEN],
    token_len: u64,
    token: *mut u8,
}

#[repr(C)]
struct RsiSealingKey {
    flags: u64,
    svn: u64,
    key: [u8; 32],
}

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// Linux's `_IOC(dir, type, nr, size)` (the generic encoding arm64 uses).
const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

const RSIIO_ABI_VERSION: u32 = ioc(IOC_READ, b'x', 190, std::mem::size_of::<u64>());
const RSIIO_MEASUREMENT_READ: u32 = ioc(
    IOC_READ | IOC_WRITE,
    b'x',
    192,
    std::mem::size_of::<RsiMeasurement>(),
);
const RSIIO_ATTESTATION_TOKEN: u32 = ioc(
    IOC_READ | IOC_WRITE,
    b'x',
    194,
    std::mem::size_of::<RsiAttestation>(),
);
const RSIIO_SEALING_KEY: u32 = ioc(
    IOC_READ | IOC_WRITE,
    b'x',
    200,
    std::mem::size_of::<RsiSealingKey>(),
);

/// Why a call failed.
#[derive(Debug, Error)]
pub enum RsiError {
    /// No device: not in an Islet realm, or the module is not loaded.
    #[error(
        "{path} does not exist: inside an Islet realm, load the module first (`insmod rsi.ko`)"
    )]
    NoDevice {
        /// The device path.
        path: PathBuf,
    },
    /// Another process has the device open (the module allows one).
    #[error(
        "{path} is busy: rsi.ko admits one process at a time; stop the other user (e.g. rsictl)"
    )]
    Busy {
        /// The device path.
        path: PathBuf,
    },
    /// Permission denied.
    #[error("{path}: permission denied; run as root or grant access to the device")]
    PermissionDenied {
        /// The device path.
        path: PathBuf,
    },
    /// The ioctl failed.
    #[error("{call} on {path}: {source} (rsi.ko and its user must come from matching revisions)")]
    Ioctl {
        /// Which call.
        call: &'static str,
        /// The device path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel reported an impossible length.
    #[error("{call}: the device reported {len} bytes (at most {max} accepted)")]
    BadLength {
        /// Which call.
        call: &'static str,
        /// Reported.
        len: u64,
        /// Limit.
        max: usize,
    },
    /// Other I/O.
    #[error("opening {path}: {source}")]
    Open {
        /// The device path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// An open `/dev/rsi`.
#[derive(Debug)]
pub struct Rsi {
    file: File,
    path: PathBuf,
}

impl Rsi {
    /// Open the device at `path` (usually [`DEFAULT_DEVICE`]).
    pub fn open(path: &Path) -> Result<Self, RsiError> {
        let path = path.to_path_buf();
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Ok(Self { file, path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(RsiError::NoDevice { path }),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                Err(RsiError::PermissionDenied { path })
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(RsiError::Busy { path }),
            Err(source) => Err(RsiError::Open { path, source }),
        }
    }

    fn ioctl<T>(&self, call: &'static str, request: u32, arg: &mut T) -> Result<(), RsiError> {
        // SAFETY: `arg` is a live, exclusively borrowed `repr(C)` value whose
        // size is the size encoded in `request` (see the constants above and
        // the layout tests); the kernel reads and writes only that many bytes
        // at the pointer, plus, for ATTESTATION_TOKEN, at most `token_len`
        // bytes at `token`, which the caller sets to a buffer of that length.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                request as libc::Ioctl,
                arg as *mut T as *mut libc::c_void,
            )
        };
        if rc < 0 {
            return Err(RsiError::Ioctl {
                call,
                path: self.path.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The module's ABI version as (major, minor).
    pub fn abi_version(&self) -> Result<(u32, u32), RsiError> {
        let mut v: u64 = 0;
        self.ioctl("ABI_VERSION", RSIIO_ABI_VERSION, &mut v)?;
        Ok(((v >> 16) as u32, v as u32 & 0xffff))
    }

    /// Measurement slot `index` (0 = RIM, 1–4 = REMs), 64 bytes zero-padded.
    pub fn measurement(&self, index: u32) -> Result<[u8; MAX_MEASUREMENT_LEN], RsiError> {
        let mut m = RsiMeasurement {
            index,
            len: MAX_MEASUREMENT_LEN as u32,
            data: [0; MAX_MEASUREMENT_LEN],
        };
        self.ioctl("MEASUREMENT_READ", RSIIO_MEASUREMENT_READ, &mut m)?;
        Ok(m.data)
    }

    /// A CCA attestation token whose realm challenge is `challenge`.
    pub fn attestation_token(&self, challenge: &[u8; CHALLENGE_LEN]) -> Result<Vec<u8>, RsiError> {
        // Start at 4 KiB (Islet's cap); on ERANGE the module writes the size
        // it needs into token_len, which is bounded before it is used.
        let mut capacity = 4096usize;
        loop {
            let mut buf = vec![0u8; capacity];
            let mut req = RsiAttestation {
                challenge: *challenge,
                token_len: capacity as u64,
                token: buf.as_mut_ptr(),
            };
            match self.ioctl("ATTESTATION_TOKEN", RSIIO_ATTESTATION_TOKEN, &mut req) {
                Ok(()) => {
                    let len = usize::try_from(req.token_len).unwrap_or(usize::MAX);
                    if len == 0 || len > capacity {
                        return Err(RsiError::BadLength {
                            call: "ATTESTATION_TOKEN",
                            len: req.token_len,
                            max: capacity,
                        });
                    }
                    buf.truncate(len);
                    return Ok(buf);
                }
                Err(RsiError::Ioctl { source, .. })
                    if source.raw_os_error() == Some(libc::ERANGE) =>
                {
                    let need = next_capacity(req.token_len, capacity)?;
                    capacity = need;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Islet's sealing key for `flags` (the `SEALING_KEY_FLAG_*` bits) and `svn`.
    /// Without Islet HES the key material is a public constant (ISLET.md §2).
    pub fn sealing_key(&self, flags: u64, svn: u64) -> Result<[u8; 32], RsiError> {
        let mut k = RsiSealingKey {
            flags,
            svn,
            key: [0; 32],
        };
        self.ioctl("SEALING_KEY", RSIIO_SEALING_KEY, &mut k)?;
        Ok(k.key)
    }
}

/// The buffer size to retry with after ERANGE: what the module asked for,
/// if it is larger than what was tried and within [`MAX_TOKEN_LEN`].
fn next_capacity(reported: u64, tried: usize) -> Result<usize, RsiError> {
    match usize::try_from(reported) {
        Ok(n) if n > tried && n <= MAX_TOKEN_LEN => Ok(n),
        _ => Err(RsiError::BadLength {
            call: "ATTESTATION_TOKEN",
            len: reported,
            max: MAX_TOKEN_LEN,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_module() {
        // Values computed from linux-rsi's rsi.h (ISLET.md §0).
        assert_eq!(RSIIO_ABI_VERSION, 0x8008_78BE);
        assert_eq!(RSIIO_MEASUREMENT_READ, 0xC048_78C0);
        assert_eq!(RSIIO_ATTESTATION_TOKEN, 0xC050_78C2);
        assert_eq!(RSIIO_SEALING_KEY, 0xC030_78C8);
    }

    #[test]
    fn layouts_match_the_module() {
        assert_eq!(std::mem::size_of::<RsiMeasurement>(), 72);
        assert_eq!(std::mem::offset_of!(RsiMeasurement, data), 8);
        assert_eq!(std::mem::size_of::<RsiAttestation>(), 80);
        assert_eq!(std::mem::offset_of!(RsiAttestation, token_len), 64);
        assert_eq!(std::mem::offset_of!(RsiAttestation, token), 72);
        assert_eq!(std::mem::size_of::<RsiSealingKey>(), 48);
        assert_eq!(std::mem::offset_of!(RsiSealingKey, key), 16);
    }

    #[test]
    fn a_missing_device_says_what_to_do() {
        let e = Rsi::open(Path::new("/nonexistent/rsi")).unwrap_err();
        assert!(matches!(e, RsiError::NoDevice { .. }));
        assert!(e.to_string().contains("insmod rsi.ko"), "{e}");
    }

    #[test]
    fn a_device_that_is_not_rsi_fails_the_ioctl_cleanly() {
        // /dev/null accepts open but no ioctl: a typed error, not a crash.
        let rsi = Rsi::open(Path::new("/dev/null")).unwrap();
        assert!(matches!(
            rsi.attestation_token(&[0; 64]),
            Err(RsiError::Ioctl {
                call: "ATTESTATION_TOKEN",
                ..
            })
        ));
        assert!(matches!(
            rsi.sealing_key(SEALING_KEY_FLAG_RIM, 0),
            Err(RsiError::Ioctl { .. })
        ));
        assert!(matches!(rsi.measurement(0), Err(RsiError::Ioctl { .. })));
    }

    proptest::proptest! {
        #[test]
        fn reported_token_lengths_are_bounded(reported in proptest::prelude::any::<u64>(), tried in 1usize..70_000) {
            match next_capacity(reported, tried) {
                Ok(n) => proptest::prop_assert!(n > tried && n <= MAX_TOKEN_LEN && n as u64 == reported),
                Err(_) => proptest::prop_assert!(reported as u128 <= tried as u128 || reported as u128 > MAX_TOKEN_LEN as u128),
            }
        }
    }
}
