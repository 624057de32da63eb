//! Request handling and the data path of the TURN server.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::AuthConfig;
use super::peer_filter::PeerFilter;
use super::quota::AllocationQuota;

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
    ToPeer { relay: RelayId, peer: SocketAddr, range: Range<usize> },
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
            peer_filter: PeerFilter { allow_loopback: true, ..Default::default() },
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

#[allow(dead_code)]
fn _unused(_: IpAddr) {}

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

/// The TURN server state of one shard.
pub struct Server {
    _cfg: Arc<ServerConfig>,
}

impl Server {
    /// `shard` is this shard's index (< 256); it is encoded in the low byte of
    /// every RFC 6062 CONNECTION-ID so a ConnectionBind that lands on another
    /// shard can be routed back with [`shard_of_connection_id`].
    pub fn new(cfg: Arc<ServerConfig>, shard: u8) -> Self {
        let _ = shard;
        Server { _cfg: cfg }
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
        let _ = (now, tuple, packet, reply, io);
        todo!()
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
        let _ = (now, relay, peer, buf, payload);
        todo!()
    }

    /// Expires allocations, permissions, channels, reservations and pending
    /// TCP connections whose time has come.
    pub fn handle_timeout(&mut self, now: Instant, io: &mut dyn RelayIo) {
        let _ = (now, io);
        todo!()
    }

    /// When [`Server::handle_timeout`] next has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }

    /// Drains queued [`Event`]s; call after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }

    /// A client's TCP or TLS connection closed: its allocation ends (RFC 6062 §4.1).
    pub fn handle_client_closed(&mut self, now: Instant, tuple: &FiveTuple, io: &mut dyn RelayIo) {
        let _ = (now, tuple, io);
        todo!()
    }

    /// Outcome of [`RelayIo::tcp_connect`]. Queues the Connect response.
    pub fn handle_tcp_connected(&mut self, now: Instant, connection_id: u32, result: std::io::Result<()>) {
        let _ = (now, connection_id, result);
        todo!()
    }

    /// A peer opened a TCP connection to the TCP relay listener `relay`.
    /// Returns the CONNECTION-ID to keep it under (a ConnectionAttempt
    /// indication is queued), or `None` when no permission allows that peer
    /// and the shell must close it.
    pub fn handle_tcp_incoming(&mut self, now: Instant, relay: RelayId, peer: SocketAddr) -> Option<u32> {
        let _ = (now, relay, peer);
        todo!()
    }

    /// A peer TCP connection ended (either side closed, or the pipe failed).
    pub fn handle_tcp_closed(&mut self, connection_id: u32) {
        let _ = connection_id;
        todo!()
    }

    /// While draining, new allocations are refused (403, or 300 with
    /// ALTERNATE-SERVER when configured); existing ones keep working.
    pub fn set_draining(&mut self, draining: bool) {
        let _ = draining;
        todo!()
    }

    /// Number of live allocations (the shell exits a drain when it reaches 0).
    pub fn allocation_count(&self) -> usize {
        todo!()
    }

    /// Counters for the metrics exporter.
    pub fn stats(&self) -> &super::stats::Stats {
        todo!()
    }
}

/// The shard index encoded in a CONNECTION-ID.
pub fn shard_of_connection_id(connection_id: u32) -> u8 {
    (connection_id & 0xff) as u8
}
