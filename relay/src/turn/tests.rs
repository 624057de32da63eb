//! The TURN core driven by a scripted client, with time as an input: no
//! sockets, no sleeps. A fake [`RelayIo`] stands in for the kernel's port
//! table so tests can see which relay sockets exist.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::peer_filter::PeerFilter;
use super::quota::AllocationQuota;
use super::server::{Action, Event, FiveTuple, RelayId, RelayIo, Server, ServerConfig, Transport, PEER_HEADROOM};
use crate::stun::attr;
use crate::stun::integrity::long_term_key_md5;
use crate::stun::{ChannelData, Class, Message, MessageBuilder, Method, TransactionId};

const SECRET: &[u8] = b"s3cret";
const T0_UNIX: u64 = 1_800_000_000;

#[derive(Default)]
struct FakeIo {
    next: u32,
    bound: HashMap<RelayId, SocketAddr>,
    closed: Vec<RelayId>,
    connects: Vec<(RelayId, SocketAddr, u32)>,
    tcp_closed: Vec<u32>,
    reserved: HashMap<[u8; 8], (SocketAddr, Instant)>,
}

impl RelayIo for FakeIo {
    fn bind_udp(&mut self, addr: SocketAddr, _df: bool) -> std::io::Result<RelayId> {
        if self.bound.values().any(|a| *a == addr) {
            return Err(std::io::ErrorKind::AddrInUse.into());
        }
        self.next += 1;
        self.bound.insert(RelayId(self.next), addr);
        Ok(RelayId(self.next))
    }
    fn reserve_udp(&mut self, addr: SocketAddr, token: [u8; 8], expires: Instant) -> std::io::Result<()> {
        if self.reserved.values().any(|(a, _)| *a == addr) {
            return Err(std::io::ErrorKind::AddrInUse.into());
        }
        self.reserved.insert(token, (addr, expires));
        Ok(())
    }
    fn take_reserved(&mut self, token: [u8; 8], now: Instant, df: bool) -> Option<(RelayId, SocketAddr)> {
        let (addr, expires) = self.reserved.remove(&token)?;
        if expires <= now {
            return None;
        }
        self.bind_udp(addr, df).ok().map(|id| (id, addr))
    }
    fn listen_tcp(&mut self, addr: SocketAddr) -> std::io::Result<RelayId> {
        self.bind_udp(addr, false)
    }
    fn close(&mut self, relay: RelayId) {
        self.bound.remove(&relay);
        self.closed.push(relay);
    }
    fn tcp_connect(&mut self, relay: RelayId, peer: SocketAddr, connection_id: u32) {
        self.connects.push((relay, peer, connection_id));
    }
    fn tcp_close(&mut self, connection_id: u32) {
        self.tcp_closed.push(connection_id);
    }
}

struct Harness {
    server: Server,
    io: FakeIo,
    t0: Instant,
    now: Instant,
    reply: Vec<u8>,
}

fn config(f: impl FnOnce(&mut ServerConfig)) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::for_tests(SECRET);
    f(&mut cfg);
    Arc::new(cfg)
}

impl Harness {
    fn new(cfg: Arc<ServerConfig>) -> Self {
        let t0 = Instant::now();
        Harness {
            server: Server::with_clock(cfg, 3, t0, T0_UNIX),
            io: FakeIo::default(),
            t0,
            now: t0,
            reply: vec![0; 2048],
        }
    }
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now, &mut self.io);
    }
    fn unix(&self) -> u64 {
        T0_UNIX + (self.now - self.t0).as_secs()
    }
    /// Sends `packet` and returns the reply bytes, if the core replied.
    fn send(&mut self, tuple: &FiveTuple, packet: &[u8]) -> Option<Vec<u8>> {
        match self
            .server
            .handle_client(self.now, tuple, packet, &mut self.reply, &mut self.io)
        {
            Action::Reply(n) => Some(self.reply[..n].to_vec()),
            _ => None,
        }
    }
    fn action(&mut self, tuple: &FiveTuple, packet: &[u8]) -> Action {
        self.server
            .handle_client(self.now, tuple, packet, &mut self.reply, &mut self.io)
    }
}

fn tuple(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), port),
        server: "127.0.0.1:3478".parse().unwrap(),
    }
}

fn tid(n: u8) -> TransactionId {
    [n; 12]
}

