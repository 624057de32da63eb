//! Active speaker detection from RFC 6464 audio levels.
//!
//! Each audio packet's level (0 = loudest, 127 = silence, in -dBov) becomes a
//! loudness in `0.0..=1.0` (levels at or below the silence threshold count as
//! 0, so background noise does not win), smoothed per participant by an
//! exponential moving average with a ~500 ms time constant. Participants that
//! stop sending (mute, DTX) decay towards silence at the same rate.
//! [`SpeakerDetector::tick`] ranks the participants above a minimum loudness
//! and reports the top N, loudest first, only when the ordered set changes
//! and the previous report has stood for the hold time, so UIs do not flap
//! between two people talking at once.
//!
//! `on_level` runs per audio packet and does not allocate once a participant
//! is known; `tick` reuses its buffers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpeakerConfig {
    /// How many speakers to report.
    pub top_n: usize,
    /// Levels at or above this (in -dBov) count as silence.
    pub silence_level: u8,
    /// Smoothed loudness below which a participant is not speaking.
    pub min_loudness: f32,
    /// Minimum time between two reports.
    pub hold: Duration,
    /// Time constant of the smoothing.
    pub smoothing: Duration,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            top_n: 3,
            silence_level: 70,
            min_loudness: 0.1,
            hold: Duration::from_millis(500),
            smoothing: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Speaker {
    pub participant: u64,
    /// Smoothed loudness, 0.0 (silence) ..= 1.0 (0 dBov).
    pub loudness: f32,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    participant: u64,
    loudness: f32,
    at: Instant,
}

#[derive(Debug)]
pub struct SpeakerDetector {
    config: SpeakerConfig,
    entries: Vec<Entry>,
    index: HashMap<u64, usize>,
    ranked: Vec<Speaker>,
    reported: Vec<Speaker>,
    reported_at: Option<Instant>,
}

impl SpeakerDetector {
    pub fn new(config: SpeakerConfig) -> Self {
        Self {
            config,
            entries: Vec::new(),
            index: HashMap::new(),
            ranked: Vec::new(),
            reported: Vec::new(),
            reported_at: None,
        }
    }

    /// Fraction of the smoothed value kept after `elapsed`.
    fn decay(&self, elapsed: Duration) -> f32 {
        let tau = self.config.smoothing.as_secs_f32().max(f32::EPSILON);
        (-elapsed.as_secs_f32() / tau).exp()
    }

    /// Records one packet's audio level (`level` in -dBov, 0..=127).
    pub fn on_level(&mut self, participant: u64, level: u8, now: Instant) {
        let silence = self.config.silence_level.max(1);
        let sample = f32::from(silence.saturating_sub(level)) / f32::from(silence);
        match self.index.get(&participant) {
            Some(&i) => {
                let elapsed = now.saturating_duration_since(self.entries[i].at);
                let keep = self.decay(elapsed);
                let entry = &mut self.entries[i];
                entry.loudness = entry.loudness * keep + sample * (1.0 - keep);
                entry.at = now;
            }
            None => {
                // A first sample counts like one packet's worth of smoothing,
                // so a single loud packet cannot make someone the speaker.
                let keep = self.decay(Duration::from_millis(20));
                self.index.insert(participant, self.entries.len());
                self.entries.push(Entry {
                    participant,
                    loudness: sample * (1.0 - keep),
                    at: now,
                });
            }
        }
    }

