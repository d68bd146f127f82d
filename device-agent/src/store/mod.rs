//! The agent's local store: the user's datasets, re-sealed models and small
//! secrets (the device identity), each in its own file, encrypted under keys
//! derived from this realm's sealing key, and bound together by a sealed
//! **manifest** so that files from another moment or another store are
//! refused. The sealing key depends on the realm's measurement, so a rebuilt
//! agent cannot open the old agent's files (it gets [`StoreError::Sealed`]),
//! and nothing here is readable outside the realm.
//!
//! # Layout
//!
//! ```text
//! <dir>/manifest-<id>.sealed          the manifest; id = 32 hex derived from the key
//! <dir>/lock                          writers' flock (never taken by readers)
//! <dir>/data/<handle>.sealed          a Dataset; handle = 32 lowercase hex
//! <dir>/models/<sha256(id)>.sealed    a StoredModel; 64 lowercase hex
//! <dir>/secrets/<name>.sealed         raw bytes; name = [a-z0-9-]{1,64}
//! ```
//!
//! The manifest's name is derived from the sealing key, so two builds of the
//! agent (two measurements, two keys) sharing a directory keep separate
//! manifests and never touch each other's. Directories are created 0700 and
//! files 0600. Every file write goes to a temp file (`.tmp-<pid>-...`) in the
//! same directory, is fsynced, renamed over the target and the directory
//! fsynced, so a crash leaves the old file or the new one, never half of
//! one. Stale temp files of other processes are removed before the first
//! write of a store (never by a reader).
//!
//! Model files are named by the SHA-256 of the model id rather than its hex:
//! ids may be 128 bytes, whose hex (256 characters) exceeds the 255-byte
//! file-name limit of Linux file systems. The id itself is bound by the AAD.
//!
//! # File format (every kind)
//!
//! ```text
//! offset  length  field
//!      0       8  magic "CCAMLDA2"
//!      8       1  kind: 1 data, 2 model, 3 secret, 4 manifest
//!      9       8  store generation the file was written at, u64 big-endian
//!     17      12  nonce, random per write
//!     29   n + 16 AES-256-GCM ciphertext of the n-byte plaintext, then tag
//! ```
//!
//! AAD = magic ‖ kind ‖ generation ‖ slot name (the handle's hex, the model
//! id, the secret name, or `manifest`, as UTF-8), so a file copied or
//! renamed to another slot or kind does not open, and its generation cannot
//! be changed. Each kind has its own key: HKDF-SHA256(salt `"cca-ml
//! device-agent store"`, ikm = sealing key, info `"cca-ml device-agent
//! {data,model,secret,manifest} v1"`). Plaintexts are the postcard encoding
//! of [`Dataset`] and [`StoredModel`], a secret's bytes, and the manifest.
//!
//! # Manifest: mixing and rollback
//!
//! The manifest (see `manifest.rs`) lists every live record's kind and slot
//! with the generation it was written at, its AES-GCM tag and its size, and
//! carries the store's generation, bumped on every manifest write. A record
//! opens only if it authenticates *and* the manifest lists exactly that copy
//! (same generation, same tag):
//!
//! * an older copy of the record → [`StoreError::RecordRollback`];
//! * a record newer than its entry, or the same generation with another
//!   content (the manifest was replaced by an older one, or the file comes
//!   from another store) → [`StoreError::ManifestMismatch`];
//! * a record the manifest does not list (deleted but still on disk, or
//!   copied in) → [`StoreError::RecordNotInManifest`].
//!
//! `list` reads only the manifest. What this cannot detect — every file,
//! manifest included, replaced by an older consistent copy — is said in
//! `docs/threat-model.md` ("Device store: mixing and rollback").
//!
//! # Crash safety: manifest, record, manifest
//!
//! A write (import, model, secret) takes the writers' lock, seals the
//! record in memory at generation g = manifest generation + 1, then
//! 1. writes the manifest at generation g with the new copy as the slot's
//!    *pending* version (the old copy stays listed as *current*),
//! 2. writes the record file,
//! 3. writes the manifest at g + 1 with the new copy current, pending cleared.
//!
//! Both copies are acceptable between 1 and 3, so a crash at any point
//! leaves every record readable: before 2 the old copy is on disk and
//! listed; after 2 the new one is. Writing the record first could not work
//! (a crash before the manifest would leave a record newer than its entry,
//! indistinguishable from a rolled-back manifest), nor could the manifest
//! first without the pending entry (the old record would look rolled back).
//! The next writer resolves a pending entry left by a crash from the file
//! on disk. A delete writes the manifest without the entry first, then
//! erases the file; a crash between leaves an unlisted file, refused and
//! erased by a later `delete`.
//!
//! # Reading never writes
//!
//! [`LocalStore::open`] does no I/O; the directories are created (or
//! tightened to 0700) and stale temp files swept only before the first
//! write. [`LocalStore::open_read_only`] refuses every write with
//! [`StoreError::ReadOnly`], so `list` and local inference work on a store
//! the agent may not write (a read-only mount, 0555 directories).
//!
//! Must never: write user data, a model or a secret to disk unencrypted;
//! derive a key from anything but the sealing key; print a key or decrypted
//! content (`Debug` of [`LocalStore`] shows only the directory); turn a
//! caller's name into a path without checking it (handles are hex, model
//! files are hashed, secret names are `[a-z0-9-]`); open a record the
//! manifest does not list in exactly that copy; or write from a read path.

