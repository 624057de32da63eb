//! Participant updates from the REST API, and permission changes applied to
//! a live session at once: unpublishing what may no longer be published,
//! ending subscriptions that may no longer be held, re-subscribing.
use super::{Caller, Result, RoomError, RoomService, UpdateParticipant};
use crate::media::ParticipantRef;
use crate::model::{Participant, Permissions, Track};
use crate::ws::protocol::ServerMessage;

impl RoomService {
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
}
