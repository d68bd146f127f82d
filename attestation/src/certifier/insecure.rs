//! Why an admission is INSECURE. An admission certificate carries the
//! INSECURE extension, and the audit record names the reason, whenever the
//! evidence behind it could have been forged by someone other than the
//! hardware: the policy entry whose key verified the platform token is the
//! emulated platform or public test material, or the token itself carries
//! public test material (see `cca::test_material`).
//!
//! The mark is derived from what *verified* the token and from byte matches,
//! never from what the token claims about itself alone: a token signed with
//! the emulated key but claiming another implementation id is still
//! INSECURE.
//!
//! Must never: clear a mark once one source set it (the first reason wins,
//! but any reason marks).

use std::fmt;

use crate::cca::test_material::TestMaterial;

/// The reason evidence is INSECURE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insecurity {
    /// The policy entry that verified the platform token is marked
    /// `insecure-emulated`: its key file is on a laptop, not in hardware.
    EmulatedPlatform,
    /// The policy entry that verified the platform token is marked
    /// `insecure-test-key` by the operator (a key not on our built-in list).
    DeclaredTestKey,
    /// The key that verified the platform token, or material the token
    /// carries (its RAK, a sample platform token, the emulated
    /// implementation id), is public test material.
    TestMaterial(&'static TestMaterial),
}

impl Insecurity {
    /// A stable short code for audit records and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Insecurity::EmulatedPlatform => "insecure-emulated-platform",
            Insecurity::DeclaredTestKey => "insecure-test-key",
            Insecurity::TestMaterial(_) => "insecure-test-material",
        }
    }

    /// The code plus the material's name where there is one, e.g.
    /// `insecure-test-material: tf-a-sample-rak` (audit records).
    pub fn tag(&self) -> String {
        match self {
            Insecurity::TestMaterial(m) => format!("{}: {}", self.code(), m.name),
            _ => self.code().to_string(),
        }
    }
}

impl fmt::Display for Insecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Insecurity::EmulatedPlatform => {
                f.write_str("INSECURE emulated platform (the policy entry is insecure-emulated)")
            }
            Insecurity::DeclaredTestKey => {
                f.write_str("INSECURE test key (the policy entry is insecure-test-key)")
            }
            Insecurity::TestMaterial(m) => write!(f, "INSECURE test material: {}", m.name),
        }
    }
}
