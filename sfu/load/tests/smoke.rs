//! The whole tool once, briefly: `direct` (server child process, str0m
//! clients, /proc readings) and `bare`, each for about two seconds. Checks
//! that media flowed and was accounted, not how fast.
use std::process::Command;

fn result(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sfu-load"))
        .args(args)
        .output()
        .expect("run sfu-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sfu-load {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("a RESULT line");
    serde_json::from_str(line).expect("RESULT is JSON")
}

#[test]
fn direct_and_bare_forward_media() {
    let common = [
        "--subscribers",
        "2",
        "--warmup",
        "0.5",
        "--seconds",
        "1",
        "--video-kbps",
        "300",
    ];
    let mut args = vec!["direct", "--no-twcc", "--max-seconds", "60"];
    args.extend(common);
    let d = result(&args);
    assert_eq!(d["joined"], 2);
    assert!(d["forwarded_pps"].as_f64().unwrap() > 100.0, "{d}");
    assert_eq!(d["client_malformed"], 0);

    let mut args = vec!["bare", "--max-seconds", "60"];
    args.extend(common);
    let b = result(&args);
    assert!(b["forwarded_pps"].as_f64().unwrap() > 100.0, "{b}");
    assert_eq!(b["malformed"], 0);
}

/// `ws` against the real `rtc-server`: two subscribers join through the
/// WebSocket signalling and receive the publisher's media. The server binary
/// is the workspace's, built next to this one (`cargo test --workspace`
/// builds it; `cargo build -p signalling --bin rtc-server` otherwise).
#[test]
fn ws_joins_through_signalling_and_forwards_media() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_sfu-load")).with_file_name("rtc-server");
    if !bin.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing (CI must build it)",
            bin.display()
        );
        eprintln!("skipped: {} not built", bin.display());
        return;
    }
    let bin = bin.to_string_lossy().into_owned();
    let w = result(&[
        "ws",
        "--server-bin",
        &bin,
        "--no-twcc",
        "--subscribers",
        "2",
        "--warmup",
        "0.5",
        "--seconds",
        "1",
        "--video-kbps",
        "300",
    ]);
    assert_eq!(w["joined"], 2, "{w}");
    assert!(w["forwarded_pps"].as_f64().unwrap() > 100.0, "{w}");
    assert!(w["join_ms_p50"].as_f64().unwrap() > 0.0, "{w}");
    assert!(w["server_rss_kib"].as_u64().unwrap() > 0, "{w}");
    assert_eq!(w["errors"], 0, "{w}");
}
