//! The service directory: the only place this service keeps state.
//!
//! | file | what |
//! |---|---|
//! | `policy_key.pem` | the policy private key (PKCS#8, P-256), mode 0600 |
//! | `policy_cert.der` | self-signed policy certificate (raw DER, as the framework stores it) |
//! | `policy.bin` | the policy: a framework `signed_claim_sequence` |
//! | `policy_object.bin` | the same statements as one signed, versioned object (`policy_object`), re-signed one version up after every change; what our peers fetch |
//! | `audit.log` | one JSON line per admission decision, append-only |
//!
//! Writes are atomic (temp file, fsync, rename, fsync of the directory), so a
//! crash leaves either the old or the new file, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use attestation::cca::test_material::{TestMaterial, known_key_spki};
use attestation::certifier::admission::policy_certificate;
use attestation::certifier::claims::sign_claim;
use attestation::certifier::clause::{key_entity, measurement_entity, says, unary, verb};
use attestation::certifier::keys::{PublicKey, SigningKey};
use attestation::certifier::policy::{Policy, Role, descriptor, platform_fingerprint};
use attestation::certifier::policy_object::{
    DEFAULT_MAX_AGE_SECS, SignedPolicyMessage, sign_policy_with_max_age,
};
use attestation::certifier::proto::{SignedClaimSequence, decode_bounded};
use prost::Message;

/// How long policy statements stay valid (they are re-signed on every change).
const POLICY_CLAIM_YEARS: i64 = 5;

/// An opened service directory.
#[derive(Debug)]
pub struct ServiceDir {
    dir: PathBuf,
}

