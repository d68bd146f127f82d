//! Attested TLS connections from the agent to a runtime or a provider.
//!
//! Must never: send a byte of application data before the peer's admission
//! certificate has been checked for the expected role, a pinned measurement
//! (when given) and the current revocations — the TLS verifier does all of
//! it inside the handshake, before the first application record; or report
//! a peer that merely hung up (busy, at its connection limit) as an identity
//! failure.

use std::time::Duration;

use anyhow::{Context, Result};
use attestation::atls::{
    Identity, PeerRequirement, PolicyAnchor, RevocationList, client_config, peer_error, server_name,
};
use attestation::certifier::admission::verify_admission_certificate;
use attestation::certifier::client::{Client, unix_now};
use attestation::certifier::policy::Role;
use attestation::platform::EvidenceSource;

use crate::store::LocalStore;
use protocol::{
    Framed, Limits, ProtocolError, TlsSession, closed_during_handshake, fresh_evidence_exchange,
};
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
/// With `store`, the signed policy must not be older than the newest this
/// device has accepted (`policy_floor`).
pub async fn connect(
    addr: &str,
    identity: &Identity,
    anchor: &PolicyAnchor,
    certifier: &str,
    expected: &Expected,
    store: Option<&LocalStore>,
) -> Result<Conn> {
    connect_with(addr, identity, anchor, certifier, expected, store, None).await
}

/// [`connect`], then, with `fresh` (this realm's evidence source), the
/// high-assurance exchange: both sides give fresh evidence bound to this
/// TLS session, and the peer's is appraised under the same signed policy as
/// admission (for a runtime or provider run with `--fresh-evidence`).
pub async fn connect_with(
    addr: &str,
    identity: &Identity,
    anchor: &PolicyAnchor,
    certifier: &str,
    expected: &Expected,
    store: Option<&LocalStore>,
    fresh: Option<&dyn EvidenceSource>,
) -> Result<Conn> {
    // Current revocations, from the signed policy (verified against our anchor).
    let revoked = RevocationList::new();
    let client = Client::new(certifier.to_string(), Duration::from_secs(15));
    let policy = crate::policy_floor::current(store, &client, anchor.key())
        .await
        .context("the signed policy (for revocations) is not available; nothing was sent")?;
    revoked.update_from_policy(&policy);

    let mut req = PeerRequirement::roles([expected.role.clone()])?;
    if !expected.measurements.is_empty() {
        req = req.with_measurements(expected.measurements.iter().cloned());
    }
    // INSECURE peers only where the signed policy trusts such platforms.
    if !req.allow_insecure_if_policy_does(expected.allow_insecure, &policy)
        && expected.allow_insecure
    {
        eprintln!(
            "note: --allow-insecure-peers has no effect: the signed policy trusts no INSECURE platform"
        );
    }
    let cfg = client_config(identity, anchor.clone(), req, revoked)?;
    let mut conn = handshake(addr, cfg, &expected.role).await?;
    if let Some(platform) = fresh {
        let own_spki =
            verify_admission_certificate(identity.certificate(), anchor.key(), unix_now())
                .ok()
                .and_then(|c| c.auth_key.ec_spki_der())
                .context("this device's own admission certificate is unusable")?;
        let peer = conn
            .get_ref()
            .verified_peer(anchor.key())
            .context("reading the peer's admission certificate back")?;
        fresh_evidence_exchange(&mut conn, &own_spki, platform, &peer, &policy)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "fresh evidence with the {} at {addr} failed [{}]: {e}; nothing was sent",
                    expected.role,
                    e.code()
                )
            })?;
    }
    Ok(conn)
}

/// Why an attested connection could not be opened. A busy peer and an
/// unacceptable one are told apart: only the second is about identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// TCP connect or the TLS handshake did not finish in time.
    #[error("{what} with {addr} timed out")]
    Timeout {
        /// The address.
        addr: String,
        /// "connecting" or "attested TLS handshake".
        what: &'static str,
    },
    /// The peer closed the connection without a TLS alert before the
    /// session started: what a server over its connection limit does (see
    /// `protocol::BoundedListener`). Nothing was sent.
    #[error(
        "{addr} closed the connection before the attested TLS session started: the {role} is busy or at its connection limit (nothing was sent); retry later"
    )]
    Busy {
        /// The address.
        addr: String,
        /// The role expected there.
        role: Role,
    },
    /// The handshake failed on a TLS error: the peer's certificate, role,
    /// measurement or revocation status was refused (or ours was).
    #[error("{addr} is not an acceptable {role} (nothing was sent): {why}")]
    NotAcceptable {
        /// The address.
        addr: String,
        /// The role expected there.
        role: Role,
        /// The failed check.
        why: String,
    },
    /// The protocol hello failed after the handshake.
    #[error("hello with {addr}: {source}")]
    Hello {
        /// The address.
        addr: String,
        /// Why.
        source: ProtocolError,
    },
}

impl ConnectError {
    /// A stable short code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect-failed",
            Self::Timeout { .. } => "timeout",
            Self::Busy { .. } => "peer-busy",
            Self::NotAcceptable { .. } => "peer-not-acceptable",
            Self::Hello { .. } => "hello-failed",
        }
    }
}

/// TCP connect to `addr`, the attested TLS handshake under `cfg` (which
/// checks the peer), and the hello.
pub async fn handshake(
    addr: &str,
    cfg: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    role: &Role,
) -> Result<Conn, ConnectError> {
    let busy = || ConnectError::Busy {
        addr: addr.to_string(),
        role: role.clone(),
    };
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout {
            addr: addr.to_string(),
            what: "connecting",
        })?
        .map_err(|source| ConnectError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        Duration::from_secs(15),
        TlsConnector::from(cfg).connect(server_name(), tcp),
    )
    .await
    .map_err(|_| ConnectError::Timeout {
        addr: addr.to_string(),
        what: "attested TLS handshake",
    })?
    .map_err(|e| {
        if closed_during_handshake(&e) {
            return busy();
        }
        let why = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
            .and_then(peer_error)
            .map_or_else(|| e.to_string(), |p| p.to_string());
        ConnectError::NotAcceptable {
            addr: addr.to_string(),
            role: role.clone(),
            why,
        }
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
        .await
        .map_err(|source| match &source {
            // TLS 1.3 lets the client finish first: a server that closes
            // for its connection limit right after the handshake (its
            // established pool filled meanwhile) shows up here, without an
            // alert. An alert (our certificate refused) stays a TLS error.
            ProtocolError::Closed => busy(),
            ProtocolError::Io(e) if closed_during_handshake(e) => busy(),
            _ => ConnectError::Hello {
                addr: addr.to_string(),
                source,
            },
        })?;
    Ok(framed)
}
