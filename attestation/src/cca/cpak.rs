//! The CCA platform attestation key (CPAK) a verifier trusts: loaded from a PEM
//! SubjectPublicKeyInfo or a JWK, P-256 or P-384.

use base64::Engine;
use thiserror::Error;

/// Elliptic curves a CPAK may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (ES256).
    P256,
    /// NIST P-384 (ES384).
    P384,
}

impl Curve {
    /// Length of an uncompressed SEC1 point.
    pub fn point_len(self) -> usize {
        match self {
            Curve::P256 => 65,
            Curve::P384 => 97,
        }
    }
    /// The COSE algorithm that uses this curve.
    pub fn cose_alg(self) -> &'static str {
        match self {
            Curve::P256 => "ES256",
            Curve::P384 => "ES384",
        }
    }
}

/// A trusted platform public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PlatformKey {
    curve: Curve,
    point: Vec<u8>,
}

impl std::fmt::Debug for PlatformKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PlatformKey({:?}, {})",
            self.curve,
            hex::encode(&self.point)
        )
    }
}

/// Why a key file could not be used as a CPAK.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Neither PEM nor JSON.
    #[error("unrecognised key format: expected a PEM 'PUBLIC KEY' (SPKI) or an EC JWK")]
    UnknownFormat,
    /// PEM that is not a public key.
    #[error("PEM block is '{0}'; expected 'PUBLIC KEY'")]
    WrongPemLabel(String),
    /// Malformed encoding.
    #[error("malformed key: {0}")]
    Malformed(String),
    /// A curve or key type we do not accept.
    #[error("unsupported key: {0} (need EC P-256 or P-384)")]
    Unsupported(String),
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

impl PlatformKey {
    /// Build from a raw uncompressed SEC1 point.
    pub fn from_point(curve: Curve, point: &[u8]) -> Result<Self, KeyError> {
        if point.len() != curve.point_len() || point.first() != Some(&0x04) {
            return Err(KeyError::Malformed(format!(
                "{curve:?} point must be {} bytes starting 0x04",
                curve.point_len()
            )));
        }
        Ok(Self {
            curve,
            point: point.to_vec(),
        })
    }

    /// Parse a key file: PEM SPKI or JWK (detected from the content).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let text = std::str::from_utf8(bytes).map_err(|_| KeyError::UnknownFormat)?;
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            Self::from_jwk(trimmed)
        } else if trimmed.starts_with("-----BEGIN") {
            Self::from_pem(trimmed)
        } else {
            Err(KeyError::UnknownFormat)
        }
    }

    /// Parse a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let block = pem::parse(text).map_err(|e| KeyError::Malformed(e.to_string()))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(KeyError::WrongPemLabel(block.tag().to_string()));
        }
        Self::from_spki_der(block.contents())
    }

    /// Parse a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        use x509_parser::prelude::FromDer;
        let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(KeyError::Malformed(
                "trailing bytes after SubjectPublicKeyInfo".into(),
            ));
        }
        let alg = spki.algorithm.algorithm.to_id_string();
        if alg != OID_EC_PUBLIC_KEY {
            return Err(KeyError::Unsupported(format!("algorithm {alg}")));
        }
        let curve_oid = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
            .ok_or_else(|| KeyError::Malformed("EC key without a named curve".into()))?;
        let curve = match curve_oid.as_str() {
            OID_P256 => Curve::P256,
            OID_P384 => Curve::P384,
            other => return Err(KeyError::Unsupported(format!("curve {other}"))),
        };
        Self::from_point(curve, &spki.subject_public_key.data)
    }

    /// Parse an EC JWK (`kty` EC, `crv` P-256 / P-384, base64url `x`, `y`).
    pub fn from_jwk(text: &str) -> Result<Self, KeyError> {
        #[derive(serde::Deserialize)]
        struct Jwk {
            kty: String,
            crv: String,
            x: String,
            y: String,
        }
        let jwk: Jwk =
            serde_json::from_str(text).map_err(|e| KeyError::Malformed(e.to_string()))?;
        if jwk.kty != "EC" {
            return Err(KeyError::Unsupported(format!("JWK kty {}", jwk.kty)));
        }
        let curve = match jwk.crv.as_str() {
            "P-256" => Curve::P256,
            "P-384" => Curve::P384,
            other => return Err(KeyError::Unsupported(format!("JWK crv {other}"))),
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let decode = |s: &str| {
            b64.decode(s)
                .map_err(|e| KeyError::Malformed(e.to_string()))
        };
        let (x, y) = (decode(&jwk.x)?, decode(&jwk.y)?);
        let coord = (curve.point_len() - 1) / 2;
        if x.len() != coord || y.len() != coord {
            return Err(KeyError::Malformed(format!(
                "JWK x and y must be {coord} bytes"
            )));
        }
        let mut point = vec![0x04];
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        Self::from_point(curve, &point)
    }

    /// The curve.
    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// The uncompressed SEC1 point.
    pub fn point(&self) -> &[u8] {
        &self.point
    }

    /// DER SubjectPublicKeyInfo of this key.
    pub fn to_spki_der(&self) -> Vec<u8> {
        spki_der(self.curve, &self.point)
    }

    /// PEM SubjectPublicKeyInfo of this key.
    pub fn to_pem(&self) -> String {
        pem_lf(&pem::Pem::new("PUBLIC KEY", self.to_spki_der()))
    }
}

