//! The newest signed-policy version this device has accepted, sealed in its
//! store so it survives restarts: a certifier (or a network attacker in
//! front of it) that serves an older policy — one from before a measurement
//! was revoked — is refused, even by an agent started afresh.
//!
//! Must never: accept a policy older than the remembered floor, or lower the
//! floor. A store that cannot be written keeps the check (against what it
//! holds) and only loses the raise, which it says.

use attestation::certifier::policy::Policy;
use attestation::certifier::policy_object::{PolicyFloor, PolicyObjectError};

use crate::store::{LocalStore, StoreError};

/// The sealed secret that holds the floor (u64, big-endian).
const SECRET: &str = "policy-floor";

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
