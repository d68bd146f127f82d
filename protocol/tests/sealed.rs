//! Sealed model bundles: round trips at the chunking edges, a 64 MiB model
//! streamed through a temporary file, the format rebuilt by hand from the
//! spec with raw ring, and one test per attack (truncation, reordering,
//! extension, splicing, bit flips in every region, wrong key, header edits),
//! each asserting the specific error and that no unauthenticated plaintext
//! is released.

use std::cell::Cell;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::rc::Rc;

use proptest::prelude::*;
use protocol::sealed::{
    self, BundleHeader, BundleMeta, DEFAULT_CHUNK_SIZE, KeyId, MAX_CHUNK_SIZE, ModelKey, OpenError,
    PlaintextDigest, SealError, StreamOpener, StreamSealer, TAG_LEN,
};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};

const CS: u32 = 4096;
const CSU: usize = CS as usize;

fn key() -> ModelKey {
    ModelKey::from_bytes([0x11; 32])
}

fn other_key() -> ModelKey {
    ModelKey::from_bytes([0x22; 32])
}

fn meta() -> BundleMeta {
    BundleMeta {
        model_id: "digits-cnn".into(),
        version: "1.0.0".into(),
        created: 1_767_225_600,
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    digest(&SHA256, bytes).as_ref().try_into().unwrap()
}

fn seal_small(pt: &[u8]) -> Vec<u8> {
    sealed::seal_bytes(pt, &key(), &meta(), CS).unwrap()
}

fn header_len(bundle: &[u8]) -> usize {
    BundleHeader::parse(bundle).unwrap().1
}

/// Byte range of chunk `i` (ciphertext + tag) in `bundle`.
fn chunk_range(bundle: &[u8], i: usize) -> std::ops::Range<usize> {
    let (h, start) = BundleHeader::parse(bundle).unwrap();
    let cs = h.chunk_size() as usize;
    let n = h.chunk_count() as usize;
    assert!(i < n);
    let begin = start + i * (cs + TAG_LEN);
    let len = if i + 1 < n {
        cs
    } else {
        h.plaintext_len() as usize - (n - 1) * cs
    };
    begin..begin + len + TAG_LEN
}

/// Open `bundle` both ways; assert both fail with the same error, that
/// `open_to_vec` released nothing, and that streaming `open` wrote only a
/// prefix of whole authenticated non-final chunks of `pt`. Returns the error.
fn open_fails(bundle: &[u8], key: &ModelKey, pt: &[u8]) -> OpenError {
    let to_vec = sealed::open_to_vec(bundle, key, u64::MAX);
    let Err(err) = to_vec else {
        panic!("open_to_vec accepted a bad bundle");
    };
    let mut written = Vec::new();
    let streamed = sealed::open(bundle, &mut written, key).unwrap_err();
    assert_eq!(format!("{err:?}"), format!("{streamed:?}"));
    assert!(
        pt.starts_with(&written),
        "streaming open wrote bytes that are not the model"
    );
    assert_eq!(written.len() % CSU, 0, "a partial chunk was released");
    assert!(
        written.len() < pt.len().max(1),
        "the final chunk was released"
    );
    err
}

fn open_ok(bundle: &[u8], key: &ModelKey) -> Vec<u8> {
    let (pt, summary) = sealed::open_to_vec(bundle, key, u64::MAX).unwrap();
    let mut streamed = Vec::new();
    let summary2 = sealed::open(bundle, &mut streamed, key).unwrap();
    assert_eq!(pt, streamed);
    assert_eq!(summary.plaintext_sha256, sha(&pt));
    assert_eq!(summary.sealed_len, bundle.len() as u64);
    assert_eq!(summary2.header, summary.header);
    pt
}

#[test]
fn round_trip_at_chunking_edges() {
    for len in [0, 1, CSU - 1, CSU, CSU + 1, 5 * CSU + 7] {
        let pt = pattern(len, len as u64);
        let bundle = seal_small(&pt);
        let chunks = if len == 0 { 1 } else { len.div_ceil(CSU) };
        assert_eq!(
            bundle.len(),
            header_len(&bundle) + len + chunks * TAG_LEN,
            "len {len}"
        );
        assert_eq!(open_ok(&bundle, &key()), pt, "len {len}");

        // The Read + Seek two-pass path gives a bundle of the same shape
        // (a different nonce prefix, so different bytes) and a true summary.
        let mut out = Vec::new();
        let summary = sealed::seal(Cursor::new(&pt), &mut out, &key(), &meta(), CS).unwrap();
        assert_eq!(out.len(), bundle.len());
        assert_ne!(out, bundle, "nonce prefix must be fresh per bundle");
        assert_eq!(summary.sealed_len, out.len() as u64);
        assert_eq!(summary.sealed_sha256, sha(&out));
        assert_eq!(summary.plaintext_sha256, sha(&pt));
        assert_eq!(summary.plaintext_len, len as u64);
        assert_eq!(summary.header.chunk_count(), chunks as u64);
        assert_eq!(summary.header.as_bytes(), &out[..header_len(&out)]);
        assert_eq!(open_ok(&out, &key()), pt);
    }
}

#[test]
fn seal_starts_at_the_readers_position() {
    let pt = pattern(10_000, 3);
    let mut reader = Cursor::new(&pt);
    reader.seek(SeekFrom::Start(1000)).unwrap();
    let mut out = Vec::new();
    sealed::seal(&mut reader, &mut out, &key(), &meta(), CS).unwrap();
    assert_eq!(open_ok(&out, &key()), &pt[1000..]);
}

#[test]
fn read_header_lists_without_a_key_and_stops_at_the_first_chunk() {
    let pt = pattern(2 * CSU + 5, 4);
    let bundle = seal_small(&pt);
    let mut r = Cursor::new(&bundle);
    let h = sealed::read_header(&mut r).unwrap();
    assert_eq!(r.position() as usize, h.as_bytes().len());
    assert_eq!(h.format_version(), 1);
    assert_eq!(h.model_id(), "digits-cnn");
    assert_eq!(h.model_version(), "1.0.0");
    assert_eq!(h.created(), 1_767_225_600);
    assert_eq!(h.plaintext_len(), pt.len() as u64);
    assert_eq!(h.plaintext_sha256(), &sha(&pt));
    assert_eq!(h.chunk_size(), CS);
    assert_eq!(h.chunk_count(), 3);
    assert_eq!(h.key_id(), key().key_id());
    assert_eq!(h.sealed_len(), bundle.len() as u64);
    assert_eq!(h.digest(), &sha(h.as_bytes()));
}

/// Rebuild the body from the spec with raw ring (nonce = prefix ‖ u32 BE i
/// ‖ last flag, AAD = SHA-256 of the header bytes) and compare, in both
/// directions: our bundle opens by hand, and a hand-made bundle opens with
/// our code.
#[test]
fn body_matches_the_spec_built_with_raw_ring() {
    let pt = pattern(3 * CSU + 100, 5);
    let bundle = seal_small(&pt);
    let (h, start) = BundleHeader::parse(&bundle).unwrap();
    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key().expose()).unwrap());
    let nonce = |i: u32, last: bool| {
        let mut n = [0u8; 12];
        n[..7].copy_from_slice(h.nonce_prefix());
        n[7..11].copy_from_slice(&i.to_be_bytes());
        n[11] = u8::from(last);
        Nonce::assume_unique_for_key(n)
    };
    let aad = sha(&bundle[..start]);
    let mut by_hand = bundle[..start].to_vec();
    for (i, chunk) in pt.chunks(CSU).enumerate() {
        let last = i == 3;
        let mut c = bundle[chunk_range(&bundle, i)].to_vec();
        let opened = raw
            .open_in_place(nonce(i as u32, last), Aad::from(aad), &mut c)
            .unwrap();
        assert_eq!(opened, chunk);

        let mut mine = chunk.to_vec();
        raw.seal_in_place_append_tag(nonce(i as u32, last), Aad::from(aad), &mut mine)
            .unwrap();
        by_hand.extend_from_slice(&mine);
    }
    assert_eq!(
        by_hand, bundle,
        "same key, header and nonces give the same bytes"
    );
    assert_eq!(open_ok(&by_hand, &key()), pt);

    // The key id is SHA-256("cca-ml key id" ‖ key)[..16].
    let mut id_input = b"cca-ml key id".to_vec();
    id_input.extend_from_slice(key().expose());
    assert_eq!(h.key_id().as_bytes(), &sha(&id_input)[..16]);
}

