//! When to restart a subscriber's downlink estimate that video paused for
//! bandwidth cannot raise by itself.
//!
//! str0m's estimator learns only from transport-wide feedback on what it
//! sends. Once the allocator pauses video because even its lowest layer does
//! not fit, little or nothing goes down the link, and str0m's state latches:
//! the last delay-based hypothesis (overuse) stays, padding is off during
//! overuse and probing is refused, so the estimate never rises again even
//! after the link recovers (measured in `sfu/tests/simulcast.rs`: without
//! the reset the estimate stayed at 16 kbit/s for 40 s on a 100 Mbit/s
//! link). Audio feedback alone should not get it out either (read from
//! str0m 0.25's source, not measured): padding is capped by the estimate and
//! the allocation probe fires only when the desired rate rises.
//!
//! It latches with video still flowing too (seen with Chrome subscribers,
//! `sfu_browser::max_fps_drops_temporal_layers`, about one run in five): a
//! frame rate cap keeps what is sent far below the estimate, a probe lifts
//! the delay-based estimate above the loss-based one, and str0m's loss
//! controller settles in its "decreasing" state with no loss at all. The
//! estimate may then rise only to 1.5 times the acknowledged rate (what the
//! cap let through), and str0m's probe controller refuses every probe in
//! that state, its own stagnation probe included. When the cap is lifted,
//! the allocator wants the next temporal layer and the estimate stays short
//! of it, on loopback: once 10% short and unchanged for 25 s; once held at
//! the middle temporal layer for 20 s from 86 kbit/s while a first version
//! of this reset, which waited for 10 s of an unchanged estimate, never
//! fired (so that estimate kept changing, below the layer). With the held-back
//! reset below, 4 runs of 15 latched: each reset came 10 s after the cap
//! was lifted, and 70-90 ms later the estimate was up from 77-84 to
//! 348-358 kbit/s and the top temporal layer allocated.
//!
//! A reset (`Bwe::reset` from the current estimate) discards that state and
//! runs str0m's initial probes (short bursts at 3 and 6 times the starting
//! rate, capped at twice the desired rate, which the allocator sets to the
//! paused track's lowest layer or to everything the subscriber wants). If
//! the link carries that, the estimate jumps and video resumes or steps up;
//! if not, the probe reports what the link does carry and nothing changes.
//! Tries back off exponentially so a link that stays narrow sees one short
//! burst every [`MAX_RETRY`].
//!
//! A held-back allocation (settled, its next step not fitting) first gets
//! [`HELD_BACK_RETRY`] for str0m's own probes, which normally lift a
//! settled estimate within a few seconds. Whether the estimate moves in the
//! meantime says nothing: a latched one moves too, below its cap.
use std::time::{Duration, Instant};

/// Wait after video pauses before the first reset: long enough for the
/// congested queue to drain, so the probe measures the link, not the queue.
pub const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Wait after an allocation is held back before the first reset.
pub const HELD_BACK_RETRY: Duration = Duration::from_secs(10);
/// Longest wait between resets while video stays paused or held back.
pub const MAX_RETRY: Duration = Duration::from_secs(32);

/// What the allocation left undone, as the router sees it after allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// Everything wanted fits (or an operator's override is the estimate).
    None,
    /// Some video is paused for bandwidth.
    Paused,
    /// Settled, and the next step up does not fit the estimate.
    HeldBack,
}

impl Shortfall {
    fn first_retry(self) -> Duration {
        match self {
            Shortfall::HeldBack => HELD_BACK_RETRY,
            _ => FIRST_RETRY,
        }
    }
}

/// One subscriber's reset schedule.
#[derive(Debug, Clone)]
pub struct EstimateRecovery {
    kind: Shortfall,
    wait: Duration,
    due: Option<Instant>,
}

impl Default for EstimateRecovery {
    fn default() -> Self {
        EstimateRecovery {
            kind: Shortfall::None,
            wait: FIRST_RETRY,
            due: None,
        }
    }
}

impl EstimateRecovery {
    /// Called whenever the allocation is recomputed (at least once a
    /// second). Returns true when the estimate should be reset now.
    pub fn poll(&mut self, now: Instant, shortfall: Shortfall) -> bool {
        if shortfall != self.kind {
            // A new kind of shortfall (or none) starts its own schedule.
            *self = EstimateRecovery {
                kind: shortfall,
                wait: shortfall.first_retry(),
                due: None,
            };
        }
        if shortfall == Shortfall::None {
            return false;
        }
        let due = *self.due.get_or_insert(now + self.wait);
        if now < due {
            return false;
        }
        self.wait = (self.wait * 2).min(MAX_RETRY);
        self.due = Some(now + self.wait);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds (from the start) at which `poll`, called every 500 ms with
    /// `shortfall(t)`, asks for a reset.
    fn resets_with(until: u64, shortfall: impl Fn(Duration) -> Shortfall) -> Vec<f64> {
        let start = Instant::now();
        let mut r = EstimateRecovery::default();
        let mut out = Vec::new();
        for half in 0..until * 2 {
            let t = Duration::from_millis(half * 500);
            if r.poll(start + t, shortfall(t)) {
                out.push(t.as_secs_f64());
            }
        }
        out
    }

    fn resets(until: u64, starved: impl Fn(Duration) -> bool) -> Vec<f64> {
        resets_with(until, |t| if starved(t) { Shortfall::Paused } else { Shortfall::None })
    }

    #[test]
    fn backs_off_while_paused_up_to_the_cap() {
        assert_eq!(resets(130, |_| true), [2.0, 6.0, 14.0, 30.0, 62.0, 94.0, 126.0]);
    }

    #[test]
    fn never_while_video_flows() {
        assert!(resets(60, |_| false).is_empty());
    }

    #[test]
    fn resuming_starts_the_schedule_again() {
        // Paused, two resets, video flows from 10 s to 20 s, paused again:
        // the next reset comes FIRST_RETRY after the new pause.
        let got = resets(30, |t| t < Duration::from_secs(10) || t >= Duration::from_secs(20));
        assert_eq!(got, [2.0, 6.0, 22.0, 26.0]);
    }

    #[test]
    fn held_back_waits_ten_seconds_then_backs_off() {
        let got = resets_with(100, |_| Shortfall::HeldBack);
        assert_eq!(got, [10.0, 30.0, 62.0, 94.0]);
    }

    #[test]
    fn a_step_up_or_a_pause_ends_the_held_back_schedule() {
        // Held back from 0 s; the step up fits from 12 s to 14 s (str0m's
        // probe worked), held back again: 10 s from then. Paused at 30 s:
        // the paused schedule's 2 s.
        let got = resets_with(40, |t| match t.as_secs() {
            12..=13 => Shortfall::None,
            30.. => Shortfall::Paused,
            _ => Shortfall::HeldBack,
        });
        assert_eq!(got, [10.0, 24.0, 32.0, 36.0]);
    }
}
