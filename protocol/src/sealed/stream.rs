//! The bundle body: STREAM over AES-256-GCM, as a sans-IO chunk layer
//! ([`StreamSealer`], [`StreamOpener`]) and the streaming `Read`/`Write`
//! functions built on it ([`seal`], [`seal_prehashed`], [`seal_bytes`],
//! [`open`], [`open_to_vec`]).
//!
//! Chunk `i` of `n` is sealed with nonce `prefix ‖ u32 BE i ‖ flag`, where
//! the flag byte is 1 only for `i = n - 1`, and with the SHA-256 of the
//! header as AAD. A chunk therefore authenticates only at its own position,
//! in its own bundle, with its own "final or not" status: reordering,
//! splicing from another bundle, truncation at a chunk boundary and header
//! edits are all tag failures (or, for truncation, a missing final chunk).
//!
//! Nothing here may hand out plaintext from a chunk whose tag did not
//! verify, and the I/O functions must never read more than one chunk ahead
//! or buffer more than one chunk (except [`open_to_vec`], whose output is
//! the plaintext itself, capped by its caller).

use std::io::{Read, Seek, SeekFrom, Write};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::digest;

use super::error::{OpenError, SealError};
use super::header::{
    BundleHeader, BundleMeta, NONCE_PREFIX_LEN, PlaintextDigest, read_header, sha256_array,
};
use super::key::ModelKey;
use super::{TAG_LEN, WipeBuf, read_full, wipe};

/// What [`seal`] and friends produced.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SealSummary {
    /// SHA-256 of the plaintext (as written into the header).
    pub plaintext_sha256: [u8; 32],
    /// Plaintext length in bytes.
    pub plaintext_len: u64,
    /// Bytes written: the whole bundle.
    pub sealed_len: u64,
    /// SHA-256 of the whole bundle (its blob-store address).
    pub sealed_sha256: [u8; 32],
    /// The header that was written.
    pub header: BundleHeader,
}

/// What a successful [`open`] or [`open_to_vec`] verified.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OpenSummary {
    /// The bundle's header (every field authenticated by the chunk tags).
    pub header: BundleHeader,
    /// Plaintext bytes released.
    pub plaintext_len: u64,
    /// SHA-256 of the released plaintext; equal to the header's.
    pub plaintext_sha256: [u8; 32],
    /// Bytes of bundle consumed (header and chunks).
    pub sealed_len: u64,
}

fn chunk_nonce(prefix: &[u8; NONCE_PREFIX_LEN], index: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    // index < chunk_count <= 2^32, so it fits in a u32.
    nonce[NONCE_PREFIX_LEN..11].copy_from_slice(&(index as u32).to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::assume_unique_for_key(nonce)
}

fn aes_key(key: &ModelKey) -> Option<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, key.expose())
        .ok()
        .map(LessSafeKey::new)
}

/// Sans-IO encryptor for the chunks of one bundle.
///
/// Feed it the plaintext chunks in order, each exactly
/// [`next_chunk_len`](Self::next_chunk_len) bytes; it encrypts in place and
/// returns the tag to append. It refuses chunks of the wrong length and
/// chunks after the final one, so it cannot produce a body that disagrees
/// with its header's chunking. It does not hash the plaintext: the header's
/// SHA-256 is whatever the [`PlaintextDigest`] said ([`seal`] checks it).
pub struct StreamSealer {
    key: LessSafeKey,
    header: BundleHeader,
    next: u64,
}

impl std::fmt::Debug for StreamSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSealer")
            .field("key_id", &self.header.key_id())
            .field("next_chunk", &self.next)
            .field("chunks", &self.header.chunk_count())
            .finish_non_exhaustive()
    }
}

