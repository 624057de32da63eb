//! Headless Chromium (driven by playwright-core from tests/browser) makes a
//! call between two RTCPeerConnections in one page with
//! `iceTransportPolicy: 'relay'`, so every media packet crosses the relay.
//!
//! The relay and Chromium both run inside a network namespace this test
//! creates with only a loopback interface, so the browser cannot reach any
//! other address of this machine (or anything else).
use std::process::Command;
use std::time::Duration;

use e2e::{
    require_chromium_stack, rtc_relay_credentials, run_with_timeout, unix_now, workspace_root, Credentials, Impl,
    NetNs, RunningServer, ServerOpts,
};
use serde_json::{json, Value};

const SECRET: &str = "browser-secret";

/// Everything the browser test needs, or a skip (outside CI) / failure (in CI).
fn prerequisites() -> bool {
    require_chromium_stack()
}

fn call(transport: &str) -> Value {
    let imp = Impl::under_test();
    let ns = NetNs::create();
    let opts = ServerOpts {
        secret: Some(SECRET.into()),
        netns: Some(ns.name.clone()),
        ..ServerOpts::default()
    };
    let server = RunningServer::start(imp, opts);
    let url = format!("turn:127.0.0.1:{}?transport={transport}", server.port);
    let (username, credential, urls) = match imp {
        Impl::RtcRelay => {
            let c = rtc_relay_credentials(SECRET, "chromium", 600, std::slice::from_ref(&url));
            assert_eq!(c.urls, vec![url.clone()], "credentials --url not echoed");
            (c.username, c.credential, c.urls)
        }
        Impl::Coturn => {
            let c = Credentials::rest(SECRET, "chromium", unix_now() + 600);
            (c.username, c.password, vec![url.clone()])
        }
    };
    let cfg = json!({
        "iceServers": [{ "urls": urls, "username": username, "credential": credential }],
        "timeoutMs": 45000,
    });
    let script = workspace_root().join("tests/browser/relay_call.mjs");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, "node"])
        .arg(&script)
        .arg(cfg.to_string());
    cmd.env("HOME", std::env::temp_dir());
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "relay_call.mjs failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| {
        panic!("relay_call.mjs printed no JSON:\n{stdout}\n{stderr}");
    });
    let v: Value = serde_json::from_str(line).unwrap();
    assert!(v.get("error").is_none(), "browser error: {v:#}");
    eprintln!("browser result ({transport}): {v:#}");
    drop(server);
    drop(ns);
    v
}

fn assert_relayed_call(v: &Value, transport: &str) {
    let frames = v["framesDecoded"].as_u64().unwrap_or(0);
    assert!(frames >= 30, "framesDecoded stayed at {frames}: {v:#}");
    let samples: Vec<u64> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        samples.windows(2).any(|w| w[1] > w[0]),
        "framesDecoded is not rising: {samples:?}"
    );
    for pc in ["pc1", "pc2"] {
        let pair = &v["pairs"][pc];
        assert!(pair.is_object(), "{pc} has no selected candidate pair: {v:#}");
        assert_eq!(
            pair["local"]["type"], "relay",
            "{pc} local candidate is not relayed: {v:#}"
        );
        assert_eq!(
            pair["remote"]["type"], "relay",
            "{pc} remote candidate is not relayed: {v:#}"
        );
        assert_eq!(
            pair["local"]["relayProtocol"], transport,
            "{pc} reached the relay over another transport: {v:#}"
        );
        assert_eq!(pair["local"]["address"], "127.0.0.1", "{pc} relayed address: {v:#}");
    }
    assert_eq!(v["connectionState"]["pc2"], "connected", "{v:#}");
}

#[test]
fn chromium_call_through_relay_over_udp() {
    if !prerequisites() {
        return;
    }
    let v = call("udp");
    assert_relayed_call(&v, "udp");
}

#[test]
fn chromium_call_through_relay_over_tcp() {
    if !prerequisites() {
        return;
    }
    let v = call("tcp");
    assert_relayed_call(&v, "tcp");
}
