//! One shard: a thread with a current-thread tokio runtime that owns a
//! [`Router`], its `SO_REUSEPORT` share of the media port and a command
//! queue from the control plane, and, with ICE-TCP on, its share of the TCP
//! port and the TCP connections of its peers ([`crate::tcp`]).
//!
//! A single task owns the router, so nothing is shared or locked: it waits
//! for the socket, a command, a chunk of TCP frames or the router's next
//! timer, handles whichever came, then flushes the datagrams the router
//! produced as one batch ([`crate::udp_tx`]: one `sendmmsg`, GSO for
//! same-destination runs) and the TCP bytes
//! to their connections. The TCP acceptor and readers are tasks of the same
//! thread that only pass bytes in.
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use str0m::media::Rid;
use str0m::net::Protocol;
use tokio::io::Interest;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use crate::mux::Route;
use crate::participant::Role;
use crate::router::{Limits, ParticipantId, ParticipantInfo, Router, SfuEvent, TrackId};
use crate::stats::{SfuStats, ShardCounters};
use crate::tcp::{accept_loop, frames, TcpConns, TcpIn, INBOX};
use crate::tcp_limits::{ConnCap, ConnPermit};

/// How often a shard looks for idle ICE-TCP connections (at most; a
/// shorter idle timeout is checked at its own period).
const IDLE_CHECK: Duration = Duration::from_secs(1);
use crate::udp_tx::TxBatch;
use crate::Error;

/// Largest datagram (or GRO train) one receive slot holds.
const SLOT: usize = 65536;
/// Receive batches handled per wake before the loop looks at timers and
/// commands again.
const MAX_BATCHES_PER_WAKE: usize = 8;

pub type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// Work for a shard, from the control plane or from another shard.
pub enum Command {
    Create {
        id: ParticipantId,
        room: String,
        reply: Reply<ParticipantInfo>,
    },
    Offer {
        id: ParticipantId,
        sdp: String,
        reply: Reply<String>,
    },
    Answer {
        id: ParticipantId,
        sdp: String,
        reply: Reply<()>,
    },
    Candidate {
        id: ParticipantId,
        role: Role,
        candidate: String,
        reply: Reply<()>,
    },
    Subscribe {
        subscriber: ParticipantId,
        track: TrackId,
        reply: Reply<()>,
    },
    Unsubscribe {
        subscriber: ParticipantId,
        track: TrackId,
        reply: Reply<()>,
    },
    Settings {
        subscriber: ParticipantId,
        track: TrackId,
        paused: bool,
        rid: Option<Rid>,
        reply: Reply<()>,
    },
    Unpublish {
        publisher: ParticipantId,
        track: TrackId,
        reply: Reply<()>,
    },
    Mute {
        publisher: ParticipantId,
        track: TrackId,
        muted: bool,
        reply: Reply<()>,
    },
    Layers {
        publisher: ParticipantId,
        track: TrackId,
        layers: Vec<(Option<Rid>, u32, u32)>,
        reply: Reply<()>,
    },
    Msid {
        publisher: ParticipantId,
        track: TrackId,
        stream_id: String,
        track_id: String,
        reply: Reply<()>,
    },
    Limits {
        subscriber: ParticipantId,
        track: TrackId,
        limits: Limits,
        reply: Reply<()>,
    },
    SendData {
        from: ParticipantId,
        label: String,
        binary: bool,
        data: Vec<u8>,
        to: Vec<ParticipantId>,
        reply: Reply<()>,
    },
    DataRelay {
        id: ParticipantId,
        relay: bool,
        reply: Reply<()>,
    },
    Remove {
        id: ParticipantId,
    },
    /// A datagram another shard received for one of our peers (the kernel
    /// hashed its tuple there).
    Foreign {
        remote: SocketAddr,
        local: SocketAddr,
        data: Vec<u8>,
    },
    /// An ICE-TCP connection whose first check named one of our peers,
    /// with the bytes the acceptor read from it (that check and whatever
    /// followed).
    TcpConn {
        stream: std::net::TcpStream,
        remote: SocketAddr,
        buffered: Vec<u8>,
        permit: ConnPermit,
    },
    Stop,
}

/// Everything a shard thread starts from.
pub struct ShardInit {
    pub index: usize,
    pub router: Router,
    pub socket: std::net::UdpSocket,
    /// The address str0m knows the socket by (the advertised candidate).
    pub local: SocketAddr,
    /// This shard's share of the ICE-TCP port and the address str0m knows
    /// it by (the advertised TCP candidate).
    pub tcp: Option<(std::net::TcpListener, SocketAddr)>,
    /// The connection cap every shard's acceptor shares, and the idle
    /// timeout of this shard's connections.
    pub tcp_cap: Arc<ConnCap>,
    pub tcp_idle_timeout: Duration,
    pub commands: mpsc::UnboundedReceiver<Command>,
    /// Every shard's queue (this one's included), for handovers.
    pub peers: Vec<mpsc::UnboundedSender<Command>>,
    pub events: mpsc::UnboundedSender<SfuEvent>,
    /// Where the shard publishes its drop counters.
    pub counters: Arc<ShardCounters>,
}

