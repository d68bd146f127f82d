//! The rustls certificate verifiers of attested TLS.
//!
//! Inputs are unparsed DER from the peer. A peer certificate is accepted if
//! and only if: it is signed by the policy key (so its chain leads to the
//! policy certificate — admission certificates are issued directly by it and
//! intermediates are ignored), it is within its validity period at `now`
//! (rustls's clock), its measurement is not on the revocation list, and its
//! role and measurement satisfy this connection's [`PeerRequirement`].
//! Handshake signatures are checked with the provider's algorithms; nothing
//! here returns an assertion without the checks.
//!
//! The TLS server name is not used: a peer is identified by its measurement
//! and role, not by a DNS name.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use thiserror::Error;

use crate::certifier::admission::{AdmissionClaims, CertError, verify_admission_certificate};
use crate::certifier::keys::PublicKey;
use crate::certifier::policy::{Policy, Role};

/// Why a peer was refused (carried inside rustls's `CertificateError::Other`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PeerError {
    /// Not signed by this policy, malformed, or expired.
    #[error("peer certificate: {0}")]
    Certificate(#[from] CertError),
    /// The role is not one this connection accepts.
    #[error("peer role {found} is not accepted here (expected one of: {expected})")]
    WrongRole {
        /// The peer's role.
        found: String,
        /// Roles accepted.
        expected: String,
    },
    /// The measurement is not one this connection accepts.
    #[error("peer measurement {0} is not accepted on this connection")]
    WrongMeasurement(String),
    /// The measurement is revoked.
    #[error("peer measurement {0} is revoked")]
    Revoked(String),
    /// The evidence behind the certificate came from the INSECURE emulated
    /// platform and this side does not accept that.
    #[error(
        "peer was admitted on INSECURE evidence (the emulated platform or public test material), which this side does not accept"
    )]
    InsecurePlatform,
}

/// Build errors: a verifier that would accept anyone is not built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RequirementError {
    /// No role given.
    #[error("a peer requirement needs at least one role")]
    NoRoles,
}

/// What this connection requires of its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRequirement {
    roles: Vec<Role>,
    measurements: Vec<Vec<u8>>,
    allow_insecure_platform: bool,
}

impl PeerRequirement {
    /// Accept peers admitted for any of `roles` (at least one).
    pub fn roles(roles: impl IntoIterator<Item = Role>) -> Result<Self, RequirementError> {
        let roles: Vec<Role> = roles.into_iter().collect();
        if roles.is_empty() {
            return Err(RequirementError::NoRoles);
        }
        Ok(Self {
            roles,
            measurements: Vec::new(),
            allow_insecure_platform: false,
        })
    }

    /// Additionally require one of these measurements (e.g. the provider
    /// releases a model key only to specific runtime builds).
    pub fn with_measurements(mut self, measurements: impl IntoIterator<Item = Vec<u8>>) -> Self {
        self.measurements = measurements.into_iter().collect();
        self
    }

    /// Accept peers admitted on the INSECURE emulated platform (tests, demos).
    pub fn allow_insecure_emulated_platform(mut self) -> Self {
        self.allow_insecure_platform = true;
        self
    }

    /// The host's `--allow-insecure-peers`, as far as the signed `policy`
    /// allows it: INSECURE peers are accepted only while the policy itself
    /// trusts an INSECURE platform (emulated or public test material). A
    /// host cannot widen what the policy's owner decided; certificates an
    /// older policy marked INSECURE are refused once the policy drops such
    /// platforms. Returns whether INSECURE peers are now accepted.
    pub fn allow_insecure_if_policy_does(&mut self, host_flag: bool, policy: &Policy) -> bool {
        self.allow_insecure_platform = host_flag && policy.is_insecure();
        self.allow_insecure_platform
    }

