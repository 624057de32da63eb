//! The timeline as an SVG, written by hand: one panel per client (and one
//! for the server if its link has a schedule) with the bitrate in and out
//! of both directions over time, a dashed vertical line and a label at
//! every schedule change of that node, axes with ticks and units, and a
//! legend; browser values (the server's estimate, received and sent
//! layers, freezes) are drawn by [`super::plot_browser`].

use std::fmt::Write;

use super::plot_browser::{self, BANDS};
use super::timeline::{Sample, Timeline};

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const HEADER: f64 = 80.0;
const PANEL: f64 = 270.0;
/// Inside a panel: title above, tick labels below the plot area.
const PANEL_TOP: f64 = 34.0 + BANDS;
const PANEL_BOTTOM: f64 = 45.0;

struct Line {
    label: &'static str,
    color: &'static str,
    dash: &'static str,
    value: fn(&Sample) -> f64,
}

const LINES: [Line; 4] = [
    Line {
        label: "sent by node (up, in)",
        color: "#1f77b4",
        dash: "",
        value: |s| s.up.kbps_in,
    },
    Line {
        label: "up, out",
        color: "#aec7e8",
        dash: "6 3",
        value: |s| s.up.kbps_out,
    },
    Line {
        label: "towards node (down, in)",
        color: "#ffbb78",
        dash: "6 3",
        value: |s| s.down.kbps_in,
    },
    Line {
        label: "received by node (down, out)",
        color: "#d62728",
        dash: "",
        value: |s| s.down.kbps_out,
    },
];

