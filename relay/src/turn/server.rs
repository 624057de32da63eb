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
fn _unused(_: IpAddr, _: Instant) {}

/// The TURN server state of one shard.
pub struct Server {
    _cfg: Arc<ServerConfig>,
}
