//! The attested-TLS half of a server's pre-auth phase, shared by the runtime
//! and the provider: the TLS handshake (whose verifier checks the peer's
//! admission certificate, role, measurement and revocation) and the typed
//! identity read back from the verified certificate.
//!
//! Must never: return a stream without the [`VerifiedPeer`] it was verified
//! as; run without the caller's deadline around it (the listener's).

use attestation::atls::VerifiedPeer;
use attestation::certifier::admission::CertError;
use attestation::certifier::client::unix_now;
use attestation::certifier::keys::PublicKey;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Why an incoming connection was not accepted as an attested peer.
#[derive(Debug, Error)]
pub enum AcceptError {
    /// The TLS handshake failed (the peer verifier's refusal is inside).
    #[error("attested TLS handshake refused: {0}")]
    Handshake(#[source] std::io::Error),
    /// The handshake completed but the certificate could not be read back.
    #[error("peer identity: {0}")]
    Identity(#[source] CertError),
}

/// Accept `tcp` as an attested-TLS peer whose certificate the policy key
/// `policy_key` signed.
pub async fn accept_attested(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    policy_key: &PublicKey,
) -> Result<(TlsStream<TcpStream>, VerifiedPeer), AcceptError> {
    let tls = acceptor.accept(tcp).await.map_err(AcceptError::Handshake)?;
    let peer = VerifiedPeer::from_certificates(
        tls.get_ref().1.peer_certificates(),
        policy_key,
        unix_now(),
    )
    .map_err(AcceptError::Identity)?;
    Ok((tls, peer))
}
