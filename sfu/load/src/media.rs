//! What a publisher sends and when: video frames at a bitrate and frame
//! rate, split into packets of at most `max_packet` bytes (one to three
//! simulcast layers), and Opus-sized audio every 20 ms. The same schedule
//! feeds the str0m publishers and the bare forwarder's sender, so both
//! carry the same packet sizes at the same times.
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct MediaSpec {
    /// Video layers, lowest first, with their rid (None without simulcast)
    /// and bitrate in kbit/s. Empty = no video.
    pub layers: Vec<(Option<String>, u32)>,
    pub fps: u32,
    pub max_packet: usize,
    pub audio: bool,
    pub audio_bytes: usize,
    /// Unrequested keyframes (zero = only on request).
    pub keyframe_every: Duration,
}

impl MediaSpec {
    /// Index of the audio stream (after the video layers), if any.
    pub fn audio_stream(&self) -> Option<usize> {
        self.audio.then_some(self.layers.len())
    }

    pub fn streams(&self) -> usize {
        self.layers.len() + usize::from(self.audio)
    }
}

/// One packet to send now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Out {
    pub stream: usize,
    pub seq: u64,
    pub ts: u32,
    pub size: usize,
    /// First packet of a frame.
    pub start: bool,
    pub key: bool,
    /// Last packet of a frame.
    pub marker: bool,
}

struct StreamState {
    next: Instant,
    seq: u64,
    frames: u64,
    force_key: bool,
    last_key: Option<Instant>,
}

pub struct Schedule {
    pub spec: MediaSpec,
    streams: Vec<StreamState>,
}

/// Splits a frame of `bytes` into the fewest packets of at most `max`
/// bytes, of near-equal size (as packetizers do, so no tiny tail).
pub fn split_frame(bytes: usize, max: usize) -> impl Iterator<Item = usize> {
    let max = max.max(1);
    let bytes = bytes.max(1);
    let n = bytes.div_ceil(max);
    (0..n).map(move |i| bytes / n + usize::from(i < bytes % n))
}

impl Schedule {
    pub fn new(spec: MediaSpec, now: Instant) -> Schedule {
        let streams = (0..spec.streams())
            .map(|i| StreamState {
                next: now,
                // Different starting points per stream, far from 0 so a
                // receiver's extended numbers never go below it.
                seq: 1000 + 10_000 * i as u64,
                frames: 0,
                force_key: true,
                last_key: None,
            })
            .collect();
        Schedule { spec, streams }
    }

    pub fn force_keyframe(&mut self, stream: usize) {
        if let Some(s) = self.streams.get_mut(stream) {
            s.force_key = true;
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.streams.iter().map(|s| s.next).min()
    }

    fn interval(&self, stream: usize) -> Duration {
        if Some(stream) == self.spec.audio_stream() {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(1) / self.spec.fps.max(1)
        }
    }

    /// Appends every packet due at `now`.
    pub fn due(&mut self, now: Instant, out: &mut Vec<Out>) {
        for i in 0..self.streams.len() {
            let interval = self.interval(i);
            while self.streams[i].next <= now {
                let audio = Some(i) == self.spec.audio_stream();
                let s = &mut self.streams[i];
                // After a stall (machine busy) skip ahead rather than burst.
                if now.saturating_duration_since(s.next) > Duration::from_millis(500) {
                    s.next = now;
                }
                s.next += interval;
                let frame = s.frames;
                s.frames += 1;
                if audio {
                    out.push(Out {
                        stream: i,
                        seq: s.seq,
                        ts: (frame as u32).wrapping_mul(960),
                        size: self.spec.audio_bytes,
                        start: true,
                        key: false,
                        marker: false,
                    });
                    s.seq += 1;
                    continue;
                }
                let periodic = !self.spec.keyframe_every.is_zero()
                    && s.last_key
                        .is_none_or(|k| now.saturating_duration_since(k) >= self.spec.keyframe_every);
                let key = s.force_key || periodic;
                if key {
                    s.force_key = false;
                    s.last_key = Some(now);
                }
                let kbps = self.spec.layers[i].1 as usize;
                let frame_bytes = kbps * 1000 / 8 / self.spec.fps.max(1) as usize;
                let ts = (frame as u32).wrapping_mul(90_000 / self.spec.fps.max(1));
                let sizes: Vec<usize> = split_frame(frame_bytes, self.spec.max_packet).collect();
                let n = sizes.len();
                for (k, size) in sizes.into_iter().enumerate() {
                    out.push(Out {
                        stream: i,
                        seq: s.seq,
                        ts,
                        size,
                        start: k == 0,
                        key,
                        marker: k + 1 == n,
                    });
                    s.seq += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_evenly() {
        assert_eq!(split_frame(2500, 1000).collect::<Vec<_>>(), vec![834, 833, 833]);
        assert_eq!(split_frame(1000, 1000).collect::<Vec<_>>(), vec![1000]);
        assert_eq!(split_frame(10416, 1000).count(), 11);
    }

    #[test]
    fn rates_match_the_spec() {
        let spec = MediaSpec {
            layers: vec![(Some("q".into()), 150), (Some("f".into()), 2500)],
            fps: 30,
            max_packet: 1000,
            audio: true,
            audio_bytes: 100,
            keyframe_every: Duration::ZERO,
        };
        let t0 = Instant::now();
        let mut s = Schedule::new(spec, t0);
        let mut out = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(1) {
            s.due(t, &mut out);
            t += Duration::from_millis(1);
        }
        let bytes = |stream| out.iter().filter(|o| o.stream == stream).map(|o| o.size).sum::<usize>();
        // One second: 30 frames per video layer, 50 audio packets.
        assert_eq!(bytes(0), 30 * 625);
        assert_eq!(bytes(1), 30 * 10416);
        assert_eq!(out.iter().filter(|o| o.stream == 2).count(), 50);
        // Only the first frame of each layer is a keyframe (no requests).
        assert_eq!(out.iter().filter(|o| o.key && o.start).count(), 2);
        assert!(out.iter().all(|o| o.size <= 1000));
    }
}