mod files;
mod manifest;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use attestation::platform::SealingKey;
use protocol::{SecretBytes, ServingPolicy};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::dataset::{Dataset, DatasetError};
use manifest::{Manifest, Verdict, Version};

pub use manifest::MAX_ENTRIES;

/// First bytes of every sealed file.
pub const MAGIC: &[u8; 8] = b"CCAMLDA2";
/// Largest sealed record written or read. Checked before reading, so a
/// planted or runaway file cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 2 << 30;
/// Largest manifest file read ([`MAX_ENTRIES`] entries fit well within it).
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;
/// Longest model id, in bytes (as in sealed model bundles).
pub const MAX_MODEL_ID_LEN: usize = 128;
/// Longest secret name.
pub const MAX_SECRET_NAME_LEN: usize = 64;

/// Magic, kind byte, generation: the authenticated header fields.
const PREFIX_LEN: usize = MAGIC.len() + 1 + 8;
/// Prefix and nonce.
const HEADER_LEN: usize = PREFIX_LEN + NONCE_LEN;
/// AES-256-GCM tag.
const TAG_LEN: usize = 16;
const HKDF_SALT: &[u8] = b"cca-ml device-agent store";
const SUFFIX: &str = ".sealed";
const TEMP_PREFIX: &str = ".tmp-";
const MANIFEST_SLOT: &str = "manifest";
const LOCK_FILE: &str = "lock";

/// What a sealed file holds; each record kind has its own directory, and
/// every kind its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Model,
    Secret,
    Manifest,
}

impl Kind {
    const RECORDS: [Kind; 3] = [Kind::Data, Kind::Model, Kind::Secret];
    const ALL: [Kind; 4] = [Kind::Data, Kind::Model, Kind::Secret, Kind::Manifest];

    fn byte(self) -> u8 {
        match self {
            Kind::Data => 1,
            Kind::Model => 2,
            Kind::Secret => 3,
            Kind::Manifest => 4,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.byte() == byte)
    }

    fn dir(self) -> &'static str {
        match self {
            Kind::Data => "data",
            Kind::Model => "models",
            Kind::Secret => "secrets",
            Kind::Manifest => ".",
        }
    }

    fn info(self) -> &'static [u8] {
        match self {
            Kind::Data => b"cca-ml device-agent data v1",
            Kind::Model => b"cca-ml device-agent model v1",
            Kind::Secret => b"cca-ml device-agent secret v1",
            Kind::Manifest => b"cca-ml device-agent manifest v1",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Data => "data",
            Kind::Model => "model",
            Kind::Secret => "secret",
            Kind::Manifest => "manifest",
        }
    }
}

fn kind_noun(byte: u8) -> &'static str {
    Kind::from_byte(byte).map_or("unknown", Kind::noun)
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
    /// The file authenticates, but it is an older copy than the one the
    /// store's manifest lists.
    #[error(
        "{} is an older copy of this record (written at store generation {found}; the manifest lists generation {listed}): it was replaced from a backup or by software outside the realm; it is refused. Delete it and store it again, or restore the current copy",
        path.display()
    )]
    RecordRollback {
        /// The file.
        path: PathBuf,
        /// Generation in its header.
        found: u64,
        /// Newest generation the manifest lists.
        listed: u64,
    },
    /// The file authenticates but is newer than, or differs from, the copy
    /// the manifest lists: the manifest was replaced by an older one, or the
    /// file comes from another store.
    #[error(
        "{} does not match the store manifest (written at generation {found}; the manifest lists generation {listed}): the manifest was replaced by an older copy, or the file was copied from another store; the store is inconsistent and is not trusted. Restore the whole state directory from one backup, or delete the file and store it again",
        path.display()
    )]
    ManifestMismatch {
        /// The file.
        path: PathBuf,
        /// Generation in its header.
        found: u64,
        /// Newest generation the manifest lists (0: none).
        listed: u64,
    },
    /// The file authenticates but the manifest does not list it: it was
    /// deleted (and restored, or never erased), or copied in.
    #[error(
        "{} is not in the store manifest: it was deleted, or copied in from another store or an earlier moment; it is refused. Remove it with `device-agent delete` (data) or delete the file",
        path.display()
    )]
    RecordNotInManifest {
        /// The file.
        path: PathBuf,
    },
    /// A write on a store opened with [`LocalStore::open_read_only`].
    #[error(
        "cannot {op}: the store {} was opened read-only; run a command that changes the store (import, delete, fetch-model) with write access",
        dir.display()
    )]
    ReadOnly {
        /// What was attempted.
        op: &'static str,
        /// The state directory.
        dir: PathBuf,
    },
    /// The manifest already lists [`MAX_ENTRIES`] records.
    #[error("the store holds the maximum of {max} records; delete some before storing more")]
    Full {
        /// The limit.
        max: usize,
    },
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

