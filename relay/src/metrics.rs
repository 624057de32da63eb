//! Prometheus metrics and their HTTP listener.
//!
//! The shards keep plain counters ([`Stats`]) and the shell hands a merged
//! snapshot to [`Metrics::update`] about once a second. A scrape renders the
//! latest snapshot, so the packet path never touches the registry. Everything
//! is exported through one custom [`Collector`]: the snapshot already holds
//! cumulative counters and histogram bucket counts, which prometheus's own
//! `Counter` and `Histogram` types cannot be set from.
//!
//! The HTTP side is a deliberately tiny HTTP/1.1 server (one request per
//! connection) instead of a web framework, to keep the relay binary small:
//! `GET /metrics` and `GET /healthz`, nothing else.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::turn::stats::{Stats, AUTH_FAILURES, DROP_CAUSES, LIFETIME_BUCKETS};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Longest request head accepted; a scraper's is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client that has not finished its request by then is dropped, so idle
/// or slow connections cannot pile up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes are rare; more parallel connections than this is abuse.
const MAX_CONNECTIONS: usize = 32;

#[derive(Clone, Default)]
struct Snapshot {
    stats: Stats,
    draining: bool,
}

/// The relay's metrics registry, fed with [`Stats`] snapshots.
pub struct Metrics {
    registry: Registry,
    latest: Arc<Mutex<Snapshot>>,
}

impl Metrics {
    /// `shards` is exported as `rtc_relay_shards`.
    pub fn new(shards: usize) -> Self {
        let latest = Arc::new(Mutex::new(Snapshot::default()));
        let registry = Registry::new();
        registry
            .register(Box::new(StatsCollector::new(latest.clone(), shards)))
            .expect("static metric descriptions are valid and registered once");
        Metrics { registry, latest }
    }

    /// Publishes the merged stats of all shards and whether the relay is draining.
    pub fn update(&self, stats: &Stats, draining: bool) {
        let mut s = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        s.stats.clone_from(stats);
        s.draining = draining;
    }

    /// The registry, for callers that want to add their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid families, which the
        // collector never builds.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Names, help and types of the exported families, in one table so that
/// `desc()` and `collect()` cannot disagree.
const FAMILIES: &[(&str, &str, MetricType, &[&str])] = &[
    ("rtc_relay_allocations", "Current allocations.", MetricType::GAUGE, &[]),
    ("rtc_relay_permissions", "Current permissions.", MetricType::GAUGE, &[]),
    (
        "rtc_relay_channels",
        "Current channel bindings.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "rtc_relay_tcp_connections",
        "Current RFC 6062 peer TCP connections.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "rtc_relay_allocations_created_total",
        "Allocations created.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "rtc_relay_packets_total",
        "Relayed packets.",
        MetricType::COUNTER,
        &["direction"],
    ),
    (
        "rtc_relay_bytes_total",
        "Relayed payload bytes.",
        MetricType::COUNTER,
        &["direction"],
    ),
    (
        "rtc_relay_drops_total",
        "Packets and requests dropped without an answer.",
        MetricType::COUNTER,
        &["cause"],
    ),
    (
        "rtc_relay_auth_failures_total",
        "Authentication failures.",
        MetricType::COUNTER,
        &["reason"],
    ),
    (
        "rtc_relay_requests_total",
        "STUN/TURN requests handled.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "rtc_relay_error_responses_total",
        "Error responses sent.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "rtc_relay_allocation_lifetime_seconds",
        "How long ended allocations lived.",
        MetricType::HISTOGRAM,
        &[],
    ),
    (
        "rtc_relay_draining",
        "1 while the relay drains before shutdown.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "rtc_relay_shards",
        "Shards (threads) relaying traffic.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        MetricType::GAUGE,
        &[],
    ),
    ("process_open_fds", "Open file descriptors.", MetricType::GAUGE, &[]),
];

struct StatsCollector {
    descs: Vec<Desc>,
    latest: Arc<Mutex<Snapshot>>,
    shards: usize,
}

impl StatsCollector {
    fn new(latest: Arc<Mutex<Snapshot>>, shards: usize) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _, labels)| {
                let labels = labels.iter().map(|l| l.to_string()).collect();
                Desc::new(name.to_string(), help.to_string(), labels, HashMap::new())
                    .expect("static metric descriptions are valid")
            })
            .collect();
        StatsCollector { descs, latest, shards }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn gauge(v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    Metric::from_gauge(g)
}

fn counter(v: u64, label: &[(&str, &str)]) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::from_label(labels(label));
    m.set_counter(c);
    m
}

