//! Bounded TCP listeners: the one accept loop of every server in the
//! workspace (certifier, runtime, provider, metrics).
//!
//! A connection lives in one of two pools. It starts **pre-auth** (accepted,
//! not yet proven anything: the TLS handshake with a verified peer, or the
//! certifier's first request frame, has not completed). Pre-auth connections
//! are capped in total and, once the pool is half full, per source (so one
//! source holds at most half the pool), and each has a short deadline
//! ([`ListenLimits::pre_auth_deadline`]) after which it is closed and its
//! slot freed. A connection that authenticates moves to the **established**
//! pool, which has its own cap; so a flood of idle or slow TCP connections can
//! fill only the pre-auth pool, and only its share of it per source.
//!
//! The accept loop always accepts, so that it learns the source address, and
//! closes a connection over a limit at once: nothing waits in the kernel's
//! backlog behind idle sockets.
//!
//! [`Admission`] is the pure bookkeeping (no I/O, no clock), unit-tested;
//! [`BoundedListener`] is the thin tokio loop around it.
//!
//! Must never: keep a connection pre-auth past its deadline; count an
//! unauthenticated connection against the established pool; hold a
//! per-source entry for a source with no pre-auth connection (so the map
//! never has more entries than the pre-auth cap); leak a slot when a handler
//! returns early or panics (slots are freed by guards on drop); log more
//! than one refusal warning per [`REFUSAL_LOG_INTERVAL`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// Limits of one listener. Every field is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenLimits {
    /// Time from accept to authentication (TLS handshake with a verified
    /// peer, or the first complete request frame). Default 3 s: a TLS 1.3
    /// handshake is two round trips, so this leaves room for slow mobile
    /// links while an idle socket holds its slot only briefly.
    pub pre_auth_deadline: Duration,
    /// Pre-auth connections from one source (an IPv4 address or an IPv6
    /// /64) at once, once the pre-auth pool is half full. While it is less
    /// than half full a source may take more (a burst of devices behind one
    /// NAT address), so one source never holds more than half the pool, or
    /// this many if that is more. Default 16.
    pub pre_auth_per_source: usize,
    /// Pre-auth connections at once, all sources together. Default 512.
    pub pre_auth_total: usize,
    /// Authenticated connections at once. Default 512.
    pub established_total: usize,
}

impl Default for ListenLimits {
    fn default() -> Self {
        Self {
            pre_auth_deadline: Duration::from_secs(3),
            pre_auth_per_source: 16,
            pre_auth_total: 512,
            established_total: 512,
        }
    }
}

/// Where a connection comes from, for per-source limits: the IPv4 address,
/// or the /64 prefix of an IPv6 address (one subscriber usually holds a
/// whole /64, so counting single IPv6 addresses would bound nothing).
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(SourceKey);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl Source {
    /// The source that `ip` counts against.
    pub fn of(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => Source(SourceKey::V4(v4.octets())),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Source(SourceKey::V6Prefix(prefix))
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SourceKey::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(o)),
            SourceKey::V6Prefix(p) => {
                let mut full = [0u8; 16];
                full[..8].copy_from_slice(&p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
        }
    }
}

/// Why a connection was closed without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The source already holds its share of pre-auth connections, and the
    /// pool is at least half full.
    #[error(
        "this source already has {limit} connections that have not authenticated; let them finish"
    )]
    SourceLimit {
        /// [`ListenLimits::pre_auth_per_source`].
        limit: usize,
    },
    /// The pre-auth pool is full (many sources at once).
    #[error("{limit} connections are already waiting to authenticate; retry shortly")]
    PreAuthFull {
        /// [`ListenLimits::pre_auth_total`].
        limit: usize,
    },
    /// The established pool is full.
    #[error("{limit} authenticated connections are open (the connection limit); retry later")]
    EstablishedFull {
        /// [`ListenLimits::established_total`].
        limit: usize,
    },
}

