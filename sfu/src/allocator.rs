//! Per-subscriber bandwidth allocation across its down-tracks.
//!
//! [`allocate`] divides the subscriber's downlink estimate: audio first (it is
//! cheap and losing it breaks the call), then video in priority order (screen
//! share before camera, then the subscriber's priority, then track order),
//! each video getting the best layer that fits what is left. A video whose
//! lowest layer does not fit is paused rather than sent into congestion.
//!
//! A layer is a (simulcast, temporal) pair: temporal layers are the finer
//! steps between simulcast layers (dropping them needs no keyframe). One
//! simulcast step (half the width and height) counts as much as two
//! temporal steps (a quarter of the frame rate), except that a simulcast
//! layer's base rate alone ranks below the half rate of the layer under it:
//! 720p at 7.5 fps is a worse picture than 360p at 15 or 30 fps, and moving
//! there costs a keyframe. So the order runs (0, 2) < (2, 0) < (1, 1) <
//! (1, 2) < (2, 1). A track without temporal layering has only temporal
//! layer 0 in its table, so its order is the simulcast order; a layer
//! without temporal layers in a track whose other layers have them (not
//! received yet) ranks as full rate, not as a base rate.
//!
//! Upgrading a video above the layer it currently forwards costs the layer's
//! bitrate plus 20% headroom ([`crate::simulcast::with_headroom`]), so a
//! noisy estimate does not make the layer flap and lower-priority tracks
//! cannot eat that headroom.
//!
//! The function is pure and allocation-free; remembering whether the estimate
//! is stable (before acting on a probe suggestion) is the caller's job.

pub use crate::codec::MAX_TEMPORAL;
use crate::simulcast::{with_headroom, MAX_LAYERS};

/// Bitrate of forwarding simulcast layer `s` with temporal layers up to `t`
/// at `[s][t]`; `None` where the pair is absent or not allowed.
pub type LayerRates = [[Option<u64>; MAX_TEMPORAL]; MAX_LAYERS];

/// A table of simulcast layers without temporal layering.
pub fn spatial_only(layers: [Option<u64>; MAX_LAYERS]) -> LayerRates {
    let mut t = [[None; MAX_TEMPORAL]; MAX_LAYERS];
    for (row, l) in t.iter_mut().zip(layers) {
        row[0] = l;
    }
    t
}

const PAIRS: usize = MAX_LAYERS * MAX_TEMPORAL;

/// Twice the quality score of a pair, ties broken by temporal layer: a
/// temporal step is 2, a simulcast step 4, except that a layer's base rate (a
/// quarter of the frames or fewer) scores just above the full-rate pairs two
/// below it: a switch there costs a keyframe and gives a worse picture than
/// the layer under it.
const fn score(s: u8, t: u8) -> (i32, i32) {
    let (s, t) = (s as i32, t as i32);
    let score = if s > 0 && t == 0 { 4 * s - 3 } else { 4 * s + 2 * t };
    (score, t)
}

/// Every (simulcast, temporal) pair, worst first (see the module docs),
/// built once at compile time (a stable insertion sort by [`score`]).
const QUALITY_ORDER: [(u8, u8); PAIRS] = {
    let mut order = [(0u8, 0u8); PAIRS];
    let mut i = 0;
    while i < PAIRS {
        order[i] = ((i / MAX_TEMPORAL) as u8, (i % MAX_TEMPORAL) as u8);
        i += 1;
    }
    let mut i = 1;
    while i < PAIRS {
        let mut j = i;
        while j > 0 {
            let (a, b) = (score(order[j - 1].0, order[j - 1].1), score(order[j].0, order[j].1));
            if a.0 < b.0 || (a.0 == b.0 && a.1 <= b.1) {
                break;
            }
            let tmp = order[j - 1];
            order[j - 1] = order[j];
            order[j] = tmp;
            j -= 1;
        }
        i += 1;
    }
    order
};

/// Position of each pair in [`QUALITY_ORDER`], by `[simulcast][temporal]`.
const RANKS: [[u8; MAX_TEMPORAL]; MAX_LAYERS] = {
    let mut ranks = [[0u8; MAX_TEMPORAL]; MAX_LAYERS];
    let mut r = 0;
    while r < PAIRS {
        let (s, t) = QUALITY_ORDER[r];
        ranks[s as usize][t as usize] = r as u8;
        r += 1;
    }
    ranks
};

/// Position of a (simulcast, temporal) pair in the quality order (0, the
/// worst, for a pair outside the table).
fn rank(spatial: u8, temporal: u8) -> usize {
    RANKS
        .get(usize::from(spatial))
        .and_then(|row| row.get(usize::from(temporal)))
        .map_or(0, |&r| usize::from(r))
}

