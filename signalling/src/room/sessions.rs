//! The live session registry: the sessions connected to this node, their
//! bounded outbound queues, subscriptions and resume tokens, and the checks
//! that a session handle is still the live connection of its session.
//!
//! Fan-out to sessions uses `try_send` on bounded queues: a session whose
//! queue is full is a slow client and is disconnected (it may resume), so no
//! client can hold up the others or the room service.
use std::collections::{HashMap, HashSet};

use tokio::sync::{mpsc, watch};

use super::{Result, RoomError, RoomService};
use crate::media::ParticipantRef;
use crate::model::{self, Participant};
use crate::ws::protocol::ServerMessage;

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

pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) tx: mpsc::Sender<ServerMessage>,
    pub(super) close: watch::Sender<Option<String>>,
    /// `rtc_signal_messages_dropped_total`, counted where the drop happens.
    pub(super) dropped: prometheus::IntCounter,
}

impl Conn {
    pub(super) fn send(&self, msg: ServerMessage) {
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

    pub(super) fn close(&self, reason: &str) {
        let _ = self.close.send(Some(reason.to_string()));
    }
}

pub(super) struct LiveSession {
    pub(super) sid: String,
    pub(super) token: String,
    pub(super) auto_subscribe: bool,
    pub(super) hidden: bool,
    pub(super) subscriptions: HashSet<String>,
    pub(super) conn: Option<Conn>,
    pub(super) disconnected_at: Option<u64>,
    /// Dynacast: the last `layers_wanted` per own track sid, replayed on
    /// resume (removed when the track is unpublished).
    pub(super) layers_wanted: HashMap<String, Vec<model::Quality>>,
}

#[derive(Default)]
pub(super) struct LiveRoom {
    pub(super) sessions: HashMap<String, LiveSession>,
    pub(super) empty_since: Option<u64>,
}

impl LiveRoom {
    pub(super) fn send_to(&self, identity: &str, msg: ServerMessage) {
        if let Some(conn) = self.sessions.get(identity).and_then(|s| s.conn.as_ref()) {
            conn.send(msg);
        }
    }

    /// Sends to every session except `except`; when `subject_hidden` the
    /// message concerns a hidden participant and goes to nobody else.
    pub(super) fn broadcast(&self, except: Option<&str>, subject_hidden: bool, msg: &ServerMessage) {
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

pub(super) fn random_token() -> String {
    format!("{}{}", model::new_sid("ST"), model::new_sid("X"))
}

impl RoomService {
    pub(super) fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveRoom>> {
        // Live state is only touched in short non-panicking sections; a
        // poisoned lock still holds consistent maps.
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks that `h` is still the live connection of its session.
    pub(super) fn check_session(&self, h: &SessionHandle) -> Result<()> {
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

    pub(super) async fn session_record(&self, h: &SessionHandle) -> Result<Participant> {
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
}
