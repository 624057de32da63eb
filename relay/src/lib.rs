//! A TURN/STUN relay (RFC 8489, RFC 8656, RFC 6062, RFC 6156).
//!
//! # Design
//! The crate is split the way quinn splits `quinn-proto` from `quinn`:
//!
//! - [`stun`] is the wire codec: zero-copy parsing, encoding into caller
//!   buffers, integrity and fingerprint. No I/O, no clocks.
//! - [`turn`] is the protocol core. [`turn::Server`] takes bytes, the
//!   five-tuple they came on and the current time, and returns what to send
//!   where. It owns allocations, permissions, channels, authentication
//!   (stateless nonces, TURN REST credentials), peer filtering and quotas. It
//!   never touches a socket: binding relay ports goes through the small
//!   [`turn::RelayIo`] trait the shell implements, so tests drive the whole
//!   server faster than real time.
//! - [`io`] is the shell: one shard per core, each with its own
//!   `SO_REUSEPORT` listener, its own `turn::Server` and the relay sockets of
//!   its allocations, so the packet path takes no lock shared across cores.
//!   UDP goes through batched `recvmmsg`/GSO sends; TCP and TLS clients are
//!   framed streams feeding the same core.
//!
//! # Data flow of a relayed datagram
//! client --ChannelData--> listener socket (shard by kernel 4-tuple hash)
//! --> `Server::handle_client` (hash lookup of the five-tuple, then channel)
//! --> `Action::ToPeer` (a slice of the receive buffer, header stripped)
//! --> relay socket `send_to(peer)`. The way back receives into a buffer with
//! headroom so the ChannelData or Data-indication header is written in front
//! of the payload in place.

pub mod config;
pub mod credentials;
pub mod io;
pub mod metrics;
pub mod stun;
pub mod turn;
