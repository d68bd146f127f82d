//! Attested TLS: rustls configurations whose only trust root is the policy
//! certificate, and whose verifiers admit a peer only if its admission
//! certificate carries a role and measurement this connection accepts and
//! not on the revocation list. Optionally ([`fresh`]) each side proves with a
//! new CCA token, bound to this session's keys, that it still runs that code.
//!
//! Must never: accept a peer by DNS name or a web PKI root, resume a session,
//! accept 0-RTT data, or build a verifier that accepts any role.

mod admitted;
mod config;
pub mod fresh;
mod peer;
mod verifier;

pub use admitted::{AdmitError, Admitted, CurrentPolicy};
pub use config::{Identity, SERVER_NAME, client_config, provider, server_config, server_name};
pub use peer::VerifiedPeer;
pub use verifier::{
    PeerError, PeerRequirement, PeerVerifier, PolicyAnchor, RequirementError, RevocationList,
    peer_error,
};
