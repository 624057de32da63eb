//! coturn's own test clients (`turnutils_stunclient`, `turnutils_uclient`)
//! against the relay, with `turnutils_peer` as the UDP echo peer on 127.0.0.1.
use std::process::Command;
use std::time::Duration;

use e2e::{require_tool, run_with_timeout, unix_now, Credentials, EchoPeer, Impl, RunningServer, ServerOpts};

const SECRET: &str = "e2e-secret";

/// Totals from uclient's closing summary.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    sent: u64,
    received: u64,
    lost: u64,
    send_dropped: u64,
}

/// Parses the last `tot_send_msgs=N, tot_recv_msgs=M` and
/// `Total lost packets L (...), total send dropped D (...)` lines.
fn parse_summary(out: &str) -> Option<Summary> {
    let mut s = Summary::default();
    let mut have_msgs = false;
    let mut have_lost = false;
    for line in out.lines() {
        if let Some(i) = line.find("tot_send_msgs=") {
            let rest = &line[i..];
            if rest.contains("tot_recv_msgs=") && !rest.contains("msz=") {
                s.sent = num_after(rest, "tot_send_msgs=")?;
                s.received = num_after(rest, "tot_recv_msgs=")?;
                have_msgs = true;
            }
        }
        if line.contains("Total lost packets") {
            s.lost = num_after(line, "Total lost packets ")?;
            s.send_dropped = num_after(line, "total send dropped ")?;
            have_lost = true;
        }
    }
    (have_msgs && have_lost).then_some(s)
}

