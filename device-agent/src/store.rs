//! The agent's local store: the user's datasets, re-sealed models and small
//! secrets (the device identity), each in its own file, encrypted under keys
//! derived from this realm's sealing key. The sealing key depends on the
//! realm's measurement, so a rebuilt agent cannot open the old agent's files
//! (it gets [`StoreError::Sealed`]), and nothing here is readable outside
//! the realm.
//!
//! # Layout
//!
//! ```text
//! <dir>/data/<handle>.sealed          a Dataset; handle = 32 lowercase hex
//! <dir>/models/<sha256(id)>.sealed    a StoredModel; 64 lowercase hex
//! <dir>/secrets/<name>.sealed         raw bytes; name = [a-z0-9-]{1,64}
//! ```
//!
//! Directories are created 0700 and files 0600. Every write goes to a temp
//! file (`.tmp-<pid>-...`) in the same directory, is fsynced, renamed over
//! the target and the directory fsynced, so a crash leaves the old file or
//! the new one, never half of one. Stale temp files of other processes are
//! removed by [`LocalStore::open`].
//!
//! Model files are named by the SHA-256 of the model id rather than its hex:
//! ids may be 128 bytes, whose hex (256 characters) exceeds the 255-byte
//! file-name limit of Linux file systems. The id itself is bound by the AAD.
//!
//! # File format (every kind)
//!
//! ```text
//! offset  length  field
//!      0       8  magic "CCAMLDA1"
//!      8       1  kind: 1 data, 2 model, 3 secret
//!      9      12  nonce, random per write
//!     21   n + 16 AES-256-GCM ciphertext of the n-byte plaintext, then tag
//! ```
//!
//! AAD = magic ‖ kind ‖ slot name (the handle's hex, the model id, or the
//! secret name, as UTF-8), so a file copied or renamed to another slot or
//! kind does not open. Each kind has its own key:
//! HKDF-SHA256(salt `"cca-ml device-agent store"`, ikm = sealing key,
//! info `"cca-ml device-agent {data,model,secret} v1"`). Plaintexts are the
//! postcard encoding of [`Dataset`] and [`StoredModel`], and a secret's bytes.
//!
//! Must never: write user data, a model or a secret to disk unencrypted;
//! derive a key from anything but the sealing key; print a key or decrypted
//! content (`Debug` of [`LocalStore`] shows only the directory); or turn a
//! caller's name into a path without checking it (handles are hex, model
//! files are hashed, secret names are `[a-z0-9-]`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use attestation::platform::SealingKey;
use protocol::{SecretBytes, ServingPolicy};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::dataset::{Dataset, DatasetError};

/// First bytes of every sealed file.
pub const MAGIC: &[u8; 8] = b"CCAMLDA1";
/// Largest sealed file written or read. Checked before reading, so a
/// planted or runaway file cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 2 << 30;
/// Longest model id, in bytes (as in sealed model bundles).
pub const MAX_MODEL_ID_LEN: usize = 128;
/// Longest secret name.
pub const MAX_SECRET_NAME_LEN: usize = 64;

/// Magic, kind byte, nonce.
const HEADER_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;
/// AES-256-GCM tag.
const TAG_LEN: usize = 16;
const HKDF_SALT: &[u8] = b"cca-ml device-agent store";
const SUFFIX: &str = ".sealed";
const TEMP_PREFIX: &str = ".tmp-";

/// What a sealed file holds; each kind has its own directory and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Model,
    Secret,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Data, Kind::Model, Kind::Secret];

    fn byte(self) -> u8 {
        match self {
            Kind::Data => 1,
            Kind::Model => 2,
            Kind::Secret => 3,
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Kind::Data => "data",
            Kind::Model => "models",
            Kind::Secret => "secrets",
        }
    }

    fn info(self) -> &'static [u8] {
        match self {
            Kind::Data => b"cca-ml device-agent data v1",
            Kind::Model => b"cca-ml device-agent model v1",
            Kind::Secret => b"cca-ml device-agent secret v1",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Data => "data",
            Kind::Model => "model",
            Kind::Secret => "secret",
        }
    }
}

fn kind_noun(byte: u8) -> &'static str {
    Kind::ALL
        .into_iter()
        .find(|k| k.byte() == byte)
        .map_or("unknown", Kind::noun)
}