/// Sealed files under a state directory. See the module doc for the layout,
/// the format and the manifest.
pub struct LocalStore {
    dir: PathBuf,
    data_key: LessSafeKey,
    model_key: LessSafeKey,
    secret_key: LessSafeKey,
    manifest_key: LessSafeKey,
    /// `manifest-<id>.sealed`, `id` derived from the sealing key.
    manifest_path: PathBuf,
    writable: bool,
    /// Directories made and stale temp files swept (before the first write).
    prepared: AtomicBool,
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
    generation: u64,
    tag: [u8; TAG_LEN],
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

/// A record sealed in memory, not yet written.
struct Sealed {
    bytes: Vec<u8>,
    version: Version,
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

/// HKDF output length for the manifest's file-name id.
struct IdLen;

impl hkdf::KeyType for IdLen {
    fn len(&self) -> usize {
        16
    }
}

/// The manifest's file name: 16 bytes derived from the sealing key (one-way,
/// so the name reveals nothing about the key), one per realm build.
fn manifest_name(sealing: &SealingKey) -> Result<String, StoreError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(sealing.expose());
    let info: [&[u8]; 1] = [b"cca-ml device-agent manifest name v1"];
    let mut id = [0u8; 16];
    prk.expand(&info, IdLen)
        .and_then(|okm| okm.fill(&mut id))
        .map_err(|_| StoreError::Crypto("HKDF key derivation"))?;
    Ok(format!("manifest-{}{SUFFIX}", hex::encode(id)))
}

/// AAD of a file: magic ‖ kind ‖ generation ‖ slot name.
fn aad(kind: Kind, generation: u64, slot: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(PREFIX_LEN + slot.len());
    aad.extend_from_slice(MAGIC);
    aad.push(kind.byte());
    aad.extend_from_slice(&generation.to_be_bytes());
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

/// The generation in a sealed file's header (`buf` holds at least the prefix).
fn header_generation(buf: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = buf.get(MAGIC.len() + 1..PREFIX_LEN)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

impl LocalStore {
    /// The state directory `dir`, with keys derived from `sealing`. Nothing
    /// is read or written here; the directory and its `data`, `models` and
    /// `secrets` subdirectories are created (or tightened) to 0700 before
    /// the first write, so reading never needs write access.
    pub fn open(dir: &Path, sealing: &SealingKey) -> Result<Self, StoreError> {
        Self::new(dir, sealing, true)
    }

    /// As [`LocalStore::open`], but every write is refused with
    /// [`StoreError::ReadOnly`]: for commands that only read.
    pub fn open_read_only(dir: &Path, sealing: &SealingKey) -> Result<Self, StoreError> {
        Self::new(dir, sealing, false)
    }

    fn new(dir: &Path, sealing: &SealingKey, writable: bool) -> Result<Self, StoreError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            data_key: derive_key(sealing, Kind::Data)?,
            model_key: derive_key(sealing, Kind::Model)?,
            secret_key: derive_key(sealing, Kind::Secret)?,
            manifest_key: derive_key(sealing, Kind::Manifest)?,
            manifest_path: dir.join(manifest_name(sealing)?),
            writable,
            prepared: AtomicBool::new(false),
            rng: SystemRandom::new(),
        })
    }

    /// Whether writes are allowed.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Seal `d` under a new random handle.
    pub fn import(&self, d: &Dataset) -> Result<Handle, StoreError> {
        self.require_writable("import data")?;
        d.validate()?;
        let handle = Handle::random(&self.rng)?;
        let slot = handle.to_string();
        let path = self.path(Kind::Data, &slot);
        self.write_record(Kind::Data, &slot, &path, |this, generation| {
            this.seal_value(Kind::Data, &slot, generation, &path, d)
        })?;
        Ok(handle)
    }

