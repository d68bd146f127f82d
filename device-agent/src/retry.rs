//! When and how long to wait before trying a network operation again.
//!
//! A phone loses its network, a runtime restarts, a certifier is at its
//! connection limit: each is worth another try after a pause. A runtime
//! that failed verification, a policy that refused the request, a spent
//! query budget are not: the same request would get the same answer, and
//! resending user data to a peer that just failed verification is exactly
//! what the agent must never do.
//!
//! [`classify`] is pure: it reads the typed errors in an `anyhow` chain and
//! says [`Failure::Transient`] only for the causes listed there, so anything
//! it does not recognise is final (fail closed). [`Backoff`] is pure too:
//! exponential backoff with full jitter (a uniformly random pause below an
//! exponentially growing cap), so a fleet of devices that lost the same
//! runtime do not all come back in the same millisecond. [`Retrier`] is the
//! only part that sleeps and prints.
//!
//! Must never: call a verification failure, a refusal on policy, a bad
//! request or a spent budget transient; or sleep past [`Backoff::max`].

use std::io::ErrorKind;
use std::time::Duration;

use attestation::certifier::client::ClientError;
use attestation::certifier::wire::WireError;
use protocol::{ErrorCode, ProtocolError};

use crate::connect::ConnectError;

/// Whether another try may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The network or a busy or restarting peer: try again after a pause.
    Transient,
    /// Verification, policy or the request itself: trying again would get
    /// the same answer (or send data where it must not go).
    Final,
}

/// A peer's typed refusal of one request (`Message::Error`), so that
/// [`classify`] can tell "busy" from "refused".
#[derive(Debug, thiserror::Error)]
#[error("the {peer} refused {what} ({code:?}): {message}")]
pub struct Refusal {
    /// Who refused: "runtime", "provider".
    pub peer: &'static str,
    /// What was refused, e.g. "sample 17".
    pub what: String,
    /// The peer's code.
    pub code: ErrorCode,
    /// The peer's reason.
    pub message: String,
}

/// Classify the first typed cause in `e`'s chain; unknown causes are final.
pub fn classify(e: &anyhow::Error) -> Failure {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<ConnectError>() {
            return match c {
                ConnectError::Connect { source, .. } => io(source),
                ConnectError::Timeout { .. } | ConnectError::Busy { .. } => Failure::Transient,
                ConnectError::Hello { source, .. } => protocol(source),
                // The peer's identity, role, measurement or revocation
                // status (or ours) was refused: never resend.
                ConnectError::NotAcceptable { .. } => Failure::Final,
            };
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return certifier(c);
        }
        if let Some(p) = cause.downcast_ref::<ProtocolError>() {
            return protocol(p);
        }
        if let Some(r) = cause.downcast_ref::<Refusal>() {
            return match r.code {
                ErrorCode::Busy => Failure::Transient,
                _ => Failure::Final,
            };
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return io(e);
        }
    }
    Failure::Final
}

fn certifier(c: &ClientError) -> Failure {
    match c {
        ClientError::Connect { source, .. } => io(source),
        ClientError::ConnectTimeout(_) => Failure::Transient,
        ClientError::Wire(WireError::Truncated | WireError::Timeout(_)) => Failure::Transient,
        ClientError::Wire(WireError::Io(e)) => io(e),
        // The certifier's own "come back later" (its nonce table is full).
        ClientError::Refused { code, .. } if code == "busy" => Failure::Transient,
        _ => Failure::Final,
    }
}

fn protocol(p: &ProtocolError) -> Failure {
    match p {
        ProtocolError::Io(e) => io(e),
        ProtocolError::Closed
        | ProtocolError::Truncated { .. }
        | ProtocolError::IdleTimeout { .. }
        | ProtocolError::ReadTimeout { .. }
        | ProtocolError::WriteTimeout { .. } => Failure::Transient,
        _ => Failure::Final,
    }
}

/// Only what a lost network or a restarting peer looks like; a TLS error
/// (an alert, a bad record) surfaces as `InvalidData` and is final.
fn io(e: &std::io::Error) -> Failure {
    match e.kind() {
        ErrorKind::ConnectionRefused
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof
        | ErrorKind::TimedOut
        | ErrorKind::NotConnected
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::NetworkDown
        | ErrorKind::AddrNotAvailable => Failure::Transient,
        _ => Failure::Final,
    }
}

/// How many times to try again, and how long to wait between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Tries after the first one; 0 disables retrying.
    pub retries: u32,
    /// The cap of the first pause; each later cap doubles.
    pub base: Duration,
    /// No pause is longer than this.
    pub max: Duration,
}

