//! Single-use nonces with expiry (an extension: the framework's service
//! issues none, so its evidence has no freshness beyond validity windows).
//!
//! A nonce is good for one admission attempt, successful or not, within its
//! lifetime. Used nonces are remembered until they would have expired so a
//! replay is reported as a replay. The store is bounded: when it is full of
//! live nonces, new requests are refused rather than growing memory.

use std::collections::HashMap;

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
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    expires: i64,
    used: bool,
}

/// Outstanding nonces. Time is passed in, so tests control it.
#[derive(Debug)]
pub struct NonceStore {
    ttl_secs: i64,
    capacity: usize,
    entries: HashMap<[u8; NONCE_LEN], Entry>,
}

impl NonceStore {
    /// A store whose nonces live `ttl_secs` and which holds at most `capacity`.
    pub fn new(ttl_secs: i64, capacity: usize) -> Self {
        Self {
            ttl_secs,
            capacity,
            entries: HashMap::new(),
        }
    }

    fn purge(&mut self, now: i64) {
        self.entries.retain(|_, e| e.expires >= now);
    }

    /// Issue a fresh random nonce.
    pub fn issue(&mut self, now: i64) -> Result<[u8; NONCE_LEN], NonceError> {
        if self.entries.len() >= self.capacity {
            self.purge(now);
            if self.entries.len() >= self.capacity {
                return Err(NonceError::Busy);
            }
        }
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| NonceError::Busy)?;
        self.entries.insert(
            nonce,
            Entry {
                expires: now + self.ttl_secs,
                used: false,
            },
        );
        Ok(nonce)
    }

    /// Use a nonce up. Succeeds once per issued, unexpired nonce.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_works_once_within_its_lifetime() {
        let mut s = NonceStore::new(60, 10);
        let n = s.issue(1000).unwrap();
        assert_eq!(s.consume(&n, 1030), Ok(()));
        assert_eq!(s.consume(&n, 1031), Err(NonceError::Replayed));
        let m = s.issue(1000).unwrap();
        assert_eq!(s.consume(&m, 1061), Err(NonceError::Expired));
        assert_eq!(s.consume(&[0; 32], 1000), Err(NonceError::Unknown));
        assert_eq!(s.consume(&[0; 5], 1000), Err(NonceError::Unknown));
    }

    #[test]
    fn the_store_is_bounded_and_recovers_after_expiry() {
        let mut s = NonceStore::new(60, 3);
        for _ in 0..3 {
            s.issue(0).unwrap();
        }
        assert_eq!(s.issue(10), Err(NonceError::Busy));
        assert!(s.issue(61).is_ok(), "expired entries make room");
        assert_eq!(s.len(), 1);
    }
}
