//! Per-subscriber bandwidth allocation across its down-tracks.
//!
//! [`allocate`] divides the subscriber's downlink estimate: audio first (it is
//! cheap and losing it breaks the call), then video in priority order (screen
//! share before camera, then the subscriber's priority, then track order),
//! each video getting the best layer that fits what is left. A video whose
//! lowest layer does not fit is paused rather than sent into congestion.
//!
//! Upgrading a video above the layer it currently forwards costs the layer's
//! bitrate plus 20% headroom ([`crate::simulcast::with_headroom`]), so a
//! noisy estimate does not make the layer flap and lower-priority tracks
//! cannot eat that headroom.
//!
//! The function is pure and allocation-free; remembering whether the estimate
//! is stable (before acting on a probe suggestion) is the caller's job.

use crate::simulcast::{with_headroom, MAX_LAYERS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackKind {
    Audio,
    Camera,
    ScreenShare,
}

impl TrackKind {
    fn rank(self) -> u8 {
        match self {
            TrackKind::Audio => 2,
            TrackKind::ScreenShare => 1,
            TrackKind::Camera => 0,
        }
    }
}

/// What one down-track could use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackDemand {
    pub kind: TrackKind,
    /// The subscriber's priority (higher first); map visibility here (or to
    /// `paused` for hidden tiles).
    pub priority: u8,
    /// Measured bitrate of each active layer, `None` for absent or inactive
    /// layers. Audio uses `layers[0]`.
    pub layers: [Option<u64>; MAX_LAYERS],
    /// Preference cap, e.g. from [`crate::simulcast::allowed_max_layer`].
    pub max_layer: u8,
    pub paused: bool,
    /// Layer currently forwarded.
    pub current: Option<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AllocationState {
    /// Audio, or video at the chosen layer.
    #[default]
    Forwarding,
    PausedByPreference,
    /// Even the lowest layer does not fit.
    PausedByBandwidth,
}

/// What one down-track may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    pub state: AllocationState,
    /// Chosen layer (`Some(0)` for audio), `None` when paused.
    pub layer: Option<u8>,
    /// Budget to give the track's selector (0 when paused).
    pub budget_bps: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocationSummary {
    /// Sum of all budgets.
    pub allocated_bps: u64,
    /// Suggested probe target (total bits/s) to discover whether the next
    /// upgrade fits; `None` when nothing wants more, or while some track is
    /// still switching (its layer differs from its current one).
    pub probe_bps: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocateError {
    #[error("{tracks} tracks but {allocations} allocation slots")]
    LengthMismatch { tracks: usize, allocations: usize },
}

/// Cost of `layer` for a track currently at `current`.
fn cost(bitrate: u64, layer: u8, current: Option<u8>) -> u64 {
    match current {
        Some(c) if layer > c => with_headroom(bitrate),
        _ => bitrate,
    }
}

/// Best layer at or below the track's cap that costs at most `budget`.
fn best_layer(track: &TrackDemand, budget: u64) -> Option<(u8, u64)> {
    let cap = usize::from(track.max_layer).min(MAX_LAYERS - 1);
    (0..=cap).rev().find_map(|l| {
        let bitrate = track.layers[l]?;
        let cost = cost(bitrate, l as u8, track.current);
        (cost <= budget).then_some((l as u8, cost))
    })
}

/// The next layer above `layer` (or the lowest when `None`) the track may use.
fn next_layer(track: &TrackDemand, layer: Option<u8>) -> Option<(u8, u64)> {
    let from = layer.map_or(0, |l| usize::from(l) + 1);
    let cap = usize::from(track.max_layer).min(MAX_LAYERS - 1);
    (from..=cap).find_map(|l| track.layers[l].map(|b| (l as u8, cost(b, l as u8, track.current))))
}

/// Ordering key of a video track: greater goes first; the index breaks ties
/// so the order is total.
fn order_key(tracks: &[TrackDemand], i: usize) -> (u8, u8, usize) {
    (tracks[i].kind.rank(), tracks[i].priority, usize::MAX - i)
}

/// Index of the video track that comes right after the one with key `after`
/// (`None` = the first). Quadratic, but allocation-free for the handful of
/// tracks a subscriber has.
fn next_video(tracks: &[TrackDemand], after: Option<(u8, u8, usize)>) -> Option<usize> {
    (0..tracks.len())
        .filter(|&i| tracks[i].kind != TrackKind::Audio)
        .filter(|&i| after.is_none_or(|a| order_key(tracks, i) < a))
        .max_by_key(|&i| order_key(tracks, i))
}

/// Divides `estimate_bps` across `tracks`, writing `out[i]` for `tracks[i]`.
pub fn allocate(
    estimate_bps: u64,
    tracks: &[TrackDemand],
    out: &mut [Allocation],
) -> Result<AllocationSummary, AllocateError> {
    if tracks.len() != out.len() {
        return Err(AllocateError::LengthMismatch {
            tracks: tracks.len(),
            allocations: out.len(),
        });
    }
    let mut remaining = estimate_bps;
    let mut allocated: u64 = 0;
    for (track, slot) in tracks.iter().zip(out.iter_mut()) {
        if track.kind == TrackKind::Audio {
            // Audio is never paused for bandwidth: without it there is no call.
            let bitrate = if track.paused { 0 } else { track.layers[0].unwrap_or(0) };
            *slot = Allocation {
                state: if track.paused {
                    AllocationState::PausedByPreference
                } else {
                    AllocationState::Forwarding
                },
                layer: (!track.paused).then_some(0),
                budget_bps: bitrate,
            };
            remaining = remaining.saturating_sub(bitrate);
            allocated = allocated.saturating_add(bitrate);
        }
    }

    let mut settled = true;
    // First video track (in priority order) that could go higher, and what
    // its next step would cost on top of its allocation.
    let mut wants_more: Option<u64> = None;
    let mut after = None;
    while let Some(i) = next_video(tracks, after) {
        after = Some(order_key(tracks, i));
        let track = &tracks[i];
        let alloc = if track.paused {
            Allocation {
                state: AllocationState::PausedByPreference,
                layer: None,
                budget_bps: 0,
            }
        } else {
            match best_layer(track, remaining) {
                Some((layer, cost)) => Allocation {
                    state: AllocationState::Forwarding,
                    layer: Some(layer),
                    budget_bps: cost,
                },
                None => Allocation {
                    state: AllocationState::PausedByBandwidth,
                    layer: None,
                    budget_bps: 0,
                },
            }
        };
        remaining -= alloc.budget_bps;
        allocated = allocated.saturating_add(alloc.budget_bps);
        out[i] = alloc;
        if track.paused {
            continue;
        }
        settled &= alloc.layer == track.current;
        if wants_more.is_none() {
            wants_more = next_layer(track, alloc.layer).map(|(_, cost)| cost.saturating_sub(alloc.budget_bps));
        }
    }

    let probe_bps = wants_more
        .filter(|_| settled)
        .map(|extra| allocated.saturating_add(extra))
        .filter(|&target| target > estimate_bps);
    Ok(AllocationSummary {
        allocated_bps: allocated,
        probe_bps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYERS: [Option<u64>; 3] = [Some(150_000), Some(500_000), Some(1_500_000)];

    fn audio() -> TrackDemand {
        TrackDemand {
            kind: TrackKind::Audio,
            priority: 0,
            layers: [Some(40_000), None, None],
            max_layer: 0,
            paused: false,
            current: Some(0),
        }
    }

    fn video(kind: TrackKind, priority: u8, current: Option<u8>) -> TrackDemand {
        TrackDemand {
            kind,
            priority,
            layers: LAYERS,
            max_layer: 2,
            paused: false,
            current,
        }
    }

    fn run(estimate: u64, tracks: &[TrackDemand]) -> (Vec<Allocation>, AllocationSummary) {
        let mut out = vec![Allocation::default(); tracks.len()];
        let summary = allocate(estimate, tracks, &mut out).expect("lengths match");
        (out, summary)
    }

    #[test]
    fn audio_first_even_when_starved() {
        let tracks = [video(TrackKind::Camera, 0, Some(0)), audio(), audio()];
        let (out, summary) = run(100_000, &tracks);
        assert_eq!(out[1].budget_bps, 40_000);
        assert_eq!(out[2].budget_bps, 40_000);
        assert_eq!(out[0].state, AllocationState::PausedByBandwidth);
        assert_eq!(summary.allocated_bps, 80_000);
        // Below the audio needs: audio still gets it.
        let (out, _) = run(10_000, &tracks);
        assert_eq!(out[1].layer, Some(0));
        assert_eq!(out[1].budget_bps, 40_000);
    }

    #[test]
    fn priority_order_screen_then_priority_then_track_order() {
        let tracks = [
            video(TrackKind::Camera, 0, Some(2)),
            video(TrackKind::Camera, 5, Some(2)),
            video(TrackKind::ScreenShare, 0, Some(2)),
            video(TrackKind::Camera, 5, Some(2)),
        ];
        let (out, _) = run(1_500_000 + 500_000 + 150_000 + 150_000, &tracks);
        let layers: Vec<_> = out.iter().map(|a| a.layer).collect();
        assert_eq!(layers, [Some(0), Some(1), Some(2), Some(0)]);
    }

    #[test]
    fn pauses_video_when_lowest_layer_does_not_fit() {
        let tracks = [
            video(TrackKind::Camera, 1, Some(0)),
            video(TrackKind::Camera, 0, Some(0)),
        ];
        let (out, _) = run(200_000, &tracks);
        assert_eq!(
            out[0],
            Allocation {
                state: AllocationState::Forwarding,
                layer: Some(0),
                budget_bps: 150_000
            }
        );
        assert_eq!(
            out[1],
            Allocation {
                state: AllocationState::PausedByBandwidth,
                layer: None,
                budget_bps: 0
            }
        );
    }

    #[test]
    fn preferences_are_respected() {
        let mut capped = video(TrackKind::Camera, 1, Some(1));
        capped.max_layer = 1;
        let mut paused = video(TrackKind::ScreenShare, 9, None);
        paused.paused = true;
        let mut holes = video(TrackKind::Camera, 0, Some(0));
        holes.layers = [None, Some(500_000), None];
        let (out, summary) = run(10_000_000, &[capped, paused, holes]);
        assert_eq!(out[0].layer, Some(1));
        assert_eq!(
            out[1],
            Allocation {
                state: AllocationState::PausedByPreference,
                layer: None,
                budget_bps: 0
            }
        );
        assert_eq!((out[2].layer, out[2].budget_bps), (Some(1), 600_000));
        assert_eq!(summary.allocated_bps, 1_100_000);
    }

    #[test]
    fn upgrades_cost_the_headroom() {
        // At layer 1: layer 2 needs 1.8 Mbit/s, 1.7 is not enough.
        let (out, _) = run(1_700_000, &[video(TrackKind::Camera, 0, Some(1))]);
        assert_eq!((out[0].layer, out[0].budget_bps), (Some(1), 500_000));
        let (out, _) = run(1_800_000, &[video(TrackKind::Camera, 0, Some(1))]);
        assert_eq!((out[0].layer, out[0].budget_bps), (Some(2), 1_800_000));
        // Already there: no headroom needed to stay.
        let (out, _) = run(1_500_000, &[video(TrackKind::Camera, 0, Some(2))]);
        assert_eq!((out[0].layer, out[0].budget_bps), (Some(2), 1_500_000));
        // Starting: no headroom either.
        let (out, _) = run(1_500_000, &[video(TrackKind::Camera, 0, None)]);
        assert_eq!(out[0].layer, Some(2));
    }

    #[test]
    fn probe_suggestion() {
        // Settled at layer 1 with 1.0 Mbit/s: probe for layer 2 with headroom.
        let tracks = [audio(), video(TrackKind::Camera, 0, Some(1))];
        let (_, summary) = run(1_000_000, &tracks);
        assert_eq!(summary.allocated_bps, 540_000);
        assert_eq!(summary.probe_bps, Some(40_000 + 1_800_000));
        // Still switching: no probe.
        let (_, summary) = run(1_000_000, &[audio(), video(TrackKind::Camera, 0, Some(0))]);
        assert_eq!(summary.probe_bps, None);
        // Everything at the top: no probe.
        let (_, summary) = run(5_000_000, &[audio(), video(TrackKind::Camera, 0, Some(2))]);
        assert_eq!(summary.probe_bps, None);
        // Paused by bandwidth: probe for its lowest layer.
        let (_, summary) = run(100_000, &[audio(), video(TrackKind::Camera, 0, None)]);
        assert_eq!(summary.probe_bps, Some(40_000 + 150_000));
        // The highest-priority track that wants more decides the step.
        let tracks = [
            video(TrackKind::Camera, 0, Some(0)),
            video(TrackKind::ScreenShare, 0, Some(1)),
        ];
        let (out, summary) = run(700_000, &tracks);
        assert_eq!((out[0].layer, out[1].layer), (Some(0), Some(1)));
        assert_eq!(summary.probe_bps, Some(150_000 + 1_800_000));
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let mut out = [Allocation::default(); 1];
        let err = allocate(1, &[audio(), audio()], &mut out);
        assert_eq!(
            err,
            Err(AllocateError::LengthMismatch {
                tracks: 2,
                allocations: 1
            })
        );
    }
}
