//! Bytes → typed CCA token. Pure: no I/O, no signature checks (see `verify`).
//!
//! Accepted forms:
//! * `#6.399({44234: bstr .cbor COSE_Sign1, 44241: bstr .cbor COSE_Sign1})` (RMM 1.0);
//! * `#6.907({...})`, where each entry is either such a bstr or a CMW record
//!   `[263, bstr]` (content format application/eat+cwt).
//!
//! Each COSE_Sign1 may be tagged (18) or untagged. Unknown claims are kept;
//! unknown tags, profiles, algorithms and critical headers are rejected.

use ciborium::value::Value;
use coset::{AsCborValue, CoseKey, CoseSign1, iana, iana::EnumI64};

use super::cbor;
use super::error::{ParseError, Part};
use super::types::*;

/// Largest token we read. Real tokens are 1-4 KiB (TF-RMM caps them at 4 KiB).
pub const MAX_TOKEN_SIZE: usize = 64 * 1024;

/// COSE signature algorithms we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// ECDSA P-256 / SHA-256 (platform tokens only).
    Es256,
    /// ECDSA P-384 / SHA-384.
    Es384,
}

impl SignatureAlgorithm {
    /// The COSE name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
        }
    }
}

/// One signed half of the token: the COSE_Sign1 and its decoded claims.
#[derive(Debug, Clone)]
pub struct Signed<C> {
    pub(crate) sign1: CoseSign1,
    pub(crate) algorithm: SignatureAlgorithm,
    pub(crate) tagged: bool,
    pub(crate) claims: C,
    /// SHA-256 of the COSE_Sign1 bytes as carried in the collection (sample
    /// platform tokens are recognised by it; see `test_material`).
    pub(crate) sha256: [u8; 32],
}

impl<C> Signed<C> {
    /// The decoded claims (not yet verified unless reached through `VerifiedCcaToken`).
    pub fn claims(&self) -> &C {
        &self.claims
    }
    /// The signature algorithm from the protected header.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }
    /// Whether the COSE_Sign1 carried tag 18.
    pub fn is_tagged(&self) -> bool {
        self.tagged
    }
    /// The bytes the signature covers (the COSE `Sig_structure`).
    pub(crate) fn to_be_signed(&self) -> Vec<u8> {
        self.sign1.tbs_data(b"")
    }
    /// The signature bytes.
    pub(crate) fn signature(&self) -> &[u8] {
        &self.sign1.signature
    }
    /// SHA-256 of this COSE_Sign1 exactly as it was carried in the token.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }
}

/// A decoded, *unverified* CCA attestation token.
#[derive(Debug, Clone)]
pub struct CcaToken {
    pub(crate) envelope: Envelope,
    pub(crate) platform: Signed<PlatformClaims>,
    pub(crate) realm: Signed<RealmClaims>,
}

impl CcaToken {
    /// The outer form.
    pub fn envelope(&self) -> Envelope {
        self.envelope
    }
    /// The platform half.
    pub fn platform(&self) -> &Signed<PlatformClaims> {
        &self.platform
    }
    /// The realm half.
    pub fn realm(&self) -> &Signed<RealmClaims> {
        &self.realm
    }
}

/// Decode a CCA attestation token.
pub fn parse(bytes: &[u8]) -> Result<CcaToken, ParseError> {
    if bytes.len() > MAX_TOKEN_SIZE {
        return Err(ParseError::TooLarge {
            size: bytes.len(),
            limit: MAX_TOKEN_SIZE,
        });
    }
    let top = cbor::decode_with_tags(bytes, &[TAG_CCA_TOKEN_399, TAG_CCA_TOKEN_907]).map_err(
        |source| match source {
            // The outermost tag is the envelope: name it as such.
            cbor::CborError::UnexpectedTag { tag, offset: 0 } => {
                ParseError::UnknownTag { found: Some(tag) }
            }
            source => ParseError::Cbor {
                part: Part::Collection,
                source,
            },
        },
    )?;
    let (envelope, inner) = match top {
        Value::Tag(TAG_CCA_TOKEN_399, inner) => (Envelope::Tag399, *inner),
        Value::Tag(TAG_CCA_TOKEN_907, inner) => (Envelope::Tag907, *inner),
        Value::Tag(other, _) => return Err(ParseError::UnknownTag { found: Some(other) }),
        _ => return Err(ParseError::UnknownTag { found: None }),
    };
    let Value::Map(entries) = inner else {
        return Err(ParseError::Collection("the tagged item is not a map"));
    };
    if entries.len() != 2 {
        return Err(ParseError::Collection(
            "the collection must hold exactly the platform (44234) and realm (44241) tokens",
        ));
    }
    let mut platform_bytes = None;
    let mut realm_bytes = None;
    for (key, value) in entries {
        let slot = match int_label(&key) {
            Some(LABEL_PLATFORM_TOKEN) => &mut platform_bytes,
            Some(LABEL_REALM_TOKEN) => &mut realm_bytes,
            _ => {
                return Err(ParseError::Collection(
                    "unexpected key; only 44234 (platform) and 44241 (realm) are allowed",
                ));
            }
        };
        *slot = Some(collection_entry(envelope, value)?);
    }
    let (Some(platform_bytes), Some(realm_bytes)) = (platform_bytes, realm_bytes) else {
        return Err(ParseError::Collection(
            "platform (44234) or realm (44241) token missing",
        ));
    };

    let platform = signed(Part::Platform, &platform_bytes, parse_platform_claims)?;
    let realm = signed(Part::Realm, &realm_bytes, parse_realm_claims)?;
    if realm.algorithm != SignatureAlgorithm::Es384 {
        return Err(ParseError::UnsupportedAlgorithm {
            part: Part::Realm,
            alg: realm.algorithm.name().to_string(),
        });
    }
    Ok(CcaToken {
        envelope,
        platform,
        realm,
    })
}

