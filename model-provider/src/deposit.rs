//! Global models produced by federated learning: a runtime seals each new
//! global model into the blob store and deposits its key here, so the
//! provider's release policy governs it like a model the provider sealed.
//!
//! Must never: accept a deposit for a model id that is not a configured
//! federated task (a runtime must not replace a provider's own model), from
//! a peer that is not an admitted runtime with an allowed measurement, with
//! a key that does not match its stated key id, or with a version (the round
//! that produced it) not greater than the task's current one — a restarted
//! or rolled-back runtime must not put an older model on top of a newer one.
//! The current version is the highest one in the keystore, which keeps every
//! deposit (retired or not), so a provider restart does not forget it.

use attestation::atls::VerifiedPeer;
use attestation::certifier::policy::Role;
use protocol::ServingPolicy;
use protocol::sealed::ModelKey;

use crate::release::ReleaseRule;

/// Which deposits are accepted.
#[derive(Debug, Clone, Default)]
pub struct Intake {
    /// Federated task ids whose global models may be deposited.
    pub tasks: Vec<String>,
    /// Runtime measurements (hex) allowed to deposit; empty: any trusted runtime.
    pub runtimes: Vec<String>,
}

/// Why a deposit is refused (logged; the peer hears "deposit not accepted").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a configured federated task.
    #[error("model {0:?} is not a federated task of this provider")]
    NotATask(String),
    /// Only runtimes aggregate.
    #[error("role {0} may not deposit models")]
    Role(String),
    /// Measurement not allowed.
    #[error("runtime measurement {0} may not deposit models")]
    Measurement(String),
    /// Key and key id disagree, or the key has the wrong length.
    #[error("the deposited key does not match its key id")]
    Key,
    /// The version is not a round number.
    #[error("deposit version {0:?} is not a round number")]
    Version(String),
    /// The task already has this version or a newer one.
    #[error(
        "version {offered} is not newer than the task's current version {current}; resume the task from round {next}",
        next = current + 1
    )]
    VersionNotNewer {
        /// The version deposited.
        offered: u64,
        /// The task's current version.
        current: u64,
    },
}

impl Refused {
    /// Stable short code, sent to the runtime as `<code>: <reason>`.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::NotATask(_) => "deposit-not-a-task",
            Refused::Role(_) => "deposit-role",
            Refused::Measurement(_) => "deposit-measurement",
            Refused::Key => "deposit-key",
            Refused::Version(_) => "deposit-version-invalid",
            Refused::VersionNotNewer { .. } => "deposit-version-not-newer",
        }
    }
}

/// Check a deposit's version against the task's `current` one (`None`:
/// nothing deposited yet); returns the version.
pub fn check_version(version: &str, current: Option<u64>) -> Result<u64, Refused> {
    // Plain decimal digits only: "+5" or "05" would sort oddly elsewhere.
    let offered = version
        .parse::<u64>()
        .ok()
        .filter(|v| v.to_string() == version)
        .ok_or_else(|| Refused::Version(version.chars().take(32).collect()))?;
    match current {
        Some(current) if offered <= current => Err(Refused::VersionNotNewer { offered, current }),
        _ => Ok(offered),
    }
}

/// The answer to a runtime's `BundleQuery` for a configured federated task
/// that has no global model yet: "nothing deposited", distinct from a
/// refusal, so a starting runtime knows to begin at round 1.
pub fn nothing_deposited(intake: &Intake, peer: &VerifiedPeer, model_id: &str) -> bool {
    peer.role == Role::runtime() && intake.tasks.iter().any(|t| t == model_id)
}

