//! The Certifier Framework's own evidence, `vse-attestation-package`, as its
//! simulated and application enclaves send it — verified with the
//! framework's rules, so apps built on the framework can be admitted by our
//! service unchanged.
//!
//! The package is a list of evidence entries, platform evidence first and
//! the attestation last:
//!
//! 1. `signed-claim`: "platformKey says attestKey is-trusted-for-attestation",
//!    signed by the platform key it names (more than one may chain keys);
//! 2. `signed-vse-attestation-report`: a `signed_report` whose `report` is a
//!    serialized `vse_attestation_report_info` (measurement, validity window,
//!    and the app's key in `attestation_user_data`), signed by the attest key.
//!
//! Every signature covers the received bytes (never a re-encoding); every
//! validity window must contain `now`. The policy must trust the platform key
//! ("policyKey says platformKey is-trusted-for-attestation") and the
//! measurement ("policyKey says M is-trusted"); then the framework's proof
//! (R5, R5, R6, R3, and R1 or R7) concludes "appKey is-trusted-for-<purpose>".
//!
//! This evidence carries no nonce: the same bytes can be replayed for as long
//! as its windows last. It is therefore refused unless the policy entry of
//! the platform key explicitly allows nonce-less evidence (`no-freshness`).
//!
//! Must never: admit without the freshness permission, with a signature over
//! anything but the received bytes, or with a measurement the policy does not
//! list for framework apps (roles are a CCA-only notion and grant nothing here).

use prost::Message;
use thiserror::Error;

use super::claims::{ClaimError, parse_time, verify_claim};
use super::clause::{entity_key, key_entity, measurement_entity, says, simple, unary, verb};
use super::keys::{KeyError, PublicKey, SigningKey};
use super::policy::{Policy, VsePlatform};
use super::proof::{ProofError, ProofStep, verify_proof};
use super::proto::{
    AttestationUserData, Evidence, EvidencePackage, KeyMessage, SignedClaimMessage, SignedReport,
    VseAttestationReportInfo, VseClause, decode_bounded,
};

/// `submitted_evidence_type` of this evidence.
pub const EVIDENCE_TYPE: &str = "vse-attestation-package";
/// Evidence entry: a signed claim (platform endorsement).
pub const FACT_SIGNED_CLAIM: &str = "signed-claim";
/// Evidence entry: the signed report (last).
pub const FACT_SIGNED_REPORT: &str = "signed-vse-attestation-report";
/// `signed_report.report_format`.
pub const REPORT_FORMAT: &str = "vse-attestation-report";
/// Enclave types that send this evidence.
pub const ENCLAVE_TYPES: [&str; 2] = ["simulated-enclave", "application-enclave"];
/// The simulated enclave's type string.
pub const SIMULATED_ENCLAVE: &str = "simulated-enclave";

/// Signed claims accepted before the report (the framework's chains are one
/// or two long).
const MAX_ENDORSEMENTS: usize = 8;
/// Longest measurement accepted (the framework's are 32 or 48 bytes).
const MAX_MEASUREMENT: usize = 64;

/// What the app asks the service to conclude about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// "appKey is-trusted-for-authentication": an admission certificate.
    Authentication,
    /// "appKey is-trusted-for-attestation": the platform rule (a signed claim).
    Attestation,
}

impl Goal {
    fn verb(self) -> &'static str {
        match self {
            Goal::Authentication => verb::IS_TRUSTED_FOR_AUTHENTICATION,
            Goal::Attestation => verb::IS_TRUSTED_FOR_ATTESTATION,
        }
    }
    fn rule(self) -> u8 {
        match self {
            Goal::Authentication => 1,
            Goal::Attestation => 7,
        }
    }
}

/// A verified framework app. Only [`verify_package`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VseAdmitted {
    measurement: Vec<u8>,
    app_key: PublicKey,
    platform_key: PublicKey,
    goal: Goal,
}

impl VseAdmitted {
    /// The app's measurement (from the report; equal to the policy's).
    pub fn measurement(&self) -> &[u8] {
        &self.measurement
    }
    /// The app's key from its attestation user data.
    pub fn app_key(&self) -> &PublicKey {
        &self.app_key
    }
    /// The policy-trusted platform key at the root of the endorsements.
    pub fn platform_key(&self) -> &PublicKey {
        &self.platform_key
    }
    /// What was proved about the app key.
    pub fn goal(&self) -> Goal {
        self.goal
    }
}