impl Refusal {
    /// A stable short name, for logs and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Self::SourceLimit { .. } => "source-limit",
            Self::PreAuthFull { .. } => "pre-auth-full",
            Self::EstablishedFull { .. } => "established-full",
        }
    }
}

/// The counts behind a listener's limits. Pure: the loop reports each
/// accept, authentication and close; tests drive it directly.
#[derive(Debug)]
pub struct Admission {
    limits: ListenLimits,
    /// Pre-auth connections per source; a source is removed when its count
    /// reaches zero, so `per_source.len() <= pre_auth`.
    per_source: HashMap<Source, usize>,
    pre_auth: usize,
    established: usize,
}

impl Admission {
    /// Empty pools under `limits`.
    pub fn new(limits: ListenLimits) -> Self {
        Self {
            limits,
            per_source: HashMap::new(),
            pre_auth: 0,
            established: 0,
        }
    }

    /// A connection from `source` was accepted: take a pre-auth slot, or say
    /// why not (then the caller closes it at once).
    pub fn try_pre_auth(&mut self, source: Source) -> Result<(), Refusal> {
        // Nothing that authenticates now could be served.
        if self.established >= self.limits.established_total {
            return Err(Refusal::EstablishedFull {
                limit: self.limits.established_total,
            });
        }
        let held = self.per_source.get(&source).copied().unwrap_or(0);
        // Under pressure (half the pool taken) every source is held to its
        // share; before that a busy source may burst, up to half the pool.
        let pressure = self.pre_auth >= self.limits.pre_auth_total / 2;
        if held >= self.limits.pre_auth_per_source && pressure {
            return Err(Refusal::SourceLimit {
                limit: self.limits.pre_auth_per_source,
            });
        }
        if self.pre_auth >= self.limits.pre_auth_total {
            return Err(Refusal::PreAuthFull {
                limit: self.limits.pre_auth_total,
            });
        }
        self.per_source.insert(source, held + 1);
        self.pre_auth += 1;
        Ok(())
    }

    /// A pre-auth connection from `source` ended (closed, failed, deadline).
    pub fn end_pre_auth(&mut self, source: Source) {
        match self.per_source.get_mut(&source) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.per_source.remove(&source);
            }
            // Not ours to release: a caller bug, but counts stay consistent.
            None => return,
        }
        self.pre_auth = self.pre_auth.saturating_sub(1);
    }

    /// A pre-auth connection from `source` authenticated: it leaves the
    /// pre-auth pool in any case, and enters the established pool if there
    /// is room.
    pub fn try_establish(&mut self, source: Source) -> Result<(), Refusal> {
        self.end_pre_auth(source);
        if self.established >= self.limits.established_total {
            return Err(Refusal::EstablishedFull {
                limit: self.limits.established_total,
            });
        }
        self.established += 1;
        Ok(())
    }

    /// An established connection ended.
    pub fn end_established(&mut self) {
        self.established = self.established.saturating_sub(1);
    }

    /// Pre-auth connections now.
    pub fn pre_auth(&self) -> usize {
        self.pre_auth
    }

    /// Pre-auth connections from `source` now.
    pub fn pre_auth_from(&self, source: Source) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
    }

    /// Sources with a pre-auth connection (the per-source map's size).
    pub fn sources(&self) -> usize {
        self.per_source.len()
    }

    /// Established connections now.
    pub fn established(&self) -> usize {
        self.established
    }
}

/// At most one refusal warning per this interval and listener; the others
/// are counted into the next warning (and each is logged at `debug`).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Rate limit for warnings. Pure: time is passed in.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(n)`: log now, `n` earlier events were not logged.
    fn tick(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < REFUSAL_LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// What happened to a connection, for a binary's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenEvent {
    /// Closed at once, or after authenticating, for a limit.
    Refused(Refusal),
    /// Did not authenticate within [`ListenLimits::pre_auth_deadline`].
    DeadlineExpired,
    /// Authenticated and entered the established pool.
    Established,
    /// An established connection ended.
    Closed,
}