fn pair(rank: usize) -> (u8, u8) {
    QUALITY_ORDER[rank.min(PAIRS - 1)]
}

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
    /// Measured bitrate of each active (simulcast, temporal) layer, `None`
    /// for absent, inactive or disallowed ones (a frame rate cap removes
    /// the temporal layers above it). Audio uses `layers[0][0]`.
    pub layers: LayerRates,
    /// Simulcast layer cap, e.g. from [`crate::simulcast::allowed_max_layer`].
    pub max_layer: u8,
    pub paused: bool,
    /// (simulcast, temporal) layer currently forwarded.
    pub current: Option<(u8, u8)>,
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
    /// Chosen simulcast layer (`Some(0)` for audio), `None` when paused.
    pub layer: Option<u8>,
    /// Chosen temporal layer (0 when paused or unlayered).
    pub temporal: u8,
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
    /// What every track would take on an unlimited link (its best pair
    /// under the subscriber's preferences; audio included): the rate the
    /// estimator should try to discover, whatever the next step is.
    pub wanted_bps: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocateError {
    #[error("{tracks} tracks but {allocations} allocation slots")]
    LengthMismatch { tracks: usize, allocations: usize },
}

/// Cost of the pair at `rank` for a track currently at `current`.
fn cost(bitrate: u64, rank_: usize, current: Option<(u8, u8)>) -> u64 {
    match current {
        Some((s, t)) if rank_ > rank(s, t) => with_headroom(bitrate),
        _ => bitrate,
    }
}

fn rate(track: &TrackDemand, rank: usize) -> Option<u64> {
    let (s, t) = pair(rank);
    track.layers[usize::from(s)][usize::from(t)]
}

/// Ranks of the pairs at or below the track's simulcast cap, worst first.
fn ranks(track: &TrackDemand) -> impl DoubleEndedIterator<Item = usize> {
    let cap = track.max_layer.min(MAX_LAYERS as u8 - 1);
    (0..PAIRS).filter(move |&r| pair(r).0 <= cap)
}

/// Best (simulcast, temporal) pair at or below the track's cap that costs
/// at most `budget`.
fn best_layer(track: &TrackDemand, budget: u64) -> Option<((u8, u8), u64)> {
    ranks(track).rev().find_map(|r| {
        let cost = cost(rate(track, r)?, r, track.current);
        (cost <= budget).then_some((pair(r), cost))
    })
}

/// The next pair above `layer` (or the lowest when `None`) the track may
/// use, what a probe aims for. A temporally layered track's base rates
/// above simulcast layer 0 are skipped: they rank between full-rate pairs
/// but cost far more, so probing for one would overshoot.
fn next_layer(track: &TrackDemand, layer: Option<(u8, u8)>) -> Option<((u8, u8), u64)> {
    let from = layer.map_or(0, |(s, t)| rank(s, t) + 1);
    let layered = track.layers.iter().any(|row| row[1].is_some());
    ranks(track)
        .filter(|r| *r >= from)
        .filter(|&r| !(layered && matches!(pair(r), (s, 0) if s > 0)))
        .find_map(|r| rate(track, r).map(|b| (pair(r), cost(b, r, track.current))))
}

fn is_layered(layers: &LayerRates, s: u8) -> bool {
    layers.get(usize::from(s)).is_some_and(|row| row[1].is_some())
}

/// Simulcast layer `s` has a rate but no temporal layers.
fn full_rate_only(layers: &LayerRates, s: u8) -> bool {
    !is_layered(layers, s) && layers.get(usize::from(s)).is_some_and(|row| row[0].is_some())
}

