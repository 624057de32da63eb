//! Batched UDP: `recvmmsg`+GRO receive buffers shared by a shard, the
//! listener loop, and a transmit batch that coalesces same-destination runs
//! into GSO sends.
use std::cell::Cell;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::shard::Shard;
use crate::turn::server::{PEER_HEADROOM, PEER_TAILROOM};
use crate::turn::{Action, FiveTuple, Transport};

/// Largest datagram (or GRO-coalesced train of datagrams) the kernel can hand
/// us in one message. GRO trains can reach 64 KiB and are truncated, not
/// split, when the buffer is smaller, so every slot must hold that much.
pub const SLOT_DATA: usize = 65536;
/// A slot: headroom for the Data-indication header the core writes in front
/// of a peer payload, the data, and tailroom for padding and FINGERPRINT.
pub const SLOT: usize = PEER_HEADROOM + SLOT_DATA + PEER_TAILROOM;
/// Batches drained per readiness event before yielding, so one busy socket
/// cannot starve the rest of the shard.
const MAX_BATCHES_PER_WAKE: usize = 8;

/// The shard's receive buffers: one slot per message of a `recvmmsg` batch,
/// allocated once and shared by the listener and every relay socket of the
/// shard (they run one at a time on the shard's thread).
pub struct RecvBufs {
    mem: Box<[u8]>,
    pub meta: [RecvMeta; BATCH_SIZE],
}

impl RecvBufs {
    pub fn new() -> Self {
        RecvBufs {
            mem: vec![0u8; SLOT * BATCH_SIZE].into_boxed_slice(),
            meta: [RecvMeta::default(); BATCH_SIZE],
        }
    }

    /// Receives one batch from `sock`. `Ok(n)`: `meta[..n]` are filled, message
    /// `i` starts at `slot(i)[PEER_HEADROOM..]`.
    pub fn recv(&mut self, state: &UdpSocketState, sock: &UdpSocket) -> io::Result<usize> {
        let mut chunks = self.mem.chunks_mut(SLOT);
        let mut iov: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
            let chunk = chunks.next().expect("RecvBufs holds BATCH_SIZE slots");
            IoSliceMut::new(&mut chunk[PEER_HEADROOM..PEER_HEADROOM + SLOT_DATA])
        });
        let meta = &mut self.meta;
        sock.try_io(Interest::READABLE, || state.recv(sock.into(), &mut iov, meta))
    }

    /// Slot `i` of the batch, headroom and tailroom included.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.mem[i * SLOT..(i + 1) * SLOT]
    }

    pub fn split(&mut self, i: usize) -> (&RecvMeta, &mut [u8]) {
        (&self.meta[i], &mut self.mem[i * SLOT..(i + 1) * SLOT])
    }
}

/// The segments of one received message: GRO packs several datagrams of
/// `stride` bytes (the last may be shorter) back to back.
pub fn segments(meta: &RecvMeta) -> impl Iterator<Item = std::ops::Range<usize>> {
    let len = meta.len.min(SLOT_DATA);
    let stride = if meta.stride == 0 { len.max(1) } else { meta.stride };
    (0..len).step_by(stride).map(move |off| off..(off + stride).min(len))
}

/// A client-facing UDP listener of one shard.
pub struct UdpListener {
    pub sock: UdpSocket,
    pub state: UdpSocketState,
    pub local: SocketAddr,
}

impl UdpListener {
    pub fn new(sock: std::net::UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&sock).into())?;
        let local = sock.local_addr()?;
        let sock = UdpSocket::from_std(sock)?;
        Ok(UdpListener { sock, state, local })
    }

    /// Whether replies for a client that reached `server` leave through this
    /// listener, and with which source address (wildcard listeners must name
    /// it, or the kernel picks one the client never talked to).
    pub fn serves(&self, server: &SocketAddr) -> Option<Option<IpAddr>> {
        if self.local == *server {
            Some(None)
        } else if self.local.ip().is_unspecified()
            && self.local.port() == server.port()
            && self.local.is_ipv4() == server.is_ipv4()
        {
            Some(Some(server.ip()))
        } else {
            None
        }
    }
}

struct TxItem {
    listener: u16,
    dest: SocketAddr,
    src: Option<IpAddr>,
    start: u32,
    len: u32,
}

/// Datagrams waiting to go out through the shard's listeners, stored back to
/// back so a run to one destination is already a GSO super-buffer.
pub struct TxBatch {
    buf: Vec<u8>,
    items: Vec<TxItem>,
}

const TX_BYTES: usize = 256 * 1024;
const TX_ITEMS: usize = 512;
/// The kernel refuses GSO sends above 64 KiB in total.
const GSO_MAX_BYTES: usize = 65000;

impl TxBatch {
    pub fn new() -> Self {
        TxBatch {
            buf: Vec::with_capacity(TX_BYTES),
            items: Vec::with_capacity(TX_ITEMS),
        }
    }

    pub fn is_full_for(&self, len: usize) -> bool {
        self.items.len() >= TX_ITEMS || self.buf.len() + len > TX_BYTES
    }