fn histogram(counts: &[u64], sum: f64) -> Metric {
    let mut cumulative = 0;
    let buckets = LIFETIME_BUCKETS
        .iter()
        .zip(counts)
        .map(|(bound, n)| {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut h = Histogram::default();
    h.set_bucket(buckets);
    // The last count is the +Inf bucket, which the encoder writes from the total.
    h.set_sample_count(counts.iter().sum());
    h.set_sample_sum(sum);
    let mut m = Metric::default();
    m.set_histogram(h);
    m
}

/// Resident set size from /proc/self/statm; `None` off Linux.
fn resident_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| (pages * page as u64) as f64)
}

fn open_fds() -> Option<f64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}

impl Collector for StatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snap = self.latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let s = &snap.stats;
        let mut out = Vec::with_capacity(FAMILIES.len());
        for (name, help, kind, _) in FAMILIES {
            let metrics = match *name {
                "rtc_relay_allocations" => vec![gauge(s.allocations as f64)],
                "rtc_relay_permissions" => vec![gauge(s.permissions as f64)],
                "rtc_relay_channels" => vec![gauge(s.channels as f64)],
                "rtc_relay_tcp_connections" => vec![gauge(s.tcp_connections as f64)],
                "rtc_relay_allocations_created_total" => vec![counter(s.allocations_created, &[])],
                "rtc_relay_packets_total" => vec![
                    counter(s.packets_to_peer, &[("direction", "to_peer")]),
                    counter(s.packets_to_client, &[("direction", "to_client")]),
                ],
                "rtc_relay_bytes_total" => vec![
                    counter(s.bytes_to_peer, &[("direction", "to_peer")]),
                    counter(s.bytes_to_client, &[("direction", "to_client")]),
                ],
                "rtc_relay_drops_total" => DROP_CAUSES
                    .iter()
                    .zip(s.drops)
                    .map(|(c, n)| counter(n, &[("cause", c)]))
                    .collect(),
                "rtc_relay_auth_failures_total" => AUTH_FAILURES
                    .iter()
                    .zip(s.auth_failures)
                    .map(|(r, n)| counter(n, &[("reason", r)]))
                    .collect(),
                "rtc_relay_requests_total" => vec![counter(s.requests, &[])],
                "rtc_relay_error_responses_total" => vec![counter(s.error_responses, &[])],
                "rtc_relay_allocation_lifetime_seconds" => vec![histogram(&s.lifetime_counts, s.lifetime_sum_secs)],
                "rtc_relay_draining" => vec![gauge(if snap.draining { 1.0 } else { 0.0 })],
                "rtc_relay_shards" => vec![gauge(self.shards as f64)],
                "process_resident_memory_bytes" => resident_bytes().map(gauge).into_iter().collect(),
                "process_open_fds" => open_fds().map(gauge).into_iter().collect(),
                _ => Vec::new(),
            };
            let mut mf = MetricFamily::default();
            mf.set_name(name.to_string());
            mf.set_help(help.to_string());
            mf.set_field_type(*kind);
            mf.set_metric(metrics);
            out.push(mf);
        }
        out
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the task is dropped.
pub async fn serve(metrics: Arc<Metrics>, addr: SocketAddr) -> std::io::Result<()> {
    serve_listener(metrics, TcpListener::bind(addr).await?).await
}

/// [`serve`] on a listener the caller bound (tests bind port 0).
pub async fn serve_listener(metrics: Arc<Metrics>, listener: TcpListener) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            // Per-connection failures (reset before accept, fd exhaustion)
            // must not take the metrics endpoint down for good.
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(&metrics, stream)).await;
            drop(permit);
        });
    }
}

