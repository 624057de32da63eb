//! [`MediaPlane`] over the in-process SFU ([`sfu::Sfu`]).
//!
//! # Design
//! One task (the adapter) owns every mapping between the two worlds and
//! handles, in order, both the room service's calls and the SFU's events:
//! - signalling names participants by [`ParticipantRef`] (room, session sid)
//!   and tracks by `track_sid`; the SFU by [`ParticipantId`] and [`TrackId`]
//!   (publisher, mid). A participant gets its SFU participant on first use
//!   (its publisher offer, or its first subscription);
//! - a track becomes known to the SFU when the publisher's offer carries an
//!   m-line whose msid track id equals the track's `cid`
//!   ([`SfuEvent::TrackPublished`]); signalling's `publish` may come before
//!   or after that event, so whichever comes first waits for the other;
//! - a subscription is recorded at once and applied to the SFU when both
//!   sides exist; one requested before the publisher's offer is applied when
//!   the track appears (and again if the publisher reconnects).
//!
//! Because the trait's calls other than `offer` are synchronous and the
//! SFU's are asynchronous, calls are queued to the adapter and executed one
//! at a time; one queue keeps a participant's `subscribe` before its
//! `unsubscribe`, which spawning a task per call would not. Their failures
//! are logged, since the trait has already returned. The SFU's shards never
//! wait on the adapter (its event channel is unbounded), so awaiting a shard
//! here cannot deadlock.
//!
//! Unpublishing and muting are the SFU's own ([`Sfu::unpublish`],
//! [`Sfu::set_muted`]): forwarding stops at once and subscribers are offered
//! the m-line stopped. A track muted before its m-line reached the SFU is
//! muted there when it does.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sfu::participant::Role;
use sfu::{ParticipantId, Sfu, SfuEvent, TrackId};
use str0m::media::Rid;
use tokio::sync::{mpsc, oneshot};

use crate::media::{
    IceCandidate, MediaError, MediaEvent, MediaPlane, ParticipantRef, SpeakerInfo, Target, TrackSettings,
};
use crate::model::{Quality, Track, VideoLayer};

/// Subscribers hear of their bandwidth estimate at most this often.
const ESTIMATE_EVERY: Duration = Duration::from_millis(250);

/// The media plane backed by [`Sfu`]. Cheap to share; the adapter task
/// ends when the last clone is dropped and the SFU's event stream closes.
pub struct SfuMedia {
    ops: mpsc::UnboundedSender<Op>,
}

impl SfuMedia {
    /// Starts the adapter task (call inside a Tokio runtime). `events` is
    /// the stream [`Sfu::start`] returned; `out` is the sender of
    /// [`crate::media::event_channel`].
    pub fn new(sfu: Arc<Sfu>, events: mpsc::UnboundedReceiver<SfuEvent>, out: mpsc::Sender<MediaEvent>) -> Self {
        let (ops, ops_rx) = mpsc::unbounded_channel();
        let adapter = Adapter {
            sfu,
            out,
            members: HashMap::new(),
            by_id: HashMap::new(),
            tracks: HashMap::new(),
            by_sfu_track: HashMap::new(),
            unclaimed: HashMap::new(),
            subs: HashMap::new(),
            estimates_sent: HashMap::new(),
        };
        tokio::spawn(adapter.run(ops_rx, events));
        SfuMedia { ops }
    }

    /// Ends the adapter task, which drops its [`Sfu`] handle (so the owner
    /// can shut the SFU down); later calls fail with `Unavailable`.
    pub async fn stop(&self) {
        let (reply, done) = oneshot::channel();
        if self.ops.send(Op::Stop { reply }).is_ok() {
            let _ = done.await;
        }
    }

    fn queue(&self, op: Op) -> Result<(), MediaError> {
        self.ops.send(op).map_err(|_| MediaError::Unavailable)
    }
}

