//! Blocking TURN client transactions over a connected UDP socket: the
//! handshake part of the load generator (Allocate with the 401 realm/nonce
//! round trip, CreatePermission, ChannelBind, Refresh).
use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::stun::{self, Builder, Parsed};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer to {0} after retransmissions")]
    Timeout(&'static str),
    #[error("{what} failed: {code} {reason}")]
    Turn {
        what: &'static str,
        code: u16,
        reason: String,
    },
    #[error("{0}: malformed or incomplete response")]
    Malformed(&'static str),
}

/// Realm and nonce learned from a 401/438, shared between clients so only
/// the first Allocate (and every stale nonce) costs the extra round trip.
#[derive(Default)]
pub struct AuthCache {
    inner: Mutex<Option<(String, String)>>,
}

impl AuthCache {
    fn get(&self) -> Option<(String, String)> {
        self.inner.lock().ok().and_then(|g| g.clone())
    }
    fn set(&self, realm: String, nonce: String) {
        if let Ok(mut g) = self.inner.lock() {
            *g = Some((realm, nonce));
        }
    }
}

pub struct TurnClient {
    pub sock: UdpSocket,
    username: String,
    password: String,
    realm: String,
    nonce: String,
    key: [u8; 16],
    pub relayed: Option<SocketAddr>,
    /// Stray datagrams seen while waiting for answers.
    pub strays: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TurnClient {
    /// A client on a fresh socket connected to `server`, with REST credentials
    /// `<now + ttl>:<name>`.
    pub fn new(server: SocketAddr, secret: &str, name: &str) -> Result<Self, ClientError> {
        let bind: SocketAddr = if server.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }
            .parse()
            .map_err(|_| ClientError::Malformed("bind address"))?;
        let sock = UdpSocket::bind(bind)?;
        sock.connect(server)?;
        let (username, password) = stun::rest_credentials(secret, name, now_unix() + 86_400);
        Ok(TurnClient {
            sock,
            username,
            password,
            realm: String::new(),
            nonce: String::new(),
            key: [0; 16],
            relayed: None,
            strays: 0,
        })
    }

    /// Sends `req` and waits for the response with the same transaction id,
    /// retransmitting with a doubling timeout (RFC 8489 §6.2.1, shortened for loopback).
    fn transact(&mut self, what: &'static str, req: &[u8], tid: &[u8; 12]) -> Result<Vec<u8>, ClientError> {
        let mut rto = Duration::from_millis(250);
        let mut buf = [0u8; 2048];
        for _ in 0..5 {
            self.sock.send(req)?;
            let until = Instant::now() + rto;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.sock.set_read_timeout(Some(left))?;
                match self.sock.recv(&mut buf) {
                    Ok(n) => match Parsed::parse(&buf[..n]) {
                        Ok(p) if &p.tid == tid => return Ok(buf[..n].to_vec()),
                        _ => self.strays += 1,
                    },
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        break
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        std::thread::sleep(left.min(Duration::from_millis(50)));
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            rto *= 2;
        }
        Err(ClientError::Timeout(what))
    }

    fn authed(&self, method: u16, tid: [u8; 12], extra: impl FnOnce(Builder) -> Builder) -> Vec<u8> {
        let b = Builder::new(method, stun::REQUEST, tid);
        extra(b)
            .attr(stun::USERNAME, self.username.as_bytes())
            .attr(stun::REALM, self.realm.as_bytes())
            .attr(stun::NONCE, self.nonce.as_bytes())
            .integrity(&self.key)
            .fingerprint()
            .finish()
    }

    fn learn(&mut self, p: &Parsed<'_>, cache: &AuthCache) -> bool {
        let realm = p.str_attr(stun::REALM).and_then(|r| r.ok());
        let nonce = p.str_attr(stun::NONCE).and_then(|r| r.ok());
        match (realm, nonce) {
            (Some(r), Some(n)) => {
                if r != self.realm {
                    self.key = stun::long_term_key(&self.username, r, &self.password);
                }
                self.realm = r.to_string();
                self.nonce = n.to_string();
                cache.set(self.realm.clone(), self.nonce.clone());
                true
            }
            (None, Some(n)) => {
                self.nonce = n.to_string();
                true
            }
            _ => false,
        }
    }

    /// An authenticated request, redone after a 401 or 438 with the realm and
    /// nonce the error carried. Returns the success response.
    fn request(
        &mut self,
        what: &'static str,
        method: u16,
        cache: &AuthCache,
        extra: impl Fn(Builder) -> Builder,
    ) -> Result<Vec<u8>, ClientError> {
        if self.realm.is_empty() {
            if let Some((r, n)) = cache.get() {
                self.key = stun::long_term_key(&self.username, &r, &self.password);
                self.realm = r;
                self.nonce = n;
            }
        }
        for _ in 0..4 {
            let tid = stun::random_tid();
            let req = if self.realm.is_empty() {
                extra(Builder::new(method, stun::REQUEST, tid)).finish()
            } else {
                self.authed(method, tid, &extra)
            };
            let resp = self.transact(what, &req, &tid)?;
            let p = Parsed::parse(&resp).map_err(|_| ClientError::Malformed(what))?;
            if p.method() != method {
                return Err(ClientError::Malformed(what));
            }
            if p.class() == stun::SUCCESS {
                return Ok(resp);
            }
            if p.class() != stun::ERROR {
                return Err(ClientError::Malformed(what));
            }
            let (code, reason) = match p.error_code() {
                Some(Ok((c, r))) => (c, r.to_string()),
                _ => return Err(ClientError::Malformed(what)),
            };
            if (code == 401 || code == 438) && self.learn(&p, cache) {
                continue;
            }
            return Err(ClientError::Turn { what, code, reason });
        }
        Err(ClientError::Turn {
            what,
            code: 401,
            reason: "still unauthorized after retries".into(),
        })
    }

    /// Allocate a UDP relay; returns the relayed address.
    pub fn allocate(&mut self, cache: &AuthCache) -> Result<SocketAddr, ClientError> {
        let resp = self.request("Allocate", stun::ALLOCATE, cache, |b| {
            b.attr(stun::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .u32_attr(stun::LIFETIME, 600)
        })?;
        let p = Parsed::parse(&resp).map_err(|_| ClientError::Malformed("Allocate"))?;
        let relayed = match p.xor_addr(stun::XOR_RELAYED_ADDRESS) {
            Some(Ok(a)) => a,
            _ => return Err(ClientError::Malformed("Allocate")),
        };
        self.relayed = Some(relayed);
        Ok(relayed)
    }

    pub fn create_permission(&mut self, cache: &AuthCache, peer: SocketAddr) -> Result<(), ClientError> {
        self.request("CreatePermission", stun::CREATE_PERMISSION, cache, |b| {
            b.xor_addr(stun::XOR_PEER_ADDRESS, peer)
        })?;
        Ok(())
    }

    pub fn channel_bind(&mut self, cache: &AuthCache, channel: u16, peer: SocketAddr) -> Result<(), ClientError> {
        self.request("ChannelBind", stun::CHANNEL_BIND, cache, |b| {
            b.u32_attr(stun::CHANNEL_NUMBER, (channel as u32) << 16)
                .xor_addr(stun::XOR_PEER_ADDRESS, peer)
        })?;
        Ok(())
    }

    /// Refresh with LIFETIME 0 (deallocate), best effort, without waiting.
    pub fn deallocate_nowait(&self) {
        if self.realm.is_empty() {
            return;
        }
        let req = self.authed(stun::REFRESH, stun::random_tid(), |b| b.u32_attr(stun::LIFETIME, 0));
        let _ = self.sock.send(&req);
    }
}

/// One STUN Binding request; Ok(mapped address) when the server answers.
pub fn binding(server: SocketAddr, timeout: Duration) -> Result<SocketAddr, ClientError> {
    let sock = UdpSocket::bind(if server.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" })?;
    sock.connect(server)?;
    let tid = stun::random_tid();
    let req = Builder::new(stun::BINDING, stun::REQUEST, tid).fingerprint().finish();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        sock.send(&req)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Ok(p) = Parsed::parse(&buf[..n]) {
                    if p.tid == tid && p.class() == stun::SUCCESS {
                        if let Some(Ok(a)) = p.xor_addr(stun::XOR_MAPPED_ADDRESS) {
                            return Ok(a);
                        }
                        return Err(ClientError::Malformed("Binding"));
                    }
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    Err(ClientError::Timeout("Binding"))
}
