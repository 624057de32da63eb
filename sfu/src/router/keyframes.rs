//! Keyframe requests upstream: subscribers' PLI/FIR and layer switches ask
//! the publisher for a keyframe of one layer, throttled and coalesced per
//! layer ([`crate::simulcast::KeyframeRequester`]); so does a temporal
//! upswitch that found no switching point in time.
use std::time::{Duration, Instant};

use str0m::media::{KeyframeRequestKind, MediaKind, Rid};

use super::{layer_of, Router, TrackId};

/// How long a down-track's temporal filter may stay below its target
/// before the SFU asks for a keyframe. Going up needs a frame marked as a
/// switching point (VP8 Y, VP9 U) or a keyframe, and an encoder may mark
/// few or none: a subscriber whose frame rate limit was lifted then stays
/// at the lower rate until somebody else's request brings a keyframe (seen
/// with Chromium: 5 fps for 30 s). At 30 fps a pattern with switching
/// points has one within a few frames.
const TEMPORAL_UPSWITCH_WAIT: Duration = Duration::from_millis(1500);

impl Router {
    /// Asks the publisher for a keyframe on one layer, at most once per
    /// [`crate::simulcast::KEYFRAME_THROTTLE`]; a request inside the window
    /// is owed and sent when it ends (see [`Router::send_owed_keyframe_requests`]).
    pub(super) fn request_keyframe(
        &mut self,
        now: Instant,
        source: TrackId,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
    ) {
        let Some(track) = self.tracks.get_mut(&source) else {
            return;
        };
        if track.kind != MediaKind::Video {
            return;
        }
        if track.keyframes.request(now, layer_of(&track.rids, rid) as u8) {
            self.send_keyframe_request(source, rid, kind);
        }
    }

    pub(super) fn send_keyframe_request(&mut self, source: TrackId, rid: Option<Rid>, kind: KeyframeRequestKind) {
        let Some(pid) = self.participants.get(&source.publisher).map(|p| p.publisher) else {
            return;
        };
        if let Some(peer) = self.peer_mut(pid) {
            peer.guard(|rtc| {
                if let Some(s) = rtc.direct_api().stream_rx_by_mid(source.mid, rid) {
                    s.request_keyframe(kind);
                }
            });
            self.mark_dirty(pid, 0);
        }
    }

    /// Sends the keyframe requests the throttle deferred. Without this, a
    /// subscriber that joined within the throttle window of another never
    /// got a picture from a browser publisher (seen by sfu-load's churn).
    pub(super) fn send_owed_keyframe_requests(&mut self, now: Instant) {
        let mut owed: Vec<(TrackId, Option<Rid>)> = Vec::new();
        for (id, track) in self.tracks.iter_mut() {
            if !track.keyframes.has_pending() {
                continue;
            }
            while let Some(layer) = track.keyframes.take_due(now) {
                owed.push((*id, track.rids.get(usize::from(layer)).copied()));
            }
        }
        for (id, rid) in owed {
            self.send_keyframe_request(id, rid, KeyframeRequestKind::Pli);
        }
    }

    /// Asks for a keyframe of the forwarded layer for every down-track
    /// whose temporal filter has stayed below its target for
    /// [`TEMPORAL_UPSWITCH_WAIT`], then waits as long again. Control rate
    /// (the keyframe tick), not the packet path.
    pub(super) fn unstick_temporal_upswitches(&mut self, now: Instant) {
        let mut requests: Vec<(TrackId, Option<Rid>)> = Vec::new();
        for (pid, p) in self.participants.iter_mut() {
            for d in p.downs.values_mut() {
                if !d.temporal.wants_up() || d.paused || d.bw_paused || d.await_keyframe {
                    d.temporal_below_target_since = None;
                    continue;
                }
                let since = *d.temporal_below_target_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= TEMPORAL_UPSWITCH_WAIT {
                    d.temporal_below_target_since = Some(now);
                    tracing::debug!(participant = ?pid, track = ?d.source, current = ?d.temporal.current(), target = d.temporal.target(), "no temporal switching point in time: keyframe requested");
                    requests.push((d.source, d.current));
                }
            }
        }
        self.temporal_upswitch_keyframes += requests.len() as u64;
        for (source, rid) in requests {
            self.request_keyframe(now, source, rid, KeyframeRequestKind::Pli);
        }
    }
}