/// A REST user valid until `expiry`.
struct Creds {
    username: String,
    password: String,
}

fn rest(expiry: u64, user: &str) -> Creds {
    let username = format!("{expiry}:{user}");
    let password = super::auth::rest_password(SECRET, &username);
    Creds { username, password }
}

/// What the client remembers from the 401.
struct Session {
    realm: String,
    nonce: String,
}

fn error_code(reply: &[u8]) -> Option<u16> {
    let m = Message::parse(reply).ok()?;
    (m.class() == Class::Error)
        .then(|| m.error_code().and_then(|r| r.ok()).map(|(c, _)| c))
        .flatten()
}

type Attrs<'a> = &'a dyn Fn(&mut MessageBuilder<'_>);

/// Builds a request; with `auth`, adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY.
fn request(method: Method, t: TransactionId, auth: Option<(&Creds, &Session)>, attrs: Attrs<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, method, &t).unwrap();
    attrs(&mut b);
    if let Some((c, s)) = auth {
        b.add(attr::USERNAME, c.username.as_bytes()).unwrap();
        b.add(attr::REALM, s.realm.as_bytes()).unwrap();
        b.add(attr::NONCE, s.nonce.as_bytes()).unwrap();
        b.add_message_integrity(&long_term_key_md5(&c.username, &s.realm, &c.password))
            .unwrap();
    }
    b.add_fingerprint().unwrap();
    let n = b.finish();
    buf.truncate(n);
    buf
}

fn udp_transport(b: &mut MessageBuilder<'_>) {
    b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0])
        .unwrap();
}

impl Harness {
    /// The 401 round trip.
    fn challenge(&mut self, t: &FiveTuple) -> Session {
        let req = request(Method::ALLOCATE, tid(1), None, &udp_transport);
        let reply = self.send(t, &req).expect("401");
        let m = Message::parse(&reply).unwrap();
        assert_eq!(error_code(&reply), Some(401));
        Session {
            realm: m.str_attr(attr::REALM).unwrap().unwrap().to_owned(),
            nonce: m.str_attr(attr::NONCE).unwrap().unwrap().to_owned(),
        }
    }
    /// A full UDP allocation; returns the session and the relayed address.
    fn allocate(&mut self, t: &FiveTuple, c: &Creds) -> (Session, SocketAddr) {
        self.allocate_with(t, c, &udp_transport)
    }
    /// A full RFC 6062 (TCP) allocation.
    fn allocate_tcp(&mut self, t: &FiveTuple, c: &Creds) -> (Session, SocketAddr) {
        self.allocate_with(t, c, &|b| {
            b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_TCP, 0, 0, 0])
                .unwrap()
        })
    }
    fn allocate_with(&mut self, t: &FiveTuple, c: &Creds, transport: Attrs<'_>) -> (Session, SocketAddr) {
        let s = self.challenge(t);
        let req = request(Method::ALLOCATE, tid(2), Some((c, &s)), transport);
        let reply = self.send(t, &req).expect("allocate reply");
        let m = Message::parse(&reply).unwrap();
        assert_eq!(m.class(), Class::Success, "allocate failed: {:?}", error_code(&reply));
        let key = long_term_key_md5(&c.username, &s.realm, &c.password);
        m.check_integrity(&key).expect("success is signed with the user's key");
        let relayed = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
        assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(), t.client);
        (s, relayed)
    }
    fn relay_of(&self, addr: SocketAddr) -> RelayId {
        *self.io.bound.iter().find(|(_, a)| **a == addr).expect("relay bound").0
    }
    /// Delivers a datagram from `peer` to relay `relay`; returns the bytes for the client.
    fn peer_sends(&mut self, relay: RelayId, peer: SocketAddr, payload: &[u8]) -> Option<(FiveTuple, Vec<u8>)> {
        let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + 16];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
        match self.server.handle_peer(self.now, relay, peer, &mut buf, range) {
            Action::ToClient { tuple, range } => Some((tuple, buf[range].to_vec())),
            _ => None,
        }
    }
}

fn peer() -> SocketAddr {
    "127.0.0.1:9999".parse().unwrap()
}

fn xor_peer(p: SocketAddr) -> impl Fn(&mut MessageBuilder<'_>) {
    move |b| b.add_xor_address(attr::XOR_PEER_ADDRESS, p).unwrap()
}

