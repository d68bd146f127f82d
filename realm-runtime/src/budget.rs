//! Per-device query budgets: at most `queries` requests per model per
//! fixed window of `window_secs`, as the model's provider set them. Repeated
//! querying is how models are extracted and how membership is inferred, so
//! the budget is enforced here, inside the realm, not by the client.
//!
//! A "device" is one admitted identity (the auth key in its admission
//! certificate). Re-admitting gives a new identity and a fresh budget, and
//! the certifier does not limit how often a device is admitted: a budget
//! slows extraction by one identity, not by a device that keeps re-admitting
//! (see docs/threat-model.md).
//!
//! Pure apart from the mutex: time is passed in, so tests need no clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use protocol::QueryBudget;
use thiserror::Error;

/// Identities tracked before expired windows are swept.
const SWEEP_AT: usize = 10_000;

/// The budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error(
    "query budget of {queries} per {window_secs} s exhausted; try again in {retry_after_secs} s"
)]
pub struct BudgetExceeded {
    /// The budget.
    pub queries: u32,
    /// Its window.
    pub window_secs: u32,
    /// Seconds until the window resets.
    pub retry_after_secs: u64,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    len: Duration,
    used: u32,
}

/// Budgets of every (device, model) pair seen.
#[derive(Debug, Default)]
pub struct Budgets {
    windows: Mutex<HashMap<([u8; 32], String), Window>>,
}

impl Budgets {
    /// Count one query by `device` on `model` at `now`, or refuse it.
    pub fn charge(
        &self,
        device: &[u8; 32],
        model: &str,
        budget: QueryBudget,
        now: Instant,
    ) -> Result<(), BudgetExceeded> {
        let len = Duration::from_secs(u64::from(budget.window_secs.max(1)));
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= SWEEP_AT {
            windows.retain(|_, w| now.saturating_duration_since(w.start) < w.len);
        }
        let w = windows
            .entry((*device, model.to_string()))
            .or_insert(Window {
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
        if w.used >= budget.queries {
            let left = w.len.saturating_sub(now.saturating_duration_since(w.start));
            return Err(BudgetExceeded {
                queries: budget.queries,
                window_secs: budget.window_secs,
                retry_after_secs: left.as_secs().max(1),
            });
        }
        w.used += 1;
        Ok(())
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
    fn counts_per_device_and_model_and_resets_with_the_window() {
        let b = Budgets::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.charge(&[1; 32], "m", B, t0).unwrap();
        }
        let e = b
            .charge(&[1; 32], "m", B, t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(e.retry_after_secs, 50);
        // Other devices and other models have their own budgets.
        b.charge(&[2; 32], "m", B, t0).unwrap();
        b.charge(&[1; 32], "other", B, t0).unwrap();
        // A new window starts after 60 s.
        b.charge(&[1; 32], "m", B, t0 + Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn zero_budget_refuses_everything() {
        let b = Budgets::default();
        let zero = QueryBudget {
            queries: 0,
            window_secs: 1,
        };
        assert!(b.charge(&[1; 32], "m", zero, Instant::now()).is_err());
    }

    #[test]
    fn expired_windows_are_swept() {
        let b = Budgets::default();
        let t0 = Instant::now();
        for i in 0..SWEEP_AT as u32 {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_le_bytes());
            b.charge(&d, "m", B, t0).unwrap();
        }
        b.charge(&[0xff; 32], "m", B, t0 + Duration::from_secs(61))
            .unwrap();
        assert_eq!(b.windows.lock().unwrap().len(), 1);
    }
}
