//! Negative cases over real UDP sockets: authentication failures, denied peer
//! ranges, quotas, malformed packets and amplification. Requests are built with
//! the relay crate's codec (`e2e::stun_client`).
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use e2e::stun_client::{encode, new_tid, requested_transport_udp, Session, StunClient};
use e2e::{binding_request, unix_now, Credentials, Impl, RunningServer, ServerOpts};
use relay::stun::{attr, Class, Message, Method};
use relay::turn::auth::{AuthConfig, Authenticator};

const SECRET: &str = "negative-secret";
const NONCE_KEY: &str = "e2e-fleet-nonce-key-0123456789";

fn opts() -> ServerOpts {
    ServerOpts {
        secret: Some(SECRET.into()),
        ..ServerOpts::default()
    }
}

/// rtc-relay only: flags coturn does not know.
fn rtc_only(imp: Impl, mut o: ServerOpts, args: &[&str]) -> ServerOpts {
    if imp == Impl::RtcRelay {
        o.extra_args.extend(args.iter().map(|s| s.to_string()));
    }
    o
}

fn rest(user: &str) -> Credentials {
    Credentials::rest(SECRET, user, unix_now() + 3600)
}

fn assert_401(r: &e2e::stun_client::Response, what: &str) {
    assert_eq!(r.class, Class::Error, "{what}: expected an error, got {r:?}");
    assert_eq!(r.code(), Some(401), "{what}: {r:?}");
    assert!(r.realm.is_some(), "{what}: 401 without REALM");
    assert!(r.nonce.is_some(), "{what}: 401 without NONCE");
}

fn no_credentials(imp: Impl) {
    let server = RunningServer::start(imp, opts());
    let c = StunClient::new(server.addr());
    let (realm, nonce) = c.challenge();
    assert_eq!(realm, server.opts.realm);
    assert!(!nonce.is_empty());
    // The right credentials with that nonce do work (so the 401s below are meaningful).
    let good = rest("alice");
    let s = Session::new(&good.username, &good.password, &realm, &nonce);
    let r = c
        .authed(Method::ALLOCATE, &new_tid(), &[requested_transport_udp()], &s)
        .unwrap();
    assert_eq!(r.class, Class::Success, "valid REST credentials refused: {r:?}");
    let relayed = r
        .message()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .expect("no XOR-RELAYED-ADDRESS")
        .unwrap();
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(
        (server.relay_ports.0..=server.relay_ports.1).contains(&relayed.port()),
        "{relayed}"
    );
    // The success is signed with the long-term key.
    r.message().check_integrity(&s.key).expect("success response integrity");
}

#[test]
fn allocate_without_credentials_gets_401_with_realm_and_nonce() {
    no_credentials(Impl::under_test());
}

#[test]
fn coturn_sanity_allocate_without_credentials() {
    if e2e::require_tool("turnserver") {
        no_credentials(Impl::Coturn);
    }
}

fn bad_credentials(imp: Impl) {
    let mut o = opts();
    o.users = vec![("static".into(), "right-pw".into())];
    if imp == Impl::Coturn {
        o.users.clear(); // coturn ignores static users next to a REST secret
    }
    let server = RunningServer::start(imp, o);
    let cases: Vec<(&str, String, String)> = vec![
        (
            "wrong REST password",
            rest("alice").username,
            "d3JvbmcgcGFzc3dvcmQ=".into(),
        ),
        (
            "REST password of another secret",
            Credentials::rest("other", "alice", unix_now() + 3600).username,
            {
                let c = Credentials::rest("other", "alice", unix_now() + 3600);
                c.password
            },
        ),
        (
            "expired REST username",
            {
                let c = Credentials::rest(SECRET, "alice", unix_now() - 120);
                c.username
            },
            Credentials::rest(SECRET, "alice", unix_now() - 120).password,
        ),
        ("malformed username", "alice-without-expiry".into(), "whatever".into()),
        (
            "malformed username with sign",
            format!("+{}:alice", unix_now() + 3600),
            "x".into(),
        ),
        ("unknown static user", "nobody".into(), "right-pw".into()),
    ];
    for (what, user, pw) in cases {
        let c = StunClient::new(server.addr());
        let (r, _) = c.allocate(&user, &pw);
        assert_401(&r, what);
    }
    if imp == Impl::RtcRelay {
        // Control: the static user works, but not with a wrong password.
        let c = StunClient::new(server.addr());
        let (r, _) = c.allocate("static", "right-pw");
        assert_eq!(r.class, Class::Success, "static user refused: {r:?}");
        let c = StunClient::new(server.addr());
        let (r, _) = c.allocate("static", "wrong-pw");
        assert_401(&r, "static user, wrong password");
    }
}

