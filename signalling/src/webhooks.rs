//! Webhooks: room and participant events POSTed as JSON to configured URLs.
//!
//! [`Webhooks::send`] never waits: it serialises and signs the event once
//! and offers it to a bounded queue per URL, dropping it (and counting the
//! drop) when a receiver has fallen that far behind. One task per URL
//! delivers in order with exponential backoff, so a slow or dead receiver
//! delays only its own events and never the signalling path.
//!
//! Each request carries `X-Rtc-Key: <api key>` and
//! `X-Rtc-Signature: sha256=<hex HMAC-SHA256 of the body with that key's
//! secret>`; [`verify_signature`] is the receiver's side. The body holds a
//! unique `id` and `created_at`, so a receiver can drop duplicates (a retry
//! after a lost response) and replays.
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::model::{new_sid, now_ms, Participant, Room, Track};

/// Header naming the API key whose secret signed the body.
pub const KEY_HEADER: &str = "x-rtc-key";
/// Header carrying `sha256=<hex hmac>` of the body.
pub const SIGNATURE_HEADER: &str = "x-rtc-signature";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RoomStarted,
    RoomFinished,
    ParticipantJoined,
    ParticipantLeft,
    TrackPublished,
    TrackUnpublished,
}

/// One webhook body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub event: EventKind,
    /// Unique per event (`EV_...`), the same on every retry.
    pub id: String,
    /// Unix milliseconds.
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<Room>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<Participant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<Track>,
}

impl WebhookEvent {
    pub fn new(event: EventKind) -> Self {
        WebhookEvent {
            event,
            id: new_sid("EV"),
            created_at: now_ms(),
            room: None,
            participant: None,
            track: None,
        }
    }
    pub fn room_started(room: Room) -> Self {
        WebhookEvent::new(EventKind::RoomStarted).with_room(room)
    }
    pub fn room_finished(room: Room) -> Self {
        WebhookEvent::new(EventKind::RoomFinished).with_room(room)
    }
    pub fn participant_joined(room: Room, participant: Participant) -> Self {
        WebhookEvent::new(EventKind::ParticipantJoined)
            .with_room(room)
            .with_participant(participant)
    }
    pub fn participant_left(room: Room, participant: Participant) -> Self {
        WebhookEvent::new(EventKind::ParticipantLeft)
            .with_room(room)
            .with_participant(participant)
    }
    pub fn track_published(room: Room, participant: Participant, track: Track) -> Self {
        WebhookEvent::new(EventKind::TrackPublished)
            .with_room(room)
            .with_participant(participant)
            .with_track(track)
    }
    pub fn track_unpublished(room: Room, participant: Participant, track: Track) -> Self {
        WebhookEvent::new(EventKind::TrackUnpublished)
            .with_room(room)
            .with_participant(participant)
            .with_track(track)
    }
    pub fn with_room(mut self, room: Room) -> Self {
        self.room = Some(room);
        self
    }
    pub fn with_participant(mut self, participant: Participant) -> Self {
        self.participant = Some(participant);
        self
    }
    pub fn with_track(mut self, track: Track) -> Self {
        self.track = Some(track);
        self
    }
}

