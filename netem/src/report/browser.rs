//! Browser samples into the timeline: each browser client
//! (netem/clients/browser.mjs) appends one JSON line per 250 ms to
//! `browser-<node>.jsonl` in the run's output directory, timed on the rig's
//! clock (`t_s`, from `NETEM_T0_MS`). After the run they are attached to the
//! router's samples of the same node.

use std::path::Path;

use serde::Deserialize;

use super::timeline::{BrowserMetrics, Timeline};

/// A browser line older than this (relative to a router sample) is not
/// attached: the browser had stopped reporting, which must show as a gap.
const STALE_S: f64 = 1.0;

#[derive(Deserialize)]
struct Line {
    t_s: f64,
    #[serde(flatten)]
    metrics: BrowserMetrics,
}

/// Parses one client's file; malformed lines (a browser killed mid-write)
/// are counted, not fatal.
pub fn parse(text: &str) -> (Vec<(f64, BrowserMetrics)>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Line>(l) {
            Ok(line) if line.t_s.is_finite() => out.push((line.t_s, line.metrics)),
            _ => bad += 1,
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    (out, bad)
}

/// Gives every sample of `node` the last browser line at or before it
/// (half an interval of slack), unless that line is stale.
pub fn attach(t: &mut Timeline, node: &str, lines: &[(f64, BrowserMetrics)]) -> usize {
    let slack = t.interval_ms as f64 / 2000.0;
    let Some(series) = t.nodes.iter_mut().find(|n| n.name == node) else {
        return 0;
    };
    let mut attached = 0;
    let mut i = 0;
    for s in &mut series.samples {
        while i < lines.len() && lines[i].0 <= s.t_s + slack {
            i += 1;
        }
        if let Some((at, m)) = i.checked_sub(1).map(|j| &lines[j]) {
            if s.t_s - at <= STALE_S {
                s.browser = m.clone();
                attached += 1;
            }
        }
    }
    attached
}

/// Reads `browser-<node>.jsonl` of every node from `dir` and attaches them;
/// returns (node, lines read, malformed lines) for each file found.
pub fn merge_dir(t: &mut Timeline, dir: &Path) -> Vec<(String, usize, usize)> {
    let names: Vec<String> = t.nodes.iter().map(|n| n.name.clone()).collect();
    let mut found = Vec::new();
    for name in names {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("browser-{name}.jsonl"))) else {
            continue;
        };
        let (lines, bad) = parse(&text);
        attach(t, &name, &lines);
        found.push((name, lines.len(), bad));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::timeline::{NodeSeries, Sample};

    fn timeline(times: &[f64]) -> Timeline {
        Timeline {
            scenario: "b".into(),
            seed: 1,
            interval_ms: 250,
            duration_s: 3.0,
            changes: vec![],
            nodes: vec![NodeSeries {
                name: "bob".into(),
                samples: times
                    .iter()
                    .map(|&t_s| Sample {
                        t_s,
                        up: Default::default(),
                        down: Default::default(),
                        browser: BrowserMetrics::default(),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn attaches_nearest_earlier_line_and_leaves_gaps() {
        let text = r#"{"t_s": 0.26, "frames_decoded": 5, "received_layer": "f", "extra": 1}
not json
{"t_s": 0.49, "frames_decoded": 9, "received_width": null}
"#;
        let (lines, bad) = parse(text);
        assert_eq!((lines.len(), bad), (2, 1));
        let mut t = timeline(&[0.0, 0.25, 0.5, 0.75, 2.0]);
        assert_eq!(attach(&mut t, "bob", &lines), 3);
        let s = &t.nodes[0].samples;
        assert_eq!(s[0].browser, BrowserMetrics::default());
        // 0.26 is within half an interval of 0.25.
        assert_eq!(s[1].browser.frames_decoded, Some(5));
        assert_eq!(s[1].browser.received_layer.as_deref(), Some("f"));
        assert_eq!(s[2].browser.frames_decoded, Some(9));
        assert_eq!(s[3].browser.frames_decoded, Some(9));
        // 1.5 s after the last line: stale, left empty.
        assert_eq!(s[4].browser, BrowserMetrics::default());
        assert_eq!(attach(&mut t, "nobody", &lines), 0);
    }
}
