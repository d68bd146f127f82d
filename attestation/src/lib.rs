//! Attestation for the confidential-ML runtime: Arm CCA evidence, its
//! verification, the Certifier policy that admits parties, and the attested
//! TLS they talk over.
//!
//! * [`cca`] — parse and verify CCA attestation tokens (pure; no I/O).
//! * [`platform`] — obtain tokens: configfs-tsm in a real realm, or the
//!   INSECURE emulated platform for tests and laptops.
//! * [`certifier`] — Certifier Framework messages, signed policy, admission
//!   decisions and certificates, and the client that obtains one.
//! * [`atls`] — attested TLS between admitted parties.
//!
//! This crate must never treat evidence as trusted without a
//! [`cca::VerifiedCcaToken`], never choose an insecure platform by default, and
//! never panic on bytes from outside the process.

pub mod atls;
pub mod cca;
pub mod certifier;
pub mod platform;
