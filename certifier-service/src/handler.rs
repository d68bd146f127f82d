//! One request in, one response out. No sockets here: the server feeds frames
//! in, so tests (and the server) drive the whole decision path directly.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use attestation::certifier::admission::{
    issue_admission_certificate, issue_framework_admission_certificate,
};
use attestation::certifier::claims::sign_claim;
use attestation::certifier::clause::{key_entity, says, unary, verb};
use attestation::certifier::decide::{Refusal, decide};
use attestation::certifier::keys::{PublicKey, SigningKey};
use attestation::certifier::nonce::{NonceError, NonceStore};
use attestation::certifier::policy::{Policy, Role};
use attestation::certifier::policy_object::{SignedPolicyMessage, reissue};
use attestation::certifier::proto::{
    AttestationUserData, TrustRequestMessage, TrustResponseMessage, decode_bounded,
};
use attestation::certifier::protocol::*;
use attestation::certifier::vse::{self, Goal, VseRefusal, verify_package};
use protocol::Source;
use tracing::{info, warn};

use crate::audit::{AuditLog, AuditRecord};
use crate::store::ServiceDir;

/// Tunables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Admission certificate lifetime.
    pub cert_validity_secs: i64,
    /// Nonce lifetime.
    pub nonce_ttl_secs: i64,
    /// Outstanding nonces at most.
    pub nonce_capacity: usize,
    /// Nonces one source (IPv4 address or IPv6 /64) may hold at most, used
    /// or not, until they expire: one flooding source cannot drain the store.
    pub nonce_per_source: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cert_validity_secs: 8 * 3600,
            nonce_ttl_secs: 60,
            nonce_capacity: 10_000,
            nonce_per_source: 32,
        }
    }
}

/// The service state.
#[derive(Debug)]
pub struct Service {
    dir: ServiceDir,
    policy_key_pkcs8: Vec<u8>,
    /// The same key, loaded once, for signing claims.
    policy_key: SigningKey,
    policy_cert_der: Vec<u8>,
    policy: Mutex<(Option<SystemTime>, Arc<Policy>)>,
    nonces: Mutex<NonceStore<Source>>,
    audit: Mutex<AuditLog>,
    settings: Settings,
}

/// The refusal code of a grant whose audit record could not be written.
pub const AUDIT_UNAVAILABLE: &str = "audit-unavailable";

/// A refusal on the wire: `<code>: <reason>`.
struct Failure {
    code: String,
    reason: String,
}

impl Failure {
    fn new(code: &str, reason: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            reason: reason.into(),
        }
    }
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Failure::new(r.code(), r.to_string())
    }
}

impl From<VseRefusal> for Failure {
    fn from(r: VseRefusal) -> Self {
        Failure::new(r.code(), r.to_string())
    }
}

impl From<NonceError> for Failure {
    fn from(e: NonceError) -> Self {
        let code = match e {
            NonceError::Unknown => "nonce-unknown",
            NonceError::Expired => "nonce-expired",
            NonceError::Replayed => "nonce-replayed",
            _ => "busy",
        };
        Failure::new(code, e.to_string())
    }
}

/// The facts of an authentication request, pulled out of the evidence package.
struct Request {
    nonce: Vec<u8>,
    auth_key: PublicKey,
    role: Role,
    token: Vec<u8>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a lock must not take the service down with it;
    // every guarded value stays consistent between statements.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Service {
    /// Load the directory's policy and key, open the audit log.
    pub fn open(dir: ServiceDir, settings: Settings, now: i64) -> anyhow::Result<Self> {
        let policy = dir.policy(now)?;
        for p in policy.platforms() {
            if let Some(why) = p.insecurity() {
                warn!(
                    reason = %why.tag(),
                    "INSECURE: this policy trusts a platform key whose evidence anyone can forge ({why}); every admission through it is marked INSECURE"
                );
            }
        }
        dir.ensure_policy_object(now)?;
        let (audit, cut) = AuditLog::open(&dir.path("audit.log"))?;
        if cut > 0 {
            warn!(
                bytes = cut,
                "audit log ended in a torn line (earlier crash); removed it"
            );
        }
        Ok(Self {
            policy_key: dir.signing_key()?,
            policy_key_pkcs8: dir.policy_key_pkcs8()?,
            policy_cert_der: std::fs::read(dir.path("policy_cert.der"))?,
            policy: Mutex::new((dir.policy_mtime(), Arc::new(policy))),
            nonces: Mutex::new(NonceStore::new(
                settings.nonce_ttl_secs,
                settings.nonce_capacity,
                settings.nonce_per_source,
            )),
            audit: Mutex::new(audit),
            dir,
            settings,
        })
    }

