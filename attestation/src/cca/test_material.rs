//! Public test material: keys whose private halves are published, sample
//! platform tokens that firmware embeds verbatim, and our own emulated
//! platform's implementation id. A token that carries any of these, or that
//! verifies only with such a key, proves the *format* of CCA evidence, not
//! that any hardware vouched for it: anyone can make one.
//!
//! Keys are matched on their bytes (the DER SubjectPublicKeyInfo, i.e. curve
//! and point), never on names or file paths; sample platform tokens on the
//! SHA-256 of the COSE_Sign1 bytes exactly as carried in the collection.
//! Copies of every listed key, with their sources, are in
//! `attestation/testdata/cca/public-test-material/` (PROVENANCE.md there);
//! a unit test ties each entry below to its copy.
//!
//! Must never: be used to *accept* anything. A match only ever adds an
//! INSECURE mark or a refusal; no match says nothing about a key.

use std::fmt;

use super::cpak::{Curve, spki_der};
use super::parse::CcaToken;

/// What kind of public material matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaterialKind {
    /// An EC key whose private half is published (a CPAK, IAK or RAK).
    PublishedKey,
    /// A platform token that sample firmware returns byte for byte.
    SamplePlatformToken,
    /// The implementation id our INSECURE emulated platform writes.
    EmulatedImplementationId,
}

/// One known piece of public test material.
#[derive(Debug, PartialEq, Eq)]
pub struct TestMaterial {
    /// Short stable name, used in logs, audit records and CLI output.
    pub name: &'static str,
    /// What it is.
    pub kind: MaterialKind,
    /// Where it comes from (project, file, commit or version).
    pub provenance: &'static str,
    /// For keys: the DER SubjectPublicKeyInfo, hex. For sample tokens: the
    /// SHA-256 of the COSE_Sign1 bytes, hex. For the implementation id: the
    /// 32 bytes, hex.
    value_hex: &'static str,
}

impl TestMaterial {
    /// For a published key: its DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Option<Vec<u8>> {
        match self.kind {
            MaterialKind::PublishedKey => hex::decode(self.value_hex).ok(),
            _ => None,
        }
    }
}

impl fmt::Display for TestMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.provenance)
    }
}

