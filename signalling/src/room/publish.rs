//! Publishing, unpublishing and muting tracks (by their publisher or by an admin).
use super::events::RoomEvent;
use super::sessions::SessionHandle;
use super::{Caller, Result, RoomError, RoomService};
use crate::media::ParticipantRef;
use crate::model::{self, Participant, Track, TrackKind};
use crate::ws::protocol::{PublishTrack, ServerMessage};

impl RoomService {
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
    pub(super) async fn unpublish_locked(
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
                    s.layers_wanted.remove(track_sid);
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

    pub async fn mute_own(&self, h: &SessionHandle, track_sid: &str, muted: bool) -> Result<Track> {
        let _guard = self.lock_room(&h.room).await;
        self.session_record(h).await?;
        self.mute_locked(&h.room, &h.identity, track_sid, muted).await
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
}