    /// The current policy, reloaded if `policy.bin` changed on disk. A policy
    /// that fails to verify is not adopted; the previous one stays in force.
    pub fn current_policy(&self, now: i64) -> Arc<Policy> {
        let mut guard = lock(&self.policy);
        let mtime = self.dir.policy_mtime();
        if mtime != guard.0 {
            match self.dir.policy(now) {
                Ok(p) => {
                    info!(measurements = p.measurements().len(), "policy reloaded");
                    *guard = (mtime, Arc::new(p));
                }
                Err(e) => warn!(
                    "policy.bin changed but does not verify; keeping the previous policy: {e:#}"
                ),
            }
        }
        guard.1.clone()
    }

    /// Handle one request frame.
    pub fn handle(&self, frame: &[u8], peer: SocketAddr, now: i64) -> TrustResponseMessage {
        let request: TrustRequestMessage = match decode_bounded(frame) {
            Ok(r) => r,
            Err(e) => {
                warn!(%peer, "malformed request: {e}");
                return failed(
                    None,
                    Failure::new(
                        "malformed-request",
                        format!("not a trust_request_message: {e}"),
                    ),
                );
            }
        };
        let echo = Some((
            request.requesting_enclave_tag.clone(),
            request.providing_enclave_tag.clone(),
        ));
        let evidence_type = request
            .submitted_evidence_type
            .as_deref()
            .unwrap_or_default();
        if evidence_type == vse::EVIDENCE_TYPE {
            return self.handle_framework(&request, echo, peer, now);
        }
        if evidence_type != EVIDENCE_TYPE_CCA {
            return failed(
                echo,
                Failure::new(
                    "unsupported-evidence-type",
                    format!(
                        "evidence type {evidence_type:?} is not accepted; this service takes {EVIDENCE_TYPE_CCA:?} and the Certifier Framework's {:?}",
                        vse::EVIDENCE_TYPE
                    ),
                ),
            );
        }
        match request.purpose.as_deref() {
            Some(PURPOSE_NONCE) => match lock(&self.nonces).issue(Source::of(peer.ip()), now) {
                Ok(nonce) => succeeded(echo, nonce.to_vec()),
                Err(e) => failed(echo, e.into()),
            },
            Some(PURPOSE_SIGNED_POLICY) => match self.signed_policy(now) {
                Ok(bytes) => succeeded(echo, bytes),
                Err(e) => failed(
                    echo,
                    Failure::new("internal", format!("policy object unavailable: {e:#}")),
                ),
            },
            Some(PURPOSE_POLICY) => match std::fs::read(self.dir.path("policy.bin")) {
                Ok(bytes) => succeeded(echo, bytes),
                Err(e) => failed(
                    echo,
                    Failure::new("internal", format!("policy unavailable: {e}")),
                ),
            },
            Some(PURPOSE_AUTHENTICATION) => match self.authenticate(&request, peer, now) {
                Ok(cert) => succeeded(echo, cert),
                Err(f) => failed(echo, f),
            },
            other => failed(
                echo,
                Failure::new(
                    "unsupported-purpose",
                    format!("purpose {other:?}; use \"nonce\", \"policy\" or \"authentication\""),
                ),
            ),
        }
    }

    /// A Certifier Framework app's request: `vse-attestation-package`
    /// evidence, purpose `authentication` (admission certificate) or
    /// `attestation` (the platform rule).
    fn handle_framework(
        &self,
        request: &TrustRequestMessage,
        echo: Option<(Option<String>, Option<String>)>,
        peer: SocketAddr,
        now: i64,
    ) -> TrustResponseMessage {
        let goal = match request.purpose.as_deref() {
            Some(PURPOSE_AUTHENTICATION) => Goal::Authentication,
            Some(PURPOSE_ATTESTATION) => Goal::Attestation,
            other => {
                return failed(
                    echo,
                    Failure::new(
                        "unsupported-purpose",
                        format!(
                            "purpose {other:?} with {:?} evidence; use \"authentication\" or \"attestation\"",
                            vse::EVIDENCE_TYPE
                        ),
                    ),
                );
            }
        };
        let mut record =
            AuditRecord::new(now, peer.to_string(), vse::EVIDENCE_TYPE, "no-freshness");
        let result = self.framework_inner(request, goal, peer, now, &mut record);
        let result = self.audit(&mut record, result);
        match &result {
            Ok(_) => {
                warn!(%peer, measurement = %record.measurement, purpose = ?goal, "admitted a Certifier Framework app on nonce-less evidence (no-freshness: it could have been replayed)");
            }
            Err(f) => info!(%peer, code = %f.code, "refused framework evidence: {}", f.reason),
        }
        match result {
            Ok(artifact) => succeeded(echo, artifact),
            Err(f) => failed(echo, f),
        }
    }

