//! Robust aggregation of federated-learning updates: FedAvg, coordinate-wise
//! median, trimmed mean, Krum and multi-Krum, with per-update L2 clipping and
//! optional Gaussian noise on the result (central DP).
//!
//! Must never: fold an update of the wrong length or with a NaN/inf
//! coordinate into an aggregate; drop, repair or reweight a bad update on its
//! own (refusing a round's bad updates is the caller's decision, so
//! [`Aggregator::run`] fails and names the update); add noise without a
//! clipping bound (the noise scale is only meaningful relative to one); or
//! return an aggregate without the noise it was configured to add.
//!
//! # Privacy
//!
//! With `clip_norm = C` and `noise_multiplier = z`, [`Aggregator::run`] adds
//! N(0, (z·C/n)²) to every coordinate of the aggregate of `n` updates. The
//! (ε, δ) figure of [`crate::privacy::epsilon`] with noise multiplier `z`
//! applies only to [`Rule::FedAvg`] when every update reports the same
//! `num_samples` (then the rule is the plain mean). For the robust rules, and
//! for FedAvg with unequal weights, the same noise is added but no DP claim
//! is made: their sensitivity to one client is not bounded by `C/n` (see
//! the comment in [`Aggregator::run`]).

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// One device's contribution to a round: its parameter delta and the number
/// of local examples it trained on (the FedAvg weight).
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub delta: Vec<f32>,
    pub num_samples: u64,
}

/// How updates are combined. Text form (for [`FromStr`] and [`Display`]):
/// `fedavg`, `median`, `trimmed-mean:<beta>`, `krum:<f>`,
/// `multi-krum:<f>:<m>`.
///
/// [`Display`]: fmt::Display
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Mean weighted by `num_samples` (McMahan et al. 2017).
    FedAvg,
    /// Coordinate-wise median; mean of the two middle values for even n.
    Median,
    /// Coordinate-wise mean after removing ⌊β·n⌋ values from each end;
    /// β in [0, 0.5).
    TrimmedMean { beta: f64 },
    /// The single update with the lowest Krum score, tolerating `f`
    /// Byzantine updates (Blanchard et al. 2017); needs n ≥ 2f + 3.
    Krum { f: usize },
    /// Unweighted mean of the `m` updates with the lowest Krum scores;
    /// needs n ≥ 2f + 3 and 1 ≤ m ≤ n.
    MultiKrum { f: usize, m: usize },
}

const RULE_FORMS: &str = "fedavg, median, trimmed-mean:<beta>, krum:<f>, multi-krum:<f>:<m>";

impl fmt::Display for Rule {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::FedAvg => write!(out, "fedavg"),
            Rule::Median => write!(out, "median"),
            // `{}` on f64 prints the shortest text that parses back to the
            // same value, so Display and FromStr round-trip.
            Rule::TrimmedMean { beta } => write!(out, "trimmed-mean:{beta}"),
            Rule::Krum { f } => write!(out, "krum:{f}"),
            Rule::MultiKrum { f, m } => write!(out, "multi-krum:{f}:{m}"),
        }
    }
}

/// Why a rule name did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleParseError {
    #[error(
        "rule-name check failed: unknown aggregation rule {name:?}; expected one of {RULE_FORMS}"
    )]
    UnknownRule { name: String },
    #[error(
        "parameter-count check failed: {rule} takes {expected} parameter(s) \
         (write it as {usage}), got {got}"
    )]
    WrongParameterCount {
        rule: &'static str,
        usage: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("parameter check failed: {rule} parameter {param} = {value:?} is not a valid {kind}")]
    BadParameter {
        rule: &'static str,
        param: &'static str,
        value: String,
        kind: &'static str,
    },
    #[error("range check failed: {rule} parameter {param} = {value} must be {range}")]
    OutOfRange {
        rule: &'static str,
        param: &'static str,
        value: String,
        range: &'static str,
    },
}

impl FromStr for Rule {
    type Err = RuleParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, params): (&str, Vec<&str>) = match text.split_once(':') {
            Some((name, rest)) => (name, rest.split(':').collect()),
            None => (text, Vec::new()),
        };
        match name {
            "fedavg" => {
                param_count("fedavg", "fedavg", &params, 0)?;
                Ok(Rule::FedAvg)
            }
            "median" => {
                param_count("median", "median", &params, 0)?;
                Ok(Rule::Median)
            }
            "trimmed-mean" => {
                const RULE: &str = "trimmed-mean";
                param_count(RULE, "trimmed-mean:<beta>", &params, 1)?;
                let beta: f64 = parse_param(RULE, "beta", params[0], "number")?;
                if !beta_in_range(beta) {
                    return Err(RuleParseError::OutOfRange {
                        rule: RULE,
                        param: "beta",
                        value: params[0].to_owned(),
                        range: "in [0, 0.5)",
                    });
                }
                Ok(Rule::TrimmedMean { beta })
            }
            "krum" => {
                const RULE: &str = "krum";
                param_count(RULE, "krum:<f>", &params, 1)?;
                let f = parse_param(RULE, "f", params[0], "non-negative integer")?;
                Ok(Rule::Krum { f })
            }
            "multi-krum" => {
                const RULE: &str = "multi-krum";
                param_count(RULE, "multi-krum:<f>:<m>", &params, 2)?;
                let f = parse_param(RULE, "f", params[0], "non-negative integer")?;
                let m: usize = parse_param(RULE, "m", params[1], "non-negative integer")?;
                if m == 0 {
                    return Err(RuleParseError::OutOfRange {
                        rule: RULE,
                        param: "m",
                        value: params[1].to_owned(),
                        range: ">= 1",
                    });
                }
                Ok(Rule::MultiKrum { f, m })
            }
            _ => Err(RuleParseError::UnknownRule {
                name: name.to_owned(),
            }),
        }
    }
}

fn param_count(
    rule: &'static str,
    usage: &'static str,
    params: &[&str],
    expected: usize,
) -> Result<(), RuleParseError> {
    if params.len() == expected {
        Ok(())
    } else {
        Err(RuleParseError::WrongParameterCount {
            rule,
            usage,
            expected,
            got: params.len(),
        })
    }
}

