//! Which peer addresses an allocation may relay to (secure by default).
//!
//! The dangerous peers are the relay's own loopback and private networks.
//! coturn's CVEs in this area (CVE-2020-26262, CVE-2020-6061 and friends) all
//! came from one address reaching them through another spelling: 0.0.0.0 and
//! :: (which Linux delivers to loopback), IPv4-mapped addresses on a
//! dual-stack socket, and other IPv6 forms embedding an IPv4 address. So
//! every embedding form is unwrapped before any rule is applied.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// `ADDRESS/PREFIX`, or a bare address meaning /32 or /128. Host bits
    /// below the prefix are accepted and ignored ("10.1.2.3/8" is 10/8).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = max_prefix(addr);
        let prefix = match prefix {
            None => max,
            // u8::from_str would take "+8"; at most three digits keeps it tidy.
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| err())?
            }
            Some(_) => return Err(err()),
        };
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// A v4 network matches IPv4 addresses and IPv6 spellings of them (see
    /// [`normalize`]); a v6 network matches only IPv6 addresses as written.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), _) => match normalize(ip) {
                IpAddr::V4(v4) => v4_in(net, self.prefix, v4),
                IpAddr::V6(_) => false,
            },
            (IpAddr::V6(net), IpAddr::V6(v6)) => v6_in(net, self.prefix, v6),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn v4_in(net: Ipv4Addr, prefix: u8, ip: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
    u32::from(net) & mask == u32::from(ip) & mask
}

fn v6_in(net: Ipv6Addr, prefix: u8, ip: Ipv6Addr) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
    u128::from(net) & mask == u128::from(ip) & mask
}

/// Decides whether a peer address may be relayed to.
///
/// Order: the address is first normalised (IPv4-mapped, IPv4-compatible,
/// SIIT ::ffff:0:a.b.c.d, NAT64 64:ff9b::/96 and 64:ff9b:1::/48, and 6to4
/// 2002::/16 become their IPv4 address); an explicit `deny` match refuses; an
/// explicit `allow` match permits; the built-in denied ranges (loopback unless
/// `allow_loopback`, RFC 1918, 100.64/10, link-local, multicast, reserved,
/// documentation, benchmarking, 0.0.0.0/8, ::/128, ::1, fc00::/7, fe80::/10,
/// fec0::/10, ff00::/8, 100::/64, 2001::/23 including Teredo, 2001:db8::/32,
/// 3fff::/20, and the rest of the reserved ::/8) refuse; everything else is permitted.
///
/// `allow` and `deny` entries match either the address as written or its
/// normalised form, so "deny 64:ff9b::/96" and "deny 10.0.0.0/8" both work.
/// The unspecified addresses 0.0.0.0 and :: (in any spelling) are refused
/// before the lists are consulted: no peer can be one, and on Linux they reach
/// loopback. `allow_loopback` opens 127/8, ::1 and ::ffff:127.0.0.0/104 only: 0.0.0.0
/// and :: stay denied, and so do loopback addresses hidden in NAT64, 6to4 or
/// IPv4-compatible forms, which do not reach this host's loopback anyway.
#[derive(Clone, Debug, Default)]
pub struct PeerFilter {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub allow_loopback: bool,
}

