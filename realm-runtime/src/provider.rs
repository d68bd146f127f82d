//! The runtime's side of key release: ask the model provider, over attested
//! TLS, for a model's key for remote inference (or, for a federated task,
//! for its current global model to resume from), and deposit new global
//! models.
//!
//! Must never: send a key request to anything but an admitted `provider`
//! (the TLS verifier checks the role in its certificate), or keep a key
//! after the bundle is opened (keys live in `ModelKey`, wiped on drop).

use std::sync::Arc;
use std::time::Duration;

use attestation::atls::server_name;
use attestation::certifier::keys::PublicKey;
use blob_store::BlobId;
use protocol::sealed::ModelKey;
use protocol::{
    ErrorCode, FlTaskTerms, Framed, FreshParty, KeyUsage, Message, ProtocolError, ServingPolicy,
};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why no key came back.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The provider could not be reached or the attested handshake failed.
    #[error("cannot reach the model provider at {addr}: {reason}")]
    Unreachable {
        /// Its address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The provider refused to release the key to this runtime.
    #[error("the model provider did not release the key of {0:?} to this runtime")]
    Refused(String),
    /// The conversation failed.
    #[error("key request: {0}")]
    Protocol(#[from] ProtocolError),
    /// The provider sent something that is not a usable key.
    #[error("the model provider sent an unusable key: {0}")]
    BadKey(&'static str),
    /// High-assurance mode: the fresh-evidence exchange with the provider failed.
    #[error("fresh evidence with the model provider failed [{code}]: {reason}")]
    Fresh {
        /// The failed check.
        code: &'static str,
        /// Why.
        reason: String,
    },
    /// The provider sent task terms that are not usable.
    #[error("the model provider sent unusable task terms: {0}")]
    BadTerms(String),
    /// The provider did not give this runtime the task's terms.
    #[error(
        "the model provider gave no terms for federated task {task:?} ({reason}); define them there with `model-provider task define --id {task} ...` and serve it with `--federated-task {task}`"
    )]
    NoTerms {
        /// The task.
        task: String,
        /// The provider's answer.
        reason: String,
    },
    /// The provider already holds this global model version or a newer one.
    #[error("the model provider refused the global model of {model_id:?}: {detail}")]
    VersionNotNewer {
        /// The task.
        model_id: String,
        /// The provider's reason (names both versions).
        detail: String,
    },
}

/// The code a provider puts before a refused deposit's reason when the
/// task already holds that version or a newer one.
pub const DEPOSIT_VERSION_NOT_NEWER: &str = "deposit-version-not-newer";

/// A connection recipe for the provider.
#[derive(Clone)]
pub struct ProviderClient {
    addr: String,
    tls: TlsConnector,
    /// High-assurance mode: each session starts with fresh evidence both
    /// ways; the key reads the provider's certificate back from the session.
    fresh: Option<(FreshParty, PublicKey)>,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ProviderClient {
    /// Talk to the provider at `addr` with `tls` (a client config that
    /// presents this runtime's admission certificate and requires the
    /// `provider` role).
    pub fn new(addr: String, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            addr,
            tls: TlsConnector::from(tls),
            fresh: None,
        }
    }

    /// Start every session with the fresh-evidence exchange (for a provider
    /// run with `--fresh-evidence`); `policy_key` verifies its certificate.
    pub fn with_fresh_evidence(mut self, party: FreshParty, policy_key: PublicKey) -> Self {
        self.fresh = Some((party, policy_key));
        self
    }