/// Whether `peer` may coordinate federated task `model_id`: a configured
/// task, an admitted runtime, an allowed measurement. What both a deposit
/// and a request for the task's terms need.
pub fn may_coordinate(intake: &Intake, peer: &VerifiedPeer, model_id: &str) -> Result<(), Refused> {
    if !intake.tasks.iter().any(|t| t == model_id) {
        return Err(Refused::NotATask(model_id.to_string()));
    }
    if peer.role != Role::runtime() {
        return Err(Refused::Role(peer.role.to_string()));
    }
    let m = hex::encode(&peer.measurement);
    if !intake.runtimes.is_empty() && !intake.runtimes.iter().any(|x| x.eq_ignore_ascii_case(&m)) {
        return Err(Refused::Measurement(m));
    }
    Ok(())
}

/// Check a deposit; returns the key to store.
pub fn check(
    intake: &Intake,
    peer: &VerifiedPeer,
    model_id: &str,
    key_id: &[u8; 16],
    key: &[u8],
) -> Result<ModelKey, Refused> {
    may_coordinate(intake, peer, model_id)?;
    let key = ModelKey::from_slice(key).ok_or(Refused::Key)?;
    if key.key_id().as_bytes() != key_id {
        return Err(Refused::Key);
    }
    Ok(key)
}

/// Who may receive a deposited global model's key: devices for on-device
/// use and runtimes for serving and further rounds; label-only outputs.
pub fn release_rule() -> ReleaseRule {
    ReleaseRule {
        roles: vec!["device".into(), "runtime".into()],
        measurements: Vec::new(),
        uses: vec![
            "on-device".into(),
            "remote-inference".into(),
            "fl-aggregate".into(),
        ],
        serving: ServingPolicy::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attestation::certifier::keys::PublicKey;

    fn peer(role: Role, m: u8) -> VerifiedPeer {
        VerifiedPeer {
            role,
            measurement: vec![m; 64],
            insecure_platform: true,
            platform_instance: [1; 33],
            auth_key: PublicKey::P256(vec![4; 65]),
            auth_key_spki: Vec::new(),
            not_after: i64::MAX,
        }
    }

    #[test]
    fn only_configured_tasks_from_allowed_runtimes_with_matching_keys() {
        let intake = Intake {
            tasks: vec!["digits-fl".into()],
            runtimes: vec![hex::encode([1u8; 64])],
        };
        let key = ModelKey::generate().unwrap();
        let id = *key.key_id().as_bytes();
        let k = key.expose().to_vec();
        let rt = peer(Role::runtime(), 1);
        assert!(check(&intake, &rt, "digits-fl", &id, &k).is_ok());
        assert_eq!(
            check(&intake, &rt, "digits", &id, &k).unwrap_err(),
            Refused::NotATask("digits".into())
        );
        assert!(matches!(
            check(&intake, &peer(Role::device(), 1), "digits-fl", &id, &k),
            Err(Refused::Role(_))
        ));
        assert!(matches!(
            check(&intake, &peer(Role::runtime(), 2), "digits-fl", &id, &k),
            Err(Refused::Measurement(_))
        ));
        assert_eq!(
            check(&intake, &rt, "digits-fl", &[0; 16], &k).unwrap_err(),
            Refused::Key
        );
        assert_eq!(
            check(&intake, &rt, "digits-fl", &id, &k[..31]).unwrap_err(),
            Refused::Key
        );
        // Nothing configured: nothing accepted.
        assert!(check(&Intake::default(), &rt, "digits-fl", &id, &k).is_err());
    }

    #[test]
    fn a_deposit_must_be_newer_than_the_current_version() {
        assert_eq!(check_version("1", None), Ok(1));
        assert_eq!(check_version("6", Some(5)), Ok(6));
        for (v, current) in [("1", 5), ("5", 5)] {
            let e = check_version(v, Some(current)).unwrap_err();
            assert_eq!(e.code(), "deposit-version-not-newer");
            assert_eq!(
                e,
                Refused::VersionNotNewer {
                    offered: v.parse().unwrap(),
                    current
                }
            );
        }
        for bad in ["", "v2", "-1", "+7", "07", "1.0", "99999999999999999999999"] {
            assert!(
                matches!(check_version(bad, None), Err(Refused::Version(_))),
                "{bad}"
            );
        }
    }
}