impl ServiceDir {
    /// Open an existing service directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let d = Self {
            dir: dir.to_path_buf(),
        };
        for f in ["policy_key.pem", "policy_cert.der", "policy.bin"] {
            if !d.path(f).exists() {
                bail!(
                    "{} is not a certifier-service directory ({} missing); create one with `certifier-service init --dir {}`",
                    dir.display(),
                    f,
                    dir.display()
                );
            }
        }
        Ok(d)
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Create a new directory with a fresh policy key, certificate and policy.
    /// With `insecure_platform`, that CCA platform key (the emulated one) is
    /// trusted, marked INSECURE, with firmware appraisal skipped.
    pub fn init(dir: &Path, insecure_platform: Option<PublicKey>, now: i64) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let d = Self {
            dir: dir.to_path_buf(),
        };
        if d.path("policy_key.pem").exists() {
            bail!(
                "{} already holds a policy key; refusing to overwrite it",
                dir.display()
            );
        }
        let (_, pkcs8) = SigningKey::generate_p256().context("generating the policy key")?;
        d.write_policy_key(&pkcs8)?;
        let cert = policy_certificate(&pkcs8, now, 10).context("making the policy certificate")?;
        write_atomic(&d.path("policy_cert.der"), &cert)?;
        write_atomic(
            &d.path("policy.bin"),
            &SignedClaimSequence::default().encode_to_vec(),
        )?;
        d.sign_policy_object(now)?;
        if let Some(cpak) = insecure_platform {
            let flags = format!(
                "{};{};{}",
                descriptor::CCA_PLATFORM,
                descriptor::INSECURE_EMULATED,
                descriptor::SW_COMPONENTS_ANY
            );
            d.add_statement(
                unary(
                    key_entity(&cpak, "platformKey"),
                    verb::IS_TRUSTED_FOR_ATTESTATION,
                ),
                &flags,
                now,
            )?;
        }
        Ok(d)
    }

    fn write_policy_key(&self, pkcs8: &[u8]) -> Result<()> {
        let pem = pem::encode_config(
            &pem::Pem::new("PRIVATE KEY", pkcs8.to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        );
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path("policy_key.pem"))
            .context("creating policy_key.pem")?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()?;
        Ok(())
    }

    /// Create a service directory from the Certifier Framework's files, so
    /// this service signs with the policy key the framework's apps embed:
    /// `policy_key_file.bin` (a private RSA `key_message`),
    /// `policy_cert_file.bin` (raw DER) and `policy.bin` (a
    /// `signed_claim_sequence` of claims signed by that key). Statements this
    /// service does not understand are left out (they could only add trust)
    /// and listed in the report. With `allow_no_freshness`, the imported
    /// platform keys are additionally marked as allowed to send nonce-less
    /// evidence; without it, such evidence is refused.
    pub fn import_framework(
        dir: &Path,
        policy_key_file: &[u8],
        policy_cert_der: &[u8],
        policy_file: &[u8],
        allow_no_freshness: bool,
        now: i64,
    ) -> Result<ImportReport> {
        let key_message: attestation::certifier::proto::KeyMessage =
            decode_bounded(policy_key_file).context("the policy key file is not a key_message")?;
        let key_type = key_message.key_type.clone().unwrap_or_default();
        if !(key_type.starts_with("rsa-") && key_type.ends_with("-private")) {
            bail!(
                "the policy key file holds a {key_type:?} key; import needs the framework's private RSA policy key (rsa-2048-private)"
            );
        }
        let pkcs8 = SigningKey::rsa_pkcs8_from_key_message(&key_message)
            .context("the policy key file's RSA key does not load")?;
        let key = SigningKey::from_pkcs8(&pkcs8).context("loading the converted policy key")?;
        let certified = attestation::certifier::admission::certified_key(policy_cert_der)
            .context("the policy certificate is not an X.509 certificate")?;
        if certified != key.public_key() {
            bail!("the policy certificate is not for the key in the policy key file");
        }
        let seq: SignedClaimSequence = decode_bounded(policy_file)
            .context("the policy file is not a signed_claim_sequence")?;
        let mut kept = SignedClaimSequence::default();
        let mut report = ImportReport::default();
        for (index, claim) in seq.claims.iter().enumerate() {
            let one = SignedClaimSequence {
                claims: vec![claim.clone()],
            };
            match Policy::load(&one, &key.public_key(), now) {
                Ok(_) => kept.claims.push(claim.clone()),
                Err(e @ attestation::certifier::policy::PolicyError::Unrecognised { .. }) => {
                    report.skipped.push(format!("claim {index}: {e}"));
                }
                Err(e) => bail!(
                    "policy claim {index} does not verify ({e}); the framework would reject the whole policy, and so does this import"
                ),
            }
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let d = Self {
            dir: dir.to_path_buf(),
        };
        if d.path("policy_key.pem").exists() {
            bail!(
                "{} already holds a policy key; refusing to overwrite it",
                dir.display()
            );
        }
        d.write_policy_key(&pkcs8)?;
        write_atomic(&d.path("policy_cert.der"), policy_cert_der)?;
        write_atomic(&d.path("policy.bin"), &kept.encode_to_vec())?;
        d.sign_policy_object(now)?;
        let policy = d.policy(now)?;
        report.measurements = policy.framework_measurements().len();
        report.platforms = policy.vse_platforms().len();
        if allow_no_freshness {
            let flags = format!("{};{}", descriptor::VSE_PLATFORM, descriptor::NO_FRESHNESS);
            for p in policy.vse_platforms() {
                d.add_statement(
                    unary(
                        key_entity(&p.key, "platformKey"),
                        verb::IS_TRUSTED_FOR_ATTESTATION,
                    ),
                    &flags,
                    now,
                )?;
            }
        }
        Ok(report)
    }

    /// The policy private key (PKCS#8 DER).
    pub fn policy_key_pkcs8(&self) -> Result<Vec<u8>> {
        let text =
            fs::read_to_string(self.path("policy_key.pem")).context("reading policy_key.pem")?;
        let block = pem::parse(&text).context("policy_key.pem is not PEM")?;
        Ok(block.contents().to_vec())
    }

    /// The policy signing key.
    pub fn signing_key(&self) -> Result<SigningKey> {
        SigningKey::from_pkcs8(&self.policy_key_pkcs8()?).context("loading the policy key")
    }

    /// The raw policy (signed claims).
    pub fn policy_sequence(&self) -> Result<SignedClaimSequence> {
        let bytes = fs::read(self.path("policy.bin")).context("reading policy.bin")?;
        decode_bounded(&bytes).context("policy.bin is not a signed_claim_sequence")
    }

    /// Load and verify the policy.
    pub fn policy(&self, now: i64) -> Result<Policy> {
        let key = self.signing_key()?.public_key();
        Policy::load(&self.policy_sequence()?, &key, now).context("the policy does not verify")
    }

    /// Sign "policyKey says `statement`" and append it to the policy.
    pub fn add_statement(
        &self,
        statement: attestation::certifier::proto::VseClause,
        descriptor: &str,
        now: i64,
    ) -> Result<()> {
        let key = self.signing_key()?;
        let clause = says(key_entity(&key.public_key(), "policyKey"), statement);
        let claim = sign_claim(
            &key,
            "policyKey",
            &clause,
            descriptor,
            now - 60,
            now + POLICY_CLAIM_YEARS * 365 * 86_400,
        )
        .context("signing the policy statement")?;
        let mut seq = self.policy_sequence()?;
        seq.claims.push(claim);
        write_atomic(&self.path("policy.bin"), &seq.encode_to_vec())?;
        self.sign_policy_object(now)?;
        Ok(())
    }

    /// The last signed policy object, if there is a readable one.
    fn last_policy_object(&self) -> Option<SignedPolicyMessage> {
        let bytes = fs::read(self.path("policy_object.bin")).ok()?;
        decode_bounded(&bytes).ok()
    }

    /// Sign `policy.bin` as the policy object one version above the last one
    /// (issue time never going back), and write it. Returns the version.
    pub fn sign_policy_object(&self, now: i64) -> Result<u64> {
        let claims = fs::read(self.path("policy.bin")).context("reading policy.bin")?;
        let last = self.last_policy_object();
        let version = last.as_ref().map_or(0, |m| m.version) + 1;
        let issued_at = last.as_ref().map_or(now, |m| m.issued_at.max(now));
        let max_age = last
            .as_ref()
            .map_or(DEFAULT_MAX_AGE_SECS, |m| m.max_age_secs);
        let object =
            sign_policy_with_max_age(&self.signing_key()?, version, issued_at, max_age, claims)
                .context("signing the policy object")?;
        write_atomic(&self.path("policy_object.bin"), &object.encode_to_vec())?;
        Ok(version)
    }

    /// Re-sign the policy object if it is missing or does not hold exactly
    /// `policy.bin` (a directory from before the object existed, or a crash
    /// between the two writes).
    pub fn ensure_policy_object(&self, now: i64) -> Result<()> {
        let claims = fs::read(self.path("policy.bin")).context("reading policy.bin")?;
        match self.last_policy_object() {
            Some(m) if m.claims == claims => Ok(()),
            _ => self.sign_policy_object(now).map(|_| ()),
        }
    }

    /// Trust `measurement` for `role` (optionally only with personalization
    /// value `rpv`). Refused for revoked measurements.
    pub fn trust(
        &self,
        role: &Role,
        measurement: &[u8],
        rpv: Option<&[u8]>,
        now: i64,
    ) -> Result<bool> {
        let policy = self.policy(now)?;
        if let Some(r) = policy.revocation(measurement) {
            bail!(
                "measurement {} is revoked ({}); a revoked measurement cannot be trusted again",
                hex::encode(measurement),
                r.reason
            );
        }
        if policy.measurements().iter().any(|m| {
            m.measurement == measurement
                && &m.role == role
                && m.personalization_value.as_deref() == rpv
        }) {
            return Ok(false);
        }
        let mut d = format!("{}{}", descriptor::ROLE_PREFIX, role);
        if let Some(rpv) = rpv {
            d.push_str(&format!(";{}{}", descriptor::RPV_PREFIX, hex::encode(rpv)));
        }
        self.add_statement(
            unary(measurement_entity(measurement), verb::IS_TRUSTED),
            &d,
            now,
        )?;
        Ok(true)
    }

    /// Revoke `measurement` for every role.
    pub fn revoke(&self, measurement: &[u8], reason: &str, now: i64) -> Result<()> {
        self.add_statement(
            unary(measurement_entity(measurement), verb::IS_REVOKED),
            &format!("{}{}", descriptor::REVOKED_PREFIX, reason),
            now,
        )
    }

    /// Trust a CCA platform key, optionally without firmware appraisal.
    ///
    /// A key on the list of public test material is refused unless
    /// `insecure_test_key` is set; with it, the statement carries
    /// `insecure-test-key` and every admission through it is INSECURE.
    /// Returns the listed material the key matched, if any.
    pub fn trust_platform(
        &self,
        cpak: &PublicKey,
        skip_sw_components: bool,
        insecure_test_key: bool,
        now: i64,
    ) -> Result<Option<&'static TestMaterial>> {
        let known = cpak.ec_spki_der().and_then(|d| known_key_spki(&d));
        if let (Some(m), false) = (known, insecure_test_key) {
            bail!(
                "refused: this platform key is public test material, not a hardware key: \
                 {m}. Anyone can forge evidence with it. For a QEMU/FVP test setup re-run \
                 with --insecure-test-key (admissions are then marked INSECURE); for real \
                 hardware use the CPAK from the platform's endorsements (e.g. a CoRIM from \
                 its vendor)"
            );
        }
        let mut d = descriptor::CCA_PLATFORM.to_string();
        if skip_sw_components {
            d.push(';');
            d.push_str(descriptor::SW_COMPONENTS_ANY);
        }
        if insecure_test_key {
            d.push(';');
            d.push_str(descriptor::INSECURE_TEST_KEY);
        }
        self.add_statement(
            unary(
                key_entity(cpak, "platformKey"),
                verb::IS_TRUSTED_FOR_ATTESTATION,
            ),
            &d,
            now,
        )?;
        Ok(known)
    }

    /// Add a firmware reference value for the component in `slot` (its
    /// measurement type, or `#N`) on the platform with key `cpak`; a token
    /// from that platform must carry the slot unless `optional`.
    pub fn trust_component(
        &self,
        cpak: &PublicKey,
        slot: &str,
        measurement: &[u8],
        optional: bool,
        now: i64,
    ) -> Result<()> {
        let fingerprint = platform_fingerprint(cpak)
            .context("the platform key must be an EC P-256 or P-384 key")?;
        // The descriptor is split on ';' and flags on '=': keep the slot plain.
        if slot.is_empty() || slot.len() > 64 || slot.contains([';', '\n', '\r']) {
            bail!("--type must be 1-64 characters without ';' or line breaks");
        }
        let mut d = format!(
            "{};{}{};{}{slot}",
            descriptor::CCA_PLATFORM_COMPONENT,
            descriptor::CPAK_PREFIX,
            hex::encode(fingerprint),
            descriptor::TYPE_PREFIX,
        );
        if optional {
            d.push(';');
            d.push_str(descriptor::OPTIONAL);
        }
        self.add_statement(
            unary(
                measurement_entity(measurement),
                verb::IS_TRUSTED_PLATFORM_COMPONENT,
            ),
            &d,
            now,
        )
    }

    /// Modification time of policy.bin (to notice edits while serving).
    pub fn policy_mtime(&self) -> Option<std::time::SystemTime> {
        fs::metadata(self.path("policy.bin"))
            .and_then(|m| m.modified())
            .ok()
    }
}

/// What `import_framework` took from the framework's policy.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Measurements trusted for framework apps.
    pub measurements: usize,
    /// Simulated-enclave platform keys trusted for attestation.
    pub platforms: usize,
    /// Statements left out, with why.
    pub skipped: Vec<String>,
}

/// Replace `path` atomically with `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}