/// A `Read + Seek` that generates `len` bytes on demand (nothing stored),
/// publishing its current position.
struct Generator {
    len: u64,
    pos: u64,
    table: Vec<u8>,
    position: Rc<Cell<u64>>,
}

impl Generator {
    fn new(len: u64, position: Rc<Cell<u64>>) -> Self {
        Self {
            len,
            pos: 0,
            table: pattern(65_537, 9),
            position,
        }
    }
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Odd-sized reads, never more than 100 000 bytes, to exercise refilling.
        let n = buf.len().min(100_003).min((self.len - self.pos) as usize);
        let mut done = 0;
        while done < n {
            let at = ((self.pos + done as u64) % self.table.len() as u64) as usize;
            let take = (n - done).min(self.table.len() - at);
            buf[done..done + take].copy_from_slice(&self.table[at..at + take]);
            done += take;
        }
        self.pos += n as u64;
        self.position.set(self.pos);
        Ok(n)
    }
}

impl Seek for Generator {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        match to {
            SeekFrom::Start(p) => self.pos = p.min(self.len),
            SeekFrom::Current(0) => {}
            _ => return Err(std::io::Error::other("only Start(_) and Current(0)")),
        }
        self.position.set(self.pos);
        Ok(self.pos)
    }
}

/// A writer that keeps only a hash and notes, at its first two writes, how
/// far its paired reader had got.
struct ProgressWriter {
    hash: ring::digest::Context,
    written: u64,
    writes: u64,
    reader_pos_at_writes: Vec<u64>,
    reader_pos: Rc<Cell<u64>>,
}

