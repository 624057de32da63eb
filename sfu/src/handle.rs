//! The SFU as the control plane sees it: start it, send it commands, read
//! its events.
//!
//! Commands travel to the owning shard's queue and their results come back
//! on a oneshot; events from every shard arrive on one channel. The data
//! plane never waits on either. A room is pinned to one shard (hash of its
//! name) so fan-out stays on one core; a participant's id carries its shard
//! in the low byte, so routing a command needs no shared table.
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use relay::io::reuseport;
use socket2::Type;
use str0m::bwe::Bitrate;
use str0m::media::Rid;
use tokio::sync::{mpsc, oneshot};

use crate::participant::{PeerConfig, Role};
use crate::router::{Limits, ParticipantId, ParticipantInfo, Router, RouterConfig, SfuEvent, TrackId};
use crate::shard::{shard_main, Command, ShardInit};
use crate::stats::{self, SfuStats, ShardCounters};
use crate::tcp_limits::{ConnCap, TcpLimits, TcpStats};
use crate::Error;

/// Socket buffer size asked for; the kernel caps it at `rmem_max`.
const SOCKET_BUF: usize = 4 << 20;

#[derive(Clone, Debug)]
pub struct SfuConfig {
    /// Where the media socket listens (all shards share the port).
    pub listen: SocketAddr,
    /// Where ICE-TCP connections are accepted (RFC 6544 passive candidate,
    /// for clients whose network blocks UDP); `None` = UDP only. Its IP is
    /// advertised like `listen`'s (`advertise_ip` when set); port 0 picks one.
    pub tcp_listen: Option<SocketAddr>,
    /// The cap on concurrent ICE-TCP connections and their idle timeout.
    pub tcp_limits: TcpLimits,
    /// The IP clients reach us at, put in the host candidate. Needed when
    /// `listen` is a wildcard or behind NAT.
    pub advertise_ip: Option<IpAddr>,
    /// Shards (threads); one per core is the intent.
    pub shards: usize,
    /// Initial downlink estimate for subscriber connections.
    pub initial_estimate_bps: u64,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tcp_listen: None,
            tcp_limits: TcpLimits::default(),
            advertise_ip: None,
            shards: 1,
            initial_estimate_bps: 1_000_000,
        }
    }
}

/// A running SFU. Dropping it stops the shards.
pub struct Sfu {
    shards: Vec<mpsc::UnboundedSender<Command>>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    next_id: AtomicU64,
    local: SocketAddr,
    tcp_local: Option<SocketAddr>,
    tcp_cap: Arc<ConnCap>,
    counters: Vec<Arc<ShardCounters>>,
}

impl Sfu {
    /// Binds the media port and starts the shards. Returns the handle and
    /// the event stream.
    pub fn start(cfg: SfuConfig) -> Result<(Sfu, mpsc::UnboundedReceiver<SfuEvent>), Error> {
        let n = cfg.shards.clamp(1, 256);
        ensure_unshared(cfg.listen, Type::DGRAM, "udp")?;
        if let Some(addr) = cfg.tcp_listen {
            ensure_unshared(addr, Type::STREAM, "tcp")?;
        }
        let first = bind_udp(cfg.listen)?;
        // Port 0 means "pick one": the other shards must join the port the
        // first one got.
        let bound = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..n {
            sockets.push(bind_udp(bound)?);
        }
        let ip = cfg.advertise_ip.unwrap_or(bound.ip());
        if ip.is_unspecified() {
            return Err(Error::Candidate("a wildcard listen address needs advertise_ip".into()));
        }
        let local = SocketAddr::new(ip, bound.port());
        let mut tcp_listeners = Vec::new();
        let mut tcp_local = None;
        if let Some(addr) = cfg.tcp_listen {
            let first = reuseport::bind_tcp(addr)?;
            let bound = first.local_addr()?;
            tcp_listeners.push(first);
            for _ in 1..n {
                tcp_listeners.push(reuseport::bind_tcp(bound)?);
            }
            let ip = cfg.advertise_ip.unwrap_or(bound.ip());
            if ip.is_unspecified() {
                return Err(Error::Candidate(
                    "a wildcard TCP listen address needs advertise_ip".into(),
                ));
            }
            tcp_local = Some(SocketAddr::new(ip, bound.port()));
        }
        let mut tcp_listeners = tcp_listeners.into_iter();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let tcp_cap = ConnCap::new(cfg.tcp_limits.max_connections);
        let mut threads = Vec::new();
        let mut counters = Vec::new();
        for (index, (socket, commands)) in sockets.into_iter().zip(receivers).enumerate() {
            let router = Router::new(RouterConfig {
                shard: index,
                peer: PeerConfig {
                    candidates: vec![local],
                    tcp_candidates: tcp_local.into_iter().collect(),
                    initial_estimate: Bitrate::bps(cfg.initial_estimate_bps),
                },
            });
            let init = ShardInit {
                index,
                router,
                socket,
                local,
                tcp: tcp_listeners.next().zip(tcp_local),
                tcp_cap: tcp_cap.clone(),
                tcp_idle_timeout: cfg.tcp_limits.idle_timeout,
                commands,
                peers: senders.clone(),
                events: ev_tx.clone(),
                counters: Arc::new(ShardCounters::default()),
            };
            counters.push(init.counters.clone());
            let t = std::thread::Builder::new()
                .name(format!("sfu-shard-{index}"))
                .spawn(move || shard_main(init))?;
            threads.push(t);
        }
        Ok((
            Sfu {
                shards: senders,
                threads,
                next_id: AtomicU64::new(1),
                local,
                tcp_local,
                tcp_cap,
                counters,
            },
            ev_rx,
        ))
    }

