//! Expectations measured from the browser clients' samples (see
//! [`super::browser`]). Windows are `from_s`..`to_s` of the entry; samples
//! without the needed browser value are skipped, and a window with none
//! fails ("no browser samples"), so a client that never reported cannot pass.
//!
//! | metric | measured |
//! |---|---|
//! | `max_freeze_ms`, `max_freezes` | rise of `totalFreezesDuration` (ms) / `freezeCount` of the received video over the window |
//! | `min_frames_decoded` | rise of `framesDecoded` over the window |
//! | `min_nacks`, `min_keyframes` | rise of `nackCount` (NACKs the client sent) / `keyFramesDecoded` over the window |
//! | `max_video_loss_pct` | received video packets lost ÷ (lost + received) over the window (after NACK) |
//! | `max_layer_switch_s` | time from `from_s` until the received resolution drops below the one at `from_s` |
//! | `max_loss_pct_after_switch` | as `max_video_loss_pct`, from that drop to `to_s` |
//! | `max_top_layer_s` | time from `from_s` until the received width is back at the largest seen before `from_s` |
//! | `min_received_width` | smallest received width in the window (a gap without video between two samples with video counts as 0) |
//! | `max_audio_concealed_pct` | concealed ÷ received audio samples over the window (and some must arrive) |
//! | `max_sent_layer` | highest simulcast layer (`q` < `h` < `f`) the client sent in the window |
//! | `candidate` | the last selected local candidate of each connection in the window matches: `relay`, `tcp` (also TLS) or `type/transport` such as `relay/tcp` |

use super::timeline::{BrowserMetrics, NodeSeries, Sample};

/// `Ok((passed, measured))`, or `Err(why it could not be measured)`.
pub type Outcome = Result<(bool, String), String>;

const EPS: f64 = 1e-6;

