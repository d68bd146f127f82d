//! Sealing keys are bound to the measurement: same platform and image, same
//! key; another image or another platform, another key; sources without a
//! sealing interface refuse instead of deriving something.

use attestation::cca::{Curve, HashAlgorithm, Measurement};
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};
use attestation::platform::{ConfigfsTsm, EvidenceSource, PlatformError};

fn platform(pem: &str) -> InsecureEmulatedPlatform {
    let block = pem::parse(pem).unwrap();
    InsecureEmulatedPlatform::from_pkcs8(block.contents()).unwrap()
}

fn rim(byte: u8) -> Measurement {
    Measurement::new(HashAlgorithm::Sha512, &[byte; 64]).unwrap()
}

#[test]
fn emulated_sealing_keys_follow_the_measurement() {
    let (pem_a, _) = generate_platform_key_pem(Curve::P384).unwrap();
    let (pem_b, _) = generate_platform_key_pem(Curve::P384).unwrap();
    let key = |pem: &str, m: u8| {
        *platform(pem)
            .with_rim(rim(m))
            .sealing_key()
            .unwrap()
            .expose()
    };
    assert_eq!(key(&pem_a, 1), key(&pem_a, 1));
    assert_ne!(
        key(&pem_a, 1),
        key(&pem_a, 2),
        "a rebuilt image gets another key"
    );
    assert_ne!(
        key(&pem_a, 1),
        key(&pem_b, 1),
        "another platform gets another key"
    );
    let debug = format!("{:?}", platform(&pem_a).sealing_key().unwrap());
    assert_eq!(debug, "SealingKey(<redacted>)");
}

#[test]
fn plain_cca_has_no_sealing_key_and_says_so() {
    let e = ConfigfsTsm::with_root("/nonexistent")
        .sealing_key()
        .unwrap_err();
    assert!(matches!(e, PlatformError::NoSealingKey { .. }));
    assert!(e.to_string().contains("no key was derived"), "{e}");
}
