//! Local training on the device: softmax regression (64→10) and a
//! one-hidden-layer ReLU MLP (64→h→10) over the 8×8 digit features, with
//! hand-written forward/backward passes and mini-batch SGD or Adam. tract,
//! our inference engine, cannot train, so this is the training loop; the
//! model it trains is the one [`crate::onnx_model`] serialises.
//!
//! Parameters travel as [`Params`]: named tensors in a fixed order (softmax:
//! `W [64,10]`, `B [10]`; MLP: `W1 [64,h]`, `B1 [h]`, `W2 [h,10]`, `B2 [10]`),
//! row-major, laid out exactly as ONNX `MatMul(input, W) + B` expects. Their
//! flat view is what a federated update (a delta) is made of.
//!
//! Must never: leave `params` partly updated or non-finite after a failed
//! [`train`] call; train or predict on features, labels or parameters it has
//! not validated; draw randomness from anything but the explicit seed (a
//! round must be replayable bit for bit).

use rand::SeedableRng;
use rand::distr::{Distribution, Uniform};
use rand::seq::SliceRandom;
use rand_pcg::Pcg64;

/// Features per sample: an 8×8 image, already scaled to [0, 1].
pub const INPUT_FEATURES: usize = 64;
/// Output classes: the digits 0–9.
pub const CLASSES: usize = 10;
/// Largest hidden width we accept. The reference MLP uses 32; the bound keeps
/// a hostile or mistyped configuration from asking for gigabytes.
pub const MAX_HIDDEN: usize = 4096;

/// The model shapes we can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `softmax(x·W + B)`, 64→10.
    SoftmaxRegression,
    /// `softmax(relu(x·W1 + B1)·W2 + B2)`, 64→hidden→10.
    Mlp { hidden: usize },
}

impl Arch {
    /// Checks the hidden width is within `1..=MAX_HIDDEN`.
    pub fn validate(&self) -> Result<(), TrainError> {
        match *self {
            Arch::SoftmaxRegression => Ok(()),
            Arch::Mlp { hidden } if (1..=MAX_HIDDEN).contains(&hidden) => Ok(()),
            Arch::Mlp { hidden } => Err(TrainError::HiddenWidth { hidden }),
        }
    }

    /// Names and shapes of the parameter tensors, in [`Params`] order.
    pub fn layout(&self) -> Vec<(&'static str, Vec<usize>)> {
        match *self {
            Arch::SoftmaxRegression => {
                vec![("W", vec![INPUT_FEATURES, CLASSES]), ("B", vec![CLASSES])]
            }
            Arch::Mlp { hidden } => vec![
                ("W1", vec![INPUT_FEATURES, hidden]),
                ("B1", vec![hidden]),
                ("W2", vec![hidden, CLASSES]),
                ("B2", vec![CLASSES]),
            ],
        }
    }

    /// Total number of scalar parameters (the length of a delta).
    pub fn param_count(&self) -> usize {
        self.layers().iter().map(|&(i, o)| i * o + o).sum()
    }

    /// Dense layers as `(fan_in, fan_out)`; each is followed by ReLU except
    /// the last, which feeds the softmax. Matches the (W, B) pairs of
    /// [`Arch::layout`], so a flat parameter vector is `W0 B0 W1 B1 ...`.
    fn layers(&self) -> Vec<(usize, usize)> {
        match *self {
            Arch::SoftmaxRegression => vec![(INPUT_FEATURES, CLASSES)],
            Arch::Mlp { hidden } => vec![(INPUT_FEATURES, hidden), (hidden, CLASSES)],
        }
    }
}

/// One parameter tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// All parameters of a model, in the fixed order of [`Arch::layout`].
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub tensors: Vec<NamedTensor>,
}

/// Failures of the flat-vector operations on [`Params`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsError {
    #[error("delta has {actual} values but the parameters have {expected}")]
    DeltaLength { expected: usize, actual: usize },
    #[error("delta value {index} is not finite")]
    NonFiniteDelta { index: usize },
    #[error("result value {index} is not finite (overflow or non-finite input)")]
    NonFiniteResult { index: usize },
    #[error("parameter layouts differ: {detail}")]
    LayoutMismatch { detail: String },
}

impl Params {
    /// All values in tensor order, as a federated update sees them.
    pub fn flatten(&self) -> Vec<f32> {
        self.tensors
            .iter()
            .flat_map(|t| t.values.iter().copied())
            .collect()
    }

