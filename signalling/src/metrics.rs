//! Prometheus metrics of the control plane, and the embedded relay's, on one
//! `GET /metrics`.
//!
//! The metrics are public prometheus handles so that callers write
//! `metrics.participants.inc()` at the place a thing happens; nothing here
//! needs a lock beyond prometheus' own atomics. Label values are bounded by
//! construction (error codes, HTTP status codes, auth failure reasons, fixed
//! results), never a room name or identity, so a busy server cannot blow up
//! the scrape.
//!
//! The relay keeps its own registry ([`relay::metrics::Metrics`]), fed from
//! `relay::io::Running::snapshot` by whoever owns the running relay (see
//! [`Metrics::update_relay`]); [`Metrics::render`] gathers both registries
//! into one exposition, so one scrape target covers the whole server.
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use relay::turn::stats::Stats;

/// Buckets for HTTP handling time: the REST API answers from memory, so
/// anything past a second is an incident.
const HTTP_SECONDS_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The control plane's metrics. Prefix `rtc_`; the relay's are `rtc_relay_`.
pub struct Metrics {
    registry: Registry,
    /// Open rooms on this node.
    pub rooms: IntGauge,
    /// Rooms created since start.
    pub rooms_created: IntCounter,
    /// Participants in rooms on this node, whatever their state.
    pub participants: IntGauge,
    /// Participants that joined since start.
    pub participants_joined: IntCounter,
    /// Published tracks on this node.
    pub tracks: IntGauge,
    /// Open signalling WebSockets.
    pub ws_connections: IntGauge,
    /// Signalling WebSockets accepted since start.
    pub ws_connections_total: IntCounter,
    /// Signalling messages received from clients.
    pub messages_in: IntCounter,
    /// Signalling messages sent to clients.
    pub messages_out: IntCounter,
    /// Signalling messages dropped because a client's send queue was full.
    pub messages_dropped: IntCounter,
    /// Errors answered to clients (WebSocket and REST), by error code.
    pub errors: IntCounterVec,
    /// Access tokens refused, by reason (`expired`, `bad_signature`, ...).
    pub auth_failures: IntCounterVec,
    /// HTTP responses by status code (including WebSocket upgrades).
    pub http_requests: IntCounterVec,
    /// Time to produce an HTTP response (for a WebSocket, the upgrade).
    pub http_seconds: Histogram,
    /// Webhook deliveries that got a 2xx.
    pub webhook_deliveries: IntCounter,
    /// Delivery attempts that failed and will be retried.
    pub webhook_retries: IntCounter,
    /// Events given up on after the last retry.
    pub webhook_failures: IntCounter,
    /// Events dropped because a URL's queue was full.
    pub webhook_dropped: IntCounter,
    /// Events waiting for delivery, over all URLs.
    pub webhook_queue: IntGauge,
    /// The SFU's ICE-TCP connections open now.
    pub sfu_tcp_connections: IntGauge,
    /// ICE-TCP connections refused because the cap was reached.
    pub sfu_tcp_refused: IntCounter,
    /// ICE-TCP connections closed for sending nothing for a live peer.
    pub sfu_tcp_idle_closed: IntCounter,
    /// Media packets the SFU dropped on the way out, by cause: a
    /// subscriber's full send queue, a full socket buffer, a refused send.
    pub sfu_dropped: IntCounterVec,
    /// Subscribers' downlink estimates restarted because video paused for
    /// bandwidth could not raise them.
    pub sfu_estimate_resets: IntCounter,
    pub sfu_temporal_upswitch_keyframes: IntCounter,
    relay: Option<relay::metrics::Metrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("relay", &self.relay.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(None)
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    // Names are static and unique within this registry, so registration
    // cannot fail; a clash would be a bug caught by the tests.
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric name"))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric name"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric name"),
    )
}

