//! Strict CBOR decoding for attestation evidence.
//!
//! `ciborium` decodes any well-formed CBOR, which is more than an attestation
//! token may contain. Before handing bytes to it we walk the encoding once and
//! enforce the rules the CCA token profile relies on:
//!
//! * exactly one item, no trailing bytes;
//! * definite lengths only (the profile's signed payloads are definite);
//! * every declared length or element count fits in the bytes that remain, so no
//!   allocation is ever sized by an attacker's length field;
//! * nesting no deeper than [`MAX_DEPTH`];
//! * no map holds the same key twice (checked on the decoded values, so `10`
//!   and a non-preferred encoding of `10` count as the same key).
//!
//! The walk is pure and never panics; it only reads the slice it is given.

use ciborium::value::Value;
use thiserror::Error;

/// Deepest nesting of arrays, maps and tags we accept. A CCA claims set needs 4
/// (map → sw-components array → component map → value); 16 leaves room for
/// COSE_Key and unknown claims without allowing stack-exhausting inputs.
pub const MAX_DEPTH: usize = 16;

/// Why a byte string is not acceptable CBOR for evidence.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CborError {
    /// The input ended in the middle of an item.
    #[error("truncated CBOR: item at offset {offset} needs more bytes than remain")]
    Truncated {
        /// Offset of the item head that could not be completed.
        offset: usize,
    },
    /// A string or container declares more content than the input holds.
    #[error(
        "CBOR length at offset {offset} declares {declared} bytes/items but only {available} bytes remain"
    )]
    LengthExceedsInput {
        /// Offset of the offending head.
        offset: usize,
        /// The declared length or element count.
        declared: u64,
        /// Bytes left in the input after the head.
        available: usize,
    },
    /// Indefinite-length strings, arrays or maps are not allowed.
    #[error("indefinite-length CBOR item at offset {offset} is not allowed in evidence")]
    IndefiniteLength {
        /// Offset of the indefinite-length head.
        offset: usize,
    },
    /// Reserved additional-information values 28..=30, or a bad simple value.
    #[error("malformed CBOR head at offset {offset}")]
    Malformed {
        /// Offset of the malformed head.
        offset: usize,
    },
    /// Containers nested deeper than [`MAX_DEPTH`].
    #[error("CBOR nesting deeper than {MAX_DEPTH} levels at offset {offset}")]
    TooDeep {
        /// Offset of the item that went too deep.
        offset: usize,
    },
    /// Bytes follow the single top-level item.
    #[error("{count} trailing bytes after the CBOR item")]
    TrailingBytes {
        /// How many bytes follow the item.
        count: usize,
    },
    /// A tag that has no place at this point of the token (e.g. a bignum
    /// where the profile wants a plain integer label).
    #[error("unexpected CBOR tag {tag} at offset {offset}")]
    UnexpectedTag {
        /// The tag number.
        tag: u64,
        /// Offset of the tag head.
        offset: usize,
    },
    /// A map contains the same key twice.
    #[error("CBOR map contains a duplicate key {key}")]
    DuplicateKey {
        /// The repeated key, in CBOR diagnostic-like form.
        key: String,
    },
    /// A text string is not valid UTF-8, or the decoder refused the item.
    #[error("CBOR decoding failed: {0}")]
    Decode(String),
}

/// Decode exactly one strict CBOR item from `bytes` (any tags allowed).
pub fn decode(bytes: &[u8]) -> Result<Value, CborError> {
    decode_inner(bytes, None)
}

/// Like [`decode`], but only the listed tags may appear anywhere in the item.
/// Token parsing uses this so that, say, a bignum (tag 2) cannot stand in for
/// an integer claim label: the decoder would quietly turn it into one.
pub fn decode_with_tags(bytes: &[u8], allowed: &[u64]) -> Result<Value, CborError> {
    decode_inner(bytes, Some(allowed))
}

fn decode_inner(bytes: &[u8], allowed: Option<&[u64]>) -> Result<Value, CborError> {
    let mut cursor = Cursor {
        bytes,
        pos: 0,
        allowed_tags: allowed,
    };
    cursor.item(0)?;
    let end = cursor.pos;
    if end != bytes.len() {
        return Err(CborError::TrailingBytes {
            count: bytes.len() - end,
        });
    }
    // Safe to hand over: every length is bounded by the input and the depth is small.
    let value: Value = ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH + 4)
        .map_err(|e| CborError::Decode(e.to_string()))?;
    reject_duplicate_keys(&value)?;
    Ok(value)
}