fn collection_entry(envelope: Envelope, value: Value) -> Result<Vec<u8>, ParseError> {
    match (envelope, value) {
        (_, Value::Bytes(b)) => Ok(b),
        (Envelope::Tag907, Value::Array(items)) => {
            let mut it = items.into_iter();
            match (it.next(), it.next(), it.next()) {
                (Some(Value::Integer(cf)), Some(Value::Bytes(b)), None)
                    if u64::try_from(cf).ok() == Some(CMW_CONTENT_FORMAT_EAT_CWT) =>
                {
                    Ok(b)
                }
                _ => Err(ParseError::Collection(
                    "a tag-907 entry must be a bstr or a CMW record [263, bstr]",
                )),
            }
        }
        _ => Err(ParseError::Collection(
            "each token in the collection must be a byte string",
        )),
    }
}

/// Turns a decoded claims map into typed claims.
type ClaimsParser<C> = fn(Vec<(Value, Value)>) -> Result<C, ParseError>;

fn signed<C>(part: Part, bytes: &[u8], claims: ClaimsParser<C>) -> Result<Signed<C>, ParseError> {
    let cose_err = |detail: String| ParseError::CoseStructure { part, detail };
    let value = cbor::decode_with_tags(bytes, &[coset::iana::CborTag::CoseSign1 as u64])
        .map_err(|source| ParseError::Cbor { part, source })?;
    let (tagged, value) = match value {
        Value::Tag(tag, inner) if tag == coset::iana::CborTag::CoseSign1 as u64 => (true, *inner),
        Value::Tag(tag, _) => return Err(cose_err(format!("unexpected tag {tag}; expected 18"))),
        other => (false, other),
    };
    let sign1 = CoseSign1::from_cbor_value(value).map_err(|e| cose_err(e.to_string()))?;
    // coset decodes the protected header itself; hold it to our rules as well.
    if let Some(raw) = sign1
        .protected
        .original_data
        .as_deref()
        .filter(|r| !r.is_empty())
    {
        cbor::decode_with_tags(raw, &[]).map_err(|source| ParseError::Cbor { part, source })?;
    }

    let critical: Vec<String> = sign1
        .protected
        .header
        .crit
        .iter()
        .chain(sign1.unprotected.crit.iter())
        .map(|l| format!("{l:?}"))
        .collect();
    if !critical.is_empty() {
        return Err(ParseError::CriticalHeader {
            part,
            labels: critical.join(", "),
        });
    }
    let algorithm = match &sign1.protected.header.alg {
        None => return Err(ParseError::AlgorithmNotProtected { part }),
        Some(coset::Algorithm::Assigned(iana::Algorithm::ES384)) => SignatureAlgorithm::Es384,
        Some(coset::Algorithm::Assigned(iana::Algorithm::ES256)) => SignatureAlgorithm::Es256,
        Some(other) => {
            return Err(ParseError::UnsupportedAlgorithm {
                part,
                alg: format!("{other:?}"),
            });
        }
    };
    // An algorithm repeated (or contradicted) outside the signed header is a
    // downgrade vector; the profile never puts it there.
    if sign1.unprotected.alg.is_some() {
        return Err(cose_err(
            "algorithm repeated in the unprotected header".into(),
        ));
    }
    let payload = sign1
        .payload
        .as_deref()
        .ok_or(ParseError::MissingPayload { part })?;
    let claims_value =
        cbor::decode_with_tags(payload, &[]).map_err(|source| ParseError::Cbor { part, source })?;
    let Value::Map(entries) = claims_value else {
        return Err(cose_err("payload is not a claims map".into()));
    };
    let claims = claims(entries)?;
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    Ok(Signed {
        sign1,
        algorithm,
        tagged,
        claims,
        sha256,
    })
}

