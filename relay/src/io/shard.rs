//! One shard: a thread with a current-thread runtime that owns a
//! `turn::Server`, its listeners and the relay sockets of its allocations.
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_udp::UdpSocketState;
use tokio::sync::{mpsc, watch};
use tokio::task::LocalSet;

use super::relay_socket::{Relay, RelaySlab, ShardIo};
use super::tcp::{Conn, StreamKind};
use super::tcp_relay::PeerConn;
use super::udp::{RecvBufs, TxBatch, UdpListener};
use super::{Mode, ShardSockets, Shared};
use crate::turn::{Event, FiveTuple, RelayId, Server, ServerConfig, Transport};

/// Reply buffer size handed to the core (it needs at least 1500).
const REPLY_LEN: usize = 4096;
/// The longest the shard sleeps between timer checks.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

/// Shell-side counters, exported next to the core's.
#[derive(Default)]
pub struct Counters {
    /// Datagrams the kernel refused (send buffer full) or frames a slow
    /// stream client's queue had no room for.
    pub send_dropped: Cell<u64>,
    /// Stream connections refused at the per-shard cap.
    pub conns_refused: Cell<u64>,
    /// Stream connections open now (bounded by `Shard::max_conns`).
    pub live_conns: Cell<usize>,
}

/// Work another shard hands to this one.
pub enum Cmd {
    /// A client data connection whose ConnectionBind names a CONNECTION-ID
    /// this shard owns. `pending` holds the bytes already read from it.
    Adopt {
        stream: super::tcp::Handoff,
        tuple: FiveTuple,
        pending: Vec<u8>,
    },
}

pub struct Shard {
    pub index: usize,
    pub server: RefCell<Server>,
    pub shared: Arc<Shared>,
    pub udp: Vec<UdpListener>,
    /// Decodes `recvmmsg` results for relay sockets; receiving uses no
    /// per-socket state, so one instance serves all of them.
    pub recv_state: UdpSocketState,
    pub rx: RefCell<RecvBufs>,
    pub reply: RefCell<Vec<u8>>,
    pub tx: RefCell<TxBatch>,
    pub relays: RefCell<RelaySlab>,
    /// Stream clients (TCP and TLS), for sends that do not answer their own input.
    pub conns: RefCell<HashMap<FiveTuple, Rc<Conn>>>,
    /// RFC 6062 peer connections by CONNECTION-ID.
    pub peers: RefCell<HashMap<u32, PeerConn>>,
    pub counters: Counters,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub max_conns: usize,
}

impl Shard {
    pub fn relay_io(self: &Rc<Self>) -> ShardIo<'_> {
        ShardIo { shard: self }
    }

    /// Runs `f` on the core with this shard as its `RelayIo`, then handles
    /// the events it queued.
    pub fn with_server<R>(self: &Rc<Self>, f: impl FnOnce(&mut Server, &mut ShardIo<'_>) -> R) -> R {
        let mut server = self.server.borrow_mut();
        let mut io = self.relay_io();
        let r = f(&mut server, &mut io);
        self.drain_events(&mut server);
        drop(server);
        self.flush_tx();
        r
    }

    /// Carries out what the core queued. The caller flushes `tx` afterwards.
    pub fn drain_events(self: &Rc<Self>, server: &mut Server) {
        while let Some(ev) = server.poll_event() {
            match ev {
                Event::Transmit { tuple, data } => self.send_to_client(&tuple, &data),
                Event::TcpBound { tuple, connection_id } => {
                    let conn = self.conns.borrow().get(&tuple).cloned();
                    match conn {
                        Some(c) => c.bind(connection_id),
                        None => {
                            // The data connection vanished between the reply
                            // and this event: nothing can carry the pipe.
                            super::tcp_relay::tcp_close(self, connection_id);
                            server.handle_tcp_closed(connection_id);
                        }
                    }
                }
            }
        }
    }

    pub fn tx_push(&self, listener: usize, dest: SocketAddr, src: Option<IpAddr>, data: &[u8]) {
        let mut tx = self.tx.borrow_mut();
        if tx.is_full_for(data.len()) {
            tx.flush(&self.udp, &self.counters.send_dropped);
        }
        tx.push(listener, dest, src, data);
    }

    pub fn flush_tx(&self) {
        self.tx.borrow_mut().flush(&self.udp, &self.counters.send_dropped);
    }

    /// Queues `data` for the client of `tuple`: through the listener it
    /// reached (UDP) or into its connection's send queue (TCP, TLS).
    pub fn send_to_client(&self, tuple: &FiveTuple, data: &[u8]) {
        match tuple.transport {
            Transport::Udp => {
                let found = self
                    .udp
                    .iter()
                    .enumerate()
                    .find_map(|(i, l)| l.serves(&tuple.server).map(|src| (i, src)));
                match found {
                    Some((i, src)) => self.tx_push(i, tuple.client, src, data),
                    None => self.count_drop(),
                }
            }
            Transport::Tcp | Transport::Tls => {
                let conns = self.conns.borrow();
                match conns.get(tuple) {
                    Some(c) => {
                        if !c.queue_frame(data) {
                            self.count_drop();
                        }
                    }
                    None => self.count_drop(),
                }
            }
        }
    }

    /// Sends a client's payload from a relay socket; never waits.
    pub fn send_to_peer(&self, relay: RelayId, peer: SocketAddr, data: &[u8]) {
        let relays = self.relays.borrow();
        let Some(Relay::Udp { sock, .. }) = relays.get(relay) else {
            self.count_drop();
            return;
        };
        // A direct sendto on the non-blocking socket: tokio's try_send_to
        // answers WouldBlock until the reactor has seen the socket writable,
        // which for a freshly bound relay socket drops the first datagrams
        // (the ICE checks right after Allocate). The kernel's EAGAIN is the
        // only backpressure that means anything here.
        if let Err(e) = socket2::SockRef::from(&**sock).send_to(data, &peer.into()) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                tracing::debug!(error = %e, %peer, relay = relay.0, "send to peer failed");
            }
            self.count_drop();
        }
    }

    pub fn count_drop(&self) {
        self.counters.send_dropped.set(self.counters.send_dropped.get() + 1);
    }
}

