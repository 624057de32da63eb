//! The room service: the one place permissions are enforced and state
//! changes become events for sessions, webhooks and the media plane.
//!
//! Records (rooms, participants, tracks) live in the [`Store`]; node-local
//! live state (the sessions connected here, their outbound queues, their
//! subscriptions, resume tokens) lives in [`RoomService`] itself. Mutations
//! of one room are serialised by a per-room async lock so a read-modify-write
//! of a participant record never loses a concurrent change.
//!
//! This file holds the service, its errors and request types, and what every
//! part shares (room locks, record lookups). The operations live in one
//! module per job, each an `impl RoomService` block:
//! - `sessions`: the live session registry, outbound queues, resume tokens;
//! - `join`: joining and resuming; `leave`: ending sessions and rooms;
//! - `admin`: room and participant administration (REST);
//! - `permissions`: participant updates, permission changes applied live;
//! - `publish`: publishing, unpublishing, muting;
//! - `subscribe`: subscriptions and track settings;
//! - `signal`: data messages and SDP/ICE to the media plane;
//! - `events`: lifecycle events out, media plane events in;
//! - `sweep`: resume expiry and the empty-room timeout;
//! - `turn`: ICE servers and TURN credentials.
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::auth::{Claims, Grants};
use crate::media::{MediaError, MediaPlane};
use crate::metrics::Metrics;
use crate::model::{self, Participant, Permissions, Room};
use crate::store::{Store, StoreError};

mod admin;
mod events;
mod join;
mod leave;
mod permissions;
mod publish;
mod sessions;
mod signal;
mod subscribe;
mod sweep;
pub mod turn;

use sessions::LiveRoom;

pub use events::{NoNotifier, Notifier, RoomEvent};
pub use sessions::{Joined, SessionHandle, SLOW_CLIENT};
pub use turn::TurnConfig;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RoomError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("room {0:?} not found")]
    RoomNotFound(String),
    #[error("participant {0:?} not found")]
    ParticipantNotFound(String),
    #[error("track {0:?} not found")]
    TrackNotFound(String),
    #[error("room {0:?} is full")]
    RoomFull(String),
    #[error("{0}")]
    Conflict(String),
    #[error("cannot resume: {0}")]
    ResumeFailed(String),
    #[error("session has ended")]
    SessionEnded,
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for RoomError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RoomNotFound(r) => RoomError::RoomNotFound(r),
            StoreError::RoomFull(r) => RoomError::RoomFull(r),
            other => RoomError::Store(other),
        }
    }
}

impl RoomError {
    /// The stable machine-readable code used by REST errors and WebSocket `error` messages.
    pub fn code(&self) -> &'static str {
        match self {
            RoomError::InvalidArgument(_) => "invalid_argument",
            RoomError::PermissionDenied(_) => "permission_denied",
            RoomError::RoomNotFound(_) => "room_not_found",
            RoomError::ParticipantNotFound(_) => "participant_not_found",
            RoomError::TrackNotFound(_) => "track_not_found",
            RoomError::RoomFull(_) => "room_full",
            RoomError::Conflict(_) => "conflict",
            RoomError::ResumeFailed(_) => "resume_failed",
            RoomError::SessionEnded => "session_ended",
            RoomError::Media(MediaError::Unavailable) => "media_unavailable",
            RoomError::Media(_) => "media_error",
            RoomError::Store(_) => "unavailable",
        }
    }
}

pub type Result<T, E = RoomError> = std::result::Result<T, E>;

/// Who is asking: the verified claims of the request's access token.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub identity: String,
    pub name: String,
    pub metadata: String,
    pub grants: Grants,
}

impl From<Claims> for Caller {
    fn from(c: Claims) -> Self {
        Caller {
            identity: c.sub,
            name: c.name,
            metadata: c.metadata,
            grants: c.grants,
        }
    }
}

impl Caller {
    /// `room_admin` applies to the token's room, or to every room when the token names none.
    pub fn is_admin_of(&self, room: &str) -> bool {
        self.grants.room_admin && self.grants.room.as_deref().is_none_or(|r| r == room)
    }

    fn require_admin(&self, room: &str) -> Result<()> {
        if self.is_admin_of(room) {
            Ok(())
        } else {
            Err(RoomError::PermissionDenied(format!(
                "room_admin grant for room {room:?} required"
            )))
        }
    }
}