/// Why the store failed. Messages name the file and say what to do.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Local I/O.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Nothing stored under this name.
    #[error("no {kind} stored as {name}: it was deleted, or stored by another agent installation")]
    NotFound {
        /// "data" or "model".
        kind: &'static str,
        /// The handle or model id.
        name: String,
    },
    /// The file does not authenticate under this realm's key for this slot.
    #[error(
        "{} does not open with this realm's sealing key: sealed by another build or platform, or corrupted (or copied from another name); delete it and store it again",
        path.display()
    )]
    Sealed {
        /// The file.
        path: PathBuf,
    },
    /// The file is too short to be a sealed file.
    #[error(
        "{} is {size} bytes, shorter than any sealed file: it is truncated; delete it and store it again",
        path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file does not start with [`MAGIC`].
    #[error(
        "{} is not a device-agent sealed file (bad magic): remove it from the state directory",
        path.display()
    )]
    NotSealedFile {
        /// The file.
        path: PathBuf,
    },
    /// A sealed file of another kind (e.g. a model file in `data/`).
    #[error(
        "{} holds a sealed {found}, not a {expected}: it was copied into the wrong directory; remove it",
        path.display()
    )]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// What its kind byte says.
        found: &'static str,
        /// What this directory holds.
        expected: &'static str,
    },
    /// The file (or what would be written) is over [`MAX_FILE_BYTES`].
    #[error(
        "{}: {size} bytes is over the {max}-byte limit of a sealed file; store less at once, or remove the file",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Decrypted, but the content does not decode: written by an
    /// incompatible version, or a bug.
    #[error(
        "{} decrypted but its content is invalid ({detail}): it was written by an incompatible agent; delete it and store it again",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A dataset that breaks [`Dataset::validate`] is not stored.
    #[error("dataset refused: {0}")]
    Dataset(#[from] DatasetError),
    /// A string that is not a handle.
    #[error(transparent)]
    Handle(#[from] InvalidHandle),
    /// A model id of the wrong length.
    #[error("model id is {len} bytes; it must be 1 to {MAX_MODEL_ID_LEN} bytes")]
    BadModelId {
        /// Its length.
        len: usize,
    },
    /// A secret name outside `[a-z0-9-]{1,64}`.
    #[error(
        "secret names are 1 to {MAX_SECRET_NAME_LEN} characters of a-z, 0-9 and '-' (got one of {len} bytes)"
    )]
    BadSecretName {
        /// Its length in bytes (the name itself is not echoed).
        len: usize,
    },
    /// Serialising a value failed (a bug: every stored type encodes).
    #[error("encoding {what} for sealing failed: {detail}")]
    Encode {
        /// What was being stored.
        what: &'static str,
        /// The encoder's error.
        detail: String,
    },
    /// The system random generator or the cipher failed.
    #[error("{0} failed: the platform's cryptography is unavailable; restart the agent")]
    Crypto(&'static str),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Opaque name of a stored dataset: 16 random bytes, shown as 32 lowercase
/// hex characters. Says nothing about the content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle([u8; 16]);

/// A string that is not 32 lowercase hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a handle is 32 lowercase hex characters, as printed when the data was imported")]
pub struct InvalidHandle;

impl Handle {
    fn random(rng: &SystemRandom) -> Result<Self, StoreError> {
        let mut bytes = [0u8; 16];
        rng.fill(&mut bytes)
            .map_err(|_| StoreError::Crypto("random generator"))?;
        Ok(Self(bytes))
    }
}

impl std::fmt::Display for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handle({self})")
    }
}

impl FromStr for Handle {
    type Err = InvalidHandle;

    /// Only the exact form [`Display`](std::fmt::Display) prints: a handle
    /// becomes a file name, so nothing like `../x` may get through.
    fn from_str(s: &str) -> Result<Self, InvalidHandle> {
        if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(InvalidHandle);
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| InvalidHandle)?;
        Ok(Self(bytes))
    }
}

/// A model re-sealed to this realm, with what is needed to serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredModel {
    /// The provider's model id (1 to [`MAX_MODEL_ID_LEN`] bytes).
    pub model_id: String,
    /// Model version.
    pub version: String,
    /// The provider's serving terms.
    pub serving: ServingPolicy,
    /// Input shape, when known.
    pub input_shape: Option<Vec<usize>>,
    /// The decrypted ONNX model.
    pub onnx: SecretBytes,
}

/// Sealed files under a state directory. See the module doc for the layout
/// and format.
pub struct LocalStore {
    dir: PathBuf,
    data_key: LessSafeKey,
    model_key: LessSafeKey,
    secret_key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalStore({}, <keys redacted>)", self.dir.display())
    }
}

/// A decrypted file; the buffer is overwritten when dropped (best effort,
/// as for [`SecretBytes`]: no `unsafe`, so no volatile write).
struct Opened {
    buf: Vec<u8>,
}

impl Opened {
    fn plaintext(&self) -> &[u8] {
        let end = self.buf.len().saturating_sub(TAG_LEN);
        self.buf.get(HEADER_LEN..end).unwrap_or_default()
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        wipe(&mut self.buf);
    }
}

