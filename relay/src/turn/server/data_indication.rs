//! Data indications written in place in front of a peer's payload.
use super::*;

/// Writes a Data indication header (STUN header, XOR-PEER-ADDRESS, DATA
/// attribute header) in the bytes just before `payload_start`, so the peer's
/// payload is sent where it was received. Returns where the message starts.
pub(super) fn write_data_indication_header(
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
