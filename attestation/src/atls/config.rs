//! rustls client and server configurations for attested TLS: TLS 1.3 only,
//! the `ring` provider, mutual authentication with admission certificates,
//! no session resumption and no 0-RTT (a resumed session would skip the
//! certificate checks, and early data is replayable).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};

use super::verifier::{PeerRequirement, PeerVerifier, PolicyAnchor, RevocationList};

/// The server name clients put in SNI. Peers are identified by measurement
/// and role, never by name, so one fixed name serves every connection.
pub const SERVER_NAME: &str = "peer.cca-ml.invalid";

/// This party's credentials: its admission certificate and auth private key.
pub struct Identity {
    certificate: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identity({} byte certificate, <key redacted>)",
            self.certificate.len()
        )
    }
}

impl Identity {
    /// From an admission certificate (DER) and the PKCS#8 auth key it certifies.
    pub fn new(admission_certificate_der: Vec<u8>, auth_key_pkcs8: Vec<u8>) -> Self {
        Self {
            certificate: CertificateDer::from(admission_certificate_der),
            key_pkcs8: auth_key_pkcs8,
        }
    }

    /// The admission certificate.
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// The crypto provider attested TLS uses: rustls's `ring` provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The name a client connects to (see [`SERVER_NAME`]).
pub fn server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from(SERVER_NAME)
            .expect("constant is a valid DNS name")
            .to_owned(),
    )
}

/// A client config that presents `identity` and accepts servers meeting `requirement`.
pub fn client_config(
    identity: &Identity,
    anchor: PolicyAnchor,
    requirement: PeerRequirement,
    revoked: RevocationList,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier::new(anchor, requirement, revoked, &provider));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.certificate.clone()], identity.key())?;
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// A server config that presents `identity` and requires clients meeting `requirement`.
pub fn server_config(
    identity: &Identity,
    anchor: PolicyAnchor,
    requirement: PeerRequirement,
    revoked: RevocationList,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier::new(anchor, requirement, revoked, &provider));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.certificate.clone()], identity.key())?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}