/// A call of the room service, queued to the adapter.
enum Op {
    Offer {
        p: ParticipantRef,
        sdp: String,
        reply: oneshot::Sender<Result<String, MediaError>>,
    },
    Answer {
        p: ParticipantRef,
        sdp: String,
    },
    Candidate {
        p: ParticipantRef,
        role: Role,
        candidate: String,
    },
    Publish {
        p: ParticipantRef,
        track: Track,
    },
    Unpublish {
        p: ParticipantRef,
        track_sid: String,
    },
    Mute {
        p: ParticipantRef,
        track_sid: String,
        muted: bool,
    },
    Subscribe {
        sub: ParticipantRef,
        publisher: ParticipantRef,
        track: Track,
    },
    Unsubscribe {
        sub: ParticipantRef,
        track_sid: String,
    },
    Settings {
        sub: ParticipantRef,
        track_sid: String,
        settings: TrackSettings,
    },
    Remove {
        p: ParticipantRef,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

#[async_trait]
impl MediaPlane for SfuMedia {
    async fn offer(&self, participant: &ParticipantRef, target: Target, sdp: String) -> Result<String, MediaError> {
        if target == Target::Subscriber {
            // The SFU is always the offerer on the subscriber connection.
            return Err(MediaError::Unsupported(
                "client offers on the subscriber connection are not supported; answer the server's offer".into(),
            ));
        }
        let (reply, rx) = oneshot::channel();
        self.queue(Op::Offer {
            p: participant.clone(),
            sdp,
            reply,
        })?;
        rx.await.map_err(|_| MediaError::Unavailable)?
    }

    fn answer(&self, participant: &ParticipantRef, target: Target, sdp: String) -> Result<(), MediaError> {
        if target == Target::Publisher {
            return Err(MediaError::Unsupported(
                "the server sends no offer on the publisher connection".into(),
            ));
        }
        self.queue(Op::Answer {
            p: participant.clone(),
            sdp,
        })
    }

    fn ice_candidate(
        &self,
        participant: &ParticipantRef,
        target: Target,
        candidate: IceCandidate,
    ) -> Result<(), MediaError> {
        self.queue(Op::Candidate {
            p: participant.clone(),
            role: role_of(target),
            candidate: candidate.candidate,
        })
    }

    fn publish(&self, participant: &ParticipantRef, track: &Track) -> Result<(), MediaError> {
        self.queue(Op::Publish {
            p: participant.clone(),
            track: track.clone(),
        })
    }

    fn unpublish(&self, participant: &ParticipantRef, track_sid: &str) -> Result<(), MediaError> {
        self.queue(Op::Unpublish {
            p: participant.clone(),
            track_sid: track_sid.into(),
        })
    }

    fn set_muted(&self, participant: &ParticipantRef, track_sid: &str, muted: bool) -> Result<(), MediaError> {
        self.queue(Op::Mute {
            p: participant.clone(),
            track_sid: track_sid.into(),
            muted,
        })
    }

    fn subscribe(
        &self,
        subscriber: &ParticipantRef,
        publisher: &ParticipantRef,
        track: &Track,
    ) -> Result<(), MediaError> {
        self.queue(Op::Subscribe {
            sub: subscriber.clone(),
            publisher: publisher.clone(),
            track: track.clone(),
        })
    }

    fn unsubscribe(&self, subscriber: &ParticipantRef, track_sid: &str) -> Result<(), MediaError> {
        self.queue(Op::Unsubscribe {
            sub: subscriber.clone(),
            track_sid: track_sid.into(),
        })
    }

    fn set_track_settings(
        &self,
        subscriber: &ParticipantRef,
        track_sid: &str,
        settings: &TrackSettings,
    ) -> Result<(), MediaError> {
        self.queue(Op::Settings {
            sub: subscriber.clone(),
            track_sid: track_sid.into(),
            settings: settings.clone(),
        })
    }

    fn remove_participant(&self, participant: &ParticipantRef) {
        let _ = self.queue(Op::Remove { p: participant.clone() });
    }
}

fn role_of(target: Target) -> Role {
    match target {
        Target::Publisher => Role::Publisher,
        Target::Subscriber => Role::Subscriber,
    }
}

fn media_error(e: sfu::Error) -> MediaError {
    match e {
        sfu::Error::Sdp(m) => MediaError::InvalidSdp(m),
        sfu::Error::Closed => MediaError::Unavailable,
        sfu::Error::Unknown => MediaError::Unknown("not known to the SFU".into()),
        other => MediaError::Failed(other.to_string()),
    }
}

/// A track signalling announced, and what the SFU knows of it.
struct TrackEntry {
    publisher: ParticipantRef,
    cid: String,
    layers: Vec<VideoLayer>,
    muted: bool,
    /// Set once the publisher's offer carried the track's m-line.
    sfu: Option<SfuTrack>,
}

struct SfuTrack {
    id: TrackId,
    /// Simulcast rids, lowest quality first (empty for a single stream).
    rids: Vec<Rid>,
}

/// An m-line the SFU reported before signalling's `publish` named it.
struct Unclaimed {
    id: TrackId,
    rids: Vec<Rid>,
    msid: String,
}

/// One subscription as signalling asked for it.
#[derive(Default)]
struct Sub {
    settings: TrackSettings,
    /// The SFU forwards it (both sides existed when it was applied).
    applied: bool,
}

struct Adapter {
    sfu: Arc<Sfu>,
    out: mpsc::Sender<MediaEvent>,
    /// Each participant's SFU participant, once it has one.
    members: HashMap<ParticipantRef, ParticipantId>,
    by_id: HashMap<ParticipantId, ParticipantRef>,
    /// By track sid.
    tracks: HashMap<String, TrackEntry>,
    by_sfu_track: HashMap<TrackId, String>,
    /// By publisher: m-lines waiting for signalling's `publish`.
    unclaimed: HashMap<ParticipantId, Vec<Unclaimed>>,
    /// By subscriber, then track sid.
    subs: HashMap<ParticipantRef, HashMap<String, Sub>>,
    /// When each subscriber was last told its bandwidth estimate: str0m
    /// updates it with every feedback, far more often than anyone reads it.
    estimates_sent: HashMap<ParticipantId, Instant>,
}

impl Adapter {
    async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>, mut events: mpsc::UnboundedReceiver<SfuEvent>) {
        loop {
            tokio::select! {
                op = ops.recv() => match op {
                    Some(Op::Stop { reply }) => {
                        // Let go of the SFU handle before saying so.
                        drop(self);
                        let _ = reply.send(());
                        return;
                    }
                    Some(op) => self.on_op(op).await,
                    // Every SfuMedia is gone: nothing can ask for anything.
                    None => return,
                },
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => {
                        tracing::info!("SFU event stream ended; media adapter stops");
                        return;
                    }
                },
            }
        }
    }

