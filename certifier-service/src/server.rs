//! The TCP front end: accept, read one frame (bounded size, bounded time),
//! answer, close. Every connection is its own task, admitted by the shared
//! bounded listener (`protocol::BoundedListener`): until its request frame
//! has arrived a connection is *pre-auth*, capped per source address and in
//! total and closed at the pre-auth deadline (3 s by default); then it is
//! handled in one of `listen.established_total` slots. A connection over a
//! limit is closed at once, so silent connections from one source cannot
//! keep anyone else's request waiting.
//!
//! Must never: wait for a request frame past the pre-auth deadline, or let
//! one slow or hostile client stall the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attestation::certifier::client::unix_now;
use attestation::certifier::wire::{MAX_FRAME, WireError, read_frame, write_frame};
use prost::Message;
use protocol::{BoundedListener, ListenLimits};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::handler::{Service, failed_frame};

/// Connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time allowed to send the answer.
    pub io_timeout: Duration,
    /// Admission of connections: the request frame must arrive within
    /// `pre_auth_deadline`; requests handled at once are
    /// `established_total`.
    pub listen: ListenLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            io_timeout: Duration::from_secs(10),
            // Each pre-auth connection may announce a frame of up to
            // MAX_FRAME (1 MiB), so the pool is smaller than elsewhere.
            listen: ListenLimits {
                pre_auth_total: 256,
                established_total: 256,
                ..ListenLimits::default()
            },
        }
    }
}

/// Serve until the process is stopped.
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    limits: Limits,
) -> std::io::Result<()> {
    let io_timeout = limits.io_timeout;
    // The frame read is bounded by the listener's pre-auth deadline; this
    // is only a backstop should that deadline be configured longer.
    let read_timeout = limits.listen.pre_auth_deadline;
    BoundedListener::new(listener, "certifier", limits.listen)
        .serve(
            move |stream, peer| receive(stream, peer, read_timeout, io_timeout),
            move |(stream, frame), peer| answer(stream, frame, peer, service.clone(), io_timeout),
        )
        .await;
    Ok(())
}

/// The pre-auth phase: the request frame, or `None` (after telling the
/// client, for an oversized frame).
async fn receive(
    mut stream: TcpStream,
    peer: SocketAddr,
    read_timeout: Duration,
    io_timeout: Duration,
) -> Option<(TcpStream, Vec<u8>)> {
    match read_frame(&mut stream, MAX_FRAME, read_timeout).await {
        Ok(frame) => Some((stream, frame)),
        Err(WireError::TooLarge { announced, limit }) => {
            warn!(%peer, announced, "oversized frame refused");
            let refusal = failed_frame(
                "frame-too-large",
                &format!("frame of {announced} bytes exceeds the {limit}-byte limit"),
            );
            send(&mut stream, &refusal.encode_to_vec(), peer, io_timeout).await;
            None
        }
        Err(e) => {
            debug!(%peer, "connection dropped: {e}");
            None
        }
    }
}

async fn answer(
    mut stream: TcpStream,
    frame: Vec<u8>,
    peer: SocketAddr,
    service: Arc<Service>,
    io_timeout: Duration,
) {
    let now = unix_now();
    let response =
        match tokio::task::spawn_blocking(move || service.handle(&frame, peer, now)).await {
            Ok(r) => r,
            Err(e) => {
                warn!(%peer, "request handler failed: {e}");
                failed_frame("internal", "the request could not be handled")
            }
        };
    send(&mut stream, &response.encode_to_vec(), peer, io_timeout).await;
}

async fn send(stream: &mut TcpStream, payload: &[u8], peer: SocketAddr, io_timeout: Duration) {
    if let Err(e) = write_frame(stream, payload, io_timeout).await {
        debug!(%peer, "could not send the response: {e}");
    }
}
