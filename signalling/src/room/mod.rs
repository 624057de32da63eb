//! The room service: the one place permissions are enforced and state
//! changes become events for sessions, webhooks and the media plane.
//!
//! Records (rooms, participants, tracks) live in the [`Store`]; node-local
//! live state (the sessions connected here, their outbound queues, their
//! subscriptions, resume tokens) lives in [`RoomService`] itself. Mutations
//! of one room are serialised by a per-room async lock so a read-modify-write
//! of a participant record never loses a concurrent change.
//!
//! Fan-out to sessions uses `try_send` on bounded queues: a session whose
//! queue is full is a slow client and is disconnected (it may resume), so no
//! client can hold up the others or this service.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::auth::{Claims, Grants};
use crate::media::{IceCandidate, MediaError, MediaEvent, MediaPlane, ParticipantRef, Target, TrackSettings};
use crate::metrics::Metrics;
use crate::model::{self, Participant, ParticipantState, Permissions, Room, Track, TrackKind};
use crate::store::{Store, StoreError};
use crate::ws::protocol::{IceServer, PublishTrack, ServerMessage};

pub mod turn;

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

/// Lifecycle events for webhooks (and metrics), emitted after the change is stored.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomEvent {
    RoomStarted {
        room: Room,
    },
    RoomFinished {
        room: Room,
    },
    ParticipantJoined {
        room: Room,
        participant: Participant,
    },
    ParticipantLeft {
        room: Room,
        participant: Participant,
    },
    TrackPublished {
        room: Room,
        participant: Participant,
        track: Track,
    },
    TrackUnpublished {
        room: Room,
        participant: Participant,
        track: Track,
    },
}

/// Receives [`RoomEvent`]s. Must not block: the webhook sender queues them.
pub trait Notifier: Send + Sync {
    fn notify(&self, event: RoomEvent);
}

/// Drops every event (tests, or webhooks disabled).
pub struct NoNotifier;

impl Notifier for NoNotifier {
    fn notify(&self, _: RoomEvent) {}
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

/// Identifies one session to the service; a stale handle (after a rejoin
/// elsewhere or a kick) is refused with [`RoomError::SessionEnded`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionHandle {
    pub room: String,
    pub identity: String,
    pub sid: String,
    pub conn_id: u64,
}

impl SessionHandle {
    pub fn media_ref(&self) -> ParticipantRef {
        ParticipantRef {
            room: self.room.clone(),
            sid: self.sid.clone(),
        }
    }
}

/// What a session needs after a successful join.
pub struct Joined {
    pub handle: SessionHandle,
    /// The `joined` message; send it before anything from `events`.
    pub message: ServerMessage,
    pub events: mpsc::Receiver<ServerMessage>,
    /// Becomes `Some(reason)` when the server ends or replaces this connection.
    pub close: watch::Receiver<Option<String>>,
}

/// The close reason of a session whose outbound queue overflowed.
pub const SLOW_CLIENT: &str = "slow_client";

struct Conn {
    id: u64,
    tx: mpsc::Sender<ServerMessage>,
    close: watch::Sender<Option<String>>,
    /// `rtc_signal_messages_dropped_total`, counted where the drop happens.
    dropped: prometheus::IntCounter,
}

