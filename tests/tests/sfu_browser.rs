//! Headless Chromium against the all-in-one `rtc-server` (signalling, SFU
//! and embedded TURN relay): the demo page and the browser SDK in real
//! calls, every assertion on `getStats()`.
//!
//! Each test creates a network namespace with only `lo`, starts rtc-server
//! (development mode, so the demo page fetches its own tokens) and one
//! Chromium inside it, and drives the browser with one of the
//! tests/browser/sfu_*.mjs scripts (playwright-core, the system Chromium).
//! The script polls its condition with a deadline and prints one JSON line;
//! the assertions here read that line. The namespace, the server and the
//! browser are removed on drop, on panic too.
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use e2e::{
    artifacts_dir, debug_bin, require_chromium_stack, require_node_module, require_tool, run_with_timeout,
    self_signed_cert, unix_now, workspace_root, NetNs,
};
use serde_json::{json, Value};
use signalling::auth::{Grants, TokenRequest};

/// Ports inside the test's own namespace: nothing else listens there.
const HTTP_PORT: u16 = 8080;
const MEDIA_PORT: u16 = 7882;
const TURN_PORT: u16 = 3478;
const TURN_TLS_PORT: u16 = 5349;

/// Chromium, node, ip and playwright-core, or a skip (outside CI) / failure (in CI).
fn prerequisites() -> bool {
    require_chromium_stack()
}

/// Also Firefox (Debian's firefox-esr) and puppeteer-core, which drives it.
fn firefox_prerequisites() -> bool {
    prerequisites() && require_tool("firefox-esr") && require_node_module("puppeteer-core")
}

/// rtc-server in development mode inside its own namespace; both go on drop.
struct Server {
    child: Option<Child>,
    log: PathBuf,
    api_key: String,
    api_secret: String,
    // Dropped after the server: kills whatever still runs inside, then deletes it.
    ns: NetNs,
    // Released once the namespace is gone.
    _serial: MutexGuard<'static, ()>,
}

/// One browser call at a time: Chromium encoding 720p simulcast is heavy,
/// and CI runs this on two cores. Poison-tolerant, so one failure does not
/// fail the others.
static SERIAL: Mutex<()> = Mutex::new(());

impl Server {
    fn start(tag: &str) -> Server {
        Server::start_with(tag, &[])
    }

    /// `start` with more command-line flags for rtc-server.
    fn start_with(tag: &str, extra: &[&str]) -> Server {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let ns = NetNs::create();
        let log = artifacts_dir().join(format!("rtc-server-{tag}-{}.log", ns.name));
        let out = File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(debug_bin("rtc-server", "signalling"))
            .args([
                "--http-listen",
                &format!("127.0.0.1:{HTTP_PORT}"),
                "--media-port",
                &MEDIA_PORT.to_string(),
                "--turn-listen",
                &format!("127.0.0.1:{TURN_PORT}"),
                "--turn-relay-ip",
                "127.0.0.1",
                // The peers of the relay test are on 127.0.0.1 too.
                "--turn-allow-loopback-peers",
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start rtc-server");
        let mut server = Server {
            child: Some(child),
            log,
            api_key: String::new(),
            api_secret: String::new(),
            _serial: serial,
            ns,
        };
        // Ready once it has printed the demo URL (after every listener is up).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&server.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("development mode: API key ")) {
                // "development mode: API key K, API secret S (this run only)"
                let rest = line.trim_start_matches("development mode: API key ");
                let (key, rest) = rest.split_once(", API secret ").expect("dev key line");
                server.api_key = key.to_string();
                server.api_secret = rest.split_whitespace().next().unwrap().to_string();
            }
            if text.lines().any(|l| l.starts_with("demo: http")) && !server.api_secret.is_empty() {
                return server;
            }
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("rtc-server exited with {status}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "rtc-server did not come up within 20 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{HTTP_PORT}")
    }

    /// A token signed with the run's development key; `grants` tweaks the
    /// default full participant (`room_join` for `room`).
    fn token(&self, room: &str, identity: Option<&str>, grants: impl FnOnce(&mut Grants)) -> String {
        let mut g = Grants {
            room: Some(room.to_string()),
            room_join: identity.is_some(),
            ..Grants::default()
        };
        grants(&mut g);
        let req = TokenRequest {
            identity: identity.unwrap_or_default().to_string(),
            ttl: Duration::from_secs(600),
            grants: g,
            ..TokenRequest::default()
        };
        signalling::auth::mint(&self.api_key, &self.api_secret, &req, unix_now()).unwrap()
    }

    /// Runs tests/browser/`script` inside the namespace with `cfg` (plus
    /// `base`) and returns its JSON line; a script error fails the test.
    fn run(&mut self, script: &str, mut cfg: Value) -> Value {
        cfg["base"] = json!(self.base());
        let path = workspace_root().join("tests/browser").join(script);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name, "node"])
            .arg(&path)
            .arg(cfg.to_string())
            .env("HOME", std::env::temp_dir());
        let started = Instant::now();
        let out = run_with_timeout(cmd, Duration::from_secs(120));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{script} took {:?}", started.elapsed());
        assert!(
            out.status.success(),
            "{script} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("{script} printed no JSON:\n{stdout}\n{stderr}"));
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(e) = v.get("error") {
            panic!(
                "{script}: {}\n--- page console ---\n{}",
                e.as_str().unwrap_or_default(),
                v["logs"]
                    .as_array()
                    .map(|l| l.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            );
        }
        assert!(self.is_running(), "rtc-server died during {script}");
        eprintln!("{script} result: {v:#}");
        v
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- last lines of {} ---\n{}", self.log.display(), self.log_tail(60));
        }
        // `ns` drops next: it kills anything left inside (Chromium) and deletes itself.
    }
}

fn u64_at(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr).and_then(Value::as_u64).unwrap_or(0)
}

