//! Messages passed through a session: data to other participants, and SDP
//! offers, answers and ICE candidates to the media plane.
use super::sessions::SessionHandle;
use super::{Result, RoomError, RoomService};
use crate::media::{IceCandidate, Target};
use crate::ws::protocol::ServerMessage;

impl RoomService {
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
}
