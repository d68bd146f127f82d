//! The bundle header: its constants, the typed [`BundleHeader`], the
//! hand-written big-endian encoder and the pure parser behind
//! [`read_header`].
//!
//! The parser never allocates by a declared length before checking it
//! against a cap, never panics, and accepts exactly one encoding per header
//! (fixed field order, no optional fields, no trailing bytes), so the bytes
//! hashed into the AAD are the bytes that were parsed.

use std::io::Read;

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use super::error::{OpenError, SealError};
use super::key::KeyId;
use super::read_full;

/// The first 8 bytes of every sealed bundle.
pub const MAGIC: [u8; 8] = *b"CCAMLSB1";

/// The header format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Largest header body (after magic and length prefix) a reader accepts.
/// A version-1 body is at most 273 bytes; the slack lets a future version's
/// header be recognised (and refused by version) instead of by size.
pub const MAX_HEADER_BODY_LEN: u32 = 4096;

/// Longest model id, in UTF-8 bytes.
pub const MAX_MODEL_ID_LEN: usize = 128;

/// Longest model version string, in UTF-8 bytes.
pub const MAX_VERSION_LEN: usize = 64;

/// Smallest allowed chunk size (4 KiB).
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;

/// Largest allowed chunk size (16 MiB); bounds the reader's chunk buffer.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;

/// Chunk size used unless the caller picks another (1 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// Length of the per-bundle random nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 7;

/// Bytes of magic plus length prefix in front of the header body.
const PREAMBLE_LEN: usize = MAGIC.len() + 4;

/// Most chunks a bundle may have: the nonce counter is a `u32`.
const MAX_CHUNKS: u64 = 1 << 32;

/// What the caller says about the model being sealed. It is written into
/// the header in clear (authenticated, not encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleMeta {
    /// Model id: 1..=128 bytes of UTF-8.
    pub model_id: String,
    /// Model version: 1..=64 bytes of UTF-8.
    pub version: String,
    /// Creation time, Unix seconds.
    pub created: u64,
}

/// Length and SHA-256 of a plaintext: what the header must state before the
/// first chunk is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaintextDigest {
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
    /// Length of the plaintext in bytes.
    pub len: u64,
}

impl PlaintextDigest {
    /// Hash `reader` to its end (the first pass of [`super::seal`]).
    pub fn compute<R: Read>(mut reader: R) -> std::io::Result<Self> {
        let mut buf = super::WipeBuf::new(256 << 10);
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut len = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            ctx.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Self {
            sha256: sha256_array(ctx.finish()),
            len,
        })
    }

    /// Digest of an in-memory plaintext.
    pub fn of_bytes(plaintext: &[u8]) -> Self {
        Self {
            sha256: sha256_array(digest::digest(&digest::SHA256, plaintext)),
            len: plaintext.len() as u64,
        }
    }
}

pub(super) fn sha256_array(d: digest::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Number of chunks for a plaintext: `ceil(len / chunk_size)`, and exactly
/// one (empty) chunk for an empty plaintext. `None` above 2^32 chunks.
fn chunk_count(plaintext_len: u64, chunk_size: u32) -> Option<u64> {
    let n = if plaintext_len == 0 {
        1
    } else {
        (plaintext_len - 1) / u64::from(chunk_size) + 1
    };
    (n <= MAX_CHUNKS).then_some(n)
}

/// A parsed, validated bundle header.
///
/// The only constructors are [`BundleHeader::new`] (sealing) and
/// [`BundleHeader::parse`] / [`read_header`] (opening), so every value is a
/// header that passed all checks. It keeps the exact bytes it was parsed
/// from (or encoded to) and their SHA-256, which is the AAD of every chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleHeader {
    model_id: String,
    model_version: String,
    plaintext_sha256: [u8; 32],
    plaintext_len: u64,
    chunk_size: u32,
    key_id: KeyId,
    created: u64,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    chunk_count: u64,
    /// Magic, length prefix and body, exactly as on disk.
    bytes: Vec<u8>,
    /// SHA-256 of `bytes`: the AAD of every chunk.
    digest: [u8; 32],
}

