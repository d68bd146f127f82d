//! Operational metrics, and the Prometheus text endpoint that serves them
//! on a separate (loopback by default) port.
//!
//! Must never: put anything a client sent into a metric (no model ids from
//! requests, no tensor values, no peer measurements): labels come from a
//! fixed set chosen here, so neither secrets nor unbounded label sets reach
//! the scraper.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use protocol::{BoundedListener, ListenLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Label of the errors counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorKind {
    /// A fixed name, e.g. `busy`, `bad-input`, `unknown-model`.
    pub kind: &'static str,
}

/// Every metric the runtime exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Inference requests received.
    pub requests: Counter,
    /// Requests answered with an error, by kind.
    pub errors: Family<ErrorKind, Counter>,
    /// Inferences running or queued.
    pub queue_depth: Gauge,
    /// Open device connections.
    pub connections: Gauge,
    /// Seconds from a request's arrival to its response being ready.
    pub latency: Histogram,
    /// Requests whose model was already loaded.
    pub cache_hits: Counter,
    /// Requests that had to load (or wait for) their model.
    pub cache_misses: Counter,
    /// Bundles read from the blob store.
    pub store_reads: Counter,
    /// Bytes of loaded models in the cache.
    pub cache_bytes: Gauge,
    /// Peers whose attested TLS handshake failed.
    pub attestation_failures: Counter,
}

impl Metrics {
    /// All metrics at zero.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("realm_runtime");
        let m = Metrics {
            requests: Counter::default(),
            errors: Family::default(),
            queue_depth: Gauge::default(),
            connections: Gauge::default(),
            // 50 µs .. ~26 s
            latency: Histogram::new(exponential_buckets(50e-6, 2.0, 20)),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            store_reads: Counter::default(),
            cache_bytes: Gauge::default(),
            attestation_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Inference requests received",
            m.requests.clone(),
        );
        registry.register(
            "errors",
            "Requests answered with an error, by kind",
            m.errors.clone(),
        );
        registry.register(
            "queue_depth",
            "Inferences running or queued",
            m.queue_depth.clone(),
        );
        registry.register(
            "connections",
            "Open device connections",
            m.connections.clone(),
        );
        registry.register(
            "request_seconds",
            "Time from request to response",
            m.latency.clone(),
        );
        registry.register(
            "model_cache_hits",
            "Requests served from a loaded model",
            m.cache_hits.clone(),
        );
        registry.register(
            "model_cache_misses",
            "Requests that loaded their model",
            m.cache_misses.clone(),
        );
        registry.register(
            "store_reads",
            "Sealed bundles read from the blob store",
            m.store_reads.clone(),
        );
        registry.register(
            "model_cache_bytes",
            "Bytes of loaded models held in the cache",
            m.cache_bytes.clone(),
        );
        registry.register(
            "attestation_failures",
            "Peers refused during the attested TLS handshake",
            m.attestation_failures.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// Count an error of `kind`.
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorKind { kind }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Admission of scrapers: a Prometheus server opens one connection per
/// scrape, so a few per source are plenty.
pub const METRICS_LIMITS: ListenLimits = ListenLimits {
    pre_auth_deadline: Duration::from_secs(3),
    pre_auth_per_source: 4,
    pre_auth_total: 32,
    established_total: 16,
};

/// Largest request head read.
const MAX_HEAD: usize = 8192;

/// Serve `GET /metrics` on `listener` until the process ends. Anything else
/// gets 404. The request head (at most 8 KiB) must arrive within the
/// pre-auth deadline of [`METRICS_LIMITS`] (3 s), and connections are capped
/// per source and in total by the shared bounded listener.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    BoundedListener::new(listener, "metrics", METRICS_LIMITS)
        .serve(read_head, move |(tcp, head), _| {
            respond(tcp, head, metrics.clone())
        })
        .await
}

/// The pre-auth phase: the request head, or `None` if the client closed first.
async fn read_head(mut tcp: TcpStream, _: std::net::SocketAddr) -> Option<(TcpStream, Vec<u8>)> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some((tcp, head))
}

async fn respond(mut tcp: TcpStream, head: Vec<u8>, metrics: Arc<Metrics>) {
    let (status, body) = if head.starts_with(b"GET /metrics ") {
        ("200 OK", metrics.render())
    } else {
        (
            "404 Not Found",
            "only GET /metrics is served here\n".to_string(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A client that does not read its answer loses its slot after 5 s.
    match tokio::time::timeout(Duration::from_secs(5), tcp.write_all(response.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("metrics client: {e}"),
        Err(_) => warn!("metrics client did not read its answer in time"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        let m = Metrics::new();
        m.requests.inc();
        m.error("busy");
        m.latency.observe(0.002);
        let text = m.render();
        for name in [
            "realm_runtime_requests_total 1",
            "realm_runtime_errors_total{kind=\"busy\"} 1",
            "realm_runtime_queue_depth",
            "realm_runtime_request_seconds_count 1",
            "realm_runtime_model_cache_hits_total",
            "realm_runtime_model_cache_misses_total",
            "realm_runtime_store_reads_total",
            "realm_runtime_attestation_failures_total",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[tokio::test]
    async fn http_endpoint() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Metrics::new();
        m.store_reads.inc();
        tokio::spawn(serve(listener, m));
        let get = |req: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("realm_runtime_store_reads_total 1"), "{ok}");
        let nf = get("GET / HTTP/1.1\r\n\r\n").await;
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
    }
}