#[test]
fn binding_reports_the_mapped_address() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let reply = h.send(&t, &request(Method::BINDING, tid(9), None, &|_| {})).unwrap();
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.transaction_id(), &tid(9));
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(), t.client);
}

#[test]
fn allocate_challenges_then_succeeds() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let s = h.challenge(&t);
    assert_eq!(s.realm, "rtc.test");
    assert!(!s.nonce.is_empty());
    let req = request(Method::ALLOCATE, tid(2), Some((&c, &s)), &udp_transport);
    let reply = h.send(&t, &req).unwrap();
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.class(), Class::Success);
    let relayed = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(relayed.port() >= 49152);
    assert_eq!(m.u32_attr(attr::LIFETIME).unwrap().unwrap(), 600);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.io.bound.len(), 1);
}

#[test]
fn bad_credentials_are_refused_with_401() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let s = h.challenge(&t);
    let cases = [
        Creds {
            username: format!("{}:alice", T0_UNIX + 60),
            password: "wrong".into(),
        },
        rest(T0_UNIX - 1, "alice"),
        Creds {
            username: "alice".into(),
            password: "x".into(),
        },
        Creds {
            username: "notanumber:alice".into(),
            password: "x".into(),
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let req = request(Method::ALLOCATE, tid(10 + i as u8), Some((c, &s)), &udp_transport);
        let reply = h.send(&t, &req).unwrap();
        assert_eq!(error_code(&reply), Some(401), "case {i}: {}", c.username);
        let m = Message::parse(&reply).unwrap();
        assert!(m.has(attr::REALM) && m.has(attr::NONCE));
    }
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn stale_nonce_gets_438_and_a_fresh_nonce_works() {
    let mut h = Harness::new(config(|c| c.auth.nonce_lifetime = Duration::from_secs(300)));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 7200, "alice");
    let (s, _) = h.allocate(&t, &c);
    h.advance(Duration::from_secs(301));
    let req = request(Method::REFRESH, tid(3), Some((&c, &s)), &|_| {});
    let reply = h.send(&t, &req).unwrap();
    assert_eq!(error_code(&reply), Some(438));
    let fresh = Message::parse(&reply)
        .unwrap()
        .str_attr(attr::NONCE)
        .unwrap()
        .unwrap()
        .to_owned();
    assert_ne!(fresh, s.nonce);
    let s2 = Session {
        realm: s.realm.clone(),
        nonce: fresh,
    };
    let reply = h
        .send(&t, &request(Method::REFRESH, tid(4), Some((&c, &s2)), &|_| {}))
        .unwrap();
    assert_eq!(Message::parse(&reply).unwrap().class(), Class::Success);
}

#[test]
fn retransmitted_allocate_is_answered_again_but_a_new_one_gets_437() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let (s, relayed) = h.allocate(&t, &c);
    let again = h
        .send(&t, &request(Method::ALLOCATE, tid(2), Some((&c, &s)), &udp_transport))
        .unwrap();
    let m = Message::parse(&again).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap(), relayed);
    let other = h
        .send(&t, &request(Method::ALLOCATE, tid(7), Some((&c, &s)), &udp_transport))
        .unwrap();
    assert_eq!(error_code(&other), Some(437));
    assert_eq!(h.io.bound.len(), 1);
}

#[test]
fn channel_data_flows_both_ways_without_copies_of_the_payload() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let (s, relayed) = h.allocate(&t, &c);
    let relay = h.relay_of(relayed);
    let bind = request(Method::CHANNEL_BIND, tid(5), Some((&c, &s)), &|b| {
        b.add_u32(attr::CHANNEL_NUMBER, 0x4001 << 16).unwrap();
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer()).unwrap();
    });
    assert_eq!(
        Message::parse(&h.send(&t, &bind).unwrap()).unwrap().class(),
        Class::Success
    );

    let mut cd = vec![0x40, 0x01, 0, 5];
    cd.extend_from_slice(b"hello\0\0\0");
    match h.action(&t, &cd) {
        Action::ToPeer {
            relay: r,
            peer: p,
            range,
        } => {
            assert_eq!((r, p), (relay, peer()));
            assert_eq!(&cd[range], b"hello");
        }
        other => panic!("expected ToPeer, got {other:?}"),
    }
    let (to, bytes) = h.peer_sends(relay, peer(), b"world!").unwrap();
    assert_eq!(to, t);
    let back = ChannelData::parse(&bytes).unwrap();
    assert_eq!((back.channel, back.data), (0x4001, &b"world!"[..]));
    assert_eq!(bytes.len(), 10, "no padding over UDP");
    assert_eq!(h.server.stats().packets_to_peer, 1);
    assert_eq!(h.server.stats().packets_to_client, 1);
}

