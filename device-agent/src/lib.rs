//! The device agent's parts, as a library so its benchmark can drive them
//! directly; the `device-agent` binary (`main.rs`) is the only user in the
//! product. See `main.rs` for what the agent is for and must never do.
//!
//! * [`store`]: records, models and secrets sealed to this realm's sealing key.
//! * [`dataset`]: CSV and tensor files in, samples out (pure, bounded).
//! * [`identity`]: the agent's admission certificate, reused while valid.
//! * [`connect`]: attested TLS to a runtime or provider, peer checked first.
//! * [`remote`], [`on_device`]: the two ways to run a model.
//! * [`federated`]: local training for a runtime's federated task, after
//!   [`task_terms`] met this device's floor.
//! * [`results`]: predictions, accuracy, JSON.
//! * [`retry`]: which failures are worth another try, and the backoff.

pub mod connect;
pub mod dataset;
pub mod federated;
pub mod identity;
pub mod on_device;
pub mod policy_floor;
pub mod remote;
pub mod results;
pub mod retry;
pub mod store;
pub mod task_terms;
