//! A deliberately small, independent STUN/TURN client codec (RFC 8489 / 8656):
//! just what the load generator needs to Allocate, CreatePermission,
//! ChannelBind and Refresh with long-term (TURN REST) credentials.
//!
//! It does not use `relay::stun` on purpose: the benchmark should not share
//! code with the server it measures, so a codec bug on one side shows up as a
//! failed handshake instead of two matching mistakes.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use md5::Digest as _;
use thiserror::Error;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;

// Methods (all below 0x10, so the type is method | class bits).
pub const BINDING: u16 = 0x001;
pub const ALLOCATE: u16 = 0x003;
pub const REFRESH: u16 = 0x004;
pub const CREATE_PERMISSION: u16 = 0x008;
pub const CHANNEL_BIND: u16 = 0x009;

// Classes, already shifted into the type field.
pub const REQUEST: u16 = 0x0000;
pub const SUCCESS: u16 = 0x0100;
pub const ERROR: u16 = 0x0110;

// Attributes.
pub const USERNAME: u16 = 0x0006;
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ERROR_CODE: u16 = 0x0009;
pub const CHANNEL_NUMBER: u16 = 0x000C;
pub const LIFETIME: u16 = 0x000D;
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
pub const REALM: u16 = 0x0014;
pub const NONCE: u16 = 0x0015;
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const FINGERPRINT: u16 = 0x8028;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StunError {
    #[error("not a STUN message")]
    NotStun,
    #[error("truncated message or attribute")]
    Truncated,
    #[error("malformed attribute {0:#06x}")]
    BadAttr(u16),
}

/// Builds one request. Lengths are kept current so integrity and fingerprint
/// can be appended last.
pub struct Builder {
    buf: Vec<u8>,
    tid: [u8; 12],
}

impl Builder {
    pub fn new(method: u16, class: u16, tid: [u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&(method | class).to_be_bytes());
        buf.extend_from_slice(&0u16.to_be_bytes());
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid);
        Builder { buf, tid }
    }

    fn set_len(&mut self, body_len: usize) {
        let l = (body_len as u16).to_be_bytes();
        self.buf[2] = l[0];
        self.buf[3] = l[1];
    }

    pub fn attr(mut self, typ: u16, value: &[u8]) -> Self {
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        let body = self.buf.len() - HEADER_LEN;
        self.set_len(body);
        self
    }

    pub fn u32_attr(self, typ: u16, v: u32) -> Self {
        self.attr(typ, &v.to_be_bytes())
    }

    pub fn xor_addr(self, typ: u16, addr: SocketAddr) -> Self {
        let v = encode_xor_addr(addr, &self.tid);
        self.attr(typ, &v)
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1) over everything so far.
    pub fn integrity(mut self, key: &[u8]) -> Self {
        let body = self.buf.len() - HEADER_LEN + 24;
        self.set_len(body);
        let mac = hmac_sha1(key, &self.buf);
        self.buf.extend_from_slice(&MESSAGE_INTEGRITY.to_be_bytes());
        self.buf.extend_from_slice(&20u16.to_be_bytes());
        self.buf.extend_from_slice(&mac);
        self
    }

    pub fn fingerprint(mut self) -> Self {
        let body = self.buf.len() - HEADER_LEN + 8;
        self.set_len(body);
        let crc = crc32fast::hash(&self.buf) ^ 0x5354_554e;
        self.buf.extend_from_slice(&FINGERPRINT.to_be_bytes());
        self.buf.extend_from_slice(&4u16.to_be_bytes());
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

fn encode_xor_addr(addr: SocketAddr, tid: &[u8; 12]) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut v = vec![0u8];
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(0x01);
            v.extend_from_slice(&port.to_be_bytes());
            let x = u32::from(ip) ^ MAGIC_COOKIE;
            v.extend_from_slice(&x.to_be_bytes());
        }
        IpAddr::V6(ip) => {
            v.push(0x02);
            v.extend_from_slice(&port.to_be_bytes());
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            for (o, (a, m)) in ip.octets().iter().zip(mask.iter()).enumerate() {
                let _ = o;
                v.push(a ^ m);
            }
        }
    }
    v
}

/// A parsed response.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub typ: u16,
    pub tid: [u8; 12],
    pub attrs: Vec<(u16, &'a [u8])>,
}