#[test]
fn wrong_expired_and_malformed_credentials_get_401() {
    bad_credentials(Impl::under_test());
}

#[test]
fn coturn_sanity_bad_credentials() {
    if e2e::require_tool("turnserver") {
        bad_credentials(Impl::Coturn);
    }
}

/// A nonce minted with the fleet's nonce key an hour ago: ours, but stale.
#[test]
fn stale_nonce_gets_438_and_tampered_nonce_401() {
    let imp = Impl::under_test();
    if imp != Impl::RtcRelay {
        eprintln!("stale nonces can only be crafted for rtc-relay's nonce format");
        return;
    }
    let mut o = opts();
    o.nonce_key = Some(NONCE_KEY.into());
    let server = RunningServer::start(imp, o);
    let auth = Authenticator::new(AuthConfig {
        realm: server.opts.realm.clone(),
        secrets: vec![SECRET.as_bytes().to_vec()],
        static_users: Default::default(),
        nonce_key: NONCE_KEY.as_bytes().to_vec(),
        nonce_lifetime: Duration::from_secs(600),
        rest_separator: ':',
    });
    let c = StunClient::new(server.addr());
    let (realm, fresh) = c.challenge();
    let creds = rest("alice");
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);

    // Sanity of the crafting: a nonce minted now with the same key is accepted.
    let minted_now = auth.make_nonce(localhost, unix_now());
    let c1 = StunClient::new(server.addr());
    let s = Session::new(&creds.username, &creds.password, &realm, minted_now.as_str());
    let r = c1
        .authed(Method::ALLOCATE, &new_tid(), &[requested_transport_udp()], &s)
        .unwrap();
    assert_eq!(
        r.class,
        Class::Success,
        "a nonce minted with --nonce-key was refused: {r:?}"
    );

    // An hour old: 438 Stale Nonce, with a fresh NONCE to retry with.
    let old = auth.make_nonce(localhost, unix_now() - 3600);
    let s = Session::new(&creds.username, &creds.password, &realm, old.as_str());
    let r = c
        .authed(Method::ALLOCATE, &new_tid(), &[requested_transport_udp()], &s)
        .unwrap();
    assert_eq!(r.code(), Some(438), "stale nonce: {r:?}");
    let retry_nonce = r.nonce.clone().expect("438 without a fresh NONCE");
    assert_ne!(retry_nonce, old.as_str());
    // Minted far in the future (clock skew beyond 60 s): stale too.
    let future = auth.make_nonce(localhost, unix_now() + 3600);
    let s = Session::new(&creds.username, &creds.password, &realm, future.as_str());
    let r = c
        .authed(Method::ALLOCATE, &new_tid(), &[requested_transport_udp()], &s)
        .unwrap();
    assert_eq!(r.code(), Some(438), "future nonce: {r:?}");

    // Tampered (one character of the MAC changed) or minted with another key: 401.
    let mut tampered = fresh.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let other = Authenticator::new(AuthConfig {
        realm: realm.clone(),
        secrets: vec![],
        static_users: Default::default(),
        nonce_key: b"some-other-fleet-nonce-key".to_vec(),
        nonce_lifetime: Duration::from_secs(600),
        rest_separator: ':',
    })
    .make_nonce(localhost, unix_now());
    // Issued to another client IP.
    let foreign = auth.make_nonce(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), unix_now());
    for (what, nonce) in [
        ("tampered", tampered),
        ("other key", other.as_str().into()),
        ("other IP", foreign.as_str().into()),
    ] {
        let s = Session::new(&creds.username, &creds.password, &realm, &nonce);
        let r = c
            .authed(Method::ALLOCATE, &new_tid(), &[requested_transport_udp()], &s)
            .unwrap();
        assert_401(&r, what);
    }

    // The fresh one from the retry works.
    let s = Session::new(&creds.username, &creds.password, &realm, &retry_nonce);
    let r = c
        .authed(Method::ALLOCATE, &new_tid(), &[requested_transport_udp()], &s)
        .unwrap();
    assert_eq!(r.class, Class::Success, "retry with the 438's nonce: {r:?}");
}

/// IPv4 peers every default configuration refuses.
const DENIED_V4: &[&str] = &[
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.1.1",
    "224.0.0.1",
    "0.0.0.0",
];
/// IPv6 peers every default configuration refuses.
const DENIED_V6: &[&str] = &["fc00::1", "fe80::1"];
/// Loopback in every spelling, refused without --allow-loopback-peers.
const LOOPBACK_V6_SPELLINGS: &[&str] = &["::1", "::ffff:127.0.0.1"];

