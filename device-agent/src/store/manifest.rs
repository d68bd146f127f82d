//! The store manifest: which records are live, and exactly which copy of
//! each (the store generation it was written at and its AES-GCM tag). It is
//! sealed like a record (see the parent module); this module is the pure
//! part — the value, its bounded decoding and the checks — with no I/O and
//! no cryptography.
//!
//! A record file opens only if the manifest lists its slot with the same
//! generation and tag, so an older copy of one file (rollback), a file of
//! another moment or another store (mixing), or a deleted file still on
//! disk is refused, each with its own verdict.
//!
//! Must never: accept a manifest with more than [`MAX_ENTRIES`] entries,
//! duplicate or unsorted entries, an entry for a slot name that could not
//! be written (so a decoded name is always safe as a file name), or an entry
//! newer than the manifest itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Handle, Kind, check_model_id, check_secret_name};

/// Most records one store lists (datasets, models and secrets together).
/// Bounds the manifest's size (an entry encodes to at most ~200 bytes).
pub const MAX_ENTRIES: usize = 20_000;

/// One written copy of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Version {
    /// Store generation the record was written at (in its sealed header).
    pub generation: u64,
    /// Its AES-256-GCM tag: names this exact ciphertext.
    pub tag: [u8; 16],
    /// Size of the sealed file in bytes.
    pub size: u64,
}

/// A slot's state. `pending` is a write that may or may not have reached the
/// disk (the manifest is written before and after the record; see the
/// parent module's "Crash safety").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Slot {
    pub current: Option<Version>,
    pub pending: Option<Version>,
}

/// On-disk form of one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    kind: u8,
    slot: String,
    current: Option<Version>,
    pending: Option<Version>,
}

/// On-disk form of the manifest (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Wire {
    generation: u64,
    entries: Vec<Entry>,
}

/// How a record file relates to the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The manifest lists exactly this copy.
    Listed,
    /// The manifest has no entry for the slot.
    NotListed,
    /// An older copy than the listed one.
    Older {
        /// Newest generation the manifest lists for the slot.
        listed: u64,
    },
    /// Newer than the listed copy, or the same generation with another
    /// content: the manifest is older than the record, or the file comes
    /// from another store.
    Mismatch {
        /// Newest generation the manifest lists for the slot.
        listed: u64,
    },
}

/// Why a decrypted manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ManifestDefect {
    #[error("it does not decode ({0})")]
    Decode(String),
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("it lists {0} records, over the limit of {MAX_ENTRIES}")]
    TooManyEntries(usize),
    #[error("its generation {inner} differs from its header's {header}")]
    Generation { header: u64, inner: u64 },
    #[error("entry {0} is a duplicate or out of order")]
    Order(usize),
    #[error("entry {0} has an unknown kind or an invalid name")]
    BadSlot(usize),
    #[error("entry {0} lists no copy, or one newer than the manifest")]
    BadVersion(usize),
}

/// The live records of one store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Manifest {
    /// Bumped on every manifest write; a record is written at the
    /// generation of the manifest that first lists it as pending.
    pub generation: u64,
    slots: BTreeMap<(u8, String), Slot>,
}

fn valid_slot(kind: Kind, slot: &str) -> bool {
    match kind {
        Kind::Data => slot.parse::<Handle>().is_ok(),
        Kind::Model => check_model_id(slot).is_ok(),
        Kind::Secret => check_secret_name(slot).is_ok(),
        Kind::Manifest => false,
    }
}

