//! The I/O shell around [`crate::turn::Server`].
//!
//! One shard per configured core: an OS thread running a current-thread
//! tokio runtime that owns a `turn::Server`, its own `SO_REUSEPORT` UDP and
//! TCP listeners (the kernel hashes a client's 4-tuple to one shard, so a
//! client always reaches the same core), and the relay sockets of the
//! allocations it created. Nothing on the packet path is shared between
//! shards. A control thread merges the shards' counters once a second for
//! the metrics endpoint; the main thread waits for signals and drains.
//!
//! - [`udp`]: `recvmmsg`/GRO receive buffers shared by all sockets of a
//!   shard, the listener loop, GSO send batches.
//! - [`relay_socket`]: the core's `RelayIo`, UDP relay sockets.
//! - [`tcp`]: TCP/TLS clients, framing and bounded send queues.
//! - [`tcp_relay`]: RFC 6062 peer connections and splicing.
//! - [`tls`]: the rustls acceptor.
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::Type;
use tokio::sync::{mpsc, watch};

use crate::config::RelayConfig;
use crate::metrics::Metrics;
use crate::turn::stats::{Drop as DropCause, Stats};

mod relay_socket;
mod reservation;
pub mod reuseport;
mod shard;
mod tcp;
mod tcp_relay;
pub mod tls;
mod udp;

/// Stream (TCP + TLS) client connections across all shards; each shard gets
/// its share so an accept flood cannot exhaust file descriptors needed for
/// relay sockets.
const MAX_STREAM_CONNS: usize = 16384;
/// Listener socket buffers; the kernel caps them at `net.core.[rw]mem_max`.
const LISTENER_BUF: usize = 4 << 20;
/// How often `run` checks a drain's progress.
const DRAIN_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("cannot listen on {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS listeners configured without a certificate and key")]
    TlsMissing,
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot start {what}: {source}")]
    Start { what: &'static str, source: std::io::Error },
    #[error("shard {shard} failed: {reason}")]
    Shard { shard: usize, reason: String },
}

/// What the shards are told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Run,
    /// Refuse new allocations, keep relaying for existing ones.
    Drain,
    /// Exit now.
    Stop,
}

/// A shard's latest published counters.
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub stats: Stats,
    pub allocations: usize,
    pub send_dropped: u64,
    pub conns_refused: u64,
    pub relay_sockets: usize,
    pub stream_conns: usize,
    pub published: bool,
}

/// State shared by all shards; touched on control paths only.
pub struct Shared {
    /// Per shard, for RFC 6062 data connections that reach the wrong shard.
    cmds: Vec<mpsc::UnboundedSender<shard::Cmd>>,
    reports: Vec<Mutex<ShardReport>>,
    /// TCP relayed addresses in use (see [`tcp_relay::PortClaim`]).
    tcp_relay_addrs: Mutex<HashSet<SocketAddr>>,
    /// EVEN-PORT reservations, redeemable from any shard.
    reservations: reservation::Reservations,
}

/// The listening sockets of one shard.
pub struct ShardSockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
}

/// A started relay.
pub struct Running {
    /// Bound addresses (ports resolved when the configuration said 0).
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    shared: Arc<Shared>,
    mode: watch::Sender<Mode>,
    shards: Vec<JoinHandle<std::io::Result<()>>>,
    control: Option<JoinHandle<()>>,
    drain_timeout: Duration,
}