    /// Number of scalar values across all tensors.
    pub fn len(&self) -> usize {
        self.tensors.iter().map(|t| t.values.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `self += delta`, element-wise over [`Params::flatten`] order. All or
    /// nothing: on error `self` is unchanged.
    pub fn apply_delta(&mut self, delta: &[f32]) -> Result<(), ParamsError> {
        let current = self.flatten();
        if delta.len() != current.len() {
            return Err(ParamsError::DeltaLength {
                expected: current.len(),
                actual: delta.len(),
            });
        }
        if let Some(index) = delta.iter().position(|d| !d.is_finite()) {
            return Err(ParamsError::NonFiniteDelta { index });
        }
        let updated: Vec<f32> = current.iter().zip(delta).map(|(p, d)| p + d).collect();
        // Finite + finite can still overflow to inf, and a caller may have
        // put NaN into `values` directly; either would poison the model.
        if let Some(index) = updated.iter().position(|v| !v.is_finite()) {
            return Err(ParamsError::NonFiniteResult { index });
        }
        self.set_flat(&updated);
        Ok(())
    }

    /// `self − base` in [`Params::flatten`] order: the update a device sends
    /// after training `self` from the global model `base`. Refuses different
    /// layouts (names, shapes or lengths), since a positional difference of
    /// unrelated tensors would be a meaningless but well-formed update.
    pub fn delta_from(&self, base: &Params) -> Result<Vec<f32>, ParamsError> {
        self.check_same_layout(base)?;
        let delta: Vec<f32> = self
            .flatten()
            .iter()
            .zip(base.flatten())
            .map(|(a, b)| a - b)
            .collect();
        if let Some(index) = delta.iter().position(|v| !v.is_finite()) {
            return Err(ParamsError::NonFiniteResult { index });
        }
        Ok(delta)
    }

    /// Checks these parameters are exactly `arch`'s: tensor names, order and
    /// shapes as in [`Arch::layout`], value counts matching the shapes, and
    /// every value finite.
    pub fn check_matches(&self, arch: &Arch) -> Result<(), TrainError> {
        arch.validate()?;
        let layout = arch.layout();
        let mismatch = |detail: String| TrainError::ParamsMismatch {
            arch: *arch,
            detail,
        };
        if self.tensors.len() != layout.len() {
            return Err(mismatch(format!(
                "{} tensors, expected {}",
                self.tensors.len(),
                layout.len()
            )));
        }
        for (t, (name, shape)) in self.tensors.iter().zip(&layout) {
            if t.name != *name || t.shape != *shape {
                return Err(mismatch(format!(
                    "tensor {}{:?} where {}{:?} belongs",
                    t.name, t.shape, name, shape
                )));
            }
            let expected: usize = shape.iter().product();
            if t.values.len() != expected {
                return Err(mismatch(format!(
                    "tensor {} has {} values, shape needs {}",
                    t.name,
                    t.values.len(),
                    expected
                )));
            }
            if let Some(index) = t.values.iter().position(|v| !v.is_finite()) {
                return Err(TrainError::NonFiniteParam {
                    tensor: t.name.clone(),
                    index,
                });
            }
        }
        Ok(())
    }

    fn check_same_layout(&self, other: &Params) -> Result<(), ParamsError> {
        let describe = |p: &Params| {
            p.tensors
                .iter()
                .map(|t| format!("{}{:?}/{}", t.name, t.shape, t.values.len()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let same = self.tensors.len() == other.tensors.len()
            && self.tensors.iter().zip(&other.tensors).all(|(a, b)| {
                a.name == b.name && a.shape == b.shape && a.values.len() == b.values.len()
            });
        if same {
            Ok(())
        } else {
            Err(ParamsError::LayoutMismatch {
                detail: format!("[{}] vs [{}]", describe(self), describe(other)),
            })
        }
    }

    /// Overwrites the values from a flat vector. Callers have checked
    /// `flat.len() == self.len()`; zip keeps this panic-free regardless.
    fn set_flat(&mut self, flat: &[f32]) {
        let mut rest = flat;
        for t in &mut self.tensors {
            let n = t.values.len().min(rest.len());
            let (head, tail) = rest.split_at(n);
            t.values[..n].copy_from_slice(head);
            rest = tail;
        }
    }
}

/// Fresh parameters for `arch`. Softmax regression starts at zero (its loss
/// is convex, and zero is the conventional, seed-independent start). The MLP
/// needs symmetry breaking: `W1` is He-uniform (it feeds a ReLU), `W2` is
/// Xavier/Glorot-uniform (it feeds the softmax), biases are zero, all drawn
/// from `Pcg64` seeded with `seed`.
pub fn init(arch: &Arch, seed: u64) -> Result<Params, TrainError> {
    arch.validate()?;
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut tensors = Vec::new();
    for (name, shape) in arch.layout() {
        let n: usize = shape.iter().product();
        let values = match (arch, shape.as_slice()) {
            (Arch::Mlp { .. }, &[fan_in, fan_out]) => {
                let limit = if name == "W1" {
                    (6.0 / fan_in as f64).sqrt()
                } else {
                    (6.0 / (fan_in + fan_out) as f64).sqrt()
                } as f32;
                let dist =
                    Uniform::new(-limit, limit).map_err(|_| TrainError::InitRange { limit })?;
                (0..n).map(|_| dist.sample(&mut rng)).collect()
            }
            _ => vec![0.0; n],
        };
        tensors.push(NamedTensor {
            name: name.to_string(),
            shape,
            values,
        });
    }
    Ok(Params { tensors })
}

/// How to train one local round.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Full passes over the local data.
    pub epochs: usize,
    /// Samples per step; the last batch of an epoch may be smaller.
    pub batch_size: usize,
    pub learning_rate: f32,
    pub optimizer: Optimizer,
    /// Seeds the per-epoch shuffles. Same seed, data and params → same result.
    pub seed: u64,
}

/// Update rule. Adam's moment estimates start at zero on every [`train`]
/// call: a federated round begins from a new global model, and carrying
/// moments across rounds would leak one round's state into the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    Sgd,
    Adam { beta1: f32, beta2: f32, eps: f32 },
}

impl Optimizer {
    /// Adam with the usual defaults (0.9, 0.999, 1e-8).
    pub const ADAM_DEFAULT: Optimizer = Optimizer::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };
}

/// What a [`train`] call did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    pub epochs: usize,
    /// Optimizer steps taken (mini-batches).
    pub steps: usize,
    /// Mean cross-entropy per epoch, each sample's loss taken just before
    /// the step that used it (the usual running training loss).
    pub epoch_loss: Vec<f64>,
}

impl TrainReport {
    /// Training loss of the last epoch, if any epoch ran.
    pub fn final_loss(&self) -> Option<f64> {
        self.epoch_loss.last().copied()
    }
}

/// Every check [`train`], [`predict`] and [`accuracy`] make, by name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("MLP hidden width {hidden} is outside 1..={MAX_HIDDEN}")]
    HiddenWidth { hidden: usize },
    #[error("initialisation range ±{limit} is not a valid uniform range")]
    InitRange { limit: f32 },
    #[error("parameters do not match {arch:?}: {detail}")]
    ParamsMismatch { arch: Arch, detail: String },
    #[error("parameter {tensor}[{index}] is not finite")]
    NonFiniteParam { tensor: String, index: usize },
    #[error("no samples")]
    EmptyDataset,
    #[error("{rows} feature rows but {labels} labels")]
    LengthMismatch { rows: usize, labels: usize },
    #[error("row {row} has {actual} features, expected {INPUT_FEATURES}")]
    FeatureCount { row: usize, actual: usize },
    #[error("feature {column} of row {row} is not finite")]
    NonFiniteFeature { row: usize, column: usize },
    #[error("label {label} of row {row} is not below {CLASSES}")]
    LabelOutOfRange { row: usize, label: u32 },
    #[error("batch size must be at least 1")]
    ZeroBatchSize,
    #[error("learning rate {value} is not finite and positive")]
    LearningRate { value: f32 },
    #[error("Adam {name} = {value} is out of range ({range})")]
    AdamParameter {
        name: &'static str,
        value: f32,
        range: &'static str,
    },
    #[error("training diverged (non-finite loss or parameters) at epoch {epoch}, step {step}")]
    Diverged { epoch: usize, step: usize },
}

