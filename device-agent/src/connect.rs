//! Attested TLS connections from the agent to a runtime or a provider.
//!
//! Must never: send a byte of application data before the peer's admission
//! certificate has been checked for the expected role, a pinned measurement
//! (when given) and the current revocations — the TLS verifier does all of
//! it inside the handshake, before the first application record.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use attestation::atls::{
    Identity, PeerRequirement, PolicyAnchor, RevocationList, client_config, peer_error, server_name,
};
use attestation::certifier::client::Client;
use attestation::certifier::policy::Role;
use protocol::{Framed, Limits};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A connection carrying protocol messages.
pub type Conn = Framed<TlsStream<TcpStream>>;

/// Who the agent expects at the other end.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The role in its admission certificate.
    pub role: Role,
    /// Accepted measurements; empty: any the policy trusts for the role.
    pub measurements: Vec<Vec<u8>>,
    /// Accept peers admitted on the INSECURE emulated platform.
    pub allow_insecure: bool,
}

/// Parse `--*-measurement` values (hex).
pub fn parse_measurements(hexes: &[String]) -> Result<Vec<Vec<u8>>> {
    hexes
        .iter()
        .map(|h| {
            let m = hex::decode(h).with_context(|| format!("measurement {h:?} is not hex"))?;
            anyhow::ensure!(
                matches!(m.len(), 32 | 48 | 64),
                "measurement {h:?} is not a SHA-256/384/512 digest"
            );
            Ok(m)
        })
        .collect()
}

/// Connect to `addr`, check the peer during the handshake, exchange hellos.
pub async fn connect(
    addr: &str,
    identity: &Identity,
    anchor: &PolicyAnchor,
    certifier: &str,
    expected: &Expected,
) -> Result<Conn> {
    // Current revocations, from the signed policy (verified against our anchor).
    let revoked = RevocationList::new();
    let policy = Client::new(certifier.to_string(), Duration::from_secs(15))
        .policy(anchor.key())
        .await
        .context("fetching the signed policy for revocations")?;
    revoked.update_from_policy(&policy);

    let mut req = PeerRequirement::roles([expected.role.clone()])?;
    if !expected.measurements.is_empty() {
        req = req.with_measurements(expected.measurements.iter().cloned());
    }
    if expected.allow_insecure {
        req = req.allow_insecure_emulated_platform();
    }
    let cfg = client_config(identity, anchor.clone(), req, revoked)?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let tls = tokio::time::timeout(
        Duration::from_secs(15),
        TlsConnector::from(cfg).connect(server_name(), tcp),
    )
    .await
    .map_err(|_| anyhow!("attested TLS handshake with {addr} timed out"))?
    .map_err(|e| {
        let why = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
            .and_then(peer_error)
            .map_or_else(|| e.to_string(), |p| p.to_string());
        anyhow!(
            "{addr} is not an acceptable {} (nothing was sent): {why}",
            expected.role
        )
    })?;
    let mut framed = Framed::with_limits(
        tls,
        Limits {
            max_frame: 16 << 20,
            ..Limits::default()
        },
    );
    framed
        .client_hello(
            "device",
            concat!("device-agent/", env!("CARGO_PKG_VERSION")),
        )
        .await?;
    Ok(framed)
}
