//! The attacks the demo plays with the libraries directly, because no
//! shipped binary will do them: replaying an admission request, forging a
//! real platform's implementation id with the emulated key, cutting a
//! revocation out of the signed policy or replaying an older one in
//! transit, and a trusted-but-compromised device poisoning federated rounds.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use attestation::atls::{
    Identity, PeerRequirement, PolicyAnchor, RevocationList, client_config, server_name,
};
use attestation::certifier::admission::verify_admission_certificate;
use attestation::certifier::client::{Client, ClientError, unix_now};
use attestation::certifier::decide::admission_challenge;
use attestation::certifier::keys::SigningKey;
use attestation::certifier::policy::Role;
use attestation::certifier::policy_object::{PolicyFloor, SignedPolicyMessage, verify_policy};
use attestation::certifier::proto::{SignedClaimSequence, decode_bounded};
use attestation::platform::EvidenceSource;
use attestation::platform::danger::InsecureEmulatedPlatform;
use fl::onnx_model::{arch_of, read_params};
use fl::train::{Optimizer, TrainConfig, train};
use protocol::{Framed, Limits, Message};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Present one admission request twice. The first is admitted; the second
/// must be refused (nonces are single-use). Returns the refusal code.
pub async fn replay_evidence(certifier: &str, platform_key: &Path, image: &Path) -> Result<String> {
    let platform = InsecureEmulatedPlatform::from_key_file(platform_key)?.measuring(image)?;
    let client = Client::new(certifier.to_string(), Duration::from_secs(10));
    let (key, _) = SigningKey::generate_p256()?;
    let auth = key.public_key();
    let nonce = client.nonce().await?;
    let spki = auth.ec_spki_der().context("auth key")?;
    let token = platform.attestation_token(&admission_challenge(&nonce, &spki))?;
    client
        .present(&nonce, token.clone(), &auth, &Role::device())
        .await
        .context("the original request should be admitted")?;
    match client.present(&nonce, token, &auth, &Role::device()).await {
        Err(ClientError::Refused { code, .. }) => Ok(code),
        Err(e) => bail!("the replay failed for another reason: {e}"),
        Ok(_) => bail!("the REPLAYED evidence was admitted"),
    }
}

/// TF-A's sample implementation id (claim 2396 of its QEMU sample platform
/// token): what a forger writes to pass for a real platform.
const TFA_SAMPLE_IMPLEMENTATION_ID: [u8; 32] = [
    0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0x3e, 0, 0x01, 0,
    0, 0, 0x50, 0x58, 0, 0, 0, 0, 0, 0,
];

/// Sign evidence with the emulated platform key but claim TF-A's
/// implementation id, as if from a real platform. The certifier must still
/// mark the certificate INSECURE (the mark follows the policy entry whose key
/// verified the token); a peer that does not allow INSECURE peers must then
/// refuse it. Returns that peer's refusal.
pub async fn forged_platform(
    certifier: &str,
    anchor: &PolicyAnchor,
    platform_key: &Path,
    image: &Path,
) -> Result<String> {
    let platform = InsecureEmulatedPlatform::from_key_file(platform_key)?
        .measuring(image)?
        .with_implementation_id(TFA_SAMPLE_IMPLEMENTATION_ID);
    let (key, _) = SigningKey::generate_p256()?;
    let cert = Client::new(certifier.to_string(), Duration::from_secs(10))
        .admit(&platform, &key.public_key(), &Role::device())
        .await
        .context("the forged evidence should be admitted, marked INSECURE")?;
    let claims = verify_admission_certificate(&cert, anchor.key(), unix_now())?;
    if !claims.insecure_platform {
        bail!("the certificate for forged evidence is NOT marked INSECURE");
    }
    match PeerRequirement::roles([Role::device()])?.check(&claims) {
        Err(e) => Ok(e.to_string()),
        Ok(()) => bail!("a strict peer ACCEPTED the forged platform"),
    }
}