fn wipe(buf: &mut [u8]) {
    buf.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(buf);
}

fn derive_key(sealing: &SealingKey, kind: Kind) -> Result<LessSafeKey, StoreError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(sealing.expose());
    let info = [kind.info()];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| StoreError::Crypto("HKDF key derivation"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// AAD of a file: magic ‖ kind ‖ slot name.
fn aad(kind: Kind, slot: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(MAGIC.len() + 1 + slot.len());
    aad.extend_from_slice(MAGIC);
    aad.push(kind.byte());
    aad.extend_from_slice(slot.as_bytes());
    aad
}

fn check_model_id(model_id: &str) -> Result<(), StoreError> {
    if model_id.is_empty() || model_id.len() > MAX_MODEL_ID_LEN {
        return Err(StoreError::BadModelId {
            len: model_id.len(),
        });
    }
    Ok(())
}

fn check_secret_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SECRET_NAME_LEN
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
    if !ok {
        return Err(StoreError::BadSecretName { len: name.len() });
    }
    Ok(())
}

/// Create `path` (and parents) 0700 if missing.
fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("creating directory", path))
}

impl LocalStore {
    /// Use (and create if needed) the state directory `dir`, with keys
    /// derived from `sealing`. The `data`, `models` and `secrets`
    /// subdirectories are created, or tightened, to 0700.
    pub fn open(dir: &Path, sealing: &SealingKey) -> Result<Self, StoreError> {
        create_private_dir(dir)?;
        for kind in Kind::ALL {
            let sub = dir.join(kind.dir());
            create_private_dir(&sub)?;
            // An existing directory keeps its mode on create; tighten it.
            fs::set_permissions(&sub, fs::Permissions::from_mode(0o700))
                .map_err(io_err("setting permissions of", &sub))?;
            remove_stale_temps(&sub);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            data_key: derive_key(sealing, Kind::Data)?,
            model_key: derive_key(sealing, Kind::Model)?,
            secret_key: derive_key(sealing, Kind::Secret)?,
            rng: SystemRandom::new(),
        })
    }

    /// Seal `d` under a new random handle.
    pub fn import(&self, d: &Dataset) -> Result<Handle, StoreError> {
        d.validate()?;
        let handle = Handle::random(&self.rng)?;
        let slot = handle.to_string();
        let path = self.path(Kind::Data, &slot);
        let sealed = self.seal_value(Kind::Data, &slot, &path, d)?;
        self.write_atomic(&path, &sealed)?;
        Ok(handle)
    }

    /// The dataset stored under `h`.
    pub fn load(&self, h: &Handle) -> Result<Dataset, StoreError> {
        let slot = h.to_string();
        let path = self.path(Kind::Data, &slot);
        let opened =
            self.open_file(Kind::Data, &slot, &path)?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "data",
                    name: slot.clone(),
                })?;
        let d: Dataset = decode(&opened, &path)?;
        d.validate().map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        Ok(d)
    }

    /// Erase the dataset under `h`: overwrite its file with zeros, fsync,
    /// then remove it.
    ///
    /// Best effort: flash translation layers, journaling and copy-on-write
    /// file systems may keep the old blocks, and the OS may hold copies.
    /// What makes the old content unreadable is that it was only ever
    /// written encrypted under this realm's sealing key.
    pub fn delete(&self, h: &Handle) -> Result<(), StoreError> {
        let slot = h.to_string();
        let path = self.path(Kind::Data, &slot);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    kind: "data",
                    name: slot,
                });
            }
            Err(e) => return Err(io_err("inspecting", &path)(e)),
        };
        // Only a regular file is overwritten: writing through a planted
        // symlink would zero whatever it points at.
        if meta.is_file() {
            overwrite_with_zeros(&path, meta.len())?;
        }
        fs::remove_file(&path).map_err(io_err("removing", &path))?;
        sync_dir(&self.dir.join(Kind::Data.dir()))
    }

    /// Every stored dataset's handle and file size, sorted by handle.
    /// Nothing is decrypted; temp files and foreign names are skipped.
    pub fn list(&self) -> Result<Vec<(Handle, u64)>, StoreError> {
        let dir = self.dir.join(Kind::Data.dir());
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let name = entry.file_name();
            let Some(handle) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<Handle>().ok())
            else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Deleted since the directory was read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("inspecting", &entry.path())(e)),
            };
            if meta.is_file() {
                out.push((handle, meta.len()));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Seal `m`, replacing any model stored under the same id.
    pub fn put_model(&self, m: &StoredModel) -> Result<(), StoreError> {
        check_model_id(&m.model_id)?;
        let path = self.model_path(&m.model_id);
        let sealed = self.seal_value(Kind::Model, &m.model_id, &path, m)?;
        self.write_atomic(&path, &sealed)
    }

    /// The model stored under `model_id`. A model sealed by another build
    /// (another measurement, so another sealing key) is
    /// [`StoreError::Sealed`].
    pub fn get_model(&self, model_id: &str) -> Result<StoredModel, StoreError> {
        check_model_id(model_id)?;
        let path = self.model_path(model_id);
        let opened = self
            .open_file(Kind::Model, model_id, &path)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "model",
                name: model_id.to_string(),
            })?;
        let m: StoredModel = decode(&opened, &path)?;
        // The AAD already binds the id; a mismatch here is a bug.
        if m.model_id != model_id {
            return Err(StoreError::Corrupt {
                path,
                detail: "the stored model id differs from the file's".into(),
            });
        }
        Ok(m)
    }

    /// Seal `bytes` as the secret `name` (`[a-z0-9-]{1,64}`), replacing
    /// any previous value.
    pub fn put_secret(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        check_secret_name(name)?;
        let path = self.path(Kind::Secret, name);
        let sealed = self.seal_with(Kind::Secret, name, &path, bytes.len(), |buf| {
            buf.extend_from_slice(bytes);
            Ok(())
        })?;
        self.write_atomic(&path, &sealed)
    }

    /// The secret `name`, or `None` if none is stored.
    pub fn get_secret(&self, name: &str) -> Result<Option<SecretBytes>, StoreError> {
        check_secret_name(name)?;
        let path = self.path(Kind::Secret, name);
        Ok(self
            .open_file(Kind::Secret, name, &path)?
            .map(|opened| SecretBytes::new(opened.plaintext().to_vec())))
    }

    fn path(&self, kind: Kind, slot: &str) -> PathBuf {
        self.dir.join(kind.dir()).join(format!("{slot}{SUFFIX}"))
    }

    fn model_path(&self, model_id: &str) -> PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, model_id.as_bytes());
        self.path(Kind::Model, &hex::encode(digest.as_ref()))
    }

    fn key(&self, kind: Kind) -> &LessSafeKey {
        match kind {
            Kind::Data => &self.data_key,
            Kind::Model => &self.model_key,
            Kind::Secret => &self.secret_key,
        }
    }

    /// Seal the postcard encoding of `value`.
    fn seal_value<T: Serialize>(
        &self,
        kind: Kind,
        slot: &str,
        path: &Path,
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        let encode_err = |e: postcard::Error| StoreError::Encode {
            what: kind.noun(),
            detail: e.to_string(),
        };
        // Sized first so the buffer is allocated once: growing it would
        // leave copies of the plaintext in freed memory.
        let len = postcard::experimental::serialized_size(value).map_err(encode_err)?;
        self.seal_with(kind, slot, path, len, |buf| {
            let taken = std::mem::take(buf);
            *buf = postcard::to_extend(value, taken).map_err(encode_err)?;
            Ok(())
        })
    }

    /// Build a sealed file: header, then `fill` appends `len` plaintext
    /// bytes, which are encrypted in place.
    fn seal_with(
        &self,
        kind: Kind,
        slot: &str,
        path: &Path,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<Vec<u8>, StoreError> {
        let total = (HEADER_LEN + TAG_LEN) as u64 + len as u64;
        if total > MAX_FILE_BYTES {
            return Err(StoreError::TooLarge {
                path: path.to_path_buf(),
                size: total,
                max: MAX_FILE_BYTES,
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        // Random nonces: 2^-32 collision chance only after 2^32 writes with
        // one key, far beyond what a phone stores.
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StoreError::Crypto("random generator"))?;
        let mut buf = Vec::with_capacity(HEADER_LEN + len + TAG_LEN);
        buf.extend_from_slice(MAGIC);
        buf.push(kind.byte());
        buf.extend_from_slice(&nonce);
        fill(&mut buf)?;
        let tag = self
            .key(kind)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(kind, slot)),
                buf.get_mut(HEADER_LEN..).unwrap_or_default(),
            )
            .map_err(|_| StoreError::Crypto("AES-256-GCM sealing"))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(buf)
    }

    /// Read and decrypt `path`; `None` if it does not exist.
    fn open_file(&self, kind: Kind, slot: &str, path: &Path) -> Result<Option<Opened>, StoreError> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("opening", path)(e)),
        };
        let size = file.metadata().map_err(io_err("inspecting", path))?.len();
        let too_large = |size| StoreError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: MAX_FILE_BYTES,
        };
        if size > MAX_FILE_BYTES {
            return Err(too_large(size));
        }
        let capacity = usize::try_from(size).map_err(|_| too_large(size))?;
        let mut buf = Vec::with_capacity(capacity);
        // `take` caps the read even if the file grows after the check.
        (&mut file)
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(io_err("reading", path))?;
        let opened = Opened { buf };
        let buf = &opened.buf;
        let size = buf.len() as u64;
        if size > MAX_FILE_BYTES {
            return Err(too_large(size));
        }
        if buf.len() < HEADER_LEN + TAG_LEN {
            // A prefix of the magic is as truncated as anything else; a
            // different start is not our file at all.
            let n = buf.len().min(MAGIC.len());
            if buf.get(..n) != MAGIC.get(..n) {
                return Err(StoreError::NotSealedFile {
                    path: path.to_path_buf(),
                });
            }
            return Err(StoreError::Truncated {
                path: path.to_path_buf(),
                size,
            });
        }
        if buf.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(StoreError::NotSealedFile {
                path: path.to_path_buf(),
            });
        }
        let found = buf.get(MAGIC.len()).copied().unwrap_or_default();
        if found != kind.byte() {
            return Err(StoreError::WrongKind {
                path: path.to_path_buf(),
                found: kind_noun(found),
                expected: kind.noun(),
            });
        }
        let nonce = buf
            .get(MAGIC.len() + 1..HEADER_LEN)
            .and_then(|n| Nonce::try_assume_unique_for_key(n).ok())
            .ok_or_else(|| StoreError::Truncated {
                path: path.to_path_buf(),
                size,
            })?;
        let mut opened = opened;
        let sealed = StoreError::Sealed {
            path: path.to_path_buf(),
        };
        let Some(ciphertext) = opened.buf.get_mut(HEADER_LEN..) else {
            return Err(sealed);
        };
        self.key(kind)
            .open_in_place(nonce, Aad::from(aad(kind, slot)), ciphertext)
            .map_err(|_| sealed)?;
        Ok(Some(opened))
    }

    /// Write `bytes` to `dest` atomically: temp file (0600) in the same
    /// directory, fsync, rename, fsync the directory.
    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = dest.parent().unwrap_or(&self.dir);
        let mut salt = [0u8; 4];
        self.rng
            .fill(&mut salt)
            .map_err(|_| StoreError::Crypto("random generator"))?;
        let tmp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            hex::encode(salt)
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("creating", &tmp))?;
            f.write_all(bytes).map_err(io_err("writing", &tmp))?;
            f.sync_all().map_err(io_err("syncing", &tmp))?;
            fs::rename(&tmp, dest).map_err(io_err("renaming into", dest))
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(dir)
    }
}

