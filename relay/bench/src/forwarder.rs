//! The bare batched forwarder: the floor of the kernel path a TURN relay
//! cannot go below. Client -> peer: recvmmsg ChannelData on the listen
//! socket, strip the 4-byte header, sendmmsg the payload to a fixed peer from
//! a second socket. Peer -> client: recvmmsg on that socket with 4 bytes of
//! headroom, write the header in place, sendmmsg to the last client seen.
//! No auth, no lookup, one thread per direction.
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::{self, Batch, SKIP};

#[derive(Clone, Debug, clap::Args)]
pub struct ForwarderArgs {
    #[arg(long, default_value = "127.0.0.1:3678")]
    pub listen: SocketAddr,
    #[arg(long)]
    pub peer: SocketAddr,
    #[arg(long, default_value_t = 0x4000)]
    pub channel: u16,
    /// Exits by itself after this long.
    #[arg(long, default_value_t = 900)]
    pub max_seconds: u64,
    /// Peer -> client as one UDP GSO send per batch instead of sendmmsg
    /// (what rtc-relay does towards clients).
    #[arg(long)]
    pub gso: bool,
}

fn pack(a: SocketAddr) -> u64 {
    match a {
        SocketAddr::V4(v4) => ((u32::from(*v4.ip()) as u64) << 16) | v4.port() as u64 | (1 << 63),
        SocketAddr::V6(_) => 0,
    }
}

fn unpack(v: u64) -> Option<SocketAddr> {
    if v & (1 << 63) == 0 {
        return None;
    }
    let ip = ((v >> 16) & 0xFFFF_FFFF) as u32;
    Some(SocketAddr::V4(SocketAddrV4::new(ip.into(), (v & 0xFFFF) as u16)))
}

pub fn run(args: ForwarderArgs) -> std::io::Result<()> {
    let listen = UdpSocket::bind(args.listen)?;
    let relay = UdpSocket::bind(SocketAddr::new(args.listen.ip(), 0))?;
    relay.connect(args.peer)?;
    for s in [&listen, &relay] {
        sys::set_buffers(s.as_raw_fd(), 4 << 20);
        sys::set_recv_timeout(s, Duration::from_millis(200))?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let client = Arc::new(AtomicU64::new(0));
    eprintln!(
        "bare-forwarder: listen {} relay {} -> peer {} (stops after {} s, peer->client {})",
        listen.local_addr()?,
        relay.local_addr()?,
        args.peer,
        args.max_seconds,
        if args.gso { "GSO" } else { "sendmmsg" }
    );

    let (l2, r2, c2) = (listen.try_clone()?, relay.try_clone()?, client.clone());
    let gso = args.gso;
    let rev = std::thread::spawn(move || reverse(l2, r2, c2, args.channel, deadline, gso));
    let fwd = forward(&listen, &relay, &client, deadline);
    let back = rev.join().unwrap_or(Ok(0));
    eprintln!("bare-forwarder: forwarded {} to peer, {} to client", fwd?, back?);
    Ok(())
}

/// Average recvmmsg batch, printed every 5 s while traffic flows.
struct BatchStats {
    dir: &'static str,
    calls: u64,
    dgrams: u64,
    since: Instant,
}

impl BatchStats {
    fn new(dir: &'static str) -> Self {
        BatchStats {
            dir,
            calls: 0,
            dgrams: 0,
            since: Instant::now(),
        }
    }
    fn add(&mut self, n: usize) {
        if n > 0 {
            self.calls += 1;
            self.dgrams += n as u64;
        }
        if self.since.elapsed() >= Duration::from_secs(5) {
            if self.calls > 0 {
                eprintln!(
                    "bare-forwarder {}: {} datagrams in {} recvmmsg calls, {:.2} per batch",
                    self.dir,
                    self.dgrams,
                    self.calls,
                    self.dgrams as f64 / self.calls as f64
                );
            }
            *self = BatchStats::new(self.dir);
        }
    }
}

/// client -> peer.
fn forward(listen: &UdpSocket, relay: &UdpSocket, client: &AtomicU64, deadline: Instant) -> std::io::Result<u64> {
    let mut b = Batch::new();
    let mut total = 0u64;
    let mut last = 0u64;
    let mut stats = BatchStats::new("client->peer");
    while Instant::now() < deadline {
        let n = b.recv(listen.as_raw_fd(), 0, libc::MSG_WAITFORONE)?;
        stats.add(n);
        if n == 0 {
            continue;
        }
        for i in 0..n {
            let d = b.slot(i);
            let ok = d.len() >= 4 && (0x40..=0x4F).contains(&d[0]);
            let declared = if ok {
                u16::from_be_bytes([d[2], d[3]]) as usize
            } else {
                0
            };
            if ok && declared <= d.len() - 4 {
                b.off[i] = 4;
                b.len[i] = declared;
            } else {
                b.len[i] = SKIP;
            }
        }
        if let Some(a) = b.addr(n - 1) {
            let p = pack(a);
            if p != last {
                client.store(p, Ordering::Relaxed);
                last = p;
            }
        }
        total += b.send(relay.as_raw_fd(), n, false, 0)? as u64;
    }
    Ok(total)
}

/// peer -> client.
fn reverse(
    listen: UdpSocket,
    relay: UdpSocket,
    client: Arc<AtomicU64>,
    channel: u16,
    deadline: Instant,
    gso: bool,
) -> std::io::Result<u64> {
    let mut b = Batch::new();
    let mut total = 0u64;
    let ch = channel.to_be_bytes();
    let mut stats = BatchStats::new("peer->client");
    while Instant::now() < deadline {
        let n = b.recv(relay.as_raw_fd(), 4, libc::MSG_WAITFORONE)?;
        stats.add(n);
        if n == 0 {
            continue;
        }
        let Some(to) = unpack(client.load(Ordering::Relaxed)) else {
            continue;
        };
        for i in 0..n {
            let len = b.len[i];
            let l = (len as u16).to_be_bytes();
            let s = b.slot_mut_full(i);
            s[..4].copy_from_slice(&[ch[0], ch[1], l[0], l[1]]);
            b.off[i] = 0;
            b.len[i] = len + 4;
            b.set_addr(i, to);
        }
        total += if gso {
            b.send_gso(listen.as_raw_fd(), n, to)?
        } else {
            b.send(listen.as_raw_fd(), n, true, 0)?
        } as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        let a: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        assert_eq!(unpack(pack(a)), Some(a));
        assert_eq!(unpack(0), None);
    }
}