fn allocation(server: &RunningServer, user: &str, family: Option<u8>) -> (StunClient, Session) {
    let c = StunClient::new(server.addr());
    let creds = rest(user);
    let (realm, nonce) = c.challenge();
    let s = Session::new(&creds.username, &creds.password, &realm, &nonce);
    let mut attrs = vec![requested_transport_udp()];
    if let Some(f) = family {
        attrs.push((attr::REQUESTED_ADDRESS_FAMILY, vec![f, 0, 0, 0]));
    }
    let r = c
        .authed(Method::ALLOCATE, &new_tid(), &attrs, &s)
        .expect("no answer to Allocate");
    assert_eq!(r.class, Class::Success, "Allocate (family {family:?}) failed: {r:?}");
    (c, s)
}

fn expect_permission(c: &StunClient, s: &Session, peer: &str, want: Option<u16>) {
    let addr = SocketAddr::new(peer.parse().unwrap(), 5000);
    let r = c.create_permission(addr, s);
    match want {
        None => assert_eq!(r.class, Class::Success, "CreatePermission {peer} should succeed: {r:?}"),
        Some(code) => assert_eq!(r.code(), Some(code), "CreatePermission {peer}: {r:?}"),
    }
}

fn denied_peers(imp: Impl, allow_loopback: bool) {
    let mut o = rtc_only(imp, opts(), &["--relay-ip", "::1", "--new-peers-per-sec", "0"]);
    o.allow_loopback_peers = allow_loopback;
    let server = RunningServer::start(imp, o);
    let (c4, s4) = allocation(&server, "v4", None);
    for peer in DENIED_V4 {
        expect_permission(&c4, &s4, peer, Some(403));
    }
    // Loopback: refused unless allowed (the control that shows 403 is not the only answer).
    expect_permission(&c4, &s4, "127.0.0.1", if allow_loopback { None } else { Some(403) });
    expect_permission(&c4, &s4, "127.0.0.2", if allow_loopback { None } else { Some(403) });
    if imp == Impl::Coturn {
        return; // coturn's IPv6 and mapped-address handling is not what is under test
    }
    // An IPv6 allocation (RFC 6156) for the IPv6 ranges and the IPv4-in-IPv6 spellings.
    let (c6, s6) = allocation(&server, "v6", Some(attr::FAMILY_IPV6));
    for peer in DENIED_V6 {
        expect_permission(&c6, &s6, peer, Some(403));
    }
    for peer in LOOPBACK_V6_SPELLINGS {
        // With loopback allowed, ::1 is fine; the IPv4 spellings normalise to 127.0.0.1.
        expect_permission(&c6, &s6, peer, if allow_loopback { None } else { Some(403) });
    }
    // Loopback through NAT64 never reaches this host's loopback, and spellings
    // of other denied IPv4 ranges inside IPv6 are refused regardless.
    for peer in [
        "64:ff9b::7f00:1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:101",
        "::ffff:0.0.0.0",
        "::ffff:192.168.1.1",
    ] {
        expect_permission(&c6, &s6, peer, Some(403));
    }
    // Wrong family for the allocation: refused (443 Peer Address Family
    // Mismatch, or 403 when the filter speaks first), never a silent success.
    let r = c4.create_permission("[fc00::1]:5000".parse().unwrap(), &s4);
    assert!(
        matches!(r.code(), Some(443) | Some(403)),
        "IPv6 peer on an IPv4 allocation: {r:?}"
    );
}

#[test]
fn denied_peer_ranges_get_403() {
    denied_peers(Impl::under_test(), false);
}

#[test]
fn denied_peer_ranges_get_403_even_with_loopback_allowed() {
    denied_peers(Impl::under_test(), true);
}

#[test]
fn coturn_sanity_denied_peer_ranges() {
    if e2e::require_tool("turnserver") {
        denied_peers(Impl::Coturn, false);
    }
}