    /// The dataset stored under `h`.
    pub fn load(&self, h: &Handle) -> Result<Dataset, StoreError> {
        let slot = h.to_string();
        let path = self.path(Kind::Data, &slot);
        let opened =
            self.open_record(Kind::Data, &slot, &path)?
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

    /// Erase the dataset under `h`: remove it from the manifest, then
    /// overwrite its file with zeros, fsync and remove it. A file the
    /// manifest no longer lists (a delete interrupted by a crash, or a
    /// restored copy) is erased too.
    ///
    /// Best effort: flash translation layers, journaling and copy-on-write
    /// file systems may keep the old blocks, and the OS may hold copies.
    /// What makes the old content unreadable is that it was only ever
    /// written encrypted under this realm's sealing key.
    pub fn delete(&self, h: &Handle) -> Result<(), StoreError> {
        self.require_writable("delete data")?;
        self.prepare()?;
        let slot = h.to_string();
        let path = self.path(Kind::Data, &slot);
        let _lock = files::lock(&self.dir.join(LOCK_FILE))?;
        let mut m = self.manifest_for_writing()?;
        let listed = m.remove(Kind::Data, &slot);
        if listed {
            // Manifest first: once it is written the file no longer opens,
            // whatever happens to the erasure.
            m.generation += 1;
            self.write_manifest(&m)?;
            crash_point(3)?;
        }
        let erased = files::erase(&path)?;
        if !listed && !erased {
            return Err(StoreError::NotFound {
                kind: "data",
                name: slot,
            });
        }
        Ok(())
    }

    /// Every stored dataset's handle and sealed size, sorted by handle, as
    /// the manifest lists them. Only the manifest is read: nothing else is
    /// decrypted, and files it does not list are not shown.
    pub fn list(&self) -> Result<Vec<(Handle, u64)>, StoreError> {
        Ok(self.read_manifest()?.datasets())
    }

    /// Seal `m`, replacing any model stored under the same id.
    pub fn put_model(&self, m: &StoredModel) -> Result<(), StoreError> {
        self.require_writable("store a model")?;
        check_model_id(&m.model_id)?;
        let path = self.model_path(&m.model_id);
        self.write_record(Kind::Model, &m.model_id, &path, |this, generation| {
            this.seal_value(Kind::Model, &m.model_id, generation, &path, m)
        })
    }

    /// The model stored under `model_id`. A model sealed by another build
    /// (another measurement, so another sealing key) is
    /// [`StoreError::Sealed`].
    pub fn get_model(&self, model_id: &str) -> Result<StoredModel, StoreError> {
        check_model_id(model_id)?;
        let path = self.model_path(model_id);
        let opened = self
            .open_record(Kind::Model, model_id, &path)?
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
        self.require_writable("store a secret")?;
        check_secret_name(name)?;
        let path = self.path(Kind::Secret, name);
        self.write_record(Kind::Secret, name, &path, |this, generation| {
            this.seal_with(Kind::Secret, name, generation, &path, bytes.len(), |buf| {
                buf.extend_from_slice(bytes);
                Ok(())
            })
        })
    }

    /// The secret `name`, or `None` if none is stored.
    pub fn get_secret(&self, name: &str) -> Result<Option<SecretBytes>, StoreError> {
        check_secret_name(name)?;
        let path = self.path(Kind::Secret, name);
        Ok(self
            .open_record(Kind::Secret, name, &path)?
            .map(|opened| SecretBytes::new(opened.plaintext().to_vec())))
    }

    fn path(&self, kind: Kind, slot: &str) -> PathBuf {
        self.dir.join(kind.dir()).join(format!("{slot}{SUFFIX}"))
    }

    fn model_path(&self, model_id: &str) -> PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, model_id.as_bytes());
        self.path(Kind::Model, &hex::encode(digest.as_ref()))
    }

    /// The file of a record slot named in the manifest.
    fn slot_path(&self, kind: Kind, slot: &str) -> PathBuf {
        match kind {
            Kind::Model => self.model_path(slot),
            _ => self.path(kind, slot),
        }
    }

    fn key(&self, kind: Kind) -> &LessSafeKey {
        match kind {
            Kind::Data => &self.data_key,
            Kind::Model => &self.model_key,
            Kind::Secret => &self.secret_key,
            Kind::Manifest => &self.manifest_key,
        }
    }

    fn require_writable(&self, op: &'static str) -> Result<(), StoreError> {
        if self.writable {
            Ok(())
        } else {
            Err(StoreError::ReadOnly {
                op,
                dir: self.dir.clone(),
            })
        }
    }

    /// Before the first write: create the directories 0700 (tightening
    /// existing ones) and sweep other processes' stale temp files.
    fn prepare(&self) -> Result<(), StoreError> {
        if self.prepared.load(Ordering::Acquire) {
            return Ok(());
        }
        create_private_dir(&self.dir)?;
        files::remove_stale_temps(&self.dir);
        for kind in Kind::RECORDS {
            let sub = self.dir.join(kind.dir());
            create_private_dir(&sub)?;
            // An existing directory keeps its mode on create; tighten it.
            fs::set_permissions(&sub, fs::Permissions::from_mode(0o700))
                .map_err(io_err("setting permissions of", &sub))?;
            files::remove_stale_temps(&sub);
        }
        self.prepared.store(true, Ordering::Release);
        Ok(())
    }

    /// The manifest as stored; an empty one if this key has none yet.
    fn read_manifest(&self) -> Result<Manifest, StoreError> {
        let path = &self.manifest_path;
        let Some(opened) =
            self.open_file(Kind::Manifest, MANIFEST_SLOT, path, MAX_MANIFEST_BYTES)?
        else {
            return Ok(Manifest::default());
        };
        Manifest::decode(opened.plaintext(), opened.generation).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: format!("the manifest is invalid: {e}"),
        })
    }

    /// The manifest with writes left pending by a crash resolved from the
    /// files on disk. Called under the writers' lock.
    fn manifest_for_writing(&self) -> Result<Manifest, StoreError> {
        let mut m = self.read_manifest()?;
        for (kind, slot) in m.pending() {
            let on_disk = files::read_head_and_tail(&self.slot_path(kind, &slot), HEADER_LEN)
                .filter(|(head, _)| {
                    head.get(..MAGIC.len()) == Some(MAGIC.as_slice())
                        && head.get(MAGIC.len()) == Some(&kind.byte())
                })
                .and_then(|(head, tag)| Some((header_generation(&head)?, tag)));
            m.resolve(kind, &slot, on_disk);
        }
        Ok(m)
    }

    fn write_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        let mut plain = m.encode().map_err(|e| StoreError::Encode {
            what: "manifest",
            detail: e.to_string(),
        })?;
        let path = &self.manifest_path;
        let sealed = self.seal_with(
            Kind::Manifest,
            MANIFEST_SLOT,
            m.generation,
            path,
            plain.len(),
            |buf| {
                buf.extend_from_slice(&plain);
                Ok(())
            },
        );
        wipe(&mut plain);
        let sealed = sealed?;
        if sealed.bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(StoreError::Full { max: MAX_ENTRIES });
        }
        files::write_atomic(path, &sealed.bytes, &self.rng)
    }

    /// Write one record with the manifest-record-manifest protocol of the
    /// module doc. `seal` seals the record at the generation it is given.
    fn write_record(
        &self,
        kind: Kind,
        slot: &str,
        path: &Path,
        seal: impl FnOnce(&Self, u64) -> Result<Sealed, StoreError>,
    ) -> Result<(), StoreError> {
        self.prepare()?;
        let _lock = files::lock(&self.dir.join(LOCK_FILE))?;
        let mut m = self.manifest_for_writing()?;
        if !m.contains(kind, slot) && m.len() >= MAX_ENTRIES {
            return Err(StoreError::Full { max: MAX_ENTRIES });
        }
        let generation = m.generation + 1;
        let mut sealed = seal(self, generation)?;
        m.generation = generation;
        m.set_pending(kind, slot, sealed.version);
        self.write_manifest(&m)?;
        crash_point(1)?;
        let written = files::write_atomic(path, &sealed.bytes, &self.rng);
        wipe(&mut sealed.bytes);
        written?;
        crash_point(2)?;
        m.resolve(kind, slot, Some((generation, sealed.version.tag)));
        m.generation = generation + 1;
        self.write_manifest(&m)
    }

    /// Seal the postcard encoding of `value`.
    fn seal_value<T: Serialize>(
        &self,
        kind: Kind,
        slot: &str,
        generation: u64,
        path: &Path,
        value: &T,
    ) -> Result<Sealed, StoreError> {
        let encode_err = |e: postcard::Error| StoreError::Encode {
            what: kind.noun(),
            detail: e.to_string(),
        };
        // Sized first so the buffer is allocated once: growing it would
        // leave copies of the plaintext in freed memory.
        let len = postcard::experimental::serialized_size(value).map_err(encode_err)?;
        self.seal_with(kind, slot, generation, path, len, |buf| {
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
        generation: u64,
        path: &Path,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<Sealed, StoreError> {
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
        buf.extend_from_slice(&generation.to_be_bytes());
        buf.extend_from_slice(&nonce);
        fill(&mut buf)?;
        let tag = self
            .key(kind)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(kind, generation, slot)),
                buf.get_mut(HEADER_LEN..).unwrap_or_default(),
            )
            .map_err(|_| StoreError::Crypto("AES-256-GCM sealing"))?;
        buf.extend_from_slice(tag.as_ref());
        let mut tag_bytes = [0u8; TAG_LEN];
        tag_bytes.copy_from_slice(tag.as_ref());
        Ok(Sealed {
            version: Version {
                generation,
                tag: tag_bytes,
                size: buf.len() as u64,
            },
            bytes: buf,
        })
    }

    /// Read, decrypt and check a record against the manifest; `None` if
    /// the file does not exist.
    fn open_record(
        &self,
        kind: Kind,
        slot: &str,
        path: &Path,
    ) -> Result<Option<Opened>, StoreError> {
        let Some(opened) = self.open_file(kind, slot, path, MAX_FILE_BYTES)? else {
            return Ok(None);
        };
        let manifest = self.read_manifest()?;
        let found = opened.generation;
        match manifest.check(kind, slot, found, &opened.tag) {
            Verdict::Listed => Ok(Some(opened)),
            Verdict::NotListed => Err(StoreError::RecordNotInManifest {
                path: path.to_path_buf(),
            }),
            Verdict::Older { listed } => Err(StoreError::RecordRollback {
                path: path.to_path_buf(),
                found,
                listed,
            }),
            Verdict::Mismatch { listed } => Err(StoreError::ManifestMismatch {
                path: path.to_path_buf(),
                found,
                listed,
            }),
        }
    }

    /// Read (at most `max` bytes) and decrypt `path`; `None` if it does not
    /// exist.
    fn open_file(
        &self,
        kind: Kind,
        slot: &str,
        path: &Path,
        max: u64,
    ) -> Result<Option<Opened>, StoreError> {
        let Some(buf) = files::read_bounded(path, max)? else {
            return Ok(None);
        };
        let size = buf.len() as u64;
        // Wiped on drop from here on, whatever fails.
        let mut opened = Opened {
            buf,
            generation: 0,
            tag: [0; TAG_LEN],
        };
        let buf = &opened.buf;
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
        let truncated = || StoreError::Truncated {
            path: path.to_path_buf(),
            size,
        };
        let generation = header_generation(buf).ok_or_else(truncated)?;
        let nonce = buf
            .get(PREFIX_LEN..HEADER_LEN)
            .and_then(|n| Nonce::try_assume_unique_for_key(n).ok())
            .ok_or_else(truncated)?;
        let tag: [u8; TAG_LEN] = buf
            .get(buf.len() - TAG_LEN..)
            .and_then(|t| t.try_into().ok())
            .ok_or_else(truncated)?;
        let sealed = StoreError::Sealed {
            path: path.to_path_buf(),
        };
        let Some(ciphertext) = opened.buf.get_mut(HEADER_LEN..) else {
            return Err(sealed);
        };
        self.key(kind)
            .open_in_place(nonce, Aad::from(aad(kind, generation, slot)), ciphertext)
            .map_err(|_| sealed)?;
        opened.generation = generation;
        opened.tag = tag;
        Ok(Some(opened))
    }
}