/// Why framework evidence is refused. [`VseRefusal::code`] names the check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VseRefusal {
    /// The package is not shaped as the framework sends it.
    #[error("malformed vse-attestation-package: {0}")]
    Malformed(String),
    /// A prover or enclave type this evidence kind does not come from.
    #[error("{field} {value:?} is not accepted with vse-attestation-package evidence")]
    UnsupportedType {
        /// `prover_type` or `enclave_type`.
        field: &'static str,
        /// What was sent.
        value: String,
    },
    /// A platform endorsement failed its signature, format or window check.
    #[error("platform endorsement {index}: {source}")]
    Endorsement {
        /// Position in the package.
        index: usize,
        /// Why.
        #[source]
        source: ClaimError,
    },
    /// An endorsement that is not "K says K2 is-trusted-for-attestation" by its signer.
    #[error(
        "platform endorsement {0} is not \"signer says key is-trusted-for-attestation\" by its own signer"
    )]
    NotAnEndorsement(usize),
    /// No endorsement chain starts at a platform key the policy trusts.
    #[error("no platform key trusted by the policy endorses the key that signed the report")]
    UntrustedPlatform,
    /// The policy does not allow this evidence without a nonce.
    #[error(
        "vse-attestation-package evidence has no nonce and can be replayed; this policy does not allow nonce-less evidence from that platform (import the framework policy with --allow-no-freshness to accept it)"
    )]
    FreshnessRequired,
    /// The report's signature does not verify over the received report bytes.
    #[error("the attestation report's signature does not verify ({0})")]
    ReportSignature(String),
    /// The report is outside its validity window.
    #[error("the attestation report is valid from {not_before} to {not_after}; now is outside")]
    ReportExpired {
        /// Start.
        not_before: String,
        /// End.
        not_after: String,
    },
    /// The measurement is revoked.
    #[error("measurement {measurement} is revoked: {reason}")]
    Revoked {
        /// Hex.
        measurement: String,
        /// Why.
        reason: String,
    },
    /// The measurement is not trusted for framework apps.
    #[error("measurement {0} is not trusted by the policy")]
    NotTrusted(String),
    /// The proof did not check (an internal inconsistency; never expected).
    #[error("proof failed: {0}")]
    Proof(ProofError),
}

impl VseRefusal {
    /// A stable short code for logs, the audit log and the wire.
    pub fn code(&self) -> &'static str {
        match self {
            VseRefusal::Malformed(_) => "malformed-evidence",
            VseRefusal::UnsupportedType { .. } => "unsupported-enclave-type",
            VseRefusal::Endorsement { .. } => "platform-endorsement-rejected",
            VseRefusal::NotAnEndorsement(_) => "platform-endorsement-not-endorsing",
            VseRefusal::UntrustedPlatform => "untrusted-platform",
            VseRefusal::FreshnessRequired => "no-freshness-refused",
            VseRefusal::ReportSignature(_) => "report-signature",
            VseRefusal::ReportExpired { .. } => "report-expired",
            VseRefusal::Revoked { .. } => "measurement-revoked",
            VseRefusal::NotTrusted(_) => "measurement-not-trusted",
            VseRefusal::Proof(_) => "proof-failed",
        }
    }
}

fn malformed(why: impl Into<String>) -> VseRefusal {
    VseRefusal::Malformed(why.into())
}

/// A verified endorsement: "signer says subject is-trusted-for-attestation".
struct Endorsement {
    signer: PublicKey,
    subject: PublicKey,
    statement: VseClause,
}

fn endorsement(
    index: usize,
    scm: &SignedClaimMessage,
    now: i64,
) -> Result<Endorsement, VseRefusal> {
    let vc = verify_claim(scm, now).map_err(|source| VseRefusal::Endorsement { index, source })?;
    let not = || VseRefusal::NotAnEndorsement(index);
    let sayer = vc.clause.subject.as_ref().and_then(entity_key);
    if vc.clause.verb.as_deref() != Some(verb::SAYS) || sayer.as_ref() != Some(&vc.signer) {
        return Err(not());
    }
    let inner = vc.clause.clause.as_deref().ok_or_else(not)?;
    let subject = inner
        .subject
        .as_ref()
        .and_then(entity_key)
        .ok_or_else(not)?;
    if inner.verb.as_deref() != Some(verb::IS_TRUSTED_FOR_ATTESTATION)
        || inner.object.is_some()
        || inner.clause.is_some()
    {
        return Err(not());
    }
    Ok(Endorsement {
        signer: vc.signer,
        subject,
        statement: vc.clause,
    })
}

