//! The INSECURE emulated CCA platform, for tests and laptops without CCA.
//!
//! It produces tokens in the real formats (tag 399 with a raw RAK, or tag 907
//! with a COSE_Key RAK and the 2023 profiles), signed by a platform key read
//! from a file. The realm's RIM is the SHA-512 of an executable (by default the
//! running one), so rebuilding a binary changes its measurement just as
//! rebuilding a realm image would. Each token gets a fresh RAK.
//!
//! Anyone with the key file can forge evidence for any measurement: verifiers
//! see the implementation id [`INSECURE_EMULATED_IMPLEMENTATION_ID`] and must
//! refuse it unless a policy names this platform key explicitly.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
};

use super::{EvidenceSource, INSECURE_EMULATED_IMPLEMENTATION_ID, PlatformError};
use crate::cca::build::{self, Signer};
use crate::cca::{
    Challenge, Curve, Envelope, HashAlgorithm, Measurement, PLATFORM_PROFILE_2023,
    PLATFORM_PROFILE_LEGACY, PlatformClaims, PlatformKey, REALM_PROFILE_2023, RakEncoding,
    RealmClaims, SignatureAlgorithm, SwComponent,
};

/// An emulated CCA platform and realm. INSECURE: see the module docs.
pub struct InsecureEmulatedPlatform {
    platform_key: EcdsaKeyPair,
    algorithm: SignatureAlgorithm,
    public_key: PlatformKey,
    rim: Measurement,
    measured_path: PathBuf,
    personalization_value: [u8; 64],
    envelope: Envelope,
    implementation_id: [u8; 32],
    instance_id: Option<[u8; 33]>,
    /// HKDF pseudo-random key from the platform private key: the root of
    /// emulated sealing keys (anyone with the key file can derive them).
    sealing_root: ring::hkdf::Prk,
}

impl std::fmt::Debug for InsecureEmulatedPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is never printed.
        f.debug_struct("InsecureEmulatedPlatform")
            .field("platform_key", &"<redacted>")
            .field("public_key", &self.public_key)
            .field("rim", &self.rim)
            .field("envelope", &self.envelope)
            .finish()
    }
}