/// Every entry, in the order they are checked.
pub const KNOWN: &[TestMaterial] = &[
    TestMaterial {
        name: "tf-m-tools-cca-platform-cpak",
        kind: MaterialKind::PublishedKey,
        provenance: "TrustedFirmware-M tf-m-tools iat-verifier/tests/data/cca_platform.pem \
                     (P-384, private key published); signs most public CCA test tokens and \
                     TF-A's QEMU/FVP sample platform token",
        value_hex: "3076301006072a8648ce3d020106052b8104002203620004212867c52e2b9508b0a420a9\
                    0560f394d2dfaa21bdd7514ff1a901afe7e1f78bb11d4e66f8a8a38afa76af6a31c4de8c\
                    84ce2dafc9964258b53fad718774f45620d111b176e8318e1187db0235a318d37ba597fee8\
                    0e0e4c762a12bcb3ea6ed4",
    },
    TestMaterial {
        name: "tf-a-sample-rak",
        kind: MaterialKind::PublishedKey,
        provenance: "TF-A plat/qemu qemu_realm_attest_key.c sample realm attestation key, \
                     identical to tf-m-tools iat-verifier/tests/data/cca_realm.pem \
                     (P-384, private key published)",
        value_hex: "3076301006072a8648ce3d020106052b810400220362000476f988091be585ed41801aec\
                    fab858548c63057e16b0e676120bbd0d2f9c29e056c5d41a0130eb9c21517899dc23146b\
                    28e1b062bd3ea4b315fd219f1cbb528cb6e74ca49be16773734f61a1ca61031b2bbf3d91\
                    8f2f94ffc4228e50919544ae",
    },
    TestMaterial {
        name: "veraison-test-rak",
        kind: MaterialKind::PublishedKey,
        provenance: "Veraison ccatoken test_common.go testRAK, identical to tf-m-tools \
                     iat-verifier/tests/data/cca_realm2.pem (P-384, private key published)",
        value_hex: "3076301006072a8648ce3d020106052b810400220362000481195880a2207fb956032a3c\
                    b97f5da5af726ffcb715ee164784a7fb16c06096bdd9462a32650b2912a8551570d6ea1f\
                    3b2d1f7da8a275fa00330f0078618bc3e149549c8170d32ec55890a7f9ec789f1f18ae92\
                    eb15d222af971d971c965af1",
    },
    TestMaterial {
        name: "veraison-test-iak",
        kind: MaterialKind::PublishedKey,
        provenance: "Veraison ccatoken test_common.go testIAK (P-256, private key published; \
                     the COSE example key)",
        value_hex: "3059301306072a8648ce3d020106082a8648ce3d0301070342000430a0424cd21c294483\
                    8a2d75c92b37e76ea20d9f00893a3b4eee8a3c0aafec3ee04b65e92456d9888b52b379bd\
                    fbd51ee869ef1f0fc65b6659695b6cce081723",
    },
    TestMaterial {
        name: "tf-m-tools-psa-iak",
        kind: MaterialKind::PublishedKey,
        provenance: "TrustedFirmware-M tf-m-tools iat-verifier/tests/data/key.pem \
                     (P-256, private key published)",
        value_hex: "3059301306072a8648ce3d020106082a8648ce3d030107034200044e5e22099e3bceb45b\
                    446d1355fd1dc3b545947b6fd7c1c89d886798c3726e8f80d70b840b256aac34a62ede10\
                    43364f044095f003474b91e0182092afb13f2e",
    },
    TestMaterial {
        name: "tf-m-tools-psa-iak-alt",
        kind: MaterialKind::PublishedKey,
        provenance: "TrustedFirmware-M tf-m-tools iat-verifier/tests/data/key-alt.pem \
                     (P-256, private key published)",
        value_hex: "3059301306072a8648ce3d020106082a8648ce3d030107034200045d0f92caa6951aaed4\
                    678ae7095ee07e325b84f71344475fc712bf5038627ebed796dc813798c61e024ebf46ea\
                    3ae39195f39b0b5fb57fbe16d4b1829e34a03e",
    },
    TestMaterial {
        name: "islet-hes-dummy-cpak",
        kind: MaterialKind::PublishedKey,
        provenance: "Islet examples/veraison/provisioning/claims/cpak_public.pem: the CPAK \
                     Islet's HES emulator derives from the published dummy GUK \
                     (hes/res/dummy_guk.bin); a rebuilt BL2 derives another, equally public, key",
        value_hex: "3076301006072a8648ce3d020106052b8104002203620004bbc85e168b4e62500b293fe3\
                    470b866075dcfa427f06f842defdca37b93171671b8e2312955da1ad95d1411a4b80c925\
                    604126c8dc4e461e87845f1ad124d71a63dac6b903bba990bad349afa280ab98c1c69f6d\
                    d6861a802147decb45d713fd",
    },
    TestMaterial {
        name: "tf-a-qemu-sample-platform-token",
        kind: MaterialKind::SamplePlatformToken,
        provenance: "TF-A plat/qemu qemu_plat_attest_token.c static sample platform token \
                     (1518 bytes; 13 software components), returned verbatim by TF-A on QEMU \
                     to every RMM (seen in TF-RMM v0.6.0 and v0.9.0 tokens)",
        value_hex: "32092756c683cac952cba72d8fc4e174521ffbd9c7619222805074dd2c029a50",
    },
    TestMaterial {
        name: "tf-m-tools-sample-platform-token",
        kind: MaterialKind::SamplePlatformToken,
        provenance: "TrustedFirmware-M tf-m-tools iat-verifier/tests/data/cca_token.cbor \
                     (commit b74e82e8) platform token, 659 bytes",
        value_hex: "113832ad1d59bd5f835e8e41667deb1a0beff1519e4878413f0739206edf9bee",
    },
    TestMaterial {
        name: "insecure-emulated-implementation-id",
        kind: MaterialKind::EmulatedImplementationId,
        provenance: "this project's INSECURE emulated platform \
                     (attestation::platform::INSECURE_EMULATED_IMPLEMENTATION_ID)",
        // b"INSECURE-EMULATED-CCA-PLATFORM-1"
        value_hex: "494e5345435552452d454d554c415445442d4343412d504c4154464f524d2d31",
    },
];

