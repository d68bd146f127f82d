//! Keys as the Certifier Framework writes them (`key_message`), and the
//! signature algorithms it uses for claims:
//!
//! | algorithm string | scheme |
//! |---|---|
//! | `rsa-2048-sha256-pkcs-sign` | RSASSA-PKCS1-v1_5, SHA-256 (the framework's default) |
//! | `ecc-256-sha256-pkcs-sign` | ECDSA P-256 / SHA-256, ASN.1 DER signature |
//! | `ecc-384-sha384-pkcs-sign` | ECDSA P-384 / SHA-384, ASN.1 DER signature |
//!
//! Our own policy keys are P-256 by default (cheap to sign and verify);
//! RSA keys are accepted for interoperability with framework policies.

use num_bigint::BigUint;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey};
use thiserror::Error;

use super::der;
use super::proto::{EccMessage, KeyMessage, PointMessage, RsaMessage};

/// Signature algorithm names used in `signed_claim_message.signing_algorithm`.
pub mod alg {
    /// RSA PKCS#1 v1.5 with SHA-256.
    pub const RSA_2048_SHA256: &str = "rsa-2048-sha256-pkcs-sign";
    /// ECDSA P-256 with SHA-256.
    pub const ECC_256_SHA256: &str = "ecc-256-sha256-pkcs-sign";
    /// ECDSA P-384 with SHA-384.
    pub const ECC_384_SHA384: &str = "ecc-384-sha384-pkcs-sign";
}

/// Key errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key message lacks a field this key type needs.
    #[error("key_message is missing {0}")]
    Missing(&'static str),
    /// A key type we do not handle.
    #[error("unsupported key type {0:?}")]
    Unsupported(String),
    /// Key material that does not load.
    #[error("invalid key material: {0}")]
    Invalid(&'static str),
    /// Signing failed.
    #[error("signing failed")]
    Signing,
}

/// A public key a claim can be signed with or refer to.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum PublicKey {
    /// RSA modulus and exponent, unsigned big-endian, no leading zeros.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// P-256 uncompressed point.
    P256(Vec<u8>),
    /// P-384 uncompressed point.
    P384(Vec<u8>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublicKey::Rsa { n, .. } => write!(f, "Rsa({} bits)", n.len() * 8),
            PublicKey::P256(p) => write!(f, "P256({})", hex::encode(p)),
            PublicKey::P384(p) => write!(f, "P384({})", hex::encode(p)),
        }
    }
}

/// Unsigned big-endian bytes without leading zeros (the framework's form).
pub(crate) fn strip_leading_zeros(b: &[u8]) -> Vec<u8> {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b[i..].to_vec()
}

impl PublicKey {
    /// Read the public part of a `key_message` (private messages work too).
    pub fn from_key_message(k: &KeyMessage) -> Result<Self, KeyError> {
        let key_type = k.key_type.as_deref().ok_or(KeyError::Missing("key_type"))?;
        if key_type.starts_with("rsa-") {
            let rsa = k.rsa_key.as_ref().ok_or(KeyError::Missing("rsa_key"))?;
            let n = rsa
                .public_modulus
                .as_deref()
                .ok_or(KeyError::Missing("public_modulus"))?;
            let e = rsa
                .public_exponent
                .as_deref()
                .ok_or(KeyError::Missing("public_exponent"))?;
            return Ok(PublicKey::Rsa {
                n: strip_leading_zeros(n),
                e: strip_leading_zeros(e),
            });
        }
        let ecc = k.ecc_key.as_ref().ok_or(KeyError::Missing("ecc_key"))?;
        let point = ecc
            .public_point
            .as_ref()
            .ok_or(KeyError::Missing("public_point"))?;
        let x = point
            .x
            .as_deref()
            .ok_or(KeyError::Missing("public_point.x"))?;
        let y = point
            .y
            .as_deref()
            .ok_or(KeyError::Missing("public_point.y"))?;
        let (coord, make): (usize, fn(Vec<u8>) -> PublicKey) = match key_type {
            "ecc-256-public" | "ecc-256-private" => (32, PublicKey::P256),
            "ecc-384-public" | "ecc-384-private" => (48, PublicKey::P384),
            other => return Err(KeyError::Unsupported(other.to_string())),
        };
        if x.len() > coord || y.len() > coord {
            return Err(KeyError::Invalid("EC coordinate longer than the curve"));
        }
        // Coordinates may arrive without leading zeros; left-pad them.
        let mut p = vec![0x04];
        p.extend(std::iter::repeat_n(0, coord - x.len()));
        p.extend_from_slice(x);
        p.extend(std::iter::repeat_n(0, coord - y.len()));
        p.extend_from_slice(y);
        Ok(make(p))
    }

