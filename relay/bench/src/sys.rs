//! Thin libc helpers: batched UDP I/O (recvmmsg/sendmmsg), socket options,
//! RLIMIT_NOFILE and /proc readings of another process.
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::time::Duration;

pub const BATCH: usize = 32;
/// Bytes per slot: the largest UDP payload we handle plus headroom.
pub const SLOT: usize = 2048;
/// A `len` that makes [`Batch::send`] skip the slot.
pub const SKIP: usize = usize::MAX;

/// A batch of BATCH datagram slots with their iovecs, headers and addresses.
/// Pointers are (re)written before every call, so the struct may move.
pub struct Batch {
    pub bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    addrs: Vec<libc::sockaddr_storage>,
    /// Per slot: offset into the slot where data starts, and its length.
    pub off: [usize; BATCH],
    pub len: [usize; BATCH],
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zero_iov: libc::iovec = unsafe { mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        let zero_addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
        Batch {
            bufs: vec![0u8; BATCH * SLOT],
            iovs: vec![zero_iov; BATCH],
            hdrs: vec![zero_hdr; BATCH],
            addrs: vec![zero_addr; BATCH],
            off: [0; BATCH],
            len: [0; BATCH],
        }
    }

    pub fn slot(&self, i: usize) -> &[u8] {
        &self.bufs[i * SLOT + self.off[i]..i * SLOT + self.off[i] + self.len[i]]
    }

    pub fn slot_mut_full(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * SLOT..(i + 1) * SLOT]
    }

    /// Receives up to BATCH datagrams, each written `headroom` bytes into its slot.
    /// Returns 0 on timeout / EAGAIN.
    pub fn recv(&mut self, fd: RawFd, headroom: usize, flags: libc::c_int) -> io::Result<usize> {
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            self.iovs[i].iov_base = unsafe { base.add(i * SLOT + headroom) } as *mut libc::c_void;
            self.iovs[i].iov_len = SLOT - headroom;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self.
        let n = unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as u32, flags, std::ptr::null_mut()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.off[i] = headroom;
            self.len[i] = self.hdrs[i].msg_len as usize;
        }
        Ok(n)
    }

    /// Source address of received slot `i`.
    pub fn addr(&self, i: usize) -> Option<SocketAddr> {
        from_storage(&self.addrs[i])
    }

    pub fn set_addr(&mut self, i: usize, a: SocketAddr) {
        self.addrs[i] = to_storage(a);
    }

    /// Sends slots `0..n` (data at `off[i]..off[i]+len[i]`), skipping slots
    /// whose `len` is [`SKIP`]. With `to_addr` each goes to `addrs[i]`,
    /// otherwise the socket must be connected. Returns how many were sent;
    /// stops early on EAGAIN.
    pub fn send(&mut self, fd: RawFd, n: usize, to_addr: bool, flags: libc::c_int) -> io::Result<usize> {
        let base = self.bufs.as_mut_ptr();
        let mut k = 0;
        for i in 0..n {
            if self.len[i] == SKIP {
                continue;
            }
            self.iovs[k].iov_base = unsafe { base.add(i * SLOT + self.off[i]) } as *mut libc::c_void;
            self.iovs[k].iov_len = self.len[i];
            let iov: *mut libc::iovec = &mut self.iovs[k];
            let name: *mut libc::c_void = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            let namelen = storage_len(&self.addrs[i]);
            let h = &mut self.hdrs[k].msg_hdr;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            if to_addr {
                h.msg_name = name;
                h.msg_namelen = namelen;
            } else {
                h.msg_name = std::ptr::null_mut();
                h.msg_namelen = 0;
            }
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            k += 1;
        }
        let mut done = 0;
        while done < k {
            // SAFETY: headers done..k point at live buffers owned by self.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr().add(done), (k - done) as u32, flags) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => return Ok(done),
                    // A loopback peer that went away answers with ICMP: skip one datagram.
                    Some(libc::ECONNREFUSED) => {
                        done += 1;
                        continue;
                    }
                    _ if done > 0 => return Ok(done),
                    _ => return Err(e),
                }
            }
            done += r as usize;
        }
        Ok(done)
    }
}