/// Trains `params` in place on `(x, y)` with mini-batch softmax cross-entropy.
///
/// Everything is validated first; the work happens on a copy that replaces
/// `params` only if the whole run stays finite, so on any error `params` is
/// exactly what the caller passed in.
pub fn train(
    arch: &Arch,
    params: &mut Params,
    x: &[Vec<f32>],
    y: &[u32],
    cfg: &TrainConfig,
) -> Result<TrainReport, TrainError> {
    params.check_matches(arch)?;
    check_samples(x, y)?;
    check_config(cfg)?;

    let layers = arch.layers();
    let mut w = params.flatten();
    let mut opt = OptimizerState::new(cfg.optimizer, w.len());
    let mut scratch = Scratch::new(&layers);
    let mut grad = vec![0.0f64; w.len()];
    let mut order: Vec<usize> = (0..x.len()).collect();
    let mut rng = Pcg64::seed_from_u64(cfg.seed);
    let lr = f64::from(cfg.learning_rate);
    let mut report = TrainReport {
        epochs: cfg.epochs,
        steps: 0,
        epoch_loss: Vec::with_capacity(cfg.epochs),
    };

    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0f64;
        for batch in order.chunks(cfg.batch_size) {
            grad.iter_mut().for_each(|g| *g = 0.0);
            for &i in batch {
                loss_sum += accumulate_sample(&layers, &w, &x[i], y[i], &mut scratch, &mut grad);
            }
            // Mean over the batch, so the learning rate does not depend on
            // the batch size (and the short last batch is not over-weighted).
            let scale = 1.0 / batch.len() as f64;
            grad.iter_mut().for_each(|g| *g *= scale);
            opt.step(&mut w, &grad, lr);
            report.steps += 1;
            if !loss_sum.is_finite() || w.iter().any(|v| !v.is_finite()) {
                return Err(TrainError::Diverged {
                    epoch,
                    step: report.steps,
                });
            }
        }
        report.epoch_loss.push(loss_sum / x.len() as f64);
    }

    params.set_flat(&w);
    Ok(report)
}