impl Metrics {
    /// `relay_shards`: the embedded relay's shard count, or `None` when it is
    /// off (`--no-turn`), in which case no `rtc_relay_` metrics are exported.
    pub fn new(relay_shards: Option<usize>) -> Self {
        let r = Registry::new();
        let http_seconds = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new("rtc_http_request_duration_seconds", "Time to produce an HTTP response.")
                    .buckets(HTTP_SECONDS_BUCKETS.to_vec()),
            )
            .expect("valid metric name"),
        );
        Metrics {
            rooms: gauge(&r, "rtc_rooms", "Open rooms."),
            rooms_created: counter(&r, "rtc_rooms_created_total", "Rooms created."),
            participants: gauge(&r, "rtc_participants", "Participants in rooms."),
            participants_joined: counter(&r, "rtc_participants_joined_total", "Participants that joined."),
            tracks: gauge(&r, "rtc_tracks", "Published tracks."),
            sfu_tcp_connections: gauge(&r, "rtc_sfu_tcp_connections", "Open ICE-TCP media connections."),
            sfu_tcp_refused: counter(
                &r,
                "rtc_sfu_tcp_refused_total",
                "ICE-TCP media connections refused at the connection cap.",
            ),
            sfu_tcp_idle_closed: counter(
                &r,
                "rtc_sfu_tcp_idle_closed_total",
                "ICE-TCP media connections closed for being idle.",
            ),
            sfu_dropped: counter_vec(
                &r,
                "rtc_sfu_dropped_packets_total",
                "Media packets the SFU dropped on the way out, by cause.",
                "cause",
            ),
            sfu_estimate_resets: counter(
                &r,
                "rtc_sfu_estimate_resets_total",
                "Subscriber downlink estimates restarted to probe the link: video paused for bandwidth, or a wanted layer held back.",
            ),
            sfu_temporal_upswitch_keyframes: counter(
                &r,
                "rtc_sfu_temporal_upswitch_keyframes_total",
                "Keyframes asked for because a subscriber's temporal layer upswitch found no switching point in time.",
            ),
            ws_connections: gauge(&r, "rtc_ws_connections", "Open signalling WebSockets."),
            ws_connections_total: counter(&r, "rtc_ws_connections_total", "Signalling WebSockets accepted."),
            messages_in: counter(&r, "rtc_signal_messages_in_total", "Signalling messages received."),
            messages_out: counter(&r, "rtc_signal_messages_out_total", "Signalling messages sent."),
            messages_dropped: counter(
                &r,
                "rtc_signal_messages_dropped_total",
                "Signalling messages dropped because a client's queue was full.",
            ),
            errors: counter_vec(&r, "rtc_errors_total", "Errors answered to clients, by code.", "code"),
            auth_failures: counter_vec(
                &r,
                "rtc_auth_failures_total",
                "Access tokens refused, by reason.",
                "reason",
            ),
            http_requests: counter_vec(&r, "rtc_http_requests_total", "HTTP responses, by status.", "status"),
            http_seconds,
            webhook_deliveries: counter(&r, "rtc_webhook_deliveries_total", "Webhook events delivered."),
            webhook_retries: counter(
                &r,
                "rtc_webhook_retries_total",
                "Webhook attempts that failed and were retried.",
            ),
            webhook_failures: counter(
                &r,
                "rtc_webhook_failures_total",
                "Webhook events given up on after the last retry.",
            ),
            webhook_dropped: counter(
                &r,
                "rtc_webhook_dropped_total",
                "Webhook events dropped because the queue was full.",
            ),
            webhook_queue: gauge(&r, "rtc_webhook_queue", "Webhook events waiting for delivery."),
            relay: relay_shards.map(relay::metrics::Metrics::new),
            registry: r,
        }
    }

    /// Publishes the embedded relay's merged counters (from
    /// `relay::io::Running::snapshot`); a no-op without a relay.
    pub fn update_relay(&self, stats: &Stats, draining: bool) {
        if let Some(m) = &self.relay {
            m.update(stats, draining);
        }
    }

    /// Copies the SFU's ICE-TCP counters (cumulative, read from the SFU).
    pub fn update_sfu_tcp(&self, stats: &sfu::TcpStats) {
        self.sfu_tcp_connections.set(stats.open as i64);
        for (counter, now) in [
            (&self.sfu_tcp_refused, stats.refused),
            (&self.sfu_tcp_idle_closed, stats.idle_closed),
        ] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
    }

    /// Copies the SFU's outgoing drop counters (cumulative, read from the SFU).
    pub fn update_sfu_drops(&self, stats: &sfu::SfuStats) {
        for (cause, now) in [
            ("queue_full", stats.queue_full_drops),
            ("udp_would_block", stats.udp_would_block),
            ("udp_send_failed", stats.udp_send_failed),
        ] {
            let counter = self.sfu_dropped.with_label_values(&[cause]);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        let resets = &self.sfu_estimate_resets;
        resets.inc_by(stats.estimate_resets.saturating_sub(resets.get()));
        let upswitch = &self.sfu_temporal_upswitch_keyframes;
        upswitch.inc_by(stats.temporal_upswitch_keyframes.saturating_sub(upswitch.get()));
    }

    /// The control plane's registry, for callers that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every metric, the relay's included.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        if let Some(m) = &self.relay {
            families.extend(m.registry().gather());
        }
        let mut out = Vec::new();
        // Encoding into a Vec only fails on malformed families, which
        // registered collectors never produce.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Counts an access token refusal under a stable, low-cardinality reason.
    pub fn auth_failure(&self, e: &crate::auth::AuthError) {
        use crate::auth::AuthError;
        let reason = match e {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
        };
        self.auth_failures.with_label_values(&[reason]).inc();
    }
}