fn num_after(s: &str, key: &str) -> Option<u64> {
    let i = s.find(key)? + key.len();
    let digits: String = s[i..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[test]
fn uclient_summary_parser() {
    let out = "1: : start_mclient: msz=2, tot_send_msgs=0, tot_recv_msgs=0, tot_send_bytes ~ 0\n\
               5: : start_mclient: tot_send_msgs=40, tot_recv_msgs=39\n\
               5: : Total lost packets 1 (2.5%), total send dropped 0 (0.000000%)\n";
    assert_eq!(
        parse_summary(out),
        Some(Summary {
            sent: 40,
            received: 39,
            lost: 1,
            send_dropped: 0
        })
    );
    assert_eq!(parse_summary("ERROR: Cannot complete Allocation"), None);
}

fn tools() -> bool {
    require_tool("turnutils_uclient") && require_tool("turnutils_peer") && require_tool("turnutils_stunclient")
}

/// Runs uclient with `flags` against `server`, `clients` clients of `msgs`
/// messages each, and asserts every message came back.
fn run_uclient(server: &RunningServer, peer: &EchoPeer, flags: &[&str], auth: &[String], clients: u32, msgs: u32) {
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(flags)
        .args(["-p", &server.port.to_string()])
        .args(["-e", "127.0.0.1", "-r", &peer.port.to_string()])
        .args([
            "-n",
            &msgs.to_string(),
            "-m",
            &clients.to_string(),
            "-l",
            "160",
            "-z",
            "5",
        ])
        .args(auth)
        .arg("127.0.0.1");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = parse_summary(&text).unwrap_or_else(|| {
        panic!("uclient {flags:?} printed no summary (exit {}):\n{text}", out.status);
    });
    // uclient runs sessions in RTP/RTCP pairs (at least 2), and with -y every
    // client's messages are counted at both ends.
    let pairs = if flags.contains(&"-y") { 2 } else { 1 };
    let expected = u64::from(clients.max(2) * msgs * pairs);
    assert!(
        out.status.success(),
        "uclient {flags:?} exited with {}:\n{text}",
        out.status
    );
    assert_eq!(
        summary.sent, expected,
        "uclient {flags:?} sent a different number of messages:\n{text}"
    );
    assert_eq!(
        summary.received, summary.sent,
        "uclient {flags:?} lost messages:\n{text}"
    );
    assert_eq!(summary.lost, 0, "uclient {flags:?} reports lost packets:\n{text}");
    assert_eq!(summary.send_dropped, 0, "uclient {flags:?} reports send drops:\n{text}");
}

fn rest_auth() -> Vec<String> {
    // uclient computes `<now + 1 day>:user` and the HMAC itself from the secret.
    ["-W", SECRET, "-u", "alice"].iter().map(|s| s.to_string()).collect()
}

fn static_auth(user: &str, pw: &str) -> Vec<String> {
    ["-u", user, "-w", pw].iter().map(|s| s.to_string()).collect()
}

fn stunclient(imp: Impl) {
    if !tools() {
        return;
    }
    let server = RunningServer::start(imp, ServerOpts::default());
    let mut cmd = Command::new("turnutils_stunclient");
    cmd.args(["-p", &server.port.to_string(), "127.0.0.1"]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "turnutils_stunclient failed ({}):\n{text}",
        out.status
    );
    assert!(
        text.contains("UDP reflexive addr: 127.0.0.1:"),
        "no reflexive address in:\n{text}"
    );
}

#[test]
fn stunclient_binding() {
    stunclient(Impl::under_test());
}

#[test]
fn coturn_sanity_stunclient_binding() {
    stunclient(Impl::Coturn);
}

#[test]
fn uclient_udp_channels_rest() {
    if !tools() {
        return;
    }
    let server = RunningServer::start(Impl::under_test(), ServerOpts::default());
    let peer = EchoPeer::start();
    run_uclient(&server, &peer, &[], &rest_auth(), 4, 30);
}

#[test]
fn uclient_udp_send_indications_rest() {
    if !tools() {
        return;
    }
    let server = RunningServer::start(Impl::under_test(), ServerOpts::default());
    let peer = EchoPeer::start();
    run_uclient(&server, &peer, &["-s"], &rest_auth(), 4, 30);
}

#[test]
fn uclient_tcp_channels_rest() {
    if !tools() {
        return;
    }
    let server = RunningServer::start(Impl::under_test(), ServerOpts::default());
    let peer = EchoPeer::start();
    run_uclient(&server, &peer, &["-t"], &rest_auth(), 4, 30);
}

#[test]
fn uclient_tcp_send_indications_rest() {
    if !tools() {
        return;
    }
    let server = RunningServer::start(Impl::under_test(), ServerOpts::default());
    let peer = EchoPeer::start();
    run_uclient(&server, &peer, &["-t", "-s"], &rest_auth(), 2, 30);
}

#[test]
fn uclient_client_to_client_static_user() {
    if !tools() {
        return;
    }
    // Static users only: coturn ignores them once a REST secret is configured.
    let opts = ServerOpts {
        secret: None,
        users: vec![("bob".into(), "hunter2".into())],
        ..ServerOpts::default()
    };
    let server = RunningServer::start(Impl::under_test(), opts);
    let peer = EchoPeer::start();
    // -y: the clients relay to each other's relayed addresses (no external peer).
    run_uclient(&server, &peer, &["-y"], &static_auth("bob", "hunter2"), 2, 30);
}

#[test]
fn uclient_rest_credentials_precomputed() {
    if !tools() {
        return;
    }
    let server = RunningServer::start(Impl::under_test(), ServerOpts::default());
    let peer = EchoPeer::start();
    let c = Credentials::rest(SECRET, "carol", unix_now() + 3600);
    run_uclient(&server, &peer, &[], &static_auth(&c.username, &c.password), 1, 20);
}

#[test]
fn uclient_wrong_secret_is_refused() {
    if !tools() {
        return;
    }
    let server = RunningServer::start(Impl::under_test(), ServerOpts::default());
    let peer = EchoPeer::start();
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args([
        "-p",
        &server.port.to_string(),
        "-e",
        "127.0.0.1",
        "-r",
        &peer.port.to_string(),
    ])
    .args(["-n", "3", "-W", "not-the-secret", "-u", "mallory", "127.0.0.1"]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "uclient with a wrong secret succeeded:\n{text}");
    assert!(
        text.contains("Cannot complete Allocation"),
        "unexpected uclient output:\n{text}"
    );
}

#[test]
fn coturn_sanity_uclient_udp_channels() {
    if !tools() {
        return;
    }
    let server = RunningServer::start(Impl::Coturn, ServerOpts::default());
    let peer = EchoPeer::start();
    run_uclient(&server, &peer, &[], &rest_auth(), 2, 20);
}
