//! Which peer addresses an allocation may relay to (secure by default).
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

/// An IPv4 or IPv6 network in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid CIDR {0:?}: expected ADDRESS/PREFIX such as 10.0.0.0/8 or fd00::/8")]
pub struct CidrError(pub String);

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let _ = s;
        todo!()
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let _ = ip;
        todo!()
    }
}

/// Decides whether a peer address may be relayed to.
///
/// Order: the address is first normalised (IPv4-mapped, IPv4-compatible and
/// NAT64 64:ff9b::/96 become their IPv4 address); an explicit `deny` match
/// refuses; an explicit `allow` match permits; the built-in denied ranges
/// (loopback unless `allow_loopback`, RFC 1918, 100.64/10, link-local,
/// multicast, reserved, documentation, 0.0.0.0/8, ::/128, ::1, fc00::/7,
/// fe80::/10 ...) refuse; everything else is permitted.
#[derive(Clone, Debug, Default)]
pub struct PeerFilter {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub allow_loopback: bool,
}

impl PeerFilter {
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        let _ = ip;
        todo!()
    }
}

/// IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d, except :: and
/// ::1) and NAT64 (64:ff9b::/96) addresses become IPv4.
pub fn normalize(ip: IpAddr) -> IpAddr {
    let _ = ip;
    todo!()
}
