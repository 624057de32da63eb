//! `[[expect]]` entries of a scenario, checked against the timeline.
//!
//! An entry names a client, an optional window and one or more metrics
//! with their thresholds:
//!
//! ```toml
//! [[expect]]
//! client = "mobile"
//! from_s = 2            # default: start of the run
//! to_s = 4              # default: end of the run
//! max_received_kbps = 120
//! max_loss_pct = 25
//! ```
//!
//! (`kind = "max_loss_pct"` with `value = 25` is the same thing.) Metrics
//! the router can measure:
//!
//! | metric | measured over the window |
//! |---|---|
//! | `min_received_kbps`, `max_received_kbps` | bitrate delivered to the client (down link, out) |
//! | `min_sent_kbps`, `max_sent_kbps` | bitrate the client sent (up link, in) |
//! | `max_loss_pct` | packets the rig dropped towards the client (loss, full queue, blocked) ÷ packets offered |
//! | `max_up_loss_pct` | the same for the client's uplink |
//!
//! Browser metrics (freezes, layers, frames decoded, audio, candidates) are
//! measured from the browser clients' samples, see [`super::browser_expect`].
//! An unknown metric, or a browser metric of a client that never reported,
//! fails; nothing is passed without a measurement.

use std::fmt;

use super::browser_expect;
use super::timeline::{DirSample, NodeSeries, Timeline};

/// Keys of an entry that are not metrics.
const RESERVED: [&str; 7] = [
    "client",
    "from_s",
    "to_s",
    "name",
    "description",
    "value",
    "known_issue",
];

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    Failed,
    /// Measured and failed, but the entry names a known issue
    /// (`known_issue = "..."`): shown as a failure, does not fail the run.
    /// Only a real measurement can be a known issue; missing data still fails.
    KnownIssue(String),
    /// The entry names no metric.
    NotEvaluated(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Passed => f.write_str("passed"),
            Outcome::Failed => f.write_str("FAILED"),
            Outcome::KnownIssue(why) => write!(f, "FAILED, known issue: {why}"),
            Outcome::NotEvaluated(why) => write!(f, "not evaluated ({why})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub expectation: String,
    pub measured: String,
    pub outcome: Outcome,
}

#[derive(Clone, Copy)]
enum Metric {
    ReceivedKbps,
    SentKbps,
    DownLossPct,
    UpLossPct,
}

#[derive(Clone, Copy)]
enum Bound {
    Min,
    Max,
}

fn metric(key: &str) -> Option<(Metric, Bound)> {
    Some(match key {
        "min_received_kbps" => (Metric::ReceivedKbps, Bound::Min),
        "max_received_kbps" => (Metric::ReceivedKbps, Bound::Max),
        "min_sent_kbps" => (Metric::SentKbps, Bound::Min),
        "max_sent_kbps" => (Metric::SentKbps, Bound::Max),
        "max_loss_pct" => (Metric::DownLossPct, Bound::Max),
        "max_up_loss_pct" => (Metric::UpLossPct, Bound::Max),
        _ => return None,
    })
}

fn number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Evaluates every entry; one [`Check`] per metric of each entry.
pub fn evaluate(entries: &[toml::Table], t: &Timeline) -> Vec<Check> {
    let mut checks = Vec::new();
    for (n, entry) in entries.iter().enumerate() {
        let client = entry.get("client").and_then(|v| v.as_str());
        let from_s = entry.get("from_s").and_then(number);
        let to_s = entry.get("to_s").and_then(number);
        let window = match (from_s, to_s) {
            (None, None) => String::new(),
            (f, t) => format!(
                " ({}–{} s)",
                fmt_num(f.unwrap_or(0.0)),
                t.map_or("end".to_string(), fmt_num)
            ),
        };
        let who = client.map_or(String::new(), |c| format!("{c}: "));
        let known = entry.get("known_issue").and_then(|v| v.as_str());
        let verdict = |ok: bool| match (ok, known) {
            (true, _) => Outcome::Passed,
            (false, Some(why)) => Outcome::KnownIssue(why.to_string()),
            (false, None) => Outcome::Failed,
        };
        let mut metrics: Vec<(String, Option<&toml::Value>)> = Vec::new();
        if let Some(kind) = entry.get("kind") {
            let kind = kind.as_str().map_or_else(|| kind.to_string(), str::to_string);
            metrics.push((kind, entry.get("value")));
        } else {
            for (k, v) in entry {
                if !RESERVED.contains(&k.as_str()) {
                    metrics.push((k.clone(), Some(v)));
                }
            }
            // Key order, whatever the table's map type.
            metrics.sort_by(|a, b| a.0.cmp(&b.0));
        }
        if metrics.is_empty() {
            checks.push(Check {
                expectation: format!("{who}expect #{}{window}", n + 1),
                measured: "—".into(),
                outcome: Outcome::NotEvaluated("no metric given".into()),
            });
        }
        for (key, value) in metrics {
            let shown = value.map_or(String::new(), |v| match number(v) {
                Some(x) => format!(" {}", fmt_num(x)),
                None => format!(" = {v}"),
            });
            let mut check = Check {
                expectation: format!("{who}{key}{shown}{window}"),
                measured: "—".into(),
                outcome: Outcome::Failed,
            };
            let series = client.and_then(|c| t.node(c));
            let Some((metric, bound)) = metric(&key) else {
                let (from, to) = (from_s.unwrap_or(0.0), to_s.unwrap_or(f64::INFINITY));
                let measured = match (client, series) {
                    (None, _) => Some(Err("invalid: no `client` given".to_string())),
                    (Some(c), None) => Some(Err(format!("invalid: no node {c:?} in the run"))),
                    (_, Some(series)) => browser_expect::check(&key, value, series, from, to),
                };
                match measured {
                    None => check.measured = format!("invalid: unknown metric {key:?}"),
                    Some(Err(why)) => check.measured = why,
                    Some(Ok((ok, text))) => {
                        check.measured = text;
                        check.outcome = verdict(ok);
                    }
                }
                checks.push(check);
                continue;
            };
            let threshold = value.and_then(number);
            match (threshold, client, series) {
                (None, ..) => check.measured = "invalid: the threshold must be a number".into(),
                (_, None, _) => check.measured = "invalid: no `client` given".into(),
                (_, Some(c), None) => check.measured = format!("invalid: no node {c:?} in the run"),
                (Some(threshold), Some(_), Some(series)) => {
                    match measure(series, metric, from_s.unwrap_or(0.0), to_s.unwrap_or(f64::INFINITY)) {
                        None => check.measured = "no samples in the window".into(),
                        Some((value, text)) => {
                            let ok = match bound {
                                Bound::Min => value >= threshold,
                                Bound::Max => value <= threshold,
                            };
                            check.measured = text;
                            check.outcome = verdict(ok);
                        }
                    }
                }
            }
            checks.push(check);
        }
    }
    checks
}

/// The value of `metric` between the samples nearest to the window's ends
/// (the last sample at or before each), and how to show it.
fn measure(series: &NodeSeries, metric: Metric, from_s: f64, to_s: f64) -> Option<(f64, String)> {
    const EPS: f64 = 1e-6;
    let samples = &series.samples;
    let start = samples
        .iter()
        .rev()
        .find(|s| s.t_s <= from_s + EPS)
        .or(samples.first())?;
    let end = samples.iter().rev().find(|s| s.t_s <= to_s + EPS)?;
    let dt = end.t_s - start.t_s;
    if dt <= EPS {
        return None;
    }
    let kbps = |b: u64, a: u64| b.saturating_sub(a) as f64 * 8.0 / dt / 1000.0;
    let loss = |b: &DirSample, a: &DirSample| {
        let offered = b.packets_in.saturating_sub(a.packets_in);
        let dropped = b.dropped().saturating_sub(a.dropped());
        let pct = if offered == 0 {
            0.0
        } else {
            dropped as f64 * 100.0 / offered as f64
        };
        (pct, format!("{pct:.2}% ({dropped} of {offered} packets)"))
    };
    Some(match metric {
        Metric::ReceivedKbps => {
            let v = kbps(end.down.bytes_out, start.down.bytes_out);
            (v, format!("{v:.1} kbit/s"))
        }
        Metric::SentKbps => {
            let v = kbps(end.up.bytes_in, start.up.bytes_in);
            (v, format!("{v:.1} kbit/s"))
        }
        Metric::DownLossPct => loss(&end.down, &start.down),
        Metric::UpLossPct => loss(&end.up, &start.up),
    })
}

pub fn any_failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.outcome == Outcome::Failed)
}

