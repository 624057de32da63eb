//! Sockets a process's shards share through `SO_REUSEPORT`, and the guard
//! that keeps another process out of the group. The relay's listeners and
//! the SFU's media ports both use them.
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Fails if another socket holds `addr`. `SO_REUSEPORT` lets every process
/// of the same user join a port's group, so a forgotten server on the same
/// address would start fine and silently take a share of the clients. A bind
/// without the option fails while anyone holds the address, which is exactly
/// the check wanted; the probe closes before the real sockets bind. Port 0
/// picks a fresh port and needs no check.
pub fn ensure_unshared(addr: SocketAddr, ty: Type) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let s = Socket::new(Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if ty == Type::STREAM {
        // TIME_WAIT leftovers of an earlier run are not a live owner.
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())
}

/// One shard's non-blocking UDP socket in `addr`'s `SO_REUSEPORT` group,
/// with kernel buffers of `buf` bytes where the kernel allows.
pub fn bind_udp(addr: SocketAddr, buf: usize) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // IPv4 clients come in on the IPv4 socket, never as mapped addresses.
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(buf);
    let _ = s.set_send_buffer_size(buf);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// One shard's non-blocking TCP listener in `addr`'s `SO_REUSEPORT` group.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // TIME_WAIT connections of an earlier run must not block a restart.
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}
