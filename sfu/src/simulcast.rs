//! Per-subscription simulcast layer selection.
//!
//! [`LayerSelector`] turns the publisher's layers, the subscriber's
//! preferences and the bandwidth budget the allocator gives the track into a
//! *target* layer, and follows it with the *current* (forwarded) layer only at
//! keyframes of the target, so the receiver's decoder never sees a layer it has
//! no reference for. Downgrades are immediate (congestion hurts everyone on
//! the link); upgrades need the budget to exceed the higher layer's bitrate by
//! 20% for a whole second, so a noisy estimate does not make the layer flap.
//!
//! [`KeyframeRequester`] sits on the publisher's track and coalesces the
//! keyframe requests of all its subscribers: at most one per layer per
//! [`KEYFRAME_THROTTLE`], since every keyframe costs the whole room bandwidth.

use std::time::{Duration, Instant};

/// Simulcast layers per track (quality 0 = low, 1 = medium, 2 = high).
pub const MAX_LAYERS: usize = 3;

/// Minimum interval between keyframe requests for one layer.
pub const KEYFRAME_THROTTLE: Duration = Duration::from_millis(500);

/// How long the budget must stay above the upgrade threshold.
pub const UPGRADE_HOLD: Duration = Duration::from_secs(1);

/// Bitrate with the upgrade headroom (x1.2), in integers to stay exact.
pub fn with_headroom(bps: u64) -> u64 {
    bps.saturating_mul(6) / 5
}

/// One simulcast layer as the publisher currently sends it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerInfo {
    pub width: u32,
    pub height: u32,
    /// Frame rate with all temporal layers (0 = unknown).
    pub fps: u32,
    /// Temporal layers in this stream (0 or 1 = none).
    pub temporal_layers: u8,
    /// Measured bitrate.
    pub bitrate_bps: u64,
    /// The publisher is sending it (e.g. not disabled by its own congestion
    /// control).
    pub active: bool,
}

/// What the subscriber asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preferences {
    /// Highest layer index wanted.
    pub max_quality: u8,
    /// Rendered size; 0 = no limit. The smallest layer that covers it is
    /// allowed, since scaling a bigger picture down looks better than scaling
    /// a smaller one up.
    pub max_width: u32,
    pub max_height: u32,
    /// 0 = no limit.
    pub max_fps: u32,
    pub paused: bool,
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            max_quality: (MAX_LAYERS - 1) as u8,
            max_width: 0,
            max_height: 0,
            max_fps: 0,
            paused: false,
        }
    }
}

/// What to do with a packet of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Forward,
    Drop,
    /// Forward, and it is the first packet of a new layer (the down-track must
    /// start a new segment: call `DownTrack::resume` first).
    SwitchedTo(u8),
}

/// Result of [`LayerSelector::update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectorUpdate {
    /// Layer to reach; `None` = paused (by preference, bandwidth, or no
    /// active layer).
    pub target: Option<u8>,
    /// Layer being forwarded.
    pub current: Option<u8>,
    /// Highest temporal layer to forward; packets of higher ones should be
    /// flagged droppable for the down-track.
    pub max_temporal: u8,
    /// Ask the publisher for a keyframe of this layer (through the track's
    /// [`KeyframeRequester`]).
    pub request_keyframe: Option<u8>,
}

/// Highest layer index the preferences allow, or `None` if paused or the
/// track has no layers. Also what the allocator needs as `max_layer`.
pub fn allowed_max_layer(layers: &[LayerInfo], prefs: &Preferences) -> Option<u8> {
    let count = layers.len().min(MAX_LAYERS);
    if prefs.paused || count == 0 {
        return None;
    }
    let mut cap = usize::from(prefs.max_quality).min(count - 1);
    if prefs.max_width > 0 || prefs.max_height > 0 {
        let covers = |l: &LayerInfo| l.width > 0 && l.width >= prefs.max_width && l.height >= prefs.max_height;
        if let Some(smallest) = layers[..=cap].iter().position(covers) {
            cap = smallest;
        }
    }
    Some(cap as u8)
}