#[test]
fn send_and_data_indications_need_a_permission() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let (s, relayed) = h.allocate(&t, &c);
    let relay = h.relay_of(relayed);
    let send = {
        let mut buf = vec![0u8; 256];
        let mut b = MessageBuilder::new(&mut buf, Class::Indication, Method::SEND, &tid(6)).unwrap();
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer()).unwrap();
        b.add(attr::DATA, b"ping").unwrap();
        let n = b.finish();
        buf.truncate(n);
        buf
    };
    assert_eq!(h.action(&t, &send), Action::Nothing, "no permission yet");
    assert!(
        h.peer_sends(relay, peer(), b"x").is_none(),
        "peer without permission is dropped"
    );

    let perm = request(Method::CREATE_PERMISSION, tid(7), Some((&c, &s)), &xor_peer(peer()));
    assert_eq!(
        Message::parse(&h.send(&t, &perm).unwrap()).unwrap().class(),
        Class::Success
    );
    match h.action(&t, &send) {
        Action::ToPeer { range, .. } => assert_eq!(&send[range], b"ping"),
        other => panic!("expected ToPeer, got {other:?}"),
    }
    let (_, bytes) = h.peer_sends(relay, peer(), b"pong").unwrap();
    let m = Message::parse(&bytes).expect("a valid Data indication");
    assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(), peer());
    assert_eq!(m.attr(attr::DATA).unwrap(), b"pong");

    // Permissions last five minutes unless refreshed.
    h.advance(Duration::from_secs(301));
    assert!(h.peer_sends(relay, peer(), b"late").is_none());
}

#[test]
fn ipv6_peers_get_data_indications_too() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let s = h.challenge(&t);
    let req = request(Method::ALLOCATE, tid(2), Some((&c, &s)), &|b| {
        udp_transport(b);
        b.add(attr::ADDITIONAL_ADDRESS_FAMILY, &[attr::FAMILY_IPV6, 0, 0, 0])
            .unwrap();
    });
    let reply = h.send(&t, &req).unwrap();
    let m = Message::parse(&reply).unwrap();
    let relayed: Vec<SocketAddr> = m.xor_addresses(attr::XOR_RELAYED_ADDRESS).map(|a| a.unwrap()).collect();
    assert_eq!(relayed.len(), 2, "dual allocation");
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6());
    let p6: SocketAddr = "[::1]:7777".parse().unwrap();
    let perm = request(Method::CREATE_PERMISSION, tid(3), Some((&c, &s)), &xor_peer(p6));
    assert_eq!(
        Message::parse(&h.send(&t, &perm).unwrap()).unwrap().class(),
        Class::Success
    );
    let relay6 = h.relay_of(relayed[1]);
    let (_, bytes) = h.peer_sends(relay6, p6, b"v6").unwrap();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(), p6);
}

#[test]
fn denied_peers_get_403() {
    let mut h = Harness::new(config(|c| c.peer_filter = PeerFilter::default()));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let (s, _) = h.allocate(&t, &c);
    for (i, p) in [
        "127.0.0.1:1",
        "10.0.0.1:1",
        "192.168.1.1:1",
        "0.0.0.0:1",
        "224.0.0.1:1",
        "169.254.1.1:1",
    ]
    .iter()
    .enumerate()
    {
        let req = request(
            Method::CREATE_PERMISSION,
            tid(20 + i as u8),
            Some((&c, &s)),
            &xor_peer(p.parse().unwrap()),
        );
        assert_eq!(error_code(&h.send(&t, &req).unwrap()), Some(403), "{p}");
    }
    let ok = request(
        Method::CREATE_PERMISSION,
        tid(40),
        Some((&c, &s)),
        &xor_peer("8.8.8.8:53".parse().unwrap()),
    );
    assert_eq!(
        Message::parse(&h.send(&t, &ok).unwrap()).unwrap().class(),
        Class::Success
    );
}

