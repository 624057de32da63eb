//! The signalling counters of `/metrics` move with real traffic: messages in
//! and out of WebSockets, messages dropped for a slow client, and errors by
//! code from both the WebSocket protocol and the REST API. Each test has its
//! own server and so its own registry, so exact counts are deterministic;
//! a count is polled (bounded) because the server increments it just after
//! the write the client has already seen.
mod common;

use common::*;
use serde_json::json;

/// The value of one sample line (`name` with its labels, exactly as
/// exposed), 0 when absent.
async fn metric(s: &Server, sample: &str) -> u64 {
    let resp = s.http.get(format!("{}/metrics", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Polls until `sample` reaches `want` (bounded by [`WAIT`]), then checks it is exactly that.
async fn expect_metric(s: &Server, sample: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = metric(s, sample).await;
        if got >= want || tokio::time::Instant::now() >= deadline {
            assert_eq!(got, want, "{sample}");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn messages_and_errors_are_counted() {
    let s = start().await;
    for sample in [
        "rtc_signal_messages_in_total",
        "rtc_signal_messages_out_total",
        "rtc_signal_messages_dropped_total",
    ] {
        assert_eq!(metric(&s, sample).await, 0, "{sample}");
    }

    // In: join, a malformed message, a subscribe to nothing, the sync ping.
    // Out: joined, two errors, the pong.
    let (mut c, _) = s.join("r", "alice").await;
    c.send_raw(tokio_tungstenite::tungstenite::Message::text("not json"))
        .await;
    c.send(json!({"v": 1, "type": "subscribe", "track_sid": "TR_nope"}))
        .await;
    let before_pong = c.sync().await;
    assert_eq!(before_pong.len(), 2, "{before_pong:?}");
    expect_metric(&s, "rtc_signal_messages_in_total", 4).await;
    expect_metric(&s, "rtc_signal_messages_out_total", 4).await;
    expect_metric(&s, "rtc_errors_total{code=\"malformed_message\"}", 1).await;
    expect_metric(&s, "rtc_errors_total{code=\"track_not_found\"}", 1).await;

    // REST errors, from a handler, an extractor and the fallback, and a
    // refused WebSocket upgrade.
    let (status, _) = s.call("GET", "/v1/rooms", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = s.call("GET", "/v1/rooms/none", Some(&admin()), None).await;
    assert_eq!(status, 404);
    let (status, _) = s.call("POST", "/v1/rooms", Some(&admin()), Some("{")).await;
    assert_eq!(status, 400);
    let (status, _) = s.call("GET", "/v1/no-such-thing", None, None).await;
    assert_eq!(status, 404);
    let (status, _) = s
        .call("GET", "/v1/rtc", Some(&token("x", Default::default())), None)
        .await;
    assert_eq!(status, 403);
    expect_metric(&s, "rtc_errors_total{code=\"unauthorized\"}", 1).await;
    expect_metric(&s, "rtc_errors_total{code=\"room_not_found\"}", 1).await;
    expect_metric(&s, "rtc_errors_total{code=\"invalid_argument\"}", 1).await;
    expect_metric(&s, "rtc_errors_total{code=\"not_found\"}", 1).await;
    expect_metric(&s, "rtc_errors_total{code=\"permission_denied\"}", 1).await;
    // Successful calls count nothing.
    let (status, _) = s.call("GET", "/v1/rooms", Some(&admin()), None).await;
    assert_eq!(status, 200);
    expect_metric(&s, "rtc_errors_total{code=\"unauthorized\"}", 1).await;
}

#[tokio::test]
async fn messages_for_a_slow_client_are_counted_as_dropped() {
    let mut settings = settings();
    settings.session.burst = 10_000.0;
    settings.session.messages_per_s = 10_000.0;
    settings.rooms.outbound_queue = 8;
    settings.api.burst = 1e9;
    let s = start_with(settings).await;
    let (_slow, _) = s.join("r", "slow").await; // never reads
    let (mut fast, _) = s.join("r", "fast").await;
    let payload = "x".repeat(60 * 1024);
    // Flood until the server gives up on the reader (kernel buffers absorb the first few MB).
    let mut dropped = 0;
    for _ in 0..2000 {
        fast.send(json!({"v": 1, "type": "data", "payload": payload})).await;
        dropped = metric(&s, "rtc_signal_messages_dropped_total").await;
        if dropped > 0 {
            break;
        }
    }
    assert!(dropped > 0, "no message counted as dropped");
    assert!(fast.sync().await.is_empty());
}