/// Everything a shard thread starts from.
pub struct ShardInit {
    pub index: usize,
    pub cfg: Arc<ServerConfig>,
    pub sockets: ShardSockets,
    pub shared: Arc<Shared>,
    pub cmds: mpsc::UnboundedReceiver<Cmd>,
    pub mode: watch::Receiver<Mode>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub max_conns: usize,
}

/// The body of a shard thread; returns when the mode becomes `Stop`.
pub fn shard_main(init: ShardInit) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = LocalSet::new();
    let span = tracing::info_span!("shard", shard = init.index);
    let _entered = span.enter();
    local.block_on(&rt, shard_async(init))
}

async fn shard_async(init: ShardInit) -> std::io::Result<()> {
    let ShardInit {
        index,
        cfg,
        sockets,
        shared,
        mut cmds,
        mut mode,
        tls,
        max_conns,
    } = init;
    let mut udp = Vec::new();
    for s in sockets.udp {
        udp.push(UdpListener::new(s)?);
    }
    let scratch = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let recv_state = UdpSocketState::new((&scratch).into())?;
    drop(scratch);
    let shard = Rc::new(Shard {
        index,
        server: RefCell::new(Server::new(cfg, index as u8)),
        shared,
        udp,
        recv_state,
        rx: RefCell::new(RecvBufs::new()),
        reply: RefCell::new(vec![0u8; REPLY_LEN]),
        tx: RefCell::new(TxBatch::new()),
        relays: RefCell::new(RelaySlab::default()),
        conns: RefCell::new(HashMap::new()),
        peers: RefCell::new(HashMap::new()),
        counters: Counters::default(),
        tls,
        max_conns,
    });
    for li in 0..shard.udp.len() {
        tokio::task::spawn_local(super::udp::listener_task(shard.clone(), li));
    }
    for l in sockets.tcp {
        let l = tokio::net::TcpListener::from_std(l)?;
        tokio::task::spawn_local(super::tcp::accept_task(shard.clone(), l, StreamKind::Tcp));
    }
    for l in sockets.tls {
        let l = tokio::net::TcpListener::from_std(l)?;
        tokio::task::spawn_local(super::tcp::accept_task(shard.clone(), l, StreamKind::Tls));
    }
    tokio::task::spawn_local(timer_task(shard.clone()));
    tokio::task::spawn_local(report_task(shard.clone()));
    {
        let shard = shard.clone();
        tokio::task::spawn_local(async move {
            while let Some(cmd) = cmds.recv().await {
                match cmd {
                    Cmd::Adopt { stream, tuple, pending } => super::tcp::adopt(&shard, stream, tuple, pending),
                }
            }
        });
    }
    loop {
        let m = *mode.borrow_and_update();
        match m {
            Mode::Run => {}
            Mode::Drain => {
                shard.server.borrow_mut().set_draining(true);
                publish(&shard);
            }
            Mode::Stop => break,
        }
        if mode.changed().await.is_err() {
            break;
        }
    }
    publish(&shard);
    Ok(())
}

async fn timer_task(shard: Rc<Shard>) {
    loop {
        let now = Instant::now();
        let cap = now + MAX_TIMER_SLEEP;
        let next = shard.server.borrow().poll_timeout().map_or(cap, |t| t.min(cap));
        tokio::time::sleep_until(next.into()).await;
        shard.with_server(|server, io| server.handle_timeout(Instant::now(), io));
    }
}

async fn report_task(shard: Rc<Shard>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        publish(&shard);
    }
}

/// Copies this shard's counters where the control thread can merge them.
fn publish(shard: &Shard) {
    let server = shard.server.borrow();
    let report = super::ShardReport {
        stats: server.stats().clone(),
        allocations: server.allocation_count(),
        send_dropped: shard.counters.send_dropped.get(),
        conns_refused: shard.counters.conns_refused.get(),
        relay_sockets: shard.relays.borrow().len(),
        stream_conns: shard.conns.borrow().len(),
        published: true,
    };
    drop(server);
    if let Ok(mut slot) = shard.shared.reports[shard.index].lock() {
        *slot = report;
    }
}