    pub fn push(&mut self, listener: usize, dest: SocketAddr, src: Option<IpAddr>, data: &[u8]) {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(data);
        self.items.push(TxItem {
            listener: listener as u16,
            dest,
            src,
            start,
            len: data.len() as u32,
        });
    }

    /// Sends everything queued; what the kernel refuses is dropped and counted.
    pub fn flush(&mut self, listeners: &[UdpListener], dropped: &Cell<u64>) {
        let mut i = 0;
        while i < self.items.len() {
            let first = &self.items[i];
            let Some(l) = listeners.get(first.listener as usize) else {
                i += 1;
                continue;
            };
            let max_segs = l.state.max_gso_segments().max(1);
            let seg = first.len as usize;
            let mut j = i + 1;
            let mut total = seg;
            while j < self.items.len() && j - i < max_segs && seg > 0 {
                let it = &self.items[j];
                if it.listener != first.listener
                    || it.dest != first.dest
                    || it.src != first.src
                    || it.len as usize > seg
                    || total + it.len as usize > GSO_MAX_BYTES
                {
                    break;
                }
                total += it.len as usize;
                j += 1;
                // Only the last segment of a GSO send may be shorter.
                if (it.len as usize) < seg {
                    break;
                }
            }
            let start = first.start as usize;
            let contents = &self.buf[start..start + total];
            let segment_size = if j - i > 1 { Some(seg) } else { None };
            let t = Transmit {
                destination: first.dest,
                ecn: None,
                contents,
                segment_size,
                src_ip: first.src,
            };
            match l.state.try_send((&l.sock).into(), &t) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dropped.set(dropped.get() + (j - i) as u64),
                Err(e) if segment_size.is_some() => {
                    // Some NICs reject GSO (EIO); quinn-udp then disables it
                    // on this socket, and this run goes out one by one.
                    tracing::debug!(error = %e, "GSO send failed, retrying unsegmented");
                    for it in &self.items[i..j] {
                        let s = it.start as usize;
                        let t = Transmit {
                            destination: it.dest,
                            ecn: None,
                            contents: &self.buf[s..s + it.len as usize],
                            segment_size: None,
                            src_ip: it.src,
                        };
                        if l.state.try_send((&l.sock).into(), &t).is_err() {
                            dropped.set(dropped.get() + 1);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, dest = %first.dest, "send to client failed");
                    dropped.set(dropped.get() + 1);
                }
            }
            i = j;
        }
        self.items.clear();
        self.buf.clear();
    }
}

/// Reads datagrams from client listener `li` forever.
pub async fn listener_task(shard: Rc<Shard>, li: usize) {
    loop {
        if let Err(e) = shard.udp[li].sock.readable().await {
            tracing::error!(error = %e, "UDP listener failed");
            return;
        }
        for _ in 0..MAX_BATCHES_PER_WAKE {
            if !listener_batch(&shard, li) {
                break;
            }
        }
        tokio::task::yield_now().await;
    }
}

/// One `recvmmsg` batch from a listener; false when the socket is drained.
fn listener_batch(shard: &Rc<Shard>, li: usize) -> bool {
    let l = &shard.udp[li];
    let mut rx = shard.rx.borrow_mut();
    let n = match rx.recv(&l.state, &l.sock) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
        Err(e) => {
            // ICMP errors surface here as ECONNREFUSED and the like; they say
            // nothing about the listener itself.
            tracing::debug!(error = %e, "UDP listener receive error");
            return true;
        }
    };
    let now = Instant::now();
    let mut reply = shard.reply.borrow_mut();
    let mut server = shard.server.borrow_mut();
    let mut io = shard.relay_io();
    for i in 0..n {
        let (meta, slot) = rx.split(i);
        let server_addr = match (l.local.ip().is_unspecified(), meta.dst_ip) {
            (true, Some(ip)) => SocketAddr::new(ip, l.local.port()),
            _ => l.local,
        };
        let tuple = FiveTuple {
            transport: Transport::Udp,
            client: meta.addr,
            server: server_addr,
        };
        let src = if l.local.ip().is_unspecified() {
            meta.dst_ip
        } else {
            None
        };
        let data = &slot[PEER_HEADROOM..PEER_HEADROOM + SLOT_DATA];
        for seg in segments(meta) {
            let packet = &data[seg];
            match server.handle_client(now, &tuple, packet, &mut reply, &mut io) {
                Action::Nothing => {}
                Action::Reply(len) => {
                    let Some(out) = reply.get(..len) else { continue };
                    shard.tx_push(li, tuple.client, src, out);
                }
                Action::ToPeer { relay, peer, range } => {
                    if let Some(out) = packet.get(range) {
                        shard.send_to_peer(relay, peer, out);
                    }
                }
                Action::ToClient { tuple, range } => {
                    if let Some(out) = packet.get(range) {
                        shard.send_to_client(&tuple, out);
                    }
                }
            }
        }
    }
    shard.drain_events(&mut server);
    drop(server);
    shard.flush_tx();
    true
}
