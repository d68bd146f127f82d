//! Signed claims (`signed_claim_message`): make them, and verify them the way
//! the framework does — the signature covers the exact bytes of
//! `serialized_claim_message` (never a re-encoding), the format must be
//! `vse-clause`, and `now` must lie in the validity window.

use prost::Message;
use thiserror::Error;

use super::keys::{KeyError, PublicKey, SigningKey};
use super::proto::{ClaimMessage, SignedClaimMessage, VseClause, decode_bounded};

/// Claim format of clause claims.
pub const VSE_CLAUSE_FORMAT: &str = "vse-clause";

/// Why a signed claim is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// A field is absent.
    #[error("signed claim is missing {0}")]
    Missing(&'static str),
    /// The signing key is unusable.
    #[error("signed claim's signing key: {0}")]
    Key(#[from] KeyError),
    /// The signature does not verify.
    #[error("signed claim signature does not verify ({algorithm})")]
    BadSignature {
        /// The algorithm named in the claim.
        algorithm: String,
    },
    /// The claim is not a vse-clause claim.
    #[error("claim format {0:?} is not vse-clause")]
    Format(String),
    /// Garbage where a message should be.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A time string we cannot read.
    #[error("unreadable time {0:?}")]
    Time(String),
    /// Outside the validity window.
    #[error("claim is valid from {not_before} to {not_after}; now is outside that window")]
    Expired {
        /// Start.
        not_before: String,
        /// End.
        not_after: String,
    },
}

/// A claim whose signature and window checked out.
#[derive(Debug, Clone)]
pub struct VerifiedClaim {
    /// The statement.
    pub clause: VseClause,
    /// `claim_descriptor` (we carry roles and flags here).
    pub descriptor: String,
    /// Who signed it.
    pub signer: PublicKey,
}

/// Unix seconds → the C++ framework's time string, `YYYY-MM-DDTHH:MM:SS.sssssZ`.
pub fn format_time(unix: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.00000Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parse either framework time layout (C++ `YYYY-MM-DDTHH:MM:SS.sssssZ`, Go
/// `YYYY:MM:DDTHH:MM:SSZ`, seconds possibly space-padded) into Unix seconds.
pub fn parse_time(s: &str) -> Result<i64, ClaimError> {
    let bad = || ClaimError::Time(s.to_string());
    let fields: Vec<&str> = s
        .trim()
        .trim_end_matches('Z')
        .split(['-', ':', 'T'])
        .map(str::trim)
        .collect();
    let [y, mo, d, h, mi, sec] = fields.as_slice() else {
        return Err(bad());
    };
    let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
    let whole_seconds = sec.split('.').next().ok_or_else(bad)?;
    let month =
        time::Month::try_from(u8::try_from(num(mo)?).map_err(|_| bad())?).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(
        i32::try_from(num(y)?).map_err(|_| bad())?,
        month,
        u8::try_from(num(d)?).map_err(|_| bad())?,
    )
    .map_err(|_| bad())?;
    let clock = time::Time::from_hms(
        u8::try_from(num(h)?).map_err(|_| bad())?,
        u8::try_from(num(mi)?).map_err(|_| bad())?,
        u8::try_from(num(whole_seconds)?).map_err(|_| bad())?,
    )
    .map_err(|_| bad())?;
    Ok(time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp())
}

/// Sign `clause` as a claim valid over `[not_before, not_after]` (Unix seconds).
pub fn sign_claim(
    key: &SigningKey,
    key_name: &str,
    clause: &VseClause,
    descriptor: &str,
    not_before: i64,
    not_after: i64,
) -> Result<SignedClaimMessage, KeyError> {
    let claim = ClaimMessage {
        claim_format: Some(VSE_CLAUSE_FORMAT.into()),
        claim_descriptor: Some(descriptor.into()),
        not_before: Some(format_time(not_before)),
        not_after: Some(format_time(not_after)),
        serialized_claim: Some(clause.encode_to_vec()),
    };
    let serialized = claim.encode_to_vec();
    let signature = key.sign(&serialized)?;
    Ok(SignedClaimMessage {
        serialized_claim_message: Some(serialized),
        signing_key: Some(key.public_key().to_key_message(key_name)),
        signing_algorithm: Some(key.algorithm().into()),
        signature: Some(signature),
    })
}

/// Verify a signed claim with the key it names. Callers then decide whether
/// that key is one they trust (for policy claims: the policy key).
pub fn verify_claim(scm: &SignedClaimMessage, now: i64) -> Result<VerifiedClaim, ClaimError> {
    let serialized = scm
        .serialized_claim_message
        .as_deref()
        .ok_or(ClaimError::Missing("serialized_claim_message"))?;
    let key = scm
        .signing_key
        .as_ref()
        .ok_or(ClaimError::Missing("signing_key"))?;
    let algorithm = scm
        .signing_algorithm
        .as_deref()
        .ok_or(ClaimError::Missing("signing_algorithm"))?;
    let signature = scm
        .signature
        .as_deref()
        .ok_or(ClaimError::Missing("signature"))?;
    let signer = PublicKey::from_key_message(key)?;
    if !signer.verify(algorithm, serialized, signature) {
        return Err(ClaimError::BadSignature {
            algorithm: algorithm.to_string(),
        });
    }
    let claim: ClaimMessage =
        decode_bounded(serialized).map_err(|_| ClaimError::Malformed("claim_message"))?;
    let format = claim.claim_format.clone().unwrap_or_default();
    if format != VSE_CLAUSE_FORMAT {
        return Err(ClaimError::Format(format));
    }
    let nb = claim
        .not_before
        .clone()
        .ok_or(ClaimError::Missing("not_before"))?;
    let na = claim
        .not_after
        .clone()
        .ok_or(ClaimError::Missing("not_after"))?;
    if now < parse_time(&nb)? || now > parse_time(&na)? {
        return Err(ClaimError::Expired {
            not_before: nb,
            not_after: na,
        });
    }
    let clause: VseClause = decode_bounded(
        claim
            .serialized_claim
            .as_deref()
            .ok_or(ClaimError::Missing("serialized_claim"))?,
    )
    .map_err(|_| ClaimError::Malformed("vse_clause"))?;
    Ok(VerifiedClaim {
        clause,
        descriptor: claim.claim_descriptor.unwrap_or_default(),
        signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_framework_time_layouts_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:00.00000Z").unwrap(), 0);
        assert_eq!(
            parse_time("2022:08:29T17:55:50Z").unwrap(),
            parse_time("2022-08-29T17:55:50.00000Z").unwrap()
        );
        assert_eq!(
            parse_time("2022-08-29T17:55: 5.00000Z").unwrap(),
            parse_time("2022-08-29T17:55:05Z").unwrap()
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2022-13-01T00:00:00Z").is_err());
        let t = 1_800_000_000;
        assert_eq!(parse_time(&format_time(t)).unwrap(), t);
    }
}
