//! Policy certificates and admission certificates (X.509).
//!
//! Following the framework: the policy certificate is self-signed with
//! subject `CN=policyAuthority, O=root`; an admission certificate is signed
//! by the policy key, issuer = the policy subject, subject
//! `O=Measured-<hex measurement>, CN=CertifierUsers`, for the party's auth
//! key, with EKU clientAuth + serverAuth and CA:false. Beyond the framework:
//! the role and the measurement are carried in their own extensions (so peers
//! need not parse the O field), an INSECURE marker when the evidence came
//! from the emulated platform, and a short validity (hours, not 365 days) so
//! that revocation takes effect quickly.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::signature::{self, UnparsedPublicKey};
use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::decide::Admitted;
use super::der;
use super::keys::{PublicKey, strip_leading_zeros};
use super::policy::Role;

/// Object identifiers of our extensions, under an arc of 2.25 (ITU-T X.667,
/// UUID-based OIDs) whose number was drawn at random for this project. It is
/// 63 bits rather than a full 128-bit UUID because rcgen takes `u64` arcs.
pub mod oid {
    /// Root arc.
    pub const ARC: &[u64] = &[2, 25, 4719792614282834779];
    /// Role (UTF8String).
    pub const ROLE: &[u64] = &[2, 25, 4719792614282834779, 1];
    /// Measurement (OCTET STRING).
    pub const MEASUREMENT: &[u64] = &[2, 25, 4719792614282834779, 2];
    /// INSECURE marker (BOOLEAN TRUE): the evidence came from the emulated
    /// platform or from public test material, and could have been forged.
    pub const INSECURE_PLATFORM: &[u64] = &[2, 25, 4719792614282834779, 3];
    /// CCA platform instance id (OCTET STRING, 33 bytes): one phone is one
    /// identity for budgets and rate limits, however often it is admitted.
    pub const PLATFORM_INSTANCE: &[u64] = &[2, 25, 4719792614282834779, 4];
}

fn oid_string(arcs: &[u64]) -> String {
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// Subject common name of the policy certificate.
pub const POLICY_CN: &str = "policyAuthority";
/// Subject organisation of the policy certificate.
pub const POLICY_O: &str = "root";

/// Certificate errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen refused.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// Not a certificate.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The issuer signature does not verify with the policy key.
    #[error("certificate is not signed by the policy key")]
    BadSignature,
    /// Outside its validity period.
    #[error("certificate is not valid at this time")]
    Expired,
    /// An extension we need is absent or malformed.
    #[error("certificate lacks a valid {0} extension")]
    MissingExtension(&'static str),
}

fn gen_err(e: rcgen::Error) -> CertError {
    CertError::Generate(e.to_string())
}

fn policy_dn() -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, POLICY_CN);
    dn.push(DnType::OrganizationName, POLICY_O);
    dn
}

fn time_from_unix(t: i64) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(t).map_err(|e| CertError::Generate(e.to_string()))
}

fn random_serial() -> SerialNumber {
    let mut s = [0u8; 16];
    // A failure of the system RNG leaves zeros; the serial is not a secret.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s);
    s[0] &= 0x7f;
    s[0] |= 0x01;
    SerialNumber::from_slice(&s)
}

/// Self-signed policy certificate (DER) for the PKCS#8 policy key.
pub fn policy_certificate(
    policy_key_pkcs8: &[u8],
    now: i64,
    years: i64,
) -> Result<Vec<u8>, CertError> {
    let key = KeyPair::try_from(policy_key_pkcs8).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = policy_dn();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time_from_unix(now - 60)?;
    params.not_after = time_from_unix(now + years * 365 * 86_400)?;
    params.serial_number = Some(random_serial());
    Ok(params.self_signed(&key).map_err(gen_err)?.der().to_vec())
}

/// The party's auth key, as rcgen wants subject keys.
struct SubjectKey {
    point: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
}

impl rcgen::PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

fn subject_key(key: &PublicKey) -> SubjectKey {
    match key {
        PublicKey::P256(p) => SubjectKey {
            point: p.clone(),
            alg: &rcgen::PKCS_ECDSA_P256_SHA256,
        },
        PublicKey::P384(p) => SubjectKey {
            point: p.clone(),
            alg: &rcgen::PKCS_ECDSA_P384_SHA384,
        },
        PublicKey::Rsa { n, e } => SubjectKey {
            point: rsa_public_key_der(n, e),
            alg: &rcgen::PKCS_RSA_SHA256,
        },
    }
}