/// Predicted class (argmax of the logits, equivalently of the softmax
/// probabilities; ties go to the lower class) for each row of `x`.
pub fn predict(arch: &Arch, params: &Params, x: &[Vec<f32>]) -> Result<Vec<u32>, TrainError> {
    params.check_matches(arch)?;
    check_features(x)?;
    let layers = arch.layers();
    let w = params.flatten();
    let mut scratch = Scratch::new(&layers);
    Ok(x.iter()
        .map(|row| {
            forward(&layers, &scratch.offs, &w, row, &mut scratch.acts);
            argmax(scratch.logits())
        })
        .collect())
}

/// Fraction of rows whose prediction equals the label.
pub fn accuracy(
    arch: &Arch,
    params: &Params,
    x: &[Vec<f32>],
    y: &[u32],
) -> Result<f64, TrainError> {
    check_samples(x, y)?;
    let predicted = predict(arch, params, x)?;
    let correct = predicted.iter().zip(y).filter(|(p, l)| p == l).count();
    Ok(correct as f64 / y.len() as f64)
}

fn check_features(x: &[Vec<f32>]) -> Result<(), TrainError> {
    for (row, features) in x.iter().enumerate() {
        if features.len() != INPUT_FEATURES {
            return Err(TrainError::FeatureCount {
                row,
                actual: features.len(),
            });
        }
        if let Some(column) = features.iter().position(|v| !v.is_finite()) {
            return Err(TrainError::NonFiniteFeature { row, column });
        }
    }
    Ok(())
}

fn check_samples(x: &[Vec<f32>], y: &[u32]) -> Result<(), TrainError> {
    if x.len() != y.len() {
        return Err(TrainError::LengthMismatch {
            rows: x.len(),
            labels: y.len(),
        });
    }
    if x.is_empty() {
        return Err(TrainError::EmptyDataset);
    }
    check_features(x)?;
    if let Some((row, &label)) = y.iter().enumerate().find(|&(_, &l)| l as usize >= CLASSES) {
        return Err(TrainError::LabelOutOfRange { row, label });
    }
    Ok(())
}

fn check_config(cfg: &TrainConfig) -> Result<(), TrainError> {
    if cfg.batch_size == 0 {
        return Err(TrainError::ZeroBatchSize);
    }
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return Err(TrainError::LearningRate {
            value: cfg.learning_rate,
        });
    }
    if let Optimizer::Adam { beta1, beta2, eps } = cfg.optimizer {
        // β = 1 would make the bias correction divide by zero; β < 0 is not
        // a moving average.
        for (name, value) in [("beta1", beta1), ("beta2", beta2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(TrainError::AdamParameter {
                    name,
                    value,
                    range: "0 <= beta < 1",
                });
            }
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(TrainError::AdamParameter {
                name: "eps",
                value: eps,
                range: "finite and > 0",
            });
        }
    }
    Ok(())
}

/// Per-sample buffers, reused so the inner loop does not allocate.
/// `acts[0]` is the input, `acts[l + 1]` the output of layer `l` (after ReLU
/// for hidden layers, raw logits for the last). Arithmetic is f64 on f32
/// parameters: the cost is nil at this size and it keeps the gradient check
/// and the loss figures free of f32 rounding noise.
struct Scratch {
    /// Offsets of each layer's W and B in the flat parameter vector.
    offs: Vec<(usize, usize)>,
    acts: Vec<Vec<f64>>,
    delta: Vec<f64>,
    delta_prev: Vec<f64>,
}

impl Scratch {
    fn new(layers: &[(usize, usize)]) -> Self {
        let mut acts = vec![vec![0.0; INPUT_FEATURES]];
        acts.extend(layers.iter().map(|&(_, o)| vec![0.0; o]));
        let widest = layers.iter().map(|&(i, o)| i.max(o)).max().unwrap_or(0);
        Scratch {
            offs: offsets(layers),
            acts,
            delta: Vec::with_capacity(widest),
            delta_prev: Vec::with_capacity(widest),
        }
    }

    fn logits(&self) -> &[f64] {
        last_layer(&self.acts)
    }
}

