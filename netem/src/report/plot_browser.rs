//! Browser values in a panel of [`super::plot`]: the server's bandwidth
//! estimate as a line, and above the plot area two bands, one for the
//! simulcast layer the client receives and one for the highest it sends,
//! coloured per layer (red where a freeze of the received video ended:
//! `totalFreezesDuration` only grows then), with a label
//! at every change of the received layer or resolution.

use std::fmt::Write;

use super::timeline::{NodeSeries, Sample};

/// Height of the bands above a panel's plot area.
pub const BANDS: f64 = 28.0;
pub const ESTIMATE_COLOR: &str = "#9467bd";
const FROZEN: &str = "#d62728";

/// (label, colour) of each layer in the legend and the bands.
pub const LAYERS: [(&str, &str); 4] = [
    ("f", "#2ca02c"),
    ("h", "#98df8a"),
    ("q", "#ffbb78"),
    ("no video", "#ddd"),
];

fn layer_color(layer: Option<&str>) -> &'static str {
    match layer {
        Some("f") => LAYERS[0].1,
        Some("h") => LAYERS[1].1,
        Some("q") => LAYERS[2].1,
        _ => LAYERS[3].1,
    }
}

pub fn estimate(s: &Sample) -> Option<f64> {
    s.browser.server_estimate_kbps.filter(|v| v.is_finite())
}

fn any(node: &NodeSeries, f: impl Fn(&Sample) -> bool) -> bool {
    node.samples.iter().any(f)
}

/// Draws the estimate line and the bands (`top` is the plot area's top).
pub fn overlay(o: &mut String, node: &NodeSeries, x_of: &dyn Fn(f64) -> f64, y_of: &dyn Fn(f64) -> f64, top: f64) {
    let points: Vec<String> = node
        .samples
        .iter()
        .filter_map(|s| estimate(s).map(|v| format!("{:.1},{:.1}", x_of(s.t_s), y_of(v.max(0.0)))))
        .collect();
    if !points.is_empty() {
        let _ = writeln!(
            o,
            r#"<polyline class="estimate" fill="none" stroke="{ESTIMATE_COLOR}" stroke-width="1.5" stroke-dasharray="2 2" points="{}"/>"#,
            points.join(" ")
        );
    }
    let receives = any(node, |s| s.browser.received_width.is_some());
    let sends = any(node, |s| s.browser.sent_layer.is_some());
    let (recv_y, sent_y) = (top - BANDS, top - BANDS + 11.0);
    for (show, y, name) in [(receives, recv_y, "received"), (sends, sent_y, "sent")] {
        if show {
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="9">{name}</text>"#,
                x_of(0.0) - 4.0,
                y + 8.0
            );
        }
    }
    let mut last_label: Option<(Option<String>, Option<u32>)> = None;
    // Labels closer than this to the previous one are left out (the tick stays).
    let mut last_text_x = f64::NEG_INFINITY;
    for w in node.samples.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let (x0, x1) = (x_of(a.t_s), x_of(b.t_s));
        let width = (x1 - x0).max(0.5);
        if receives {
            let froze = b.browser.freeze_ms.unwrap_or(0) > a.browser.freeze_ms.unwrap_or(0);
            let color = if froze {
                FROZEN
            } else {
                layer_color(
                    b.browser
                        .received_layer
                        .as_deref()
                        .filter(|_| b.browser.received_width.is_some()),
                )
            };
            let _ = writeln!(
                o,
                r#"<rect class="recv-layer" x="{x0:.1}" y="{recv_y:.1}" width="{width:.1}" height="9" fill="{color}"/>"#
            );
            let key = (b.browser.received_layer.clone(), b.browser.received_width);
            if b.browser.received_width.is_some() && last_label.as_ref() != Some(&key) {
                let text = match (&key.0, b.browser.received_width, b.browser.received_height) {
                    (l, Some(w), Some(h)) => format!("{} {w}×{h}", l.as_deref().unwrap_or("?")),
                    (l, ..) => l.clone().unwrap_or_default(),
                };
                let _ = writeln!(
                    o,
                    r##"<line class="layer-tick" x1="{x1:.1}" y1="{recv_y:.1}" x2="{x1:.1}" y2="{:.1}" stroke="#2ca02c" stroke-width="0.8"/>"##,
                    top + 4.0
                );
                if x1 - last_text_x >= 70.0 {
                    let _ = writeln!(
                        o,
                        r##"<text class="layer-label" x="{:.1}" y="{:.1}" font-size="9" fill="#1a661a">{text}</text>"##,
                        x1 + 2.0,
                        top + 46.0
                    );
                    last_text_x = x1;
                }
                last_label = Some(key);
            }
        }
        if sends {
            let color = layer_color(b.browser.sent_layer.as_deref());
            let _ = writeln!(
                o,
                r#"<rect class="sent-layer" x="{x0:.1}" y="{sent_y:.1}" width="{width:.1}" height="9" fill="{color}"/>"#
            );
        }
    }
}

/// Legend entries after the router's lines, starting at `x`; returns the next x.
pub fn legend(o: &mut String, mut x: f64, y: f64) -> f64 {
    let _ = writeln!(
        o,
        r#"<line x1="{x}" y1="{}" x2="{}" y2="{}" stroke="{ESTIMATE_COLOR}" stroke-width="2" stroke-dasharray="2 2"/><text x="{}" y="{}">server's estimate</text>"#,
        y - 4.0,
        x + 24.0,
        y - 4.0,
        x + 28.0,
        y
    );
    x += 28.0 + 6.5 * 17.0 + 16.0;
    let _ = write!(o, r#"<text x="{x}" y="{y}">layer:</text>"#);
    x += 40.0;
    for (label, color) in LAYERS.iter().copied().chain([("frozen", FROZEN)]) {
        let _ = writeln!(
            o,
            r#"<rect x="{x}" y="{}" width="14" height="9" fill="{color}"/><text x="{}" y="{y}">{label}</text>"#,
            y - 8.0,
            x + 17.0
        );
        x += 17.0 + 6.5 * label.len() as f64 + 12.0;
    }
    x
}
