//! ICE over TCP: RFC 4571 framing, the acceptor, and each shard's table of
//! connections.
//!
//! For networks that block UDP, every peer also advertises a passive TCP
//! host candidate (RFC 6544) on the TCP port. Each shard listens on it with
//! `SO_REUSEPORT`, so the kernel picks the shard that accepts, not the one
//! that owns the peer. The client's first frame on a new connection is an
//! ICE check whose USERNAME starts with our ufrag, and the ufrag's shard tag
//! names the owner, so the acceptor reads that one frame and hands the
//! socket (and what it read) to the owning shard. There a reader task cuts
//! the byte stream into frames and passes them, in chunks of whole frames,
//! to the shard loop, which feeds them to the router like datagrams
//! (`Protocol::Tcp`). The chunks' buffers go back to the reader to be
//! reused, so a steady connection allocates nothing per packet.
//!
//! What str0m sends over TCP is framed into the connection's bounded output
//! buffer and written without waiting: a connection that cannot keep up
//! loses whole packets, as a full UDP socket would, instead of stalling the
//! shard and every other participant on it.
use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::mux::{shard_of_ufrag, stun_server_ufrag};
use crate::shard::Command;
use crate::tcp_limits::{ConnCap, ConnPermit};

/// Largest frame: the length prefix is 16 bits.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Bytes queued per connection before new packets are dropped: half a
/// second of a 4 Mbit/s subscriber. More would only add delay to media
/// that is late already.
const OUT_LIMIT: usize = 256 * 1024;

/// How long a new connection may take to send its first check; a client
/// that connects and says nothing is not kept.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Free space a reader keeps in its buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Chunks in flight from all of a shard's readers to its loop. Readers wait
/// when it is full, which is TCP's own flow control towards the client.
pub const INBOX: usize = 256;

/// The length of the prefix of `buf` made of whole frames.
pub fn whole_frames(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(hdr) = buf.get(at..at + 2) {
        let len = usize::from(u16::from_be_bytes([hdr[0], hdr[1]]));
        if buf.len() - at - 2 < len {
            break;
        }
        at += 2 + len;
    }
    at
}

/// The frames (without their length prefix) at the start of `buf`; stops
/// at a partial one.
pub fn frames(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let hdr = rest.get(..2)?;
        let len = usize::from(u16::from_be_bytes([hdr[0], hdr[1]]));
        let frame = rest.get(2..2 + len)?;
        rest = &rest[2 + len..];
        Some(frame)
    })
}

/// Appends `data` as one frame; `false` (and nothing appended) when it is
/// too long for the 16-bit prefix.
pub fn push_frame(out: &mut Vec<u8>, data: &[u8]) -> bool {
    let Ok(len) = u16::try_from(data.len()) else {
        return false;
    };
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    true
}

/// What reader tasks tell their shard loop. `id` tells a connection from
/// a later one that reuses its remote address.
pub enum TcpIn {
    /// Whole frames (with their prefixes) received on a connection.
    Frames { id: u64, remote: SocketAddr, data: Vec<u8> },
    /// The connection ended (EOF or error).
    Closed { id: u64, remote: SocketAddr },
}

/// Accepts on one shard's share of the TCP port, forever. Each connection
/// is identified in a task of its own, so a slow client delays nobody.
/// Beyond `cap`'s limit a connection is closed at once.
pub async fn accept_loop(listener: TcpListener, shards: Arc<[mpsc::UnboundedSender<Command>]>, cap: Arc<ConnCap>) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off, do not spin.
                tracing::debug!(error = %e, "ICE-TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = cap.try_acquire() else {
            tracing::debug!(%remote, "ICE-TCP connection refused: too many open");
            drop(stream);
            continue;
        };
        let shards = shards.clone();
        tokio::spawn(async move {
            let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, first_check(stream)).await;
            let (shard, stream, buffered) = match first {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "ICE-TCP connection refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "ICE-TCP connection sent no check in time");
                    return;
                }
            };
            let Some(queue) = shards.get(shard) else {
                tracing::debug!(%remote, shard, "ICE-TCP check for a shard we do not have");
                return;
            };
            // Leaves this runtime's reactor; the owner registers it with its own.
            match stream.into_std() {
                Ok(stream) => {
                    let _ = queue.send(Command::TcpConn {
                        stream,
                        remote,
                        buffered,
                        permit,
                    });
                }
                Err(e) => tracing::debug!(%remote, error = %e, "ICE-TCP handover failed"),
            }
        });
    }
}