    /// The participant's SFU participant, created on first use in its room
    /// (which pins it to the room's shard).
    async fn member(&mut self, p: &ParticipantRef) -> Result<ParticipantId, MediaError> {
        if let Some(id) = self.members.get(p) {
            return Ok(*id);
        }
        let info = self.sfu.create_participant(&p.room).await.map_err(media_error)?;
        self.members.insert(p.clone(), info.id);
        self.by_id.insert(info.id, p.clone());
        Ok(info.id)
    }

    async fn on_op(&mut self, op: Op) {
        match op {
            Op::Offer { p, sdp, reply } => {
                let result = self.offer(&p, sdp).await;
                // The caller may have gone (session closed); nothing to tell.
                let _ = reply.send(result);
            }
            Op::Answer { p, sdp } => {
                let Some(id) = self.members.get(&p).copied() else {
                    tracing::debug!(sid = %p.sid, "answer from a participant the SFU never offered to");
                    return;
                };
                if let Err(e) = self.sfu.answer(id, sdp).await {
                    tracing::info!(sid = %p.sid, error = %e, "subscriber answer refused");
                }
            }
            Op::Candidate { p, role, candidate } => {
                let Some(id) = self.members.get(&p).copied() else {
                    return;
                };
                if let Err(e) = self.sfu.add_ice_candidate(id, role, candidate).await {
                    tracing::debug!(sid = %p.sid, error = %e, "remote candidate refused");
                }
            }
            Op::Publish { p, track } => self.publish(p, track).await,
            Op::Unpublish { p, track_sid } => self.unpublish(&p, &track_sid).await,
            Op::Mute { p, track_sid, muted } => self.mute(&p, &track_sid, muted).await,
            Op::Subscribe { sub, publisher, track } => {
                if !self.tracks.contains_key(&track.sid) {
                    // `publish` always comes first from the room service;
                    // if it did not, the subscription still knows the track.
                    self.publish(publisher, track.clone()).await;
                }
                self.subs
                    .entry(sub.clone())
                    .or_default()
                    .entry(track.sid.clone())
                    .or_default();
                self.apply(&sub, &track.sid).await;
            }
            Op::Unsubscribe { sub, track_sid } => self.unsubscribe(&sub, &track_sid).await,
            Op::Settings {
                sub,
                track_sid,
                settings,
            } => {
                let Some(s) = self.subs.get_mut(&sub).and_then(|m| m.get_mut(&track_sid)) else {
                    return;
                };
                s.settings = settings;
                if s.applied {
                    self.push_settings(&sub, &track_sid).await;
                }
            }
            Op::Remove { p } => {
                tracing::debug!(sid = %p.sid, "participant removed from the SFU");
                self.remove(&p)
            }
            Op::Stop { .. } => {}
        }
    }