/// Delivery tuning; [`Default`] is what the server uses.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// Attempts per event, the first included.
    pub tries: u32,
    /// Wait before the first retry; doubles after each.
    pub backoff: Duration,
    /// Events queued per URL before new ones are dropped.
    pub queue: usize,
    /// Whole-request timeout of one attempt.
    pub timeout: Duration,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        // 5 tries over about 4 s of backoff rides out a receiver restart
        // without holding a queue slot for long.
        WebhookOptions {
            tries: 5,
            backoff: Duration::from_millis(250),
            queue: 1024,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("--webhook-url {url:?}: expected an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

/// A signed body, shared by every URL's queue.
struct Signed {
    id: String,
    event: EventKind,
    body: Bytes,
    signature: String,
}

struct Inner {
    queues: Vec<mpsc::Sender<Arc<Signed>>>,
    secret: ring::hmac::Key,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// The webhook sender; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("urls", &self.inner.queues.len())
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Starts one delivery task per URL; must be called inside a tokio runtime
    /// when `urls` is not empty. With no URLs, `send` is a no-op.
    pub fn new(
        urls: Vec<String>,
        api_key: String,
        secret: String,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WebhookError> {
        Webhooks::with_options(urls, api_key, secret, metrics, WebhookOptions::default())
    }

    /// [`Webhooks::new`] without any URL, for tests and `--webhook-url`-less servers.
    pub fn disabled(metrics: Arc<Metrics>) -> Self {
        Webhooks::with_options(
            Vec::new(),
            String::new(),
            String::new(),
            metrics,
            WebhookOptions::default(),
        )
        .unwrap_or_else(|_| unreachable!("no URL, no client to build"))
    }

    pub fn with_options(
        urls: Vec<String>,
        api_key: String,
        secret: String,
        metrics: Arc<Metrics>,
        options: WebhookOptions,
    ) -> Result<Self, WebhookError> {
        for url in &urls {
            check_url(url)?;
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        if !urls.is_empty() {
            let client = reqwest::Client::builder()
                .timeout(options.timeout)
                .connect_timeout(options.timeout.min(Duration::from_secs(5)))
                // A signed event goes where the operator said, not wherever
                // a receiver redirects it.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("rtc-server/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| WebhookError::Client(e.to_string()))?;
            for url in urls {
                let (tx, rx) = mpsc::channel(options.queue.max(1));
                queues.push(tx);
                let d = Delivery {
                    client: client.clone(),
                    url,
                    api_key: api_key.clone(),
                    options: options.clone(),
                    metrics: metrics.clone(),
                };
                tasks.push(tokio::spawn(d.run(rx, shutdown_rx.clone())));
            }
        }
        Ok(Webhooks {
            inner: Arc::new(Inner {
                queues,
                secret: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
                metrics,
                shutdown,
                tasks: std::sync::Mutex::new(tasks),
            }),
        })
    }

    /// Whether any URL is configured (callers may skip building events).
    pub fn is_enabled(&self) -> bool {
        !self.inner.queues.is_empty()
    }

    /// Queues `event` for every URL without waiting; drops it for a URL
    /// whose queue is full or that has shut down.
    pub fn send(&self, event: WebhookEvent) {
        let inner = &self.inner;
        if inner.queues.is_empty() {
            return;
        }
        let body = match serde_json::to_vec(&event) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                // Plain data always serialises; if it ever does not, that
                // is a bug to see in the logs, not a reason to stop.
                tracing::error!(error = %e, event = ?event.event, "cannot serialise webhook event");
                return;
            }
        };
        let signed = Arc::new(Signed {
            signature: signature_header(&inner.secret, &body),
            id: event.id,
            event: event.event,
            body,
        });
        for q in &inner.queues {
            match q.try_send(signed.clone()) {
                Ok(()) => inner.metrics.webhook_queue.inc(),
                Err(_) => {
                    inner.metrics.webhook_dropped.inc();
                    tracing::warn!(id = %signed.id, event = ?signed.event, "webhook queue full or closed, event dropped");
                }
            }
        }
    }

    /// Stops taking events and gives the queued ones up to `timeout` to be
    /// delivered (with their retries); what is left then is abandoned.
    pub async fn shutdown(&self, timeout: Duration) {
        self.inner.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(timeout, futures_util::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!("webhook delivery did not finish before shutdown; remaining events abandoned");
            for a in aborts {
                a.abort();
            }
        }
    }
}

/// Whether `url` is an absolute http(s) URL with a host.
pub fn valid_url(url: &str) -> bool {
    reqwest::Url::parse(url)
        .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .unwrap_or(false)
}

fn check_url(url: &str) -> Result<(), WebhookError> {
    if valid_url(url) {
        Ok(())
    } else {
        Err(WebhookError::BadUrl { url: url.to_string() })
    }
}

fn signature_header(key: &ring::hmac::Key, body: &[u8]) -> String {
    let tag = ring::hmac::sign(key, body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The `X-Rtc-Signature` value for `body` signed with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    signature_header(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()), body)
}

/// A receiver's check of `X-Rtc-Signature`, in constant time.
pub fn verify_signature(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Some(tag) = decode_hex(hex) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, body, &tag).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(((*hi as char).to_digit(16)? << 4 | (*lo as char).to_digit(16)?) as u8),
            _ => None,
        })
        .collect()
}

/// What one attempt's outcome means for the next.
enum Outcome {
    Delivered,
    Retry(String),
    GiveUp(String),
}

struct Delivery {
    client: reqwest::Client,
    url: String,
    api_key: String,
    options: WebhookOptions,
    metrics: Arc<Metrics>,
}