impl StreamSealer {
    /// Start sealing the body for `header` under `key`; fails with
    /// [`SealError::KeyMismatch`] when the header names another key.
    pub fn new(key: &ModelKey, header: &BundleHeader) -> Result<Self, SealError> {
        if header.key_id() != key.key_id() {
            return Err(SealError::KeyMismatch);
        }
        Ok(Self {
            key: aes_key(key).ok_or(SealError::Encrypt)?,
            header: header.clone(),
            next: 0,
        })
    }

    /// Plaintext length of the next chunk, or `None` once the final chunk
    /// has been sealed.
    pub fn next_chunk_len(&self) -> Option<usize> {
        (self.next < self.header.chunk_count()).then(|| self.header.chunk_plaintext_len(self.next))
    }

    /// `true` when the next chunk is the final one.
    pub fn next_is_final(&self) -> bool {
        self.next + 1 == self.header.chunk_count()
    }

    /// Encrypt the next chunk in place; returns its tag, which follows the
    /// ciphertext in the bundle.
    pub fn encrypt_chunk(&mut self, chunk: &mut [u8]) -> Result<[u8; TAG_LEN], SealError> {
        let expected = self
            .next_chunk_len()
            .ok_or(SealError::InputMismatch("a chunk after the final chunk"))?;
        if chunk.len() != expected {
            return Err(SealError::InputMismatch(
                "chunk length differs from the header's chunking",
            ));
        }
        let nonce = chunk_nonce(self.header.nonce_prefix(), self.next, self.next_is_final());
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(self.header.digest()), chunk)
            .map_err(|_| SealError::Encrypt)?;
        self.next += 1;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }
}

/// Sans-IO decryptor for the chunks of one bundle.
///
/// Give it each chunk (ciphertext and tag, exactly
/// [`next_chunk_len`](Self::next_chunk_len) bytes) in order; it returns the
/// plaintext only if the tag verifies at this position with this header.
/// After a failure it stays failed.
///
/// It authenticates chunks; it does **not** hash the plaintext against the
/// header's SHA-256, see if the input ends after the final chunk, or notice
/// a missing final chunk unless asked ([`is_finished`](Self::is_finished)).
/// [`open`] and [`open_to_vec`] do all of that; use this type only to build
/// an opener for another I/O model, and repeat those checks there.
pub struct StreamOpener {
    key: LessSafeKey,
    header: BundleHeader,
    next: u64,
    failed: bool,
}

impl std::fmt::Debug for StreamOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOpener")
            .field("key_id", &self.header.key_id())
            .field("next_chunk", &self.next)
            .field("chunks", &self.header.chunk_count())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl StreamOpener {
    /// Start opening the body that follows `header`; fails with
    /// [`OpenError::WrongKey`] before any decryption when the header names
    /// another key.
    pub fn new(key: &ModelKey, header: &BundleHeader) -> Result<Self, OpenError> {
        let given = key.key_id();
        if header.key_id() != given {
            return Err(OpenError::WrongKey {
                bundle: header.key_id(),
                given,
            });
        }
        Ok(Self {
            // AES_256_GCM accepts any 32-byte key; treat a refusal as a key mismatch.
            key: aes_key(key).ok_or(OpenError::WrongKey {
                bundle: header.key_id(),
                given,
            })?,
            header: header.clone(),
            next: 0,
            failed: false,
        })
    }

    /// Length (ciphertext + tag) of the next chunk, or `None` once the
    /// final chunk has been opened.
    pub fn next_chunk_len(&self) -> Option<usize> {
        (self.next < self.header.chunk_count())
            .then(|| self.header.chunk_plaintext_len(self.next) + TAG_LEN)
    }

    /// `true` when the next chunk is the final one.
    pub fn next_is_final(&self) -> bool {
        self.next + 1 == self.header.chunk_count()
    }

    /// Chunks opened so far.
    pub fn chunks_opened(&self) -> u64 {
        self.next
    }

    /// `true` once the final chunk has authenticated.
    pub fn is_finished(&self) -> bool {
        !self.failed && self.next == self.header.chunk_count()
    }

    /// Authenticate and decrypt the next chunk in place; returns the
    /// plaintext part of `chunk`. On failure the buffer holds no plaintext
    /// (ring zeroes it).
    pub fn decrypt_chunk<'a>(&mut self, chunk: &'a mut [u8]) -> Result<&'a mut [u8], OpenError> {
        let index = self.next;
        if self.failed {
            return Err(OpenError::ChunkAuthentication { index });
        }
        let Some(expected) = self.next_chunk_len() else {
            return Err(OpenError::TrailingData);
        };
        // A chunk of another length cannot be chunk `index` of this bundle.
        if chunk.len() != expected {
            self.failed = true;
            return Err(OpenError::ChunkAuthentication { index });
        }
        let nonce = chunk_nonce(self.header.nonce_prefix(), index, self.next_is_final());
        match self
            .key
            .open_in_place(nonce, Aad::from(self.header.digest()), chunk)
        {
            Ok(plaintext) => {
                self.next += 1;
                Ok(plaintext)
            }
            Err(_) => {
                self.failed = true;
                Err(OpenError::ChunkAuthentication { index })
            }
        }
    }
}