    /// Check admission claims against this requirement.
    pub fn check(&self, claims: &AdmissionClaims) -> Result<(), PeerError> {
        if !self.roles.contains(&claims.role) {
            return Err(PeerError::WrongRole {
                found: claims.role.to_string(),
                expected: self
                    .roles
                    .iter()
                    .map(Role::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if !self.measurements.is_empty() && !self.measurements.contains(&claims.measurement) {
            return Err(PeerError::WrongMeasurement(hex::encode(
                &claims.measurement,
            )));
        }
        if claims.insecure_platform && !self.allow_insecure_platform {
            return Err(PeerError::InsecurePlatform);
        }
        Ok(())
    }
}

/// Revoked measurements, shared between verifiers and updated in place when
/// a newer signed policy arrives.
#[derive(Debug, Clone, Default)]
pub struct RevocationList(Arc<RwLock<HashSet<Vec<u8>>>>);

impl RevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add the revocations of a verified policy. Nothing is ever removed: a
    /// revocation once seen stays for the life of the process, even if a
    /// later policy (replayed, or cut in transit) lacks it.
    pub fn update_from_policy(&self, policy: &Policy) {
        let mut set = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.extend(policy.revocations().iter().map(|r| r.measurement.clone()));
    }
    /// Add one measurement.
    pub fn revoke(&self, measurement: Vec<u8>) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(measurement);
    }
    /// Is `m` revoked?
    pub fn contains(&self, m: &[u8]) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(m)
    }
}

/// The trust anchor: the policy certificate's key and subject.
#[derive(Debug, Clone)]
pub struct PolicyAnchor {
    key: PublicKey,
    subject_der: Vec<u8>,
}

impl PolicyAnchor {
    /// Read the policy certificate (DER), checking it is self-signed.
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, CertError> {
        use x509_parser::prelude::FromDer;
        let (rest, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| CertError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::Malformed("trailing bytes".into()));
        }
        let key = PublicKey::from_ec_point(&cert.public_key().subject_public_key.data)
            .ok_or_else(|| CertError::Malformed("policy key is not P-256 or P-384".into()))?;
        if !crate::certifier::admission::signed_by(&cert, &key) {
            return Err(CertError::BadSignature);
        }
        Ok(Self {
            key,
            subject_der: cert.subject().as_raw().to_vec(),
        })
    }

    /// The policy public key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }
}

/// The verifier, both directions.
#[derive(Debug)]
pub struct PeerVerifier {
    anchor: PolicyAnchor,
    requirement: PeerRequirement,
    revoked: RevocationList,
    algorithms: WebPkiSupportedAlgorithms,
    hints: Vec<DistinguishedName>,
}

impl PeerVerifier {
    /// A verifier for peers of `anchor` meeting `requirement`.
    pub fn new(
        anchor: PolicyAnchor,
        requirement: PeerRequirement,
        revoked: RevocationList,
        provider: &CryptoProvider,
    ) -> Self {
        let hints = vec![DistinguishedName::from(anchor.subject_der.clone())];
        Self {
            anchor,
            requirement,
            revoked,
            algorithms: provider.signature_verification_algorithms,
            hints,
        }
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    /// Run every check on a peer's end-entity certificate.
    pub fn check_peer(
        &self,
        end_entity: &[u8],
        now_secs: i64,
    ) -> Result<AdmissionClaims, PeerError> {
        let claims = verify_admission_certificate(end_entity, &self.anchor.key, now_secs)?;
        if self.revoked.contains(&claims.measurement) {
            return Err(PeerError::Revoked(hex::encode(&claims.measurement)));
        }
        self.requirement.check(&claims)?;
        Ok(claims)
    }

    fn check(&self, end_entity: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        self.check_peer(end_entity.as_ref(), now)
            .map(|_| ())
            .map_err(to_rustls)
    }
}

/// Wrap our reason so both the application and tests can recover it.
fn to_rustls(e: PeerError) -> rustls::Error {
    let cert_error = match e {
        PeerError::Certificate(CertError::Expired) => CertificateError::Expired,
        PeerError::Certificate(CertError::BadSignature) => CertificateError::UnknownIssuer,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

/// Recover our reason from a rustls error, if it is one of ours.
pub fn peer_error(e: &rustls::Error) -> Option<PeerError> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Expired) => {
            Some(PeerError::Certificate(CertError::Expired))
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            Some(PeerError::Certificate(CertError::BadSignature))
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<PeerError>().cloned()
        }
        _ => None,
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Configs are TLS 1.3 only; reaching this is a protocol violation.
        Err(rustls::Error::General(
            "attested TLS is TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "attested TLS is TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
