//! A TUN device: IP packets in and out of a namespace through a file
//! descriptor.
//!
//! The device is created on a thread that has entered the target namespace
//! (see [`super::netns::run_in`]), so it is born there and never appears
//! among the host's interfaces. The fd stays with the router; closing it
//! (or deleting the namespace) removes the device, since it is not
//! persistent.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::error::TopologyError;

#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
}

impl Tun {
    /// Opens /dev/net/tun and attaches a new non-blocking TUN device named
    /// `name` in the calling thread's network namespace. IFF_NO_PI: reads and
    /// writes are bare IP packets, no 4-byte packet-info header.
    pub fn create(name: &str) -> Result<Self, TopologyError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(TopologyError::InvalidName(name.to_string()));
        }
        // SAFETY: open(2) with a NUL-terminated literal path.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(TopologyError::io("opening /dev/net/tun", io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads (and writes back) one ifreq we own.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr as *mut libc::ifreq) };
        if rc < 0 {
            return Err(TopologyError::io(
                format!("TUNSETIFF {name}"),
                io::Error::last_os_error(),
            ));
        }
        Ok(Self {
            fd,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet; `WouldBlock` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one packet into the namespace's network stack.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: packet is valid for reads of packet.len() bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
