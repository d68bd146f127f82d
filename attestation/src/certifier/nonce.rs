//! Single-use nonces with expiry (an extension: the framework's service
//! issues none, so its evidence has no freshness beyond validity windows).
//!
//! A nonce is good for one admission attempt, successful or not, within its
//! lifetime. Used nonces are remembered until they would have expired so a
//! replay is reported as a replay. The store is bounded twice: in total, and
//! per source (whatever the caller counts as one requester, e.g. an IP
//! address). Every nonce issued to a source, used or not, counts against it
//! until it expires, so one source flooding `nonce` requests holds at most
//! its share and cannot drain the store for everyone else.
//!
//! Must never: issue beyond either bound, keep a per-source entry for a
//! source with no remembered nonce (so that map is no larger than the store),
//! or read the clock (time is passed in).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use thiserror::Error;

/// Nonce length in bytes.
pub const NONCE_LEN: usize = 32;

/// Why a nonce was not accepted or not issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NonceError {
    /// Never issued by this service (or forgotten long ago).
    #[error("nonce was not issued by this service")]
    Unknown,
    /// Issued, but its lifetime is over.
    #[error("nonce expired; ask for a new one")]
    Expired,
    /// Already used once.
    #[error("nonce was already used (replay)")]
    Replayed,
    /// Too many outstanding nonces.
    #[error("too many outstanding nonces; retry shortly")]
    Busy,
    /// This source holds its share of outstanding nonces.
    #[error(
        "{limit} nonces issued to this address in the last {ttl_secs} s; use them or wait for them to expire"
    )]
    SourceBusy {
        /// Nonces a source may hold.
        limit: usize,
        /// Their lifetime.
        ttl_secs: i64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry<S> {
    expires: i64,
    used: bool,
    source: S,
}

/// Outstanding nonces. Time is passed in, so tests control it. `S` is the
/// per-source key.
#[derive(Debug)]
pub struct NonceStore<S> {
    ttl_secs: i64,
    capacity: usize,
    per_source: usize,
    entries: HashMap<[u8; NONCE_LEN], Entry<S>>,
    /// Nonces in issue order, so expired ones are found from the front.
    order: VecDeque<[u8; NONCE_LEN]>,
    /// Remembered nonces per source; a source at zero is removed.
    held: HashMap<S, usize>,
}

impl<S: Copy + Eq + Hash> NonceStore<S> {
    /// A store whose nonces live `ttl_secs`, which holds at most `capacity`
    /// and at most `per_source` for any one source.
    pub fn new(ttl_secs: i64, capacity: usize, per_source: usize) -> Self {
        Self {
            ttl_secs,
            capacity,
            per_source,
            entries: HashMap::new(),
            order: VecDeque::new(),
            held: HashMap::new(),
        }
    }

    /// Forget nonces that expired before `now`. Issue order is expiry order
    /// unless the clock stepped back; then a few expired entries wait for
    /// the ones before them, which is harmless (`consume` checks expiry).
    fn purge(&mut self, now: i64) {
        while let Some(front) = self.order.front() {
            match self.entries.get(front) {
                Some(e) if e.expires >= now => break,
                Some(e) => {
                    let source = e.source;
                    self.entries.remove(front);
                    self.release(source);
                }
                None => {}
            }
            self.order.pop_front();
        }
    }

    fn release(&mut self, source: S) {
        if let Some(n) = self.held.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&source);
            }
        }
    }

    /// Issue a fresh random nonce to `source`.
    pub fn issue(&mut self, source: S, now: i64) -> Result<[u8; NONCE_LEN], NonceError> {
        self.purge(now);
        if self.held.get(&source).copied().unwrap_or(0) >= self.per_source {
            return Err(NonceError::SourceBusy {
                limit: self.per_source,
                ttl_secs: self.ttl_secs,
            });
        }
        if self.entries.len() >= self.capacity {
            return Err(NonceError::Busy);
        }
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| NonceError::Busy)?;
        self.entries.insert(
            nonce,
            Entry {
                expires: now + self.ttl_secs,
                used: false,
                source,
            },
        );
        self.order.push_back(nonce);
        *self.held.entry(source).or_insert(0) += 1;
        Ok(nonce)
    }

    /// Use a nonce up. Succeeds once per issued, unexpired nonce, whoever
    /// presents it (a device may ask for the nonce and admit over different
    /// paths).
    pub fn consume(&mut self, nonce: &[u8], now: i64) -> Result<(), NonceError> {
        let key: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| NonceError::Unknown)?;
        let entry = self.entries.get_mut(&key).ok_or(NonceError::Unknown)?;
        if entry.used {
            return Err(NonceError::Replayed);
        }
        entry.used = true;
        if now > entry.expires {
            return Err(NonceError::Expired);
        }
        Ok(())
    }

    /// Outstanding entries (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No outstanding entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries remembered for `source`.
    pub fn held_by(&self, source: &S) -> usize {
        self.held.get(source).copied().unwrap_or(0)
    }

    /// Sources with a remembered entry (the per-source map's size).
    pub fn sources(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 1;
    const B: u32 = 2;

    #[test]
    fn a_nonce_works_once_within_its_lifetime() {
        let mut s = NonceStore::new(60, 10, 10);
        let n = s.issue(A, 1000).unwrap();
        assert_eq!(s.consume(&n, 1030), Ok(()));
        assert_eq!(s.consume(&n, 1031), Err(NonceError::Replayed));
        let m = s.issue(A, 1000).unwrap();
        assert_eq!(s.consume(&m, 1061), Err(NonceError::Expired));
        assert_eq!(s.consume(&[0; 32], 1000), Err(NonceError::Unknown));
        assert_eq!(s.consume(&[0; 5], 1000), Err(NonceError::Unknown));
    }

    #[test]
    fn the_store_is_bounded_and_recovers_after_expiry() {
        let mut s = NonceStore::new(60, 3, 3);
        for _ in 0..3 {
            s.issue(A, 0).unwrap();
        }
        assert_eq!(s.issue(B, 10), Err(NonceError::Busy));
        assert!(s.issue(B, 61).is_ok(), "expired entries make room");
        assert_eq!(s.len(), 1);
        assert_eq!((s.held_by(&A), s.held_by(&B), s.sources()), (0, 1, 1));
    }

    #[test]
    fn one_source_cannot_drain_the_store() {
        let mut s = NonceStore::new(60, 100, 4);
        let mut flood = 0;
        for t in 0..1000 {
            if s.issue(A, t / 100).is_ok() {
                flood += 1;
            }
        }
        assert_eq!(flood, 4, "the flooding source got its share only");
        assert_eq!(
            s.issue(A, 10),
            Err(NonceError::SourceBusy {
                limit: 4,
                ttl_secs: 60
            })
        );
        // Another source is served, and can admit with its nonce.
        let n = s.issue(B, 10).unwrap();
        assert_eq!(s.consume(&n, 11), Ok(()));
    }

    #[test]
    fn used_nonces_count_against_their_source_until_they_expire() {
        let mut s = NonceStore::new(60, 100, 2);
        for _ in 0..2 {
            let n = s.issue(A, 0).unwrap();
            s.consume(&n, 1).unwrap();
        }
        // Issue-and-use in a loop does not get around the share...
        assert!(matches!(s.issue(A, 2), Err(NonceError::SourceBusy { .. })));
        // ...and the share comes back when they expire.
        assert!(s.issue(A, 61).is_ok());
        assert_eq!(s.held_by(&A), 1);
    }

    #[test]
    fn the_per_source_map_shrinks_with_the_store() {
        let mut s = NonceStore::new(60, 50, 1);
        for i in 0..10_000u32 {
            let _ = s.issue(i, 0);
            assert!(s.sources() <= 50);
        }
        assert_eq!(s.len(), 50);
        s.issue(u32::MAX, 61).unwrap();
        assert_eq!((s.len(), s.sources()), (1, 1));
    }
}