#[test]
fn quota_per_user_gives_486() {
    let quota = Arc::new(AllocationQuota::new(1, 0));
    let mut h = Harness::new(config(|c| c.quota = quota.clone()));
    let c = rest(T0_UNIX + 3600, "alice");
    h.allocate(&tuple(5000), &c);
    let t2 = tuple(5001);
    let s = h.challenge(&t2);
    let reply = h
        .send(&t2, &request(Method::ALLOCATE, tid(2), Some((&c, &s)), &udp_transport))
        .unwrap();
    assert_eq!(error_code(&reply), Some(486));
    assert_eq!(quota.total(), 1);
}

#[test]
fn allocations_expire_and_refresh_extends_them() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 36000, "alice");
    let (s, relayed) = h.allocate(&t, &c);
    let relay = h.relay_of(relayed);
    h.advance(Duration::from_secs(500));
    let refresh = request(Method::REFRESH, tid(3), Some((&c, &s)), &|b| {
        b.add_u32(attr::LIFETIME, 1200).unwrap()
    });
    let m = h.send(&t, &refresh).unwrap();
    assert_eq!(
        Message::parse(&m).unwrap().u32_attr(attr::LIFETIME).unwrap().unwrap(),
        1200
    );
    h.advance(Duration::from_secs(1199));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.io.closed.contains(&relay), "relay socket closed on expiry");
    assert_eq!(h.server.stats().lifetime_counts.iter().sum::<u64>(), 1);
    let _ = h.unix();
}

#[test]
fn refresh_to_zero_deletes_and_frees_quota() {
    let quota = Arc::new(AllocationQuota::new(0, 0));
    let mut h = Harness::new(config(|c| c.quota = quota.clone()));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let (s, _) = h.allocate(&t, &c);
    assert_eq!(quota.total(), 1);
    let refresh = request(Method::REFRESH, tid(3), Some((&c, &s)), &|b| {
        b.add_u32(attr::LIFETIME, 0).unwrap()
    });
    h.send(&t, &refresh).unwrap();
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(quota.total(), 0);
    // Anything further on this five-tuple is a mismatch.
    let again = request(Method::REFRESH, tid(4), Some((&c, &s)), &|_| {});
    assert_eq!(error_code(&h.send(&t, &again).unwrap()), Some(437));
}

#[test]
fn another_user_on_the_allocation_gets_441() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let (s, _) = h.allocate(&t, &rest(T0_UNIX + 3600, "alice"));
    let bob = rest(T0_UNIX + 3600, "bob");
    let reply = h
        .send(&t, &request(Method::REFRESH, tid(3), Some((&bob, &s)), &|_| {}))
        .unwrap();
    assert_eq!(error_code(&reply), Some(441));
}

#[test]
fn unknown_required_attribute_gets_420_and_bad_transport_442() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let req = request(Method::ALLOCATE, tid(1), None, &|b| b.add(0x0077, b"zzzz").unwrap());
    let reply = h.send(&t, &req).unwrap();
    assert_eq!(error_code(&reply), Some(420));
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.attr(attr::UNKNOWN_ATTRIBUTES).unwrap(), &[0x00, 0x77]);

    let c = rest(T0_UNIX + 3600, "alice");
    let s = h.challenge(&t);
    let sctp = request(Method::ALLOCATE, tid(2), Some((&c, &s)), &|b| {
        b.add(attr::REQUESTED_TRANSPORT, &[132, 0, 0, 0]).unwrap()
    });
    assert_eq!(error_code(&h.send(&t, &sctp).unwrap()), Some(442));
    let none = request(Method::ALLOCATE, tid(3), Some((&c, &s)), &|_| {});
    assert_eq!(error_code(&h.send(&t, &none).unwrap()), Some(400));
    let tcp_over_udp = request(Method::ALLOCATE, tid(4), Some((&c, &s)), &|b| {
        b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_TCP, 0, 0, 0])
            .unwrap()
    });
    assert_eq!(error_code(&h.send(&t, &tcp_over_udp).unwrap()), Some(400));
}

#[test]
fn unsupported_family_gets_440() {
    let mut h = Harness::new(config(|c| c.relay_ipv6 = None));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let s = h.challenge(&t);
    let req = request(Method::ALLOCATE, tid(2), Some((&c, &s)), &|b| {
        udp_transport(b);
        b.add(attr::REQUESTED_ADDRESS_FAMILY, &[attr::FAMILY_IPV6, 0, 0, 0])
            .unwrap();
    });
    assert_eq!(error_code(&h.send(&t, &req).unwrap()), Some(440));
}

