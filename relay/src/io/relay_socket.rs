//! Relay sockets: the [`RelayIo`] implementation of a shard, and the task
//! that drains each UDP relay socket into the shard's shared buffers.
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;
use tracing::Instrument;

use super::shard::Shard;
use super::udp::{segments, SLOT_DATA};
use crate::turn::server::{PEER_HEADROOM, PEER_TAILROOM};
use crate::turn::{Action, RelayId, RelayIo};

/// Batches drained per readiness event before yielding to the rest of the shard.
const MAX_BATCHES_PER_WAKE: usize = 4;

pub enum Relay {
    /// A UDP relay socket. The socket is shared with its receive task, which
    /// is aborted on close; an idle allocation costs just these two.
    Udp { sock: Rc<UdpSocket>, task: AbortHandle },
    /// An RFC 6062 relay listener and its accept task.
    Tcp {
        addr: SocketAddr,
        task: AbortHandle,
        _claim: super::tcp_relay::PortClaim,
    },
}

impl Drop for Relay {
    fn drop(&mut self) {
        match self {
            Relay::Udp { task, .. } | Relay::Tcp { task, .. } => task.abort(),
        }
    }
}

/// Relay sockets of one shard, indexed by `RelayId` (slots are reused; the
/// core never names a relay after closing it).
#[derive(Default)]
pub struct RelaySlab {
    slots: Vec<Option<Relay>>,
    free: Vec<u32>,
}

impl RelaySlab {
    pub fn next_id(&self) -> RelayId {
        RelayId(self.free.last().copied().unwrap_or(self.slots.len() as u32))
    }

    /// Stores `relay` under the id [`RelaySlab::next_id`] returned.
    pub fn insert(&mut self, id: RelayId, relay: Relay) {
        let i = id.0 as usize;
        if self.free.last() == Some(&id.0) {
            self.free.pop();
        }
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some(relay);
    }

    pub fn get(&self, id: RelayId) -> Option<&Relay> {
        self.slots.get(id.0 as usize).and_then(|s| s.as_ref())
    }

    pub fn remove(&mut self, id: RelayId) -> Option<Relay> {
        let r = self.slots.get_mut(id.0 as usize)?.take();
        if r.is_some() {
            self.free.push(id.0);
        }
        r
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// The shard seen through the core's [`RelayIo`] trait. Never touches
/// `Shard::server` (the core is borrowed while it calls us): everything that
/// must call back into the core runs in a task spawned here.
pub struct ShardIo<'a> {
    pub shard: &'a Rc<Shard>,
}

impl ShardIo<'_> {
    /// Registers a bound relay socket with this shard's runtime and starts its receive task.
    fn adopt_udp(&mut self, sock: std::net::UdpSocket, addr: SocketAddr) -> io::Result<RelayId> {
        let sock = Rc::new(UdpSocket::from_std(sock)?);
        let mut relays = self.shard.relays.borrow_mut();
        let id = relays.next_id();
        let span = tracing::debug_span!("relay", relay = id.0, %addr);
        let task = tokio::task::spawn_local(relay_udp_task(self.shard.clone(), id, sock.clone()).instrument(span))
            .abort_handle();
        relays.insert(id, Relay::Udp { sock, task });
        Ok(id)
    }
}

