//! Privacy accounting for the Gaussian noise that [`crate::aggregate`] adds
//! to the aggregate: turns a noise multiplier and a number of rounds into an
//! (ε, δ)-DP figure.
//!
//! Must never: report a figure for a configuration the analysis below does
//! not cover, or a figure that is smaller than the analysis gives (every
//! approximation here errs towards a larger ε).
//!
//! # What is computed
//!
//! One round is the Gaussian mechanism with L2 sensitivity 1 and noise
//! standard deviation `z` (the noise multiplier; for the aggregator, noise
//! std `z·C/n` on the mean of `n` updates clipped to norm `C` is this
//! mechanism scaled by `C/n`). Every client participates in every round and
//! the rounds compose adaptively. Rényi DP (Mironov, "Rényi Differential
//! Privacy", CSF 2017):
//!
//! * the Gaussian mechanism is (α, α/(2z²))-RDP for every α > 1 (Prop. 7);
//! * RDP composes additively, so `rounds` rounds are (α, rounds·α/(2z²))-RDP
//!   (Prop. 1);
//! * (α, ρ)-RDP implies (ρ + ln(1/δ)/(α−1), δ)-DP (Prop. 3).
//!
//! Hence, with T = rounds and L = ln(1/δ),
//!
//! ```text
//! ε = min_{α>1}  T·α/(2z²) + L/(α−1)
//! ```
//!
//! The minimum is taken in closed form, not on a grid: setting the
//! derivative T/(2z²) − L/(α−1)² to zero gives α* = 1 + sqrt(2z²·L/T), and
//! substituting,
//!
//! ```text
//! ε = T/(2z²) + sqrt(2·T·L)/z
//! ```
//!
//! The objective is convex in α on (1, ∞), so α* is the global minimum; a
//! unit test checks the closed form against a fine grid.
//!
//! # What is not covered
//!
//! * Subsampling: no privacy amplification from clients being sampled into
//!   a round is claimed. A client that takes part in fewer than `rounds`
//!   rounds is covered by the same figure, since ε grows with rounds.
//! * The robust rules (median, trimmed mean, Krum, multi-Krum) and FedAvg
//!   with unequal weights: their sensitivity to one client is not `C/n`, so
//!   this figure does not apply to them even though the aggregator adds the
//!   same noise.
//! * Adjacency: the sensitivity `C/n` is for adding or removing one client
//!   with `n` fixed and public. Under replace-one adjacency it is `2C/n`, so
//!   call [`epsilon`] with `z/2`.
//! * Tighter RDP-to-DP conversions (e.g. Balle et al. 2020) would give a
//!   smaller ε; Mironov's conversion is used because it is simple and sound.
//! * Floating-point effects of sampling the noise are not modelled.

/// Why an ε could not be given.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    #[error("noise-multiplier check failed: z = {noise_multiplier} must be finite and > 0")]
    BadNoiseMultiplier { noise_multiplier: f64 },
    #[error("delta check failed: delta = {delta} must be in the open interval (0, 1)")]
    BadDelta { delta: f64 },
    #[error("rounds check failed: rounds must be >= 1")]
    ZeroRounds,
    #[error(
        "epsilon finiteness check failed: z = {noise_multiplier}, rounds = {rounds}, \
         delta = {delta} give a non-finite epsilon, i.e. no meaningful guarantee"
    )]
    NonFinite {
        noise_multiplier: f64,
        rounds: u64,
        delta: f64,
    },
}

/// ε of (ε, δ)-DP after `rounds` adaptive compositions of the Gaussian
/// mechanism with L2 sensitivity 1 and noise std `noise_multiplier`, every
/// client in every round, via RDP (see the module documentation for the
/// formula and what it does not cover).
pub fn epsilon(noise_multiplier: f64, rounds: u64, delta: f64) -> Result<f64, PrivacyError> {
    check(noise_multiplier, rounds, delta)?;
    let z = noise_multiplier;
    let t = rounds as f64;
    let l = -delta.ln();
    let eps = t / (2.0 * z * z) + (2.0 * t * l).sqrt() / z;
    if !eps.is_finite() {
        return Err(PrivacyError::NonFinite {
            noise_multiplier,
            rounds,
            delta,
        });
    }
    Ok(eps)
}