    /// An attested session with the provider, after the hello.
    async fn session(
        &self,
    ) -> Result<Framed<tokio_rustls::client::TlsStream<TcpStream>>, KeyError> {
        let unreachable = |reason: String| KeyError::Unreachable {
            addr: self.addr.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&self.addr))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            self.tls.connect(server_name(), tcp),
        )
        .await
        .map_err(|_| unreachable("attested TLS handshake timed out".into()))?
        .map_err(|e| unreachable(format!("attested TLS handshake: {e}")))?;
        let mut framed = Framed::new(tls);
        framed
            .client_hello(
                "runtime",
                concat!("realm-runtime/", env!("CARGO_PKG_VERSION")),
            )
            .await?;
        if let Some((party, policy_key)) = &self.fresh {
            party
                .exchange_as_client(&mut framed, policy_key)
                .await
                .map_err(|e| KeyError::Fresh {
                    code: e.code(),
                    reason: e.to_string(),
                })?;
        }
        Ok(framed)
    }

    /// Hand the provider the key of a federated global model sealed into
    /// the store as `bundle`; the provider acknowledges with an announcement.
    pub async fn deposit(
        &self,
        model_id: &str,
        version: &str,
        bundle: &BlobId,
        key: &ModelKey,
    ) -> Result<(), KeyError> {
        let mut framed = self.session().await?;
        framed
            .send(&Message::ModelKeyDeposit {
                model_id: model_id.to_string(),
                version: version.to_string(),
                bundle_hash: bundle.0,
                key_id: *key.key_id().as_bytes(),
                key: key.to_secret_bytes(),
            })
            .await?;
        let reply = framed.recv().await?;
        let _ = framed.shutdown().await;
        match reply {
            Message::SealedModelAnnouncement { bundle_hash, .. } if bundle_hash == bundle.0 => {
                Ok(())
            }
            Message::Error { message, .. } => match message
                .strip_prefix(DEPOSIT_VERSION_NOT_NEWER)
                .and_then(|m| m.strip_prefix(": "))
            {
                Some(detail) => Err(KeyError::VersionNotNewer {
                    model_id: model_id.to_string(),
                    detail: detail.chars().take(256).collect(),
                }),
                None => Err(KeyError::Refused(model_id.to_string())),
            },
            other => Err(KeyError::Protocol(ProtocolError::UnexpectedMessage {
                expected: "SealedModelAnnouncement",
                got: other.kind(),
            })),
        }
    }

    /// The terms of federated task `task`, as the provider defines them
    /// (validated). A refusal means this runtime may not coordinate it.
    pub async fn task_terms(&self, task: &str) -> Result<FlTaskTerms, KeyError> {
        let mut framed = self.session().await?;
        framed
            .send(&Message::FlTaskQuery {
                task: task.to_string(),
            })
            .await?;
        let reply = framed.recv().await?;
        let _ = framed.shutdown().await;
        match reply {
            Message::FlTaskTerms { terms } if terms.task == task => {
                terms
                    .validate()
                    .map_err(|e| KeyError::BadTerms(e.to_string()))?;
                Ok(terms)
            }
            Message::FlTaskTerms { .. } => Err(KeyError::BadTerms("terms of another task".into())),
            Message::Error { message, .. } => Err(KeyError::NoTerms {
                task: task.to_string(),
                reason: message.chars().take(256).collect(),
            }),
            other => Err(KeyError::Protocol(ProtocolError::UnexpectedMessage {
                expected: "FlTaskTerms",
                got: other.kind(),
            })),
        }
    }

    /// The current global model of federated task `task` at the provider:
    /// its version and bundle, or `None` if nothing was deposited yet.
    pub async fn current_global(&self, task: &str) -> Result<Option<(String, BlobId)>, KeyError> {
        let mut framed = self.session().await?;
        framed
            .send(&Message::BundleQuery {
                model_id: task.to_string(),
                usage: KeyUsage::FederatedRound,
            })
            .await?;
        let reply = framed.recv().await?;
        let _ = framed.shutdown().await;
        match reply {
            Message::SealedModelAnnouncement {
                model_id,
                version,
                bundle_hash,
                ..
            } if model_id == task => Ok(Some((version, BlobId(bundle_hash)))),
            Message::Error {
                code: ErrorCode::NotFound,
                ..
            } => Ok(None),
            Message::Error {
                code: ErrorCode::Refused | ErrorCode::NotAdmitted,
                ..
            } => Err(KeyError::Refused(task.to_string())),
            other => Err(other.as_remote_error().map_or_else(
                || {
                    KeyError::Protocol(ProtocolError::UnexpectedMessage {
                        expected: "SealedModelAnnouncement",
                        got: other.kind(),
                    })
                },
                KeyError::Protocol,
            )),
        }
    }

    /// Get the key of `model_id`'s bundle `bundle`, and its serving policy.
    pub async fn model_key(
        &self,
        model_id: &str,
        bundle: &BlobId,
    ) -> Result<(ModelKey, ServingPolicy), KeyError> {
        self.key_for(model_id, bundle, KeyUsage::RemoteInference)
            .await
    }

    /// Get the key of `model_id`'s bundle `bundle` for `usage`.
    pub async fn key_for(
        &self,
        model_id: &str,
        bundle: &BlobId,
        usage: KeyUsage,
    ) -> Result<(ModelKey, ServingPolicy), KeyError> {
        let mut framed = self.session().await?;
        framed
            .send(&Message::ModelKeyRequest {
                model_id: model_id.to_string(),
                bundle_hash: bundle.0,
                usage,
            })
            .await?;
        let reply = framed.recv().await?;
        let _ = framed.shutdown().await;
        match reply {
            Message::ModelKeyRelease {
                model_id: got,
                key,
                serving,
                ..
            } if got == model_id => {
                let key = ModelKey::from_slice(key.expose()).ok_or(KeyError::BadKey("length"))?;
                Ok((key, serving))
            }
            Message::ModelKeyRelease { .. } => Err(KeyError::BadKey("for another model")),
            Message::Error {
                code: ErrorCode::Refused | ErrorCode::NotAdmitted | ErrorCode::NotFound,
                ..
            } => Err(KeyError::Refused(model_id.to_string())),
            other => Err(other.as_remote_error().map_or_else(
                || {
                    KeyError::Protocol(ProtocolError::UnexpectedMessage {
                        expected: "ModelKeyRelease",
                        got: other.kind(),
                    })
                },
                KeyError::Protocol,
            )),
        }
    }
}
