//! The floor: a bare UDP fan-out forwarder (`sfu-load bare-forward`, its
//! own process) and its load (`sfu-load bare`). The forwarder receives with
//! `recvmmsg` on one socket and sends every datagram to M subscriber
//! addresses with `sendmmsg`: no parsing, no crypto, no state. The load sends
//! the same packet sizes on the same schedule as a str0m publisher and
//! counts at M sockets, and the forwarder's CPU is read from /proc exactly as
//! the SFU's, so packets per CPU-second compare like for like.
use std::io::{self, BufRead, Write};
use std::mem;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::media::{MediaSpec, Out, Schedule};
use crate::stats::{CpuSnap, SeqStats};
use crate::LoadError;

/// Bytes added to each payload to match what the SFU sends: RTP header (12),
/// header extensions (~16: transport-cc, abs-send-time or audio level) and
/// the SRTP tag (10 for AES_CM_128_HMAC_SHA1_80, 16 for AEAD-GCM).
pub const RTP_OVERHEAD: usize = 40;
const BATCH: usize = 32;
const SLOT: usize = 2048;
/// Most messages one sendmmsg takes (UIO_MAXIOV).
const MAX_MMSG: usize = 1024;
/// Our header inside each datagram: stream index and sequence number.
const HDR: usize = 9;

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The forwarder process: prints its address, then forwards until stdin
/// closes or `max_seconds` pass.
pub fn forward(subs: &[SocketAddrV4], max_seconds: u64) -> Result<(), LoadError> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let fd = sock.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let v: libc::c_int = 8 << 20;
        let p = &v as *const libc::c_int as *const libc::c_void;
        let len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid fd and a pointer to a live c_int.
        unsafe {
            if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) != 0 {
                libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, len);
            }
        }
    }
    println!("{}", sock.local_addr()?);
    io::stdout().flush()?;
    std::thread::spawn(|| {
        // The load generator closes our stdin when it is done (or dies).
        for _ in io::stdin().lock().lines() {}
        std::process::exit(0);
    });
    let deadline = Instant::now() + Duration::from_secs(max_seconds);
    let addrs: Vec<libc::sockaddr_in> = subs.iter().map(|a| sockaddr_in(*a)).collect();
    let mut bufs = vec![0u8; BATCH * SLOT];
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut riov: Vec<libc::iovec> = vec![unsafe { mem::zeroed() }; BATCH];
    let mut rhdr: Vec<libc::mmsghdr> = vec![unsafe { mem::zeroed() }; BATCH];
    let mut siov: Vec<libc::iovec> = vec![unsafe { mem::zeroed() }; BATCH];
    let mut shdr: Vec<libc::mmsghdr> = vec![unsafe { mem::zeroed() }; MAX_MMSG];
    let (mut received, mut sent) = (0u64, 0u64);
    while Instant::now() < deadline {
        let base = bufs.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: slot i lies within bufs.
            riov[i].iov_base = unsafe { base.add(i * SLOT) } as *mut libc::c_void;
            riov[i].iov_len = SLOT;
            rhdr[i].msg_hdr.msg_iov = &mut riov[i];
            rhdr[i].msg_hdr.msg_iovlen = 1;
            rhdr[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers above.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                rhdr.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        received += n as u64;
        // Every datagram of the batch to every subscriber.
        let mut k = 0;
        let mut flush = |shdr: &mut [libc::mmsghdr], k: usize| {
            let mut done = 0;
            while done < k {
                // SAFETY: headers done..k point at live iovecs and addresses.
                let r = unsafe { libc::sendmmsg(fd, shdr.as_mut_ptr().add(done), (k - done) as u32, 0) };
                if r <= 0 {
                    // ECONNREFUSED from a subscriber that went away: skip it.
                    done += 1;
                    continue;
                }
                done += r as usize;
                sent += r as u64;
            }
        };
        for i in 0..n {
            siov[i].iov_base = riov[i].iov_base;
            siov[i].iov_len = rhdr[i].msg_len as usize;
            for a in &addrs {
                let h = &mut shdr[k].msg_hdr;
                h.msg_iov = &mut siov[i];
                h.msg_iovlen = 1;
                h.msg_name = a as *const libc::sockaddr_in as *mut libc::c_void;
                h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                k += 1;
                if k == MAX_MMSG {
                    flush(&mut shdr, k);
                    k = 0;
                }
            }
        }
        flush(&mut shdr, k);
    }
    eprintln!("bare-forward: received {received}, sent {sent}");
    Ok(())
}

pub struct BareArgs {
    pub subscribers: usize,
    pub spec: MediaSpec,
    pub warmup: Duration,
    pub seconds: Duration,
    pub max_seconds: u64,
}

/// Parses our header: (stream, seq); None if too short.
pub fn parse_hdr(d: &[u8]) -> Option<(usize, u64)> {
    let s = *d.first()?;
    let seq = u64::from_be_bytes(d.get(1..HDR)?.try_into().ok()?);
    Some((s as usize, seq))
}

