//! The load generator: N clients each keep W ChannelData packets in flight
//! through the relay to a peer socket this process owns, which echoes every
//! datagram back to the relayed address it came from.
//!
//! One thread drives all client sockets (poll + recvmmsg/sendmmsg), one
//! thread is the echoing peer. The server's CPU is read from /proc/PID/stat
//! over the measured interval only, so the generator's own cost is not in it
//! (it does compete for the same 2 cores, which caps the rate, not the
//! per-datagram cost).
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::client::{AuthCache, ClientError, TurnClient};
use crate::sys::{self, Batch, BATCH};

pub const CHANNEL: u16 = 0x4000;
const MAGIC: u32 = 0x5242_4e43; // "RBNC"
pub const MIN_SIZE: usize = 24;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("client {index}: {source}")]
    Handshake { index: usize, source: ClientError },
    #[error("bad arguments: {0}")]
    Args(String),
}

#[derive(Clone, Debug)]
pub struct LoadArgs {
    pub server: SocketAddr,
    pub secret: String,
    pub clients: usize,
    pub window: usize,
    /// ChannelData payload bytes.
    pub size: usize,
    pub seconds: f64,
    pub warmup: f64,
    /// Longest wait for outstanding packets after sending stops.
    pub drain: f64,
    pub bare: bool,
    pub peer_bind: SocketAddr,
    /// The server process to measure (CPU, RSS, cycles).
    pub server_pid: Option<u32>,
    pub perf: bool,
    /// A client whose packets have not come back for this long gets its window refilled.
    pub stall_ms: u64,
    /// Open loop: send at most this many datagrams per second in total (the
    /// window still caps what is in flight). `None`: as fast as the window allows.
    pub rate: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct ServerUsage {
    pub cpu: Duration,
    pub ns_per_datagram: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub threads: usize,
    pub cycles_per_datagram: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub clients: usize,
    pub window: usize,
    pub size: usize,
    pub handshake: Duration,
    /// Measured interval (after warmup, until the drain finished).
    pub elapsed: Duration,
    pub round_trips: u64,
    pub rt_per_s: f64,
    pub sent_total: u64,
    pub received_total: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub malformed: u64,
    /// recvmmsg errors on client sockets (ICMP port unreachable and the like).
    pub recv_errors: u64,
    pub stun_in_band: u64,
    pub stalls: u64,
    pub echoed: u64,
    pub rtt_p50_us: u32,
    pub rtt_p99_us: u32,
    pub rtt_max_us: u32,
    pub server: Option<ServerUsage>,
    /// CPU of this generator process over the measured interval.
    pub generator_cpu: Duration,
    /// Busy CPU of the whole machine over the measured interval; minus the
    /// server and the generator, it is what else ran (other builds, tests).
    pub machine_cpu: Duration,
}

struct ClientState {
    sock: UdpSocket,
    seq: u64,
    in_flight: usize,
    last_progress: Instant,
}

/// The echoing peer: every datagram goes back to where it came from.
fn echo_peer(sock: UdpSocket, stop: Arc<AtomicBool>, echoed: Arc<AtomicU64>) {
    let mut b = Batch::new();
    let fd = sock.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let n = match b.recv(fd, 0, libc::MSG_WAITFORONE) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("peer: recv: {e}");
                return;
            }
        };
        if n == 0 {
            continue;
        }
        // Source addresses are already in the batch; send each back to its sender.
        match b.send(fd, n, true, 0) {
            Ok(s) => {
                echoed.fetch_add(s as u64, Ordering::Relaxed);
            }
            Err(e) => eprintln!("peer: send: {e}"),
        }
    }
}

fn perf_supported() -> bool {
    std::process::Command::new("perf")
        .args(["stat", "-x,", "-e", "cycles", "true"])
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stderr);
            o.status.success() && s.contains("cycles") && !s.contains("not supported") && !s.contains("not counted")
        })
        .unwrap_or(false)
}

/// Whether `perf stat -e cycles` counts on this machine (cached).
pub fn cycles_supported() -> bool {
    static S: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *S.get_or_init(perf_supported)
}