#[test]
fn even_port_reserves_the_next_port_for_a_token() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let s = h.challenge(&t);
    let req = request(Method::ALLOCATE, tid(2), Some((&c, &s)), &|b| {
        udp_transport(b);
        b.add(attr::EVEN_PORT, &[0x80]).unwrap();
    });
    let reply = h.send(&t, &req).unwrap();
    let m = Message::parse(&reply).unwrap();
    let relayed = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
    assert_eq!(relayed.port() % 2, 0);
    let token = m.reservation_token().unwrap().unwrap();

    let t2 = tuple(5001);
    let s2 = h.challenge(&t2);
    let req = request(Method::ALLOCATE, tid(3), Some((&c, &s2)), &|b| {
        udp_transport(b);
        b.add(attr::RESERVATION_TOKEN, &token).unwrap();
    });
    let reply = h.send(&t2, &req).unwrap();
    let m = Message::parse(&reply).unwrap();
    assert_eq!(
        m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap().port(),
        relayed.port() + 1
    );
    // The token is single use.
    let t3 = tuple(5002);
    let s3 = h.challenge(&t3);
    let req = request(Method::ALLOCATE, tid(4), Some((&c, &s3)), &|b| {
        udp_transport(b);
        b.add(attr::RESERVATION_TOKEN, &token).unwrap();
    });
    assert_eq!(error_code(&h.send(&t3, &req).unwrap()), Some(508));
}

#[test]
fn channel_rules_are_enforced() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let (s, _) = h.allocate(&t, &c);
    let bind = |n: u32, p: &str, id: u8| {
        let p: SocketAddr = p.parse().unwrap();
        request(Method::CHANNEL_BIND, tid(id), Some((&c, &s)), &move |b| {
            b.add_u32(attr::CHANNEL_NUMBER, n << 16).unwrap();
            b.add_xor_address(attr::XOR_PEER_ADDRESS, p).unwrap();
        })
    };
    assert_eq!(
        error_code(&h.send(&t, &bind(0x3FFF, "127.0.0.1:1", 1)).unwrap()),
        Some(400),
        "below range"
    );
    assert_eq!(
        error_code(&h.send(&t, &bind(0x8000, "127.0.0.1:1", 2)).unwrap()),
        Some(400),
        "above range"
    );
    assert_eq!(
        Message::parse(&h.send(&t, &bind(0x4000, "127.0.0.1:1", 3)).unwrap())
            .unwrap()
            .class(),
        Class::Success
    );
    assert_eq!(
        error_code(&h.send(&t, &bind(0x4000, "127.0.0.1:2", 4)).unwrap()),
        Some(400),
        "channel taken"
    );
    assert_eq!(
        error_code(&h.send(&t, &bind(0x4001, "127.0.0.1:1", 5)).unwrap()),
        Some(400),
        "peer taken"
    );
    assert_eq!(
        error_code(&h.send(&t, &bind(0x4002, "[::1]:1", 6)).unwrap()),
        Some(443),
        "family"
    );
}