    async fn offer(&mut self, p: &ParticipantRef, sdp: String) -> Result<String, MediaError> {
        let fresh = !self.members.contains_key(p);
        let id = self.member(p).await?;
        let answer = self.sfu.offer(id, sdp).await.map_err(media_error)?;
        if fresh {
            // A participant that lost its SFU session (Disconnected) gets a
            // new one here: its subscriptions are set up again.
            self.apply_all_of(p).await;
        }
        Ok(answer)
    }

    async fn publish(&mut self, p: ParticipantRef, track: Track) {
        let mut entry = TrackEntry {
            publisher: p.clone(),
            cid: track.cid.clone(),
            layers: track.layers.clone(),
            muted: track.muted,
            sfu: None,
        };
        // The offer may have carried the m-line already.
        let claimed = self.members.get(&p).copied().and_then(|id| {
            let list = self.unclaimed.get_mut(&id)?;
            let pos = list.iter().position(|u| u.msid == track.cid)?;
            Some(list.swap_remove(pos))
        });
        if let Some(u) = &claimed {
            self.by_sfu_track.insert(u.id, track.sid.clone());
            entry.sfu = Some(SfuTrack {
                id: u.id,
                rids: u.rids.clone(),
            });
        }
        self.tracks.insert(track.sid.clone(), entry);
        if claimed.is_some() {
            self.resolved(&track.sid).await;
        }
    }

    /// The track's m-line and signalling's announcement have met: carry
    /// over a mute made before, and apply the subscriptions waiting for it.
    async fn resolved(&mut self, track_sid: &str) {
        // Subscribers' m-lines carry msid `<participant sid> <track sid>`,
        // which is how clients tell which m-line is which track.
        if let Some((t, psid)) = self
            .tracks
            .get(track_sid)
            .and_then(|e| e.sfu.as_ref().map(|t| (t.id, e.publisher.sid.clone())))
        {
            if let Err(e) = self
                .sfu
                .set_track_msid(t.publisher, t, psid, track_sid.to_string())
                .await
            {
                tracing::debug!(track_sid, error = %e, "SFU msid failed");
            }
        }
        if let Some((t, true)) = self
            .tracks
            .get(track_sid)
            .and_then(|e| e.sfu.as_ref().map(|t| (t.id, e.muted)))
        {
            if let Err(e) = self.sfu.set_muted(t.publisher, t, true).await {
                tracing::debug!(track_sid, error = %e, "SFU mute failed");
            }
        }
        // A new SFU track counts every layer as sent and announces only
        // changes; a publisher whose earlier SFU session had some stopped
        // (dynacast) restarts them here, or a needed layer would stay off.
        if let Some((p, rids)) = self
            .tracks
            .get(track_sid)
            .and_then(|e| e.sfu.as_ref().map(|t| (e.publisher.clone(), t.rids.clone())))
            .filter(|(_, rids)| !rids.is_empty())
        {
            let ev = MediaEvent::LayersWanted {
                participant: p,
                track_sid: track_sid.to_string(),
                qualities: qualities_of(&rids, &rids),
            };
            self.emit(ev).await;
        }
        self.apply_track(track_sid).await;
    }

    async fn unpublish(&mut self, p: &ParticipantRef, track_sid: &str) {
        let Some(entry) = self.tracks.get(track_sid) else {
            return;
        };
        if &entry.publisher != p {
            return;
        }
        // The SFU ends every subscription to it with the track.
        for m in self.subs.values_mut() {
            m.remove(track_sid);
        }
        self.subs.retain(|_, m| !m.is_empty());
        let Some(t) = self.tracks.remove(track_sid).and_then(|e| e.sfu) else {
            return;
        };
        self.by_sfu_track.remove(&t.id);
        if let Err(e) = self.sfu.unpublish(t.id.publisher, t.id).await {
            tracing::debug!(track_sid, error = %e, "SFU unpublish failed");
        }
    }

