//! Request handling and the data path of the TURN server.
//!
//! This module holds the server's state, the dispatch of inputs and the two
//! directions of the data path. Each request family lives in its own file:
//! [`authenticate`], [`allocate`], [`permission`], [`tcp_relay`]; answers are
//! built in [`respond`] and Data indications in [`data_indication`].

mod allocate;
mod authenticate;
mod data_indication;
mod permission;
mod respond;
mod tcp_relay;

use data_indication::write_data_indication_header;
pub use respond::reason;
use respond::{address_error_code, error_message, reply_or_drop, sign};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info};

use super::allocation::{
    family_index, AllocId, Allocation, AllocationTable, Key, Relayed, MAX_CHANNELS, MAX_PERMISSIONS,
};
use super::auth::{AuthConfig, AuthError, Authenticator, NonceCheck};
use super::peer_filter::PeerFilter;
use super::quota::{AllocationQuota, SourceLimiter, TokenBucket};
use super::stats::{AuthFailure, Drop, Stats};
use crate::stun::attr;
use crate::stun::channel_data::{self, ChannelData};
use crate::stun::integrity;
use crate::stun::message::IntegrityKind;
use crate::stun::{classify, Class, EncodeError, Kind, Message, MessageBuilder, Method, TransactionId, MAGIC_COOKIE};

/// The client-facing transport of a five-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// Identifies a client: its transport, its address, and the server address it reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub transport: Transport,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// A relay socket (or TCP relay listener/connection) owned by the shell, named by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u32);

/// Socket work the core cannot do itself. Implemented by the shell over real
/// sockets and by tests over a fake.
pub trait RelayIo {
    /// Binds a UDP relay socket at exactly `addr`. `dont_fragment` sets the DF
    /// bit on what it sends. An `AddrInUse` error makes the core try another port.
    fn bind_udp(&mut self, addr: SocketAddr, dont_fragment: bool) -> std::io::Result<RelayId>;
    /// Binds a UDP socket at exactly `addr` and parks it under `token` until
    /// `expires` (EVEN-PORT with the R bit, RFC 8656 §7.2). Parked sockets are
    /// shared by all shards: the Allocate that redeems the token comes from
    /// another five-tuple, which the kernel may hash to another shard.
    fn reserve_udp(&mut self, addr: SocketAddr, token: [u8; 8], expires: Instant) -> std::io::Result<()>;
    /// Claims the socket parked under `token` for this shard; `None` when the
    /// token is unknown or expired (the socket is then closed).
    fn take_reserved(&mut self, token: [u8; 8], now: Instant, dont_fragment: bool) -> Option<(RelayId, SocketAddr)>;
    /// Opens a TCP relay listener at exactly `addr` (RFC 6062 allocations).
    fn listen_tcp(&mut self, addr: SocketAddr) -> std::io::Result<RelayId>;
    /// Closes a relay socket or listener; no more input arrives for it.
    fn close(&mut self, relay: RelayId);
    /// Starts a TCP connection from the allocation's relayed address to
    /// `peer` (RFC 6062 Connect). The shell reports the outcome with
    /// [`Server::handle_tcp_connected`].
    fn tcp_connect(&mut self, relay: RelayId, peer: SocketAddr, connection_id: u32);
    /// Closes the peer TCP connection `connection_id` (and its data connection).
    fn tcp_close(&mut self, connection_id: u32);
}

/// The core's answer to one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to send (dropped, or consumed without a reply).
    Nothing,
    /// Send `reply[..n]` back to the client on the five-tuple the input came on.
    Reply(usize),
    /// Send `input[range]` from relay socket `relay` to `peer`.
    ToPeer {
        relay: RelayId,
        peer: SocketAddr,
        range: Range<usize>,
    },
    /// Send `buf[range]` to the client of `tuple`; the core wrote the
    /// ChannelData or Data-indication header into the buffer's headroom.
    ToClient { tuple: FiveTuple, range: Range<usize> },
}

/// Room a peer datagram needs in front of it so the core can write a Data
/// indication header in place: STUN header (20) + XOR-PEER-ADDRESS for IPv6
/// (24) + DATA attribute header (4).
pub const PEER_HEADROOM: usize = 48;
/// Room after a peer datagram for padding (3) and FINGERPRINT (8), rounded up.
pub const PEER_TAILROOM: usize = 16;