impl ProgressWriter {
    fn new(reader_pos: Rc<Cell<u64>>) -> Self {
        Self {
            hash: ring::digest::Context::new(&SHA256),
            written: 0,
            writes: 0,
            reader_pos_at_writes: Vec::new(),
            reader_pos,
        }
    }
}

impl Write for ProgressWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.reader_pos_at_writes.len() < 2 {
            self.reader_pos_at_writes.push(self.reader_pos.get());
        }
        self.hash.update(buf);
        self.written += buf.len() as u64;
        self.writes += 1;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts bytes read through it.
struct CountingReader<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self(std::env::temp_dir().join(format!(
            "protocol-sealed-{tag}-{}-{nanos}.bundle",
            std::process::id()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const BIG: u64 = 64 << 20;

/// 64 MiB generated lazily, sealed to a file, opened from the file into a
/// writer that stores nothing: both directions make progress chunk by
/// chunk instead of reading the whole input first.
#[test]
fn sixty_four_mib_streams_through_a_temp_file() {
    let expected = PlaintextDigest::compute(Generator::new(BIG, Rc::default())).unwrap();
    assert_eq!(expected.len, BIG);

    let file = TempFile::new("64m");
    let gen_pos = Rc::new(Cell::new(0));
    let mut sink = ProgressWriter::new(gen_pos.clone());
    // Wrap the file writer so we can watch progress and still hit the disk.
    struct Tee<'a>(std::io::BufWriter<std::fs::File>, &'a mut ProgressWriter);
    impl Write for Tee<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.0.write(buf)?;
            self.1.write_all(&buf[..n])?;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush()
        }
    }
    let out = std::io::BufWriter::new(std::fs::File::create(&file.0).unwrap());
    let mut generator = Generator::new(BIG, gen_pos.clone());
    let summary = sealed::seal(
        &mut generator,
        Tee(out, &mut sink),
        &key(),
        &meta(),
        DEFAULT_CHUNK_SIZE,
    )
    .unwrap();
    assert_eq!(summary.plaintext_sha256, expected.sha256);
    assert_eq!(summary.plaintext_len, BIG);
    assert_eq!(summary.header.chunk_count(), 64);
    assert_eq!(
        std::fs::metadata(&file.0).unwrap().len(),
        summary.sealed_len
    );
    assert_eq!(sink.written, summary.sealed_len);
    // The first (hashing) pass reads everything before anything is
    // written; then the reader is sought back to 0, the header is written,
    // and each chunk is written after reading just that chunk.
    assert_eq!(sink.reader_pos_at_writes, [0, 1 << 20]);
    assert!(sink.writes >= 64, "one write per chunk at least");

    let read_count = Rc::new(Cell::new(0));
    let reader = CountingReader {
        inner: std::fs::File::open(&file.0).unwrap(),
        count: read_count.clone(),
    };
    let mut plain = ProgressWriter::new(read_count.clone());
    let opened = sealed::open(reader, &mut plain, &key()).unwrap();
    assert_eq!(plain.written, BIG);
    assert_eq!(sha_of(plain.hash), expected.sha256);
    assert_eq!(opened.plaintext_sha256, expected.sha256);
    // The first plaintext was written after reading the header and one
    // chunk, not the whole file.
    let first = plain.reader_pos_at_writes[0];
    assert!(
        first <= 200 + (1 << 20) + 16,
        "first write after reading {first} bytes"
    );
    assert_eq!(plain.writes, 64);
}

