//! The agent's attested identity: its admission certificate as `device` and
//! the TLS auth key it certifies. Kept in the local store (the key sealed to
//! this realm) and reused while the certificate has more than
//! [`RENEW_BEFORE_SECS`] left, so a phone does not attest for every request.
//!
//! Must never: reuse a certificate that is expired, not signed by the
//! configured policy key, not for role `device`, or not for the stored key;
//! or keep the auth key anywhere but sealed to this realm.

use std::time::Duration;

use anyhow::{Context, Result};
use attestation::atls::{Identity, PolicyAnchor};
use attestation::certifier::admission::verify_admission_certificate;
use attestation::certifier::client::{Client, unix_now};
use attestation::certifier::keys::SigningKey;
use attestation::certifier::policy::Role;
use attestation::platform::EvidenceSource;
use tracing::info;

use crate::store::LocalStore;

/// Certificates with less than this left are renewed before use.
pub const RENEW_BEFORE_SECS: i64 = 300;

const CERT: &str = "admission-certificate";
const KEY: &str = "auth-key";

/// Why a stored identity is not reused (said on stderr, then re-admitted).
fn stored(store: &LocalStore, anchor: &PolicyAnchor) -> Result<Identity, String> {
    let cert = store
        .get_secret(CERT)
        .map_err(|e| e.to_string())?
        .ok_or("no stored admission certificate")?;
    let key = store
        .get_secret(KEY)
        .map_err(|e| e.to_string())?
        .ok_or("no stored auth key")?;
    let now = unix_now();
    let claims = verify_admission_certificate(cert.expose(), anchor.key(), now)
        .map_err(|e| format!("the stored admission certificate is unusable: {e}"))?;
    if claims.not_after - now < RENEW_BEFORE_SECS {
        return Err("the stored admission certificate expires within 5 minutes".into());
    }
    if claims.role != Role::device() {
        return Err(format!(
            "the stored certificate is for role {}",
            claims.role
        ));
    }
    let signing = SigningKey::from_pkcs8(key.expose()).map_err(|e| e.to_string())?;
    if signing.public_key() != claims.auth_key {
        return Err("the stored certificate does not certify the stored key".into());
    }
    Ok(Identity::new(cert.expose().to_vec(), key.expose().to_vec()))
}

/// A usable identity: the stored one if still good, else a new admission.
/// Without a store (no sealing key), every run is admitted afresh.
pub async fn device_identity(
    store: Option<&LocalStore>,
    platform: &dyn EvidenceSource,
    certifier: &str,
    anchor: &PolicyAnchor,
) -> Result<Identity> {
    if let Some(store) = store {
        match stored(store, anchor) {
            Ok(identity) => return Ok(identity),
            Err(why) => eprintln!("getting admitted as device ({why})"),
        }
    }
    let (auth, pkcs8) = SigningKey::generate_p256().context("generating the TLS auth key")?;
    let cert = Client::new(certifier.to_string(), Duration::from_secs(15))
        .admit(platform, &auth.public_key(), &Role::device())
        .await
        .context("admission as device was refused")?;
    info!("admitted as device");
    if let Some(store) = store {
        // Keeping it saves the next run an admission; failing to (a
        // read-only store) costs only that, so it does not fail this run.
        let kept = store
            .put_secret(KEY, &pkcs8)
            .and_then(|()| store.put_secret(CERT, &cert));
        if let Err(e) = kept {
            eprintln!(
                "note: the admission certificate is not kept, the next run is admitted afresh ({e})"
            );
        }
    }
    Ok(Identity::new(cert, pkcs8))
}
