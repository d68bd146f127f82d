//! Federated learning, pure and in-process: the device side trains a small
//! model on its own data and produces a parameter delta; the aggregator
//! combines deltas robustly (poisoning) and privately (central DP). Shared
//! by the device agent, the realm runtime and the FL experiment.
//!
//! * [`train`]: softmax regression and a one-hidden-layer MLP, SGD / Adam.
//! * [`onnx_model`]: the trainable global model as ONNX with standard ops
//!   and its parameters as initializers; read and rewrite them.
//! * [`aggregate`]: FedAvg, coordinate-wise median, trimmed mean, Krum,
//!   multi-Krum, per-update L2 clipping, Gaussian noise.
//! * [`privacy`]: the privacy accounting figure for the Gaussian noise.
//! * [`round`]: one round at the aggregator: which updates count, when to aggregate.
//!
//! Must never: accept an update of the wrong length or with NaN/inf into an
//! aggregate, or report a privacy figure for a configuration it does not cover.

pub mod aggregate;
pub mod onnx_model;
pub mod privacy;
pub mod round;
pub mod train;