impl Delivery {
    async fn run(self, mut rx: mpsc::Receiver<Arc<Signed>>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = tokio::select! {
                biased;
                m = rx.recv() => m,
                // `is_ok` drops the borrow guard before the next await.
                _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => {
                    // Deliver what was queued before the shutdown, then stop.
                    rx.close();
                    rx.recv().await
                }
            };
            let Some(event) = next else { return };
            self.metrics.webhook_queue.dec();
            self.deliver(&event).await;
        }
    }

    async fn deliver(&self, event: &Signed) {
        let mut wait = self.options.backoff;
        let tries = self.options.tries.max(1);
        for attempt in 1..=tries {
            let reason = match self.attempt(event).await {
                Outcome::Delivered => {
                    self.metrics.webhook_deliveries.inc();
                    tracing::debug!(url = %self.url, id = %event.id, attempt, "webhook delivered");
                    return;
                }
                Outcome::GiveUp(reason) => {
                    self.give_up(event, attempt, &reason);
                    return;
                }
                Outcome::Retry(reason) => reason,
            };
            if attempt == tries {
                self.give_up(event, attempt, &reason);
                return;
            }
            self.metrics.webhook_retries.inc();
            tracing::debug!(url = %self.url, id = %event.id, attempt, %reason, ?wait, "webhook failed, retrying");
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
    }

    async fn attempt(&self, event: &Signed) -> Outcome {
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(KEY_HEADER, &self.api_key)
            .header(SIGNATURE_HEADER, &event.signature)
            .body(event.body.clone())
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            // Timeouts, rate limits and server errors may pass; other client
            // errors (a wrong path, a refused signature) will not.
            Ok(r) if r.status().is_server_error() || matches!(r.status().as_u16(), 408 | 429) => {
                Outcome::Retry(format!("HTTP {}", r.status()))
            }
            Ok(r) => Outcome::GiveUp(format!("HTTP {}", r.status())),
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }

    fn give_up(&self, event: &Signed, attempts: u32, reason: &str) {
        self.metrics.webhook_failures.inc();
        tracing::error!(
            url = %self.url, id = %event.id, event = ?event.event, attempts, %reason,
            "webhook delivery failed, event dropped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Received = Arc<std::sync::Mutex<Vec<(HeaderMap, Bytes)>>>;

    /// A receiver on loopback answering `fail_first` times with `fail_status`, then 204.
    async fn receiver(fail_first: usize, fail_status: StatusCode) -> (String, Received, Arc<AtomicUsize>) {
        let received: Received = Default::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route(
                "/hook",
                post(
                    move |State((received, calls)): State<(Received, Arc<AtomicUsize>)>,
                          headers: HeaderMap,
                          body: Bytes| async move {
                        if calls.fetch_add(1, Ordering::SeqCst) < fail_first {
                            return fail_status;
                        }
                        received.lock().unwrap().push((headers, body));
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state((received.clone(), calls.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), received, calls)
    }

    fn fast() -> WebhookOptions {
        WebhookOptions {
            tries: 5,
            backoff: Duration::from_millis(10),
            queue: 16,
            timeout: Duration::from_secs(5),
        }
    }

    fn room() -> Room {
        Room {
            sid: "RM_x".into(),
            name: "standup".into(),
            max_participants: 0,
            empty_timeout_s: 0,
            metadata: String::new(),
            created_at: 1,
            num_participants: 0,
        }
    }

    async fn wait_until(mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not met in 5 s");
    }

    #[tokio::test]
    async fn delivers_signed_event() {
        let (url, received, _) = receiver(0, StatusCode::OK).await;
        let metrics = Arc::new(Metrics::default());
        let hooks = Webhooks::with_options(vec![url], "key1".into(), "s3cret".into(), metrics.clone(), fast()).unwrap();
        let event = WebhookEvent::room_started(room());
        hooks.send(event.clone());
        wait_until(|| !received.lock().unwrap().is_empty()).await;
        let (headers, body) = received.lock().unwrap()[0].clone();
        assert_eq!(headers[KEY_HEADER], "key1");
        assert_eq!(headers["content-type"], "application/json");
        let sig = headers[SIGNATURE_HEADER].to_str().unwrap();
        assert!(verify_signature("s3cret", &body, sig), "{sig}");
        assert!(!verify_signature("other", &body, sig));
        assert!(!verify_signature("s3cret", b"{}", sig));
        assert_eq!(sig, sign("s3cret", &body));
        let got: WebhookEvent = serde_json::from_slice(&body).unwrap();
        assert_eq!(got, event);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["event"], "room_started");
        assert!(json.get("participant").is_none(), "absent parts are omitted: {json}");
        wait_until(|| metrics.webhook_deliveries.get() == 1).await;
        assert_eq!(metrics.webhook_queue.get(), 0);
    }

    #[tokio::test]
    async fn retries_with_backoff() {
        let (url, received, calls) = receiver(2, StatusCode::SERVICE_UNAVAILABLE).await;
        let metrics = Arc::new(Metrics::default());
        let hooks = Webhooks::with_options(vec![url], "k".into(), "s".into(), metrics.clone(), fast()).unwrap();
        hooks.send(WebhookEvent::new(EventKind::ParticipantJoined));
        wait_until(|| !received.lock().unwrap().is_empty()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(metrics.webhook_retries.get(), 2);
        wait_until(|| metrics.webhook_deliveries.get() == 1).await;
        assert_eq!(metrics.webhook_failures.get(), 0);
    }

    #[tokio::test]
    async fn gives_up_and_counts() {
        let (url, _, calls) = receiver(usize::MAX, StatusCode::INTERNAL_SERVER_ERROR).await;
        let metrics = Arc::new(Metrics::default());
        let opts = WebhookOptions { tries: 3, ..fast() };
        let hooks = Webhooks::with_options(vec![url], "k".into(), "s".into(), metrics.clone(), opts).unwrap();
        hooks.send(WebhookEvent::new(EventKind::RoomFinished));
        wait_until(|| metrics.webhook_failures.get() == 1).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // A refusal that retrying cannot fix ends at once.
        let (url, _, calls) = receiver(usize::MAX, StatusCode::UNAUTHORIZED).await;
        let hooks = Webhooks::with_options(vec![url], "k".into(), "s".into(), metrics.clone(), fast()).unwrap();
        hooks.send(WebhookEvent::new(EventKind::RoomFinished));
        wait_until(|| metrics.webhook_failures.get() == 2).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn full_queue_drops_without_waiting() {
        // Nothing listens on a port we bound and closed; attempts fail fast
        // but the tiny queue still overflows under a burst.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metrics = Arc::new(Metrics::default());
        let opts = WebhookOptions {
            queue: 2,
            backoff: Duration::from_secs(60),
            ..fast()
        };
        let hooks = Webhooks::with_options(
            vec![format!("http://127.0.0.1:{port}/")],
            "k".into(),
            "s".into(),
            metrics.clone(),
            opts,
        )
        .unwrap();
        let start = std::time::Instant::now();
        for _ in 0..10 {
            hooks.send(WebhookEvent::new(EventKind::TrackPublished));
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        // One may be in flight, two queued; the rest are dropped.
        assert!(metrics.webhook_dropped.get() >= 7, "{}", metrics.webhook_dropped.get());
        hooks.shutdown(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn shutdown_flushes_queue() {
        let (url, received, _) = receiver(0, StatusCode::OK).await;
        let hooks = Webhooks::with_options(vec![url], "k".into(), "s".into(), Arc::default(), fast()).unwrap();
        for _ in 0..5 {
            hooks.send(WebhookEvent::new(EventKind::ParticipantLeft));
        }
        hooks.shutdown(Duration::from_secs(5)).await;
        assert_eq!(received.lock().unwrap().len(), 5);
        // After shutdown, sending is a counted no-op, never a panic.
        hooks.send(WebhookEvent::new(EventKind::ParticipantLeft));
    }

    #[test]
    fn urls_are_checked() {
        for bad in ["", "example.com/hook", "ftp://example.com/", "http://"] {
            let e = Webhooks::with_options(vec![bad.into()], "k".into(), "s".into(), Arc::default(), fast());
            assert!(matches!(e, Err(WebhookError::BadUrl { .. })), "{bad}");
        }
        let hooks = Webhooks::disabled(Arc::default());
        assert!(!hooks.is_enabled());
        hooks.send(WebhookEvent::new(EventKind::RoomStarted));
    }

    #[test]
    fn signature_format() {
        // RFC 4231 test case 2.
        let sig = sign("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_signature(
            "Jefe",
            b"what do ya want for nothing?",
            &sig.to_uppercase().replace("SHA256=", "sha256=")
        ));
        for bad in ["", "sha256=", "sha256=zz", "md5=00", "sha256=abc"] {
            assert!(!verify_signature("Jefe", b"x", bad), "{bad}");
        }
    }
}