/// The report's facts, after its signature and window checked out.
struct Report {
    signer: PublicKey,
    measurement: Vec<u8>,
    app_key: PublicKey,
}

fn report(bytes: &[u8], now: i64) -> Result<Report, VseRefusal> {
    let sr: SignedReport =
        decode_bounded(bytes).map_err(|e| malformed(format!("signed_report: {e}")))?;
    if sr.report_format.as_deref() != Some(REPORT_FORMAT) {
        return Err(malformed(format!(
            "report_format {:?}, expected {REPORT_FORMAT:?}",
            sr.report_format
        )));
    }
    let body = sr.report.as_deref().ok_or_else(|| malformed("no report"))?;
    let key = sr
        .signing_key
        .as_ref()
        .ok_or_else(|| malformed("report without signing_key"))?;
    let signer = PublicKey::from_key_message(key)
        .map_err(|e| malformed(format!("report signing_key: {e}")))?;
    let algorithm = sr.signing_algorithm.as_deref().unwrap_or_default();
    let signature = sr.signature.as_deref().unwrap_or_default();
    if !signer.verify(algorithm, body, signature) {
        return Err(VseRefusal::ReportSignature(algorithm.to_string()));
    }
    let info: VseAttestationReportInfo =
        decode_bounded(body).map_err(|e| malformed(format!("vse_attestation_report_info: {e}")))?;
    let (nb, na) = match (&info.not_before, &info.not_after) {
        (Some(nb), Some(na)) => (nb.clone(), na.clone()),
        _ => return Err(malformed("report without a validity window")),
    };
    let window = parse_time(&nb)
        .and_then(|b| parse_time(&na).map(|a| (b, a)))
        .map_err(|e| malformed(format!("report window: {e}")))?;
    if now < window.0 || now > window.1 {
        return Err(VseRefusal::ReportExpired {
            not_before: nb,
            not_after: na,
        });
    }
    let measurement = info
        .verified_measurement
        .filter(|m| !m.is_empty() && m.len() <= MAX_MEASUREMENT)
        .ok_or_else(|| {
            malformed(format!(
                "report measurement must be 1-{MAX_MEASUREMENT} bytes"
            ))
        })?;
    let user_data: AttestationUserData = decode_bounded(
        info.user_data
            .as_deref()
            .ok_or_else(|| malformed("report without user_data"))?,
    )
    .map_err(|e| malformed(format!("attestation_user_data: {e}")))?;
    let app_key = user_data
        .enclave_key
        .as_ref()
        .ok_or_else(|| malformed("attestation_user_data without enclave_key"))
        .and_then(|k| {
            PublicKey::from_key_message(k).map_err(|e| malformed(format!("enclave_key: {e}")))
        })?;
    Ok(Report {
        signer,
        measurement,
        app_key,
    })
}

/// The measurement a package's report claims, read without checking
/// anything: for audit records of refused requests only, never for a decision.
pub fn claimed_measurement(package: &EvidencePackage) -> Option<Vec<u8>> {
    let last = package.fact_assertion.last()?;
    let sr: SignedReport = decode_bounded(last.serialized_evidence.as_deref()?).ok()?;
    let info: VseAttestationReportInfo = decode_bounded(sr.report.as_deref()?).ok()?;
    info.verified_measurement
        .filter(|m| m.len() <= MAX_MEASUREMENT)
}

