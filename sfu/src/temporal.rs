//! Temporal layer selection for one down-track, and per-layer rate
//! measurement for one published track.
//!
//! Dropping the upper temporal layers of VP8, VP9 or AV1 needs no keyframe:
//! lower layers never reference upper ones. [`TemporalFilter`] follows the
//! allocator's target with the layer actually forwarded, changing it only
//! where the receiver can follow:
//! - down at any frame start (frames of the dropped layers simply stop);
//! - up at a keyframe, or at the first frame of a higher layer (up to the
//!   target) marked as a switching point (VP8 Y, VP9 U): such a frame
//!   references only the base layer, whereas an ordinary frame of that layer
//!   may reference earlier frames of its layer the receiver never got.
//!   Any TL0 frame is not enough for that reason. AV1 marks no switching
//!   points; its frames step up one layer at a time (see
//!   [`crate::codec::av1`]).
//!
//! Dropped packets are marked droppable for the [`crate::downtrack`], which
//! closes their sequence numbers, so the receiver sees no gap and never
//! NACKs them.
//!
//! [`TemporalStats`] measures, per simulcast layer and temporal layer, the
//! bitrate and frame rate over fixed windows of arrival time (time is an
//! input), so the allocator can price (spatial, temporal) pairs and a
//! subscriber's maximum frame rate can be turned into a temporal layer.
use std::time::{Duration, Instant};

use crate::allocator::LayerRates;
use crate::codec::{FrameInfo, MAX_TEMPORAL};
use crate::simulcast::MAX_LAYERS;

/// The highest temporal layer index: "forward everything".
pub const TOP: u8 = MAX_TEMPORAL as u8 - 1;

/// Which temporal layers of the forwarded stream reach one subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemporalFilter {
    target: u8,
    /// The layer forwarded now; `None` until the first frame start.
    current: Option<u8>,
    /// The highest temporal layer seen in the stream (forwarded or not);
    /// back to 0 on a packet without a temporal index, as after a switch
    /// to a codec or layer without them there is nothing to go up to.
    highest_seen: u8,
}

impl Default for TemporalFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl TemporalFilter {
    pub fn new() -> Self {
        Self {
            target: TOP,
            current: None,
            highest_seen: 0,
        }
    }

    pub fn set_target(&mut self, target: u8) {
        self.target = target.min(TOP);
    }

    pub fn target(&self) -> u8 {
        self.target
    }

    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// Whether layers the stream has and the target allows are being held
    /// back, waiting for a switching point (or a keyframe).
    pub fn wants_up(&self) -> bool {
        self.current.is_some_and(|c| c < self.target.min(self.highest_seen))
    }

    /// Whether the packet is forwarded. Must see every packet of the
    /// stream the down-track forwards (and nothing else), in arrival order.
    pub fn accept(&mut self, f: &FrameInfo) -> bool {
        let Some(tid) = f.tid else {
            self.highest_seen = 0;
            return true;
        };
        self.highest_seen = self.highest_seen.max(tid);
        if f.frame_start {
            self.current = Some(match self.current {
                // After a keyframe every layer's references are fresh.
                _ if f.keyframe => self.target,
                None => self.target,
                Some(c) if self.target < c => self.target,
                Some(c) if tid > c && tid <= self.target && f.sync => tid,
                Some(c) if tid == c + 1 && tid <= self.target && f.step_up => tid,
                Some(c) => c,
            });
        }
        tid <= self.current.unwrap_or(self.target)
    }
}

/// Window over which temporal layer rates are measured: a second holds
/// several frames of even a 7.5 fps base layer.
pub const STATS_WINDOW: Duration = Duration::from_secs(1);

/// Measured rates of one temporal layer (its own packets only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerRate {
    pub bps: u64,
    /// Frames per second, in hundredths (exact enough to compare with a
    /// subscriber's integer limit without floats).
    pub fps_centi: u64,
}

