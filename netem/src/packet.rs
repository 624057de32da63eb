//! The little the router needs from an IP header: where the packet goes and
//! which transport it carries. Borrowed bytes in, copied fields out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::engine::Proto;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub dst: IpAddr,
    pub proto: Proto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty packet")]
    Empty,
    #[error("IP version {0} is not 4 or 6")]
    Version(u8),
    #[error("packet shorter than its IP header")]
    Truncated,
}

fn proto(number: u8) -> Proto {
    match number {
        17 => Proto::Udp,
        6 => Proto::Tcp,
        _ => Proto::Other,
    }
}

/// Parses the fixed IPv4 or IPv6 header. IPv6 extension headers are not
/// walked: such packets count as [`Proto::Other`], which only matters for
/// protocol blocking, and WebRTC traffic does not use them.
pub fn parse(pkt: &[u8]) -> Result<Header, ParseError> {
    let first = *pkt.first().ok_or(ParseError::Empty)?;
    match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < 20 || pkt.len() < ihl {
                return Err(ParseError::Truncated);
            }
            let dst: [u8; 4] = pkt[16..20].try_into().map_err(|_| ParseError::Truncated)?;
            Ok(Header {
                dst: IpAddr::V4(Ipv4Addr::from(dst)),
                proto: proto(pkt[9]),
            })
        }
        6 => {
            if pkt.len() < 40 {
                return Err(ParseError::Truncated);
            }
            let dst: [u8; 16] = pkt[24..40].try_into().map_err(|_| ParseError::Truncated)?;
            Ok(Header {
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                proto: proto(pkt[6]),
            })
        }
        v => Err(ParseError::Version(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(proto: u8, dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = proto;
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn ipv4_udp_tcp_other() {
        let h = parse(&ipv4(17, [10, 77, 1, 2])).expect("valid");
        assert_eq!(
            h,
            Header {
                dst: IpAddr::V4(Ipv4Addr::new(10, 77, 1, 2)),
                proto: Proto::Udp
            }
        );
        assert_eq!(parse(&ipv4(6, [1, 2, 3, 4])).expect("valid").proto, Proto::Tcp);
        assert_eq!(parse(&ipv4(1, [1, 2, 3, 4])).expect("valid").proto, Proto::Other);
    }

    #[test]
    fn ipv6() {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[6] = 17;
        p[39] = 1;
        let h = parse(&p).expect("valid");
        assert_eq!(h.dst, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(h.proto, Proto::Udp);
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        assert_eq!(parse(&[]), Err(ParseError::Empty));
        assert_eq!(parse(&[0x45, 0, 0]), Err(ParseError::Truncated));
        assert_eq!(parse(&[0x4f; 30]), Err(ParseError::Truncated));
        assert_eq!(parse(&[0x44; 30]), Err(ParseError::Truncated));
        assert_eq!(parse(&[0x60; 39]), Err(ParseError::Truncated));
        assert_eq!(parse(&[0x20; 60]), Err(ParseError::Version(2)));
    }
}