impl Backoff {
    /// The pause before retry number `retry` (0 for the first), given
    /// `unit`, a uniform random number in [0, 1): full jitter below
    /// `min(max, base * 2^retry)`.
    pub fn pause(&self, retry: u32, unit: f64) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        cap.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A uniform number in [0, 1) from the system's CSPRNG (0.5 if it fails:
/// a pause without jitter is still a pause).
fn unit() -> f64 {
    let mut b = [0u8; 8];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

/// The retry state of one operation: decides, says so on stderr, sleeps.
#[derive(Debug)]
pub struct Retrier {
    backoff: Backoff,
    what: String,
    used: u32,
}

impl Retrier {
    /// Retry `what` (e.g. "connecting to the runtime at 10.0.0.2:7000").
    pub fn new(backoff: Backoff, what: impl Into<String>) -> Self {
        Self {
            backoff,
            what: what.into(),
            used: 0,
        }
    }

    /// After a failure: `Ok(())` once the pause is over and another try is
    /// worth it, or the error back when it is final or the tries are spent.
    pub async fn after(&mut self, e: anyhow::Error) -> anyhow::Result<()> {
        if classify(&e) == Failure::Final {
            return Err(e);
        }
        if self.used >= self.backoff.retries {
            return Err(e.context(format!(
                "{} failed {} times; giving up (raise --retries to try longer)",
                self.what,
                self.used + 1
            )));
        }
        let pause = self.backoff.pause(self.used, unit());
        self.used += 1;
        eprintln!(
            "note: {} failed ({e:#}); retry {} of {} in {:.1} s",
            self.what,
            self.used,
            self.backoff.retries,
            pause.as_secs_f64()
        );
        tokio::time::sleep(pause).await;
        Ok(())
    }

    /// The operation made progress: later failures start a fresh count.
    pub fn progressed(&mut self) {
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attestation::certifier::policy::Role;
    use proptest::prelude::*;

    fn io_err(kind: ErrorKind) -> std::io::Error {
        std::io::Error::new(kind, "x")
    }

    #[test]
    fn lost_networks_and_busy_peers_are_transient() {
        let cases: Vec<anyhow::Error> = vec![
            ConnectError::Busy {
                addr: "a".into(),
                role: Role::runtime(),
            }
            .into(),
            ConnectError::Connect {
                addr: "a".into(),
                source: io_err(ErrorKind::ConnectionRefused),
            }
            .into(),
            ConnectError::Timeout {
                addr: "a".into(),
                what: "connecting",
            }
            .into(),
            anyhow::Error::from(ProtocolError::Closed).context("sample 3"),
            ProtocolError::Io(io_err(ErrorKind::ConnectionReset)).into(),
            ProtocolError::Truncated { received: 2 }.into(),
            ClientError::ConnectTimeout("c".into()).into(),
            ClientError::Refused {
                code: "busy".into(),
                reason: "nonce table full".into(),
            }
            .into(),
            Refusal {
                peer: "runtime",
                what: "sample 1".into(),
                code: ErrorCode::Busy,
                message: "queue full".into(),
            }
            .into(),
        ];
        for e in cases {
            assert_eq!(classify(&e), Failure::Transient, "{e:#}");
        }
    }

    #[test]
    fn verification_policy_and_bad_requests_are_final() {
        let cases: Vec<anyhow::Error> = vec![
            ConnectError::NotAcceptable {
                addr: "a".into(),
                role: Role::runtime(),
                why: "measurement not pinned".into(),
            }
            .into(),
            // A TLS alert surfaces as InvalidData.
            ProtocolError::Io(io_err(ErrorKind::InvalidData)).into(),
            ProtocolError::TooLarge {
                declared: 1 << 30,
                max: 1 << 20,
            }
            .into(),
            ClientError::Refused {
                code: "measurement-not-trusted".into(),
                reason: "no".into(),
            }
            .into(),
            ClientError::BadAuthKey.into(),
            anyhow::anyhow!("fresh evidence failed"),
        ];
        let refusals = [
            ErrorCode::NotAdmitted,
            ErrorCode::Refused,
            ErrorCode::BudgetExceeded,
            ErrorCode::BadRequest,
            ErrorCode::NotFound,
            ErrorCode::Internal,
            ErrorCode::VersionMismatch,
        ];
        let refusals = refusals.into_iter().map(|code| {
            anyhow::Error::from(Refusal {
                peer: "runtime",
                what: "sample 1".into(),
                code,
                message: "m".into(),
            })
        });
        for e in cases.into_iter().chain(refusals) {
            assert_eq!(classify(&e), Failure::Final, "{e:#}");
        }
    }

    #[test]
    fn the_outermost_typed_cause_decides() {
        // A hello that failed on a TLS alert is final even though the
        // generic chain also holds an io::Error further down.
        let e: anyhow::Error = ConnectError::Hello {
            addr: "a".into(),
            source: ProtocolError::Io(io_err(ErrorKind::InvalidData)),
        }
        .into();
        assert_eq!(classify(&e), Failure::Final);
        let e: anyhow::Error = ConnectError::Hello {
            addr: "a".into(),
            source: ProtocolError::Closed,
        }
        .into();
        assert_eq!(classify(&e), Failure::Transient);
    }

    #[tokio::test]
    async fn a_final_failure_is_returned_at_once_and_spent_tries_say_so() {
        let b = Backoff {
            retries: 2,
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let mut r = Retrier::new(b, "connecting");
        let e = r
            .after(anyhow::Error::from(ConnectError::NotAcceptable {
                addr: "a".into(),
                role: Role::runtime(),
                why: "w".into(),
            }))
            .await
            .unwrap_err();
        assert!(e.downcast_ref::<ConnectError>().is_some());
        let busy = || ProtocolError::Closed.into();
        r.after(busy()).await.unwrap();
        r.after(busy()).await.unwrap();
        let e = r.after(busy()).await.unwrap_err();
        assert!(format!("{e:#}").contains("failed 3 times"), "{e:#}");
        r.progressed();
        r.after(busy()).await.unwrap();
    }

    proptest! {
        #[test]
        fn pauses_stay_below_the_growing_cap_and_the_maximum(
            base_ms in 0u64..10_000,
            max_ms in 0u64..100_000,
            retry in 0u32..100,
            unit in 0.0f64..1.0,
        ) {
            let b = Backoff {
                retries: 10,
                base: Duration::from_millis(base_ms),
                max: Duration::from_millis(max_ms),
            };
            let p = b.pause(retry, unit);
            prop_assert!(p <= b.max);
            let cap = Duration::from_millis(base_ms).saturating_mul(1 << retry.min(31));
            prop_assert!(p <= cap);
            // Full jitter reaches the cap's range: unit 1 gives the cap.
            prop_assert_eq!(b.pause(retry, 1.0), cap.min(b.max));
        }
    }
}