/// None if `key` is not a browser metric.
pub fn check(key: &str, value: Option<&toml::Value>, series: &NodeSeries, from_s: f64, to_s: f64) -> Option<Outcome> {
    let window: Vec<&Sample> = series
        .samples
        .iter()
        .filter(|s| s.t_s >= from_s - EPS && s.t_s <= to_s + EPS)
        .collect();
    let num = value.and_then(|v| match v {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    });
    let text = value.and_then(|v| v.as_str());
    let need_num = || num.ok_or_else(|| "invalid: the threshold must be a number".to_string());
    let need_text = || text.ok_or_else(|| "invalid: the value must be a string".to_string());
    Some(match key {
        "max_freeze_ms" => need_num().and_then(|max| {
            let d = rise(&window, |m| m.freeze_ms)?;
            Ok((d as f64 <= max, format!("{d} ms frozen")))
        }),
        "max_freezes" => need_num().and_then(|max| {
            let d = rise(&window, |m| m.freezes)?;
            Ok((d as f64 <= max, format!("{d} freezes")))
        }),
        "min_frames_decoded" => need_num().and_then(|min| {
            let d = rise(&window, |m| m.frames_decoded)?;
            Ok((d as f64 >= min, format!("{d} frames decoded")))
        }),
        "min_nacks" => need_num().and_then(|min| {
            let d = rise(&window, |m| m.nacks)?;
            Ok((d as f64 >= min, format!("{d} NACKs sent")))
        }),
        "min_keyframes" => need_num().and_then(|min| {
            let d = rise(&window, |m| m.keyframes)?;
            Ok((d as f64 >= min, format!("{d} keyframes decoded")))
        }),
        "max_video_loss_pct" => need_num().and_then(|max| {
            let (pct, text) = video_loss(&window)?;
            Ok((pct <= max, text))
        }),
        // Video at from_s that never drops is measured, and fails.
        "max_layer_switch_s" => need_num().and_then(|max| match layer_drop(series, from_s, to_s)? {
            Ok((at, text)) => {
                let after = at - from_s;
                Ok((after <= max + EPS, format!("{text} after {after:.2} s")))
            }
            Err(none) => Ok((false, none)),
        }),
        "max_loss_pct_after_switch" => need_num().and_then(|max| match layer_drop(series, from_s, to_s)? {
            Ok((at, text)) => {
                let w: Vec<&Sample> = window.iter().copied().filter(|s| s.t_s >= at - EPS).collect();
                let (pct, loss) = video_loss(&w)?;
                Ok((pct <= max, format!("{loss} from {at:.2} s ({text})")))
            }
            Err(none) => Ok((false, none)),
        }),
        "max_top_layer_s" => need_num().and_then(|max| {
            let top = series
                .samples
                .iter()
                .filter(|s| s.t_s < from_s)
                .filter_map(|s| s.browser.received_width)
                .max()
                .ok_or("no received video before from_s")?;
            match window
                .iter()
                .find(|s| s.browser.received_width.is_some_and(|w| w >= top))
            {
                Some(s) => {
                    let after = s.t_s - from_s;
                    Ok((after <= max + EPS, format!("width {top} again after {after:.2} s")))
                }
                None => {
                    let last = window.iter().rev().find_map(|s| s.browser.received_width);
                    Ok((false, format!("never back at width {top} (last {last:?})")))
                }
            }
        }),
        "min_received_width" => need_num().and_then(|min| {
            // Between the window's first and last sample with video: a gap
            // inside counts as 0, the browser's start and stop do not.
            let has = |s: &&&Sample| s.browser.received_width.is_some();
            let first = window
                .iter()
                .position(|s| has(&s))
                .ok_or("no browser samples with video in the window")?;
            let last = window.iter().rposition(|s| has(&s)).unwrap_or(first);
            let w = window[first..=last]
                .iter()
                .map(|s| s.browser.received_width.unwrap_or(0))
                .min()
                .unwrap_or(0);
            Ok((w as f64 >= min, format!("smallest width {w}")))
        }),
        "max_audio_concealed_pct" => need_num().and_then(|max| {
            let samples = rise(&window, |m| m.audio_samples)?;
            let concealed = rise(&window, |m| m.audio_concealed)?;
            if samples == 0 {
                return Ok((false, "no audio samples played".into()));
            }
            let pct = concealed as f64 * 100.0 / samples as f64;
            Ok((pct <= max, format!("{pct:.1}% concealed of {samples} samples")))
        }),
        "max_sent_layer" => need_text().and_then(|max| {
            let max_rank = rank(max).ok_or("invalid: a layer is q, h or f")?;
            let sent: Vec<String> = window.iter().filter_map(|s| s.browser.sent_layer.clone()).collect();
            let top = sent
                .iter()
                .max_by_key(|l| rank(l))
                .ok_or("no browser samples with a sent layer")?;
            Ok((rank(top) <= Some(max_rank), format!("highest layer sent: {top}")))
        }),
        "candidate" => need_text().and_then(|want| {
            let last = window
                .iter()
                .rev()
                .find(|s| s.browser.pub_candidate.is_some() || s.browser.sub_candidate.is_some())
                .ok_or("no browser samples with a selected candidate pair")?;
            let cands: Vec<&str> = [&last.browser.pub_candidate, &last.browser.sub_candidate]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            let ok = cands.iter().all(|c| candidate_matches(c, want));
            Ok((ok, cands.join(", ")))
        }),
        _ => return None,
    })
}

/// Last minus first value of a cumulative counter among the window's samples that have it.
fn rise(window: &[&Sample], f: impl Fn(&BrowserMetrics) -> Option<u64>) -> Result<u64, String> {
    let mut vals = window.iter().filter_map(|s| f(&s.browser));
    let first = vals.next().ok_or("no browser samples in the window")?;
    Ok(vals.last().unwrap_or(first).saturating_sub(first))
}

fn video_loss(window: &[&Sample]) -> Result<(f64, String), String> {
    let lost = rise(window, |m| m.packets_lost)?;
    let got = rise(window, |m| m.packets_received)?;
    let pct = if lost + got == 0 {
        0.0
    } else {
        lost as f64 * 100.0 / (lost + got) as f64
    };
    Ok((pct, format!("{pct:.2}% ({lost} of {} packets)", lost + got)))
}

