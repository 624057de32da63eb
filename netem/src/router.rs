//! The I/O shell: forwards IP packets between the namespaces' TUN devices
//! through the impairment engine.
//!
//! One thread, level-triggered epoll over the TUN fds, a [`Pool`] of
//! MTU-sized slots. Each node has an *up* link (its packets towards the
//! rig) and a *down* link (packets towards it); a packet from A to B crosses
//! A.up then B.down, like two access links joined by the Internet. The loop
//! sleeps in `epoll_pwait2` (nanosecond timeout) until the earliest engine
//! deadline, so release times are met to within the scheduler's wake-up
//! latency, not a timer tick.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::engine::{Link, LinkChange, LinkParams, LinkStats, Schedule, Verdict};
use crate::packet;
use crate::pool::{Pool, Slot};
use crate::topology::{Topology, Tun, MTU};

/// Packets in flight across all links before new arrivals are dropped.
/// 16384 × 2 KiB = 32 MiB, i.e. seconds of queue at the rates we emulate.
const POOL_SLOTS: usize = 16_384;
const SLOT_SIZE: usize = 2048;
/// Upper bound on a sleep, so the stop flag and ticks are seen promptly.
const MAX_SLEEP: Duration = Duration::from_millis(20);
/// Reads per fd per wake-up, so one busy sender cannot starve the others.
const READ_BUDGET: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{tuns} TUN devices for {nodes} nodes and {configs} link configurations")]
    Mismatch { tuns: usize, nodes: usize, configs: usize },
}

/// Impairments of one node's access link.
#[derive(Debug, Clone, Default)]
pub struct LinkConfig {
    /// From the node into the rig.
    pub up: LinkParams,
    pub up_schedule: Schedule,
    /// From the rig to the node.
    pub down: LinkParams,
    pub down_schedule: Schedule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// Drops that happen before a packet reaches any link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    pub malformed: u64,
    /// Destination is not a node of the topology (e.g. IPv6 multicast).
    pub unroutable: u64,
    pub pool_exhausted: u64,
    pub read_errors: u64,
    pub write_errors: u64,
}

#[derive(Debug, Clone)]
pub struct PortReport {
    pub name: String,
    pub up: LinkStats,
    pub down: LinkStats,
}

/// A snapshot of all counters, for reports and timelines.
#[derive(Debug, Clone)]
pub struct Report {
    pub at: Instant,
    pub ports: Vec<PortReport>,
    pub router: RouterStats,
    pub pool_in_use: usize,
}

struct Port {
    name: String,
    tun: Tun,
    up: Link<Slot>,
    down: Link<Slot>,
    /// Cleared when the TUN fails for good (namespace deleted under us).
    alive: bool,
}