fn check(noise_multiplier: f64, rounds: u64, delta: f64) -> Result<(), PrivacyError> {
    // Written so that NaN fails every check rather than slipping through.
    if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
        return Err(PrivacyError::BadNoiseMultiplier { noise_multiplier });
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(PrivacyError::BadDelta { delta });
    }
    if rounds == 0 {
        return Err(PrivacyError::ZeroRounds);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The objective before minimisation: ε at a fixed Rényi order α.
    fn epsilon_at_order(z: f64, rounds: u64, delta: f64, alpha: f64) -> f64 {
        rounds as f64 * alpha / (2.0 * z * z) + (1.0 / delta).ln() / (alpha - 1.0)
    }

    fn optimal_order(z: f64, rounds: u64, delta: f64) -> f64 {
        1.0 + (2.0 * z * z * (1.0 / delta).ln() / rounds as f64).sqrt()
    }

    /// Minimum over α − 1 = e^u for u on a grid of step 1e-5 over
    /// [ln 1e-4, ln 1e4]: a relative step in α − 1 keeps the grid fine
    /// both when α* is close to 1 (many rounds) and when it is large.
    fn grid_minimum(z: f64, rounds: u64, delta: f64) -> f64 {
        let (lo, hi, step) = (1e-4f64.ln(), 1e4f64.ln(), 1e-5);
        let steps = ((hi - lo) / step) as u64;
        (0..=steps)
            .map(|i| epsilon_at_order(z, rounds, delta, 1.0 + (lo + i as f64 * step).exp()))
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn known_value_one_round_unit_noise() {
        // z = 1, T = 1, δ = 1e-5:
        //   L = ln(1e5) = 5·ln 10 = 11.512925464970229
        //   α* = 1 + sqrt(2·1·L/1) = 1 + sqrt(23.025850929940457)
        //      = 1 + 4.798525912188081 = 5.798525912188081
        //   ε = T/(2z²) + sqrt(2TL)/z = 0.5 + 4.798525912188081
        //     = 5.298525912188081
        let eps = epsilon(1.0, 1, 1e-5).unwrap();
        assert!((eps - 5.298525912188081).abs() < 1e-12, "eps = {eps}");
        let alpha = optimal_order(1.0, 1, 1e-5);
        assert!((alpha - 5.798525912188081).abs() < 1e-12, "alpha = {alpha}");
        assert!((epsilon_at_order(1.0, 1, 1e-5, alpha) - eps).abs() < 1e-12);
    }

    #[test]
    fn closed_form_matches_grid_minimum() {
        for &(z, rounds, delta) in &[
            (1.0, 1, 1e-5),
            (0.5, 1, 1e-5),
            (1.1, 100, 1e-5),
            (4.0, 1000, 1e-6),
            (10.0, 10, 1e-3),
            (0.8, 50, 0.01),
        ] {
            let closed = epsilon(z, rounds, delta).unwrap();
            let grid = grid_minimum(z, rounds, delta);
            // The closed form is the exact minimum, so the grid can only be
            // at or above it (up to rounding).
            assert!(
                grid >= closed - 1e-9,
                "z={z} T={rounds} δ={delta}: grid {grid} below closed form {closed}"
            );
            assert!(
                (grid - closed).abs() < 1e-6,
                "z={z} T={rounds} δ={delta}: grid {grid} vs closed form {closed}"
            );
        }
    }

    #[test]
    fn decreasing_in_noise_multiplier() {
        let zs = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 5.0, 20.0, 100.0];
        let eps: Vec<f64> = zs.iter().map(|&z| epsilon(z, 50, 1e-5).unwrap()).collect();
        for w in eps.windows(2) {
            assert!(w[1] < w[0], "not decreasing in z: {eps:?}");
        }
    }

    #[test]
    fn increasing_in_rounds() {
        let ts = [1, 2, 5, 10, 100, 1000, 100_000];
        let eps: Vec<f64> = ts.iter().map(|&t| epsilon(1.2, t, 1e-5).unwrap()).collect();
        for w in eps.windows(2) {
            assert!(w[1] > w[0], "not increasing in rounds: {eps:?}");
        }
    }

    #[test]
    fn rounds_compose_like_one_round_with_less_noise() {
        // T Gaussian mechanisms with std z compose (exactly, in RDP) to one
        // with std z/sqrt(T), so the two figures must agree.
        let (z, t, delta) = (3.0, 16, 1e-5);
        let many = epsilon(z, t, delta).unwrap();
        let one = epsilon(z / (t as f64).sqrt(), 1, delta).unwrap();
        assert!((many - one).abs() < 1e-9, "{many} vs {one}");
    }

    #[test]
    fn rejects_bad_inputs() {
        for z in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = epsilon(z, 1, 1e-5).unwrap_err();
            assert!(matches!(err, PrivacyError::BadNoiseMultiplier { .. }));
            assert!(err.to_string().contains("noise-multiplier check failed"));
        }
        for delta in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
            let err = epsilon(1.0, 1, delta).unwrap_err();
            assert!(matches!(err, PrivacyError::BadDelta { .. }));
            assert!(err.to_string().contains("delta check failed"));
        }
        let err = epsilon(1.0, 0, 1e-5).unwrap_err();
        assert_eq!(err, PrivacyError::ZeroRounds);
        assert!(err.to_string().contains("rounds check failed"));
    }

    #[test]
    fn no_figure_when_it_would_be_infinite() {
        let err = epsilon(1e-200, 1, 1e-5).unwrap_err();
        assert!(matches!(err, PrivacyError::NonFinite { .. }));
        assert!(err.to_string().contains("epsilon finiteness check failed"));
    }
}