/// PEM with Unix line endings (the `pem` crate defaults to CRLF).
pub(crate) fn pem_lf(block: &pem::Pem) -> String {
    pem::encode_config(
        block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// DER SubjectPublicKeyInfo for an EC point. The prefix is fixed per curve
/// (SEQUENCE { SEQUENCE { id-ecPublicKey, curve }, BIT STRING }).
pub(crate) fn spki_der(curve: Curve, point: &[u8]) -> Vec<u8> {
    const P256_PREFIX: &[u8] = &[
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    const P384_PREFIX: &[u8] = &[
        0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05,
        0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
    ];
    let prefix = match curve {
        Curve::P256 => P256_PREFIX,
        Curve::P384 => P384_PREFIX,
    };
    let mut der = prefix.to_vec();
    der.extend_from_slice(point);
    der
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = include_str!("../../testdata/cca/real/keys/cca_platform.pub.pem");
    const JWK: &str = include_str!("../../testdata/cca/real/keys/cpak.jwk.json");

    #[test]
    fn pem_and_jwk_of_the_same_key_agree() {
        let a = PlatformKey::from_file_bytes(PEM.as_bytes()).unwrap();
        let b = PlatformKey::from_file_bytes(JWK.as_bytes()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.curve(), Curve::P384);
        // Our SPKI encoder reproduces the file's DER.
        assert_eq!(PlatformKey::from_pem(&a.to_pem()).unwrap(), a);
        assert_eq!(a.to_pem().trim(), PEM.trim().replace("\r\n", "\n"));
    }

    #[test]
    fn rejects_other_inputs() {
        assert_eq!(
            PlatformKey::from_file_bytes(b"hello"),
            Err(KeyError::UnknownFormat)
        );
        let priv_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            PlatformKey::from_pem(priv_pem),
            Err(KeyError::WrongPemLabel(_))
        ));
        let rsa_jwk = r#"{"kty":"RSA","crv":"P-256","x":"","y":""}"#;
        assert!(matches!(
            PlatformKey::from_jwk(rsa_jwk),
            Err(KeyError::Unsupported(_))
        ));
        let short = r#"{"kty":"EC","crv":"P-384","x":"AAAA","y":"AAAA"}"#;
        assert!(matches!(
            PlatformKey::from_jwk(short),
            Err(KeyError::Malformed(_))
        ));
    }
}
