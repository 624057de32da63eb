//! Stream clients (TCP and TLS): accept, frame, feed the core, and write
//! back through a bounded per-connection queue so a slow reader never blocks
//! the shard.
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Notify;
use tracing::Instrument;

use super::shard::{Cmd, Shard};
use crate::stun::{self, Kind};
use crate::turn::server::shard_of_connection_id;
use crate::turn::{Action, FiveTuple, Transport};

/// Bytes a connection may have waiting to be written; past it, whole frames
/// are dropped (the datagram semantics TURN clients already cope with).
pub const MAX_QUEUE: usize = 256 * 1024;
/// The largest frame: a STUN header plus the largest 4-aligned length, or a
/// ChannelData header plus 64 KiB of padded data.
const MAX_FRAME: usize = stun::HEADER_LEN + 65532 + 16;
const INITIAL_READ_BUF: usize = 2048;
/// Most bytes moved from the queue into one write.
const WRITE_CHUNK: usize = 64 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Tcp,
    Tls,
}

/// The shard-visible side of a stream client: its send queue.
pub struct Conn {
    queue: RefCell<VecDeque<u8>>,
    notify: Notify,
    bound: Cell<Option<u32>>,
}

impl Conn {
    fn new() -> Self {
        Conn {
            queue: RefCell::new(VecDeque::new()),
            notify: Notify::new(),
            bound: Cell::new(None),
        }
    }

    /// Queues one message; false (and nothing queued) when it does not fit.
    /// ChannelData over a stream is padded to 4 bytes (RFC 8656 §12.5).
    pub fn queue_frame(&self, data: &[u8]) -> bool {
        let pad = if stun::classify(data) == Kind::ChannelData {
            (4 - data.len() % 4) % 4
        } else {
            0
        };
        let mut q = self.queue.borrow_mut();
        if q.len() + data.len() + pad > MAX_QUEUE {
            return false;
        }
        q.extend(data);
        q.extend(&[0u8; 3][..pad]);
        drop(q);
        self.notify.notify_one();
        true
    }

    /// RFC 6062: after what is queued (the ConnectionBind success response),
    /// this connection becomes a raw pipe to peer connection `connection_id`.
    pub fn bind(&self, connection_id: u32) {
        self.bound.set(Some(connection_id));
        self.notify.notify_one();
    }

    /// Moves up to [`WRITE_CHUNK`] queued bytes into `out`.
    fn take(&self, out: &mut Vec<u8>) {
        let mut q = self.queue.borrow_mut();
        let n = q.len().min(WRITE_CHUNK);
        out.extend(q.drain(..n));
    }
}

/// A client stream that can move to another shard (RFC 6062 data
/// connections that land on the wrong one).
pub enum Handoff {
    Tcp(std::net::TcpStream),
    /// The plaintext side of a TLS connection that stays on the shard that
    /// terminated it and is bridged over a socket pair.
    Unix(std::os::unix::net::UnixStream),
}

pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + 'static {
    fn handoff(self, shard: &Rc<Shard>) -> io::Result<Handoff>;
}

impl ClientStream for TcpStream {
    fn handoff(self, _: &Rc<Shard>) -> io::Result<Handoff> {
        Ok(Handoff::Tcp(self.into_std()?))
    }
}