fn parse_param<T: FromStr>(
    rule: &'static str,
    param: &'static str,
    value: &str,
    kind: &'static str,
) -> Result<T, RuleParseError> {
    value.parse().map_err(|_| RuleParseError::BadParameter {
        rule,
        param,
        value: value.to_owned(),
        kind,
    })
}

fn beta_in_range(beta: f64) -> bool {
    // A range test rather than two comparisons so that NaN is rejected.
    (0.0..0.5).contains(&beta)
}

/// Why a single update was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpdateError {
    #[error("length check failed: delta has {got} coordinates, expected {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("finiteness check failed: coordinate {index} is {value}")]
    NonFinite { index: usize, value: f32 },
    #[error("sample-count check failed: num_samples is 0")]
    ZeroSamples,
}

/// Why a round could not be aggregated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AggregateError {
    #[error("non-empty check failed: no updates to aggregate")]
    Empty,
    #[error(
        "length check failed: update {index} has {got} coordinates, \
         update 0 has {expected}"
    )]
    MismatchedLengths {
        index: usize,
        expected: usize,
        got: usize,
    },
    #[error("finiteness check failed: update {update} coordinate {index} is {value}")]
    NonFinite {
        update: usize,
        index: usize,
        value: f32,
    },
    #[error("update check failed for update {index}: {source}")]
    InvalidUpdate {
        index: usize,
        #[source]
        source: UpdateError,
    },
    #[error("trimmed-mean beta check failed: beta = {beta} must be in [0, 0.5)")]
    BadBeta { beta: f64 },
    #[error(
        "{rule} update-count check failed: {n} updates with f = {f} Byzantine \
         need n >= 2f + 3 = {required}"
    )]
    TooFewUpdates {
        rule: &'static str,
        n: usize,
        f: usize,
        required: usize,
    },
    #[error("multi-krum m check failed: m = {m} must satisfy 1 <= m <= n = {n}")]
    BadM { m: usize, n: usize },
    #[error("FedAvg weight check failed: the updates' num_samples sum to 0")]
    ZeroTotalWeight,
    #[error("clip-norm check failed: clip_norm = {clip_norm} must be finite and > 0")]
    BadClipNorm { clip_norm: f32 },
    #[error(
        "noise-multiplier check failed: noise_multiplier = {noise_multiplier} must be finite and > 0"
    )]
    BadNoiseMultiplier { noise_multiplier: f64 },
    #[error(
        "noise configuration check failed: noise_multiplier is set but clip_norm \
         is not, and the noise scale is noise_multiplier * clip_norm / n"
    )]
    NoiseWithoutClip,
    #[error(
        "result finiteness check failed: coordinate {index} of the noised aggregate is {value}"
    )]
    NonFiniteResult { index: usize, value: f32 },
}

/// Checks one update against the round's model size: length, every
/// coordinate finite (naming the first bad index), at least one sample.
pub fn validate(update: &Update, expected_len: usize) -> Result<(), UpdateError> {
    if update.delta.len() != expected_len {
        return Err(UpdateError::WrongLength {
            expected: expected_len,
            got: update.delta.len(),
        });
    }
    if let Some((index, &value)) = first_non_finite(&update.delta) {
        return Err(UpdateError::NonFinite { index, value });
    }
    if update.num_samples == 0 {
        return Err(UpdateError::ZeroSamples);
    }
    Ok(())
}

fn first_non_finite(delta: &[f32]) -> Option<(usize, &f32)> {
    delta.iter().enumerate().find(|(_, v)| !v.is_finite())
}

/// Scales `delta` down in place so its L2 norm is at most `max_norm`, and
/// returns the norm it had before (as f32, so a norm beyond `f32::MAX`
/// reads as infinity).
///
/// A `max_norm` that is negative or NaN clips to zero and a `delta` with a
/// non-finite coordinate is zeroed: both are misuse, and zero is the answer
/// that can only shrink what the update contributes.
pub fn clip(delta: &mut [f32], max_norm: f32) -> f32 {
    clip_reporting(delta, max_norm).0 as f32
}

/// [`clip`], also saying whether the delta was changed; the decision is
/// made on the f64 norm, which the f32 return value of `clip` could round.
fn clip_reporting(delta: &mut [f32], max_norm: f32) -> (f64, bool) {
    let norm = l2_norm(delta);
    let bound = if max_norm >= 0.0 {
        f64::from(max_norm)
    } else {
        0.0
    };
    if !norm.is_finite() {
        delta.fill(0.0);
        return (norm, true);
    }
    if norm <= bound {
        return (norm, false);
    }
    let scale = bound / norm;
    for x in delta.iter_mut() {
        *x = (f64::from(*x) * scale) as f32;
    }
    // Rounding each coordinate to f32 can leave the norm a few ulps above
    // the bound, and the DP sensitivity argument needs norm <= C exactly.
    // One shrink by 2^-20 covers the 2^-24 relative rounding of normal
    // numbers; subnormal coordinates round absolutely, hence the loop and
    // the zero fallback.
    for _ in 0..4 {
        if l2_norm(delta) <= bound {
            return (norm, true);
        }
        for x in delta.iter_mut() {
            *x *= 1.0 - 2f32.powi(-20);
        }
    }
    if l2_norm(delta) > bound {
        delta.fill(0.0);
    }
    (norm, true)
}

