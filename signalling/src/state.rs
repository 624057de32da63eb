//! Everything a request handler or session needs, cheap to clone.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::auth::ApiKeys;
use crate::media::{MediaEvent, MediaPlane, NoMedia};
use crate::metrics::Metrics;
use crate::room::{NoNotifier, Notifier, RoomEvent, RoomService, RoomSettings, TurnConfig};
use crate::store::{MemoryStore, Store};
use crate::ws::SessionLimits;

/// Limits of the REST API.
#[derive(Clone, Debug)]
pub struct ApiLimits {
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Sustained requests per second per access token (or per IP without one).
    pub requests_per_s: f64,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: f64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_body_bytes: 64 * 1024,
            requests_per_s: 20.0,
            burst: 100.0,
        }
    }
}

/// The tunable parts, all with working defaults.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub rooms: RoomSettings,
    pub turn: TurnConfig,
    pub api: ApiLimits,
    pub session: SessionLimits,
    /// Development mode (no configured API keys, a generated `devkey`): the
    /// demo page may ask `POST /v1/dev/token` for tokens. Never in production.
    pub dev_mode: bool,
}

pub struct StateInner {
    pub rooms: RoomService,
    pub keys: ApiKeys,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub(crate) rate: crate::api::rate_limit::RateLimiter,
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

impl std::ops::Deref for AppState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.inner
    }
}

/// Keeps the control-plane gauges in step with room events, then passes
/// them on (to webhooks).
struct Counting {
    metrics: Arc<Metrics>,
    next: Arc<dyn Notifier>,
}

impl Notifier for Counting {
    fn notify(&self, event: RoomEvent) {
        let m = &self.metrics;
        match &event {
            RoomEvent::RoomStarted { .. } => {
                m.rooms.inc();
                m.rooms_created.inc();
            }
            RoomEvent::RoomFinished { .. } => m.rooms.dec(),
            RoomEvent::ParticipantJoined { .. } => {
                m.participants.inc();
                m.participants_joined.inc();
            }
            RoomEvent::ParticipantLeft { .. } => m.participants.dec(),
            RoomEvent::TrackPublished { .. } => m.tracks.inc(),
            RoomEvent::TrackUnpublished { .. } => m.tracks.dec(),
        }
        self.next.notify(event);
    }
}

impl AppState {
    /// Builds the state and starts its background tasks (the once-a-second
    /// room sweep and the media event loop); call inside a Tokio runtime.
    /// `media_events` is the receiver of the channel whose sender the media
    /// plane was given (see [`crate::media::event_channel`]); `notifier`
    /// receives room lifecycle events (the webhook sender).
    pub fn new(
        keys: ApiKeys,
        settings: Settings,
        store: Arc<dyn Store>,
        media: Arc<dyn MediaPlane>,
        media_events: mpsc::Receiver<MediaEvent>,
        notifier: Arc<dyn Notifier>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let notifier = Arc::new(Counting {
            metrics: metrics.clone(),
            next: notifier,
        });
        let rooms = RoomService::new(
            store,
            media,
            notifier,
            settings.rooms.clone(),
            settings.turn.clone(),
            metrics.clone(),
        );
        tokio::spawn(rooms.clone().run_media_events(media_events));
        let sweeper = rooms.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = sweeper.tick(crate::model::now_ms()).await {
                    tracing::warn!(error = %e, "room sweep failed");
                }
            }
        });
        let rate = crate::api::rate_limit::RateLimiter::new(settings.api.requests_per_s, settings.api.burst);
        AppState {
            inner: Arc::new(StateInner {
                rooms,
                keys,
                metrics,
                settings,
                rate,
            }),
        }
    }

    /// In-memory store, no media plane, no webhooks: signalling on its own.
    pub fn standalone(keys: ApiKeys, settings: Settings) -> Self {
        let (_tx, rx) = crate::media::event_channel();
        AppState::new(
            keys,
            settings,
            Arc::new(MemoryStore::new()),
            Arc::new(NoMedia),
            rx,
            Arc::new(NoNotifier),
            Arc::new(Metrics::new(None)),
        )
    }
}

impl Notifier for crate::webhooks::Webhooks {
    fn notify(&self, event: RoomEvent) {
        use crate::webhooks::WebhookEvent;
        self.send(match event {
            RoomEvent::RoomStarted { room } => WebhookEvent::room_started(room),
            RoomEvent::RoomFinished { room } => WebhookEvent::room_finished(room),
            RoomEvent::ParticipantJoined { room, participant } => WebhookEvent::participant_joined(room, participant),
            RoomEvent::ParticipantLeft { room, participant } => WebhookEvent::participant_left(room, participant),
            RoomEvent::TrackPublished {
                room,
                participant,
                track,
            } => WebhookEvent::track_published(room, participant, track),
            RoomEvent::TrackUnpublished {
                room,
                participant,
                track,
            } => WebhookEvent::track_unpublished(room, participant, track),
        });
    }
}