impl PeerFilter {
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        let (norm, how) = unwrap_embedded(ip);
        // No peer is ever the unspecified address, and on Linux sending to it
        // reaches loopback, so not even an allow list (say 0.0.0.0/0) opens it.
        if norm.is_unspecified() {
            return false;
        }
        let listed = |list: &[Cidr]| list.iter().any(|c| c.contains(ip) || c.contains(norm));
        if listed(&self.deny) {
            return false;
        }
        if listed(&self.allow) {
            return true;
        }
        match norm {
            IpAddr::V4(v4) => {
                if v4.is_loopback() {
                    // Only spellings the kernel itself delivers to 127/8.
                    return self.allow_loopback && matches!(how, Embedding::None | Embedding::Mapped);
                }
                !V4_DENIED.iter().any(|&(net, prefix)| v4_in(net, prefix, v4))
            }
            IpAddr::V6(v6) => {
                if v6 == Ipv6Addr::LOCALHOST {
                    return self.allow_loopback;
                }
                !V6_DENIED.iter().any(|&(net, prefix)| v6_in(net, prefix, v6))
            }
        }
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// IPv4 ranges never relayed to unless explicitly allowed (127/8 is handled
/// separately because of `allow_loopback`).
const V4_DENIED: &[(Ipv4Addr, u8)] = &[
    (v4(0, 0, 0, 0), 8),          // "this network"; 0.0.0.0 reaches loopback on Linux
    (v4(10, 0, 0, 0), 8),         // RFC 1918
    (v4(100, 64, 0, 0), 10),      // shared address space (CGNAT), RFC 6598
    (v4(169, 254, 0, 0), 16),     // link-local, includes cloud metadata 169.254.169.254
    (v4(172, 16, 0, 0), 12),      // RFC 1918
    (v4(192, 0, 0, 0), 24),       // IETF protocol assignments
    (v4(192, 0, 2, 0), 24),       // TEST-NET-1
    (v4(192, 88, 99, 0), 24),     // 6to4 relay anycast (deprecated)
    (v4(192, 168, 0, 0), 16),     // RFC 1918
    (v4(198, 18, 0, 0), 15),      // benchmarking
    (v4(198, 51, 100, 0), 24),    // TEST-NET-2
    (v4(203, 0, 113, 0), 24),     // TEST-NET-3
    (v4(224, 0, 0, 0), 4),        // multicast
    (v4(240, 0, 0, 0), 4),        // reserved, includes 255.255.255.255
    (v4(255, 255, 255, 255), 32), // limited broadcast, listed for clarity
];

const fn v6(a: u16, b: u16, c: u16) -> Ipv6Addr {
    Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 0)
}

/// IPv6 ranges never relayed to unless explicitly allowed (::1 is handled
/// separately because of `allow_loopback`; the IPv4-embedding prefixes are
/// unwrapped before these are consulted).
const V6_DENIED: &[(Ipv6Addr, u8)] = &[
    (v6(0, 0, 0), 8),           // reserved: ::, compatible and mapped leftovers; never global unicast
    (v6(0x100, 0, 0), 64),      // discard-only, RFC 6666
    (v6(0x2001, 0, 0), 23),     // IETF protocol assignments incl. Teredo 2001::/32
    (v6(0x2001, 0xdb8, 0), 32), // documentation
    (v6(0x3fff, 0, 0), 20),     // documentation, RFC 9637
    (v6(0xfc00, 0, 0), 7),      // unique local
    (v6(0xfe80, 0, 0), 10),     // link-local
    (v6(0xfec0, 0, 0), 10),     // site-local (deprecated), still routed by some stacks
    (v6(0xff00, 0, 0), 8),      // multicast
];

/// How an IPv4 address was spelled inside an IPv6 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Embedding {
    /// Not embedded (native IPv4, or IPv6 left as is).
    None,
    /// ::ffff:a.b.c.d, which a dual-stack socket sends to a.b.c.d itself.
    Mapped,
    /// Any other form (compatible, SIIT, NAT64, 6to4): reaches a translator
    /// or relay that will deliver to the IPv4 address on our behalf.
    Translated,
}

fn unwrap_embedded(ip: IpAddr) -> (IpAddr, Embedding) {
    let v6 = match ip {
        IpAddr::V4(_) => return (ip, Embedding::None),
        IpAddr::V6(v6) => v6,
    };
    let s = v6.segments();
    let o = v6.octets();
    let last32 = IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    match s {
        // ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, _, _] => (last32, Embedding::Mapped),
        // ::ffff:0:a.b.c.d, SIIT (RFC 2765) IPv4-translated
        [0, 0, 0, 0, 0xffff, 0, _, _] => (last32, Embedding::Translated),
        // :: and ::1 are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, 0, 0] | [0, 0, 0, 0, 0, 0, 0, 1] => (ip, Embedding::None),
        // ::a.b.c.d, IPv4-compatible (deprecated, RFC 4291)
        [0, 0, 0, 0, 0, 0, _, _] => (last32, Embedding::Translated),
        // 64:ff9b::/96 well-known NAT64 prefix
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => (last32, Embedding::Translated),
        // 64:ff9b:1::/48 local-use NAT64 prefix (RFC 8215); operators embed at
        // various prefix lengths, the /96 placement is the one to trust.
        [0x64, 0xff9b, 1, _, _, _, _, _] => (last32, Embedding::Translated),
        // 2002:a.b.c.d::/48 6to4
        [0x2002, _, _, _, _, _, _, _] => (IpAddr::V4(Ipv4Addr::new(o[2], o[3], o[4], o[5])), Embedding::Translated),
        _ => (ip, Embedding::None),
    }
}

/// IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d, except :: and
/// ::1), SIIT (::ffff:0:a.b.c.d), NAT64 (64:ff9b::/96 and the local-use
/// 64:ff9b:1::/48, last 32 bits) and 6to4 (2002:a.b.c.d::/48) addresses
/// become IPv4; anything else is returned unchanged.
pub fn normalize(ip: IpAddr) -> IpAddr {
    unwrap_embedded(ip).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_cidrs() {
        assert_eq!(
            cidr("10.0.0.0/8"),
            Cidr {
                addr: ip("10.0.0.0"),
                prefix: 8
            }
        );
        assert_eq!(
            cidr("fd00::/8"),
            Cidr {
                addr: ip("fd00::"),
                prefix: 8
            }
        );
        assert_eq!(
            cidr("192.0.2.1"),
            Cidr {
                addr: ip("192.0.2.1"),
                prefix: 32
            }
        );
        assert_eq!(
            cidr("2001:db8::1"),
            Cidr {
                addr: ip("2001:db8::1"),
                prefix: 128
            }
        );
        assert_eq!(cidr("0.0.0.0/0").prefix, 0);
        assert_eq!(cidr("::/0").prefix, 0);
        assert_eq!(cidr("::/128").prefix, 128);
        for bad in [
            "",
            "/",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0.0/0008",
            "10.0.0/8",
            "garbage",
            "10.0.0.0 /8",
            "10.0.0.0/8 ",
            "fd00::/x",
            "10.0.0.0/256",
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert_eq!(e, CidrError(bad.to_string()));
        }
        assert!(CidrError("x".into()).to_string().contains("expected ADDRESS/PREFIX"));
    }

    #[test]
    fn contains_v4_v6() {
        let c = cidr("10.0.0.0/8");
        assert!(c.contains(ip("10.0.0.0")));
        assert!(c.contains(ip("10.255.255.255")));
        assert!(!c.contains(ip("11.0.0.0")));
        assert!(!c.contains(ip("9.255.255.255")));
        // IPv6 spellings of an IPv4 address belong to the IPv4 network.
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(c.contains(ip("64:ff9b::10.1.2.3")));
        // But a plain IPv6 address never does, whatever its low bits.
        assert!(!c.contains(ip("2606:4700::a01:203")));
        let c6 = cidr("fd00::/8");
        assert!(c6.contains(ip("fd12:3456::1")));
        assert!(!c6.contains(ip("fe00::1")));
        assert!(!c6.contains(ip("10.0.0.1")));
        assert!(!cidr("::/0").contains(ip("1.2.3.4")));
        assert!(cidr("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2606:4700::1111")));
        assert!(cidr("10.1.2.3/8").contains(ip("10.9.9.9")));
        assert!(cidr("1.2.3.4").contains(ip("1.2.3.4")));
        assert!(!cidr("1.2.3.4").contains(ip("1.2.3.5")));
    }

    #[test]
    fn normalize_forms() {
        for (from, to) in [
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:0:10.0.0.1", "10.0.0.1"),
            ("::127.0.0.1", "127.0.0.1"),
            ("::0.0.0.2", "0.0.0.2"),
            ("64:ff9b::7f00:1", "127.0.0.1"),
            ("64:ff9b:1::a00:1", "10.0.0.1"),
            ("64:ff9b:1:abcd::a00:1", "10.0.0.1"),
            ("2002:7f00:1::", "127.0.0.1"),
            ("2002:808:808:1234::5", "8.8.8.8"),
            ("8.8.8.8", "8.8.8.8"),
            ("::", "::"),
            ("::1", "::1"),
            ("2606:4700::1111", "2606:4700::1111"),
            ("64:ff9b:2::1", "64:ff9b:2::1"),
        ] {
            assert_eq!(normalize(ip(from)), ip(to), "{from}");
        }
    }

    #[test]
    fn builtin_ranges_denied() {
        let f = PeerFilter::default();
        for a in [
            "0.0.0.0",
            "0.255.255.255",
            "10.0.0.0",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.0",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "169.254.0.0",
            "172.16.0.0",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.0.1",
            "192.168.255.255",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "2001:db8::1",
            "2001:db8:ffff::1",
            "100::1",
            "100::ffff:ffff:ffff:ffff",
            "2001::1",
            "2001:0:4136:e378::1",
            "2001:1ff::1",
            "2001:10::1",
            "3fff::1",
            "3fff:fff::1",
            "::2:0:0:1",
        ] {
            assert!(!f.is_allowed(ip(a)), "{a} should be denied");
        }
    }

    #[test]
    fn range_edges_allowed() {
        let f = PeerFilter::default();
        for a in [
            "1.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "203.0.112.255",
            "203.0.114.0",
            "223.255.255.255",
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "2001:200::1",
            "2001:4860:4860::8888",
            "3fff:1000::1",
            "fbff::1",
            "2a00:1450::1",
        ] {
            assert!(f.is_allowed(ip(a)), "{a} should be allowed");
        }
    }

    #[test]
    fn embedded_forms_of_private_addresses_denied() {
        let f = PeerFilter::default();
        let loopbackish = PeerFilter {
            allow_loopback: true,
            ..Default::default()
        };
        for v4 in ["127.0.0.1", "10.0.0.1", "0.0.0.0", "169.254.169.254"] {
            let o: Ipv4Addr = v4.parse().unwrap();
            let [a, b, c, d] = o.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            for form in [
                format!("::ffff:{v4}"),
                format!("::{v4}"),
                format!("::ffff:0:{v4}"),
                format!("64:ff9b::{v4}"),
                format!("64:ff9b:1::{v4}"),
                format!("2002:{hi:x}:{lo:x}::1"),
            ] {
                assert!(!f.is_allowed(ip(&form)), "{form}");
                if v4 != "127.0.0.1" || !form.starts_with("::ffff:1") {
                    assert!(!loopbackish.is_allowed(ip(&form)), "{form} with allow_loopback");
                }
            }
        }
        // Public addresses in the same forms pass.
        for form in ["::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1"] {
            assert!(f.is_allowed(ip(form)), "{form}");
        }
    }

    #[test]
    fn allow_loopback_opens_loopback_only() {
        let f = PeerFilter {
            allow_loopback: true,
            ..Default::default()
        };
        for a in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(f.is_allowed(ip(a)), "{a}");
        }
        for a in [
            "0.0.0.0",
            "::",
            "::ffff:0.0.0.0",
            "10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::127.0.0.1",
            "2002:7f00:1::",
            "fe80::1",
        ] {
            assert!(!f.is_allowed(ip(a)), "{a}");
        }
    }

    #[test]
    fn allow_list_opens_private_range() {
        let f = PeerFilter {
            allow: vec![cidr("10.1.0.0/16"), cidr("fd00::/8")],
            ..Default::default()
        };
        assert!(f.is_allowed(ip("10.1.2.3")));
        assert!(f.is_allowed(ip("::ffff:10.1.2.3")));
        assert!(f.is_allowed(ip("fd00::1")));
        assert!(!f.is_allowed(ip("10.2.0.1")));
        assert!(!f.is_allowed(ip("fc00::1")));
    }

    #[test]
    fn deny_list_closes_public_range_and_beats_allow() {
        let f = PeerFilter {
            allow: vec![cidr("10.0.0.0/8"), cidr("8.8.0.0/16")],
            deny: vec![cidr("8.8.8.0/24"), cidr("10.0.0.0/24"), cidr("2606:4700::/32")],
            allow_loopback: false,
        };
        assert!(!f.is_allowed(ip("8.8.8.8")));
        assert!(!f.is_allowed(ip("::ffff:8.8.8.8")));
        assert!(!f.is_allowed(ip("2002:808:808::1")));
        assert!(f.is_allowed(ip("8.8.4.4")));
        assert!(!f.is_allowed(ip("10.0.0.5")));
        assert!(f.is_allowed(ip("10.0.1.5")));
        assert!(!f.is_allowed(ip("2606:4700::1111")));
        assert!(f.is_allowed(ip("1.1.1.1")));
    }

    #[test]
    fn deny_list_matches_written_ipv6_form() {
        let f = PeerFilter {
            deny: vec![cidr("64:ff9b::/96")],
            ..Default::default()
        };
        assert!(!f.is_allowed(ip("64:ff9b::8.8.8.8")));
        assert!(f.is_allowed(ip("8.8.8.8")));
    }

    #[test]
    fn unspecified_never_allowed() {
        let f = PeerFilter {
            allow: vec![cidr("0.0.0.0/0"), cidr("::/0")],
            allow_loopback: true,
            ..Default::default()
        };
        for a in ["0.0.0.0", "::", "::ffff:0.0.0.0", "64:ff9b::", "2002::"] {
            assert!(!f.is_allowed(ip(a)), "{a}");
        }
        assert!(f.is_allowed(ip("10.0.0.1")));
    }
}
