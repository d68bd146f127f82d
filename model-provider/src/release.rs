//! Key release policy: per model, which roles and measurements may receive
//! its key, and for which use. Pure: peer identity in, decision out.
//!
//! A request for a model id the provider does not have, or whose key is not
//! released to this peer, gets the same answer ("not released"), so peers
//! cannot enumerate model ids.

use attestation::atls::VerifiedPeer;
use protocol::KeyUsage;
use serde::{Deserialize, Serialize};

use crate::keystore::Entry;

/// Who may receive a model's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRule {
    /// Roles admitted (`runtime`, `device`, ...). Empty: nobody.
    pub roles: Vec<String>,
    /// Hex measurements; empty means any measurement trusted for those roles.
    pub measurements: Vec<String>,
    /// Uses: `remote-inference`, `on-device`, `fl-aggregate`.
    pub uses: Vec<String>,
}

/// The wire name of a use.
pub fn usage_name(u: &KeyUsage) -> &'static str {
    match u {
        KeyUsage::RemoteInference => "remote-inference",
        KeyUsage::OnDevice => "on-device",
        KeyUsage::FederatedRound => "fl-aggregate",
    }
}

/// Parse a use name (CLI).
pub fn parse_usage(s: &str) -> Result<String, String> {
    match s {
        "remote-inference" | "on-device" | "fl-aggregate" => Ok(s.to_string()),
        _ => Err(format!(
            "unknown use {s:?}: remote-inference, on-device or fl-aggregate"
        )),
    }
}

/// Why a key is not released (logged; the peer only hears "not released").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No such model, or only retired entries.
    #[error("no current bundle for this model id")]
    UnknownModel,
    /// The request names another bundle than the current one.
    #[error("the requested bundle is not the current bundle of this model")]
    WrongBundle,
    /// The peer's role is not allowed.
    #[error("role {0} may not receive this key")]
    Role(String),
    /// The peer's measurement is not allowed.
    #[error("measurement {0} may not receive this key")]
    Measurement(String),
    /// The use is not allowed.
    #[error("use {0} is not allowed for this model")]
    Use(&'static str),
}

/// Decide whether `peer` may have the key of `entry` for `usage`.
pub fn decide(
    entry: Option<&Entry>,
    bundle_hash: &[u8; 32],
    peer: &VerifiedPeer,
    usage: &KeyUsage,
) -> Result<(), Denial> {
    let entry = entry.ok_or(Denial::UnknownModel)?;
    if entry.bundle != hex::encode(bundle_hash) {
        return Err(Denial::WrongBundle);
    }
    let rule = &entry.release;
    if !rule.roles.iter().any(|r| r == peer.role.as_str()) {
        return Err(Denial::Role(peer.role.to_string()));
    }
    let m = hex::encode(&peer.measurement);
    if !rule.measurements.is_empty()
        && !rule.measurements.iter().any(|x| x.eq_ignore_ascii_case(&m))
    {
        return Err(Denial::Measurement(m));
    }
    let u = usage_name(usage);
    if !rule.uses.iter().any(|x| x == u) {
        return Err(Denial::Use(u));
    }
    Ok(())
}