    /// The publisher's renegotiation withdrew a track's m-line (the SFU
    /// already stopped it everywhere): the track forgets its SFU side, and
    /// the room service is told so that it unpublishes the track. When the
    /// client unpublished first, the track is gone here already.
    async fn track_withdrawn(&mut self, track: TrackId) {
        let Some(sid) = self.by_sfu_track.remove(&track) else {
            // Never claimed by a `publish`: nothing to tell anyone.
            if let Some(list) = self.unclaimed.get_mut(&track.publisher) {
                list.retain(|u| u.id != track);
            }
            return;
        };
        if let Some(e) = self.tracks.get_mut(&sid) {
            e.sfu = None;
        }
        for m in self.subs.values_mut() {
            if let Some(s) = m.get_mut(&sid) {
                s.applied = false;
            }
        }
        let Some(p) = self.by_id.get(&track.publisher).cloned() else {
            return;
        };
        self.emit(MediaEvent::TrackEnded {
            participant: p,
            track_sid: sid,
        })
        .await;
    }

    async fn mute(&mut self, p: &ParticipantRef, track_sid: &str, muted: bool) {
        let Some(entry) = self.tracks.get_mut(track_sid) else {
            return;
        };
        if &entry.publisher != p || entry.muted == muted {
            return;
        }
        entry.muted = muted;
        // Not in the SFU yet: `resolved` mutes it there.
        let Some(t) = entry.sfu.as_ref().map(|t| t.id) else {
            return;
        };
        if let Err(e) = self.sfu.set_muted(t.publisher, t, muted).await {
            tracing::debug!(track_sid, error = %e, "SFU mute failed");
        }
    }

    async fn unsubscribe(&mut self, sub: &ParticipantRef, track_sid: &str) {
        let Some(s) = self.subs.get_mut(sub).and_then(|m| m.remove(track_sid)) else {
            return;
        };
        if self.subs.get(sub).is_some_and(HashMap::is_empty) {
            self.subs.remove(sub);
        }
        if !s.applied {
            return;
        }
        let (Some(id), Some(t)) = (
            self.members.get(sub).copied(),
            self.tracks.get(track_sid).and_then(|e| e.sfu.as_ref()).map(|t| t.id),
        ) else {
            return;
        };
        if let Err(e) = self.sfu.unsubscribe(id, t).await {
            tracing::debug!(sid = %sub.sid, track_sid, error = %e, "SFU unsubscribe failed");
        }
    }