#[test]
fn tcp_clients_get_padded_channel_data() {
    let mut h = Harness::new(config(|_| {}));
    let t = FiveTuple {
        transport: Transport::Tcp,
        ..tuple(5000)
    };
    let c = rest(T0_UNIX + 3600, "alice");
    let (s, relayed) = h.allocate(&t, &c);
    let bind = request(Method::CHANNEL_BIND, tid(5), Some((&c, &s)), &|b| {
        b.add_u32(attr::CHANNEL_NUMBER, 0x4001 << 16).unwrap();
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer()).unwrap();
    });
    h.send(&t, &bind).unwrap();
    let relay = h.relay_of(relayed);
    let (_, bytes) = h.peer_sends(relay, peer(), b"abcde").unwrap();
    assert_eq!(bytes.len(), 12, "4 header + 5 data + 3 padding");
    assert_eq!(&bytes[9..], &[0, 0, 0]);
    // Closing the control connection ends the allocation.
    h.server.handle_client_closed(h.now, &t, &mut h.io);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn rfc6062_connect_and_connection_bind() {
    let mut h = Harness::new(config(|_| {}));
    let control = FiveTuple {
        transport: Transport::Tcp,
        ..tuple(5000)
    };
    let c = rest(T0_UNIX + 3600, "alice");
    let (s, _) = h.allocate_tcp(&control, &c);
    let connect = request(Method::CONNECT, tid(3), Some((&c, &s)), &xor_peer(peer()));
    assert!(
        h.send(&control, &connect).is_none(),
        "answered when the connection is up"
    );
    let (_, to, cid) = h.io.connects[0];
    assert_eq!(to, peer());
    let again = request(Method::CONNECT, tid(4), Some((&c, &s)), &xor_peer(peer()));
    assert_eq!(error_code(&h.send(&control, &again).unwrap()), Some(446));

    h.server.handle_tcp_connected(h.now, cid, Ok(()));
    let Some(Event::Transmit { tuple: to, data }) = h.server.poll_event() else {
        panic!("Connect response")
    };
    assert_eq!(to, control);
    let m = Message::parse(&data).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.u32_attr(attr::CONNECTION_ID).unwrap().unwrap(), cid);
    assert_eq!(super::server::shard_of_connection_id(cid), 3);

    let data_conn = FiveTuple {
        transport: Transport::Tcp,
        ..tuple(5001)
    };
    let s2 = h.challenge(&data_conn);
    let bind = request(Method::CONNECTION_BIND, tid(5), Some((&c, &s2)), &|b| {
        b.add_u32(attr::CONNECTION_ID, cid).unwrap()
    });
    let reply = h.send(&data_conn, &bind).unwrap();
    assert_eq!(Message::parse(&reply).unwrap().class(), Class::Success);
    assert_eq!(
        h.server.poll_event(),
        Some(Event::TcpBound {
            tuple: data_conn,
            connection_id: cid
        })
    );
    // A second bind of the same connection is refused.
    let bind2 = request(Method::CONNECTION_BIND, tid(6), Some((&c, &s2)), &|b| {
        b.add_u32(attr::CONNECTION_ID, cid).unwrap()
    });
    assert_eq!(error_code(&h.send(&data_conn, &bind2).unwrap()), Some(400));
}

#[test]
fn rfc6062_failed_connect_gets_447_and_unbound_incoming_times_out() {
    let mut h = Harness::new(config(|_| {}));
    let control = FiveTuple {
        transport: Transport::Tls,
        ..tuple(5000)
    };
    let c = rest(T0_UNIX + 3600, "alice");
    let (s, relayed) = h.allocate_tcp(&control, &c);
    h.send(
        &control,
        &request(Method::CONNECT, tid(3), Some((&c, &s)), &xor_peer(peer())),
    );
    let cid = h.io.connects[0].2;
    h.server
        .handle_tcp_connected(h.now, cid, Err(std::io::ErrorKind::ConnectionRefused.into()));
    let Some(Event::Transmit { data, .. }) = h.server.poll_event() else {
        panic!()
    };
    assert_eq!(error_code(&data), Some(447));

    // An incoming connection from a permitted peer is announced, then dropped
    // if the client never binds it.
    let relay = h.relay_of(relayed);
    let stranger: SocketAddr = "127.0.0.2:1".parse().unwrap();
    assert_eq!(
        h.server.handle_tcp_incoming(h.now, relay, stranger),
        None,
        "no permission"
    );
    let cid = h
        .server
        .handle_tcp_incoming(h.now, relay, peer())
        .expect("permitted by the Connect");
    let Some(Event::Transmit { data, .. }) = h.server.poll_event() else {
        panic!()
    };
    let m = Message::parse(&data).unwrap();
    assert_eq!(m.method(), Method::CONNECTION_ATTEMPT);
    assert_eq!(m.u32_attr(attr::CONNECTION_ID).unwrap().unwrap(), cid);
    h.advance(Duration::from_secs(31));
    assert!(h.io.tcp_closed.contains(&cid));
}

