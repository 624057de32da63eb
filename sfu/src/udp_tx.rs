//! The shard's UDP send batch: datagrams the router produced since the last
//! flush, sent with as few system calls as the kernel allows.
//!
//! A fan-out sends each packet to a different subscriber, so a batch is
//! mostly single datagrams to many destinations: one `sendmmsg(2)` carries
//! up to [`MAX_MSGS`] of them. Consecutive datagrams to one destination
//! (several packets of a frame to one subscriber, which the router drains
//! peer by peer) form a GSO run: one message with a `UDP_SEGMENT` control
//! message, segmented by the kernel. All buffers are allocated once.
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Largest batch in bytes and datagrams before the shard flushes; bursts
/// (a keyframe to many subscribers) grow past it rather than drop.
const TX_BYTES: usize = 256 * 1024;
const TX_ITEMS: usize = 512;
/// The kernel refuses GSO sends above 64 KiB in total.
const GSO_MAX_BYTES: usize = 65000;
/// Messages per `sendmmsg` call (the kernel's `UIO_MAXIOV`).
const MAX_MSGS: usize = 1024;

struct Item {
    dest: SocketAddr,
    start: u32,
    len: u32,
}

/// Room for one `UDP_SEGMENT` control message (a `u16`), aligned for
/// `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; 32]);

/// Counters of what a batch could not send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Datagrams dropped because the socket buffer was full.
    pub would_block: u64,
    /// Datagrams dropped on another send error.
    pub failed: u64,
}

pub struct TxBatch {
    buf: Vec<u8>,
    items: Vec<Item>,
    // Scratch for the system call, reused across flushes.
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<Cmsg>,
    /// Whether GSO may be used (cleared if the kernel rejects it once).
    gso: bool,
    max_segments: usize,
    pub stats: TxStats,
}

// The raw pointers in the scratch vectors only point into the batch's own
// buffers during a flush; between flushes they are dead values.
unsafe impl Send for TxBatch {}

impl TxBatch {
    /// `max_segments`: how many datagrams one GSO send may carry (1 = no
    /// GSO), as quinn-udp probed it for the socket.
    pub fn new(max_segments: usize) -> Self {
        TxBatch {
            buf: Vec::with_capacity(TX_BYTES),
            items: Vec::with_capacity(TX_ITEMS),
            hdrs: Vec::with_capacity(TX_ITEMS),
            iovs: Vec::with_capacity(TX_ITEMS),
            addrs: Vec::with_capacity(TX_ITEMS),
            cmsgs: Vec::with_capacity(TX_ITEMS),
            gso: max_segments > 1,
            max_segments: max_segments.clamp(1, 64),
            stats: TxStats::default(),
        }
    }

    pub fn push(&mut self, dest: SocketAddr, data: &[u8]) {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(data);
        self.items.push(Item {
            dest,
            start,
            len: data.len() as u32,
        });
    }