    /// An EC key from an uncompressed SEC1 point, by its length (65 bytes:
    /// P-256, 97 bytes: P-384). Certificates carry keys this way.
    pub fn from_ec_point(point: &[u8]) -> Option<Self> {
        match (point.len(), point.first()) {
            (65, Some(0x04)) => Some(PublicKey::P256(point.to_vec())),
            (97, Some(0x04)) => Some(PublicKey::P384(point.to_vec())),
            _ => None,
        }
    }

    /// A public `key_message` for this key.
    pub fn to_key_message(&self, name: &str) -> KeyMessage {
        let (key_type, rsa_key, ecc_key) = match self {
            PublicKey::Rsa { n, e } => (
                format!("rsa-{}-public", n.len() * 8),
                Some(RsaMessage {
                    public_modulus: Some(n.clone()),
                    public_exponent: Some(e.clone()),
                    ..Default::default()
                }),
                None,
            ),
            PublicKey::P256(p) | PublicKey::P384(p) => {
                let (bits, curve) = if matches!(self, PublicKey::P256(_)) {
                    (256, "P-256")
                } else {
                    (384, "P-384")
                };
                let c = (p.len() - 1) / 2;
                (
                    format!("ecc-{bits}-public"),
                    None,
                    Some(EccMessage {
                        curve_name: Some(curve.into()),
                        public_point: Some(PointMessage {
                            x: Some(p[1..1 + c].to_vec()),
                            y: Some(p[1 + c..].to_vec()),
                        }),
                        ..Default::default()
                    }),
                )
            }
        };
        KeyMessage {
            key_name: Some(name.into()),
            key_type: Some(key_type),
            key_format: Some("vse-key".into()),
            rsa_key,
            ecc_key,
            ..Default::default()
        }
    }

    /// DER SubjectPublicKeyInfo (EC keys only; RSA keys have no use for it here).
    pub fn ec_spki_der(&self) -> Option<Vec<u8>> {
        match self {
            PublicKey::P256(p) => Some(
                crate::cca::PlatformKey::from_point(crate::cca::Curve::P256, p)
                    .ok()?
                    .to_spki_der(),
            ),
            PublicKey::P384(p) => Some(
                crate::cca::PlatformKey::from_point(crate::cca::Curve::P384, p)
                    .ok()?
                    .to_spki_der(),
            ),
            PublicKey::Rsa { .. } => None,
        }
    }

    /// Verify `signature` over `message` with the named algorithm.
    pub fn verify(&self, algorithm: &str, message: &[u8], sig: &[u8]) -> bool {
        match (self, algorithm) {
            (PublicKey::Rsa { n, e }, alg::RSA_2048_SHA256) => {
                signature::RsaPublicKeyComponents { n, e }
                    .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                    .is_ok()
            }
            (PublicKey::P256(p), alg::ECC_256_SHA256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, p)
                    .verify(message, sig)
                    .is_ok()
            }
            (PublicKey::P384(p), alg::ECC_384_SHA384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_ASN1, p)
                    .verify(message, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// A private key that signs claims. `Debug` never shows key material.
pub enum SigningKey {
    /// ECDSA P-256.
    P256(EcdsaKeyPair),
    /// ECDSA P-384.
    P384(EcdsaKeyPair),
    /// RSA (2048 bits or more).
    Rsa(RsaKeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, <redacted>)", self.public_key())
    }
}

impl SigningKey {
    /// A fresh P-256 key and its PKCS#8 DER.
    pub fn generate_p256() -> Result<(Self, Vec<u8>), KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| KeyError::Signing)?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// Load a PKCS#8 key: EC P-256 or P-384 (our own policy keys), or RSA
    /// (a policy key imported from the Certifier Framework).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng)
        {
            return Ok(SigningKey::P256(k));
        }
        if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, der, &rng)
        {
            return Ok(SigningKey::P384(k));
        }
        RsaKeyPair::from_pkcs8(der)
            .map(SigningKey::Rsa)
            .map_err(|_| KeyError::Invalid("not a PKCS#8 P-256, P-384 or RSA key"))
    }

    /// Load a framework RSA private `key_message`. Files that carry only
    /// n, e, d (older framework keys) get their primes recovered.
    pub fn from_rsa_key_message(k: &KeyMessage) -> Result<Self, KeyError> {
        RsaKeyPair::from_der(&rsa_pkcs1_der(k)?)
            .map(SigningKey::Rsa)
            .map_err(|_| KeyError::Invalid("RSA key rejected"))
    }

    /// The PKCS#8 DER of a framework RSA private `key_message`, checked to
    /// load; this is how an imported framework policy key is stored.
    pub fn rsa_pkcs8_from_key_message(k: &KeyMessage) -> Result<Vec<u8>, KeyError> {
        let pkcs1 = rsa_pkcs1_der(k)?;
        RsaKeyPair::from_der(&pkcs1).map_err(|_| KeyError::Invalid("RSA key rejected"))?;
        // PrivateKeyInfo { version 0, rsaEncryption with NULL parameters, the PKCS#1 key }.
        let mut body = der::unsigned_integer(&[0]);
        body.extend_from_slice(&[
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ]);
        body.extend(der::tlv(0x04, &pkcs1));
        Ok(der::tlv(0x30, &body))
    }

    /// The signature algorithm string this key produces.
    pub fn algorithm(&self) -> &'static str {
        match self {
            SigningKey::P256(_) => alg::ECC_256_SHA256,
            SigningKey::P384(_) => alg::ECC_384_SHA384,
            SigningKey::Rsa(_) => alg::RSA_2048_SHA256,
        }
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        match self {
            SigningKey::P256(k) => PublicKey::P256(k.public_key().as_ref().to_vec()),
            SigningKey::P384(k) => PublicKey::P384(k.public_key().as_ref().to_vec()),
            SigningKey::Rsa(k) => {
                let comps: ring::rsa::PublicKeyComponents<Vec<u8>> = k.public().into();
                PublicKey::Rsa {
                    n: strip_leading_zeros(&comps.n),
                    e: strip_leading_zeros(&comps.e),
                }
            }
        }
    }

    /// Sign `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        match self {
            SigningKey::P256(k) | SigningKey::P384(k) => k
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Signing),
            SigningKey::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(|_| KeyError::Signing)?;
                Ok(sig)
            }
        }
    }
}