/// Test 1: two peer connections, relay-only, with ICE servers from
/// `POST /v1/turn/credentials`: the selected pairs are relay pairs on the
/// embedded relay and both sides decode rising frame counts.
#[test]
fn relay_only_call_through_embedded_turn() {
    if !prerequisites() {
        return;
    }
    let mut server = Server::start("relay");
    let token = server.token("relay", Some("relay-user"), |_| {});
    let v = server.run("sfu_relay.mjs", json!({ "token": token, "timeoutMs": 30000 }));
    let urls: Vec<String> = v["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["urls"].as_array().unwrap().iter())
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    assert!(
        urls.contains(&format!("turn:127.0.0.1:{TURN_PORT}?transport=udp")),
        "the embedded relay is not among the ICE servers: {v:#}"
    );
    for pc in ["pc1", "pc2"] {
        let samples: Vec<u64> = v["samples"][pc]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert!(
            samples.last().copied().unwrap_or(0) >= 30 && samples.windows(2).any(|w| w[1] > w[0]),
            "{pc}: framesDecoded not rising past 30: {samples:?}\n{v:#}"
        );
        let pair = &v["pairs"][pc];
        assert!(pair.is_object(), "{pc} has no selected candidate pair: {v:#}");
        for end in ["local", "remote"] {
            assert_eq!(pair[end]["type"], "relay", "{pc} {end} candidate is not relayed: {v:#}");
            assert_eq!(pair[end]["address"], "127.0.0.1", "{pc} {end} relayed address: {v:#}");
        }
        // Chromium allocates over UDP and TCP (both URLs are offered) and may select either.
        let proto = pair["local"]["relayProtocol"].as_str().unwrap_or_default();
        assert!(proto == "udp" || proto == "tcp", "{pc} relay protocol: {v:#}");
        assert_eq!(
            pair["local"]["url"],
            format!("turn:127.0.0.1:{TURN_PORT}?transport={proto}"),
            "{pc} allocated on another server: {v:#}"
        );
    }
    assert_eq!(v["connectionState"]["pc1"], "connected", "{v:#}");
    assert_eq!(v["connectionState"]["pc2"], "connected", "{v:#}");
}

/// A client whose firewall lets only TURN out reaches the SFU through the
/// embedded relay: ann publishes over TURN/TLS only, ben subscribes over
/// TURN/TCP only, both relay-only. Ben decodes ann's camera, and every
/// selected pair is a relay candidate allocated over that protocol.
#[test]
fn sfu_reached_through_turn_over_tls_and_tcp_only() {
    if !prerequisites() {
        return;
    }
    let dir = artifacts_dir().join(format!("turn-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed_cert(&dir);
    let tls_listen = format!("127.0.0.1:{TURN_TLS_PORT}");
    let mut server = Server::start_with(
        "turn-tls",
        &[
            "--turn-tls-listen",
            &tls_listen,
            "--turn-tls-cert",
            cert.to_str().unwrap(),
            "--turn-tls-key",
            key.to_str().unwrap(),
        ],
    );
    let v = server.run(
        "sfu_turn.mjs",
        // Chromium checks a TURN server's certificate (without this flag the
        // TLS allocation fails and the test with it); ours is self-signed.
        json!({ "room": "turn-only", "timeoutMs": 40000, "chromiumArgs": ["--ignore-certificate-errors"] }),
    );
    assert!(
        u64_at(&v, "/after/framesDecoded") >= 30,
        "ben does not decode ann's camera: {v:#}"
    );
    for (page, want_proto, want_url) in [
        ("ann", "tls", format!("turns:127.0.0.1:{TURN_TLS_PORT}?transport=tcp")),
        ("ben", "tcp", format!("turn:127.0.0.1:{TURN_PORT}?transport=tcp")),
    ] {
        // ann has only a publisher connection (she subscribes to nobody's
        // media, but the SDK may still open one); ben subscribes.
        let pcs: &[&str] = if page == "ann" { &["pub"] } else { &["sub"] };
        for pc in pcs {
            let pair = &v["pairs"][page][pc];
            assert!(pair.is_object(), "{page}/{pc} has no selected pair: {v:#}");
            assert_eq!(pair["local"]["type"], "relay", "{page}/{pc} not relayed: {v:#}");
            assert_eq!(
                pair["local"]["relayProtocol"], want_proto,
                "{page}/{pc} relay protocol: {v:#}"
            );
            assert_eq!(pair["local"]["url"], want_url.as_str(), "{page}/{pc} relay URL: {v:#}");
        }
        let urls = v["pairs"][page]["urls"].to_string();
        assert!(
            !urls.contains("transport=udp"),
            "{page} was given a UDP TURN URL: {v:#}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Test 2: three participants in one room through the SFU: each page
/// decodes the other two's video and receives their audio.
#[test]
fn three_participants_decode_each_other() {
    if !prerequisites() {
        return;
    }
    let mut server = Server::start("three");
    let v = server.run("sfu_three.mjs", json!({ "room": "three", "timeoutMs": 40000 }));
    let names = ["ann", "ben", "cat"];
    for (i, me) in names.iter().enumerate() {
        assert!(v["errors"][i].is_null(), "{me}'s page shows an error: {v:#}");
        for other in names.iter().filter(|n| *n != me) {
            let before = |k: &str| u64_at(&v, &format!("/before/{i}/{other}~1{k}"));
            let after = |k: &str| u64_at(&v, &format!("/after/{i}/{other}~1{k}"));
            assert!(
                after("camera/framesDecoded") >= 10 && after("camera/framesDecoded") > before("camera/framesDecoded"),
                "{me} does not decode {other}'s video: {v:#}"
            );
            assert!(
                after("microphone/totalSamplesReceived") > before("microphone/totalSamplesReceived"),
                "{me} does not receive {other}'s audio: {v:#}"
            );
            // Each m-line is named by msid `<participant sid> <track sid>`.
            for src in ["camera", "microphone"] {
                let e = &v["after"][i][format!("{other}/{src}")];
                let want = format!(
                    "{} {}",
                    e["participantSid"].as_str().unwrap(),
                    e["sid"].as_str().unwrap()
                );
                assert_eq!(
                    e["msid"].as_str(),
                    Some(want.as_str()),
                    "{me}: msid of {other}'s {src}: {v:#}"
                );
            }
        }
    }
}

/// Test 3: simulcast: the publisher sends three layers; the subscriber asks
/// for q, then f, and its decoded frameWidth follows the layer asked for.
#[test]
fn simulcast_layer_follows_preference() {
    if !prerequisites() {
        return;
    }
    let mut server = Server::start("simulcast");
    let v = server.run("sfu_simulcast.mjs", json!({ "room": "simulcast", "timeoutMs": 30000 }));
    let q = u64_at(&v, "/steps/q/received/frameWidth");
    let f = u64_at(&v, "/steps/f/received/frameWidth");
    assert_eq!(
        q,
        u64_at(&v, "/steps/q/sent/q/width"),
        "q: decoded width is not the q layer's: {v:#}"
    );
    assert_eq!(
        f,
        u64_at(&v, "/steps/f/sent/f/width"),
        "f: decoded width is not the f layer's: {v:#}"
    );
    assert!(q > 0 && f > q, "f ({f}) is not wider than q ({q}): {v:#}");
    assert_eq!(
        v["steps"]["f"]["sent"]["f"]["active"], true,
        "layer f is not being sent: {v:#}"
    );
    for layer in ["q", "f"] {
        assert!(
            u64_at(&v, &format!("/steps/{layer}/received/framesDecoded"))
                > u64_at(&v, &format!("/steps/{layer}/prevFrames")),
            "{layer}: framesDecoded not rising: {v:#}"
        );
    }
}

/// Temporal layers: a subscriber's maximum frame rate makes the SFU drop
/// the publisher's upper VP8 temporal layers: the decoded frame rate falls
/// to about a third while decoding goes on, and comes back without limit.
#[test]
fn max_fps_drops_temporal_layers() {
    if !prerequisites() {
        return;
    }
    temporal_layers("video/VP8", json!({}));
}

/// The same with AV1, whose temporal layers Chrome encodes only when asked
/// (`scalabilityMode: "L1T3"`); the SFU reads them from the OBU extension
/// headers.
#[test]
fn max_fps_drops_av1_temporal_layers() {
    if !prerequisites() {
        return;
    }
    temporal_layers("video/AV1", json!({ "codec": "av1", "svc": "L1T3" }));
}

fn temporal_layers(mime: &str, publish: Value) {
    let tag = if mime == "video/VP8" {
        "temporal"
    } else {
        "temporal-av1"
    };
    let mut server = Server::start(tag);
    let mut cfg = json!({ "room": tag, "timeoutMs": 30000 });
    if let (Some(cfg), Some(extra)) = (cfg.as_object_mut(), publish.as_object()) {
        cfg.extend(extra.clone());
    }
    let v = server.run("sfu_temporal.mjs", cfg);
    let fps = |step: &str| {
        v[step]["fps"]
            .as_f64()
            .unwrap_or_else(|| panic!("no {step} frame rate: {v:#}"))
    };
    let (full, limited, later, restored) = (fps("full"), fps("limited"), fps("limitedLater"), fps("restored"));
    eprintln!(
        "{tag}: decoded fps full {full:.1}, limit {}, limited {limited:.1}, later {later:.1}, restored {restored:.1}; keyframes while limited {}; sent {}",
        v["limit"], v["limitedLater"]["keyFrames"], v["sent"]
    );
    // The layer watched (q) was encoded as asked: the codec, and temporal
    // layers.
    assert_eq!(v["sent"]["q"]["codec"].as_str(), Some(mime), "{v:#}");
    assert!(
        v["sent"]["q"]["scalabilityMode"]
            .as_str()
            .is_some_and(|m| m.starts_with("L1T") && m != "L1T1"),
        "q not sent with temporal layers: {v:#}"
    );
    assert!(full >= 12.0, "full frame rate {full}: {v:#}");
    assert!(
        limited > 0.0 && limited <= full * 0.5,
        "limited {limited} of {full}: {v:#}"
    );
    // Decoding goes on at the lower rate (not a freeze).
    assert!(later > 0.0 && later <= full * 0.5, "later {later} of {full}: {v:#}");
    // Back to what ann sends (her encoder may have lowered its frame rate
    // since `full` was measured: CPU adaptation).
    let sending = v["restored"]["sentFps"].as_f64().unwrap_or(0.0);
    assert!(sending >= 12.0, "ann sending q at {sending} fps: {v:#}");
    assert!(
        restored >= full.min(sending) * 0.75,
        "restored {restored} of {full} ({sending} sent): {v:#}"
    );
}

/// VP9 SVC: one stream with three spatial layers (`L3T3_KEY`); a
/// subscriber that renders small gets only the lowest spatial layer (the
/// SFU drops the others and ends each picture on the layer it keeps), and
/// the full resolution again when the limit goes; a preferred quality
/// picks a spatial layer the same way.
#[test]
fn vp9_svc_spatial_layers_follow_video_size() {
    if !prerequisites() {
        return;
    }
    svc("chromium", "vp9");
}

/// The same with Firefox subscribing: its VP9 decoder takes the pictures
/// the SFU cut down to their lower spatial layers.
#[test]
fn vp9_svc_from_chromium_to_firefox() {
    if !firefox_prerequisites() {
        return;
    }
    svc("firefox", "vp9");
}

/// AV1 SVC (`L3T3_KEY` in one stream): the SFU places each packet in its
/// spatial layer by the dependency descriptor it negotiates with the
/// publisher (the OBU headers only mark a frame's first packet), and the
/// subscriber decodes what it keeps (the descriptor passed on to it: Chrome
/// stalled after ten frames without it).
#[test]
fn av1_svc_spatial_layers_by_dependency_descriptor() {
    if !prerequisites() {
        return;
    }
    svc("chromium", "av1");
}

/// The same with Firefox subscribing: its AV1 decoder takes the pictures
/// the SFU cut down by the dependency descriptor (passed on to it where it
/// negotiates the extension).
#[test]
fn av1_svc_from_chromium_to_firefox() {
    if !firefox_prerequisites() {
        return;
    }
    svc("firefox", "av1");
}

fn svc(subscriber: &str, codec: &str) {
    let tag = format!("svc-{codec}-{subscriber}");
    let mut server = Server::start(&tag);
    let v = server.run(
        "sfu_svc.mjs",
        json!({ "room": tag, "timeoutMs": 30000, "subscriber": subscriber, "codec": codec }),
    );
    eprintln!("{tag}: {v}");
    let full = u64_at(&v, "/full/frameWidth");
    let small = u64_at(&v, "/small/frameWidth");
    assert_eq!(v["sentFull"]["encodings"], 1, "one encoding, not simulcast: {v:#}");
    assert_eq!(
        v["sentFull"]["codec"],
        format!("video/{}", codec.to_uppercase()),
        "{v:#}"
    );
    assert_eq!(full, u64_at(&v, "/sentFull/captureWidth"), "{v:#}");
    assert!(small > 0 && small * 4 <= full, "small {small} of {full}: {v:#}");
    assert!(
        u64_at(&v, "/smallLater/framesDecoded") > u64_at(&v, "/small/framesDecoded"),
        "decoding stopped at the low layer: {v:#}"
    );
    assert_eq!(u64_at(&v, "/restored/frameWidth"), full, "{v:#}");
    assert_eq!(u64_at(&v, "/medium/frameWidth") * 2, full, "{v:#}");
}

/// Test 4: permissions: a token without can_publish cannot publish (a
/// clear error on the page); a track muted through the REST API is seen
/// muted by its subscriber, whose frames stop; a participant removed
/// through the REST API is disconnected.
#[test]
fn permissions_mute_and_kick_through_rest() {
    if !prerequisites() {
        return;
    }
    let mut server = Server::start("permissions");
    let room = "permissions";
    let cfg = json!({
        "room": room,
        "annToken": server.token(room, Some("ann"), |_| {}),
        "benToken": server.token(room, Some("ben"), |g| g.can_publish = Some(false)),
        "adminToken": server.token(room, None, |g| g.room_admin = true),
        "timeoutMs": 20000,
    });
    let v = server.run("sfu_permissions.mjs", cfg);
    let error = v["refused"]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("permission_denied") && v["refused"]["shown"].as_str() == Some(error),
        "no clear refusal on the page: {v:#}"
    );
    assert_eq!(
        v["refused"]["state"], "connected",
        "a refused publish must not end the session: {v:#}"
    );
    assert_eq!(v["refused"]["published"], 0, "{v:#}");
    assert_eq!(v["muted"]["after"]["muted"], true, "{v:#}");
    assert_eq!(
        v["muted"]["annSeesOwnMuted"], true,
        "the publisher does not know it was muted: {v:#}"
    );
    assert_eq!(
        v["muted"]["after"]["framesDecoded"], v["muted"]["before"]["framesDecoded"],
        "frames still arrive after the mute: {v:#}"
    );
    assert_eq!(v["kicked"]["disconnected"][0], "removed", "{v:#}");
    assert_eq!(v["kicked"]["roomState"], "disconnected", "{v:#}");
    assert!(
        v["kicked"]["error"].as_str().unwrap_or_default().starts_with("removed"),
        "the page does not say why it left: {v:#}"
    );
    assert!(
        !v["annSees"].as_array().unwrap().iter().any(|i| i == "ben"),
        "ann still sees ben: {v:#}"
    );
}

/// Test 5: resume: every signalling WebSocket is cut from outside the
/// browser; both pages resume their sessions and keep decoding. Also saves
/// tests/artifacts/demo-two-participants.png, the demo page with two
/// participants, before the cut.
#[test]
fn resume_after_cut_websocket_keeps_media() {
    if !prerequisites() {
        return;
    }
    let mut server = Server::start("resume");
    let screenshot = artifacts_dir().join("demo-two-participants.png");
    let _ = std::fs::remove_file(&screenshot);
    let v = server.run(
        "sfu_resume.mjs",
        json!({ "room": "resume", "httpPort": HTTP_PORT, "screenshot": screenshot, "timeoutMs": 20000 }),
    );
    assert!(screenshot.is_file(), "no screenshot at {}", screenshot.display());
    for i in 0..2 {
        let before = &v["sessionBefore"][i];
        let after = &v["sessionAfter"][i];
        assert_eq!(
            before["sid"], after["sid"],
            "page {i} did not resume its session: {v:#}"
        );
        let events: Vec<&str> = after["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            events.iter().any(|e| e.starts_with("reconnecting")) && events.iter().any(|e| e.starts_with("reconnected")),
            "page {i} did not go through reconnecting/reconnected: {events:?}"
        );
        assert!(
            !events.iter().any(|e| e.starts_with("disconnected")),
            "page {i}: {events:?}"
        );
        let cut_at = u64_at(&v, &format!("/beforeCut/after/{i}"));
        let later = u64_at(&v, &format!("/afterResume/after/{i}"));
        assert!(
            later > cut_at && later > u64_at(&v, &format!("/afterResume/before/{i}")),
            "page {i}: framesDecoded stopped rising after the resume: {v:#}"
        );
        assert!(v["errors"][i].is_null(), "page {i} shows an error: {v:#}");
    }
}

/// Test 6: data: a message sent with sendData reaches the other pages (text
/// and bytes), and only the named ones when destinations are given.
#[test]
fn data_reaches_everyone_or_only_the_named() {
    if !prerequisites() {
        return;
    }
    let mut server = Server::start("data");
    let v = server.run("sfu_data.mjs", json!({ "room": "data", "timeoutMs": 15000 }));
    let texts = |who: &str| -> Vec<String> {
        v["received"][who]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{}:{}:{}",
                    m["from"].as_str().unwrap_or("?"),
                    m["topic"].as_str().unwrap_or(""),
                    m["text"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let bytes = |who: &str| {
        v["received"][who]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["topic"] == "bin")
            .map(|m| m["bytes"].clone())
    };
    for who in ["ben", "cat"] {
        let t = texts(who);
        assert!(t.contains(&"ann:chat:hello everyone".to_string()), "{who}: {t:?}");
        assert!(t.contains(&"ann:end:marker".to_string()), "{who}: {t:?}");
        assert_eq!(
            bytes(who),
            Some(json!([0, 1, 254, 255])),
            "{who}: bytes changed on the way: {v:#}"
        );
    }
    assert!(
        texts("ben").contains(&"ann:chat:only for ben".to_string()),
        "ben: {:?}",
        texts("ben")
    );
    assert!(
        !texts("cat").iter().any(|t| t.ends_with("only for ben")),
        "cat got ben's message: {:?}",
        texts("cat")
    );
    assert!(
        texts("ann").is_empty(),
        "the sender got her own messages: {:?}",
        texts("ann")
    );
}

/// Test 7: ICE restart: once ben decodes ann's camera, ann's SDK takes its
/// own "publisher ICE failed" path, which re-offers with `iceRestart` on the
/// same session. Her publisher gets a new local ufrag (in the local
/// description and in getStats' transport), is connected again, the room
/// goes reconnecting -> reconnected, and ben's framesDecoded keeps rising.
#[test]
fn publisher_ice_restart_keeps_media() {
    if !prerequisites() {
        return;
    }
    let mut server = Server::start("ice-restart");
    let v = server.run(
        "sfu_ice_restart.mjs",
        json!({ "room": "ice-restart", "timeoutMs": 20000 }),
    );
    let before = &v["pubBefore"];
    let after = &v["pubAfter"];
    assert!(
        v["triggered"]["restarting"].as_bool() == Some(true),
        "the SDK did not start an ICE restart: {v:#}"
    );
    let old = before["localUfrag"].as_str().expect("ufrag before");
    let new = after["localUfrag"].as_str().expect("ufrag after");
    assert_ne!(old, new, "the publisher's local ufrag did not change: {v:#}");
    assert_eq!(before["statsUfrag"].as_str(), Some(old), "{v:#}");
    assert_eq!(after["statsUfrag"].as_str(), Some(new), "{v:#}");
    assert_eq!(after["connectionState"], "connected", "{v:#}");
    assert_eq!(before["sid"], after["sid"], "the restart changed the session: {v:#}");
    let events: Vec<&str> = v["pubEnd"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        events.iter().any(|e| e.starts_with("reconnecting")) && events.iter().any(|e| e.starts_with("reconnected")),
        "ann's room did not go through reconnecting/reconnected: {events:?}"
    );
    assert!(!events.iter().any(|e| e.starts_with("disconnected")), "{events:?}");
    let at_restart = u64_at(&v, "/framesAtRestart");
    let later = u64_at(&v, "/afterRestart/after");
    assert!(
        later >= at_restart + 30 && later > u64_at(&v, "/afterRestart/before"),
        "ben's framesDecoded stopped rising after the restart: {v:#}"
    );
    assert!(v["errors"][0].is_null() && v["errors"][1].is_null(), "{v:#}");
}

/// Test 8: screen share: ann clicks the demo's "Share screen" button (the
/// fake capture device answers getDisplayMedia without a picker) and the
/// demo publishes it with source `screen_share`. Ben's SDK announces and
/// subscribes that publication, and his framesDecoded of both the screen
/// track and ann's camera rise.
#[test]
fn screen_share_reaches_subscribers() {
    if !prerequisites() {
        return;
    }
    let mut server = Server::start("screen");
    let v = server.run("sfu_screen.mjs", json!({ "room": "screen", "timeoutMs": 20000 }));
    assert_eq!(v["buttonText"], "Share screen", "{v:#}");
    assert_eq!(v["local"]["source"], "screen_share", "{v:#}");
    assert_eq!(v["local"]["button"], "Stop sharing", "{v:#}");
    let sid = v["local"]["sid"].as_str().expect("screen publication sid");
    let screen = &v["after"]["ann/screen_share"];
    assert_eq!(screen["sid"].as_str(), Some(sid), "{v:#}");
    assert_eq!(screen["kind"], "video", "{v:#}");
    assert_eq!(screen["subscribed"], true, "{v:#}");
    let events: Vec<(&str, &str, &str)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default(),
                e["sid"].as_str().unwrap_or_default(),
                e["source"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    for name in ["trackPublished", "trackSubscribed"] {
        assert!(
            events.contains(&(name, sid, "screen_share")),
            "ben saw no {name} for ann's screen share: {events:?}"
        );
    }
    for key in ["screen_share", "camera"] {
        let before = u64_at(&v, &format!("/before/ann~1{key}/framesDecoded"));
        let after = u64_at(&v, &format!("/after/ann~1{key}/framesDecoded"));
        assert!(
            after >= 10 && after > before,
            "ben's {key} framesDecoded did not rise: {v:#}"
        );
    }
    assert!(v["errors"][0].is_null() && v["errors"][1].is_null(), "{v:#}");
}

#[test]
fn vp9_h264_av1_and_opus_dtx_pass_through() {
    if !prerequisites() {
        return;
    }
    let mut server = Server::start("codecs");
    let v = server.run("sfu_codecs.mjs", json!({ "room": "codecs", "timeoutMs": 60000 }));
    for (who, codec) in [("ann", "video/VP9"), ("ben", "video/H264"), ("cat", "video/AV1")] {
        let cam = &v["after"][format!("{who}/camera")];
        assert_eq!(cam["codec"], codec, "dan receives {who}'s camera as {codec}: {v:#}");
        let before = u64_at(&v, &format!("/before/{who}~1camera/framesDecoded"));
        let after = u64_at(&v, &format!("/after/{who}~1camera/framesDecoded"));
        assert!(after >= 10 && after > before, "dan decodes {who}'s {codec}: {v:#}");
    }
    let mic = v["mic"].as_array().expect("mic samples");
    let packets = |who: &str| {
        let m = mic.iter().find(|m| m["identity"] == who).expect("publisher");
        (
            m["packets"].as_u64().unwrap_or(0),
            m["fmtp"].as_str().unwrap_or("").to_string(),
        )
    };
    let (ann, ann_fmtp) = packets("ann");
    let (ben, _) = packets("ben");
    let (cat, cat_fmtp) = packets("cat");
    assert!(ann_fmtp.contains("usedtx=1"), "ann's answer turns DTX on: {v:#}");
    assert!(!cat_fmtp.contains("usedtx=1"), "cat's does not: {v:#}");
    // Chromium offers RED for Opus and the SFU answers with it first, which
    // is what makes the browser send RED.
    assert!(
        mic.iter().all(|m| m["redFirst"] == true),
        "RED leads every answer's audio formats: {v:#}"
    );
    // Without DTX, Opus sends a packet every 20 ms even of silence; with it,
    // about one every 400 ms.
    assert!(cat >= 100, "cat (no DTX) sent {cat} packets in 4 s: {v:#}");
    assert!(
        ann * 3 < cat && ben * 3 < cat,
        "DTX publishers sent {ann} and {ben} packets against {cat} without DTX: {v:#}"
    );
    assert!(v["errors"].as_array().unwrap().iter().all(Value::is_null), "{v:#}");
}

/// Tests 9 to 12: renegotiation mid-call (sfu_renegotiate.mjs), with
/// `publisher` and `subscriber` in Chromium or Firefox. Ann's camera
/// (simulcast, VP8) is withdrawn and published again twice: through the
/// SDK, and by turning its transceiver `inactive` behind the SDK's back,
/// which the SFU notices in the renegotiated offer. Each time ben loses the
/// publication and then decodes the new one, ann's microphone (Opus) flows
/// throughout with few concealed samples, and ben's subscriber connection
/// keeps one live m-line per track.
fn renegotiation(tag: &str, publisher: &str, subscriber: &str) {
    let mut server = Server::start(tag);
    let v = server.run(
        "sfu_renegotiate.mjs",
        json!({
            "room": tag,
            "publisher": publisher,
            "subscriber": subscriber,
            "simulcast": 1,
            "timeoutMs": 30000,
        }),
    );
    assert_eq!(v["start"]["ann/camera"]["codec"], "video/VP8", "{v:#}");
    assert_eq!(v["start"]["ann/microphone"]["codec"], "audio/opus", "{v:#}");
    let mut previous = v["start"]["ann/camera"]["sid"]
        .as_str()
        .expect("camera sid")
        .to_string();
    for step in ["sdk", "inactive"] {
        let r = &v["steps"][step];
        assert_eq!(r["removedSid"].as_str(), Some(previous.as_str()), "{step}: {v:#}");
        assert!(
            r["removed"]["ann/camera"].is_null(),
            "{step}: ben still lists the withdrawn camera: {v:#}"
        );
        assert!(
            r["annAfterRemove"]["sid"].is_null() && r["annAfterRemove"]["error"].is_null(),
            "{step}: ann's page still publishes the camera or shows an error: {v:#}"
        );
        let readded = r["readdedSid"].as_str().expect("re-published sid");
        assert_ne!(readded, previous, "{step}: {v:#}");
        assert_eq!(r["readded"]["ann/camera"]["sid"].as_str(), Some(readded), "{v:#}");
        assert!(
            u64_at(r, "/readded/ann~1camera/framesDecoded") >= 10,
            "{step}: ben does not decode the re-published camera: {v:#}"
        );
        previous = readded.to_string();
    }
    // The microphone was never touched: its samples kept arriving, with
    // little concealment over both renegotiations (summed over ben's
    // samples from the first to the last).
    let total = u64_at(&v, "/audio/received");
    let concealed = u64_at(&v, "/audio/concealed");
    eprintln!(
        "{tag}: microphone samples {total}, concealed {concealed}, packets {}, counter restarts {}",
        u64_at(&v, "/audio/packets"),
        u64_at(&v, "/audio/restarts")
    );
    assert!(total >= 48_000, "ben received under a second of audio: {v:#}");
    assert!(u64_at(&v, "/audio/packets") > 0, "{v:#}");
    // Measured 1 to 5 % on a loaded two-core machine (Opus DTX and CPU
    // starvation conceal some); an audio stream broken by a renegotiation
    // conceals nearly everything (96 % in a run where a renegotiation tore
    // the transport down).
    assert!(
        concealed * 5 < total,
        "ben's audio glitched: {concealed} of {total} samples concealed: {v:#}"
    );
    for page in ["ann", "ben"] {
        let p = &v["pages"][page];
        assert!(p["error"].is_null(), "{page}: {v:#}");
        assert_eq!(p["state"], "connected", "{page}: {v:#}");
    }
    assert_eq!(v["pages"]["ann"]["pubState"], "connected", "{v:#}");
    assert_eq!(v["pages"]["ben"]["subState"], "connected", "{v:#}");
    // Withdrawn tracks' m-lines are stopped (port 0) or, for the first
    // (BUNDLE-tagged) one, inactive: only the two current tracks' are live.
    let live = v["pages"]["ben"]["subMLines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            let m = l["m"].as_str().unwrap_or_default();
            (m.starts_with("m=audio") || m.starts_with("m=video")) && !m.contains(" 0 ") && l["dir"] != "inactive"
        })
        .count();
    assert_eq!(live, 2, "ben's live m-lines: {v:#}");
    // Simulcast: the publisher sends layers by rid.
    let rids: Vec<&str> = v["pages"]["ann"]["sent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "video")
        .filter_map(|s| s["rid"].as_str())
        .collect();
    assert!(rids.len() >= 2, "{publisher} does not send simulcast layers: {v:#}");
}

#[test]
fn chromium_renegotiation_keeps_other_tracks() {
    if !prerequisites() {
        return;
    }
    renegotiation("reneg-chromium", "chromium", "chromium");
}

/// Firefox publishes (VP8 simulcast and Opus) and renegotiates; Chromium decodes.
#[test]
fn firefox_publishes_to_chromium_with_renegotiation() {
    if !firefox_prerequisites() {
        return;
    }
    renegotiation("reneg-ff-to-chromium", "firefox", "chromium");
}

/// Chromium publishes; Firefox subscribes and follows the SFU's offers.
#[test]
fn chromium_publishes_to_firefox_with_renegotiation() {
    if !firefox_prerequisites() {
        return;
    }
    renegotiation("reneg-chromium-to-ff", "chromium", "firefox");
}

/// Firefox on both ends: its publisher renegotiates, its subscriber follows.
/// Once flaky (1 of 2 runs): after the first re-publish ben's downlink
/// estimate was ~120 kbit/s, the allocator paused the new camera and it
/// never came back within 30 s, because str0m's estimate cannot rise while
/// nothing is sent. The SFU now restarts such an estimate
/// (`sfu::estimate_recovery`, tested deterministically in
/// `sfu/tests/simulcast.rs`); here 16 of 16 runs passed (4 with both cores
/// kept busy), but so did 8 of 8 without the restart, so this test does not
/// by itself show the fix.
#[test]
fn firefox_renegotiation_keeps_other_tracks() {
    if !firefox_prerequisites() {
        return;
    }
    renegotiation("reneg-ff", "firefox", "firefox");
}
