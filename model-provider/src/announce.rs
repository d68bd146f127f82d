//! Announcing sealed models to runtimes: every interval, the provider
//! connects over attested TLS to each configured runtime and sends a
//! `SealedModelAnnouncement` for every current model that runtimes may use
//! for remote inference, so runtimes prefetch new bundles (after `seal` or
//! `rotate`) before a device asks, and a restarted runtime learns them again.
//!
//! Must never: announce to a peer that is not an admitted `runtime`, or
//! announce a model whose key runtimes would be refused anyway.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use attestation::atls::server_name;
use protocol::{Framed, Message, ProtocolError};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use crate::keystore::Keystore;

/// What runtimes should hear about now: current (not retired) models whose
/// release rule lets a runtime use them for remote inference.
pub fn announcements(keystore: &Keystore) -> Vec<Message> {
    keystore
        .entries()
        .iter()
        .filter(|e| {
            !e.retired
                && e.release.roles.iter().any(|r| r == "runtime")
                && e.release.uses.iter().any(|u| u == "remote-inference")
        })
        .filter_map(|e| {
            let hash: [u8; 32] = hex::decode(&e.bundle).ok()?.try_into().ok()?;
            Some(Message::SealedModelAnnouncement {
                model_id: e.model_id.clone(),
                version: e.version.clone(),
                bundle_hash: hash,
                size: 0,
            })
        })
        .collect()
}

async fn announce_once(addr: &str, tls: &TlsConnector, messages: &[Message]) -> Result<(), String> {
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio::time::timeout(Duration::from_secs(10), tls.connect(server_name(), tcp))
        .await
        .map_err(|_| "attested TLS handshake timed out".to_string())?
        .map_err(|e| format!("attested TLS handshake: {e}"))?;
    let mut framed = Framed::new(stream);
    let talk = async {
        framed
            .client_hello(
                "provider",
                concat!("model-provider/", env!("CARGO_PKG_VERSION")),
            )
            .await?;
        for m in messages {
            framed.send(m).await?;
            let echo = framed.recv().await?;
            if &echo != m {
                return Err(echo
                    .as_remote_error()
                    .unwrap_or(ProtocolError::UnexpectedMessage {
                        expected: "the announcement echoed",
                        got: echo.kind(),
                    }));
            }
        }
        framed.shutdown().await
    };
    talk.await.map_err(|e| e.to_string())
}

/// Announce to `runtimes` now and then every `every`, until the process ends.
pub fn spawn(
    runtimes: Vec<String>,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
    keystore: Arc<Mutex<Keystore>>,
    every: Duration,
) {
    let tls = TlsConnector::from(tls);
    tokio::spawn(async move {
        loop {
            let messages = {
                let mut ks = keystore.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = ks.refresh() {
                    warn!("keystore changed on disk but cannot be re-read: {e:#}");
                }
                announcements(&ks)
            };
            for addr in &runtimes {
                match announce_once(addr, &tls, &messages).await {
                    Ok(()) => debug!(runtime = %addr, models = messages.len(), "announced"),
                    Err(e) => info!(runtime = %addr, "announcement failed (retrying later): {e}"),
                }
            }
            tokio::time::sleep(every).await;
        }
    });
}