fn sha_of(ctx: ring::digest::Context) -> [u8; 32] {
    ctx.finish().as_ref().try_into().unwrap()
}

/// The one-pass path takes a reader that cannot seek, and `open_to_vec`
/// honours its size cap before reading any chunk.
#[test]
fn sixty_four_mib_one_pass_through_a_cursor() {
    struct NoSeek(Generator);
    impl Read for NoSeek {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    let expected = PlaintextDigest::compute(Generator::new(BIG, Rc::default())).unwrap();
    let mut bundle = Cursor::new(Vec::new());
    let summary = sealed::seal_prehashed(
        NoSeek(Generator::new(BIG, Rc::default())),
        &mut bundle,
        &key(),
        &meta(),
        DEFAULT_CHUNK_SIZE,
        &expected,
    )
    .unwrap();
    let bundle = bundle.into_inner();
    assert_eq!(summary.sealed_sha256, sha(&bundle));

    let count = Rc::new(Cell::new(0));
    let err = sealed::open_to_vec(
        CountingReader {
            inner: &bundle[..],
            count: count.clone(),
        },
        &key(),
        BIG - 1,
    )
    .unwrap_err();
    assert!(matches!(err, OpenError::TooLarge { declared: BIG, max } if max == BIG - 1));
    assert_eq!(
        count.get() as usize,
        header_len(&bundle),
        "no chunk was read"
    );

    let (pt, _) = sealed::open_to_vec(&bundle[..], &key(), BIG).unwrap();
    assert_eq!(pt.len() as u64, BIG);
    assert_eq!(sha(&pt), expected.sha256);
}

// ---------------------------------------------------------------- attacks

/// 5 full chunks and a final chunk of 7 bytes.
fn six_chunks() -> (Vec<u8>, Vec<u8>) {
    let pt = pattern(5 * CSU + 7, 42);
    let bundle = seal_small(&pt);
    (pt, bundle)
}

#[test]
fn truncation_is_detected() {
    let (pt, b) = six_chunks();
    // Drop the final chunk: the bundle ends on a chunk boundary.
    let cut = chunk_range(&b, 5).start;
    assert!(matches!(
        open_fails(&b[..cut], &key(), &pt),
        OpenError::Truncated {
            expected_chunks: 6,
            got: 5
        }
    ));
    // Cut in the middle of chunk 2.
    let mid = chunk_range(&b, 2).start + 100;
    assert!(matches!(
        open_fails(&b[..mid], &key(), &pt),
        OpenError::Truncated {
            expected_chunks: 6,
            got: 2
        }
    ));
    // Cut inside the final chunk's tag.
    assert!(matches!(
        open_fails(&b[..b.len() - 1], &key(), &pt),
        OpenError::Truncated {
            expected_chunks: 6,
            got: 5
        }
    ));
    // Header only.
    assert!(matches!(
        open_fails(&b[..header_len(&b)], &key(), &pt),
        OpenError::Truncated {
            expected_chunks: 6,
            got: 0
        }
    ));
    // Inside the header, and nothing at all.
    assert!(matches!(
        open_fails(&b[..50], &key(), &pt),
        OpenError::MalformedHeader(_)
    ));
    assert!(matches!(
        open_fails(&[], &key(), &pt),
        OpenError::MalformedHeader(_)
    ));
}

#[test]
fn truncation_to_a_full_chunk_boundary_with_equal_chunks() {
    // All chunks full-size: dropping the last leaves a bundle whose last
    // chunk looks complete but was sealed as "not final".
    let pt = pattern(3 * CSU, 7);
    let b = seal_small(&pt);
    let cut = chunk_range(&b, 2).start;
    assert!(matches!(
        open_fails(&b[..cut], &key(), &pt),
        OpenError::Truncated {
            expected_chunks: 3,
            got: 2
        }
    ));
}

#[test]
fn reordering_is_detected() {
    let (pt, b) = six_chunks();
    let mut swapped = b.clone();
    let (r1, r2) = (chunk_range(&b, 1), chunk_range(&b, 2));
    swapped[r1.clone()].copy_from_slice(&b[r2.clone()]);
    swapped[r2].copy_from_slice(&b[r1]);
    assert!(matches!(
        open_fails(&swapped, &key(), &pt),
        OpenError::ChunkAuthentication { index: 1 }
    ));

    // Equal-size chunks: move the final chunk forward.
    let pt = pattern(3 * CSU, 8);
    let b = seal_small(&pt);
    let mut swapped = b.clone();
    let (r1, r2) = (chunk_range(&b, 1), chunk_range(&b, 2));
    swapped[r1.clone()].copy_from_slice(&b[r2.clone()]);
    swapped[r2].copy_from_slice(&b[r1]);
    assert!(matches!(
        open_fails(&swapped, &key(), &pt),
        OpenError::ChunkAuthentication { index: 1 }
    ));
}

#[test]
fn extension_is_detected() {
    let (pt, b) = six_chunks();
    // A copy of a genuine chunk appended.
    let mut ext = b.clone();
    ext.extend_from_slice(&b[chunk_range(&b, 0)]);
    assert!(matches!(
        open_fails(&ext, &key(), &pt),
        OpenError::TrailingData
    ));
    // Garbage, and a single byte.
    let mut ext = b.clone();
    ext.extend_from_slice(&[0u8; 4112]);
    assert!(matches!(
        open_fails(&ext, &key(), &pt),
        OpenError::TrailingData
    ));
    let mut ext = b.clone();
    ext.push(0);
    assert!(matches!(
        open_fails(&ext, &key(), &pt),
        OpenError::TrailingData
    ));

    // A longer bundle's next chunk appended to a shorter one sealed with
    // the same key: extra bytes ...
    let long_pt = pattern(4 * CSU, 10);
    let short = seal_small(&long_pt[..3 * CSU]);
    let long = seal_small(&long_pt);
    let mut ext = short.clone();
    ext.extend_from_slice(&long[chunk_range(&long, 3)]);
    assert!(matches!(
        open_fails(&ext, &key(), &long_pt),
        OpenError::TrailingData
    ));
    // ... and if the header is edited to announce it, the AAD changes.
    let (_, hl) = BundleHeader::parse(&ext).unwrap();
    let len_at = hl - 7 - 8 - 16 - 4 - 8; // plaintext length field
    ext[len_at..len_at + 8].copy_from_slice(&(4 * CS as u64).to_be_bytes());
    assert!(matches!(
        open_fails(&ext, &key(), &long_pt),
        OpenError::ChunkAuthentication { index: 0 }
    ));
}

#[test]
fn chunks_from_another_bundle_under_the_same_key_do_not_fit() {
    // Same key, same plaintext, same metadata: only the nonce prefix differs.
    let (pt, a) = six_chunks();
    let b = seal_small(&pt);
    assert_ne!(a, b);
    let mut spliced = a.clone();
    let r = chunk_range(&a, 2);
    spliced[r.clone()].copy_from_slice(&b[r]);
    assert!(matches!(
        open_fails(&spliced, &key(), &pt),
        OpenError::ChunkAuthentication { index: 2 }
    ));
    // A's header on B's body.
    let hl = header_len(&a);
    let mut spliced = a[..hl].to_vec();
    spliced.extend_from_slice(&b[hl..]);
    assert!(matches!(
        open_fails(&spliced, &key(), &pt),
        OpenError::ChunkAuthentication { index: 0 }
    ));
}

#[test]
fn wrong_key_is_refused_by_id_before_decryption() {
    let (pt, b) = six_chunks();
    let err = open_fails(&b, &other_key(), &pt);
    assert!(matches!(
        err,
        OpenError::WrongKey { bundle, given }
            if bundle == key().key_id() && given == other_key().key_id()
    ));
    assert!(err.to_string().contains(&key().key_id().to_string()));
}

/// Offsets of the header fields for `meta()` ("digits-cnn", "1.0.0").
mod at {
    pub const MAGIC: usize = 0;
    pub const LEN: usize = 8;
    pub const VERSION: usize = 12;
    pub const MODEL_ID: usize = 16;
    pub const SHA: usize = 33;
    pub const PT_LEN: usize = 65;
    pub const CHUNK_SIZE: usize = 73;
    pub const KEY_ID: usize = 77;
    pub const CREATED: usize = 93;
    pub const NONCE: usize = 101;
    pub const END: usize = 108;
}

fn flipped(b: &[u8], byte: usize, bit: u8) -> Vec<u8> {
    let mut out = b.to_vec();
    out[byte] ^= 1 << bit;
    out
}

#[test]
fn a_bit_flip_in_each_region_fails_its_own_check() {
    let (pt, b) = six_chunks();
    assert_eq!(header_len(&b), at::END);
    let fails = |byte: usize, bit: u8| open_fails(&flipped(&b, byte, bit), &key(), &pt);
    use OpenError::*;
    assert!(matches!(fails(at::MAGIC + 3, 0), BadMagic));
    assert!(matches!(fails(at::LEN, 0), HeaderTooLarge { .. }));
    assert!(matches!(fails(at::LEN + 3, 0), MalformedHeader(_)));
    assert!(matches!(fails(at::VERSION + 1, 1), UnsupportedVersion(3)));
    // Every header byte is in the AAD: a change that still parses fails
    // authentication of chunk 0.
    for byte in [
        at::MODEL_ID,
        at::SHA + 31,
        at::PT_LEN + 7,
        at::CHUNK_SIZE + 3,
        at::CREATED + 7,
        at::NONCE,
        at::NONCE + 6,
    ] {
        assert!(
            matches!(fails(byte, 0), ChunkAuthentication { index: 0 }),
            "header byte {byte}"
        );
    }
    assert!(matches!(fails(at::KEY_ID + 5, 2), WrongKey { .. }));
    // Ciphertext and tag of a middle chunk and of the final chunk.
    let r3 = chunk_range(&b, 3);
    assert!(matches!(
        fails(r3.start + 17, 4),
        ChunkAuthentication { index: 3 }
    ));
    assert!(matches!(
        fails(r3.end - 1, 7),
        ChunkAuthentication { index: 3 }
    ));
    let r5 = chunk_range(&b, 5);
    assert!(matches!(
        fails(r5.start, 0),
        ChunkAuthentication { index: 5 }
    ));
    assert!(matches!(
        fails(r5.end - 16, 0),
        ChunkAuthentication { index: 5 }
    ));
}

#[test]
fn every_single_bit_flip_fails() {
    // One chunk: every bit of the bundle.
    let pt = pattern(100, 11);
    let b = seal_small(&pt);
    for byte in 0..b.len() {
        for bit in 0..8 {
            open_fails(&flipped(&b, byte, bit), &key(), &pt);
        }
    }
    // Two chunks: one bit in every byte (the bit rotates with the offset).
    let pt = pattern(CSU + 5, 12);
    let b = seal_small(&pt);
    for byte in 0..b.len() {
        open_fails(&flipped(&b, byte, (byte % 8) as u8), &key(), &pt);
    }
}

#[test]
fn header_claiming_another_model_fails_authentication() {
    let (pt, b) = six_chunks();
    // Same length id, one letter changed.
    let mut edited = b.clone();
    edited[at::MODEL_ID..at::MODEL_ID + 10].copy_from_slice(b"digits-cnX");
    assert!(matches!(
        open_fails(&edited, &key(), &pt),
        OpenError::ChunkAuthentication { index: 0 }
    ));
    assert_eq!(
        sealed::read_header(&edited[..]).unwrap().model_id(),
        "digits-cnX",
        "the edited header parses; only authentication catches it"
    );
    // A longer id, with both length prefixes fixed up.
    let hl = header_len(&b);
    let mut body = b[12..hl].to_vec();
    body.splice(2..14, [&[0u8, 15][..], b"fraud-model-v99"].concat());
    let mut edited = b"CCAMLSB1".to_vec();
    edited.extend_from_slice(&(body.len() as u32).to_be_bytes());
    edited.extend_from_slice(&body);
    edited.extend_from_slice(&b[hl..]);
    assert_eq!(
        sealed::read_header(&edited[..]).unwrap().model_id(),
        "fraud-model-v99"
    );
    assert!(matches!(
        open_fails(&edited, &key(), &pt),
        OpenError::ChunkAuthentication { index: 0 }
    ));
    // With a different key too, the key id check comes first.
    assert!(matches!(
        open_fails(&edited, &other_key(), &pt),
        OpenError::WrongKey { .. }
    ));
}

/// A key holder can build a bundle whose chunks authenticate but whose
/// header states the wrong plaintext hash; opening still refuses it and
/// never releases the final chunk.
#[test]
fn inconsistent_header_hash_is_refused() {
    let pt = pattern(2 * CSU + 3, 13);
    let lie = PlaintextDigest {
        sha256: [0xEE; 32],
        len: pt.len() as u64,
    };
    let header = BundleHeader::new(&meta(), &lie, CS, key().key_id()).unwrap();
    let mut sealer = StreamSealer::new(&key(), &header).unwrap();
    let mut b = header.as_bytes().to_vec();
    for chunk in pt.chunks(CSU) {
        let mut c = chunk.to_vec();
        let tag = sealer.encrypt_chunk(&mut c).unwrap();
        b.extend_from_slice(&c);
        b.extend_from_slice(&tag);
    }
    assert_eq!(sealer.next_chunk_len(), None);
    assert!(matches!(
        open_fails(&b, &key(), &pt),
        OpenError::PlaintextHashMismatch
    ));

    // And seal_prehashed refuses to write such a bundle in the first place.
    let mut out = Vec::new();
    let err = sealed::seal_prehashed(&pt[..], &mut out, &key(), &meta(), CS, &lie).unwrap_err();
    assert!(matches!(err, SealError::InputMismatch(m) if m.contains("hash")));
    assert!(sealed::open_to_vec(&out[..], &key(), u64::MAX).is_err());
}

#[test]
fn seal_notices_input_that_changes_between_passes() {
    /// Yields `a` until sought back to a position, then `b`.
    struct Changing {
        a: Cursor<Vec<u8>>,
        b: Vec<u8>,
        sought: bool,
    }
    impl Read for Changing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.a.read(buf)
        }
    }
    impl Seek for Changing {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            if !self.sought && matches!(to, SeekFrom::Start(_)) {
                self.sought = true;
                self.a = Cursor::new(self.b.clone());
            }
            self.a.seek(to)
        }
    }
    let pt = pattern(3 * CSU, 14);
    let cases: [(Vec<u8>, &str); 3] = [
        (pt[..pt.len() - 1].to_vec(), "shorter"),
        ([&pt[..], b"x"].concat(), "longer"),
        (flipped(&pt, 9000, 0), "hash"),
    ];
    for (changed, what) in cases {
        let reader = Changing {
            a: Cursor::new(pt.clone()),
            b: changed,
            sought: false,
        };
        let mut out = Vec::new();
        let err = sealed::seal(reader, &mut out, &key(), &meta(), CS).unwrap_err();
        assert!(
            matches!(&err, SealError::InputMismatch(m) if m.contains(what)),
            "{err}"
        );
        assert!(sealed::open_to_vec(&out[..], &key(), u64::MAX).is_err());
    }
}

