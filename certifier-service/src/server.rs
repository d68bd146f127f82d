//! The TCP front end: accept, read one frame (bounded size, bounded time),
//! answer, close. Every connection is its own task; a bounded number run at
//! once, and one slow or hostile client cannot stall the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attestation::certifier::client::unix_now;
use attestation::certifier::wire::{MAX_FRAME, WireError, read_frame, write_frame};
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::handler::{Service, failed_frame};

/// Connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time allowed to receive the request frame and to send the answer.
    pub io_timeout: Duration,
    /// Connections handled at once; more wait in the accept queue.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            io_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

/// Serve until the process is stopped.
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    limits: Limits,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // e.g. EMFILE: back off instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            connection(stream, peer, service, &limits).await;
            drop(permit);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    service: Arc<Service>,
    limits: &Limits,
) {
    let response = match read_frame(&mut stream, MAX_FRAME, limits.io_timeout).await {
        Ok(frame) => {
            let now = unix_now();
            match tokio::task::spawn_blocking(move || service.handle(&frame, peer, now)).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(%peer, "request handler failed: {e}");
                    failed_frame("internal", "the request could not be handled")
                }
            }
        }
        Err(WireError::TooLarge { announced, limit }) => {
            warn!(%peer, announced, "oversized frame refused");
            failed_frame(
                "frame-too-large",
                &format!("frame of {announced} bytes exceeds the {limit}-byte limit"),
            )
        }
        Err(e) => {
            debug!(%peer, "connection dropped: {e}");
            return;
        }
    };
    if let Err(e) = write_frame(&mut stream, &response.encode_to_vec(), limits.io_timeout).await {
        debug!(%peer, "could not send the response: {e}");
    }
}