impl BundleHeader {
    /// Build the header for sealing a plaintext described by `digest` under
    /// the key with id `key_id`, with a fresh random nonce prefix.
    pub fn new(
        meta: &BundleMeta,
        digest: &PlaintextDigest,
        chunk_size: u32,
        key_id: KeyId,
    ) -> Result<Self, SealError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(SealError::InvalidChunkSize { chunk_size });
        }
        check_text(&meta.model_id, MAX_MODEL_ID_LEN)
            .map_err(|_| SealError::InvalidMeta("model id must be 1..=128 bytes"))?;
        check_text(&meta.version, MAX_VERSION_LEN)
            .map_err(|_| SealError::InvalidMeta("model version must be 1..=64 bytes"))?;
        let chunk_count = chunk_count(digest.len, chunk_size).ok_or(SealError::TooLarge {
            plaintext_len: digest.len,
        })?;
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        SystemRandom::new()
            .fill(&mut nonce_prefix)
            .map_err(|_| SealError::Random)?;

        let mut body = Vec::with_capacity(96 + meta.model_id.len() + meta.version.len());
        body.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        put_text(&mut body, &meta.model_id);
        put_text(&mut body, &meta.version);
        body.extend_from_slice(&digest.sha256);
        body.extend_from_slice(&digest.len.to_be_bytes());
        body.extend_from_slice(&chunk_size.to_be_bytes());
        body.extend_from_slice(key_id.as_bytes());
        body.extend_from_slice(&meta.created.to_be_bytes());
        body.extend_from_slice(&nonce_prefix);

        // At most 273 bytes (checked caps above), so the cast cannot truncate.
        let body_len = body.len() as u32;
        let mut bytes = Vec::with_capacity(PREAMBLE_LEN + body.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&body_len.to_be_bytes());
        bytes.extend_from_slice(&body);
        let digest_of_header = sha256_array(digest::digest(&digest::SHA256, &bytes));
        Ok(Self {
            model_id: meta.model_id.clone(),
            model_version: meta.version.clone(),
            plaintext_sha256: digest.sha256,
            plaintext_len: digest.len,
            chunk_size,
            key_id,
            created: meta.created,
            nonce_prefix,
            chunk_count,
            bytes,
            digest: digest_of_header,
        })
    }

    /// Parse a header from the start of `input` (which may continue with
    /// chunks). Returns the header and the number of bytes it occupies.
    ///
    /// Pure: no I/O, no allocation beyond the (capped) header itself.
    pub fn parse(input: &[u8]) -> Result<(Self, usize), OpenError> {
        let magic_seen = &input[..input.len().min(MAGIC.len())];
        if magic_seen != &MAGIC[..magic_seen.len()] {
            return Err(OpenError::BadMagic);
        }
        let Some(len_bytes) = input.get(MAGIC.len()..PREAMBLE_LEN) else {
            return Err(OpenError::MalformedHeader(
                "input ends inside the header preamble",
            ));
        };
        let declared = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        if declared > MAX_HEADER_BODY_LEN {
            return Err(OpenError::HeaderTooLarge {
                declared,
                max: MAX_HEADER_BODY_LEN,
            });
        }
        let total = PREAMBLE_LEN + declared as usize;
        let Some(header_bytes) = input.get(..total) else {
            return Err(OpenError::MalformedHeader(
                "input ends inside the header body",
            ));
        };
        let header = Self::parse_body(header_bytes)?;
        Ok((header, total))
    }

    /// Parse the body of `bytes` (preamble already checked, length exact).
    fn parse_body(bytes: &[u8]) -> Result<Self, OpenError> {
        let mut r = Fields(&bytes[PREAMBLE_LEN..]);
        let version = r.u16("header ends inside the format version")?;
        if version != FORMAT_VERSION {
            return Err(OpenError::UnsupportedVersion(version));
        }
        let model_id = r.text(
            MAX_MODEL_ID_LEN,
            TextErrors {
                truncated: "header ends inside the model id",
                empty: "model id is empty",
                too_long: "model id is longer than 128 bytes",
                not_utf8: "model id is not UTF-8",
            },
        )?;
        let model_version = r.text(
            MAX_VERSION_LEN,
            TextErrors {
                truncated: "header ends inside the model version",
                empty: "model version is empty",
                too_long: "model version is longer than 64 bytes",
                not_utf8: "model version is not UTF-8",
            },
        )?;
        let plaintext_sha256 = r.array::<32>("header ends inside the plaintext SHA-256")?;
        let plaintext_len = r.u64("header ends inside the plaintext length")?;
        let chunk_size = r.u32("header ends inside the chunk size")?;
        let key_id = KeyId(r.array::<16>("header ends inside the key id")?);
        let created = r.u64("header ends inside the creation time")?;
        let nonce_prefix = r.array::<NONCE_PREFIX_LEN>("header ends inside the nonce prefix")?;
        if !r.0.is_empty() {
            return Err(OpenError::MalformedHeader(
                "trailing bytes after the last header field",
            ));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(OpenError::MalformedHeader(
                "chunk size is outside 4 KiB..=16 MiB",
            ));
        }
        let chunk_count = chunk_count(plaintext_len, chunk_size).ok_or(
            OpenError::MalformedHeader("plaintext length needs more than 2^32 chunks"),
        )?;
        Ok(Self {
            model_id,
            model_version,
            plaintext_sha256,
            plaintext_len,
            chunk_size,
            key_id,
            created,
            nonce_prefix,
            chunk_count,
            bytes: bytes.to_vec(),
            digest: sha256_array(digest::digest(&digest::SHA256, bytes)),
        })
    }

    /// Format version (always [`FORMAT_VERSION`] for a parsed header).
    pub fn format_version(&self) -> u16 {
        FORMAT_VERSION
    }

    /// Model id.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Model version.
    pub fn model_version(&self) -> &str {
        &self.model_version
    }

    /// SHA-256 of the plaintext, as claimed by the sealer (checked by
    /// [`super::open`] and [`super::open_to_vec`] once every chunk has authenticated).
    pub fn plaintext_sha256(&self) -> &[u8; 32] {
        &self.plaintext_sha256
    }

    /// Plaintext length in bytes.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Plaintext bytes per chunk (all chunks but the last).
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Id of the key the bundle was sealed under.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Creation time, Unix seconds (as claimed by the sealer).
    pub fn created(&self) -> u64 {
        self.created
    }

    /// The per-bundle random nonce prefix.
    pub fn nonce_prefix(&self) -> &[u8; NONCE_PREFIX_LEN] {
        &self.nonce_prefix
    }

    /// Number of chunks in the body (at least 1).
    pub fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    /// The header exactly as it appears at the start of the bundle (magic,
    /// length prefix, body).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of [`as_bytes`](Self::as_bytes): the AAD of every chunk.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Total bundle size: header, plaintext and one 16-byte tag per chunk.
    pub fn sealed_len(&self) -> u64 {
        // chunk_count <= 2^32 and plaintext_len <= 2^32 * 16 MiB = 2^56: no overflow.
        self.bytes.len() as u64 + self.plaintext_len + self.chunk_count * super::TAG_LEN as u64
    }

    /// Plaintext length of chunk `index` (which must be `< chunk_count`).
    pub(super) fn chunk_plaintext_len(&self, index: u64) -> usize {
        if index + 1 < self.chunk_count {
            self.chunk_size as usize
        } else {
            // The last chunk: what is left, 0..=chunk_size (fits in usize).
            (self.plaintext_len - (self.chunk_count - 1) * u64::from(self.chunk_size)) as usize
        }
    }
}