/// When the received width first falls below the width at `from_s`:
/// `Err` if there was no video at `from_s` (nothing to measure), `Ok(Err)`
/// if there was and it never dropped in the window.
type Drop = Result<(f64, String), String>;

fn layer_drop(series: &NodeSeries, from_s: f64, to_s: f64) -> Result<Drop, String> {
    let before = series
        .samples
        .iter()
        .rev()
        .filter(|s| s.t_s <= from_s + EPS)
        .find_map(|s| s.browser.received_width.map(|w| (w, s.browser.received_layer.clone())))
        .ok_or("no received video at from_s")?;
    let drop = series
        .samples
        .iter()
        .filter(|s| s.t_s > from_s + EPS && s.t_s <= to_s + EPS)
        .find(|s| s.browser.received_width.is_some_and(|w| w < before.0));
    Ok(match drop {
        Some(s) => Ok((
            s.t_s,
            format!(
                "{}→{} ({}→{})",
                before.0,
                s.browser.received_width.unwrap_or(0),
                before.1.as_deref().unwrap_or("?"),
                s.browser.received_layer.as_deref().unwrap_or("?")
            ),
        )),
        None => Err(format!("no switch below width {} in the window", before.0)),
    })
}

fn rank(layer: &str) -> Option<u8> {
    match layer {
        "q" => Some(0),
        "h" => Some(1),
        "f" => Some(2),
        _ => None,
    }
}