#[test]
fn draining_refuses_new_allocations_but_keeps_old_ones() {
    let alt: SocketAddr = "192.0.2.10:3478".parse().unwrap();
    let mut h = Harness::new(config(|c| c.alternate_server = Some(alt)));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let (s, _) = h.allocate(&t, &c);
    h.server.set_draining(true);
    let t2 = tuple(5001);
    let s2 = h.challenge(&t2);
    let reply = h
        .send(&t2, &request(Method::ALLOCATE, tid(2), Some((&c, &s2)), &udp_transport))
        .unwrap();
    assert_eq!(error_code(&reply), Some(300));
    assert_eq!(
        Message::parse(&reply)
            .unwrap()
            .address(attr::ALTERNATE_SERVER)
            .unwrap()
            .unwrap(),
        alt
    );
    let refresh = h
        .send(&t, &request(Method::REFRESH, tid(3), Some((&c, &s)), &|_| {}))
        .unwrap();
    assert_eq!(Message::parse(&refresh).unwrap().class(), Class::Success);
}

#[test]
fn garbage_is_dropped_and_counted() {
    let mut h = Harness::new(config(|_| {}));
    let t = tuple(5000);
    for junk in [
        &b""[..],
        b"\x00",
        b"\x00\x01\x00\x08\x21\x12\xa4\x42",
        b"\xff\xff\xff\xff",
        b"\x40\x00\x00\x10ab",
    ] {
        assert_eq!(h.action(&t, junk), Action::Nothing);
    }
    assert_eq!(h.server.stats().drops[super::stats::Drop::Malformed as usize], 5);
    // The core is still serving.
    assert!(h.send(&t, &request(Method::BINDING, tid(1), None, &|_| {})).is_some());
}

#[test]
fn unauthenticated_answers_do_not_amplify() {
    let mut h = Harness::new(config(|c| {
        c.software = Some("rtc-relay test build with a long name".into())
    }));
    let t = tuple(5000);
    // A large unauthenticated request gets every optional attribute…
    let big = request(Method::ALLOCATE, tid(1), None, &|b| {
        udp_transport(b);
        b.add(attr::SOFTWARE, &[b'x'; 200]).unwrap();
    });
    let reply = h.send(&t, &big).unwrap();
    assert!(reply.len() <= big.len());
    assert!(Message::parse(&reply).unwrap().has(attr::PASSWORD_ALGORITHMS));
    // …a small one only what the protocol cannot do without.
    let small = request(Method::ALLOCATE, tid(2), None, &udp_transport);
    let reply = h.send(&t, &small).unwrap();
    let m = Message::parse(&reply).unwrap();
    assert!(m.has(attr::REALM) && m.has(attr::NONCE));
    assert!(!m.has(attr::PASSWORD_ALGORITHMS) && !m.has(attr::SOFTWARE));
    let bind = request(Method::BINDING, tid(3), None, &|_| {});
    let reply = h.send(&t, &bind).unwrap();
    assert!(!Message::parse(&reply).unwrap().has(attr::SOFTWARE));
}

#[test]
fn rate_caps_drop_excess_packets() {
    let mut h = Harness::new(config(|c| c.max_pps = 2));
    let t = tuple(5000);
    let c = rest(T0_UNIX + 3600, "alice");
    let (s, relayed) = h.allocate(&t, &c);
    let relay = h.relay_of(relayed);
    let perm = request(Method::CREATE_PERMISSION, tid(7), Some((&c, &s)), &xor_peer(peer()));
    h.send(&t, &perm).unwrap();
    let delivered = (0..5).filter(|_| h.peer_sends(relay, peer(), b"x").is_some()).count();
    assert_eq!(delivered, 2);
    h.now += Duration::from_secs(1);
    assert!(h.peer_sends(relay, peer(), b"x").is_some(), "refilled after a second");
}

#[test]
fn a_nearly_full_port_range_still_finds_its_last_free_port() {
    let mut h = Harness::new(config(|c| {
        c.port_min = 40000;
        c.port_max = 40099;
    }));
    // Another process holds every port but one.
    for port in 40000..=40099u16 {
        if port != 40077 {
            h.io.bind_udp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port), false)
                .unwrap();
        }
    }
    let (_, relayed) = h.allocate(&tuple(5000), &rest(T0_UNIX + 3600, "alice"));
    assert_eq!(relayed.port(), 40077);
    // And a full range is 508, not a hang.
    let t2 = tuple(5001);
    let c = rest(T0_UNIX + 3600, "alice");
    let s = h.challenge(&t2);
    let reply = h
        .send(&t2, &request(Method::ALLOCATE, tid(2), Some((&c, &s)), &udp_transport))
        .unwrap();
    assert_eq!(error_code(&reply), Some(508));
}