async fn handle(metrics: &Metrics, mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST_HEAD];
    let mut len = 0;
    let head_end = loop {
        if let Some(i) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i);
        }
        if len == buf.len() {
            break None;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    };
    let (status, content_type, body) = match head_end {
        None => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n".to_string(),
        ),
        Some(end) => respond(metrics, &buf[..end]),
    };
    let head_only = buf.starts_with(b"HEAD ");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await?;
    if head_end.is_none() {
        // Closing with unread input makes the kernel send RST, which can
        // destroy the 431 before the client reads it; swallow a bounded tail.
        let mut drained = 0;
        while drained < 64 * 1024 {
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
    Ok(())
}

fn respond(metrics: &Metrics, head: &[u8]) -> (&'static str, &'static str, String) {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return ("400 Bad Request", "text/plain", "bad request\n".into());
    }
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", "text/plain", "method not allowed\n".into());
    }
    match target.split('?').next().unwrap_or("") {
        "/metrics" => ("200 OK", CONTENT_TYPE, metrics.render()),
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::stats::{AuthFailure, Drop};

    fn sample() -> Stats {
        let mut s = Stats {
            allocations: 3,
            permissions: 5,
            channels: 2,
            tcp_connections: 1,
            allocations_created: 17,
            packets_to_peer: 1000,
            bytes_to_peer: 123_456,
            packets_to_client: 900,
            bytes_to_client: 98_765,
            requests: 250,
            error_responses: 40,
            ..Default::default()
        };
        s.drop(Drop::NoPermission);
        s.drop(Drop::NoPermission);
        s.drop(Drop::Malformed);
        s.auth_failure(AuthFailure::Missing);
        s.auth_failure(AuthFailure::StaleNonce);
        s.allocation_ended(5.0);
        s.allocation_ended(45.0);
        s.allocation_ended(100_000.0);
        s
    }

    #[test]
    fn render_after_update() {
        let m = Metrics::new(4);
        m.update(&sample(), true);
        let text = m.render();
        for line in [
            "# TYPE rtc_relay_allocations gauge",
            "rtc_relay_allocations 3",
            "rtc_relay_permissions 5",
            "rtc_relay_channels 2",
            "rtc_relay_tcp_connections 1",
            "# TYPE rtc_relay_allocations_created_total counter",
            "rtc_relay_allocations_created_total 17",
            "rtc_relay_packets_total{direction=\"to_peer\"} 1000",
            "rtc_relay_packets_total{direction=\"to_client\"} 900",
            "rtc_relay_bytes_total{direction=\"to_peer\"} 123456",
            "rtc_relay_bytes_total{direction=\"to_client\"} 98765",
            "rtc_relay_drops_total{cause=\"no_permission\"} 2",
            "rtc_relay_drops_total{cause=\"malformed\"} 1",
            "rtc_relay_drops_total{cause=\"send_failed\"} 0",
            "rtc_relay_auth_failures_total{reason=\"missing\"} 1",
            "rtc_relay_auth_failures_total{reason=\"stale_nonce\"} 1",
            "rtc_relay_auth_failures_total{reason=\"wrong_user\"} 0",
            "rtc_relay_requests_total 250",
            "rtc_relay_error_responses_total 40",
            "# TYPE rtc_relay_allocation_lifetime_seconds histogram",
            "rtc_relay_allocation_lifetime_seconds_bucket{le=\"1\"} 0",
            "rtc_relay_allocation_lifetime_seconds_bucket{le=\"10\"} 1",
            "rtc_relay_allocation_lifetime_seconds_bucket{le=\"30\"} 1",
            "rtc_relay_allocation_lifetime_seconds_bucket{le=\"60\"} 2",
            "rtc_relay_allocation_lifetime_seconds_bucket{le=\"86400\"} 2",
            "rtc_relay_allocation_lifetime_seconds_bucket{le=\"+Inf\"} 3",
            "rtc_relay_allocation_lifetime_seconds_sum 100050",
            "rtc_relay_allocation_lifetime_seconds_count 3",
            "rtc_relay_draining 1",
            "rtc_relay_shards 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        if cfg!(target_os = "linux") {
            assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        }
        // Every drop cause and auth failure reason is exported, even at 0, so
        // rate() works from the first scrape.
        assert_eq!(text.matches("rtc_relay_drops_total{").count(), DROP_CAUSES.len());
        assert_eq!(
            text.matches("rtc_relay_auth_failures_total{").count(),
            AUTH_FAILURES.len()
        );

        m.update(&Stats::default(), false);
        let text = m.render();
        assert!(text.lines().any(|l| l == "rtc_relay_draining 0"));
        assert!(text.lines().any(|l| l == "rtc_relay_allocations 0"));
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let m = Arc::new(Metrics::new(2));
        m.update(&sample(), false);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_listener(m.clone(), listener));

        let resp = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").await;
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert!(body.lines().any(|l| l == "rtc_relay_allocations 3"), "{body}");
        assert!(body.lines().any(|l| l == "rtc_relay_shards 2"), "{body}");

        let resp = get(addr, "GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            resp.starts_with("HTTP/1.1 200 OK\r\n") && resp.ends_with("\r\n\r\nok\n"),
            "{resp}"
        );

        let resp = get(addr, "GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 404 "), "{resp}");

        let resp = get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 405 "), "{resp}");

        let resp = get(addr, "HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            resp.starts_with("HTTP/1.1 200 ") && resp.ends_with("\r\n\r\n"),
            "{resp}"
        );

        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST_HEAD));
        let resp = get(addr, &huge).await;
        assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");

        server.abort();
    }
}