/// Per-(simulcast, temporal) layer bytes and frames of one track.
#[derive(Clone, Debug, Default)]
pub struct TemporalStats {
    window_start: Option<Instant>,
    bytes: [[u64; MAX_TEMPORAL]; MAX_LAYERS],
    frames: [[u64; MAX_TEMPORAL]; MAX_LAYERS],
    /// Last complete window; `None` where a layer had no packets with a
    /// temporal index (unlayered stream or layer not sent).
    last: [[Option<LayerRate>; MAX_TEMPORAL]; MAX_LAYERS],
}

impl TemporalStats {
    /// Counts a packet of simulcast layer `spatial` that carries a temporal
    /// layer index.
    pub fn on_packet(&mut self, now: Instant, spatial: usize, f: &FrameInfo, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= STATS_WINDOW {
            let ms = elapsed.as_millis().max(1) as u64;
            for (last, (bytes, frames)) in self
                .last
                .iter_mut()
                .flatten()
                .zip(self.bytes.iter_mut().flatten().zip(self.frames.iter_mut().flatten()))
            {
                *last = (*bytes > 0).then(|| LayerRate {
                    bps: *bytes * 8 * 1000 / ms,
                    fps_centi: *frames * 100_000 / ms,
                });
                *bytes = 0;
                *frames = 0;
            }
            self.window_start = Some(now);
        }
        let (Some(tid), Some(bytes_s), Some(frames_s)) =
            (f.tid, self.bytes.get_mut(spatial), self.frames.get_mut(spatial))
        else {
            return;
        };
        let t = usize::from(tid).min(MAX_TEMPORAL - 1);
        bytes_s[t] += bytes as u64;
        if f.frame_start {
            frames_s[t] += 1;
        }
    }

    /// The measured rates of simulcast layer `spatial`, per temporal layer.
    pub fn rates(&self, spatial: usize) -> [Option<LayerRate>; MAX_TEMPORAL] {
        self.last.get(spatial).copied().unwrap_or_default()
    }

    /// Whether `spatial` was seen carrying temporal layers 1 and up.
    pub fn is_layered(&self, spatial: usize) -> bool {
        self.rates(spatial)[1..].iter().any(Option::is_some)
    }
}

/// Fraction of a simulcast layer's bitrate that temporal layers up to `t`
/// carry, in parts per thousand, for each `t` (cumulative); `None` when
/// the layer has no measured temporal layering.
pub fn cumulative_shares(rates: &[Option<LayerRate>; MAX_TEMPORAL]) -> Option<[Option<u64>; MAX_TEMPORAL]> {
    let total: u64 = rates.iter().flatten().map(|r| r.bps).sum();
    if total == 0 || rates[1..].iter().all(Option::is_none) {
        return None;
    }
    let mut out = [None; MAX_TEMPORAL];
    let mut sum = 0;
    for (o, r) in out.iter_mut().zip(rates) {
        let Some(r) = r else { continue };
        sum += r.bps;
        *o = Some(sum * 1000 / total);
    }
    Some(out)
}

/// The highest temporal layer whose cumulative frame rate stays within
/// `max_fps` (0 = no limit), with 12.5 % tolerance for measurement noise:
/// adjacent layers differ by 2x in the usual dyadic structures, so the
/// tolerance never picks a layer twice too fast. The base layer when even
/// it is faster than the limit (it is the least there is).
pub fn temporal_cap(rates: &[Option<LayerRate>; MAX_TEMPORAL], max_fps: u32) -> u8 {
    if max_fps == 0 {
        return TOP;
    }
    let limit = u64::from(max_fps) * 1125 / 10;
    let mut cap = 0;
    let mut fps = 0;
    for (t, r) in rates.iter().enumerate() {
        let Some(r) = r else { continue };
        fps += r.fps_centi;
        if fps <= limit {
            cap = t as u8;
        }
    }
    cap
}

