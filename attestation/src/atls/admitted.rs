//! What a long-running party (provider, runtime, device agent) does at
//! start: get admitted for its role with a freshly generated auth key, read
//! the signed policy for revocations and trusted platform keys, and keep the
//! revocation list current while it serves.
//!
//! Must never: reuse an auth key across admissions, or keep serving with a
//! policy whose signature it did not check (the policy is verified against
//! the policy certificate the party was configured with, not the one the
//! certifier claims).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Identity, PolicyAnchor, RevocationList};
use crate::certifier::admission::CertError;
use crate::certifier::client::{Client, ClientError};
use crate::certifier::keys::{KeyError, SigningKey};
use crate::certifier::policy::{Policy, Role};
use crate::certifier::policy_object::{PolicyFloor, PolicyObjectError};
use crate::platform::EvidenceSource;

/// Why a party could not start.
#[derive(Debug, Error)]
pub enum AdmitError {
    /// The configured policy certificate is unusable.
    #[error("the policy certificate: {0}")]
    PolicyCertificate(#[source] CertError),
    /// The auth key could not be generated.
    #[error("generating the TLS auth key: {0}")]
    AuthKey(#[source] KeyError),
    /// The certifier refused, or could not be asked.
    #[error("admission as {role} failed: {source}")]
    Admission {
        /// The role asked for.
        role: Role,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// The signed policy could not be fetched or did not verify.
    #[error("fetching the signed policy: {0}")]
    Policy(#[source] ClientError),
}

/// An admitted party: its TLS identity and what it needs to check peers.
#[derive(Debug)]
pub struct Admitted {
    /// Admission certificate and auth key for attested TLS.
    pub identity: Identity,
    /// DER SubjectPublicKeyInfo of the auth key (for fresh-evidence challenges).
    pub own_spki: Vec<u8>,
    /// The only trust root.
    pub anchor: PolicyAnchor,
    /// Revoked measurements, shared with every TLS verifier built from it.
    pub revoked: RevocationList,
    /// The signed policy as last fetched and verified (to appraise peers'
    /// fresh evidence), kept current with the revocations.
    pub policy: CurrentPolicy,
    /// The certifier client used (for refreshing the policy).
    pub certifier: Client,
}

impl Admitted {
    /// Generate an auth key, get admitted as `role` with evidence from
    /// `platform`, and load the signed policy.
    pub async fn obtain(
        certifier: Client,
        policy_certificate_der: &[u8],
        platform: &dyn EvidenceSource,
        role: &Role,
    ) -> Result<Self, AdmitError> {
        let anchor = PolicyAnchor::from_certificate_der(policy_certificate_der)
            .map_err(AdmitError::PolicyCertificate)?;
        let (auth, auth_pkcs8) = SigningKey::generate_p256().map_err(AdmitError::AuthKey)?;
        info!(platform = %platform.describe(), %role, "requesting admission");
        let cert = certifier
            .admit(platform, &auth.public_key(), role)
            .await
            .map_err(|source| AdmitError::Admission {
                role: role.clone(),
                source,
            })?;
        let own_spki = auth
            .public_key()
            .ec_spki_der()
            .ok_or(AdmitError::AuthKey(KeyError::Signing))?;
        let policy = certifier
            .policy(anchor.key())
            .await
            .map_err(AdmitError::Policy)?;
        let revoked = RevocationList::new();
        revoked.update_from_policy(&policy);
        Ok(Self {
            identity: Identity::new(cert, auth_pkcs8),
            own_spki,
            anchor,
            revoked,
            policy: CurrentPolicy::new(policy),
            certifier,
        })
    }

    /// Re-read the policy every `every` and apply its revocations, so a
    /// measurement revoked at the certifier is refused by this party's TLS
    /// verifiers within one interval. A failed refresh keeps the last list;
    /// an older policy version than the newest accepted is refused, and a
    /// revocation once seen is never dropped.
    pub fn keep_revocations_current(&self, every: Duration) -> JoinHandle<()> {
        let (revoked, current, client, key) = (
            self.revoked.clone(),
            self.policy.clone(),
            self.certifier.clone(),
            self.anchor.key().clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match client.policy(&key).await {
                    Ok(p) => {
                        revoked.update_from_policy(&p);
                        if let Err(e) = current.offer(p) {
                            warn!("refused the served policy (keeping the last one): {e}");
                        }
                    }
                    Err(e) => warn!("could not refresh revocations (keeping the last list): {e}"),
                }
            }
        })
    }
}

/// The verified policy a running party appraises fresh evidence with,
/// replaced whole when a newer one has been fetched and verified; an older
/// version than the newest accepted is refused (`PolicyFloor`).
#[derive(Debug, Clone)]
pub struct CurrentPolicy(Arc<RwLock<(Arc<Policy>, PolicyFloor)>>);

impl CurrentPolicy {
    /// Start from `policy`.
    pub fn new(policy: Policy) -> Self {
        let floor = PolicyFloor::new(policy.version());
        Self(Arc::new(RwLock::new((Arc::new(policy), floor))))
    }
    /// The policy now.
    pub fn get(&self) -> Arc<Policy> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }
    /// Use `policy` from now on, unless it is older than one already accepted.
    pub fn offer(&self, policy: Policy) -> Result<(), PolicyObjectError> {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        guard.1.accept(&policy)?;
        guard.0 = Arc::new(policy);
        Ok(())
    }
}