fn l2_norm(delta: &[f32]) -> f64 {
    // f64 cannot overflow here: even f32::MAX squared (~1.2e77) summed over
    // any realistic length stays far below f64::MAX.
    delta
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

/// Combines `updates` with `rule`. Every update must have the length of the
/// first and only finite coordinates; `num_samples` is used by FedAvg only.
pub fn aggregate(rule: &Rule, updates: &[Update]) -> Result<Vec<f32>, AggregateError> {
    aggregate_selecting(rule, updates).map(|(delta, _)| delta)
}

/// [`aggregate`], also returning the indices Krum / multi-Krum chose.
fn aggregate_selecting(
    rule: &Rule,
    updates: &[Update],
) -> Result<(Vec<f32>, Option<Vec<usize>>), AggregateError> {
    let dim = check_shapes(updates)?;
    match *rule {
        Rule::FedAvg => Ok((fedavg(updates, dim)?, None)),
        Rule::Median => Ok((median(updates, dim), None)),
        Rule::TrimmedMean { beta } => Ok((trimmed_mean(updates, dim, beta)?, None)),
        Rule::Krum { f } => {
            let selected = krum_select(updates, f, 1, "krum")?;
            Ok((mean_of(updates, &selected, dim), Some(selected)))
        }
        Rule::MultiKrum { f, m } => {
            let selected = krum_select(updates, f, m, "multi-krum")?;
            Ok((mean_of(updates, &selected, dim), Some(selected)))
        }
    }
}

/// Returns the common length, or why there is none.
fn check_shapes(updates: &[Update]) -> Result<usize, AggregateError> {
    let dim = updates.first().ok_or(AggregateError::Empty)?.delta.len();
    for (update, u) in updates.iter().enumerate() {
        if u.delta.len() != dim {
            return Err(AggregateError::MismatchedLengths {
                index: update,
                expected: dim,
                got: u.delta.len(),
            });
        }
        if let Some((index, &value)) = first_non_finite(&u.delta) {
            return Err(AggregateError::NonFinite {
                update,
                index,
                value,
            });
        }
    }
    Ok(dim)
}

fn fedavg(updates: &[Update], dim: usize) -> Result<Vec<f32>, AggregateError> {
    // Weights summed in f64: a u64 sum could overflow, and f64 keeps the
    // ratio accurate enough for any realistic sample count.
    let total: f64 = updates.iter().map(|u| u.num_samples as f64).sum();
    if total <= 0.0 {
        return Err(AggregateError::ZeroTotalWeight);
    }
    let mut acc = vec![0f64; dim];
    for u in updates {
        let w = u.num_samples as f64;
        for (a, &x) in acc.iter_mut().zip(&u.delta) {
            *a += w * f64::from(x);
        }
    }
    Ok(acc.into_iter().map(|a| (a / total) as f32).collect())
}

/// Per-coordinate order statistics: calls `reduce` with each coordinate's
/// values sorted ascending.
fn per_coordinate(updates: &[Update], dim: usize, reduce: impl Fn(&[f32]) -> f32) -> Vec<f32> {
    let mut column = Vec::with_capacity(updates.len());
    (0..dim)
        .map(|j| {
            column.clear();
            column.extend(updates.iter().map(|u| u.delta[j]));
            column.sort_unstable_by(f32::total_cmp);
            reduce(&column)
        })
        .collect()
}

fn median(updates: &[Update], dim: usize) -> Vec<f32> {
    per_coordinate(updates, dim, |sorted| {
        let n = sorted.len();
        let upper = sorted[n / 2];
        if n % 2 == 1 {
            upper
        } else {
            // In f64 so that two large values of the same sign cannot
            // overflow; the mean of two f32s lies between them and rounds
            // back into that range.
            ((f64::from(sorted[n / 2 - 1]) + f64::from(upper)) / 2.0) as f32
        }
    })
}

fn trimmed_mean(updates: &[Update], dim: usize, beta: f64) -> Result<Vec<f32>, AggregateError> {
    if !beta_in_range(beta) {
        return Err(AggregateError::BadBeta { beta });
    }
    let n = updates.len();
    // beta < 0.5 gives 2k < n, so at least one value is always kept.
    let k = (beta * n as f64).floor() as usize;
    Ok(per_coordinate(updates, dim, |sorted| {
        let kept = &sorted[k..n - k];
        (kept.iter().map(|&x| f64::from(x)).sum::<f64>() / kept.len() as f64) as f32
    }))
}

/// Indices of the `m` updates with the lowest Krum scores, best first
/// (ties broken by the lower index, so the result is deterministic).
fn krum_select(
    updates: &[Update],
    f: usize,
    m: usize,
    rule: &'static str,
) -> Result<Vec<usize>, AggregateError> {
    let n = updates.len();
    let required = f.saturating_mul(2).saturating_add(3);
    if n < required {
        return Err(AggregateError::TooFewUpdates {
            rule,
            n,
            f,
            required,
        });
    }
    if m == 0 || m > n {
        return Err(AggregateError::BadM { m, n });
    }
    // Blanchard et al. 2017: each update is scored by its summed squared
    // distance to its n - f - 2 nearest others, i.e. to the closest group
    // that must contain honest updates when at most f are Byzantine.
    let neighbours = n - f - 2;
    let mut dist = vec![0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let d = squared_distance(&updates[i].delta, &updates[j].delta);
            dist[i * n + j] = d;
            dist[j * n + i] = d;
        }
    }
    let mut row = Vec::with_capacity(n);
    let scores: Vec<f64> = (0..n)
        .map(|i| {
            row.clear();
            row.extend((0..n).filter(|&j| j != i).map(|j| dist[i * n + j]));
            row.sort_unstable_by(f64::total_cmp);
            row.iter().take(neighbours).sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    order.truncate(m);
    Ok(order)
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum()
}

fn mean_of(updates: &[Update], selected: &[usize], dim: usize) -> Vec<f32> {
    let mut acc = vec![0f64; dim];
    for &i in selected {
        for (a, &x) in acc.iter_mut().zip(&updates[i].delta) {
            *a += f64::from(x);
        }
    }
    let count = selected.len() as f64;
    acc.into_iter().map(|a| (a / count) as f32).collect()
}

/// The outcome of a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// The aggregated (and, if configured, noised) delta.
    pub delta: Vec<f32>,
    /// How many updates had a norm above `clip_norm` and were scaled down.
    pub clipped: usize,
    /// For Krum / multi-Krum, the indices of the chosen updates, best
    /// score first; `None` for the other rules.
    pub selected: Option<Vec<usize>>,
}

/// A round's aggregation pipeline: validate, clip, aggregate, add noise.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregator {
    pub rule: Rule,
    /// Per-update L2 bound `C`; `None` means no clipping.
    pub clip_norm: Option<f32>,
    /// Noise multiplier `z`: N(0, (z·C/n)²) is added per coordinate.
    /// Requires `clip_norm`. See the module documentation for when the
    /// privacy figure applies.
    pub noise_multiplier: Option<f64>,
}