/// Everything the core needs to know, already validated.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub auth: AuthConfig,
    pub peer_filter: PeerFilter,
    /// Addresses relay sockets bind to; `None` for a family means that
    /// family cannot be allocated (440), unless the client reached us over it
    /// and the listener was bound to a specific address.
    pub relay_ipv4: Option<Ipv4Addr>,
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Addresses advertised in XOR-RELAYED-ADDRESS instead of the bound ones (NAT, anycast).
    pub external_ipv4: Option<Ipv4Addr>,
    pub external_ipv6: Option<Ipv6Addr>,
    pub port_min: u16,
    pub port_max: u16,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    /// Per-allocation caps; 0 = unlimited.
    pub max_bps: u64,
    pub max_pps: u64,
    /// New peer permissions per second per allocation; 0 = unlimited.
    pub new_peers_per_sec: u64,
    /// 401 answers per second per source IP.
    pub unauth_per_ip_rate: u64,
    pub software: Option<String>,
    /// Sent with 300 Try Alternate while draining, when set.
    pub alternate_server: Option<SocketAddr>,
    pub quota: Arc<AllocationQuota>,
}

impl ServerConfig {
    /// Defaults for tests and embedding: loopback relay addresses, generated secrets.
    pub fn for_tests(secret: &[u8]) -> Self {
        ServerConfig {
            auth: AuthConfig {
                realm: "rtc.test".into(),
                secrets: vec![secret.to_vec()],
                static_users: Default::default(),
                nonce_key: secret.to_vec(),
                nonce_lifetime: Duration::from_secs(600),
                rest_separator: ':',
            },
            peer_filter: PeerFilter {
                allow_loopback: true,
                ..Default::default()
            },
            relay_ipv4: Some(Ipv4Addr::LOCALHOST),
            relay_ipv6: Some(Ipv6Addr::LOCALHOST),
            external_ipv4: None,
            external_ipv6: None,
            port_min: 49152,
            port_max: 65535,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            max_bps: 0,
            max_pps: 0,
            new_peers_per_sec: 0,
            unauth_per_ip_rate: 0,
            software: None,
            alternate_server: None,
            quota: Arc::new(AllocationQuota::new(0, 0)),
        }
    }
}

/// Something the core wants the shell to do that is not an answer to the
/// current input. Rare (control path), so owned data is fine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Send these bytes to the client of `tuple` (Connect responses after the
    /// TCP connect finished, ConnectionAttempt indications).
    Transmit { tuple: FiveTuple, data: Vec<u8> },
    /// RFC 6062: after the ConnectionBind success response (already returned
    /// as `Action::Reply`) has been written, the client connection `tuple`
    /// stops carrying STUN and becomes a raw pipe to peer connection `connection_id`.
    TcpBound { tuple: FiveTuple, connection_id: u32 },
}

/// How long an RFC 6062 peer connection may wait for its ConnectionBind, and
/// how long an EVEN-PORT reservation is held (RFC 8656 §7.2, RFC 6062 §5.3).
const PENDING_TIMEOUT: Duration = Duration::from_secs(30);
/// How often expired state is swept out.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts at a random free port before answering 508.
const PORT_ATTEMPTS: usize = 64;

/// An RFC 6062 peer connection, from Connect or from an incoming peer.
#[derive(Debug)]
struct TcpPeer {
    alloc: AllocId,
    peer: SocketAddr,
    /// Set while an outgoing Connect is in progress: who asked, and how to sign the answer.
    connecting: Option<(FiveTuple, TransactionId, IntegrityKind)>,
    /// Until a ConnectionBind arrives.
    deadline: Instant,
    bound: bool,
}

/// The outcome of authenticating a request.
struct Authed {
    key: Key,
    kind: IntegrityKind,
    username: String,
}

/// Why a request is answered with an error: the code and whether the
/// response can be signed (the request authenticated).
type Reject = (u16, Option<(Key, IntegrityKind)>);

/// The TURN server state of one shard.
pub struct Server {
    cfg: Arc<ServerConfig>,
    auth: Authenticator,
    shard: u8,
    allocations: AllocationTable,
    tcp_peers: HashMap<u32, TcpPeer>,
    unauth_limiter: SourceLimiter,
    events: VecDeque<Event>,
    stats: Stats,
    draining: bool,
    rng: SmallRng,
    base_instant: Instant,
    base_unix: u64,
    next_sweep: Option<Instant>,
}