/// The checks as a Markdown table, with a count line.
pub fn summary_markdown(scenario: &str, checks: &[Check]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = format!("# {}\n\n", cell(scenario));
    if checks.is_empty() {
        out.push_str("No expectations in the scenario.\n");
        return out;
    }
    out.push_str("| expectation | measured | result |\n|---|---|---|\n");
    for c in checks {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            cell(&c.expectation),
            cell(&c.measured),
            cell(&c.outcome.to_string())
        ));
    }
    let passed = checks.iter().filter(|c| c.outcome == Outcome::Passed).count();
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Failed).count();
    let known = checks
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::KnownIssue(_)))
        .count();
    out.push_str(&format!(
        "\n{passed} passed, {failed} failed, {known} failed with a known issue, {} not evaluated\n",
        checks.len() - passed - failed - known
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::timeline::{BrowserMetrics, Sample};

    /// "mobile" receives 1,250 bytes per 250 ms (40 kbit/s) and sends 500
    /// (16 kbit/s); of 10 packets offered per interval towards it, 1 is
    /// dropped from t = 2 s on.
    fn timeline() -> Timeline {
        let samples = (0..=28u64)
            .map(|i| {
                let lost = i.saturating_sub(8);
                Sample {
                    t_s: i as f64 * 0.25,
                    up: DirSample {
                        packets_in: i * 5,
                        bytes_in: i * 500,
                        ..Default::default()
                    },
                    down: DirSample {
                        packets_in: i * 10,
                        bytes_out: i * 1250,
                        dropped_loss: lost,
                        ..Default::default()
                    },
                    browser: BrowserMetrics::default(),
                }
            })
            .collect();
        Timeline {
            scenario: "t".into(),
            seed: 1,
            interval_ms: 250,
            duration_s: 7.0,
            changes: Vec::new(),
            nodes: vec![NodeSeries {
                name: "mobile".into(),
                samples,
            }],
        }
    }

    fn entries(text: &str) -> Vec<toml::Table> {
        #[derive(serde::Deserialize)]
        struct F {
            expect: Vec<toml::Table>,
        }
        toml::from_str::<F>(text).unwrap().expect
    }

    #[test]
    fn router_metrics_pass_and_fail() {
        let e = entries(
            r#"
            [[expect]]
            client = "mobile"
            min_received_kbps = 39
            max_received_kbps = 41
            min_sent_kbps = 16
            [[expect]]
            client = "mobile"
            to_s = 2
            max_loss_pct = 0
            [[expect]]
            client = "mobile"
            from_s = 2
            to_s = 4
            kind = "max_loss_pct"
            value = 5
            [[expect]]
            client = "mobile"
            max_up_loss_pct = 0.0
            min_received_kbps = 50
        "#,
        );
        let c = evaluate(&e, &timeline());
        let outcomes: Vec<_> = c.iter().map(|c| (c.expectation.as_str(), c.outcome.clone())).collect();
        assert_eq!(
            outcomes,
            vec![
                ("mobile: max_received_kbps 41", Outcome::Passed),
                ("mobile: min_received_kbps 39", Outcome::Passed),
                ("mobile: min_sent_kbps 16", Outcome::Passed),
                ("mobile: max_loss_pct 0 (0–2 s)", Outcome::Passed),
                ("mobile: max_loss_pct 5 (2–4 s)", Outcome::Failed),
                ("mobile: max_up_loss_pct 0", Outcome::Passed),
                ("mobile: min_received_kbps 50", Outcome::Failed),
            ]
        );
        assert_eq!(c[1].measured, "40.0 kbit/s");
        assert_eq!(c[4].measured, "10.00% (8 of 80 packets)");
        assert!(any_failed(&c));
    }

    #[test]
    fn browser_and_broken_expectations_never_pass() {
        let e = entries(
            r#"
            [[expect]]
            client = "mobile"
            max_freezes = 0
            [[expect]]
            kind = "later"
            [[expect]]
            client = "mobile"
            sooner = 1
            [[expect]]
            client = "nobody"
            min_received_kbps = 1
            [[expect]]
            client = "mobile"
            min_received_kbps = "lots"
            [[expect]]
            client = "mobile"
            from_s = 30
            min_received_kbps = 1
            [[expect]]
            client = "mobile"
        "#,
        );
        let c = evaluate(&e, &timeline());
        // No browser reported: measured as missing, failed.
        assert_eq!(c[0].outcome, Outcome::Failed);
        assert_eq!(c[0].measured, "no browser samples in the window");
        assert_eq!(c[1].expectation, "later");
        assert_eq!(c[1].measured, "invalid: no `client` given");
        assert_eq!(c[2].measured, "invalid: unknown metric \"sooner\"");
        for check in &c[..6] {
            assert_eq!(check.outcome, Outcome::Failed, "{check:?}");
        }
        assert_eq!(c[5].measured, "no samples in the window");
        assert_eq!(c[6].outcome, Outcome::NotEvaluated("no metric given".into()));
        let md = summary_markdown("t", &c);
        assert!(md.contains("| expectation | measured | result |"));
        assert!(md.contains("0 passed, 6 failed, 0 failed with a known issue, 1 not evaluated"));
        assert!(!any_failed(&c[6..]));
    }

    #[test]
    fn browser_metrics_are_evaluated() {
        let mut t = timeline();
        for (i, s) in t.nodes[0].samples.iter_mut().enumerate() {
            s.browser.frames_decoded = Some(i as u64 * 10);
        }
        let e = entries(
            r#"
            [[expect]]
            client = "mobile"
            from_s = 1
            min_frames_decoded = 40
            [[expect]]
            client = "mobile"
            from_s = 6
            min_frames_decoded = 41
            [[expect]]
            client = "mobile"
            from_s = 6
            known_issue = "slow ramp"
            min_frames_decoded = 50
            max_freeze_ms = 0
        "#,
        );
        let c = evaluate(&e, &t);
        assert_eq!(c[0].outcome, Outcome::Passed, "{:?}", c[0]);
        assert_eq!(c[0].measured, "240 frames decoded");
        assert_eq!(c[1].outcome, Outcome::Failed);
        // Missing data is a failure even with a known issue named.
        assert_eq!(c[2].outcome, Outcome::Failed);
        assert_eq!(c[3].outcome, Outcome::KnownIssue("slow ramp".into()));
        assert!(!any_failed(&c[3..]));
        assert!(summary_markdown("t", &c).contains("FAILED, known issue: slow ramp"));
    }
}