    /// Forgets a participant (left, or unpublished their audio).
    pub fn remove(&mut self, participant: u64) {
        let Some(i) = self.index.remove(&participant) else {
            return;
        };
        self.entries.swap_remove(i);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.participant, i);
        }
    }

    /// The last reported speakers, loudest first.
    pub fn speakers(&self) -> &[Speaker] {
        &self.reported
    }

    /// Ranks the participants; returns the new top N when the ordered set
    /// changed and the previous report is at least `hold` old. Call every
    /// 100-300 ms.
    pub fn tick(&mut self, now: Instant) -> Option<&[Speaker]> {
        self.ranked.clear();
        for e in &self.entries {
            let loudness = e.loudness * self.decay(now.saturating_duration_since(e.at));
            if loudness >= self.config.min_loudness {
                self.ranked.push(Speaker {
                    participant: e.participant,
                    loudness,
                });
            }
        }
        self.ranked.sort_unstable_by(|a, b| {
            b.loudness
                .total_cmp(&a.loudness)
                .then(a.participant.cmp(&b.participant))
        });
        self.ranked.truncate(self.config.top_n);

        let same = self.ranked.len() == self.reported.len()
            && self
                .ranked
                .iter()
                .zip(&self.reported)
                .all(|(a, b)| a.participant == b.participant);
        let held = self
            .reported_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.config.hold);
        if same {
            // Keep the reported levels fresh for `speakers()` callers.
            self.reported.copy_from_slice(&self.ranked);
            return None;
        }
        if !held {
            return None;
        }
        self.reported.clear();
        self.reported.extend_from_slice(&self.ranked);
        self.reported_at = Some(now);
        Some(&self.reported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds 20 ms packets of the given levels for `dur`.
    fn talk(det: &mut SpeakerDetector, from: Instant, dur: Duration, levels: &[(u64, u8)]) -> Instant {
        let mut t = from;
        while t < from + dur {
            t += ms(20);
            for &(p, level) in levels {
                det.on_level(p, level, t);
            }
        }
        t
    }

    fn ids(s: Option<&[Speaker]>) -> Option<Vec<u64>> {
        s.map(|s| s.iter().map(|s| s.participant).collect())
    }

    #[test]
    fn loudest_first() {
        let t0 = Instant::now();
        let mut det = SpeakerDetector::new(SpeakerConfig::default());
        let t = talk(&mut det, t0, ms(1000), &[(1, 50), (2, 20), (3, 35), (4, 40)]);
        assert_eq!(ids(det.tick(t)), Some(vec![2, 3, 4]));
        assert_eq!(det.tick(t), None, "no change, no event");
        assert!(det.speakers()[0].loudness > det.speakers()[1].loudness);
    }

    #[test]
    fn silence_and_noise_are_not_speech() {
        let t0 = Instant::now();
        let mut det = SpeakerDetector::new(SpeakerConfig::default());
        let t = talk(&mut det, t0, ms(1000), &[(1, 127), (2, 75), (3, 68)]);
        assert_eq!(det.tick(t), None);
        assert!(det.speakers().is_empty());
        // Talking, then silent: leaves the set once decayed.
        let t = talk(&mut det, t, ms(1000), &[(1, 30)]);
        assert_eq!(ids(det.tick(t)), Some(vec![1]));
        let t = talk(&mut det, t, ms(2000), &[(1, 127)]);
        assert_eq!(ids(det.tick(t)), Some(vec![]));
    }

    #[test]
    fn stopping_packets_decays_too() {
        let t0 = Instant::now();
        let mut det = SpeakerDetector::new(SpeakerConfig::default());
        let t = talk(&mut det, t0, ms(1000), &[(1, 30)]);
        assert_eq!(ids(det.tick(t)), Some(vec![1]));
        assert_eq!(ids(det.tick(t + ms(3000))), Some(vec![]));
    }

    #[test]
    fn hold_time_limits_changes() {
        let t0 = Instant::now();
        let mut det = SpeakerDetector::new(SpeakerConfig {
            top_n: 1,
            ..SpeakerConfig::default()
        });
        let t = talk(&mut det, t0, ms(1000), &[(1, 20), (2, 40)]);
        assert_eq!(ids(det.tick(t)), Some(vec![1]));
        // 2 becomes much louder right away, but the report stands for 500 ms.
        let t2 = talk(&mut det, t, ms(300), &[(1, 60), (2, 10)]);
        assert_eq!(det.tick(t2), None);
        assert_eq!(det.speakers()[0].participant, 1);
        let t3 = talk(&mut det, t2, ms(200), &[(1, 60), (2, 10)]);
        assert_eq!(ids(det.tick(t3)), Some(vec![2]));
    }

    #[test]
    fn single_loud_packet_does_not_win() {
        let t0 = Instant::now();
        let mut det = SpeakerDetector::new(SpeakerConfig::default());
        det.on_level(1, 0, t0);
        assert_eq!(det.tick(t0), None);
    }

    #[test]
    fn removed_participants_disappear() {
        let t0 = Instant::now();
        let mut det = SpeakerDetector::new(SpeakerConfig::default());
        let t = talk(&mut det, t0, ms(1000), &[(1, 20), (2, 30), (3, 40)]);
        assert_eq!(ids(det.tick(t)), Some(vec![1, 2, 3]));
        det.remove(1);
        det.remove(1);
        let t = talk(&mut det, t, ms(600), &[(2, 30), (3, 40)]);
        assert_eq!(ids(det.tick(t)), Some(vec![2, 3]));
        // The swapped entry is still addressed correctly.
        let t = talk(&mut det, t, ms(2000), &[(3, 10), (2, 127)]);
        assert_eq!(ids(det.tick(t)), Some(vec![3]));
    }
}
