//! Accuracy of the impairments measured end to end through the real TUN
//! path: UDP from a socket in namespace `a` to a socket in namespace `b`,
//! forwarded by the router running on a thread of this test process.
//!
//! Sender and receiver are threads that setns(2) into their namespace before
//! opening their sockets; both stamp packets with the same process clock, so
//! one-way delay is measured directly. Needs root and iproute2 (skipped
//! loudly otherwise, failed under CI=true).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netem::engine::{BlockRule, LinkParams, QueueLimit};
use netem::router::{LinkConfig, Report, Router};
use netem::topology::{netns, Topology};

/// IPv4 + UDP header bytes on top of the payload.
const HEADERS: usize = 28;
const PORT: u16 = 5000;

/// A two-node topology with the router forwarding on a thread. Dropping it
/// stops the router (closing the TUN fds), then deletes the namespaces.
struct Rig {
    stop: Arc<AtomicBool>,
    router: Option<JoinHandle<Report>>,
    topo: Topology,
}

impl Rig {
    fn start(a: LinkConfig, b: LinkConfig) -> Rig {
        let (topo, tuns) = Topology::build(&["a", "b"]).expect("topology");
        let mut router = Router::new(&topo, tuns, vec![a, b], 1).expect("router");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            router.run(&flag).expect("router loop");
            router.report()
        });
        Rig {
            stop,
            router: Some(handle),
            topo,
        }
    }

    fn ns(&self, name: &str) -> String {
        self.topo.node(name).expect("node").netns.clone()
    }

    fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::new(self.topo.node(name).expect("node").addr.into(), PORT)
    }

    fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        self.router.take().expect("running").join().expect("router thread")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.router.take() {
            let _ = h.join();
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Rx {
    seq: u64,
    sent_ns: u64,
    recv_ns: u64,
    len: usize,
}

struct Traffic {
    received: Vec<Rx>,
    sent: u64,
    send_errors: u64,
}

/// Sends `count` UDP packets of `payload` bytes from `a` to `b`, `burst`
/// packets every `interval`, and collects what arrives until `grace` after
/// the last send.
fn udp_flow(rig: &Rig, count: u64, payload: usize, burst: u64, interval: Duration, grace: Duration) -> Traffic {
    let base = Instant::now();
    let (ns_a, ns_b, dst) = (rig.ns("a"), rig.ns("b"), rig.addr("b"));
    let done = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();

    let done_rx = done.clone();
    let receiver = std::thread::spawn(move || {
        netns::enter(&ns_b).expect("enter b");
        let sock = UdpSocket::bind(dst).expect("bind receiver");
        // Big buffer (SO_RCVBUFFORCE: we are root) so the receiver itself
        // drops nothing during a burst.
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt with a c_int option on a socket we own.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        ready_tx.send(()).expect("signal ready");
        let mut got = Vec::with_capacity(count as usize + 16);
        let mut buf = [0u8; 2048];
        while !done_rx.load(Ordering::SeqCst) {
            let Ok(n) = sock.recv(&mut buf) else { continue };
            let recv_ns = base.elapsed().as_nanos() as u64;
            let (Some(seq), Some(sent)) = (buf.get(0..8), buf.get(8..16)) else {
                continue;
            };
            got.push(Rx {
                seq: u64::from_be_bytes(seq.try_into().expect("8 bytes")),
                sent_ns: u64::from_be_bytes(sent.try_into().expect("8 bytes")),
                recv_ns,
                len: n,
            });
        }
        got
    });
    ready_rx.recv().expect("receiver ready");

    let sender = std::thread::spawn(move || {
        netns::enter(&ns_a).expect("enter a");
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind sender");
        let mut buf = vec![0u8; payload.max(16)];
        let (mut sent, mut errors) = (0u64, 0u64);
        let start = Instant::now();
        while sent < count {
            let due = start + interval * (sent / burst) as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            for _ in 0..burst.min(count - sent) {
                buf[0..8].copy_from_slice(&sent.to_be_bytes());
                buf[8..16].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
                if sock.send_to(&buf, dst).is_err() {
                    errors += 1;
                }
                sent += 1;
            }
        }
        (sent, errors)
    });
    let (sent, send_errors) = sender.join().expect("sender");
    std::thread::sleep(grace);
    done.store(true, Ordering::SeqCst);
    let received = receiver.join().expect("receiver");
    Traffic {
        received,
        sent,
        send_errors,
    }
}

fn down(params: LinkParams) -> LinkConfig {
    LinkConfig {
        down: params,
        ..Default::default()
    }
}

fn median_delay_ms(t: &Traffic) -> f64 {
    let mut d: Vec<u64> = t.received.iter().map(|r| r.recv_ns.saturating_sub(r.sent_ns)).collect();
    assert!(!d.is_empty(), "nothing received");
    d.sort_unstable();
    d[d.len() / 2] as f64 / 1e6
}

#[test]
fn added_delay_within_2ms() {
    if !common::rig_available("added_delay_within_2ms") {
        return;
    }
    let _serial = common::serial();
    let rig = Rig::start(LinkConfig::default(), LinkConfig::default());
    let base = udp_flow(&rig, 100, 200, 1, Duration::from_millis(5), Duration::from_millis(200));
    drop(rig);
    let baseline = median_delay_ms(&base);

    let params = LinkParams {
        delay: Duration::from_millis(50),
        ..Default::default()
    };
    let rig = Rig::start(LinkConfig::default(), down(params));
    let t = udp_flow(&rig, 300, 200, 1, Duration::from_millis(5), Duration::from_millis(300));
    let report = rig.finish();
    let median = median_delay_ms(&t);
    let min = t.received.iter().map(|r| r.recv_ns - r.sent_ns).min().unwrap_or(0) as f64 / 1e6;
    eprintln!(
        "delay: configured 50 ms, median {median:.3} ms (min {min:.3}), baseline without impairment {baseline:.3} ms, {} packets",
        t.received.len()
    );
    assert_eq!(t.received.len() as u64, t.sent, "{report:?}");
    assert!((median - 50.0).abs() < 2.0, "median one-way delay {median} ms");
    assert!(min >= 50.0, "a packet arrived before the configured delay: {min} ms");
}

#[test]
fn random_loss_within_1_point_over_10k_packets() {
    if !common::rig_available("random_loss_within_1_point_over_10k_packets") {
        return;
    }
    let _serial = common::serial();
    let params = LinkParams {
        loss: 0.05,
        ..Default::default()
    };
    let rig = Rig::start(LinkConfig::default(), down(params));
    // 10 packets per millisecond: 10,000 packets in about a second.
    let t = udp_flow(
        &rig,
        10_000,
        200,
        10,
        Duration::from_millis(1),
        Duration::from_millis(300),
    );
    let report = rig.finish();
    let loss = 1.0 - t.received.len() as f64 / t.sent as f64;
    let b = &report.ports[1].down;
    eprintln!(
        "loss: configured 5 %, measured {:.2} % ({} of {} received; engine dropped {}; send errors {})",
        loss * 100.0,
        t.received.len(),
        t.sent,
        b.dropped_loss,
        t.send_errors
    );
    assert_eq!(t.send_errors, 0);
    assert_eq!(
        report.router.pool_exhausted + report.router.write_errors,
        0,
        "{report:?}"
    );
    // Every loss is the engine's: the path itself lost nothing.
    assert_eq!(t.received.len() as u64 + b.dropped_loss, t.sent, "{report:?}");
    assert!((loss - 0.05).abs() < 0.01, "loss {loss}");
}

#[test]
fn rate_limit_within_5_percent() {
    if !common::rig_available("rate_limit_within_5_percent") {
        return;
    }
    let _serial = common::serial();
    let rate = 2_000_000.0;
    let params = LinkParams {
        rate_bps: Some(rate as u64),
        queue: QueueLimit::Bytes(60_000),
        ..Default::default()
    };
    let rig = Rig::start(LinkConfig::default(), down(params));
    // 3 Mbit/s offered (1000-byte payloads every 2.74 ms) for 2 s.
    let payload = 1000;
    let interval = Duration::from_secs_f64((payload + HEADERS) as f64 * 8.0 / 3e6);
    let t = udp_flow(&rig, 730, payload, 1, interval, Duration::from_millis(500));
    let report = rig.finish();
    let r = &t.received;
    assert!(r.len() > 100, "received {}", r.len());
    let (first, last) = (r[0].recv_ns, r[r.len() - 1].recv_ns);
    // Bytes after the first packet, over the time from first to last.
    let bytes: usize = r[1..].iter().map(|x| x.len + HEADERS).sum();
    let bps = bytes as f64 * 8.0 / ((last - first) as f64 / 1e9);
    let b = &report.ports[1].down;
    eprintln!(
        "rate: configured 2 Mbit/s, measured {:.4} Mbit/s ({:+.2} %), {} received, {} dropped by the full queue",
        bps / 1e6,
        (bps / rate - 1.0) * 100.0,
        r.len(),
        b.dropped_queue
    );
    assert!(b.dropped_queue > 0, "offered load must exceed the rate");
    assert!(
        r.windows(2).all(|w| w[0].seq < w[1].seq),
        "rate limiting reordered packets"
    );
    assert!((bps / rate - 1.0).abs() < 0.05, "throughput {bps}");
}

#[test]
fn blocked_udp_does_not_arrive() {
    if !common::rig_available("blocked_udp_does_not_arrive") {
        return;
    }
    let _serial = common::serial();
    let params = LinkParams {
        block: BlockRule::Udp,
        ..Default::default()
    };
    let rig = Rig::start(
        LinkConfig {
            up: params,
            ..Default::default()
        },
        LinkConfig::default(),
    );
    let t = udp_flow(&rig, 50, 100, 1, Duration::from_millis(1), Duration::from_millis(100));
    let report = rig.finish();
    assert_eq!(t.received.len(), 0);
    assert_eq!(report.ports[0].up.dropped_blocked, 50);
}
