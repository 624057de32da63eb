//! Keyframe requests upstream: subscribers' PLI/FIR and layer switches ask
//! the publisher for a keyframe of one layer, throttled and coalesced per
//! layer ([`crate::simulcast::KeyframeRequester`]).
use std::time::Instant;

use str0m::media::{KeyframeRequestKind, MediaKind, Rid};

use super::{layer_of, Router, TrackId};

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
}