/// PKCS#1 RSAPublicKey DER (what an RSA SPKI's bit string holds).
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = der::unsigned_integer(n);
    body.extend(der::unsigned_integer(e));
    der::tlv(0x30, &body)
}

/// The fields every admission certificate shares with the framework's:
/// subject `O=Measured-<hex>, CN=CertifierUsers` (in that order, as
/// PrintableStrings, like the framework's Go service), CA:false, EKU clientAuth +
/// serverAuth, a random serial, the peer's address as SAN.
fn admission_params(
    measurement: &[u8],
    now: i64,
    validity_secs: i64,
    peer_ip: Option<std::net::IpAddr>,
) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    let printable = |s: String| {
        rcgen::string::PrintableString::try_from(s)
            .map(DnValue::PrintableString)
            .map_err(gen_err)
    };
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::OrganizationName,
        printable(format!("Measured-{}", hex::encode(measurement)))?,
    );
    dn.push(DnType::CommonName, printable("CertifierUsers".into())?);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.not_before = time_from_unix(now - 60)?;
    params.not_after = time_from_unix(now + validity_secs)?;
    params.serial_number = Some(random_serial());
    if let Some(ip) = peer_ip {
        params.subject_alt_names = vec![SanType::IpAddress(ip)];
    }
    Ok(params)
}

/// Issue an admission certificate for a Certifier Framework app, laid out
/// as the framework's own service lays it out, so the app's mutual TLS
/// (admission certificate as leaf, policy certificate as the only root)
/// accepts it: issuer = the subject of `policy_cert_der` exactly, key usage
/// digitalSignature + keyCertSign, no role or measurement extensions. The
/// app key may be RSA (the framework's default) or EC.
pub fn issue_framework_admission_certificate(
    policy_key_pkcs8: &[u8],
    policy_cert_der: &[u8],
    measurement: &[u8],
    app_key: &PublicKey,
    now: i64,
    validity_secs: i64,
    peer_ip: Option<std::net::IpAddr>,
) -> Result<Vec<u8>, CertError> {
    let issuer_key = KeyPair::try_from(policy_key_pkcs8).map_err(gen_err)?;
    let issuer = Issuer::from_ca_cert_der(&policy_cert_der.into(), issuer_key).map_err(gen_err)?;
    let mut params = admission_params(measurement, now, validity_secs, peer_ip)?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    // rcgen adds a subject key identifier with CA:false; the framework's
    // certificates have none. Write the critical, empty BasicConstraints
    // (CA:false) ourselves instead.
    params.is_ca = IsCa::NoCa;
    let mut basic_constraints =
        CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00]);
    basic_constraints.set_criticality(true);
    params.custom_extensions = vec![basic_constraints];
    Ok(params
        .signed_by(&subject_key(app_key), &issuer)
        .map_err(gen_err)?
        .der()
        .to_vec())
}

/// The key a certificate certifies (EC P-256/P-384 or RSA), read without
/// checking anything else; clients use it to make sure the certificate the
/// service returned is for their own key.
pub fn certified_key(der: &[u8]) -> Result<PublicKey, CertError> {
    use x509_parser::public_key::PublicKey as Spki;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(Spki::RSA(rsa)) => Ok(PublicKey::Rsa {
            n: strip_leading_zeros(rsa.modulus),
            e: strip_leading_zeros(rsa.exponent),
        }),
        Ok(Spki::EC(point)) => PublicKey::from_ec_point(point.data())
            .ok_or_else(|| CertError::Malformed("EC key is not P-256 or P-384".into())),
        _ => Err(CertError::Malformed(
            "subject key is neither RSA nor EC".into(),
        )),
    }
}