/// The allocator's table for one subscription: each simulcast layer's
/// price (`prices`, what the whole layer costs) split by the measured share
/// of its temporal layers, without those above the subscriber's frame rate
/// cap. A layer without measured temporal layering is one step.
pub fn layer_rates(prices: [Option<u64>; MAX_LAYERS], stats: &TemporalStats, max_fps: u32) -> LayerRates {
    let mut rates = [[None; MAX_TEMPORAL]; MAX_LAYERS];
    for (s, (row, price)) in rates.iter_mut().zip(prices).enumerate() {
        let Some(price) = price else { continue };
        let measured = stats.rates(s);
        let Some(shares) = cumulative_shares(&measured) else {
            row[0] = Some(price);
            continue;
        };
        let cap = usize::from(temporal_cap(&measured, max_fps));
        for (r, share) in row.iter_mut().zip(shares).take(cap + 1) {
            *r = share.map(|sh| price.saturating_mul(sh) / 1000);
        }
        if row.iter().all(Option::is_none) {
            row[0] = Some(price);
        }
    }
    rates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tid: u8, start: bool, sync: bool, keyframe: bool) -> FrameInfo {
        FrameInfo {
            tid: Some(tid),
            sync,
            frame_start: start,
            keyframe,
            ..FrameInfo::default()
        }
    }

    /// AV1 (no switching-point flags): up one layer at a time, at any frame
    /// of the layer just above; never two at once.
    #[test]
    fn step_up_frames_climb_one_layer_at_a_time() {
        let mut f = TemporalFilter::new();
        let step = |tid| FrameInfo {
            step_up: true,
            ..frame(tid, true, false, false)
        };
        f.set_target(0);
        assert!(f.accept(&step(0)));
        assert!(!f.accept(&step(2)));
        f.set_target(2);
        // TL2 right after TL0 while at 0: two layers up, not taken.
        assert!(!f.accept(&step(2)));
        assert!(f.wants_up());
        assert!(f.accept(&step(1)));
        assert_eq!(f.current(), Some(1));
        assert!(f.accept(&step(2)));
        assert_eq!(f.current(), Some(2));
        assert!(!f.wants_up());
        // Without step_up (nor sync) an upper frame is no way up.
        let mut g = TemporalFilter::new();
        g.set_target(0);
        assert!(g.accept(&frame(0, true, false, false)));
        g.set_target(2);
        assert!(!g.accept(&frame(1, true, false, false)));
    }

    /// The L1T3 pattern 0 2 1 2 of libwebrtc, two packets a frame; the first
    /// TL1 and TL2 frames after each TL0 frame are switching points.
    fn pattern(n: usize) -> Vec<FrameInfo> {
        let mut out = Vec::new();
        for i in 0..n {
            let tid = [0, 2, 1, 2][i % 4];
            let sync = i % 4 == 1 || i % 4 == 2;
            out.push(frame(tid, true, sync, i == 0));
            out.push(frame(tid, false, sync, false));
        }
        out
    }

    fn forwarded_tids(f: &mut TemporalFilter, pkts: &[FrameInfo]) -> Vec<u8> {
        pkts.iter()
            .filter(|p| f.accept(p))
            .filter_map(|p| p.frame_start.then_some(p.tid?))
            .collect()
    }

    #[test]
    fn target_layer_and_below_pass() {
        let mut f = TemporalFilter::new();
        f.set_target(0);
        assert_eq!(forwarded_tids(&mut f, &pattern(8)), [0, 0]);
        let mut f = TemporalFilter::new();
        f.set_target(1);
        assert_eq!(forwarded_tids(&mut f, &pattern(8)), [0, 1, 0, 1]);
        let mut f = TemporalFilter::new();
        assert_eq!(forwarded_tids(&mut f, &pattern(8)), [0, 2, 1, 2, 0, 2, 1, 2]);
    }

    #[test]
    fn down_at_next_frame_start_never_mid_frame() {
        let p = pattern(8);
        let mut f = TemporalFilter::new();
        // Frame 0 (TL0) and the first packet of frame 1 (TL2).
        assert!(f.accept(&p[0]) && f.accept(&p[1]) && f.accept(&p[2]));
        f.set_target(0);
        // The rest of frame 1 still goes: a half frame is worse than a whole.
        assert!(f.accept(&p[3]));
        assert_eq!(forwarded_tids(&mut f, &p[4..]), [0]);
        assert_eq!(f.current(), Some(0));
    }

    #[test]
    fn wants_up_only_while_layers_the_stream_has_are_held_back() {
        let mut f = TemporalFilter::new();
        assert!(!f.wants_up(), "nothing seen yet");
        // Everything forwarded: the stream's top (2) is below TOP, which
        // is not waiting for anything.
        forwarded_tids(&mut f, &pattern(8));
        assert!(!f.wants_up());
        f.set_target(0);
        forwarded_tids(&mut f, &pattern(8));
        assert!(!f.wants_up(), "at the target");
        f.set_target(TOP);
        let no_sync: Vec<_> = [1, 2, 0, 2].iter().map(|&t| frame(t, true, false, false)).collect();
        forwarded_tids(&mut f, &no_sync);
        assert!(f.wants_up(), "held at 0 for want of a switching point");
        forwarded_tids(&mut f, &[frame(0, true, false, true)]);
        assert!(!f.wants_up(), "a keyframe brings every layer back");
        // Held back again, then the stream loses its temporal indices
        // (another codec): nothing left to wait for.
        f.set_target(0);
        forwarded_tids(&mut f, &pattern(4));
        f.set_target(TOP);
        forwarded_tids(&mut f, &no_sync);
        assert!(f.wants_up());
        let unlayered = FrameInfo {
            tid: None,
            ..frame(0, true, false, false)
        };
        assert!(f.accept(&unlayered));
        assert!(!f.wants_up(), "no temporal layers, nothing to switch up to");
    }

    #[test]
    fn up_only_at_switching_points_or_keyframes() {
        let mut f = TemporalFilter::new();
        f.set_target(0);
        let p = pattern(4);
        assert_eq!(forwarded_tids(&mut f, &p[..2]), [0]);
        f.set_target(2);
        // Frames without the sync bit do not switch up.
        let no_sync: Vec<_> = [1, 2, 0, 2]
            .iter()
            .flat_map(|&t| [frame(t, true, false, false), frame(t, false, false, false)])
            .collect();
        assert_eq!(forwarded_tids(&mut f, &no_sync), [0]);
        // A sync TL2 frame switches straight to layer 2.
        assert!(f.accept(&frame(2, true, true, false)));
        assert_eq!(f.current(), Some(2));
        // A keyframe takes the target at once, whatever the current layer.
        f.set_target(0);
        assert!(!f.accept(&frame(1, true, true, false)));
        f.set_target(1);
        assert!(f.accept(&frame(0, true, false, true)));
        assert_eq!(f.current(), Some(1));
        // Never above the target, sync or not.
        assert!(!f.accept(&frame(2, true, true, false)));
    }

    #[test]
    fn unlayered_packets_always_pass() {
        let mut f = TemporalFilter::new();
        f.set_target(0);
        assert!(f.accept(&FrameInfo::default()));
    }

    #[test]
    fn stats_measure_rates_per_layer_over_time() {
        let t0 = Instant::now();
        let mut s = TemporalStats::default();
        // 30 fps L1T3 on simulcast layer 1, 1000 bytes per packet, 2 s.
        for (i, p) in pattern(60).iter().enumerate() {
            let at = t0 + Duration::from_micros(i as u64 / 2 * 33_333);
            s.on_packet(at, 1, p, 1000);
        }
        s.on_packet(t0 + Duration::from_secs(2), 1, &FrameInfo::default(), 0);
        let r = s.rates(1);
        let fps: Vec<u64> = r.iter().map(|r| r.map_or(0, |r| r.fps_centi / 100)).collect();
        // 7.5, 7.5 and 15 fps per layer (whole frames within the window).
        assert!(
            (7..=8).contains(&fps[0]) && (7..=8).contains(&fps[1]) && (14..=16).contains(&fps[2]),
            "{fps:?}"
        );
        assert!(r[3].is_none());
        assert!(s.is_layered(1) && !s.is_layered(0));
        assert_eq!(temporal_cap(&r, 10), 0);
        assert_eq!(temporal_cap(&r, 15), 1);
        assert_eq!(temporal_cap(&r, 24), 1);
        assert_eq!(temporal_cap(&r, 30), 2);
        assert_eq!(temporal_cap(&r, 0), TOP);
        assert_eq!(temporal_cap(&r, 1), 0);
        let shares = cumulative_shares(&r).unwrap();
        assert_eq!(shares[2], Some(1000));
        assert!(shares[0].unwrap() > 200 && shares[0].unwrap() < 300, "{shares:?}");
        assert_eq!(cumulative_shares(&s.rates(0)), None);

        // The allocator's table: layer 1 split by its measured shares and
        // capped by the frame rate; layer 0 (unlayered) one step; layer 2
        // absent.
        let prices = [Some(100_000), Some(1_000_000), None];
        let t = layer_rates(prices, &s, 0);
        assert_eq!(t[0], [Some(100_000), None, None, None]);
        assert!(t[1][0].unwrap() < t[1][1].unwrap() && t[1][2] == Some(1_000_000) && t[1][3].is_none());
        assert_eq!(t[2], [None; MAX_TEMPORAL]);
        let t = layer_rates(prices, &s, 10);
        assert!(t[1][0].is_some() && t[1][1..].iter().all(Option::is_none), "{t:?}");
    }

    mod props {
        use super::*;
        use crate::downtrack::{DownTrack, PacketInfo, SourceId};
        use proptest::prelude::*;

        proptest! {
            /// The filter and the down-track together, on L1T3 frames with
            /// random targets and upstream losses: whole frames only, never
            /// above the target at the frame's start, and output sequence
            /// numbers whose only gaps are packets lost upstream.
            #[test]
            fn whole_frames_gap_free_within_target(
                frames in prop::collection::vec((1u8..4, prop::option::of(0u8..3), prop::bool::weighted(0.1)), 1..300),
                losses in prop::collection::vec(prop::bool::weighted(0.05), 900),
            ) {
                let t0 = Instant::now();
                let mut f = TemporalFilter::new();
                let mut dt = DownTrack::new(1, 90_000);
                let mut seq: u16 = 65_000;
                let mut lost_iter = losses.into_iter().cycle();
                let mut last_out: Option<u16> = None;
                let mut lost_since_out = 0u16;
                for (i, (packets, new_target, key)) in frames.into_iter().enumerate() {
                    let pos = i % 4;
                    let tid = [0, 2, 1, 2][pos];
                    let keyframe = i == 0 || (key && tid == 0);
                    if let Some(t) = new_target {
                        f.set_target(t);
                    }
                    let target_at_start = f.target();
                    let mut sent_in_frame = 0;
                    let mut delivered_in_frame = 0;
                    for k in 0..packets {
                        seq = seq.wrapping_add(1);
                        if lost_iter.next().unwrap_or(false) && i > 0 {
                            lost_since_out += 1;
                            continue;
                        }
                        delivered_in_frame += 1;
                        let info = FrameInfo {
                            tid: Some(tid),
                            sync: pos == 1 || pos == 2,
                            frame_start: k == 0,
                            keyframe: keyframe && k == 0,
                            ..FrameInfo::default()
                        };
                        let pass = f.accept(&info);
                        let p = PacketInfo {
                            source: SourceId(0),
                            seq,
                            ts: 3000 * i as u32,
                            keyframe: info.keyframe,
                            droppable: !pass,
                            marker: k + 1 == packets,
                            arrival: t0,
                        };
                        let Some(r) = dt.forward(&p) else { continue };
                        sent_in_frame += 1;
                        if k == 0 {
                            prop_assert!(tid <= target_at_start, "TL{tid} above target {target_at_start}");
                        }
                        if let Some(l) = last_out {
                            let gap = r.seq.wrapping_sub(l).wrapping_sub(1);
                            prop_assert!(gap <= lost_since_out, "gap {gap} with {lost_since_out} lost");
                            if lost_since_out == 0 {
                                prop_assert_eq!(gap, 0);
                            }
                        }
                        last_out = Some(r.seq);
                        lost_since_out = 0;
                    }
                    // A frame is forwarded whole or not at all (of what arrived;
                    // the down-track's first segment waits for a keyframe).
                    prop_assert!(sent_in_frame == 0 || sent_in_frame == delivered_in_frame,
                        "frame {i}: {sent_in_frame} of {delivered_in_frame}");
                }
            }
        }
    }
}