#[derive(Clone, Debug)]
pub struct RoomSettings {
    /// Used when a room's `empty_timeout_s` is 0.
    pub default_empty_timeout_s: u32,
    /// How long a participant whose WebSocket dropped may resume.
    pub resume_window_ms: u64,
    /// Outbound messages queued per session before it counts as a slow client.
    pub outbound_queue: usize,
}

impl Default for RoomSettings {
    fn default() -> Self {
        RoomSettings {
            default_empty_timeout_s: 300,
            resume_window_ms: 15_000,
            outbound_queue: 256,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct CreateRoom {
    pub name: String,
    pub max_participants: Option<u32>,
    pub empty_timeout_s: Option<u32>,
    pub metadata: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct UpdateParticipant {
    pub permissions: Option<Permissions>,
    pub metadata: Option<String>,
    pub name: Option<String>,
}

struct Inner {
    store: Arc<dyn Store>,
    media: Arc<dyn MediaPlane>,
    notifier: Arc<dyn Notifier>,
    settings: RoomSettings,
    turn: TurnConfig,
    metrics: Arc<Metrics>,
    live: Mutex<HashMap<String, LiveRoom>>,
    room_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    next_conn: AtomicU64,
}

#[derive(Clone)]
pub struct RoomService {
    inner: Arc<Inner>,
}

fn unix_s(now_ms: u64) -> u64 {
    now_ms / 1000
}

fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(RoomError::InvalidArgument(format!(
            "{what} must be 1 to 128 characters without '/' or control characters"
        )));
    }
    Ok(())
}

impl RoomService {
    pub fn new(
        store: Arc<dyn Store>,
        media: Arc<dyn MediaPlane>,
        notifier: Arc<dyn Notifier>,
        settings: RoomSettings,
        turn: TurnConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        RoomService {
            inner: Arc::new(Inner {
                store,
                media,
                notifier,
                settings,
                turn,
                metrics,
                live: Mutex::new(HashMap::new()),
                room_locks: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    pub fn settings(&self) -> &RoomSettings {
        &self.inner.settings
    }

    pub fn turn(&self) -> &TurnConfig {
        &self.inner.turn
    }

    /// The metrics sessions of this service count their messages in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    async fn lock_room(&self, room: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.inner.room_locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(room.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn forget_room_lock(&self, room: &str) {
        let mut locks = self.inner.room_locks.lock().unwrap_or_else(|e| e.into_inner());
        // Only drop it when nobody else holds or waits on it (we hold one ref, the map another).
        if locks.get(room).is_some_and(|l| Arc::strong_count(l) <= 2) {
            locks.remove(room);
        }
    }

    fn notify(&self, event: RoomEvent) {
        self.inner.notifier.notify(event);
    }

    async fn room_record(&self, name: &str) -> Result<Room> {
        self.inner
            .store
            .get_room(name)
            .await?
            .ok_or_else(|| RoomError::RoomNotFound(name.to_string()))
    }

    async fn participant_record(&self, room: &str, identity: &str) -> Result<Participant> {
        self.inner
            .store
            .get_participant(room, identity)
            .await?
            .ok_or_else(|| RoomError::ParticipantNotFound(identity.to_string()))
    }

    /// Get-or-create; the caller holds the room lock.
    async fn ensure_room(&self, req: CreateRoom, now_ms: u64) -> Result<Room> {
        let room = Room {
            sid: model::new_sid("RM"),
            name: req.name,
            max_participants: req.max_participants.unwrap_or(0),
            empty_timeout_s: req.empty_timeout_s.unwrap_or(0),
            metadata: req.metadata.unwrap_or_default(),
            created_at: now_ms,
            num_participants: 0,
        };
        let created = self.inner.store.create_room(room).await?;
        if created.created {
            self.live().entry(created.room.name.clone()).or_default().empty_since = Some(now_ms);
            self.notify(RoomEvent::RoomStarted {
                room: created.room.clone(),
            });
        }
        Ok(created.room)
    }

    async fn visible_others(&self, room: &str, identity: &str) -> Result<Vec<Participant>> {
        Ok(self
            .inner
            .store
            .list_participants(room)
            .await?
            .into_iter()
            .filter(|p| p.identity != identity && !p.permissions.hidden)
            .collect())
    }
}

#[cfg(test)]
mod tests;
