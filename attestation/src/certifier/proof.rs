//! The framework's proof rules, checked step by step.
//!
//! A service never takes a client's word for anything: it builds a proof
//! from the policy (signed by the policy key) and from statements it derived
//! itself from verified evidence, then checks every step here. A step whose
//! premises are not yet proved is skipped (as in the framework); a step whose
//! premises are proved but whose rule does not hold aborts the proof.
//!
//! Implemented: R1, R3, R5, R6, R7, R11. R2 and R4 are stubs that always fail
//! in the framework and fail here too. R8–R10 (SEV environments) are not used
//! by any evidence we accept and are refused.

use thiserror::Error;

use super::clause::{dominates, entity_key, entity_measurement, same_clause, same_entity, verb};
use super::proto::VseClause;

/// One step: premises `s1`, `s2`, the rule, and what it concludes.
#[derive(Debug, Clone)]
pub struct ProofStep {
    /// First premise.
    pub s1: VseClause,
    /// Second premise.
    pub s2: VseClause,
    /// Rule number (framework numbering).
    pub rule: u8,
    /// Conclusion.
    pub conclusion: VseClause,
}

/// Why a proof failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProofError {
    /// A step's premises were proved but its rule does not yield its conclusion.
    #[error("proof step {index} does not follow by rule R{rule}")]
    InvalidStep {
        /// Step index.
        index: usize,
        /// Rule.
        rule: u8,
    },
    /// No step concluded the goal.
    #[error("the proof does not reach its goal")]
    GoalNotReached,
}

fn verb_of(c: &VseClause) -> &str {
    c.verb.as_deref().unwrap_or("")
}

fn is_unary(c: &VseClause) -> bool {
    c.subject.is_some() && c.object.is_none() && c.clause.is_none()
}

/// "K speaks-for M" with K a key and M a measurement, and M equal to `m_clause`'s subject.
fn speaks_for_measurement(s: &VseClause, m_clause: &VseClause) -> bool {
    verb_of(s) == verb::SPEAKS_FOR
        && s.subject.as_ref().and_then(entity_key).is_some()
        && s.clause.is_none()
        && match (&s.object, &m_clause.subject) {
            (Some(o), Some(m)) => entity_measurement(m).is_some() && same_entity(o, m),
            _ => false,
        }
}

/// R1 / R7 / R11: M is-trusted, K speaks-for M ⊢ K is-trusted-for-<purpose>.
fn measurement_rule(s1: &VseClause, s2: &VseClause, c: &VseClause, purpose: &str) -> bool {
    verb_of(s1) == verb::IS_TRUSTED
        && is_unary(s1)
        && speaks_for_measurement(s2, s1)
        && is_unary(c)
        && verb_of(c) == purpose
        && match (&c.subject, &s2.subject) {
            (Some(a), Some(b)) => same_entity(a, b),
            _ => false,
        }
}

/// "K says X" with K equal to `k`; returns X.
fn said_by<'a>(s: &'a VseClause, k: &VseClause) -> Option<&'a VseClause> {
    if verb_of(s) != verb::SAYS {
        return None;
    }
    match (&s.subject, &k.subject) {
        (Some(a), Some(b)) if entity_key(b).is_some() && same_entity(a, b) => s.clause.as_deref(),
        _ => None,
    }
}

/// Does `step` follow by its rule?
pub fn check_step(step: &ProofStep) -> bool {
    let (s1, s2, c) = (&step.s1, &step.s2, &step.conclusion);
    match step.rule {
        1 => measurement_rule(s1, s2, c, verb::IS_TRUSTED_FOR_AUTHENTICATION),
        7 => measurement_rule(s1, s2, c, verb::IS_TRUSTED_FOR_ATTESTATION),
        11 => measurement_rule(s1, s2, c, verb::IS_TRUSTED_FOR_KEY_PROVISION),
        // K is-trusted, K says X ⊢ X
        3 => {
            verb_of(s1) == verb::IS_TRUSTED
                && is_unary(s1)
                && said_by(s2, s1).is_some_and(|x| same_clause(x, c))
        }
        // K1 is-trustedXXX, K1 says K2 is-trustedYYY ⊢ K2 is-trustedYYY (XXX dominates YYY)
        5 => {
            is_unary(s1)
                && said_by(s2, s1).is_some_and(|x| {
                    is_unary(x)
                        && x.subject.as_ref().and_then(entity_key).is_some()
                        && dominates(verb_of(s1), verb_of(x))
                        && same_clause(x, c)
                })
        }
        // K1 is-trusted(-for-attestation), K1 says K2 speaks-for M ⊢ K2 speaks-for M
        6 => {
            is_unary(s1)
                && dominates(verb::IS_TRUSTED, verb_of(s1))
                && dominates(verb_of(s1), verb::IS_TRUSTED_FOR_ATTESTATION)
                && said_by(s2, s1).is_some_and(|x| {
                    verb_of(x) == verb::SPEAKS_FOR && x.object.is_some() && same_clause(x, c)
                })
        }
        _ => false,
    }
}

/// Check `steps` starting from `proved` until `goal` is concluded.
pub fn verify_proof(
    goal: &VseClause,
    proved: &[VseClause],
    steps: &[ProofStep],
) -> Result<(), ProofError> {
    let mut known: Vec<VseClause> = proved.to_vec();
    for (index, step) in steps.iter().enumerate() {
        let have = |s: &VseClause| known.iter().any(|k| same_clause(k, s));
        if !(have(&step.s1) && have(&step.s2)) {
            continue;
        }
        if !check_step(step) {
            return Err(ProofError::InvalidStep {
                index,
                rule: step.rule,
            });
        }
        if same_clause(&step.conclusion, goal) {
            return Ok(());
        }
        known.push(step.conclusion.clone());
    }
    Err(ProofError::GoalNotReached)
}
