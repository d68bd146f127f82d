//! Certifier Framework compatibility: messages, claims, policy, admission.
//!
//! Parties are admitted the way the Certifier Framework admits them: a policy
//! signed by a policy key lists trusted measurements; the service checks a
//! party's evidence against it, proves "authKey is-trusted-for-authentication"
//! with the framework's rules and signs an admission certificate. Beyond the
//! framework: CCA evidence with full verification, single-use nonces, roles
//! per measurement, revocation (see docs/certifier.md).
//!
//! Must never: admit without a verified token, a consumed nonce and a proof;
//! accept a policy with any claim not signed by the policy key.

pub mod admission;
pub mod claims;
pub mod clause;
pub mod client;
pub mod decide;
mod der;
pub mod insecure;
pub mod json;
pub mod keys;
pub mod nonce;
pub mod policy;
pub mod policy_object;
pub mod proof;
pub mod proto;
pub mod protocol;
pub mod vse;
pub mod wire;
