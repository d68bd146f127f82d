//! Client side of admission: nonce → evidence → admission certificate.

use std::time::Duration;

use prost::Message;
use thiserror::Error;
use tokio::net::TcpStream;

use super::admission::certified_key;
use super::decide::admission_challenge;
use super::keys::PublicKey;
use super::policy::Role;
use super::proto::{
    AttestationUserData, Evidence, EvidencePackage, TrustRequestMessage, TrustResponseMessage,
    decode_bounded,
};
use super::protocol::*;
use super::vse::{self, InsecureSimulatedEnclave};
use super::wire::{MAX_FRAME, WireError, read_frame, write_frame};
use crate::platform::{EvidenceSource, PlatformError};

/// Why admission did not produce a certificate.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not reach the service.
    #[error("cannot connect to the certifier service at {addr}: {source}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Connecting took too long.
    #[error("connecting to the certifier service at {0} timed out")]
    ConnectTimeout(String),
    /// Framing failure.
    #[error("talking to the certifier service: {0}")]
    Wire(#[from] WireError),
    /// The service answered something that is not a response.
    #[error("the certifier service sent a malformed response: {0}")]
    Protocol(String),
    /// The service refused, with its reason.
    #[error("admission refused ({code}): {reason}")]
    Refused {
        /// Stable code, e.g. `measurement-wrong-role`.
        code: String,
        /// Human reason, e.g. "measurement 3f2a… is not trusted for role runtime".
        reason: String,
    },
    /// The platform could not produce evidence.
    #[error("could not obtain evidence: {0}")]
    Platform(#[from] PlatformError),
    /// The auth key cannot be bound into evidence.
    #[error("the auth key must be an EC P-256 or P-384 key")]
    BadAuthKey,
    /// The service returned a certificate for some other key (or not a
    /// certificate at all): using it would fail at the first TLS handshake,
    /// or worse, let someone else's key speak for us.
    #[error("the certificate the service returned does not certify this party's own key: {0}")]
    NotOurCertificate(String),
    /// The framework evidence could not be made.
    #[error("could not make framework evidence: {0}")]
    Evidence(String),
}

/// A Certifier Service client.
#[derive(Debug, Clone)]
pub struct Client {
    addr: String,
    timeout: Duration,
}

impl Client {
    /// A client for `addr` (host:port) with a per-exchange timeout.
    pub fn new(addr: impl Into<String>, timeout: Duration) -> Self {
        Self {
            addr: addr.into(),
            timeout,
        }
    }

    async fn exchange(
        &self,
        request: &TrustRequestMessage,
    ) -> Result<TrustResponseMessage, ClientError> {
        let mut stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout(self.addr.clone()))?
            .map_err(|source| ClientError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        write_frame(&mut stream, &request.encode_to_vec(), self.timeout).await?;
        let frame = read_frame(&mut stream, MAX_FRAME, self.timeout).await?;
        decode_bounded(&frame).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    fn artifact(response: TrustResponseMessage) -> Result<Vec<u8>, ClientError> {
        match response.status.as_deref() {
            Some(STATUS_SUCCEEDED) => response
                .artifact
                .ok_or_else(|| ClientError::Protocol("success without an artifact".into())),
            Some(STATUS_FAILED) => {
                let text =
                    String::from_utf8_lossy(response.artifact.as_deref().unwrap_or_default())
                        .into_owned();
                let (code, reason) = match text.split_once(": ") {
                    Some((c, r)) => (c.to_string(), r.to_string()),
                    None => ("refused".to_string(), text),
                };
                Err(ClientError::Refused { code, reason })
            }
            other => Err(ClientError::Protocol(format!("unknown status {other:?}"))),
        }
    }

    /// Ask for a fresh single-use nonce.
    pub async fn nonce(&self) -> Result<Vec<u8>, ClientError> {
        let request = TrustRequestMessage {
            requesting_enclave_tag: Some("requesting-enclave".into()),
            providing_enclave_tag: Some("providing-enclave".into()),
            submitted_evidence_type: Some(EVIDENCE_TYPE_CCA.into()),
            purpose: Some(PURPOSE_NONCE.into()),
            ..Default::default()
        };
        Self::artifact(self.exchange(&request).await?)
    }

    /// Fetch the service's current signed policy object and verify it and
    /// every claim in it with `policy_key` (the key of the policy
    /// certificate this party trusts). Peers use it for revocations and
    /// trusted platform keys; they compare its `version()` with the newest
    /// they accepted (`policy_object::PolicyFloor`).
    pub async fn policy(
        &self,
        policy_key: &PublicKey,
    ) -> Result<super::policy::Policy, ClientError> {
        let bytes = self.policy_object_bytes().await?;
        super::policy_object::verify_policy(&bytes, policy_key, unix_now())
            .map_err(|e| ClientError::Protocol(format!("the served policy was refused: {e}")))
    }

    /// The signed policy object as served, unverified (for tools and tests).
    pub async fn policy_object_bytes(&self) -> Result<Vec<u8>, ClientError> {
        let request = TrustRequestMessage {
            submitted_evidence_type: Some(EVIDENCE_TYPE_CCA.into()),
            purpose: Some(PURPOSE_SIGNED_POLICY.into()),
            ..Default::default()
        };
        Self::artifact(self.exchange(&request).await?)
    }

    /// The framework's bare `signed_claim_sequence`, each claim verified
    /// with `policy_key`. Only for framework compatibility: its statements
    /// can be dropped or replayed in transit undetected; use [`Client::policy`].
    pub async fn framework_policy(
        &self,
        policy_key: &PublicKey,
    ) -> Result<super::policy::Policy, ClientError> {
        let request = TrustRequestMessage {
            submitted_evidence_type: Some(EVIDENCE_TYPE_CCA.into()),
            purpose: Some(PURPOSE_POLICY.into()),
            ..Default::default()
        };
        let bytes = Self::artifact(self.exchange(&request).await?)?;
        let seq: super::proto::SignedClaimSequence =
            decode_bounded(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        super::policy::Policy::load(&seq, policy_key, unix_now())
            .map_err(|e| ClientError::Protocol(format!("the served policy does not verify: {e}")))
    }

    /// Present `token` (which must answer `nonce` for `auth_key`) and ask for
    /// an admission certificate for `role`. Returns the certificate DER.
    pub async fn present(
        &self,
        nonce: &[u8],
        token: Vec<u8>,
        auth_key: &PublicKey,
        role: &Role,
    ) -> Result<Vec<u8>, ClientError> {
        let user_data = AttestationUserData {
            enclave_type: Some(ENCLAVE_TYPE_CCA_REALM.into()),
            time: Some(super::claims::format_time(unix_now())),
            enclave_key: Some(auth_key.to_key_message("authKey")),
            policy_key: None,
        };
        let fact = |t: &str, b: Vec<u8>| Evidence {
            evidence_type: Some(t.into()),
            serialized_evidence: Some(b),
        };
        let request = TrustRequestMessage {
            requesting_enclave_tag: Some("requesting-enclave".into()),
            providing_enclave_tag: Some("providing-enclave".into()),
            submitted_evidence_type: Some(EVIDENCE_TYPE_CCA.into()),
            purpose: Some(PURPOSE_AUTHENTICATION.into()),
            support: Some(EvidencePackage {
                prover_type: Some(PROVER_TYPE.into()),
                enclave_type: Some(ENCLAVE_TYPE_CCA_REALM.into()),
                fact_assertion: vec![
                    fact(FACT_NONCE, nonce.to_vec()),
                    fact(FACT_USER_DATA, user_data.encode_to_vec()),
                    fact(FACT_ROLE, role.as_str().as_bytes().to_vec()),
                    fact(FACT_CCA_TOKEN, token),
                ],
            }),
            accels: Vec::new(),
        };
        let cert = Self::artifact(self.exchange(&request).await?)?;
        check_certifies(&cert, auth_key)?;
        Ok(cert)
    }

    /// Admission the Certifier Framework's way, as its sample apps do it:
    /// `vse-attestation-package` evidence from the INSECURE simulated enclave
    /// for `app_key`, no nonce, purpose `authentication`. Works against the
    /// framework's own Go service and against ours (when the policy allows
    /// nonce-less evidence). One frame is read and the connection is not
    /// waited on: the Go service never closes it.
    pub async fn admit_framework_app(
        &self,
        enclave: &InsecureSimulatedEnclave,
        app_key: &PublicKey,
    ) -> Result<Vec<u8>, ClientError> {
        let package = enclave
            .evidence_package(app_key, unix_now(), FRAMEWORK_REPORT_SECS)
            .map_err(|e| ClientError::Evidence(e.to_string()))?;
        let request = TrustRequestMessage {
            requesting_enclave_tag: Some("requesting-enclave".into()),
            providing_enclave_tag: Some("providing-enclave".into()),
            submitted_evidence_type: Some(vse::EVIDENCE_TYPE.into()),
            purpose: Some(PURPOSE_AUTHENTICATION.into()),
            support: Some(package),
            accels: Vec::new(),
        };
        let cert = Self::artifact(self.exchange(&request).await?)?;
        check_certifies(&cert, app_key)?;
        Ok(cert)
    }

    /// The whole flow: nonce, evidence from `platform` bound to `auth_key`,
    /// admission certificate for `role`.
    pub async fn admit(
        &self,
        platform: &dyn EvidenceSource,
        auth_key: &PublicKey,
        role: &Role,
    ) -> Result<Vec<u8>, ClientError> {
        let nonce = self.nonce().await?;
        let spki = auth_key.ec_spki_der().ok_or(ClientError::BadAuthKey)?;
        let token = platform.attestation_token(&admission_challenge(&nonce, &spki))?;
        self.present(&nonce, token, auth_key, role).await
    }
}

/// Validity of the reports the simulated enclave signs: a year, as the
/// framework's own simulated enclave does. Shorter does not work against the
/// framework's Go service: it reads our (C++-layout) time strings up to the
/// year only, so a report ending in the current year looks expired to it.
const FRAMEWORK_REPORT_SECS: i64 = 365 * 86_400;

fn check_certifies(cert: &[u8], key: &PublicKey) -> Result<(), ClientError> {
    let certified =
        certified_key(cert).map_err(|e| ClientError::NotOurCertificate(e.to_string()))?;
    if &certified != key {
        return Err(ClientError::NotOurCertificate(format!(
            "it certifies {certified:?}, we asked for {key:?}"
        )));
    }
    Ok(())
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