    fn framework_inner(
        &self,
        request: &TrustRequestMessage,
        goal: Goal,
        peer: SocketAddr,
        now: i64,
        record: &mut AuditRecord,
    ) -> Result<Vec<u8>, Failure> {
        let package = request
            .support
            .as_ref()
            .ok_or_else(|| Failure::new("malformed-evidence", "no evidence package"))?;
        // What the report claims, for the audit trail (verified below).
        if let Some(m) = vse::claimed_measurement(package) {
            record.measurement = hex::encode(m);
        }
        let policy = self.current_policy(now);
        let admitted = verify_package(&policy, package, goal, now)?;
        record.measurement = hex::encode(admitted.measurement());
        let internal = |e: String| Failure::new("internal", e);
        match goal {
            Goal::Authentication => issue_framework_admission_certificate(
                &self.policy_key_pkcs8,
                &self.policy_cert_der,
                admitted.measurement(),
                admitted.app_key(),
                now,
                self.settings.cert_validity_secs,
                Some(peer.ip()),
            )
            .map_err(|e| internal(e.to_string())),
            Goal::Attestation => {
                // The framework's "platform rule": policyKey says appKey
                // is-trusted-for-attestation, for a year, as its service signs it.
                let rule = says(
                    key_entity(&self.policy_key.public_key(), "policyKey"),
                    unary(
                        key_entity(admitted.app_key(), "appKey"),
                        verb::IS_TRUSTED_FOR_ATTESTATION,
                    ),
                );
                sign_claim(
                    &self.policy_key,
                    "policyKey",
                    &rule,
                    PLATFORM_RULE,
                    now,
                    now + 365 * 86_400,
                )
                .map(|c| prost::Message::encode_to_vec(&c))
                .map_err(|e| internal(e.to_string()))
            }
        }
    }

    /// Record the decision in `result` in `record` and append it to the
    /// audit log. A grant whose record is not durably written is not made:
    /// it becomes an `audit-unavailable` refusal. A refusal whose record
    /// cannot be written is still a refusal (the failure is logged).
    fn audit(
        &self,
        record: &mut AuditRecord,
        result: Result<Vec<u8>, Failure>,
    ) -> Result<Vec<u8>, Failure> {
        match &result {
            Ok(_) => {
                record.verdict = "admit";
                record.code = "admitted".into();
            }
            Err(f) => {
                record.code = f.code.clone();
                record.reason = f.reason.clone();
            }
        }
        match (lock(&self.audit).append(record), result) {
            (Ok(()), result) => result,
            (Err(e), Ok(_)) => {
                warn!(peer = %record.peer, role = %record.role, measurement = %record.measurement, "NOT granted: its audit record could not be written: {e}");
                Err(Failure::new(
                    AUDIT_UNAVAILABLE,
                    format!(
                        "the service could not durably record this admission ({e}), so it was not granted; retry once the operator has freed space in the service directory"
                    ),
                ))
            }
            (Err(e), Err(f)) => {
                warn!(peer = %record.peer, code = %f.code, "refusal not recorded in the audit log: {e}");
                Err(f)
            }
        }
    }

    /// The policy object, re-issued at `now` (same version and statements)
    /// so peers can bound the age of the copy they keep.
    fn signed_policy(&self, now: i64) -> anyhow::Result<Vec<u8>> {
        let bytes = std::fs::read(self.dir.path("policy_object.bin"))?;
        let object: SignedPolicyMessage = decode_bounded(&bytes)?;
        Ok(reissue(&self.policy_key, object, now)?.to_bytes())
    }

    fn authenticate(
        &self,
        request: &TrustRequestMessage,
        peer: SocketAddr,
        now: i64,
    ) -> Result<Vec<u8>, Failure> {
        let mut record = AuditRecord::new(now, peer.to_string(), EVIDENCE_TYPE_CCA, "nonce");
        let result = self.authenticate_inner(request, peer, now, &mut record);
        let result = self.audit(&mut record, result);
        match &result {
            Ok(_) => {
                info!(%peer, role = %record.role, measurement = %record.measurement, insecure = record.insecure, insecure_reason = %record.insecure_reason, "admitted")
            }
            Err(f) => info!(%peer, role = %record.role, code = %f.code, "refused: {}", f.reason),
        }
        result
    }