/// Read and parse a bundle header from `reader`, leaving it positioned at
/// the first chunk. Reads at most 12 + [`MAX_HEADER_BODY_LEN`] bytes and
/// needs no key: use it to list bundles.
pub fn read_header<R: Read>(mut reader: R) -> Result<BundleHeader, OpenError> {
    let mut preamble = [0u8; PREAMBLE_LEN];
    let got = read_full(&mut reader, &mut preamble)?;
    if got < PREAMBLE_LEN {
        // Reports BadMagic or "ends inside the preamble" as appropriate.
        return BundleHeader::parse(&preamble[..got]).map(|(h, _)| h);
    }
    let declared = u32::from_be_bytes([preamble[8], preamble[9], preamble[10], preamble[11]]);
    if preamble[..MAGIC.len()] != MAGIC {
        return Err(OpenError::BadMagic);
    }
    if declared > MAX_HEADER_BODY_LEN {
        return Err(OpenError::HeaderTooLarge {
            declared,
            max: MAX_HEADER_BODY_LEN,
        });
    }
    let mut bytes = vec![0u8; PREAMBLE_LEN + declared as usize];
    bytes[..PREAMBLE_LEN].copy_from_slice(&preamble);
    let got = read_full(&mut reader, &mut bytes[PREAMBLE_LEN..])?;
    if got < declared as usize {
        return Err(OpenError::MalformedHeader(
            "input ends inside the header body",
        ));
    }
    BundleHeader::parse_body(&bytes)
}

fn check_text(s: &str, max: usize) -> Result<(), ()> {
    if s.is_empty() || s.len() > max {
        Err(())
    } else {
        Ok(())
    }
}

/// u16 big-endian length, then the UTF-8 bytes (length already capped).
fn put_text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct TextErrors {
    truncated: &'static str,
    empty: &'static str,
    too_long: &'static str,
    not_utf8: &'static str,
}