/// Seal everything from `reader`'s current position to its end.
///
/// Two passes, so memory stays at one chunk whatever the model size: the
/// header must state the plaintext's SHA-256 and length before the first
/// chunk, so the first pass hashes the input, then `reader` is sought back
/// and the second pass encrypts chunk by chunk, hashing again. If the input
/// changed in between (length or hash), sealing fails with
/// [`SealError::InputMismatch`] before the final chunk is written; the
/// partial output must be discarded (it can never open).
///
/// `chunk_size` must be within [`super::MIN_CHUNK_SIZE`]`..=`[`super::MAX_CHUNK_SIZE`];
/// [`super::DEFAULT_CHUNK_SIZE`] suits most models. A fresh random nonce
/// prefix is drawn for every bundle. `writer` is flushed on success; wrap
/// a file in a `BufWriter` only if you like, writes are whole chunks.
pub fn seal<R: Read + Seek, W: Write>(
    mut reader: R,
    writer: W,
    key: &ModelKey,
    meta: &BundleMeta,
    chunk_size: u32,
) -> Result<SealSummary, SealError> {
    let start = reader.stream_position()?;
    let digest = PlaintextDigest::compute(&mut reader)?;
    reader.seek(SeekFrom::Start(start))?;
    seal_prehashed(reader, writer, key, meta, chunk_size, &digest)
}

/// Seal `reader` in one pass when its length and SHA-256 are already known
/// (e.g. a content-addressed upload, or a pipe that cannot seek).
///
/// The plaintext is hashed again while it is encrypted; if it is shorter,
/// longer or hashes differently than `digest` says, this fails with
/// [`SealError::InputMismatch`] before the final chunk is written, so the
/// output never holds a complete bundle whose header lies.
pub fn seal_prehashed<R: Read, W: Write>(
    mut reader: R,
    mut writer: W,
    key: &ModelKey,
    meta: &BundleMeta,
    chunk_size: u32,
    digest: &PlaintextDigest,
) -> Result<SealSummary, SealError> {
    let header = BundleHeader::new(meta, digest, chunk_size, key.key_id())?;
    let mut sealer = StreamSealer::new(key, &header)?;
    let mut sealed_hash = digest::Context::new(&digest::SHA256);
    let mut plain_hash = digest::Context::new(&digest::SHA256);

    writer.write_all(header.as_bytes())?;
    sealed_hash.update(header.as_bytes());

    // The first chunk is the longest: min(chunk_size, plaintext_len).
    let mut buf = WipeBuf::new(header.chunk_plaintext_len(0) + TAG_LEN);
    while let Some(len) = sealer.next_chunk_len() {
        if read_full(&mut reader, &mut buf[..len])? < len {
            return Err(SealError::InputMismatch(
                "input is shorter than its digest's length (changed since it was hashed?)",
            ));
        }
        plain_hash.update(&buf[..len]);
        if sealer.next_is_final() {
            if read_full(&mut reader, &mut [0u8; 1])? != 0 {
                return Err(SealError::InputMismatch(
                    "input is longer than its digest's length (changed since it was hashed?)",
                ));
            }
            if sha256_array(plain_hash.clone().finish()) != digest.sha256 {
                return Err(SealError::InputMismatch(
                    "input does not hash to its digest's SHA-256 (changed since it was hashed?)",
                ));
            }
        }
        let tag = sealer.encrypt_chunk(&mut buf[..len])?;
        buf[len..len + TAG_LEN].copy_from_slice(&tag);
        writer.write_all(&buf[..len + TAG_LEN])?;
        sealed_hash.update(&buf[..len + TAG_LEN]);
    }
    writer.flush()?;
    Ok(SealSummary {
        plaintext_sha256: digest.sha256,
        plaintext_len: digest.len,
        sealed_len: header.sealed_len(),
        sealed_sha256: sha256_array(sealed_hash.finish()),
        header,
    })
}

