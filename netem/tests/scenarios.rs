//! The seven browser scenarios of netem/scenarios/, short versions: each runs
//! `netem run --short` (rtc-server in the server namespace, one headless
//! Chromium per client namespace, see netem/clients/browser.mjs) and then
//! checks the run's own timeline: every client's browser reported, and
//! every expectation of the scenario was measured and passed (or failed
//! on its measurement with a `known_issue` named in the scenario file).
//!
//! Needs root, iproute2, node, Chromium, `npm ci` in tests/browser and a
//! built `target/debug/rtc-server` (`cargo build -p signalling --bin
//! rtc-server`; tests/run builds every binary). Skipped loudly without them,
//! failed under CI=true. One scenario at a time: three Chromiums encoding
//! and decoding 720p simulcast already fill two cores.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use netem::report::expect::{self, Outcome};
use netem::report::timeline::Timeline;
use netem::scenario::Scenario;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn rtc_server() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from);
    let target = if target.is_relative() {
        workspace().join(target)
    } else {
        target
    };
    target.join("debug/rtc-server")
}

/// Everything the browser scenarios need, or a skip / CI failure.
fn prerequisites(test: &str) -> bool {
    if !common::rig_available(test) {
        return false;
    }
    let mut missing = Vec::new();
    for tool in ["node", "chromium"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        let overridden = tool == "chromium" && std::env::var_os("CHROMIUM").is_some();
        if !(found || overridden) {
            missing.push(tool.to_string());
        }
    }
    let pw = workspace().join("tests/browser/node_modules/playwright-core");
    if !pw.is_dir() {
        missing.push(format!("{} (npm ci in tests/browser)", pw.display()));
    }
    if !rtc_server().is_file() {
        missing.push(format!(
            "{} (cargo build -p signalling --bin rtc-server)",
            rtc_server().display()
        ));
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: missing {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! SKIPPED {msg} !!!!!!!!\n");
    false
}

/// Runs the short version of `netem/scenarios/<name>.toml` and checks it.
fn scenario(name: &str) {
    if !prerequisites(name) {
        return;
    }
    let _serial = common::serial();
    let file = workspace().join("netem/scenarios").join(format!("{name}.toml"));
    let out = std::env::temp_dir().join(format!("netem-scenario-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_netem"))
        .arg("run")
        .arg(&file)
        .arg("--short")
        .arg("--out")
        .arg(&out)
        .env("RTC_SERVER", rtc_server())
        // The server's per-allocation info lines would drown the summary.
        .env(
            "RUST_LOG",
            std::env::var("NETEM_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("HOME", std::env::temp_dir())
        .status()
        .expect("start netem");
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap_or_default();
    let text = std::fs::read_to_string(out.join("timeline.json"))
        .unwrap_or_else(|e| panic!("{name}: no timeline.json ({e}); netem exited with {status}"));
    let timeline = Timeline::from_json(&text).expect("timeline.json parses");

    // The run's own verdict, re-derived from its timeline so that a check
    // that was never measured cannot pass.
    let s = Scenario::load(file.to_str().expect("utf-8 path"))
        .and_then(Scenario::short)
        .expect("scenario loads");
    for c in &s.clients {
        let reported = timeline.node(&c.name).map_or(0, |n| {
            n.samples
                .iter()
                .filter(|s| s.browser.frames_decoded.is_some() || s.browser.sent_layer.is_some())
                .count()
        });
        assert!(
            reported > 8,
            "{name}: browser client {} reported {reported} samples\n{summary}",
            c.name
        );
    }
    let checks = expect::evaluate(&s.expect, &timeline);
    assert!(!checks.is_empty(), "{name}: no expectations");
    // A `known_issue` entry may fail on its measurement (it is reported,
    // see summary.md); a missing measurement fails regardless.
    for c in &checks {
        assert!(
            matches!(c.outcome, Outcome::Passed | Outcome::KnownIssue(_)),
            "{name}: {} measured {} ({}); artifacts in {}\n{summary}",
            c.expectation,
            c.measured,
            c.outcome,
            out.display()
        );
    }
    assert!(status.success(), "{name}: netem exited with {status}\n{summary}");
    eprintln!("{name}:\n{summary}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn relay_under_loss() {
    scenario("relay-loss");
}

#[test]
fn downlink_drop() {
    scenario("downlink-drop");
}

#[test]
fn downlink_outage() {
    scenario("downlink-outage");
}

#[test]
fn uplink_limit() {
    scenario("uplink-limit");
}

#[test]
fn burst_loss() {
    scenario("burst-loss");
}

#[test]
fn udp_blocked() {
    scenario("udp-blocked");
}

#[test]
fn high_latency() {
    scenario("high-latency");
}