#[test]
fn seal_refuses_bad_parameters() {
    let m = meta();
    for cs in [0, 4095, MAX_CHUNK_SIZE + 1] {
        assert!(matches!(
            sealed::seal_bytes(b"x", &key(), &m, cs),
            Err(SealError::InvalidChunkSize { chunk_size }) if chunk_size == cs
        ));
    }
    let long_id = BundleMeta {
        model_id: "x".repeat(129),
        ..meta()
    };
    assert!(matches!(
        sealed::seal_bytes(b"x", &key(), &long_id, CS),
        Err(SealError::InvalidMeta(_))
    ));
    let long_version = BundleMeta {
        version: "1".repeat(65),
        ..meta()
    };
    assert!(matches!(
        sealed::seal_bytes(b"x", &key(), &long_version, CS),
        Err(SealError::InvalidMeta(_))
    ));
    let header = sealed::read_header(&seal_small(b"x")[..]).unwrap();
    assert!(matches!(
        StreamSealer::new(&other_key(), &header),
        Err(SealError::KeyMismatch)
    ));
}

#[test]
fn stream_opener_enforces_order_length_and_end() {
    let pt = pattern(CSU + 9, 15);
    let b = seal_small(&pt);
    let header = sealed::read_header(&b[..]).unwrap();
    let mut opener = StreamOpener::new(&key(), &header).unwrap();
    assert_eq!(opener.next_chunk_len(), Some(CSU + TAG_LEN));
    let mut c0 = b[chunk_range(&b, 0)].to_vec();
    assert_eq!(opener.decrypt_chunk(&mut c0).unwrap(), &pt[..CSU]);
    assert!(opener.next_is_final());
    assert!(!opener.is_finished());
    let mut c1 = b[chunk_range(&b, 1)].to_vec();
    assert_eq!(opener.decrypt_chunk(&mut c1).unwrap(), &pt[CSU..]);
    assert!(opener.is_finished());
    assert!(matches!(
        opener.decrypt_chunk(&mut [0u8; 16]),
        Err(OpenError::TrailingData)
    ));

    // Wrong length, then the opener stays failed even for the right chunk.
    let mut opener = StreamOpener::new(&key(), &header).unwrap();
    let mut short = b[chunk_range(&b, 0)][..100].to_vec();
    assert!(matches!(
        opener.decrypt_chunk(&mut short),
        Err(OpenError::ChunkAuthentication { index: 0 })
    ));
    let mut c0 = b[chunk_range(&b, 0)].to_vec();
    assert!(opener.decrypt_chunk(&mut c0).is_err());

    // A failed tag leaves no plaintext in the buffer.
    let mut opener = StreamOpener::new(&key(), &header).unwrap();
    let mut bad = b[chunk_range(&b, 0)].to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(opener.decrypt_chunk(&mut bad).is_err());
    assert!(bad[..CSU].iter().all(|&x| x == 0));

    assert!(matches!(
        StreamOpener::new(&other_key(), &header),
        Err(OpenError::WrongKey { .. })
    ));
}