/// Seal a small in-memory model; returns the whole bundle.
pub fn seal_bytes(
    plaintext: &[u8],
    key: &ModelKey,
    meta: &BundleMeta,
    chunk_size: u32,
) -> Result<Vec<u8>, SealError> {
    let digest = PlaintextDigest::of_bytes(plaintext);
    let mut out = Vec::new();
    seal_prehashed(plaintext, &mut out, key, meta, chunk_size, &digest)?;
    Ok(out)
}

/// Open a bundle from `reader`, streaming the plaintext into `writer` one
/// chunk at a time in constant memory (one chunk buffer, at most
/// 16 MiB + 16 bytes).
///
/// Only chunks whose tag verified are written, and the final chunk is
/// written only after the input has been seen to end and the plaintext
/// SHA-256 matched the header. Still, when this returns `Err` the writer
/// may already hold a verified **prefix** of the model (e.g. the bundle
/// was truncated or chunk 7 was tampered with): the caller must treat what
/// was written as untrusted until `open` returns `Ok`. Write to a
/// temporary file and rename it into place on success; delete it on error.
/// Use [`open_to_vec`] when the model fits in memory and nothing at all
/// may be released for a bad bundle.
///
/// `writer` is flushed on success.
pub fn open<R: Read, W: Write>(
    reader: R,
    mut writer: W,
    key: &ModelKey,
) -> Result<OpenSummary, OpenError> {
    let summary = open_chunks(reader, key, u64::MAX, |_, plaintext| {
        writer.write_all(plaintext)?;
        Ok(())
    })?;
    writer.flush()?;
    Ok(summary)
}

/// Open a bundle into memory, releasing nothing unless the whole bundle
/// verified: every chunk authenticated, the final-flagged chunk was last,
/// the input ended there, and the plaintext hashed to the header's SHA-256.
///
/// Fails with [`OpenError::TooLarge`] before reading any chunk when the
/// header announces more than `max_len` plaintext bytes. The buffer grows
/// only with authenticated data, and is wiped (best effort) on failure.
pub fn open_to_vec<R: Read>(
    reader: R,
    key: &ModelKey,
    max_len: u64,
) -> Result<(Vec<u8>, OpenSummary), OpenError> {
    let mut out = Vec::new();
    let result = open_chunks(reader, key, max_len, |header, plaintext| {
        if out.capacity() == 0 {
            // The first chunk authenticated, so the header is genuine and
            // its length (already checked against max_len) can be trusted.
            let total =
                usize::try_from(header.plaintext_len()).map_err(|_| OpenError::TooLarge {
                    declared: header.plaintext_len(),
                    max: usize::MAX as u64,
                })?;
            out.reserve_exact(total);
        }
        out.extend_from_slice(plaintext);
        Ok(())
    });
    match result {
        Ok(summary) => Ok((out, summary)),
        Err(e) => {
            wipe(&mut out);
            Err(e)
        }
    }
}

