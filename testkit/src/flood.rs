//! Connection floods for the listeners' limit tests: idle TCP connections
//! from another loopback source address than the legitimate client's (Linux
//! routes all of 127.0.0.0/8 to `lo`, so binding 127.0.0.2 before connecting
//! makes a second "source" on one machine).
//!
//! Test-only, like the rest of `testkit`: it panics on setup failures. Every
//! flood stops by itself (a bounded number of sockets, or a time limit).

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;

/// The flooding source (the legitimate client stays on 127.0.0.1).
pub const FLOOD_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// How long [`settle`] is given in the tests.
pub const SETTLE: Duration = Duration::from_secs(4);

/// Connections opened at once while building a flood.
const BATCH: usize = 100;

/// `addr` as a socket address (servers print `IP:PORT`).
pub fn socket_addr(addr: &str) -> SocketAddr {
    addr.parse().unwrap()
}

async fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// `n` TCP connections to `addr` from `source` that never send a byte,
/// kept open on this side. A connect that does not complete within 5 s
/// (a listener that leaves them in its backlog) is counted as not opened.
/// Returns the opened sockets (non-blocking std sockets, so that
/// [`still_open`] can look at them without an async runtime).
pub async fn idle(addr: SocketAddr, source: IpAddr, n: usize) -> Vec<std::net::TcpStream> {
    let mut opened = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(BATCH);
        left -= batch;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            set.spawn(tokio::time::timeout(
                Duration::from_secs(5),
                connect_from(source, addr),
            ));
        }
        while let Some(r) = set.join_next().await {
            if let Ok(Ok(Ok(s))) = r {
                opened.push(s.into_std().unwrap());
            }
        }
    }
    opened
}

/// How many of `sockets` the server has not closed: no FIN or reset has
/// arrived (a read would block).
pub fn still_open(sockets: &[std::net::TcpStream]) -> usize {
    let mut buf = [0u8; 1];
    sockets
        .iter()
        .filter(|s| match s.peek(&mut buf) {
            Ok(n) => n > 0,
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        })
        .count()
}

/// Wait (up to `within`) until at most `n` of `sockets` are still open;
/// returns how many are. A connect can complete on this side while the
/// server's accept queue is full (the kernel then drops the handshake's
/// last ACK and retransmits its SYN-ACK after 1 s, 3 s, ...), so a server
/// under load may see the last of a flood only seconds later: give it 4 s
/// (less than the pre-auth timeouts of 5-10 s the listeners had before).
pub async fn settle(sockets: &[std::net::TcpStream], n: usize, within: Duration) -> usize {
    let until = Instant::now() + within;
    loop {
        let open = still_open(sockets);
        if open <= n || Instant::now() >= until {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A flood that keeps `width` connections from `source` to `addr` open,
/// reconnecting each as soon as the server closes it, until stopped or
/// `max` has passed.
#[derive(Debug)]
pub struct Reconnecting {
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<()>,
}

impl Reconnecting {
    /// Start it.
    pub fn start(addr: SocketAddr, source: IpAddr, width: usize, max: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + max;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..width {
            let (stop, connections) = (stop.clone(), connections.clone());
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    let Ok(mut s) = connect_from(source, addr).await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    connections.fetch_add(1, Ordering::Relaxed);
                    // Hold it until the server closes it (or a while).
                    let mut buf = [0u8; 64];
                    let _ = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
                    // A breath between reconnects keeps the churn (and this
                    // test's CPU) bounded; it still reconnects hundreds of
                    // times a second.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        Self {
            stop,
            connections,
            tasks,
        }
    }

    /// Connections opened so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Stop it and wait for its tasks; returns the connections it opened.
    pub async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.connections()
    }
}

/// Wait until `flood` has opened `n` connections (or `within` passed).
pub async fn wait_for(flood: &Reconnecting, n: u64, within: Duration) {
    let until = Instant::now() + within;
    while flood.connections() < n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