    fn authenticate_inner(
        &self,
        request: &TrustRequestMessage,
        peer: SocketAddr,
        now: i64,
        record: &mut AuditRecord,
    ) -> Result<Vec<u8>, Failure> {
        let facts = extract(request)?;
        record.role = facts.role.to_string();
        // What the token claims, for the audit trail (verified below).
        if let Ok(t) = attestation::cca::parse(&facts.token) {
            record.measurement = t.realm().claims().rim.to_hex();
            record.platform = hex::encode(t.platform().claims().instance_id);
        }
        // The nonce is spent by any attempt, so a refused token cannot be retried with it.
        lock(&self.nonces).consume(&facts.nonce, now)?;
        let policy = self.current_policy(now);
        let admitted = decide(
            &policy,
            &facts.token,
            &facts.nonce,
            &facts.auth_key,
            &facts.role,
        )?;
        if let Some(why) = &admitted.insecure {
            record.insecure = true;
            record.insecure_reason = why.tag();
        }
        issue_admission_certificate(
            &self.policy_key_pkcs8,
            &admitted,
            now,
            self.settings.cert_validity_secs,
            Some(peer.ip()),
        )
        .map_err(|e| Failure::new("internal", e.to_string()))
    }
}

fn extract(request: &TrustRequestMessage) -> Result<Request, Failure> {
    let bad = |why: &str| Failure::new("malformed-evidence", why.to_string());
    let package = request
        .support
        .as_ref()
        .ok_or_else(|| bad("no evidence package"))?;
    let (mut nonce, mut user_data, mut role, mut token) = (None, None, None, None);
    for fact in &package.fact_assertion {
        let slot = match fact.evidence_type.as_deref() {
            Some(FACT_NONCE) => &mut nonce,
            Some(FACT_USER_DATA) => &mut user_data,
            Some(FACT_ROLE) => &mut role,
            Some(FACT_CCA_TOKEN) => &mut token,
            other => return Err(bad(&format!("unexpected evidence entry {other:?}"))),
        };
        if slot.is_some() {
            return Err(bad("an evidence entry appears twice"));
        }
        *slot = Some(fact.serialized_evidence.clone().unwrap_or_default());
    }
    let (Some(nonce), Some(user_data), Some(role), Some(token)) = (nonce, user_data, role, token)
    else {
        return Err(bad(
            "the package needs cca-nonce, attestation-user-data, requested-role and cca-token",
        ));
    };
    let user_data: AttestationUserData = decode_bounded(&user_data)
        .map_err(|_| bad("attestation-user-data is not an attestation_user_data"))?;
    let key = user_data
        .enclave_key
        .as_ref()
        .ok_or_else(|| bad("attestation_user_data has no enclave_key"))?;
    let auth_key =
        PublicKey::from_key_message(key).map_err(|e| bad(&format!("enclave_key: {e}")))?;
    let role = std::str::from_utf8(&role)
        .ok()
        .and_then(|r| Role::new(r).ok())
        .ok_or_else(|| bad("invalid role"))?;
    Ok(Request {
        nonce,
        auth_key,
        role,
        token,
    })
}

fn response(
    echo: Option<(Option<String>, Option<String>)>,
    status: &str,
    artifact: Vec<u8>,
) -> TrustResponseMessage {
    let (requesting_enclave_tag, providing_enclave_tag) = echo.unwrap_or_default();
    TrustResponseMessage {
        status: Some(status.into()),
        requesting_enclave_tag,
        providing_enclave_tag,
        artifact: Some(artifact),
    }
}

fn succeeded(
    echo: Option<(Option<String>, Option<String>)>,
    artifact: Vec<u8>,
) -> TrustResponseMessage {
    response(echo, STATUS_SUCCEEDED, artifact)
}

fn failed(echo: Option<(Option<String>, Option<String>)>, f: Failure) -> TrustResponseMessage {
    response(
        echo,
        STATUS_FAILED,
        format!("{}: {}", f.code, f.reason).into_bytes(),
    )
}

/// A failure response for conditions found before a request was decoded.
pub fn failed_frame(code: &str, reason: &str) -> TrustResponseMessage {
    failed(None, Failure::new(code, reason))
}