/// What a network attacker in front of the certifier does with a policy
/// that revoked a measurement: cut the revocation statement out (every other
/// statement still verifies on its own), or serve the policy from before the
/// revocation. Returns the two refusals a peer of ours gives.
pub fn tamper_with_policy(
    anchor: &PolicyAnchor,
    before: &[u8],
    after: &[u8],
) -> Result<(String, String)> {
    let now = unix_now();
    let current = verify_policy(after, anchor.key(), now)?;
    // Cut the newest statement (the revocation) and re-encode.
    let mut msg: SignedPolicyMessage = decode_bounded(after)?;
    let mut seq: SignedClaimSequence = decode_bounded(&msg.claims)?;
    seq.claims.pop().context("the policy has no statements")?;
    msg.claims = seq.to_bytes();
    let stripped = match verify_policy(&msg.to_bytes(), anchor.key(), now) {
        Err(e) => format!("{} ({})", e, e.code()),
        Ok(_) => bail!("the policy with its revocation CUT OUT was accepted"),
    };
    // Replay the older version to a peer that has seen the newer one.
    let mut floor = PolicyFloor::new(0);
    floor.accept(&current)?;
    let old = verify_policy(before, anchor.key(), now)?;
    let replayed = match floor.accept(&old) {
        Err(e) => format!("{} ({})", e, e.code()),
        Ok(()) => bail!("the REPLAYED older policy was accepted"),
    };
    Ok((stripped, replayed))
}

/// Where the poisoning device runs and how it is admitted.
#[derive(Debug)]
pub struct Where<'a> {
    /// Runtime address.
    pub runtime: &'a str,
    /// Certifier address.
    pub certifier: &'a str,
    /// The policy certificate's anchor.
    pub anchor: PolicyAnchor,
    /// The emulated platform key.
    pub platform_key: &'a Path,
    /// The binary whose measurement it claims (a trusted device build).
    pub image: &'a Path,
}

/// A device running trusted code (admitted with the device-agent's
/// measurement) but compromised: in each round it trains honestly on
/// `x`/`y`, then sends the update flipped and scaled by −10, claiming 10× its
/// samples. Returns how many of its updates the runtime accepted.
pub async fn poison_rounds(
    at: Where<'_>,
    task: &str,
    rounds: usize,
    (x, y): (Vec<Vec<f32>>, Vec<u32>),
) -> Result<usize> {
    let Where {
        runtime,
        certifier,
        anchor,
        platform_key,
        image,
    } = at;
    let platform = InsecureEmulatedPlatform::from_key_file(platform_key)?.measuring(image)?;
    let (key, pkcs8) = SigningKey::generate_p256()?;
    let cert = Client::new(certifier.to_string(), Duration::from_secs(10))
        .admit(&platform, &key.public_key(), &Role::device())
        .await?;
    let me = Identity::new(cert, pkcs8);
    let req = PeerRequirement::roles([Role::runtime()])?.allow_insecure_emulated_platform();
    let cfg = client_config(&me, anchor, req, RevocationList::new())?;
    let tcp = TcpStream::connect(runtime).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(cfg).connect(server_name(), tcp).await?;
    let mut conn = Framed::with_limits(
        tls,
        Limits {
            max_frame: 16 << 20,
            ..Limits::default()
        },
    );
    conn.client_hello("device", "realm-demo poisoner").await?;
    let mut accepted = 0;
    for _ in 0..rounds {
        conn.send(&Message::JoinRound { task: task.into() }).await?;
        let round = match conn.recv().await? {
            Message::RoundAnnouncement { round, .. } => round,
            _ => break,
        };
        let model = conn.recv_large(round).await?;
        let global = read_params(&model)?;
        let arch = arch_of(&global)?;
        let mut local = global.clone();
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 32,
            learning_rate: 0.5,
            optimizer: Optimizer::Sgd,
            seed: round,
        };
        train(&arch, &mut local, &x, &y, &cfg)?;
        let delta: Vec<f32> = local
            .delta_from(&global)?
            .iter()
            .map(|v| -10.0 * v)
            .collect();
        conn.send(&Message::ModelUpdate {
            round,
            num_samples: 10 * x.len() as u64,
            delta,
        })
        .await?;
        if let Message::RoundResult { accepted: true, .. } = conn.recv().await? {
            accepted += 1;
        }
    }
    Ok(accepted)
}
