//! The run's timeline: one sample per node every 250 ms with what the
//! router knows (per direction: cumulative bytes and packets in and out,
//! bitrate over the last interval, drops by cause, bottleneck backlog),
//! plus the browser metrics, which stay `null` until a browser client
//! reports them.
//!
//! Directions are seen from the rig, as in [`crate::router`]: *up* carries
//! what the node sends (its `kbps_in` is the node's send rate), *down* what
//! it receives (its `kbps_out` is what reaches the node).

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::LinkStats;
use crate::router::Report;
use crate::scenario::Scenario;

/// Sampling interval of `netem run`.
pub const INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub scenario: String,
    pub seed: u64,
    pub interval_ms: u64,
    /// Planned duration; the run may end earlier (all clients exited).
    pub duration_s: f64,
    /// Schedule changes, in scenario order.
    pub changes: Vec<Change>,
    /// Server first, then clients (the topology's node order).
    pub nodes: Vec<NodeSeries>,
}

/// One scheduled change of one node's link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub at_s: f64,
    pub node: String,
    /// E.g. "down: rate 100 kbit/s, loss 10%".
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSeries {
    pub name: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the links were created (schedules count from there).
    pub t_s: f64,
    /// From the node into the rig.
    pub up: DirSample,
    /// From the rig to the node.
    pub down: DirSample,
    #[serde(default)]
    pub browser: BrowserMetrics,
}

/// One direction of one access link. Counters are cumulative since the
/// start; `kbps_*` cover the interval since the previous sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirSample {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub kbps_in: f64,
    pub kbps_out: f64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub dropped_blocked: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Bottleneck backlog at the sampling instant.
    pub queue_packets: u64,
    pub queue_bytes: u64,
}

impl DirSample {
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_queue + self.dropped_blocked
    }

    fn new(s: &LinkStats, prev: Option<&DirSample>, dt_s: f64) -> Self {
        let kbps = |now: u64, before: u64| {
            if dt_s > 0.0 {
                now.saturating_sub(before) as f64 * 8.0 / dt_s / 1000.0
            } else {
                0.0
            }
        };
        let (kbps_in, kbps_out) = match prev {
            Some(p) => (kbps(s.bytes_in, p.bytes_in), kbps(s.bytes_out, p.bytes_out)),
            None => (0.0, 0.0),
        };
        Self {
            packets_in: s.packets_in,
            bytes_in: s.bytes_in,
            packets_out: s.packets_out,
            bytes_out: s.bytes_out,
            kbps_in,
            kbps_out,
            dropped_loss: s.dropped_loss,
            dropped_queue: s.dropped_queue,
            dropped_blocked: s.dropped_blocked,
            duplicated: s.duplicated,
            reordered: s.reordered,
            queue_packets: s.queue_packets,
            queue_bytes: s.queue_bytes,
        }
    }
}

/// What a browser client (netem/clients/browser.mjs) reports from the
/// SDK's and the browser's getStats(), and the server's view of it. All
/// `None` for nodes without a browser and before its first sample. Video
/// and audio fields describe the first remote camera and microphone the
/// client receives; counters are cumulative.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrowserMetrics {
    pub sent_kbps: Option<f64>,
    pub received_kbps: Option<f64>,
    /// Simulcast layer (rid) being received.
    pub received_layer: Option<String>,
    pub received_width: Option<u32>,
    pub received_height: Option<u32>,
    pub frames_decoded: Option<u64>,
    /// inbound-rtp `freezeCount` and `totalFreezesDuration` (ms).
    pub freezes: Option<u64>,
    pub freeze_ms: Option<u64>,
    /// Received video, since the previous sample.
    pub packet_loss_pct: Option<f64>,
    pub packets_received: Option<u64>,
    pub packets_lost: Option<u64>,
    pub nacks: Option<u64>,
    pub keyframes: Option<u64>,
    /// inbound-rtp entries (SSRCs) the video receiver has seen; the
    /// counters above are their sums.
    pub video_ssrcs: Option<u32>,
    pub rtt_ms: Option<f64>,
    /// The server's bandwidth estimate for this subscriber.
    pub server_estimate_kbps: Option<f64>,
    /// Received audio: `totalSamplesReceived`, `concealedSamples`.
    pub audio_samples: Option<u64>,
    pub audio_concealed: Option<u64>,
    /// Own video: the highest simulcast layer being sent, and how many are.
    pub sent_layer: Option<String>,
    pub sent_layers: Option<u32>,
    /// Selected candidate pair's local side, "type/transport" (e.g.
    /// "relay/tcp": a relay candidate reached over TCP), per connection.
    pub pub_candidate: Option<String>,
    pub sub_candidate: Option<String>,
}