fn int_label(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => i64::try_from(*i).ok(),
        _ => None,
    }
}

/// Veraison name of a realm claim label (for errors and JSON).
pub fn realm_claim_name(label: i64) -> &'static str {
    match label {
        label::PROFILE => "cca-realm-profile",
        label::CHALLENGE => "cca-realm-challenge",
        label::REALM_PERSONALIZATION_VALUE => "cca-realm-personalization-value",
        label::REALM_HASH_ALGO_ID => "cca-realm-hash-algo-id",
        label::REALM_PUBLIC_KEY => "cca-realm-public-key",
        label::REALM_INITIAL_MEASUREMENT => "cca-realm-initial-measurement",
        label::REALM_EXTENSIBLE_MEASUREMENTS => "cca-realm-extensible-measurements",
        label::REALM_PUBLIC_KEY_HASH_ALGO_ID => "cca-realm-public-key-hash-algo-id",
        _ => "unknown",
    }
}

/// Veraison name of a platform claim label (for errors and JSON).
pub fn platform_claim_name(label: i64) -> &'static str {
    match label {
        label::PROFILE => "cca-platform-profile",
        label::CHALLENGE => "cca-platform-challenge",
        label::PLATFORM_IMPLEMENTATION_ID => "cca-platform-implementation-id",
        label::PLATFORM_INSTANCE_ID => "cca-platform-instance-id",
        label::PLATFORM_CONFIG => "cca-platform-config",
        label::PLATFORM_LIFECYCLE => "cca-platform-lifecycle",
        label::PLATFORM_SW_COMPONENTS => "cca-platform-sw-components",
        label::PLATFORM_VERIFICATION_SERVICE => "cca-platform-service-indicator",
        label::PLATFORM_HASH_ALGO_ID => "cca-platform-hash-algo-id",
        _ => "unknown",
    }
}

fn sw_component_field_name(label: i64) -> &'static str {
    match label {
        label::SWC_MEASUREMENT_TYPE => "measurement-type",
        label::SWC_MEASUREMENT_VALUE => "measurement-value",
        label::SWC_VERSION => "version",
        label::SWC_SIGNER_ID => "signer-id",
        label::SWC_MEASUREMENT_DESCRIPTION => "measurement-description",
        _ => "unknown",
    }
}

/// A claims map being taken apart: typed getters remove what they read, and
/// whatever is left over becomes `other` claims.
struct ClaimSet {
    part: Part,
    names: fn(i64) -> &'static str,
    entries: Vec<(Value, Value)>,
}

impl ClaimSet {
    fn new(part: Part, names: fn(i64) -> &'static str, entries: Vec<(Value, Value)>) -> Self {
        Self {
            part,
            names,
            entries,
        }
    }

    fn take(&mut self, label: i64) -> Option<Value> {
        let i = self
            .entries
            .iter()
            .position(|(k, _)| int_label(k) == Some(label))?;
        Some(self.entries.swap_remove(i).1)
    }

    fn missing(&self, label: i64) -> ParseError {
        ParseError::MissingClaim {
            part: self.part,
            label,
            name: (self.names)(label),
        }
    }

    fn wrong_type(&self, label: i64, expected: &'static str) -> ParseError {
        ParseError::ClaimType {
            part: self.part,
            label,
            name: (self.names)(label),
            expected,
        }
    }

    fn wrong_length(&self, label: i64, expected: String, actual: usize) -> ParseError {
        ParseError::ClaimLength {
            part: self.part,
            label,
            name: (self.names)(label),
            expected,
            actual,
        }
    }

