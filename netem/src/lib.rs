//! Network impairment rig: client and server network namespaces joined by a
//! user-space router that delays, drops, rate-limits, reorders, duplicates
//! and blocks their packets.
//!
//! # Why user space
//! The kernels this project is tested on lack the `sch_netem` qdisc, while
//! TUN devices and network namespaces work. So instead of a qdisc on a veth
//! pair, every namespace gets a TUN device whose other end is a file
//! descriptor held by our router process, and the impairments run there.
//!
//! # Design
//! The crate is split the way `relay` splits protocol core from shell:
//!
//! - [`engine`] is the sans-IO core. A [`engine::Link`] is one direction of
//!   one link; it takes `(now, length, protocol, token)` and says when the
//!   token comes out, if at all. No sockets, no clocks, seeded randomness:
//!   unit tests run minutes of traffic in milliseconds and a seed replays.
//! - [`topology`] builds and tears down the namespaces and their TUN devices
//!   (a [`topology::Guard`] deletes them on drop, on panic and on SIGINT or
//!   SIGTERM; `netem down` sweeps leftovers). It never touches the host's
//!   interfaces, addresses or routes.
//! - [`router`] is the I/O shell: one thread, epoll over the TUN fds, a
//!   preallocated packet pool ([`pool`]), an IP header peek ([`packet`]),
//!   and one `Link` pair per namespace.
//! - [`spec`] holds the human-facing parameter format (TOML units),
//!   [`profile`] the named profiles and [`scenario`] the scenario files.
//!
//! # Data flow of a packet from client A to server S
//! A's kernel routes 10.77.0.0/16 to A's `tun0` → the router reads the IP
//! packet into a pool slot (fd of A's TUN, so the source is A), parses the
//! destination address (→ S) and protocol → A's *up* link → when released,
//! S's *down* link → when released, `write` to S's TUN fd → S's kernel
//! delivers it. Each namespace's access link is thus impaired per direction,
//! and a client-to-client packet crosses both access links, as on the
//! Internet.

pub mod engine;
pub mod packet;
pub mod pool;
pub mod profile;
pub mod report;
pub mod router;
pub mod scenario;
pub mod spec;
pub mod topology;