impl Aggregator {
    /// Aggregates one round. Fails, naming the update, if any update fails
    /// [`validate`] against `expected_len`: the caller decides whether to
    /// drop it and retry.
    pub fn run(
        &self,
        mut updates: Vec<Update>,
        expected_len: usize,
        rng: &mut impl Rng,
    ) -> Result<Aggregate, AggregateError> {
        // Configuration first, so a misconfigured aggregator fails the same
        // way whatever the round's updates are.
        if let Some(clip_norm) = self.clip_norm
            && !(clip_norm.is_finite() && clip_norm > 0.0)
        {
            return Err(AggregateError::BadClipNorm { clip_norm });
        }
        if let Some(noise_multiplier) = self.noise_multiplier {
            if self.clip_norm.is_none() {
                return Err(AggregateError::NoiseWithoutClip);
            }
            if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
                return Err(AggregateError::BadNoiseMultiplier { noise_multiplier });
            }
        }
        if updates.is_empty() {
            return Err(AggregateError::Empty);
        }
        for (index, update) in updates.iter().enumerate() {
            validate(update, expected_len)
                .map_err(|source| AggregateError::InvalidUpdate { index, source })?;
        }

        let mut clipped = 0;
        if let Some(clip_norm) = self.clip_norm {
            for update in &mut updates {
                if clip_reporting(&mut update.delta, clip_norm).1 {
                    clipped += 1;
                }
            }
        }

        let (mut delta, selected) = aggregate_selecting(&self.rule, &updates)?;

        if let (Some(z), Some(clip_norm)) = (self.noise_multiplier, self.clip_norm) {
            // Sensitivity: after clipping every update has L2 norm <= C, so
            // adding or removing one client changes the *sum* of updates by
            // a vector of norm <= C. With n fixed and public (as in DP-FedAvg,
            // McMahan et al. 2018, which divides by a fixed count), the plain
            // mean sum/n then has L2 sensitivity C/n, and noise of std z·C/n
            // is the Gaussian mechanism with noise multiplier z, which is what
            // crate::privacy::epsilon accounts for. This holds for FedAvg with
            // equal num_samples only: with unequal weights one client moves
            // the mean by up to w_i·C/Σw, and the robust rules' output can
            // move by up to about C when one update changes (e.g. the median
            // of two, or Krum switching its pick), so for them the noise is
            // added but no DP figure is claimed.
            let sigma = z * f64::from(clip_norm) / updates.len() as f64;
            for (index, x) in delta.iter_mut().enumerate() {
                let noise: f64 = StandardNormal.sample(rng);
                let value = (f64::from(*x) + sigma * noise) as f32;
                if !value.is_finite() {
                    return Err(AggregateError::NonFiniteResult { index, value });
                }
                *x = value;
            }
        }

