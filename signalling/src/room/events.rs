//! Events out of the room service: room lifecycle events for webhooks and
//! metrics ([`Notifier`]), and the media plane's events routed to sessions.
use std::collections::HashSet;

use tokio::sync::mpsc;

use super::RoomService;
use crate::media::{MediaEvent, ParticipantRef, Target};
use crate::model::{now_ms, Participant, ParticipantState, Room, Track};
use crate::ws::protocol::ServerMessage;

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

impl RoomService {
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
            MediaEvent::TrackEnded { participant, track_sid } => self.track_ended(&participant, &track_sid).await,
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
            MediaEvent::LayersWanted {
                participant,
                track_sid,
                qualities,
            } => {
                let msg = ServerMessage::LayersWanted {
                    track_sid: track_sid.clone(),
                    qualities: qualities.clone(),
                };
                let mut live = self.live();
                if let Some(s) = live
                    .get_mut(&participant.room)
                    .and_then(|lr| lr.sessions.values_mut().find(|s| s.sid == participant.sid))
                {
                    // Kept to be sent again on resume: one sent while the
                    // socket is down is lost, and a publisher that missed
                    // "needed again" would leave a watched layer stopped.
                    s.layers_wanted.insert(track_sid, qualities);
                    if let Some(conn) = &s.conn {
                        conn.send(msg);
                    }
                }
            }
            MediaEvent::Estimate { participant, bitrate } => {
                let live = self.live();
                let conn = live
                    .get(&participant.room)
                    .and_then(|lr| lr.sessions.values().find(|s| s.sid == participant.sid))
                    .and_then(|s| s.conn.as_ref());
                if let Some(conn) = conn {
                    conn.send(ServerMessage::BandwidthEstimate { bitrate });
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

    /// Unpublishes a track whose m-line its publisher withdrew without
    /// saying so, so the room stops listing media that no longer flows.
    async fn track_ended(&self, pref: &ParticipantRef, track_sid: &str) {
        let _guard = self.lock_room(&pref.room).await;
        let identity = {
            let live = self.live();
            live.get(&pref.room).and_then(|lr| {
                lr.sessions
                    .iter()
                    .find(|(_, s)| s.sid == pref.sid)
                    .map(|(id, _)| id.clone())
            })
        };
        let Some(identity) = identity else { return };
        let Ok(Some(p)) = self.inner.store.get_participant(&pref.room, &identity).await else {
            return;
        };
        if p.sid != pref.sid || !p.tracks.iter().any(|t| t.sid == track_sid) {
            return;
        }
        if let Err(e) = self.unpublish_locked(&pref.room, p, track_sid, now_ms()).await {
            tracing::debug!(track_sid, error = %e, "unpublishing an ended track failed");
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