fn quota(imp: Impl) {
    let mut o = opts();
    o.user_quota = Some(1);
    let server = RunningServer::start(imp, o);
    let creds = rest("quota-user");
    let first = StunClient::new(server.addr());
    let (r, s1) = first.allocate(&creds.username, &creds.password);
    assert_eq!(r.class, Class::Success, "first allocation: {r:?}");
    let second = StunClient::new(server.addr());
    let (r, _) = second.allocate(&creds.username, &creds.password);
    assert_eq!(
        r.code(),
        Some(486),
        "second allocation of a user with --user-quota 1: {r:?}"
    );
    // Another user is not affected.
    let other = rest("someone-else");
    let third = StunClient::new(server.addr());
    let (r, _) = third.allocate(&other.username, &other.password);
    assert_eq!(r.class, Class::Success, "another user's allocation: {r:?}");
    if imp == Impl::Coturn {
        return; // coturn frees quota only some time after the allocation is deleted
    }
    // Releasing the first (Refresh with LIFETIME 0) frees the slot.
    let r = first
        .authed(
            Method::REFRESH,
            &new_tid(),
            &[(attr::LIFETIME, 0u32.to_be_bytes().to_vec())],
            &s1,
        )
        .unwrap();
    assert_eq!(r.class, Class::Success, "Refresh lifetime 0: {r:?}");
    let (r, _) = second.allocate(&creds.username, &creds.password);
    assert_eq!(
        r.class,
        Class::Success,
        "allocation after the first was released: {r:?}"
    );
}

#[test]
fn user_quota_exceeded_gets_486() {
    quota(Impl::under_test());
}

#[test]
fn coturn_sanity_user_quota() {
    if e2e::require_tool("turnserver") {
        quota(Impl::Coturn);
    }
}

/// Datagrams that must be dropped without any answer.
fn junk() -> Vec<(&'static str, Vec<u8>)> {
    let tid = new_tid();
    let allocate = encode(
        Class::Request,
        Method::ALLOCATE,
        &tid,
        &[requested_transport_udp()],
        None,
        true,
    );
    let binding = binding_request(new_tid()).to_vec();
    let mut bad_cookie = binding.clone();
    bad_cookie[4] ^= 0xff;
    let mut bad_len = binding.clone();
    bad_len[3] = 8; // declares 8 bytes of attributes that are not there
    let mut odd_len = allocate.clone();
    odd_len[3] = odd_len[3].wrapping_sub(1);
    let mut bad_fp = allocate.clone();
    let n = bad_fp.len();
    bad_fp[n - 1] ^= 0x01;
    let mut attr_overrun = binding.clone();
    attr_overrun[3] = 8;
    attr_overrun.extend_from_slice(&[0x80, 0x22, 0x01, 0x00, b'a', b'b', b'c', b'd']); // SOFTWARE of 256 bytes, 4 present
    let mut response_class = binding.clone();
    response_class[0] = 0x01; // type 0x0101, a Binding success response: never answered
    let mut many_attrs = binding.clone();
    for _ in 0..40 {
        many_attrs.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
    }
    let l = (many_attrs.len() - 20) as u16;
    many_attrs[2..4].copy_from_slice(&l.to_be_bytes());
    vec![
        ("empty", vec![]),
        ("one byte", vec![0x00]),
        ("truncated header", allocate[..12].to_vec()),
        ("truncated body", allocate[..allocate.len() - 6].to_vec()),
        ("bad magic cookie", bad_cookie),
        ("length past the end", bad_len),
        ("length not a multiple of 4", odd_len),
        ("bad fingerprint", bad_fp),
        ("attribute overruns message", attr_overrun),
        ("a response, not a request", response_class),
        ("too many attributes", many_attrs),
        (
            "channel data, unbound channel",
            vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4],
        ),
        ("channel data, truncated", vec![0x40, 0x00, 0x00, 0x10, 1, 2]),
        ("RTP-looking", vec![0x80; 172]),
        ("TLS-looking", vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]),
        ("all ones", vec![0xff; 1200]),
        (
            "pseudo-random",
            (0..997u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x3f)
                .collect(),
        ),
    ]
}

fn garbage(imp: Impl) {
    let server = RunningServer::start(imp, opts());
    let c = StunClient::new(server.addr());
    for (what, bytes) in junk() {
        let answer = c.send_raw(&bytes, Duration::from_millis(300));
        assert!(answer.is_none(), "{what}: the server answered junk with {answer:02x?}");
    }
    assert!(server.answers_binding(), "the server stopped answering after junk");
    // And it still serves TURN.
    let creds = rest("after-junk");
    let (r, _) = c.allocate(&creds.username, &creds.password);
    assert_eq!(r.class, Class::Success, "{r:?}");
}

#[test]
fn garbage_and_truncated_packets_get_no_answer() {
    garbage(Impl::under_test());
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let server = RunningServer::start(Impl::under_test(), opts());
    let c = StunClient::new(server.addr());
    let tid = new_tid();
    let req = encode(
        Class::Request,
        Method::BINDING,
        &tid,
        &[(0x7ff0, vec![1, 2, 3, 4])],
        None,
        false,
    );
    let r = c.expect_response(&req, "Binding with an unknown attribute");
    assert_eq!(r.code(), Some(420), "{r:?}");
    let m = r.message();
    let unknown = m
        .attr(attr::UNKNOWN_ATTRIBUTES)
        .expect("420 without UNKNOWN-ATTRIBUTES");
    assert_eq!(unknown, &[0x7f, 0xf0]);
}