/// The network output (logits) among the activations.
fn last_layer(acts: &[Vec<f64>]) -> &[f64] {
    acts.last().map(Vec::as_slice).unwrap_or(&[])
}

/// Offsets of each layer's W and B in the flat parameter vector.
fn offsets(layers: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut off = 0;
    layers
        .iter()
        .map(|&(i, o)| {
            let w = off;
            off += i * o + o;
            (w, w + i * o)
        })
        .collect()
}

/// Forward pass of one sample into `acts`.
fn forward(
    layers: &[(usize, usize)],
    offs: &[(usize, usize)],
    w: &[f32],
    x: &[f32],
    acts: &mut [Vec<f64>],
) {
    for (a, &v) in acts[0].iter_mut().zip(x) {
        *a = f64::from(v);
    }
    let last = layers.len().saturating_sub(1);
    for (l, (&(fan_in, fan_out), &(w_off, b_off))) in layers.iter().zip(offs).enumerate() {
        let (before, after) = acts.split_at_mut(l + 1);
        let input = &before[l];
        let out = &mut after[0];
        for (o, &b) in out.iter_mut().zip(&w[b_off..b_off + fan_out]) {
            *o = f64::from(b);
        }
        for (i, &a) in input.iter().enumerate().take(fan_in) {
            // Inputs are mostly zeros (blank pixels, inactive ReLUs).
            if a == 0.0 {
                continue;
            }
            let row = &w[w_off + i * fan_out..w_off + (i + 1) * fan_out];
            for (o, &wij) in out.iter_mut().zip(row) {
                *o += a * f64::from(wij);
            }
        }
        if l < last {
            out.iter_mut().for_each(|o| *o = o.max(0.0));
        }
    }
}

/// Softmax of `logits` into `probs`; returns log-sum-exp (for the loss).
fn softmax(logits: &[f64], probs: &mut Vec<f64>) -> f64 {
    // Shift by the max so exp cannot overflow.
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    probs.clear();
    probs.extend(logits.iter().map(|z| (z - max).exp()));
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    max + sum.ln()
}

/// Forward and backward for one sample: adds d(loss)/d(w) into `grad` and
/// returns the sample's cross-entropy loss.
fn accumulate_sample(
    layers: &[(usize, usize)],
    w: &[f32],
    x: &[f32],
    label: u32,
    s: &mut Scratch,
    grad: &mut [f64],
) -> f64 {
    forward(layers, &s.offs, w, x, &mut s.acts);
    let label = label as usize;
    let lse = softmax(last_layer(&s.acts), &mut s.delta);
    let loss = lse - s.logits().get(label).copied().unwrap_or(0.0);
    // d(CE)/d(logits) = softmax − one_hot(label).
    if let Some(d) = s.delta.get_mut(label) {
        *d -= 1.0;
    }
    for l in (0..layers.len()).rev() {
        let (fan_in, fan_out) = layers[l];
        let (w_off, b_off) = s.offs[l];
        let input = &s.acts[l];
        for (g, &d) in grad[b_off..b_off + fan_out].iter_mut().zip(&s.delta) {
            *g += d;
        }
        for (i, &a) in input.iter().enumerate().take(fan_in) {
            if a == 0.0 {
                continue;
            }
            let g_row = &mut grad[w_off + i * fan_out..w_off + (i + 1) * fan_out];
            for (g, &d) in g_row.iter_mut().zip(&s.delta) {
                *g += a * d;
            }
        }
        if l > 0 {
            // Back through W, then through the ReLU that produced `input`:
            // its derivative is 1 where the output was positive, else 0.
            s.delta_prev.clear();
            s.delta_prev.extend(input.iter().enumerate().map(|(i, &a)| {
                if a > 0.0 {
                    let row = &w[w_off + i * fan_out..w_off + (i + 1) * fan_out];
                    row.iter()
                        .zip(&s.delta)
                        .map(|(&wij, &d)| f64::from(wij) * d)
                        .sum()
                } else {
                    0.0
                }
            }));
            std::mem::swap(&mut s.delta, &mut s.delta_prev);
        }
    }
    loss
}

fn argmax(values: &[f64]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

enum OptimizerState {
    Sgd,
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        m: Vec<f64>,
        v: Vec<f64>,
        /// β1^t and β2^t, kept as running products for the bias correction.
        beta1_t: f64,
        beta2_t: f64,
    },
}

impl OptimizerState {
    fn new(opt: Optimizer, n: usize) -> Self {
        match opt {
            Optimizer::Sgd => OptimizerState::Sgd,
            Optimizer::Adam { beta1, beta2, eps } => OptimizerState::Adam {
                beta1: f64::from(beta1),
                beta2: f64::from(beta2),
                eps: f64::from(eps),
                m: vec![0.0; n],
                v: vec![0.0; n],
                beta1_t: 1.0,
                beta2_t: 1.0,
            },
        }
    }

