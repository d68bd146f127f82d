//! Sealed model bundles: a model encrypted at rest with AES-256-GCM in the
//! STREAM construction, so it can be published to an untrusted blob store,
//! sealed and opened in constant memory, and rejected if any byte was
//! flipped, any chunk moved, dropped or added, or the header edited.
//! The format is specified byte by byte in `docs/sealed-bundle.md`.
//!
//! ```text
//! "CCAMLSB1" | u32 BE header length | header body | chunk 0 | chunk 1 | ... | final chunk
//! chunk i = AES-256-GCM(key, nonce = prefix(7) ‖ u32 BE i ‖ last?1:0,
//!                       aad = SHA-256(header bytes), plaintext i) ‖ 16-byte tag
//! ```
//!
//! * Sealing: [`seal`] (two passes over a `Read + Seek` input: hash, then
//!   encrypt), [`seal_prehashed`] (one pass when the digest is known),
//!   [`seal_bytes`] (small in-memory models).
//! * Opening: [`open_to_vec`] releases nothing unless the whole bundle
//!   verified; [`open`] streams in constant memory and writes only
//!   authenticated chunks, but its output is **untrusted until it returns
//!   `Ok`** (write to a temporary file, rename on success).
//! * Listing: [`read_header`] needs no key.
//! * Sans-IO chunk layer for other I/O models (async): [`StreamSealer`],
//!   [`StreamOpener`].
//!
//! This module must never release plaintext from a chunk that did not
//! authenticate, never treat a bundle as complete before its final-flagged
//! chunk authenticated and the input ended, never allocate by an
//! unchecked length (the header is capped, chunk buffers are sized by the
//! validated chunk size), never panic on any input, never reuse a nonce
//! prefix (each header draws a fresh random one), and never print a key.
//! It does no I/O of its own beyond the `Read`/`Write`/`Seek` it is given.

mod error;
mod header;
mod key;
mod stream;

pub use error::{OpenError, SealError};
pub use header::{
    BundleHeader, BundleMeta, DEFAULT_CHUNK_SIZE, FORMAT_VERSION, MAGIC, MAX_CHUNK_SIZE,
    MAX_HEADER_BODY_LEN, MAX_MODEL_ID_LEN, MAX_VERSION_LEN, MIN_CHUNK_SIZE, NONCE_PREFIX_LEN,
    PlaintextDigest, read_header,
};
pub use key::{KEY_LEN, KeyId, ModelKey};
pub use stream::{
    OpenSummary, SealSummary, StreamOpener, StreamSealer, open, open_to_vec, seal, seal_bytes,
    seal_prehashed,
};

/// Length of the AES-256-GCM tag that ends every chunk.
pub const TAG_LEN: usize = 16;

/// Fill `buf` from `reader`, stopping early only at end of input. Returns
/// the number of bytes read (`< buf.len()` means the input ended).
fn read_full<R: std::io::Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A heap buffer that is zeroed when dropped (best effort, as for
/// [`ModelKey`]): chunk buffers hold plaintext.
struct WipeBuf(Vec<u8>);

impl WipeBuf {
    fn new(len: usize) -> Self {
        Self(vec![0; len])
    }
}

impl std::ops::Deref for WipeBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for WipeBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for WipeBuf {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrite with zeros; `black_box` discourages eliding the stores.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}
