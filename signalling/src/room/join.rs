//! Joining a room (creating it if needed) and resuming a dropped session.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, watch};

use super::events::RoomEvent;
use super::sessions::{random_token, Conn, Joined, LiveSession, SessionHandle};
use super::{unix_s, validate_name, Caller, CreateRoom, Result, RoomError, RoomService};
use crate::model::{self, Participant, ParticipantState};
use crate::ws::protocol::ServerMessage;

impl RoomService {
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
                    layers_wanted: HashMap::new(),
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
            // Queued behind `joined`: updates sent during the gap were lost.
            for (track_sid, qualities) in &s.layers_wanted {
                conn.send(ServerMessage::LayersWanted {
                    track_sid: track_sid.clone(),
                    qualities: qualities.clone(),
                });
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
}