pub struct Router {
    ports: Vec<Port>,
    routes: HashMap<IpAddr, usize>,
    pool: Pool,
    epoll: OwnedFd,
    stats: RouterStats,
    /// Where packets go when the pool is exhausted: read (to drain the fd)
    /// and dropped.
    scratch: Vec<u8>,
    events: Vec<libc::epoll_event>,
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> RouterError {
    move |source| RouterError::Io { context, source }
}

/// Per-link seed: distinct streams for every link and direction, all
/// derived from the run's seed.
fn link_seed(seed: u64, port: usize, dir: Direction) -> u64 {
    seed ^ ((port as u64) << 33) ^ (dir as u64 + 1)
}

impl Router {
    /// `tuns` and `configs` are in node order, as [`Topology::build`]
    /// returns them. Schedules count from now.
    pub fn new(topology: &Topology, tuns: Vec<Tun>, configs: Vec<LinkConfig>, seed: u64) -> Result<Self, RouterError> {
        let nodes = topology.nodes();
        if tuns.len() != nodes.len() || configs.len() != nodes.len() {
            return Err(RouterError::Mismatch {
                tuns: tuns.len(),
                nodes: nodes.len(),
                configs: configs.len(),
            });
        }
        // SAFETY: epoll_create1 has no preconditions; the fd is owned below.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io_err("epoll_create1")(io::Error::last_os_error()));
        }
        // SAFETY: fresh fd, owned from here on.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        let now = Instant::now();
        let mut ports = Vec::with_capacity(nodes.len());
        let mut routes = HashMap::new();
        for (i, ((node, tun), cfg)) in nodes.iter().zip(tuns).zip(configs).enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: registering an fd we own with an event struct we own.
            let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, tun.as_raw_fd(), &mut ev) };
            if rc < 0 {
                return Err(io_err("epoll_ctl ADD")(io::Error::last_os_error()));
            }
            routes.insert(IpAddr::V4(node.addr), i);
            ports.push(Port {
                name: node.name.clone(),
                tun,
                up: Link::new(cfg.up, cfg.up_schedule, link_seed(seed, i, Direction::Up), now),
                down: Link::new(cfg.down, cfg.down_schedule, link_seed(seed, i, Direction::Down), now),
                alive: true,
            });
        }
        Ok(Self {
            ports,
            routes,
            pool: Pool::new(POOL_SLOTS, SLOT_SIZE.max(MTU)),
            epoll,
            stats: RouterStats::default(),
            scratch: vec![0; SLOT_SIZE.max(MTU)],
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
        })
    }

    /// Forwards until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), RouterError> {
        self.run_with(stop, Duration::from_secs(3600), |_| {})
    }

    /// Forwards until `stop` is set, calling `on_tick` every `every` (for
    /// timelines) with the router, whose [`Router::report`] is current.
    pub fn run_with(
        &mut self,
        stop: &AtomicBool,
        every: Duration,
        mut on_tick: impl FnMut(&Router),
    ) -> Result<(), RouterError> {
        let mut next_tick = Instant::now() + every;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_tick {
                on_tick(self);
                next_tick += every;
            }
            let wake = self.next_deadline().map_or(next_tick, |d| d.min(next_tick));
            self.step(wake.saturating_duration_since(now).min(MAX_SLEEP))?;
        }
        Ok(())
    }

    /// One iteration: wait up to `max_wait` for packets, read them into the
    /// links, release whatever is due.
    pub fn step(&mut self, max_wait: Duration) -> Result<(), RouterError> {
        let ts = libc::timespec {
            tv_sec: max_wait.as_secs() as libc::time_t,
            tv_nsec: max_wait.subsec_nanos() as _,
        };
        // SAFETY: events buffer is valid for its length; null sigmask.
        let n = unsafe {
            libc::epoll_pwait2(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                &ts,
                std::ptr::null(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_err("epoll_pwait2")(e));
            }
        }
        let now = Instant::now();
        for k in 0..n.max(0) as usize {
            let port = self.events[k].u64 as usize;
            self.read_port(port, now);
        }
        self.release(Instant::now());
        Ok(())
    }

    /// Earliest time any link has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.ports
            .iter()
            .flat_map(|p| [p.up.next_deadline(), p.down.next_deadline()])
            .flatten()
            .min()
    }

    /// Changes a link's parameters now (outside its schedule).
    pub fn change(&mut self, port: usize, dir: Direction, change: &LinkChange) {
        let now = Instant::now();
        if let Some(p) = self.ports.get_mut(port) {
            match dir {
                Direction::Up => p.up.change(now, change),
                Direction::Down => p.down.change(now, change),
            }
        }
    }

    pub fn report(&self) -> Report {
        Report {
            at: Instant::now(),
            ports: self
                .ports
                .iter()
                .map(|p| PortReport {
                    name: p.name.clone(),
                    up: p.up.stats(),
                    down: p.down.stats(),
                })
                .collect(),
            router: self.stats,
            pool_in_use: self.pool.in_use(),
        }
    }

    fn read_port(&mut self, i: usize, now: Instant) {
        for _ in 0..READ_BUDGET {
            let Some(port) = self.ports.get(i).filter(|p| p.alive) else {
                return;
            };
            let slot = self.pool.alloc();
            let buf = match slot {
                Some(s) => self.pool.buf_mut(s),
                None => &mut self.scratch[..],
            };
            let n = match port.tun.recv(buf) {
                Ok(n) => n,
                Err(e) => {
                    if let Some(s) = slot {
                        self.pool.release(s);
                    }
                    if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                        self.port_failed(i);
                    }
                    return;
                }
            };
            let Some(slot) = slot else {
                self.stats.pool_exhausted += 1;
                continue;
            };
            let header = match packet::parse(self.pool.packet_prefix(slot, n)) {
                Ok(h) => h,
                Err(_) => {
                    self.stats.malformed += 1;
                    self.pool.release(slot);
                    continue;
                }
            };
            let Some(&dst) = self.routes.get(&header.dst).filter(|d| **d != i) else {
                self.stats.unroutable += 1;
                self.pool.release(slot);
                continue;
            };
            self.pool.fill(slot, n, dst, header.proto);
            let verdict = self.ports[i].up.push(now, n, header.proto, slot);
            self.account(slot, verdict);
        }
    }

    /// A read error other than "nothing to read" means the device is gone
    /// (namespace deleted during teardown): stop polling it.
    fn port_failed(&mut self, i: usize) {
        self.stats.read_errors += 1;
        if let Some(p) = self.ports.get_mut(i) {
            p.alive = false;
            // SAFETY: deregistering an fd we own; failure is harmless.
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    p.tun.as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    fn account(&mut self, slot: Slot, verdict: Verdict) {
        match verdict {
            Verdict::Queued { copies } => {
                for _ in 1..copies {
                    self.pool.add_ref(slot);
                }
            }
            Verdict::Dropped(_) => self.pool.release(slot),
        }
    }

    /// Moves due packets from up links to their destination's down link,
    /// then writes due packets of down links to their TUN.
    fn release(&mut self, now: Instant) {
        for i in 0..self.ports.len() {
            while let Some(r) = self.ports[i].up.poll(now) {
                let dst = self.pool.dst(r.token);
                let proto = self.pool.proto(r.token);
                let verdict = self.ports[dst].down.push(now, r.len, proto, r.token);
                self.account(r.token, verdict);
            }
        }
        for port in &mut self.ports {
            while let Some(r) = port.down.poll(now) {
                if port.alive && port.tun.send(self.pool.packet(r.token)).is_err() {
                    self.stats.write_errors += 1;
                }
                self.pool.release(r.token);
            }
        }
    }
}