/// The opening loop shared by [`open`] and [`open_to_vec`]: header, key
/// id, then per chunk read → authenticate → hash → release, with the end
/// of input and the plaintext hash checked before the final chunk is
/// released.
fn open_chunks<R: Read>(
    mut reader: R,
    key: &ModelKey,
    max_len: u64,
    mut release: impl FnMut(&BundleHeader, &[u8]) -> Result<(), OpenError>,
) -> Result<OpenSummary, OpenError> {
    let header = read_header(&mut reader)?;
    if header.plaintext_len() > max_len {
        return Err(OpenError::TooLarge {
            declared: header.plaintext_len(),
            max: max_len,
        });
    }
    let mut opener = StreamOpener::new(key, &header)?;
    let mut plain_hash = digest::Context::new(&digest::SHA256);
    // The first chunk is the longest; its size is capped by MAX_CHUNK_SIZE.
    let mut buf = WipeBuf::new(header.chunk_plaintext_len(0) + TAG_LEN);
    while let Some(len) = opener.next_chunk_len() {
        if read_full(&mut reader, &mut buf[..len])? < len {
            return Err(OpenError::Truncated {
                expected_chunks: header.chunk_count(),
                got: opener.chunks_opened(),
            });
        }
        let is_final = opener.next_is_final();
        let plaintext = opener.decrypt_chunk(&mut buf[..len])?;
        plain_hash.update(plaintext);
        if is_final {
            if read_full(&mut reader, &mut [0u8; 1])? != 0 {
                return Err(OpenError::TrailingData);
            }
            if sha256_array(plain_hash.clone().finish()) != *header.plaintext_sha256() {
                return Err(OpenError::PlaintextHashMismatch);
            }
        }
        release(&header, plaintext)?;
    }
    Ok(OpenSummary {
        plaintext_len: header.plaintext_len(),
        plaintext_sha256: *header.plaintext_sha256(),
        sealed_len: header.sealed_len(),
        header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_prefix_counter_flag() {
        let prefix = [1, 2, 3, 4, 5, 6, 7];
        let n = chunk_nonce(&prefix, 0x0102_0304, false);
        assert_eq!(n.as_ref(), &[1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 0]);
        let n = chunk_nonce(&prefix, u64::from(u32::MAX), true);
        assert_eq!(
            n.as_ref(),
            &[1, 2, 3, 4, 5, 6, 7, 0xFF, 0xFF, 0xFF, 0xFF, 1]
        );
    }

    #[test]
    fn sealer_refuses_chunks_that_disagree_with_the_header() {
        let key = ModelKey::from_bytes([3; 32]);
        let meta = BundleMeta {
            model_id: "m".into(),
            version: "v".into(),
            created: 0,
        };
        let digest = PlaintextDigest::of_bytes(&[0; 5000]);
        let header = BundleHeader::new(&meta, &digest, 4096, key.key_id()).unwrap();
        let mut sealer = StreamSealer::new(&key, &header).unwrap();
        assert_eq!(sealer.next_chunk_len(), Some(4096));
        assert!(matches!(
            sealer.encrypt_chunk(&mut [0; 4095]),
            Err(SealError::InputMismatch(_))
        ));
        sealer.encrypt_chunk(&mut [0; 4096]).unwrap();
        assert!(sealer.next_is_final());
        assert_eq!(sealer.next_chunk_len(), Some(904));
        sealer.encrypt_chunk(&mut [0; 904]).unwrap();
        assert_eq!(sealer.next_chunk_len(), None);
        assert!(matches!(
            sealer.encrypt_chunk(&mut []),
            Err(SealError::InputMismatch(_))
        ));
    }

    #[test]
    fn wipe_zeroes() {
        let mut buf = WipeBuf::new(8);
        buf.copy_from_slice(b"plaintxt");
        wipe(&mut buf);
        assert_eq!(&buf[..], &[0; 8]);
    }
}
