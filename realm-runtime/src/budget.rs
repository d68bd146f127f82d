//! Per-device query budgets: at most `queries` *samples* per model per fixed
//! window of `window_secs`, as the model's provider set them. Repeated
//! querying is how models are extracted and how membership is inferred, so
//! the budget is enforced here, inside the realm, not by the client.
//!
//! A request is charged for every sample it carries (rows along the batch
//! axis; see `inference::InputSpec::samples`), so a batch cannot stretch a
//! budget. A request that does not fit in what is left is refused whole.
//!
//! A "device" is one CCA platform instance (the instance id in its admission
//! certificate), not one admitted identity: re-admitting gives a new auth key
//! but the same platform, and so the same budget. On the INSECURE emulated
//! platform the instance id is whatever the key holder writes, so there a
//! budget bounds nothing against the key holder (docs/threat-model.md).
//!
//! Pure apart from the mutex: time is passed in, so tests need no clock.
//! Must never: grow without bound (live windows are capped), or charge a
//! request it then refuses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use protocol::QueryBudget;
use thiserror::Error;

/// Windows tracked before expired ones are swept.
const SWEEP_AT: usize = 10_000;
/// Live (device, model) windows tracked at most; beyond it new devices are
/// refused until windows expire, rather than growing memory.
const MAX_WINDOWS: usize = 100_000;

/// Why a query was not charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BudgetExceeded {
    /// This device's budget cannot cover the request.
    #[error(
        "query budget of {queries} samples per {window_secs} s exhausted: this request has \
         {requested} samples and {left} are left; try again in {retry_after_secs} s"
    )]
    Spent {
        /// The budget, in samples.
        queries: u32,
        /// Its window.
        window_secs: u32,
        /// Samples in the refused request.
        requested: u32,
        /// Samples left in this window.
        left: u32,
        /// Seconds until the window resets.
        retry_after_secs: u64,
    },
    /// Too many devices have live budgets; new ones wait for windows to end.
    #[error("too many devices hold live query budgets; try again in {retry_after_secs} s")]
    TableFull {
        /// Seconds until the oldest window could have ended.
        retry_after_secs: u64,
    },
}

#[derive(Debug)]
struct Window {
    start: Instant,
    len: Duration,
    used: u32,
}

/// A budget key: SHA-256 of the platform instance id.
pub type DeviceKey = [u8; 32];

/// The budget key of a platform instance.
pub fn device_key(platform_instance: &[u8; 33]) -> DeviceKey {
    let mut key = [0u8; 32];
    key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, platform_instance).as_ref());
    key
}

/// The windows and when to sweep them next.
#[derive(Debug, Default)]
struct Table {
    windows: HashMap<(DeviceKey, String), Window>,
    /// Sweep expired windows when a new pair arrives and the table holds at
    /// least this many (doubling after each sweep, so sweeping is amortised
    /// O(1) per request rather than O(n) for every new device).
    next_sweep: usize,
    /// When the table was last swept (a full table is swept at most once a
    /// second, so a flood of new devices cannot make every request O(n)).
    last_sweep: Option<Instant>,
}

impl Table {
    fn sweep(&mut self, now: Instant) {
        self.windows
            .retain(|_, w| now.saturating_duration_since(w.start) < w.len);
        self.next_sweep = SWEEP_AT.max(self.windows.len() * 2);
        self.last_sweep = Some(now);
    }
}

/// Budgets of every (device, model) pair seen.
#[derive(Debug, Default)]
pub struct Budgets {
    table: Mutex<Table>,
}