impl Manifest {
    /// Decode a manifest's plaintext; `header_generation` is the generation
    /// its authenticated header carries.
    pub fn decode(plaintext: &[u8], header_generation: u64) -> Result<Self, ManifestDefect> {
        let (wire, rest) = postcard::take_from_bytes::<Wire>(plaintext)
            .map_err(|e| ManifestDefect::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ManifestDefect::Trailing(rest.len()));
        }
        if wire.entries.len() > MAX_ENTRIES {
            return Err(ManifestDefect::TooManyEntries(wire.entries.len()));
        }
        if wire.generation != header_generation {
            return Err(ManifestDefect::Generation {
                header: header_generation,
                inner: wire.generation,
            });
        }
        let mut slots = BTreeMap::new();
        let mut previous: Option<(u8, &str)> = None;
        for (i, e) in wire.entries.iter().enumerate() {
            if previous.is_some_and(|p| p >= (e.kind, e.slot.as_str())) {
                return Err(ManifestDefect::Order(i));
            }
            previous = Some((e.kind, e.slot.as_str()));
            let Some(kind) = Kind::from_byte(e.kind) else {
                return Err(ManifestDefect::BadSlot(i));
            };
            if !valid_slot(kind, &e.slot) {
                return Err(ManifestDefect::BadSlot(i));
            }
            let newer = |v: &Option<Version>| v.is_some_and(|v| v.generation > wire.generation);
            if (e.current.is_none() && e.pending.is_none())
                || newer(&e.current)
                || newer(&e.pending)
            {
                return Err(ManifestDefect::BadVersion(i));
            }
            slots.insert(
                (e.kind, e.slot.clone()),
                Slot {
                    current: e.current,
                    pending: e.pending,
                },
            );
        }
        Ok(Self {
            generation: wire.generation,
            slots,
        })
    }

    /// The postcard encoding (entries sorted by kind, then name).
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let wire = Wire {
            generation: self.generation,
            entries: self
                .slots
                .iter()
                .map(|((kind, slot), s)| Entry {
                    kind: *kind,
                    slot: slot.clone(),
                    current: s.current,
                    pending: s.pending,
                })
                .collect(),
        };
        postcard::to_stdvec(&wire)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slot's state, if listed.
    pub fn get(&self, kind: Kind, slot: &str) -> Option<Slot> {
        self.slots.get(&(kind.byte(), slot.to_string())).copied()
    }

    /// Is `kind`/`slot` known to the manifest (current or pending)?
    pub fn contains(&self, kind: Kind, slot: &str) -> bool {
        self.get(kind, slot).is_some()
    }

    /// How a record file written at `generation` with `tag` relates to
    /// the manifest's entry for `kind`/`slot`.
    pub fn check(&self, kind: Kind, slot: &str, generation: u64, tag: &[u8; 16]) -> Verdict {
        let Some(s) = self.get(kind, slot) else {
            return Verdict::NotListed;
        };
        let listed = [s.current, s.pending].into_iter().flatten();
        if listed
            .clone()
            .any(|v| v.generation == generation && &v.tag == tag)
        {
            return Verdict::Listed;
        }
        let newest = listed.map(|v| v.generation).max().unwrap_or(0);
        if generation < newest {
            Verdict::Older { listed: newest }
        } else {
            Verdict::Mismatch { listed: newest }
        }
    }

    /// Record `version` as the pending write of `kind`/`slot`.
    pub fn set_pending(&mut self, kind: Kind, slot: &str, version: Version) {
        self.slots
            .entry((kind.byte(), slot.to_string()))
            .or_default()
            .pending = Some(version);
    }

    /// Resolve the pending write of `kind`/`slot` from what is on disk:
    /// `on_disk` is the (generation, tag) the file claims, if any. A
    /// match promotes it; otherwise the write never landed and is dropped
    /// (and so is an entry left with no copy).
    pub fn resolve(&mut self, kind: Kind, slot: &str, on_disk: Option<(u64, [u8; 16])>) {
        let key = (kind.byte(), slot.to_string());
        let Some(s) = self.slots.get_mut(&key) else {
            return;
        };
        if let Some(p) = s.pending.take()
            && on_disk == Some((p.generation, p.tag))
        {
            s.current = Some(p);
        }
        if s.current.is_none() {
            self.slots.remove(&key);
        }
    }

    /// Remove `kind`/`slot`; whether it was listed.
    pub fn remove(&mut self, kind: Kind, slot: &str) -> bool {
        self.slots
            .remove(&(kind.byte(), slot.to_string()))
            .is_some()
    }

    /// Every slot with a pending write.
    pub fn pending(&self) -> Vec<(Kind, String)> {
        self.slots
            .iter()
            .filter(|(_, s)| s.pending.is_some())
            .filter_map(|((k, slot), _)| Kind::from_byte(*k).map(|k| (k, slot.clone())))
            .collect()
    }

    /// Datasets with a current copy, and their sealed sizes, by handle.
    pub fn datasets(&self) -> Vec<(Handle, u64)> {
        self.slots
            .iter()
            .filter(|((k, _), _)| *k == Kind::Data.byte())
            .filter_map(|((_, slot), s)| Some((slot.parse().ok()?, s.current?.size)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "00112233445566778899aabbccddeeff";

    fn v(generation: u64, t: u8) -> Version {
        Version {
            generation,
            tag: [t; 16],
            size: 100,
        }
    }

    #[test]
    fn verdicts() {
        let mut m = Manifest {
            generation: 5,
            ..Manifest::default()
        };
        m.set_pending(Kind::Data, H, v(3, 1));
        m.resolve(Kind::Data, H, Some((3, [1; 16])));
        assert_eq!(m.check(Kind::Data, H, 3, &[1; 16]), Verdict::Listed);
        assert_eq!(
            m.check(Kind::Data, H, 2, &[9; 16]),
            Verdict::Older { listed: 3 }
        );
        assert_eq!(
            m.check(Kind::Data, H, 4, &[1; 16]),
            Verdict::Mismatch { listed: 3 }
        );
        assert_eq!(
            m.check(Kind::Data, H, 3, &[2; 16]),
            Verdict::Mismatch { listed: 3 }
        );
        assert_eq!(m.check(Kind::Model, H, 3, &[1; 16]), Verdict::NotListed);
        // During a write both the old and the new copy are listed.
        m.set_pending(Kind::Data, H, v(5, 2));
        assert_eq!(m.check(Kind::Data, H, 3, &[1; 16]), Verdict::Listed);
        assert_eq!(m.check(Kind::Data, H, 5, &[2; 16]), Verdict::Listed);
        assert_eq!(
            m.check(Kind::Data, H, 4, &[2; 16]),
            Verdict::Older { listed: 5 }
        );
        // A write that never reached the disk is dropped; the old copy stays.
        m.resolve(Kind::Data, H, Some((3, [1; 16])));
        assert_eq!(m.get(Kind::Data, H).unwrap().pending, None);
        assert_eq!(
            m.check(Kind::Data, H, 5, &[2; 16]),
            Verdict::Mismatch { listed: 3 }
        );
        // A new slot whose write never landed disappears.
        m.set_pending(Kind::Secret, "auth-key", v(5, 3));
        m.resolve(Kind::Secret, "auth-key", None);
        assert!(!m.contains(Kind::Secret, "auth-key"));
    }

    #[test]
    fn decoding_is_strict_and_bounded() {
        let mut m = Manifest {
            generation: 7,
            ..Manifest::default()
        };
        m.set_pending(Kind::Data, H, v(7, 1));
        m.set_pending(Kind::Model, "digits", v(6, 2));
        m.resolve(Kind::Model, "digits", Some((6, [2; 16])));
        let bytes = m.encode().unwrap();
        assert_eq!(Manifest::decode(&bytes, 7).unwrap(), m);
        assert_eq!(m.datasets(), vec![]);
        assert!(matches!(
            Manifest::decode(&bytes, 8),
            Err(ManifestDefect::Generation { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Manifest::decode(&long, 7), Err(ManifestDefect::Trailing(1)));
        for len in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..len], 7).is_err(), "{len}");
        }

        let entry = |kind: u8, slot: &str, current: Option<Version>| Entry {
            kind,
            slot: slot.into(),
            current,
            pending: None,
        };
        let wire = |entries: Vec<Entry>| {
            postcard::to_stdvec(&Wire {
                generation: 7,
                entries,
            })
            .unwrap()
        };
        let cases = [
            (
                wire(vec![entry(1, H, Some(v(1, 1))), entry(1, H, Some(v(1, 1)))]),
                ManifestDefect::Order(1),
            ),
            (
                wire(vec![
                    entry(2, "m", Some(v(1, 1))),
                    entry(1, H, Some(v(1, 1))),
                ]),
                ManifestDefect::Order(1),
            ),
            (
                wire(vec![entry(1, "../x", Some(v(1, 1)))]),
                ManifestDefect::BadSlot(0),
            ),
            (
                wire(vec![entry(4, "manifest", Some(v(1, 1)))]),
                ManifestDefect::BadSlot(0),
            ),
            (
                wire(vec![entry(3, "Auth", Some(v(1, 1)))]),
                ManifestDefect::BadSlot(0),
            ),
            (wire(vec![entry(1, H, None)]), ManifestDefect::BadVersion(0)),
            (
                wire(vec![entry(1, H, Some(v(8, 1)))]),
                ManifestDefect::BadVersion(0),
            ),
        ];
        for (bytes, defect) in cases {
            assert_eq!(Manifest::decode(&bytes, 7), Err(defect.clone()), "{defect}");
        }
        // Over the entry limit: refused after decoding the (size-capped) bytes.
        let many: Vec<Entry> = (0..=MAX_ENTRIES)
            .map(|i| entry(1, &format!("{i:032x}"), Some(v(1, 1))))
            .collect();
        assert_eq!(
            Manifest::decode(&wire(many), 7),
            Err(ManifestDefect::TooManyEntries(MAX_ENTRIES + 1))
        );
    }
}
