//! Key release policy: per model, which roles and measurements may receive
//! its key, and for which use. Pure: peer identity in, decision out.
//!
//! A request for a model id the provider does not have, or whose key is not
//! released to this peer, gets the same answer ("not released"), so peers
//! cannot enumerate model ids.

use attestation::atls::VerifiedPeer;
use protocol::{KeyUsage, OutputPolicy, QueryBudget, ServingPolicy};
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
    /// What a runtime may return, and how often (sent with the key).
    /// Keystores written before this field existed get the default: label only.
    #[serde(default)]
    pub serving: ServingPolicy,
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

/// Parse an output policy (CLI): `label`, `scores` or `top-k=K` (K ≥ 1).
pub fn parse_output(s: &str) -> Result<OutputPolicy, String> {
    match s {
        "label" => Ok(OutputPolicy::Label),
        "scores" => Ok(OutputPolicy::Scores),
        _ => match s.strip_prefix("top-k=").map(str::parse::<u32>) {
            Some(Ok(k)) if k >= 1 => Ok(OutputPolicy::TopK(k)),
            _ => Err(format!(
                "unknown output policy {s:?}: label, scores or top-k=K (K >= 1)"
            )),
        },
    }
}

/// Parse a query budget (CLI): `QUERIES/SECONDS`, both at least 1.
pub fn parse_budget(s: &str) -> Result<QueryBudget, String> {
    let bad = || format!("query budget {s:?} is not QUERIES/SECONDS, e.g. 1000/3600");
    let (q, w) = s.split_once('/').ok_or_else(bad)?;
    let queries: u32 = q.trim().parse().map_err(|_| bad())?;
    let window_secs: u32 = w.trim().parse().map_err(|_| bad())?;
    if queries == 0 || window_secs == 0 {
        return Err(bad());
    }
    Ok(QueryBudget {
        queries,
        window_secs,
    })
}

/// Parse an input shape (CLI): `D,D,...`, each a number (0 = symbolic).
pub fn parse_shape(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("input shape {s:?} is not D,D,... e.g. 1,3,640,640"))
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
    allowed(entry, peer, usage)
}

/// Whether `peer` may use `entry`'s model for `usage` (whichever bundle it
/// holds): what a `BundleQuery` is answered by, so only peers that would get
/// the key learn which bundle is current.
pub fn allowed(entry: &Entry, peer: &VerifiedPeer, usage: &KeyUsage) -> Result<(), Denial> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn output_and_budget_names() {
        assert_eq!(parse_output("label"), Ok(OutputPolicy::Label));
        assert_eq!(parse_output("scores"), Ok(OutputPolicy::Scores));
        assert_eq!(parse_output("top-k=3"), Ok(OutputPolicy::TopK(3)));
        for bad in ["top-k=0", "top-k=", "top-k=-1", "all", ""] {
            assert!(parse_output(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_budget("1000/3600"),
            Ok(QueryBudget {
                queries: 1000,
                window_secs: 3600
            })
        );
        for bad in ["0/10", "10/0", "10", "a/b", "/", "1/2/3"] {
            assert!(parse_budget(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,40}") {
            let _ = parse_output(&s);
            let _ = parse_budget(&s);
            let _ = parse_usage(&s);
            let _ = parse_shape(&s);
        }
    }
}