impl<'a> Parsed<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Parsed<'a>, StunError> {
        if buf.len() < HEADER_LEN || buf[0] & 0xC0 != 0 {
            return Err(StunError::NotStun);
        }
        let cookie = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if cookie != MAGIC_COOKIE {
            return Err(StunError::NotStun);
        }
        let typ = u16::from_be_bytes([buf[0], buf[1]]);
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        let end = HEADER_LEN + len;
        if buf.len() < end {
            return Err(StunError::Truncated);
        }
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&buf[8..20]);
        let mut attrs = Vec::new();
        let mut at = HEADER_LEN;
        while at + 4 <= end {
            let t = u16::from_be_bytes([buf[at], buf[at + 1]]);
            let l = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
            let v = buf.get(at + 4..at + 4 + l).ok_or(StunError::Truncated)?;
            if at + 4 + l > end {
                return Err(StunError::Truncated);
            }
            attrs.push((t, v));
            at += 4 + l.div_ceil(4) * 4;
        }
        Ok(Parsed { typ, tid, attrs })
    }

    pub fn method(&self) -> u16 {
        self.typ & !0x0110
    }
    pub fn class(&self) -> u16 {
        self.typ & 0x0110
    }
    pub fn attr(&self, typ: u16) -> Option<&'a [u8]> {
        self.attrs.iter().find(|(t, _)| *t == typ).map(|(_, v)| *v)
    }
    pub fn str_attr(&self, typ: u16) -> Option<Result<&'a str, StunError>> {
        self.attr(typ)
            .map(|v| std::str::from_utf8(v).map_err(|_| StunError::BadAttr(typ)))
    }
    pub fn error_code(&self) -> Option<Result<(u16, &'a str), StunError>> {
        self.attr(ERROR_CODE).map(|v| {
            if v.len() < 4 {
                return Err(StunError::BadAttr(ERROR_CODE));
            }
            let code = (v[2] & 0x07) as u16 * 100 + v[3] as u16;
            Ok((code, std::str::from_utf8(&v[4..]).unwrap_or("")))
        })
    }
    pub fn xor_addr(&self, typ: u16) -> Option<Result<SocketAddr, StunError>> {
        self.attr(typ)
            .map(|v| decode_xor_addr(v, &self.tid).ok_or(StunError::BadAttr(typ)))
    }
}

fn decode_xor_addr(v: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match v[1] {
        0x01 if v.len() == 8 => {
            let x = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port))
        }
        0x02 if v.len() == 20 => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            let mut o = [0u8; 16];
            for i in 0..16 {
                o[i] = v[4 + i] ^ mask[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => None,
    }
}

pub fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let tag = ring::hmac::sign(&k, data);
    let mut out = [0u8; 20];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Long-term credential key MD5(username ":" realm ":" password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = md5::Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// TURN REST API credentials: username `<expiry>:<name>`, password
/// base64(HMAC-SHA1(secret, username)).
pub fn rest_credentials(secret: &str, name: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{name}");
    let mac = hmac_sha1(secret.as_bytes(), username.as_bytes());
    (username, base64::engine::general_purpose::STANDARD.encode(mac))
}

pub fn random_tid() -> [u8; 12] {
    let mut t = [0u8; 12];
    let rng = ring::rand::SystemRandom::new();
    if ring::rand::SecureRandom::fill(&rng, &mut t).is_err() {
        // Fall back to time-based bytes; uniqueness per request is all we need.
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        t.copy_from_slice(&n.to_le_bytes()[..12]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_addr_round_trip() {
        let tid = [7u8; 12];
        for a in ["127.0.0.1:3478", "[::1]:50000"] {
            let addr: SocketAddr = a.parse().unwrap();
            let msg = Builder::new(ALLOCATE, SUCCESS, tid)
                .xor_addr(XOR_RELAYED_ADDRESS, addr)
                .fingerprint()
                .finish();
            let p = Parsed::parse(&msg).unwrap();
            assert_eq!(p.method(), ALLOCATE);
            assert_eq!(p.class(), SUCCESS);
            assert_eq!(p.xor_addr(XOR_RELAYED_ADDRESS).unwrap().unwrap(), addr);
        }
    }

    #[test]
    fn long_term_key_and_rest_password() {
        // MD5("user:realm:pass"), computed independently with md5sum.
        let key = long_term_key("user", "realm", "pass");
        assert_eq!(key[..4], [0x84, 0x93, 0xfb, 0xc5]);
        let (u, p) = rest_credentials("north", "bench1", 1_700_000_000);
        assert_eq!(u, "1700000000:bench1");
        assert_eq!(p.len(), 28);
    }

    #[test]
    fn truncated_is_an_error_not_a_panic() {
        let msg = Builder::new(ALLOCATE, ERROR, [1; 12]).attr(REALM, b"bench").finish();
        for cut in 0..msg.len() {
            let _ = Parsed::parse(&msg[..cut]);
        }
    }
}
