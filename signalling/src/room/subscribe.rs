//! Subscriptions (requested and automatic) and per-subscription track settings.
use super::sessions::SessionHandle;
use super::{Result, RoomError, RoomService};
use crate::media::{ParticipantRef, TrackSettings};
use crate::model::{Participant, Track};
use crate::ws::protocol::ServerMessage;

impl RoomService {
    /// Subscribes `p` to every visible track of others it is not yet subscribed to.
    pub(super) async fn auto_subscribe_all(&self, room: &str, p: &Participant) -> Result<()> {
        for other in self.visible_others(room, &p.identity).await? {
            for t in &other.tracks {
                self.subscribe_locked(room, p, &other, t);
            }
        }
        Ok(())
    }

    pub(super) fn subscribe_locked(&self, room: &str, sub: &Participant, publisher: &Participant, track: &Track) {
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
}