impl Server {
    /// `shard` is this shard's index (< 256); it is encoded in the low byte of
    /// every RFC 6062 CONNECTION-ID so a ConnectionBind that lands on another
    /// shard can be routed back with [`shard_of_connection_id`].
    pub fn new(cfg: Arc<ServerConfig>, shard: u8) -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::with_clock(cfg, shard, Instant::now(), unix)
    }

    /// Like [`Server::new`] with the wall clock given: `base_unix` is the Unix
    /// time at `base_instant`. Nonces and REST expiries are computed from it,
    /// so tests control time completely.
    pub fn with_clock(cfg: Arc<ServerConfig>, shard: u8, base_instant: Instant, base_unix: u64) -> Self {
        let auth = Authenticator::new(cfg.auth.clone());
        let rate = cfg.unauth_per_ip_rate;
        Server {
            auth,
            shard,
            allocations: AllocationTable::default(),
            tcp_peers: HashMap::new(),
            unauth_limiter: SourceLimiter::new(4096, rate, rate.saturating_mul(2)),
            events: VecDeque::new(),
            stats: Stats::default(),
            draining: false,
            rng: SmallRng::from_os_rng(),
            base_instant,
            base_unix,
            next_sweep: None,
            cfg,
        }
    }

    fn unix(&self, now: Instant) -> u64 {
        self.base_unix + now.saturating_duration_since(self.base_instant).as_secs()
    }

    /// A STUN message or ChannelData from a client. `packet` is exactly one
    /// message (stream transports frame first). Replies are written into `reply`
    /// (at least 1500 bytes).
    pub fn handle_client(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        packet: &[u8],
        reply: &mut [u8],
        io: &mut dyn RelayIo,
    ) -> Action {
        match classify(packet) {
            Kind::ChannelData => self.client_channel_data(now, tuple, packet),
            Kind::Stun => match Message::parse(packet) {
                Ok(msg) => match msg.class() {
                    Class::Request => {
                        self.stats.requests += 1;
                        let action = self.handle_request(now, tuple, &msg, reply, io);
                        if let Action::Reply(n) = action {
                            if reply.get(1).is_some_and(|b| b & 0x10 != 0) && n > 0 {
                                self.stats.error_responses += 1;
                            }
                        }
                        action
                    }
                    Class::Indication if msg.method() == Method::SEND => self.client_send(now, tuple, &msg, packet),
                    _ => self.dropped(Drop::Unexpected),
                },
                Err(_) => self.dropped(Drop::Malformed),
            },
            Kind::Other => self.dropped(Drop::Malformed),
        }
    }

    fn dropped(&mut self, why: Drop) -> Action {
        self.stats.drop(why);
        Action::Nothing
    }

    fn client_channel_data(&mut self, now: Instant, tuple: &FiveTuple, packet: &[u8]) -> Action {
        let Ok(cd) = ChannelData::parse(packet) else {
            return self.dropped(Drop::Malformed);
        };
        let Some(id) = self.allocations.by_tuple(tuple) else {
            return self.dropped(Drop::NoAllocation);
        };
        let Some(alloc) = self.allocations.get_mut(id) else {
            return self.dropped(Drop::NoAllocation);
        };
        let Some(peer) = alloc.channel_peer(cd.channel, now) else {
            return self.dropped(Drop::NoChannel);
        };
        if !alloc.permitted(peer.ip(), now) {
            return self.dropped(Drop::NoPermission);
        }
        let Some(relay) = alloc.relay_for(&peer).map(|r| r.relay) else {
            return self.dropped(Drop::NoPermission);
        };
        if !alloc.admit(now, cd.data.len()) {
            return self.dropped(Drop::RateLimited);
        }
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += cd.data.len() as u64;
        let start = channel_data::HEADER_LEN;
        Action::ToPeer {
            relay,
            peer,
            range: start..start + cd.data.len(),
        }
    }

    fn client_send(&mut self, now: Instant, tuple: &FiveTuple, msg: &Message<'_>, packet: &[u8]) -> Action {
        let Some(id) = self.allocations.by_tuple(tuple) else {
            return self.dropped(Drop::NoAllocation);
        };
        let (Some(Ok(peer)), Some(data)) = (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.attr(attr::DATA)) else {
            return self.dropped(Drop::Malformed);
        };
        let Some(alloc) = self.allocations.get_mut(id) else {
            return self.dropped(Drop::NoAllocation);
        };
        if !alloc.permitted(peer.ip(), now) {
            return self.dropped(Drop::NoPermission);
        }
        let Some(relay) = alloc.relay_for(&peer).map(|r| r.relay) else {
            return self.dropped(Drop::NoPermission);
        };
        if !alloc.admit(now, data.len()) {
            return self.dropped(Drop::RateLimited);
        }
        // DATA borrows from `packet`, so its offset is the distance between the two.
        let start = data.as_ptr() as usize - packet.as_ptr() as usize;
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += data.len() as u64;
        Action::ToPeer {
            relay,
            peer,
            range: start..start + data.len(),
        }
    }

    /// A datagram from `peer` on UDP relay socket `relay`, stored at
    /// `buf[payload]` with at least [`PEER_HEADROOM`] bytes before it and
    /// [`PEER_TAILROOM`] after it. Returns `ToClient` with a range of `buf`.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        relay: RelayId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> Action {
        if payload.start < PEER_HEADROOM || buf.len() < payload.end + PEER_TAILROOM || payload.len() > u16::MAX as usize
        {
            return self.dropped(Drop::Malformed);
        }
        let Some(id) = self.allocations.by_relay(relay) else {
            return self.dropped(Drop::NoAllocation);
        };
        let Some(alloc) = self.allocations.get_mut(id) else {
            return self.dropped(Drop::NoAllocation);
        };
        if !alloc.permitted(peer.ip(), now) {
            return self.dropped(Drop::NoPermission);
        }
        if !alloc.admit(now, payload.len()) {
            return self.dropped(Drop::RateLimited);
        }
        let tuple = alloc.tuple;
        let stream = tuple.transport != Transport::Udp;
        let len = payload.len();
        let range = if let Some(channel) = alloc.channel_for(&peer, now) {
            let start = payload.start - channel_data::HEADER_LEN;
            buf[start..payload.start].copy_from_slice(&channel_data::header(channel, len as u16));
            let mut end = payload.end;
            if stream {
                // RFC 8656 §12.5: over TCP the next message starts on a 4-byte boundary.
                let pad = channel_data::stream_padding(len);
                buf[end..end + pad].fill(0);
                end += pad;
            }
            start..end
        } else {
            let tid: TransactionId = self.rng.random();
            let start = write_data_indication_header(buf, payload.start, &tid, peer, len);
            let pad = channel_data::stream_padding(len);
            buf[payload.end..payload.end + pad].fill(0);
            start..payload.end + pad
        };
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += len as u64;
        Action::ToClient { tuple, range }
    }

    // ---------------------------------------------------------------- requests

    fn handle_request(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        reply: &mut [u8],
        io: &mut dyn RelayIo,
    ) -> Action {
        let mut unknown = [0u16; 8];
        let n = msg.unknown_comprehension_required(attr::is_known_comprehension_required, &mut unknown);
        if n > 0 {
            let unknown = &unknown[..n];
            return self.reply_error(reply, msg, 420, None, |b| b.add_unknown_attributes(unknown));
        }
        let method = msg.method();
        if method == Method::BINDING {
            return self.binding(tuple, msg, reply);
        }
        let known = matches!(
            method,
            Method::ALLOCATE
                | Method::REFRESH
                | Method::CREATE_PERMISSION
                | Method::CHANNEL_BIND
                | Method::CONNECT
                | Method::CONNECTION_BIND
        );
        if !known {
            return self.reply_error(reply, msg, 400, None, |_| Ok(()));
        }
        let existing = self.allocations.by_tuple(tuple);
        let authed = match self.authenticate(now, tuple, msg, existing, reply) {
            Ok(a) => a,
            Err(action) => return action,
        };
        let signed = Some((authed.key, authed.kind));
        let result = match method {
            Method::ALLOCATE => self.allocate(now, tuple, msg, existing, authed, reply, io),
            Method::REFRESH => self.refresh(now, msg, existing, &authed, reply, io),
            Method::CREATE_PERMISSION => self.create_permission(now, msg, existing, &authed, reply),
            Method::CHANNEL_BIND => self.channel_bind(now, msg, existing, &authed, reply),
            Method::CONNECT => self.connect(now, tuple, msg, existing, &authed, io),
            _ => self.connection_bind(now, tuple, msg, &authed, reply),
        };
        match result {
            Ok(action) => action,
            Err((code, _)) => {
                debug!(client = %tuple.client, method = method.0, code, "request refused");
                self.reply_error(reply, msg, code, signed, |_| Ok(()))
            }
        }
    }

    fn schedule_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
    }

    fn delete_allocation(&mut self, now: Instant, id: AllocId, io: &mut dyn RelayIo, why: &str) {
        let Some(alloc) = self.allocations.remove(id) else {
            return;
        };
        for r in alloc.relays.iter().flatten() {
            io.close(r.relay);
        }
        let doomed: Vec<u32> = self
            .tcp_peers
            .iter()
            .filter(|(_, p)| p.alloc == id)
            .map(|(c, _)| *c)
            .collect();
        for cid in doomed {
            self.tcp_peers.remove(&cid);
            io.tcp_close(cid);
        }
        self.cfg.quota.release(&alloc.username);
        self.stats.permissions = self.stats.permissions.saturating_sub(alloc.permissions.len() as u64);
        self.stats.channels = self.stats.channels.saturating_sub(alloc.channels.len() as u64);
        self.stats.allocations = self.allocations.len() as u64;
        self.stats.tcp_connections = self.tcp_peers.len() as u64;
        let lived = now.saturating_duration_since(alloc.created).as_secs_f64();
        self.stats.allocation_ended(lived);
        info!(alloc = id.0, shard = self.shard, client = %alloc.tuple.client, lived_s = lived as u64, why, "allocation ended");
    }

    /// Expires allocations, permissions, channels, reservations and pending
    /// TCP connections whose time has come.
    pub fn handle_timeout(&mut self, now: Instant, io: &mut dyn RelayIo) {
        match self.next_sweep {
            Some(t) if t <= now => {}
            _ => return,
        }
        for id in self.allocations.ids() {
            let Some(alloc) = self.allocations.get_mut(id) else {
                continue;
            };
            if alloc.expires <= now {
                self.delete_allocation(now, id, io, "expired");
            } else {
                let (p, c) = alloc.prune(now);
                self.stats.permissions = self.stats.permissions.saturating_sub(p as u64);
                self.stats.channels = self.stats.channels.saturating_sub(c as u64);
            }
        }
        let stale: Vec<u32> = self
            .tcp_peers
            .iter()
            .filter(|(_, p)| !p.bound && p.deadline <= now)
            .map(|(c, _)| *c)
            .collect();
        for cid in stale {
            if let Some(p) = self.tcp_peers.remove(&cid) {
                // A Connect that never finished gets its 447 now.
                if let Some((tuple, tid, kind)) = p.connecting {
                    if let Some(key) = self.allocations.get(p.alloc).map(|a| a.key) {
                        let mut buf = [0u8; 128];
                        if let Ok(n) = error_message(&mut buf, Method::CONNECT, &tid, 447, &key, kind) {
                            self.events.push_back(Event::Transmit {
                                tuple,
                                data: buf[..n].to_vec(),
                            });
                        }
                    }
                }
            }
            io.tcp_close(cid);
        }
        self.stats.tcp_connections = self.tcp_peers.len() as u64;
        let idle = self.allocations.is_empty() && self.tcp_peers.is_empty();
        self.next_sweep = if idle { None } else { Some(now + SWEEP_INTERVAL) };
    }

    /// When [`Server::handle_timeout`] next has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Drains queued [`Event`]s; call after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A client's TCP or TLS connection closed: its allocation ends (RFC 6062 §4.1).
    pub fn handle_client_closed(&mut self, now: Instant, tuple: &FiveTuple, io: &mut dyn RelayIo) {
        if let Some(id) = self.allocations.by_tuple(tuple) {
            self.delete_allocation(now, id, io, "client connection closed");
        }
    }

    /// While draining, new allocations are refused (403, or 300 with
    /// ALTERNATE-SERVER when configured); existing ones keep working.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Number of live allocations (the shell exits a drain when it reaches 0).
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Counters for the metrics exporter.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// The shard index encoded in a CONNECTION-ID.
pub fn shard_of_connection_id(connection_id: u32) -> u8 {
    (connection_id & 0xff) as u8
}