/// Escapes text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A tick step of 1, 2 or 5 × 10^k giving at most about `max_ticks` ticks.
fn nice_step(range: f64, max_ticks: f64) -> f64 {
    let raw = (range / max_ticks).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn fmt_tick(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// The nodes that get a panel: every client, and the server if it has
/// schedule changes.
fn plotted(t: &Timeline) -> Vec<usize> {
    t.nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.name != "server" || t.changes.iter().any(|c| c.node == n.name))
        .map(|(i, _)| i)
        .collect()
}

pub fn svg(t: &Timeline) -> String {
    let panels = plotted(t);
    let height = HEADER + PANEL * panels.len().max(1) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let x_max = t.duration_s.max(t.end_s()).max(f64::MIN_POSITIVE);
    let x_of = |s: f64| LEFT + s / x_max * plot_w;

    let mut o = String::new();
    let _ = writeln!(o, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="20" font-size="15" font-weight="bold">{} (seed {})</text>"#,
        esc(&t.scenario),
        t.seed
    );
    // Legend.
    let mut lx = LEFT;
    for l in &LINES {
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" y1="40" x2="{}" y2="40" stroke="{}" stroke-width="2" stroke-dasharray="{}"/>"#,
            lx + 24.0,
            l.color,
            l.dash
        );
        let _ = writeln!(o, r#"<text x="{}" y="44">{}</text>"#, lx + 28.0, esc(l.label));
        lx += 28.0 + 6.5 * l.label.len() as f64 + 16.0;
    }
    let _ = writeln!(
        o,
        r##"<line x1="{lx}" y1="34" x2="{lx}" y2="46" stroke="#555" stroke-dasharray="4 3"/><text x="{}" y="44">schedule change</text>"##,
        lx + 6.0
    );
    plot_browser::legend(&mut o, LEFT, 64.0);

    if panels.is_empty() {
        let _ = writeln!(o, r#"<text x="{LEFT}" y="{}">no samples</text>"#, HEADER + 30.0);
    }
    let x_step = nice_step(x_max, 12.0);
    for (k, &i) in panels.iter().enumerate() {
        let node = &t.nodes[i];
        let top = HEADER + PANEL * k as f64 + PANEL_TOP;
        let bottom = HEADER + PANEL * (k + 1) as f64 - PANEL_BOTTOM;
        let y_data_max = node
            .samples
            .iter()
            .flat_map(|s| LINES.iter().map(move |l| (l.value)(s)).chain(plot_browser::estimate(s)))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let y_step = nice_step(y_data_max.max(1.0), 5.0);
        let y_max = (y_data_max / y_step).ceil().max(1.0) * y_step;
        let y_of = |v: f64| bottom - v / y_max * (bottom - top);

        let _ = writeln!(o, r#"<g class="panel" id="panel-{}">"#, esc(&node.name));
        let _ = writeln!(
            o,
            r#"<text x="{LEFT}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
            top - BANDS - 8.0,
            esc(&node.name)
        );
        // Grid, ticks and tick labels.
        let mut y = 0.0;
        while y <= y_max + y_step * 1e-6 {
            let py = y_of(y);
            let _ = writeln!(
                o,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#eee"/><line x1="{}" y1="{py:.1}" x2="{LEFT}" y2="{py:.1}" stroke="black"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 5.0,
                LEFT - 8.0,
                py + 4.0,
                fmt_tick(y)
            );
            y += y_step;
        }
        let mut x = 0.0;
        while x <= x_max + x_step * 1e-6 {
            let px = x_of(x);
            let _ = writeln!(
                o,
                r#"<line x1="{px:.1}" y1="{bottom}" x2="{px:.1}" y2="{}" stroke="black"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"#,
                bottom + 5.0,
                bottom + 17.0,
                fmt_tick(x)
            );
            x += x_step;
        }
        // Axes and their units.
        let _ = writeln!(
            o,
            r#"<path d="M{LEFT},{top} V{bottom} H{}" fill="none" stroke="black"/>"#,
            WIDTH - RIGHT
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text>"#,
            LEFT + plot_w / 2.0,
            bottom + 32.0
        );
        let _ = writeln!(
            o,
            r#"<text transform="translate({}, {}) rotate(-90)" text-anchor="middle">bitrate (kbit/s)</text>"#,
            18.0,
            (top + bottom) / 2.0
        );
        // Series.
        for l in &LINES {
            let points: Vec<String> = node
                .samples
                .iter()
                .map(|s| format!("{:.1},{:.1}", x_of(s.t_s), y_of((l.value)(s).max(0.0))))
                .collect();
            if !points.is_empty() {
                let _ = writeln!(
                    o,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.5" stroke-dasharray="{}" points="{}"/>"#,
                    l.color,
                    l.dash,
                    points.join(" ")
                );
            }
        }
        plot_browser::overlay(&mut o, node, &x_of, &y_of, top);
        // Schedule changes of this node.
        for (n, c) in t.changes.iter().filter(|c| c.node == node.name).enumerate() {
            let px = x_of(c.at_s);
            let _ = writeln!(
                o,
                r##"<line class="change" x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{bottom}" stroke="#555" stroke-dasharray="4 3"/><text class="change-label" x="{:.1}" y="{:.1}" font-size="10" fill="#333">{} s: {}</text>"##,
                px + 3.0,
                top + 10.0 + 12.0 * (n % 3) as f64,
                fmt_tick(c.at_s),
                esc(&c.label)
            );
        }
        let _ = writeln!(o, "</g>");
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::timeline::{BrowserMetrics, Change, DirSample, NodeSeries};

    /// A tiny well-formedness check: balanced tags, quoted attributes,
    /// escaped text, one `svg` root.
    fn well_formed(s: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut roots = 0;
        let mut rest = s;
        let check_text = |text: &str| -> Result<(), String> {
            if text.contains('>') {
                return Err(format!("raw '>' in text {text:?}"));
            }
            for (i, _) in text.match_indices('&') {
                let ent = &text[i..];
                if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| ent.starts_with(e))
                {
                    return Err(format!("bad entity in {text:?}"));
                }
            }
            Ok(())
        };
        while let Some(open) = rest.find('<') {
            check_text(&rest[..open])?;
            let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if tag.starts_with('?') {
                if !tag.ends_with('?') {
                    return Err(format!("bad declaration {tag:?}"));
                }
                continue;
            }
            if tag.matches('"').count() & 1 == 1 || tag.contains('<') {
                return Err(format!("bad attributes in {tag:?}"));
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            let name = tag.split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or("");
            if name.is_empty() {
                return Err(format!("empty tag name in {tag:?}"));
            }
            if stack.is_empty() {
                roots += 1;
                if name != "svg" {
                    return Err(format!("root is {name}"));
                }
            }
            if !tag.ends_with('/') {
                stack.push(name.to_string());
            }
        }
        check_text(rest)?;
        if !stack.is_empty() || roots != 1 {
            return Err(format!("unclosed {stack:?}, {roots} roots"));
        }
        Ok(())
    }

    fn timeline() -> Timeline {
        let series = |name: &str, scale: f64| NodeSeries {
            name: name.into(),
            samples: (0..=28)
                .map(|i| Sample {
                    t_s: i as f64 * 0.25,
                    up: DirSample {
                        kbps_in: 5.0 * scale,
                        kbps_out: 5.0 * scale,
                        ..Default::default()
                    },
                    down: DirSample {
                        kbps_in: 300.0 * scale,
                        kbps_out: if (8..16).contains(&i) { 100.0 } else { 290.0 * scale },
                        ..Default::default()
                    },
                    browser: BrowserMetrics::default(),
                })
                .collect(),
        };
        Timeline {
            scenario: "a <b> & \"c\"".into(),
            seed: 1,
            interval_ms: 250,
            duration_s: 7.0,
            changes: vec![
                Change {
                    at_s: 2.0,
                    node: "mobile".into(),
                    label: "down: rate 100 kbit/s, loss 10%".into(),
                },
                Change {
                    at_s: 4.0,
                    node: "mobile".into(),
                    label: "down: rate 780 kbit/s & <more>".into(),
                },
                Change {
                    at_s: 1.0,
                    node: "home".into(),
                    label: "both: delay 50 ms".into(),
                },
            ],
            nodes: vec![series("server", 2.0), series("mobile", 1.0), series("home", 3.0)],
        }
    }

    #[test]
    fn svg_is_well_formed_with_a_marker_per_change() {
        let t = timeline();
        let s = svg(&t);
        well_formed(&s).unwrap();
        assert_eq!(s.matches(r#"class="change""#).count(), t.changes.len());
        assert_eq!(s.matches(r#"class="change-label""#).count(), t.changes.len());
        // One panel per client; the server has no schedule here.
        assert_eq!(s.matches(r#"class="panel""#).count(), 2);
        assert!(s.contains("time (s)") && s.contains("bitrate (kbit/s)"));
        assert!(s.contains("received by node"));
        assert_eq!(s.matches("<polyline").count(), 2 * LINES.len());
    }

    #[test]
    fn server_with_schedule_gets_a_panel_and_empty_timeline_is_valid() {
        let mut t = timeline();
        t.changes.push(Change {
            at_s: 3.0,
            node: "server".into(),
            label: "up: loss 1%".into(),
        });
        let s = svg(&t);
        well_formed(&s).unwrap();
        assert_eq!(s.matches(r#"class="panel""#).count(), 3);
        assert_eq!(s.matches(r#"class="change""#).count(), t.changes.len());
        t.nodes.clear();
        well_formed(&svg(&t)).unwrap();
    }

    #[test]
    fn browser_layers_estimate_and_freezes_are_drawn() {
        let mut t = timeline();
        for (i, s) in t.nodes[1].samples.iter_mut().enumerate() {
            let low = (8..16).contains(&i);
            s.browser.received_layer = Some(if low { "q" } else { "f" }.into());
            s.browser.received_width = Some(if low { 320 } else { 1280 });
            s.browser.received_height = Some(if low { 180 } else { 720 });
            s.browser.freeze_ms = Some(if i >= 9 { 400 } else { 0 });
            s.browser.server_estimate_kbps = Some(if low { 150.0 } else { 2000.0 });
        }
        let s = svg(&t);
        well_formed(&s).unwrap();
        // One band cell per interval of the client that has browser data.
        assert_eq!(s.matches(r#"class="recv-layer""#).count(), 28);
        assert_eq!(s.matches(r#"class="sent-layer""#).count(), 0);
        // f, then q at 2 s, then f again at 4 s.
        assert_eq!(s.matches(r#"class="layer-label""#).count(), 3);
        assert!(s.contains("q 320×180") && s.contains("f 1280×720"));
        assert_eq!(s.matches(r#"class="estimate""#).count(), 1);
        // The freeze (9th interval) is red.
        assert_eq!(s.matches(r##"class="recv-layer" "##).count(), 28);
        assert!(s.contains(r##"fill="#d62728"/>"##));
    }

    #[test]
    fn checker_rejects_broken_xml() {
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg>a & b</svg>").is_err());
        assert!(well_formed("<svg x=\"1></svg>").is_err());
        assert!(well_formed("<svg/><svg/>").is_err());
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(nice_step(7.0, 12.0), 1.0);
        assert_eq!(nice_step(40.0, 12.0), 5.0);
        assert_eq!(nice_step(870.0, 5.0), 200.0);
        assert_eq!(fmt_tick(0.5), "0.5");
        assert_eq!(fmt_tick(3.0), "3");
    }
}
