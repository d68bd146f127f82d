//! The peer identity an application sees after the handshake.

use crate::certifier::admission::{AdmissionClaims, CertError, verify_admission_certificate};
use crate::certifier::keys::PublicKey;
use crate::certifier::policy::Role;

use super::verifier::{PeerError, RevocationList};

/// Who is on the other end: verified during the handshake, read back here
/// from the peer's certificate so the application can act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    /// The peer's role.
    pub role: Role,
    /// The peer's realm measurement.
    pub measurement: Vec<u8>,
    /// Admitted on INSECURE evidence (emulated platform or test material).
    pub insecure_platform: bool,
    /// The CCA platform instance id behind the admission: one phone, one
    /// identity for budgets, however many auth keys it gets certified.
    pub platform_instance: [u8; 33],
    /// The peer's TLS auth key.
    pub auth_key: PublicKey,
    /// DER SubjectPublicKeyInfo of that key (input to fresh-evidence challenges).
    pub auth_key_spki: Vec<u8>,
    /// End of the certificate's validity, Unix seconds: a session must not
    /// outlive it.
    pub not_after: i64,
}

impl VerifiedPeer {
    /// Whether this session may still be served at `now`: its measurement is
    /// not (since) revoked and its certificate has not expired. Sessions call
    /// this before every request, so a session held open does not outlive
    /// the trust it was opened with.
    pub fn still_trusted(&self, revoked: &RevocationList, now: i64) -> Result<(), PeerError> {
        if revoked.contains(&self.measurement) {
            return Err(PeerError::Revoked(hex::encode(&self.measurement)));
        }
        if now > self.not_after {
            return Err(PeerError::Certificate(CertError::Expired));
        }
        Ok(())
    }

    /// From the certificates rustls reports for the connection. The handshake
    /// already ran every check; this re-reads the claims (and re-checks the
    /// signature, which is cheap) rather than trusting an unverified parse.
    pub fn from_certificates(
        certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
        policy_key: &PublicKey,
        now: i64,
    ) -> Result<Self, CertError> {
        let end_entity = certs
            .and_then(|c| c.first())
            .ok_or_else(|| CertError::Malformed("the peer presented no certificate".into()))?;
        let AdmissionClaims {
            role,
            measurement,
            insecure_platform,
            platform_instance,
            auth_key,
            not_after,
        } = verify_admission_certificate(end_entity.as_ref(), policy_key, now)?;
        let auth_key_spki = auth_key
            .ec_spki_der()
            .ok_or_else(|| CertError::Malformed("peer key is not EC".into()))?;
        Ok(Self {
            role,
            measurement,
            insecure_platform,
            platform_instance,
            auth_key,
            auth_key_spki,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(not_after: i64) -> VerifiedPeer {
        VerifiedPeer {
            role: Role::device(),
            measurement: vec![7; 64],
            insecure_platform: false,
            platform_instance: [1; 33],
            auth_key: PublicKey::P256(vec![4; 65]),
            auth_key_spki: Vec::new(),
            not_after,
        }
    }

    #[test]
    fn a_session_ends_with_revocation_or_expiry() {
        let revoked = RevocationList::new();
        let p = peer(100);
        assert_eq!(p.still_trusted(&revoked, 100), Ok(()));
        assert_eq!(
            p.still_trusted(&revoked, 101),
            Err(PeerError::Certificate(CertError::Expired))
        );
        revoked.revoke(vec![7; 64]);
        assert!(matches!(
            p.still_trusted(&revoked, 50),
            Err(PeerError::Revoked(_))
        ));
    }
}
