//! The little DER this crate writes by hand: definite-length TLVs and
//! unsigned INTEGERs, for RSA key structures and certificate extension
//! values that no crate in use builds for us. Nothing here parses.

/// One TLV: `tag`, the definite length of `content`, `content`.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 0x80 {
        out.push(content.len() as u8);
    } else {
        let len: Vec<u8> = content
            .len()
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | len.len() as u8);
        out.extend_from_slice(&len);
    }
    out.extend_from_slice(content);
    out
}

/// An INTEGER holding the unsigned big-endian `value` (a zero byte is
/// prepended when the top bit is set, or when `value` is empty).
pub(crate) fn unsigned_integer(value: &[u8]) -> Vec<u8> {
    if value.first().is_none_or(|b| b & 0x80 != 0) {
        let mut v = Vec::with_capacity(value.len() + 1);
        v.push(0);
        v.extend_from_slice(value);
        tlv(0x02, &v)
    } else {
        tlv(0x02, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_integers_encode_as_der() {
        assert_eq!(tlv(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(long.len(), 304);
        assert_eq!(unsigned_integer(&[0x7f]), [0x02, 1, 0x7f]);
        assert_eq!(unsigned_integer(&[0x80]), [0x02, 2, 0, 0x80]);
        assert_eq!(unsigned_integer(&[]), [0x02, 1, 0]);
    }
}