/// The body of a shard thread.
pub fn shard_main(init: ShardInit) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let span = tracing::info_span!("sfu-shard", shard = init.index);
    let _entered = span.enter();
    rt.block_on(run(init))
}

async fn run(init: ShardInit) -> io::Result<()> {
    let ShardInit {
        index,
        mut router,
        socket,
        local,
        tcp: tcp_init,
        tcp_cap,
        tcp_idle_timeout,
        mut commands,
        peers,
        events,
        counters,
    } = init;
    let mut published = SfuStats::default();
    let state = UdpSocketState::new((&socket).into())?;
    let sock = UdpSocket::from_std(socket)?;
    let mut rx = RecvBufs::new();
    let mut tx = TxBatch::new(state.max_gso_segments());
    let (inbox_tx, mut inbox) = mpsc::channel(INBOX);
    let mut tcp = TcpConns::new(inbox_tx, tcp_idle_timeout);
    let mut tcp_local = None;
    if let Some((listener, addr)) = tcp_init {
        let listener = TcpListener::from_std(listener)?;
        tokio::spawn(accept_loop(listener, Arc::from(peers.clone()), tcp_cap));
        tcp_local = Some(addr);
    }
    // Idle connections are looked for at a fraction of the timeout.
    let mut next_idle_check = Instant::now() + IDLE_CHECK.min(tcp_idle_timeout);
    let mut idle = Vec::new();
    loop {
        let now = Instant::now();
        let mut deadline = router.poll_timeout(now);
        if !tcp.is_empty() {
            deadline = deadline.min(next_idle_check);
        }
        tokio::select! {
            r = sock.readable() => {
                r?;
                for _ in 0..MAX_BATCHES_PER_WAKE {
                    let n = match rx.recv(&state, &sock) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "recv failed");
                            break;
                        }
                    };
                    let now = Instant::now();
                    router.begin_batch();
                    for i in 0..n {
                        let meta = rx.meta[i];
                        let buf = rx.slot(i);
                        for seg in segments(&meta) {
                            let data = &buf[seg];
                            let mut sink = sink(&mut tx, &mut tcp);
                            let route = router.handle_datagram(now, meta.addr, local, data, &mut sink);
                            if let Route::Shard(s) = route {
                                if s != index {
                                    if let Some(q) = peers.get(s) {
                                        // Cold path (ICE checks) plus the rest of a
                                        // tuple the kernel hashed here: one copy.
                                        let _ = q.send(Command::Foreign { remote: meta.addr, local, data: data.to_vec() });
                                    }
                                }
                            }
                        }
                    }
                    router.end_batch(Instant::now(), &mut sink(&mut tx, &mut tcp));
                    tx.flush(&sock);
                    tcp.flush();
                }
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return Ok(()) };
                let now = Instant::now();
                if let Command::TcpConn { stream, remote, buffered, permit } = cmd {
                    if let Err(e) = tcp.adopt(now, stream, remote, buffered, permit) {
                        tracing::debug!(%remote, error = %e, "ICE-TCP connection not adopted");
                    }
                } else if !handle_command(&mut router, now, cmd, &mut sink(&mut tx, &mut tcp)) {
                    return Ok(());
                }
            }
            Some(msg) = inbox.recv() => {
                let now = Instant::now();
                match msg {
                    TcpIn::Frames { id, remote, data } => {
                        if let (Some(local), true) = (tcp_local, tcp.is_current(id, remote)) {
                            let mut valid = false;
                            for frame in frames(&data) {
                                let route = router.handle_tcp_frame(now, remote, local, frame, &mut sink(&mut tx, &mut tcp));
                                valid |= matches!(route, Route::Local { .. });
                            }
                            if valid {
                                tcp.touch(id, remote, now);
                            }
                        }
                        tcp.recycle(id, remote, data);
                    }
                    TcpIn::Closed { id, remote } => {
                        if let (Some(local), true) = (tcp_local, tcp.close(id, remote)) {
                            router.tcp_closed(remote, local);
                        }
                    }
                }
            }
            // Only armed while bytes wait, so an idle shard never polls it.
            _ = tcp.writable(), if tcp.has_pending() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                router.handle_timeout(now, &mut sink(&mut tx, &mut tcp));
                if now >= next_idle_check {
                    next_idle_check = now + IDLE_CHECK.min(tcp_idle_timeout);
                    tcp.expire(now, &mut idle);
                    if let Some(local) = tcp_local {
                        for remote in idle.drain(..) {
                            router.tcp_closed(remote, local);
                        }
                    }
                    idle.clear();
                }
            }
        }
        tx.flush(&sock);
        tcp.flush();
        while let Some(ev) = router.poll_event() {
            // Unbounded so the data plane never waits on the control plane.
            let _ = events.send(ev);
        }
        let now_stats = SfuStats {
            queue_full_drops: router.queue_full_drops(),
            udp_would_block: tx.stats.would_block,
            udp_send_failed: tx.stats.failed,
            estimate_resets: router.estimate_resets(),
            temporal_upswitch_keyframes: router.temporal_upswitch_keyframes(),
        };
        if now_stats != published {
            published = now_stats;
            counters.publish(published);
        }
    }
}