#[test]
fn io_errors_surface_as_io() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (_, b) = six_chunks();
    assert!(matches!(
        sealed::open(&b[..], Broken, &key()),
        Err(OpenError::Io(_))
    ));
    assert!(matches!(
        sealed::open(Broken, Vec::new(), &key()),
        Err(OpenError::Io(_))
    ));
    assert!(matches!(sealed::read_header(Broken), Err(OpenError::Io(_))));
    let d = PlaintextDigest::of_bytes(b"abc");
    assert!(matches!(
        sealed::seal_prehashed(&b"abc"[..], Broken, &key(), &meta(), CS, &d),
        Err(SealError::Io(_))
    ));
    assert!(matches!(
        sealed::seal_prehashed(Broken, Vec::new(), &key(), &meta(), CS, &d),
        Err(SealError::Io(_))
    ));
}

#[test]
fn key_debug_and_errors_never_show_key_bytes() {
    let k = ModelKey::from_bytes([0xAB; 32]);
    let shown = format!("{k:?}");
    assert!(
        !shown.contains("ab, ab") && !shown.contains("171"),
        "{shown}"
    );
    assert!(!shown.contains("abababab"), "{shown}");
    let id: KeyId = k.key_id();
    assert!(shown.contains(&id.to_string()));
}

// --------------------------------------------------------------- proptest

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = sealed::read_header(&bytes[..]);
        let _ = BundleHeader::parse(&bytes);
        prop_assert!(sealed::open_to_vec(&bytes[..], &key(), 1 << 20).is_err());
    }

    #[test]
    fn arbitrary_bytes_after_the_magic_never_panic(
        declared in 0u32..400,
        body in proptest::collection::vec(any::<u8>(), 0..700),
    ) {
        let mut bytes = b"CCAMLSB1".to_vec();
        bytes.extend_from_slice(&declared.to_be_bytes());
        bytes.extend_from_slice(&[0, 1]);
        bytes.extend_from_slice(&body);
        let _ = sealed::read_header(&bytes[..]);
        prop_assert!(sealed::open_to_vec(&bytes[..], &key(), 1 << 20).is_err());
    }

    #[test]
    fn a_valid_header_with_a_random_body_never_opens(
        len in 0usize..3 * CSU,
        tail in proptest::collection::vec(any::<u8>(), 0..3 * CSU),
    ) {
        let b = seal_small(&pattern(len, 1));
        let mut forged = b[..header_len(&b)].to_vec();
        forged.extend_from_slice(&tail);
        prop_assert!(sealed::open_to_vec(&forged[..], &key(), u64::MAX).is_err());
    }

    #[test]
    fn any_single_bit_flip_fails(
        len in 0usize..3 * CSU,
        seed in any::<u64>(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let pt = pattern(len, seed);
        let b = seal_small(&pt);
        let byte = at.index(b.len());
        open_fails(&flipped(&b, byte, bit), &key(), &pt);
    }

    #[test]
    fn any_truncation_fails(
        len in 0usize..3 * CSU,
        at in any::<prop::sample::Index>(),
    ) {
        let pt = pattern(len, 2);
        let b = seal_small(&pt);
        let cut = at.index(b.len());
        open_fails(&b[..cut], &key(), &pt);
    }

    #[test]
    fn round_trip(len in 0usize..5 * CSU, cs in prop::sample::select(vec![4096u32, 5000, 8192])) {
        let pt = pattern(len, len as u64);
        let b = sealed::seal_bytes(&pt, &key(), &meta(), cs).unwrap();
        let (out, _) = sealed::open_to_vec(&b[..], &key(), u64::MAX).unwrap();
        prop_assert_eq!(out, pt);
    }
}