/// PKCS#1 RSAPrivateKey DER of a framework RSA private `key_message`, with
/// the CRT values computed (and the primes recovered when only n, e, d are
/// present, as in older framework files).
fn rsa_pkcs1_der(k: &KeyMessage) -> Result<Vec<u8>, KeyError> {
    let rsa = k.rsa_key.as_ref().ok_or(KeyError::Missing("rsa_key"))?;
    let get = |f: &Option<Vec<u8>>, name| {
        f.as_deref()
            .map(BigUint::from_bytes_be)
            .ok_or(KeyError::Missing(name))
    };
    let n = get(&rsa.public_modulus, "public_modulus")?;
    let e = get(&rsa.public_exponent, "public_exponent")?;
    let d = get(&rsa.private_exponent, "private_exponent")?;
    // Hostile files: bound the sizes before any arithmetic, and keep every
    // subtraction below from underflowing.
    let two = BigUint::from(2u8);
    if !(1024..=8192).contains(&n.bits()) || e < BigUint::from(3u8) || e >= n || d < two || d >= n {
        return Err(KeyError::Invalid("RSA n, e or d out of range"));
    }
    let (p, q) = match (&rsa.private_p, &rsa.private_q) {
        (Some(p), Some(q)) => (BigUint::from_bytes_be(p), BigUint::from_bytes_be(q)),
        _ => {
            recover_primes(&n, &e, &d).ok_or(KeyError::Invalid("cannot factor n from (n, e, d)"))?
        }
    };
    if p <= two || q <= two || &p * &q != n {
        return Err(KeyError::Invalid("RSA primes do not multiply to n"));
    }
    let one = BigUint::from(1u8);
    let dp = &d % (&p - &one);
    let dq = &d % (&q - &one);
    let qinv = q.modpow(&(&p - BigUint::from(2u8)), &p);
    Ok(rsa_private_key_der(&[
        &BigUint::from(0u8),
        &n,
        &e,
        &d,
        &p,
        &q,
        &dp,
        &dq,
        &qinv,
    ]))
}

/// Factor n given e and d (the standard randomized method of RFC 8017's
/// companion literature: write e*d - 1 = 2^t * r, try small bases).
fn recover_primes(n: &BigUint, e: &BigUint, d: &BigUint) -> Option<(BigUint, BigUint)> {
    let one = BigUint::from(1u8);
    let n_minus_1 = n - &one;
    let k = e * d - &one;
    let t = k.trailing_zeros()?;
    let r = &k >> t;
    for g in 2u32..200 {
        let mut x = BigUint::from(g).modpow(&r, n);
        if x == one || x == n_minus_1 {
            continue;
        }
        for _ in 0..t {
            let y = x.modpow(&BigUint::from(2u8), n);
            if y == one {
                let p = gcd(&(&x - &one), n);
                if p > one && &p < n {
                    let q = n / &p;
                    return Some(if p > q { (p, q) } else { (q, p) });
                }
                break;
            }
            if y == n_minus_1 {
                break;
            }
            x = y;
        }
    }
    None
}

fn gcd(a: &BigUint, b: &BigUint) -> BigUint {
    let (mut a, mut b) = (a.clone(), b.clone());
    while b != BigUint::from(0u8) {
        let r = &a % &b;
        a = b;
        b = r;
    }
    a
}

/// DER of PKCS#1 RSAPrivateKey: SEQUENCE of INTEGERs.
fn rsa_private_key_der(ints: &[&BigUint]) -> Vec<u8> {
    let body: Vec<u8> = ints
        .iter()
        .flat_map(|i| der::unsigned_integer(&i.to_bytes_be()))
        .collect();
    der::tlv(0x30, &body)
}