/// `relay` matches the type, `tcp` the transport (TLS counts), `a/b` both.
fn candidate_matches(cand: &str, want: &str) -> bool {
    let (ty, transport) = cand.split_once('/').unwrap_or((cand, ""));
    let transport_is = |w: &str| transport == w || (w == "tcp" && transport == "tls");
    match want.split_once('/') {
        Some((t, p)) => ty == t && transport_is(p),
        None => ty == want || transport_is(want),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(f: impl Fn(u64) -> BrowserMetrics) -> NodeSeries {
        NodeSeries {
            name: "bob".into(),
            samples: (0..=40u64)
                .map(|i| Sample {
                    t_s: i as f64 * 0.25,
                    up: Default::default(),
                    down: Default::default(),
                    browser: f(i),
                })
                .collect(),
        }
    }

    fn run(key: &str, v: toml::Value, s: &NodeSeries, from: f64, to: f64) -> Outcome {
        check(key, Some(&v), s, from, to).expect("a browser metric")
    }

    #[test]
    fn layer_switch_recovery_and_loss() {
        // Width 1280 until 3 s, 640 from 3.5 s, 1280 again from 8 s; 1 of
        // 100 packets lost per sample from 3.5 s to 5 s.
        let s = series(|i| {
            let t = i as f64 * 0.25;
            let lost = i.clamp(14, 20) - 14;
            BrowserMetrics {
                received_width: Some(if (3.5..8.0).contains(&t) { 640 } else { 1280 }),
                received_layer: Some(if (3.5..8.0).contains(&t) { "h" } else { "f" }.into()),
                packets_lost: Some(lost),
                packets_received: Some(i * 100 - lost),
                ..Default::default()
            }
        });
        let (ok, text) = run("max_layer_switch_s", 1.0.into(), &s, 3.0, 10.0).unwrap();
        assert!(ok, "{text}");
        assert_eq!(text, "1280→640 (f→h) after 0.50 s");
        assert!(!run("max_layer_switch_s", 0.25.into(), &s, 3.0, 10.0).unwrap().0);
        // On the top layer at 8 s and never lower after: measured, failed.
        let (ok, text) = run("max_layer_switch_s", 2.into(), &s, 8.0, 10.0).unwrap();
        assert!(!ok);
        assert_eq!(text, "no switch below width 1280 in the window");
        let (ok, text) = run("max_top_layer_s", 2.into(), &s, 6.5, 10.0).unwrap();
        assert!(ok && text.contains("after 1.50 s"), "{text}");
        assert!(!run("max_top_layer_s", 1.into(), &s, 6.5, 10.0).unwrap().0);
        assert!(!run("max_top_layer_s", 1.into(), &s, 6.5, 7.5).unwrap().0);
        // 6 of 600 packets between 3.5 and 5 s.
        let (ok, text) = run("max_loss_pct_after_switch", 2.into(), &s, 3.0, 5.0).unwrap();
        assert!(ok && text.starts_with("1.00% (6 of 600"), "{text}");
        assert!(!run("max_video_loss_pct", 0.5.into(), &s, 3.0, 5.0).unwrap().0);
        assert!(!run("min_received_width", 1280.into(), &s, 0.0, 10.0).unwrap().0);
        assert!(run("min_received_width", 1280.into(), &s, 8.0, 10.0).unwrap().0);
        // Before the first and after the last video sample: not a gap; inside: one.
        let mut gap = s.clone();
        gap.samples[0].browser.received_width = None;
        gap.samples[40].browser.received_width = None;
        assert!(run("min_received_width", 1280.into(), &gap, 0.0, 2.0).unwrap().0);
        assert!(run("min_received_width", 1280.into(), &gap, 8.0, 10.0).unwrap().0);
        gap.samples[38].browser.received_width = None;
        assert_eq!(
            run("min_received_width", 1.into(), &gap, 8.0, 10.0).unwrap().1,
            "smallest width 0"
        );
    }

    #[test]
    fn counters_candidates_layers_and_missing_data() {
        let s = series(|i| BrowserMetrics {
            freeze_ms: Some(if i > 20 { 300 } else { 0 }),
            frames_decoded: Some(i * 7),
            audio_samples: Some(i * 480),
            audio_concealed: Some(i * 48),
            sent_layer: Some(if i < 20 { "f" } else { "h" }.into()),
            sub_candidate: Some("relay/tls".into()),
            pub_candidate: (i > 2).then(|| "host/tcp".into()),
            ..Default::default()
        });
        assert!(run("max_freeze_ms", 300.into(), &s, 0.0, 10.0).unwrap().0);
        assert!(!run("max_freeze_ms", 299.into(), &s, 0.0, 10.0).unwrap().0);
        assert!(run("max_freeze_ms", 0.into(), &s, 6.0, 10.0).unwrap().0);
        assert!(run("min_frames_decoded", 280.into(), &s, 0.0, 10.0).unwrap().0);
        assert!(!run("min_frames_decoded", 281.into(), &s, 0.0, 10.0).unwrap().0);
        assert!(run("min_nacks", 1.into(), &s, 0.0, 10.0).is_err());
        let (ok, text) = run("max_audio_concealed_pct", 10.into(), &s, 0.0, 10.0).unwrap();
        assert!(ok && text.starts_with("10.0%"), "{text}");
        assert!(run("max_sent_layer", "h".into(), &s, 5.0, 10.0).unwrap().0);
        assert!(!run("max_sent_layer", "h".into(), &s, 0.0, 10.0).unwrap().0);
        assert!(run("candidate", "tcp".into(), &s, 0.0, 10.0).unwrap().0);
        assert!(!run("candidate", "relay".into(), &s, 0.0, 10.0).unwrap().0);
        assert!(run("candidate", "relay".into(), &s, 0.0, 0.5).unwrap().0);
        assert!(run("candidate", "relay/tcp".into(), &s, 0.0, 0.5).unwrap().0);
        // Nothing reported: fails to measure, never passes.
        let empty = series(|_| BrowserMetrics::default());
        for key in [
            "max_freeze_ms",
            "min_frames_decoded",
            "max_video_loss_pct",
            "max_layer_switch_s",
        ] {
            assert!(run(key, 1.into(), &empty, 0.0, 10.0).is_err(), "{key}");
        }
        assert!(run("candidate", "relay".into(), &empty, 0.0, 10.0).is_err());
        assert!(run("max_freeze_ms", "x".into(), &s, 0.0, 10.0).is_err());
        assert!(check("bogus", None, &s, 0.0, 1.0).is_none());
    }
}
