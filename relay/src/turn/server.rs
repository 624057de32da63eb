//! Request handling and the data path of the TURN server.
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
use super::quota::{AllocationQuota, QuotaError, SourceLimiter, TokenBucket};
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

/// A port held for a later Allocate by RESERVATION-TOKEN (EVEN-PORT with R).
#[derive(Debug)]
struct Reservation {
    relay: RelayId,
    bound: SocketAddr,
    expires: Instant,
}

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
    reservations: HashMap<[u8; 8], Reservation>,
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
            reservations: HashMap::new(),
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
            Err((code, _)) => self.reply_error(reply, msg, code, signed, |_| Ok(())),
        }
    }

    fn binding(&mut self, tuple: &FiveTuple, msg: &Message<'_>, reply: &mut [u8]) -> Action {
        let fingerprint = msg.has(attr::FINGERPRINT);
        let budget = msg.as_bytes().len();
        let built = (|| {
            let mut b = MessageBuilder::new(reply, Class::Success, Method::BINDING, msg.transaction_id())?;
            b.add_xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client)?;
            self.maybe_software(&mut b, budget, fingerprint)?;
            if fingerprint {
                b.add_fingerprint()?;
            }
            Ok::<usize, EncodeError>(b.finish())
        })();
        reply_or_drop(built)
    }

    /// Adds SOFTWARE only when the response stays within `budget` bytes
    /// (unauthenticated answers must not amplify).
    fn maybe_software(&self, b: &mut MessageBuilder<'_>, budget: usize, fingerprint: bool) -> Result<(), EncodeError> {
        if let Some(sw) = &self.cfg.software {
            let after = b.len() + 4 + sw.len().div_ceil(4) * 4 + if fingerprint { 8 } else { 0 };
            if after <= budget {
                b.add(attr::SOFTWARE, sw.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Long-term credential check (RFC 8489 §9.2). On failure returns the
    /// action to take (a 400/401/438, or a silent drop when rate limited).
    fn authenticate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        reply: &mut [u8],
    ) -> Result<Authed, Action> {
        let unix = self.unix(now);
        let client_ip = tuple.client.ip();
        if !msg.has_integrity() {
            return Err(self.challenge(now, tuple, msg, reply, 401, AuthFailure::Missing));
        }
        let username = match msg.str_attr(attr::USERNAME) {
            Some(Ok(u)) => Some(u.to_owned()),
            Some(Err(_)) => return Err(self.reply_error(reply, msg, 400, None, |_| Ok(()))),
            None => None,
        };
        let realm = msg.str_attr(attr::REALM);
        let nonce = msg.str_attr(attr::NONCE);
        let (Some(Ok(realm)), Some(Ok(nonce))) = (realm, nonce) else {
            return Err(self.reply_error(reply, msg, 400, None, |_| Ok(())));
        };
        if username.is_none() && !msg.has(attr::USERHASH) {
            return Err(self.reply_error(reply, msg, 400, None, |_| Ok(())));
        }
        match self.auth.check_nonce(nonce, client_ip, unix) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => return Err(self.challenge(now, tuple, msg, reply, 438, AuthFailure::StaleNonce)),
            NonceCheck::Invalid => return Err(self.challenge(now, tuple, msg, reply, 401, AuthFailure::BadNonce)),
        }
        if realm != self.auth.realm() {
            return Err(self.challenge(now, tuple, msg, reply, 401, AuthFailure::UnknownUser));
        }
        // PASSWORD-ALGORITHM(S), RFC 8489 §9.2.4: the client must echo our
        // list unchanged and pick one of it; absent both, MD5.
        let sha256 = match (msg.password_algorithm(), msg.has(attr::PASSWORD_ALGORITHMS)) {
            (None, false) => false,
            (Some(Ok(alg)), true) => {
                let mut algs = [0u16; 4];
                let ok_list = matches!(msg.password_algorithms(&mut algs), Some(Ok(2)))
                    && algs[..2] == [attr::PASSWORD_ALGORITHM_SHA256, attr::PASSWORD_ALGORITHM_MD5];
                match alg {
                    attr::PASSWORD_ALGORITHM_MD5 if ok_list => false,
                    attr::PASSWORD_ALGORITHM_SHA256 if ok_list => true,
                    _ => return Err(self.reply_error(reply, msg, 400, None, |_| Ok(()))),
                }
            }
            _ => return Err(self.reply_error(reply, msg, 400, None, |_| Ok(()))),
        };
        let username = match username {
            Some(u) => u,
            None => match self.username_from_hash(msg) {
                Some(u) => u,
                None => return Err(self.challenge(now, tuple, msg, reply, 401, AuthFailure::UnknownUser)),
            },
        };
        // An allocation's later requests reuse its key: no secret HMACs on refreshes.
        if let Some(alloc) = existing.and_then(|id| self.allocations.get(id)) {
            if *alloc.username != *username {
                self.stats.auth_failure(AuthFailure::WrongUser);
                return Err(self.reply_error(reply, msg, 441, None, |_| Ok(())));
            }
            if let Ok(kind) = msg.check_integrity(alloc.key.as_bytes()) {
                return Ok(Authed {
                    key: alloc.key,
                    kind,
                    username,
                });
            }
        }
        let passwords = match self.auth.passwords(&username, unix) {
            Ok(p) => p,
            Err(e) => {
                let why = match e {
                    AuthError::Expired => AuthFailure::Expired,
                    AuthError::Malformed => AuthFailure::MalformedUsername,
                    AuthError::UnknownUser => AuthFailure::UnknownUser,
                };
                return Err(self.challenge(now, tuple, msg, reply, 401, why));
            }
        };
        let realm = self.auth.realm().to_owned();
        for password in &passwords.items {
            let key = if sha256 {
                Key::Sha256(integrity::long_term_key_sha256(&username, &realm, password))
            } else {
                Key::Md5(integrity::long_term_key_md5(&username, &realm, password))
            };
            if let Ok(kind) = msg.check_integrity(key.as_bytes()) {
                return Ok(Authed { key, kind, username });
            }
        }
        Err(self.challenge(now, tuple, msg, reply, 401, AuthFailure::BadIntegrity))
    }

    /// USERHASH can only name static users: a REST username cannot be recovered from its hash.
    fn username_from_hash(&self, msg: &Message<'_>) -> Option<String> {
        let hash = msg.attr(attr::USERHASH)?;
        self.cfg
            .auth
            .static_users
            .keys()
            .find(|u| super::auth::ct_eq(&integrity::userhash(u, self.auth.realm()), hash))
            .cloned()
    }

    /// 401 or 438 with REALM and a fresh NONCE, unsigned, rate limited per
    /// source address.
    fn challenge(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        reply: &mut [u8],
        code: u16,
        why: AuthFailure,
    ) -> Action {
        self.stats.auth_failure(why);
        if self.cfg.unauth_per_ip_rate > 0 && !self.unauth_limiter.allow(tuple.client.ip(), now) {
            return self.dropped(Drop::SourceLimited);
        }
        let nonce = self.auth.make_nonce(tuple.client.ip(), self.unix(now));
        let realm = self.auth.realm().to_owned();
        let budget = msg.as_bytes().len();
        let fingerprint = msg.has(attr::FINGERPRINT);
        let built = (|| {
            let mut b = MessageBuilder::new(reply, Class::Error, msg.method(), msg.transaction_id())?;
            // The reason phrase is optional; it is dropped when it would make
            // the answer larger than the question.
            let reason = reason(code);
            let fixed = 20 + 8 + 4 + realm.len().div_ceil(4) * 4 + 4 + nonce.as_str().len().div_ceil(4) * 4;
            let fp = if fingerprint { 8 } else { 0 };
            let with_reason = fixed + reason.len().div_ceil(4) * 4 + fp;
            b.add_error_code(code, if with_reason <= budget { reason } else { "" })?;
            b.add(attr::REALM, realm.as_bytes())?;
            b.add(attr::NONCE, nonce.as_str().as_bytes())?;
            if b.len() + 12 + fp <= budget {
                b.add_password_algorithms(&[attr::PASSWORD_ALGORITHM_SHA256, attr::PASSWORD_ALGORITHM_MD5])?;
            }
            if fingerprint {
                b.add_fingerprint()?;
            }
            Ok::<usize, EncodeError>(b.finish())
        })();
        reply_or_drop(built)
    }

    /// An error response; signed with `signed` when the request authenticated.
    fn reply_error(
        &mut self,
        reply: &mut [u8],
        msg: &Message<'_>,
        code: u16,
        signed: Option<(Key, IntegrityKind)>,
        extra: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), EncodeError>,
    ) -> Action {
        let fingerprint = msg.has(attr::FINGERPRINT);
        let budget = msg.as_bytes().len();
        let built = (|| {
            let mut b = MessageBuilder::new(reply, Class::Error, msg.method(), msg.transaction_id())?;
            let reason = reason(code);
            let room = b.len() + 8 + reason.len().div_ceil(4) * 4 + if fingerprint { 8 } else { 0 };
            // Unauthenticated errors keep to the request's size (no amplification).
            let reason = if signed.is_some() || room <= budget { reason } else { "" };
            b.add_error_code(code, reason)?;
            extra(&mut b)?;
            if let Some((key, kind)) = signed {
                sign(&mut b, &key, kind)?;
            }
            if fingerprint {
                b.add_fingerprint()?;
            }
            Ok::<usize, EncodeError>(b.finish())
        })();
        reply_or_drop(built)
    }

    /// A signed success response with attributes from `fill`.
    fn reply_success(
        &mut self,
        reply: &mut [u8],
        msg: &Message<'_>,
        authed: &Authed,
        fill: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), EncodeError>,
    ) -> Action {
        let fingerprint = msg.has(attr::FINGERPRINT);
        let built = (|| {
            let mut b = MessageBuilder::new(reply, Class::Success, msg.method(), msg.transaction_id())?;
            fill(&mut b)?;
            if let Some(sw) = &self.cfg.software {
                b.add(attr::SOFTWARE, sw.as_bytes())?;
            }
            sign(&mut b, &authed.key, authed.kind)?;
            if fingerprint {
                b.add_fingerprint()?;
            }
            Ok::<usize, EncodeError>(b.finish())
        })();
        reply_or_drop(built)
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        authed: Authed,
        reply: &mut [u8],
        io: &mut dyn RelayIo,
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        if let Some(id) = existing {
            let alloc = self.allocations.get(id).ok_or((437, signed))?;
            if alloc.txid != *msg.transaction_id() {
                return Err((437, signed));
            }
            // A retransmission: answer as the first time (RFC 8656 §7.2).
            let relays = alloc.relays;
            let lifetime = alloc.expires.saturating_duration_since(now).as_secs() as u32;
            let mapped = tuple.client;
            return Ok(self.reply_success(reply, msg, &authed, |b| {
                for r in relays.iter().flatten() {
                    b.add_xor_address(attr::XOR_RELAYED_ADDRESS, r.advertised)?;
                }
                b.add_u32(attr::LIFETIME, lifetime)?;
                b.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped)
            }));
        }
        let tcp = match msg.requested_transport() {
            None | Some(Err(_)) => return Err((400, signed)),
            Some(Ok(attr::TRANSPORT_UDP)) => false,
            Some(Ok(attr::TRANSPORT_TCP)) => {
                // RFC 6062 §5.1: TCP allocations only over TCP or TLS control connections.
                if tuple.transport == Transport::Udp {
                    return Err((400, signed));
                }
                true
            }
            Some(Ok(_)) => return Err((442, signed)),
        };
        if self.draining {
            if let Some(alt) = self.cfg.alternate_server {
                let action = self.reply_error(reply, msg, 300, signed, |b| b.add_address(attr::ALTERNATE_SERVER, alt));
                return Ok(action);
            }
            return Err((403, signed));
        }
        let token = match msg.reservation_token() {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return Err((400, signed)),
        };
        let even_port = match msg.even_port() {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(_)) => return Err((400, signed)),
        };
        let requested = match msg.family(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some(Ok(f @ (attr::FAMILY_IPV4 | attr::FAMILY_IPV6))) => Some(f),
            Some(Ok(_)) => return Err((440, signed)),
            Some(Err(_)) => return Err((400, signed)),
        };
        let additional = match msg.family(attr::ADDITIONAL_ADDRESS_FAMILY) {
            None => None,
            Some(Ok(attr::FAMILY_IPV6)) => Some(attr::FAMILY_IPV6),
            Some(_) => return Err((400, signed)),
        };
        // RFC 8656 §7.2: these combinations are contradictory.
        if (token.is_some() && (even_port.is_some() || requested.is_some() || additional.is_some()))
            || (additional.is_some() && (requested.is_some() || even_port.is_some()))
            || (tcp && (even_port.is_some() || token.is_some()))
        {
            return Err((400, signed));
        }
        if let Err(e) = self.cfg.quota.acquire(&authed.username) {
            debug!(user = %authed.username, ?e, "allocation quota exceeded");
            return Err((486, signed));
        }
        let dont_fragment = msg.has(attr::DONT_FRAGMENT);
        let mut relays: [Option<Relayed>; 2] = [None, None];
        let mut reservation_token = None;
        let mut v6_error = None;
        let bound = if let Some(token) = token {
            match self.reservations.remove(&token) {
                Some(r) if r.expires > now => {
                    let advertised = self.advertised(r.bound);
                    relays[family_index(r.bound.ip())] = Some(Relayed {
                        relay: r.relay,
                        advertised,
                        bound: r.bound,
                    });
                    Ok(())
                }
                Some(r) => {
                    io.close(r.relay);
                    Err(508)
                }
                None => Err(508),
            }
        } else {
            let primary = if requested == Some(attr::FAMILY_IPV6) { 1 } else { 0 };
            match self.bind_relay(tuple, primary, tcp, even_port, dont_fragment, now, io) {
                Ok((r, tok)) => {
                    relays[primary] = Some(r);
                    reservation_token = tok;
                    if additional.is_some() {
                        match self.bind_relay(tuple, 1, false, None, dont_fragment, now, io) {
                            Ok((r6, _)) => relays[1] = Some(r6),
                            Err(code) => v6_error = Some(code),
                        }
                    }
                    Ok(())
                }
                Err(code) => Err(code),
            }
        };
        if let Err(code) = bound {
            self.cfg.quota.release(&authed.username);
            return Err((code, signed));
        }
        let lifetime = self.lifetime(msg, false).unwrap_or(self.cfg.default_lifetime);
        let bps = self.cfg.max_bps / 8;
        let pps = self.cfg.max_pps;
        let peers = self.cfg.new_peers_per_sec;
        let alloc = Allocation {
            tuple: *tuple,
            username: authed.username.clone().into_boxed_str(),
            key: authed.key,
            txid: *msg.transaction_id(),
            relays,
            tcp,
            created: now,
            expires: now + lifetime,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            channel_by_peer: HashMap::new(),
            bytes: TokenBucket::new(bps, bps),
            packets: TokenBucket::new(pps, pps),
            new_peers: TokenBucket::new(peers, peers.saturating_mul(2)),
        };
        let id = self.allocations.insert(alloc);
        self.stats.allocations = self.allocations.len() as u64;
        self.stats.allocations_created += 1;
        self.schedule_sweep(now);
        info!(
            alloc = id.0,
            shard = self.shard,
            client = %tuple.client,
            user = %authed.username,
            relayed = ?relays.iter().flatten().map(|r| r.advertised).collect::<Vec<_>>(),
            lifetime = lifetime.as_secs(),
            "allocation created"
        );
        let mapped = tuple.client;
        Ok(self.reply_success(reply, msg, &authed, |b| {
            for r in relays.iter().flatten() {
                b.add_xor_address(attr::XOR_RELAYED_ADDRESS, r.advertised)?;
            }
            if let Some(code) = v6_error {
                b.add(attr::ADDRESS_ERROR_CODE, &address_error_code(attr::FAMILY_IPV6, code))?;
            }
            b.add_u32(attr::LIFETIME, lifetime.as_secs() as u32)?;
            if let Some(t) = reservation_token {
                b.add(attr::RESERVATION_TOKEN, &t)?;
            }
            b.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped)
        }))
    }

    /// The requested lifetime clamped per RFC 8656 §7.2 (Allocate) / §7.3
    /// (Refresh, where 0 deletes): below the default means the default, above
    /// the maximum means the maximum.
    fn lifetime(&self, msg: &Message<'_>, refresh: bool) -> Option<Duration> {
        let requested = match msg.u32_attr(attr::LIFETIME) {
            Some(Ok(s)) => Duration::from_secs(s as u64),
            _ => return None,
        };
        if refresh && requested.is_zero() {
            return Some(Duration::ZERO);
        }
        Some(requested.clamp(self.cfg.default_lifetime, self.cfg.max_lifetime))
    }

    fn advertised(&self, bound: SocketAddr) -> SocketAddr {
        let ip = match bound.ip() {
            IpAddr::V4(ip) => IpAddr::V4(self.cfg.external_ipv4.unwrap_or(ip)),
            IpAddr::V6(ip) => IpAddr::V6(self.cfg.external_ipv6.unwrap_or(ip)),
        };
        SocketAddr::new(ip, bound.port())
    }

    /// The address relay sockets of `family` (0 = v4, 1 = v6) bind to: the
    /// configured one, else the address the client reached when it is specific.
    fn relay_ip(&self, tuple: &FiveTuple, family: usize) -> Option<IpAddr> {
        let configured = if family == 0 {
            self.cfg.relay_ipv4.map(IpAddr::V4)
        } else {
            self.cfg.relay_ipv6.map(IpAddr::V6)
        };
        configured.or_else(|| {
            let ip = tuple.server.ip();
            (family_index(ip) == family && !ip.is_unspecified()).then_some(ip)
        })
    }

    /// Binds a relay socket on a random free port of the configured range.
    #[allow(clippy::too_many_arguments)]
    fn bind_relay(
        &mut self,
        tuple: &FiveTuple,
        family: usize,
        tcp: bool,
        even_port: Option<bool>,
        dont_fragment: bool,
        now: Instant,
        io: &mut dyn RelayIo,
    ) -> Result<(Relayed, Option<[u8; 8]>), u16> {
        let ip = self.relay_ip(tuple, family).ok_or(440u16)?;
        let (lo, hi) = (self.cfg.port_min, self.cfg.port_max);
        for _ in 0..PORT_ATTEMPTS {
            let mut port = self.rng.random_range(lo..=hi);
            if even_port.is_some() {
                port &= !1;
                if port < lo || (even_port == Some(true) && port == u16::MAX) {
                    continue;
                }
            }
            let addr = SocketAddr::new(ip, port);
            let bound = if tcp {
                io.listen_tcp(addr)
            } else {
                io.bind_udp(addr, dont_fragment)
            };
            let relay = match bound {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    debug!(%addr, error = %e, "relay bind failed");
                    return Err(508);
                }
            };
            let mut token = None;
            if even_port == Some(true) {
                // Hold the next port for a later Allocate with RESERVATION-TOKEN.
                let next = SocketAddr::new(ip, port + 1);
                match io.bind_udp(next, dont_fragment) {
                    Ok(held) => {
                        let t: [u8; 8] = self.rng.random();
                        self.reservations.insert(
                            t,
                            Reservation {
                                relay: held,
                                bound: next,
                                expires: now + PENDING_TIMEOUT,
                            },
                        );
                        token = Some(t);
                    }
                    Err(_) => {
                        io.close(relay);
                        continue;
                    }
                }
            }
            return Ok((
                Relayed {
                    relay,
                    advertised: self.advertised(addr),
                    bound: addr,
                },
                token,
            ));
        }
        Err(508)
    }

    fn refresh(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        authed: &Authed,
        reply: &mut [u8],
        io: &mut dyn RelayIo,
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        let id = existing.ok_or((437, signed))?;
        let family = match msg.family(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some(Ok(attr::FAMILY_IPV4)) => Some(0),
            Some(Ok(attr::FAMILY_IPV6)) => Some(1),
            Some(_) => return Err((440, signed)),
        };
        let lifetime = self.lifetime(msg, true).unwrap_or(self.cfg.default_lifetime);
        let alloc = self.allocations.get_mut(id).ok_or((437, signed))?;
        if let Some(f) = family {
            if alloc.relays[f].is_none() {
                return Err((443, signed));
            }
        }
        if lifetime.is_zero() {
            let other_left = family.is_some_and(|f| alloc.relays[1 - f].is_some());
            if let (Some(f), true) = (family, other_left) {
                // Only this family of a dual allocation ends (RFC 8656 §7.3).
                if let Some(r) = alloc.relays[f].take() {
                    io.close(r.relay);
                    self.allocations.unindex_relay(r.relay);
                }
            } else {
                self.delete_allocation(now, id, io, "refreshed to zero");
            }
        } else {
            alloc.expires = now + lifetime;
        }
        let secs = lifetime.as_secs() as u32;
        Ok(self.reply_success(reply, msg, authed, |b| b.add_u32(attr::LIFETIME, secs)))
    }

    /// Validates the peer addresses of a CreatePermission or ChannelBind.
    fn check_peer(&self, alloc: &Allocation, peer: SocketAddr) -> Result<(), u16> {
        if !alloc.has_family(peer.ip()) {
            return Err(443);
        }
        if !self.cfg.peer_filter.is_allowed(peer.ip()) {
            return Err(403);
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        authed: &Authed,
        reply: &mut [u8],
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        let id = existing.ok_or((437, signed))?;
        let alloc = self.allocations.get(id).ok_or((437, signed))?;
        let mut peers = [IpAddr::V4(Ipv4Addr::UNSPECIFIED); 16];
        let mut n = 0;
        for peer in msg.xor_addresses(attr::XOR_PEER_ADDRESS) {
            let peer = peer.map_err(|_| (400, signed))?;
            if n == peers.len() {
                return Err((400, signed));
            }
            self.check_peer(alloc, peer).map_err(|code| (code, signed))?;
            peers[n] = peer.ip();
            n += 1;
        }
        if n == 0 {
            return Err((400, signed));
        }
        let deadline = now + self.cfg.permission_lifetime;
        self.install_permissions(now, id, &peers[..n], deadline)
            .map_err(|code| (code, signed))?;
        Ok(self.reply_success(reply, msg, authed, |_| Ok(())))
    }

    /// Installs or refreshes permissions, all or none (RFC 8656 §9.2).
    fn install_permissions(&mut self, now: Instant, id: AllocId, ips: &[IpAddr], deadline: Instant) -> Result<(), u16> {
        let alloc = self.allocations.get_mut(id).ok_or(437u16)?;
        let new = ips.iter().filter(|ip| !alloc.permissions.contains_key(ip)).count();
        if alloc.permissions.len() + new > MAX_PERMISSIONS {
            return Err(508);
        }
        if new > 0 && !alloc.new_peers.try_take(now, new as u64) {
            return Err(508);
        }
        for ip in ips {
            alloc.permissions.insert(*ip, deadline);
        }
        self.stats.permissions += new as u64;
        Ok(())
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        authed: &Authed,
        reply: &mut [u8],
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        let id = existing.ok_or((437, signed))?;
        let number = match msg.channel_number() {
            Some(Ok(n)) if (channel_data::MIN_CHANNEL..=channel_data::MAX_CHANNEL).contains(&n) => n,
            _ => return Err((400, signed)),
        };
        let peer = match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Some(Ok(p)) => p,
            _ => return Err((400, signed)),
        };
        let alloc = self.allocations.get(id).ok_or((437, signed))?;
        if alloc.tcp {
            return Err((400, signed));
        }
        self.check_peer(alloc, peer).map_err(|code| (code, signed))?;
        // A channel stays with its peer and a peer with its channel (RFC 8656 §11.2).
        if let Some(b) = alloc.channels.get(&number) {
            if b.peer != peer {
                return Err((400, signed));
            }
        } else if alloc.channel_by_peer.get(&peer).is_some_and(|n| *n != number) || alloc.channels.len() >= MAX_CHANNELS
        {
            return Err((400, signed));
        }
        self.install_permissions(now, id, &[peer.ip()], now + self.cfg.permission_lifetime)
            .map_err(|code| (code, signed))?;
        let expires = now + self.cfg.channel_lifetime;
        let alloc = self.allocations.get_mut(id).ok_or((437, signed))?;
        if alloc
            .channels
            .insert(number, super::allocation::ChannelBinding { peer, expires })
            .is_none()
        {
            self.stats.channels += 1;
        }
        alloc.channel_by_peer.insert(peer, number);
        Ok(self.reply_success(reply, msg, authed, |_| Ok(())))
    }

    fn new_connection_id(&mut self) -> u32 {
        loop {
            let id = (self.rng.random::<u32>() & !0xff) | self.shard as u32;
            if !self.tcp_peers.contains_key(&id) {
                return id;
            }
        }
    }

    fn connect(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        authed: &Authed,
        io: &mut dyn RelayIo,
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        let id = existing.ok_or((437, signed))?;
        let peer = match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Some(Ok(p)) => p,
            _ => return Err((400, signed)),
        };
        let alloc = self.allocations.get(id).ok_or((437, signed))?;
        if !alloc.tcp {
            return Err((400, signed));
        }
        self.check_peer(alloc, peer).map_err(|code| (code, signed))?;
        // RFC 6062 §5.2: one connection per peer address.
        if self.tcp_peers.values().any(|p| p.alloc == id && p.peer == peer) {
            return Err((446, signed));
        }
        let relay = alloc.relay_for(&peer).map(|r| r.relay).ok_or((443, signed))?;
        // Connect installs the permission it needs (as coturn does).
        self.install_permissions(now, id, &[peer.ip()], now + self.cfg.permission_lifetime)
            .map_err(|code| (code, signed))?;
        let cid = self.new_connection_id();
        self.tcp_peers.insert(
            cid,
            TcpPeer {
                alloc: id,
                peer,
                connecting: Some((*tuple, *msg.transaction_id(), authed.kind)),
                deadline: now + PENDING_TIMEOUT,
                bound: false,
            },
        );
        self.stats.tcp_connections = self.tcp_peers.len() as u64;
        io.tcp_connect(relay, peer, cid);
        Ok(Action::Nothing)
    }

    fn connection_bind(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
        reply: &mut [u8],
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        if tuple.transport == Transport::Udp {
            return Err((400, signed));
        }
        let cid = match msg.u32_attr(attr::CONNECTION_ID) {
            Some(Ok(c)) => c,
            _ => return Err((400, signed)),
        };
        let Some(p) = self.tcp_peers.get(&cid) else {
            return Err((400, signed));
        };
        if p.bound || p.connecting.is_some() || p.deadline <= now {
            return Err((400, signed));
        }
        let owner = self.allocations.get(p.alloc).ok_or((400, signed))?;
        if *owner.username != *authed.username {
            return Err((441, signed));
        }
        if let Some(p) = self.tcp_peers.get_mut(&cid) {
            p.bound = true;
        }
        self.events.push_back(Event::TcpBound {
            tuple: *tuple,
            connection_id: cid,
        });
        Ok(self.reply_success(reply, msg, authed, |_| Ok(())))
    }

    /// Outcome of [`RelayIo::tcp_connect`]. Queues the Connect response.
    pub fn handle_tcp_connected(&mut self, now: Instant, connection_id: u32, result: std::io::Result<()>) {
        let Some(p) = self.tcp_peers.get_mut(&connection_id) else {
            return;
        };
        let Some((tuple, tid, kind)) = p.connecting.take() else {
            return;
        };
        let alloc_id = p.alloc;
        p.deadline = now + PENDING_TIMEOUT;
        let Some(key) = self.allocations.get(alloc_id).map(|a| a.key) else {
            self.tcp_peers.remove(&connection_id);
            return;
        };
        let mut buf = [0u8; 256];
        let built = (|| {
            let ok = result.is_ok();
            let class = if ok { Class::Success } else { Class::Error };
            let mut b = MessageBuilder::new(&mut buf, class, Method::CONNECT, &tid)?;
            if ok {
                b.add_u32(attr::CONNECTION_ID, connection_id)?;
            } else {
                b.add_error_code(447, reason(447))?;
            }
            sign(&mut b, &key, kind)?;
            b.add_fingerprint()?;
            Ok::<usize, EncodeError>(b.finish())
        })();
        if result.is_err() {
            self.tcp_peers.remove(&connection_id);
            self.stats.tcp_connections = self.tcp_peers.len() as u64;
        }
        if let Ok(n) = built {
            self.events.push_back(Event::Transmit {
                tuple,
                data: buf[..n].to_vec(),
            });
        }
    }

    /// A peer opened a TCP connection to the TCP relay listener `relay`.
    /// Returns the CONNECTION-ID to keep it under (a ConnectionAttempt
    /// indication is queued), or `None` when no permission allows that peer
    /// and the shell must close it.
    pub fn handle_tcp_incoming(&mut self, now: Instant, relay: RelayId, peer: SocketAddr) -> Option<u32> {
        let id = self.allocations.by_relay(relay)?;
        let alloc = self.allocations.get(id)?;
        if !alloc.permitted(peer.ip(), now) {
            self.stats.drop(Drop::NoPermission);
            return None;
        }
        let tuple = alloc.tuple;
        let cid = self.new_connection_id();
        self.tcp_peers.insert(
            cid,
            TcpPeer {
                alloc: id,
                peer,
                connecting: None,
                deadline: now + PENDING_TIMEOUT,
                bound: false,
            },
        );
        self.stats.tcp_connections = self.tcp_peers.len() as u64;
        let mut buf = [0u8; 128];
        let tid: TransactionId = self.rng.random();
        let built = (|| {
            let mut b = MessageBuilder::new(&mut buf, Class::Indication, Method::CONNECTION_ATTEMPT, &tid)?;
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer)?;
            b.add_u32(attr::CONNECTION_ID, cid)?;
            b.add_fingerprint()?;
            Ok::<usize, EncodeError>(b.finish())
        })();
        if let Ok(n) = built {
            self.events.push_back(Event::Transmit {
                tuple,
                data: buf[..n].to_vec(),
            });
        }
        Some(cid)
    }

    /// A peer TCP connection ended (either side closed, or the pipe failed).
    pub fn handle_tcp_closed(&mut self, connection_id: u32) {
        self.tcp_peers.remove(&connection_id);
        self.stats.tcp_connections = self.tcp_peers.len() as u64;
    }

    // ------------------------------------------------------------ time, life

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
        self.reservations.retain(|_, r| {
            let keep = r.expires > now;
            if !keep {
                io.close(r.relay);
            }
            keep
        });
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
        let idle = self.allocations.is_empty() && self.reservations.is_empty() && self.tcp_peers.is_empty();
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