impl Running {
    /// Binds every listener, then starts the shard threads and the control
    /// thread. Bind errors come back here, before anything runs.
    pub fn start(cfg: RelayConfig) -> Result<Running, IoError> {
        let shards = cfg.shards.max(1);
        let tls = match (&cfg.tls, cfg.tls_listen.is_empty()) {
            (_, true) => None,
            (Some(files), false) => Some(tls::acceptor(files)?),
            (None, false) => return Err(IoError::TlsMissing),
        };
        let (sockets, udp, tcp, tls_addrs) = bind_listeners(&cfg, shards)?;
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| IoError::Bind {
                        proto: "metrics",
                        addr,
                        source,
                    })?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..shards {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let shared = Arc::new(Shared {
            cmds: senders,
            reports: (0..shards).map(|_| Mutex::new(ShardReport::default())).collect(),
            tcp_relay_addrs: Mutex::new(HashSet::new()),
            reservations: Default::default(),
        });
        let (mode_tx, mode_rx) = watch::channel(Mode::Run);
        let server_cfg = Arc::new(cfg.server.clone());
        let max_conns = (MAX_STREAM_CONNS / shards).max(256);
        let mut threads = Vec::new();
        for (index, (sockets, cmds)) in sockets.into_iter().zip(receivers).enumerate() {
            let init = shard::ShardInit {
                index,
                cfg: server_cfg.clone(),
                sockets,
                shared: shared.clone(),
                cmds,
                mode: mode_rx.clone(),
                tls: tls.clone(),
                max_conns,
            };
            let t = std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || shard::shard_main(init))
                .map_err(|source| IoError::Start {
                    what: "shard thread",
                    source,
                })?;
            threads.push(t);
        }
        let metrics = Arc::new(Metrics::new(shards));
        let control = {
            let shared = shared.clone();
            let mode = mode_rx.clone();
            std::thread::Builder::new()
                .name("control".into())
                .spawn(move || control_main(shared, metrics, metrics_listener, mode))
                .map_err(|source| IoError::Start {
                    what: "control thread",
                    source,
                })?
        };
        Ok(Running {
            udp,
            tcp,
            tls: tls_addrs,
            metrics: metrics_addr,
            shared,
            mode: mode_tx,
            shards: threads,
            control: Some(control),
            drain_timeout: cfg.drain_timeout,
        })
    }

    /// The shards' latest counters merged (shell-side drops included), and
    /// the allocation count; `None` until every shard has published once.
    pub fn snapshot(&self) -> Option<(Stats, usize)> {
        merge(&self.shared)
    }

    /// Stops accepting allocations; existing ones keep relaying.
    pub fn drain(&self) {
        self.mode.send_replace(Mode::Drain);
    }

    /// Stops every shard and waits for their threads.
    pub fn stop(mut self) -> Result<(), IoError> {
        self.mode.send_replace(Mode::Stop);
        let mut result = Ok(());
        for (shard, t) in self.shards.drain(..).enumerate() {
            let r = match t.join() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "panicked".to_string(),
            };
            result = Err(IoError::Shard { shard, reason: r });
        }
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        result
    }

    /// Whether a shard thread has ended (it only does on error or Stop).
    fn shard_died(&self) -> bool {
        self.shards.iter().any(|t| t.is_finished())
    }
}

fn merge(shared: &Shared) -> Option<(Stats, usize)> {
    let mut total = Stats::default();
    let mut allocations = 0;
    for slot in &shared.reports {
        let r = slot.lock().unwrap_or_else(|e| e.into_inner());
        if !r.published {
            return None;
        }
        total.merge(&r.stats);
        // Sends the kernel refused and frames dropped from full stream
        // queues are counted by the shell, not the core.
        total.drops[DropCause::SendFailed as usize] += r.send_dropped;
        allocations += r.allocations;
    }
    Some((total, allocations))
}

fn control_main(
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    listener: Option<std::net::TcpListener>,
    mut mode: watch::Receiver<Mode>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the control runtime");
            return;
        }
    };
    rt.block_on(async move {
        if let Some(l) = listener {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    let m = metrics.clone();
                    tokio::spawn(async move {
                        if let Err(e) = crate::metrics::serve_listener(m, l).await {
                            tracing::error!(error = %e, "metrics listener failed");
                        }
                    });
                }
                Err(e) => tracing::error!(error = %e, "metrics listener failed"),
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = mode.changed() => if r.is_err() { break },
            }
            let m = *mode.borrow();
            if m == Mode::Stop {
                break;
            }
            if let Some((stats, _)) = merge(&shared) {
                metrics.update(&stats, m == Mode::Drain);
            }
        }
    });
}

/// Runs the relay until SIGTERM or SIGINT, then drains: new allocations are
/// refused and the process exits once no allocation is left or
/// `drain_timeout` has passed. A second signal exits at once.
pub fn run(cfg: RelayConfig) -> Result<(), IoError> {
    raise_nofile_limit();
    let running = Running::start(cfg)?;
    for (proto, addrs) in [("udp", &running.udp), ("tcp", &running.tcp), ("tls", &running.tls)] {
        for a in addrs {
            tracing::info!(%a, proto, "listening");
            println!("listening {proto} {a}");
        }
    }
    if let Some(a) = running.metrics {
        tracing::info!(%a, "metrics listening");
        println!("listening metrics {a}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| IoError::Start {
            what: "signal runtime",
            source,
        })?;
    let died = rt.block_on(wait_and_drain(&running))?;
    let r = running.stop();
    if died {
        // A shard that exits on its own has failed; stop() has its reason.
        r?;
        return Err(IoError::Shard {
            shard: usize::MAX,
            reason: "exited unexpectedly".into(),
        });
    }
    r
}

/// Returns true when it stopped because a shard died.
async fn wait_and_drain(running: &Running) -> Result<bool, IoError> {
    use tokio::signal::unix::{signal, SignalKind};
    let sig = |k| {
        signal(k).map_err(|source| IoError::Start {
            what: "signal handler",
            source,
        })
    };
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut poll = tokio::time::interval(DRAIN_POLL);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = poll.tick() => if running.shard_died() { return Ok(true) },
        }
    }
    let deadline = Instant::now() + running.drain_timeout;
    tracing::info!(timeout = ?running.drain_timeout, "signal received, draining (a second signal exits now)");
    running.drain();
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("second signal, exiting"); break }
            _ = int.recv() => { tracing::info!("second signal, exiting"); break }
            _ = poll.tick() => {
                if running.shard_died() {
                    return Ok(true);
                }
                if let Some((_, 0)) = running.snapshot() {
                    tracing::info!("drained: no allocations left, exiting");
                    break;
                }
                if Instant::now() >= deadline {
                    let left = running.snapshot().map(|(_, n)| n).unwrap_or(0);
                    tracing::info!(allocations = left, "drain timeout, exiting");
                    break;
                }
            }
        }
    }
    Ok(false)
}