impl Budgets {
    /// Charge `samples` queries by `device` on `model` at `now`, or refuse
    /// the whole request.
    pub fn charge(
        &self,
        device: &DeviceKey,
        model: &str,
        budget: QueryBudget,
        samples: u32,
        now: Instant,
    ) -> Result<(), BudgetExceeded> {
        let len = Duration::from_secs(u64::from(budget.window_secs.max(1)));
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let key = (*device, model.to_string());
        if !table.windows.contains_key(&key) {
            if table.windows.len() >= table.next_sweep.max(SWEEP_AT) {
                table.sweep(now);
            }
            if table.windows.len() >= MAX_WINDOWS {
                let swept_lately = table
                    .last_sweep
                    .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
                if !swept_lately {
                    table.sweep(now);
                }
                if table.windows.len() >= MAX_WINDOWS {
                    return Err(BudgetExceeded::TableFull {
                        retry_after_secs: len.as_secs().max(1),
                    });
                }
            }
        }
        let w = table.windows.entry(key).or_insert(Window {
            start: now,
            len,
            used: 0,
        });
        if now.saturating_duration_since(w.start) >= w.len {
            *w = Window {
                start: now,
                len,
                used: 0,
            };
        }
        let left = budget.queries.saturating_sub(w.used);
        if samples > left {
            let wait = w.len.saturating_sub(now.saturating_duration_since(w.start));
            return Err(BudgetExceeded::Spent {
                queries: budget.queries,
                window_secs: budget.window_secs,
                requested: samples,
                left,
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        w.used += samples;
        Ok(())
    }

    /// Give back `samples` charged to `device` on `model` for a request
    /// that was never run (the worker pool was full), so a device that
    /// retries a refused request is not charged twice for one answer.
    pub fn refund(&self, device: &DeviceKey, model: &str, samples: u32) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = table.windows.get_mut(&(*device, model.to_string())) {
            w.used = w.used.saturating_sub(samples);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: QueryBudget = QueryBudget {
        queries: 3,
        window_secs: 60,
    };

    #[test]
    fn a_refunded_request_is_not_charged() {
        let b = Budgets::default();
        let t0 = Instant::now();
        b.charge(&[1; 32], "m", B, 3, t0).unwrap();
        b.refund(&[1; 32], "m", 2);
        b.charge(&[1; 32], "m", B, 2, t0).unwrap();
        assert!(b.charge(&[1; 32], "m", B, 1, t0).is_err());
        // Refunds never go below zero or create a window.
        b.refund(&[1; 32], "m", 100);
        b.refund(&[9; 32], "m", 1);
        b.charge(&[1; 32], "m", B, 3, t0).unwrap();
    }

    #[test]
    fn counts_per_device_and_model_and_resets_with_the_window() {
        let b = Budgets::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.charge(&[1; 32], "m", B, 1, t0).unwrap();
        }
        let e = b
            .charge(&[1; 32], "m", B, 1, t0 + Duration::from_secs(10))
            .unwrap_err();
        assert!(
            matches!(
                e,
                BudgetExceeded::Spent {
                    retry_after_secs: 50,
                    left: 0,
                    ..
                }
            ),
            "{e:?}"
        );
        // Other devices and other models have their own budgets.
        b.charge(&[2; 32], "m", B, 1, t0).unwrap();
        b.charge(&[1; 32], "other", B, 1, t0).unwrap();
        // A new window starts after 60 s.
        b.charge(&[1; 32], "m", B, 1, t0 + Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn zero_budget_refuses_everything() {
        let b = Budgets::default();
        let zero = QueryBudget {
            queries: 0,
            window_secs: 1,
        };
        assert!(b.charge(&[1; 32], "m", zero, 1, Instant::now()).is_err());
    }

    #[test]
    fn expired_windows_are_swept() {
        let b = Budgets::default();
        let t0 = Instant::now();
        for i in 0..SWEEP_AT as u32 {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_le_bytes());
            b.charge(&d, "m", B, 1, t0).unwrap();
        }
        b.charge(&[0xff; 32], "m", B, 1, t0 + Duration::from_secs(61))
            .unwrap();
        assert_eq!(b.table.lock().unwrap().windows.len(), 1);
    }

    /// Issue 17 item 4: a batch is charged per sample, and a batch larger
    /// than what is left is refused whole (nothing is charged for it).
    #[test]
    fn batches_are_charged_per_sample() {
        let b = Budgets::default();
        let t0 = Instant::now();
        let two = QueryBudget {
            queries: 2,
            window_secs: 3600,
        };
        let e = b.charge(&[1; 32], "m", two, 20_000, t0).unwrap_err();
        assert!(
            matches!(
                e,
                BudgetExceeded::Spent {
                    requested: 20_000,
                    left: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        b.charge(&[1; 32], "m", two, 2, t0).unwrap();
        assert!(b.charge(&[1; 32], "m", two, 1, t0).is_err());
    }

    /// The same platform instance is one budget, whatever key it was
    /// admitted with: the key is derived from the instance id alone.
    #[test]
    fn the_budget_key_is_the_platform_instance() {
        let phone = [7u8; 33];
        assert_eq!(device_key(&phone), device_key(&phone));
        assert_ne!(device_key(&phone), device_key(&[8u8; 33]));
    }

    #[test]
    fn live_windows_are_capped() {
        let b = Budgets::default();
        let t0 = Instant::now();
        for i in 0..MAX_WINDOWS as u32 {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_le_bytes());
            b.charge(&d, "m", B, 1, t0).unwrap();
        }
        let e = b.charge(&[0xff; 32], "m", B, 1, t0).unwrap_err();
        assert!(matches!(e, BudgetExceeded::TableFull { .. }), "{e:?}");
        // A device already tracked is still served.
        b.charge(&[0; 32], "m", B, 1, t0).unwrap();
    }
}
