//! The signed policy as this device knows it, sealed in its store so it
//! survives restarts:
//!
//! * the newest version accepted (the floor): a certifier, or a network
//!   attacker in front of it, that serves an older policy — one from before
//!   a measurement was revoked — is refused, even by an agent started afresh;
//! * the last verified policy object: when the certifier cannot be reached
//!   the agent uses it, but only within the age the policy itself allows
//!   (`max_age_secs`, signed inside it), and says so.
//!
//! Must never: accept a policy older than the remembered floor, lower the
//! floor, or use a kept copy past its signed age. A store that cannot be
//! written keeps the checks (against what it holds) and only loses the
//! update, which it says.

use attestation::certifier::client::{Client, ClientError, unix_now};
use attestation::certifier::keys::PublicKey;
use attestation::certifier::policy::Policy;
use attestation::certifier::policy_object::{
    PolicyFloor, PolicyObjectError, check_age, verify_policy,
};

use crate::store::{LocalStore, StoreError};

/// The sealed secret that holds the floor (u64, big-endian).
const SECRET: &str = "policy-floor";
/// The sealed secret that holds the last verified policy object.
const KEPT: &str = "policy-object";

/// Why the policy was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// Older than a version this device accepted before.
    #[error("{0}")]
    Rollback(#[from] PolicyObjectError),
    /// The remembered floor could not be read.
    #[error("reading the remembered policy version: {0}")]
    Store(#[from] StoreError),
    /// The sealed value is not a version.
    #[error("the remembered policy version is corrupt ({0} bytes)")]
    Corrupt(usize),
    /// The served policy did not verify, or could not be fetched for
    /// another reason than the service being out of reach.
    #[error("fetching the signed policy: {0}")]
    Fetch(ClientError),
    /// The certifier is out of reach and no kept copy is usable.
    #[error("the certifier cannot be reached ({reach}) and {kept}")]
    Unreachable {
        /// Why it could not be reached.
        reach: String,
        /// What is wrong with the kept copy.
        kept: String,
    },
}

/// The signed policy to use now: fetched and verified (then kept, sealed),
/// or — when the certifier cannot be reached — the kept copy, if it is
/// within its signed age. Either way never older than the floor.
pub async fn current(
    store: Option<&LocalStore>,
    client: &Client,
    policy_key: &PublicKey,
) -> Result<Policy, FloorError> {
    let now = unix_now();
    let reach = match client.policy_object_bytes().await {
        Ok(bytes) => {
            let policy = verify_policy(&bytes, policy_key, now)
                .map_err(|e| FloorError::Fetch(ClientError::Protocol(e.to_string())))?;
            if let Some(store) = store {
                accept(store, &policy)?;
                keep(store, &bytes, &policy, policy_key, now);
            }
            return Ok(policy);
        }
        Err(
            e @ (ClientError::Connect { .. }
            | ClientError::ConnectTimeout(_)
            | ClientError::Wire(_)),
        ) => e.to_string(),
        Err(e) => return Err(FloorError::Fetch(e)),
    };
    let unusable = |kept: String| FloorError::Unreachable {
        reach: reach.clone(),
        kept,
    };
    let Some(store) = store else {
        return Err(unusable("this command keeps no policy".into()));
    };
    let Some(bytes) = store.get_secret(KEPT)? else {
        return Err(unusable("no signed policy has been kept yet".into()));
    };
    let policy = verify_policy(bytes.expose(), policy_key, now)
        .map_err(|e| unusable(format!("the kept policy is refused: {e}")))?;
    check_age(&policy, now).map_err(|e| unusable(e.to_string()))?;
    remembered(store)?.accept(&policy)?;
    eprintln!(
        "note: the certifier cannot be reached ({reach}); using the kept signed policy version {} issued {} s ago (usable for {} s)",
        policy.version(),
        now.saturating_sub(policy.issued_at()),
        policy.max_age_secs()
    );
    Ok(policy)
}

/// Keep `bytes` (the verified `policy`) for offline use, unless the kept
/// copy is of the same version and younger than half its allowed age: a
/// command that only reads then writes nothing.
fn keep(store: &LocalStore, bytes: &[u8], policy: &Policy, policy_key: &PublicKey, now: i64) {
    let kept = store
        .get_secret(KEPT)
        .ok()
        .flatten()
        .and_then(|b| verify_policy(b.expose(), policy_key, now).ok());
    let fresh_enough = kept.is_some_and(|k| {
        k.version() >= policy.version()
            && now.saturating_sub(k.issued_at())
                < i64::try_from(k.max_age_secs() / 2).unwrap_or(i64::MAX)
    });
    if fresh_enough {
        return;
    }
    if let Err(e) = store.put_secret(KEPT, bytes) {
        eprintln!("note: the signed policy is not kept for offline use ({e})");
    }
}

/// The floor this store remembers (0 when none).
pub fn remembered(store: &LocalStore) -> Result<PolicyFloor, FloorError> {
    match store.get_secret(SECRET)? {
        None => Ok(PolicyFloor::new(0)),
        Some(bytes) => {
            let raw = <[u8; 8]>::try_from(bytes.expose())
                .map_err(|_| FloorError::Corrupt(bytes.len()))?;
            Ok(PolicyFloor::new(u64::from_be_bytes(raw)))
        }
    }
}

/// Refuse `policy` if it is older than the remembered floor; otherwise
/// remember its version (best effort on a read-only store).
pub fn accept(store: &LocalStore, policy: &Policy) -> Result<(), FloorError> {
    let mut floor = remembered(store)?;
    let before = floor.newest();
    floor.accept(policy)?;
    if floor.newest() > before
        && let Err(e) = store.put_secret(SECRET, &floor.newest().to_be_bytes())
    {
        eprintln!(
            "note: policy version {} is not remembered ({e}); the next run checks against version {before}",
            floor.newest()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use attestation::certifier::keys::SigningKey;
    use attestation::certifier::policy_object::{sign_policy, verify_policy};
    use attestation::platform::SealingKey;

    fn policy(key: &SigningKey, version: u64) -> Policy {
        // An empty claim sequence encodes as no bytes.
        let object = sign_policy(key, version, 1_800_000_000, Vec::new()).unwrap();
        verify_policy(&object.to_bytes(), &key.public_key(), 1_800_000_000).unwrap()
    }

    /// Issue 17 item 2: the floor is sealed in the store, so an older policy
    /// is refused after a restart too; a newer one raises it.
    #[test]
    fn an_older_policy_is_refused_across_restarts() {
        let dir = std::env::temp_dir().join(format!("policy-floor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sealing = SealingKey::new([5; 32]);
        let (key, _) = SigningKey::generate_p256().unwrap();
        {
            let store = LocalStore::open(&dir, &sealing).unwrap();
            accept(&store, &policy(&key, 3)).unwrap();
            accept(&store, &policy(&key, 5)).unwrap();
        }
        // A new process: the same store, opened again.
        let store = LocalStore::open(&dir, &sealing).unwrap();
        assert_eq!(remembered(&store).unwrap().newest(), 5);
        let err = accept(&store, &policy(&key, 4)).unwrap_err();
        assert!(
            matches!(
                err,
                FloorError::Rollback(PolicyObjectError::Rollback {
                    newest: 5,
                    offered: 4
                })
            ),
            "{err:?}"
        );
        accept(&store, &policy(&key, 5)).unwrap();
        // A read-only store still checks, and says it cannot remember.
        let ro = LocalStore::open_read_only(&dir, &sealing).unwrap();
        assert!(accept(&ro, &policy(&key, 4)).is_err());
        accept(&ro, &policy(&key, 9)).unwrap();
        assert_eq!(remembered(&ro).unwrap().newest(), 5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
