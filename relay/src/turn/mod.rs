//! The TURN protocol core (RFC 8656, RFC 6156, RFC 6062), sans-IO.
//!
//! [`Server`] is driven by three inputs, each with `now` passed in:
//! a packet from a client ([`Server::handle_client`]), a datagram from a peer
//! on a relay socket ([`Server::handle_peer`]) and the passing of time
//! ([`Server::handle_timeout`]). It answers with an [`Action`] that names
//! byte ranges of the caller's buffers, so the shell forwards payloads
//! without copying them.
//!
//! - [`auth`]: long-term credentials, TURN REST usernames, stateless nonces.
//! - [`peer_filter`]: which peer addresses may be relayed to.
//! - [`quota`]: token buckets and allocation counters.
//! - [`allocation`]: the allocation table with permissions and channels.
//! - [`server`]: request handling and the data path.

pub mod allocation;
pub mod auth;
pub mod peer_filter;
pub mod quota;
pub mod server;
pub mod stats;

#[cfg(test)]
mod tests;

pub use server::{Action, Event, FiveTuple, RelayId, RelayIo, Server, ServerConfig, Transport};
