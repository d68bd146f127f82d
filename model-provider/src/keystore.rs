//! The provider's keystore: one entry per sealed bundle, with the bundle's
//! data key wrapped (AES-256-GCM) under a key-encryption key that never
//! touches the file. The KEK comes from a key file (32 random bytes, created
//! with mode 0600) or from a passphrase in `MODEL_PROVIDER_PASSPHRASE`
//! (PBKDF2-HMAC-SHA256, 600,000 iterations, random salt stored in the file).
//!
//! Must never: write a data key in clear, print one, or keep a half-written
//! keystore under its final name.

use std::io::Write;
use std::num::NonZeroU32;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use protocol::FlTaskTerms;
use protocol::sealed::ModelKey;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::release::ReleaseRule;

/// Environment variable holding the keystore passphrase (when no key file is given).
pub const PASSPHRASE_ENV: &str = "MODEL_PROVIDER_PASSPHRASE";
const PBKDF2_ITERATIONS: u32 = 600_000;

/// Where the key-encryption key comes from.
#[derive(Debug, Clone)]
pub enum KekSource {
    /// A file of 32 random bytes (created if missing).
    KeyFile(PathBuf),
    /// `MODEL_PROVIDER_PASSPHRASE`.
    Passphrase,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoreFile {
    format: u32,
    /// Hex salt when the KEK is passphrase-derived.
    passphrase_salt: Option<String>,
    entries: Vec<Entry>,
    /// Federated tasks' terms (keystores written before tasks existed have none).
    #[serde(default)]
    tasks: Vec<TaskEntry>,
}

/// A federated task's terms, sealed to the keystore key: an AES-GCM tag
/// over the terms (as associated data), so terms edited in the file
/// without the key are refused rather than served.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskEntry {
    terms: FlTaskTerms,
    /// nonce ‖ tag, hex.
    seal: String,
}

/// One sealed bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Model id.
    pub model_id: String,
    /// Model version.
    pub version: String,
    /// Blob id of the sealed bundle (hex SHA-256).
    pub bundle: String,
    /// Key id (hex), as in the bundle header.
    pub key_id: String,
    /// Unix seconds.
    pub created: u64,
    /// Who may receive the key, for what.
    pub release: ReleaseRule,
    /// Replaced by a rotation: never released again.
    #[serde(default)]
    pub retired: bool,
    /// nonce ‖ ciphertext ‖ tag of the data key, hex. Never the key itself.
    wrapped_key: String,
}

/// An open keystore.
pub struct Keystore {
    path: PathBuf,
    kek: LessSafeKey,
    salt: Option<String>,
    entries: Vec<Entry>,
    tasks: Vec<TaskEntry>,
    /// Modification time of the file when `entries` were read.
    read_at: Option<std::time::SystemTime>,
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keystore({}, {} entries, <KEK redacted>)",
            self.path.display(),
            self.entries.len()
        )
    }
}

fn kek_from_bytes(bytes: &[u8]) -> Result<LessSafeKey> {
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| anyhow::anyhow!("bad KEK length"))?,
    ))
}

fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