impl ClientStream for UnixStream {
    fn handoff(self, _: &Rc<Shard>) -> io::Result<Handoff> {
        Ok(Handoff::Unix(self.into_std()?))
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn handoff(mut self, _: &Rc<Shard>) -> io::Result<Handoff> {
        let (here, there) = std::os::unix::net::UnixStream::pair()?;
        here.set_nonblocking(true)?;
        there.set_nonblocking(true)?;
        let mut here = UnixStream::from_std(here)?;
        tokio::task::spawn_local(async move {
            let _ = tokio::io::copy_bidirectional(&mut self, &mut here).await;
        });
        Ok(Handoff::Unix(there))
    }
}

/// Keeps the shard's count of live stream connections.
struct Live(Rc<Shard>);

impl Live {
    fn new(shard: &Rc<Shard>) -> Self {
        shard.counters.live_conns.set(shard.counters.live_conns.get() + 1);
        Live(shard.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let c = &self.0.counters.live_conns;
        c.set(c.get().saturating_sub(1));
    }
}

pub async fn accept_task(shard: Rc<Shard>, listener: TcpListener, kind: StreamKind) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shard.counters.live_conns.get() >= shard.max_conns {
            shard.counters.conns_refused.set(shard.counters.conns_refused.get() + 1);
            continue;
        }
        let Ok(server) = stream.local_addr() else { continue };
        let _ = stream.set_nodelay(true);
        let live = Live::new(&shard);
        let span = tracing::debug_span!("conn", %client);
        match kind {
            StreamKind::Tcp => {
                let tuple = FiveTuple {
                    transport: Transport::Tcp,
                    client,
                    server,
                };
                tokio::task::spawn_local(
                    conn_task(shard.clone(), live, stream, tuple, Vec::new(), true).instrument(span),
                );
            }
            StreamKind::Tls => {
                let Some(acceptor) = shard.tls.clone() else { continue };
                let shard = shard.clone();
                let tuple = FiveTuple {
                    transport: Transport::Tls,
                    client,
                    server,
                };
                tokio::task::spawn_local(
                    async move {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => conn_task(shard, live, tls, tuple, Vec::new(), true).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }
}

/// Takes over a data connection another shard received.
pub fn adopt(shard: &Rc<Shard>, stream: Handoff, tuple: FiveTuple, pending: Vec<u8>) {
    let live = Live::new(shard);
    let span = tracing::debug_span!("conn", client = %tuple.client);
    let r = match stream {
        Handoff::Tcp(s) => TcpStream::from_std(s).map(|s| {
            tokio::task::spawn_local(conn_task(shard.clone(), live, s, tuple, pending, false).instrument(span));
        }),
        Handoff::Unix(s) => UnixStream::from_std(s).map(|s| {
            tokio::task::spawn_local(conn_task(shard.clone(), live, s, tuple, pending, false).instrument(span));
        }),
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot adopt a data connection");
    }
}

/// The CONNECTION-ID of a ConnectionBind request, when `frame` is one.
fn connection_bind_id(frame: &[u8]) -> Option<u32> {
    const CONNECTION_BIND_REQUEST: u16 = 0x000b;
    const CONNECTION_ID: u16 = 0x002a;
    if frame.len() < stun::HEADER_LEN || u16::from_be_bytes([frame[0], frame[1]]) != CONNECTION_BIND_REQUEST {
        return None;
    }
    let mut at = stun::HEADER_LEN;
    while at + 4 <= frame.len() {
        let ty = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let len = u16::from_be_bytes([frame[at + 2], frame[at + 3]]) as usize;
        let value = frame.get(at + 4..at + 4 + len)?;
        if ty == CONNECTION_ID && len == 4 {
            return Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

enum End {
    /// EOF, error, or an unframeable byte stream.
    Closed,
    /// ConnectionBind succeeded: splice to this peer connection.
    Bound(u32),
    /// Handed to the shard owning the CONNECTION-ID.
    Moved,
}

async fn conn_task<S: ClientStream>(
    shard: Rc<Shard>,
    live: Live,
    stream: S,
    tuple: FiveTuple,
    mut buf: Vec<u8>,
    may_move: bool,
) {
    let conn = Rc::new(Conn::new());
    shard.conns.borrow_mut().insert(tuple, conn.clone());
    let mut start = 0;
    let mut filled = buf.len();
    buf.resize(filled.max(INITIAL_READ_BUF), 0);
    let mut first = may_move;
    let mut out: Vec<u8> = Vec::new();
    let mut out_pos = 0;
    let (mut rd, mut wr) = tokio::io::split(stream);

    let end = 'conn: loop {
        // Everything already read, one frame at a time.
        loop {
            let len = match stun::stream_frame_len(&buf[start..filled]) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "unframeable stream, closing");
                    break 'conn End::Closed;
                }
            };
            let frame = &buf[start..start + len];
            if std::mem::take(&mut first) {
                if let Some(owner) = connection_bind_id(frame).map(shard_of_connection_id) {
                    let owner = owner as usize;
                    if owner != shard.index && owner < shard.shared.cmds.len() {
                        break 'conn End::Moved;
                    }
                }
            }
            handle_frame(&shard, &conn, &tuple, frame);
            start += len;
            if let Some(id) = conn.bound.get() {
                break 'conn End::Bound(id);
            }
        }
        if start > 0 {
            buf.copy_within(start..filled, 0);
            filled -= start;
            start = 0;
        }
        if filled == buf.len() {
            if buf.len() >= MAX_FRAME {
                break End::Closed;
            }
            buf.resize((buf.len() * 2).min(MAX_FRAME), 0);
        }
        if let Some(id) = conn.bound.get() {
            break End::Bound(id);
        }
        if out_pos == out.len() {
            out.clear();
            out_pos = 0;
            conn.take(&mut out);
        }
        tokio::select! {
            r = rd.read(&mut buf[filled..]) => match r {
                Ok(0) | Err(_) => break End::Closed,
                Ok(n) => filled += n,
            },
            w = write_some(&mut wr, &out[out_pos..]), if out_pos < out.len() => match w {
                Ok(n) => out_pos += n,
                Err(_) => break End::Closed,
            },
            _ = conn.notify.notified(), if out_pos == out.len() => {}
        }
    };

    shard.conns.borrow_mut().remove(&tuple);
    match end {
        End::Closed => {
            shard.with_server(|server, io| server.handle_client_closed(Instant::now(), &tuple, io));
        }
        End::Moved => {
            let owner = connection_bind_id(&buf[start..filled])
                .map(shard_of_connection_id)
                .unwrap_or(0) as usize;
            let pending = buf[start..filled].to_vec();
            let stream = rd.unsplit(wr);
            drop(live);
            match stream.handoff(&shard) {
                Ok(stream) => {
                    tracing::debug!(owner, "ConnectionBind for another shard, handing the connection over");
                    let _ = shard.shared.cmds[owner].send(Cmd::Adopt { stream, tuple, pending });
                }
                Err(e) => tracing::debug!(error = %e, "handoff failed"),
            }
        }
        End::Bound(id) => {
            let mut stream = rd.unsplit(wr);
            // The ConnectionBind success response and anything queued before
            // it go out before the first relayed byte.
            let mut flushed = stream.write_all(&out[out_pos..]).await.is_ok();
            while flushed && !conn.queue.borrow().is_empty() {
                out.clear();
                conn.take(&mut out);
                flushed = stream.write_all(&out).await.is_ok();
            }
            let flushed = flushed && stream.flush().await.is_ok();
            let early = buf[start..filled].to_vec();
            if flushed {
                super::tcp_relay::splice(&shard, stream, id, early).await;
            } else {
                super::tcp_relay::tcp_close(&shard, id);
                shard.with_server(|server, _| server.handle_tcp_closed(id));
            }
            drop(live);
        }
    }
}

async fn write_some<W: AsyncWrite + Unpin>(wr: &mut W, data: &[u8]) -> io::Result<usize> {
    let n = wr.write(data).await?;
    if n == data.len() {
        // TLS buffers records until flushed.
        wr.flush().await?;
    }
    if n == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(n)
}

fn handle_frame(shard: &Rc<Shard>, conn: &Conn, tuple: &FiveTuple, frame: &[u8]) {
    let mut reply = shard.reply.borrow_mut();
    shard.with_server(
        |server, io| match server.handle_client(Instant::now(), tuple, frame, &mut reply, io) {
            Action::Nothing => {}
            Action::Reply(n) => {
                if !reply.get(..n).is_some_and(|r| conn.queue_frame(r)) {
                    shard.count_drop();
                }
            }
            Action::ToPeer { relay, peer, range } => {
                if let Some(out) = frame.get(range) {
                    shard.send_to_peer(relay, peer, out);
                }
            }
            Action::ToClient { tuple, range } => {
                if let Some(out) = frame.get(range) {
                    shard.send_to_client(&tuple, out);
                }
            }
        },
    );
}