impl Batch {
    /// Sends slots `0..n` to `to` as one UDP GSO send (UDP_SEGMENT), the way a
    /// relay can coalesce a run of datagrams to one destination. All slots but
    /// the last must have the same length. Falls back to [`Batch::send`] when
    /// they do not or the kernel refuses.
    pub fn send_gso(&mut self, fd: RawFd, n: usize, to: SocketAddr) -> io::Result<usize> {
        if n == 0 {
            return Ok(0);
        }
        let seg = self.len[0];
        let uniform = (0..n).all(|i| self.len[i] != SKIP && self.len[i] <= seg && (i == n - 1 || self.len[i] == seg));
        if n == 1 || !uniform || seg == 0 {
            for i in 0..n {
                self.set_addr(i, to);
            }
            return self.send(fd, n, true, 0);
        }
        let base = self.bufs.as_mut_ptr();
        for i in 0..n {
            self.iovs[i].iov_base = unsafe { base.add(i * SLOT + self.off[i]) } as *mut libc::c_void;
            self.iovs[i].iov_len = self.len[i];
        }
        let mut addr = to_storage(to);
        // cmsg buffer for one u16, aligned.
        let mut cbuf = [0u64; 4];
        // SAFETY: msghdr and cmsg built over live local buffers of sufficient size.
        let r = unsafe {
            let mut h: libc::msghdr = mem::zeroed();
            h.msg_name = &mut addr as *mut _ as *mut libc::c_void;
            h.msg_namelen = storage_len(&addr);
            h.msg_iov = self.iovs.as_mut_ptr();
            h.msg_iovlen = n as _;
            h.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&h);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg as u16);
            libc::sendmsg(fd, &h, 0)
        };
        if r < 0 {
            for i in 0..n {
                self.set_addr(i, to);
            }
            return self.send(fd, n, true, 0);
        }
        Ok(n)
    }
}

fn storage_len(s: &libc::sockaddr_storage) -> libc::socklen_t {
    if s.ss_family as i32 == libc::AF_INET6 {
        mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
    } else {
        mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
    }
}

pub fn to_storage(a: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: zeroed storage is valid; we write a sockaddr_in(6) prefix into it.
    let mut s: libc::sockaddr_storage = unsafe { mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write(&mut s as *mut _ as *mut libc::sockaddr_in, sin) };
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            unsafe { std::ptr::write(&mut s as *mut _ as *mut libc::sockaddr_in6, sin6) };
        }
    }
    s
}

pub fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: family says this is a sockaddr_in.
            let sin = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this is a sockaddr_in6.
            let sin6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: passing a pointer to a live c_int of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Socket buffers of `bytes` (FORCE variants when root, so rmem_max does not cap them).
pub fn set_buffers(fd: RawFd, bytes: usize) {
    let b = bytes.min(i32::MAX as usize) as libc::c_int;
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, b).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, b);
    }
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, b).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, b);
    }
}

/// Raises RLIMIT_NOFILE to at least `want` (hard limit too when permitted).
/// Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid struct pointer.
    unsafe {
        let mut r: libc::rlimit = mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur >= want {
            return r.rlim_cur;
        }
        let mut n = libc::rlimit {
            rlim_cur: want,
            rlim_max: r.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &n) != 0 {
            n.rlim_cur = r.rlim_max;
            n.rlim_max = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &n);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

pub fn set_recv_timeout(sock: &std::net::UdpSocket, d: Duration) -> io::Result<()> {
    sock.set_read_timeout(Some(d))
}

/// CPU time (user + system, all threads) of a process, from /proc/PID/stat.
pub fn proc_cpu(pid: u32) -> io::Result<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu(&s, clk_tck()).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat"))
}

pub fn clk_tck() -> u64 {
    // SAFETY: sysconf is always safe to call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line.
pub fn parse_stat_cpu(stat: &str, tck: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / tck))
}

/// (VmRSS, VmHWM) in KiB from /proc/PID/status.
pub fn proc_rss_kib(pid: u32) -> io::Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((get("VmRSS:"), get("VmHWM:")))
}

/// Busy CPU time of the whole machine (all cores, everything but idle and
/// iowait) from /proc/stat.
pub fn machine_busy() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest is included in user).
    let busy: u64 = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(Duration::from_nanos(busy * 1_000_000_000 / clk_tck()))
}

/// Number of threads of a process.
pub fn proc_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_parses_names_with_spaces_and_parens() {
        let line = "1234 (turn server) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 3 0 100 \
                    1000000 500 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_cpu(line, 100), Some(Duration::from_millis(4000)));
    }

    #[test]
    fn storage_round_trip() {
        for a in ["127.0.0.1:9", "[::1]:65535"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(from_storage(&to_storage(a)), Some(a));
        }
    }
}