/// SHA-512 of a file, streamed: the emulated realm initial measurement.
pub fn measure_file(path: &Path) -> Result<Measurement, PlatformError> {
    let mut file = File::open(path).map_err(PlatformError::io("opening", path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(PlatformError::io("reading", path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let digest = ctx.finish();
    // SHA-512 output is always 64 bytes, matching HashAlgorithm::Sha512.
    Measurement::new(HashAlgorithm::Sha512, digest.as_ref()).ok_or_else(|| PlatformError::Key {
        path: path.to_path_buf(),
        detail: "internal: SHA-512 digest length".into(),
    })
}

/// A fresh PKCS#8 platform key as PEM, for `attest platform-key generate`.
/// INSECURE: it is only good for the emulated platform.
pub fn generate_platform_key_pem(curve: Curve) -> Result<(String, PlatformKey), PlatformError> {
    let rng = SystemRandom::new();
    let alg = match curve {
        Curve::P256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
        Curve::P384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    let bad = |detail: &str| PlatformError::Key {
        path: PathBuf::from("(new)"),
        detail: detail.into(),
    };
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| bad("key generation failed"))?;
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|_| bad("bad key"))?;
    let public = PlatformKey::from_point(curve, pair.public_key().as_ref())
        .map_err(|e| bad(&e.to_string()))?;
    let pem = crate::cca::pem_lf(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    Ok((pem, public))
}

impl InsecureEmulatedPlatform {
    /// Load a PKCS#8 PEM (`PRIVATE KEY`) platform key, P-384 or P-256, and
    /// measure the running executable.
    pub fn from_key_file(path: &Path) -> Result<Self, PlatformError> {
        let key_err = |detail: String| PlatformError::Key {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(PlatformError::io("reading", path))?;
        let block = pem::parse(&text).map_err(|e| key_err(format!("not PEM: {e}")))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(key_err(format!(
                "PEM block is '{}', expected 'PRIVATE KEY'",
                block.tag()
            )));
        }
        Self::from_pkcs8(block.contents()).map_err(|detail| key_err(detail.to_string()))
    }

    /// Use a PKCS#8 DER key; measures the running executable.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, &'static str> {
        let rng = SystemRandom::new();
        let (platform_key, algorithm, curve) =
            match EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng) {
                Ok(k) => (k, SignatureAlgorithm::Es384, Curve::P384),
                Err(_) => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map(|k| (k, SignatureAlgorithm::Es256, Curve::P256))
                    .map_err(|_| "not a PKCS#8 EC P-384 or P-256 private key")?,
            };
        let public_key = PlatformKey::from_point(curve, platform_key.public_key().as_ref())
            .map_err(|_| "unexpected public key encoding")?;
        let exe = std::env::current_exe().map_err(|_| "cannot locate the running executable")?;
        let rim = measure_file(&exe).map_err(|_| "cannot read the running executable")?;
        tracing::warn!(
            platform_key = %hex::encode(public_key.point()),
            "INSECURE emulated CCA platform in use: its evidence can be forged by anyone with the key file"
        );
        Ok(Self {
            platform_key,
            algorithm,
            public_key,
            rim,
            measured_path: exe,
            personalization_value: [0; 64],
            envelope: Envelope::Tag399,
            implementation_id: INSECURE_EMULATED_IMPLEMENTATION_ID,
            instance_id: None,
            sealing_root: ring::hkdf::Salt::new(
                ring::hkdf::HKDF_SHA256,
                super::sealing::EMULATED_SALT,
            )
            .extract(der),
        })
    }

    /// Measure `path` instead of the running executable.
    pub fn measuring(mut self, path: &Path) -> Result<Self, PlatformError> {
        self.rim = measure_file(path)?;
        self.measured_path = path.to_path_buf();
        Ok(self)
    }

    /// Use this RIM directly (tests).
    pub fn with_rim(mut self, rim: Measurement) -> Self {
        self.rim = rim;
        self
    }

    /// Set the realm personalization value.
    pub fn with_personalization_value(mut self, rpv: [u8; 64]) -> Self {
        self.personalization_value = rpv;
        self
    }

    /// Produce tag-399 (RMM 1.0, default) or tag-907 tokens.
    pub fn with_envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = envelope;
        self
    }

    /// Write this implementation id (claim 2396) instead of the emulated
    /// platform's own. This is what an attacker holding the key file can do;
    /// tests use it to check that verifiers mark such tokens INSECURE from
    /// the key that verified them, not from what the token says.
    pub fn with_implementation_id(mut self, id: [u8; 32]) -> Self {
        self.implementation_id = id;
        self
    }

    /// Write this platform instance id (claim 256) instead of the default
    /// `0x01 ‖ SHA-256(CPAK)`: tests emulate several phones with one key.
    /// INSECURE: whoever holds the key file can claim any instance, so
    /// per-instance limits bound nothing against them.
    pub fn with_instance_id(mut self, id: [u8; 33]) -> Self {
        self.instance_id = Some(id);
        self
    }

    /// The public half of the platform key (what a verifier must be given).
    pub fn platform_public_key(&self) -> &PlatformKey {
        &self.public_key
    }

    /// The RIM this platform reports.
    pub fn rim(&self) -> Measurement {
        self.rim
    }

    fn token(&self, challenge: &Challenge) -> Result<Vec<u8>, PlatformError> {
        let rng = SystemRandom::new();
        let bad = |detail: &str| PlatformError::Key {
            path: PathBuf::from("(RAK)"),
            detail: detail.into(),
        };
        // A fresh RAK per token, as an RMM would derive per realm.
        let rak_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .map_err(|_| bad("RAK generation failed"))?;
        let rak =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, rak_pkcs8.as_ref(), &rng)
                .map_err(|_| bad("RAK load failed"))?;
        let (rak_encoding, realm_profile, platform_profile) = match self.envelope {
            Envelope::Tag399 => (RakEncoding::RawPoint, None, PLATFORM_PROFILE_LEGACY),
            Envelope::Tag907 => (
                RakEncoding::CoseKey,
                Some(REALM_PROFILE_2023.to_string()),
                PLATFORM_PROFILE_2023,
            ),
        };
        let public_key = build::realm_public_key(rak.public_key().as_ref(), rak_encoding)?;
        let rak_hash = HashAlgorithm::Sha256;
        let zero_rem = Measurement::new(HashAlgorithm::Sha512, &[0; 64])
            .ok_or_else(|| bad("internal: REM length"))?;
        let platform_challenge = rak_hash.digest(public_key.claim_bytes());
        let realm = RealmClaims {
            profile: realm_profile,
            challenge: *challenge,
            personalization_value: self.personalization_value,
            hash_algo: HashAlgorithm::Sha512,
            public_key,
            rim: self.rim,
            rems: [zero_rem; 4],
            public_key_hash_algo: rak_hash,
            other: Vec::new(),
        };
        let cpak_hash = HashAlgorithm::Sha256.digest(self.public_key.point());
        let instance_id = self.instance_id.unwrap_or_else(|| {
            let mut id = [0u8; 33];
            id[0] = 0x01;
            id[1..].copy_from_slice(&cpak_hash);
            id
        });
        let platform = PlatformClaims {
            profile: platform_profile.to_string(),
            challenge: platform_challenge,
            implementation_id: self.implementation_id,
            instance_id,
            config: b"INSECURE-EMULATED".to_vec(),
            lifecycle: 0x3000,
            sw_components: vec![SwComponent {
                measurement_type: Some("INSECURE-EMULATED-PLATFORM".into()),
                measurement_value: HashAlgorithm::Sha256
                    .digest(b"INSECURE emulated CCA platform: no firmware was measured"),
                version: Some(env!("CARGO_PKG_VERSION").into()),
                signer_id: cpak_hash,
                measurement_description: Some("sha-256".into()),
                other: Vec::new(),
            }],
            verification_service: Some("none: INSECURE emulated platform".into()),
            hash_algo: Some("sha-256".into()),
            other: Vec::new(),
        };
        let platform_sign1 = build::sign1(
            build::encode_platform_claims(&platform)?,
            &Signer {
                algorithm: self.algorithm,
                key: &self.platform_key,
            },
        )?;
        let realm_sign1 = build::sign1(
            build::encode_realm_claims(&realm)?,
            &Signer {
                algorithm: SignatureAlgorithm::Es384,
                key: &rak,
            },
        )?;
        Ok(build::collection(
            self.envelope,
            platform_sign1,
            realm_sign1,
        )?)
    }
}