impl Conn {
    fn send(&self, msg: ServerMessage) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.inc();
                // The session task will notice, close the socket and report the drop.
                self.close.send_if_modified(|r| {
                    if r.is_none() {
                        *r = Some(SLOW_CLIENT.into());
                        true
                    } else {
                        false
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn close(&self, reason: &str) {
        let _ = self.close.send(Some(reason.to_string()));
    }
}

struct LiveSession {
    sid: String,
    token: String,
    auto_subscribe: bool,
    hidden: bool,
    subscriptions: HashSet<String>,
    conn: Option<Conn>,
    disconnected_at: Option<u64>,
}

#[derive(Default)]
struct LiveRoom {
    sessions: HashMap<String, LiveSession>,
    empty_since: Option<u64>,
}

impl LiveRoom {
    fn send_to(&self, identity: &str, msg: ServerMessage) {
        if let Some(conn) = self.sessions.get(identity).and_then(|s| s.conn.as_ref()) {
            conn.send(msg);
        }
    }

    /// Sends to every session except `except`; when `subject_hidden` the
    /// message concerns a hidden participant and goes to nobody else.
    fn broadcast(&self, except: Option<&str>, subject_hidden: bool, msg: &ServerMessage) {
        if subject_hidden {
            return;
        }
        for (identity, s) in &self.sessions {
            if Some(identity.as_str()) == except {
                continue;
            }
            if let Some(conn) = &s.conn {
                conn.send(msg.clone());
            }
        }
    }
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

fn random_token() -> String {
    format!("{}{}", model::new_sid("ST"), model::new_sid("X"))
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

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveRoom>> {
        // Live state is only touched in short non-panicking sections; a
        // poisoned lock still holds consistent maps.
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
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

    // ---- REST operations -------------------------------------------------

    pub async fn create_room(&self, caller: &Caller, req: CreateRoom, now_ms: u64) -> Result<Room> {
        if !caller.grants.room_create {
            return Err(RoomError::PermissionDenied("room_create grant required".into()));
        }
        if caller.grants.room.as_deref().is_some_and(|r| r != req.name) {
            return Err(RoomError::PermissionDenied(format!(
                "token is limited to room {:?}",
                caller.grants.room
            )));
        }
        validate_name("room name", &req.name)?;
        let _guard = self.lock_room(&req.name).await;
        self.ensure_room(req, now_ms).await
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

    pub async fn list_rooms(&self, caller: &Caller) -> Result<Vec<Room>> {
        if !caller.grants.room_list {
            return Err(RoomError::PermissionDenied("room_list grant required".into()));
        }
        Ok(self.inner.store.list_rooms().await?)
    }

    pub async fn get_room(&self, caller: &Caller, name: &str) -> Result<Room> {
        if !(caller.grants.room_list || caller.is_admin_of(name)) {
            return Err(RoomError::PermissionDenied(
                "room_list or room_admin grant required".into(),
            ));
        }
        self.room_record(name).await
    }

    /// Ends every session in the room, then the room.
    pub async fn delete_room(&self, caller: &Caller, name: &str, now_ms: u64) -> Result<Room> {
        if !(caller.is_admin_of(name) || (caller.grants.room_create && caller.grants.room.is_none())) {
            return Err(RoomError::PermissionDenied(format!(
                "room_admin grant for room {name:?} required"
            )));
        }
        let guard = self.lock_room(name).await;
        let room = self.room_record(name).await?;
        self.close_room(room.clone(), "room_deleted", now_ms).await?;
        drop(guard);
        self.forget_room_lock(name);
        Ok(room)
    }

    /// The caller holds the room lock.
    async fn close_room(&self, room: Room, reason: &str, now_ms: u64) -> Result<()> {
        for p in self.inner.store.list_participants(&room.name).await? {
            self.end_session(&room.name, &p.identity, Some(&p.sid), reason, now_ms)
                .await?;
        }
        let deleted = self.inner.store.delete_room(&room.name).await?;
        self.live().remove(&room.name);
        if let Some(room) = deleted {
            self.notify(RoomEvent::RoomFinished { room });
        }
        Ok(())
    }

    pub async fn list_participants(&self, caller: &Caller, room: &str) -> Result<Vec<Participant>> {
        caller.require_admin(room)?;
        self.room_record(room).await?;
        Ok(self.inner.store.list_participants(room).await?)
    }

    pub async fn get_participant(&self, caller: &Caller, room: &str, identity: &str) -> Result<Participant> {
        caller.require_admin(room)?;
        self.room_record(room).await?;
        self.participant_record(room, identity).await
    }

    pub async fn remove_participant(&self, caller: &Caller, room: &str, identity: &str, now_ms: u64) -> Result<()> {
        caller.require_admin(room)?;
        let _guard = self.lock_room(room).await;
        self.room_record(room).await?;
        let p = self.participant_record(room, identity).await?;
        self.end_session(room, identity, Some(&p.sid), "removed", now_ms).await
    }

    pub async fn update_participant(
        &self,
        caller: &Caller,
        room: &str,
        identity: &str,
        update: UpdateParticipant,
        now_ms: u64,
    ) -> Result<Participant> {
        caller.require_admin(room)?;
        if update.metadata.as_ref().is_some_and(|m| m.len() > 64 * 1024) {
            return Err(RoomError::InvalidArgument("metadata must be at most 64 KiB".into()));
        }
        let _guard = self.lock_room(room).await;
        self.room_record(room).await?;
        let mut p = self.participant_record(room, identity).await?;
        if let Some(name) = update.name {
            p.name = name;
        }
        if let Some(metadata) = update.metadata {
            p.metadata = metadata;
        }
        let old = p.permissions.clone();
        if let Some(perms) = update.permissions {
            p.permissions = perms;
        }
        self.inner.store.put_participant(room, p.clone()).await?;
        if p.permissions != old {
            p = self.apply_permissions(room, p, &old, now_ms).await?;
        }
        let live = self.live();
        if let Some(lr) = live.get(room) {
            let msg = ServerMessage::ParticipantUpdated { participant: p.clone() };
            lr.send_to(identity, msg.clone());
            lr.broadcast(Some(identity), p.permissions.hidden, &msg);
        }
        Ok(p)
    }

    /// Makes a permission change real for a live session: tracks it may no
    /// longer publish are unpublished, subscriptions it may no longer hold
    /// end. The caller holds the room lock; `p` is already stored.
    async fn apply_permissions(
        &self,
        room: &str,
        mut p: Participant,
        old: &Permissions,
        now_ms: u64,
    ) -> Result<Participant> {
        let forbidden: Vec<Track> = p
            .tracks
            .iter()
            .filter(|t| !p.permissions.may_publish_source(t.source))
            .cloned()
            .collect();
        for t in &forbidden {
            p = self.unpublish_locked(room, p, &t.sid, now_ms).await?;
        }
        let pref = ParticipantRef {
            room: room.to_string(),
            sid: p.sid.clone(),
        };
        let mut to_subscribe = false;
        {
            let mut live = self.live();
            if let Some(lr) = live.get_mut(room) {
                if let Some(s) = lr.sessions.get_mut(&p.identity) {
                    s.hidden = p.permissions.hidden;
                    if !p.permissions.can_subscribe {
                        let ended: Vec<String> = s.subscriptions.drain().collect();
                        for track_sid in ended {
                            let _ = self.inner.media.unsubscribe(&pref, &track_sid);
                            if let Some(conn) = &s.conn {
                                conn.send(ServerMessage::Unsubscribed {
                                    track_sid,
                                    reason: "permission_revoked".into(),
                                });
                            }
                        }
                    } else if !old.can_subscribe && s.auto_subscribe {
                        to_subscribe = true;
                    }
                }
                lr.send_to(
                    &p.identity,
                    ServerMessage::PermissionsChanged {
                        permissions: p.permissions.clone(),
                    },
                );
            }
        }
        if to_subscribe {
            self.auto_subscribe_all(room, &p).await?;
        }
        Ok(p)
    }

    pub async fn mute_track(
        &self,
        caller: &Caller,
        room: &str,
        identity: &str,
        track_sid: &str,
        muted: bool,
    ) -> Result<Track> {
        caller.require_admin(room)?;
        let _guard = self.lock_room(room).await;
        self.room_record(room).await?;
        self.mute_locked(room, identity, track_sid, muted).await
    }

    async fn mute_locked(&self, room: &str, identity: &str, track_sid: &str, muted: bool) -> Result<Track> {
        let mut p = self.participant_record(room, identity).await?;
        let track = p
            .tracks
            .iter_mut()
            .find(|t| t.sid == track_sid)
            .ok_or_else(|| RoomError::TrackNotFound(track_sid.to_string()))?;
        track.muted = muted;
        let track = track.clone();
        self.inner.store.put_participant(room, p.clone()).await?;
        let _ = self.inner.media.set_muted(
            &ParticipantRef {
                room: room.into(),
                sid: p.sid.clone(),
            },
            track_sid,
            muted,
        );
        let msg = ServerMessage::TrackMuted {
            participant_sid: p.sid.clone(),
            track_sid: track_sid.into(),
            muted,
        };
        if let Some(lr) = self.live().get(room) {
            lr.send_to(identity, msg.clone());
            lr.broadcast(Some(identity), p.permissions.hidden, &msg);
        }
        Ok(track)
    }

    /// TURN credentials for an admin or for a participant's own token.
    pub fn turn_credentials(&self, caller: &Caller, ttl_s: u64, now_ms: u64) -> Result<Vec<IceServer>> {
        let participant = caller.grants.room_join && !caller.identity.is_empty();
        if !(caller.grants.room_admin || participant) {
            return Err(RoomError::PermissionDenied(
                "room_admin or room_join grant required".into(),
            ));
        }
        if ttl_s == 0 || ttl_s > turn::MAX_TTL_S {
            return Err(RoomError::InvalidArgument(format!(
                "ttl must be between 1 and {}",
                turn::MAX_TTL_S
            )));
        }
        let user = if caller.identity.is_empty() {
            "admin"
        } else {
            caller.identity.as_str()
        };
        Ok(self.inner.turn.ice_servers(user, ttl_s, unix_s(now_ms)))
    }

    // ---- sessions ----------------------------------------------------------

    /// Whether `caller` may join at all; checked before the WebSocket upgrade
    /// so a refusal is a plain HTTP status.
    pub async fn check_join(&self, caller: &Caller) -> Result<String> {
        if !caller.grants.room_join {
            return Err(RoomError::PermissionDenied("room_join grant required".into()));
        }
        let Some(room) = caller.grants.room.clone() else {
            return Err(RoomError::PermissionDenied("token grants no room to join".into()));
        };
        validate_name("room name", &room)?;
        validate_name("identity", &caller.identity)?;
        if let Some(r) = self.inner.store.get_room(&room).await? {
            let present = self
                .inner
                .store
                .get_participant(&room, &caller.identity)
                .await?
                .is_some();
            if r.max_participants > 0 && r.num_participants >= r.max_participants && !present {
                return Err(RoomError::RoomFull(room));
            }
        }
        Ok(room)
    }

    /// Joins (creating the room if needed) or resumes a session.
    pub async fn join(
        &self,
        caller: &Caller,
        auto_subscribe: bool,
        resume: Option<&str>,
        now_ms: u64,
    ) -> Result<Joined> {
        let room_name = self.check_join(caller).await?;
        let _guard = self.lock_room(&room_name).await;
        let (tx, events) = mpsc::channel(self.inner.settings.outbound_queue.max(1));
        let (close_tx, close) = watch::channel(None);
        let conn = Conn {
            id: self.inner.next_conn.fetch_add(1, Ordering::Relaxed),
            tx,
            close: close_tx,
            dropped: self.inner.metrics.messages_dropped.clone(),
        };
        let conn_id = conn.id;
        if let Some(token) = resume {
            return self
                .resume_locked(caller, &room_name, token, conn, events, close, now_ms)
                .await;
        }

        let room = self
            .ensure_room(
                CreateRoom {
                    name: room_name.clone(),
                    ..Default::default()
                },
                now_ms,
            )
            .await?;
        if let Some(old) = self.inner.store.get_participant(&room_name, &caller.identity).await? {
            self.end_session(
                &room_name,
                &caller.identity,
                Some(&old.sid),
                "duplicate_identity",
                now_ms,
            )
            .await?;
        }
        let participant = Participant {
            sid: model::new_sid("PA"),
            identity: caller.identity.clone(),
            name: caller.name.clone(),
            metadata: caller.metadata.clone(),
            state: ParticipantState::Joined,
            joined_at: now_ms,
            permissions: caller.grants.permissions(),
            tracks: vec![],
        };
        self.inner
            .store
            .put_participant(&room_name, participant.clone())
            .await?;
        let token = random_token();
        {
            let mut live = self.live();
            let lr = live.entry(room_name.clone()).or_default();
            lr.empty_since = None;
            lr.broadcast(
                None,
                participant.permissions.hidden,
                &ServerMessage::ParticipantJoined {
                    participant: participant.clone(),
                },
            );
            lr.sessions.insert(
                caller.identity.clone(),
                LiveSession {
                    sid: participant.sid.clone(),
                    token: token.clone(),
                    auto_subscribe,
                    hidden: participant.permissions.hidden,
                    subscriptions: HashSet::new(),
                    conn: Some(conn),
                    disconnected_at: None,
                },
            );
        }
        let room = self.room_record(&room_name).await.unwrap_or(room);
        self.notify(RoomEvent::ParticipantJoined {
            room: room.clone(),
            participant: participant.clone(),
        });
        let others = self.visible_others(&room_name, &caller.identity).await?;
        if auto_subscribe && participant.permissions.can_subscribe {
            self.auto_subscribe_all(&room_name, &participant).await?;
        }
        let handle = SessionHandle {
            room: room_name,
            identity: caller.identity.clone(),
            sid: participant.sid.clone(),
            conn_id,
        };
        let message = ServerMessage::Joined {
            ice_servers: self
                .inner
                .turn
                .ice_servers(&caller.identity, self.inner.turn.join_ttl_s, unix_s(now_ms)),
            room,
            participant,
            participants: others,
            session_token: token,
            resume_window_s: self.inner.settings.resume_window_ms / 1000,
            resumed: false,
            subscriptions: self.subscriptions(&handle),
        };
        Ok(Joined {
            handle,
            message,
            events,
            close,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn resume_locked(
        &self,
        caller: &Caller,
        room_name: &str,
        token: &str,
        conn: Conn,
        events: mpsc::Receiver<ServerMessage>,
        close: watch::Receiver<Option<String>>,
        now_ms: u64,
    ) -> Result<Joined> {
        let window = self.inner.settings.resume_window_ms;
        let conn_id = conn.id;
        let (sid, subscriptions) = {
            let mut live = self.live();
            let s = live
                .get_mut(room_name)
                .and_then(|lr| lr.sessions.get_mut(&caller.identity))
                .filter(|s| s.token == token)
                .ok_or_else(|| RoomError::ResumeFailed("unknown session".into()))?;
            if s.disconnected_at.is_some_and(|t| now_ms.saturating_sub(t) > window) {
                return Err(RoomError::ResumeFailed("resume window has passed".into()));
            }
            if let Some(old) = s.conn.take() {
                old.close("resumed_elsewhere");
            }
            s.conn = Some(conn);
            s.disconnected_at = None;
            (s.sid.clone(), s.subscriptions.iter().cloned().collect::<Vec<_>>())
        };
        let mut participant = self.participant_record(room_name, &caller.identity).await?;
        if participant.sid != sid {
            return Err(RoomError::ResumeFailed("session was replaced".into()));
        }
        if participant.state == ParticipantState::Disconnected {
            participant.state = ParticipantState::Joined;
            self.inner.store.put_participant(room_name, participant.clone()).await?;
        }
        let mut subscriptions = subscriptions;
        subscriptions.sort();
        let handle = SessionHandle {
            room: room_name.to_string(),
            identity: caller.identity.clone(),
            sid,
            conn_id,
        };
        let message = ServerMessage::Joined {
            ice_servers: self
                .inner
                .turn
                .ice_servers(&caller.identity, self.inner.turn.join_ttl_s, unix_s(now_ms)),
            room: self.room_record(room_name).await?,
            participant,
            participants: self.visible_others(room_name, &caller.identity).await?,
            session_token: token.to_string(),
            resume_window_s: window / 1000,
            resumed: true,
            subscriptions,
        };
        Ok(Joined {
            handle,
            message,
            events,
            close,
        })
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

    /// Subscribes `p` to every visible track of others it is not yet subscribed to.
    async fn auto_subscribe_all(&self, room: &str, p: &Participant) -> Result<()> {
        for other in self.visible_others(room, &p.identity).await? {
            for t in &other.tracks {
                self.subscribe_locked(room, p, &other, t);
            }
        }
        Ok(())
    }

    fn subscribe_locked(&self, room: &str, sub: &Participant, publisher: &Participant, track: &Track) {
        let mut live = self.live();
        let Some(s) = live.get_mut(room).and_then(|lr| lr.sessions.get_mut(&sub.identity)) else {
            return;
        };
        if !s.subscriptions.insert(track.sid.clone()) {
            return;
        }
        let _ = self.inner.media.subscribe(
            &ParticipantRef {
                room: room.into(),
                sid: sub.sid.clone(),
            },
            &ParticipantRef {
                room: room.into(),
                sid: publisher.sid.clone(),
            },
            track,
        );
        if let Some(conn) = &s.conn {
            conn.send(ServerMessage::Subscribed {
                participant_sid: publisher.sid.clone(),
                track_sid: track.sid.clone(),
            });
        }
    }

    pub fn subscriptions(&self, h: &SessionHandle) -> Vec<String> {
        let live = self.live();
        let mut subs: Vec<String> = live
            .get(&h.room)
            .and_then(|lr| lr.sessions.get(&h.identity))
            .map(|s| s.subscriptions.iter().cloned().collect())
            .unwrap_or_default();
        subs.sort();
        subs
    }

    /// Checks that `h` is still the live connection of its session.
    fn check_session(&self, h: &SessionHandle) -> Result<()> {
        let live = self.live();
        let ok = live
            .get(&h.room)
            .and_then(|lr| lr.sessions.get(&h.identity))
            .is_some_and(|s| s.sid == h.sid && s.conn.as_ref().is_some_and(|c| c.id == h.conn_id));
        if ok {
            Ok(())
        } else {
            Err(RoomError::SessionEnded)
        }
    }

    async fn session_record(&self, h: &SessionHandle) -> Result<Participant> {
        self.check_session(h)?;
        let p = self
            .participant_record(&h.room, &h.identity)
            .await
            .map_err(|_| RoomError::SessionEnded)?;
        if p.sid != h.sid {
            return Err(RoomError::SessionEnded);
        }
        Ok(p)
    }

    pub async fn publish(&self, h: &SessionHandle, req: PublishTrack, now_ms: u64) -> Result<Track> {
        let _guard = self.lock_room(&h.room).await;
        let mut p = self.session_record(h).await?;
        if !p.permissions.can_publish {
            return Err(RoomError::PermissionDenied("can_publish permission required".into()));
        }
        if !p.permissions.may_publish_source(req.source) {
            return Err(RoomError::PermissionDenied(format!(
                "publishing source {:?} is not allowed",
                req.source
            )));
        }
        if req.cid.is_empty() || req.cid.len() > 256 {
            return Err(RoomError::InvalidArgument("cid must be 1 to 256 characters".into()));
        }
        if req.kind == TrackKind::Audio && !req.layers.is_empty() {
            return Err(RoomError::InvalidArgument(
                "audio tracks have no simulcast layers".into(),
            ));
        }
        if req.layers.len() > 3 {
            return Err(RoomError::InvalidArgument("at most 3 simulcast layers".into()));
        }
        if p.tracks.iter().any(|t| t.cid == req.cid) {
            return Err(RoomError::Conflict(format!(
                "track with cid {:?} is already published",
                req.cid
            )));
        }
        if p.tracks.len() >= 32 {
            return Err(RoomError::Conflict("at most 32 tracks per participant".into()));
        }
        let track = Track {
            sid: model::new_sid("TR"),
            name: req.name,
            kind: req.kind,
            source: req.source,
            muted: req.muted,
            layers: req.layers,
            cid: req.cid,
        };
        self.inner.media.publish(&h.media_ref(), &track)?;
        p.tracks.push(track.clone());
        self.inner.store.put_participant(&h.room, p.clone()).await?;
        let msg = ServerMessage::TrackPublished {
            participant_sid: p.sid.clone(),
            track: track.clone(),
        };
        let auto: Vec<String> = {
            let live = self.live();
            let Some(lr) = live.get(&h.room) else {
                return Err(RoomError::SessionEnded);
            };
            lr.send_to(&h.identity, msg.clone());
            lr.broadcast(Some(&h.identity), p.permissions.hidden, &msg);
            if p.permissions.hidden {
                vec![]
            } else {
                lr.sessions
                    .iter()
                    .filter(|(id, s)| *id != &h.identity && s.auto_subscribe)
                    .map(|(id, _)| id.clone())
                    .collect()
            }
        };
        for identity in auto {
            if let Some(sub) = self.inner.store.get_participant(&h.room, &identity).await? {
                if sub.permissions.can_subscribe {
                    self.subscribe_locked(&h.room, &sub, &p, &track);
                }
            }
        }
        let room = self.room_record(&h.room).await?;
        self.notify(RoomEvent::TrackPublished {
            room,
            participant: p,
            track: track.clone(),
        });
        let _ = now_ms;
        Ok(track)
    }

    pub async fn unpublish(&self, h: &SessionHandle, track_sid: &str, now_ms: u64) -> Result<()> {
        let _guard = self.lock_room(&h.room).await;
        let p = self.session_record(h).await?;
        if !p.tracks.iter().any(|t| t.sid == track_sid) {
            return Err(RoomError::TrackNotFound(track_sid.to_string()));
        }
        self.unpublish_locked(&h.room, p, track_sid, now_ms).await.map(|_| ())
    }

    /// Removes the track from `p` (stored), ends its subscriptions and tells everyone.
    async fn unpublish_locked(
        &self,
        room: &str,
        mut p: Participant,
        track_sid: &str,
        _now_ms: u64,
    ) -> Result<Participant> {
        let Some(pos) = p.tracks.iter().position(|t| t.sid == track_sid) else {
            return Ok(p);
        };
        let track = p.tracks.remove(pos);
        self.inner.store.put_participant(room, p.clone()).await?;
        let _ = self.inner.media.unpublish(
            &ParticipantRef {
                room: room.into(),
                sid: p.sid.clone(),
            },
            track_sid,
        );
        {
            let mut live = self.live();
            if let Some(lr) = live.get_mut(room) {
                for s in lr.sessions.values_mut() {
                    s.subscriptions.remove(track_sid);
                }
                let msg = ServerMessage::TrackUnpublished {
                    participant_sid: p.sid.clone(),
                    track_sid: track_sid.into(),
                };
                lr.send_to(&p.identity, msg.clone());
                lr.broadcast(Some(&p.identity), p.permissions.hidden, &msg);
            }
        }
        if let Ok(room) = self.room_record(room).await {
            self.notify(RoomEvent::TrackUnpublished {
                room,
                participant: p.clone(),
                track,
            });
        }
        Ok(p)
    }

    pub async fn subscribe(&self, h: &SessionHandle, track_sid: &str) -> Result<()> {
        let _guard = self.lock_room(&h.room).await;
        let p = self.session_record(h).await?;
        if !p.permissions.can_subscribe {
            return Err(RoomError::PermissionDenied("can_subscribe permission required".into()));
        }
        let (publisher, track) = self.find_track(&h.room, track_sid).await?;
        if publisher.identity == p.identity {
            return Err(RoomError::InvalidArgument("cannot subscribe to one's own track".into()));
        }
        self.subscribe_locked(&h.room, &p, &publisher, &track);
        Ok(())
    }

    /// A visible participant's track by sid.
    async fn find_track(&self, room: &str, track_sid: &str) -> Result<(Participant, Track)> {
        for p in self.inner.store.list_participants(room).await? {
            if p.permissions.hidden {
                continue;
            }
            if let Some(t) = p.tracks.iter().find(|t| t.sid == track_sid).cloned() {
                return Ok((p, t));
            }
        }
        Err(RoomError::TrackNotFound(track_sid.to_string()))
    }

    pub async fn unsubscribe(&self, h: &SessionHandle, track_sid: &str) -> Result<()> {
        self.check_session(h)?;
        let mut live = self.live();
        let s = live
            .get_mut(&h.room)
            .and_then(|lr| lr.sessions.get_mut(&h.identity))
            .ok_or(RoomError::SessionEnded)?;
        if !s.subscriptions.remove(track_sid) {
            return Err(RoomError::TrackNotFound(format!("{track_sid} (not subscribed)")));
        }
        let _ = self.inner.media.unsubscribe(&h.media_ref(), track_sid);
        if let Some(conn) = &s.conn {
            conn.send(ServerMessage::Unsubscribed {
                track_sid: track_sid.into(),
                reason: "requested".into(),
            });
        }
        Ok(())
    }

    pub async fn set_track_settings(&self, h: &SessionHandle, track_sid: &str, settings: &TrackSettings) -> Result<()> {
        self.check_session(h)?;
        let subscribed = self
            .live()
            .get(&h.room)
            .and_then(|lr| lr.sessions.get(&h.identity))
            .is_some_and(|s| s.subscriptions.contains(track_sid));
        if !subscribed {
            return Err(RoomError::TrackNotFound(format!("{track_sid} (not subscribed)")));
        }
        self.inner
            .media
            .set_track_settings(&h.media_ref(), track_sid, settings)?;
        Ok(())
    }

    pub async fn mute_own(&self, h: &SessionHandle, track_sid: &str, muted: bool) -> Result<Track> {
        let _guard = self.lock_room(&h.room).await;
        self.session_record(h).await?;
        self.mute_locked(&h.room, &h.identity, track_sid, muted).await
    }

    pub async fn send_data(&self, h: &SessionHandle, payload: String, topic: String, to: &[String]) -> Result<()> {
        let p = self.session_record(h).await?;
        if !p.permissions.can_publish_data {
            return Err(RoomError::PermissionDenied(
                "can_publish_data permission required".into(),
            ));
        }
        let msg = ServerMessage::Data {
            from_sid: p.sid,
            from_identity: p.identity,
            payload,
            topic,
        };
        let live = self.live();
        let Some(lr) = live.get(&h.room) else {
            return Err(RoomError::SessionEnded);
        };
        for (identity, s) in &lr.sessions {
            if identity == &h.identity || !(to.is_empty() || to.contains(identity)) {
                continue;
            }
            if let Some(conn) = &s.conn {
                conn.send(msg.clone());
            }
        }
        Ok(())
    }

    /// Forwards a client offer to the media plane and returns its answer.
    pub async fn offer(&self, h: &SessionHandle, target: Target, sdp: String) -> Result<String> {
        let p = self.session_record(h).await?;
        if target == Target::Publisher && !p.permissions.can_publish {
            return Err(RoomError::PermissionDenied("can_publish permission required".into()));
        }
        // No lock held: the media plane may take its time producing an answer.
        Ok(self.inner.media.offer(&h.media_ref(), target, sdp).await?)
    }

    pub fn answer(&self, h: &SessionHandle, target: Target, sdp: String) -> Result<()> {
        self.check_session(h)?;
        Ok(self.inner.media.answer(&h.media_ref(), target, sdp)?)
    }

    pub fn ice_candidate(&self, h: &SessionHandle, target: Target, candidate: IceCandidate) -> Result<()> {
        self.check_session(h)?;
        Ok(self.inner.media.ice_candidate(&h.media_ref(), target, candidate)?)
    }

    /// The participant asked to leave.
    pub async fn leave(&self, h: &SessionHandle, now_ms: u64) -> Result<()> {
        let _guard = self.lock_room(&h.room).await;
        self.check_session(h)?;
        self.end_session(&h.room, &h.identity, Some(&h.sid), "client_left", now_ms)
            .await
    }

    /// The WebSocket of `h` closed. The session stays resumable for the
    /// resume window; [`RoomService::tick`] ends it afterwards.
    pub async fn disconnected(&self, h: &SessionHandle, now_ms: u64) {
        let _guard = self.lock_room(&h.room).await;
        {
            let mut live = self.live();
            let Some(s) = live.get_mut(&h.room).and_then(|lr| lr.sessions.get_mut(&h.identity)) else {
                return;
            };
            if s.sid != h.sid || s.conn.as_ref().is_none_or(|c| c.id != h.conn_id) {
                return;
            }
            s.conn = None;
            s.disconnected_at = Some(now_ms);
        }
        if let Ok(Some(mut p)) = self.inner.store.get_participant(&h.room, &h.identity).await {
            if p.sid == h.sid {
                p.state = ParticipantState::Disconnected;
                let _ = self.inner.store.put_participant(&h.room, p).await;
            }
        }
    }

    /// Ends one session: its tracks are unpublished, others are told, the
    /// connection (if any) gets `leave` and closes. The caller holds the room
    /// lock. `sid` guards against removing a newer session of the identity.
    async fn end_session(
        &self,
        room: &str,
        identity: &str,
        sid: Option<&str>,
        reason: &str,
        now_ms: u64,
    ) -> Result<()> {
        let Some(mut p) = self.inner.store.get_participant(room, identity).await? else {
            return Ok(());
        };
        if sid.is_some_and(|sid| sid != p.sid) {
            return Ok(());
        }
        let track_sids: Vec<String> = p.tracks.iter().map(|t| t.sid.clone()).collect();
        for t in track_sids {
            p = self.unpublish_locked(room, p, &t, now_ms).await?;
        }
        let pref = ParticipantRef {
            room: room.into(),
            sid: p.sid.clone(),
        };
        let removed = self.inner.store.remove_participant(room, identity, &p.sid).await?;
        {
            let mut live = self.live();
            if let Some(lr) = live.get_mut(room) {
                if let Some(s) = lr.sessions.remove(identity) {
                    for track_sid in &s.subscriptions {
                        let _ = self.inner.media.unsubscribe(&pref, track_sid);
                    }
                    if let Some(conn) = s.conn {
                        conn.send(ServerMessage::Leave { reason: reason.into() });
                        conn.close(reason);
                    }
                }
                lr.broadcast(
                    None,
                    p.permissions.hidden,
                    &ServerMessage::ParticipantLeft {
                        participant_sid: p.sid.clone(),
                        identity: identity.into(),
                    },
                );
                if lr.sessions.is_empty() {
                    lr.empty_since = Some(now_ms);
                }
            }
        }
        self.inner.media.remove_participant(&pref);
        if let Some(participant) = removed {
            if let Ok(room) = self.room_record(room).await {
                self.notify(RoomEvent::ParticipantLeft { room, participant });
            }
        }
        Ok(())
    }

    /// Ends sessions whose resume window has passed and closes rooms that
    /// have been empty longer than their timeout. Call it about once a second.
    pub async fn tick(&self, now_ms: u64) -> Result<()> {
        let window = self.inner.settings.resume_window_ms;
        let expired: Vec<(String, String, String)> = {
            let live = self.live();
            live.iter()
                .flat_map(|(room, lr)| {
                    lr.sessions.iter().filter_map(move |(identity, s)| {
                        let gone =
                            s.conn.is_none() && s.disconnected_at.is_some_and(|t| now_ms.saturating_sub(t) > window);
                        gone.then(|| (room.clone(), identity.clone(), s.sid.clone()))
                    })
                })
                .collect()
        };
        for (room, identity, sid) in expired {
            let _guard = self.lock_room(&room).await;
            let still = self
                .live()
                .get(&room)
                .and_then(|lr| lr.sessions.get(&identity))
                .is_some_and(|s| s.sid == sid && s.conn.is_none());
            if still {
                self.end_session(&room, &identity, Some(&sid), "resume_timeout", now_ms)
                    .await?;
            }
        }
        for room in self.inner.store.list_rooms().await? {
            if room.num_participants > 0 {
                continue;
            }
            let since = self
                .live()
                .get(&room.name)
                .and_then(|lr| lr.empty_since)
                .unwrap_or(room.created_at);
            let timeout_s = if room.empty_timeout_s > 0 {
                room.empty_timeout_s
            } else {
                self.inner.settings.default_empty_timeout_s
            };
            if now_ms.saturating_sub(since) >= u64::from(timeout_s) * 1000 {
                let guard = self.lock_room(&room.name).await;
                // Someone may have joined while we waited for the lock.
                if let Some(current) = self.inner.store.get_room(&room.name).await? {
                    if current.num_participants == 0 && current.sid == room.sid {
                        self.close_room(current, "room_closed", now_ms).await?;
                    }
                }
                drop(guard);
                self.forget_room_lock(&room.name);
            }
        }
        Ok(())
    }

    /// Routes what the media plane reports to the sessions concerned.
    pub async fn handle_media_event(&self, event: MediaEvent) {
        let to_session = |p: &ParticipantRef, msg: ServerMessage| {
            let live = self.live();
            if let Some(lr) = live.get(&p.room) {
                if let Some(s) = lr.sessions.values().find(|s| s.sid == p.sid) {
                    if let Some(conn) = &s.conn {
                        conn.send(msg);
                    }
                }
            }
        };
        match event {
            MediaEvent::Offer { participant, sdp } => to_session(
                &participant,
                ServerMessage::Offer {
                    sdp,
                    target: Target::Subscriber,
                },
            ),
            MediaEvent::Answer { participant, sdp } => to_session(
                &participant,
                ServerMessage::Answer {
                    sdp,
                    target: Target::Publisher,
                },
            ),
            MediaEvent::IceCandidate {
                participant,
                target,
                candidate,
            } => to_session(&participant, ServerMessage::Trickle { target, candidate }),
            MediaEvent::TrackMediaStarted { .. } => {}
            MediaEvent::Connected { participant } => {
                self.set_state(&participant, ParticipantState::Active).await;
            }
            MediaEvent::Disconnected { participant } => {
                self.set_state(&participant, ParticipantState::Joined).await;
            }
            MediaEvent::Speakers { room, speakers } => {
                let live = self.live();
                if let Some(lr) = live.get(&room) {
                    let hidden: HashSet<&str> = lr
                        .sessions
                        .values()
                        .filter(|s| s.hidden)
                        .map(|s| s.sid.as_str())
                        .collect();
                    let speakers = speakers
                        .into_iter()
                        .filter(|s| !hidden.contains(s.participant_sid.as_str()))
                        .collect();
                    lr.broadcast(None, false, &ServerMessage::Speakers { speakers });
                }
            }
            MediaEvent::Quality { room, updates } => {
                let live = self.live();
                if let Some(lr) = live.get(&room) {
                    for (_, s) in lr.sessions.iter() {
                        let mine: Vec<_> = updates.iter().filter(|u| u.participant_sid == s.sid).cloned().collect();
                        if let (false, Some(conn)) = (mine.is_empty(), &s.conn) {
                            conn.send(ServerMessage::ConnectionQuality { updates: mine });
                        }
                    }
                }
            }
        }
    }

    async fn set_state(&self, pref: &ParticipantRef, state: ParticipantState) {
        let _guard = self.lock_room(&pref.room).await;
        let identity = {
            let live = self.live();
            live.get(&pref.room).and_then(|lr| {
                lr.sessions
                    .iter()
                    .find(|(_, s)| s.sid == pref.sid)
                    .map(|(id, s)| (id.clone(), s.hidden))
            })
        };
        let Some((identity, hidden)) = identity else { return };
        let Ok(Some(mut p)) = self.inner.store.get_participant(&pref.room, &identity).await else {
            return;
        };
        if p.sid != pref.sid || p.state == state || p.state == ParticipantState::Disconnected {
            return;
        }
        p.state = state;
        if self.inner.store.put_participant(&pref.room, p.clone()).await.is_ok() {
            if let Some(lr) = self.live().get(&pref.room) {
                let msg = ServerMessage::ParticipantUpdated { participant: p };
                lr.send_to(&identity, msg.clone());
                lr.broadcast(Some(&identity), hidden, &msg);
            }
        }
    }

    /// Runs the media event loop until the media plane drops its sender.
    pub async fn run_media_events(self, mut rx: mpsc::Receiver<MediaEvent>) {
        while let Some(event) = rx.recv().await {
            self.handle_media_event(event).await;
        }
    }
}

#[cfg(test)]
mod tests;