    /// Applies `sub`'s subscription to `track_sid` if both sides exist in
    /// the SFU and it is not applied yet.
    async fn apply(&mut self, sub: &ParticipantRef, track_sid: &str) {
        // Not wanted any more, or already forwarded.
        if self
            .subs
            .get(sub)
            .and_then(|m| m.get(track_sid))
            .is_none_or(|s| s.applied)
        {
            return;
        }
        let Some(track) = self.tracks.get(track_sid).and_then(|e| e.sfu.as_ref()).map(|t| t.id) else {
            // The publisher's offer has not carried it yet: applied on
            // TrackPublished.
            return;
        };
        let id = match self.member(sub).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(sid = %sub.sid, error = %e, "cannot create the subscriber in the SFU");
                return;
            }
        };
        match self.sfu.subscribe(id, track).await {
            Ok(()) => {
                let mut push = false;
                if let Some(s) = self.subs.get_mut(sub).and_then(|m| m.get_mut(track_sid)) {
                    s.applied = true;
                    push = s.settings != TrackSettings::default();
                }
                if push {
                    self.push_settings(sub, track_sid).await;
                }
            }
            // The publisher's SFU session is gone (it reconnects with a new
            // offer, and TrackPublished applies this again).
            Err(e) => tracing::debug!(sid = %sub.sid, track_sid, error = %e, "SFU subscribe failed"),
        }
    }

    /// Every waiting subscription of `sub`, and every waiting subscription
    /// to tracks `sub` publishes.
    async fn apply_all_of(&mut self, p: &ParticipantRef) {
        let mine: Vec<String> = self
            .subs
            .get(p)
            .map(|m| m.iter().filter(|(_, s)| !s.applied).map(|(t, _)| t.clone()).collect())
            .unwrap_or_default();
        for t in mine {
            self.apply(p, &t).await;
        }
    }

    async fn apply_track(&mut self, track_sid: &str) {
        let waiting: Vec<ParticipantRef> = self
            .subs
            .iter()
            .filter(|(_, m)| m.get(track_sid).is_some_and(|s| !s.applied))
            .map(|(s, _)| s.clone())
            .collect();
        for sub in waiting {
            self.apply(&sub, track_sid).await;
        }
    }

    /// Sends the SFU a subscription's settings: paused or not, and the layer
    /// its quality and size limits allow (a publisher's mute is the SFU's
    /// own, apart from this).
    async fn push_settings(&mut self, sub: &ParticipantRef, track_sid: &str) {
        let (Some(id), Some(entry), Some(s)) = (
            self.members.get(sub).copied(),
            self.tracks.get(track_sid),
            self.subs.get(sub).and_then(|m| m.get(track_sid)),
        ) else {
            return;
        };
        let Some(t) = &entry.sfu else { return };
        let paused = s.settings.paused;
        let rid = pick_rid(&t.rids, &entry.layers, &s.settings);
        let track = t.id;
        if let Err(e) = self.sfu.set_track_settings(id, track, paused, rid).await {
            tracing::debug!(sid = %sub.sid, track_sid, error = %e, "SFU track settings failed");
        }
        // The frame rate maps to temporal layers inside the SFU. Sizes of a
        // simulcast track are already applied through the pinned layer
        // above, so they are not passed twice (the SFU's own size cap would
        // pick differently); a track without rids may have spatial layers
        // inside its one stream (VP9 SVC), which only the SFU sees.
        let sized = t.rids.is_empty();
        let limits = sfu::Limits {
            max_width: if sized { s.settings.max_width } else { 0 },
            max_height: if sized { s.settings.max_height } else { 0 },
            max_fps: s.settings.max_fps,
            // The preferred quality likewise, as a spatial layer.
            max_spatial: s.settings.quality.filter(|_| sized).map(|q| match q {
                Quality::Low => 0,
                Quality::Medium => 1,
                Quality::High => 2,
            }),
        };
        if let Err(e) = self.sfu.set_track_limits(id, track, limits).await {
            tracing::debug!(sid = %sub.sid, track_sid, error = %e, "SFU track limits failed");
        }
    }

    fn remove(&mut self, p: &ParticipantRef) {
        if let Some(id) = self.members.remove(p) {
            self.by_id.remove(&id);
            self.unclaimed.remove(&id);
            self.sfu.remove_participant(id);
        }
        self.subs.remove(p);
        let mine: Vec<String> = self
            .tracks
            .iter()
            .filter(|(_, e)| &e.publisher == p)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in mine {
            if let Some(e) = self.tracks.remove(&sid) {
                if let Some(t) = e.sfu {
                    self.by_sfu_track.remove(&t.id);
                }
            }
            // The SFU dropped these subscriptions with the publisher.
            for m in self.subs.values_mut() {
                m.remove(&sid);
            }
        }
    }

    /// The SFU closed the participant's session (ICE/DTLS failure, close,
    /// panic): forget its SFU ids but keep what signalling asked for, so a
    /// new publisher offer (or subscription) sets everything up again.
    fn forget_session(&mut self, id: ParticipantId) -> Option<ParticipantRef> {
        let p = self.by_id.remove(&id)?;
        self.estimates_sent.remove(&id);
        self.members.remove(&p);
        self.unclaimed.remove(&id);
        for (sid, e) in self.tracks.iter_mut() {
            if e.sfu.as_ref().is_some_and(|t| t.id.publisher == id) {
                if let Some(t) = e.sfu.take() {
                    self.by_sfu_track.remove(&t.id);
                }
                for m in self.subs.values_mut() {
                    if let Some(s) = m.get_mut(sid) {
                        s.applied = false;
                    }
                }
            }
        }
        if let Some(m) = self.subs.get_mut(&p) {
            for s in m.values_mut() {
                s.applied = false;
            }
        }
        Some(p)
    }

    async fn on_event(&mut self, ev: SfuEvent) {
        match ev {
            SfuEvent::TrackPublished {
                track,
                rids,
                msid_track,
                ..
            } => {
                let Some(p) = self.by_id.get(&track.publisher).cloned() else {
                    return;
                };
                let found = self
                    .tracks
                    .iter()
                    .find(|(_, e)| e.publisher == p && e.sfu.is_none() && e.cid == msid_track)
                    .map(|(sid, _)| sid.clone());
                match found {
                    Some(sid) => {
                        if let Some(e) = self.tracks.get_mut(&sid) {
                            e.sfu = Some(SfuTrack { id: track, rids });
                        }
                        self.by_sfu_track.insert(track, sid.clone());
                        self.resolved(&sid).await;
                    }
                    // `publish` has not arrived yet; it claims this.
                    None => self.unclaimed.entry(track.publisher).or_default().push(Unclaimed {
                        id: track,
                        rids,
                        msid: msid_track,
                    }),
                }
            }
            SfuEvent::TrackUnpublished { track } => self.track_withdrawn(track).await,
            SfuEvent::TrackMediaStarted { track } => {
                let (Some(sid), Some(p)) = (self.by_sfu_track.get(&track), self.by_id.get(&track.publisher)) else {
                    return;
                };
                let ev = MediaEvent::TrackMediaStarted {
                    participant: p.clone(),
                    track_sid: sid.clone(),
                };
                self.emit(ev).await;
            }
            SfuEvent::Offer { participant, sdp } => {
                let Some(p) = self.by_id.get(&participant).cloned() else {
                    return;
                };
                self.emit(MediaEvent::Offer { participant: p, sdp }).await;
            }
            // Either connection counts: a participant that only subscribes
            // is active too (the room service ignores a repeat).
            SfuEvent::Connected { participant, .. } => {
                let Some(p) = self.by_id.get(&participant).cloned() else {
                    return;
                };
                self.emit(MediaEvent::Connected { participant: p }).await;
            }
            SfuEvent::Disconnected { participant, panicked } => {
                if panicked {
                    tracing::error!(%participant, "the participant's WebRTC session panicked");
                }
                if let Some(p) = self.forget_session(participant) {
                    self.emit(MediaEvent::Disconnected { participant: p }).await;
                }
            }
            SfuEvent::Speakers { room, speakers } => {
                let speakers = speakers
                    .into_iter()
                    .filter_map(|(id, loudness)| {
                        self.by_id.get(&id).map(|p| SpeakerInfo {
                            participant_sid: p.sid.clone(),
                            level: loudness.clamp(0.0, 1.0),
                        })
                    })
                    .collect();
                // Superseded by the next update: dropping one under
                // pressure is harmless, waiting would delay offers.
                if self.out.try_send(MediaEvent::Speakers { room, speakers }).is_err() {
                    tracing::debug!("media event channel full; speaker update dropped");
                }
            }
            SfuEvent::Estimate { participant, bitrate } => {
                let now = Instant::now();
                let due = self
                    .estimates_sent
                    .get(&participant)
                    .is_none_or(|at| now.duration_since(*at) >= ESTIMATE_EVERY);
                let Some(p) = self.by_id.get(&participant).filter(|_| due).cloned() else {
                    return;
                };
                self.estimates_sent.insert(participant, now);
                // The next one supersedes it: droppable under pressure.
                let _ = self.out.try_send(MediaEvent::Estimate {
                    participant: p,
                    bitrate,
                });
            }
            // Already relayed by the SFU to the room's data channels;
            // signalling's data messages travel over WebSocket instead.
            SfuEvent::Data { .. } => {}
            // Dynacast: the publisher is told which layers to keep encoding.
            SfuEvent::LayersWanted { track, rids } => {
                let (Some(sid), Some(p)) = (self.by_sfu_track.get(&track), self.by_id.get(&track.publisher)) else {
                    return;
                };
                let all = self
                    .tracks
                    .get(sid)
                    .and_then(|e| e.sfu.as_ref())
                    .map(|t| t.rids.as_slice());
                let ev = MediaEvent::LayersWanted {
                    participant: p.clone(),
                    track_sid: sid.clone(),
                    qualities: qualities_of(&rids, all.unwrap_or(&[])),
                };
                self.emit(ev).await;
            }
        }
    }

    /// Events that must not be lost (offers, state changes) wait for room
    /// in the channel. The room service's event loop never waits on this
    /// adapter, so this cannot deadlock; meanwhile the SFU's events queue in
    /// its unbounded channel.
    async fn emit(&self, ev: MediaEvent) {
        if self.out.send(ev).await.is_err() {
            tracing::debug!("room service gone; media event dropped");
        }
    }
}