impl Timeline {
    /// An empty timeline for `scenario` (name, seed, schedule changes).
    pub fn for_scenario(scenario: &Scenario, fallback_name: &str) -> Self {
        let mut changes = Vec::new();
        for node in scenario.nodes() {
            for step in &node.schedule {
                let mut parts = Vec::new();
                for (dir, spec) in [("both", &step.both), ("up", &step.up), ("down", &step.down)] {
                    if let Some(spec) = spec {
                        parts.push(format!("{dir}: {}", spec.describe()));
                    }
                }
                changes.push(Change {
                    at_s: step.at_s,
                    node: node.name.clone(),
                    label: parts.join("; "),
                });
            }
        }
        Self {
            scenario: scenario.name.clone().unwrap_or_else(|| fallback_name.to_string()),
            seed: scenario.seed,
            interval_ms: INTERVAL.as_millis() as u64,
            duration_s: scenario.duration_s,
            changes,
            nodes: Vec::new(),
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeSeries> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Time of the last sample (0 if none).
    pub fn end_s(&self) -> f64 {
        self.nodes
            .iter()
            .filter_map(|n| n.samples.last())
            .map(|s| s.t_s)
            .fold(0.0, f64::max)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a timeline always serializes")
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json() + "\n")
    }
}

/// Turns router reports into timeline samples.
pub struct Recorder {
    start: Instant,
    timeline: Timeline,
}

impl Recorder {
    /// `start` is when the links were created (t = 0).
    pub fn new(timeline: Timeline, start: Instant) -> Self {
        Self { start, timeline }
    }

    pub fn record(&mut self, report: &Report) {
        let t_s = report.at.saturating_duration_since(self.start).as_secs_f64();
        for port in &report.ports {
            let idx = match self.timeline.nodes.iter().position(|n| n.name == port.name) {
                Some(i) => i,
                None => {
                    self.timeline.nodes.push(NodeSeries {
                        name: port.name.clone(),
                        samples: Vec::new(),
                    });
                    self.timeline.nodes.len() - 1
                }
            };
            let series = &mut self.timeline.nodes[idx];
            let prev = series.samples.last();
            let dt_s = prev.map_or(0.0, |p| t_s - p.t_s);
            let sample = Sample {
                t_s,
                up: DirSample::new(&port.up, prev.map(|p| &p.up), dt_s),
                down: DirSample::new(&port.down, prev.map(|p| &p.down), dt_s),
                browser: BrowserMetrics::default(),
            };
            series.samples.push(sample);
        }
    }

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    pub fn finish(self) -> Timeline {
        self.timeline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{PortReport, RouterStats};

    fn report(at: Instant, bytes_down_out: u64) -> Report {
        Report {
            at,
            ports: vec![PortReport {
                name: "alice".into(),
                up: LinkStats::default(),
                down: LinkStats {
                    packets_in: bytes_down_out / 100 + 1,
                    bytes_in: bytes_down_out + 100,
                    packets_out: bytes_down_out / 100,
                    bytes_out: bytes_down_out,
                    dropped_loss: 1,
                    ..Default::default()
                },
            }],
            router: RouterStats::default(),
            pool_in_use: 0,
        }
    }

    #[test]
    fn recorder_computes_interval_bitrates() {
        let start = Instant::now();
        let scenario = Scenario::parse(
            "duration_s = 2\n[[clients]]\nname = \"alice\"\n[[clients.schedule]]\nat_s = 1\ndown = { rate_kbps = 100 }",
        )
        .unwrap();
        let mut rec = Recorder::new(Timeline::for_scenario(&scenario, "x"), start);
        rec.record(&report(start, 0));
        rec.record(&report(start + Duration::from_millis(250), 12_500));
        rec.record(&report(start + Duration::from_millis(500), 12_500));
        let t = rec.finish();
        assert_eq!(t.scenario, "x");
        assert_eq!(t.changes.len(), 1);
        assert_eq!(t.changes[0].label, "down: rate 100 kbit/s");
        let s = &t.node("alice").unwrap().samples;
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].down.kbps_out, 0.0);
        // 12,500 bytes in 250 ms = 400 kbit/s.
        assert!((s[1].down.kbps_out - 400.0).abs() < 1e-9);
        assert_eq!(s[2].down.kbps_out, 0.0);
        assert_eq!(s[2].down.dropped(), 1);
        assert!((t.end_s() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn serde_round_trip() {
        let mut t = Timeline {
            scenario: "rt".into(),
            seed: 7,
            interval_ms: 250,
            duration_s: 1.5,
            changes: vec![Change {
                at_s: 0.5,
                node: "alice".into(),
                label: "down: rate 500 kbit/s".into(),
            }],
            nodes: vec![NodeSeries {
                name: "alice".into(),
                samples: vec![Sample {
                    t_s: 0.25,
                    up: DirSample {
                        bytes_in: 1000,
                        kbps_in: 32.0,
                        ..Default::default()
                    },
                    down: DirSample {
                        queue_bytes: 3000,
                        dropped_queue: 2,
                        ..Default::default()
                    },
                    browser: BrowserMetrics::default(),
                }],
            }],
        };
        let first = t.nodes[0].samples[0].clone();
        t.nodes[0].samples.push(Sample {
            t_s: 0.5,
            browser: BrowserMetrics {
                received_layer: Some("h".into()),
                received_width: Some(1280),
                rtt_ms: Some(42.5),
                ..Default::default()
            },
            ..first
        });
        let json = t.to_json();
        assert!(json.contains("\"server_estimate_kbps\": null"));
        assert_eq!(Timeline::from_json(&json).unwrap(), t);
        // Browser metrics may be absent altogether.
        let stripped = json.replace("\"browser\"", "\"ignored_extra\"");
        let back = Timeline::from_json(&stripped).unwrap();
        assert_eq!(back.nodes[0].samples[1].browser, BrowserMetrics::default());
    }
}