fn reply_or_drop(built: Result<usize, EncodeError>) -> Action {
    match built {
        Ok(n) => Action::Reply(n),
        Err(_) => Action::Nothing,
    }
}

fn sign(b: &mut MessageBuilder<'_>, key: &Key, kind: IntegrityKind) -> Result<(), EncodeError> {
    match kind {
        IntegrityKind::Sha1 => b.add_message_integrity(key.as_bytes()),
        IntegrityKind::Sha256 => b.add_message_integrity_sha256(key.as_bytes()),
    }
}

fn error_message(
    buf: &mut [u8],
    method: Method,
    tid: &TransactionId,
    code: u16,
    key: &Key,
    kind: IntegrityKind,
) -> Result<usize, EncodeError> {
    let mut b = MessageBuilder::new(buf, Class::Error, method, tid)?;
    b.add_error_code(code, reason(code))?;
    sign(&mut b, key, kind)?;
    b.add_fingerprint()?;
    Ok(b.finish())
}

/// ADDRESS-ERROR-CODE value (RFC 8656 §18.9): family, reserved, class, number.
fn address_error_code(family: u8, code: u16) -> [u8; 4] {
    [family, 0, (code / 100) as u8, (code % 100) as u8]
}

/// Reason phrases of the error codes this server sends.
pub fn reason(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        446 => "Connection Already Exists",
        447 => "Connection Timeout or Failure",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

/// Writes a Data indication header (STUN header, XOR-PEER-ADDRESS, DATA
/// attribute header) in the bytes just before `payload_start`, so the peer's
/// payload is sent where it was received. Returns where the message starts.
fn write_data_indication_header(
    buf: &mut [u8],
    payload_start: usize,
    tid: &TransactionId,
    peer: SocketAddr,
    len: usize,
) -> usize {
    let addr_len = if peer.is_ipv4() { 8 } else { 20 };
    let header_len = 20 + 4 + addr_len + 4;
    let start = payload_start - header_len;
    let body_len = 4 + addr_len + 4 + len + channel_data::stream_padding(len);
    let h = &mut buf[start..payload_start];
    h[0..2].copy_from_slice(&(0x0010u16 | Method::DATA.0).to_be_bytes());
    h[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    h[8..20].copy_from_slice(tid);
    h[20..22].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    h[22..24].copy_from_slice(&(addr_len as u16).to_be_bytes());
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let a = &mut h[24..24 + addr_len];
    a[0] = 0;
    a[2..4].copy_from_slice(&(peer.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    match peer.ip() {
        IpAddr::V4(ip) => {
            a[1] = attr::FAMILY_IPV4;
            for (i, o) in ip.octets().iter().enumerate() {
                a[4 + i] = o ^ cookie[i];
            }
        }
        IpAddr::V6(ip) => {
            a[1] = attr::FAMILY_IPV6;
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(tid);
            for (i, o) in ip.octets().iter().enumerate() {
                a[4 + i] = o ^ mask[i];
            }
        }
    }
    let d = 24 + addr_len;
    h[d..d + 2].copy_from_slice(&attr::DATA.to_be_bytes());
    h[d + 2..d + 4].copy_from_slice(&(len as u16).to_be_bytes());
    start
}

#[allow(dead_code)]
fn _assert_types(_: QuotaError, _: Ipv6Addr) {}