    /// What the data plane dropped since start (all shards).
    pub fn stats(&self) -> SfuStats {
        stats::sum(self.counters.iter().map(|c| &**c))
    }

    /// The media address clients are told (host candidate).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The ICE-TCP address clients are told (passive TCP host candidate),
    /// when TCP is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_local
    }

    /// ICE-TCP connections open, refused at the cap and closed for idling.
    pub fn tcp_stats(&self) -> TcpStats {
        self.tcp_cap.stats()
    }

    fn shard_of_room(&self, room: &str) -> usize {
        // FNV-1a: stable across runs and processes, unlike RandomState.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in room.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        (h % self.shards.len() as u64) as usize
    }

    fn shard_of(&self, id: ParticipantId) -> Result<&mpsc::UnboundedSender<Command>, Error> {
        self.shards.get((id.0 & 0xff) as usize).ok_or(Error::Unknown)
    }

    async fn call<T>(
        &self,
        id: ParticipantId,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.shard_of(id)?.send(make(tx)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// A new participant of `room`, with its publisher connection's ICE
    /// credentials. The client then sends its offer with [`Sfu::offer`].
    pub async fn create_participant(&self, room: &str) -> Result<ParticipantInfo, Error> {
        let shard = self.shard_of_room(room);
        let id = ParticipantId((self.next_id.fetch_add(1, Ordering::Relaxed) << 8) | shard as u64);
        let room = room.to_string();
        self.call(id, |reply| Command::Create { id, room, reply }).await
    }

    /// A client offer on the publisher connection; returns the answer SDP.
    pub async fn offer(&self, id: ParticipantId, sdp: String) -> Result<String, Error> {
        self.call(id, |reply| Command::Offer { id, sdp, reply }).await
    }

    /// The client's answer to a [`SfuEvent::Offer`] (subscriber connection).
    pub async fn answer(&self, id: ParticipantId, sdp: String) -> Result<(), Error> {
        self.call(id, |reply| Command::Answer { id, sdp, reply }).await
    }

    /// A trickled remote candidate (`candidate:...` line).
    pub async fn add_ice_candidate(&self, id: ParticipantId, role: Role, candidate: String) -> Result<(), Error> {
        self.call(id, |reply| Command::Candidate {
            id,
            role,
            candidate,
            reply,
        })
        .await
    }

    /// Forwards `track` to `subscriber` (same room); the subscriber gets a
    /// [`SfuEvent::Offer`].
    pub async fn subscribe(&self, subscriber: ParticipantId, track: TrackId) -> Result<(), Error> {
        self.call(subscriber, |reply| Command::Subscribe {
            subscriber,
            track,
            reply,
        })
        .await
    }

    pub async fn unsubscribe(&self, subscriber: ParticipantId, track: TrackId) -> Result<(), Error> {
        self.call(subscriber, |reply| Command::Unsubscribe {
            subscriber,
            track,
            reply,
        })
        .await
    }

    /// Pauses/resumes one subscription and optionally pins its layer.
    pub async fn set_track_settings(
        &self,
        subscriber: ParticipantId,
        track: TrackId,
        paused: bool,
        rid: Option<Rid>,
    ) -> Result<(), Error> {
        self.call(subscriber, |reply| Command::Settings {
            subscriber,
            track,
            paused,
            rid,
            reply,
        })
        .await
    }

    /// Withdraws a published track: forwarding stops and every subscriber
    /// gets a [`SfuEvent::Offer`] with its m-line stopped.
    pub async fn unpublish(&self, publisher: ParticipantId, track: TrackId) -> Result<(), Error> {
        self.call(publisher, |reply| Command::Unpublish {
            publisher,
            track,
            reply,
        })
        .await
    }

    /// Mutes or unmutes a published track (unmuting video asks the
    /// publisher for a keyframe).
    pub async fn set_muted(&self, publisher: ParticipantId, track: TrackId, muted: bool) -> Result<(), Error> {
        self.call(publisher, |reply| Command::Mute {
            publisher,
            track,
            muted,
            reply,
        })
        .await
    }

    /// The picture size of each layer of a published track as the publisher
    /// declared it (`None` rid for a single stream), which subscribers'
    /// size limits are matched against.
    pub async fn set_track_layers(
        &self,
        publisher: ParticipantId,
        track: TrackId,
        layers: Vec<(Option<Rid>, u32, u32)>,
    ) -> Result<(), Error> {
        self.call(publisher, |reply| Command::Layers {
            publisher,
            track,
            layers,
            reply,
        })
        .await
    }

    /// The msid (stream id, track id) subscribers' m-lines for `track`
    /// carry from now on, e.g. the control plane's participant and track
    /// ids; without it they are the SFU's own (`PA_<n>`, `TR_<n>_<mid>`).
    /// Set it before subscribing.
    pub async fn set_track_msid(
        &self,
        publisher: ParticipantId,
        track: TrackId,
        stream_id: String,
        track_id: String,
    ) -> Result<(), Error> {
        self.call(publisher, |reply| Command::Msid {
            publisher,
            track,
            stream_id,
            track_id,
            reply,
        })
        .await
    }

    /// The size a subscriber renders a track at and the frame rate it
    /// wants: no layer bigger than needed is sent.
    pub async fn set_track_limits(
        &self,
        subscriber: ParticipantId,
        track: TrackId,
        limits: Limits,
    ) -> Result<(), Error> {
        self.call(subscriber, |reply| Command::Limits {
            subscriber,
            track,
            limits,
            reply,
        })
        .await
    }

    /// Sends a data channel message as `from` to the named members of its
    /// room (everyone else when `to` is empty) that have channel `label`.
    pub async fn send_data(
        &self,
        from: ParticipantId,
        label: String,
        binary: bool,
        data: Vec<u8>,
        to: Vec<ParticipantId>,
    ) -> Result<(), Error> {
        self.call(from, |reply| Command::SendData {
            from,
            label,
            binary,
            data,
            to,
            reply,
        })
        .await
    }

    /// Whether the SFU relays `id`'s data messages to the whole room itself
    /// (default) or only reports them as [`SfuEvent::Data`] for signalling
    /// to route with [`Sfu::send_data`].
    pub async fn set_data_relay(&self, id: ParticipantId, relay: bool) -> Result<(), Error> {
        self.call(id, |reply| Command::DataRelay { id, relay, reply }).await
    }

    /// Tears the participant down; fire and forget.
    pub fn remove_participant(&self, id: ParticipantId) {
        if let Ok(q) = self.shard_of(id) {
            let _ = q.send(Command::Remove { id });
        }
    }

    /// Stops the shards and waits for their threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for q in &self.shards {
            let _ = q.send(Command::Stop);
        }
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Err(e)) => tracing::warn!(error = %e, "SFU shard failed"),
                Err(_) => tracing::error!("SFU shard thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

impl Drop for Sfu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fails if another socket holds `addr`: our shards join the port with
/// `SO_REUSEPORT`, so a second SFU on it would silently share clients (see
/// [`relay::io::reuseport::ensure_unshared`]).
fn ensure_unshared(addr: SocketAddr, ty: Type, proto: &'static str) -> Result<(), Error> {
    reuseport::ensure_unshared(addr, ty).map_err(|source| Error::PortInUse { proto, addr, source })
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    reuseport::bind_udp(addr, SOCKET_BUF)
}
