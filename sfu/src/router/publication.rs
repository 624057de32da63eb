//! A publisher's m-lines coming and going over renegotiations.
//!
//! A track is published while its m-line receives on our side (the client
//! sends on it). Browsers withdraw a track in one of two ways, and str0m
//! reports both as `MediaChanged`:
//! - `transceiver.stop()`: the next offer carries the m-line with port 0
//!   (str0m: `Inactive`, stopped for good); a later offer may recycle the
//!   slot for a new mid, which arrives as `MediaAdded`;
//! - `removeTrack`, or `direction = "inactive"` / `"recvonly"`: the same mid
//!   stops sending, and `addTrack`/`direction = "sendonly"` may bring it back.
//!
//! Going down, the router unpublishes exactly as when signalling asks
//! ([`Router::unpublish`]: forwarding stops at once, subscribers' m-lines
//! are stopped in their next offer, their other tracks untouched) and
//! reports [`SfuEvent::TrackUnpublished`]; coming back, the track is
//! published again under the same [`TrackId`] and reported with
//! [`SfuEvent::TrackPublished`], so signalling matches it to a track again.
use std::time::Instant;

use str0m::media::{Direction, MediaKind, Mid, Rid};

use super::{Router, SfuEvent, Track, TrackId};
use crate::mux::PeerId;
use crate::participant::Role;
use crate::router::ParticipantId;
use crate::simulcast::{KeyframeRequester, MAX_LAYERS};
use crate::temporal::TemporalStats;

impl Track {
    /// Spatial layers inside one stream (VP9 SVC) rather than simulcast.
    pub(super) fn is_svc(&self) -> bool {
        self.rids.is_empty() && self.spatial_layers > 1
    }

    /// How many layers the allocator chooses among.
    pub(super) fn layer_count(&self) -> usize {
        if self.is_svc() {
            usize::from(self.spatial_layers)
        } else {
            self.rids.len().clamp(1, MAX_LAYERS)
        }
    }

    pub(super) fn new(kind: MediaKind, rids: Vec<Rid>) -> Track {
        Track {
            kind,
            // Publishers start with every layer on.
            announced: ((1u16 << rids.len().min(MAX_LAYERS)) - 1) as u8,
            rids,
            dims: [(0, 0); MAX_LAYERS],
            subscribers: Vec::new(),
            params: Vec::new(),
            keyframes: KeyframeRequester::new(),
            started: false,
            muted: false,
            layer_bytes: [0; MAX_LAYERS],
            layer_bps: [None; MAX_LAYERS],
            last_bps: [None; MAX_LAYERS],
            window_start: None,
            unwanted_since: [None; MAX_LAYERS],
            resumed_at: [None; MAX_LAYERS],
            msid: None,
            temporal: TemporalStats::default(),
            av1: Default::default(),
            dd: Default::default(),
            spatial_layers: 0,
        }
    }
}

impl Router {
    /// A renegotiation changed the direction of one of `peer`'s m-lines.
    pub(super) fn on_media_changed(
        &mut self,
        now: Instant,
        peer: PeerId,
        owner: ParticipantId,
        role: Role,
        mid: Mid,
        direction: Direction,
    ) {
        if role != Role::Publisher {
            // Subscriber m-lines are ours to change; a client that turns
            // one down just stops decoding it.
            return;
        }
        let track = TrackId { publisher: owner, mid };
        let published = self.tracks.contains_key(&track);
        if direction.is_receiving() && !published {
            let Some((kind, rids, msid_track)) = self.peer_mut(peer).and_then(|p| p.media_info(mid)) else {
                return;
            };
            tracing::debug!(%track, "publisher resumed sending on an m-line: published again");
            self.publish_track(track, kind, rids, msid_track);
        } else if !direction.is_receiving() && published {
            tracing::debug!(%track, ?direction, "publisher stopped sending on an m-line: unpublished");
            if self.unpublish(now, owner, track).is_ok() {
                self.events.push_back(SfuEvent::TrackUnpublished { track });
            }
        }
    }

    /// Publishes a publisher's m-line that receives (new, or sending again).
    pub(super) fn publish_track(&mut self, track: TrackId, kind: MediaKind, rids: Vec<Rid>, msid_track: String) {
        self.tracks
            .entry(track)
            .or_insert_with(|| Track::new(kind, rids.clone()));
        self.events.push_back(SfuEvent::TrackPublished {
            track,
            kind,
            rids,
            msid_track,
        });
    }
}
