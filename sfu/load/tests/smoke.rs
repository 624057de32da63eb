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