/// Runs the forwarder process and the load through it.
pub fn bare(a: BareArgs) -> Result<serde_json::Value, LoadError> {
    let mut subs = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..a.subscribers {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.set_nonblocking(true)?;
        match s.local_addr()? {
            SocketAddr::V4(v4) => addrs.push(v4.to_string()),
            SocketAddr::V6(_) => return Err(LoadError::Protocol("IPv6 subscriber address".into())),
        }
        subs.push(s);
    }
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["bare-forward", "--max-seconds", &a.max_seconds.to_string(), "--subs"])
        .arg(addrs.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        io::BufReader::new(out).read_line(&mut line)?;
    }
    let fwd: SocketAddr = line
        .trim()
        .parse()
        .map_err(|_| LoadError::Protocol(format!("bad forwarder address {line:?}")))?;
    let result = drive(&a, &subs, fwd, pid);
    drop(child.stdin.take());
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && !matches!(child.try_wait(), Ok(Some(_))) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn drive(a: &BareArgs, subs: &[UdpSocket], fwd: SocketAddr, pid: u32) -> Result<serde_json::Value, LoadError> {
    let publisher = UdpSocket::bind("127.0.0.1:0")?;
    publisher.connect(fwd)?;
    let mut sched = Schedule::new(a.spec.clone(), Instant::now());
    let mut out: Vec<Out> = Vec::new();
    let mut buf = vec![0u8; SLOT];
    let mut pkt = vec![0u8; SLOT];
    let streams = a.spec.streams();
    let mut stats: Vec<SeqStats> = vec![SeqStats::default(); subs.len() * streams];
    let mut received = 0u64;
    let mut malformed = 0u64;
    let mut sent = 0u64;
    let mut fds: Vec<libc::pollfd> = subs
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let start = Instant::now();
    let mut snap0 = None;
    let end = start + a.warmup + a.seconds;
    while Instant::now() < end {
        if snap0.is_none() && Instant::now() >= start + a.warmup {
            snap0 = Some((CpuSnap::take(pid, "-"), received, totals(&stats), sent));
        }
        let now = Instant::now();
        let wake = sched.next_due().unwrap_or(now + Duration::from_millis(5));
        let ms = wake.saturating_duration_since(now).as_millis().min(5) as libc::c_int;
        // SAFETY: fds is a live array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n > 0 {
            for (i, f) in fds.iter_mut().enumerate() {
                if f.revents == 0 {
                    continue;
                }
                f.revents = 0;
                while let Ok(len) = subs[i].recv(&mut buf) {
                    received += 1;
                    match parse_hdr(&buf[..len]) {
                        Some((s, seq)) if s < streams => stats[i * streams + s].on_packet(seq),
                        _ => malformed += 1,
                    }
                }
            }
        }
        out.clear();
        sched.due(Instant::now(), &mut out);
        for o in &out {
            let len = (o.size + RTP_OVERHEAD).clamp(HDR, SLOT);
            pkt[0] = o.stream as u8;
            pkt[1..HDR].copy_from_slice(&o.seq.to_be_bytes());
            if publisher.send(&pkt[..len]).is_ok() {
                sent += 1;
            }
        }
    }
    let c1 = CpuSnap::take(pid, "-");
    let (c0, r0, t0, s0) = snap0.ok_or_else(|| LoadError::Protocol("no measurement window".into()))?;
    let t1 = totals(&stats);
    let wall = (c1.at - c0.at).as_secs_f64();
    let cpu = (c1.server - c0.server).as_secs_f64();
    let fwd_n = received - r0;
    let expected = t1.0 - t0.0;
    let lost = expected.saturating_sub(t1.1 - t0.1);
    let (rss, hwm) = crate::stats::proc_rss_kib(pid).unwrap_or_default();
    Ok(serde_json::json!({
        "scenario": "bare",
        "subscribers": a.subscribers,
        "seconds": wall,
        "published_pps": (sent - s0) as f64 / wall,
        "forwarded_pps": fwd_n as f64 / wall,
        "server_cpu_s": cpu,
        "server_cores": cpu / wall,
        "pkts_per_cpu_s": if cpu > 0.0 { fwd_n as f64 / cpu } else { 0.0 },
        "us_per_pkt": if fwd_n > 0 { cpu * 1e6 / fwd_n as f64 } else { 0.0 },
        "loss": if expected > 0 { lost as f64 / expected as f64 } else { 0.0 },
        "lost": lost,
        "malformed": malformed,
        "server_rss_kib": rss,
        "server_hwm_kib": hwm,
        "client_cores": (c1.me - c0.me).as_secs_f64() / wall,
        "other_cores": ((c1.machine - c0.machine).as_secs_f64() - cpu - (c1.me - c0.me).as_secs_f64()) / wall,
    }))
}

/// (expected, distinct) over every subscriber's streams.
fn totals(stats: &[SeqStats]) -> (u64, u64) {
    stats
        .iter()
        .fold((0, 0), |(e, d), s| (e + s.expected(), d + s.distinct()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parses_or_refuses() {
        let mut d = vec![2u8];
        d.extend_from_slice(&77u64.to_be_bytes());
        d.extend_from_slice(&[0; 30]);
        assert_eq!(parse_hdr(&d), Some((2, 77)));
        assert_eq!(parse_hdr(&d[..5]), None);
        assert_eq!(parse_hdr(&[]), None);
    }
}