struct PerfStat {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl PerfStat {
    fn start(pid: u32) -> Option<PerfStat> {
        let out = std::env::temp_dir().join(format!("relay-bench-perf-{}-{pid}.csv", std::process::id()));
        let child = std::process::Command::new("perf")
            .args(["stat", "-x,", "-e", "cycles", "-p", &pid.to_string(), "-o"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(PerfStat { child, out })
    }
    fn stop(mut self) -> Option<f64> {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let s = std::fs::read_to_string(&self.out).ok()?;
        let _ = std::fs::remove_file(&self.out);
        parse_perf_cycles(&s)
    }
}

/// The cycles count of `perf stat -x,` output.
pub fn parse_perf_cycles(s: &str) -> Option<f64> {
    s.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split(',').nth(2).is_some_and(|e| e.starts_with("cycles")))
        .and_then(|l| l.split(',').next())
        .and_then(|v| v.trim().parse::<f64>().ok())
}

fn write_packet(slot: &mut [u8], size: usize, client: u32, seq: u64, ts_ns: u64) -> usize {
    let h = (size as u16).to_be_bytes();
    let c = CHANNEL.to_be_bytes();
    slot[..4].copy_from_slice(&[c[0], c[1], h[0], h[1]]);
    slot[4..8].copy_from_slice(&MAGIC.to_be_bytes());
    slot[8..12].copy_from_slice(&client.to_be_bytes());
    slot[12..20].copy_from_slice(&seq.to_be_bytes());
    slot[20..28].copy_from_slice(&ts_ns.to_be_bytes());
    4 + size
}

/// What a received datagram was.
#[derive(Debug, PartialEq, Eq)]
enum Rx {
    Echo { ts_ns: u64 },
    Stun,
    Malformed,
}

fn classify(d: &[u8], client: u32) -> Rx {
    if d.first().is_some_and(|b| *b < 4) {
        return Rx::Stun;
    }
    if d.len() < 4 || u16::from_be_bytes([d[0], d[1]]) != CHANNEL {
        return Rx::Malformed;
    }
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    let Some(p) = d.get(4..4 + len) else {
        return Rx::Malformed;
    };
    if p.len() < MIN_SIZE || p[..4] != MAGIC.to_be_bytes() || p[4..8] != client.to_be_bytes() {
        return Rx::Malformed;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&p[16..24]);
    Rx::Echo {
        ts_ns: u64::from_be_bytes(ts),
    }
}

pub fn run(a: &LoadArgs) -> Result<LoadReport, LoadError> {
    if a.size < MIN_SIZE || a.size > sys::SLOT - 4 {
        return Err(LoadError::Args(format!(
            "--size must be {MIN_SIZE}..={}",
            sys::SLOT - 4
        )));
    }
    if a.clients == 0 || a.window == 0 || a.seconds <= 0.0 || a.seconds > 600.0 {
        return Err(LoadError::Args(
            "need clients, window > 0 and 0 < seconds <= 600".into(),
        ));
    }
    let peer = UdpSocket::bind(a.peer_bind)?;
    sys::set_buffers(peer.as_raw_fd(), 4 << 20);
    sys::set_recv_timeout(&peer, Duration::from_millis(50))?;
    let peer_addr = peer.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let echo = {
        let (stop, echoed) = (stop.clone(), echoed.clone());
        std::thread::spawn(move || echo_peer(peer, stop, echoed))
    };
    let result = drive(a, peer_addr, &echoed);
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    result
}

fn handshake(a: &LoadArgs, peer_addr: SocketAddr) -> Result<(Vec<UdpSocket>, usize), LoadError> {
    if a.bare {
        // The bare forwarder answers the last client it saw, so one socket
        // carries the whole window.
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.connect(a.server)?;
        return Ok((vec![s], a.clients * a.window));
    }
    let cache = AuthCache::default();
    let mut socks = Vec::with_capacity(a.clients);
    for index in 0..a.clients {
        let hs = |index| -> Result<UdpSocket, ClientError> {
            let mut c = TurnClient::new(a.server, &a.secret, &format!("bench{index}"))?;
            c.allocate(&cache)?;
            c.create_permission(&cache, peer_addr)?;
            c.channel_bind(&cache, CHANNEL, peer_addr)?;
            Ok(c.sock)
        };
        socks.push(hs(index).map_err(|source| LoadError::Handshake { index, source })?);
    }
    Ok((socks, a.window))
}

fn drive(a: &LoadArgs, peer_addr: SocketAddr, echoed: &AtomicU64) -> Result<LoadReport, LoadError> {
    let t0 = Instant::now();
    let (socks, window) = handshake(a, peer_addr)?;
    let handshake_time = t0.elapsed();
    let mut clients: Vec<ClientState> = socks
        .into_iter()
        .map(|sock| {
            sys::set_buffers(sock.as_raw_fd(), 1 << 20);
            sock.set_nonblocking(true).map(|_| ClientState {
                sock,
                seq: 0,
                in_flight: 0,
                last_progress: t0,
            })
        })
        .collect::<Result<_, _>>()?;
    let mut fds: Vec<libc::pollfd> = clients
        .iter()
        .map(|c| libc::pollfd {
            fd: c.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();

    let base = Instant::now();
    let warm_end = base + Duration::from_secs_f64(a.warmup);
    let send_end = warm_end + Duration::from_secs_f64(a.seconds);
    let drain_end = send_end + Duration::from_secs_f64(a.drain);
    let stall = Duration::from_millis(a.stall_ms);
    let mut rx = Batch::new();
    let mut tx = Batch::new();
    let (mut sent, mut received, mut malformed, mut stun_in_band, mut stalls) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut recv_errors = 0u64;
    let mut rtts: Vec<u32> = Vec::with_capacity(1 << 16);
    let mut rtt_max = 0u32;
    let mut warm: Option<(Instant, u64, Option<Duration>)> = None;
    let mut warm_other = (Duration::ZERO, Duration::ZERO);
    let mut perf = None;
    let mut last_check = base;

    // Open-loop pacing: a token bucket of datagrams to send; unlimited when no --rate.
    let paced = a.rate.is_some_and(|r| r > 0.0);
    let rate = a.rate.unwrap_or(0.0);
    let burst = (rate * 0.002).max(BATCH as f64);
    let mut budget = if paced { 0.0 } else { f64::INFINITY };
    let mut last_refill = Instant::now();
    let mut rot = 0usize;
    let fill = |c: &mut ClientState,
                idx: u32,
                tx: &mut Batch,
                sent: &mut u64,
                budget: &mut f64,
                now_ns: u64|
     -> std::io::Result<()> {
        while c.in_flight < window && *budget >= 1.0 {
            let k = (window - c.in_flight).min(BATCH).min(budget.min(BATCH as f64) as usize);
            for i in 0..k {
                let seq = c.seq + i as u64;
                let n = write_packet(tx.slot_mut_full(i), a.size, idx, seq, now_ns);
                tx.off[i] = 0;
                tx.len[i] = n;
            }
            let s = tx.send(c.sock.as_raw_fd(), k, false, libc::MSG_DONTWAIT)?;
            if c.in_flight == 0 && s > 0 {
                // Nothing was outstanding: the stall clock starts now, not at the last reply.
                c.last_progress = Instant::now();
            }
            c.seq += s as u64;
            c.in_flight += s;
            *sent += s as u64;
            *budget -= s as f64;
            if s < k {
                break;
            }
        }
        Ok(())
    };

    for (i, c) in clients.iter_mut().enumerate() {
        c.last_progress = base;
        fill(c, i as u32, &mut tx, &mut sent, &mut budget, 0)?;
    }

    loop {
        let now = Instant::now();
        let sending = now < send_end;
        if warm.is_none() && now >= warm_end {
            let cpu = a.server_pid.and_then(|p| sys::proc_cpu(p).ok());
            warm = Some((now, received, cpu));
            warm_other = (
                sys::proc_cpu(std::process::id()).unwrap_or_default(),
                sys::machine_busy().unwrap_or_default(),
            );
            if a.perf && cycles_supported() {
                perf = a.server_pid.and_then(PerfStat::start);
            }
        }
        if !sending {
            let outstanding: usize = clients.iter().map(|c| c.in_flight).sum();
            if outstanding == 0 || now >= drain_end {
                break;
            }
        }
        if paced {
            let t = Instant::now();
            budget = (budget + rate * t.duration_since(last_refill).as_secs_f64()).min(burst);
            last_refill = t;
        }
        // SAFETY: fds is a live array of pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, if paced { 1 } else { 5 }) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e.into());
            }
        }
        for (i, c) in clients.iter_mut().enumerate() {
            if r <= 0 || fds[i].revents == 0 {
                continue;
            }
            fds[i].revents = 0;
            loop {
                let n = match rx.recv(c.sock.as_raw_fd(), 0, libc::MSG_DONTWAIT) {
                    Ok(n) => n,
                    // ICMP errors surface here; they are not ours to stop on.
                    Err(_) => {
                        recv_errors += 1;
                        0
                    }
                };
                if n == 0 {
                    break;
                }
                let now_ns = base.elapsed().as_nanos() as u64;
                for j in 0..n {
                    match classify(rx.slot(j), i as u32) {
                        Rx::Echo { ts_ns } => {
                            received += 1;
                            c.in_flight = c.in_flight.saturating_sub(1);
                            if received % 8 == 0 && rtts.len() < (1 << 22) {
                                let us = (now_ns.saturating_sub(ts_ns) / 1000).min(u32::MAX as u64) as u32;
                                rtts.push(us);
                                rtt_max = rtt_max.max(us);
                            }
                        }
                        Rx::Stun => stun_in_band += 1,
                        Rx::Malformed => malformed += 1,
                    }
                }
                c.last_progress = Instant::now();
                if sending {
                    fill(c, i as u32, &mut tx, &mut sent, &mut budget, now_ns)?;
                }
                if n < BATCH {
                    break;
                }
            }
        }
        let now = Instant::now();
        if paced || now.duration_since(last_check) >= Duration::from_millis(10) {
            last_check = now;
            let now_ns = base.elapsed().as_nanos() as u64;
            // Start at a different client each time so paced tokens are shared fairly.
            rot = (rot + 1) % clients.len();
            let nc = clients.len();
            for k in 0..nc {
                let i = (rot + k) % nc;
                let c = &mut clients[i];
                if c.in_flight > 0 && now.duration_since(c.last_progress) >= stall {
                    // Presume the outstanding packets lost; late arrivals still count as received.
                    stalls += 1;
                    c.in_flight = 0;
                    c.last_progress = now;
                }
                if sending && c.in_flight < window {
                    fill(c, i as u32, &mut tx, &mut sent, &mut budget, now_ns)?;
                }
            }
        }
    }
    let end = Instant::now();
    let generator_cpu = sys::proc_cpu(std::process::id())
        .unwrap_or_default()
        .saturating_sub(warm_other.0);
    let machine_cpu = sys::machine_busy().unwrap_or_default().saturating_sub(warm_other.1);
    let cycles = perf.and_then(PerfStat::stop);
    let (w_at, w_recv, w_cpu) = warm.unwrap_or((base, 0, None));
    let elapsed = end.duration_since(w_at);
    let round_trips = received - w_recv;
    let server = a.server_pid.map(|pid| {
        let cpu = match (w_cpu, sys::proc_cpu(pid).ok()) {
            (Some(s), Some(e)) => e.saturating_sub(s),
            _ => Duration::ZERO,
        };
        let (rss, hwm) = sys::proc_rss_kib(pid).unwrap_or((0, 0));
        let dgrams = (2 * round_trips).max(1) as f64;
        ServerUsage {
            cpu,
            ns_per_datagram: cpu.as_nanos() as f64 / dgrams,
            rss_kib: rss,
            peak_rss_kib: hwm,
            threads: sys::proc_threads(pid),
            cycles_per_datagram: cycles.map(|c| c / dgrams),
        }
    });
    rtts.sort_unstable();
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
    };
    let lost = sent.saturating_sub(received);
    Ok(LoadReport {
        clients: clients.len(),
        window,
        size: a.size,
        handshake: handshake_time,
        elapsed,
        round_trips,
        rt_per_s: round_trips as f64 / elapsed.as_secs_f64().max(1e-9),
        sent_total: sent,
        received_total: received,
        lost,
        loss_pct: if sent > 0 {
            100.0 * lost as f64 / sent as f64
        } else {
            0.0
        },
        malformed,
        recv_errors,
        stun_in_band,
        stalls,
        echoed: echoed.load(Ordering::Relaxed),
        rtt_p50_us: pct(0.5).unwrap_or(0),
        rtt_p99_us: pct(0.99).unwrap_or(0),
        rtt_max_us: rtt_max,
        server,
        generator_cpu,
        machine_cpu,
    })
}

impl LoadReport {
    pub fn print(&self, label: &str) {
        println!(
            "{label}: {:.0} round trips/s ({} in {:.2} s), clients {} x window {}, payload {} B, handshake {:.2} s",
            self.rt_per_s,
            self.round_trips,
            self.elapsed.as_secs_f64(),
            self.clients,
            self.window,
            self.size,
            self.handshake.as_secs_f64()
        );
        println!(
            "{label}: sent {} received {} lost {} ({:.4}%), stalls {}, malformed {}, recv errors {}, stun {}, peer echoed {}",
            self.sent_total,
            self.received_total,
            self.lost,
            self.loss_pct,
            self.stalls,
            self.malformed,
            self.recv_errors,
            self.stun_in_band,
            self.echoed
        );
        println!(
            "{label}: rtt p50 {} us p99 {} us max {} us",
            self.rtt_p50_us, self.rtt_p99_us, self.rtt_max_us
        );
        if let Some(s) = &self.server {
            println!(
                "{label}: server cpu {:.3} s = {:.3} us per forwarded datagram, cycles/datagram {}, rss {} KiB, peak rss {} KiB, {} threads",
                s.cpu.as_secs_f64(),
                s.ns_per_datagram / 1000.0,
                s.cycles_per_datagram.map(|c| format!("{c:.0}")).unwrap_or_else(|| "n/a".into()),
                s.rss_kib,
                s.peak_rss_kib,
                s.threads
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_round_trip_and_garbage() {
        let mut buf = [0u8; 128];
        let n = write_packet(&mut buf, 100, 7, 42, 123_456);
        assert_eq!(n, 104);
        assert_eq!(classify(&buf[..n], 7), Rx::Echo { ts_ns: 123_456 });
        assert_eq!(classify(&buf[..n], 8), Rx::Malformed);
        assert_eq!(classify(&buf[..50], 7), Rx::Malformed);
        assert_eq!(classify(&[], 7), Rx::Malformed);
        assert_eq!(classify(&[0x01, 0x01, 0, 0], 7), Rx::Stun);
        for cut in 0..n {
            let _ = classify(&buf[..cut], 7);
        }
    }

    #[test]
    fn perf_csv() {
        let s = "# started on Sat\n\n123456789,,cycles,1000,100.00,,\n";
        assert_eq!(parse_perf_cycles(s), Some(123456789.0));
        assert_eq!(parse_perf_cycles("<not supported>,,cycles,0,100.00,,\n"), None);
    }
}

#[cfg(test)]
mod smoke {
    use super::*;

    fn free_port() -> u16 {
        UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// The bare forwarder and the `--bare` load against each other for a moment.
    #[test]
    fn bare_forwarder_round_trips() {
        let (fport, pport) = (free_port(), free_port());
        let listen = SocketAddr::from(([127, 0, 0, 1], fport));
        let peer = SocketAddr::from(([127, 0, 0, 1], pport));
        std::thread::spawn(move || {
            let args = crate::forwarder::ForwarderArgs {
                listen,
                peer,
                channel: CHANNEL,
                max_seconds: 3,
                gso: false,
            };
            let _ = crate::forwarder::run(args);
        });
        std::thread::sleep(Duration::from_millis(100));
        let a = LoadArgs {
            server: listen,
            secret: String::new(),
            clients: 2,
            window: 4,
            size: 64,
            seconds: 0.3,
            warmup: 0.1,
            drain: 0.5,
            bare: true,
            peer_bind: peer,
            server_pid: None,
            perf: false,
            stall_ms: 100,
            rate: None,
        };
        let r = run(&a).expect("load runs");
        assert!(r.round_trips > 0, "{r:?}");
        assert_eq!(r.malformed, 0);
        assert_eq!(r.lost, 0, "{r:?}");
    }
}