        Ok(Aggregate {
            delta,
            clipped,
            selected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_pcg::Pcg64;

    fn upd(delta: &[f32], num_samples: u64) -> Update {
        Update {
            delta: delta.to_vec(),
            num_samples,
        }
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    // ---- Rule text form ----

    #[test]
    fn rule_text_round_trips() {
        for (text, rule) in [
            ("fedavg", Rule::FedAvg),
            ("median", Rule::Median),
            ("trimmed-mean:0.2", Rule::TrimmedMean { beta: 0.2 }),
            ("trimmed-mean:0", Rule::TrimmedMean { beta: 0.0 }),
            ("krum:1", Rule::Krum { f: 1 }),
            ("multi-krum:1:5", Rule::MultiKrum { f: 1, m: 5 }),
        ] {
            assert_eq!(text.parse::<Rule>().unwrap(), rule, "{text}");
            assert_eq!(rule.to_string(), text);
        }
    }

    #[test]
    fn rule_parse_errors_say_what_is_wrong() {
        let cases = [
            ("fedavgx", "unknown aggregation rule \"fedavgx\""),
            ("", "unknown aggregation rule \"\""),
            ("Median", "unknown aggregation rule"),
            ("fedavg:1", "fedavg takes 0 parameter(s)"),
            (
                "krum",
                "krum takes 1 parameter(s) (write it as krum:<f>), got 0",
            ),
            (
                "krum:x",
                "krum parameter f = \"x\" is not a valid non-negative integer",
            ),
            ("krum:-1", "krum parameter f = \"-1\""),
            ("multi-krum:1", "multi-krum takes 2 parameter(s)"),
            ("multi-krum:1:2:3", "got 3"),
            ("multi-krum:1:0", "multi-krum parameter m = 0 must be >= 1"),
            ("trimmed-mean", "trimmed-mean takes 1 parameter(s)"),
            ("trimmed-mean:0.5", "beta = 0.5 must be in [0, 0.5)"),
            ("trimmed-mean:-0.1", "beta = -0.1 must be in [0, 0.5)"),
            ("trimmed-mean:NaN", "beta = NaN must be in [0, 0.5)"),
            ("trimmed-mean:abc", "beta = \"abc\" is not a valid number"),
        ];
        for (text, needle) in cases {
            let err = text.parse::<Rule>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    // ---- validate ----

    #[test]
    fn validate_names_the_failed_check() {
        assert_eq!(validate(&upd(&[1.0, 2.0], 3), 2), Ok(()));
        let err = validate(&upd(&[1.0], 3), 2).unwrap_err();
        assert_eq!(
            err,
            UpdateError::WrongLength {
                expected: 2,
                got: 1
            }
        );
        assert!(err.to_string().contains("length check failed"));

        let err = validate(&upd(&[1.0, 2.0, f32::NAN, f32::INFINITY], 3), 4).unwrap_err();
        assert!(matches!(err, UpdateError::NonFinite { index: 2, .. }));
        assert!(err.to_string().contains("coordinate 2 is NaN"), "{err}");

        let err = validate(&upd(&[0.0, f32::NEG_INFINITY], 3), 2).unwrap_err();
        assert!(err.to_string().contains("coordinate 1 is -inf"), "{err}");

        let err = validate(&upd(&[1.0], 0), 1).unwrap_err();
        assert_eq!(err, UpdateError::ZeroSamples);
        assert!(err.to_string().contains("sample-count check failed"));
    }

    // ---- clip ----

    #[test]
    fn clip_scales_down_to_the_bound() {
        // |(3, 4)| = 5; clipped to 1 it becomes (3/5, 4/5).
        let mut d = [3.0, 4.0];
        assert_eq!(clip(&mut d, 1.0), 5.0);
        assert_close(&d, &[0.6, 0.8], 1e-6);
        assert!(l2_norm(&d) <= 1.0);

        // Already within the bound: untouched.
        let mut d = [3.0, 4.0];
        assert_eq!(clip(&mut d, 10.0), 5.0);
        assert_eq!(d, [3.0, 4.0]);
        let mut d = [3.0, 4.0];
        assert_eq!(clip(&mut d, 5.0), 5.0);
        assert_eq!(d, [3.0, 4.0]);

        // Misuse shrinks to zero rather than passing through.
        for bound in [0.0, -1.0, f32::NAN] {
            let mut d = [3.0, 4.0];
            assert_eq!(clip(&mut d, bound), 5.0);
            assert_eq!(d, [0.0, 0.0], "bound {bound}");
        }
        let mut d = [1.0, f32::NAN];
        assert!(clip(&mut d, 1.0).is_nan());
        assert_eq!(d, [0.0, 0.0]);

        // No bound at all.
        let mut d = [3.0, 4.0];
        clip(&mut d, f32::INFINITY);
        assert_eq!(d, [3.0, 4.0]);
    }

    // ---- rules on hand-computed inputs ----

    #[test]
    fn fedavg_weights_by_samples() {
        // (1·[1, 2] + 3·[3, 6]) / 4 = [10/4, 20/4] = [2.5, 5.0]
        let updates = [upd(&[1.0, 2.0], 1), upd(&[3.0, 6.0], 3)];
        assert_eq!(aggregate(&Rule::FedAvg, &updates).unwrap(), vec![2.5, 5.0]);
        // A zero-weight update contributes nothing: (2·[4] + 0·[100]) / 2 = [4].
        let updates = [upd(&[4.0], 2), upd(&[100.0], 0)];
        assert_eq!(aggregate(&Rule::FedAvg, &updates).unwrap(), vec![4.0]);
    }

    #[test]
    fn median_odd_and_even() {
        // Odd n = 3: coordinate 0 sorted 1, 2, 100 -> 2;
        //            coordinate 1 sorted -5, 10, 20 -> 10.
        let updates = [
            upd(&[1.0, 10.0], 1),
            upd(&[2.0, 20.0], 1),
            upd(&[100.0, -5.0], 1),
        ];
        assert_eq!(aggregate(&Rule::Median, &updates).unwrap(), vec![2.0, 10.0]);
        // Even n = 4: coordinate 0 sorted 1, 2, 4, 100 -> (2 + 4)/2 = 3;
        //             coordinate 1 sorted -1, 0, 3, 5 -> (0 + 3)/2 = 1.5.
        let updates = [
            upd(&[1.0, 0.0], 1),
            upd(&[2.0, -1.0], 1),
            upd(&[4.0, 5.0], 1),
            upd(&[100.0, 3.0], 1),
        ];
        assert_eq!(aggregate(&Rule::Median, &updates).unwrap(), vec![3.0, 1.5]);
        // n = 1 is its own median.
        assert_eq!(
            aggregate(&Rule::Median, &[upd(&[7.0], 1)]).unwrap(),
            vec![7.0]
        );
        // Two huge values of the same sign do not overflow: (MAX + MAX)/2 = MAX.
        let updates = [upd(&[f32::MAX], 1), upd(&[f32::MAX], 1)];
        assert_eq!(aggregate(&Rule::Median, &updates).unwrap(), vec![f32::MAX]);
    }

    #[test]
    fn trimmed_mean_removes_both_tails() {
        // n = 5, beta = 0.2: k = floor(1.0) = 1 from each end.
        // coordinate 0: 1, 2, 3, 4, 100 -> mean(2, 3, 4) = 3
        // coordinate 1: -50, 0, 1, 2, 3 -> mean(0, 1, 2) = 1
        let updates = [
            upd(&[100.0, 0.0], 1),
            upd(&[1.0, -50.0], 1),
            upd(&[3.0, 3.0], 1),
            upd(&[2.0, 1.0], 1),
            upd(&[4.0, 2.0], 1),
        ];
        let rule = Rule::TrimmedMean { beta: 0.2 };
        assert_eq!(aggregate(&rule, &updates).unwrap(), vec![3.0, 1.0]);
        // n = 4, beta = 0.2: k = floor(0.8) = 0, the plain mean:
        // (100 + 1 + 3 + 2)/4 = 26.5 and (0 - 50 + 3 + 1)/4 = -11.5.
        assert_eq!(aggregate(&rule, &updates[..4]).unwrap(), vec![26.5, -11.5]);
        // beta = 0.4, n = 5: k = floor(2.0) = 2, only the median is kept.
        let rule = Rule::TrimmedMean { beta: 0.4 };
        assert_eq!(aggregate(&rule, &updates).unwrap(), vec![3.0, 1.0]);
    }

    /// Points x·(1, 2) for x in [50, 0, 1, 3, 6] (the outlier first, so
    /// indices are not in sorted order). Squared distances are 5·Δx².
    fn krum_fixture() -> Vec<Update> {
        [50.0f32, 0.0, 1.0, 3.0, 6.0]
            .iter()
            .map(|&x| upd(&[x, 2.0 * x], 1))
            .collect()
    }

    #[test]
    fn krum_picks_the_most_central_update() {
        // n = 5, f = 1: each score sums the n - f - 2 = 2 smallest squared
        // distances to the others (5·Δx²):
        //   idx0 x=50: to 0,1,3,6 -> 5·(2500, 2401, 2209, 1936); 5·(1936+2209) = 20725
        //   idx1 x=0:  to 50,1,3,6 -> 5·(2500, 1, 9, 36);       5·(1+9)   = 50
        //   idx2 x=1:  to 50,0,3,6 -> 5·(2401, 1, 4, 25);       5·(1+4)   = 25
        //   idx3 x=3:  to 50,0,1,6 -> 5·(2209, 9, 4, 9);        5·(4+9)   = 65
        //   idx4 x=6:  to 50,0,1,3 -> 5·(1936, 36, 25, 9);      5·(9+25)  = 170
        // Best is idx2, the point (1, 2).
        let updates = krum_fixture();
        let out = Aggregator {
            rule: Rule::Krum { f: 1 },
            clip_norm: None,
            noise_multiplier: None,
        }
        .run(updates.clone(), 2, &mut Pcg64::seed_from_u64(0))
        .unwrap();
        assert_eq!(out.delta, vec![1.0, 2.0]);
        assert_eq!(out.selected, Some(vec![2]));
        assert_eq!(
            aggregate(&Rule::Krum { f: 1 }, &updates).unwrap(),
            vec![1.0, 2.0]
        );
    }

    #[test]
    fn multi_krum_averages_the_best_scored() {
        // Scores as in krum_picks_the_most_central_update: order by score is
        // idx2 (25), idx1 (50), idx3 (65), idx4 (170), idx0 (20725).
        // m = 3 averages x = 1, 0, 3: 4/3, so the point (4/3, 8/3).
        let updates = krum_fixture();
        let out = Aggregator {
            rule: Rule::MultiKrum { f: 1, m: 3 },
            clip_norm: None,
            noise_multiplier: None,
        }
        .run(updates.clone(), 2, &mut Pcg64::seed_from_u64(0))
        .unwrap();
        assert_close(&out.delta, &[4.0 / 3.0, 8.0 / 3.0], 1e-6);
        assert_eq!(out.selected, Some(vec![2, 1, 3]));
        // m = n is the plain mean: (50 + 0 + 1 + 3 + 6)/5 = 12.
        let all = aggregate(&Rule::MultiKrum { f: 1, m: 5 }, &updates).unwrap();
        assert_close(&all, &[12.0, 24.0], 1e-5);
        // m = 1 is Krum.
        let one = aggregate(&Rule::MultiKrum { f: 1, m: 1 }, &updates).unwrap();
        assert_eq!(one, vec![1.0, 2.0]);
    }

    #[test]
    fn krum_breaks_ties_by_lower_index() {
        // Three identical points, f = 0: every score is 0, so index 0 wins.
        let updates = vec![upd(&[1.0], 1); 3];
        let out = Aggregator {
            rule: Rule::MultiKrum { f: 0, m: 2 },
            clip_norm: None,
            noise_multiplier: None,
        }
        .run(updates, 1, &mut Pcg64::seed_from_u64(0))
        .unwrap();
        assert_eq!(out.selected, Some(vec![0, 1]));
    }

    // ---- aggregate errors ----

    #[test]
    fn aggregate_errors_name_the_failed_check() {
        let err = aggregate(&Rule::FedAvg, &[]).unwrap_err();
        assert_eq!(err, AggregateError::Empty);
        assert!(err.to_string().contains("non-empty check failed"));

        let err = aggregate(&Rule::Median, &[upd(&[1.0, 2.0], 1), upd(&[1.0], 1)]).unwrap_err();
        assert_eq!(
            err,
            AggregateError::MismatchedLengths {
                index: 1,
                expected: 2,
                got: 1
            }
        );
        assert!(
            err.to_string().contains("update 1 has 1 coordinates"),
            "{err}"
        );

        let err = aggregate(
            &Rule::Median,
            &[upd(&[1.0, 2.0], 1), upd(&[1.0, f32::NAN], 1)],
        )
        .unwrap_err();
        assert!(matches!(
            err,
            AggregateError::NonFinite {
                update: 1,
                index: 1,
                ..
            }
        ));
        assert!(
            err.to_string().contains("update 1 coordinate 1 is NaN"),
            "{err}"
        );

        let five = krum_fixture();
        for beta in [0.5, -0.1, f64::NAN, 1.0] {
            let err = aggregate(&Rule::TrimmedMean { beta }, &five).unwrap_err();
            assert!(matches!(err, AggregateError::BadBeta { .. }), "{beta}");
            assert!(err.to_string().contains("beta check failed"));
        }

        // f = 1 needs n >= 5.
        let err = aggregate(&Rule::Krum { f: 1 }, &five[..4]).unwrap_err();
        assert_eq!(
            err,
            AggregateError::TooFewUpdates {
                rule: "krum",
                n: 4,
                f: 1,
                required: 5
            }
        );
        assert!(err.to_string().contains("need n >= 2f + 3 = 5"), "{err}");
        let err = aggregate(&Rule::MultiKrum { f: 2, m: 1 }, &five).unwrap_err();
        assert!(matches!(
            err,
            AggregateError::TooFewUpdates {
                rule: "multi-krum",
                required: 7,
                ..
            }
        ));
        let err = aggregate(&Rule::Krum { f: usize::MAX }, &five).unwrap_err();
        assert!(matches!(err, AggregateError::TooFewUpdates { .. }));

        for m in [0, 6] {
            let err = aggregate(&Rule::MultiKrum { f: 1, m }, &five).unwrap_err();
            assert_eq!(err, AggregateError::BadM { m, n: 5 });
            assert!(err.to_string().contains("m check failed"));
        }

        let err = aggregate(&Rule::FedAvg, &[upd(&[1.0], 0)]).unwrap_err();
        assert_eq!(err, AggregateError::ZeroTotalWeight);
    }

    // ---- Aggregator::run ----

    #[test]
    fn run_refuses_a_bad_update_by_index() {
        let agg = Aggregator {
            rule: Rule::Median,
            clip_norm: Some(1.0),
            noise_multiplier: None,
        };
        let updates = vec![
            upd(&[1.0, 2.0], 1),
            upd(&[1.0, 2.0], 1),
            upd(&[f32::INFINITY, 0.0], 1),
        ];
        let err = agg
            .run(updates, 2, &mut Pcg64::seed_from_u64(0))
            .unwrap_err();
        assert!(matches!(
            err,
            AggregateError::InvalidUpdate {
                index: 2,
                source: UpdateError::NonFinite { index: 0, .. }
            }
        ));
        assert!(
            err.to_string()
                .contains("update 2: finiteness check failed: coordinate 0 is inf"),
            "{err}"
        );

        let err = agg
            .run(
                vec![upd(&[1.0, 2.0], 1), upd(&[1.0, 2.0], 0)],
                2,
                &mut Pcg64::seed_from_u64(0),
            )
            .unwrap_err();
        assert!(matches!(
            err,
            AggregateError::InvalidUpdate {
                index: 1,
                source: UpdateError::ZeroSamples
            }
        ));
        let err = agg
            .run(vec![upd(&[1.0], 1)], 2, &mut Pcg64::seed_from_u64(0))
            .unwrap_err();
        assert!(matches!(
            err,
            AggregateError::InvalidUpdate {
                index: 0,
                source: UpdateError::WrongLength {
                    expected: 2,
                    got: 1
                }
            }
        ));
        let err = agg
            .run(Vec::new(), 2, &mut Pcg64::seed_from_u64(0))
            .unwrap_err();
        assert_eq!(err, AggregateError::Empty);
    }

    #[test]
    fn run_checks_its_configuration() {
        let rng = &mut Pcg64::seed_from_u64(0);
        let updates = vec![upd(&[1.0], 1)];
        let noise_only = Aggregator {
            rule: Rule::FedAvg,
            clip_norm: None,
            noise_multiplier: Some(1.0),
        };
        let err = noise_only.run(updates.clone(), 1, rng).unwrap_err();
        assert_eq!(err, AggregateError::NoiseWithoutClip);
        assert!(err.to_string().contains("noise configuration check failed"));
        for clip_norm in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let agg = Aggregator {
                rule: Rule::FedAvg,
                clip_norm: Some(clip_norm),
                noise_multiplier: None,
            };
            let err = agg.run(updates.clone(), 1, rng).unwrap_err();
            assert!(
                matches!(err, AggregateError::BadClipNorm { .. }),
                "{clip_norm}"
            );
        }
        for z in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let agg = Aggregator {
                rule: Rule::FedAvg,
                clip_norm: Some(1.0),
                noise_multiplier: Some(z),
            };
            let err = agg.run(updates.clone(), 1, rng).unwrap_err();
            assert!(
                matches!(err, AggregateError::BadNoiseMultiplier { .. }),
                "{z}"
            );
        }
    }

    #[test]
    fn run_clips_before_aggregating() {
        // Norms 5, 1 and 10 against C = 2: the first and last are clipped,
        // to (1.2, 1.6) and (0, 2); the second stays (1, 0).
        // FedAvg with equal weights: ((1.2 + 1 + 0)/3, (1.6 + 0 + 2)/3)
        //                          = (2.2/3, 3.6/3) = (0.7333.., 1.2).
        let updates = vec![
            upd(&[3.0, 4.0], 1),
            upd(&[1.0, 0.0], 1),
            upd(&[0.0, 10.0], 1),
        ];
        let agg = Aggregator {
            rule: Rule::FedAvg,
            clip_norm: Some(2.0),
            noise_multiplier: None,
        };
        let out = agg.run(updates, 2, &mut Pcg64::seed_from_u64(0)).unwrap();
        assert_eq!(out.clipped, 2);
        assert_eq!(out.selected, None);
        assert_close(&out.delta, &[2.2 / 3.0, 1.2], 1e-6);
    }

    #[test]
    fn noise_has_the_configured_scale() {
        // n = 4 zero updates, C = 2, z = 1.5: sigma = z·C/n = 1.5·2/4 = 0.75.
        // Over 20000 coordinates the sample mean has std 0.75/sqrt(20000)
        // ≈ 0.0053 and the sample std a relative std of about
        // 1/sqrt(2·20000) ≈ 0.5%; tolerances are about 4 of those.
        let dim = 20_000;
        let updates = vec![upd(&vec![0.0; dim], 10); 4];
        let agg = Aggregator {
            rule: Rule::FedAvg,
            clip_norm: Some(2.0),
            noise_multiplier: Some(1.5),
        };
        let out = agg.run(updates, dim, &mut Pcg64::seed_from_u64(7)).unwrap();
        let n = dim as f64;
        let mean = out.delta.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = out
            .delta
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        assert!(mean.abs() < 0.021, "mean {mean}");
        assert!(
            (var.sqrt() - 0.75).abs() < 0.75 * 0.02,
            "std {}",
            var.sqrt()
        );

        // Same seed, same noise: the round is reproducible.
        let again = agg
            .run(
                vec![upd(&vec![0.0; dim], 10); 4],
                dim,
                &mut Pcg64::seed_from_u64(7),
            )
            .unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn noise_scale_shrinks_with_more_updates() {
        // n = 16, C = 1, z = 2: sigma = 2/16 = 0.125.
        let dim = 20_000;
        let agg = Aggregator {
            rule: Rule::Median,
            clip_norm: Some(1.0),
            noise_multiplier: Some(2.0),
        };
        let out = agg
            .run(
                vec![upd(&vec![0.0; dim], 1); 16],
                dim,
                &mut Pcg64::seed_from_u64(3),
            )
            .unwrap();
        let n = dim as f64;
        let std = (out.delta.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n).sqrt();
        assert!((std - 0.125).abs() < 0.125 * 0.02, "std {std}");
    }

    // ---- robustness ----

    fn honest_updates(seed: u64) -> Vec<Update> {
        let mut rng = Pcg64::seed_from_u64(seed);
        let normal = rand_distr::Normal::new(1.0f32, 0.1).unwrap();
        (0..10)
            .map(|_| Update {
                delta: (0..20).map(|_| normal.sample(&mut rng)).collect(),
                num_samples: 100,
            })
            .collect()
    }

    fn mean(updates: &[Update]) -> Vec<f32> {
        let dim = updates[0].delta.len();
        (0..dim)
            .map(|j| updates.iter().map(|u| u.delta[j]).sum::<f32>() / updates.len() as f32)
            .collect()
    }

    fn linf(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn robust_rules_resist_scaling_attacks() {
        let honest = honest_updates(42);
        let mu = mean(&honest);
        for f in 1..=3usize {
            for scale in [-10.0f32, 100.0] {
                let attack: Vec<f32> = mu.iter().map(|x| x * scale).collect();

                // FedAvg with attackers claiming as many samples as honest
                // clients lands exactly on ((10 + scale·f)/(10 + f))·mu. For
                // the sign flip that is only 11f/(10+f) ≈ 1.0..2.5 per
                // coordinate away from mu, so the far-away assertion below
                // uses attackers that also inflate their (unverifiable)
                // sample counts tenfold, which is free for them.
                let mut honest_counts = honest.clone();
                honest_counts.extend((0..f).map(|_| upd(&attack, 100)));
                let avg = aggregate(&Rule::FedAvg, &honest_counts).unwrap();
                let k = (10.0 + scale * f as f32) / (10.0 + f as f32);
                let predicted: Vec<f32> = mu.iter().map(|x| x * k).collect();
                assert!(linf(&avg, &predicted) < 1e-3, "f={f} scale={scale}");

                let mut updates = honest.clone();
                updates.extend((0..f).map(|_| upd(&attack, 1000)));
                let n = updates.len();
                let avg = aggregate(&Rule::FedAvg, &updates).unwrap();
                let d = linf(&avg, &mu);
                assert!(d > 5.0, "f={f} scale={scale}: FedAvg only {d} away");

                for rule in [
                    Rule::Median,
                    Rule::TrimmedMean { beta: 0.3 },
                    Rule::Krum { f },
                    Rule::MultiKrum { f, m: n - f },
                ] {
                    let out = Aggregator {
                        rule,
                        clip_norm: None,
                        noise_multiplier: None,
                    }
                    .run(updates.clone(), 20, &mut Pcg64::seed_from_u64(0))
                    .unwrap();
                    let d = linf(&out.delta, &mu);
                    assert!(
                        d < 0.5,
                        "f={f} scale={scale} {rule}: {d} from the honest mean"
                    );
                    if let Some(mut selected) = out.selected {
                        // The attackers sit at indices 10.. and must never be chosen.
                        selected.sort_unstable();
                        assert!(selected.iter().all(|&i| i < 10), "{rule}: {selected:?}");
                        if matches!(rule, Rule::MultiKrum { .. }) {
                            assert_eq!(selected, (0..10).collect::<Vec<_>>());
                        }
                    }
                }
            }
        }
    }

    // ---- properties ----

    fn any_rule() -> impl Strategy<Value = Rule> {
        prop_oneof![
            Just(Rule::FedAvg),
            Just(Rule::Median),
            prop_oneof![-1.0..1.0f64, Just(f64::NAN), Just(0.0)]
                .prop_map(|beta| Rule::TrimmedMean { beta }),
            (0..4usize).prop_map(|f| Rule::Krum { f }),
            (0..4usize, 0..10usize).prop_map(|(f, m)| Rule::MultiKrum { f, m }),
        ]
    }

    fn finite_f32() -> impl Strategy<Value = f32> {
        use proptest::num::f32::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
        POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
    }

    fn finite_updates() -> impl Strategy<Value = (usize, Vec<Update>)> {
        (1..6usize, 1..9usize).prop_flat_map(|(dim, n)| {
            let update = (prop::collection::vec(finite_f32(), dim), 1..1000u64)
                .prop_map(|(delta, num_samples)| Update { delta, num_samples });
            (Just(dim), prop::collection::vec(update, n))
        })
    }

    proptest! {
        #[test]
        fn arbitrary_inputs_never_panic(
            rule in any_rule(),
            updates in prop::collection::vec(
                (prop::collection::vec(any::<f32>(), 0..4), any::<u64>())
                    .prop_map(|(delta, num_samples)| Update { delta, num_samples }),
                0..9,
            ),
            expected_len in 0..4usize,
            clip_norm in prop::option::of(any::<f32>()),
            noise_multiplier in prop::option::of(any::<f64>()),
            seed in any::<u64>(),
        ) {
            let _ = aggregate(&rule, &updates);
            let agg = Aggregator { rule, clip_norm, noise_multiplier };
            let _ = agg.run(updates, expected_len, &mut Pcg64::seed_from_u64(seed));
        }

        #[test]
        fn finite_inputs_aggregate_and_median_is_within_range(
            (dim, updates) in finite_updates(),
            rule in any_rule(),
        ) {
            let median = aggregate(&Rule::Median, &updates).unwrap();
            prop_assert_eq!(median.len(), dim);
            for (j, &m) in median.iter().enumerate() {
                let lo = updates.iter().map(|u| u.delta[j]).fold(f32::INFINITY, f32::min);
                let hi = updates.iter().map(|u| u.delta[j]).fold(f32::NEG_INFINITY, f32::max);
                prop_assert!(lo <= m && m <= hi, "coordinate {}: {} not in [{}, {}]", j, m, lo, hi);
            }
            if let Ok(out) = aggregate(&rule, &updates) {
                prop_assert_eq!(out.len(), dim);
            }
        }

        #[test]
        fn clip_bounds_the_norm(
            delta in prop::collection::vec(-1e6f32..1e6, 0..50),
            max_norm in 1e-3f32..1e3,
        ) {
            let before = l2_norm(&delta);
            let mut clipped = delta.clone();
            let reported = clip(&mut clipped, max_norm);
            prop_assert_eq!(reported, before as f32);
            prop_assert!(l2_norm(&clipped) <= f64::from(max_norm));
            if before <= f64::from(max_norm) {
                prop_assert_eq!(clipped, delta);
            }
        }

        #[test]
        fn rule_text_round_trips_for_any_parameters(
            beta in 0.0..0.5f64,
            f in any::<usize>(),
            m in 1..usize::MAX,
        ) {
            for rule in [Rule::TrimmedMean { beta }, Rule::Krum { f }, Rule::MultiKrum { f, m }] {
                prop_assert_eq!(rule.to_string().parse::<Rule>().unwrap(), rule);
            }
        }
    }
}
