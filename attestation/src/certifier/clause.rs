//! Statements (`vse_clause`) in the Certifier Framework's vocabulary and the
//! equality the framework uses to compare them.
//!
//! Shapes: unary "S verb" (`M is-trusted`), simple "S verb O"
//! (`K speaks-for M`), indirect "S says <clause>".

use super::keys::PublicKey;
use super::proto::{EntityMessage, VseClause};

/// Verbs of the framework, plus ours (marked).
pub mod verb {
    /// "K says X".
    pub const SAYS: &str = "says";
    /// "K speaks-for M".
    pub const SPEAKS_FOR: &str = "speaks-for";
    /// "X is-trusted": the widest trust.
    pub const IS_TRUSTED: &str = "is-trusted";
    /// "K is-trusted-for-attestation".
    pub const IS_TRUSTED_FOR_ATTESTATION: &str = "is-trusted-for-attestation";
    /// "K is-trusted-for-authentication".
    pub const IS_TRUSTED_FOR_AUTHENTICATION: &str = "is-trusted-for-authentication";
    /// "K is-trusted-for-key-provision".
    pub const IS_TRUSTED_FOR_KEY_PROVISION: &str = "is-trusted-for-key-provision";
    /// Ours: "M is-revoked" — a measurement that must never be admitted again.
    pub const IS_REVOKED: &str = "is-revoked";
    /// Ours: "M is-trusted-platform-component" — a CCA firmware reference value.
    pub const IS_TRUSTED_PLATFORM_COMPONENT: &str = "is-trusted-platform-component";
}

/// Does `wide` dominate `narrow` (the framework's dominance tree: `is-trusted`
/// dominates the three `is-trusted-for-*` verbs; every verb dominates itself)?
pub fn dominates(wide: &str, narrow: &str) -> bool {
    wide == narrow
        || (wide == verb::IS_TRUSTED
            && matches!(
                narrow,
                verb::IS_TRUSTED_FOR_ATTESTATION
                    | verb::IS_TRUSTED_FOR_AUTHENTICATION
                    | verb::IS_TRUSTED_FOR_KEY_PROVISION
            ))
}

/// A key entity.
pub fn key_entity(key: &PublicKey, name: &str) -> EntityMessage {
    EntityMessage {
        entity_type: Some("key".into()),
        key: Some(key.to_key_message(name)),
        ..Default::default()
    }
}

/// A measurement entity.
pub fn measurement_entity(m: &[u8]) -> EntityMessage {
    EntityMessage {
        entity_type: Some("measurement".into()),
        measurement: Some(m.to_vec()),
        ..Default::default()
    }
}

/// "subject verb".
pub fn unary(subject: EntityMessage, verb: &str) -> VseClause {
    VseClause {
        subject: Some(subject),
        verb: Some(verb.into()),
        object: None,
        clause: None,
    }
}

/// "subject verb object".
pub fn simple(subject: EntityMessage, verb: &str, object: EntityMessage) -> VseClause {
    VseClause {
        subject: Some(subject),
        verb: Some(verb.into()),
        object: Some(object),
        clause: None,
    }
}

/// "subject says clause".
pub fn says(subject: EntityMessage, clause: VseClause) -> VseClause {
    VseClause {
        subject: Some(subject),
        verb: Some(verb::SAYS.into()),
        object: None,
        clause: Some(Box::new(clause)),
    }
}

/// The key of a key entity, if it is one.
pub fn entity_key(e: &EntityMessage) -> Option<PublicKey> {
    if e.entity_type.as_deref() != Some("key") {
        return None;
    }
    PublicKey::from_key_message(e.key.as_ref()?).ok()
}

/// The measurement bytes of a measurement entity, if it is one.
pub fn entity_measurement(e: &EntityMessage) -> Option<&[u8]> {
    if e.entity_type.as_deref() != Some("measurement") {
        return None;
    }
    e.measurement.as_deref()
}

/// The framework's entity equality: keys by type and key material (names
/// ignored), measurements by bytes and registers.
pub fn same_entity(a: &EntityMessage, b: &EntityMessage) -> bool {
    match (a.entity_type.as_deref(), b.entity_type.as_deref()) {
        (Some("key"), Some("key")) => match (entity_key(a), entity_key(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        (Some("measurement"), Some("measurement")) => {
            a.measurement.is_some() && a.measurement == b.measurement && a.registers == b.registers
        }
        _ => false,
    }
}

fn same_opt_entity(a: &Option<EntityMessage>, b: &Option<EntityMessage>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => same_entity(x, y),
        _ => false,
    }
}

/// Clause equality as the framework defines it.
pub fn same_clause(a: &VseClause, b: &VseClause) -> bool {
    a.verb.is_some()
        && a.verb == b.verb
        && a.subject.is_some()
        && same_opt_entity(&a.subject, &b.subject)
        && same_opt_entity(&a.object, &b.object)
        && match (&a.clause, &b.clause) {
            (None, None) => true,
            (Some(x), Some(y)) => same_clause(x, y),
            _ => false,
        }
}

/// Render a clause for logs and errors, e.g. `Key[P256] says Measurement[3f2a..] is-trusted`.
pub fn describe(c: &VseClause) -> String {
    let ent = |e: &EntityMessage| match e.entity_type.as_deref() {
        Some("key") => match entity_key(e) {
            Some(PublicKey::Rsa { n, .. }) => format!("Key[rsa-{}]", n.len() * 8),
            Some(PublicKey::P256(p)) => format!("Key[p256:{}..]", hex::encode(&p[1..5])),
            Some(PublicKey::P384(p)) => format!("Key[p384:{}..]", hex::encode(&p[1..5])),
            None => "Key[?]".into(),
        },
        Some("measurement") => {
            format!(
                "Measurement[{}]",
                hex::encode(e.measurement.as_deref().unwrap_or_default())
            )
        }
        other => format!("{}[..]", other.unwrap_or("?")),
    };
    let mut s = c.subject.as_ref().map(ent).unwrap_or_else(|| "?".into());
    s.push(' ');
    s.push_str(c.verb.as_deref().unwrap_or("?"));
    if let Some(o) = &c.object {
        s.push(' ');
        s.push_str(&ent(o));
    }
    if let Some(inner) = &c.clause {
        s.push(' ');
        s.push_str(&describe(inner));
    }
    s
}