/// Highest temporal layer whose frame rate stays within `max_fps`, assuming
/// each temporal layer doubles the rate (the VP8/VP9/AV1 L1T2, L1T3 modes).
pub fn temporal_cap(layer: &LayerInfo, max_fps: u32) -> u8 {
    let top = layer.temporal_layers.max(1) - 1;
    if max_fps == 0 || layer.fps == 0 {
        return top;
    }
    (0..=top).rev().find(|t| layer.fps >> (top - t) <= max_fps).unwrap_or(0)
}

/// Highest active layer at or below `cap` whose cost fits `budget`.
fn best_fit(layers: &[LayerInfo], cap: u8, budget: u64, cost: fn(u64) -> u64) -> Option<u8> {
    let end = (usize::from(cap) + 1).min(layers.len());
    layers[..end]
        .iter()
        .rposition(|l| l.active && cost(l.bitrate_bps) <= budget)
        .map(|i| i as u8)
}

/// Layer selection state of one subscription.
#[derive(Clone, Debug, Default)]
pub struct LayerSelector {
    target: Option<u8>,
    current: Option<u8>,
    /// Since when the budget has had room for a higher layer than the target.
    headroom_since: Option<Instant>,
    max_temporal: u8,
}

impl LayerSelector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn target(&self) -> Option<u8> {
        self.target
    }

    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// Re-evaluates the target. Call whenever an input changes and at least
    /// every ~200 ms while `target != current`, since the returned keyframe
    /// request is how a lost request gets repeated.
    pub fn update(
        &mut self,
        now: Instant,
        layers: &[LayerInfo],
        prefs: &Preferences,
        budget_bps: u64,
    ) -> SelectorUpdate {
        let layers = &layers[..layers.len().min(MAX_LAYERS)];
        self.target = match allowed_max_layer(layers, prefs) {
            None => None,
            Some(cap) => self.choose(now, layers, cap, budget_bps),
        };
        if self.target.is_none() {
            // Pausing needs no keyframe: stop at once.
            self.current = None;
            self.headroom_since = None;
        }
        if let Some(info) = self.target.and_then(|t| layers.get(usize::from(t))) {
            self.max_temporal = temporal_cap(info, prefs.max_fps);
        }
        SelectorUpdate {
            target: self.target,
            current: self.current,
            max_temporal: self.max_temporal,
            request_keyframe: self.target.filter(|&t| self.current != Some(t)),
        }
    }

    fn choose(&mut self, now: Instant, layers: &[LayerInfo], cap: u8, budget: u64) -> Option<u8> {
        let fit = best_fit(layers, cap, budget, |b| b);
        let Some(target) = self.target else {
            // Starting (or restarting after a pause): nothing to oscillate
            // with yet.
            self.headroom_since = None;
            return fit;
        };
        let target_ok = target <= cap
            && layers
                .get(usize::from(target))
                .is_some_and(|l| l.active && l.bitrate_bps <= budget);
        if !target_ok {
            self.headroom_since = None;
            // Prefer falling back below a stopped layer over jumping above it.
            return best_fit(layers, cap.min(target), budget, |b| b).or(fit);
        }
        match best_fit(layers, cap, budget, with_headroom) {
            Some(roomy) if roomy > target => {
                let since = *self.headroom_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= UPGRADE_HOLD {
                    self.headroom_since = None;
                    Some(roomy)
                } else {
                    Some(target)
                }
            }
            _ => {
                self.headroom_since = None;
                Some(target)
            }
        }
    }

    /// Decides a packet of `layer`; switches to the target at its keyframe.
    pub fn on_packet(&mut self, layer: u8, keyframe: bool) -> Decision {
        let Some(target) = self.target else {
            return Decision::Drop;
        };
        if layer == target && keyframe && self.current != Some(target) {
            self.current = Some(target);
            return Decision::SwitchedTo(target);
        }
        if self.current == Some(layer) {
            Decision::Forward
        } else {
            Decision::Drop
        }
    }
}

/// Throttles keyframe requests for one published track across all its
/// subscribers.
#[derive(Clone, Debug, Default)]
pub struct KeyframeRequester {
    last: [Option<Instant>; MAX_LAYERS],
}

