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
//! A reset (`Bwe::reset` from the current estimate) discards that state and
//! runs str0m's initial probes (short bursts at 3 and 6 times the starting
//! rate, capped at twice the desired rate, which the allocator sets to the
//! paused track's lowest layer). If the link carries that, the estimate jumps
//! and video resumes at its lowest layer; if not, the probe reports what the
//! link does carry and video stays paused. Tries back off exponentially so
//! a link that stays narrow sees one short burst every [`MAX_RETRY`].
use std::time::{Duration, Instant};

/// Wait after video pauses before the first reset: long enough for the
/// congested queue to drain, so the probe measures the link, not the queue.
pub const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Longest wait between resets while video stays paused.
pub const MAX_RETRY: Duration = Duration::from_secs(32);

/// One subscriber's reset schedule.
#[derive(Debug, Clone)]
pub struct EstimateRecovery {
    wait: Duration,
    due: Option<Instant>,
}

impl Default for EstimateRecovery {
    fn default() -> Self {
        EstimateRecovery {
            wait: FIRST_RETRY,
            due: None,
        }
    }
}

impl EstimateRecovery {
    /// Called whenever the allocation is recomputed (at least once a
    /// second); `starved` is whether some video is paused for bandwidth.
    /// Returns true when the estimate should be reset now.
    pub fn poll(&mut self, now: Instant, starved: bool) -> bool {
        if !starved {
            *self = EstimateRecovery::default();
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

    /// Seconds (from the pause) at which `poll`, called every 500 ms while
    /// `starved(t)` holds, asks for a reset.
    fn resets(until: u64, starved: impl Fn(Duration) -> bool) -> Vec<f64> {
        let start = Instant::now();
        let mut r = EstimateRecovery::default();
        let mut out = Vec::new();
        for half in 0..until * 2 {
            let t = Duration::from_millis(half * 500);
            if r.poll(start + t, starved(t)) {
                out.push(t.as_secs_f64());
            }
        }
        out
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
}