type Observer = Arc<dyn Fn(ListenEvent) + Send + Sync>;

/// What the connection tasks share.
struct Shared {
    name: &'static str,
    limits: ListenLimits,
    admission: Mutex<Admission>,
    throttle: Mutex<Throttle>,
    observer: Option<Observer>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value is consistent between statements; a panic
    // elsewhere must not stop the listener.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn event(&self, e: ListenEvent) {
        if let Some(o) = &self.observer {
            o(e);
        }
    }

    fn refused(&self, peer: SocketAddr, r: Refusal) {
        self.event(ListenEvent::Refused(r));
        debug!(listener = self.name, %peer, code = r.code(), "connection refused: {r}");
        if let Some(suppressed) = lock(&self.throttle).tick(Instant::now()) {
            warn!(listener = self.name, source = %Source::of(peer.ip()), code = r.code(),
                  refused_since_last_warning = suppressed, "connection refused: {r}");
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A pre-auth slot, released on drop unless promoted.
struct PreAuthSlot {
    shared: Arc<Shared>,
    source: Source,
    live: bool,
}

impl PreAuthSlot {
    fn establish(mut self) -> Result<EstablishedSlot, Refusal> {
        self.live = false;
        lock(&self.shared.admission).try_establish(self.source)?;
        self.shared.event(ListenEvent::Established);
        Ok(EstablishedSlot {
            shared: self.shared.clone(),
        })
    }
}

impl Drop for PreAuthSlot {
    fn drop(&mut self) {
        if self.live {
            lock(&self.shared.admission).end_pre_auth(self.source);
        }
    }
}

/// An established slot, released on drop.
struct EstablishedSlot {
    shared: Arc<Shared>,
}

impl Drop for EstablishedSlot {
    fn drop(&mut self) {
        lock(&self.shared.admission).end_established();
        self.shared.event(ListenEvent::Closed);
    }
}

/// A TCP listener whose connections are admitted by [`Admission`].
pub struct BoundedListener {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl fmt::Debug for BoundedListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedListener")
            .field("listener", &self.listener)
            .field("shared", &self.shared)
            .finish()
    }
}

impl BoundedListener {
    /// Bound `listener` by `limits`; `name` labels its log lines.
    pub fn new(listener: TcpListener, name: &'static str, limits: ListenLimits) -> Self {
        Self {
            listener,
            shared: Arc::new(Shared {
                name,
                limits,
                admission: Mutex::new(Admission::new(limits)),
                throttle: Mutex::new(Throttle::default()),
                observer: None,
            }),
        }
    }

    /// Also report every [`ListenEvent`] to `observer` (e.g. metrics). It
    /// runs on the accept path: keep it cheap and non-blocking.
    pub fn observe(mut self, observer: impl Fn(ListenEvent) + Send + Sync + 'static) -> Self {
        // `shared` is only cloned once `serve` runs, so this always applies.
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.observer = Some(Arc::new(observer));
        }
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until the process ends. Each admitted connection runs in its
    /// own task: `authenticate` gets the stream and must return `Some(T)`
    /// once the peer has proven what it must (or `None` to close); it is
    /// dropped, closing the stream, at the pre-auth deadline. Then `session`
    /// serves `T` in an established slot.
    pub async fn serve<T, A, AF, S, SF>(self, authenticate: A, session: S)
    where
        T: Send + 'static,
        A: Fn(TcpStream, SocketAddr) -> AF + Send + Sync + 'static,
        AF: Future<Output = Option<T>> + Send + 'static,
        S: Fn(T, SocketAddr) -> SF + Send + Sync + 'static,
        SF: Future<Output = ()> + Send + 'static,
    {
        let authenticate = Arc::new(authenticate);
        let session = Arc::new(session);
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    warn!(listener = self.shared.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let source = Source::of(peer.ip());
            let admitted = lock(&self.shared.admission).try_pre_auth(source);
            if let Err(r) = admitted {
                // Closed here, at once: the peer learns now instead of
                // waiting in the backlog.
                drop(tcp);
                self.shared.refused(peer, r);
                continue;
            }
            let slot = PreAuthSlot {
                shared: self.shared.clone(),
                source,
                live: true,
            };
            let _ = tcp.set_nodelay(true);
            let (authenticate, session) = (authenticate.clone(), session.clone());
            tokio::spawn(async move {
                let deadline = slot.shared.limits.pre_auth_deadline;
                let proven = match tokio::time::timeout(deadline, authenticate(tcp, peer)).await {
                    Ok(Some(t)) => t,
                    Ok(None) => return,
                    Err(_) => {
                        slot.shared.event(ListenEvent::DeadlineExpired);
                        debug!(listener = slot.shared.name, %peer, ?deadline,
                               "did not authenticate in time; closed");
                        return;
                    }
                };
                let shared = slot.shared.clone();
                let established = match slot.establish() {
                    Ok(e) => e,
                    Err(r) => {
                        drop(proven);
                        shared.refused(peer, r);
                        return;
                    }
                };
                session(proven, peer).await;
                drop(established);
            });
        }
    }
}

/// Whether `e`, from a TLS handshake as a client, means the server closed
/// the connection without a TLS alert before the handshake finished: what a
/// [`BoundedListener`] does over a limit or past the pre-auth deadline. A
/// refusal of a certificate is a TLS error instead, and returns `false`.
pub fn closed_during_handshake(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    let tls_error = e
        .get_ref()
        .is_some_and(|inner| inner.is::<tokio_rustls::rustls::Error>());
    !tls_error
        && matches!(
            e.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
        )
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(last: u8) -> Source {
        Source::of(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }

    fn small() -> ListenLimits {
        ListenLimits {
            pre_auth_deadline: Duration::from_secs(3),
            pre_auth_per_source: 2,
            pre_auth_total: 5,
            established_total: 3,
        }
    }

    #[test]
    fn one_source_gets_only_its_share_of_the_pre_auth_pool() {
        let limits = ListenLimits {
            pre_auth_total: 10,
            ..small()
        };
        let mut a = Admission::new(limits);
        // A quiet pool lets one source burst, up to half of it...
        for _ in 0..5 {
            assert_eq!(a.try_pre_auth(v4(2)), Ok(()));
        }
        // ...and no further.
        assert_eq!(
            a.try_pre_auth(v4(2)),
            Err(Refusal::SourceLimit { limit: 2 })
        );
        // Other sources get the other half, each its share.
        assert_eq!(a.try_pre_auth(v4(1)), Ok(()));
        assert_eq!(a.try_pre_auth(v4(1)), Ok(()));
        assert_eq!(
            a.try_pre_auth(v4(1)),
            Err(Refusal::SourceLimit { limit: 2 })
        );
        assert_eq!(a.try_pre_auth(v4(3)), Ok(()));
        assert_eq!(a.pre_auth_from(v4(2)), 5);
        assert_eq!(a.pre_auth(), 8);
        // A slot freed by the deadline is available again, but under
        // pressure only to a source within its share.
        a.end_pre_auth(v4(2));
        assert!(a.try_pre_auth(v4(2)).is_err());
        assert_eq!(a.try_pre_auth(v4(4)), Ok(()));
    }

    #[test]
    fn the_pre_auth_pool_has_a_total_cap() {
        let mut a = Admission::new(small());
        for i in 10..15 {
            a.try_pre_auth(v4(i)).unwrap();
        }
        assert_eq!(
            a.try_pre_auth(v4(20)),
            Err(Refusal::PreAuthFull { limit: 5 })
        );
    }

    #[test]
    fn authenticated_connections_leave_the_pre_auth_pool_for_their_own() {
        let mut a = Admission::new(small());
        a.try_pre_auth(v4(1)).unwrap();
        a.try_pre_auth(v4(1)).unwrap();
        assert_eq!(a.try_establish(v4(1)), Ok(()));
        assert_eq!(a.try_establish(v4(1)), Ok(()));
        assert_eq!((a.pre_auth(), a.established(), a.sources()), (0, 2, 0));
        // The pre-auth pool filled by idle connections from many sources...
        for i in 10..15 {
            a.try_pre_auth(v4(i)).unwrap();
        }
        // ...leaves the established ones alone, and one that authenticates
        // still gets the last established slot.
        assert_eq!(a.try_establish(v4(10)), Ok(()));
        assert_eq!(a.established(), 3);
        // Now the established pool is full: new connections are closed at
        // accept, and one that authenticates meanwhile is refused.
        assert_eq!(
            a.try_pre_auth(v4(30)),
            Err(Refusal::EstablishedFull { limit: 3 })
        );
        assert_eq!(
            a.try_establish(v4(11)),
            Err(Refusal::EstablishedFull { limit: 3 })
        );
        assert_eq!(a.pre_auth(), 3, "the refused one left the pre-auth pool");
        a.end_established();
        assert_eq!(a.try_pre_auth(v4(30)), Ok(()));
    }

    #[test]
    fn the_per_source_map_never_outgrows_the_pre_auth_cap() {
        let limits = ListenLimits {
            pre_auth_total: 100,
            ..small()
        };
        let mut a = Admission::new(limits);
        let mut admitted = Vec::new();
        // 65,536 distinct sources, each trying twice.
        for i in 0..=u16::MAX {
            let [hi, lo] = i.to_be_bytes();
            let s = Source::of(IpAddr::V4(Ipv4Addr::new(10, 0, hi, lo)));
            for _ in 0..2 {
                if a.try_pre_auth(s).is_ok() {
                    admitted.push(s);
                }
                assert!(a.sources() <= 100 && a.pre_auth() <= 100);
            }
        }
        assert_eq!(admitted.len(), 100);
        for s in admitted {
            a.end_pre_auth(s);
        }
        assert_eq!((a.pre_auth(), a.sources()), (0, 0), "entries are removed");
        // Releasing what was never taken changes nothing.
        a.end_pre_auth(v4(9));
        assert_eq!(a.pre_auth(), 0);
    }

    #[test]
    fn ipv6_sources_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff:0:0:9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a.into()), Source::of(b.into()));
        assert_ne!(Source::of(a.into()), Source::of(c.into()));
        assert_eq!(Source::of(a.into()).to_string(), "2001:db8:1:2::/64");
        let mapped: Ipv6Addr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(Source::of(mapped.into()), v4(2));
        assert_eq!(v4(2).to_string(), "127.0.0.2");
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_skipped() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.tick(t0), Some(0));
        assert_eq!(t.tick(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.tick(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.tick(t0 + REFUSAL_LOG_INTERVAL), Some(2));
        assert_eq!(t.tick(t0 + REFUSAL_LOG_INTERVAL), None);
    }

    #[test]
    fn only_an_alert_free_close_counts_as_closed_during_the_handshake() {
        use std::io::{Error, ErrorKind};
        assert!(closed_during_handshake(&Error::new(
            ErrorKind::UnexpectedEof,
            "tls handshake eof"
        )));
        assert!(closed_during_handshake(&Error::from(
            ErrorKind::ConnectionReset
        )));
        let alert = tokio_rustls::rustls::Error::AlertReceived(
            tokio_rustls::rustls::AlertDescription::BadCertificate,
        );
        assert!(!closed_during_handshake(&Error::new(
            ErrorKind::InvalidData,
            alert
        )));
        assert!(!closed_during_handshake(&Error::from(ErrorKind::TimedOut)));
    }
}