/// Walk one item starting at offset 0 and return the offset just past it.
///
/// This checks structure only (heads, lengths, depth); it does not build values.
pub fn check_well_formed(bytes: &[u8]) -> Result<usize, CborError> {
    let mut cursor = Cursor {
        bytes,
        pos: 0,
        allowed_tags: None,
    };
    cursor.item(0)?;
    Ok(cursor.pos)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    allowed_tags: Option<&'a [u64]>,
}

impl Cursor<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, head_offset: usize) -> Result<&[u8], CborError> {
        if n > self.remaining() {
            return Err(CborError::Truncated {
                offset: head_offset,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Read an item head: (major type, additional info, argument).
    fn head(&mut self) -> Result<(u8, u8, u64), CborError> {
        let offset = self.pos;
        let first = *self
            .take(1, offset)?
            .first()
            .ok_or(CborError::Truncated { offset })?;
        let major = first >> 5;
        let info = first & 0x1f;
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let len = 1usize << (info - 24);
                let raw = self.take(len, offset)?;
                raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
            }
            31 => return Err(CborError::IndefiniteLength { offset }),
            _ => return Err(CborError::Malformed { offset }),
        };
        Ok((major, info, arg))
    }

    fn item(&mut self, depth: usize) -> Result<(), CborError> {
        let offset = self.pos;
        if depth > MAX_DEPTH {
            return Err(CborError::TooDeep { offset });
        }
        let (major, info, arg) = self.head()?;
        let available = self.remaining();
        let too_long = |declared: u64| CborError::LengthExceedsInput {
            offset,
            declared,
            available,
        };
        match major {
            0 | 1 => Ok(()),
            2 | 3 => {
                let len = usize::try_from(arg).map_err(|_| too_long(arg))?;
                if len > available {
                    return Err(too_long(arg));
                }
                self.pos += len;
                Ok(())
            }
            4 | 5 => {
                // Every element takes at least one byte: a count larger than the
                // remaining input is a lie, whatever the elements turn out to be.
                let per = if major == 5 { 2 } else { 1 };
                let needed = arg.checked_mul(per).ok_or_else(|| too_long(arg))?;
                if needed > available as u64 {
                    return Err(too_long(arg));
                }
                for _ in 0..needed {
                    self.item(depth + 1)?;
                }
                Ok(())
            }
            6 => {
                if self
                    .allowed_tags
                    .is_some_and(|allowed| !allowed.contains(&arg))
                {
                    return Err(CborError::UnexpectedTag { tag: arg, offset });
                }
                self.item(depth + 1)
            }
            _ => match info {
                // false, true, null, undefined; half/single/double floats.
                20..=23 | 25..=27 => Ok(()),
                // Simple values 0..=19 are unassigned, and the two-byte form
                // (24) is either not well-formed (< 32) or unassigned. None
                // has a place in a token.
                _ => Err(CborError::Malformed { offset }),
            },
        }
    }
}

/// Reject any map (at any depth) that holds the same key twice.
///
/// Keys are compared by their preferred (re-)encoding in a hash set, so the
/// check is linear in the map size and `10` equals a non-preferred `10`.
fn reject_duplicate_keys(value: &Value) -> Result<(), CborError> {
    match value {
        Value::Map(entries) => {
            let mut seen = std::collections::HashSet::with_capacity(entries.len());
            for (key, v) in entries {
                let mut encoded = Vec::new();
                ciborium::ser::into_writer(key, &mut encoded)
                    .map_err(|e| CborError::Decode(e.to_string()))?;
                if !seen.insert(encoded) {
                    return Err(CborError::DuplicateKey {
                        key: describe_key(key),
                    });
                }
                reject_duplicate_keys(key)?;
                reject_duplicate_keys(v)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(reject_duplicate_keys),
        Value::Tag(_, inner) => reject_duplicate_keys(inner),
        _ => Ok(()),
    }
}

fn describe_key(key: &Value) -> String {
    match key {
        Value::Integer(i) => i128::from(*i).to_string(),
        Value::Text(t) => format!("{t:?}"),
        Value::Bytes(b) => format!("h'{}'", hex::encode(b)),
        _ => "(complex key)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_simple_items() {
        assert_eq!(decode(&[0x0a]).unwrap(), Value::Integer(10.into()));
        assert_eq!(decode(&[0x42, 1, 2]).unwrap(), Value::Bytes(vec![1, 2]));
        assert_eq!(
            decode(&[0xa1, 0x01, 0x02]).unwrap(),
            Value::Map(vec![(Value::Integer(1.into()), Value::Integer(2.into()))])
        );
    }

    #[test]
    fn rejects_trailing_bytes() {
        assert_eq!(
            decode(&[0x01, 0x00]),
            Err(CborError::TrailingBytes { count: 1 })
        );
    }

    #[test]
    fn rejects_indefinite_length() {
        assert_eq!(
            decode(&[0x9f, 0x01, 0xff]),
            Err(CborError::IndefiniteLength { offset: 0 })
        );
        assert_eq!(
            decode(&[0x5f, 0x41, 0x00, 0xff]),
            Err(CborError::IndefiniteLength { offset: 0 })
        );
    }

    #[test]
    fn rejects_declared_length_beyond_input() {
        // bstr of 2^32 bytes with 3 bytes present.
        let input = [0x5b, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3];
        assert!(matches!(
            decode(&input),
            Err(CborError::LengthExceedsInput {
                offset: 0,
                declared: 0x1_0000_0000,
                available: 3
            })
        ));
        // array claiming u64::MAX elements.
        let input = [0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0];
        assert!(matches!(
            decode(&input),
            Err(CborError::LengthExceedsInput { .. })
        ));
        // map whose 2*count overflows.
        let input = [0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            decode(&input),
            Err(CborError::LengthExceedsInput { .. })
        ));
    }

    #[test]
    fn rejects_deep_nesting() {
        let mut input = vec![0x81; 10_000];
        input.push(0x40);
        assert!(matches!(decode(&input), Err(CborError::TooDeep { .. })));
        let mut ok = vec![0x81; MAX_DEPTH];
        ok.push(0x40);
        assert!(decode(&ok).is_ok());
    }

    #[test]
    fn rejects_duplicate_keys_even_in_non_preferred_encoding() {
        assert_eq!(
            decode(&[0xa2, 0x0a, 0x00, 0x0a, 0x01]),
            Err(CborError::DuplicateKey { key: "10".into() })
        );
        // 0x18 0x0a is a (non-preferred) encoding of 10 as well.
        assert!(matches!(
            decode(&[0xa2, 0x0a, 0x00, 0x18, 0x0a, 0x01]),
            Err(CborError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn rejects_reserved_heads_and_truncation() {
        assert_eq!(decode(&[0x1c]), Err(CborError::Malformed { offset: 0 }));
        assert_eq!(decode(&[0xe0]), Err(CborError::Malformed { offset: 0 }));
        // Two-byte simple values: < 32 is not well-formed, >= 32 unassigned.
        assert_eq!(
            decode(&[0xf8, 0x14]),
            Err(CborError::Malformed { offset: 0 })
        );
        assert_eq!(
            decode(&[0xf8, 0x20]),
            Err(CborError::Malformed { offset: 0 })
        );
        assert_eq!(
            decode(&[0x19, 0x01]),
            Err(CborError::Truncated { offset: 0 })
        );
        assert_eq!(decode(&[]), Err(CborError::Truncated { offset: 0 }));
    }

    #[test]
    fn duplicate_check_is_fast_on_wide_maps() {
        // 16,000 distinct keys: quadratic comparison took ~0.1 s here; the
        // hash set makes it linear. Asserts the outcome, not the time.
        let n = 16_000usize;
        let mut v = vec![0xb9, (n >> 8) as u8, n as u8];
        for i in 0..n {
            v.extend([0x19, (i >> 8) as u8, i as u8, 0x00]);
        }
        assert!(decode(&v).is_ok());
        v.extend([0x19, 0, 5, 0]);
        v[1..3].copy_from_slice(&((n + 1) as u16).to_be_bytes());
        assert!(matches!(decode(&v), Err(CborError::DuplicateKey { .. })));
    }

    #[test]
    fn only_listed_tags_when_asked() {
        // {c2 41 0a: 0} — a bignum 10 as a map key.
        let bignum_label = [0xa1, 0xc2, 0x41, 0x0a, 0x00];
        assert!(decode(&bignum_label).is_ok());
        assert_eq!(
            decode_with_tags(&bignum_label, &[]),
            Err(CborError::UnexpectedTag { tag: 2, offset: 1 })
        );
        assert!(decode_with_tags(&[0xd2, 0x80], &[18]).is_ok());
        assert!(decode_with_tags(&[0xd3, 0x80], &[18]).is_err());
    }

    #[test]
    fn rejects_invalid_utf8_text() {
        assert!(matches!(
            decode(&[0x62, 0xff, 0xfe]),
            Err(CborError::Decode(_))
        ));
    }
}