    fn opt_bytes(&mut self, label: i64) -> Result<Option<Vec<u8>>, ParseError> {
        match self.take(label) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b)),
            Some(_) => Err(self.wrong_type(label, "a byte string")),
        }
    }

    fn bytes(&mut self, label: i64) -> Result<Vec<u8>, ParseError> {
        self.opt_bytes(label)?.ok_or_else(|| self.missing(label))
    }

    fn fixed<const N: usize>(&mut self, label: i64) -> Result<[u8; N], ParseError> {
        let b = self.bytes(label)?;
        b.as_slice()
            .try_into()
            .map_err(|_| self.wrong_length(label, N.to_string(), b.len()))
    }

    fn opt_text(&mut self, label: i64) -> Result<Option<String>, ParseError> {
        match self.take(label) {
            None => Ok(None),
            Some(Value::Text(t)) => Ok(Some(t)),
            Some(_) => Err(self.wrong_type(label, "a text string")),
        }
    }

    fn text(&mut self, label: i64) -> Result<String, ParseError> {
        self.opt_text(label)?.ok_or_else(|| self.missing(label))
    }

    fn hash_algorithm(&mut self, label: i64) -> Result<HashAlgorithm, ParseError> {
        let name = self.text(label)?;
        HashAlgorithm::from_name(&name).ok_or(ParseError::UnsupportedHashAlgorithm {
            part: self.part,
            label,
            found: name,
        })
    }

    fn measurement(
        &self,
        label: i64,
        alg: HashAlgorithm,
        b: &[u8],
    ) -> Result<Measurement, ParseError> {
        Measurement::new(alg, b).ok_or_else(|| {
            self.wrong_length(
                label,
                format!("{} ({})", alg.digest_len(), alg.name()),
                b.len(),
            )
        })
    }

    fn rest(self) -> Vec<OtherClaim> {
        self.entries
            .into_iter()
            .map(|(label, value)| OtherClaim { label, value })
            .collect()
    }
}

fn parse_realm_claims(entries: Vec<(Value, Value)>) -> Result<RealmClaims, ParseError> {
    let mut c = ClaimSet::new(Part::Realm, realm_claim_name, entries);
    let profile = c.opt_text(label::PROFILE)?;
    if let Some(p) = profile.as_ref().filter(|p| *p != REALM_PROFILE_2023) {
        return Err(ParseError::UnknownProfile {
            part: Part::Realm,
            found: p.clone(),
        });
    }
    let challenge = Challenge(c.fixed::<64>(label::CHALLENGE)?);
    let personalization_value = c.fixed::<64>(label::REALM_PERSONALIZATION_VALUE)?;
    let hash_algo = c.hash_algorithm(label::REALM_HASH_ALGO_ID)?;
    let rak_bytes = c.bytes(label::REALM_PUBLIC_KEY)?;
    let public_key = parse_rak(rak_bytes)?;
    let rim_bytes = c.bytes(label::REALM_INITIAL_MEASUREMENT)?;
    let rim = c.measurement(label::REALM_INITIAL_MEASUREMENT, hash_algo, &rim_bytes)?;
    let rems = match c.take(label::REALM_EXTENSIBLE_MEASUREMENTS) {
        None => return Err(c.missing(label::REALM_EXTENSIBLE_MEASUREMENTS)),
        Some(Value::Array(items)) => {
            let l = label::REALM_EXTENSIBLE_MEASUREMENTS;
            if items.len() != 4 {
                return Err(c.wrong_length(l, "4 measurements".into(), items.len()));
            }
            let mut rems = [rim; 4];
            for (slot, item) in rems.iter_mut().zip(items) {
                let Value::Bytes(b) = item else {
                    return Err(c.wrong_type(l, "an array of byte strings"));
                };
                *slot = c.measurement(l, hash_algo, &b)?;
            }
            rems
        }
        Some(_) => return Err(c.wrong_type(label::REALM_EXTENSIBLE_MEASUREMENTS, "an array")),
    };
    let public_key_hash_algo = c.hash_algorithm(label::REALM_PUBLIC_KEY_HASH_ALGO_ID)?;
    Ok(RealmClaims {
        profile,
        challenge,
        personalization_value,
        hash_algo,
        public_key,
        rim,
        rems,
        public_key_hash_algo,
        other: c.rest(),
    })
}

const P384_POINT_LEN: usize = 97;
const P384_COORD_LEN: usize = 48;

