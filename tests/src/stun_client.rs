//! A tiny blocking STUN/TURN client over a real UDP socket, built on the
//! relay crate's codec, for the negative end-to-end tests.
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use rand::Rng;
use relay::stun::integrity::long_term_key_md5;
use relay::stun::{attr, Class, Message, MessageBuilder, Method, TransactionId};

/// A decoded response: the raw bytes plus what the tests look at.
#[derive(Clone, Debug)]
pub struct Response {
    pub bytes: Vec<u8>,
    pub class: Class,
    pub method: Method,
    pub error: Option<(u16, String)>,
    pub realm: Option<String>,
    pub nonce: Option<String>,
}

impl Response {
    pub fn parse(bytes: &[u8]) -> Response {
        let m =
            Message::parse(bytes).unwrap_or_else(|e| panic!("server sent an unparsable response ({e}): {bytes:02x?}"));
        Response {
            bytes: bytes.to_vec(),
            class: m.class(),
            method: m.method(),
            error: m.error_code().map(|r| {
                let (c, s) = r.expect("malformed ERROR-CODE");
                (c, s.to_string())
            }),
            realm: m.str_attr(attr::REALM).map(|r| r.expect("malformed REALM").to_string()),
            nonce: m.str_attr(attr::NONCE).map(|r| r.expect("malformed NONCE").to_string()),
        }
    }
    pub fn code(&self) -> Option<u16> {
        self.error.as_ref().map(|e| e.0)
    }
    pub fn message(&self) -> Message<'_> {
        Message::parse(&self.bytes).unwrap()
    }
}

/// What a long-term authenticated request needs.
#[derive(Clone, Debug)]
pub struct Session {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub key: Vec<u8>,
}

impl Session {
    pub fn new(username: &str, password: &str, realm: &str, nonce: &str) -> Session {
        Session {
            username: username.into(),
            realm: realm.into(),
            nonce: nonce.into(),
            key: long_term_key_md5(username, realm, password).to_vec(),
        }
    }
}

pub struct StunClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

pub fn new_tid() -> TransactionId {
    rand::rng().random()
}

/// Encodes a message with `attrs` in order, then MESSAGE-INTEGRITY with `key`
/// (when given) and FINGERPRINT.
pub fn encode(
    class: Class,
    method: Method,
    tid: &TransactionId,
    attrs: &[(u16, Vec<u8>)],
    key: Option<&[u8]>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let mut b = MessageBuilder::new(&mut buf, class, method, tid).unwrap();
    for (t, v) in attrs {
        b.add(*t, v).unwrap();
    }
    if let Some(k) = key {
        b.add_message_integrity(k).unwrap();
    }
    if fingerprint {
        b.add_fingerprint().unwrap();
    }
    let n = b.finish();
    buf.truncate(n);
    buf
}

/// An XOR-PEER-ADDRESS value, encoded through the builder.
pub fn xor_peer_address(tid: &TransactionId, peer: SocketAddr) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::CREATE_PERMISSION, tid).unwrap();
    b.add_xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
    let n = b.finish();
    buf[24..n].to_vec()
}

pub fn requested_transport_udp() -> (u16, Vec<u8>) {
    (attr::REQUESTED_TRANSPORT, vec![attr::TRANSPORT_UDP, 0, 0, 0])
}

impl StunClient {
    pub fn new(server: SocketAddr) -> StunClient {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        StunClient { sock, server }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Sends raw bytes and returns the first datagram that comes back within `wait`.
    pub fn send_raw(&self, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        self.sock.send_to(bytes, self.server).unwrap();
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 65536];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    /// Sends a request (retransmitting up to 4 times) and returns the
    /// response with the same transaction id; `None` when nothing came back.
    pub fn transact(&self, req: &[u8]) -> Option<Response> {
        let tid = &req[8..20];
        let mut buf = vec![0u8; 65536];
        for attempt in 0..4u32 {
            self.sock.send_to(req, self.server).unwrap();
            self.sock
                .set_read_timeout(Some(Duration::from_millis(250 << attempt)))
                .unwrap();
            while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                if n >= 20 && &buf[8..20] == tid {
                    return Some(Response::parse(&buf[..n]));
                }
            }
        }
        None
    }

    /// Like [`transact`] but panics when nothing comes back.
    pub fn expect_response(&self, req: &[u8], what: &str) -> Response {
        self.transact(req).unwrap_or_else(|| panic!("no response to {what}"))
    }

    /// An unauthenticated Allocate: must be a 401 carrying REALM and NONCE.
    /// Returns (realm, nonce).
    pub fn challenge(&self) -> (String, String) {
        let tid = new_tid();
        let req = encode(
            Class::Request,
            Method::ALLOCATE,
            &tid,
            &[requested_transport_udp()],
            None,
            false,
        );
        let r = self.expect_response(&req, "unauthenticated Allocate");
        assert_eq!(r.class, Class::Error, "unauthenticated Allocate did not fail: {r:?}");
        assert_eq!(r.code(), Some(401), "unauthenticated Allocate: {r:?}");
        (
            r.realm.clone().expect("401 without REALM"),
            r.nonce.clone().expect("401 without NONCE"),
        )
    }

    /// A request of `method` with `attrs` followed by USERNAME, REALM, NONCE,
    /// MESSAGE-INTEGRITY and FINGERPRINT.
    /// `tid` must be the one XOR addresses in `attrs` were encoded with.
    pub fn authed(
        &self,
        method: Method,
        tid: &TransactionId,
        attrs: &[(u16, Vec<u8>)],
        s: &Session,
    ) -> Option<Response> {
        let mut all = attrs.to_vec();
        all.push((attr::USERNAME, s.username.as_bytes().to_vec()));
        all.push((attr::REALM, s.realm.as_bytes().to_vec()));
        all.push((attr::NONCE, s.nonce.as_bytes().to_vec()));
        let req = encode(Class::Request, method, tid, &all, Some(&s.key), true);
        self.transact(&req)
    }

    /// Challenge, then an authenticated UDP Allocate; returns the response and the session.
    pub fn allocate(&self, username: &str, password: &str) -> (Response, Session) {
        let (realm, nonce) = self.challenge();
        let s = Session::new(username, password, &realm, &nonce);
        let r = self
            .authed(Method::ALLOCATE, &new_tid(), &[requested_transport_udp()], &s)
            .expect("no response to Allocate");
        (r, s)
    }

    /// CreatePermission for `peer` on an existing allocation.
    pub fn create_permission(&self, peer: SocketAddr, s: &Session) -> Response {
        let tid = new_tid();
        let v = xor_peer_address(&tid, peer);
        self.authed(Method::CREATE_PERMISSION, &tid, &[(attr::XOR_PEER_ADDRESS, v)], s)
            .unwrap_or_else(|| panic!("no response to CreatePermission {peer}"))
    }
}