    /// The batch is as large as a flush is meant to carry.
    pub fn is_full(&self) -> bool {
        self.items.len() >= TX_ITEMS || self.buf.len() >= TX_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sends everything queued. Datagrams the kernel refuses are counted
    /// and dropped (UDP media: a late retry would only add delay).
    pub fn flush(&mut self, sock: &impl AsRawFd) {
        let fd = sock.as_raw_fd();
        let mut i = 0;
        while i < self.items.len() {
            let end = self.build(i);
            let sent = self.send(fd);
            i = self.account(i, end, sent, fd);
        }
        self.items.clear();
        self.buf.clear();
    }

    /// Fills the scratch with messages for items from `from` on (at most
    /// [`MAX_MSGS`]); returns the index past the last item covered.
    fn build(&mut self, from: usize) -> usize {
        self.hdrs.clear();
        self.iovs.clear();
        self.addrs.clear();
        self.cmsgs.clear();
        let mut i = from;
        while i < self.items.len() && self.hdrs.len() < MAX_MSGS {
            let j = self.run_end(i);
            let first = &self.items[i];
            let total: usize = self.items[i..j].iter().map(|it| it.len as usize).sum();
            self.iovs.push(libc::iovec {
                iov_base: self.buf[first.start as usize..].as_ptr() as *mut libc::c_void,
                iov_len: total,
            });
            self.addrs.push(unsafe { mem::zeroed() });
            self.cmsgs.push(Cmsg([0; 32]));
            let segment = (j - i > 1).then_some(first.len as u16);
            let dest = first.dest;
            let k = self.addrs.len() - 1;
            let name_len = write_addr(&mut self.addrs[k], dest);
            // Pointers are patched in below, once the vectors stop growing.
            let mut hdr: libc::mmsghdr = unsafe { mem::zeroed() };
            hdr.msg_hdr.msg_namelen = name_len;
            if let Some(seg) = segment {
                hdr.msg_hdr.msg_controllen = write_segment(&mut self.cmsgs[k], seg) as _;
            }
            self.hdrs.push(hdr);
            i = j;
        }
        for (k, hdr) in self.hdrs.iter_mut().enumerate() {
            hdr.msg_hdr.msg_name = &mut self.addrs[k] as *mut _ as *mut libc::c_void;
            hdr.msg_hdr.msg_iov = &mut self.iovs[k];
            hdr.msg_hdr.msg_iovlen = 1;
            if hdr.msg_hdr.msg_controllen > 0 {
                hdr.msg_hdr.msg_control = self.cmsgs[k].0.as_mut_ptr() as *mut libc::c_void;
            }
        }
        i
    }

    /// End of the GSO run starting at `i`: same destination, same size
    /// (only the last may be shorter), within the kernel's limits.
    fn run_end(&self, i: usize) -> usize {
        let first = &self.items[i];
        let seg = first.len as usize;
        let mut j = i + 1;
        if !self.gso || seg == 0 {
            return j;
        }
        let mut total = seg;
        while j < self.items.len() && j - i < self.max_segments {
            let it = &self.items[j];
            let len = it.len as usize;
            if it.dest != first.dest || len > seg || len == 0 || total + len > GSO_MAX_BYTES {
                break;
            }
            total += len;
            j += 1;
            if len < seg {
                break;
            }
        }
        j
    }

    fn send(&mut self, fd: i32) -> io::Result<usize> {
        loop {
            // SAFETY: every header points into this batch's buffers, which
            // live and stay unmoved until the call returns.
            let n = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), self.hdrs.len() as u32, 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Handles the outcome of one `sendmmsg` over items `from..end`;
    /// returns the next item to send.
    fn account(&mut self, from: usize, end: usize, sent: io::Result<usize>, fd: i32) -> usize {
        // Walk the messages to find the item the kernel stopped at.
        let mut i = from;
        let mut msgs = match &sent {
            Ok(n) => *n,
            Err(_) => 0,
        };
        while msgs > 0 && i < end {
            i = self.run_end(i);
            msgs -= 1;
        }
        if i >= end {
            return end;
        }
        // The message at `i` failed (or the call stopped early and the
        // retry will report why): find out by sending it alone.
        let j = self.run_end(i);
        let err = match sent {
            Err(e) => e,
            Ok(_) => match self.send_one(fd, i) {
                Ok(()) => return j,
                Err(e) => e,
            },
        };
        if err.kind() == io::ErrorKind::WouldBlock {
            // The socket buffer is full: the rest of this batch would fail
            // the same way.
            self.stats.would_block += (self.items.len() - i) as u64;
            return self.items.len();
        }
        if j - i > 1 && self.gso {
            // Some paths reject GSO (EIO, EINVAL): stop using it and send
            // this run again one datagram at a time.
            tracing::debug!(error = %err, "GSO send failed, disabling GSO");
            self.gso = false;
            return i;
        }
        tracing::debug!(error = %err, dest = %self.items[i].dest, "send failed");
        self.stats.failed += (j - i) as u64;
        j
    }

    /// Sends the run at `i` alone.
    fn send_one(&mut self, fd: i32, i: usize) -> io::Result<()> {
        self.build(i);
        self.hdrs.truncate(1);
        match self.send(fd)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            _ => Ok(()),
        }
    }
}

/// Writes `addr` as a C socket address; returns its length.
fn write_addr(out: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Writes a `UDP_SEGMENT` control message; returns the control length.
fn write_segment(out: &mut Cmsg, segment: u16) -> usize {
    let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
    debug_assert!(space <= out.0.len());
    // SAFETY: `out` is aligned for cmsghdr and holds `space` bytes.
    unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_control = out.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment);
    }
    space
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    fn receivers(n: usize) -> Vec<UdpSocket> {
        (0..n)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect()
    }

    /// Reads what `sock` received until `want` datagrams came or a deadline.
    fn collect(sock: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < want && Instant::now() < deadline {
            match sock.recv(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        got
    }

    fn payload(dest: usize, seq: usize, len: usize) -> Vec<u8> {
        let mut v = vec![(dest * 31 + seq) as u8; len];
        v[0] = dest as u8;
        v[1] = seq as u8;
        v
    }

    #[test]
    fn a_batch_reaches_every_destination_in_order_with_and_without_gso() {
        for segments in [1, 64] {
            let rx = receivers(5);
            let tx_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut tx = TxBatch::new(segments);
            // Interleaved single datagrams, then runs to one destination
            // (equal sizes, a shorter last one), then a size that grows
            // (must start a new run).
            let mut sent: Vec<Vec<Vec<u8>>> = vec![Vec::new(); rx.len()];
            let mut push = |tx: &mut TxBatch, d: usize, len: usize| {
                let seq = sent[d].len();
                let p = payload(d, seq, len);
                tx.push(rx[d].local_addr().unwrap(), &p);
                sent[d].push(p);
            };
            for d in 0..5 {
                push(&mut tx, d, 100 + d);
            }
            for d in 0..5 {
                for _ in 0..4 {
                    push(&mut tx, d, 1000);
                }
                push(&mut tx, d, 300);
                push(&mut tx, d, 1200);
            }
            tx.flush(&tx_sock);
            assert!(tx.is_empty());
            assert_eq!(tx.stats, TxStats::default());
            for (d, sock) in rx.iter().enumerate() {
                assert_eq!(
                    collect(sock, sent[d].len()),
                    sent[d],
                    "destination {d}, segments {segments}"
                );
            }
        }
    }

    #[test]
    fn more_messages_than_one_call_carries_all_arrive() {
        let rx = receivers(12);
        let tx_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut tx = TxBatch::new(64);
        // Alternating destinations: every datagram is its own message.
        let n = MAX_MSGS + 100;
        let mut sent: Vec<Vec<Vec<u8>>> = vec![Vec::new(); rx.len()];
        for s in 0..n {
            let d = s % rx.len();
            let p = payload(d, sent[d].len(), 20);
            tx.push(rx[d].local_addr().unwrap(), &p);
            sent[d].push(p);
        }
        tx.flush(&tx_sock);
        assert_eq!(tx.stats, TxStats::default());
        for (d, sock) in rx.iter().enumerate() {
            assert_eq!(collect(sock, sent[d].len()), sent[d], "destination {d}");
        }
    }
}
