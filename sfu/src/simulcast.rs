//! Simulcast layer limits and keyframe request throttling.
//!
//! Which layer a subscription gets is the allocator's choice (it divides
//! the subscriber's estimate across all its tracks, with the upgrade
//! headroom of [`with_headroom`]); the router follows that target with the
//! forwarded layer only at the target's keyframes. What lives here are the
//! pieces both use:
//! - [`allowed_max_layer`]: the highest layer a subscriber's preferences
//!   (pinned quality, rendering size) allow, the allocator's cap;
//! - [`KeyframeRequester`]: sits on the publisher's track and coalesces the
//!   keyframe requests of all its subscribers, at most one per layer per
//!   [`KEYFRAME_THROTTLE`], since every keyframe costs the whole room
//!   bandwidth.

use std::time::{Duration, Instant};

/// Simulcast layers per track (quality 0 = low, 1 = medium, 2 = high).
pub const MAX_LAYERS: usize = 3;

/// Minimum interval between keyframe requests for one layer: subscribers
/// ask in bursts (every loss, every join), the publisher's encoder only
/// needs to hear it once.
pub const KEYFRAME_THROTTLE: Duration = Duration::from_millis(500);

/// Bitrate with the upgrade headroom (x1.2), in integers to stay exact: a
/// layer above the one forwarded must fit with room to spare, so a noisy
/// estimate does not make the layer flap.
pub fn with_headroom(bps: u64) -> u64 {
    bps.saturating_mul(6) / 5
}

/// One simulcast layer as the publisher declared it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerInfo {
    /// Picture size; 0 = unknown (never capped by size).
    pub width: u32,
    pub height: u32,
    /// The publisher is sending it.
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
    pub paused: bool,
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            max_quality: (MAX_LAYERS - 1) as u8,
            max_width: 0,
            max_height: 0,
            paused: false,
        }
    }
}

/// Highest layer index the preferences allow, or `None` if paused or the
/// track has no layers. What the allocator needs as `max_layer`.
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

/// Throttles keyframe requests for one published track across all its
/// subscribers.
#[derive(Clone, Debug, Default)]
pub struct KeyframeRequester {
    last: [Option<Instant>; MAX_LAYERS],
    /// A request refused by the throttle is owed, not dropped: the
    /// subscriber that asked still has no picture until a keyframe comes,
    /// and browsers send keyframes only when asked.
    pending: [bool; MAX_LAYERS],
}

impl KeyframeRequester {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to send a keyframe request (PLI/FIR) for `layer` now. When
    /// the throttle says no, the request is remembered for [`Self::take_due`].
    pub fn request(&mut self, now: Instant, layer: u8) -> bool {
        let i = usize::from(layer);
        let Some(last) = self.last.get_mut(i) else {
            return false;
        };
        if last.is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_THROTTLE) {
            self.pending[i] = true;
            return false;
        }
        *last = Some(now);
        self.pending[i] = false;
        true
    }

    /// A layer whose owed request may go out now (its throttle window has
    /// passed); marks it sent. Call until `None`.
    pub fn take_due(&mut self, now: Instant) -> Option<u8> {
        for i in 0..MAX_LAYERS {
            let open = self.last[i].is_none_or(|at| now.saturating_duration_since(at) >= KEYFRAME_THROTTLE);
            if self.pending[i] && open {
                self.pending[i] = false;
                self.last[i] = Some(now);
                return Some(i as u8);
            }
        }
        None
    }

    /// Whether any request is owed.
    pub fn has_pending(&self) -> bool {
        self.pending.iter().any(|p| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> [LayerInfo; 3] {
        let l = |width, height| LayerInfo {
            width,
            height,
            active: true,
        };
        [l(320, 180), l(640, 360), l(1280, 720)]
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
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
        let ls = layers();
        let cap = |p: Preferences| allowed_max_layer(&ls, &p);
        assert_eq!(cap(Preferences::default()), Some(2));
        let pinned = Preferences {
            max_quality: 1,
            ..Preferences::default()
        };
        assert_eq!(cap(pinned), Some(1));
        let size = |max_width, max_height| Preferences {
            max_width,
            max_height,
            ..Preferences::default()
        };
        // A 600x300 tile is covered by the 640x360 layer.
        assert_eq!(cap(size(600, 300)), Some(1));
        // Smaller than the smallest layer: the smallest.
        assert_eq!(cap(size(100, 100)), Some(0));
        // Bigger than all: the biggest.
        assert_eq!(cap(size(4000, 4000)), Some(2));
        // Unknown sizes never cap.
        assert_eq!(allowed_max_layer(&[LayerInfo::default(); 3], &size(100, 100)), Some(2));
        let paused = Preferences {
            paused: true,
            ..Preferences::default()
        };
        assert_eq!(cap(paused), None);
        assert_eq!(allowed_max_layer(&[], &Preferences::default()), None);
    }

    #[test]
    fn throttled_keyframe_requests_are_owed_not_dropped() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new();
        assert!(k.request(t0, 1));
        assert!(!k.request(t0 + ms(100), 1), "inside the window");
        assert!(k.has_pending());
        assert_eq!(k.take_due(t0 + ms(400)), None, "window still open");
        assert_eq!(k.take_due(t0 + ms(500)), Some(1));
        assert_eq!(k.take_due(t0 + ms(500)), None, "sent once");
        assert!(!k.has_pending());
        // The owed request restarted the window.
        assert!(!k.request(t0 + ms(600), 1));
    }
}
