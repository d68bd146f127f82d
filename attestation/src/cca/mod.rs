//! The Arm CCA attestation token: parse it, verify it, render it.
//!
//! `parse` turns hostile bytes into typed claims (strict CBOR, bounded, never
//! panics); `verify` checks the platform signature against a trusted CPAK, the
//! realm signature against the RAK it carries, the binding between the two, the
//! realm challenge and the platform lifecycle, and only then hands out a
//! [`VerifiedCcaToken`]. This module knows nothing of roles or policy: deciding
//! whether a measurement is *trusted* belongs to `certifier`.
//!
//! Must never: accept a token with any failed check, allocate by an attacker's
//! length field, or read files or sockets.

pub mod build;
pub mod cbor;
mod cpak;
mod error;
pub mod json;
mod parse;
pub mod test_material;
mod types;
mod verify;

pub(crate) use cpak::pem_lf;
pub use cpak::{Curve, KeyError, PlatformKey};
pub use error::{ParseError, Part, VerifyError};
pub use parse::{
    CcaToken, MAX_TOKEN_SIZE, SignatureAlgorithm, Signed, parse, platform_claim_name,
    realm_claim_name,
};
pub use types::*;
pub use verify::{
    LifecyclePolicy, VerifiedCcaToken, VerifyOptions, known_test_signer, verify, verify_bytes,
};