/// `GET /metrics`, to merge into the application router.
pub fn routes(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], metrics.render()).into_response()
}

/// Middleware counting every HTTP response by status and timing it; apply
/// with `axum::middleware::from_fn_with_state(metrics, metrics::track_http)`.
pub async fn track_http(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    // No route label: status alone keeps the series bounded even when
    // clients probe random paths.
    let start = Instant::now();
    let response = next.run(req).await;
    metrics.http_seconds.observe(start.elapsed().as_secs_f64());
    metrics
        .http_requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    if let Some(crate::api::error::ErrorCode(code)) = response.extensions().get() {
        metrics.errors.with_label_values(&[code]).inc();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_control_plane_and_relay() {
        let m = Metrics::new(Some(2));
        m.participants.inc();
        m.rooms.set(3);
        m.errors.with_label_values(&["not_found"]).inc();
        m.auth_failure(&crate::auth::AuthError::Expired);
        let stats = Stats {
            allocations: 7,
            ..Stats::default()
        };
        m.update_relay(&stats, false);
        let text = m.render();
        for line in [
            "rtc_participants 1",
            "rtc_rooms 3",
            "rtc_errors_total{code=\"not_found\"} 1",
            "rtc_auth_failures_total{reason=\"expired\"} 1",
            "rtc_relay_allocations 7",
            "rtc_relay_shards 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn sfu_tcp_counters_follow_the_sfu() {
        let m = Metrics::new(None);
        let stats = |open, refused, idle_closed| sfu::TcpStats {
            open,
            refused,
            idle_closed,
        };
        m.update_sfu_tcp(&stats(3, 2, 1));
        // Read again: cumulative counts are not added twice.
        m.update_sfu_tcp(&stats(1, 5, 1));
        let text = m.render();
        for line in [
            "rtc_sfu_tcp_connections 1",
            "rtc_sfu_tcp_refused_total 5",
            "rtc_sfu_tcp_idle_closed_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn sfu_drop_counters_follow_the_sfu() {
        let m = Metrics::new(None);
        let stats = |queue_full_drops, udp_would_block| sfu::SfuStats {
            queue_full_drops,
            udp_would_block,
            udp_send_failed: 0,
            estimate_resets: queue_full_drops / 2,
            temporal_upswitch_keyframes: udp_would_block * 3,
        };
        m.update_sfu_drops(&stats(4, 1));
        m.update_sfu_drops(&stats(9, 1));
        let text = m.render();
        for line in [
            "rtc_sfu_dropped_packets_total{cause=\"queue_full\"} 9",
            "rtc_sfu_dropped_packets_total{cause=\"udp_would_block\"} 1",
            "rtc_sfu_dropped_packets_total{cause=\"udp_send_failed\"} 0",
            "rtc_sfu_estimate_resets_total 4",
            "rtc_sfu_temporal_upswitch_keyframes_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn no_relay_no_relay_metrics() {
        let m = Metrics::new(None);
        m.update_relay(&Stats::default(), true);
        m.messages_in.inc();
        let text = m.render();
        assert!(text.contains("rtc_signal_messages_in_total 1"));
        assert!(!text.contains("rtc_relay_"), "{text}");
    }
}