impl Keystore {
    /// Open `path` (created empty if missing) with the KEK from `source`.
    pub fn open(path: &Path, source: &KekSource) -> Result<Self> {
        let read_at = modified(path);
        let file: StoreFile = if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a model-provider keystore", path.display()))?
        } else {
            StoreFile {
                format: 1,
                passphrase_salt: None,
                entries: Vec::new(),
                tasks: Vec::new(),
            }
        };
        if file.format != 1 {
            bail!(
                "keystore format {} is not supported by this version",
                file.format
            );
        }
        let rng = SystemRandom::new();
        let (kek, salt) = match source {
            KekSource::KeyFile(kf) => {
                if !kf.exists() {
                    let mut k = [0u8; 32];
                    rng.fill(&mut k)
                        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
                    write_new_secret(kf, &k)?;
                }
                let bytes = std::fs::read(kf)
                    .with_context(|| format!("reading key file {}", kf.display()))?;
                if bytes.len() != 32 {
                    bail!("key file {} must hold exactly 32 bytes", kf.display());
                }
                (kek_from_bytes(&bytes)?, file.passphrase_salt.clone())
            }
            KekSource::Passphrase => {
                let pass = std::env::var(PASSPHRASE_ENV).map_err(|_| {
                    anyhow::anyhow!(
                        "set {PASSPHRASE_ENV} or pass --keystore-key FILE to unlock the keystore"
                    )
                })?;
                let salt = match &file.passphrase_salt {
                    Some(s) => hex::decode(s).context("keystore salt is not hex")?,
                    None => {
                        let mut s = vec![0u8; 16];
                        rng.fill(&mut s)
                            .map_err(|_| anyhow::anyhow!("no system randomness"))?;
                        s
                    }
                };
                let mut k = [0u8; 32];
                let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).unwrap_or(NonZeroU32::MIN);
                ring::pbkdf2::derive(
                    ring::pbkdf2::PBKDF2_HMAC_SHA256,
                    iterations,
                    &salt,
                    pass.as_bytes(),
                    &mut k,
                );
                (kek_from_bytes(&k)?, Some(hex::encode(salt)))
            }
        };
        let store = Self {
            path: path.to_path_buf(),
            kek,
            salt,
            entries: file.entries,
            tasks: file.tasks,
            read_at,
        };
        // A wrong KEK must fail here, not at the first key request.
        if let Some(e) = store.entries.first() {
            store
                .unwrap_key(e)
                .context("the keystore key or passphrase is wrong")?;
        }
        Ok(store)
    }

    /// Re-read the entries if the file changed since they were read (a
    /// `seal` or `rotate` run while `serve` is up). The new entries replace
    /// the old only if they are readable with this keystore's key; otherwise
    /// the old ones stay and the error says why. Returns whether it re-read.
    pub fn refresh(&mut self) -> Result<bool> {
        let now = modified(&self.path);
        if now == self.read_at {
            return Ok(false);
        }
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let file: StoreFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a model-provider keystore", self.path.display()))?;
        if file.format != 1 || file.passphrase_salt != self.salt {
            bail!(
                "{} was replaced by a keystore with another key",
                self.path.display()
            );
        }
        if let Some(e) = file.entries.first() {
            self.unwrap_key(e)
                .context("the changed keystore does not open with this key")?;
        }
        self.entries = file.entries;
        self.tasks = file.tasks;
        self.read_at = now;
        Ok(true)
    }

    /// All entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The current (not retired) entry for a model id.
    pub fn current(&self, model_id: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.model_id == model_id && !e.retired)
    }

    /// The highest round-number version ever stored for `model_id`
    /// (retired entries included; versions that are not round numbers, as
    /// a provider's own models may carry, are not counted).
    pub fn highest_version(&self, model_id: &str) -> Option<u64> {
        self.entries
            .iter()
            .filter(|e| e.model_id == model_id)
            .filter_map(|e| e.version.parse::<u64>().ok())
            .max()
    }

    /// The terms of federated task `task`, if defined and intact.
    pub fn task(&self, task: &str) -> Result<Option<FlTaskTerms>> {
        let Some(t) = self.tasks.iter().rev().find(|t| t.terms.task == task) else {
            return Ok(None);
        };
        let sealed = hex::decode(&t.seal).context("task seal is not hex")?;
        if sealed.len() != 12 + 16 {
            bail!("the seal of task {task:?} has the wrong length");
        }
        let (nonce, tag) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut buf = tag.to_vec();
        self.kek
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::task_aad(&t.terms)?),
                &mut buf,
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "the terms of task {task:?} were changed without the keystore key; define the task again with `model-provider task define`"
                )
            })?;
        t.terms
            .validate()
            .with_context(|| format!("the stored terms of task {task:?}"))?;
        Ok(Some(t.terms.clone()))
    }

    /// Define (or redefine) a federated task's terms, sealed to the keystore key.
    pub fn define_task(&mut self, terms: FlTaskTerms) -> Result<()> {
        terms.validate()?;
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no system randomness"))?;
        let mut tag = Vec::new();
        self.kek
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::task_aad(&terms)?),
                &mut tag,
            )
            .map_err(|_| anyhow::anyhow!("sealing the task terms failed"))?;
        let mut seal = nonce.to_vec();
        seal.extend_from_slice(&tag);
        let before = self.tasks.clone();
        self.tasks.retain(|t| t.terms.task != terms.task);
        self.tasks.push(TaskEntry {
            terms,
            seal: hex::encode(seal),
        });
        self.save().inspect_err(|_| self.tasks = before)
    }

    /// The associated data a task's seal covers: its terms as JSON (one
    /// struct, fields in declaration order, floats in shortest round-trip
    /// form, so a parsed copy serializes to the same bytes).
    fn task_aad(terms: &FlTaskTerms) -> Result<Vec<u8>> {
        let mut aad = b"cca-ml keystore task terms v1|".to_vec();
        aad.extend(serde_json::to_vec(terms)?);
        Ok(aad)
    }

    fn aad(model_id: &str, key_id: &str) -> Vec<u8> {
        format!("cca-ml keystore v1|{model_id}|{key_id}").into_bytes()
    }

    /// Record a new bundle and its key.
    pub fn add(
        &mut self,
        model_id: &str,
        version: &str,
        bundle: &str,
        key: &ModelKey,
        created: u64,
        release: ReleaseRule,
    ) -> Result<()> {
        let key_id = hex::encode(key.key_id().as_bytes());
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no system randomness"))?;
        let mut sealed = key.expose().to_vec();
        self.kek
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(model_id, &key_id)),
                &mut sealed,
            )
            .map_err(|_| anyhow::anyhow!("wrapping the data key failed"))?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&sealed);
        self.entries.push(Entry {
            model_id: model_id.into(),
            version: version.into(),
            bundle: bundle.into(),
            key_id,
            created,
            release,
            retired: false,
            wrapped_key: hex::encode(wrapped),
        });
        // An entry that is not on disk must not count (e.g. as a task's
        // current version for the deposit check).
        self.save().inspect_err(|_| {
            self.entries.pop();
        })
    }

    /// Retire every current entry of `model_id` (after a rotation).
    /// Memory follows the disk: if the save fails, nothing is retired.
    pub fn retire(&mut self, model_id: &str, keep_bundle: &str) -> Result<()> {
        let before = self.entries.clone();
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.model_id == model_id && e.bundle != keep_bundle)
        {
            e.retired = true;
        }
        self.save().inspect_err(|_| self.entries = before)
    }

    /// The data key of an entry.
    pub fn unwrap_key(&self, entry: &Entry) -> Result<ModelKey> {
        let wrapped = hex::decode(&entry.wrapped_key).context("wrapped key is not hex")?;
        if wrapped.len() != 12 + 32 + 16 {
            bail!("wrapped key has the wrong length");
        }
        let (nonce, rest) = wrapped.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut buf = rest.to_vec();
        let plain = self
            .kek
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(&entry.model_id, &entry.key_id)),
                &mut buf,
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "the data key of {} does not unwrap (wrong keystore key?)",
                    entry.model_id
                )
            })?;
        let key =
            ModelKey::from_slice(plain).ok_or_else(|| anyhow::anyhow!("bad data key length"))?;
        buf.fill(0);
        if hex::encode(key.key_id().as_bytes()) != entry.key_id {
            bail!(
                "the data key of {} does not match its key id",
                entry.model_id
            );
        }
        Ok(key)
    }

    fn save(&self) -> Result<()> {
        let file = StoreFile {
            format: 1,
            passphrase_salt: self.salt.clone(),
            entries: self.entries.clone(),
            tasks: self.tasks.clone(),
        };
        let text = serde_json::to_string_pretty(&file)?;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".keystore.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        write_new_secret(&tmp, text.as_bytes())?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        Ok(())
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