/// Verify a `vse-attestation-package` against `policy` at `now` and prove
/// `goal` for the app key it carries.
pub fn verify_package(
    policy: &Policy,
    package: &EvidencePackage,
    goal: Goal,
    now: i64,
) -> Result<VseAdmitted, VseRefusal> {
    let prover = package.prover_type.as_deref().unwrap_or_default();
    if prover != super::protocol::PROVER_TYPE {
        return Err(VseRefusal::UnsupportedType {
            field: "prover_type",
            value: prover.to_string(),
        });
    }
    let enclave = package.enclave_type.as_deref().unwrap_or_default();
    if !ENCLAVE_TYPES.contains(&enclave) {
        return Err(VseRefusal::UnsupportedType {
            field: "enclave_type",
            value: enclave.to_string(),
        });
    }
    let Some((last, platform_evidence)) = package.fact_assertion.split_last() else {
        return Err(malformed("no evidence entries"));
    };
    if platform_evidence.len() > MAX_ENDORSEMENTS {
        return Err(malformed(format!(
            "{} platform entries; at most {MAX_ENDORSEMENTS}",
            platform_evidence.len()
        )));
    }
    let bytes = |e: &Evidence| e.serialized_evidence.clone().unwrap_or_default();
    if last.evidence_type.as_deref() != Some(FACT_SIGNED_REPORT) {
        return Err(malformed(format!(
            "the last entry must be {FACT_SIGNED_REPORT:?}, not {:?}",
            last.evidence_type
        )));
    }
    let mut endorsements = Vec::with_capacity(platform_evidence.len());
    for (index, e) in platform_evidence.iter().enumerate() {
        if e.evidence_type.as_deref() != Some(FACT_SIGNED_CLAIM) {
            return Err(malformed(format!(
                "entry {index} is {:?}; only {FACT_SIGNED_CLAIM:?} may precede the report",
                e.evidence_type
            )));
        }
        let scm: SignedClaimMessage = decode_bounded(&bytes(e))
            .map_err(|err| malformed(format!("entry {index}: signed_claim_message: {err}")))?;
        endorsements.push(endorsement(index, &scm, now)?);
    }
    let report = report(&bytes(last), now)?;

    // The chain: from a platform key the policy trusts, along endorsements,
    // to the key that signed the report. Each link is one R5 step.
    let root = endorsements
        .iter()
        .find_map(|e| policy.vse_platform(&e.signer))
        .or_else(|| policy.vse_platform(&report.signer))
        .ok_or(VseRefusal::UntrustedPlatform)?;
    let mut trusted = vec![root.key.clone()];
    let mut used = Vec::new();
    let mut grew = true;
    while grew {
        grew = false;
        for (i, e) in endorsements.iter().enumerate() {
            // A subject is added once, so no endorsement is used twice.
            if trusted.contains(&e.signer) && !trusted.contains(&e.subject) {
                trusted.push(e.subject.clone());
                used.push(i);
                grew = true;
            }
        }
    }
    if !trusted.contains(&report.signer) {
        return Err(VseRefusal::UntrustedPlatform);
    }
    if !root.allow_no_freshness {
        return Err(VseRefusal::FreshnessRequired);
    }

    let m_hex = hex::encode(&report.measurement);
    if let Some(r) = policy.revocation(&report.measurement) {
        return Err(VseRefusal::Revoked {
            measurement: m_hex,
            reason: r.reason.clone(),
        });
    }
    let entry = policy
        .framework_measurements()
        .iter()
        .find(|m| m.measurement == report.measurement)
        .ok_or(VseRefusal::NotTrusted(m_hex))?;

    prove(
        policy,
        root,
        used.iter().map(|&i| &endorsements[i]),
        &report,
        &entry.statement,
        goal,
    )
    .map_err(VseRefusal::Proof)?;
    Ok(VseAdmitted {
        measurement: report.measurement,
        app_key: report.app_key,
        platform_key: root.key.clone(),
        goal,
    })
}

/// The framework's proof, from the policy's statements and those derived
/// from the verified evidence.
fn prove<'a>(
    policy: &Policy,
    root: &VsePlatform,
    chain: impl Iterator<Item = &'a Endorsement>,
    report: &Report,
    measurement_statement: &VseClause,
    goal: Goal,
) -> Result<(), ProofError> {
    let axiom = unary(
        key_entity(policy.policy_key(), "policyKey"),
        verb::IS_TRUSTED,
    );
    let for_attestation =
        |k: &PublicKey| unary(key_entity(k, "key"), verb::IS_TRUSTED_FOR_ATTESTATION);
    let m = measurement_entity(&report.measurement);
    let app = key_entity(&report.app_key, "appKey");
    let speaks = simple(app.clone(), verb::SPEAKS_FOR, m.clone());
    let report_says = says(key_entity(&report.signer, "attestKey"), speaks.clone());
    let m_trusted = unary(m, verb::IS_TRUSTED);
    let conclusion = unary(app, goal.verb());

    let step = |s1: &VseClause, s2: &VseClause, rule, c: &VseClause| ProofStep {
        s1: s1.clone(),
        s2: s2.clone(),
        rule,
        conclusion: c.clone(),
    };
    let mut proved = vec![
        axiom.clone(),
        root.statement.clone(),
        measurement_statement.clone(),
        report_says.clone(),
    ];
    let mut steps = vec![step(
        &axiom,
        &root.statement,
        5,
        &for_attestation(&root.key),
    )];
    for e in chain {
        proved.push(e.statement.clone());
        steps.push(step(
            &for_attestation(&e.signer),
            &e.statement,
            5,
            &for_attestation(&e.subject),
        ));
    }
    steps.push(step(
        &for_attestation(&report.signer),
        &report_says,
        6,
        &speaks,
    ));
    steps.push(step(&axiom, measurement_statement, 3, &m_trusted));
    steps.push(step(&m_trusted, &speaks, goal.rule(), &conclusion));
    verify_proof(&conclusion, &proved, &steps)
}