/// The qualities of the `wanted` rids, lowest first. Rids named by the
/// convention (`q`, `h`, `f`) map by name; others by their position among
/// the track's rids `all` (lowest first; first = low, last = high), the
/// inverse of [`pick_rid`]'s fallback. Dropping an unnamed rid instead would
/// tell its publisher to stop a layer that is needed.
fn qualities_of(wanted: &[Rid], all: &[Rid]) -> Vec<Quality> {
    let mut out: Vec<Quality> = wanted
        .iter()
        .filter_map(|rid| {
            Quality::from_rid(rid).or_else(|| {
                let i = all.iter().position(|r| r == rid)?;
                Some(match i {
                    0 => Quality::Low,
                    i if i + 1 == all.len() => Quality::High,
                    _ => Quality::Medium,
                })
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The simulcast layer a subscription asks for, or `None` to leave it to
/// the SFU's allocator. `rids` is lowest quality first. A preferred quality
/// picks the rid of the same name (`q`, `h`, `f`) or, failing that, the
/// layer at that position (low = first, high = last); size limits then cap
/// it by the published layer dimensions.
fn pick_rid(rids: &[Rid], layers: &[VideoLayer], s: &TrackSettings) -> Option<Rid> {
    if rids.is_empty() || (s.quality.is_none() && s.max_width == 0 && s.max_height == 0) {
        return None;
    }
    let last = rids.len() - 1;
    let top = match s.quality {
        Some(q) => rids.iter().position(|r| &**r == q.rid()).unwrap_or(match q {
            Quality::Low => 0,
            Quality::Medium => 1.min(last),
            Quality::High => last,
        }),
        None => last,
    };
    let fits = |rid: &Rid| {
        let Some(q) = Quality::from_rid(rid) else { return true };
        let Some(l) = layers.iter().find(|l| l.quality == q) else {
            return true;
        };
        (s.max_width == 0 || l.width <= s.max_width) && (s.max_height == 0 || l.height <= s.max_height)
    };
    let pick = (0..=top).rev().find(|i| fits(&rids[*i])).unwrap_or(0);
    Some(rids[pick])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rids(names: &[&str]) -> Vec<Rid> {
        names.iter().map(|n| Rid::from(*n)).collect()
    }

    fn layer(quality: Quality, width: u32, height: u32) -> VideoLayer {
        VideoLayer {
            quality,
            width,
            height,
            bitrate: 0,
        }
    }

    #[test]
    fn quality_and_size_pick_a_layer() {
        let r = rids(&["q", "h", "f"]);
        let layers = [
            layer(Quality::Low, 320, 180),
            layer(Quality::Medium, 640, 360),
            layer(Quality::High, 1280, 720),
        ];
        let s = |quality, max_width| TrackSettings {
            quality,
            max_width,
            ..Default::default()
        };
        assert_eq!(pick_rid(&r, &layers, &s(None, 0)), None);
        assert_eq!(pick_rid(&r, &layers, &s(Some(Quality::Low), 0)).as_deref(), Some("q"));
        assert_eq!(pick_rid(&r, &layers, &s(Some(Quality::High), 0)).as_deref(), Some("f"));
        assert_eq!(
            pick_rid(&r, &layers, &s(Some(Quality::High), 700)).as_deref(),
            Some("h")
        );
        assert_eq!(pick_rid(&r, &layers, &s(None, 100)).as_deref(), Some("q"));
        // Rids named otherwise: by position, low = first.
        let r = rids(&["a", "b"]);
        assert_eq!(pick_rid(&r, &[], &s(Some(Quality::Low), 0)).as_deref(), Some("a"));
        assert_eq!(pick_rid(&r, &[], &s(Some(Quality::Medium), 0)).as_deref(), Some("b"));
        assert_eq!(pick_rid(&[], &[], &s(Some(Quality::High), 0)), None);
    }

    #[test]
    fn wanted_rids_map_to_qualities() {
        use Quality::*;
        let all = rids(&["q", "h", "f"]);
        assert_eq!(qualities_of(&rids(&["f", "q"]), &all), [Low, High]);
        assert_eq!(qualities_of(&all, &all), [Low, Medium, High]);
        assert_eq!(qualities_of(&[], &all), []);
        // Other names: by position among the track's rids, never dropped.
        let all = rids(&["a", "b", "c"]);
        assert_eq!(qualities_of(&rids(&["b"]), &all), [Medium]);
        assert_eq!(qualities_of(&rids(&["a", "c"]), &all), [Low, High]);
        let all = rids(&["lo", "hi"]);
        assert_eq!(qualities_of(&rids(&["hi"]), &all), [High]);
        // Not one of the track's rids: nothing to name it by.
        assert_eq!(qualities_of(&rids(&["z"]), &all), []);
    }
}