fn matches(entry: &TestMaterial, bytes: &[u8]) -> bool {
    // The table is hex so that it reads like the sources it was taken from;
    // comparing hex strings avoids decoding it on every check.
    entry.value_hex.len() == bytes.len() * 2 && entry.value_hex == hex::encode(bytes)
}

fn find(kind: MaterialKind, bytes: &[u8]) -> Option<&'static TestMaterial> {
    KNOWN
        .iter()
        .find(|entry| entry.kind == kind && matches(entry, bytes))
}

/// The entry for a key given as DER SubjectPublicKeyInfo, if it is public
/// test material.
pub fn known_key_spki(spki_der: &[u8]) -> Option<&'static TestMaterial> {
    find(MaterialKind::PublishedKey, spki_der)
}

/// The entry for an uncompressed EC point on `curve`, if it is public test
/// material.
pub fn known_key_point(curve: Curve, point: &[u8]) -> Option<&'static TestMaterial> {
    known_key_spki(&spki_der(curve, point))
}

/// The first public test material a token carries: its RAK is a published
/// key, its platform token is a byte-identical sample, or its implementation
/// id is the emulated platform's. (Which key verified the platform token is
/// the verifier's business: see `VerifiedCcaToken::test_material`.)
pub fn carried_by(token: &CcaToken) -> Option<&'static TestMaterial> {
    let realm = &token.realm.claims;
    let platform = &token.platform.claims;
    known_key_point(Curve::P384, realm.public_key.point())
        .or_else(|| find(MaterialKind::SamplePlatformToken, &token.platform.sha256))
        .or_else(|| {
            find(
                MaterialKind::EmulatedImplementationId,
                &platform.implementation_id,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cca::PlatformKey;

    const DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/cca/public-test-material/"
    );

    fn spki_of(file: &str) -> Vec<u8> {
        let text = std::fs::read_to_string(format!("{DIR}{file}")).unwrap();
        PlatformKey::from_pem(&text).unwrap().to_spki_der()
    }

    /// Each key entry is exactly the public half of the file it cites.
    #[test]
    fn every_key_entry_matches_its_copy() {
        let copies = [
            (
                "tf-m-tools-cca-platform-cpak",
                "tf-m-tools_cca_platform.pub.pem",
            ),
            ("tf-a-sample-rak", "tf-m-tools_cca_realm.pub.pem"),
            ("veraison-test-rak", "tf-m-tools_cca_realm2.pub.pem"),
            ("veraison-test-iak", "veraison_test_iak.pub.pem"),
            ("tf-m-tools-psa-iak", "tf-m-tools_key.pub.pem"),
            ("tf-m-tools-psa-iak-alt", "tf-m-tools_key-alt.pub.pem"),
            ("islet-hes-dummy-cpak", "islet_cpak_public.pem"),
        ];
        let keys: Vec<_> = KNOWN
            .iter()
            .filter(|e| e.kind == MaterialKind::PublishedKey)
            .collect();
        assert_eq!(keys.len(), copies.len(), "every key entry has a copy");
        for (name, file) in copies {
            let found = known_key_spki(&spki_of(file)).unwrap_or_else(|| panic!("{file}"));
            assert_eq!(found.name, name);
        }
    }

    #[test]
    fn emulated_implementation_id_is_listed() {
        let entry = find(
            MaterialKind::EmulatedImplementationId,
            &crate::platform::INSECURE_EMULATED_IMPLEMENTATION_ID,
        )
        .unwrap();
        assert_eq!(entry.name, "insecure-emulated-implementation-id");
    }

    #[test]
    fn a_fresh_key_is_not_listed() {
        let (_, key) = crate::platform::danger::generate_platform_key_pem(Curve::P384).unwrap();
        assert!(known_key_spki(&key.to_spki_der()).is_none());
        // Same bytes as another kind of entry do not match a key.
        assert!(known_key_spki(&[0u8; 32]).is_none());
    }

    #[test]
    fn entries_are_well_formed() {
        for e in KNOWN {
            assert!(hex::decode(e.value_hex).is_ok(), "{}", e.name);
            assert!(!e.provenance.is_empty());
        }
        let mut names: Vec<_> = KNOWN.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KNOWN.len(), "names are unique");
    }
}