/// Each allocation holds a socket, so the soft limit of 1024 would cap the
/// relay far below its capacity. Raises the soft limit to the hard one, and
/// the hard one too when the process may (root or CAP_SYS_RESOURCE), up to
/// [`WANT_NOFILE`] — enough for 100,000 allocations with their clients' TCP
/// connections.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = WANT_NOFILE.max(lim.rlim_max);
        let higher = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        if lim.rlim_max < want && libc::setrlimit(libc::RLIMIT_NOFILE, &higher) == 0 {
            lim = higher;
        } else if lim.rlim_cur < lim.rlim_max {
            let soft = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) != 0 {
                tracing::warn!(current = lim.rlim_cur, "cannot raise the open file limit");
                return;
            }
            lim = soft;
        }
        if lim.rlim_cur < WANT_NOFILE {
            tracing::warn!(limit = lim.rlim_cur, "open file limit caps the number of allocations");
        } else {
            tracing::debug!(limit = lim.rlim_cur, "open file limit");
        }
    }
}

const WANT_NOFILE: libc::rlim_t = 262_144;

type Bound = (Vec<ShardSockets>, Vec<SocketAddr>, Vec<SocketAddr>, Vec<SocketAddr>);

/// Binds one UDP and one TCP socket per shard per `listen` address and one
/// TCP socket per shard per `tls_listen` address. Port 0 is resolved by the
/// first shard's socket and reused for the rest and for TCP.
fn bind_listeners(cfg: &RelayConfig, shards: usize) -> Result<Bound, IoError> {
    let mut out: Vec<ShardSockets> = (0..shards)
        .map(|_| ShardSockets {
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
        })
        .collect();
    let mut udp_addrs = Vec::new();
    let mut tcp_addrs = Vec::new();
    let mut tls_addrs = Vec::new();
    for &addr in &cfg.listen {
        ensure_unshared(addr, Type::DGRAM, "udp")?;
        ensure_unshared(addr, Type::STREAM, "tcp")?;
        let (udp0, tcp0) = bind_pair(addr)?;
        let bound = udp0.local_addr().map_err(|source| IoError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        out[0].udp.push(udp0);
        out[0].tcp.push(tcp0);
        for s in out.iter_mut().skip(1) {
            s.udp.push(bind_udp(bound).map_err(|source| IoError::Bind {
                proto: "udp",
                addr: bound,
                source,
            })?);
            s.tcp.push(reuseport::bind_tcp(bound).map_err(|source| IoError::Bind {
                proto: "tcp",
                addr: bound,
                source,
            })?);
        }
        udp_addrs.push(bound);
        tcp_addrs.push(bound);
    }
    for &addr in &cfg.tls_listen {
        ensure_unshared(addr, Type::STREAM, "tls")?;
        let first = reuseport::bind_tcp(addr).map_err(|source| IoError::Bind {
            proto: "tls",
            addr,
            source,
        })?;
        let bound = first.local_addr().map_err(|source| IoError::Bind {
            proto: "tls",
            addr,
            source,
        })?;
        out[0].tls.push(first);
        for s in out.iter_mut().skip(1) {
            s.tls.push(reuseport::bind_tcp(bound).map_err(|source| IoError::Bind {
                proto: "tls",
                addr: bound,
                source,
            })?);
        }
        tls_addrs.push(bound);
    }
    Ok((out, udp_addrs, tcp_addrs, tls_addrs))
}

/// The first shard's UDP and TCP sockets on `addr`; with port 0, retried
/// until the kernel's UDP port is also free for TCP.
fn bind_pair(addr: SocketAddr) -> Result<(std::net::UdpSocket, std::net::TcpListener), IoError> {
    let mut attempts = 0;
    loop {
        let udp = bind_udp(addr).map_err(|source| IoError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        let bound = udp.local_addr().map_err(|source| IoError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        match reuseport::bind_tcp(bound) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && attempts < 32 => {
                attempts += 1;
            }
            Err(source) => {
                return Err(IoError::Bind {
                    proto: "tcp",
                    addr: bound,
                    source,
                })
            }
        }
    }
}

fn ensure_unshared(addr: SocketAddr, ty: Type, proto: &'static str) -> Result<(), IoError> {
    reuseport::ensure_unshared(addr, ty).map_err(|source| IoError::Bind { proto, addr, source })
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    reuseport::bind_udp(addr, LISTENER_BUF)
}