/// Decode a whole plaintext as `T`.
fn decode<T: DeserializeOwned>(opened: &Opened, path: &Path) -> Result<T, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let (value, rest) =
        postcard::take_from_bytes::<T>(opened.plaintext()).map_err(|e| corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

fn overwrite_with_zeros(path: &Path, len: u64) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("opening for erasure", path))?;
    let zeros = [0u8; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        f.write_all(zeros.get(..n).unwrap_or(&zeros))
            .map_err(io_err("erasing", path))?;
        left -= n as u64;
    }
    f.sync_all().map_err(io_err("syncing", path))
}

/// Remove temp files left by a crashed write of another process. This
/// process's own are left alone: another store in it may be writing.
/// Best effort: they hold only ciphertext, so failing costs only space.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let own = format!("{TEMP_PREFIX}{}-", std::process::id());
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with(TEMP_PREFIX) && !name.starts_with(&own) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{LabelColumn, parse_csv};
    use proptest::prelude::*;
    use protocol::{OutputPolicy, QueryBudget, Tensor, TensorData};

    /// A fresh directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "device-agent-store-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn key(n: u8) -> SealingKey {
        SealingKey::new([n; 32])
    }

    fn small() -> Dataset {
        Dataset {
            samples: vec![Tensor {
                shape: vec![1, 2],
                data: TensorData::U8(vec![7, 9]),
            }],
            labels: Some(vec![3]),
        }
    }

    fn digits() -> Dataset {
        parse_csv(
            include_str!("../../testdata/models/digits_test.csv"),
            LabelColumn::Last,
            Some(&[1, 8, 8]),
        )
        .unwrap()
    }

    fn model(id: &str) -> StoredModel {
        StoredModel {
            model_id: id.to_string(),
            version: "1.2.0".into(),
            serving: ServingPolicy {
                output: OutputPolicy::Label,
                budget: Some(QueryBudget {
                    queries: 100,
                    window_secs: 3600,
                }),
            },
            input_shape: Some(vec![1, 1, 8, 8]),
            onnx: SecretBytes::new(b"ONNX-MODEL-PLAINTEXT-MARKER".repeat(100)),
        }
    }

    fn file_of(store: &LocalStore, h: &Handle) -> PathBuf {
        store.path(Kind::Data, &h.to_string())
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn data_round_trip_layout_and_permissions() {
        let s = Scratch::new("data");
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        assert_eq!(
            format!("{store:?}"),
            format!("LocalStore({}, <keys redacted>)", s.0.display())
        );
        let d = digits();
        let h = store.import(&d).unwrap();
        assert_eq!(store.load(&h).unwrap(), d);

        let path = file_of(&store, &h);
        assert_eq!(path, s.0.join("data").join(format!("{h}.sealed")));
        for sub in ["data", "models", "secrets"] {
            assert_eq!(mode(&s.0.join(sub)), 0o700, "{sub}");
        }
        assert_eq!(mode(&path), 0o600);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], MAGIC);
        assert_eq!(bytes[8], 1);

        // Reopening with the same key (same realm) reads it back.
        drop(store);
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        assert_eq!(store.load(&h).unwrap(), d);
        assert_eq!(store.list().unwrap(), vec![(h, bytes.len() as u64)]);
    }

    #[test]
    fn nothing_is_written_in_the_clear() {
        let s = Scratch::new("clear");
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        let marker = b"USER-DATA-PLAINTEXT-MARKER".to_vec();
        let d = Dataset {
            samples: vec![Tensor {
                shape: vec![1, marker.len() as u64],
                data: TensorData::U8(marker.clone()),
            }],
            labels: None,
        };
        let h = store.import(&d).unwrap();
        store.put_model(&model("m")).unwrap();
        store.put_secret("auth-key", b"SECRET-KEY-MARKER").unwrap();
        let needles: [&[u8]; 3] = [&marker, b"ONNX-MODEL-PLAINTEXT", b"SECRET-KEY-MARKER"];
        for sub in ["data", "models", "secrets"] {
            for entry in fs::read_dir(s.0.join(sub)).unwrap() {
                let bytes = fs::read(entry.unwrap().path()).unwrap();
                for n in needles {
                    assert!(!bytes.windows(n.len()).any(|w| w == n), "{sub}");
                }
            }
        }
        assert_eq!(store.load(&h).unwrap(), d);
    }

    #[test]
    fn models_and_secrets_round_trip() {
        let s = Scratch::new("models");
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        let m = model("digits-cnn");
        store.put_model(&m).unwrap();
        assert_eq!(store.get_model("digits-cnn").unwrap(), m);
        // Replacing keeps one file.
        let mut m2 = model("digits-cnn");
        m2.version = "2".into();
        store.put_model(&m2).unwrap();
        assert_eq!(store.get_model("digits-cnn").unwrap(), m2);
        assert_eq!(fs::read_dir(s.0.join("models")).unwrap().count(), 1);

        // The longest id fits a file name; path-like ids stay in models/.
        for id in ["m".repeat(128), "../../etc/passwd".into(), "é/ü".into()] {
            store.put_model(&model(&id)).unwrap();
            assert_eq!(store.get_model(&id).unwrap().model_id, id);
        }
        assert!(!s.0.join("etc").exists());
        for bad in [String::new(), "m".repeat(129)] {
            assert!(matches!(
                store.put_model(&model(&bad)),
                Err(StoreError::BadModelId { .. })
            ));
            assert!(matches!(
                store.get_model(&bad),
                Err(StoreError::BadModelId { .. })
            ));
        }
        assert!(matches!(
            store.get_model("absent"),
            Err(StoreError::NotFound { kind: "model", .. })
        ));

        assert!(store.get_secret("auth-key").unwrap().is_none());
        store.put_secret("auth-key", b"k1").unwrap();
        store.put_secret("admission-certificate", b"").unwrap();
        assert_eq!(
            store.get_secret("auth-key").unwrap().unwrap().expose(),
            b"k1"
        );
        store.put_secret("auth-key", b"k2").unwrap();
        assert_eq!(
            store.get_secret("auth-key").unwrap().unwrap().expose(),
            b"k2"
        );
        assert!(
            store
                .get_secret("admission-certificate")
                .unwrap()
                .unwrap()
                .is_empty()
        );
        assert_eq!(mode(&s.0.join("secrets/auth-key.sealed")), 0o600);
        let long = "a".repeat(65);
        for bad in ["", "../x", "Auth", "a.b", "a/b", "a b", long.as_str()] {
            assert!(matches!(
                store.put_secret(bad, b"x"),
                Err(StoreError::BadSecretName { .. })
            ));
            assert!(matches!(
                store.get_secret(bad),
                Err(StoreError::BadSecretName { .. })
            ));
        }
        store.put_secret(&"a".repeat(64), b"x").unwrap();
    }

    #[test]
    fn resealed_model_is_bound_to_the_measurement() {
        let s = Scratch::new("rebuilt");
        let old = LocalStore::open(&s.0, &key(1)).unwrap();
        old.put_model(&model("digits-cnn")).unwrap();
        let h = old.import(&small()).unwrap();
        old.put_secret("auth-key", b"k").unwrap();

        // A rebuilt agent: another measurement, so another sealing key.
        let rebuilt = LocalStore::open(&s.0, &key(2)).unwrap();
        let e = rebuilt.get_model("digits-cnn").unwrap_err();
        assert!(matches!(&e, StoreError::Sealed { path } if path.starts_with(s.0.join("models"))));
        assert!(
            e.to_string()
                .contains("does not open with this realm's sealing key"),
            "{e}"
        );
        assert!(matches!(rebuilt.load(&h), Err(StoreError::Sealed { .. })));
        assert!(matches!(
            rebuilt.get_secret("auth-key"),
            Err(StoreError::Sealed { .. })
        ));
        // It can still list (nothing is decrypted) and store its own.
        assert_eq!(rebuilt.list().unwrap().len(), 1);
        rebuilt.put_model(&model("other")).unwrap();
        assert!(rebuilt.get_model("other").is_ok());
        assert!(matches!(
            old.get_model("other"),
            Err(StoreError::Sealed { .. })
        ));
    }

    #[test]
    fn files_are_bound_to_their_slot_and_kind() {
        let s = Scratch::new("slots");
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        let a = store.import(&small()).unwrap();
        let b = store.import(&digits()).unwrap();

        // A file copied over another handle does not open there.
        fs::copy(file_of(&store, &a), file_of(&store, &b)).unwrap();
        assert!(matches!(store.load(&b), Err(StoreError::Sealed { .. })));
        // Nor does a file renamed to a new handle.
        let c: Handle = "0123456789abcdef0123456789abcdef".parse().unwrap();
        fs::rename(file_of(&store, &a), file_of(&store, &c)).unwrap();
        assert!(matches!(store.load(&c), Err(StoreError::Sealed { .. })));
        assert!(matches!(
            store.load(&a),
            Err(StoreError::NotFound { kind: "data", .. })
        ));

        // Models moved between ids, or into data/, do not open.
        store.put_model(&model("x")).unwrap();
        fs::copy(store.model_path("x"), store.model_path("y")).unwrap();
        assert!(matches!(
            store.get_model("y"),
            Err(StoreError::Sealed { .. })
        ));
        fs::copy(store.model_path("x"), file_of(&store, &a)).unwrap();
        assert!(matches!(
            store.load(&a),
            Err(StoreError::WrongKind {
                found: "model",
                expected: "data",
                ..
            })
        ));
        // With the kind byte patched too, the key and AAD still differ.
        let mut bytes = fs::read(store.model_path("x")).unwrap();
        bytes[8] = Kind::Data.byte();
        fs::write(file_of(&store, &a), &bytes).unwrap();
        assert!(matches!(store.load(&a), Err(StoreError::Sealed { .. })));
        // A secret copied to another name does not open either.
        store.put_secret("one", b"1").unwrap();
        fs::copy(
            s.0.join("secrets/one.sealed"),
            s.0.join("secrets/two.sealed"),
        )
        .unwrap();
        assert!(matches!(
            store.get_secret("two"),
            Err(StoreError::Sealed { .. })
        ));
    }

    #[test]
    fn every_truncation_and_bit_flip_fails_cleanly() {
        let s = Scratch::new("flips");
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        let h = store.import(&small()).unwrap();
        let other = store.import(&digits()).unwrap();
        let path = file_of(&store, &h);
        let good = fs::read(&path).unwrap();
        assert!(good.len() < 100, "{}", good.len());

        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            let e = store.load(&h).unwrap_err();
            assert!(
                matches!(e, StoreError::Truncated { .. } | StoreError::Sealed { .. }),
                "{len}: {e:?}"
            );
            assert!(e.to_string().contains(&h.to_string()), "{e}");
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                fs::write(&path, &bad).unwrap();
                let e = store.load(&h).unwrap_err();
                let expected = match i {
                    0..8 => matches!(e, StoreError::NotSealedFile { .. }),
                    8 => matches!(e, StoreError::WrongKind { .. }),
                    _ => matches!(e, StoreError::Sealed { .. }),
                };
                assert!(expected, "byte {i} bit {bit}: {e:?}");
                assert!(e.to_string().contains(&h.to_string()), "{e}");
            }
        }
        // The corrupted handle does not affect the others.
        assert_eq!(store.load(&other).unwrap(), digits());
        fs::write(&path, &good).unwrap();
        assert_eq!(store.load(&h).unwrap(), small());

        fs::write(&path, b"hello world, not sealed at all").unwrap();
        assert!(matches!(
            store.load(&h),
            Err(StoreError::NotSealedFile { .. })
        ));
    }

    #[test]
    fn delete_erases_and_list_skips_foreign_files() {
        let s = Scratch::new("delete");
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        let a = store.import(&small()).unwrap();
        let b = store.import(&small()).unwrap();
        assert_ne!(a, b);
        let data = s.0.join("data");
        fs::write(data.join(".tmp-1-2-3"), b"x").unwrap();
        fs::write(data.join("notes.txt"), b"x").unwrap();
        fs::write(data.join("ABCDEF0123456789ABCDEF0123456789.sealed"), b"x").unwrap();
        fs::create_dir(data.join("0123456789abcdef0123456789abcdef.sealed")).unwrap();
        let mut expected = vec![a, b];
        expected.sort();
        let listed: Vec<Handle> = store.list().unwrap().into_iter().map(|(h, _)| h).collect();
        assert_eq!(listed, expected);

        store.delete(&a).unwrap();
        assert!(!file_of(&store, &a).exists());
        assert!(matches!(
            store.load(&a),
            Err(StoreError::NotFound { kind: "data", .. })
        ));
        assert!(matches!(store.delete(&a), Err(StoreError::NotFound { .. })));
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(store.load(&b).unwrap(), small());

        // Another process's stale temp file is swept on open; ours is kept.
        drop(store);
        let mine = data.join(format!(".tmp-{}-9-0", std::process::id()));
        fs::write(&mine, b"x").unwrap();
        let _store = LocalStore::open(&s.0, &key(1)).unwrap();
        assert!(!data.join(".tmp-1-2-3").exists());
        assert!(mine.exists());
    }

    #[test]
    fn bounds_and_invalid_datasets() {
        let s = Scratch::new("bounds");
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        let mut d = small();
        d.labels = Some(vec![1, 2]);
        assert!(matches!(
            store.import(&d),
            Err(StoreError::Dataset(DatasetError::LabelCount { .. }))
        ));
        assert!(store.list().unwrap().is_empty());

        // A file over the limit is refused from its size, before reading.
        let h = store.import(&small()).unwrap();
        let f = File::options()
            .write(true)
            .open(file_of(&store, &h))
            .unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        drop(f);
        assert!(matches!(
            store.load(&h),
            Err(StoreError::TooLarge { size, .. }) if size == MAX_FILE_BYTES + 1
        ));
        // (Not `delete`: that would write 2 GiB of zeros.)
        fs::remove_file(file_of(&store, &h)).unwrap();
    }

    #[test]
    fn handles_parse_only_their_own_form() {
        let h: Handle = "00112233445566778899aabbccddeeff".parse().unwrap();
        assert_eq!(h.to_string(), "00112233445566778899aabbccddeeff");
        assert_eq!(format!("{h:?}"), "Handle(00112233445566778899aabbccddeeff)");
        for bad in [
            "../etc",
            "../../../../../../../etc/passwd",
            "00112233445566778899AABBCCDDEEFF",
            "00112233445566778899aabbccddeef",
            "00112233445566778899aabbccddeeff0",
            "00112233445566778899aabbccddeefg",
            "+0112233445566778899aabbccddeeff",
            " 0112233445566778899aabbccddeeff",
            "0011223344556677/899aabbccddeeff",
            "",
        ] {
            assert_eq!(bad.parse::<Handle>(), Err(InvalidHandle), "{bad:?}");
        }
        // Multi-byte characters of the right byte length are refused too.
        assert!("é".repeat(16).parse::<Handle>().is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn arbitrary_data_files_never_panic(
            tail in prop::collection::vec(any::<u8>(), 0..200),
            prefix in 0usize..3,
        ) {
            let s = Scratch::new("prop");
            let store = LocalStore::open(&s.0, &key(1)).unwrap();
            let h: Handle = "00112233445566778899aabbccddeeff".parse().unwrap();
            // Also exercise the paths past the magic and kind checks.
            let mut bytes = match prefix {
                0 => Vec::new(),
                1 => MAGIC.to_vec(),
                _ => [MAGIC.as_slice(), &[Kind::Data.byte()]].concat(),
            };
            bytes.extend_from_slice(&tail);
            fs::write(store.path(Kind::Data, &h.to_string()), &bytes).unwrap();
            prop_assert!(store.load(&h).is_err());
            prop_assert_eq!(store.list().unwrap(), vec![(h, bytes.len() as u64)]);
        }
    }
}