/// Where the router's output goes: UDP datagrams to the send batch, ICE-TCP
/// packets to their connection.
fn sink<'a>(tx: &'a mut TxBatch, tcp: &'a mut TcpConns) -> impl FnMut(&str0m::net::Transmit) + 'a {
    move |t| match t.proto {
        Protocol::Udp => tx.push(t.destination, &t.contents),
        _ => tcp.push(t.destination, &t.contents),
    }
}

/// Carries out one command; `false` to stop the shard.
fn handle_command(router: &mut Router, now: Instant, cmd: Command, tx: &mut dyn FnMut(&str0m::net::Transmit)) -> bool {
    match cmd {
        Command::Create { id, room, reply } => {
            let _ = reply.send(router.create_participant(now, &room, Some(id)));
        }
        Command::Offer { id, sdp, reply } => {
            let _ = reply.send(router.accept_offer(now, id, &sdp, tx));
        }
        Command::Answer { id, sdp, reply } => {
            let _ = reply.send(router.accept_answer(now, id, &sdp, tx));
        }
        Command::Candidate {
            id,
            role,
            candidate,
            reply,
        } => {
            let _ = reply.send(router.add_remote_candidate(id, role, &candidate));
        }
        Command::Subscribe {
            subscriber,
            track,
            reply,
        } => {
            let _ = reply.send(router.subscribe(now, subscriber, track));
        }
        Command::Unsubscribe {
            subscriber,
            track,
            reply,
        } => {
            let _ = reply.send(router.unsubscribe(now, subscriber, track));
        }
        Command::Settings {
            subscriber,
            track,
            paused,
            rid,
            reply,
        } => {
            let _ = reply.send(router.set_track_settings(now, subscriber, track, paused, rid));
        }
        Command::Unpublish {
            publisher,
            track,
            reply,
        } => {
            let _ = reply.send(router.unpublish(now, publisher, track));
        }
        Command::Mute {
            publisher,
            track,
            muted,
            reply,
        } => {
            let _ = reply.send(router.set_muted(now, publisher, track, muted));
        }
        Command::Layers {
            publisher,
            track,
            layers,
            reply,
        } => {
            let _ = reply.send(router.set_track_layers(now, publisher, track, &layers));
        }
        Command::Msid {
            publisher,
            track,
            stream_id,
            track_id,
            reply,
        } => {
            let _ = reply.send(router.set_track_msid(publisher, track, stream_id, track_id));
        }
        Command::Limits {
            subscriber,
            track,
            limits,
            reply,
        } => {
            let _ = reply.send(router.set_track_limits(now, subscriber, track, limits));
        }
        Command::SendData {
            from,
            label,
            binary,
            data,
            to,
            reply,
        } => {
            let _ = reply.send(router.send_data(now, from, &label, binary, &data, &to));
            router.flush(now, tx);
        }
        Command::DataRelay { id, relay, reply } => {
            let _ = reply.send(router.set_data_relay(id, relay));
        }
        Command::Remove { id } => router.remove_participant(now, id),
        Command::Foreign { remote, local, data } => {
            router.handle_datagram(now, remote, local, &data, tx);
        }
        // The loop adopts connections itself (it owns the TCP table).
        Command::TcpConn { .. } => {}
        Command::Stop => return false,
    }
    true
}

/// One slot per message of a `recvmmsg` batch, allocated once.
struct RecvBufs {
    mem: Box<[u8]>,
    meta: [RecvMeta; BATCH_SIZE],
}

impl RecvBufs {
    fn new() -> Self {
        RecvBufs {
            mem: vec![0u8; SLOT * BATCH_SIZE].into_boxed_slice(),
            meta: [RecvMeta::default(); BATCH_SIZE],
        }
    }

    fn recv(&mut self, state: &UdpSocketState, sock: &UdpSocket) -> io::Result<usize> {
        let mut chunks = self.mem.chunks_mut(SLOT);
        let mut iov: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
            let chunk = chunks.next().expect("RecvBufs holds BATCH_SIZE slots");
            IoSliceMut::new(chunk)
        });
        let meta = &mut self.meta;
        sock.try_io(Interest::READABLE, || state.recv(sock.into(), &mut iov, meta))
    }

    fn slot(&self, i: usize) -> &[u8] {
        &self.mem[i * SLOT..(i + 1) * SLOT]
    }
}

/// The datagrams of one received message: GRO packs several of `stride`
/// bytes back to back.
fn segments(meta: &RecvMeta) -> impl Iterator<Item = std::ops::Range<usize>> {
    let len = meta.len.min(SLOT);
    let stride = if meta.stride == 0 { len.max(1) } else { meta.stride };
    (0..len).step_by(stride).map(move |off| off..(off + stride).min(len))
}
