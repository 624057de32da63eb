//! Demultiplexing of the shared media port: which peer a datagram is for.
//!
//! Every participant shares one UDP port, so the only thing telling them
//! apart is the 5-tuple. A known tuple is one hash lookup. An unknown tuple
//! must be a STUN binding request (ICE connectivity check): its USERNAME is
//! `<our ufrag>:<their ufrag>`, and our ufrag both names the peer and, by its
//! prefix, the shard that owns it, so a check that the kernel's
//! `SO_REUSEPORT` hash delivered to the wrong shard can be handed over.
//! Anything else from an unknown tuple is dropped (DTLS and SRTP from a
//! tuple ICE never validated would be refused by str0m anyway).
//!
//! ICE-TCP connections are routed the same way (their first frame is a
//! check), keyed apart from UDP tuples by the protocol, but never handed
//! over: the TCP acceptor already gave the connection to the owning shard.
use std::collections::HashMap;
use std::net::SocketAddr;

use relay::stun::{attr, Class, Message, Method};
use str0m::net::Protocol;

/// A transport tuple as the mux knows it: protocol, remote, local.
pub type Tuple = (Protocol, SocketAddr, SocketAddr);

/// Index of a peer in its shard's slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A peer of this shard; `new_tuple` when the tuple was learned just now.
    Local {
        peer: PeerId,
        new_tuple: bool,
    },
    /// A STUN check for a peer of another shard.
    Shard(usize),
    Drop,
}

/// The ufrag prefix that tags a shard: three characters, `s` and the shard
/// index in two hex digits (ICE ufrags are ice-chars, so hex is safe).
pub fn shard_prefix(shard: usize) -> String {
    format!("s{:02x}", shard & 0xff)
}

/// The shard a ufrag belongs to, if it carries our tag.
pub fn shard_of_ufrag(ufrag: &str) -> Option<usize> {
    let tag = ufrag.get(..3)?;
    let hex = tag.strip_prefix('s')?;
    usize::from_str_radix(hex, 16).ok()
}

/// The routing tables of one shard. No locks: each shard has its own.
#[derive(Default)]
pub struct Mux {
    shard: usize,
    by_tuple: HashMap<Tuple, PeerId>,
    by_ufrag: HashMap<String, PeerId>,
    /// Tuples whose checks were handed to another shard: the kernel's
    /// `SO_REUSEPORT` hash sends all of a tuple's datagrams here, so its
    /// DTLS and SRTP must follow the checks there.
    foreign: HashMap<(SocketAddr, SocketAddr), usize>,
}

/// Most foreign tuples remembered; beyond it the table starts over (the
/// next check of each live tuple re-teaches it).
const MAX_FOREIGN: usize = 65536;

impl Mux {
    pub fn new(shard: usize) -> Self {
        Mux {
            shard,
            ..Default::default()
        }
    }

    pub fn add_peer(&mut self, ufrag: &str, peer: PeerId) {
        self.by_ufrag.insert(ufrag.to_string(), peer);
    }

    /// Forgets a peer and every tuple it was reached on (a tuple another
    /// peer has taken over since stays).
    pub fn remove_peer(&mut self, ufrag: &str, peer: PeerId, tuples: &[Tuple]) {
        if self.by_ufrag.get(ufrag) == Some(&peer) {
            self.by_ufrag.remove(ufrag);
        }
        for t in tuples {
            self.forget(t, peer);
        }
    }

    /// Forgets one tuple of `peer` (a closed TCP connection, whose remote
    /// port a new connection may reuse).
    pub fn forget(&mut self, tuple: &Tuple, peer: PeerId) {
        if self.by_tuple.get(tuple) == Some(&peer) {
            self.by_tuple.remove(tuple);
        }
    }

    /// The peer a tuple is routed to.
    pub fn peer_of(&self, tuple: &Tuple) -> Option<PeerId> {
        self.by_tuple.get(tuple).copied()
    }

    /// Routes a packet that arrived from `remote` at `local`. A STUN
    /// request from a new tuple teaches the table that tuple, so the peer's
    /// DTLS and SRTP that follow take the fast path.
    pub fn route(&mut self, proto: Protocol, remote: SocketAddr, local: SocketAddr, data: &[u8]) -> Route {
        let tuple = (proto, remote, local);
        if let Some(&peer) = self.by_tuple.get(&tuple) {
            return Route::Local { peer, new_tuple: false };
        }
        let Some(ufrag) = stun_server_ufrag(data) else {
            return match self.foreign.get(&(remote, local)) {
                Some(&s) if proto == Protocol::Udp => Route::Shard(s),
                _ => Route::Drop,
            };
        };
        match shard_of_ufrag(ufrag) {
            // A TCP connection cannot move by datagram; it was handed to
            // this shard for another ufrag of ours.
            Some(s) if s != self.shard && proto != Protocol::Udp => return Route::Drop,
            Some(s) if s != self.shard => {
                if self.foreign.len() >= MAX_FOREIGN {
                    self.foreign.clear();
                }
                self.foreign.insert((remote, local), s);
                return Route::Shard(s);
            }
            None => return Route::Drop,
            Some(_) => {}
        }
        let Some(&peer) = self.by_ufrag.get(ufrag) else {
            return Route::Drop;
        };
        self.by_tuple.insert(tuple, peer);
        Route::Local { peer, new_tuple: true }
    }

