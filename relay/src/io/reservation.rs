//! EVEN-PORT reservations (RFC 8656 §7.2): relay sockets bound now and
//! handed to whichever shard receives the Allocate carrying the token.
//!
//! A parked socket is a plain `std` socket registered with no runtime, so the
//! claiming shard can adopt it into its own. The table is behind a mutex
//! shared by all shards, touched only by Allocate requests that reserve or
//! redeem a token, never by the packet path.
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::Instant;

struct Parked {
    sock: UdpSocket,
    addr: SocketAddr,
    expires: Instant,
}

#[derive(Default)]
pub struct Reservations {
    parked: Mutex<HashMap<[u8; 8], Parked>>,
}

impl Reservations {
    /// Parks `sock` (bound to `addr`) under `token`, dropping expired entries
    /// on the way so an abandoned reservation never outlives its deadline by
    /// more than the next reservation.
    pub fn park(&self, token: [u8; 8], sock: UdpSocket, addr: SocketAddr, expires: Instant, now: Instant) {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        parked.retain(|_, p| p.expires > now);
        parked.insert(token, Parked { sock, addr, expires });
    }

    /// Takes the socket parked under `token` if it has not expired.
    pub fn take(&self, token: [u8; 8], now: Instant) -> Option<(UdpSocket, SocketAddr)> {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let p = parked.remove(&token)?;
        (p.expires > now).then_some((p.sock, p.addr))
    }
}

/// Sets or clears DF on an adopted reservation, which was bound before the
/// redeeming Allocate said whether it wants DONT-FRAGMENT.
pub fn set_dont_fragment(sock: &UdpSocket, addr: SocketAddr, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    if addr.is_ipv4() {
        let v = if on {
            libc::IP_PMTUDISC_DO
        } else {
            libc::IP_PMTUDISC_DONT
        };
        super::relay_socket::setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v)
    } else {
        let v = if on {
            libc::IPV6_PMTUDISC_DO
        } else {
            libc::IPV6_PMTUDISC_DONT
        };
        super::relay_socket::setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, v)
    }
}
