//! Ending sessions (leave, kick, duplicate identity, resume timeout) and
//! closing rooms; a dropped WebSocket only marks its session disconnected.
use super::events::RoomEvent;
use super::sessions::SessionHandle;
use super::{Result, RoomService};
use crate::media::ParticipantRef;
use crate::model::{ParticipantState, Room};
use crate::ws::protocol::ServerMessage;

impl RoomService {
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
    pub(super) async fn end_session(
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

    /// The caller holds the room lock.
    pub(super) async fn close_room(&self, room: Room, reason: &str, now_ms: u64) -> Result<()> {
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
}