/// The track as the quality order needs it. In a temporally layered track,
/// a simulcast layer without measured temporal layers (one not received
/// yet, priced by default) forwards every frame it has: its rate is a
/// full-rate pair's, so it goes at every temporal position up to the
/// track's top, and a current pair on it is the top one. Left at temporal
/// layer 0 it would rank as a base rate, below the full rate of the layer
/// under it, and nothing would ever probe for it (a top layer unmeasured
/// because dynacast stopped it stayed out of reach for good).
fn canonical(track: &TrackDemand) -> TrackDemand {
    let top = track
        .layers
        .iter()
        .filter_map(|row| row.iter().rposition(Option::is_some))
        .max()
        .unwrap_or(0);
    if top == 0 {
        return *track;
    }
    let mut t = *track;
    for (s, row) in t.layers.iter_mut().enumerate() {
        if full_rate_only(&track.layers, s as u8) {
            let rate = row[0];
            row[..=top].fill(rate);
        }
    }
    t.current = track.current.map(|(s, tl)| {
        if full_rate_only(&track.layers, s) {
            (s, top as u8)
        } else {
            (s, tl)
        }
    });
    t
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
            let bitrate = if track.paused {
                0
            } else {
                track.layers[0][0].unwrap_or(0)
            };
            *slot = Allocation {
                state: if track.paused {
                    AllocationState::PausedByPreference
                } else {
                    AllocationState::Forwarding
                },
                layer: (!track.paused).then_some(0),
                temporal: 0,
                budget_bps: bitrate,
            };
            remaining = remaining.saturating_sub(bitrate);
            allocated = allocated.saturating_add(bitrate);
        }
    }
    let mut wanted = allocated;

    let mut settled = true;
    // First video track (in priority order) that could go higher, and what
    // its next step would cost on top of its allocation.
    let mut wants_more: Option<u64> = None;
    let mut after = None;
    while let Some(i) = next_video(tracks, after) {
        after = Some(order_key(tracks, i));
        let track = &canonical(&tracks[i]);
        let alloc = if track.paused {
            Allocation {
                state: AllocationState::PausedByPreference,
                ..Allocation::default()
            }
        } else {
            match best_layer(track, remaining) {
                Some(((layer, temporal), cost)) => Allocation {
                    state: AllocationState::Forwarding,
                    layer: Some(layer),
                    temporal,
                    budget_bps: cost,
                },
                None => Allocation {
                    state: AllocationState::PausedByBandwidth,
                    ..Allocation::default()
                },
            }
        };
        remaining -= alloc.budget_bps;
        allocated = allocated.saturating_add(alloc.budget_bps);
        // The chosen pair as the caller knows it: an unlayered layer has
        // only temporal layer 0.
        out[i] = match alloc.layer {
            Some(l) if !is_layered(&tracks[i].layers, l) => Allocation { temporal: 0, ..alloc },
            _ => alloc,
        };
        if track.paused {
            continue;
        }
        if let Some((_, best)) = best_layer(track, u64::MAX) {
            wanted = wanted.saturating_add(best);
        }
        let chosen = alloc.layer.map(|l| (l, alloc.temporal));
        settled &= chosen == track.current;
        if wants_more.is_none() {
            wants_more = next_layer(track, chosen).map(|(_, cost)| cost.saturating_sub(alloc.budget_bps));
        }
    }

    let probe_bps = wants_more
        .filter(|_| settled)
        .map(|extra| allocated.saturating_add(extra))
        .filter(|&target| target > estimate_bps);
    Ok(AllocationSummary {
        allocated_bps: allocated,
        probe_bps,
        wanted_bps: wanted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_order_matches_the_documented_ranking() {
        // Every pair once, scores never falling.
        let mut seen = [[false; MAX_TEMPORAL]; MAX_LAYERS];
        for (r, &(s, t)) in QUALITY_ORDER.iter().enumerate() {
            assert!(!seen[s as usize][t as usize]);
            seen[s as usize][t as usize] = true;
            assert_eq!(rank(s, t), r);
            assert_eq!(pair(r), (s, t));
            if r > 0 {
                let (ps, pt) = QUALITY_ORDER[r - 1];
                assert!(score(ps, pt) <= score(s, t));
            }
        }
        // The module docs' example.
        let order: Vec<usize> = [(0, 2), (2, 0), (1, 1), (1, 2), (2, 1)]
            .iter()
            .map(|&(s, t)| rank(s, t))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert_eq!(rank(9, 9), 0);
    }

    const LAYERS: [Option<u64>; 3] = [Some(150_000), Some(500_000), Some(1_500_000)];

    fn audio() -> TrackDemand {
        TrackDemand {
            kind: TrackKind::Audio,
            priority: 0,
            layers: spatial_only([Some(40_000), None, None]),
            max_layer: 0,
            paused: false,
            current: Some((0, 0)),
        }
    }

    fn video(kind: TrackKind, priority: u8, current: Option<u8>) -> TrackDemand {
        TrackDemand {
            kind,
            priority,
            layers: spatial_only(LAYERS),
            max_layer: 2,
            paused: false,
            current: current.map(|l| (l, 0)),
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
                temporal: 0,
                budget_bps: 150_000
            }
        );
        assert_eq!(
            out[1],
            Allocation {
                state: AllocationState::PausedByBandwidth,
                layer: None,
                temporal: 0,
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
        holes.layers = spatial_only([None, Some(500_000), None]);
        let (out, summary) = run(10_000_000, &[capped, paused, holes]);
        assert_eq!(out[0].layer, Some(1));
        assert_eq!(
            out[1],
            Allocation {
                state: AllocationState::PausedByPreference,
                layer: None,
                temporal: 0,
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
    fn wanted_is_the_best_each_track_may_take_whatever_the_estimate() {
        // Audio plus the top layer (with the headroom an upgrade pays).
        let tracks = [audio(), video(TrackKind::Camera, 0, Some(1))];
        for estimate in [100_000, 1_000_000, 50_000_000] {
            assert_eq!(run(estimate, &tracks).1.wanted_bps, 40_000 + 1_800_000, "at {estimate}");
        }
        // A preference cap lowers it; a track paused by preference adds
        // nothing; one paused for bandwidth still wants its best.
        let mut capped = video(TrackKind::Camera, 0, Some(1));
        capped.max_layer = 1;
        let mut hidden = video(TrackKind::ScreenShare, 0, None);
        hidden.paused = true;
        let starved = video(TrackKind::Camera, 0, None);
        let (out, summary) = run(100_000, &[audio(), capped, hidden, starved]);
        assert_eq!(out[3].state, AllocationState::PausedByBandwidth);
        assert_eq!(summary.wanted_bps, 40_000 + 500_000 + 1_500_000);
    }

    /// Three simulcast layers of L1T3: each temporal layer adds to the rate.
    fn layered(current: Option<(u8, u8)>) -> TrackDemand {
        let mut layers = [[None; MAX_TEMPORAL]; MAX_LAYERS];
        for (row, full) in layers.iter_mut().zip([150_000u64, 500_000, 1_500_000]) {
            row[0] = Some(full * 4 / 10);
            row[1] = Some(full * 6 / 10);
            row[2] = Some(full);
        }
        TrackDemand {
            layers,
            current,
            ..video(TrackKind::Camera, 0, None)
        }
    }

    fn chosen(a: &Allocation) -> Option<(u8, u8)> {
        a.layer.map(|l| (l, a.temporal))
    }

    #[test]
    fn temporal_layers_are_finer_steps() {
        let at = |estimate, current| {
            let (out, summary) = run(estimate, &[layered(current)]);
            (chosen(&out[0]), out[0].budget_bps, summary.probe_bps)
        };
        // Between simulcast layers 0 (150k) and 1 (500k at full rate):
        // layer 1 at half its frame rate, probing for its full rate.
        assert_eq!(at(350_000, Some((1, 1))), (Some((1, 1)), 300_000, Some(600_000)));
        // Layer 1's base rate alone ranks below layer 0 at full rate, so
        // 250k gives layer 0 smooth, not layer 1 at 7.5 fps.
        assert_eq!(at(250_000, Some((1, 1))), (Some((0, 2)), 150_000, None));
        // Probes skip base rates: from (0, 2) the next aim is (1, 1).
        assert_eq!(at(190_000, Some((0, 2))), (Some((0, 2)), 150_000, Some(360_000)));
        assert_eq!(at(70_000, Some((0, 0))), (Some((0, 0)), 60_000, Some(108_000)));
        // Nothing fits: paused (no probe while the pause takes effect).
        assert_eq!(at(50_000, Some((0, 0))), (None, 0, None));
        assert_eq!(at(50_000, None), (None, 0, Some(60_000)));
        // Layer 1 at full rate beats layer 2's base rate: from (1, 2) the
        // next step is (2, 1), and upgrades pay the headroom.
        assert_eq!(at(1_000_000, Some((1, 2))), (Some((1, 2)), 500_000, Some(1_080_000)));
        assert_eq!(at(1_100_000, Some((1, 2))).0, Some((2, 1)));
        assert_eq!(at(650_000, Some((1, 1))), (Some((1, 2)), 600_000, None));
        // A frame rate cap removes the upper temporal layers.
        let mut capped = layered(Some((2, 0)));
        for row in capped.layers.iter_mut() {
            row[1] = None;
            row[2] = None;
        }
        let (out, summary) = run(10_000_000, &[capped]);
        assert_eq!((chosen(&out[0]), summary.probe_bps), (Some((2, 0)), None));
    }

    /// Layers 0 and 1 measured with L1T3, layer 2 not received yet (dynacast
    /// stopped it, or the publisher has not ramped up to it) and priced at
    /// a default full rate.
    #[test]
    fn an_unmeasured_top_layer_above_temporal_layers_is_probed_for() {
        let track = |current| {
            let mut t = layered(current);
            t.layers[2] = [Some(1_200_000), None, None, None];
            t
        };
        let at = |estimate, current| {
            let (out, summary) = run(estimate, &[track(current)]);
            (chosen(&out[0]), out[0].budget_bps, summary.probe_bps)
        };
        // Settled on layer 1 at full rate: probe for layer 2 (with headroom).
        assert_eq!(at(600_000, Some((1, 2))), (Some((1, 2)), 500_000, Some(1_440_000)));
        // When it fits, layer 2 is chosen (temporal 0: it has no layers).
        assert_eq!(at(1_500_000, Some((1, 2))), (Some((2, 0)), 1_440_000, None));
        // Forwarding it: settled at the top, no headroom to pay, no probe.
        assert_eq!(at(1_300_000, Some((2, 0))), (Some((2, 0)), 1_200_000, None));
        // Layer 2 ranks above layer 1's full rate, not below as a base rate.
        assert_eq!(at(1_250_000, Some((2, 0))).0, Some((2, 0)));
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