impl RelayIo for ShardIo<'_> {
    fn bind_udp(&mut self, addr: SocketAddr, dont_fragment: bool) -> io::Result<RelayId> {
        let sock = bind_relay_udp(addr, dont_fragment)?;
        self.adopt_udp(sock, addr)
    }

    fn reserve_udp(&mut self, addr: SocketAddr, token: [u8; 8], expires: Instant) -> io::Result<()> {
        let sock = bind_relay_udp(addr, false)?;
        self.shard
            .shared
            .reservations
            .park(token, sock, addr, expires, Instant::now());
        Ok(())
    }

    fn take_reserved(&mut self, token: [u8; 8], now: Instant, dont_fragment: bool) -> Option<(RelayId, SocketAddr)> {
        let (sock, addr) = self.shard.shared.reservations.take(token, now)?;
        super::reservation::set_dont_fragment(&sock, addr, dont_fragment).ok()?;
        self.adopt_udp(sock, addr).ok().map(|id| (id, addr))
    }

    fn listen_tcp(&mut self, addr: SocketAddr) -> io::Result<RelayId> {
        super::tcp_relay::listen_tcp(self.shard, addr)
    }

    fn close(&mut self, relay: RelayId) {
        // Dropping the entry aborts the task, which drops the last Rc of the socket.
        let r = self.shard.relays.borrow_mut().remove(relay);
        drop(r);
    }

    fn tcp_connect(&mut self, relay: RelayId, peer: SocketAddr, connection_id: u32) {
        super::tcp_relay::tcp_connect(self.shard, relay, peer, connection_id)
    }

    fn tcp_close(&mut self, connection_id: u32) {
        super::tcp_relay::tcp_close(self.shard, connection_id)
    }
}

fn bind_relay_udp(addr: SocketAddr, dont_fragment: bool) -> io::Result<std::net::UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    // No SO_REUSEADDR/SO_REUSEPORT: AddrInUse is how the core learns a port
    // is taken (by another shard or another process).
    sock.bind(&addr.into())?;
    let fd = sock.as_raw_fd();
    if dont_fragment {
        if addr.is_ipv4() {
            setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)?;
        } else {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)?;
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?;
        }
    } else if addr.is_ipv4() {
        // Without DONT-FRAGMENT the relay must forward what the client sent,
        // letting the kernel fragment oversize datagrams.
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DONT)?;
    }
    // GRO lets a peer's burst arrive as one message; failure only costs speed.
    let _ = setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1);
    Ok(sock.into())
}

pub fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: fd is an open socket owned by the caller; the option value is a
    // c_int living for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

async fn relay_udp_task(shard: Rc<Shard>, id: RelayId, sock: Rc<UdpSocket>) {
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        for _ in 0..MAX_BATCHES_PER_WAKE {
            if !relay_batch(&shard, id, &sock) {
                break;
            }
        }
        tokio::task::yield_now().await;
    }
}

/// One batch from a relay socket; false when drained.
fn relay_batch(shard: &Rc<Shard>, id: RelayId, sock: &UdpSocket) -> bool {
    let mut rx = shard.rx.borrow_mut();
    let n = match rx.recv(&shard.recv_state, sock) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
        Err(e) => {
            tracing::debug!(error = %e, "relay socket receive error");
            return true;
        }
    };
    let now = Instant::now();
    let mut server = shard.server.borrow_mut();
    for i in 0..n {
        let meta = rx.meta[i];
        let slot = rx.slot_mut(i);
        let end = PEER_HEADROOM + meta.len.min(SLOT_DATA);
        for seg in segments(&meta) {
            let payload = PEER_HEADROOM + seg.start..PEER_HEADROOM + seg.end;
            // A GRO train has no gaps: the core's headroom for segment k is
            // the tail of segment k-1 (already sent), but its tailroom is the
            // head of segment k+1, so save and restore that.
            let tail_end = (payload.end + PEER_TAILROOM).min(end);
            let mut saved = [0u8; PEER_TAILROOM];
            let saved_len = tail_end.saturating_sub(payload.end);
            saved[..saved_len].copy_from_slice(&slot[payload.end..tail_end]);
            let action = server.handle_peer(now, id, meta.addr, slot, payload.clone());
            if let Action::ToClient { tuple, range } = action {
                if let Some(out) = slot.get(range) {
                    shard.send_to_client(&tuple, out);
                }
            }
            slot[payload.end..tail_end].copy_from_slice(&saved[..saved_len]);
        }
    }
    shard.drain_events(&mut server);
    drop(server);
    drop(rx);
    shard.flush_tx();
    true
}
