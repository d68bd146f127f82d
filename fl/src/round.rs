//! One federated-learning round at the aggregator, as a pure state machine
//! (time is passed in): which updates are accepted, when the round may be
//! aggregated, and when it has failed. The network code around it only
//! forwards messages and the clock.
//!
//! Must never: accept a second update from one client in a round, an update
//! for another round, or an update of the wrong length or with NaN/inf — each
//! is refused with its own reason while the round goes on; or wait for a
//! client that dropped out beyond the deadline.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::aggregate::{Update, UpdateError, validate};

/// What the aggregator requires of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundConfig {
    /// Updates needed before aggregating.
    pub min_clients: usize,
    /// Updates that end the round early (everyone expected has answered).
    pub max_clients: usize,
    /// Time from the round's start after which no update is accepted.
    pub deadline: Duration,
    /// Number of parameters of the global model.
    pub parameters: usize,
}

/// Why an update was refused (the round continues).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Rejected {
    /// The update names a round that is over.
    #[error("update for past round {got}; the current round is {current}")]
    PastRound {
        /// Round in the update.
        got: u64,
        /// Current round.
        current: u64,
    },
    /// The update names a round that has not started.
    #[error("update for future round {got}; the current round is {current}")]
    FutureRound {
        /// Round in the update.
        got: u64,
        /// Current round.
        current: u64,
    },
    /// This client already sent an update in this round.
    #[error("this device already sent an update in round {0}")]
    Duplicate(u64),
    /// The update itself is unusable.
    #[error("unusable update: {0}")]
    Invalid(#[from] UpdateError),
    /// The deadline has passed or the round is full.
    #[error("round {0} no longer accepts updates")]
    Closed(u64),
}

/// Where a round stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Collecting; not enough updates yet, or more may come before the deadline.
    Collecting,
    /// Enough updates and (deadline passed or round full): aggregate now.
    Ready,
    /// The deadline passed with fewer than `min_clients` updates.
    Failed,
}

/// A round in progress. `C` identifies a client (e.g. a hash of its
/// attested TLS key).
#[derive(Debug)]
pub struct Round<C> {
    number: u64,
    config: RoundConfig,
    started: Instant,
    seen: HashSet<C>,
    updates: Vec<Update>,
}

impl<C: std::hash::Hash + Eq> Round<C> {
    /// Round `number`, starting at `now`.
    pub fn new(number: u64, config: RoundConfig, now: Instant) -> Self {
        Self {
            number,
            config,
            started: now,
            seen: HashSet::new(),
            updates: Vec::new(),
        }
    }

    /// The round number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Updates accepted so far.
    pub fn accepted(&self) -> usize {
        self.updates.len()
    }

    fn open(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) < self.config.deadline
            && self.updates.len() < self.config.max_clients
    }

    /// Offer `client`'s update for `round` at `now`.
    pub fn submit(
        &mut self,
        client: C,
        round: u64,
        update: Update,
        now: Instant,
    ) -> Result<usize, Rejected> {
        if round < self.number {
            return Err(Rejected::PastRound {
                got: round,
                current: self.number,
            });
        }
        if round > self.number {
            return Err(Rejected::FutureRound {
                got: round,
                current: self.number,
            });
        }
        if !self.open(now) {
            return Err(Rejected::Closed(self.number));
        }
        if self.seen.contains(&client) {
            return Err(Rejected::Duplicate(self.number));
        }
        validate(&update, self.config.parameters)?;
        self.seen.insert(client);
        self.updates.push(update);
        Ok(self.updates.len())
    }

    /// Where the round stands at `now`.
    pub fn status(&self, now: Instant) -> Status {
        let enough = self.updates.len() >= self.config.min_clients;
        match (self.open(now), enough) {
            (true, _) => Status::Collecting,
            (false, true) => Status::Ready,
            (false, false) => Status::Failed,
        }
    }

    /// The accepted updates, ending the round.
    pub fn into_updates(self) -> Vec<Update> {
        self.updates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RoundConfig {
        RoundConfig {
            min_clients: 2,
            max_clients: 3,
            deadline: Duration::from_secs(30),
            parameters: 4,
        }
    }

    fn up(v: f32) -> Update {
        Update {
            delta: vec![v; 4],
            num_samples: 10,
        }
    }

    #[test]
    fn bad_updates_are_refused_and_the_round_goes_on() {
        let t0 = Instant::now();
        let mut r = Round::new(5, cfg(), t0);
        assert_eq!(r.submit("a", 5, up(1.0), t0), Ok(1));
        assert_eq!(r.submit("a", 5, up(2.0), t0), Err(Rejected::Duplicate(5)));
        assert_eq!(
            r.submit("b", 4, up(1.0), t0),
            Err(Rejected::PastRound { got: 4, current: 5 })
        );
        assert!(matches!(
            r.submit("b", 6, up(1.0), t0),
            Err(Rejected::FutureRound { .. })
        ));
        let short = Update {
            delta: vec![1.0; 3],
            num_samples: 10,
        };
        assert!(matches!(
            r.submit("b", 5, short, t0),
            Err(Rejected::Invalid(_))
        ));
        let nan = Update {
            delta: vec![1.0, f32::NAN, 0.0, 0.0],
            num_samples: 10,
        };
        assert!(matches!(
            r.submit("b", 5, nan, t0),
            Err(Rejected::Invalid(_))
        ));
        let inf = Update {
            delta: vec![f32::INFINITY; 4],
            num_samples: 10,
        };
        assert!(matches!(
            r.submit("b", 5, inf, t0),
            Err(Rejected::Invalid(_))
        ));
        // A refused client may still send a good update.
        assert_eq!(r.submit("b", 5, up(3.0), t0), Ok(2));
        assert_eq!(r.status(t0), Status::Collecting);
        assert_eq!(r.submit("c", 5, up(3.0), t0), Ok(3));
        // Full: ready at once, and closed to more.
        assert_eq!(r.status(t0), Status::Ready);
        assert_eq!(r.submit("d", 5, up(3.0), t0), Err(Rejected::Closed(5)));
        assert_eq!(r.into_updates().len(), 3);
    }

    #[test]
    fn stragglers_time_out_and_too_few_fail() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(31);
        let mut r = Round::new(1, cfg(), t0);
        r.submit("a", 1, up(1.0), t0).unwrap();
        r.submit("b", 1, up(1.0), t0).unwrap();
        // A third client joined but dropped: the deadline ends the wait.
        assert_eq!(r.status(t0), Status::Collecting);
        assert_eq!(r.status(late), Status::Ready);
        assert_eq!(r.submit("c", 1, up(1.0), late), Err(Rejected::Closed(1)));
        let mut lonely = Round::new(2, cfg(), t0);
        lonely.submit("a", 2, up(1.0), t0).unwrap();
        assert_eq!(lonely.status(late), Status::Failed);
    }
}