/// Claim 44237 is either a raw SEC1 point (RMM 1.0) or a COSE_Key (current
/// TF-RMM and Islet). Either way the binding hash is over the claim bytes.
fn parse_rak(claim_bytes: Vec<u8>) -> Result<RealmPublicKey, ParseError> {
    if claim_bytes.len() == P384_POINT_LEN && claim_bytes[0] == 0x04 {
        let point = claim_bytes.clone();
        return Ok(RealmPublicKey {
            claim_bytes,
            point,
            encoding: RakEncoding::RawPoint,
        });
    }
    let value = cbor::decode_with_tags(&claim_bytes, &[])
        .map_err(|_| ParseError::BadRealmKey("neither a 97-byte SEC1 point nor a COSE_Key"))?;
    let key = CoseKey::from_cbor_value(value)
        .map_err(|_| ParseError::BadRealmKey("malformed COSE_Key"))?;
    if key.kty != coset::KeyType::Assigned(iana::KeyType::EC2) {
        return Err(ParseError::BadRealmKey("COSE_Key kty is not EC2"));
    }
    let param = |l: i64| {
        key.params
            .iter()
            .find(|(k, _)| *k == coset::Label::Int(l))
            .map(|(_, v)| v)
    };
    let crv = param(iana::Ec2KeyParameter::Crv.to_i64());
    if crv != Some(&Value::Integer(iana::EllipticCurve::P_384.to_i64().into())) {
        return Err(ParseError::BadRealmKey("COSE_Key curve is not P-384"));
    }
    let coord = |l: iana::Ec2KeyParameter| match param(l.to_i64()) {
        Some(Value::Bytes(b)) if b.len() == P384_COORD_LEN => Ok(b.clone()),
        _ => Err(ParseError::BadRealmKey(
            "COSE_Key x/y must be 48-byte strings",
        )),
    };
    let x = coord(iana::Ec2KeyParameter::X)?;
    let y = coord(iana::Ec2KeyParameter::Y)?;
    let mut point = Vec::with_capacity(P384_POINT_LEN);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(RealmPublicKey {
        claim_bytes,
        point,
        encoding: RakEncoding::CoseKey,
    })
}

fn parse_platform_claims(entries: Vec<(Value, Value)>) -> Result<PlatformClaims, ParseError> {
    let mut c = ClaimSet::new(Part::Platform, platform_claim_name, entries);
    let profile = c.text(label::PROFILE)?;
    if profile != PLATFORM_PROFILE_LEGACY && profile != PLATFORM_PROFILE_2023 {
        return Err(ParseError::UnknownProfile {
            part: Part::Platform,
            found: profile,
        });
    }
    let challenge = c.bytes(label::CHALLENGE)?;
    if ![32, 48, 64].contains(&challenge.len()) {
        return Err(c.wrong_length(label::CHALLENGE, "32, 48 or 64".into(), challenge.len()));
    }
    let implementation_id = c.fixed::<32>(label::PLATFORM_IMPLEMENTATION_ID)?;
    let instance_id = c.fixed::<33>(label::PLATFORM_INSTANCE_ID)?;
    if instance_id[0] != 0x01 {
        return Err(c.wrong_type(label::PLATFORM_INSTANCE_ID, "a RAND UEID (type byte 0x01)"));
    }
    let config = c.bytes(label::PLATFORM_CONFIG)?;
    let lifecycle = match c.take(label::PLATFORM_LIFECYCLE) {
        None => return Err(c.missing(label::PLATFORM_LIFECYCLE)),
        Some(Value::Integer(i)) => u16::try_from(i)
            .map_err(|_| c.wrong_type(label::PLATFORM_LIFECYCLE, "an unsigned 16-bit integer"))?,
        Some(_) => return Err(c.wrong_type(label::PLATFORM_LIFECYCLE, "an unsigned integer")),
    };
    let sw_components = match c.take(label::PLATFORM_SW_COMPONENTS) {
        None => return Err(c.missing(label::PLATFORM_SW_COMPONENTS)),
        Some(Value::Array(items)) if !items.is_empty() => items
            .into_iter()
            .map(|item| match item {
                Value::Map(m) => parse_sw_component(m),
                _ => Err(c.wrong_type(label::PLATFORM_SW_COMPONENTS, "an array of maps")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(c.wrong_type(label::PLATFORM_SW_COMPONENTS, "a non-empty array"));
        }
    };
    let verification_service = c.opt_text(label::PLATFORM_VERIFICATION_SERVICE)?;
    let hash_algo = c.opt_text(label::PLATFORM_HASH_ALGO_ID)?;
    Ok(PlatformClaims {
        profile,
        challenge,
        implementation_id,
        instance_id,
        config,
        lifecycle,
        sw_components,
        verification_service,
        hash_algo,
        other: c.rest(),
    })
}

fn parse_sw_component(entries: Vec<(Value, Value)>) -> Result<SwComponent, ParseError> {
    let mut c = ClaimSet::new(Part::Platform, sw_component_field_name, entries);
    Ok(SwComponent {
        measurement_type: c.opt_text(label::SWC_MEASUREMENT_TYPE)?,
        measurement_value: c.bytes(label::SWC_MEASUREMENT_VALUE)?,
        version: c.opt_text(label::SWC_VERSION)?,
        signer_id: c.bytes(label::SWC_SIGNER_ID)?,
        measurement_description: c.opt_text(label::SWC_MEASUREMENT_DESCRIPTION)?,
        other: c.rest(),
    })
}