/// Reads a new connection's first frame, which must be an ICE check for
/// one of our ufrags, and returns the owning shard with everything read so
/// far (the check and whatever followed it).
async fn first_check(mut stream: TcpStream) -> io::Result<(usize, TcpStream, Vec<u8>)> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    while whole_frames(&buf) == 0 {
        // A frame is at most 2 + MAX_FRAME bytes, so this ends.
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    let shard = frames(&buf)
        .next()
        .and_then(stun_server_ufrag)
        .and_then(shard_of_ufrag)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "first frame is not an ICE check for us"))?;
    Ok((shard, stream, buf))
}

/// Cuts a connection's byte stream into whole frames for the shard loop.
async fn read_conn(
    id: u64,
    remote: SocketAddr,
    mut rd: OwnedReadHalf,
    mut buf: Vec<u8>,
    inbox: mpsc::Sender<TcpIn>,
    mut pool: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    loop {
        let whole = whole_frames(&buf);
        if whole > 0 {
            // A buffer the loop gave back, once the first few are in flight.
            let mut data = pool.try_recv().unwrap_or_default();
            data.clear();
            data.extend_from_slice(&buf[..whole]);
            // What stays is less than one frame.
            buf.drain(..whole);
            if inbox.send(TcpIn::Frames { id, remote, data }).await.is_err() {
                return;
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = inbox.send(TcpIn::Closed { id, remote }).await;
}

struct Conn {
    id: u64,
    /// When the mux last routed a frame of it to a live peer (or when it
    /// was adopted).
    last_valid: Instant,
    writer: OwnedWriteHalf,
    /// Framed packets not yet written.
    out: Vec<u8>,
    /// A write failed: nothing more is queued; the reader reports the end.
    broken: bool,
    /// Returns the reader's chunk buffers.
    recycle: mpsc::UnboundedSender<Vec<u8>>,
    /// Ends the reader task, which holds the socket's read half: the socket
    /// closes once both halves are gone.
    reader: AbortHandle,
    /// Its place under the connection cap, freed with it.
    permit: ConnPermit,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One shard's ICE-TCP connections, by remote address (what str0m names
/// as a transmit's destination). Owned by the shard loop, never shared.
pub struct TcpConns {
    conns: HashMap<SocketAddr, Conn>,
    /// Connections with bytes in `out`.
    pending: Vec<SocketAddr>,
    next_id: u64,
    inbox: mpsc::Sender<TcpIn>,
    /// See [`crate::tcp_limits::TcpLimits::idle_timeout`].
    idle_timeout: Duration,
    /// Packets dropped: unknown destination or full queue.
    pub dropped: u64,
}

impl TcpConns {
    pub fn new(inbox: mpsc::Sender<TcpIn>, idle_timeout: Duration) -> Self {
        TcpConns {
            conns: HashMap::new(),
            pending: Vec::new(),
            next_id: 0,
            inbox,
            idle_timeout,
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The connection `id` from `remote` carried a frame the mux routed to
    /// a live peer at `now`.
    pub fn touch(&mut self, id: u64, remote: SocketAddr, now: Instant) {
        if let Some(c) = self.conns.get_mut(&remote).filter(|c| c.id == id) {
            c.last_valid = now;
        }
    }

    /// Closes every connection idle for the timeout at `now` and appends
    /// their remote addresses to `closed` (the router forgets their tuples).
    /// Control rate: the shard calls it on a slow tick.
    pub fn expire(&mut self, now: Instant, closed: &mut Vec<SocketAddr>) {
        let timeout = self.idle_timeout;
        self.conns.retain(|remote, c| {
            let keep = now.saturating_duration_since(c.last_valid) < timeout;
            if !keep {
                tracing::debug!(%remote, "ICE-TCP connection closed: idle");
                c.permit.cap().count_idle_close();
                closed.push(*remote);
            }
            keep
        });
        self.pending.retain(|r| self.conns.contains_key(r));
    }

    /// Takes over a connection the acceptor handed to this shard: the
    /// writer stays here, a reader task starts with what was read already.
    /// Must run inside the shard's runtime.
    pub fn adopt(
        &mut self,
        now: Instant,
        stream: std::net::TcpStream,
        remote: SocketAddr,
        buffered: Vec<u8>,
        permit: ConnPermit,
    ) -> io::Result<u64> {
        let stream = TcpStream::from_std(stream)?;
        let (rd, writer) = stream.into_split();
        self.next_id += 1;
        let id = self.next_id;
        let (recycle, pool) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_conn(id, remote, rd, buffered, self.inbox.clone(), pool)).abort_handle();
        // A previous connection from the same address is over (the kernel
        // would not reuse the port otherwise); replacing it ends its reader.
        self.conns.insert(
            remote,
            Conn {
                id,
                last_valid: now,
                writer,
                out: Vec::new(),
                broken: false,
                recycle,
                reader,
                permit,
            },
        );
        Ok(id)
    }

    /// Whether `id` is the live connection from `remote`.
    pub fn is_current(&self, id: u64, remote: SocketAddr) -> bool {
        self.conns.get(&remote).is_some_and(|c| c.id == id)
    }

    /// Gives a chunk's buffer back to its reader.
    pub fn recycle(&mut self, id: u64, remote: SocketAddr, data: Vec<u8>) {
        if let Some(c) = self.conns.get(&remote).filter(|c| c.id == id) {
            let _ = c.recycle.send(data);
        }
    }

    /// Forgets a closed connection; `false` when it was replaced already.
    pub fn close(&mut self, id: u64, remote: SocketAddr) -> bool {
        if !self.is_current(id, remote) {
            return false;
        }
        self.conns.remove(&remote);
        true
    }

    /// Queues one packet for the connection from `dest`, framed. Dropped
    /// when there is no such connection or its queue is full.
    pub fn push(&mut self, dest: SocketAddr, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&dest) else {
            self.dropped += 1;
            return;
        };
        if c.broken || c.out.len() + 2 + data.len() > OUT_LIMIT {
            self.dropped += 1;
            return;
        }
        let was_empty = c.out.is_empty();
        if !push_frame(&mut c.out, data) {
            self.dropped += 1;
            return;
        }
        if was_empty {
            self.pending.push(dest);
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes what the kernel takes now. A partial write keeps the rest of
    /// the frame: dropping it would corrupt the stream.
    pub fn flush(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let done = match self.conns.get_mut(&self.pending[i]) {
                None => true,
                Some(c) => loop {
                    match c.writer.try_write(&c.out) {
                        Ok(n) if n == c.out.len() => {
                            c.out.clear();
                            break true;
                        }
                        Ok(0) => {
                            c.broken = true;
                            c.out.clear();
                            break true;
                        }
                        Ok(n) => {
                            c.out.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                        Err(e) => {
                            tracing::debug!(error = %e, "ICE-TCP write failed");
                            c.broken = true;
                            c.out.clear();
                            break true;
                        }
                    }
                },
            };
            if done {
                self.pending.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Ready when a connection with queued bytes can take more.
    pub async fn writable(&self) {
        poll_fn(|cx| {
            for remote in &self.pending {
                if let Some(c) = self.conns.get(remote) {
                    if c.writer.as_ref().poll_write_ready(cx).is_ready() {
                        return Poll::Ready(());
                    }
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp_limits::ConnCap;

    /// A loopback connection: (client end, server end as the acceptor hands
    /// it over, the client's address).
    fn pair() -> (std::net::TcpStream, std::net::TcpStream, SocketAddr) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, remote) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server, remote)
    }

    /// Whether the client end sees the server close within 10 s (EOF or
    /// reset), while the runtime runs (an aborted reader lets go of the
    /// socket there).
    async fn closed_by_server(client: &std::net::TcpStream) -> bool {
        use std::io::Read;
        client.set_nonblocking(true).unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 16];
        while Instant::now() < end {
            match (&*client).read(&mut buf) {
                Ok(0) => return true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return true,
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[test]
    fn idle_connections_close_at_the_timeout_and_free_their_permit() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (inbox, _rx) = mpsc::channel(INBOX);
            let mut conns = TcpConns::new(inbox, Duration::from_secs(30));
            let cap = ConnCap::new(8);
            let t0 = Instant::now();
            let (quiet, server, remote_q) = pair();
            conns
                .adopt(t0, server, remote_q, Vec::new(), cap.try_acquire().unwrap())
                .unwrap();
            let (busy, server, remote_b) = pair();
            let id_b = conns
                .adopt(t0, server, remote_b, Vec::new(), cap.try_acquire().unwrap())
                .unwrap();
            assert_eq!(cap.stats().open, 2);

            let mut closed = Vec::new();
            conns.expire(t0 + Duration::from_secs(29), &mut closed);
            assert!(closed.is_empty(), "nothing is idle before the timeout");
            // A routed frame keeps a connection alive.
            conns.touch(id_b, remote_b, t0 + Duration::from_secs(20));
            // A frame of another connection from another address does not.
            conns.touch(id_b + 100, remote_q, t0 + Duration::from_secs(20));
            conns.expire(t0 + Duration::from_secs(30), &mut closed);
            assert_eq!(closed, vec![remote_q]);
            assert_eq!(conns.len(), 1);
            assert!(closed_by_server(&quiet).await, "the idle connection is closed");
            assert_eq!(cap.stats().open, 1, "its place under the cap is free");
            assert_eq!(cap.stats().idle_closed, 1);

            closed.clear();
            conns.expire(t0 + Duration::from_secs(49), &mut closed);
            assert!(closed.is_empty(), "touched at 20 s: idle only from 50 s");
            conns.expire(t0 + Duration::from_secs(50), &mut closed);
            assert_eq!(closed, vec![remote_b]);
            assert!(closed_by_server(&busy).await);
            assert_eq!(cap.stats().open, 0);
            assert!(conns.is_empty());
        });
    }

    #[test]
    fn framing_round_trips_and_waits_for_whole_frames() {
        let mut out = Vec::new();
        assert!(push_frame(&mut out, b"stun"));
        assert!(push_frame(&mut out, b""));
        assert!(push_frame(&mut out, &[7u8; 300]));
        assert!(!push_frame(&mut out, &vec![0u8; MAX_FRAME + 1]));
        assert_eq!(out.len(), 2 + 4 + 2 + 2 + 300);
        assert_eq!(whole_frames(&out), out.len());
        let got: Vec<&[u8]> = frames(&out).collect();
        assert_eq!(got, vec![&b"stun"[..], &b""[..], &[7u8; 300][..]]);
        // Cut anywhere inside the last frame: only the first two are whole.
        for cut in 8..out.len() {
            assert_eq!(whole_frames(&out[..cut]), 8, "cut at {cut}");
            assert_eq!(frames(&out[..cut]).count(), 2);
        }
        assert_eq!(whole_frames(&out[..1]), 0);
        assert_eq!(whole_frames(&[]), 0);
    }
}
