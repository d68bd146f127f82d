//! Attestation for the confidential-ML runtime: Arm CCA evidence, its
//! verification, and (in later modules) the Certifier policy and attested TLS
//! built on it.
//!
//! * [`cca`] — parse and verify CCA attestation tokens (pure; no I/O).
//! * [`platform`] — obtain tokens: configfs-tsm in a real realm, or the
//!   INSECURE emulated platform for tests and laptops.
//!
//! This crate must never treat evidence as trusted without a
//! [`cca::VerifiedCcaToken`], never choose an insecure platform by default, and
//! never panic on bytes from outside the process.

pub mod atls;
pub mod cca;
pub mod certifier;
pub mod platform;