/// Field reader over the header body: each read names the field it needs.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, truncated: &'static str) -> Result<&'a [u8], OpenError> {
        if self.0.len() < n {
            return Err(OpenError::MalformedHeader(truncated));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, truncated: &'static str) -> Result<[u8; N], OpenError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, truncated)?);
        Ok(out)
    }

    fn u16(&mut self, truncated: &'static str) -> Result<u16, OpenError> {
        self.array(truncated).map(u16::from_be_bytes)
    }

    fn u32(&mut self, truncated: &'static str) -> Result<u32, OpenError> {
        self.array(truncated).map(u32::from_be_bytes)
    }

    fn u64(&mut self, truncated: &'static str) -> Result<u64, OpenError> {
        self.array(truncated).map(u64::from_be_bytes)
    }

    /// A u16-length-prefixed UTF-8 string of 1..=`max` bytes. The length is
    /// checked against `max` before the bytes are taken.
    fn text(&mut self, max: usize, errors: TextErrors) -> Result<String, OpenError> {
        let len = usize::from(self.u16(errors.truncated)?);
        if len == 0 {
            return Err(OpenError::MalformedHeader(errors.empty));
        }
        if len > max {
            return Err(OpenError::MalformedHeader(errors.too_long));
        }
        let bytes = self.take(len, errors.truncated)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| OpenError::MalformedHeader(errors.not_utf8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> BundleMeta {
        BundleMeta {
            model_id: "digits-cnn".into(),
            version: "1.2.0".into(),
            created: 1_700_000_000,
        }
    }

    fn header(len: u64) -> BundleHeader {
        let digest = PlaintextDigest {
            sha256: [9; 32],
            len,
        };
        BundleHeader::new(&meta(), &digest, 4096, KeyId([5; 16])).unwrap()
    }

    #[test]
    fn layout_is_as_documented() {
        let h = header(10_000);
        let b = h.as_bytes();
        assert_eq!(&b[..8], b"CCAMLSB1");
        let body_len = u32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
        assert_eq!(b.len(), 12 + body_len);
        assert_eq!(&b[12..14], &[0, 1]);
        assert_eq!(&b[14..16], &[0, 10]);
        assert_eq!(&b[16..26], b"digits-cnn");
        assert_eq!(&b[26..28], &[0, 5]);
        assert_eq!(&b[28..33], b"1.2.0");
        assert_eq!(&b[33..65], &[9; 32]);
        assert_eq!(&b[65..73], &10_000u64.to_be_bytes());
        assert_eq!(&b[73..77], &4096u32.to_be_bytes());
        assert_eq!(&b[77..93], &[5; 16]);
        assert_eq!(&b[93..101], &1_700_000_000u64.to_be_bytes());
        assert_eq!(&b[101..108], h.nonce_prefix());
        assert_eq!(b.len(), 108);
        assert_eq!(h.chunk_count(), 3);
        assert_eq!(h.chunk_plaintext_len(0), 4096);
        assert_eq!(h.chunk_plaintext_len(2), 10_000 - 8192);
        assert_eq!(h.sealed_len(), 108 + 10_000 + 3 * 16);
    }

    #[test]
    fn parse_inverts_new() {
        let h = header(0);
        assert_eq!(h.chunk_count(), 1);
        let mut input = h.as_bytes().to_vec();
        input.extend_from_slice(&[0xAA; 20]);
        let (parsed, used) = BundleHeader::parse(&input).unwrap();
        assert_eq!(used, h.as_bytes().len());
        assert_eq!(parsed, h);
        assert_eq!(read_header(&input[..]).unwrap(), h);
    }

    #[test]
    fn chunk_count_edges() {
        assert_eq!(chunk_count(0, 4096), Some(1));
        assert_eq!(chunk_count(1, 4096), Some(1));
        assert_eq!(chunk_count(4096, 4096), Some(1));
        assert_eq!(chunk_count(4097, 4096), Some(2));
        assert_eq!(chunk_count(4096 << 32, 4096), Some(1 << 32));
        assert_eq!(chunk_count((4096 << 32) + 1, 4096), None);
        assert_eq!(chunk_count(u64::MAX, MAX_CHUNK_SIZE), None);
    }

    #[test]
    fn new_refuses_bad_inputs() {
        let d = PlaintextDigest::of_bytes(b"x");
        let k = KeyId([0; 16]);
        for cs in [0, 4095, MAX_CHUNK_SIZE + 1] {
            assert!(matches!(
                BundleHeader::new(&meta(), &d, cs, k),
                Err(SealError::InvalidChunkSize { .. })
            ));
        }
        let mut m = meta();
        m.model_id = "m".repeat(129);
        assert!(matches!(
            BundleHeader::new(&m, &d, 4096, k),
            Err(SealError::InvalidMeta(_))
        ));
        m.model_id = "m".repeat(128);
        assert!(BundleHeader::new(&m, &d, 4096, k).is_ok());
        m.version = String::new();
        assert!(matches!(
            BundleHeader::new(&m, &d, 4096, k),
            Err(SealError::InvalidMeta(_))
        ));
        let huge = PlaintextDigest {
            sha256: [0; 32],
            len: (4096 << 32) + 1,
        };
        assert!(matches!(
            BundleHeader::new(&meta(), &huge, 4096, k),
            Err(SealError::TooLarge { .. })
        ));
    }

    /// Re-encode a header with the body patched by `f` (length prefix fixed up).
    fn patched(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut body = header(5).as_bytes()[12..].to_vec();
        f(&mut body);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn parse_err(bytes: &[u8]) -> OpenError {
        let from_slice = BundleHeader::parse(bytes).unwrap_err();
        let from_reader = read_header(bytes).unwrap_err();
        assert_eq!(format!("{from_slice}"), format!("{from_reader}"));
        from_slice
    }

    #[test]
    fn each_header_check_names_its_failure() {
        use OpenError::*;
        assert!(matches!(parse_err(b""), MalformedHeader(_)));
        assert!(matches!(parse_err(b"CCAML"), MalformedHeader(_)));
        assert!(matches!(parse_err(b"CCAMX"), BadMagic));
        assert!(matches!(parse_err(b"CCAMLSB2\0\0\0\x10"), BadMagic));
        assert!(matches!(
            parse_err(b"CCAMLSB1\0\0\x10\x01"),
            HeaderTooLarge {
                declared: 4097,
                max: 4096
            }
        ));
        assert!(
            matches!(parse_err(b"CCAMLSB1\0\0\0\x10\0\x01"), MalformedHeader(m) if m.contains("body"))
        );
        assert!(
            matches!(parse_err(b"CCAMLSB1\0\0\0\x01\0"), MalformedHeader(m) if m.contains("format version"))
        );
        assert!(matches!(
            parse_err(&patched(|b| b[..2].copy_from_slice(&2u16.to_be_bytes()))),
            UnsupportedVersion(2)
        ));
        assert!(matches!(
            parse_err(&patched(|b| b[..2].copy_from_slice(&0u16.to_be_bytes()))),
            UnsupportedVersion(0)
        ));
        assert!(matches!(
            parse_err(&patched(|b| b.push(0))),
            MalformedHeader(m) if m.contains("trailing")
        ));
        assert!(matches!(
            parse_err(&patched(|b| { b.pop(); })),
            MalformedHeader(m) if m.contains("nonce prefix")
        ));
        // model id length 129
        assert!(matches!(
            parse_err(&patched(|b| b[2..4].copy_from_slice(&129u16.to_be_bytes()))),
            MalformedHeader(m) if m.contains("longer than 128")
        ));
        assert!(matches!(
            parse_err(&patched(|b| b[2..4].copy_from_slice(&0u16.to_be_bytes()))),
            MalformedHeader(m) if m.contains("empty")
        ));
        assert!(matches!(
            parse_err(&patched(|b| b[4] = 0xFF)),
            MalformedHeader(m) if m.contains("model id is not UTF-8")
        ));
        // version length 65 (model id "digits-cnn" is 10 bytes: version prefix at 14)
        assert!(matches!(
            parse_err(&patched(|b| b[14..16].copy_from_slice(&65u16.to_be_bytes()))),
            MalformedHeader(m) if m.contains("longer than 64")
        ));
        assert!(matches!(
            parse_err(&patched(|b| b[16] = 0xC0)),
            MalformedHeader(m) if m.contains("version is not UTF-8")
        ));
        // chunk size at body offset 21 + 32 + 8 = 61
        assert!(matches!(
            parse_err(&patched(|b| b[61..65].copy_from_slice(&4095u32.to_be_bytes()))),
            MalformedHeader(m) if m.contains("chunk size")
        ));
        assert!(matches!(
            parse_err(&patched(|b| b[61..65].copy_from_slice(&(MAX_CHUNK_SIZE + 1).to_be_bytes()))),
            MalformedHeader(m) if m.contains("chunk size")
        ));
        // plaintext length at 53
        assert!(matches!(
            parse_err(&patched(|b| b[53..61].copy_from_slice(&u64::MAX.to_be_bytes()))),
            MalformedHeader(m) if m.contains("2^32 chunks")
        ));
    }
}