impl EvidenceSource for InsecureEmulatedPlatform {
    fn describe(&self) -> String {
        format!(
            "INSECURE emulated CCA platform (RIM = SHA-512 of {})",
            self.measured_path.display()
        )
    }

    fn is_insecure(&self) -> bool {
        true
    }

    fn attestation_token(&self, challenge: &Challenge) -> Result<Vec<u8>, PlatformError> {
        let token = self.token(challenge)?;
        tracing::warn!(rim = %self.rim.to_hex(), "INSECURE emulated CCA token issued");
        Ok(token)
    }

    /// HKDF-SHA256 from the platform key (extract, salted) and the RIM and
    /// personalization value (expand): a different build gets a different
    /// key, as on Islet. INSECURE: whoever holds the key file can derive it.
    fn sealing_key(&self) -> Result<super::SealingKey, PlatformError> {
        let info = [
            b"sealing-key".as_slice(),
            self.rim.as_bytes(),
            &self.personalization_value,
        ];
        let mut key = [0u8; 32];
        self.sealing_root
            .expand(&info, ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut key))
            .map_err(|_| PlatformError::Key {
                path: PathBuf::from("(emulated platform)"),
                detail: "HKDF expansion failed".into(),
            })?;
        tracing::warn!(rim = %self.rim.to_hex(), "INSECURE emulated sealing key derived");
        Ok(super::SealingKey::new(key))
    }
}