    fn step(&mut self, w: &mut [f32], grad: &[f64], lr: f64) {
        match self {
            OptimizerState::Sgd => {
                for (p, &g) in w.iter_mut().zip(grad) {
                    *p = (f64::from(*p) - lr * g) as f32;
                }
            }
            OptimizerState::Adam {
                beta1,
                beta2,
                eps,
                m,
                v,
                beta1_t,
                beta2_t,
            } => {
                *beta1_t *= *beta1;
                *beta2_t *= *beta2;
                let c1 = 1.0 - *beta1_t;
                let c2 = 1.0 - *beta2_t;
                for (((p, &g), m), v) in w.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut())
                {
                    *m = *beta1 * *m + (1.0 - *beta1) * g;
                    *v = *beta2 * *v + (1.0 - *beta2) * g * g;
                    let m_hat = *m / c1;
                    let v_hat = *v / c2;
                    *p = (f64::from(*p) - lr * m_hat / (v_hat.sqrt() + *eps)) as f32;
                }
            }
        }
    }
}

/// Shared by this module's tests and [`crate::onnx_model`]'s.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;

    /// Loads `testdata/models/<name>`: 64 features then the label per line.
    pub(crate) fn load_digits(name: &str) -> (Vec<Vec<f32>>, Vec<u32>) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/models")
            .join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut x = Vec::new();
        let mut y = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 65, "{name}: bad line {line}");
            x.push(
                fields[..64]
                    .iter()
                    .map(|f| f.trim().parse::<f32>().expect("feature"))
                    .collect(),
            );
            y.push(fields[64].trim().parse::<u32>().expect("label"));
        }
        (x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::load_digits;
    use super::*;
    use rand::RngExt;

    fn softmax_cfg() -> TrainConfig {
        TrainConfig {
            epochs: 30,
            batch_size: 32,
            learning_rate: 0.5,
            optimizer: Optimizer::Sgd,
            seed: 7,
        }
    }

    fn mlp_cfg() -> TrainConfig {
        TrainConfig {
            epochs: 30,
            batch_size: 64,
            learning_rate: 0.02,
            optimizer: Optimizer::ADAM_DEFAULT,
            seed: 11,
        }
    }

    #[test]
    fn softmax_regression_learns_digits() {
        let (xtr, ytr) = load_digits("digits_train.csv");
        let (xte, yte) = load_digits("digits_test.csv");
        assert_eq!((xtr.len(), xte.len()), (1437, 360));
        let arch = Arch::SoftmaxRegression;
        // Several shuffle seeds, so the bound is not one lucky draw.
        for seed in [7, 1, 2] {
            let mut p = init(&arch, 0).unwrap();
            let cfg = TrainConfig {
                seed,
                ..softmax_cfg()
            };
            let report = train(&arch, &mut p, &xtr, &ytr, &cfg).unwrap();
            let acc = accuracy(&arch, &p, &xte, &yte).unwrap();
            let train_acc = accuracy(&arch, &p, &xtr, &ytr).unwrap();
            println!(
                "softmax SGD seed {seed}: test accuracy {acc:.4} ({}/360), train {train_acc:.4}, loss {:.4} -> {:.4}",
                (acc * 360.0).round(),
                report.epoch_loss[0],
                report.final_loss().unwrap()
            );
            assert_eq!(report.steps, 30 * 1437usize.div_ceil(32));
            assert!(report.final_loss().unwrap() < report.epoch_loss[0]);
            assert!(acc >= 0.88, "softmax accuracy {acc} with seed {seed}");
        }
    }

    #[test]
    fn mlp_with_adam_learns_digits() {
        let (xtr, ytr) = load_digits("digits_train.csv");
        let (xte, yte) = load_digits("digits_test.csv");
        let arch = Arch::Mlp { hidden: 32 };
        for (init_seed, seed) in [(3, 11), (1, 2), (9, 10)] {
            let mut p = init(&arch, init_seed).unwrap();
            let cfg = TrainConfig { seed, ..mlp_cfg() };
            let report = train(&arch, &mut p, &xtr, &ytr, &cfg).unwrap();
            let acc = accuracy(&arch, &p, &xte, &yte).unwrap();
            println!(
                "MLP 64-32-10 Adam seeds {init_seed}/{seed}: test accuracy {acc:.4} ({}/360), loss {:.4} -> {:.4}",
                (acc * 360.0).round(),
                report.epoch_loss[0],
                report.final_loss().unwrap()
            );
            assert!(
                acc >= 0.90,
                "MLP accuracy {acc} with seeds {init_seed}/{seed}"
            );
        }
    }

    /// Mean loss and analytic gradient over a batch, as one training step
    /// sees them.
    fn loss_and_grad(arch: &Arch, w: &[f32], x: &[Vec<f32>], y: &[u32]) -> (f64, Vec<f64>) {
        let layers = arch.layers();
        let mut s = Scratch::new(&layers);
        let mut g = vec![0.0; w.len()];
        let mut loss = 0.0;
        for (xi, &yi) in x.iter().zip(y) {
            loss += accumulate_sample(&layers, w, xi, yi, &mut s, &mut g);
        }
        let n = x.len() as f64;
        g.iter_mut().for_each(|v| *v /= n);
        (loss / n, g)
    }

    fn gradient_check(arch: Arch) {
        let mut rng = Pcg64::seed_from_u64(99);
        let x: Vec<Vec<f32>> = (0..6)
            .map(|_| {
                (0..INPUT_FEATURES)
                    .map(|_| rng.random_range(0.0f32..1.0))
                    .collect()
            })
            .collect();
        let y: Vec<u32> = (0..6).map(|_| rng.random_range(0..10u32)).collect();
        // Random, not zero, parameters so every path carries gradient.
        let mut params = init(&arch, 5).unwrap();
        for t in &mut params.tensors {
            t.values
                .iter_mut()
                .for_each(|v| *v = rng.random_range(-0.5f32..0.5));
        }
        let w = params.flatten();
        let (_, analytic) = loss_and_grad(&arch, &w, &x, &y);
        let h = 1e-3f32;
        let mut worst = 0.0f64;
        for k in 0..w.len() {
            let mut wp = w.clone();
            let mut wm = w.clone();
            wp[k] += h;
            wm[k] -= h;
            // The actual f32 step, not the nominal h.
            let step = f64::from(wp[k]) - f64::from(wm[k]);
            let numeric =
                (loss_and_grad(&arch, &wp, &x, &y).0 - loss_and_grad(&arch, &wm, &x, &y).0) / step;
            let err = (numeric - analytic[k]).abs();
            worst = worst.max(err);
            assert!(
                err <= 1e-4 + 1e-3 * analytic[k].abs(),
                "{arch:?} param {k}: numeric {numeric} vs analytic {}",
                analytic[k]
            );
        }
        println!(
            "{arch:?}: {} gradients, worst |numeric - analytic| = {worst:e}",
            w.len()
        );
    }

    #[test]
    fn gradient_matches_finite_differences_softmax() {
        gradient_check(Arch::SoftmaxRegression);
    }

    #[test]
    fn gradient_matches_finite_differences_mlp() {
        gradient_check(Arch::Mlp { hidden: 7 });
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let (x, y) = load_digits("digits_test.csv");
        let arch = Arch::Mlp { hidden: 16 };
        let cfg = TrainConfig {
            epochs: 2,
            ..mlp_cfg()
        };
        let run = |cfg: &TrainConfig| {
            let mut p = init(&arch, 1).unwrap();
            let r = train(&arch, &mut p, &x, &y, cfg).unwrap();
            (p, r)
        };
        let (p1, r1) = run(&cfg);
        let (p2, r2) = run(&cfg);
        let bits = |p: &Params| p.flatten().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p1), bits(&p2));
        assert_eq!(r1, r2);
        let (p3, _) = run(&TrainConfig { seed: 12, ..cfg });
        assert_ne!(bits(&p1), bits(&p3), "the seed must drive the shuffle");
        assert_eq!(init(&arch, 4).unwrap(), init(&arch, 4).unwrap());
        assert_ne!(init(&arch, 4).unwrap(), init(&arch, 5).unwrap());
    }

    #[test]
    fn layout_and_init_shapes() {
        let p = init(&Arch::SoftmaxRegression, 0).unwrap();
        let names: Vec<_> = p
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.clone()))
            .collect();
        assert_eq!(names, vec![("W", vec![64, 10]), ("B", vec![10])]);
        assert_eq!(p.len(), 650);
        let arch = Arch::Mlp { hidden: 32 };
        let p = init(&arch, 0).unwrap();
        let names: Vec<_> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["W1", "B1", "W2", "B2"]);
        assert_eq!(p.len(), arch.param_count());
        assert_eq!(p.len(), 64 * 32 + 32 + 32 * 10 + 10);
        let limit = (6.0f32 / 64.0).sqrt();
        assert!(p.tensors[0].values.iter().all(|v| v.abs() <= limit));
        assert!(p.tensors[1].values.iter().all(|&v| v == 0.0));
        assert_eq!(
            init(&Arch::Mlp { hidden: 0 }, 0),
            Err(TrainError::HiddenWidth { hidden: 0 })
        );
        assert!(
            init(
                &Arch::Mlp {
                    hidden: MAX_HIDDEN + 1
                },
                0
            )
            .is_err()
        );
    }

    #[test]
    fn delta_round_trip_and_checks() {
        let arch = Arch::Mlp { hidden: 4 };
        let base = init(&arch, 1).unwrap();
        let mut local = init(&arch, 2).unwrap();
        let delta = local.delta_from(&base).unwrap();
        assert_eq!(delta.len(), base.len());
        let mut rebuilt = base.clone();
        rebuilt.apply_delta(&delta).unwrap();
        for (a, b) in rebuilt.flatten().iter().zip(local.flatten()) {
            assert!((a - b).abs() <= 1e-6);
        }
        let before = local.clone();
        assert_eq!(
            local.apply_delta(&delta[1..]),
            Err(ParamsError::DeltaLength {
                expected: delta.len(),
                actual: delta.len() - 1
            })
        );
        let mut bad = delta.clone();
        bad[3] = f32::NAN;
        assert_eq!(
            local.apply_delta(&bad),
            Err(ParamsError::NonFiniteDelta { index: 3 })
        );
        bad[3] = f32::MAX;
        local.tensors[0].values[3] = f32::MAX;
        let saved = local.clone();
        assert_eq!(
            local.apply_delta(&bad),
            Err(ParamsError::NonFiniteResult { index: 3 })
        );
        assert_eq!(local, saved, "failed apply_delta must not modify");
        local = before;
        let other = init(&Arch::SoftmaxRegression, 0).unwrap();
        assert!(matches!(
            local.delta_from(&other),
            Err(ParamsError::LayoutMismatch { .. })
        ));
    }

    #[test]
    fn invalid_inputs_are_rejected_and_params_untouched() {
        let (x, y) = load_digits("digits_test.csv");
        let arch = Arch::SoftmaxRegression;
        let p0 = init(&arch, 0).unwrap();
        let mut p = p0.clone();
        let cfg = softmax_cfg();
        assert_eq!(
            train(&arch, &mut p, &x[..3], &y[..2], &cfg),
            Err(TrainError::LengthMismatch { rows: 3, labels: 2 })
        );
        assert_eq!(
            train(&arch, &mut p, &[], &[], &cfg),
            Err(TrainError::EmptyDataset)
        );
        let mut bad_y = y[..4].to_vec();
        bad_y[2] = 10;
        assert_eq!(
            train(&arch, &mut p, &x[..4], &bad_y, &cfg),
            Err(TrainError::LabelOutOfRange { row: 2, label: 10 })
        );
        let mut bad_x = x[..4].to_vec();
        bad_x[1][5] = f32::INFINITY;
        assert_eq!(
            train(&arch, &mut p, &bad_x, &y[..4], &cfg),
            Err(TrainError::NonFiniteFeature { row: 1, column: 5 })
        );
        bad_x[1].pop();
        assert_eq!(
            train(&arch, &mut p, &bad_x, &y[..4], &cfg),
            Err(TrainError::FeatureCount { row: 1, actual: 63 })
        );
        let zero_batch = TrainConfig {
            batch_size: 0,
            ..cfg.clone()
        };
        assert_eq!(
            train(&arch, &mut p, &x, &y, &zero_batch),
            Err(TrainError::ZeroBatchSize)
        );
        let bad_lr = TrainConfig {
            learning_rate: f32::NAN,
            ..cfg.clone()
        };
        assert!(matches!(
            train(&arch, &mut p, &x, &y, &bad_lr),
            Err(TrainError::LearningRate { .. })
        ));
        let bad_adam = TrainConfig {
            optimizer: Optimizer::Adam {
                beta1: 1.0,
                beta2: 0.999,
                eps: 1e-8,
            },
            ..cfg.clone()
        };
        assert!(matches!(
            train(&arch, &mut p, &x, &y, &bad_adam),
            Err(TrainError::AdamParameter { name: "beta1", .. })
        ));
        let mlp = Arch::Mlp { hidden: 8 };
        assert!(matches!(
            train(&mlp, &mut p, &x, &y, &cfg),
            Err(TrainError::ParamsMismatch { .. })
        ));
        assert!(matches!(
            predict(&mlp, &p, &x),
            Err(TrainError::ParamsMismatch { .. })
        ));
        assert_eq!(p, p0, "failed calls must leave params alone");
        // A learning rate this large overflows the f32 weights (a ReLU
        // network's gradients grow with its weights): reported, and the
        // caller's params are left as they were.
        let mlp0 = init(&mlp, 0).unwrap();
        let mut q = mlp0.clone();
        let explode = TrainConfig {
            learning_rate: 1e30,
            epochs: 3,
            ..cfg
        };
        assert!(matches!(
            train(&mlp, &mut q, &x, &y, &explode),
            Err(TrainError::Diverged { .. })
        ));
        assert_eq!(q, mlp0);
    }
}