/// Issue an admission certificate for `admitted`, valid from `now` for
/// `validity_secs`, signed by the PKCS#8 policy key. `peer_ip` becomes a SAN
/// as in the framework.
pub fn issue_admission_certificate(
    policy_key_pkcs8: &[u8],
    admitted: &Admitted,
    now: i64,
    validity_secs: i64,
    peer_ip: Option<std::net::IpAddr>,
) -> Result<Vec<u8>, CertError> {
    let issuer_key = KeyPair::try_from(policy_key_pkcs8).map_err(gen_err)?;
    let mut issuer_params = CertificateParams::default();
    issuer_params.distinguished_name = policy_dn();
    let issuer = Issuer::new(issuer_params, issuer_key);

    let subject = subject_key(&admitted.auth_key);
    let mut params = admission_params(&admitted.measurement, now, validity_secs, peer_ip)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.custom_extensions = vec![
        CustomExtension::from_oid_content(
            oid::ROLE,
            der::tlv(0x0c, admitted.role.as_str().as_bytes()),
        ),
        CustomExtension::from_oid_content(oid::MEASUREMENT, der::tlv(0x04, &admitted.measurement)),
        CustomExtension::from_oid_content(
            oid::PLATFORM_INSTANCE,
            der::tlv(0x04, &admitted.platform_instance),
        ),
    ];
    if admitted.is_insecure() {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                oid::INSECURE_PLATFORM,
                vec![0x01, 0x01, 0xff],
            ));
    }
    Ok(params
        .signed_by(&subject, &issuer)
        .map_err(gen_err)?
        .der()
        .to_vec())
}

/// Is `cert` signed by `key`? (ECDSA P-256/SHA-256, P-384/SHA-384, RSA PKCS#1 SHA-256.)
pub(crate) fn signed_by(cert: &X509Certificate<'_>, key: &PublicKey) -> bool {
    let sig_oid = cert.signature_algorithm.algorithm.to_id_string();
    let tbs = cert.tbs_certificate.as_ref();
    let sig = cert.signature_value.data.as_ref();
    match (key, sig_oid.as_str()) {
        (PublicKey::P256(p), "1.2.840.10045.4.3.2") => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, p)
                .verify(tbs, sig)
                .is_ok()
        }
        (PublicKey::P384(p), "1.2.840.10045.4.3.3") => {
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_ASN1, p)
                .verify(tbs, sig)
                .is_ok()
        }
        (PublicKey::Rsa { n, e }, "1.2.840.113549.1.1.11") => {
            signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, tbs, sig)
                .is_ok()
        }
        _ => false,
    }
}

/// What a verified admission certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionClaims {
    /// Role granted.
    pub role: Role,
    /// Realm measurement.
    pub measurement: Vec<u8>,
    /// Evidence came from the INSECURE emulated platform or public test
    /// material.
    pub insecure_platform: bool,
    /// The CCA platform instance id the evidence came from.
    pub platform_instance: [u8; 33],
    /// The certified auth key.
    pub auth_key: PublicKey,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

/// Check an admission certificate's signature (by `policy_key`) and validity
/// at `now`, and read its claims.
pub fn verify_admission_certificate(
    der: &[u8],
    policy_key: &PublicKey,
    now: i64,
) -> Result<AdmissionClaims, CertError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Malformed("trailing bytes".into()));
    }
    if !signed_by(&cert, policy_key) {
        return Err(CertError::BadSignature);
    }
    let validity = cert.validity();
    if now < validity.not_before.timestamp() || now > validity.not_after.timestamp() {
        return Err(CertError::Expired);
    }
    let ext = |arcs: &[u64]| {
        let want = oid_string(arcs);
        cert.extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == want)
            .map(|e| e.value)
    };
    let role_der = ext(oid::ROLE).ok_or(CertError::MissingExtension("role"))?;
    let role = match role_der {
        [0x0c, len, rest @ ..] if usize::from(*len) == rest.len() => std::str::from_utf8(rest)
            .ok()
            .and_then(|s| Role::new(s).ok()),
        _ => None,
    }
    .ok_or(CertError::MissingExtension("role"))?;
    let m_der = ext(oid::MEASUREMENT).ok_or(CertError::MissingExtension("measurement"))?;
    let measurement = match m_der {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() => rest.to_vec(),
        _ => return Err(CertError::MissingExtension("measurement")),
    };
    let insecure_platform = ext(oid::INSECURE_PLATFORM).is_some();
    let platform_instance = match ext(oid::PLATFORM_INSTANCE) {
        Some([0x04, 33, rest @ ..]) => <[u8; 33]>::try_from(rest).ok(),
        _ => None,
    }
    .ok_or(CertError::MissingExtension("platform-instance"))?;
    let auth_key = PublicKey::from_ec_point(&cert.public_key().subject_public_key.data)
        .ok_or_else(|| CertError::Malformed("subject key is not P-256 or P-384".into()))?;
    Ok(AdmissionClaims {
        role,
        measurement,
        insecure_platform,
        platform_instance,
        auth_key,
        not_after: validity.not_after.timestamp(),
    })
}
