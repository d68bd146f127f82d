//! Typed errors for sealing ([`SealError`]) and opening ([`OpenError`]) a
//! bundle. Each variant names the one check that failed, so a test (or an
//! operator reading a log line) can tell a truncated download from a wrong
//! key from a tampered chunk.

use thiserror::Error;

use super::key::KeyId;

/// Why a bundle could not be sealed.
///
/// After an error the writer may hold a partial bundle; discard it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SealError {
    /// The chunk size is outside [`super::MIN_CHUNK_SIZE`]`..=`[`super::MAX_CHUNK_SIZE`].
    #[error("chunk size {chunk_size} is outside 4 KiB..=16 MiB")]
    InvalidChunkSize {
        /// The refused chunk size.
        chunk_size: u32,
    },

    /// The model id or version cannot go into a header (empty or too long).
    #[error("invalid bundle metadata: {0}")]
    InvalidMeta(&'static str),

    /// The plaintext needs more than 2^32 chunks at this chunk size.
    #[error("a plaintext of {plaintext_len} bytes needs more than 2^32 chunks at this chunk size")]
    TooLarge {
        /// Length of the plaintext.
        plaintext_len: u64,
    },

    /// The input did not match what the header was built from: it changed
    /// between the hashing and the encrypting pass, it does not match the
    /// digest the caller supplied, or a chunk had the wrong length.
    #[error("input does not match the header: {0}")]
    InputMismatch(&'static str),

    /// A [`super::StreamSealer`] was given a header whose key id is not its key's.
    #[error("the header's key id is not the id of the sealing key")]
    KeyMismatch,

    /// The system random number generator failed (key or nonce prefix).
    #[error("the system random number generator failed")]
    Random,

    /// ring refused to encrypt (not expected with a valid key and chunk).
    #[error("AES-256-GCM encryption failed")]
    Encrypt,

    /// Reading the plaintext or writing the bundle failed.
    #[error("I/O error while sealing: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a bundle (or its header) was rejected.
///
/// Listed in the order the checks run: magic, header length, header
/// fields, key id, then chunk by chunk, then end of input and the
/// plaintext hash.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The input does not start with `CCAMLSB1`: not a sealed bundle.
    #[error("not a sealed model bundle (bad magic)")]
    BadMagic,

    /// The header's format version is not one this code reads.
    #[error("unsupported sealed-bundle format version {0}")]
    UnsupportedVersion(u16),

    /// The header length prefix declares more than [`super::MAX_HEADER_BODY_LEN`].
    #[error("header declares {declared} bytes, over the {max}-byte limit")]
    HeaderTooLarge {
        /// Length from the prefix.
        declared: u32,
        /// The limit.
        max: u32,
    },

    /// A header field is missing, oversize, not UTF-8 or out of range, or
    /// the header has bytes after its last field. The text names the field.
    #[error("malformed header: {0}")]
    MalformedHeader(&'static str),

    /// The bundle was sealed under a different key (checked by key id,
    /// before any decryption).
    #[error("bundle was sealed under key id {bundle}, but the key given has id {given}")]
    WrongKey {
        /// Key id from the bundle header.
        bundle: KeyId,
        /// Id of the key the caller supplied.
        given: KeyId,
    },

    /// Chunk `index` did not authenticate: a flipped bit, a chunk moved from
    /// another position or bundle, or a header (the AAD) that was edited.
    #[error("chunk {index} failed authentication")]
    ChunkAuthentication {
        /// 0-based position of the chunk.
        index: u64,
    },

    /// The input ended before the last chunk the header announces.
    #[error("bundle truncated: header announces {expected_chunks} chunks, {got} complete")]
    Truncated {
        /// Number of chunks from the header.
        expected_chunks: u64,
        /// Complete chunks that were read before the input ended.
        got: u64,
    },

    /// Bytes follow the final chunk (the bundle was extended).
    #[error("bytes follow the final chunk")]
    TrailingData,

    /// Every chunk authenticated but the plaintext does not hash to the
    /// header's SHA-256 (the bundle was built inconsistently by a key holder).
    #[error("plaintext SHA-256 differs from the header's")]
    PlaintextHashMismatch,

    /// The header announces a plaintext longer than the caller's limit.
    #[error("bundle announces {declared} plaintext bytes, over the {max}-byte limit")]
    TooLarge {
        /// Plaintext length from the header.
        declared: u64,
        /// The caller's limit.
        max: u64,
    },

    /// Reading the bundle or writing the plaintext failed.
    #[error("I/O error while opening: {0}")]
    Io(#[from] std::io::Error),
}