#[test]
fn unauthenticated_answers_do_not_amplify() {
    // The default SOFTWARE is on; it must be left out where it would amplify.
    let server = RunningServer::start(Impl::under_test(), opts());
    let c = StunClient::new(server.addr());

    // A large unauthenticated request: its 401 fits in the request's size.
    let tid = new_tid();
    let big = encode(
        Class::Request,
        Method::ALLOCATE,
        &tid,
        &[requested_transport_udp(), (attr::SOFTWARE, vec![b'x'; 300])],
        None,
        true,
    );
    let r = c.expect_response(&big, "padded Allocate");
    assert_eq!(r.code(), Some(401));
    assert!(
        r.bytes.len() <= big.len(),
        "401 of {} bytes to a {}-byte request",
        r.bytes.len(),
        big.len()
    );

    // A minimal one: only ERROR-CODE, REALM and NONCE (no reason phrase,
    // SOFTWARE or PASSWORD-ALGORITHMS): a bounded answer, whatever the config.
    let tid = new_tid();
    let small = encode(
        Class::Request,
        Method::ALLOCATE,
        &tid,
        &[requested_transport_udp()],
        None,
        false,
    );
    let r = c.expect_response(&small, "minimal Allocate");
    assert_eq!(r.code(), Some(401));
    let m = r.message();
    assert!(
        !m.has(attr::SOFTWARE) && !m.has(attr::PASSWORD_ALGORITHMS),
        "optional attributes in a small 401: {r:?}"
    );
    let realm = r.realm.as_ref().unwrap().len().div_ceil(4) * 4;
    let nonce = r.nonce.as_ref().unwrap().len().div_ceil(4) * 4;
    let bound = 20 + 8 + (4 + realm) + (4 + nonce);
    assert!(
        r.bytes.len() <= bound,
        "small 401 is {} bytes, more than the {bound} it needs",
        r.bytes.len()
    );
    assert!(nonce <= 64, "nonce of {nonce} bytes");

    // A 20-byte Binding: XOR-MAPPED-ADDRESS only, no SOFTWARE.
    let bind = binding_request(new_tid());
    let r = c.expect_response(&bind, "Binding");
    assert_eq!(r.class, Class::Success);
    let m = Message::parse(&r.bytes).unwrap();
    assert!(
        !m.has(attr::SOFTWARE),
        "SOFTWARE in a Binding response to a 20-byte request"
    );
    assert_eq!(r.bytes.len(), 32, "Binding response beyond XOR-MAPPED-ADDRESS (IPv4)");

    // No answer at all to an unauthenticated Allocate sent as an indication.
    let ind = encode(
        Class::Indication,
        Method::ALLOCATE,
        &new_tid(),
        &[requested_transport_udp()],
        None,
        false,
    );
    assert!(
        c.send_raw(&ind, Duration::from_millis(300)).is_none(),
        "an indication was answered"
    );
}

/// Send indications relay whatever the attribute order (webrtc-rs puts DATA
/// before XOR-PEER-ADDRESS, coturn after), with or without FINGERPRINT.
#[test]
fn send_indications_in_any_attribute_order() {
    let server = RunningServer::start(Impl::under_test(), opts());
    let (c, s) = allocation(&server, "indications", None);
    let peer = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let r = c.create_permission(peer_addr, &s);
    assert_eq!(r.class, Class::Success, "{r:?}");
    for (i, (data_first, fingerprint)) in [(false, false), (false, true), (true, false), (true, true)]
        .into_iter()
        .enumerate()
    {
        let tid = new_tid();
        let payload = format!("indication {i} data_first={data_first} fingerprint={fingerprint}").into_bytes();
        let xpa = (
            attr::XOR_PEER_ADDRESS,
            e2e::stun_client::xor_peer_address(&tid, peer_addr),
        );
        let data = (attr::DATA, payload.clone());
        let attrs = if data_first { vec![data, xpa] } else { vec![xpa, data] };
        let ind = encode(Class::Indication, Method::SEND, &tid, &attrs, None, fingerprint);
        c.sock.send_to(&ind, server.addr()).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = peer.recv_from(&mut buf).unwrap_or_else(|e| {
            panic!("peer did not get Send indication #{i} (data_first={data_first}, fingerprint={fingerprint}): {e}")
        });
        assert_eq!(&buf[..n], &payload[..]);
        assert_ne!(from, server.addr());
    }
}