impl KeyframeRequester {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to send a keyframe request (PLI/FIR) for `layer` now.
    pub fn request(&mut self, now: Instant, layer: u8) -> bool {
        let Some(last) = self.last.get_mut(usize::from(layer)) else {
            return false;
        };
        if last.is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_THROTTLE) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> [LayerInfo; 3] {
        let l = |width, height, bitrate_bps| LayerInfo {
            width,
            height,
            fps: 30,
            temporal_layers: 3,
            bitrate_bps,
            active: true,
        };
        [l(320, 180, 150_000), l(640, 360, 500_000), l(1280, 720, 1_500_000)]
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs an update and lets a keyframe of the target arrive.
    fn settle(sel: &mut LayerSelector, now: Instant, ls: &[LayerInfo], budget: u64) -> Option<u8> {
        let up = sel.update(now, ls, &Preferences::default(), budget);
        if let Some(t) = up.target {
            sel.on_packet(t, true);
        }
        sel.current()
    }

    #[test]
    fn starts_at_best_fitting_layer() {
        let t0 = Instant::now();
        let mut sel = LayerSelector::new();
        let up = sel.update(t0, &layers(), &Preferences::default(), 600_000);
        assert_eq!(up.target, Some(1));
        assert_eq!(up.current, None);
        assert_eq!(up.request_keyframe, Some(1));
    }

    #[test]
    fn downgrades_immediately_when_budget_falls() {
        let t0 = Instant::now();
        let mut sel = LayerSelector::new();
        assert_eq!(settle(&mut sel, t0, &layers(), 2_000_000), Some(2));
        let up = sel.update(t0 + ms(10), &layers(), &Preferences::default(), 1_000_000);
        assert_eq!(up.target, Some(1));
        assert_eq!(up.request_keyframe, Some(1));
        let up = sel.update(t0 + ms(20), &layers(), &Preferences::default(), 100_000);
        assert_eq!(up.target, None);
        assert_eq!(up.current, None);
        assert_eq!(sel.on_packet(2, true), Decision::Drop);
    }

    #[test]
    fn upgrades_only_after_sustained_headroom() {
        let t0 = Instant::now();
        let mut sel = LayerSelector::new();
        let p = Preferences::default();
        assert_eq!(settle(&mut sel, t0, &layers(), 600_000), Some(1));
        // Fits layer 2 but without the 20% headroom: stays.
        assert_eq!(sel.update(t0 + ms(100), &layers(), &p, 1_600_000).target, Some(1));
        assert_eq!(sel.update(t0 + ms(1500), &layers(), &p, 1_600_000).target, Some(1));
        // Headroom, interrupted after 900 ms, restarts the clock.
        assert_eq!(sel.update(t0 + ms(2000), &layers(), &p, 1_800_000).target, Some(1));
        assert_eq!(sel.update(t0 + ms(2900), &layers(), &p, 1_800_000).target, Some(1));
        assert_eq!(sel.update(t0 + ms(3000), &layers(), &p, 1_000_000).target, Some(1));
        assert_eq!(sel.update(t0 + ms(3100), &layers(), &p, 1_800_000).target, Some(1));
        assert_eq!(sel.update(t0 + ms(4000), &layers(), &p, 1_800_000).target, Some(1));
        let up = sel.update(t0 + ms(4100), &layers(), &p, 1_800_000);
        assert_eq!(up.target, Some(2));
        assert_eq!(up.request_keyframe, Some(2));
    }

    #[test]
    fn switch_waits_for_keyframe_of_target() {
        let t0 = Instant::now();
        let mut sel = LayerSelector::new();
        let p = Preferences::default();
        sel.update(t0, &layers(), &p, 600_000);
        // Nothing forwarded before the first keyframe.
        assert_eq!(sel.on_packet(1, false), Decision::Drop);
        assert_eq!(sel.on_packet(0, true), Decision::Drop);
        assert_eq!(sel.on_packet(1, true), Decision::SwitchedTo(1));
        assert_eq!(sel.on_packet(1, false), Decision::Forward);
        // Downgrade: keep forwarding layer 1 until layer 0's keyframe.
        sel.update(t0 + ms(10), &layers(), &p, 200_000);
        assert_eq!(sel.on_packet(1, false), Decision::Forward);
        assert_eq!(sel.on_packet(0, false), Decision::Drop);
        assert_eq!(sel.on_packet(1, true), Decision::Forward);
        assert_eq!(sel.on_packet(0, true), Decision::SwitchedTo(0));
        assert_eq!(sel.on_packet(1, false), Decision::Drop);
        assert_eq!(sel.on_packet(0, false), Decision::Forward);
        assert_eq!(sel.update(t0 + ms(20), &layers(), &p, 200_000).request_keyframe, None);
    }

    #[test]
    fn keyframe_requests_are_throttled_per_layer() {
        let t0 = Instant::now();
        let mut kf = KeyframeRequester::new();
        assert!(kf.request(t0, 2));
        assert!(!kf.request(t0 + ms(100), 2));
        assert!(kf.request(t0 + ms(100), 1));
        assert!(!kf.request(t0 + ms(499), 2));
        assert!(kf.request(t0 + ms(500), 2));
        assert!(!kf.request(t0, 9));
    }

    #[test]
    fn preferences_cap_the_layer() {
        let t0 = Instant::now();
        let ls = layers();
        let budget = 10_000_000;
        let mut sel = LayerSelector::new();
        let p = Preferences {
            max_quality: 1,
            ..Preferences::default()
        };
        assert_eq!(sel.update(t0, &ls, &p, budget).target, Some(1));

        // A 600x300 tile is covered by the 640x360 layer.
        let mut sel = LayerSelector::new();
        let p = Preferences {
            max_width: 600,
            max_height: 300,
            ..Preferences::default()
        };
        assert_eq!(sel.update(t0, &ls, &p, budget).target, Some(1));
        // Smaller than the smallest layer: the smallest.
        let p = Preferences {
            max_width: 100,
            max_height: 100,
            ..Preferences::default()
        };
        assert_eq!(sel.update(t0 + ms(1), &ls, &p, budget).target, Some(0));
        // Bigger than all: the biggest (after sustained headroom).
        let p = Preferences {
            max_width: 4000,
            max_height: 4000,
            ..Preferences::default()
        };
        sel.update(t0 + ms(2), &ls, &p, budget);
        assert_eq!(sel.update(t0 + ms(1002), &ls, &p, budget).target, Some(2));

        let p = Preferences {
            paused: true,
            ..Preferences::default()
        };
        let up = sel.update(t0 + ms(1003), &ls, &p, budget);
        assert_eq!((up.target, up.current, up.request_keyframe), (None, None, None));

        // 15 fps of a 30 fps stream with 3 temporal layers: drop the top one.
        let p = Preferences {
            max_fps: 15,
            ..Preferences::default()
        };
        assert_eq!(sel.update(t0 + ms(1004), &ls, &p, budget).max_temporal, 1);
        let p = Preferences {
            max_fps: 5,
            ..Preferences::default()
        };
        assert_eq!(sel.update(t0 + ms(1005), &ls, &p, budget).max_temporal, 0);
        assert_eq!(
            sel.update(t0 + ms(1006), &ls, &Preferences::default(), budget)
                .max_temporal,
            2
        );
    }

    #[test]
    fn inactive_target_falls_back_to_lower_active_layer() {
        let t0 = Instant::now();
        let mut ls = layers();
        let mut sel = LayerSelector::new();
        assert_eq!(settle(&mut sel, t0, &ls, 10_000_000), Some(2));
        ls[2].active = false;
        assert_eq!(settle(&mut sel, t0 + ms(10), &ls, 10_000_000), Some(1));
        // Middle layer stops while the top is still off: lowest.
        ls[1].active = false;
        assert_eq!(settle(&mut sel, t0 + ms(20), &ls, 10_000_000), Some(0));
        // A stopped layer below the top: fall back down, not up.
        let mut ls = layers();
        let mut sel = LayerSelector::new();
        assert_eq!(settle(&mut sel, t0, &ls, 600_000), Some(1));
        ls[1].active = false;
        assert_eq!(settle(&mut sel, t0 + ms(10), &ls, 10_000_000), Some(0));
        // Nothing active at all.
        for l in &mut ls {
            l.active = false;
        }
        assert_eq!(
            sel.update(t0 + ms(20), &ls, &Preferences::default(), 10_000_000).target,
            None
        );
        assert_eq!(sel.update(t0, &[], &Preferences::default(), 10_000_000).target, None);
    }
}