    pub fn tuples(&self) -> usize {
        self.by_tuple.len()
    }
}

/// Our ufrag from a STUN binding request's USERNAME (`ours:theirs`). Only
/// requests count: responses and indications never open a tuple.
pub fn stun_server_ufrag(data: &[u8]) -> Option<&str> {
    // RFC 7983: STUN starts with 0..=3; skip the parse for everything else.
    if data.first().is_none_or(|b| *b > 3) {
        return None;
    }
    let msg = Message::parse(data).ok()?;
    if msg.method() != Method::BINDING || msg.class() != Class::Request {
        return None;
    }
    let user = msg.str_attr(attr::USERNAME)?.ok()?;
    let (ours, _) = user.split_once(':')?;
    Some(ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::stun::MessageBuilder;

    fn binding(user: &str) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::BINDING, &[7; 12]).unwrap();
        b.add(attr::USERNAME, user.as_bytes()).unwrap();
        let n = b.finish();
        buf.truncate(n);
        buf
    }

    #[test]
    fn routes_by_ufrag_then_tuple() {
        let mut mux = Mux::new(1);
        mux.add_peer("s01abcd", PeerId(3));
        let remote: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        // Unknown tuple, not STUN: dropped.
        assert_eq!(mux.route(Protocol::Udp, remote, local, &[0x80, 0, 0, 0]), Route::Drop);
        let check = binding("s01abcd:theirs");
        assert_eq!(
            mux.route(Protocol::Udp, remote, local, &check),
            Route::Local {
                peer: PeerId(3),
                new_tuple: true
            }
        );
        // Now the tuple alone routes, whatever the payload.
        assert_eq!(
            mux.route(Protocol::Udp, remote, local, &[0x80, 0, 0, 0]),
            Route::Local {
                peer: PeerId(3),
                new_tuple: false
            }
        );
        // Another shard's ufrag is handed over, an unknown one dropped.
        let other: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(
            mux.route(Protocol::Udp, other, local, &binding("s02zzzz:x")),
            Route::Shard(2)
        );
        // ... and so is the DTLS that follows on that tuple.
        assert_eq!(
            mux.route(Protocol::Udp, other, local, &[22, 0xfe, 0xfd]),
            Route::Shard(2)
        );
        let third: SocketAddr = "127.0.0.1:5002".parse().unwrap();
        assert_eq!(
            mux.route(Protocol::Udp, third, local, &binding("s01zzzz:x")),
            Route::Drop
        );
        assert_eq!(mux.route(Protocol::Udp, third, local, &binding("nope:x")), Route::Drop);
        mux.remove_peer("s01abcd", PeerId(3), &[(Protocol::Udp, remote, local)]);
        assert_eq!(mux.route(Protocol::Udp, remote, local, &[0x80, 0, 0, 0]), Route::Drop);
    }

    #[test]
    fn tcp_tuples_are_apart_from_udp_and_never_handed_over() {
        let mut mux = Mux::new(1);
        mux.add_peer("s01abcd", PeerId(3));
        let remote: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let check = binding("s01abcd:theirs");
        assert!(matches!(
            mux.route(Protocol::Tcp, remote, local, &check),
            Route::Local { new_tuple: true, .. }
        ));
        // The same addresses over UDP are another tuple.
        assert_eq!(mux.route(Protocol::Udp, remote, local, &[0x80, 0, 0, 0]), Route::Drop);
        assert_eq!(mux.peer_of(&(Protocol::Tcp, remote, local)), Some(PeerId(3)));
        // Another shard's check on a TCP connection is dropped.
        let other: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(
            mux.route(Protocol::Tcp, other, local, &binding("s02zzzz:x")),
            Route::Drop
        );
        // A closed connection is forgotten, but only for its own peer.
        mux.forget(&(Protocol::Tcp, remote, local), PeerId(4));
        assert_eq!(mux.peer_of(&(Protocol::Tcp, remote, local)), Some(PeerId(3)));
        mux.forget(&(Protocol::Tcp, remote, local), PeerId(3));
        assert_eq!(mux.route(Protocol::Tcp, remote, local, &[0x80, 0, 0, 0]), Route::Drop);
    }

    #[test]
    fn garbage_is_dropped() {
        let mut mux = Mux::new(0);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for data in [
            &[][..],
            &[0u8; 3][..],
            &[0u8; 20][..],
            &[1, 1, 0, 4, 0x21, 0x12, 0xa4, 0x42][..],
        ] {
            assert_eq!(mux.route(Protocol::Udp, a, a, data), Route::Drop);
        }
    }
}