#[cfg(test)]
thread_local! {
    /// Test-only: the step after which a write stops as if the process had
    /// died there (1: pending manifest written, 2: record written, 3:
    /// delete's manifest written). Each step is itself atomic on disk, so
    /// the files left are exactly those a crash at that point leaves.
    static CRASH_AFTER: std::cell::Cell<Option<u8>> = const { std::cell::Cell::new(None) };
}

fn crash_point(step: u8) -> Result<(), StoreError> {
    #[cfg(test)]
    if CRASH_AFTER.with(|c| c.get()) == Some(step) {
        return Err(StoreError::Io {
            op: "simulated crash after step",
            path: PathBuf::from(step.to_string()),
            source: io::ErrorKind::Interrupted.into(),
        });
    }
    let _ = step;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{LabelColumn, parse_csv};
    use proptest::prelude::*;
    use protocol::{OutputPolicy, QueryBudget, Tensor, TensorData};
    use std::fs::File;
    use std::sync::atomic::AtomicU64;

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
            include_str!("../../../testdata/models/digits_test.csv"),
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
        // Its manifest (named by its own key) lists none of the old
        // build's records, and it stores its own beside them.
        assert_eq!(old.list().unwrap().len(), 1);
        assert!(rebuilt.list().unwrap().is_empty());
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

        // Another process's stale temp file is swept before the first
        // write of a store (never by opening or reading); ours is kept.
        drop(store);
        let mine = data.join(format!(".tmp-{}-9-0", std::process::id()));
        fs::write(&mine, b"x").unwrap();
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(data.join(".tmp-1-2-3").exists());
        store.put_secret("x", b"1").unwrap();
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
            store.put_secret("x", b"1").unwrap();
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
            // A planted file is not listed: only the manifest is.
            prop_assert!(store.list().unwrap().is_empty());
        }
    }

    /// Every regular file under `dir` (relative path → bytes).
    fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(
                        p.strip_prefix(dir).unwrap().to_path_buf(),
                        fs::read(&p).unwrap(),
                    );
                }
            }
        }
        out
    }

    fn manifest_of(store: &LocalStore) -> PathBuf {
        store.manifest_path.clone()
    }

    #[test]
    fn an_older_copy_of_a_record_is_refused() {
        let s = Scratch::new("rollback");
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        let mut m = model("digits-cnn");
        store.put_model(&m).unwrap();
        store.put_secret("auth-key", b"k1").unwrap();
        let old_model = fs::read(store.model_path("digits-cnn")).unwrap();
        let old_secret = fs::read(s.0.join("secrets/auth-key.sealed")).unwrap();
        m.version = "2".into();
        store.put_model(&m).unwrap();
        store.put_secret("auth-key", b"k2").unwrap();

        // Record A's file replaced by an older copy of A.
        fs::write(store.model_path("digits-cnn"), &old_model).unwrap();
        let e = store.get_model("digits-cnn").unwrap_err();
        assert!(
            matches!(e, StoreError::RecordRollback { found, listed, .. } if found < listed),
            "{e:?}"
        );
        assert!(e.to_string().contains("older copy"), "{e}");
        fs::write(s.0.join("secrets/auth-key.sealed"), &old_secret).unwrap();
        assert!(matches!(
            store.get_secret("auth-key"),
            Err(StoreError::RecordRollback { .. })
        ));
        // A fresh process (a new store value) refuses it too.
        let reopened = LocalStore::open(&s.0, &key(1)).unwrap();
        assert!(matches!(
            reopened.get_model("digits-cnn"),
            Err(StoreError::RecordRollback { .. })
        ));
        // Storing it again heals the slot.
        reopened.put_model(&m).unwrap();
        assert_eq!(reopened.get_model("digits-cnn").unwrap(), m);
    }

    #[test]
    fn files_of_two_moments_or_two_stores_are_not_mixed() {
        let s = Scratch::new("mix");
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        let a = store.import(&small()).unwrap();
        let mut m = model("m");
        store.put_model(&m).unwrap();
        let earlier = snapshot(&s.0);

        m.version = "2".into();
        store.put_model(&m).unwrap();
        let b = store.import(&digits()).unwrap();
        let later = snapshot(&s.0);

        // The older manifest with the newer records: the rewritten model
        // is newer than its entry, the new dataset is not listed, the
        // unchanged dataset still opens.
        let manifest = manifest_of(&store);
        let rel = manifest.strip_prefix(&s.0).unwrap().to_path_buf();
        fs::write(&manifest, &earlier[&rel]).unwrap();
        let e = store.get_model("m").unwrap_err();
        assert!(
            matches!(e, StoreError::ManifestMismatch { found, listed, .. } if found > listed),
            "{e:?}"
        );
        assert!(matches!(
            store.load(&b),
            Err(StoreError::RecordNotInManifest { .. })
        ));
        assert_eq!(store.load(&a).unwrap(), small());
        assert_eq!(store.list().unwrap().len(), 1);

        // The newer manifest with the older model file: a rollback.
        fs::write(&manifest, &later[&rel]).unwrap();
        let model_rel = store
            .model_path("m")
            .strip_prefix(&s.0)
            .unwrap()
            .to_path_buf();
        fs::write(store.model_path("m"), &earlier[&model_rel]).unwrap();
        assert!(matches!(
            store.get_model("m"),
            Err(StoreError::RecordRollback { .. })
        ));
        fs::write(store.model_path("m"), &later[&model_rel]).unwrap();
        assert_eq!(store.get_model("m").unwrap(), m);

        // A record of another store of the same build (same key, same
        // slot, same generation, other content) does not open here.
        let s2 = Scratch::new("mix-other");
        let other = LocalStore::open(&s2.0, &key(1)).unwrap();
        other.put_model(&model("m")).unwrap();
        let mine = LocalStore::open(&s2.0.join("mine"), &key(1)).unwrap();
        mine.put_model(&model("m")).unwrap();
        fs::copy(other.model_path("m"), mine.model_path("m")).unwrap();
        let e = mine.get_model("m").unwrap_err();
        assert!(
            matches!(e, StoreError::ManifestMismatch { found, listed, .. } if found == listed),
            "{e:?}"
        );
    }

    #[test]
    fn a_deleted_record_still_on_disk_is_refused() {
        let s = Scratch::new("undelete");
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        let a = store.import(&small()).unwrap();
        let b = store.import(&small()).unwrap();
        let copy = fs::read(file_of(&store, &a)).unwrap();
        store.delete(&a).unwrap();
        // The file comes back (restored, or the erasure never happened).
        fs::write(file_of(&store, &a), &copy).unwrap();
        let e = store.load(&a).unwrap_err();
        assert!(matches!(e, StoreError::RecordNotInManifest { .. }), "{e:?}");
        assert_eq!(
            store.list().unwrap(),
            vec![(b, fs::metadata(file_of(&store, &b)).unwrap().len())]
        );
        // delete erases an unlisted file; then there is nothing left.
        store.delete(&a).unwrap();
        assert!(!file_of(&store, &a).exists());
        assert!(matches!(store.delete(&a), Err(StoreError::NotFound { .. })));
        assert_eq!(store.load(&b).unwrap(), small());
    }

    fn crash_after<T>(step: u8, f: impl FnOnce() -> T) -> T {
        CRASH_AFTER.with(|c| c.set(Some(step)));
        let out = f();
        CRASH_AFTER.with(|c| c.set(None));
        out
    }

    #[test]
    fn a_crash_at_any_step_leaves_the_store_readable() {
        let s = Scratch::new("crash");
        let store = LocalStore::open(&s.0, &key(1)).unwrap();
        let a = store.import(&small()).unwrap();
        let v1 = model("m");
        let mut v2 = model("m");
        v2.version = "2".into();
        store.put_model(&v1).unwrap();
        let v1_file = fs::read(store.model_path("m")).unwrap();

        // Crash after the pending manifest, before the record: the old
        // copy is on disk and still opens, in this and a new process.
        assert!(crash_after(1, || store.put_model(&v2)).is_err());
        let after = LocalStore::open(&s.0, &key(1)).unwrap();
        assert_eq!(after.get_model("m").unwrap(), v1);
        // An import that crashed there never returned a handle and is not listed.
        assert!(crash_after(1, || after.import(&digits())).is_err());
        assert_eq!(after.list().unwrap().len(), 1);
        assert_eq!(after.load(&a).unwrap(), small());

        // Crash after the record, before the final manifest: the new copy opens.
        assert!(crash_after(2, || after.put_model(&v2)).is_err());
        let after = LocalStore::open(&s.0, &key(1)).unwrap();
        assert_eq!(after.get_model("m").unwrap(), v2);
        // The next write settles it: the new copy is current and the old
        // one is now a rollback.
        after.put_secret("auth-key", b"k").unwrap();
        assert_eq!(after.get_model("m").unwrap(), v2);
        fs::write(after.model_path("m"), &v1_file).unwrap();
        assert!(matches!(
            after.get_model("m"),
            Err(StoreError::RecordRollback { .. })
        ));
        after.put_model(&v2).unwrap();

        // Crash in a delete after the manifest, before the erasure: the
        // record is gone from the manifest and refused; delete finishes it.
        assert!(crash_after(3, || after.delete(&a)).is_err());
        assert!(file_of(&after, &a).exists());
        assert!(matches!(
            after.load(&a),
            Err(StoreError::RecordNotInManifest { .. })
        ));
        assert!(after.list().unwrap().is_empty());
        after.delete(&a).unwrap();
        assert!(!file_of(&after, &a).exists());
        assert_eq!(after.get_model("m").unwrap(), v2);
        assert_eq!(
            after.get_secret("auth-key").unwrap().unwrap().expose(),
            b"k"
        );
    }

    #[test]
    fn reading_never_writes() {
        let s = Scratch::new("read-only");
        // A store that does not exist: reading finds nothing and creates nothing.
        let ro = LocalStore::open_read_only(&s.0, &key(1)).unwrap();
        assert!(ro.list().unwrap().is_empty());
        let h: Handle = "00112233445566778899aabbccddeeff".parse().unwrap();
        assert!(matches!(ro.load(&h), Err(StoreError::NotFound { .. })));
        assert!(ro.get_secret("auth-key").unwrap().is_none());
        let rw = LocalStore::open(&s.0, &key(1)).unwrap();
        assert!(rw.list().unwrap().is_empty());
        assert!(!s.0.exists(), "opening and reading created the directory");

        let a = rw.import(&small()).unwrap();
        rw.put_model(&model("m")).unwrap();
        fs::write(s.0.join("data/.tmp-1-2-3"), b"stale").unwrap();
        let before = snapshot(&s.0);
        let ro = LocalStore::open_read_only(&s.0, &key(1)).unwrap();
        assert!(!ro.is_writable());
        assert_eq!(ro.list().unwrap().len(), 1);
        assert_eq!(ro.load(&a).unwrap(), small());
        assert_eq!(ro.get_model("m").unwrap(), model("m"));
        for e in [
            ro.import(&small()).unwrap_err(),
            ro.delete(&a).unwrap_err(),
            ro.put_model(&model("m")).unwrap_err(),
            ro.put_secret("auth-key", b"k").unwrap_err(),
        ] {
            assert!(matches!(e, StoreError::ReadOnly { .. }), "{e:?}");
        }
        // A writable store that only reads does not write either.
        let rw = LocalStore::open(&s.0, &key(1)).unwrap();
        assert_eq!(rw.load(&a).unwrap(), small());
        assert_eq!(snapshot(&s.0), before, "a read changed the store");
    }
}