/// The platform endorsement the framework's provisioning writes:
/// "platformKey says attestKey is-trusted-for-attestation", signed by the
/// platform key, valid over `[not_before, not_after]` (Unix seconds).
pub fn sign_endorsement(
    platform: &SigningKey,
    attest_key: &PublicKey,
    not_before: i64,
    not_after: i64,
) -> Result<SignedClaimMessage, KeyError> {
    let statement = says(
        key_entity(&platform.public_key(), "platformKey"),
        unary(
            key_entity(attest_key, "attestKey"),
            verb::IS_TRUSTED_FOR_ATTESTATION,
        ),
    );
    super::claims::sign_claim(
        platform,
        "platformKey",
        &statement,
        "",
        not_before,
        not_after,
    )
}

/// INSECURE: the framework's simulated enclave, as a prover for our client.
///
/// It signs attestation reports with an attest key read from the
/// framework's provisioning files and sends the platform's endorsement of
/// that key. Anyone holding those files can claim any measurement: it is for
/// interoperability tests against the framework's service, never for
/// protecting anything.
pub struct InsecureSimulatedEnclave {
    attest_key: SigningKey,
    endorsement: Vec<u8>,
    measurement: Vec<u8>,
}

impl std::fmt::Debug for InsecureSimulatedEnclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InsecureSimulatedEnclave")
            .field("attest_key", &self.attest_key)
            .field("measurement", &hex::encode(&self.measurement))
            .finish_non_exhaustive()
    }
}

impl InsecureSimulatedEnclave {
    /// From the framework's provisioning files: the attest key (a private
    /// `key_message`, e.g. `attest_key_file.bin`), the platform's endorsement
    /// of it (a `signed_claim_message`, e.g. `platform_attest_endorsement.bin`,
    /// sent as received) and the measurement this enclave claims.
    pub fn new(
        attest_key: &KeyMessage,
        endorsement: Vec<u8>,
        measurement: Vec<u8>,
    ) -> Result<Self, KeyError> {
        Ok(Self {
            attest_key: SigningKey::from_rsa_key_message(attest_key)?,
            endorsement,
            measurement,
        })
    }

    /// The evidence package for `app_key`, with a report valid from `now`
    /// for `validity_secs`.
    pub fn evidence_package(
        &self,
        app_key: &PublicKey,
        now: i64,
        validity_secs: i64,
    ) -> Result<EvidencePackage, KeyError> {
        let time = super::claims::format_time(now);
        let user_data = AttestationUserData {
            enclave_type: Some(SIMULATED_ENCLAVE.into()),
            time: Some(time.clone()),
            enclave_key: Some(app_key.to_key_message("appKey")),
            policy_key: None,
        };
        let info = VseAttestationReportInfo {
            enclave_type: Some(SIMULATED_ENCLAVE.into()),
            verified_measurement: Some(self.measurement.clone()),
            not_before: Some(time),
            not_after: Some(super::claims::format_time(now + validity_secs)),
            user_data: Some(user_data.encode_to_vec()),
        };
        let report = info.encode_to_vec();
        let signature = self.attest_key.sign(&report)?;
        let signed = SignedReport {
            report_format: Some(REPORT_FORMAT.into()),
            report: Some(report),
            signing_key: Some(self.attest_key.public_key().to_key_message("attestKey")),
            signing_algorithm: Some(self.attest_key.algorithm().into()),
            signature: Some(signature),
        };
        let fact = |t: &str, b: Vec<u8>| Evidence {
            evidence_type: Some(t.into()),
            serialized_evidence: Some(b),
        };
        Ok(EvidencePackage {
            prover_type: Some(super::protocol::PROVER_TYPE.into()),
            enclave_type: Some(SIMULATED_ENCLAVE.into()),
            fact_assertion: vec![
                fact(FACT_SIGNED_CLAIM, self.endorsement.clone()),
                fact(FACT_SIGNED_REPORT, signed.encode_to_vec()),
            ],
        })
    }
}
